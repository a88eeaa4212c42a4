//! [`Plumbing`]: the lower-level handle on a runtime that a cluster builds on (like git's
//! plumbing under its porcelain): which shards the node serves and under which epochs,
//! handing shards off, and carrying message rows between nodes. Applications never need it:
//! a runtime started with [`Builder::start`](crate::Builder::start) serves every shard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use perennial_types::{Epoch, ShardId};

use crate::Runtime;

/// The cluster's handle on a [`Runtime`]: which shards it serves and under which epochs,
/// handing shards off, and carrying message rows between nodes. Like git's plumbing under
/// its porcelain: the lease manager (`perennial-cluster`) and the gateway in a cluster build
/// on it; applications never need it, since a runtime started with
/// [`Builder::start`](crate::Builder::start) serves every shard.
#[derive(Debug, Clone)]
pub struct Plumbing {
    rt: Runtime,
}

impl Plumbing {
    /// The plumbing of `rt`.
    pub fn of(rt: &Runtime) -> Self {
        Self { rt: rt.clone() }
    }

    /// The epoch this node serves `shard` under now; `None` if it does not serve it.
    pub fn epoch_of(&self, shard: ShardId) -> Option<Epoch> {
        self.rt.shared.engine.shards.epoch(shard)
    }

    /// The shards this node serves now, with their epochs, in shard order.
    pub fn served_shards(&self) -> Vec<(ShardId, Epoch)> {
        self.rt.shared.engine.shards.served()
    }

    /// Serves `grants` (shards and the epochs their leases gave) from now on, and every
    /// served shard until `until`, a time on this process's monotonic clock (as tokio's
    /// clock tells it: `tokio::time::Instant::now().into_std()`, which a simulation
    /// advances) that the caller sets short of the leases' expiry. Called by a cluster's lease manager each time it
    /// acquires or renews leases; a runtime started with [`Builder::start`](crate::Builder::start) serves every
    /// shard already.
    pub fn serve(&self, grants: &[(ShardId, Epoch)], until: Instant) {
        let engine = &self.rt.shared.engine;
        // A shard served under another epoch before may have been written by another node
        // since. Its rows held in memory are forgotten (the scan that follows the grant reads
        // what is stored), its watches end (a watcher reconnects and reads the state again),
        // and its resident entities load their state again before their next step (see
        // `entity::Serving`).
        let changed = engine.shards.changed(grants);
        if !changed.is_empty() {
            let changed = changed.into_iter().collect();
            engine.due.forget_shards(&changed);
            engine.watchers.close_shards(&changed);
        }
        engine
            .shards
            .grant(grants, tokio::time::Instant::from_std(until));
    }

    /// Reads the paused entities from storage again. A cluster's lease manager calls it when
    /// the node takes shards, since another node may have paused or resumed their entities.
    pub async fn reload_pauses(&self) -> Result<(), perennial_storage::Error> {
        let engine = &self.rt.shared.engine;
        let stored = engine.store.paused().await?;
        engine.pauses.replace(stored);
        Ok(())
    }

    /// Sets the courier that carries messages between entities to the nodes that serve
    /// their targets, when this node does not (a cluster sets it once, at start). Returns
    /// `false` if one was set already.
    pub fn set_courier(&self, courier: Arc<dyn crate::Courier>) -> bool {
        self.rt.shared.engine.courier.set(courier).is_ok()
    }

    /// Applies a message row another node carried here ([`Courier`](crate::Courier)): once,
    /// however often the same row is carried, and deleting the row in the same transaction
    /// (an ask's row stays: its reply is kept under the row's key and answered, see
    /// [`Delivery::Answered`](crate::Delivery::Answered)).
    /// [`Delivery::NotServed`](crate::Delivery::NotServed) if this node does not serve the
    /// target's shard.
    pub async fn deliver(&self, parcel: crate::Parcel) -> crate::Delivery {
        let Some(kind) = self.rt.shared.by_name.get(&*parcel.target.kind) else {
            let detail = format!("kind {:?} is not registered", parcel.target.kind);
            return crate::Delivery::Poison(detail);
        };
        let row = crate::due::RowId::new(parcel.owner, parcel.seq);
        let applying = if parcel.ask {
            crate::courier::Applying::Ask { fresh: false }
        } else {
            crate::courier::Applying::KeyedRow
        };
        Arc::clone(kind)
            .deliver(parcel.target.id, parcel.body, row, applying)
            .await
    }

    /// Hands `shards` off: stops taking calls for them ([`CallError::NotOwner`](crate::CallError::NotOwner), also for
    /// messages queued and not yet run), passivates their resident entities once their
    /// steps in flight are durable, and drops their pending rows from memory. Returns how
    /// many entities were still busy after `patience`; their later writes are fenced once
    /// the caller releases the leases.
    pub async fn hand_off(&self, shards: &[ShardId], patience: Duration) -> usize {
        let engine = &self.rt.shared.engine;
        engine.shards.revoke(shards);
        let set: std::collections::HashSet<ShardId> = shards.iter().copied().collect();
        engine.due.forget_shards(&set);
        // The node that takes them finds their damaged bytes again, if they still are.
        engine.quarantine.forget_shards(&set);
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let (_, busy) = engine
                .registry
                .passivate_where(|entry| set.contains(&entry.shard()));
            if busy == 0 || tokio::time::Instant::now() >= give_up {
                engine.watchers.close_shards(&set);
                if busy > 0 {
                    tracing::warn!(busy, "handing shards off with entities still busy");
                }
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
