//! The storage traits: [`Store`], what the runtime needs to run (claim shards, load, read
//! journals, commit batches, read due rows and kept replies), and [`Catalog`], what operators
//! ask of the stored data (list, count and query entities, indexes, dead letters, an
//! entity's pending rows). A cluster's membership and leases are a third trait,
//! [`Directory`](crate::Directory).
//!
//! A store hands out its catalog ([`Store::catalog`]), usually itself. So a wrapper that only
//! changes how the runtime's path behaves (a fault injector, a shared handle) forwards one
//! method for the whole catalog, and a new operator feature touches the catalogs of the
//! backends, not every wrapper.

use std::fmt::Debug;
use std::sync::Arc;

use perennial_types::{EntityKey, Epoch, ShardId};

use crate::{
    Batch, ChangePage, CommitOutcome, EntityState, EntitySummary, Filter, JournalEntry, Path,
    Pending, Record, Result, StoredDeadLetter, StoredReply,
};

/// A durable home for entity state and journals: what the runtime needs to run. What
/// operators ask of the stored data is its [`Catalog`].
///
/// Implementations must make [`commit`](Store::commit) atomic and durable: when it returns
/// `Ok`, every write of the batch except those of fenced shards survives a crash of the
/// process and of the machine; when it returns `Err`, none of them is visible.
///
/// `commit` is a blocking call, unlike the others: it runs the transaction on the calling
/// thread and returns once the batch is durable. The runtime calls it from its own committer
/// thread, which takes the next batch the moment the call returns; a hop to another thread
/// in between would leave the disk idle.
#[async_trait::async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Claims `shards` for `owner`: gives each of them one new epoch, greater than any epoch
    /// any of them had, and returns it. Writes naming an older epoch are refused from now on.
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch>;

    /// Reads an entity's last committed state, or `None` if it was never written.
    async fn load(&self, key: &EntityKey) -> Result<Option<Record>>;

    /// Reads up to `max` of an entity's journal entries with a step above `after`, in step
    /// order.
    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>>;

    /// Writes a batch in one durable transaction, on the calling thread (it blocks).
    fn commit(&self, batch: Batch) -> Result<CommitOutcome>;

    /// Reads up to `limit` pending rows due at or before `before_ms`, the earliest first.
    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<Pending>>;

    /// Reads the reply kept for an idempotency key of an entity, if any.
    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>>;

    /// The entities paused now, in key order.
    async fn paused(&self) -> Result<Vec<EntityKey>>;

    /// The highest number among the pending rows `key` owns, if it owns any. A deleted
    /// entity's messages to others outlive it (see [`EntityDelete`](crate::EntityDelete)):
    /// its next life numbers its rows above them, so that none is overwritten.
    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>>;

    /// Flushes and releases what the store holds. Later calls fail with [`Error::Closed`](crate::Error::Closed).
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// What operators ask of the stored data: usually the store itself.
    fn catalog(&self) -> &dyn Catalog;
}

/// Which part of a listing by id to read: up to `limit` entities whose id is after `after`
/// (from the first, if `None`).
///
/// ```
/// use perennial_storage::Page;
///
/// let first = Page::first(100);
/// let next = Page::after(Some("cart-42"), 100);
/// assert_eq!(first.after, None);
/// assert_eq!(next.after, Some("cart-42"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    /// The last id of the page before, or `None` for the first page.
    pub after: Option<&'a str>,
    /// At most how many entities to read.
    pub limit: usize,
}

impl<'a> Page<'a> {
    /// The first page: up to `limit` entities from the first id.
    pub fn first(limit: usize) -> Self {
        Page { after: None, limit }
    }

    /// Up to `limit` entities whose id is after `after` (from the first, if `None`).
    pub fn after(after: Option<&'a str>, limit: usize) -> Self {
        Page { after, limit }
    }
}

/// What operators ask of a store's data: entities listed, counted and queried by state,
/// indexes, dead letters, an entity's pending rows. Reads of committed data only; they take
/// no part in a step.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// Reads up to `limit` of the pending rows `owner`'s steps created that are not applied
    /// yet (its timers, its messages to other entities, its effects), by number.
    async fn pending_of(&self, owner: &EntityKey, limit: usize) -> Result<Vec<Pending>>;

    /// Lists dead letters, oldest first, of one kind or of all kinds.
    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>>;

    /// Lists a page of the stored entities of `kind` (with a state or a journal), in id
    /// order.
    async fn entities(&self, kind: &str, page: Page<'_>) -> Result<Vec<EntitySummary>>;

    /// How many entities of `kind` are stored (with a state or a journal). By default, counted
    /// by listing them; a backend that can count in place says so.
    async fn count(&self, kind: &str) -> Result<u64> {
        let mut count = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .entities(kind, Page::after(after.as_deref(), 1024))
                .await?;
            count += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == 1024 => after = Some(last.id.clone()),
                _ => return Ok(count),
            }
        }
    }

    /// Finds a page of the stored entities of `kind` whose state matches `filter`, in id
    /// order. What it finds is committed state (for a `Journal`
    /// kind, its latest snapshot), never a state whose commit is still under way.
    async fn query(&self, kind: &str, filter: &Filter, page: Page<'_>) -> Result<Vec<EntityState>>;

    /// Indexes the states of `kind` by the value at `path` (a path without `[*]`), so that
    /// queries comparing it are answered without reading every state. Indexing a path again
    /// does nothing. It may take a while on a large kind, and commits wait meanwhile.
    async fn create_index(&self, kind: &str, path: &Path) -> Result<()>;

    /// Drops the index of `kind` by `path`; returns whether there was one.
    async fn drop_index(&self, kind: &str, path: &Path) -> Result<bool>;

    /// The paths `kind` is indexed by, in order.
    async fn indexes(&self, kind: &str) -> Result<Vec<Path>>;

    /// Reads up to `limit` changes of `kind` numbered above `after`, in increasing number
    /// (see [`ChangeWrite`](crate::ChangeWrite)). Numbers follow commit order: once a change
    /// is read, no change committed later gets a smaller number, so a reader that goes on
    /// from the last number it read misses nothing (unless expiry deleted it, which the page
    /// says).
    async fn changes(&self, kind: &str, after: u64, limit: usize) -> Result<ChangePage>;
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch> {
        (**self).claim(owner, shards).await
    }
    async fn load(&self, key: &EntityKey) -> Result<Option<Record>> {
        (**self).load(key).await
    }
    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>> {
        (**self).journal(key, after, max).await
    }
    fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        (**self).commit(batch)
    }
    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<Pending>> {
        (**self).due(before_ms, limit).await
    }
    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>> {
        (**self).reply(key, idempotency_key).await
    }
    async fn paused(&self) -> Result<Vec<EntityKey>> {
        (**self).paused().await
    }
    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>> {
        (**self).last_row(key).await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
    fn catalog(&self) -> &dyn Catalog {
        (**self).catalog()
    }
}
