//! The SQLite store: the shared conformance suite, plus what only a file on disk can show.

use perennial_storage::{Batch, EntityDelete, Error, StateWrite, Store};
use perennial_storage_sqlite::SqliteStore;
use perennial_storage_sqlite::schema::FORMAT_VERSION;
use perennial_types::{EntityId, EntityKey, Epoch, SHARDS, ShardId, shard_of};

mod backup;
mod layout;
mod query;
mod recent;

perennial_storage::store_conformance!(async {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    (store, dir)
});

fn all_shards() -> Vec<ShardId> {
    (0..SHARDS).map(ShardId).collect()
}

fn counter(id: &str) -> EntityKey {
    EntityKey::new("counter", EntityId::new(id).unwrap())
}

/// The write of `state` as version `version` of entity `id` of `kind`, in schema 1.
fn write(kind: &str, id: &str, state: &str, version: u64, epoch: Epoch) -> StateWrite {
    StateWrite {
        shard: shard_of(kind, id),
        key: EntityKey::new(kind, EntityId::new(id).unwrap()),
        epoch,
        state: state.into(),
        version,
        schema: 1,
    }
}

#[tokio::test]
async fn durability_settings_are_wal_and_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let (mode, sync) = store.durability_settings().await.unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous must be FULL (2)");
}

#[tokio::test]
async fn state_survives_reopen_and_is_plain_json_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let key = counter("c1");
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let epoch = store.claim("n1", &all_shards()).await.unwrap();
        let batch = Batch {
            states: vec![write("counter", "c1", r#"{"value":41}"#, 3, epoch)],
            ..Batch::default()
        };
        store.commit(batch).unwrap();
        store.close().await.unwrap();
    }
    // Any SQLite client reads the state with its JSON functions.
    let conn = rusqlite_read(dir.path());
    let value: i64 = conn
        .query_row(
            "SELECT json_extract(state, '$.value') FROM entities WHERE kind='counter' AND id='c1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(value, 41);
    drop(conn);
    let store = SqliteStore::open(dir.path()).unwrap();
    let record = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (record.state.as_str(), record.version),
        (r#"{"value":41}"#, 3)
    );
    // A new claim after reopening fences the old epoch.
    let next = store.claim("n2", &all_shards()).await.unwrap();
    assert!(next.0 >= 2);
}

fn rusqlite_read(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("perennial.db")).unwrap()
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(dir.path()).unwrap();
    match SqliteStore::open(dir.path()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("perennial.db"), vec![0x5a; 8192]).unwrap();
    match SqliteStore::open(dir.path()) {
        Err(Error::Corrupt(msg)) => assert!(msg.contains("not a database"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn data_from_a_newer_version_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    store_counter_and_close(dir.path(), r#"{"value":7}"#).await;
    rusqlite_read(dir.path())
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = contents(dir.path());
    match SqliteStore::open(dir.path()) {
        Err(Error::TooNew { found: 99, .. }) => {}
        other => panic!("expected TooNew, got {other:?}"),
    }
    // SQLite may move its own pages around when connections close; what must not change is
    // what the file says.
    assert_eq!(contents(dir.path()), before);
}

/// Opens a store in `dir`, commits counter `c1` with `state`, and closes it.
async fn store_counter_and_close(dir: &std::path::Path, state: &str) {
    let store = SqliteStore::open(dir).unwrap();
    let epoch = store.claim("n1", &all_shards()).await.unwrap();
    let batch = Batch {
        states: vec![write("counter", "c1", state, 1, epoch)],
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    store.close().await.unwrap();
}

/// A directory written by format 1 (before journals, timers, replies, state indexes and schema
/// versions) is upgraded in place, its data kept.
#[tokio::test]
async fn format_1_data_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    store_counter_and_close(dir.path(), r#"{"value":7}"#).await;
    // Make it a format 1 file again: no journal table.
    let conn = rusqlite_read(dir.path());
    conn.execute_batch(
        "DROP VIEW all_pending; DROP TABLE recent_pending; DROP TABLE recent_replies;
         DROP TABLE journal; DROP TABLE pending; DROP TABLE replies; DROP TABLE state_indexes; DROP TABLE paused;
         DROP TABLE changes; DROP TABLE changes_expired;
         DROP VIEW entity_state; DROP VIEW logged_states; ALTER TABLE entities DROP COLUMN schema;
         CREATE VIEW logged_states AS
             SELECT l.seq AS seq, CAST(j.key AS INTEGER) AS pos,
                    j.value ->> '$.kind' AS kind, j.value ->> '$.id' AS id,
                    j.value ->> '$.shard' AS shard, j.value ->> '$.version' AS version,
                    l.at AS updated_at, j.value ->> '$.state' AS state
               FROM state_log AS l, json_each(l.states) AS j;
         CREATE VIEW entity_state AS
             SELECT kind, id, shard, version, updated_at, state FROM entities;
         PRAGMA user_version = 1",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(dir.path()).unwrap();
    let record = store.load(&counter("c1")).await.unwrap().unwrap();
    assert_eq!(record.state, r#"{"value":7}"#);
    assert!(
        store
            .journal(&counter("c1"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
    assert!(store.catalog().indexes("counter").await.unwrap().is_empty());
    store.close().await.unwrap();
    assert!(contents(dir.path()).starts_with(&format!("user_version={FORMAT_VERSION}\n")));
    let store = SqliteStore::open(dir.path()).unwrap();
    let record = store.load(&counter("c1")).await.unwrap().unwrap();
    assert_eq!(
        (record.state.as_str(), record.schema),
        (r#"{"value":7}"#, 1)
    );
    store.close().await.unwrap();
}

/// The format version and every row of the data tables, as text.
fn contents(dir: &std::path::Path) -> String {
    let conn = rusqlite_read(dir);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mut out = format!("user_version={version}\n");
    for table in [
        "entities",
        "state_log",
        "shards",
        "dead_letters",
        "journal",
        "pending",
        "replies",
    ] {
        let sql = format!("SELECT * FROM {table} ORDER BY 1, 2");
        let mut stmt = conn.prepare(&sql).unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                let cells: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                Ok(cells.join("|"))
            })
            .unwrap();
        for row in rows {
            out.push_str(&format!("{table}: {}\n", row.unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn a_closed_store_refuses_calls_and_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.close().await.unwrap();
    assert_eq!(store.load(&counter("c")).await, Err(Error::Closed));
    // The closed store is still alive, but the directory is free again.
    let again = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(again.load(&counter("c")).await.unwrap(), None);
}

/// A clean close leaves the WAL empty even with reads under way until the end, so that the
/// next open has no log to read back (a 10 M entity store's first restart took 60 – 220 ms
/// longer when it did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_empties_the_wal_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SqliteStore::open(dir.path()).unwrap());
    let epoch = store.claim("n1", &all_shards()).await.unwrap();
    let state = format!(r#"{{"text":"{}"}}"#, "x".repeat(1_000));
    for round in 0..20 {
        let states = (0..500)
            .map(|n| write("counter", &format!("c{round}-{n}"), &state, 1, epoch))
            .collect();
        store
            .commit(Batch {
                states,
                ..Batch::default()
            })
            .unwrap();
    }
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (store, reading) = (
                std::sync::Arc::clone(&store),
                std::sync::Arc::clone(&reading),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    // Refused once the store is closed.
                    let _ = store.load(&counter(&format!("c{r}-{n}"))).await;
                    n = (n + 1) % 500;
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    store.close().await.unwrap();
    let wal = std::fs::metadata(dir.path().join("perennial.db-wal")).map_or(0, |m| m.len());
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(wal, 0, "bytes left in the WAL after a clean close");
}

/// A seeded generator for the model test.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn count(dir: &std::path::Path, sql: &str) -> i64 {
    rusqlite_read(dir).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Commits random batches of states and deletes over a few hundred entities, with crashes
/// (the store dropped without `close`, so the log is never folded on the way out) and clean
/// reopens in between, and checks every entity against a model after each step: through
/// `load`, and through the `entity_state` view a SQL user would query. A deleted entity
/// never comes back (from the log, the table or a fold); the log must stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_its_fold_match_a_model_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut model: std::collections::BTreeMap<String, (String, u64)> = Default::default();
    let mut pick = Pick(0x5eed_1234_abcd_0001);
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let mut epoch = store.claim("model", &all_shards()).await.unwrap();
    let mut largest_log = 0;
    let mut gone = std::collections::BTreeSet::new();
    for round in 0..60 {
        for _ in 0..10 {
            let mut states = Vec::new();
            let mut in_batch = std::collections::HashSet::new();
            for _ in 0..pick.below(80) + 1 {
                let id = format!("e{}", pick.below(400));
                if !in_batch.insert(id.clone()) {
                    continue;
                }
                let version = model.get(&id).map_or(1, |(_, v)| v + 1);
                gone.remove(&id);
                let state = format!(r#"{{"round":{round},"n":{}}}"#, pick.below(1_000_000));
                model.insert(id.clone(), (state.clone(), version));
                states.push(write("counter", &id, &state, version, epoch));
            }
            // Deletes apply after the batch's states, some of them to entities just written.
            let mut deletes = Vec::new();
            for _ in 0..pick.below(4) {
                let id = format!("e{}", pick.below(400));
                model.remove(&id);
                deletes.push(EntityDelete {
                    shard: shard_of("counter", &id),
                    key: counter(&id),
                    epoch,
                });
                gone.insert(id);
            }
            let outcome = store
                .commit(Batch {
                    states,
                    deletes,
                    ..Batch::default()
                })
                .unwrap();
            assert!(outcome.fenced.is_empty());
        }
        largest_log = largest_log.max(count(dir.path(), "SELECT count(*) FROM state_log"));
        // Every third round crashes, every third closes cleanly, the rest go on.
        match round % 3 {
            0 => {
                drop(store);
                store = SqliteStore::open(dir.path()).unwrap();
                epoch = store.claim("model", &all_shards()).await.unwrap();
            }
            1 => {
                store.close().await.unwrap();
                assert_eq!(count(dir.path(), "SELECT count(*) FROM state_log"), 0);
                drop(store);
                store = SqliteStore::open(dir.path()).unwrap();
                epoch = store.claim("model", &all_shards()).await.unwrap();
            }
            _ => {}
        }
        for (id, (state, version)) in &model {
            let record = store
                .load(&counter(id))
                .await
                .unwrap()
                .expect("committed state");
            assert_eq!(
                (&record.state, record.version),
                (state, *version),
                "round {round}, {id}"
            );
        }
        for id in &gone {
            let found = store.load(&counter(id)).await.unwrap();
            assert_eq!(found, None, "round {round}: {id} was deleted");
        }
        let conn = rusqlite_read(dir.path());
        let mut stmt = conn
            .prepare("SELECT id, state, version FROM entity_state WHERE kind = 'counter'")
            .unwrap();
        let view: std::collections::BTreeMap<String, (String, u64)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get::<_, i64>(2)? as u64)))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            view, model,
            "the entity_state view differs from the model in round {round}"
        );
    }
    // 400 entities, at most 80 states a batch: the fold keeps the log near the hot set.
    assert!(largest_log <= 1_000, "the log grew to {largest_log} rows");
}

/// The writer keeps the shards' epochs between commits, but a change made by any other
/// connection (another process, an operator's `sqlite3`) is seen by the next commit.
#[tokio::test]
async fn an_epoch_changed_by_another_connection_fences_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let epoch = store.claim("n1", &all_shards()).await.unwrap();
    let write = |id: &str| write("counter", id, r#"{"value":1}"#, 1, epoch);
    let commit = |w: StateWrite| {
        store
            .commit(Batch {
                states: vec![w],
                ..Batch::default()
            })
            .unwrap()
    };
    assert!(commit(write("a")).fenced.is_empty());
    let shard = shard_of("counter", "a");
    let other = rusqlite_read(dir.path());
    other
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    other
        .execute(
            "UPDATE shards SET epoch = epoch + 1 WHERE shard = ?1",
            [shard.0],
        )
        .unwrap();
    assert_eq!(commit(write("a")).fenced, vec![shard]);
    let elsewhere = (0..)
        .map(|i| format!("b{i}"))
        .find(|id| shard_of("counter", id) != shard)
        .unwrap();
    assert!(commit(write(&elsewhere)).fenced.is_empty());
}
