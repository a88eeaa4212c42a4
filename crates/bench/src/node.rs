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

/// A node's process, killed with SIGKILL when dropped, so that a workload that fails
/// leaves none behind.
pub(crate) struct Node {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl Node {
    /// Starts `binary serve --listen 127.0.0.1:0` with `args` (logging errors only), and
    /// returns once it says it listens.
    pub(crate) fn start(binary: &Path, args: &[&str]) -> anyhow::Result<Node> {
        let child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a node")?;
        let mut node = Node {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let stdout = node.child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .context("the node exited before it listened")??;
            if let Some(rest) = line.strip_prefix("perennial listening on http://") {
                node.addr = rest.split_whitespace().next().unwrap_or_default().parse()?;
                return Ok(node);
            }
        }
    }

    /// Kills it with SIGKILL, and waits until it is gone.
    pub(crate) fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops it with SIGTERM; fails unless it stopped cleanly.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the node did not stop cleanly: {status}");
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Nothing, if it was waited for already.
        let _ = self.child.kill();
        let _ = self.child.wait();
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
