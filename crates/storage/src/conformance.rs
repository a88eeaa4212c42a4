//! The conformance suite: the behaviour every [`Store`] must show, run against each backend.
//!
//! A backend's tests call [`store_conformance!`](crate::store_conformance) with an async block
//! that makes a fresh, empty store (and anything that must live as long as it, such as a
//! temporary directory). The macro expands to one `#[tokio::test]` per case, so a failure
//! names the case.

// Long file: the whole contract a store must meet, case after case, read as one checklist;
// each case is short and stands alone.

use std::sync::Arc;

use perennial_types::{EntityId, EntityKey, Epoch, SHARDS, ShardId, shard_of};

use crate::{
    Batch, ChangeWrite, DeadLetter, DeadLetterDone, DeadLetterWrite, EntityDelete, ExpireChanges,
    ExpireReplies, Filter, JournalEntry, JournalTrim, JournalWrite, Page, Path, PauseWrite,
    Pending, PendingClass, PendingDone, PendingWrite, ReplyDone, ReplyWrite, StateWrite, Store,
    StoredReply,
};

/// Expands to one test per conformance case, each on a fresh store from `$make`.
///
/// `$make` is an async block returning `(store, guard)`; the guard is dropped after the case.
/// With `optional`, it returns `Option<(store, guard)>`, and `None` (a server the backend
/// needs is not reachable) passes the case: `$make` must then say so on stderr.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@list @cases $make);
    };
    (optional $make:expr) => {
        $crate::store_conformance!(@list @optional $make);
    };
    (@list @$how:ident $make:expr) => {
        $crate::store_conformance!(@$how $make;
            missing_entity_loads_as_none,
            committed_state_loads_back_as_written,
            later_commit_overwrites,
            claims_increase_epochs,
            stale_epoch_is_fenced_and_others_land,
            unclaimed_or_future_epoch_is_fenced,
            dead_letters_are_kept_in_order,
            dead_letters_are_fenced,
            large_state_round_trips,
            concurrent_commits_all_land,
            empty_batch_commits,
            journal_reads_back_in_step_order,
            journal_is_fenced,
            journal_trim_deletes_through_step,
            journal_and_snapshot_commit_together,
            pending_rows_read_back_by_due_time,
            pending_rows_are_deleted_by_done,
            pending_rows_are_fenced,
            replies_read_back_and_expire_oldest_first,
            replies_are_fenced,
            replies_are_deleted_by_key_and_fenced,
            entities_are_listed_in_id_order_and_paged,
            dead_letters_done_are_deleted_and_fenced,
            queries_agree_with_the_filter_on_every_state,
            queries_see_the_latest_state_and_page_by_id,
            indexes_are_made_once_listed_and_dropped,
            pauses_are_kept_until_resumed_and_fenced,
            schema_versions_are_kept_with_each_state,
            an_entitys_pending_rows_read_back_by_number,
            entities_are_counted_by_kind,
            a_deleted_entity_is_gone_and_can_start_again,
            a_delete_applies_after_the_rest_of_its_batch,
            deletes_are_fenced,
            changes_read_back_in_commit_order_by_kind,
            changes_expire_and_say_so,
            changes_are_fenced,
            concurrent_changes_are_numbered_in_commit_order,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
    (@optional $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                // `None`: the backend is not reachable here; `$make` said so, loudly.
                let Some((store, _guard)) = $make.await else {
                    return;
                };
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}

fn key(kind: &str, id: &str) -> EntityKey {
    EntityKey::new(kind, EntityId::new(id).unwrap())
}

fn write(key: &EntityKey, epoch: Epoch, state: &str, version: u64) -> StateWrite {
    StateWrite {
        shard: shard_of(&key.kind, key.id.as_str()),
        key: key.clone(),
        epoch,
        state: Arc::from(state),
        version,
        schema: 1,
    }
}

fn all_shards() -> Vec<ShardId> {
    (0..SHARDS).map(ShardId).collect()
}

async fn claim_all(store: &dyn Store) -> Epoch {
    store.claim("conformance", &all_shards()).await.unwrap()
}

fn commit_states(store: &dyn Store, states: Vec<StateWrite>) -> crate::CommitOutcome {
    let batch = Batch {
        states,
        ..Batch::default()
    };
    store.commit(batch).unwrap()
}

/// An entity never written loads as `None`.
pub async fn missing_entity_loads_as_none(store: &dyn Store) {
    assert_eq!(store.load(&key("counter", "nobody")).await.unwrap(), None);
}

/// Whether two JSON texts hold the same value. A store may keep state as JSON text (SQLite)
/// or as a parsed JSON type (PostgreSQL's `jsonb`, which normalizes spaces and key order).
#[track_caller]
fn assert_same_json(found: &str, expected: &str) {
    let parse = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    assert_eq!(parse(found), parse(expected), "{found} != {expected}");
}

/// A committed state loads back as the same JSON value, with its version.
pub async fn committed_state_loads_back_as_written(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let k = key("table", "tâble-42 ♠");
    let state = r#"{"pot":120,"board":["As","Td"],"name":"Zoë","nested":{"a":[1,2.5,null]}}"#;
    let outcome = commit_states(store, vec![write(&k, epoch, state, 7)]);
    assert!(outcome.fenced.is_empty());
    let record = store.load(&k).await.unwrap().expect("state was committed");
    assert_same_json(&record.state, state);
    assert_eq!(record.version, 7);
    // Another kind with the same id is another entity.
    assert_eq!(
        store.load(&key("counter", "tâble-42 ♠")).await.unwrap(),
        None
    );
}

/// A later commit replaces the state of the same entity.
pub async fn later_commit_overwrites(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let k = key("counter", "c1");
    commit_states(store, vec![write(&k, epoch, r#"{"value":1}"#, 1)]);
    commit_states(store, vec![write(&k, epoch, r#"{"value":2}"#, 2)]);
    let record = store.load(&k).await.unwrap().unwrap();
    assert_same_json(&record.state, r#"{"value":2}"#);
    assert_eq!(record.version, 2);
}

/// Each claim gives an epoch greater than every earlier epoch of those shards.
pub async fn claims_increase_epochs(store: &dyn Store) {
    let a = store.claim("a", &[ShardId(1), ShardId(2)]).await.unwrap();
    let b = store.claim("b", &[ShardId(2)]).await.unwrap();
    let c = store.claim("c", &[ShardId(1), ShardId(3)]).await.unwrap();
    assert!(a.0 >= 1);
    assert!(b > a);
    assert!(c > a, "shard 1 was at {a}, the new claim gave {c}");
}

/// A write naming an old epoch is refused and reported; writes to other shards land.
pub async fn stale_epoch_is_fenced_and_others_land(store: &dyn Store) {
    let old = claim_all(store).await;
    let stale_key = key("counter", "stale");
    let stale_shard = shard_of("counter", "stale");
    let new = store.claim("usurper", &[stale_shard]).await.unwrap();
    // Find an entity in another shard, still held at the old epoch.
    let other = (0..)
        .map(|i| key("counter", &format!("other-{i}")))
        .find(|k| shard_of(&k.kind, k.id.as_str()) != stale_shard)
        .unwrap();
    let outcome = commit_states(
        store,
        vec![
            write(&stale_key, old, r#"{"value":666}"#, 1),
            write(&other, old, r#"{"value":1}"#, 1),
        ],
    );
    assert_eq!(outcome.fenced, vec![stale_shard]);
    assert_eq!(store.load(&stale_key).await.unwrap(), None);
    assert!(store.load(&other).await.unwrap().is_some());
    // The new owner writes fine.
    let outcome = commit_states(store, vec![write(&stale_key, new, r#"{"value":1}"#, 1)]);
    assert!(outcome.fenced.is_empty());
    assert_eq!(store.load(&stale_key).await.unwrap().unwrap().version, 1);
}

/// A write to a shard nobody claimed, or naming an epoch not yet given, is refused.
pub async fn unclaimed_or_future_epoch_is_fenced(store: &dyn Store) {
    let k = key("counter", "c");
    let shard = shard_of("counter", "c");
    let outcome = commit_states(store, vec![write(&k, Epoch(1), "{}", 1)]);
    assert_eq!(outcome.fenced, vec![shard]);
    let epoch = store.claim("n", &[shard]).await.unwrap();
    let ahead = Epoch(epoch.0 + 1);
    let outcome = commit_states(store, vec![write(&k, ahead, "{}", 1)]);
    assert_eq!(outcome.fenced, vec![shard]);
    assert_eq!(store.load(&k).await.unwrap(), None);
}

fn letter(k: &EntityKey, n: u32) -> DeadLetter {
    DeadLetter {
        key: k.clone(),
        message: format!(r#"{{"boom":{n}}}"#),
        error: format!("panicked at 'boom {n}'"),
        attempts: 3,
        at_ms: 1_700_000_000_000 + i64::from(n),
    }
}

/// Dead letters are kept, listed oldest first, and filtered by kind.
pub async fn dead_letters_are_kept_in_order(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("counter", "a");
    let t = key("table", "t");
    let letters = [letter(&a, 1), letter(&t, 2), letter(&a, 3)];
    for l in &letters {
        let batch = Batch {
            states: Vec::new(),
            dead_letters: vec![DeadLetterWrite {
                shard: shard_of(&l.key.kind, l.key.id.as_str()),
                epoch,
                letter: l.clone(),
            }],
            ..Batch::default()
        };
        assert!(store.commit(batch).unwrap().fenced.is_empty());
    }
    let all = store.catalog().dead_letters(None).await.unwrap();
    assert_eq!(
        all.iter().map(|d| &d.letter).collect::<Vec<_>>(),
        letters.iter().collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let counters = store.catalog().dead_letters(Some("counter")).await.unwrap();
    assert_eq!(counters.len(), 2);
    assert_eq!(counters[1].letter, letters[2]);
}

/// Dead letters obey the same fencing as states.
pub async fn dead_letters_are_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let k = key("counter", "a");
    let shard = shard_of("counter", "a");
    store.claim("usurper", &[shard]).await.unwrap();
    let batch = Batch {
        states: Vec::new(),
        dead_letters: vec![DeadLetterWrite {
            shard,
            epoch: old,
            letter: letter(&k, 1),
        }],
        ..Batch::default()
    };
    assert_eq!(store.commit(batch).unwrap().fenced, vec![shard]);
    assert!(store.catalog().dead_letters(None).await.unwrap().is_empty());
}

/// A state of one mebibyte round-trips.
pub async fn large_state_round_trips(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let k = key("blob", "big");
    let state = format!(r#"{{"data":"{}"}}"#, "x".repeat(1 << 20));
    commit_states(store, vec![write(&k, epoch, &state, 1)]);
    assert_same_json(&store.load(&k).await.unwrap().unwrap().state, &state);
}

/// Commits from many threads at once all land.
pub async fn concurrent_commits_all_land(store: &dyn Store) {
    let epoch = claim_all(store).await;
    std::thread::scope(|scope| {
        for w in 0..16 {
            scope.spawn(move || {
                for i in 0..25u64 {
                    let k = key("counter", &format!("w{w}-{i}"));
                    let state = format!(r#"{{"value":{i}}}"#);
                    commit_states(store, vec![write(&k, epoch, &state, i + 1)]);
                }
            });
        }
    });
    for w in 0..16 {
        for i in 0..25u64 {
            let record = store
                .load(&key("counter", &format!("w{w}-{i}")))
                .await
                .unwrap();
            assert_eq!(record.map(|r| r.version), Some(i + 1));
        }
    }
}

/// An empty batch is a valid commit.
pub async fn empty_batch_commits(store: &dyn Store) {
    claim_all(store).await;
    let outcome = store.commit(Batch::default()).unwrap();
    assert!(outcome.fenced.is_empty());
}

fn entry(key: &EntityKey, epoch: Epoch, step: u64) -> JournalWrite {
    JournalWrite {
        shard: shard_of(&key.kind, key.id.as_str()),
        key: key.clone(),
        epoch,
        entry: JournalEntry {
            step,
            at_us: 1_700_000_000_000_000 + step as i64,
            entry: Arc::from(format!(r#"{{"msg":{{"add":{step}}},"reply":"00ff"}}"#)),
        },
    }
}

fn trim(key: &EntityKey, epoch: Epoch, through: u64) -> JournalTrim {
    JournalTrim {
        shard: shard_of(&key.kind, key.id.as_str()),
        key: key.clone(),
        epoch,
        through,
    }
}

fn commit_journal(store: &dyn Store, journal: Vec<JournalWrite>, trims: Vec<JournalTrim>) {
    let batch = Batch {
        journal,
        trims,
        ..Batch::default()
    };
    let outcome = store.commit(batch).unwrap();
    assert!(outcome.fenced.is_empty(), "{outcome:?}");
}

/// Journal entries come back exactly, in step order, paged by `after` and `limit`, and only
/// the entity's own.
pub async fn journal_reads_back_in_step_order(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("table", "a");
    let b = key("table", "b");
    assert!(store.journal(&a, 0, 100).await.unwrap().is_empty());
    // Two commits, the second with steps of two entities interleaved.
    commit_journal(
        store,
        (1..=3).map(|s| entry(&a, epoch, s)).collect(),
        vec![],
    );
    commit_journal(
        store,
        vec![
            entry(&b, epoch, 1),
            entry(&a, epoch, 4),
            entry(&a, epoch, 5),
        ],
        vec![],
    );
    let all = store.journal(&a, 0, 100).await.unwrap();
    let steps: Vec<u64> = all.iter().map(|e| e.step).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    assert_eq!(all[2], entry(&a, epoch, 3).entry);
    let page = store.journal(&a, 2, 2).await.unwrap();
    let steps: Vec<u64> = page.iter().map(|e| e.step).collect();
    assert_eq!(steps, [3, 4]);
    assert_eq!(store.journal(&b, 0, 100).await.unwrap().len(), 1);
    assert!(store.journal(&a, 5, 100).await.unwrap().is_empty());
}

/// Journal entries and trims with a stale epoch are refused like states.
pub async fn journal_is_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let k = key("table", "fenced");
    commit_journal(store, vec![entry(&k, old, 1)], vec![]);
    let new = claim_all(store).await;
    let outcome = store
        .commit(Batch {
            journal: vec![entry(&k, old, 2)],
            trims: vec![trim(&k, old, 1)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(outcome.fenced, [shard_of(&k.kind, k.id.as_str())]);
    let steps: Vec<u64> = store
        .journal(&k, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, [1], "a fenced writer appended or trimmed");
    commit_journal(store, vec![entry(&k, new, 2)], vec![]);
    assert_eq!(store.journal(&k, 0, 10).await.unwrap().len(), 2);
}

/// A trim deletes the entity's entries up to and including its step, and nothing else.
pub async fn journal_trim_deletes_through_step(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("table", "trim-a");
    let b = key("table", "trim-b");
    let mut writes: Vec<JournalWrite> = (1..=6).map(|s| entry(&a, epoch, s)).collect();
    writes.extend((1..=6).map(|s| entry(&b, epoch, s)));
    commit_journal(store, writes, vec![]);
    // Appends and the trim in one batch: the trim applies after the appends.
    commit_journal(store, vec![entry(&a, epoch, 7)], vec![trim(&a, epoch, 4)]);
    let steps: Vec<u64> = store
        .journal(&a, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, [5, 6, 7]);
    assert_eq!(store.journal(&b, 0, 100).await.unwrap().len(), 6);
}

/// A snapshot (a state write) and the journal entries of the same steps land together.
pub async fn journal_and_snapshot_commit_together(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let k = key("table", "snap");
    let outcome = store
        .commit(Batch {
            states: vec![write(&k, epoch, r#"{"hands":3}"#, 3)],
            journal: (1..=3).map(|s| entry(&k, epoch, s)).collect(),
            trims: vec![trim(&k, epoch, 3)],
            ..Batch::default()
        })
        .unwrap();
    assert!(outcome.fenced.is_empty());
    let record = store.load(&k).await.unwrap().unwrap();
    assert_same_json(&record.state, r#"{"hands":3}"#);
    assert_eq!(record.version, 3);
    assert!(store.journal(&k, 0, 100).await.unwrap().is_empty());
}

fn pending(owner: &EntityKey, seq: u64, due_ms: i64, class: PendingClass) -> Pending {
    Pending {
        owner: owner.clone(),
        seq,
        due_ms,
        class,
        target: key("target", "t1"),
        body: Arc::from(format!("{{\"n\":{seq}}}")),
    }
}

fn pending_write(p: Pending, epoch: Epoch) -> PendingWrite {
    PendingWrite {
        shard: shard_of(&p.owner.kind, p.owner.id.as_str()),
        epoch,
        pending: p,
    }
}

/// Pending rows come back earliest first, only up to the time asked, and at most `limit`.
pub async fn pending_rows_read_back_by_due_time(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("timer", "a");
    let b = key("timer", "b");
    let rows = [
        pending(&a, 1, 3_000, PendingClass::Timer),
        pending(&b, 7, 1_000, PendingClass::Message),
        pending(&a, 2, 2_000, PendingClass::Effect),
        pending(&b, 8, 9_000, PendingClass::Timer),
    ];
    let batch = Batch {
        pending: rows
            .iter()
            .cloned()
            .map(|p| pending_write(p, epoch))
            .collect(),
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    let due = store.due(3_000, 100).await.unwrap();
    assert_eq!(due, vec![rows[1].clone(), rows[2].clone(), rows[0].clone()]);
    assert_eq!(store.due(3_000, 2).await.unwrap().len(), 2);
    assert!(store.due(999, 100).await.unwrap().is_empty());
    assert_eq!(store.due(i64::MAX, 100).await.unwrap().len(), 4);
}

/// A `done` deletes exactly its row, in the same batch as other writes, even one inserted by
/// the same batch.
pub async fn pending_rows_are_deleted_by_done(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("timer", "a");
    let first = pending(&a, 1, 10, PendingClass::Timer);
    let second = pending(&a, 2, 20, PendingClass::Timer);
    let batch = Batch {
        pending: vec![
            pending_write(first.clone(), epoch),
            pending_write(second.clone(), epoch),
        ],
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    let target = key("target", "t1");
    let done = |seq| PendingDone {
        shard: shard_of(&target.kind, target.id.as_str()),
        epoch,
        owner: a.clone(),
        seq,
    };
    let third = pending(&a, 3, 30, PendingClass::Timer);
    let batch = Batch {
        states: vec![write(&target, epoch, "{}", 1)],
        pending: vec![pending_write(third.clone(), epoch)],
        done: vec![done(1), done(3), done(99)],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    assert_eq!(store.due(i64::MAX, 10).await.unwrap(), vec![second]);
    assert!(store.load(&target).await.unwrap().is_some());
}

/// Inserts and deletes of pending rows are refused with a stale epoch, and nothing else is.
pub async fn pending_rows_are_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let new = claim_all(store).await;
    let a = key("timer", "a");
    let kept = pending(&a, 1, 10, PendingClass::Timer);
    store
        .commit(Batch {
            pending: vec![pending_write(kept.clone(), new)],
            ..Batch::default()
        })
        .unwrap();
    let outcome = store
        .commit(Batch {
            pending: vec![pending_write(pending(&a, 2, 5, PendingClass::Timer), old)],
            done: vec![PendingDone {
                shard: shard_of(&a.kind, a.id.as_str()),
                epoch: old,
                owner: a.clone(),
                seq: 1,
            }],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(outcome.fenced, vec![shard_of(&a.kind, a.id.as_str())]);
    assert_eq!(store.due(i64::MAX, 10).await.unwrap(), vec![kept]);
}

fn reply_write(key: &EntityKey, epoch: Epoch, idem: &str, reply: &str, at_ms: i64) -> ReplyWrite {
    ReplyWrite {
        key: key.clone(),
        shard: shard_of(&key.kind, key.id.as_str()),
        epoch,
        idempotency_key: idem.to_owned(),
        reply: StoredReply {
            reply: reply.to_owned(),
            at_ms,
        },
    }
}

/// A kept reply reads back byte for byte; expiry deletes the oldest first, at most `limit`.
pub async fn replies_read_back_and_expire_oldest_first(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("counter", "a");
    let b = key("counter", "b");
    let batch = Batch {
        replies: vec![
            reply_write(&a, epoch, "k1", "{\"value\": 1 }", 100),
            reply_write(&a, epoch, "k2", "2", 300),
            reply_write(&b, epoch, "k1", "\"b\"", 200),
        ],
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    let got = store.reply(&a, "k1").await.unwrap().unwrap();
    assert_eq!(got.reply, "{\"value\": 1 }");
    assert_eq!(got.at_ms, 100);
    assert_eq!(store.reply(&b, "k1").await.unwrap().unwrap().reply, "\"b\"");
    assert!(store.reply(&b, "k2").await.unwrap().is_none());
    let expire = |before_ms, limit| Batch {
        expire_replies: Some(ExpireReplies { before_ms, limit }),
        ..Batch::default()
    };
    store.commit(expire(1_000, 1)).unwrap();
    assert!(
        store.reply(&a, "k1").await.unwrap().is_none(),
        "oldest first"
    );
    assert!(store.reply(&b, "k1").await.unwrap().is_some());
    store.commit(expire(250, 10)).unwrap();
    assert!(store.reply(&b, "k1").await.unwrap().is_none());
    assert!(
        store.reply(&a, "k2").await.unwrap().is_some(),
        "newer than the cut"
    );
}

/// A kept reply is deleted by key, after the replies its batch writes, unless the delete is
/// fenced; deleting a reply that is not kept does nothing.
pub async fn replies_are_deleted_by_key_and_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let a = key("counter", "a");
    let done = |epoch, idem: &str| ReplyDone {
        key: a.clone(),
        shard: shard_of(&a.kind, a.id.as_str()),
        epoch,
        idempotency_key: idem.to_owned(),
    };
    store
        .commit(Batch {
            replies: vec![
                reply_write(&a, old, "k1", "1", 1),
                reply_write(&a, old, "k2", "2", 2),
            ],
            ..Batch::default()
        })
        .unwrap();
    // Written and deleted by one batch: the delete comes after.
    store
        .commit(Batch {
            replies: vec![reply_write(&a, old, "k3", "3", 3)],
            replies_done: vec![done(old, "k1"), done(old, "k3"), done(old, "none")],
            ..Batch::default()
        })
        .unwrap();
    assert!(store.reply(&a, "k1").await.unwrap().is_none());
    assert!(store.reply(&a, "k3").await.unwrap().is_none());
    assert_eq!(store.reply(&a, "k2").await.unwrap().unwrap().reply, "2");
    let _new = claim_all(store).await;
    let outcome = store
        .commit(Batch {
            replies_done: vec![done(old, "k2")],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(outcome.fenced.len(), 1);
    assert!(store.reply(&a, "k2").await.unwrap().is_some(), "fenced");
}

/// A reply written with a stale epoch is not kept.
pub async fn replies_are_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let _new = claim_all(store).await;
    let a = key("counter", "a");
    let outcome = store
        .commit(Batch {
            replies: vec![reply_write(&a, old, "k", "1", 1)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(outcome.fenced.len(), 1);
    assert!(store.reply(&a, "k").await.unwrap().is_none());
}

/// Stored entities of a kind (with a state, a journal or both) are listed once each, in id
/// order, paged by `after` and `limit`, with their versions, last steps and times.
pub async fn entities_are_listed_in_id_order_and_paged(store: &dyn Store) {
    let epoch = claim_all(store).await;
    assert!(
        store
            .catalog()
            .entities("counter", Page::first(10))
            .await
            .unwrap()
            .is_empty()
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    commit_states(
        store,
        ["c", "a", "b"]
            .iter()
            .map(|id| write(&key("counter", id), epoch, "{}", 3))
            .chain([write(&key("table", "x"), epoch, "{}", 1)])
            .collect(),
    );
    // A journal-only entity, and one with a snapshot and a journal.
    let j = key("counter", "j");
    commit_journal(
        store,
        vec![entry(&j, epoch, 1), entry(&j, epoch, 2)],
        vec![],
    );
    commit_journal(store, vec![entry(&key("counter", "b"), epoch, 4)], vec![]);

    let all = store
        .catalog()
        .entities("counter", Page::first(10))
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "j"]);
    assert_eq!((all[0].state_version, all[0].last_step), (3, 0));
    assert_eq!((all[1].state_version, all[1].last_step), (3, 4));
    assert_eq!((all[3].state_version, all[3].last_step), (0, 2));
    // When a state was written; for a journal-only entity, a store may give the last step's
    // own time instead.
    assert!(
        all[..3].iter().all(|e| e.updated_at_ms >= before - 1000),
        "{all:?}"
    );
    assert!(all[3].updated_at_ms > 0, "{all:?}");
    let page = store
        .catalog()
        .entities("counter", Page::after(Some("a"), 2))
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert!(
        store
            .catalog()
            .entities("counter", Page::after(Some("j"), 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .catalog()
            .entities("table", Page::first(10))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A done dead letter is deleted, others stay with their numbers; a stale epoch is refused.
pub async fn dead_letters_done_are_deleted_and_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let k = key("counter", "a");
    let shard = shard_of("counter", "a");
    let batch = Batch {
        dead_letters: (1..=3)
            .map(|n| DeadLetterWrite {
                shard,
                epoch: old,
                letter: letter(&k, n),
            })
            .collect(),
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    let letters = store.catalog().dead_letters(None).await.unwrap();
    let done = |epoch, seq| Batch {
        letters_done: vec![DeadLetterDone { shard, epoch, seq }],
        ..Batch::default()
    };
    assert!(
        store
            .commit(done(old, letters[1].seq))
            .unwrap()
            .fenced
            .is_empty()
    );
    let left = store.catalog().dead_letters(None).await.unwrap();
    assert_eq!(left, [letters[0].clone(), letters[2].clone()]);
    // A new letter gets a number above every earlier one, deleted or not.
    let new = claim_all(store).await;
    let batch = Batch {
        dead_letters: vec![DeadLetterWrite {
            shard,
            epoch: new,
            letter: letter(&k, 4),
        }],
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    let after = store.catalog().dead_letters(None).await.unwrap();
    assert!(after[2].seq > letters[2].seq, "{after:?}");
    // The old epoch can no longer delete.
    assert_eq!(
        store.commit(done(old, letters[0].seq)).unwrap().fenced,
        vec![shard]
    );
    assert_eq!(store.catalog().dead_letters(None).await.unwrap().len(), 3);
}

/// States of every shape the filter language reaches into, for the query cases.
const QUERIED_STATES: &[(&str, &str)] = &[
    (
        "a",
        r#"{"pot": 150, "phase": "flop", "open": true, "players": [{"name": "alice", "chips": 900}, {"name": "bob", "chips": 10}]}"#,
    ),
    (
        "b",
        r#"{"pot": 100, "phase": "showdown", "open": false, "players": [{"name": "bob", "chips": 5}]}"#,
    ),
    ("c", r#"{"pot": "150", "phase": null, "players": []}"#),
    (
        "d",
        r#"{"pot": 99.5, "players": {"name": "alice"}, "tags": ["vip", "new"]}"#,
    ),
    (
        "e",
        r#"{"owner": "user-7", "odd key": {"x": 1}, "tags": ["new"], "pot": -3}"#,
    ),
    (
        "f",
        r#"{"owner": "user-8", "seats": [[{"n": 1}], [{"n": 2}, {"n": 3}]], "pot": 1e3}"#,
    ),
    ("g", r#"7"#),
    ("h", r#""a string state""#),
    (
        "i",
        r#"{"name": "it's", "players": [{"name": ["alice"]}, "alice", 3]}"#,
    ),
    ("j", r#"{}"#),
];

const QUERIES: &[&str] = &[
    "pot > 100",
    "pot >= 100",
    "pot < 100",
    "pot = 150",
    "pot != 150",
    "pot = '150'",
    "not (pot > 100)",
    "phase = 'showdown'",
    "phase = null",
    "phase != null",
    "open = true",
    "open != true",
    "players[*].name = 'alice'",
    "state.players[*].name = 'alice'",
    "players[0].chips > 100",
    "players[*].chips < 10 or tags[*] = 'vip'",
    "players[*] = 'alice'",
    "not players[*].name = 'bob'",
    "tags[*] = 'new' and not owner = 'user-7'",
    "[\"odd key\"].x = 1",
    "seats[*][*].n = 3",
    "seats[1][0].n = 2",
    "state = 7",
    "$ > 5",
    "state = 'a string state'",
    "name = 'it''s'",
    "owner > 'user-7'",
    "owner >= 'user-7' and owner < 'user-8'",
    "not (not (pot = 100) and phase = 'flop')",
    "missing = null or not missing != null",
];

/// Every query finds exactly the stored states of its kind that [`Filter::matches`], in id
/// order, before and after the paths it compares are indexed.
pub async fn queries_agree_with_the_filter_on_every_state(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let mut writes: Vec<StateWrite> = QUERIED_STATES
        .iter()
        .map(|(id, state)| write(&key("table", id), epoch, state, 1))
        .collect();
    // Another kind with the same states is never found.
    writes.extend(
        QUERIED_STATES
            .iter()
            .map(|(id, state)| write(&key("other", id), epoch, state, 1)),
    );
    commit_states(store, writes);
    for indexed in [false, true] {
        if indexed {
            for path in [
                "pot",
                "phase",
                "owner",
                "players[0].chips",
                "state",
                "[\"odd key\"].x",
            ] {
                store
                    .catalog()
                    .create_index("table", &Path::parse(path).unwrap())
                    .await
                    .unwrap();
            }
        }
        for text in QUERIES {
            let filter = Filter::parse(text).unwrap();
            let expected: Vec<&str> = QUERIED_STATES
                .iter()
                .filter(|(_, state)| filter.matches(&serde_json::from_str(state).unwrap()))
                .map(|(id, _)| *id)
                .collect();
            let found = store
                .catalog()
                .query("table", &filter, Page::first(100))
                .await
                .unwrap();
            let ids: Vec<&str> = found.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, expected, "`{text}` (indexed: {indexed})");
        }
    }
    // The states come back as stored, with their versions.
    let found = store
        .catalog()
        .query(
            "table",
            &Filter::parse("owner = 'user-7'").unwrap(),
            Page::first(10),
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_same_json(&found[0].state, QUERIED_STATES[4].1);
    assert_eq!(found[0].version, 1);
    assert!(found[0].updated_at_ms > 0);
}

/// A query sees each entity's latest committed state only, and pages by id.
pub async fn queries_see_the_latest_state_and_page_by_id(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let state = |n: u64| format!(r#"{{"n": {n}, "even": {}}}"#, n.is_multiple_of(2));
    // Many commits, so that a store that folds states into a table later has some of them
    // folded and some not.
    for round in 0..20u64 {
        let writes = (0..50u64)
            .filter(|n| round == 0 || n % 5 == round % 5)
            .map(|n| {
                write(
                    &key("t", &format!("e{n:03}")),
                    epoch,
                    &state(n + round * 100),
                    round + 1,
                )
            })
            .collect();
        commit_states(store, writes);
    }
    let expected_n = |n: u64| n + (0..20).rev().find(|r| *r == 0 || n % 5 == r % 5).unwrap() * 100;
    let even = Filter::parse("even = true").unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .catalog()
            .query("t", &even, Page::after(after.as_deref(), 7))
            .await
            .unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().id.clone());
        seen.extend(page);
    }
    let expected: Vec<String> = (0..50u64)
        .filter(|n| expected_n(*n).is_multiple_of(2))
        .map(|n| format!("e{n:03}"))
        .collect();
    let ids: Vec<String> = seen.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, expected);
    for e in &seen {
        let n: u64 = e.id[1..].parse().unwrap();
        assert_same_json(&e.state, &state(expected_n(n)));
    }
    // A state written over no longer matches what it used to.
    let old = Filter::parse("n < 100").unwrap();
    let ids: Vec<String> = store
        .catalog()
        .query("t", &old, Page::first(100))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(ids.is_empty(), "{ids:?}");
    assert!(
        store
            .catalog()
            .query("t", &even, Page::first(0))
            .await
            .unwrap()
            .is_empty()
    );
}

/// An index by a path is made once however often it is asked for, listed by its kind only,
/// and dropped once; a path with `[*]` cannot be indexed.
pub async fn indexes_are_made_once_listed_and_dropped(store: &dyn Store) {
    let owner = Path::parse("owner").unwrap();
    let seat = Path::parse("seats[0].player").unwrap();
    assert!(store.catalog().indexes("t").await.unwrap().is_empty());
    store.catalog().create_index("t", &owner).await.unwrap();
    store.catalog().create_index("t", &owner).await.unwrap();
    store.catalog().create_index("t", &seat).await.unwrap();
    store.catalog().create_index("u", &owner).await.unwrap();
    assert_eq!(
        store.catalog().indexes("t").await.unwrap(),
        [owner.clone(), seat.clone()]
    );
    let each = Path::parse("players[*].name").unwrap();
    assert!(matches!(
        store.catalog().create_index("t", &each).await,
        Err(crate::Error::Invalid(_))
    ));
    assert!(store.catalog().drop_index("t", &owner).await.unwrap());
    assert!(!store.catalog().drop_index("t", &owner).await.unwrap());
    assert_eq!(store.catalog().indexes("t").await.unwrap(), [seat]);
    assert_eq!(store.catalog().indexes("u").await.unwrap(), [owner]);
}

/// A paused entity stays paused until a batch resumes it; pausing twice is pausing once; a
/// stale epoch can neither pause nor resume.
pub async fn pauses_are_kept_until_resumed_and_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let pause = |k: &EntityKey, epoch, paused| Batch {
        pauses: vec![PauseWrite {
            key: k.clone(),
            shard: shard_of(&k.kind, k.id.as_str()),
            epoch,
            paused,
        }],
        ..Batch::default()
    };
    let (a, b) = (key("t", "a"), key("counter", "b"));
    assert!(store.paused().await.unwrap().is_empty());
    store.commit(pause(&a, old, true)).unwrap();
    store.commit(pause(&a, old, true)).unwrap();
    store.commit(pause(&b, old, true)).unwrap();
    assert_eq!(store.paused().await.unwrap(), [b.clone(), a.clone()]);
    store.commit(pause(&b, old, false)).unwrap();
    assert_eq!(store.paused().await.unwrap(), std::slice::from_ref(&a));
    let new = claim_all(store).await;
    let outcome = store.commit(pause(&a, old, false)).unwrap();
    assert_eq!(outcome.fenced, [shard_of("t", "a")]);
    assert!(
        !store
            .commit(pause(&b, old, true))
            .unwrap()
            .fenced
            .is_empty()
    );
    assert_eq!(store.paused().await.unwrap(), std::slice::from_ref(&a));
    store.commit(pause(&a, new, false)).unwrap();
    assert!(store.paused().await.unwrap().is_empty());
}

/// Each state keeps the schema version it was written with: on load, in listings, through a
/// later write at another version, and for many entities of one commit (which a backend may
/// keep together until it folds them).
pub async fn schema_versions_are_kept_with_each_state(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let at = |id: &str, schema: u32, version: u64| StateWrite {
        schema,
        ..write(&key("cart", id), epoch, r#"{"items":[]}"#, version)
    };
    let writes: Vec<StateWrite> = (0..40u32)
        .map(|n| at(&format!("c{n:02}"), n % 3 + 1, 1))
        .collect();
    commit_states(store, writes);
    for n in 0..40u32 {
        let record = store.load(&key("cart", &format!("c{n:02}"))).await.unwrap();
        assert_eq!(record.map(|r| r.schema), Some(n % 3 + 1), "c{n:02}");
    }
    let listed = store
        .catalog()
        .entities("cart", Page::first(100))
        .await
        .unwrap();
    let schemas: Vec<u32> = listed.iter().map(|e| e.schema).collect();
    assert_eq!(schemas, (0..40u32).map(|n| n % 3 + 1).collect::<Vec<_>>());
    // A later write at a newer version replaces it; one at version 1 says 1 again.
    commit_states(store, vec![at("c00", 7, 2), at("c01", 1, 2)]);
    let c00 = store.load(&key("cart", "c00")).await.unwrap().unwrap();
    assert_eq!((c00.version, c00.schema), (2, 7));
    let c01 = store.load(&key("cart", "c01")).await.unwrap().unwrap();
    assert_eq!((c01.version, c01.schema), (2, 1));
    // Many commits later (a backend folds its older states meanwhile), nothing changed.
    for round in 0..50u64 {
        let filler =
            (0..20).map(|n| write(&key("filler", &format!("f{n}")), epoch, "{}", round + 1));
        commit_states(store, filler.collect());
    }
    let c00 = store.load(&key("cart", "c00")).await.unwrap().unwrap();
    assert_eq!((c00.version, c00.schema), (2, 7));
    let c05 = store.load(&key("cart", "c05")).await.unwrap().unwrap();
    assert_eq!(c05.schema, 3);
    let listed = store
        .catalog()
        .entities("cart", Page::first(1))
        .await
        .unwrap();
    assert_eq!(listed[0].schema, 7);
}

/// An entity's pending rows read back by number, its own only, at most `limit`, and
/// without those applied since.
pub async fn an_entitys_pending_rows_read_back_by_number(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("timer", "a");
    let b = key("timer", "b");
    let rows: Vec<Pending> = [(3, 50), (1, 90), (2, 10)]
        .into_iter()
        .map(|(seq, due)| pending(&a, seq, due, PendingClass::Timer))
        .chain([pending(&b, 1, 5, PendingClass::Message)])
        .collect();
    let batch = Batch {
        pending: rows
            .iter()
            .cloned()
            .map(|p| pending_write(p, epoch))
            .collect(),
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    let of_a = store.catalog().pending_of(&a, 10).await.unwrap();
    let seqs: Vec<u64> = of_a.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(of_a[0], rows[1]);
    assert_eq!(store.catalog().pending_of(&a, 2).await.unwrap().len(), 2);
    let done = PendingDone {
        shard: shard_of(&a.kind, a.id.as_str()),
        epoch,
        owner: a.clone(),
        seq: 2,
    };
    let batch = Batch {
        done: vec![done],
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    let seqs: Vec<u64> = store
        .catalog()
        .pending_of(&a, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(seqs, [1, 3]);
    assert_eq!(
        store.catalog().pending_of(&b, 10).await.unwrap(),
        vec![rows[3].clone()]
    );
    assert!(
        store
            .catalog()
            .pending_of(&key("timer", "none"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A kind's stored entities are counted once each, whether they have a state, a journal or
/// both, committed just now or long ago.
pub async fn entities_are_counted_by_kind(store: &dyn Store) {
    let epoch = claim_all(store).await;
    assert_eq!(store.catalog().count("cart").await.unwrap(), 0);
    let states: Vec<StateWrite> = (0..30)
        .map(|n| write(&key("cart", &format!("c{n}")), epoch, "{}", 1))
        .chain([write(&key("other", "o"), epoch, "{}", 1)])
        .collect();
    commit_states(store, states);
    let journal = |id: &str| JournalWrite {
        key: key("cart", id),
        shard: shard_of("cart", id),
        epoch,
        entry: JournalEntry {
            step: 1,
            at_us: 1,
            entry: Arc::from("{}"),
        },
    };
    let batch = Batch {
        journal: vec![journal("c0"), journal("j-only")],
        ..Batch::default()
    };
    store.commit(batch).unwrap();
    assert_eq!(store.catalog().count("cart").await.unwrap(), 31);
    assert_eq!(store.catalog().count("other").await.unwrap(), 1);
    assert_eq!(store.catalog().count("nothing").await.unwrap(), 0);
}

/// A row its owner addressed to itself, as timers and effects are.
fn to_self(mut row: Pending) -> Pending {
    row.target = row.owner.clone();
    row
}

fn delete(key: &EntityKey, epoch: Epoch) -> EntityDelete {
    EntityDelete {
        shard: shard_of(&key.kind, key.id.as_str()),
        key: key.clone(),
        epoch,
    }
}

/// What a store says of one entity, read every way it can be read: its state, journal,
/// due rows it owns, and whether listings, counts and queries find it.
async fn traces(store: &dyn Store, k: &EntityKey) -> (bool, usize, Vec<PendingClass>, bool, bool) {
    let state = store.load(k).await.unwrap().is_some();
    let journal = store.journal(k, 0, 100).await.unwrap().len();
    let rows = store
        .due(i64::MAX, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| &p.owner == k)
        .map(|p| p.class)
        .collect();
    let catalog = store.catalog();
    let listed = catalog
        .entities(&k.kind, Page::first(1_000))
        .await
        .unwrap()
        .iter()
        .any(|e| e.id == k.id.as_str());
    let everything = Filter::parse("$ != null").unwrap();
    let found = catalog
        .query(&k.kind, &everything, Page::first(1_000))
        .await
        .unwrap()
        .iter()
        .any(|e| e.id == k.id.as_str());
    (state, journal, rows, listed, found)
}

/// A deleted entity's state, journal and rows to itself (timers, effects, messages to
/// itself) are gone, and no listing, count or query finds it; the messages it sent to
/// others (and the number of the last), its kept replies and its dead letters stay, and its
/// neighbours are untouched. Written again, it starts a new life from version 1.
pub async fn a_deleted_entity_is_gone_and_can_start_again(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("queue", "a");
    let b = key("queue", "b");
    let letter = DeadLetter {
        key: a.clone(),
        message: "{}".into(),
        error: "boom".into(),
        attempts: 3,
        at_ms: 1,
    };
    let batch = Batch {
        states: vec![
            write(&a, epoch, r#"{"jobs":3}"#, 4),
            write(&b, epoch, r#"{"jobs":1}"#, 2),
        ],
        journal: vec![
            entry(&a, epoch, 1),
            entry(&a, epoch, 2),
            entry(&b, epoch, 1),
        ],
        pending: vec![
            pending_write(to_self(pending(&a, 1, 10, PendingClass::Timer)), epoch),
            pending_write(to_self(pending(&a, 2, 20, PendingClass::Effect)), epoch),
            pending_write(pending(&a, 3, 30, PendingClass::Message), epoch),
            pending_write(to_self(pending(&a, 4, 40, PendingClass::Message)), epoch),
            pending_write(pending(&a, 5, 50, PendingClass::Ask), epoch),
            pending_write(to_self(pending(&b, 1, 10, PendingClass::Timer)), epoch),
        ],
        replies: vec![reply_write(&a, epoch, "k1", "7", 100)],
        dead_letters: vec![DeadLetterWrite {
            shard: shard_of(&a.kind, a.id.as_str()),
            epoch,
            letter,
        }],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    let before = (
        true,
        2,
        vec![
            PendingClass::Timer,
            PendingClass::Effect,
            PendingClass::Message,
            PendingClass::Message,
            PendingClass::Ask,
        ],
    );
    let (state, journal, rows, listed, found) = traces(store, &a).await;
    assert_eq!((state, journal, rows), before);
    assert!(listed && found);
    assert_eq!(store.catalog().count("queue").await.unwrap(), 2);

    let batch = Batch {
        deletes: vec![delete(&a, epoch)],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    assert_eq!(
        traces(store, &a).await,
        (false, 0, vec![PendingClass::Message], false, false),
        "state, journal, rows to itself and asks gone; its message to another stays"
    );
    assert_eq!(store.last_row(&a).await.unwrap(), Some(3));
    assert_eq!(store.last_row(&b).await.unwrap(), Some(1));
    assert_eq!(store.last_row(&key("queue", "never")).await.unwrap(), None);
    assert_eq!(store.catalog().count("queue").await.unwrap(), 1);
    assert_eq!(store.reply(&a, "k1").await.unwrap().unwrap().reply, "7");
    let letters = store.catalog().dead_letters(Some("queue")).await.unwrap();
    assert_eq!(
        letters.len(),
        1,
        "dead letters are the operator's to discard"
    );
    let (state, journal, rows, listed, found) = traces(store, &b).await;
    assert_eq!((state, journal, rows), (true, 1, vec![PendingClass::Timer]));
    assert!(listed && found);

    // Deleting what is not stored does nothing.
    let batch = Batch {
        deletes: vec![delete(&key("queue", "never"), epoch)],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());

    // A new life: version 1, journal from step 1.
    let batch = Batch {
        states: vec![write(&a, epoch, r#"{"jobs":0}"#, 1)],
        journal: vec![entry(&a, epoch, 1)],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    let record = store.load(&a).await.unwrap().unwrap();
    assert_same_json(&record.state, r#"{"jobs":0}"#);
    assert_eq!(record.version, 1);
    let journal = store.journal(&a, 0, 100).await.unwrap();
    assert_eq!(journal.iter().map(|e| e.step).collect::<Vec<_>>(), [1]);
    assert!(traces(store, &a).await.3, "listed again");
}

/// A delete comes after the other writes of its batch: a state, journal entries and timers
/// of the same entity written by the same batch are deleted too, while another entity's
/// writes land.
pub async fn a_delete_applies_after_the_rest_of_its_batch(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("cart", "a");
    let c = key("cart", "c");
    // Some state already stored, so that a store that folds later has something to fold.
    commit_states(store, vec![write(&a, epoch, r#"{"n":1}"#, 1)]);
    let batch = Batch {
        states: vec![write(&a, epoch, r#"{"n":2}"#, 2), write(&c, epoch, "{}", 1)],
        journal: vec![entry(&a, epoch, 1)],
        pending: vec![pending_write(
            to_self(pending(&a, 1, 10, PendingClass::Timer)),
            epoch,
        )],
        deletes: vec![delete(&a, epoch)],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    assert_eq!(traces(store, &a).await, (false, 0, vec![], false, false));
    assert!(store.load(&c).await.unwrap().is_some());
    // Later commits (a store may fold its log meanwhile) do not bring it back.
    for n in 0..20 {
        let other = key("cart", &format!("o{n}"));
        commit_states(store, vec![write(&other, epoch, "{}", 1)]);
    }
    assert_eq!(traces(store, &a).await, (false, 0, vec![], false, false));
}

/// A delete with a stale epoch is refused and deletes nothing.
pub async fn deletes_are_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let new = claim_all(store).await;
    let a = key("cart", "a");
    let batch = Batch {
        states: vec![write(&a, new, "{}", 1)],
        journal: vec![entry(&a, new, 1)],
        ..Batch::default()
    };
    assert!(store.commit(batch).unwrap().fenced.is_empty());
    let batch = Batch {
        deletes: vec![delete(&a, old)],
        ..Batch::default()
    };
    let outcome = store.commit(batch).unwrap();
    assert_eq!(outcome.fenced, vec![shard_of(&a.kind, a.id.as_str())]);
    assert!(store.load(&a).await.unwrap().is_some());
    assert_eq!(store.journal(&a, 0, 10).await.unwrap().len(), 1);
}

fn change(
    key: &EntityKey,
    epoch: Epoch,
    version: u64,
    at_ms: i64,
    state: Option<&str>,
) -> ChangeWrite {
    ChangeWrite {
        shard: shard_of(&key.kind, key.id.as_str()),
        key: key.clone(),
        epoch,
        version,
        at_ms,
        state: state.map(Arc::from),
    }
}

fn commit_changes(store: &dyn Store, changes: Vec<ChangeWrite>) {
    let batch = Batch {
        changes,
        ..Batch::default()
    };
    store.commit(batch).unwrap();
}

/// A kind's changes read back in the order they were committed (within a batch, in the
/// batch's order), each kind on its own, paged by the last number read.
pub async fn changes_read_back_in_commit_order_by_kind(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let (a, b, other) = (key("feed", "a"), key("feed", "b"), key("other", "x"));
    commit_changes(
        store,
        vec![
            change(&a, epoch, 1, 10, Some(r#"{"n":1}"#)),
            change(&other, epoch, 1, 10, Some("{}")),
            change(&a, epoch, 2, 10, Some(r#"{"n":2}"#)),
        ],
    );
    commit_changes(store, vec![change(&b, epoch, 1, 20, Some(r#"{"n":"b"}"#))]);
    commit_changes(store, vec![change(&a, epoch, 3, 30, None)]);
    let page = store.catalog().changes("feed", 0, 100).await.unwrap();
    assert_eq!(page.expired_through, 0);
    let seen: Vec<(&str, u64, Option<&str>)> = page
        .changes
        .iter()
        .map(|c| (c.id.as_str(), c.version, c.state.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("a", 1, Some(r#"{"n":1}"#)),
            ("a", 2, Some(r#"{"n":2}"#)),
            ("b", 1, Some(r#"{"n":"b"}"#)),
            ("a", 3, None),
        ]
    );
    assert!(page.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(page.changes[2].at_ms, 20);
    // Paged: after the second, the rest.
    let rest = store
        .catalog()
        .changes("feed", page.changes[1].seq, 1)
        .await
        .unwrap();
    assert_eq!(rest.changes, page.changes[2..3]);
    let last = page.changes[3].seq;
    assert!(
        store
            .catalog()
            .changes("feed", last, 10)
            .await
            .unwrap()
            .changes
            .is_empty()
    );
    let others = store.catalog().changes("other", 0, 10).await.unwrap();
    assert_eq!(others.changes.len(), 1);
}

/// Expiry deletes a kind's changes before a time and says how far it went; numbers are
/// never given twice, even once the newest changes expired.
pub async fn changes_expire_and_say_so(store: &dyn Store) {
    let epoch = claim_all(store).await;
    let a = key("feed", "a");
    commit_changes(store, vec![change(&a, epoch, 1, 100, Some("1"))]);
    commit_changes(store, vec![change(&a, epoch, 2, 200, Some("2"))]);
    let before = store
        .catalog()
        .changes("feed", 0, 10)
        .await
        .unwrap()
        .changes;
    let expire_some = |kind: &str, before_ms, limit| Batch {
        expire_changes: vec![ExpireChanges {
            kind: kind.to_owned(),
            before_ms,
            limit,
        }],
        ..Batch::default()
    };
    let expire = |kind: &str, before_ms| expire_some(kind, before_ms, 100);
    store.commit(expire("other", 1_000)).unwrap();
    store.commit(expire("feed", 150)).unwrap();
    let page = store.catalog().changes("feed", 0, 10).await.unwrap();
    assert_eq!(page.expired_through, before[0].seq);
    assert_eq!(page.changes, before[1..]);
    // At most the limit goes at once, the oldest first.
    commit_changes(store, vec![change(&a, epoch, 3, 250, Some("3"))]);
    store.commit(expire_some("feed", 1_000, 1)).unwrap();
    let page = store.catalog().changes("feed", 0, 10).await.unwrap();
    assert_eq!(page.expired_through, before[1].seq);
    assert_eq!(page.changes.len(), 1, "{page:?}");
    // Everything expires; a new change still gets a new, higher number.
    store.commit(expire("feed", 1_000)).unwrap();
    let newest = page.changes[0].seq;
    commit_changes(store, vec![change(&a, epoch, 4, 300, Some("4"))]);
    let page = store.catalog().changes("feed", 0, 10).await.unwrap();
    assert_eq!(page.expired_through, newest);
    assert_eq!(page.changes.len(), 1);
    assert!(page.changes[0].seq > newest, "{page:?}");
    // Expiring nothing moves nothing back.
    store.commit(expire("feed", 0)).unwrap();
    let again = store.catalog().changes("feed", 0, 10).await.unwrap();
    assert_eq!(again.expired_through, newest);
}

/// A change written with a stale epoch is not kept.
pub async fn changes_are_fenced(store: &dyn Store) {
    let old = claim_all(store).await;
    let new = claim_all(store).await;
    let (a, b) = (key("feed", "a"), key("feed", "b"));
    let outcome = store
        .commit(Batch {
            changes: vec![
                change(&a, old, 1, 1, Some("1")),
                change(&b, new, 1, 1, Some("2")),
            ],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(outcome.fenced.len(), 1);
    let page = store.catalog().changes("feed", 0, 10).await.unwrap();
    let ids: Vec<&str> = page.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["b"]);
}

/// Commits from many threads at once: a reader that follows the feed from the last number
/// it read, while they commit, ends up with every change exactly once, each entity's in order.
pub async fn concurrent_changes_are_numbered_in_commit_order(store: &dyn Store) {
    const WRITERS: u64 = 4;
    const EACH: u64 = 40;
    let epoch = claim_all(store).await;
    let keys: Vec<EntityKey> = (0..WRITERS)
        .map(|w| key("feed", &format!("w{w}")))
        .collect();
    let writers: Vec<Box<dyn FnOnce() + Send + '_>> = keys
        .iter()
        .map(|key| -> Box<dyn FnOnce() + Send + '_> {
            Box::new(move || {
                for v in 1..=EACH {
                    commit_changes(store, vec![change(key, epoch, v, 1, Some("0"))]);
                }
            })
        })
        .collect();
    let seen = follow_while(store, "feed", writers);
    assert_each_once_in_order(&seen, &keys, EACH);
}

/// Runs each of `writers` on a thread of its own while following the feed of `kind` on
/// `reader` from its start, page by page from the last number read, until they are done and
/// the feed has nothing more; returns (id, version) of each change read, in order. Call it
/// from a multi-threaded runtime.
pub fn follow_while<'a>(
    reader: &dyn Store,
    kind: &str,
    writers: Vec<Box<dyn FnOnce() + Send + 'a>>,
) -> Vec<(String, u64)> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let writers: Vec<_> = writers.into_iter().map(|w| scope.spawn(w)).collect();
            let (mut cursor, mut seen) = (0, Vec::new());
            loop {
                let finished = writers.iter().all(|w| w.is_finished());
                let page = runtime
                    .block_on(reader.catalog().changes(kind, cursor, 7))
                    .unwrap();
                if let Some(last) = page.changes.last() {
                    cursor = last.seq;
                }
                let empty = page.changes.is_empty();
                seen.extend(page.changes.into_iter().map(|c| (c.id, c.version)));
                if finished && empty {
                    return seen;
                }
            }
        })
    })
}

/// Checks that `seen` holds versions 1 to `each` of every one of `keys`, once each, in order.
pub fn assert_each_once_in_order(seen: &[(String, u64)], keys: &[EntityKey], each: u64) {
    assert_eq!(
        seen.len() as u64,
        keys.len() as u64 * each,
        "each change once"
    );
    for key in keys {
        let versions: Vec<u64> = seen
            .iter()
            .filter(|(id, _)| id == key.id.as_str())
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(versions, (1..=each).collect::<Vec<_>>(), "{key} in order");
    }
}
