//! Typed listeners (`Builder::listen`): every committed step, in order per entity, with the
//! message and the state before and after; never a step that was rolled back; a slow listener
//! loses changes (counted) and never slows commits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perennial_core::{Change, Ctx, Process, Runtime, StartError};
use perennial_storage::MemoryStore;
use serde::{Deserialize, Serialize};

use crate::kinds::{Refused, until};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    n: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TallyMsg {
    Add(i64),
    /// Adds, then refuses: rolled back.
    AddThenRefuse(i64),
    /// Adds, then panics: rolled back.
    AddThenPanic(i64),
    Get,
    Delete,
}

impl Process for Tally {
    const KIND: &'static str = "tally";
    type Msg = TallyMsg;
    type Reply = i64;
    type Error = Refused;

    fn handle(&mut self, msg: TallyMsg, ctx: &mut Ctx<'_, Self>) -> Result<i64, Refused> {
        match msg {
            TallyMsg::Add(k) => self.n += k,
            TallyMsg::AddThenRefuse(k) => {
                self.n += k;
                return Err(Refused);
            }
            TallyMsg::AddThenPanic(k) => {
                self.n += k;
                panic!("on purpose");
            }
            TallyMsg::Get => {}
            TallyMsg::Delete => ctx.delete(),
        }
        Ok(self.n)
    }
}

/// What a listener saw: (id, step, message, before, after).
type Seen = Arc<Mutex<Vec<(String, u64, Option<TallyMsg>, i64, Option<i64>)>>>;

fn recorder(seen: &Seen) -> impl FnMut(&Change<Tally>) + Send + 'static {
    let seen = Arc::clone(seen);
    move |change| {
        seen.lock().unwrap().push((
            change.id.to_string(),
            change.step,
            change.msg.clone(),
            change.before.n,
            change.after.as_ref().map(|t| t.n),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_every_committed_step_in_order_and_nothing_else() {
    let seen: Seen = Arc::default();
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .register_snapshot::<Tally>()
        .max_attempts(10)
        .listen(recorder(&seen))
        .start()
        .await
        .unwrap();
    let t = rt.get::<Tally>("t1");
    t.call(TallyMsg::Add(5)).await.unwrap();
    t.call(TallyMsg::AddThenRefuse(100)).await.unwrap_err();
    t.call(TallyMsg::AddThenPanic(100)).await.unwrap_err();
    t.call(TallyMsg::Get).await.unwrap();
    t.call(TallyMsg::Add(2)).await.unwrap();
    t.call(TallyMsg::Delete).await.unwrap();
    t.call(TallyMsg::Add(1)).await.unwrap();
    until("four changes", || seen.lock().unwrap().len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = seen.lock().unwrap().clone();
    let t1 = |step, msg, before, after| ("t1".to_owned(), step, Some(msg), before, after);
    assert_eq!(
        seen,
        [
            t1(1, TallyMsg::Add(5), 0, Some(5)),
            t1(2, TallyMsg::Add(2), 5, Some(7)),
            t1(3, TallyMsg::Delete, 7, None),
            t1(4, TallyMsg::Add(1), 0, Some(1)),
        ],
        "refused, panicked and read-only steps are not heard; a deletion is"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_listener_loses_changes_and_never_slows_commits() {
    let open = Arc::new(AtomicBool::new(false));
    let heard = Arc::new(Mutex::new(0u64));
    let (g, h) = (Arc::clone(&open), Arc::clone(&heard));
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .register_snapshot::<Tally>()
        .listen(move |_: &Change<Tally>| {
            // Stuck until the test opens the gate.
            while !g.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            *h.lock().unwrap() += 1;
        })
        .start()
        .await
        .unwrap();
    let steps = 6_000;
    for i in 0..steps {
        let id = format!("t{}", i % 50);
        rt.get::<Tally>(id).call(TallyMsg::Add(1)).await.unwrap();
    }
    let stats = rt.stats();
    let tally = stats.kinds.iter().find(|k| k.kind == "tally").unwrap();
    assert!(tally.listener_dropped > 0, "{tally:?}");
    assert!(tally.listener_queued > 0, "{tally:?}");
    open.store(true, Ordering::SeqCst);
    // The last steps' changes may still be being handed over when their calls return: read
    // the drops afresh.
    let dropped = || {
        let stats = rt.stats();
        let tally = stats.kinds.iter().find(|k| k.kind == "tally").unwrap();
        tally.listener_dropped
    };
    until("the queue drains", || {
        *heard.lock().unwrap() + dropped() == steps
    })
    .await;
    let stats = rt.stats();
    let tally = stats.kinds.iter().find(|k| k.kind == "tally").unwrap();
    assert_eq!(tally.listener_queued, 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_of_a_kind_not_registered_fails_start() {
    let started = Runtime::builder()
        .store(MemoryStore::new())
        .listen(|_: &Change<Tally>| {})
        .start()
        .await;
    match started {
        Err(e @ StartError::ListenerWithoutKind("tally")) => {
            assert!(e.to_string().contains("register the kind"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}
