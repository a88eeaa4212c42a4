//! Crash points: the binary kills itself (SIGKILL) at a named durability boundary while
//! transfers (messages between entities), idempotent calls and queue jobs (effects) run.
//! After the restart every call is retried with its key, and each must have been applied
//! exactly once: the counters hold exactly the sum of all transfers, the queue ran every job
//! once, and each reply acknowledged before the crash comes back unchanged.
//!
//! The points are listed in perennial-core's `failpoint` module.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::{Http, Node, post, wait_for};

const COUNTERS: usize = 8;
const CALLERS: usize = 8;
/// Each caller stops after this many transfers; the node must have crashed before.
const TRANSFERS_PER_CALLER: usize = 400;
const JOBS: usize = 6;

/// Transfer `i`: from, to (never the same counter), amount.
fn transfer(i: usize) -> (usize, usize, i64) {
    (i % COUNTERS, (i * 5 + 3) % COUNTERS, (i % 7 + 1) as i64)
}

fn transfer_body(i: usize) -> String {
    let (_, to, amount) = transfer(i);
    format!(r#"{{"transfer": {{"to": "x{to}", "amount": {amount}}}}}"#)
}

fn job_body(j: usize) -> String {
    format!(r#"{{"submit": {{"job": "j{j}", "work_ms": 40}}}}"#)
}

/// What one call got before the crash: its number and its reply, if one came.
type Outcome = (usize, Option<Value>);

/// Runs the workload against a node armed to crash at `point` on its `hit`-th pass, then
/// checks the books after a restart.
async fn crash_at(point: &str, hit: u32) {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_perennial"));
    command.env("FAILPOINTS", format!("{point}={}*off->return", hit - 1));
    let mut node = Node::start_under(command, dir.path());
    let addr = node.addr;

    // Queue jobs first (their effects run while the transfers go on).
    let mut jobs: Vec<Outcome> = Vec::new();
    let configure = r#"{"configure": {"concurrency": 2}}"#;
    let configured = http
        .post_with_key(addr, "/v1/queue/q", Some("configure"), configure)
        .await;
    if configured.is_ok() {
        for j in 0..JOBS {
            let reply = http
                .post_with_key(addr, "/v1/queue/q", Some(&format!("job{j}")), &job_body(j))
                .await;
            jobs.push((j, ok(reply)));
            if jobs.last().is_some_and(|(_, r)| r.is_none()) {
                break;
            }
        }
    }

    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let http = http.clone();
        callers.push(tokio::spawn(async move {
            let mut outcomes: Vec<Outcome> = Vec::new();
            for n in 0..TRANSFERS_PER_CALLER {
                let i = n * CALLERS + c;
                let (from, _, _) = transfer(i);
                let reply = http
                    .post_with_key(
                        addr,
                        &format!("/v1/counter/x{from}"),
                        Some(&format!("t{i}")),
                        &transfer_body(i),
                    )
                    .await;
                let reply = ok(reply);
                let died = reply.is_none();
                outcomes.push((i, reply));
                if died {
                    break;
                }
            }
            outcomes
        }));
    }
    let mut transfers: Vec<Outcome> = Vec::new();
    for c in callers {
        transfers.extend(c.await.unwrap());
    }
    let status = wait_for_exit(&mut node, Duration::from_secs(20));
    assert!(
        status.is_some(),
        "the node never crashed at {point} (hit {hit}): the point is not on this path"
    );
    drop(node);
    let acknowledged = transfers.iter().filter(|(_, r)| r.is_some()).count();

    // Restart without crash points; retry every call with its key.
    let node = Node::start(dir.path());
    let addr = node.addr;
    let retry = |path: String, key: String, body: String| {
        let http = http.clone();
        async move {
            let (status, reply) = http
                .post_with_key(addr, &path, Some(&key), &body)
                .await
                .expect("the restarted node answers");
            assert_eq!(status, 200, "{path} {key}: {reply}");
            reply
        }
    };
    retry("/v1/queue/q".into(), "configure".into(), configure.into()).await;
    for j in 0..JOBS {
        let reply = retry("/v1/queue/q".into(), format!("job{j}"), job_body(j)).await;
        if let Some((_, Some(first))) = jobs.get(j) {
            assert_eq!(&reply, first, "{point}: job {j} got another reply");
        }
    }
    let mut expected = [0i64; COUNTERS];
    for (i, first) in &transfers {
        let (from, to, amount) = transfer(*i);
        let reply = retry(
            format!("/v1/counter/x{from}"),
            format!("t{i}"),
            transfer_body(*i),
        )
        .await;
        if let Some(first) = first {
            assert_eq!(&reply, first, "{point}: transfer {i} got another reply");
        }
        expected[from] -= amount;
        expected[to] += amount;
    }

    // Every transfer and job applied exactly once, once the messages are delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut balances;
    loop {
        balances = [0i64; COUNTERS];
        for (c, balance) in balances.iter_mut().enumerate() {
            *balance = http.counter(addr, &format!("x{c}")).await;
        }
        if balances == expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        balances,
        expected,
        "{point}: counters after {} transfers",
        transfers.len()
    );
    let queue = wait_for(&http, &node, "/v1/queue/q", r#""status""#, |s| {
        s["done"] == JOBS
    })
    .await;
    assert_eq!(queue["done"], JOBS, "{point}: {queue}");
    assert_eq!(queue["running"], 0, "{point}: {queue}");
    let history = post(&http, &node, "/v1/queue/q", r#""history""#).await;
    assert_eq!(
        history.as_array().unwrap().len(),
        JOBS,
        "{point}: {history}"
    );
    // Nothing more arrives later (a duplicate would).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (c, want) in expected.iter().enumerate() {
        assert_eq!(
            http.counter(addr, &format!("x{c}")).await,
            *want,
            "{point}: x{c} late"
        );
    }
    eprintln!(
        "{point} (hit {hit}): crashed after {acknowledged} of {} transfers and {} of {JOBS} \
         job submissions were acknowledged; all applied exactly once after the restart",
        transfers.len(),
        jobs.iter().filter(|(_, r)| r.is_some()).count(),
    );
}

/// A 200 reply, or `None` if the node died first; any other answer fails the test.
fn ok(reply: Result<(u16, Value), String>) -> Option<Value> {
    match reply {
        Ok((200, value)) => Some(value),
        Ok((status, value)) => panic!("{status} {value}"),
        Err(_) => None,
    }
}

/// Waits until the node exits on its own.
fn wait_for_exit(node: &mut Node, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = node.child.try_wait().expect("the child can be polled") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

macro_rules! crash_point_tests {
    ($($test:ident: $point:literal at $hit:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            crash_at($point, $hit).await;
        }
    )*};
}

crash_point_tests! {
    crash_before_a_commit: "commit.before" at 150;
    crash_after_a_commit_before_any_reply: "commit.after" at 150;
    crash_after_messages_are_written_before_delivery: "commit.rows_written" at 80;
    crash_after_a_delivery_is_applied_before_the_dispatcher_hears: "commit.rows_applied" at 80;
    crash_after_an_idempotent_reply_is_kept_before_it_is_sent: "commit.reply_kept" at 80;
    crash_when_a_message_is_taken_for_delivery: "dispatch.deliver" at 80;
    crash_after_an_effect_finishes_before_its_result_is_delivered: "effect.finished" at 3;
}
