//! The replica-side checkers, which look at what nodes store rather than
//! at what clients saw (those are in [`crate::checker`]):
//!
//! - **Causal history never goes backwards** (check d): every write a
//!   replica applies to a key's data — a coordinator's update, a replica
//!   merge, a read repair, a hint handed off, an anti-entropy repair —
//!   stores a clock that descends the clock it replaces ([`AppliedWrite`]).
//!   A crash of a node with buffered writes rolls its storage back to the
//!   last sync by design; the next write is checked against what is left.
//! - **Convergence** (check c): once healed and quiet, the primaries of a
//!   key hold equal objects, the primaries of a partition have equal
//!   Merkle roots, and each tree describes what its node stores
//!   ([`CopyOfPartition`]).

use std::collections::BTreeMap;

use ringkv_core::NodeId;
use ringkv_core::antientropy::MerkleTree;
use ringkv_core::causality::{Object, VersionVector};
use ringkv_storage::{MemoryStorage, Space, Storage};

/// One write a replica applied to a key's data, with the clock it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedWrite {
    pub partition: u32,
    pub raw_key: Vec<u8>,
    pub before: Option<VersionVector>,
    pub after: VersionVector,
}

impl AppliedWrite {
    /// Why the write moved the key's history backwards, if it did
    /// (`name` names the replicas of the clock).
    pub fn regression(&self, name: impl Fn(NodeId) -> String) -> Option<String> {
        let before = self.before.as_ref()?;
        if self.after.descends(before) {
            return None;
        }
        let lost: Vec<String> = before
            .iter()
            .filter(|&(replica, counter)| self.after.get(replica) < counter)
            .map(|(replica, counter)| {
                format!(
                    "{}: {counter} -> {}",
                    name(replica),
                    self.after.get(replica)
                )
            })
            .collect();
        Some(format!(
            "partition {} stored a clock that does not descend the one it replaced ({})",
            self.partition,
            lost.join(", ")
        ))
    }
}

/// A Merkle tree over what `storage` holds in one partition's data, built
/// from scratch (as a node rebuilds its trees at start): key → digest of
/// the stored object.
pub fn tree_from_storage(storage: &MemoryStorage, partition: u32) -> MerkleTree {
    let mut tree = MerkleTree::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = storage
            .scan(Space::Data(partition), after.as_deref(), 512)
            .unwrap_or_default();
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (raw_key, bytes) in page {
            if let Ok(object) = Object::decode(&bytes) {
                tree.insert(&raw_key, object.digest());
            }
        }
    }
    tree
}

/// One primary's copy of a partition, as the convergence check sees it.
pub struct CopyOfPartition {
    pub node: usize,
    /// The root of the node's own tree for (partition, n); an empty tree's
    /// when it has none.
    pub root: u64,
    /// The root of a tree rebuilt from what it stores.
    pub stored_root: u64,
}

/// Describes how the primaries of a partition disagree on roots, or a
/// tree that does not describe its node's storage; `None` when they agree.
pub fn compare_roots(copies: &[CopyOfPartition]) -> Option<String> {
    let mut problems = Vec::new();
    for copy in copies {
        if copy.root != copy.stored_root {
            problems.push(format!(
                "n{}'s tree ({:016x}) does not describe its storage ({:016x})",
                copy.node, copy.root, copy.stored_root
            ));
        }
    }
    let roots: BTreeMap<u64, Vec<usize>> = copies.iter().fold(BTreeMap::new(), |mut m, c| {
        m.entry(c.root).or_insert_with(Vec::new).push(c.node);
        m
    });
    if roots.len() > 1 {
        let described: Vec<String> = roots
            .iter()
            .map(|(root, nodes)| format!("{root:016x} on {nodes:?}"))
            .collect();
        problems.push(format!("Merkle roots differ: {}", described.join(", ")));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use ringkv_core::causality::Dot;

    use super::*;

    fn clock(entries: &[(NodeId, u64)]) -> VersionVector {
        let mut clock = VersionVector::new();
        for &(replica, counter) in entries {
            for c in 1..=counter {
                clock.add(Dot::new(replica, c));
            }
        }
        clock
    }

    #[test]
    fn a_write_that_drops_part_of_the_history_is_a_regression() {
        let grew = AppliedWrite {
            partition: 3,
            raw_key: b"k".to_vec(),
            before: Some(clock(&[(1, 2), (2, 1)])),
            after: clock(&[(1, 3), (2, 1)]),
        };
        let name = |replica: NodeId| format!("r{replica}");
        assert_eq!(grew.regression(name), None);
        let first = AppliedWrite {
            before: None,
            ..grew.clone()
        };
        assert_eq!(first.regression(name), None);
        let went_back = AppliedWrite {
            before: Some(clock(&[(1, 3), (2, 1)])),
            after: clock(&[(1, 2), (2, 4)]),
            ..grew
        };
        let detail = went_back.regression(name).expect("a regression");
        assert!(detail.contains("r1: 3 -> 2"), "{detail}");
    }

    #[test]
    fn roots_must_agree_and_describe_storage() {
        let copy = |node, root, stored_root| CopyOfPartition {
            node,
            root,
            stored_root,
        };
        assert_eq!(compare_roots(&[copy(0, 7, 7), copy(1, 7, 7)]), None);
        let differ = compare_roots(&[copy(0, 7, 7), copy(1, 8, 8)]).expect("differ");
        assert!(differ.contains("roots differ"), "{differ}");
        let stale = compare_roots(&[copy(0, 7, 9), copy(1, 7, 7)]).expect("stale tree");
        assert!(stale.contains("does not describe"), "{stale}");
    }
}
