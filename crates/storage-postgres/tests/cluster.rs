//! Membership and shard leases, judged by the database's clock.

use std::time::Duration;

use perennial_storage::Directory;
use perennial_storage::{Batch, StateWrite, Store, conformance};
use perennial_storage_postgres::test_util;
use perennial_types::{EntityId, EntityKey, ShardId, shard_of};

fn shards(range: std::ops::Range<u32>) -> Vec<ShardId> {
    range.map(ShardId).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_heartbeat_and_go_stale() {
    let Some((store, schema)) = test_util::store().await else {
        return;
    };
    store
        .heartbeat("a", "127.0.0.1:7001", "0.1.0+a")
        .await
        .unwrap();
    store.heartbeat("b", "127.0.0.1:7002", "").await.unwrap();
    let live = store.members(Duration::from_secs(10)).await.unwrap();
    let names: Vec<&str> = live.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(live[1].address, "127.0.0.1:7002");
    assert!(
        live.iter()
            .all(|m| (0..10_000).contains(&m.heartbeat_age_ms))
    );

    // b's heartbeat is a minute old: it is no longer a live member.
    let (sql, connection) = tokio_postgres::connect(&test_util::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql.batch_execute(&format!(
        "UPDATE \"{}\".members SET heartbeat_at = heartbeat_at - 60000 WHERE node = 'b'",
        schema.name()
    ))
    .await
    .unwrap();
    let live = store.members(Duration::from_secs(10)).await.unwrap();
    assert_eq!(live.len(), 1);
    store.leave("a").await.unwrap();
    assert!(
        store
            .members(Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_renewed_by_its_owner_and_taken_with_a_new_epoch_once_expired() {
    let Some((store, _schema)) = test_util::store().await else {
        return;
    };
    let long = Duration::from_secs(30);
    let a = store.acquire("a", &shards(0..4), long).await.unwrap();
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|l| l.taken));
    // b gets nothing that a holds, and the free shards it asks for.
    let b = store.acquire("b", &shards(2..6), long).await.unwrap();
    let taken: Vec<u32> = b.iter().map(|l| l.shard.0).collect();
    assert_eq!(taken, [4, 5]);
    // a renews: same epochs, not taken again.
    let renewed = store.acquire("a", &shards(0..4), long).await.unwrap();
    assert_eq!(
        renewed
            .iter()
            .map(|l| (l.shard, l.epoch))
            .collect::<Vec<_>>(),
        a.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>()
    );
    assert!(renewed.iter().all(|l| !l.taken));

    // a's lease of shard 0 runs out: b takes it with a newer epoch, and a's writes there are
    // refused from then on.
    store
        .acquire("a", &shards(0..1), Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = store.acquire("b", &shards(0..1), long).await.unwrap();
    assert_eq!(took.len(), 1);
    assert!(took[0].taken && took[0].epoch > a[0].epoch);
    assert!(
        store
            .acquire("a", &shards(0..1), long)
            .await
            .unwrap()
            .is_empty()
    );
    let id = (0..)
        .map(|n| format!("e{n}"))
        .find(|id| shard_of("t", id) == ShardId(0))
        .unwrap();
    let stale = Batch {
        states: vec![StateWrite {
            key: EntityKey::new("t", EntityId::new(&id).unwrap()),
            shard: ShardId(0),
            epoch: a[0].epoch,
            state: "{}".into(),
            version: 1,
            schema: 1,
        }],
        ..Batch::default()
    };
    assert_eq!(store.commit(stale).unwrap().fenced, [ShardId(0)]);

    // A release hands a shard over at once.
    store.release("a", &shards(1..2)).await.unwrap();
    let handed = store.acquire("b", &shards(1..2), long).await.unwrap();
    assert!(handed[0].taken && handed[0].epoch > a[1].epoch);
    // Leaving releases everything a node holds.
    store.leave("b").await.unwrap();
    let all = store.acquire("c", &shards(0..6), long).await.unwrap();
    let held: Vec<u32> = all.iter().map(|l| l.shard.0).collect();
    assert_eq!(held, [0, 1, 4, 5], "a still holds 2 and 3");
    // Routing reads who holds what.
    let owners = store.owners().await.unwrap();
    let owner = |n: u32| {
        owners
            .iter()
            .find(|(s, _)| s.0 == n)
            .map(|(_, o)| o.as_str())
    };
    assert_eq!(owner(2), Some("a"));
    assert_eq!(owner(5), Some("c"));
    assert_eq!(owner(6), None, "never leased");
}

/// Tables made by format 1 (before leases, membership, schema versions and change feeds) are upgraded in place when a node
/// connects, their data kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_1_tables_are_upgraded() {
    let Some((store, schema)) = test_util::store().await else {
        return;
    };
    let epoch = store.claim("n", &shards(3..4)).await.unwrap();
    drop(store);
    let (sql, connection) = tokio_postgres::connect(&test_util::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql.batch_execute(&format!(
        "SET search_path TO \"{}\";
         ALTER TABLE shards DROP COLUMN expires_at; DROP TABLE members;
         DROP TABLE changes; DROP SEQUENCE changes_seq; DROP TABLE changes_expired;
         DROP VIEW entity_state; ALTER TABLE entities DROP COLUMN schema;
         CREATE VIEW entity_state AS
             SELECT kind, id, shard, version, updated_at, state FROM entities;
         UPDATE meta SET value = '1' WHERE key = 'format';",
        schema.name()
    ))
    .await
    .unwrap();
    let mut options = perennial_storage_postgres::Options::default();
    options.schema = schema.name().to_owned();
    let store = perennial_storage_postgres::PostgresStore::connect_with(&test_util::url(), options)
        .await
        .unwrap();
    let format: String = sql
        .query_one("SELECT value FROM meta WHERE key = 'format'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        format,
        perennial_storage_postgres::schema::FORMAT_VERSION.to_string()
    );
    // The epoch survived, and leases work.
    let lease = store
        .acquire("m", &shards(3..4), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lease[0].epoch > epoch);
}

/// A connection the server ends (a restart, an administrator, an idle-transaction timeout)
/// is replaced: the next reads and commits work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_replaced() {
    let Some((store, schema)) = test_util::store().await else {
        return;
    };
    let epoch = store.claim("n", &shards(0..1024)).await.unwrap();
    let key = EntityKey::new("counter", EntityId::new("c1").unwrap());
    let write = |version: u64| Batch {
        states: vec![StateWrite {
            key: key.clone(),
            shard: shard_of("counter", "c1"),
            epoch,
            state: format!("{{\"value\":{version}}}").into(),
            version,
            schema: 1,
        }],
        ..Batch::default()
    };
    store.commit(write(1)).unwrap();
    let (sql, connection) = tokio_postgres::connect(&test_util::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let ended = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name = $1",
            &[&format!("perennial/{}", schema.name())],
        )
        .await
        .unwrap();
    assert!(
        ended.get::<_, i64>(0) >= 2,
        "the writer and a reader were ended"
    );
    // The client learns of the closed socket as soon as its connection task reads it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        // Every reader in turn.
        assert!(store.load(&key).await.unwrap().is_some());
    }
    store.commit(write(2)).unwrap();
    assert_eq!(store.load(&key).await.unwrap().unwrap().version, 2);
}

/// Two nodes commit changes at once, each through its own connection: a reader that goes on
/// from the last number it read gets every change once, each entity's in order. (Numbers
/// drawn in commit order: a change numbered after another is never committed before it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_two_nodes_are_numbered_in_commit_order() {
    use std::sync::Arc;

    use perennial_storage::ChangeWrite;
    const EACH: u64 = 150;
    let Some((first, schema)) = test_util::store().await else {
        return;
    };
    let mut options = perennial_storage_postgres::Options::default();
    options.schema = schema.name().to_owned();
    let second =
        perennial_storage_postgres::PostgresStore::connect_with(&test_util::url(), options)
            .await
            .unwrap();
    let a = EntityKey::new("feed", EntityId::new("a").unwrap());
    let b = (0..)
        .map(|n| EntityKey::new("feed", EntityId::new(&format!("b{n}")).unwrap()))
        .find(|k| shard_of(&k.kind, k.id.as_str()) != shard_of(&a.kind, a.id.as_str()))
        .unwrap();
    let shard = |k: &EntityKey| shard_of(&k.kind, k.id.as_str());
    let a_epoch = first.claim("n1", &[shard(&a)]).await.unwrap();
    let b_epoch = second.claim("n2", &[shard(&b)]).await.unwrap();
    let write = |key: &EntityKey, epoch, version| Batch {
        changes: vec![ChangeWrite {
            key: key.clone(),
            shard: shard(key),
            epoch,
            version,
            at_ms: 1,
            state: Some(Arc::from("{}")),
        }],
        ..Batch::default()
    };
    let writers: Vec<Box<dyn FnOnce() + Send + '_>> = vec![
        Box::new(|| (1..=EACH).for_each(|v| drop(first.commit(write(&a, a_epoch, v)).unwrap()))),
        Box::new(|| (1..=EACH).for_each(|v| drop(second.commit(write(&b, b_epoch, v)).unwrap()))),
    ];
    let seen = conformance::follow_while(&first, "feed", writers);
    conformance::assert_each_once_in_order(&seen, &[a.clone(), b.clone()], EACH);
}
