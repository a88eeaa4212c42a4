//! Starting the binary on a data directory, running its client subcommands, and a small
//! HTTP client for it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A running `perennial serve`.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Node {
    /// Starts the binary on `data` with a free loopback port, and waits until it listens.
    pub(crate) fn start(data: &Path) -> Node {
        Self::start_under(perennial(), data)
    }

    /// Like [`start`](Self::start), but through `command` (such as `strace ... perennial`),
    /// which is given the `serve` arguments.
    pub(crate) fn start_under(mut command: Command, data: &Path) -> Node {
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data);
        Self::spawn(command)
    }

    /// Runs `command` (a `perennial serve` with its arguments) and waits until it listens.
    /// It logs warnings only, unless the command sets `RUST_LOG` itself.
    pub(crate) fn spawn(mut command: Command) -> Node {
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "warn");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the perennial binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        let addr = loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the node did not start listening"
            );
            let line = lines
                .next()
                .expect("the node exited before listening")
                .expect("stdout is readable");
            let listening = line
                .strip_prefix("perennial listening on http://")
                .or_else(|| line.strip_prefix("perennial listening on https://"));
            if let Some(rest) = listening {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse().expect("a socket address");
            }
        };
        Node { child, addr }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill9(mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("the node is reaped");
    }

    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }
}

impl Node {
    /// The node's URL, for `--node`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the binary on `data` with the admin API open to [`ADMIN`](crate::probes::ADMIN).
pub(crate) fn start_with_admin(data: &Path) -> Node {
    let mut command = perennial();
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]);
    command.arg(data);
    command.env("PERENNIAL_ADMIN_TOKEN", crate::probes::ADMIN);
    Node::spawn(command)
}

/// SIGTERM, and waits for a clean exit (the log folded into `entities`, the WAL
/// checkpointed).
pub(crate) fn stop(mut node: Node) {
    let pid = node.pid();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM delivered");
    let status = node.child.wait().expect("the node is reaped");
    assert!(status.success(), "{status:?}");
}

/// The binary, run as a command with none of the `PERENNIAL_*` variables of the environment
/// the tests run in, so that only what a test sets counts; but for `PERENNIAL_SABOTAGE`,
/// which CI sets to prove that the tests fail without the mechanism it switches off.
pub(crate) fn perennial() -> Command {
    perennial_at(Path::new(env!("CARGO_BIN_EXE_perennial")))
}

/// [`perennial`], but the binary at `binary` (another build, such as the previous release's).
pub(crate) fn perennial_at(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("PERENNIAL_") && name != "PERENNIAL_SABOTAGE" {
            command.env_remove(&*name);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

impl Drop for Node {
    fn drop(&mut self) {
        // Never leave a child behind, whatever the test did.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 client for the node.
#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub(crate) fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// POSTs `body` to `path`; returns the status and the body as JSON, or an error if the
    /// connection failed (as it does when the node is killed).
    pub(crate) async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        self.post_with_key(addr, path, None, body).await
    }

    /// [`post`](Self::post) with an optional `Idempotency-Key` header.
    pub(crate) async fn post_with_key(
        &self,
        addr: SocketAddr,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(addr, "POST", path, &headers, body).await
    }

    /// Sends any request with extra `headers`; returns the status and the body as JSON.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        let (status, _, bytes) = self.exchange(method, addr, path, headers, body).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| format!("{e}: {bytes:?}"))?;
        Ok((status, value))
    }

    /// GETs `path` with `headers`; returns the status and the body as text.
    pub(crate) async fn get_text(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let (status, _, bytes) = self.exchange("GET", addr, path, headers, "").await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// GETs `path` and returns the status and the `Location` header (for a redirect: the
    /// body is read to its end).
    pub(crate) async fn location(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(u16, Option<String>), String> {
        let (status, location, _) = self.exchange("GET", addr, path, &[], "").await?;
        Ok((status, location))
    }

    /// Sends one request; returns the status, the `Location` header and the whole body.
    async fn exchange(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, Option<String>, Bytes), String> {
        let response = self.response(method, addr, path, headers, body).await?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, location, bytes))
    }

    /// GETs `path` and returns the response's body to read as it streams (Server-Sent Events),
    /// or why there is none (the connection failed, or the status was not 200).
    pub(crate) async fn stream(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<hyper::body::Incoming, String> {
        let response = self.response("GET", addr, path, &[], "").await?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        Ok(response.into_body())
    }

    /// Sends one request; returns the response, its body still to read.
    async fn response(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        self.client
            .request(request)
            .await
            .map_err(|e| e.to_string())
    }

    /// The value of counter `id`.
    pub(crate) async fn counter(&self, addr: SocketAddr, id: &str) -> i64 {
        let (status, body) = self
            .post(addr, &format!("/v1/counter/{id}"), r#""get""#)
            .await
            .expect("the node answers");
        assert_eq!(status, 200, "{body}");
        body["value"].as_i64().expect("a counter value")
    }
}

/// POSTs `body` to `path` on `node` and returns the reply, which must be `200`.
pub(crate) async fn post(http: &Http, node: &Node, path: &str, body: &str) -> serde_json::Value {
    post_to(http, node.addr, path, body).await
}

/// POSTs `body` to `path` at `addr` and returns the reply, which must be `200`.
pub(crate) async fn post_to(
    http: &Http,
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> serde_json::Value {
    let (status, value) = http.post(addr, path, body).await.expect("the node answers");
    assert_eq!(status, 200, "{path} {body}: {value}");
    value
}

/// Polls `path` with `body` until `done` holds of the answer (at most 30 s).
pub(crate) async fn wait_for(
    http: &Http,
    node: &Node,
    path: &str,
    body: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = post(http, node, path, body).await;
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{path}: still {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
