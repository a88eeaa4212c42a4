//! Which shards this node serves, under which epochs, and until when.
//!
//! A single node claims every shard once at start and serves them forever. In a cluster, a
//! lease manager outside core grants shards as it acquires their leases, extends the time
//! they are served as it renews them, and takes them back for a handoff. The time is on this
//! process's monotonic clock, and the manager sets it short of the lease's expiry in the
//! database, so a node whose renewals stall (a slow database, SIGSTOP) stops serving before
//! another node can take its shards. Writes are fenced by the database anyway; stopping
//! early keeps a stale node from answering reads and from computing steps that would be
//! refused.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

use perennial_types::{Epoch, SHARDS, ShardId};
use tokio::sync::Notify;

/// Epoch `0` marks a shard not served.
const NOT_SERVED: u64 = 0;

/// The shards this node serves.
pub(crate) struct Shards {
    epochs: Box<[AtomicU64]>,
    /// Until when any shard is served, in nanoseconds after `origin`; `u64::MAX`: forever.
    until_ns: AtomicU64,
    origin: Instant,
    /// Notified when shards are granted, so the dispatcher looks for their pending rows.
    pub(crate) granted: Notify,
    /// Whether shards come and go (a cluster): another node may then deliver a row this one
    /// delivers too.
    pub(crate) shared: bool,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("served", &self.served().len())
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// Every shard served under `epoch`, forever (a single node).
    pub(crate) fn all(epoch: Epoch) -> Self {
        let mut shards = Self::none();
        shards.shared = false;
        for slot in shards.epochs.iter() {
            slot.store(epoch.0, Ordering::SeqCst);
        }
        shards.until_ns.store(u64::MAX, Ordering::SeqCst);
        shards
    }

    /// No shard served until some are granted.
    pub(crate) fn none() -> Self {
        Self {
            epochs: (0..SHARDS).map(|_| AtomicU64::new(NOT_SERVED)).collect(),
            until_ns: AtomicU64::new(0),
            origin: Instant::now(),
            granted: Notify::new(),
            shared: true,
        }
    }

    /// The epoch this node serves `shard` under now, if it does.
    pub(crate) fn epoch(&self, shard: ShardId) -> Option<Epoch> {
        let epoch = self.epochs.get(shard.0 as usize)?.load(Ordering::SeqCst);
        (epoch != NOT_SERVED && self.in_time()).then_some(Epoch(epoch))
    }

    fn in_time(&self) -> bool {
        let until = self.until_ns.load(Ordering::SeqCst);
        until == u64::MAX || self.nanos(Instant::now()) < until
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// The shards among `grants` this node does not serve now under the granted epoch: new
    /// to it, or taken again after another node may have written to them.
    pub(crate) fn changed(&self, grants: &[(ShardId, Epoch)]) -> Vec<ShardId> {
        grants
            .iter()
            .filter(|(shard, epoch)| {
                self.epochs
                    .get(shard.0 as usize)
                    .is_some_and(|slot| slot.load(Ordering::SeqCst) != epoch.0)
            })
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// Serves `grants` from now on, and every served shard until `until`.
    pub(crate) fn grant(&self, grants: &[(ShardId, Epoch)], until: Instant) {
        let mut new = false;
        for &(shard, epoch) in grants {
            if let Some(slot) = self.epochs.get(shard.0 as usize) {
                new |= slot.swap(epoch.0, Ordering::SeqCst) != epoch.0;
            }
        }
        self.until_ns.store(self.nanos(until), Ordering::SeqCst);
        if new {
            self.granted.notify_one();
        }
    }

    /// Stops serving `shards`.
    pub(crate) fn revoke(&self, shards: &[ShardId]) {
        for shard in shards {
            if let Some(slot) = self.epochs.get(shard.0 as usize) {
                slot.store(NOT_SERVED, Ordering::SeqCst);
            }
        }
    }

    /// The shards served now, with their epochs, in shard order.
    pub(crate) fn served(&self) -> Vec<(ShardId, Epoch)> {
        if !self.in_time() {
            return Vec::new();
        }
        (0..SHARDS)
            .filter_map(|n| self.epoch(ShardId(n)).map(|epoch| (ShardId(n), epoch)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_single_node_serves_every_shard_forever() {
        let shards = Shards::all(Epoch(3));
        assert_eq!(shards.epoch(ShardId(0)), Some(Epoch(3)));
        assert_eq!(shards.epoch(ShardId(SHARDS - 1)), Some(Epoch(3)));
        assert_eq!(shards.epoch(ShardId(SHARDS)), None);
        assert_eq!(shards.served().len(), SHARDS as usize);
    }

    #[test]
    fn granted_shards_are_served_until_their_time_then_not() {
        let shards = Shards::none();
        assert_eq!(shards.epoch(ShardId(5)), None);
        let until = Instant::now() + Duration::from_millis(200);
        shards.grant(&[(ShardId(5), Epoch(2))], until);
        assert_eq!(shards.epoch(ShardId(5)), Some(Epoch(2)));
        assert_eq!(shards.epoch(ShardId(6)), None);
        assert_eq!(shards.served(), vec![(ShardId(5), Epoch(2))]);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(shards.epoch(ShardId(5)), None, "the time ran out");
        assert!(shards.served().is_empty());
        // A renewal serves it again.
        shards.grant(&[], Instant::now() + Duration::from_secs(5));
        assert_eq!(shards.epoch(ShardId(5)), Some(Epoch(2)));
        shards.revoke(&[ShardId(5)]);
        assert_eq!(shards.epoch(ShardId(5)), None);
    }
}
