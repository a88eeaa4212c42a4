//! PostgreSQL failover with nothing lost: a cluster of nodes on a primary with a synchronous
//! standby, both servers started by the test; the primary is killed with SIGKILL under load
//! and the standby promoted; the nodes reconnect through a multi-host address
//! (`target_session_attrs=read-write`), and the history checker finds nothing acknowledged
//! lost, doubled, reordered or stale. Prints how long the clients waited for calls to succeed
//! again.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use perennial_storage_postgres::test_server::TestServer;

use crate::cluster::LocalCluster;
use crate::node::Http;
use crate::probes::Load;

/// The primary: streaming replication, every commit flushed on the standby before it is
/// acknowledged (`synchronous_commit=on` with a synchronous standby).
const PRIMARY: [(&str, &str); 5] = [
    ("wal_level", "replica"),
    ("max_wal_senders", "4"),
    ("synchronous_standby_names", "*"),
    ("synchronous_commit", "on"),
    ("hot_standby", "on"),
];

/// The standby: the same, but it names no synchronous standby of its own, so that once
/// promoted it acknowledges commits alone (until an operator attaches a new standby; with
/// `*` it would wait for one forever).
const STANDBY: [(&str, &str); 4] = [
    ("wal_level", "replica"),
    ("max_wal_senders", "4"),
    ("synchronous_commit", "on"),
    ("hot_standby", "on"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_under_load_loses_nothing_once_the_standby_is_promoted() {
    let Some(mut primary) = TestServer::start(&[], &PRIMARY) else {
        return;
    };
    let Some(standby) = TestServer::standby_of(&primary, &STANDBY) else {
        return;
    };
    primary.wait_for_sync_standby().await;
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres \
         target_session_attrs=read-write connect_timeout=2",
        primary.port(),
        standby.port()
    );
    let lease = Duration::from_secs(2);
    let cluster = LocalCluster::start_on(url, None, 2, lease, &[]);
    let http = Http::new();
    cluster.settled(&http).await;
    let probes = cluster.probes(4).await;
    let clients = 16;
    let load = Load::start(&http, cluster.addrs(), clients, probes, true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before = load.acked();
    primary.kill9();
    load.mark();
    let killed = Instant::now();
    // A failover manager (or an operator) promotes the standby a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    standby.promote();
    let promoted = killed.elapsed();
    tokio::time::sleep(lease + Duration::from_secs(5)).await;
    let outcome = load.finish(&http, &cluster.addrs(), "failover").await;
    let worst = outcome
        .firsts
        .iter()
        .enumerate()
        .map(|(c, first)| first.unwrap_or_else(|| panic!("client {c} never answered again")))
        .max()
        .unwrap_or_default();
    println!(
        "primary killed, standby promoted {promoted:?} later: {}; {} calls sent again; \
         errors {:?}; every client's calls succeeded again within {worst:?} of the kill",
        outcome.report, outcome.retries, outcome.errors
    );
    assert!(acked_before > 0, "no call was acknowledged before the kill");
    assert!(
        outcome.acked.iter().all(|&a| a > 0),
        "every client made progress: {:?}",
        outcome.acked
    );
}

/// A node given only a standby's address says so and waits, instead of failing its calls;
/// once the standby is promoted, it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_standby_says_so_and_waits_for_a_primary() {
    let Some(primary) = TestServer::start(&[], &PRIMARY) else {
        return;
    };
    let Some(standby) = TestServer::standby_of(&primary, &STANDBY) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut command = crate::node::perennial();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .args(["--store", &standby.url("")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let said = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("standby") {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    });
    let line = said
        .join()
        .unwrap()
        .unwrap_or_else(|seen| panic!("the node never said it found a standby: {seen}"));
    assert!(line.contains("waiting"), "{line}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node waits, it does not exit"
    );
    drop(primary);
    standby.promote();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = stdout.next().unwrap().unwrap();
    assert!(
        listening.starts_with("perennial listening on"),
        "{listening}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
