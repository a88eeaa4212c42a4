//! Shards and epochs: how entities are grouped for ownership, and how stale writers are fenced.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The number of shards every deployment has. Entities map to shards with [`shard_of`].
///
/// This is part of the stored format: a data directory or database written with one shard
/// count can only be served with the same count.
pub const SHARDS: u32 = 1024;

/// One of the [`SHARDS`] groups of entities that a node owns as a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

/// A fencing token: the generation of a shard's ownership.
///
/// Each time a node claims a shard, the shard's epoch grows. Storage accepts a write only
/// when it names the shard's current epoch, so a writer that lost its claim cannot
/// overwrite what the new owner wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// The shard of the entity `(kind, id)`.
///
/// The hash is 64-bit FNV-1a over the kind, a zero byte and the id, taken modulo
/// [`SHARDS`]. It is written out here, not borrowed from a hashing crate, because it is
/// a stored format: it must give the same answer in every version, forever.
///
/// ```
/// use perennial_types::{shard_of, ShardId, SHARDS};
///
/// let shard = shard_of("table", "table-42");
/// assert!(shard.0 < SHARDS);
/// assert_eq!(shard, shard_of("table", "table-42"));
/// ```
pub fn shard_of(kind: &str, id: &str) -> ShardId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in kind.bytes().chain(std::iter::once(0)).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    ShardId((hash % u64::from(SHARDS)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shard function is a stored format: these values must never change.
    #[test]
    fn shard_function_is_pinned() {
        let pinned: Vec<u32> = [("counter", "c1"), ("table", "table-42"), ("k", "")]
            .iter()
            .map(|(k, i)| shard_of(k, i).0)
            .collect();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u32; 3] = [749, 260, 382];

    #[test]
    fn shards_spread_evenly() {
        let mut counts = vec![0u32; SHARDS as usize];
        for i in 0..(SHARDS * 100) {
            counts[shard_of("counter", &format!("c{i}")).0 as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            *min > 50 && *max < 160,
            "uneven spread: min {min}, max {max}"
        );
    }
}
