//! `Journal` kinds in the real binary: the `house`'s closure and the `table`'s shuffles come
//! back identical after kill -9, including a kill in the middle of a replay.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;

use crate::node::{Http, Node, post};

/// A house whose rule is a closure keeps paying by it after kill -9; a coin-flipping house
/// keeps the results its journaled randomness gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_in_the_state_behaves_the_same_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    post(
        &http,
        &node,
        "/v1/house/pct",
        r#"{"open": {"rule": "percent", "amount": 10}}"#,
    )
    .await;
    post(
        &http,
        &node,
        "/v1/house/coin",
        r#"{"open": {"rule": "double_or_nothing"}}"#,
    )
    .await;
    let mut coin = Value::Null;
    for _ in 0..30 {
        coin = post(&http, &node, "/v1/house/coin", r#"{"bet": 10}"#).await;
    }
    let pct = post(&http, &node, "/v1/house/pct", r#"{"bet": 200}"#).await;
    assert_eq!(pct["payout"], 220);
    node.kill9();

    let node = Node::start(dir.path());
    let pct = post(&http, &node, "/v1/house/pct", r#"{"bet": 50}"#).await;
    assert_eq!(pct["payout"], 55, "the closure's behaviour is intact");
    assert_eq!(pct["bets"], 2);
    let stats = post(&http, &node, "/v1/house/coin", r#""stats""#).await;
    assert_eq!(stats["paid"], coin["paid"]);
    assert_eq!(stats["bets"], 30);
}

/// What one table driver saw: its last acknowledged view, and whether a request was in flight
/// when the node died (and which).
#[derive(Default)]
struct Seen {
    last: Option<Value>,
    pending: Option<&'static str>,
}

/// Tables played hand after hand by concurrent drivers, killed mid-play (so some kills land
/// while a snapshot is being written, every 64 steps): after a restart each table is exactly
/// at its last acknowledged view (same hand, same cards), or one step further if a request
/// was in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_lose_no_acknowledged_action_and_deal_the_same_cards_after_kill_9() {
    const TABLES: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    let seen: Vec<Arc<Mutex<Seen>>> = (0..TABLES).map(|_| Arc::default()).collect();
    let mut drivers = Vec::new();
    for (t, seen) in seen.iter().enumerate() {
        let (http, addr, seen) = (http.clone(), node.addr, Arc::clone(seen));
        drivers.push(tokio::spawn(async move {
            let path = format!("/v1/table/t{t}");
            for player in ["alice", "bob"] {
                let join = format!(r#"{{"join": {{"player": "{player}", "chips": 100000}}}}"#);
                if http.post(addr, &path, &join).await.is_err() {
                    return;
                }
            }
            loop {
                let to_act = {
                    let seen = seen.lock();
                    seen.last
                        .as_ref()
                        .and_then(|v| v["to_act"].as_str().map(str::to_owned))
                };
                let (name, body) = match to_act {
                    Some(player) => (
                        "fold",
                        format!(r#"{{"act": {{"player": "{player}", "action": "fold"}}}}"#),
                    ),
                    None => ("start_hand", r#""start_hand""#.to_owned()),
                };
                seen.lock().pending = Some(name);
                match http.post(addr, &path, &body).await {
                    Ok((200, view)) => {
                        let mut seen = seen.lock();
                        seen.last = Some(view);
                        seen.pending = None;
                    }
                    Ok((status, body)) => panic!("{path}: {status} {body}"),
                    Err(_) => return, // the node died with this request in flight
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    for d in drivers {
        d.await.unwrap();
    }

    let node = Node::start(dir.path());
    let mut steps_after_snapshot = 0;
    for (t, seen) in seen.iter().enumerate() {
        let (last, pending) = {
            let seen = seen.lock();
            (seen.last.clone(), seen.pending)
        };
        let Some(last) = last else {
            continue;
        };
        let view = post(&http, &node, &format!("/v1/table/t{t}"), r#""view""#).await;
        if view == last {
            continue;
        }
        // Only the request in flight may have been applied on top of the acknowledged view.
        let hand = last["hand"].as_u64().unwrap();
        match pending {
            Some("start_hand") => {
                assert_eq!(
                    view["hand"].as_u64(),
                    Some(hand + 1),
                    "t{t}: {view}\nwas {last}"
                );
            }
            Some("fold") => {
                assert_eq!(
                    view["hand"].as_u64(),
                    Some(hand),
                    "t{t}: {view}\nwas {last}"
                );
                assert_eq!(view["street"], "waiting", "t{t}");
            }
            _ => panic!("t{t} lost acknowledged actions:\n now {view}\n was {last}"),
        }
        steps_after_snapshot += 1;
    }
    let played: u64 = seen
        .iter()
        .filter_map(|s| s.lock().last.as_ref().and_then(|v| v["hand"].as_u64()))
        .sum();
    assert!(played > 0, "no hand was played before the kill");
    eprintln!(
        "{played} hands played; {steps_after_snapshot} tables had a request in flight applied"
    );
}

/// A kill during a replay (a long journal being read back) loses nothing: the journal is
/// only read, and the next start replays it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_replay_loses_nothing() {
    const CALLERS: usize = 16;
    const BETS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    post(
        &http,
        &node,
        "/v1/house/big",
        r#"{"open": {"rule": "flat", "amount": 1}}"#,
    )
    .await;
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (http, addr) = (http.clone(), node.addr);
        callers.push(tokio::spawn(async move {
            for _ in 0..BETS {
                let (status, body) = http
                    .post(addr, "/v1/house/big", r#"{"bet": 2}"#)
                    .await
                    .unwrap();
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    node.kill9();
    let bets = (CALLERS * BETS) as u64;
    // Kill each new node while its first call replays the journal, at growing delays.
    for delay_ms in [0, 2, 5, 10] {
        let node = Node::start(dir.path());
        let (http2, addr) = (http.clone(), node.addr);
        let call =
            tokio::spawn(async move { http2.post(addr, "/v1/house/big", r#""stats""#).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        node.kill9();
        let _ = call.await;
    }
    let node = Node::start(dir.path());
    let stats = post(&http, &node, "/v1/house/big", r#""stats""#).await;
    assert_eq!(stats["bets"].as_u64(), Some(bets));
    assert_eq!(stats["paid"].as_u64(), Some(bets * 3));
}

/// Runs `perennial inspect --json` with `args`; returns its JSON output.
fn inspect(dir: &std::path::Path, args: &[&str]) -> Result<Value, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_perennial"))
        .args(["inspect", "--json", "--data"])
        .arg(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `perennial inspect` reads a killed node's directory: kinds, entities, a state, a history
/// and a past state, without the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_kinds_entities_states_history_and_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::new();
    let node = Node::start(dir.path());
    for body in [
        r#"{"join": {"player": "alice", "chips": 500}}"#,
        r#"{"join": {"player": "bob", "chips": 700}}"#,
        r#""start_hand""#,
    ] {
        post(&http, &node, "/v1/table/t1", body).await;
    }
    // The open mode: anyone may read as any player.
    let views = [
        post(
            &http,
            &node,
            "/v1/table/t1",
            r#"{"view_for": {"player": "alice"}}"#,
        )
        .await,
        post(
            &http,
            &node,
            "/v1/table/t1",
            r#"{"view_for": {"player": "bob"}}"#,
        )
        .await,
    ];
    let live = &views[0];
    post(&http, &node, "/v1/counter/c1", r#"{"add": 9}"#).await;
    // While the node runs, listing and history work; a replay needs it stopped.
    let kinds = inspect(dir.path(), &[]).unwrap();
    assert_eq!(kinds.as_array().map(Vec::len), Some(2), "{kinds}");
    let err = inspect(dir.path(), &["table", "t1", "--at", "1"]).unwrap_err();
    assert!(err.contains("node is running"), "{err}");
    node.kill9();

    let kinds = inspect(dir.path(), &[]).unwrap();
    assert_eq!(kinds[1]["kind"], "table");
    assert_eq!(kinds[1]["journal_entries"], 3);
    let entities = inspect(dir.path(), &["table"]).unwrap();
    assert_eq!(entities[0]["id"], "t1");
    assert_eq!(entities[0]["last_step"], 3);
    let history = inspect(dir.path(), &["table", "t1", "--history"]).unwrap();
    assert_eq!(history[1]["message"]["join"]["player"], "bob");
    assert_eq!(history[2]["message"], "start_hand");
    assert!(
        history[2]["recorded"]["seed"].is_string(),
        "the shuffle's seed"
    );
    // The latest state, by replay: the same hand and cards the node dealt.
    let now = inspect(dir.path(), &["table", "t1"]).unwrap();
    assert_eq!(now["step"], 3);
    assert_eq!(now["state"]["hand_number"], live["hand"]);
    let seats = now["state"]["seats"].to_string();
    let shown: Vec<&serde_json::Value> = views
        .iter()
        .flat_map(|view| view["seats"].as_array().unwrap())
        .flat_map(|seat| seat["hole_cards"].as_array().unwrap())
        .collect();
    assert_eq!(shown.len(), 4, "each player sees their own two cards");
    for card in shown {
        assert!(seats.contains(&card.to_string()), "{card} not in {seats}");
    }
    // The past: after the first join, one player sat with 500 chips.
    let past = inspect(dir.path(), &["table", "t1", "--at", "1"]).unwrap();
    let seats = past["state"]["seats"].to_string();
    assert!(seats.contains("alice") && !seats.contains("bob"), "{seats}");
    // A snapshot kind: its state, and a clear refusal of a past step.
    let counter = inspect(dir.path(), &["counter", "c1"]).unwrap();
    assert_eq!(counter["state"]["value"], 9);
    let err = inspect(dir.path(), &["counter", "c1", "--at", "7"]).unwrap_err();
    assert!(err.contains("Journal kind to keep history"), "{err}");
    let err = inspect(dir.path(), &["nope", "x"]).unwrap_err();
    assert!(err.contains("no stored state"), "{err}");
}
