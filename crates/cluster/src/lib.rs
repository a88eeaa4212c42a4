//! Perennial's cluster membership: which node serves which shard, with the shared database
//! (a [`Directory`]: PostgreSQL, or a simulated one in tests) as the ground truth. No consensus of our own: the database's row locks and clock decide.
//!
//! A [`Cluster`] runs one task per node that, every [`Options::tick`]:
//! 1. writes the node's heartbeat and reads the live members (those whose heartbeat is
//!    younger than the lease);
//! 2. computes the shards this node should own by rendezvous hashing over the live members
//!    ([`placement::owner`]); every node computes the same answer;
//! 3. hands off the shards it holds but should not (a node joined): the runtime stops taking
//!    their calls, passivates their entities once their steps are durable, and the lease is
//!    released so the new owner takes it at once;
//! 4. acquires the leases of the shards it should own (renewing its own, taking free or
//!    expired ones with a new epoch) and tells the runtime to serve them until a time on the
//!    monotonic clock short of the lease's expiry ([`Options::margin`]): a node whose
//!    renewals stall stops serving before another node can take its shards;
//! 5. reads who holds every lease, for [`Cluster::route`].
//!
//! Writes are fenced by the database in any case (see `perennial-storage-postgres`): a
//! node that lost a shard cannot overwrite what the new owner wrote.
//!
//! **Architecture Invariant:** this crate decides ownership and knows where nodes are; it
//! does not carry calls between nodes (the gateway does, over its internal route).

pub mod placement;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use perennial_core::{Plumbing, Runtime};
use perennial_storage::{Directory, Error};
use perennial_types::{SHARDS, ShardId};
use tokio::sync::Notify;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The node's name, unique in the cluster and stable across restarts.
    pub node: String,
    /// Where other nodes reach this node's gateway (`host:port`).
    pub advertise: String,
    /// How long a lease lasts without renewal, and how old a heartbeat may be for its node
    /// to count as live. A node that dies holds its shards this long. Default: 5 s.
    pub lease: Duration,
    /// How often leases are renewed and the routing table refreshed. Default: a fifth of the
    /// lease, at most 1 s.
    pub tick: Duration,
    /// How long before its lease's expiry (by this node's clock, counted from before it asked)
    /// the node stops serving a shard it could not renew. Default: a fifth of the lease.
    pub margin: Duration,
    /// The build this node runs, as its heartbeats tell the others (and operators). Default:
    /// empty.
    pub build: String,
}

impl Options {
    /// A node named `node`, reached at `advertise`, with the default timings.
    pub fn new(node: impl Into<String>, advertise: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            advertise: advertise.into(),
            lease: Duration::from_secs(5),
            tick: Duration::from_secs(1),
            margin: Duration::from_secs(1),
            build: String::new(),
        }
        .lease(Duration::from_secs(5))
    }

    /// Sets the lease and derives the tick and the margin from it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self.tick = (self.lease / 5).min(Duration::from_secs(1));
        self.margin = self.lease / 5;
        self
    }

    /// The build this node runs, shown to the other nodes and to operators.
    #[must_use]
    pub fn build(mut self, build: impl Into<String>) -> Self {
        self.build = build.into();
        self
    }
}

/// Where a call for a shard should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node serves the shard.
    Local,
    /// Another node holds the shard's lease.
    Remote {
        /// Its name.
        node: Arc<str>,
        /// Its gateway's address.
        address: Arc<str>,
    },
    /// No node serves it now (its owner died and its lease has not expired yet, or it is
    /// being handed off): retry after a refresh.
    Unknown,
}

/// A live member, as the last refresh saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// Its name.
    pub node: String,
    /// Its gateway's address.
    pub address: String,
    /// How many shards it holds.
    pub shards: usize,
    /// The build it runs; empty if it did not say (an older build).
    pub build: String,
}

/// This node's membership of the cluster. See the [crate documentation](crate).
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Membership and leases: the database the nodes share.
    store: Arc<dyn Directory>,
    /// The runtime's shards: served, handed off.
    runtime: Plumbing,
    options: Options,
    /// The shards whose leases this node holds.
    held: Mutex<BTreeSet<ShardId>>,
    table: RwLock<Table>,
    /// Asks the task for a tick now.
    wake: Notify,
    stop: Notify,
    /// Refreshes completed, so that a caller can wait for a newer table.
    refreshes: AtomicU64,
    refreshed: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Who holds each shard's lease, and where the holders are.
#[derive(Debug, Default)]
struct Table {
    owners: HashMap<ShardId, Arc<str>>,
    addresses: HashMap<Arc<str>, Arc<str>>,
    builds: HashMap<Arc<str>, Arc<str>>,
}

impl Cluster {
    /// Joins the cluster: registers the node, acquires its first leases (the shards no live
    /// node holds that placement gives it) and starts renewing them. `runtime` must have been
    /// started with [`Builder::start_unclaimed`](perennial_core::Builder::start_unclaimed)
    /// on the same store.
    pub async fn join(
        store: Arc<dyn Directory>,
        runtime: Runtime,
        options: Options,
    ) -> Result<Self, Error> {
        let inner = Arc::new(Inner {
            store,
            runtime: Plumbing::of(&runtime),
            options,
            held: Mutex::default(),
            table: RwLock::default(),
            wake: Notify::new(),
            stop: Notify::new(),
            refreshes: AtomicU64::new(0),
            refreshed: Notify::new(),
            task: Mutex::new(None),
        });
        inner.tick().await?;
        let task = tokio::spawn(run(Arc::clone(&inner)));
        *inner.task.lock() = Some(task);
        tracing::info!(node = %inner.options.node, shards = inner.held.lock().len(),
            "joined the cluster");
        Ok(Self { inner })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.options.node
    }

    /// Where a call for `shard` should go now.
    pub fn route(&self, shard: ShardId) -> Route {
        if self.inner.runtime.epoch_of(shard).is_some() {
            return Route::Local;
        }
        let table = self.inner.table.read();
        match table.owners.get(&shard) {
            Some(node) if **node != *self.inner.options.node => match table.addresses.get(node) {
                Some(address) => Route::Remote {
                    node: Arc::clone(node),
                    address: Arc::clone(address),
                },
                None => Route::Unknown,
            },
            _ => Route::Unknown,
        }
    }

    /// Asks for a refresh of the routing table now (a node answered that it does not serve
    /// a shard) and waits until one completed, or `patience` passed.
    pub async fn refresh(&self, patience: Duration) {
        let seen = self.inner.refreshes.load(Ordering::SeqCst);
        let refreshed = self.inner.refreshed.notified();
        tokio::pin!(refreshed);
        refreshed.as_mut().enable();
        self.inner.wake.notify_one();
        if self.inner.refreshes.load(Ordering::SeqCst) != seen {
            return;
        }
        let _ = tokio::time::timeout(patience, refreshed).await;
    }

    /// The live members and how many shards each holds, by name.
    pub fn members(&self) -> Vec<Member> {
        let table = self.inner.table.read();
        let mut members: Vec<Member> = table
            .addresses
            .iter()
            .map(|(node, address)| Member {
                node: node.to_string(),
                address: address.to_string(),
                shards: table.owners.values().filter(|o| *o == node).count(),
                build: table
                    .builds
                    .get(node)
                    .map_or_else(String::new, |b| b.to_string()),
            })
            .collect();
        members.sort_by(|a, b| a.node.cmp(&b.node));
        members
    }

    /// Leaves the cluster gracefully: hands every shard off (passivating its entities once
    /// their steps are durable), releases the leases and the membership, so the other nodes
    /// take the shards at their next tick instead of after the lease expires.
    pub async fn leave(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.stop.notify_one();
        let task = inner.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let held: Vec<ShardId> = std::mem::take(&mut *inner.held.lock())
            .into_iter()
            .collect();
        let busy = inner.runtime.hand_off(&held, inner.options.lease).await;
        inner.store.leave(&inner.options.node).await?;
        tracing::info!(node = %inner.options.node, shards = held.len(), busy, "left the cluster");
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

/// The membership task: a tick every [`Options::tick`], or at once when asked.
async fn run(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            // In order, not at random: a simulation must take the same branch every run.
            biased;
            () = inner.stop.notified() => return,
            () = tokio::time::sleep(inner.options.tick) => {}
            () = inner.wake.notified() => {}
        }
        if let Err(error) = inner.tick().await {
            tracing::warn!(node = %inner.options.node, %error,
                "cannot renew leases or read the cluster; retrying (the node stops serving \
                 its shards if this lasts)");
        }
    }
}

impl Inner {
    async fn tick(&self) -> Result<(), Error> {
        let node = self.options.node.as_str();
        // Counted from before the database sets the expiry, so this node's end comes first.
        // On tokio's clock, which the runtime's deadlines use (and a simulation advances).
        let asked = tokio::time::Instant::now();
        self.store
            .heartbeat(node, &self.options.advertise, &self.options.build)
            .await?;
        let members = self.store.members(self.options.lease).await?;
        let mut names: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
        if !names.contains(&node) {
            names.push(node);
        }
        let wanted: BTreeSet<ShardId> = (0..SHARDS)
            .map(ShardId)
            .filter(|&s| placement::owner(s, names.iter().copied()) == Some(node))
            .collect();

        let leaving: Vec<ShardId> = self.held.lock().difference(&wanted).copied().collect();
        if !leaving.is_empty() {
            let busy = self
                .runtime
                .hand_off(&leaving, self.options.lease / 4)
                .await;
            self.store.release(node, &leaving).await?;
            self.held.lock().retain(|s| !leaving.contains(s));
            tracing::info!(node, shards = leaving.len(), busy, "handed shards off");
        }

        let wanted: Vec<ShardId> = wanted.into_iter().collect();
        let leases = self
            .store
            .acquire(node, &wanted, self.options.lease)
            .await?;
        perennial_faults::failpoint!("cluster.renewed");
        let until = asked + self.options.lease.saturating_sub(self.options.margin);
        let grants: Vec<_> = leases.iter().map(|l| (l.shard, l.epoch)).collect();
        let now_held: BTreeSet<ShardId> = leases.iter().map(|l| l.shard).collect();
        let lost: Vec<ShardId> = self.held.lock().difference(&now_held).copied().collect();
        if !lost.is_empty() {
            tracing::warn!(node, shards = lost.len(), "leases were lost to other nodes");
            self.runtime.hand_off(&lost, Duration::ZERO).await;
        }
        let taken = leases.iter().filter(|l| l.taken).count();
        if taken > 0 {
            tracing::info!(node, taken, held = now_held.len(), "took shards");
            // Another node may have paused or resumed their entities: read the pauses
            // before serving them.
            if let Err(error) = self.runtime.reload_pauses().await {
                tracing::warn!(node, %error, "cannot read the paused entities");
            }
        }
        self.runtime.serve(&grants, until.into_std());

        *self.held.lock() = now_held;

        let owners = self.store.owners().await?;
        let mut table = Table::default();
        for member in &members {
            let name: Arc<str> = Arc::from(member.node.as_str());
            table
                .builds
                .insert(Arc::clone(&name), Arc::from(member.build.as_str()));
            table
                .addresses
                .insert(name, Arc::from(member.address.as_str()));
        }
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        for (shard, owner) in owners {
            let name = names
                .entry(owner)
                .or_insert_with_key(|owner| Arc::from(owner.as_str()));
            table.owners.insert(shard, Arc::clone(name));
        }
        *self.table.write() = table;
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        self.refreshed.notify_waiters();
        Ok(())
    }
}
