//! Migration passes: the operations that go through every stored entity of a kind:
//! [`Admin::migrate`](crate::Admin::migrate) (write each outdated state back at the kind's version, or only
//! report what would change) and [`Admin::verify_replay`](crate::Admin::verify_replay) (would this build activate
//! every entity: does each state migrate and decode, does each journal replay as it ran
//! live). How one stored state is brought up to date is in `upgrade`.
//!
//! A migration pass rewrites an outdated entity through its own mailbox, like a message
//! (so it is serialized with the entity's calls, fenced, and committed with the other steps
//! of its batch), a few at a time, and passivates the entities it activated. It skips the
//! entities already at the kind's version, so a pass interrupted by a crash is resumed by
//! running it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use perennial_storage::{EntitySummary, Page};
use perennial_types::{EntityId, EntityKey};
use serde::Serialize;

use crate::dyn_kind::DynKind;
use crate::{Admin, AdminError, CallError, Persistence};

/// What a pass over a kind's entities should do. See [`Admin::migrate`](crate::Admin::migrate).
///
/// ```
/// use perennial_core::Migrate;
///
/// // Report what would change, 128 entities at a time, without writing anything.
/// let plan = Migrate::new().dry_run().batch(128);
/// # let _ = plan;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrate {
    pub(crate) dry_run: bool,
    pub(crate) snapshot: bool,
    pub(crate) batch: usize,
}

impl Default for Migrate {
    fn default() -> Self {
        Self::new()
    }
}

impl Migrate {
    /// Writes back every state stored at an older schema version, 64 entities at a time.
    pub fn new() -> Self {
        Self {
            dry_run: false,
            snapshot: false,
            batch: 64,
        }
    }

    /// Writes nothing: reads each outdated state, migrates and decodes it in memory, and
    /// reports how many would change and which fail.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// Also snapshots every entity of a `Journal` kind (with snapshots) whose journal goes
    /// beyond its latest snapshot, so that no step stored before is ever replayed by later
    /// code (run it with the build that wrote them, before an upgrade that changes their
    /// handler).
    pub fn snapshot(mut self) -> Self {
        self.snapshot = true;
        self
    }

    /// How many entities are rewritten at once (at least 1). More go faster and take more
    /// of the node from live traffic.
    pub fn batch(mut self, entities: usize) -> Self {
        self.batch = entities.max(1);
        self
    }
}

/// Counters a running pass updates as it goes, for a progress bar or the admin API.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    examined: AtomicU64,
    changed: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    /// How many entities the kind had when the pass started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// How many entities the pass has looked at.
    pub fn examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// How many were changed (or, in a dry run, would be).
    pub fn changed(&self) -> u64 {
        self.changed.load(Ordering::Relaxed)
    }

    /// How many failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// At most this many failures are reported by name.
const REPORTED_FAILURES: usize = 20;

/// One entity a pass could not migrate, snapshot or replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Failure {
    /// The entity's id.
    pub id: String,
    /// The error's code (`migration_failed`, `state_too_new`, `replay_diverged`, …).
    pub code: String,
    /// The error, in words.
    pub error: String,
}

/// What a pass of [`Admin::migrate`](crate::Admin::migrate) did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The kind.
    pub kind: String,
    /// The kind's schema version in this build: what states are migrated to.
    pub schema: u32,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Entities looked at.
    pub examined: u64,
    /// Entities rewritten (in a dry run: that would be).
    pub changed: u64,
    /// Entities already at the kind's version, with nothing to do.
    pub unchanged: u64,
    /// Entities of shards this node does not serve (in a cluster): the pass on the nodes
    /// that serve them migrates them.
    pub not_served: u64,
    /// Entities that could not be migrated.
    pub failed: u64,
    /// The first of them, with their errors.
    pub failures: Vec<Failure>,
    /// How long the pass took, in milliseconds.
    pub elapsed_ms: u64,
}

/// What [`Admin::verify_replay`](crate::Admin::verify_replay) found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The kind.
    pub kind: String,
    /// Entities checked.
    pub checked: u64,
    /// Entities this build cannot activate: a journal that diverges, a state that does not
    /// migrate or decode.
    pub failed: u64,
    /// The first of them, with their errors.
    pub failures: Vec<Failure>,
    /// How long the check took, in milliseconds.
    pub elapsed_ms: u64,
}

/// What a pass does with one listed entity.
enum Action {
    /// Nothing: it is up to date.
    Skip,
    /// Rewrite it (or, in a dry run, check that it would migrate).
    Rewrite,
    /// Refuse it without touching it.
    Fail(CallError),
}

impl Admin {
    /// Goes through every stored entity of `kind`, in id order, and writes back each state
    /// stored at an older schema version at the kind's version (see
    /// [`Process::MIGRATIONS`](crate::Process::MIGRATIONS)), while the node serves its calls: each rewrite goes through
    /// the entity's mailbox like a message, `plan.batch` at a time, and the entities it
    /// activated are passivated again. Entities already up to date are skipped, so a pass
    /// interrupted by a crash is resumed by running it again. `progress` is updated as it
    /// goes.
    ///
    /// With [`Migrate::dry_run`], nothing is written: each outdated state is migrated and
    /// decoded in memory, and the report says how many would change and which fail.
    ///
    /// ```
    /// use perennial_core::{Ctx, Migrate, Migration, MigrationError, Process, Progress, Runtime};
    /// use perennial_storage::{MemoryStore, Record, Store};
    /// use serde_json::{Value, json};
    ///
    /// #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// struct Counter { count: i64 }
    ///
    /// /// Version 1 called it `value`.
    /// fn rename(v1: Value) -> Result<Value, MigrationError> {
    ///     Ok(json!({ "count": v1["value"] }))
    /// }
    ///
    /// impl Process for Counter {
    ///     const KIND: &'static str = "counter";
    ///     const MIGRATIONS: &'static [Migration] = &[rename];
    ///     type Msg = i64;
    ///     type Reply = i64;
    ///     type Error = std::convert::Infallible;
    ///     fn handle(&mut self, n: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
    ///         self.count += n;
    ///         Ok(self.count)
    ///     }
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let key = perennial_core::EntityKey::new("counter", "c1".parse()?);
    /// let old = Record { state: r#"{"value":41}"#.into(), version: 3, schema: 1 };
    /// store.put_record(key.clone(), old);
    /// let rt = Runtime::builder().store(store.clone()).register_snapshot::<Counter>().start().await?;
    /// let report = rt.admin().migrate("counter", Migrate::new(), &Progress::default()).await?;
    /// assert_eq!((report.changed, report.failed), (1, 0));
    /// let stored = store.load(&key).await?.unwrap();
    /// assert_eq!((stored.state.as_str(), stored.schema), (r#"{"count":41}"#, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate(
        &self,
        kind: &str,
        plan: Migrate,
        progress: &Progress,
    ) -> Result<MigrationReport, AdminError> {
        let dynamic = Arc::clone(self.rt.kind(kind)?);
        if dynamic.persistence() == Persistence::Ephemeral {
            return Err(AdminError::NotStored(kind.to_owned()));
        }
        let started = Instant::now();
        let schema = dynamic.schema();
        let snapshots = plan.snapshot && dynamic.watchable();
        let journaled = dynamic.persistence() == Persistence::Journal;
        let mut report = MigrationReport {
            kind: kind.to_owned(),
            schema,
            dry_run: plan.dry_run,
            examined: 0,
            changed: 0,
            unchanged: 0,
            not_served: 0,
            failed: 0,
            failures: Vec::new(),
            elapsed_ms: 0,
        };
        progress
            .total
            .store(self.count_stored(kind).await?, Ordering::Relaxed);
        let mut pages = Pages::new(self, kind, plan.batch);
        while let Some(page) = pages.next().await? {
            let mut work = tokio::task::JoinSet::new();
            for entity in page {
                report.examined += 1;
                progress.examined.fetch_add(1, Ordering::Relaxed);
                let has_state = entity.state_version > 0;
                let outdated = has_state && entity.schema < schema;
                let behind = snapshots && entity.last_step > entity.state_version;
                let action = if has_state && entity.schema > schema {
                    Action::Fail(CallError::StateTooNew {
                        key: EntityKey::new(kind, EntityId::new(&entity.id)?),
                        schema: entity.schema,
                        supported: schema,
                    })
                } else if outdated || (journaled && behind) {
                    Action::Rewrite
                } else {
                    Action::Skip
                };
                match action {
                    Action::Skip => report.unchanged += 1,
                    Action::Fail(error) => {
                        let error = Failure::of(&entity.id, &error);
                        count_failure(&mut report.failures, error, progress);
                        report.failed += 1;
                    }
                    Action::Rewrite => {
                        let id = EntityId::new(&entity.id)?;
                        let one = Arc::clone(&dynamic);
                        let rt = self.clone();
                        let dry_run = plan.dry_run;
                        work.spawn(async move {
                            if dry_run {
                                let checked = Arc::clone(&one).check(id.clone()).await;
                                checked
                                    .map(|_| true)
                                    .map_err(|e| Failure::of(id.as_str(), &e))
                            } else {
                                let rewritten = rt.rewrite_one(&one, &id, plan.snapshot).await;
                                rewritten.map_err(|e| Failure::of(id.as_str(), &e))
                            }
                        });
                    }
                }
            }
            while let Some(done) = work.join_next().await {
                let Ok(result) = done else {
                    continue;
                };
                match result {
                    Ok(true) => {
                        report.changed += 1;
                        progress.changed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => report.unchanged += 1,
                    Err(failure) if failure.code == "not_owner" => report.not_served += 1,
                    Err(failure) => {
                        count_failure(&mut report.failures, failure, progress);
                        report.failed += 1;
                    }
                }
            }
        }
        report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
    }

    /// Checks, without writing anything, that this build can activate every stored entity
    /// of `kind`: each state migrates and decodes, and each journal replays to the replies
    /// it gave live (the determinism guard). Run it with a new build against the data of
    /// the old one (stopped, or a copy) before deploying: it names the entities that would
    /// be quarantined.
    pub async fn verify_replay(
        &self,
        kind: &str,
        progress: &Progress,
    ) -> Result<ReplayReport, AdminError> {
        let dynamic = Arc::clone(self.rt.kind(kind)?);
        if dynamic.persistence() == Persistence::Ephemeral {
            return Err(AdminError::NotStored(kind.to_owned()));
        }
        let started = Instant::now();
        progress
            .total
            .store(self.count_stored(kind).await?, Ordering::Relaxed);
        let mut report = ReplayReport {
            kind: kind.to_owned(),
            checked: 0,
            failed: 0,
            failures: Vec::new(),
            elapsed_ms: 0,
        };
        let mut pages = Pages::new(self, kind, 64);
        while let Some(page) = pages.next().await? {
            let mut work = tokio::task::JoinSet::new();
            for entity in page {
                let id = EntityId::new(&entity.id)?;
                let one = Arc::clone(&dynamic);
                work.spawn(async move { (id.clone(), one.check(id).await) });
            }
            while let Some(done) = work.join_next().await {
                let Ok((id, result)) = done else {
                    continue;
                };
                report.checked += 1;
                progress.examined.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = result {
                    let failure = Failure::of(id.as_str(), &error);
                    count_failure(&mut report.failures, failure, progress);
                    report.failed += 1;
                }
            }
        }
        report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
    }

    /// Rewrites one entity through its mailbox; passivates it again if it was not resident.
    async fn rewrite_one(
        &self,
        dynamic: &Arc<dyn DynKind>,
        id: &EntityId,
        snapshot: bool,
    ) -> Result<bool, AdminError> {
        let key = crate::registry::Key {
            kind: dynamic.index(),
            id: id.clone(),
        };
        let registry = &self.rt.shared.engine.registry;
        let resident = registry.contains(&key);
        let result = Arc::clone(dynamic).rewrite(id.clone(), snapshot).await;
        if !resident {
            registry.passivate(&key);
        }
        result.map_err(AdminError::from)
    }

    /// How many entities `kind` has in storage.
    async fn count_stored(&self, kind: &str) -> Result<u64, AdminError> {
        let store = &self.rt.shared.engine.store;
        store.catalog().count(kind).await.map_err(AdminError::Store)
    }
}

/// A kind's stored entities, a page at a time, in id order.
struct Pages<'a> {
    store: &'a dyn perennial_storage::Store,
    kind: &'a str,
    limit: usize,
    /// The last id listed; `None` before the first page.
    after: Option<String>,
}

impl<'a> Pages<'a> {
    fn new(rt: &'a Admin, kind: &'a str, limit: usize) -> Self {
        let store = &*rt.rt.shared.engine.store;
        Self {
            store,
            kind,
            limit,
            after: None,
        }
    }

    /// The next page, or `None` after the last.
    async fn next(&mut self) -> Result<Option<Vec<EntitySummary>>, AdminError> {
        let page = self
            .store
            .catalog()
            .entities(self.kind, Page::after(self.after.as_deref(), self.limit))
            .await
            .map_err(AdminError::Store)?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after = Some(last.id.clone());
        Ok(Some(page))
    }
}

/// Counts a failure, and keeps the first few.
fn count_failure(failures: &mut Vec<Failure>, failure: Failure, progress: &Progress) {
    progress.failed.fetch_add(1, Ordering::Relaxed);
    if failures.len() < REPORTED_FAILURES {
        failures.push(failure);
    }
}

impl Failure {
    fn of<E: Clone + Into<AdminError>>(id: &str, error: &E) -> Self {
        let error: AdminError = error.clone().into();
        Self {
            id: id.to_owned(),
            code: error.code().to_owned(),
            error: error.to_string(),
        }
    }
}
