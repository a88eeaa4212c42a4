//! Backward compatibility: data directories written by earlier releases, committed under
//! `tests/fixtures/`, must open with this build and read back exactly what they held (the
//! habit of redb and SQLite: a format, once released, is read forever).
//!
//! Each fixture directory holds `perennial.db`, written by the release it is named after
//! (a clean stop, so the file is whole without its WAL), and `expected.json`: the calls to
//! make and the replies they must get. The test works on a copy, so the committed bytes
//! never change; the copy is upgraded to this build's format when it opens.
//!
//! A fixture is never rewritten. When the stored format changes, write a new one with
//! `PERENNIAL_WRITE_FIXTURE=crates/node/tests/fixtures/NAME cargo test -p perennial-node
//! --test main -- compat::a_fixture_written_now_reads_back` (before the change lands) and
//! add its name to [`FIXTURES`]. Without the variable, that test writes one into a temporary
//! directory and reads it back, so the writer keeps working.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::node::{Http, Node, start_with_admin, stop};
use crate::probes::ADMIN;

/// The fixtures every build must read: the stored format they were written in.
const FIXTURES: &[&str] = &["format-4"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One request of a fixture: what to send and, in `expected.json`, what came back.
#[derive(serde::Serialize, serde::Deserialize)]
struct Check {
    method: String,
    path: String,
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    status: u16,
    reply: Value,
}

async fn send(http: &Http, node: &Node, method: &str, path: &str, body: &str) -> (u16, Value) {
    send_keyed(http, node, method, path, None, body).await
}

async fn send_keyed(
    http: &Http,
    node: &Node,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let bearer = format!("Bearer {ADMIN}");
    let mut headers = vec![];
    if path.starts_with("/v1/admin") {
        headers.push(("authorization", bearer.as_str()));
    }
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    http.send(node.addr, method, path, &headers, body)
        .await
        .expect("the node answers")
}

impl Check {
    async fn send(&self, http: &Http, node: &Node) -> (u16, Value) {
        let key = self.idempotency_key.as_deref();
        send_keyed(http, node, &self.method, &self.path, key, &self.body).await
    }
}

/// Fields that differ between two reads of the same data: when entities were last updated
/// (the listings), and whether they happen to be resident.
const UNSTABLE: &[&str] = &["updated_at_ms", "resident"];

/// Checks that `found` holds everything `expected` holds: the same scalars and array
/// lengths, and every field of each object (a later build may add fields, never drop or
/// change one), but for the [`UNSTABLE`] ones.
#[track_caller]
fn assert_holds(found: &Value, expected: &Value, at: &str) {
    match (found, expected) {
        (Value::Object(found), Value::Object(expected)) => {
            for (name, value) in expected {
                if UNSTABLE.contains(&name.as_str()) {
                    continue;
                }
                let Some(got) = found.get(name) else {
                    panic!("{at}: field {name:?} is gone");
                };
                assert_holds(got, value, &format!("{at}.{name}"));
            }
        }
        (Value::Array(found), Value::Array(expected)) => {
            assert_eq!(found.len(), expected.len(), "{at}: {found:?}");
            for (i, (got, value)) in found.iter().zip(expected).enumerate() {
                assert_holds(got, value, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(found, expected, "{at}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_opens_and_reads_back_what_it_held() {
    for name in FIXTURES {
        reads_back(name, &fixtures().join(name)).await;
    }
}

/// Opens a copy of the fixture in `fixture`, twice, and checks every reply it expects.
async fn reads_back(name: &str, fixture: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(fixture.join("perennial.db"), data.join("perennial.db")).unwrap();
    let checks: Vec<Check> =
        serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    let node = start_with_admin(&data);
    let http = Http::new();
    for check in &checks {
        let (status, reply) = check.send(&http, &node).await;
        assert_eq!(
            status, check.status,
            "fixture {name}: {} {}",
            check.method, check.path
        );
        assert_holds(
            &reply,
            &check.reply,
            &format!("fixture {name}: {}", check.path),
        );
    }
    stop(node);
    let conn = rusqlite::Connection::open(data.join("perennial.db")).unwrap();
    let format: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        format,
        perennial_storage_sqlite::schema::FORMAT_VERSION,
        "{name}"
    );
    drop(conn);
    // Opened once, upgraded: it opens again and reads the same.
    let node = start_with_admin(&data);
    for check in &checks {
        let (status, reply) = check.send(&http, &node).await;
        assert_eq!(
            status, check.status,
            "fixture {name}, reopened: {}",
            check.path
        );
        assert_holds(
            &reply,
            &check.reply,
            &format!("fixture {name}, reopened: {}", check.path),
        );
    }
    stop(node);
}

/// Writes a fixture into `PERENNIAL_WRITE_FIXTURE` (or a temporary directory), then reads
/// it back: entities of every persistence (snapshot, journal with and without snapshots), a
/// journal trimmed by a snapshot, a pending timer due in a century (no hand is dealt at the
/// table: its turn timer would fire within a day), a kept idempotent reply, a paused entity
/// and an index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixture_written_now_reads_back() {
    let scratch = tempfile::tempdir().unwrap();
    let out = std::env::var_os("PERENNIAL_WRITE_FIXTURE")
        .map_or_else(|| scratch.path().join("fixture"), PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = start_with_admin(&data);
    let http = Http::new();
    const CENTURY_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
    let writes: Vec<(String, String)> = [
        ("/v1/counter/c1", json!({"add": 5})),
        ("/v1/counter/c1", json!({"add": -2})),
        ("/v1/counter/c2", json!({"add": 40})),
        ("/v1/counter/paused", json!({"add": 7})),
        ("/v1/probe/p1", json!({"append": "a"})),
        (
            "/v1/probe/p1",
            json!({"schedule": {"token": "later", "ms": CENTURY_MS}}),
        ),
        (
            "/v1/house/h1",
            json!({"open": {"rule": "flat", "amount": 3}}),
        ),
        ("/v1/house/h1", json!({"bet": 10})),
        ("/v1/house/h1", json!({"bet": 4})),
        (
            "/v1/table/t1",
            json!({"join": {"player": "ann", "chips": 500}}),
        ),
        (
            "/v1/table/t1",
            json!({"join": {"player": "bob", "chips": 300}}),
        ),
        (
            "/v1/cache/k1",
            json!({"put": {"key": "colour", "value": "green"}}),
        ),
    ]
    .into_iter()
    .map(|(path, body)| (path.to_owned(), body.to_string()))
    .chain((0..19).map(|n| {
        (
            "/v1/jprobe/j1".to_owned(),
            json!({"append": format!("t{n}")}).to_string(),
        )
    }))
    .collect();
    for (path, body) in &writes {
        let (status, reply) = send(&http, &node, "POST", path, body).await;
        assert_eq!(status, 200, "{path} {body}: {reply}");
    }
    let (status, reply) = http
        .post_with_key(
            node.addr,
            "/v1/counter/keyed",
            Some("once"),
            r#"{"add": 9}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{reply}");
    for (method, path, body) in [
        ("POST", "/v1/admin/entities/counter/paused/pause", ""),
        (
            "POST",
            "/v1/admin/kinds/counter/indexes",
            r#"{"path": "value"}"#,
        ),
    ] {
        let (status, reply) = send(&http, &node, method, path, body).await;
        assert!(status == 200 || status == 201, "{path}: {status} {reply}");
    }
    let reads: Vec<(&str, &str, String)> = vec![
        ("POST", "/v1/counter/keyed", json!({"add": 9}).to_string()),
        ("POST", "/v1/counter/c1", json!("get").to_string()),
        ("POST", "/v1/counter/c2", json!("get").to_string()),
        ("POST", "/v1/counter/paused", json!("get").to_string()),
        ("POST", "/v1/probe/p1", json!("read").to_string()),
        ("POST", "/v1/jprobe/j1", json!("read").to_string()),
        ("POST", "/v1/house/h1", json!("stats").to_string()),
        ("POST", "/v1/table/t1", json!("view").to_string()),
        ("POST", "/v1/cache/k1", json!({"get": "colour"}).to_string()),
        ("GET", "/v1/admin/entities/counter/c1", String::new()),
        ("GET", "/v1/admin/entities/jprobe/j1", String::new()),
        ("GET", "/v1/admin/entities/jprobe/j1/at/18", String::new()),
        ("GET", "/v1/admin/kinds/counter/entities", String::new()),
        ("GET", "/v1/admin/kinds/jprobe/entities", String::new()),
        ("GET", "/v1/admin/kinds/counter/indexes", String::new()),
        (
            "GET",
            "/v1/admin/kinds/counter/query?filter=value%20%3E%2010",
            String::new(),
        ),
        ("GET", "/v1/admin/paused", String::new()),
    ];
    stop(node);
    // Read what the stopped data holds through a fresh start, so that the replies are those
    // of stored state, not of resident entities.
    let node = start_with_admin(&data);
    let mut checks = vec![];
    for (method, path, body) in reads {
        // The keyed add is a retry: its kept reply comes back, without a second add.
        let key = path.ends_with("/keyed").then(|| "once".to_owned());
        let mut check = Check {
            method: method.to_owned(),
            path: path.to_owned(),
            body,
            idempotency_key: key,
            status: 0,
            reply: Value::Null,
        };
        (check.status, check.reply) = check.send(&http, &node).await;
        checks.push(check);
    }
    assert_eq!(checks[0].reply["value"], json!(9), "{}", checks[0].reply);
    stop(node);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(data.join("perennial.db"), out.join("perennial.db")).unwrap();
    let mut json = serde_json::to_string_pretty(&checks).unwrap();
    json.push('\n');
    std::fs::write(out.join("expected.json"), json).unwrap();
    reads_back("written now", &out).await;
}
