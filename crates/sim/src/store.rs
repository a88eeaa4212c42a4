//! The simulated database: one [`SimDb`] shared by every node, each of which sees it through
//! its own [`SimStore`] (a [`Store`] and a [`Directory`], as PostgreSQL is for a real
//! cluster). The data and the fencing are a [`MemoryStore`]'s, which passes the storage
//! conformance suite; leases and membership are judged by the simulation's clock.
//!
//! Faults, per node, set by the nemesis: a node cut off from the database (every request
//! fails); commits that fail before they apply; commits that apply and then fail
//! (ambiguous: the node cannot tell); and clock skew: the node's leases and heartbeat age at
//! once (the database's clock jumped ahead of the node's) while its lease manager's
//! requests stall for a while, so that the node goes on serving, by its own clock, shards
//! the others already took. Only fencing keeps its writes out then. And a stall: the node is
//! stopped (SIGSTOP) for a while; its requests wait until it resumes, and a commit it was
//! making fails (the server ends the transaction of a stopped client).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use perennial_storage::{
    Batch, Catalog, ChangePage, CommitOutcome, Directory, EntityState, EntitySummary, Error,
    Filter, JournalEntry, Lease, Member, MemoryStore, Page, Path, Pending, Record, Result, Store,
    StoredDeadLetter, StoredReply,
};
use perennial_types::{EntityKey, Epoch, ShardId};

/// What the faults did, counted by the database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DbCounts {
    /// Requests refused because their node was cut off.
    pub refused_while_cut: u64,
    /// Commits failed before they applied.
    pub failed: u64,
    /// Commits applied whose node was told they failed.
    pub ambiguous: u64,
    /// Commits that had writes refused by the fence (a stale epoch).
    pub fenced: u64,
    /// Leases taken from a node whose lease had expired (or was made to).
    pub takeovers: u64,
}

/// One node's faults.
#[derive(Debug, Default, Clone)]
struct Faults {
    cut: bool,
    /// Until when (simulated) the node's membership and lease requests fail.
    directory_stalled_until: Duration,
    /// Until when (simulated) the node is stopped: its requests wait, its commits fail.
    stopped_until: Duration,
    fail_next: u32,
    ambiguous_next: u32,
}

#[derive(Debug, Default)]
struct State {
    /// Each member's address and last heartbeat.
    members: BTreeMap<String, (String, Duration)>,
    /// Each leased shard's owner and expiry.
    leases: BTreeMap<ShardId, (String, Duration)>,
    /// The epoch each shard's lease was last taken under.
    epochs: BTreeMap<ShardId, Epoch>,
    faults: BTreeMap<String, Faults>,
    counts: DbCounts,
}

/// The database every simulated node shares.
#[derive(Debug)]
pub struct SimDb {
    data: MemoryStore,
    state: Mutex<State>,
    /// The database's clock: the simulation's elapsed time, set by the driver at each step
    /// (the same for every host, and for the nemesis between steps).
    now: Mutex<Duration>,
    /// When reads are not held to real time: a clock skew beyond the contract's margin lets
    /// a node serve, by its own clock, shards it no longer holds.
    unchecked_reads: Mutex<Vec<(Duration, Duration)>>,
}

impl SimDb {
    /// An empty database, its clock at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            data: MemoryStore::new(),
            state: Mutex::default(),
            now: Mutex::default(),
            unchecked_reads: Mutex::default(),
        })
    }

    /// Sets the database's clock.
    pub fn set_now(&self, now: Duration) {
        *self.now.lock() = now;
    }

    fn now(&self) -> Duration {
        *self.now.lock()
    }

    /// Node `node`'s view of the database.
    pub fn store(self: &Arc<Self>, node: &str) -> SimStore {
        SimStore {
            node: Arc::from(node),
            db: Arc::clone(self),
        }
    }

    /// Cuts `node` off from the database, or connects it again.
    pub fn cut(&self, node: &str, cut: bool) {
        self.state
            .lock()
            .faults
            .entry(node.to_owned())
            .or_default()
            .cut = cut;
    }

    /// Makes `node`'s next `n` commits fail before they apply.
    pub fn fail_next(&self, node: &str, n: u32) {
        self.state
            .lock()
            .faults
            .entry(node.to_owned())
            .or_default()
            .fail_next += n;
    }

    /// Makes `node`'s next `n` commits apply, then fail.
    pub fn ambiguous_next(&self, node: &str, n: u32) {
        let mut state = self.state.lock();
        state
            .faults
            .entry(node.to_owned())
            .or_default()
            .ambiguous_next += n;
    }

    /// Skews `node`'s clock behind the database's: its leases expire and its heartbeat ages
    /// now, and its membership and lease requests fail for `stall`, so that the others take
    /// its shards while it still serves them until its own deadline.
    pub fn skew(&self, node: &str, stall: Duration) {
        let now = self.now();
        let mut state = self.state.lock();
        for (owner, expires) in state.leases.values_mut() {
            if owner == node {
                *expires = now;
            }
        }
        if let Some((_, seen)) = state.members.get_mut(node) {
            *seen = Duration::ZERO;
        }
        state
            .faults
            .entry(node.to_owned())
            .or_default()
            .directory_stalled_until = now + stall;
    }

    /// Stops `node` until `until` (simulated), as SIGSTOP does: its requests wait until then,
    /// and its commits fail, so that its leases lapse and the others take its shards while
    /// it holds its entities in memory.
    pub fn stop(&self, node: &str, until: Duration) {
        self.state
            .lock()
            .faults
            .entry(node.to_owned())
            .or_default()
            .stopped_until = until;
    }

    /// Reads that overlap `from..until` (simulated) are not held to real time (see
    /// [`reads_checked`](Self::reads_checked)).
    pub fn uncheck_reads(&self, from: Duration, until: Duration) {
        self.unchecked_reads.lock().push((from, until));
    }

    /// Whether a read made between `from` and `to` may be held to real time: no clock skew
    /// beyond the contract's margin was in effect meanwhile.
    pub fn reads_checked(&self, from: Duration, to: Duration) -> bool {
        let windows = self.unchecked_reads.lock();
        !windows
            .iter()
            .any(|&(start, end)| start <= to && end >= from)
    }

    /// Whether a node is stopped now.
    pub fn any_stopped(&self) -> bool {
        let now = self.now();
        let state = self.state.lock();
        state.faults.values().any(|f| f.stopped_until > now)
    }

    /// Clears every fault.
    pub fn heal(&self) {
        self.state.lock().faults.clear();
    }

    /// A probe's list as storage holds it, read without any node: for `probe`, its state;
    /// for `jprobe`, its snapshot and the appends its journal holds after it. `None` if it
    /// holds bytes a probe never writes.
    pub fn stored_list(&self, kind: &str, id: &str) -> Option<Vec<String>> {
        let key = EntityKey::new(kind, perennial_types::EntityId::new(id).ok()?);
        let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
        let record = rt.block_on(self.data.load(&key)).ok()?;
        let (mut list, after) = match record {
            Some(record) => {
                let state: serde_json::Value = serde_json::from_str(&record.state).ok()?;
                let tokens = serde_json::from_value(state.get("tokens")?.clone()).ok()?;
                (tokens, if kind == "jprobe" { record.version } else { 0 })
            }
            None => (Vec::new(), 0),
        };
        if kind == "jprobe" {
            let entries = rt
                .block_on(self.data.journal(&key, after, usize::MAX))
                .ok()?;
            for entry in entries {
                let entry: serde_json::Value = serde_json::from_str(&entry.entry).ok()?;
                let msg = entry.get("msg")?;
                if let Some(token) = msg.get("append").and_then(|t| t.as_str()) {
                    list.push(token.to_owned());
                } else if let Some(token) = msg.pointer("/forward/token").and_then(|t| t.as_str()) {
                    list.push(token.to_owned());
                }
            }
        }
        Some(list)
    }

    /// What the faults did.
    pub fn counts(&self) -> DbCounts {
        self.state.lock().counts.clone()
    }
}

/// One node's connection to the [`SimDb`].
#[derive(Debug, Clone)]
pub struct SimStore {
    node: Arc<str>,
    db: Arc<SimDb>,
}

impl SimStore {
    /// Until when the node is stopped, if it is now.
    fn stopped(&self) -> Option<Duration> {
        let now = self.db.now();
        let state = self.db.state.lock();
        let until = state.faults.get(&*self.node)?.stopped_until;
        (until > now).then_some(until)
    }

    /// Waits while the node is stopped, then fails if it is cut off from the database.
    async fn arrive(&self) -> Result<()> {
        while let Some(until) = self.stopped() {
            tokio::time::sleep(until.saturating_sub(self.db.now())).await;
        }
        self.reach()
    }

    /// Fails if the node is cut off from the database.
    fn reach(&self) -> Result<()> {
        let mut state = self.db.state.lock();
        let cut = state.faults.get(&*self.node).is_some_and(|f| f.cut);
        if cut {
            state.counts.refused_while_cut += 1;
            return Err(Error::Io(format!(
                "{} cannot reach the database (simulated partition)",
                self.node
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for SimStore {
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch> {
        self.arrive().await?;
        self.db.data.claim(owner, shards).await
    }

    async fn load(&self, key: &EntityKey) -> Result<Option<Record>> {
        self.arrive().await?;
        self.db.data.load(key).await
    }

    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>> {
        self.arrive().await?;
        self.db.data.journal(key, after, max).await
    }

    fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        self.reach()?;
        if self.stopped().is_some() {
            self.db.state.lock().counts.failed += 1;
            return Err(Error::Io(
                "the server ended the transaction of a stopped node (simulated)".into(),
            ));
        }
        {
            let mut state = self.db.state.lock();
            let faults = state.faults.entry(self.node.to_string()).or_default();
            if faults.fail_next > 0 {
                faults.fail_next -= 1;
                state.counts.failed += 1;
                return Err(Error::Io("the commit failed (simulated)".into()));
            }
        }
        let outcome = self.db.data.commit(batch)?;
        let mut state = self.db.state.lock();
        if !outcome.fenced.is_empty() {
            state.counts.fenced += 1;
        }
        let faults = state.faults.entry(self.node.to_string()).or_default();
        if faults.ambiguous_next > 0 {
            faults.ambiguous_next -= 1;
            state.counts.ambiguous += 1;
            return Err(Error::Io(
                "the connection broke after the commit was sent (simulated)".into(),
            ));
        }
        Ok(outcome)
    }

    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<Pending>> {
        self.arrive().await?;
        self.db.data.due(before_ms, limit).await
    }

    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>> {
        self.arrive().await?;
        self.db.data.reply(key, idempotency_key).await
    }

    async fn paused(&self) -> Result<Vec<EntityKey>> {
        self.arrive().await?;
        self.db.data.paused().await
    }

    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>> {
        self.arrive().await?;
        self.db.data.last_row(key).await
    }

    fn catalog(&self) -> &dyn Catalog {
        self
    }
}

#[async_trait::async_trait]
impl Catalog for SimStore {
    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>> {
        self.arrive().await?;
        self.db.data.dead_letters(kind).await
    }

    async fn entities(&self, kind: &str, page: Page<'_>) -> Result<Vec<EntitySummary>> {
        self.arrive().await?;
        self.db.data.entities(kind, page).await
    }

    async fn pending_of(&self, owner: &EntityKey, limit: usize) -> Result<Vec<Pending>> {
        self.arrive().await?;
        self.db.data.pending_of(owner, limit).await
    }

    async fn count(&self, kind: &str) -> Result<u64> {
        self.arrive().await?;
        self.db.data.count(kind).await
    }

    async fn query(&self, kind: &str, filter: &Filter, page: Page<'_>) -> Result<Vec<EntityState>> {
        self.arrive().await?;
        self.db.data.query(kind, filter, page).await
    }

    async fn create_index(&self, kind: &str, path: &Path) -> Result<()> {
        self.arrive().await?;
        self.db.data.create_index(kind, path).await
    }

    async fn drop_index(&self, kind: &str, path: &Path) -> Result<bool> {
        self.arrive().await?;
        self.db.data.drop_index(kind, path).await
    }

    async fn indexes(&self, kind: &str) -> Result<Vec<Path>> {
        self.arrive().await?;
        self.db.data.indexes(kind).await
    }

    async fn changes(&self, kind: &str, after: u64, limit: usize) -> Result<ChangePage> {
        self.arrive().await?;
        self.db.data.changes(kind, after, limit).await
    }
}

impl SimStore {
    /// Waits while the node is stopped, then fails if its membership and lease requests
    /// cannot reach the database.
    async fn reach_directory(&self) -> Result<()> {
        self.arrive().await?;
        let now = self.db.now();
        let state = self.db.state.lock();
        let stalled = state
            .faults
            .get(&*self.node)
            .is_some_and(|f| f.directory_stalled_until > now);
        if stalled {
            return Err(Error::Io(format!(
                "{}'s lease request timed out (simulated)",
                self.node
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Directory for SimStore {
    /// The simulation keeps no builds: every member's is empty.
    async fn heartbeat(&self, node: &str, address: &str, _build: &str) -> Result<()> {
        self.reach_directory().await?;
        let now = self.db.now();
        let mut state = self.db.state.lock();
        state
            .members
            .insert(node.to_owned(), (address.to_owned(), now));
        Ok(())
    }

    async fn members(&self, ttl: Duration) -> Result<Vec<Member>> {
        self.reach_directory().await?;
        let now = self.db.now();
        let state = self.db.state.lock();
        Ok(state
            .members
            .iter()
            .filter(|(_, (_, seen))| now.saturating_sub(*seen) <= ttl)
            .map(|(node, (address, seen))| {
                let age = i64::try_from(now.saturating_sub(*seen).as_millis()).unwrap_or(0);
                Member::new(node.clone(), address.clone(), age)
            })
            .collect())
    }

    async fn leave(&self, node: &str) -> Result<()> {
        self.reach_directory().await?;
        let mut state = self.db.state.lock();
        state.members.remove(node);
        state.leases.retain(|_, (owner, _)| owner != node);
        Ok(())
    }

    async fn acquire(&self, node: &str, shards: &[ShardId], lease: Duration) -> Result<Vec<Lease>> {
        self.reach_directory().await?;
        let now = self.db.now();
        let (renewed, taken) = {
            let mut state = self.db.state.lock();
            let mut renewed = Vec::new();
            let mut taken = Vec::new();
            for &shard in shards {
                match state.leases.get(&shard) {
                    Some((owner, expires)) if owner == node && *expires > now => {
                        renewed.push(shard);
                    }
                    Some((_, expires)) if *expires > now => {}
                    held => {
                        if held.is_some_and(|(owner, _)| owner != node) {
                            state.counts.takeovers += 1;
                        }
                        taken.push(shard);
                    }
                }
            }
            (renewed, taken)
        };
        // A new epoch fences every write of the previous owner from now on. (The memory
        // store answers at once: nothing runs between the decision and the claim.)
        let epoch = if taken.is_empty() {
            None
        } else {
            Some(self.db.data.claim(node, &taken).await?)
        };
        let mut state = self.db.state.lock();
        let mut leases = Vec::with_capacity(renewed.len() + taken.len());
        for shard in renewed {
            state.leases.insert(shard, (node.to_owned(), now + lease));
            let epoch = state.epochs.get(&shard).copied().unwrap_or(Epoch(0));
            leases.push(Lease::new(shard, epoch, false));
        }
        if let Some(epoch) = epoch {
            for shard in taken {
                state.leases.insert(shard, (node.to_owned(), now + lease));
                state.epochs.insert(shard, epoch);
                leases.push(Lease::new(shard, epoch, true));
            }
        }
        leases.sort_by_key(|l| l.shard);
        Ok(leases)
    }

    async fn owners(&self) -> Result<Vec<(ShardId, String)>> {
        self.reach_directory().await?;
        let now = self.db.now();
        let state = self.db.state.lock();
        Ok(state
            .leases
            .iter()
            .filter(|(_, (_, expires))| *expires > now)
            .map(|(shard, (owner, _))| (*shard, owner.clone()))
            .collect())
    }

    async fn release(&self, node: &str, shards: &[ShardId]) -> Result<()> {
        self.reach_directory().await?;
        let mut state = self.db.state.lock();
        for shard in shards {
            if state
                .leases
                .get(shard)
                .is_some_and(|(owner, _)| owner == node)
            {
                state.leases.remove(shard);
            }
        }
        Ok(())
    }
}
