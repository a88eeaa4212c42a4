//! Pending rows and kept replies against a model, across the recent tables, their move to the
//! keyed ones, crashes and clean reopens.

use std::collections::BTreeMap;

use perennial_storage::{
    Batch, EntityDelete, ExpireReplies, Pending, PendingClass, PendingDone, PendingWrite,
    ReplyDone, ReplyWrite, Store, StoredReply,
};
use perennial_storage_sqlite::SqliteStore;
use perennial_types::{EntityKey, Epoch, ShardId, shard_of};

use crate::{Pick, all_shards, counter};

fn key(id: &str) -> EntityKey {
    counter(id)
}

fn shard(key: &EntityKey) -> ShardId {
    shard_of(&key.kind, key.id.as_str())
}

/// What the store should hold.
#[derive(Default)]
struct Model {
    /// Pending rows by (owner id, seq).
    rows: BTreeMap<(String, u64), Pending>,
    /// Kept replies by (entity id, key): (reply, at).
    replies: BTreeMap<(String, String), (String, i64)>,
    /// The next row number per owner, never reused.
    next_seq: BTreeMap<String, u64>,
}

/// One random batch: new rows (timers that live long, messages and asks that die soon), rows
/// applied, replies kept and forgotten, now and then an expiry or an entity deleted.
fn batch(pick: &mut Pick, model: &mut Model, epoch: Epoch, at: i64) -> Batch {
    let mut batch = Batch::default();
    for _ in 0..pick.below(12) {
        let id = format!("e{}", pick.below(50));
        let owner = key(&id);
        let seq = model.next_seq.entry(id.clone()).or_insert(1);
        let this = *seq;
        *seq += 1;
        let (class, target) = match pick.below(4) {
            0 => (PendingClass::Timer, owner.clone()),
            1 => (PendingClass::Message, key(&format!("e{}", pick.below(50)))),
            2 => (PendingClass::Ask, key(&format!("e{}", pick.below(50)))),
            _ => (PendingClass::Effect, owner.clone()),
        };
        let row = Pending {
            owner: owner.clone(),
            seq: this,
            due_ms: at + i64::try_from(pick.below(10_000)).unwrap(),
            class,
            target,
            body: format!(r#"{{"n":{this}}}"#).into(),
        };
        model.rows.insert((id, this), row.clone());
        batch.pending.push(PendingWrite {
            shard: shard(&owner),
            epoch,
            pending: row,
        });
    }
    // Apply some rows, young and old (some written by this very batch).
    let live: Vec<(String, u64)> = model.rows.keys().cloned().collect();
    for _ in 0..pick.below(10) {
        if live.is_empty() {
            break;
        }
        let (id, seq) = live[pick.below(live.len() as u64) as usize].clone();
        if model.rows.remove(&(id.clone(), seq)).is_some() {
            let owner = key(&id);
            batch.done.push(PendingDone {
                shard: shard(&owner),
                epoch,
                owner,
                seq,
            });
        }
    }
    for _ in 0..pick.below(6) {
        let id = format!("e{}", pick.below(50));
        let idem = format!("k{}", pick.below(40));
        let reply = format!(r#"{{"at":{at},"r":{}}}"#, pick.below(1000));
        let entity = key(&id);
        // The runtime keeps one reply per key until it is deleted or expires.
        if model.replies.contains_key(&(id.clone(), idem.clone())) {
            continue;
        }
        model
            .replies
            .insert((id.clone(), idem.clone()), (reply.clone(), at));
        batch.replies.push(ReplyWrite {
            key: entity.clone(),
            shard: shard(&entity),
            epoch,
            idempotency_key: idem,
            reply: StoredReply { reply, at_ms: at },
        });
    }
    let kept: Vec<(String, String)> = model.replies.keys().cloned().collect();
    for _ in 0..pick.below(5) {
        if kept.is_empty() {
            break;
        }
        let (id, idem) = kept[pick.below(kept.len() as u64) as usize].clone();
        if model.replies.remove(&(id.clone(), idem.clone())).is_some() {
            let entity = key(&id);
            batch.replies_done.push(ReplyDone {
                shard: shard(&entity),
                epoch,
                key: entity,
                idempotency_key: idem,
            });
        }
    }
    if pick.below(15) == 0 {
        // The oldest first, across both tables; `at` grows with the batches.
        let limit = pick.below(8) as usize;
        let before_ms = at - 20;
        let mut old: Vec<((String, String), i64)> = model
            .replies
            .iter()
            .filter(|(_, (_, a))| *a < before_ms)
            .map(|(k, (_, a))| (k.clone(), *a))
            .collect();
        old.sort_by_key(|(_, a)| *a);
        // Ties in `at` may go either way: expire only whole groups of the same age.
        let mut cut = limit.min(old.len());
        while cut > 0 && cut < old.len() && old[cut - 1].1 == old[cut].1 {
            cut -= 1;
        }
        for (k, _) in &old[..cut] {
            model.replies.remove(k);
        }
        let through = old.get(cut.wrapping_sub(1)).map_or(i64::MIN, |(_, a)| *a);
        batch.expire_replies = Some(ExpireReplies {
            before_ms: if cut == 0 { i64::MIN } else { through + 1 },
            limit,
        });
    }
    if pick.below(20) == 0 {
        let id = format!("e{}", pick.below(50));
        let entity = key(&id);
        model
            .rows
            .retain(|(owner, _), row| *owner != id || !row.dies_with_owner());
        batch.deletes.push(EntityDelete {
            shard: shard(&entity),
            key: entity,
            epoch,
        });
    }
    batch
}

/// Checks every read path against the model.
async fn check(store: &SqliteStore, model: &Model, round: usize) {
    let mut due: Vec<Pending> = store.due(i64::MAX, 1_000_000).await.unwrap();
    due.sort_by(|a, b| (&a.owner, a.seq).cmp(&(&b.owner, b.seq)));
    let mut want: Vec<Pending> = model.rows.values().cloned().collect();
    want.sort_by(|a, b| (&a.owner, a.seq).cmp(&(&b.owner, b.seq)));
    assert_eq!(
        due.len(),
        want.len(),
        "round {round}: how many rows are due"
    );
    assert_eq!(due, want, "round {round}: the due rows");
    for n in 0..50 {
        let id = format!("e{n}");
        let owner = key(&id);
        let rows = store.catalog().pending_of(&owner, 10_000).await.unwrap();
        let want: Vec<&Pending> = model
            .rows
            .range((id.clone(), 0)..=(id.clone(), u64::MAX))
            .map(|(_, r)| r)
            .collect();
        assert_eq!(
            rows.iter().collect::<Vec<_>>(),
            want,
            "round {round}: {id}'s rows"
        );
        let last = store.last_row(&owner).await.unwrap();
        assert_eq!(
            last,
            want.last().map(|r| r.seq),
            "round {round}: {id}'s last row"
        );
        for k in 0..40 {
            let idem = format!("k{k}");
            let got = store.reply(&owner, &idem).await.unwrap();
            let want = model.replies.get(&(id.clone(), idem.clone()));
            assert_eq!(
                got.map(|r| (r.reply, r.at_ms)),
                want.cloned(),
                "round {round}: {id}'s reply {idem}"
            );
        }
    }
}

/// Random batches of rows and replies, enough commits for the move to the keyed tables to
/// run many times, with crashes (the store dropped without `close`) and clean reopens in
/// between: every read path agrees with the model after each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_replies_match_a_model_across_moves_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let all = all_shards();
    let mut store = SqliteStore::open(dir.path()).unwrap();
    let mut epoch = store.claim("model", &all).await.unwrap();
    let mut model = Model::default();
    let mut pick = Pick(0x0dd_5eed_7777_0001);
    let mut at = 1_000;
    for round in 0..24 {
        for _ in 0..40 {
            at += 1;
            let batch = batch(&mut pick, &mut model, epoch, at);
            let outcome = store.commit(batch).unwrap();
            assert!(outcome.fenced.is_empty());
        }
        check(&store, &model, round).await;
        match round % 4 {
            0 => {
                drop(store);
                store = SqliteStore::open(dir.path()).unwrap();
                epoch = store.claim("model", &all).await.unwrap();
            }
            1 => {
                store.close().await.unwrap();
                let db = rusqlite::Connection::open(dir.path().join("perennial.db")).unwrap();
                let recent: i64 = db
                    .query_row(
                        "SELECT (SELECT count(*) FROM recent_pending)
                              + (SELECT count(*) FROM recent_replies)",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(recent, 0, "a clean close moves every recent row");
                drop(store);
                store = SqliteStore::open(dir.path()).unwrap();
                epoch = store.claim("model", &all).await.unwrap();
            }
            _ => {}
        }
        check(&store, &model, round).await;
    }
    assert!(!model.rows.is_empty() && !model.replies.is_empty());
}
