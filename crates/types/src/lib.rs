//! Plain data shared by every Perennial crate: entity ids, shards and epochs.
//!
//! **Architecture Invariant:** no I/O, no async, no runtime dependency. Everything here is a
//! value that can be stored or sent; the shard function is a stored format and never changes.
//!
//! # Layout
//! - [`EntityId`]: the validated id of one entity within its kind.
//! - [`EntityKey`]: a kind name plus an id, the address of one entity.
//! - [`ShardId`] and [`shard_of`]: the fixed mapping from entities to [`SHARDS`] shards.
//! - [`Epoch`]: the fencing token a writer holds for a shard.

mod id;
mod shard;

pub use id::{EntityId, EntityKey, InvalidId, MAX_ID_LEN};
pub use shard::{Epoch, SHARDS, ShardId, shard_of};
