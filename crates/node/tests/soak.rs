//! The kill -9 soak: one node under 64 clients, killed with SIGKILL every ~2 s and started
//! again on the same data directory, for `PERENNIAL_SOAK_SECONDS` (30 by default;
//! `scripts/soak` runs it longer). Clients send every call again with its idempotency key
//! until it is acknowledged; the history checker must find nothing lost, doubled, reordered or
//! split. Prints the kills, the calls checked and the recovery times.

use std::time::{Duration, Instant};

use crate::node::{Http, Node, perennial};
use crate::probes::{ADMIN, Load};

fn start(dir: std::path::PathBuf) -> Node {
    let mut command = perennial();
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]);
    command.arg(dir);
    command.env("PERENNIAL_ADMIN_TOKEN", ADMIN);
    Node::spawn(command)
}

/// The `q`-th quantile of sorted `values`.
fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at.min(values.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_soak_loses_nothing_and_applies_nothing_twice() {
    let seconds: u64 = std::env::var("PERENNIAL_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut node = start(path.clone());
    let http = Http::new();
    // Half of them `Journal` kinds (journals, snapshots, trims, replay).
    let probes: Vec<String> = (0..32)
        .map(|i| format!("{}/s{i}", if i % 2 == 0 { "probe" } else { "jprobe" }))
        .collect();
    let load = Load::start(&http, vec![node.addr], 64, probes, true);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut recoveries = Vec::new();
    let mut jitter = 0x2545_f491_u64;
    while Instant::now() < end {
        jitter = jitter
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let wait = 1500 + (jitter >> 33) % 1000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        node.kill9();
        let killed = Instant::now();
        let again = path.clone();
        node = tokio::task::spawn_blocking(move || start(again))
            .await
            .unwrap();
        load.set_live(vec![node.addr]);
        // Recovered: the node answers a read again.
        loop {
            if let Ok((200, _)) = http.post(node.addr, "/v1/probe/s0", r#""read""#).await {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no recovery in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        recoveries.push(killed.elapsed());
    }
    let outcome = load.finish(&http, &[node.addr], "soak").await;
    recoveries.sort();
    println!(
        "kill -9 soak, {seconds} s: {} kills; {}; {} calls sent again; recovery (kill to \
         answering) p50 {:?}, p99 {:?}, max {:?}",
        recoveries.len(),
        outcome.report,
        outcome.retries,
        quantile(&recoveries, 0.5),
        quantile(&recoveries, 0.99),
        recoveries.last().copied().unwrap_or_default()
    );
    assert!(
        recoveries.len() as u64 >= seconds / 3,
        "only {} kills in {seconds} s",
        recoveries.len()
    );
    assert!(outcome.report.acknowledged > 1000, "{}", outcome.report);
}
