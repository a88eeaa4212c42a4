//! Which node should own a shard: rendezvous (highest random weight) hashing.
//!
//! Each (shard, node) pair gets a pseudo-random weight; the live node with the highest
//! weight owns the shard. When a node joins it takes about `1/N` of the shards, from every
//! other node alike; when one leaves, only its shards move. Every node computes the same
//! answer from the same member list, with no coordination.

use perennial_types::ShardId;

/// The weight of `node` for `shard`: FNV-1a over the node's name, mixed with the shard by
/// the SplitMix64 finalizer so that close shard numbers get unrelated weights.
fn weight(node: &str, shard: ShardId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in node.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    let mut z = hash ^ u64::from(shard.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The node among `nodes` that should own `shard`; `None` if there is no node. Ties (which
/// need equal weights) go to the smaller name, so the answer never depends on the order.
pub fn owner<'a>(shard: ShardId, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by(|a, b| {
        weight(a, shard)
            .cmp(&weight(b, shard))
            .then_with(|| b.cmp(a))
    })
}

#[cfg(test)]
mod tests {
    use perennial_types::SHARDS;

    use super::*;

    fn shares(nodes: &[&str]) -> Vec<usize> {
        let mut counts = vec![0; nodes.len()];
        for s in 0..SHARDS {
            let winner = owner(ShardId(s), nodes.iter().copied()).unwrap();
            counts[nodes.iter().position(|n| *n == winner).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn shards_spread_evenly_over_nodes() {
        for nodes in [
            &["a", "b"][..],
            &["n1", "n2", "n3"][..],
            &["node-1", "node-2", "node-3", "node-4", "node-5"][..],
        ] {
            let fair = SHARDS as usize / nodes.len();
            for count in shares(nodes) {
                assert!(
                    count.abs_diff(fair) < fair / 5,
                    "{nodes:?}: {count} shards where {fair} is fair"
                );
            }
        }
    }

    #[test]
    fn a_joining_node_takes_shards_only_for_itself_and_a_leaving_one_gives_only_its_own() {
        let before = ["n1", "n2", "n3"];
        let after = ["n1", "n2", "n3", "n4"];
        let mut moved = 0_usize;
        for s in 0..SHARDS {
            let old = owner(ShardId(s), before).unwrap();
            let new = owner(ShardId(s), after).unwrap();
            if old != new {
                assert_eq!(new, "n4", "shard {s} moved between old nodes");
                moved += 1;
            }
        }
        let fair = SHARDS as usize / 4;
        assert!(moved.abs_diff(fair) < fair / 5, "{moved} shards moved");
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_of_the_members() {
        for s in 0..SHARDS {
            let shard = ShardId(s);
            assert_eq!(owner(shard, ["a", "b", "c"]), owner(shard, ["c", "a", "b"]));
        }
        assert_eq!(owner(ShardId(1), std::iter::empty()), None);
    }
}
