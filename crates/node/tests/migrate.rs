//! State versions with the real binary: carts stored by older releases (written with SQL
//! into a stopped node's data directory, as those releases wrote them) are migrated by
//! `perennial migrate`, which a SIGKILL interrupts and a second run resumes; a running node
//! migrates them in the background through the admin API while it serves calls; a state from
//! newer code is refused untouched; and `perennial verify-replay` names what this build
//! cannot activate.

use std::path::Path;
use std::process::Output;
use std::time::Instant;

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::node::{Http, perennial, post, start_with_admin, stop};
use crate::probes::ADMIN;

/// A data directory of this build, with `carts` carts stored as release 1 wrote them
/// (`{"items": {sku: dollars}}`, schema version 1), and `extra` more rows `(id, json, schema)`.
async fn old_carts(data: &Path, carts: usize, extra: &[(&str, &str, u32)]) {
    // This build makes the files; the rows are then made old by hand.
    let node = start_with_admin(data);
    post(&Http::new(), &node, "/v1/counter/setup", r#"{"add": 1}"#).await;
    stop(node);
    let mut conn = Connection::open(data.join("perennial.db")).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO entities (kind, id, shard, version, updated_at, state, schema)
                 VALUES ('cart', ?1, ?2, 1, 0, ?3, ?4)",
            )
            .unwrap();
        let rows = (0..carts)
            .map(|n| {
                let state = json!({"items": {"tea": 2.5, format!("sku{n}"): n}}).to_string();
                (format!("c{n:05}"), state, 1)
            })
            .chain(
                extra
                    .iter()
                    .map(|(id, s, v)| ((*id).to_owned(), (*s).to_owned(), *v)),
            );
        for (id, state, schema) in rows {
            let shard = perennial_types::shard_of("cart", &id).0;
            insert
                .execute(rusqlite::params![id, shard, state, schema])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// How many carts are stored at each schema version, in version order.
fn schemas(data: &Path) -> Vec<(u32, i64)> {
    let conn = Connection::open(data.join("perennial.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT schema, count(*) FROM entity_state WHERE kind = 'cart' GROUP BY schema")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn stored(data: &Path, id: &str) -> (String, u32) {
    let conn = Connection::open(data.join("perennial.db")).unwrap();
    conn.query_row(
        "SELECT state, schema FROM entity_state WHERE kind = 'cart' AND id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn run(args: &[&str], data: &Path, failpoints: Option<&str>) -> Output {
    let mut command = perennial();
    command.args(args).arg("--data").arg(data);
    if let Some(failpoints) = failpoints {
        command.env("FAILPOINTS", failpoints);
    }
    command.output().expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const BAD_V2: &str = r#"{"lines": [{"sku": "tea", "qty": 1, "price": -4}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perennial_migrate_rewrites_dormant_carts_and_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    old_carts(&data, 3000, &[("z-bad", BAD_V2, 2)]).await;
    let bad_before = stored(&data, "z-bad");

    // A dry run writes nothing, and names the cart that cannot be migrated.
    let dry = run(&["migrate", "--kind", "cart", "--dry-run"], &data, None);
    let said = text(&dry);
    assert!(!dry.status.success(), "{said}");
    assert!(
        said.contains("3000 of 3001 entities would migrate to schema version 4"),
        "{said}"
    );
    assert!(
        said.contains("cart/z-bad") && said.contains("migration_failed"),
        "{said}"
    );
    assert_eq!(schemas(&data), [(1, 3000), (2, 1)]);

    // A pass killed (SIGKILL, by a crash point) after its 20th commit...
    let killed = run(
        &["migrate", "--kind", "cart", "--batch", "16"],
        &data,
        Some("commit.after=20*off->return"),
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(killed.status.signal(), Some(9), "{}", text(&killed));
    let midway = schemas(&data);
    let done = midway
        .iter()
        .find(|(v, _)| *v == 4)
        .map_or(0, |(_, n)| *n as u64);
    assert!(done > 0 && done < 3000, "{midway:?}");

    // ... is resumed by running it again: the rest is migrated, the bad cart left as it was.
    let started = Instant::now();
    let resumed = run(&["migrate", "--kind", "cart", "--json"], &data, None);
    let elapsed = started.elapsed();
    assert!(
        !resumed.status.success(),
        "one cart fails: {}",
        text(&resumed)
    );
    let report: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(report["changed"], 3000 - done, "{report}");
    assert_eq!(report["unchanged"], done, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["failures"][0]["id"], "z-bad", "{report}");
    eprintln!(
        "migrated {} carts in {elapsed:?} (after {done} before the kill)",
        3000 - done
    );
    assert_eq!(schemas(&data), [(2, 1), (4, 3000)]);
    assert_eq!(
        stored(&data, "z-bad"),
        bad_before,
        "its bytes are untouched"
    );
    let (state, _) = stored(&data, "c00042");
    let cart: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(cart["currency"], "USD");
    assert_eq!(cart["checkout"], Value::Null);
    let mut cents: Vec<(String, u64)> = cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["sku"].as_str().unwrap().to_owned(),
                l["cents"].as_u64().unwrap(),
            )
        })
        .collect();
    cents.sort();
    assert_eq!(cents, [("sku42".to_owned(), 4200), ("tea".to_owned(), 250)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_migrates_in_the_background_and_refuses_newer_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let future = r#"{"lines": [], "currency": "EUR", "checkout": null, "vat": 20}"#;
    old_carts(&data, 1000, &[("future", future, 5)]).await;
    let node = start_with_admin(&data);
    let http = Http::new();
    let bearer = format!("Bearer {ADMIN}");
    let admin = [("authorization", bearer.as_str())];
    let path = "/v1/admin/kinds/cart/migrate";
    let (status, started) = http
        .send(node.addr, "POST", path, &admin, r#"{"batch": 32}"#)
        .await
        .unwrap();
    assert_eq!(status, 202, "{started}");
    // Live traffic meanwhile, on carts being migrated and on other kinds.
    let mut calls = 0;
    let status = loop {
        let n = calls % 1000;
        let reply = post(&http, &node, &format!("/v1/cart/c{n:05}"), r#""view""#).await;
        assert_eq!(reply["cart"]["currency"], "USD", "{reply}");
        post(&http, &node, "/v1/counter/live", r#"{"add": 1}"#).await;
        calls += 1;
        let (_, status) = http.send(node.addr, "GET", path, &admin, "").await.unwrap();
        if status["running"] == false {
            break status;
        }
        assert!(calls < 100_000, "the pass never ended: {status}");
    };
    let report = &status["report"];
    assert_eq!(report["examined"], 1001, "{status}");
    assert_eq!(report["failed"], 1, "{status}");
    assert_eq!(report["failures"][0]["code"], "state_too_new", "{status}");
    let changed = report["changed"].as_u64().unwrap();
    let unchanged = report["unchanged"].as_u64().unwrap();
    assert_eq!(changed + unchanged, 1000, "{status}");
    eprintln!(
        "background pass: {changed} migrated in {} ms beside {calls} pairs of live calls",
        report["elapsed_ms"]
    );
    // Another pass may start once this one is done.
    let (status, _) = http
        .send(node.addr, "POST", path, &admin, "")
        .await
        .unwrap();
    assert_eq!(status, 202);
    // The state from newer code: refused with a clear error, then quarantined.
    let (status, reply) = http
        .post(node.addr, "/v1/cart/future", r#""view""#)
        .await
        .unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (503, Some("state_too_new")),
        "{reply}"
    );
    let (status, reply) = http
        .post(node.addr, "/v1/cart/future", r#""view""#)
        .await
        .unwrap();
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (500, Some("quarantined")),
        "{reply}"
    );
    stop(node);
    assert_eq!(schemas(&data), [(4, 1000), (5, 1)]);
    assert_eq!(stored(&data, "future").0, future, "its bytes are untouched");

    // verify-replay names it, and writes nothing.
    let verified = run(&["verify-replay", "--kind", "cart"], &data, None);
    let said = text(&verified);
    assert!(!verified.status.success(), "{said}");
    assert!(
        said.contains("1001 entities checked, 1 this build cannot activate"),
        "{said}"
    );
    assert!(
        said.contains("cart/future") && said.contains("state_too_new"),
        "{said}"
    );
    let everything = run(&["verify-replay"], &data, None);
    assert!(
        text(&everything).contains("jprobe: 0 entities checked"),
        "{}",
        text(&everything)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_all_leaves_no_journal_step_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = start_with_admin(&data);
    let http = Http::new();
    // 8 steps per snapshot: j1 ends 3 steps past one, j2 exactly on one, j3 before its first.
    for (id, steps) in [("j1", 11), ("j2", 8), ("j3", 5)] {
        for n in 0..steps {
            let body = json!({"append": format!("{id}-{n}")}).to_string();
            post(&http, &node, &format!("/v1/jprobe/{id}"), &body).await;
        }
    }
    stop(node);
    let journal = |id: &str| -> i64 {
        let conn = Connection::open(data.join("perennial.db")).unwrap();
        conn.query_row(
            "SELECT count(*) FROM journal WHERE kind = 'jprobe' AND id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!((journal("j1"), journal("j2"), journal("j3")), (3, 0, 5));
    let out = run(&["snapshot-all", "--kind", "jprobe", "--json"], &data, None);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["changed"].as_u64(), report["unchanged"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!((journal("j1"), journal("j2"), journal("j3")), (0, 0, 0));
    // The lists are what they were, with nothing to replay.
    let node = start_with_admin(&data);
    let list = post(&http, &node, "/v1/jprobe/j1", r#""read""#).await;
    assert_eq!(list.as_array().map(Vec::len), Some(11), "{list}");
    let list = post(&http, &node, "/v1/jprobe/j3", r#""read""#).await;
    assert_eq!(list.as_array().map(Vec::len), Some(5), "{list}");
    stop(node);
}
