//! Timers, messages between entities, effects and idempotency keys in the real binary, across
//! kill -9: nothing acknowledged is lost, nothing is applied twice.

use std::time::{Duration, Instant};

use crate::node::{Http, Node, post, stop, wait_for};

/// Transfers between counters are messages sent exactly once: with kill -9 in the middle of
/// hundreds of them, the sum of all counters after the restart is what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_counters_conserve_the_total_across_kill_9() {
    const COUNTERS: usize = 8;
    const START: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    for c in 0..COUNTERS {
        post(
            &http,
            &node,
            &format!("/v1/counter/t{c}"),
            &format!(r#"{{"add": {START}}}"#),
        )
        .await;
    }
    let mut movers = Vec::new();
    for m in 0..16 {
        let (http, addr) = (http.clone(), node.addr);
        movers.push(tokio::spawn(async move {
            let mut acknowledged = 0u32;
            for i in 0.. {
                let from = (m + i) % COUNTERS;
                let to = (m * 3 + i * 5 + 1) % COUNTERS;
                let body = format!(
                    r#"{{"transfer": {{"to": "t{to}", "amount": {}}}}}"#,
                    i % 7 + 1
                );
                match http
                    .post(addr, &format!("/v1/counter/t{from}"), &body)
                    .await
                {
                    Ok((200, _)) => acknowledged += 1,
                    Ok((status, body)) => panic!("{status} {body}"),
                    Err(_) => return acknowledged, // the node died
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    node.kill9();
    let mut moved = 0;
    for m in movers {
        moved += m.await.unwrap();
    }
    assert!(moved > 0, "no transfer was acknowledged before the kill");

    let node = Node::start(dir.path());
    let expected = START * COUNTERS as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut total;
    loop {
        total = 0;
        for c in 0..COUNTERS {
            total += http.counter(node.addr, &format!("t{c}")).await;
        }
        if total == expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        total, expected,
        "money lost or made after {moved} transfers"
    );
    // Nothing more arrives later (a duplicate would).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = 0;
    for c in 0..COUNTERS {
        again += http.counter(node.addr, &format!("t{c}")).await;
    }
    assert_eq!(again, expected);
    eprintln!("{moved} transfers acknowledged before kill -9; the total is intact");
}

/// Calls with idempotency keys in flight when the node is killed: retried after the restart
/// with the same keys, each is applied exactly once, and a call acknowledged before the kill
/// gets its first reply again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_after_kill_9_apply_once() {
    const CALLS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    let mut callers = Vec::new();
    for i in 0..CALLS {
        let (http, addr) = (http.clone(), node.addr);
        callers.push(tokio::spawn(async move {
            // Spread over time, so that the kill lands among them.
            tokio::time::sleep(Duration::from_millis((i as u64 % 100) * 3)).await;
            let key = format!("k{i}");
            let path = format!("/v1/counter/i{}", i % 40);
            http.post_with_key(addr, &path, Some(&key), r#"{"add": 1}"#)
                .await
                .ok()
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    node.kill9();
    let mut first = Vec::new();
    for c in callers {
        first.push(c.await.unwrap());
    }
    let acknowledged = first.iter().filter(|r| r.is_some()).count();

    let node = Node::start(dir.path());
    for (i, first) in first.iter().enumerate() {
        let (status, reply) = http
            .post_with_key(
                node.addr,
                &format!("/v1/counter/i{}", i % 40),
                Some(&format!("k{i}")),
                r#"{"add": 1}"#,
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{reply}");
        if let Some((200, original)) = first {
            assert_eq!(&reply, original, "call {i}: the retry got another reply");
        }
    }
    let mut total = 0;
    for c in 0..40 {
        total += http.counter(node.addr, &format!("i{c}")).await;
    }
    assert_eq!(total, CALLS as i64, "each call applied exactly once");
    eprintln!("{acknowledged} of {CALLS} calls were acknowledged before kill -9");
}

/// Configures the queue at `path` to run `concurrency` jobs at once and submits `jobs`, each
/// as (number, work in ms, attempts that fail): job `j{number}`.
async fn submit(
    http: &Http,
    node: &Node,
    path: &str,
    concurrency: u32,
    jobs: impl Iterator<Item = (u64, u64, u32)>,
) {
    let configure = format!(r#"{{"configure": {{"concurrency": {concurrency}}}}}"#);
    post(http, node, path, &configure).await;
    for (j, work_ms, fails) in jobs {
        let job = format!(
            r#"{{"submit": {{"job": {{"name": "j{j}", "work_ms": {work_ms}, "fails": {fails}}}}}}}"#
        );
        post(http, node, path, &job).await;
    }
}

/// A queue killed while its jobs run finishes every job after the restart, never running
/// more than its concurrency at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_finishes_every_job_after_kill_9() {
    const JOBS: u64 = 24;
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    submit(
        &http,
        &node,
        "/v1/queue/u1",
        3,
        (0..JOBS).map(|j| (j, 150, 0)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = post(&http, &node, "/v1/queue/u1", r#""status""#).await;
    assert!(before["done"].as_u64().unwrap() < JOBS, "{before}");
    node.kill9();

    let node = Node::start(dir.path());
    let status = wait_for(&http, &node, "/v1/queue/u1", r#""status""#, |s| {
        s["done"] == JOBS
    })
    .await;
    assert_eq!(status["running"], 0, "{status}");
    assert_eq!(status["queued"], 0, "{status}");
    let history = post(&http, &node, "/v1/queue/u1", r#""history""#).await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len() as u64, JOBS);
    let mut edges: Vec<(i64, i32)> = history
        .iter()
        .flat_map(|f| {
            [
                (f["started_ms"].as_i64().unwrap(), 1),
                (f["finished_ms"].as_i64().unwrap(), -1),
            ]
        })
        .collect();
    edges.sort_unstable();
    let (mut now, mut peak) = (0, 0);
    for (_, step) in edges {
        now += step;
        peak = peak.max(now);
    }
    assert!(peak <= 3, "{peak} jobs ran at once: {history:?}");
    eprintln!("{before} before kill -9; all {JOBS} jobs done after, at most {peak} at once");
}

/// Jobs whose work fails five times before it succeeds, with the node killed while they are
/// being retried: after the restart, every job finishes exactly once, with its success (the
/// retries start over: attempts are counted per node run), and no pending row is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_being_retried_at_kill_9_finish_once_after_the_restart() {
    const JOBS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    let jobs = (0..JOBS as u64).map(|j| (j, 20, 5));
    submit(&http, &node, "/v1/queue/flaky", 6, jobs).await;
    // Five failures and their backoffs (from 50-100 ms, doubling) take over 1.5 s: killed
    // at 300 ms, every job is being retried.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = post(&http, &node, "/v1/queue/flaky", r#""status""#).await;
    assert_eq!(before["done"], 0, "no job can have succeeded yet: {before}");
    node.kill9();

    let node = Node::start(dir.path());
    let status = wait_for(&http, &node, "/v1/queue/flaky", r#""status""#, |s| {
        s["done"] == JOBS
    })
    .await;
    assert_eq!(
        (status["running"].as_u64(), status["queued"].as_u64()),
        (Some(0), Some(0))
    );
    let history = post(&http, &node, "/v1/queue/flaky", r#""history""#).await;
    let mut jobs: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["attempt"], 6, "five failures, then success: {f}");
            assert_eq!(f["result"], serde_json::json!({"ok": null}), "{f}");
            f["job"]["name"].as_str().unwrap()
        })
        .collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ["j0", "j1", "j2", "j3", "j4", "j5"], "each job once");
    stop(node);
    let db = rusqlite::Connection::open(dir.path().join("perennial.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM all_pending", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 0, "no effect's row is left");
}

/// The table's turn timer folds a player who does not act, even when the node was killed
/// after the timer was set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_timer_fires_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    let path = "/v1/table/slow";
    post(
        &http,
        &node,
        path,
        r#"{"configure": {"turn_timeout_ms": 1500}}"#,
    )
    .await;
    for player in ["alice", "bob"] {
        let join = format!(r#"{{"join": {{"player": "{player}", "chips": 1000}}}}"#);
        post(&http, &node, path, &join).await;
    }
    let dealt = post(&http, &node, path, r#""start_hand""#).await;
    let slow = dealt["to_act"].as_str().unwrap().to_owned();
    assert!(dealt["turn_deadline_ms"].is_i64(), "{dealt}");
    node.kill9();

    let node = Node::start(dir.path());
    let view = wait_for(&http, &node, path, r#""view""#, |v| {
        v["hand"] == 1 && v["to_act"].is_null()
    })
    .await;
    let winners: Vec<&str> = view["last_result"]["pots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["winners"].as_array().unwrap().iter())
        .map(|w| w["player"].as_str().unwrap())
        .collect();
    assert!(
        !winners.contains(&slow.as_str()),
        "{slow} was folded: {view}"
    );
}
