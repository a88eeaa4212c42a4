//! Nodes as real processes, for the workloads that kill one with SIGKILL: the `perennial`
//! binary run as `perennial serve` on a loopback port, and a counter's `add` over HTTP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP/1.1 client with keep-alive.
pub(crate) type Http = Client<HttpConnector, Full<Bytes>>;

/// A client that keeps up to `idle` connections per node.
pub(crate) fn http(idle: usize) -> Http {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build_http()
}

/// Starts `binary serve --listen 127.0.0.1:0` with `args` (logging errors only); returns
/// it and its address once it says it listens.
pub(crate) fn serve(binary: &Path, args: &[&str]) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start a node")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .context("the node exited before it listened")??;
        if let Some(rest) = line.strip_prefix("perennial listening on http://") {
            let addr = rest.split_whitespace().next().unwrap_or_default().parse()?;
            return Ok((child, addr));
        }
    }
}

/// Adds 1 to counter `id` through `addr`; `Ok(false)` if it did not answer `200`.
pub(crate) async fn add(http: &Http, addr: SocketAddr, id: &str) -> anyhow::Result<bool> {
    let request = hyper::Request::post(format!("http://{addr}/v1/counter/{id}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"add": 1}"#)))?;
    let response = http.request(request).await?;
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    Ok(ok)
}
