//! The [`Directory`] trait: a cluster's ground truth about its members and who leases which
//! shard, kept by the store the nodes share (PostgreSQL; a simulated one in tests).
//!
//! Every time is the directory's own clock, never a node's, so nodes with skewed clocks
//! agree on who holds what. Taking a shard gives it a new epoch, and from then on the store
//! refuses writes naming an older one (fencing): a node that lost a shard cannot overwrite
//! its new owner, whatever its clock says.

use std::fmt::Debug;
use std::time::Duration;

use perennial_types::{Epoch, ShardId};

use crate::Error;

/// A live member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// The node's name.
    pub node: String,
    /// Where other nodes reach it.
    pub address: String,
    /// How long ago its last heartbeat was, by the directory's clock, in milliseconds.
    pub heartbeat_age_ms: i64,
    /// The build it runs (such as `0.1.0+d342571`), as its last heartbeat said; empty if it
    /// did not say (a build older than this field).
    pub build: String,
}

impl Member {
    /// Node `node`, reached at `address`, last heard of `heartbeat_age_ms` ago.
    pub fn new(node: String, address: String, heartbeat_age_ms: i64) -> Self {
        Self {
            node,
            address,
            heartbeat_age_ms,
            build: String::new(),
        }
    }

    /// The same member, running `build`.
    #[must_use]
    pub fn with_build(mut self, build: String) -> Self {
        self.build = build;
        self
    }
}

/// A shard lease the caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The shard.
    pub shard: ShardId,
    /// The epoch its writes must name.
    pub epoch: Epoch,
    /// Whether this call took it (a new epoch) rather than renewed it.
    pub taken: bool,
}

impl Lease {
    /// A lease of `shard` under `epoch`; `taken` if the call took it rather than renewed it.
    pub fn new(shard: ShardId, epoch: Epoch, taken: bool) -> Self {
        Self {
            shard,
            epoch,
            taken,
        }
    }
}

/// Membership and shard leases, as a cluster's lease manager uses them.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + Debug + 'static {
    /// Records that `node`, reachable at `address` and running `build`, is alive now.
    async fn heartbeat(&self, node: &str, address: &str, build: &str) -> Result<(), Error>;

    /// The members whose last heartbeat is younger than `ttl`, in name order.
    async fn members(&self, ttl: Duration) -> Result<Vec<Member>, Error>;

    /// Removes `node` from the members (it leaves gracefully) and releases its leases.
    async fn leave(&self, node: &str) -> Result<(), Error>;

    /// Renews `node`'s unexpired leases among `shards` (same epoch), takes those that are
    /// free or expired (a new epoch), leaves those another node holds; every lease it holds
    /// afterwards lasts `lease` from now. Returns the leases `node` holds among `shards`.
    async fn acquire(
        &self,
        node: &str,
        shards: &[ShardId],
        lease: Duration,
    ) -> Result<Vec<Lease>, Error>;

    /// Who holds each unexpired lease.
    async fn owners(&self) -> Result<Vec<(ShardId, String)>, Error>;

    /// Gives up `node`'s leases of `shards` at once, so another node takes them without
    /// waiting for them to expire.
    async fn release(&self, node: &str, shards: &[ShardId]) -> Result<(), Error>;
}
