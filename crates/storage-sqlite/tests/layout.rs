//! Where `entities` keeps its rows: states of a few KiB stay in their row's page, and a store
//! made by an earlier build, whose `entities` is a `WITHOUT ROWID` table, still serves.

use perennial_storage::{Batch, Store};
use perennial_storage_sqlite::SqliteStore;
use perennial_types::{SHARDS, ShardId};

/// A store whose `entities` table has the layout earlier builds made: `WITHOUT ROWID`.
fn store_of_the_earlier_layout(dir: &std::path::Path) -> SqliteStore {
    drop(SqliteStore::open(dir).unwrap());
    let conn = rusqlite::Connection::open(dir.join("perennial.db")).unwrap();
    let view: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'entity_state'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute_batch(&format!(
        "BEGIN;
         DROP VIEW entity_state;
         CREATE TABLE earlier (
             kind TEXT NOT NULL, id TEXT NOT NULL, shard INTEGER NOT NULL,
             version INTEGER NOT NULL, updated_at INTEGER NOT NULL, state TEXT NOT NULL,
             schema INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (kind, id)
         ) WITHOUT ROWID;
         INSERT INTO earlier SELECT kind, id, shard, version, updated_at, state, schema
           FROM entities;
         DROP TABLE entities;
         ALTER TABLE earlier RENAME TO entities;
         {view};
         COMMIT;"
    ))
    .unwrap();
    let without_rowid: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'entities'
               AND sql LIKE '%WITHOUT ROWID%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(without_rowid, 1);
    drop(conn);
    SqliteStore::open(dir).unwrap()
}

mod earlier_layout {
    perennial_storage::store_conformance!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = super::store_of_the_earlier_layout(dir.path());
        (store, dir)
    });
}

/// A thousand states of 1.5 KiB take about their size: a `WITHOUT ROWID` table kept at most
/// 1,002 bytes of each in its page and the rest in an overflow page of its own, 4 KiB.
#[tokio::test]
async fn states_of_a_few_kib_stay_in_their_page() {
    const N: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let shards: Vec<ShardId> = (0..SHARDS).map(ShardId).collect();
    let epoch = store.claim("n1", &shards).await.unwrap();
    let text = "x".repeat(1_500);
    let states = (0..N)
        .map(|n| {
            let state = format!(r#"{{"n":{n},"text":"{text}"}}"#);
            crate::write("blob", &format!("e{n:05}"), &state, 1, epoch)
        })
        .collect();
    store
        .commit(Batch {
            states,
            ..Batch::default()
        })
        .unwrap();
    // A clean close folds the log into `entities` and empties it.
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("perennial.db")).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // The log's pages, free again since the fold, are not the entities'.
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let per_entity = ((pages - free) * page) as usize / N;
    assert!(
        per_entity < 2_200,
        "{per_entity} bytes on disk per entity of 1.5 KiB"
    );
    let (fetched, bytes): (i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(length(state)) FROM entities WHERE kind = 'blob'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(fetched as usize, N);
    assert!(bytes as usize > N * 1_500);
}
