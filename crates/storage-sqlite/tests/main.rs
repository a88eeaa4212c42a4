//! The SQLite store: the shared conformance suite, plus what only a file on disk can show.

use perennial_storage::{Batch, Error, StateWrite, Store};
use perennial_storage_sqlite::SqliteStore;
use perennial_types::{EntityId, EntityKey, SHARDS, ShardId, shard_of};

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
            states: vec![StateWrite {
                key: key.clone(),
                shard: shard_of("counter", "c1"),
                epoch,
                state: r#"{"value":41}"#.into(),
                version: 3,
            }],
            dead_letters: Vec::new(),
        };
        store.commit(batch).await.unwrap();
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
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = rusqlite_read(dir.path());
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let before = std::fs::read(dir.path().join("perennial.db")).unwrap();
    match SqliteStore::open(dir.path()) {
        Err(Error::TooNew { found: 99, .. }) => {}
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.path().join("perennial.db")).unwrap(),
        before
    );
}

#[tokio::test]
async fn closed_store_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.close().await.unwrap();
    assert_eq!(store.load(&counter("c")).await, Err(Error::Closed));
}
