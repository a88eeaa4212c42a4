//! A store wrapper that injects failures and holds commits, for tests of the layers above.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use perennial_types::{EntityKey, Epoch, ShardId};

use crate::{
    Batch, Catalog, CommitOutcome, Error, JournalEntry, Pending, Record, Result, Store, StoredReply,
};

/// Wraps a [`Store`] and lets a test fail or hold its commits, and count what reached it.
///
/// Clones share their controls, so a test keeps one clone and gives another to the runtime.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    controls: Arc<Controls>,
}

#[derive(Debug, Default)]
struct Controls {
    /// How many of the next commits fail with [`Error::Io`].
    fail_commits: AtomicUsize,
    /// If not zero, every commit whose number is a multiple of it fails.
    fail_every: AtomicUsize,
    /// Commits attempted, failed ones included.
    attempts: AtomicUsize,
    /// How many of the next loads fail with [`Error::Io`].
    fail_loads: AtomicUsize,
    /// While true, commits wait on `released` until [`FaultyStore::release_commits`].
    hold: Mutex<bool>,
    released: Condvar,
    /// Commits waiting on the hold now.
    waiting: AtomicUsize,
    commits: AtomicU64,
    committed_states: AtomicU64,
    loads: AtomicU64,
    largest_batch: AtomicU64,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, injecting nothing until told to.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            controls: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Makes the next `n` commits fail with an I/O error, writing nothing.
    pub fn fail_next_commits(&self, n: usize) {
        self.controls.fail_commits.store(n, Ordering::SeqCst);
    }

    /// Makes every `n`th commit from now on fail with an I/O error (0 stops it).
    pub fn fail_every(&self, n: usize) {
        self.controls.fail_every.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` loads fail with an I/O error.
    pub fn fail_next_loads(&self, n: usize) {
        self.controls.fail_loads.store(n, Ordering::SeqCst);
    }

    /// Holds every commit that starts from now on until [`release_commits`](Self::release_commits).
    pub fn hold_commits(&self) {
        *self.controls.hold.lock() = true;
    }

    /// Lets held commits, and all later ones, through.
    pub fn release_commits(&self) {
        *self.controls.hold.lock() = false;
        self.controls.released.notify_all();
    }

    /// How many commits wait on [`hold_commits`](Self::hold_commits) now.
    pub fn held(&self) -> usize {
        self.controls.waiting.load(Ordering::SeqCst)
    }

    /// How many commits reached the wrapped store.
    pub fn commits(&self) -> u64 {
        self.controls.commits.load(Ordering::SeqCst)
    }

    /// How many state writes those commits carried in all.
    pub fn committed_states(&self) -> u64 {
        self.controls.committed_states.load(Ordering::SeqCst)
    }

    /// The most state writes one commit carried.
    pub fn largest_batch(&self) -> u64 {
        self.controls.largest_batch.load(Ordering::SeqCst)
    }

    /// How many loads reached the wrapped store.
    pub fn loads(&self) -> u64 {
        self.controls.loads.load(Ordering::SeqCst)
    }
}

/// Takes one from a countdown, returning whether it was above zero.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait::async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch> {
        self.inner.claim(owner, shards).await
    }

    async fn load(&self, key: &EntityKey) -> Result<Option<Record>> {
        if take_one(&self.controls.fail_loads) {
            return Err(Error::Io("injected load failure".into()));
        }
        self.controls.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key).await
    }

    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>> {
        if take_one(&self.controls.fail_loads) {
            return Err(Error::Io("injected journal read failure".into()));
        }
        self.inner.journal(key, after, max).await
    }

    fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        {
            let mut held = self.controls.hold.lock();
            if *held {
                self.controls.waiting.fetch_add(1, Ordering::SeqCst);
                while *held {
                    self.controls.released.wait(&mut held);
                }
                self.controls.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let attempt = self.controls.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.controls.fail_every.load(Ordering::SeqCst);
        if take_one(&self.controls.fail_commits) || (every > 0 && attempt.is_multiple_of(every)) {
            return Err(Error::Io("injected commit failure".into()));
        }
        let states = batch.states.len() as u64;
        let outcome = self.inner.commit(batch)?;
        self.controls.commits.fetch_add(1, Ordering::SeqCst);
        self.controls
            .committed_states
            .fetch_add(states, Ordering::SeqCst);
        self.controls
            .largest_batch
            .fetch_max(states, Ordering::SeqCst);
        Ok(outcome)
    }

    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<Pending>> {
        self.inner.due(before_ms, limit).await
    }

    async fn paused(&self) -> Result<Vec<EntityKey>> {
        self.inner.paused().await
    }

    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>> {
        self.inner.last_row(key).await
    }

    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>> {
        if take_one(&self.controls.fail_loads) {
            return Err(Error::Io("injected reply read failure".into()));
        }
        self.inner.reply(key, idempotency_key).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog()
    }
}
