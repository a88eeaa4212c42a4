//! A PostgreSQL store's backup is PostgreSQL's own: a server restored from a base backup
//! (`pg_basebackup`) taken while the store was in use holds every commit made before the
//! backup, and a store opened on it serves (reads and new commits).

use perennial_storage::{Batch, StateWrite, Store};
use perennial_storage_postgres::PostgresStore;
use perennial_storage_postgres::test_server::TestServer;
use perennial_types::{EntityId, EntityKey, SHARDS, ShardId, shard_of};

fn add(id: &str, value: u64, epoch: perennial_types::Epoch) -> Batch {
    Batch {
        states: vec![StateWrite {
            key: EntityKey::new("counter", EntityId::new(id).unwrap()),
            shard: shard_of("counter", id),
            epoch,
            state: format!(r#"{{"value":{value}}}"#).into(),
            version: value,
            schema: 1,
        }],
        ..Batch::default()
    }
}

async fn commit(store: &PostgresStore, batch: Batch) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.commit(batch))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_from_a_base_backup_serves_what_was_committed_before_it() {
    let Some(primary) = TestServer::start(&[], &[("wal_level", "replica")]) else {
        return;
    };
    let store = PostgresStore::connect(&primary.url("")).await.unwrap();
    let shards: Vec<ShardId> = (0..SHARDS).map(ShardId).collect();
    let epoch = store.claim("n1", &shards).await.unwrap();
    for c in 0..50 {
        commit(&store, add(&format!("c{c}"), 1, epoch)).await;
    }
    // The backup runs while the store stays connected.
    let restored = TestServer::restored_from(&primary, &[]).expect("the binaries are there");
    store.close().await.unwrap();

    let copy = PostgresStore::connect(&restored.url("")).await.unwrap();
    for c in 0..50 {
        let key = EntityKey::new("counter", EntityId::new(&format!("c{c}")).unwrap());
        let record = copy
            .load(&key)
            .await
            .unwrap()
            .expect("a state from before the backup");
        assert_eq!(record.version, 1, "c{c}");
    }
    // It takes writes: a node started on it claims the shards under a newer epoch.
    let epoch = copy.claim("n2", &shards).await.unwrap();
    commit(&copy, add("c0", 2, epoch)).await;
    let key = EntityKey::new("counter", EntityId::new("c0").unwrap());
    assert_eq!(copy.load(&key).await.unwrap().unwrap().version, 2);
    copy.close().await.unwrap();
}
