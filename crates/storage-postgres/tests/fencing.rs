//! The fencing pitfall, on PostgreSQL: a batch that checked its shard's epoch and has not
//! written yet must land before a claim of that shard takes effect, never after it (else a
//! stale owner's write lands on state the new owner already loaded). The commit holds a
//! `FOR SHARE` lock on the shard's row from its check to its `COMMIT`; the claim's
//! `FOR UPDATE` waits for it. A failpoint holds a commit between its check and its writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use perennial_storage::{Batch, StateWrite, Store};
use perennial_storage_postgres::test_util;
use perennial_types::{EntityId, EntityKey, shard_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_a_batch_that_checked_the_old_epoch() {
    let Some((store, schema)) = test_util::store().await else {
        return;
    };
    // Another node on the same tables, with its own connections.
    let mut options = perennial_storage_postgres::Options::default();
    options.schema = schema.name().to_owned();
    let other = perennial_storage_postgres::PostgresStore::connect_with(&test_util::url(), options)
        .await
        .unwrap();
    let key = EntityKey::new("t", EntityId::new("x").unwrap());
    let shard = shard_of("t", "x");
    let old = store.claim("old-owner", &[shard]).await.unwrap();
    let write = |state: &str| Batch {
        states: vec![StateWrite {
            key: key.clone(),
            shard,
            epoch: old,
            state: Arc::from(state),
            version: 1,
            schema: 1,
        }],
        ..Batch::default()
    };

    // The old owner's commit checks its epoch, then stalls before writing.
    perennial_faults::fail::cfg("pg.commit.fenced", "1*sleep(800)").unwrap();
    let committing = std::thread::spawn({
        let (store, batch) = (store.clone(), write(r#"{"by":"old"}"#));
        move || {
            let outcome = store.commit(batch);
            (outcome, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile another node claims the shard.
    let new = other.claim("new-owner", &[shard]).await.unwrap();
    let claimed = Instant::now();
    let (outcome, committed) = committing.join().unwrap();
    perennial_faults::fail::remove("pg.commit.fenced");

    // The stalled batch checked before the claim: it lands, and before the claim returned.
    assert!(outcome.unwrap().fenced.is_empty());
    assert!(
        committed <= claimed,
        "the claim took effect while a batch that checked the old epoch was still writing"
    );
    assert!(new > old);
    // From now on, the old owner's writes are refused.
    let refused = store.commit(write(r#"{"by":"old, again"}"#)).unwrap();
    assert_eq!(refused.fenced, [shard]);
    let stored = store.load(&key).await.unwrap().unwrap();
    assert!(stored.state.contains(r#""old""#), "{}", stored.state);
}
