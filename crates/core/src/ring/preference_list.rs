//! Preference lists: which members hold a partition's replicas (primaries)
//! and which stand in for them (fallbacks), read off a layout by walking the
//! ring. Liveness is not considered here; the coordinator skips down nodes.

use std::collections::{BTreeMap, BTreeSet};

use super::{Layout, MemberState};
use crate::NodeId;

/// The members for one partition, in walk order, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferenceList {
    /// The first n distinct owners from the partition on (fewer when the
    /// cluster has fewer members); the first is the partition's owner.
    pub primaries: Vec<NodeId>,
    /// Every other valid member, in the order the walk meets them (a
    /// leaving member is neither).
    pub fallbacks: Vec<NodeId>,
}

impl Layout {
    /// Walks partitions from `partition` (wrapping), taking owners not taken
    /// yet: the first `n` are the primaries, the rest of the members are
    /// fallbacks. Valid members owning no partition come last, by id;
    /// leaving members are left out.
    ///
    /// # Panics
    /// If `partition >= self.partitions()`.
    pub fn preference_list(&self, partition: u32, n: usize) -> PreferenceList {
        let partitions = self.partitions();
        assert!(
            partition < partitions,
            "partition {partition} is outside 0..{partitions}"
        );
        let members = self.members();
        let valid = self.valid_members();
        let mut taken = vec![false; members.len()];
        let mut walk = Vec::with_capacity(valid);
        for step in 0..partitions {
            let owner = self.owner((partition + step) % partitions);
            let index = self.index_of(owner).expect("every owner is a member");
            if !taken[index] {
                taken[index] = true;
                walk.push(owner);
                if walk.len() == valid {
                    break;
                }
            }
        }
        walk.extend(
            members
                .iter()
                .zip(&taken)
                .filter(|(member, taken)| !**taken && member.state == MemberState::Valid)
                .map(|(member, _)| member.id),
        );
        let fallbacks = walk.split_off(n.min(walk.len()));
        PreferenceList {
            primaries: walk,
            fallbacks,
        }
    }
}

/// The members that may hold keys of each partition under `old` without
/// being their replicas under `new`, for any `n` up to `max_n` (each capped
/// at the members of its layout): the old holders a read asks too until
/// they have handed the partition off. Only members of `new` are named
/// (a removed member is gone); partitions without any are left out. Empty
/// when the two layouts differ in partition count.
pub fn previous_holders(
    old: &Layout,
    new: &Layout,
    max_n: usize,
) -> BTreeMap<u32, BTreeSet<NodeId>> {
    let mut holders = BTreeMap::new();
    if old.partitions() != new.partitions() || old.valid_members() == 0 {
        return holders;
    }
    for partition in 0..new.partitions() {
        let mut found = BTreeSet::new();
        for n in 1..=max_n.max(1) {
            let before = old.preference_list(partition, n.min(old.valid_members()));
            let after = new.preference_list(partition, n.min(new.valid_members().max(1)));
            found.extend(
                before
                    .primaries
                    .into_iter()
                    .filter(|m| !after.primaries.contains(m) && new.member(*m).is_some()),
            );
        }
        if !found.is_empty() {
            holders.insert(partition, found);
        }
    }
    holders
}
