//! HTTPS: a node serving with a certificate signed by an authority the test makes answers
//! over HTTP/2 and HTTP/1.1, the CLI reaches it with `--ca` (and says what to do without),
//! a public address without TLS is refused unless `--insecure` (checked without ever
//! listening beyond loopback), and a cluster's nodes call
//! each other over HTTPS.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use perennial_types::shard_of;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;

use crate::cluster::LocalCluster;
use crate::node::{Node, perennial, stop};

/// An authority, and a node certificate (for `127.0.0.1` and `localhost`) it signed, written
/// as PEM files into `dir`: (ca, cert, key).
pub(crate) fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "perennial test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A node on loopback serving HTTPS with `cert` and `key`.
fn tls_node(data: &Path, cert: &Path, key: &Path) -> Node {
    let mut command = perennial();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    Node::spawn(command)
}

/// GETs `path` over HTTPS from the node at `port`, trusting `ca`, speaking HTTP/2 only or
/// HTTP/1.1 only: (status, HTTP version, body).
async fn get(ca: &Path, port: u16, path: &str, http2: bool) -> (u16, hyper::Version, String) {
    let request = hyper::Request::get(format!("https://127.0.0.1:{port}{path}"))
        .body(Full::default())
        .unwrap();
    send(ca, request, http2).await
}

/// Sends `request` over HTTPS, trusting `ca`, without a client certificate.
async fn send(
    ca: &Path,
    request: hyper::Request<Full<Bytes>>,
    http2: bool,
) -> (u16, hyper::Version, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring, as the node uses
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector);
    let response = client.request(request).await.unwrap();
    let (status, version) = (response.status().as_u16(), response.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

fn run(args: &[&str], ca: Option<&Path>) -> Output {
    let mut command = perennial();
    command.args(args);
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    command.output().expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_https_over_http2_and_http1_and_the_cli_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let node = tls_node(&dir.path().join("data"), &cert, &key);
    let port = node.addr.port();

    for (http2, version) in [
        (true, hyper::Version::HTTP_2),
        (false, hyper::Version::HTTP_11),
    ] {
        let (status, got, body) = get(&ca, port, "/healthz", http2).await;
        assert_eq!((status, got), (200, version), "{body}");
        let (status, _, body) = get(&ca, port, "/readyz", http2).await;
        assert_eq!(status, 200, "{body}");
    }
    // The console's page comes over HTTPS too.
    let (status, _, page) = get(&ca, port, "/console", true).await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");

    let url = format!("https://127.0.0.1:{port}");
    let call = ["call", "counter/c1", r#"{"add": 5}"#, "--node", &url];
    let out = run(&call, Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('5'));
    // Without the authority, the CLI says why and what to do.
    let out = run(&call, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS") && stderr.contains("--ca"),
        "{stderr}"
    );
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = format!("http://127.0.0.1:{port}");
    let out = run(&["call", "counter/c1", r#""get""#, "--node", &plain], None);
    assert!(!out.status.success());
    stop(node);
}

#[test]
fn a_public_address_without_tls_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let mut command = perennial();
        command
            .args(["serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(dir.path().join("data"))
            .args(["--client-token", "client-token-0123456789"])
            .args(extra);
        command
    };
    let out = serve(&[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without TLS") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
    // A certificate without its key is refused too.
    let (_, cert, _) = certificates(dir.path());
    let mut half = serve(&[]);
    half.arg("--tls-cert").arg(&cert);
    let out = half.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("go together"));
    // --insecure passes the check: the node goes on to open its data (here a file, which
    // fails, so that the test never listens beyond loopback).
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "x").unwrap();
    let mut insecure = perennial();
    insecure
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure", "--data"])
        .arg(&file)
        .args(["--client-token", "client-token-0123456789"]);
    let out = insecure.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("without TLS"), "{stderr}");
    assert!(
        stderr.contains("cannot open the data directory"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_nodes_call_each_other_over_https() {
    cluster_over_https(false).await;
}

/// With mutual TLS, the nodes present their certificates to one another, and the internal
/// route refuses a caller without one, even with the cluster's secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_a_node_without_a_certificate_is_refused() {
    cluster_over_https(true).await;
}

async fn cluster_over_https(mutual: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let env = [
        ("PERENNIAL_TLS_CERT", cert.to_str().unwrap()),
        ("PERENNIAL_TLS_KEY", key.to_str().unwrap()),
        ("PERENNIAL_CLUSTER_CA", ca.to_str().unwrap()),
        (
            "PERENNIAL_CLUSTER_MTLS",
            if mutual { "true" } else { "false" },
        ),
    ];
    let Some(cluster) = LocalCluster::start_with(2, Duration::from_secs(2), &env).await else {
        return;
    };
    // Wait until both nodes hold shards.
    let ports: Vec<u16> = cluster.addrs().iter().map(|a| a.port()).collect();
    let started = std::time::Instant::now();
    for &port in &ports {
        while get(&ca, port, "/readyz", true).await.0 != 200 {
            assert!(started.elapsed() < Duration::from_secs(30), "not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Calls made at node 1 for entities node 2 serves cross over HTTPS (a call that could
    // not be forwarded would fail).
    let owners = cluster.owners().await;
    let theirs: Vec<String> = (0..10_000)
        .map(|c| format!("t{c}"))
        .filter(|id| owners.get(&shard_of("counter", id)).map(String::as_str) == Some("n2"))
        .take(20)
        .collect();
    assert_eq!(theirs.len(), 20, "node 2 serves too few shards");
    let url = format!("https://127.0.0.1:{}", ports[0]);
    for id in &theirs {
        let out = run(
            &[
                "call",
                &format!("counter/{id}"),
                r#"{"add": 2}"#,
                "--node",
                &url,
            ],
            Some(&ca),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains('2'));
    }
    let (status, body) = internal_without_certificate(&ca, ports[0]).await;
    if mutual {
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("certificate_required"), "{body}");
    } else {
        assert_ne!(status, 403, "{body}");
    }
}

/// Posts an empty batch to node `port`'s internal route with the cluster's secret, over
/// HTTPS without a client certificate: the status and body.
async fn internal_without_certificate(ca: &Path, port: u16) -> (u16, String) {
    let request = hyper::Request::post(format!(
        "https://127.0.0.1:{port}{}",
        perennial_api::internal::PATH
    ))
    .header(
        perennial_api::internal::SECRET_HEADER,
        crate::cluster::SECRET,
    )
    .header("content-type", perennial_api::internal::CONTENT_TYPE)
    .body(Full::default())
    .unwrap();
    let (status, _, body) = send(ca, request, true).await;
    (status, body)
}
