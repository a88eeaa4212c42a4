//! Crash safety and lifecycle of `perennial serve`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};

use crate::node::{Http, Node};

const CLIENTS: usize = 16;

/// What one client knows about its counter: adds acknowledged, and adds whose fate is
/// unknown because the node died while they were in flight.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    in_doubt: AtomicU64,
}

/// Each client adds 1 to its own counter, one call at a time, and never retries. Runs until
/// `stop`, or until the node stops answering.
async fn load(
    http: Http,
    addr: std::net::SocketAddr,
    client: usize,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let path = format!("/v1/counter/k{client}");
    while !stop.load(Ordering::Relaxed) {
        match http.post(addr, &path, r#"{"add": 1}"#).await {
            Ok((200, _)) => {
                tally.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => panic!("client {client}: unexpected {status} {body}"),
            Err(_) => {
                // The node died with this call in flight: it may or may not have applied.
                tally.in_doubt.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// kill -9 at random moments under load, many times: every acknowledged add is present after
/// each restart, and no add is applied twice (clients never retry, so a counter may exceed
/// its acknowledged adds only by the calls that were in flight when the node died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_cycles("SQLite", || Node::start(dir.path())).await;
}

/// The same on the PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_postgres_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let Some(schema) = perennial_storage_postgres::test_util::schema().await else {
        return;
    };
    let url = perennial_storage_postgres::test_util::url();
    let start = || {
        let mut command = crate::node::perennial();
        command.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--store-schema",
        ]);
        command.arg(schema.name());
        Node::spawn(command)
    };
    kill_9_cycles("PostgreSQL", start).await;
}

/// Eight cycles of load and kill -9 on the nodes `start` gives, each on the same store.
async fn kill_9_cycles(store: &str, start: impl Fn() -> Node) {
    let http = Http::new();
    let tallies: Vec<Arc<Tally>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    // The range each counter must lie in: [acknowledged, acknowledged + in doubt].
    let mut low = [0i64; CLIENTS];
    let mut high = [0i64; CLIENTS];
    let mut total_acked = 0;
    let mut total_in_doubt = 0;
    let cycles = 8;
    for cycle in 0..cycles {
        let node = start();
        let addr = node.addr;
        for (c, (lo, hi)) in low.iter_mut().zip(high.iter_mut()).enumerate() {
            let value = http.counter(addr, &format!("k{c}")).await;
            assert!(
                (*lo..=*hi).contains(&value),
                "cycle {cycle}, counter k{c} = {value}, but {lo} adds were acknowledged and at most {} more were in flight",
                *hi - *lo
            );
            // Now the value is known: it is the new baseline.
            *lo = value;
            *hi = value;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let tally = Arc::clone(&tallies[c]);
                tally.acked.store(0, Ordering::Relaxed);
                tally.in_doubt.store(0, Ordering::Relaxed);
                tokio::spawn(load(http.clone(), addr, c, tally, Arc::clone(&stop)))
            })
            .collect();
        // Let the load run a varying while, then kill the node mid-flight.
        tokio::time::sleep(Duration::from_millis(300 + 97 * (cycle as u64 % 5))).await;
        node.kill9();
        for client in clients {
            client.await.unwrap();
        }
        for (c, tally) in tallies.iter().enumerate() {
            let acked = tally.acked.load(Ordering::Relaxed) as i64;
            let in_doubt = tally.in_doubt.load(Ordering::Relaxed) as i64;
            low[c] += acked;
            high[c] += acked + in_doubt;
            total_acked += acked;
            total_in_doubt += in_doubt;
        }
    }
    let node = start();
    for c in 0..CLIENTS {
        let value = http.counter(node.addr, &format!("k{c}")).await;
        assert!(
            (low[c]..=high[c]).contains(&value),
            "final counter k{c} = {value}, expected {}..={}",
            low[c],
            high[c]
        );
    }
    // The test proves something only if the load ran and the kills hit calls in flight.
    assert!(
        total_acked > 1_000,
        "only {total_acked} acknowledged adds in {cycles} cycles"
    );
    assert!(
        total_in_doubt > 0,
        "no kill ever interrupted a call in flight"
    );
    eprintln!(
        "{store}: kill -9 x{cycles}: {total_acked} acknowledged adds, {total_in_doubt} in flight at a kill, 0 lost, 0 doubled"
    );
}

/// SIGTERM drains: in-flight calls finish, the process exits 0, and the store is folded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let mut node = Node::start(dir.path());
    let addr = node.addr;
    let tallies: Vec<Arc<Tally>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(load(
                http.clone(),
                addr,
                c,
                Arc::clone(&tallies[c]),
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill(node.pid(), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = node.child.wait().unwrap();
        (status, node)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "the node exited with {:?}", status.0);
    for client in clients {
        client.await.unwrap();
    }
    // A clean stop folds the log: the entities table alone is exact.
    let left = states_in_log(dir.path());
    assert_eq!(left, 0, "{left} states left in the log after a clean stop");
    let node = Node::start(dir.path());
    for (c, tally) in tallies.iter().enumerate() {
        let acked = tally.acked.load(Ordering::Relaxed) as i64;
        let in_doubt = tally.in_doubt.load(Ordering::Relaxed) as i64;
        let value = http.counter(node.addr, &format!("k{c}")).await;
        assert!(
            (acked..=acked + in_doubt).contains(&value),
            "k{c} = {value}, acked {acked}"
        );
    }
}

/// How many states the log still holds, read from the database file directly.
fn states_in_log(dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("perennial.db")).unwrap();
    conn.query_row("SELECT count(*) FROM state_log", [], |r| r.get(0))
        .unwrap()
}

/// A second node on the same data directory is refused with a clear error.
#[tokio::test]
async fn a_second_node_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Node::start(dir.path());
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_perennial"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

const CLIENT_TOKEN: &str = "client-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// The real binary with tokens from the environment: calls and the admin API each need
/// their own token, and the admin API lists and shows what the calls stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_calls_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_perennial"));
    command
        .env("PERENNIAL_CLIENT_TOKEN", CLIENT_TOKEN)
        .env("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN);
    let node = Node::start_under(command, dir.path());
    let http = Http::new();
    let client = format!("Bearer {CLIENT_TOKEN}");
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let call = |auth: Option<String>, path: &'static str, body: &'static str| {
        let http = http.clone();
        let addr = node.addr;
        async move {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| ("authorization", a))
                .into_iter()
                .collect();
            let method = if path.starts_with("/v1/admin") && body.is_empty() {
                "GET"
            } else {
                "POST"
            };
            http.send(addr, method, path, &headers, body).await.unwrap()
        }
    };
    let (status, body) = call(None, "/v1/counter/c", r#"{"add": 1}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = call(Some(client.clone()), "/v1/counter/c", r#"{"add": 1}"#).await;
    assert_eq!((status, body), (200, serde_json::json!({"value": 1})));
    let (status, _) = call(Some(client.clone()), "/v1/admin/kinds", "").await;
    assert_eq!(status, 401);
    let (status, page) = call(Some(admin.clone()), "/v1/admin/kinds/counter/entities", "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["entities"][0]["id"], "c");
    assert_eq!(page["entities"][0]["state_version"], 1);
    let (status, state) = call(Some(admin.clone()), "/v1/admin/entities/counter/c", "").await;
    assert_eq!(
        (status, &state["state"]),
        (200, &serde_json::json!({"value": 1}))
    );
    // Metrics take the admin token when the node has one.
    let headers = [("authorization", client.as_str())];
    let refused = http.send(node.addr, "GET", "/metrics", &headers, "").await;
    assert_eq!(refused.unwrap().0, 401);
    let headers = [("authorization", admin.as_str())];
    let scraped = http.send(node.addr, "GET", "/metrics", &headers, "").await;
    let text = scraped.expect_err("metrics are text, not JSON");
    assert!(text.contains("perennial_commits_total"), "{text}");
}

/// Listening beyond loopback without a client token is refused, with what to do instead.
#[test]
fn a_public_address_without_a_client_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_perennial"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .env_remove("PERENNIAL_CLIENT_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a client token"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}
