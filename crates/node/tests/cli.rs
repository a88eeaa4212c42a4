//! The operator's client subcommands (`call`, `entities`, `query`, `index`, `state`,
//! `pause`, `resume`, `dead-letters`, `passivate`) against the real binary serving on a loopback port: their tables, their
//! `--json` (which must parse, and be all of stdout), and their errors, each with a hint and
//! a non-zero exit.

use std::process::{Command, Output};

use perennial_core::{EntityId, EntityKey};
use perennial_storage::{Batch, DeadLetter, DeadLetterWrite, Store};
use perennial_storage_sqlite::SqliteStore;
use serde_json::{Value, json};

use crate::node::{Node, perennial};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const CLIENT_TOKEN: &str = "client-token-0123456789";

/// A node whose admin API takes [`ADMIN_TOKEN`].
fn admin_node(data: &std::path::Path) -> Node {
    let mut command = perennial();
    command.env("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN);
    Node::start_under(command, data)
}

/// Runs the binary with `args` against `node`, with `env` set.
fn run(node: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command: Command = perennial();
    command
        .args(args)
        .arg("--node")
        .arg(node)
        .envs(env.iter().copied());
    command.output().expect("the binary runs")
}

/// Runs an admin subcommand against `node` with the admin token; it must succeed.
fn admin(node: &Node, args: &[&str]) -> String {
    let out = run(&node.url(), &[("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN)], args);
    ok(&out, args)
}

/// Like [`admin`], with `--json`: stdout is one JSON value and nothing else.
fn admin_json(node: &Node, args: &[&str]) -> Value {
    let args = [args, &["--json"]].concat();
    let stdout = admin(node, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout:?}"))
}

/// `perennial call` against `node`; it must succeed.
fn call(node: &Node, args: &[&str]) -> String {
    let args = [&["call"], args].concat();
    ok(&run(&node.url(), &[], &args), &args)
}

fn ok(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// The stderr of a run that must fail with exit code 1 and print nothing on stdout.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `call` prints the reply (pretty, or as sent with `--json`), reads the message from stdin
/// when it is `-`, and sends `--idempotency-key` so that a retry is applied once.
#[test]
fn call_prints_the_reply_and_takes_stdin_and_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let pretty = call(&node, &["counter/c1", r#"{"add": 2}"#]);
    assert_eq!(pretty, "{\n  \"value\": 2\n}\n");
    assert_eq!(
        call(&node, &["counter/c1", "--json", r#"{"add": 3}"#]),
        "{\"value\":5}\n"
    );

    let mut child = perennial()
        .args(["call", "counter/c1", "-", "--json", "--node"])
        .arg(node.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), br#"{"add": 10}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok(&out, &["call", "-"]), "{\"value\":15}\n");

    for _ in 0..3 {
        let reply = call(
            &node,
            &[
                "counter/c1",
                r#"{"add": 100}"#,
                "--idempotency-key",
                "pay-1",
                "--json",
            ],
        );
        assert_eq!(reply, "{\"value\":115}\n", "a retry gets the first reply");
    }
    let value = call(&node, &["counter/c1", r#""get""#, "--json"]);
    assert_eq!(
        value, "{\"value\":115}\n",
        "the keyed call was applied once"
    );

    // An id with a slash and a space arrives whole.
    call(&node, &["counter/a/b c", r#"{"add": 1}"#]);
    let value = call(&node, &["counter/a/b c", r#""get""#, "--json"]);
    assert_eq!(value, "{\"value\":1}\n");

    let out = run(&node.url(), &[], &["call", "counter/c1", "get"]);
    let stderr = failed(&out);
    assert!(stderr.contains("the message is not JSON"), "{stderr}");
    assert!(stderr.contains(r#"'"get"'"#), "{stderr}");
}

/// A node started with a client token refuses `call` without it, and says which variable
/// sets it; `PERENNIAL_CLIENT_TOKEN` (or `--token`) lets the call in.
#[test]
fn call_takes_the_client_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = perennial();
    command.env("PERENNIAL_CLIENT_TOKEN", CLIENT_TOKEN);
    let node = Node::start_under(command, dir.path());
    let args = ["call", "counter/c1", r#"{"add": 1}"#];
    let stderr = failed(&run(&node.url(), &[], &args));
    assert!(stderr.contains("401"), "{stderr}");
    assert!(
        stderr.contains("hint: set --token or PERENNIAL_CLIENT_TOKEN"),
        "{stderr}"
    );
    let out = run(
        &node.url(),
        &[("PERENNIAL_CLIENT_TOKEN", CLIENT_TOKEN)],
        &args,
    );
    assert_eq!(ok(&out, &args), "{\n  \"value\": 1\n}\n");
    let with_flag = [&args[..], &["--token", CLIENT_TOKEN, "--json"]].concat();
    assert_eq!(
        ok(&run(&node.url(), &[], &with_flag), &with_flag),
        "{\"value\":2}\n"
    );
}

/// `entities` lists a kind in id order as a table (with residency and last activity) or as
/// the node's JSON, a page at a time.
#[test]
fn entities_lists_a_kind_as_a_table_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = admin_node(dir.path());
    for id in ["c2", "c1", "c3"] {
        call(&node, &[&format!("counter/{id}"), r#"{"add": 1}"#]);
    }
    let page = admin_json(&node, &["entities", "counter"]);
    let ids: Vec<&str> = page["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "c2", "c3"]);
    assert_eq!(page["entities"][0]["resident"], true);
    assert_eq!(page["entities"][0]["state_version"], 1);
    assert_eq!(page["next"], Value::Null);

    let table = admin(&node, &["entities", "counter"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for column in [
        "ID",
        "RESIDENT",
        "STATE VERSION",
        "LAST STEP",
        "LAST ACTIVITY",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(
        !lines[0].contains('\u{1b}'),
        "no colour when stdout is not a terminal"
    );
    let c1: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(c1[..4], ["c1", "yes", "1", "0"], "{table}");
    assert!(
        lines[1].ends_with("just now") || lines[1].ends_with("s ago"),
        "{table}"
    );

    // Colour only where asked for, and never against NO_COLOR.
    let forced = [
        ("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN),
        ("CLICOLOR_FORCE", "1"),
    ];
    let out = run(&node.url(), &forced, &["entities", "counter"]);
    assert!(ok(&out, &[]).starts_with("\u{1b}["), "a bold header");
    let out = run(
        &node.url(),
        &[forced[0], forced[1], ("NO_COLOR", "1")],
        &["entities", "counter"],
    );
    assert_eq!(ok(&out, &[]), table);

    let page = admin_json(&node, &["entities", "counter", "--limit", "2"]);
    assert_eq!(page["entities"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], "c2");
    let page = admin_json(&node, &["entities", "counter", "--after", "c2"]);
    assert_eq!(page["entities"][0]["id"], "c3");
    assert_eq!(page["entities"].as_array().unwrap().len(), 1);
    // The note about the next page goes to stderr, not into the table.
    let out = run(
        &node.url(),
        &[("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["entities", "counter", "--limit", "2"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--after 'c2'"), "{stderr}");
}

/// `state` shows an entity's latest durable state, its history, and its state at a past
/// step.
#[test]
fn state_shows_the_state_the_history_and_a_past_step() {
    let dir = tempfile::tempdir().unwrap();
    let node = admin_node(dir.path());
    call(&node, &["counter/c1", r#"{"add": 7}"#]);
    let state = admin_json(&node, &["state", "counter/c1"]);
    assert_eq!(state["state"], json!({"value": 7}));
    let text = admin(&node, &["state", "counter/c1"]);
    assert_eq!(text, "counter/c1\n{\n  \"value\": 7\n}\n");

    for player in ["alice", "bob"] {
        call(
            &node,
            &[
                "table/t1",
                &format!(r#"{{"join": {{"player": "{player}", "chips": 500}}}}"#),
            ],
        );
    }
    let history = admin_json(&node, &["state", "table/t1", "--history"]);
    let steps = history["history"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{history}");
    assert_eq!(steps[1]["message"]["join"]["player"], "bob");
    let later = admin_json(&node, &["state", "table/t1", "--history", "--after", "1"]);
    assert_eq!(later["history"].as_array().unwrap().len(), 1);
    let table = admin(&node, &["state", "table/t1", "--history"]);
    assert!(table.lines().next().unwrap().starts_with("STEP"), "{table}");
    assert!(
        table.contains(r#"{"join":{"chips":500,"player":"alice"}}"#),
        "{table}"
    );

    let past = admin_json(&node, &["state", "table/t1", "--at", "1"]);
    assert_eq!(past["step"], 1);
    let now = admin_json(&node, &["state", "table/t1"]);
    assert_ne!(
        past["state"], now["state"],
        "step 1 has one player, now two"
    );
    let text = admin(&node, &["state", "table/t1", "--at", "1"]);
    assert!(text.starts_with("table/t1 at step 1\n{"), "{text}");
}

/// `passivate` takes a kind or one entity; `entities` then shows them not resident.
/// `query` finds entities by state (a table, or the node's JSON), `index` makes, lists and
/// drops an index, and `pause` / `resume` stop and restart an entity's calls.
#[test]
fn query_index_pause_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let node = admin_node(dir.path());
    for (id, n) in [("a", "5"), ("b", "500"), ("c", "150")] {
        call(
            &node,
            &[&format!("counter/{id}"), &format!(r#"{{"add": {n}}}"#)],
        );
    }
    let found = admin_json(&node, &["query", "counter", "value > 100"]);
    let ids: Vec<&str> = found["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "c"]);
    let table = admin(&node, &["query", "counter", "value > 100", "--limit", "1"]);
    assert!(
        table.contains("ID") && table.contains(r#"{"value":500}"#),
        "{table}"
    );
    assert!(!table.contains(r#"{"value":150}"#), "{table}");

    assert!(admin(&node, &["index", "counter", "value"]).contains("indexed by value"));
    assert_eq!(
        admin_json(&node, &["index", "counter"])["indexes"],
        json!(["value"])
    );
    assert!(admin(&node, &["index", "counter", "value", "--drop"]).contains("dropped"));
    assert!(admin(&node, &["index", "counter"]).contains("no indexes"));

    assert!(admin(&node, &["pause", "counter/b"]).contains("paused"));
    let out = run(&node.url(), &[], &["call", "counter/b", r#"{"add": 1}"#]);
    assert!(failed(&out).contains("paused"));
    assert_eq!(admin_json(&node, &["pause", "counter/b"])["changed"], false);
    assert!(admin(&node, &["resume", "counter/b"]).contains("resumed"));
    assert!(call(&node, &["counter/b", r#"{"add": 1}"#]).contains("501"));

    assert!(admin(&node, &["delete", "counter/b"]).contains("deleted"));
    assert_eq!(
        admin_json(&node, &["delete", "counter/b", "--force"])["deleted"],
        true
    );
    assert!(call(&node, &["counter/b", r#"{"add": 1}"#]).contains('1'));

    let out = run(
        &node.url(),
        &[("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["query", "counter", "value >"],
    );
    assert!(failed(&out).contains("bad_filter"));
}

#[test]
fn passivate_a_kind_or_one_entity() {
    let dir = tempfile::tempdir().unwrap();
    let node = admin_node(dir.path());
    for id in ["c1", "c2", "c3"] {
        call(&node, &[&format!("counter/{id}"), r#"{"add": 1}"#]);
    }
    let done = admin_json(&node, &["passivate", "counter/c1"]);
    assert_eq!(done, json!({"outcome": "passivated"}));
    let text = admin(&node, &["passivate", "counter/c1"]);
    assert_eq!(text, "counter/c1: was not in memory\n");
    let done = admin_json(&node, &["passivate", "counter"]);
    assert_eq!(done, json!({"passivated": 2, "busy": 0}));
    let page = admin_json(&node, &["entities", "counter"]);
    for entity in page["entities"].as_array().unwrap() {
        assert_eq!(entity["resident"], false, "{page}");
    }
    let text = admin(&node, &["passivate", "counter"]);
    assert_eq!(
        text,
        "counter: 0 passivated, 0 busy (they stay in memory)\n"
    );
}

/// Writes two dead letters to a data directory, as a node whose handler panicked would
/// have: the demo kinds never panic, so the test puts them where a crashed run left them.
pub(crate) async fn seed_dead_letters(dir: &std::path::Path) {
    let store = SqliteStore::open(dir).unwrap();
    let mut batch = Batch::default();
    for (kind, id, message) in [
        ("counter", "d1", r#"{"add": 7}"#),
        ("house", "h1", r#""stats""#),
    ] {
        let shard = perennial_types::shard_of(kind, id);
        let epoch = store.claim("seed", &[shard]).await.unwrap();
        batch.dead_letters.push(DeadLetterWrite {
            shard,
            epoch,
            letter: DeadLetter {
                key: EntityKey::new(kind, EntityId::new(id).unwrap()),
                message: message.to_owned(),
                error: "panicked at 'boom'".to_owned(),
                attempts: 3,
                at_ms: 1_700_000_000_000,
            },
        });
    }
    let outcome = store.commit(batch).unwrap();
    assert!(outcome.fenced.is_empty());
    store.close().await.unwrap();
}

/// `dead-letters` lists (all, or one kind's), `show`s, `retry`s (the message is applied and
/// the letter gone) and `discard`s; a letter no longer there is a `404` with its code.
#[tokio::test]
async fn dead_letters_are_listed_shown_retried_and_discarded() {
    let dir = tempfile::tempdir().unwrap();
    seed_dead_letters(dir.path()).await;
    let node = admin_node(dir.path());
    let list = admin_json(&node, &["dead-letters"]);
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{list}");
    let counter_seq = letters[0]["seq"].as_u64().unwrap();
    let house_seq = letters[1]["seq"].as_u64().unwrap();
    let only = admin_json(&node, &["dead-letters", "--kind", "house"]);
    assert_eq!(only["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(only["dead_letters"][0]["id"], "h1");
    let table = admin(&node, &["dead-letters"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("counter/d1"), "{table}");
    assert!(table.contains("panicked at 'boom'"), "{table}");

    let counter_seq = counter_seq.to_string();
    let letter = admin_json(&node, &["dead-letters", "show", &counter_seq]);
    assert_eq!(letter["message"], json!({"add": 7}));
    assert_eq!(letter["attempts"], 3);
    let text = admin(&node, &["dead-letters", "show", &counter_seq]);
    assert!(text.contains("counter/d1"), "{text}");
    assert!(text.contains("\"add\": 7"), "{text}");

    let retried = admin_json(&node, &["dead-letters", "retry", &counter_seq]);
    assert_eq!(retried, json!({"reply": {"value": 7}}));
    assert_eq!(
        call(&node, &["counter/d1", r#""get""#, "--json"]),
        "{\"value\":7}\n"
    );

    let house_seq = house_seq.to_string();
    let text = admin(&node, &["dead-letters", "discard", &house_seq]);
    assert_eq!(text, format!("dead letter {house_seq} discarded\n"));
    let list = admin_json(&node, &["dead-letters"]);
    assert_eq!(list["dead_letters"], json!([]));
    assert!(admin(&node, &["dead-letters"]).contains("(none)"));

    let out = run(
        &node.url(),
        &[("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["dead-letters", "show", &counter_seq, "--json"],
    );
    let stderr = failed(&out);
    assert!(stderr.contains("no_such_letter"), "{stderr}");
    assert!(stderr.contains("(404)"), "{stderr}");
}

/// Every failure says what happened and what to do, on stderr, and exits 1 with nothing on
/// stdout (even with `--json`): no node, no token, a wrong token, a node without an admin
/// token, an unknown kind.
#[test]
fn errors_carry_a_hint_and_a_nonzero_exit() {
    // A port nothing listens on: bound, then released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    for args in [
        &["entities", "counter", "--json"][..],
        &["call", "counter/c1", r#"{"add": 1}"#],
        &["dead-letters", "show", "1"],
    ] {
        let stderr = failed(&run(&nobody, &[], args));
        assert!(
            stderr.contains(&format!("cannot reach {nobody}")),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "hint: is a node running at {nobody}? start one with `perennial serve`"
            )),
            "{stderr}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let node = admin_node(dir.path());
    let stderr = failed(&run(&node.url(), &[], &["entities", "counter", "--json"]));
    assert!(stderr.contains("401 unauthorized"), "{stderr}");
    assert!(
        stderr.contains("hint: set --token or PERENNIAL_ADMIN_TOKEN"),
        "{stderr}"
    );
    let stderr = failed(&run(
        &node.url(),
        &[("PERENNIAL_ADMIN_TOKEN", "not-the-token-0123456789")],
        &["state", "counter/c1"],
    ));
    assert!(stderr.contains("the node refused the token"), "{stderr}");
    assert!(stderr.contains("PERENNIAL_ADMIN_TOKEN"), "{stderr}");
    let stderr = failed(&run(
        &node.url(),
        &[("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["entities", "nope", "--json"],
    ));
    assert!(stderr.contains("unknown_kind"), "{stderr}");
    assert!(stderr.contains(r#"no kind named "nope""#), "{stderr}");

    let closed = tempfile::tempdir().unwrap();
    let node = Node::start(closed.path());
    let stderr = failed(&run(
        &node.url(),
        &[("PERENNIAL_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["passivate", "counter"],
    ));
    assert!(stderr.contains("403 disabled"), "{stderr}");
    assert!(
        stderr.contains("hint: the node has no admin token; restart it with --admin-token"),
        "{stderr}"
    );
}
