//! Corrupt stored bytes, made by hand with SQL in a stopped node's data directory: each
//! damaged entity answers a typed error naming it, is quarantined (listed by the admin API
//! and the CLI, its calls refused, its messages held), its bytes are never overwritten, the
//! other entities serve, and once an operator fixes the bytes a release brings it back. A
//! damaged log row, which holds the states of many entities, stops the node from starting,
//! with an error naming the row, and changes nothing.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use crate::node::{Http, Node, perennial, post, start_with_admin, stop};
use crate::probes::{ADMIN, metric};

fn db(data: &Path) -> Connection {
    Connection::open(data.join("perennial.db")).unwrap()
}

/// Every stored byte of an entity: its state row and its journal, as text.
fn bytes_of(conn: &Connection, kind: &str, id: &str) -> String {
    let state: Option<String> = conn
        .query_row(
            "SELECT version || ':' || state FROM entities WHERE kind = ?1 AND id = ?2",
            [kind, id],
            |r| r.get(0),
        )
        .ok();
    let mut stmt = conn
        .prepare(
            "SELECT step || ':' || entry FROM journal WHERE kind = ?1 AND id = ?2 ORDER BY step",
        )
        .unwrap();
    let journal: Vec<String> = stmt
        .query_map([kind, id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    format!("{state:?} {journal:?}")
}

/// A call answered with an error: its status and code.
async fn error_of(http: &Http, node: &Node, path: &str, body: &str) -> (u16, String) {
    let (status, reply) = http.post(node.addr, path, body).await.unwrap();
    assert_ne!(status, 200, "{path}: {reply}");
    (
        status,
        reply["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entities_are_quarantined_untouched_and_released_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = start_with_admin(&data);
    let http = Http::new();
    for id in ["cut", "typed", "fine", "payer"] {
        post(&http, &node, &format!("/v1/counter/{id}"), r#"{"add": 5}"#).await;
    }
    for id in ["garbled", "holed", "good"] {
        for n in 0..5 {
            let body = format!(r#"{{"append": "{id}-{n}"}}"#);
            post(&http, &node, &format!("/v1/jprobe/{id}"), &body).await;
        }
    }
    stop(node);

    // The damage, one kind per entity.
    let conn = db(&data);
    let damage = [
        // Truncated: no longer JSON.
        "UPDATE entities SET state = substr(state, 1, length(state) - 3) WHERE kind = 'counter' AND id = 'cut'",
        // JSON of the wrong type.
        "UPDATE entities SET state = '{\"value\":\"five\"}' WHERE kind = 'counter' AND id = 'typed'",
        // A journal entry that is not JSON.
        "UPDATE journal SET entry = '{not json' WHERE kind = 'jprobe' AND id = 'garbled' AND step = 2",
        // A hole in a journal.
        "DELETE FROM journal WHERE kind = 'jprobe' AND id = 'holed' AND step = 3",
    ];
    for sql in damage {
        assert_eq!(conn.execute(sql, []).unwrap(), 1, "{sql}");
    }
    let damaged = [
        ("counter", "cut"),
        ("counter", "typed"),
        ("jprobe", "garbled"),
        ("jprobe", "holed"),
    ];
    let before: Vec<String> = damaged.iter().map(|(k, i)| bytes_of(&conn, k, i)).collect();
    drop(conn);

    let node = start_with_admin(&data);
    // Each damaged entity: first the reason, then `quarantined`, whatever the message.
    for (kind, id) in damaged {
        let path = format!("/v1/{kind}/{id}");
        let (body, read) = if kind == "counter" {
            (r#"{"add": 1}"#, r#""get""#)
        } else {
            (r#"{"append": "x"}"#, r#""read""#)
        };
        let (status, code) = error_of(&http, &node, &path, body).await;
        assert_eq!(status, 500, "{path}");
        assert_eq!(code, "corrupt_state", "{path}");
        for body in [body, read] {
            let (status, code) = error_of(&http, &node, &path, body).await;
            assert_eq!((status, code.as_str()), (500, "quarantined"), "{path}");
        }
    }
    // The others serve.
    post(&http, &node, "/v1/counter/fine", r#"{"add": 1}"#).await;
    post(&http, &node, "/v1/jprobe/good", r#"{"append": "good-5"}"#).await;
    // A message to a quarantined entity waits (its row stays stored), it is not lost.
    post(
        &http,
        &node,
        "/v1/counter/payer",
        r#"{"transfer": {"to": "typed", "amount": 2}}"#,
    )
    .await;

    // Listed, with why, by the admin API, the metrics and the CLI.
    let bearer = format!("Bearer {ADMIN}");
    let (status, listed) = http
        .send(
            node.addr,
            "GET",
            "/v1/admin/quarantined",
            &[("authorization", &bearer)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{listed}");
    let listed = listed["quarantined"].as_array().unwrap().clone();
    let names: Vec<String> = listed
        .iter()
        .map(|q| {
            format!(
                "{}/{}",
                q["kind"].as_str().unwrap(),
                q["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "counter/cut",
            "counter/typed",
            "jprobe/garbled",
            "jprobe/holed"
        ]
    );
    let reason = |name: &str| -> String {
        let at = names.iter().position(|n| n == name).unwrap();
        listed[at]["reason"].as_str().unwrap().to_owned()
    };
    assert!(
        reason("counter/typed").contains("invalid type"),
        "{listed:?}"
    );
    assert!(
        reason("jprobe/holed").contains("journal step 3 is missing"),
        "{listed:?}"
    );
    assert_eq!(
        metric(&http, node.addr, "perennial_quarantined_entities").await,
        Some(4.0)
    );
    let out = perennial()
        .args(["quarantined", "--node", &node.url(), "--token", ADMIN])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("counter/typed") && table.contains("corrupt_state"),
        "{table}"
    );

    // Nothing wrote to them.
    let conn = db(&data);
    let after: Vec<String> = damaged.iter().map(|(k, i)| bytes_of(&conn, k, i)).collect();
    assert_eq!(
        after, before,
        "a quarantined entity's bytes must stay as they were"
    );
    let held: i64 = conn
        .query_row(
            "SELECT count(*) FROM all_pending WHERE target_kind = 'counter' AND target_id = 'typed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(held, 1, "the transfer to counter/typed waits in storage");

    // An operator fixes one, and releases it: it serves again, and the transfer arrives.
    conn.execute(
        "UPDATE entities SET state = '{\"value\":5}' WHERE kind = 'counter' AND id = 'typed'",
        [],
    )
    .unwrap();
    drop(conn);
    let (status, released) = http
        .send(
            node.addr,
            "POST",
            "/v1/admin/entities/counter/typed/release",
            &[("authorization", &bearer)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (status, released["released"].clone()),
        (200, Value::Bool(true))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.counter(node.addr, "typed").await != 7 {
        assert!(Instant::now() < deadline, "the held transfer never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.counter(node.addr, "payer").await, 3);
    // One not fixed, released anyway: quarantined again at once.
    let out = perennial()
        .args([
            "release",
            "counter/cut",
            "--node",
            &node.url(),
            "--token",
            ADMIN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        error_of(&http, &node, "/v1/counter/cut", r#""get""#).await,
        (500, "corrupt_state".to_owned())
    );
    stop(node);

    // A damaged log row holds the states of many entities: the node refuses to start, says
    // which row, and leaves the file as it was.
    let conn = db(&data);
    conn.execute(
        "INSERT INTO state_log (seq, at, states) \
         VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM state_log), 0, '[{\"kind\": 1')",
        [],
    )
    .unwrap();
    let log: String = conn
        .query_row(
            "SELECT group_concat(seq || states) FROM state_log",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    let out = perennial()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("corrupt") && stderr.contains("state_log row"),
        "{stderr}"
    );
    let again: String = db(&data)
        .query_row(
            "SELECT group_concat(seq || states) FROM state_log",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(again, log, "a refused start changes nothing");
}
