//! The `otel` feature: `serve` exports its spans to an OTLP collector, here a tiny HTTP
//! server on loopback that keeps what it is sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use nix::sys::signal::{Signal, kill};
use parking_lot::Mutex;

use crate::node::{Http, Node, perennial, post};

/// One request the collector received.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// An OTLP/HTTP collector that answers every request with an empty success and keeps it.
struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&received);
        // Left blocked in `accept` when the test ends: the test process exits with it.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Collector { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves the requests of one connection (HTTP/1.1, kept alive) until the client closes it.
fn serve(stream: TcpStream, kept: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default().to_owned();
        let (mut length, mut chunked, mut content_type) = (0, false, String::new());
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "content-type" => content_type = value.to_owned(),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            body
        };
        kept.lock().push(Received {
            method,
            path,
            content_type,
            body,
        });
        writer
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            )
            .unwrap();
    }
}

/// A chunked body, read to its end.
fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A call's `call` and `step` spans reach the collector named by OTEL_EXPORTER_OTLP_ENDPOINT,
/// with the entity's id and the service name `perennial`. The node is stopped right after the
/// call, well before the batch's 5 s delay: the spans arrive only because SIGTERM flushes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_export_sends_call_and_step_spans_and_flushes_them_on_sigterm() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let mut command = perennial();
    // Only what this test sets counts: no OTEL_* of the environment, and no proxy in between.
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("OTEL_") || upper.ends_with("_PROXY") {
            command.env_remove(name);
        }
    }
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
        // The call and step spans are at debug level.
        .env(
            "RUST_LOG",
            "warn,perennial_core=debug,perennial_gateway=debug",
        )
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path());
    let node = Node::spawn(command);
    let http = Http::new();
    let reply = post(&http, &node, "/v1/counter/otel-probe-7", r#"{"add": 1}"#).await;
    assert_eq!(reply["value"], 1);
    assert!(
        collector.received.lock().is_empty(),
        "an export came before the batch delay; the test would not show the flush"
    );

    kill(node.pid(), Signal::SIGTERM).unwrap();
    let (status, _node) = tokio::task::spawn_blocking(move || {
        let mut node = node;
        (node.child.wait().unwrap(), node)
    })
    .await
    .unwrap();
    assert!(status.success(), "the node exited with {status:?}");

    let received = collector.received.lock();
    assert!(!received.is_empty(), "the collector received nothing");
    for request in received.iter() {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/v1/traces")
        );
        assert_eq!(request.content_type, "application/x-protobuf");
    }
    let body: Vec<u8> = received.iter().flat_map(|r| r.body.clone()).collect();
    // Strings are plain bytes in protobuf, behind their field's tag and length: a span's
    // `name` is field 5 (0x2a); a resource attribute is a key (field 1) and a value (field 2)
    // holding a string (field 1).
    for needle in [
        &b"\x2a\x04call"[..],
        b"\x2a\x04step",
        b"otel-probe-7",
        b"service.name\x12\x0b\x0a\x09perennial",
    ] {
        assert!(
            contains(&body, needle),
            "no {:?} in the {} bytes exported",
            String::from_utf8_lossy(needle),
            body.len()
        );
    }
}
