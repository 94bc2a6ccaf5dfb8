//! The layout: the versioned document of members and partition → owner
//! assignment that gossip spreads, its changes (join, replace, update) and
//! its byte format. How owners are chosen is `assignment.rs`'s; preference
//! lists are `preference_list.rs`'s.

use serde::{Deserialize, Serialize};

use super::assignment;
use super::{LayoutError, Member, MemberState};
use crate::NodeId;

/// Partitions of a new cluster unless configured otherwise.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// The most partitions a cluster can have.
pub const MAX_PARTITIONS: u32 = 4096;
/// The replication the layout is spread for unless configured otherwise.
pub const DEFAULT_TARGET_N: u32 = 3;

/// Why [`Layout::with_member_leaving`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaveError {
    #[error("no such member")]
    NotAMember,
    #[error("the member is already leaving")]
    AlreadyLeaving,
    #[error("the last valid member cannot leave: its partitions would have no owner")]
    LastMember,
    #[error("the layout is at its last version")]
    LastVersion,
}

/// First byte of [`Layout::encode`].
const FORMAT_VERSION: u8 = 1;

/// Members and the owner of each partition, at a version. Every value of
/// this type satisfies the invariants [`Layout::decode`] checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawLayout")]
pub struct Layout {
    version: u64,
    partitions: u32,
    target_n: u32,
    /// Sorted by id; ids and names unique; at most `partitions` of them.
    members: Vec<Member>,
    /// `owners[p]` owns partition `p`; every owner is a valid (not leaving) member.
    owners: Vec<NodeId>,
}

/// The fields of a [`Layout`] before validation (same encoding).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct RawLayout {
    pub(super) version: u64,
    pub(super) partitions: u32,
    pub(super) target_n: u32,
    pub(super) members: Vec<Member>,
    pub(super) owners: Vec<NodeId>,
}

impl TryFrom<RawLayout> for Layout {
    type Error = LayoutError;

    fn try_from(raw: RawLayout) -> Result<Layout, LayoutError> {
        check_shape(raw.partitions, raw.target_n)?;
        if raw.version == 0 {
            return Err(LayoutError::ZeroVersion);
        }
        if raw.members.is_empty() {
            return Err(LayoutError::NoMembers);
        }
        if raw.members.len() > raw.partitions as usize {
            return Err(LayoutError::TooManyMembers {
                members: raw.members.len(),
                partitions: raw.partitions,
            });
        }
        for pair in raw.members.windows(2) {
            let (previous, id) = (pair[0].id, pair[1].id);
            if id == previous {
                return Err(LayoutError::DuplicateMemberId { id });
            }
            if id < previous {
                return Err(LayoutError::MembersUnsorted { previous, id });
            }
        }
        let mut names: Vec<&str> = raw
            .members
            .iter()
            .map(|member| member.name.as_str())
            .collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(LayoutError::DuplicateMemberName {
                name: pair[0].to_owned(),
            });
        }
        if raw.owners.len() != raw.partitions as usize {
            return Err(LayoutError::OwnersLength {
                owners: raw.owners.len(),
                partitions: raw.partitions,
            });
        }
        for (partition, &owner) in raw.owners.iter().enumerate() {
            let partition = u32::try_from(partition).expect("at most 4096 partitions");
            match raw.members.binary_search_by_key(&owner, |member| member.id) {
                Err(_) => return Err(LayoutError::UnknownOwner { partition, owner }),
                Ok(index) if raw.members[index].state != MemberState::Valid => {
                    return Err(LayoutError::LeavingOwner { partition, owner });
                }
                Ok(_) => {}
            }
        }
        Ok(Layout {
            version: raw.version,
            partitions: raw.partitions,
            target_n: raw.target_n,
            members: raw.members,
            owners: raw.owners,
        })
    }
}

fn check_shape(partitions: u32, target_n: u32) -> Result<(), LayoutError> {
    if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
        return Err(LayoutError::InvalidPartitions {
            partitions,
            max: MAX_PARTITIONS,
        });
    }
    if target_n == 0 {
        return Err(LayoutError::ZeroTargetN);
    }
    Ok(())
}

impl Layout {
    /// A new cluster of one member, at version 1.
    pub fn new(partitions: u32, target_n: u32, first: Member) -> Result<Layout, LayoutError> {
        check_shape(partitions, target_n)?;
        let owners = vec![first.id; partitions as usize];
        Layout::try_from(RawLayout {
            version: 1,
            partitions,
            target_n,
            members: vec![first],
            owners,
        })
    }

    /// The layout after `member` joins, at version + 1, or `None` when
    /// nothing changes:
    /// - same id as a member: its name and addresses are updated, no owner
    ///   changes, and it keeps the state the layout gives it (a leaving
    ///   member that restarts stays leaving); `None` if nothing changes, or
    ///   if the new name belongs to another member;
    /// - a new id under an existing valid member's name: the new id replaces
    ///   that member and takes over exactly its partitions (a node that lost
    ///   its data comes back with a new id); `None` under a leaving member's
    ///   name;
    /// - otherwise the member is added as valid, taking ⌊Q/(M+1)⌋ partitions
    ///   and moving nothing else when the guarantees allow (see [`super`];
    ///   M counts valid members); `None` if every partition already has its
    ///   own member.
    ///
    /// Also `None` at version `u64::MAX`, which has no successor.
    pub fn with_member(&self, mut member: Member) -> Option<Layout> {
        let version = self.version.checked_add(1)?;
        if let Some(index) = self.index_of(member.id) {
            member.state = self.members[index].state;
            let taken_name = self
                .members
                .iter()
                .any(|other| other.id != member.id && other.name == member.name);
            if self.members[index] == member || taken_name {
                return None;
            }
            let mut next = self.clone();
            next.version = version;
            next.members[index] = member;
            return Some(next);
        }
        member.state = MemberState::Valid;
        if let Some(index) = self
            .members
            .iter()
            .position(|other| other.name == member.name)
        {
            if self.members[index].state != MemberState::Valid {
                return None;
            }
            let (old, new) = (self.members[index].id, member.id);
            let mut members = self.members.clone();
            members[index] = member;
            members.sort_unstable_by_key(|member| member.id);
            let owners = self
                .owners
                .iter()
                .map(|&owner| if owner == old { new } else { owner })
                .collect();
            return Some(Layout {
                version,
                partitions: self.partitions,
                target_n: self.target_n,
                members,
                owners,
            });
        }
        if self.members.len() >= self.partitions as usize {
            return None;
        }
        let (mut valid, old) = self.valid_owner_indices();
        let next = assignment::join(&old, valid.len(), self.target_n as usize);
        valid.push(member.id);
        let owners = next.iter().map(|&index| valid[index]).collect();
        let mut members = self.members.clone();
        members.push(member);
        members.sort_unstable_by_key(|member| member.id);
        Some(Layout {
            version,
            partitions: self.partitions,
            target_n: self.target_n,
            members,
            owners,
        })
    }

    /// The layout after member `id` is asked to leave, at version + 1: it is
    /// marked leaving and its partitions go to the valid members, balanced
    /// and distinct as [`super`] guarantees, moving no other partition when
    /// that keeps the guarantees (else the layout is assigned afresh and
    /// relabelled to keep as many owners as it can).
    pub fn with_member_leaving(&self, id: NodeId) -> Result<Layout, LeaveError> {
        let index = self.index_of(id).ok_or(LeaveError::NotAMember)?;
        if self.members[index].state == MemberState::Leaving {
            return Err(LeaveError::AlreadyLeaving);
        }
        let (valid, old) = self.valid_owner_indices();
        if valid.len() == 1 {
            return Err(LeaveError::LastMember);
        }
        let version = self.version.checked_add(1).ok_or(LeaveError::LastVersion)?;
        let leaver = valid
            .binary_search(&id)
            .expect("a valid member is among the valid ones");
        let next = assignment::leave(&old, valid.len(), leaver, self.target_n as usize);
        let remaining: Vec<NodeId> = valid.into_iter().filter(|&other| other != id).collect();
        let mut members = self.members.clone();
        members[index].state = MemberState::Leaving;
        Ok(Layout {
            version,
            partitions: self.partitions,
            target_n: self.target_n,
            members,
            owners: next.iter().map(|&index| remaining[index]).collect(),
        })
    }

    /// The layout without member `id`, at version + 1, once it has left:
    /// `None` unless it is a leaving member (one that owns nothing).
    pub fn without_member(&self, id: NodeId) -> Option<Layout> {
        let index = self.index_of(id)?;
        if self.members[index].state != MemberState::Leaving {
            return None;
        }
        let mut next = self.clone();
        next.version = self.version.checked_add(1)?;
        next.members.remove(index);
        Some(next)
    }

    /// The layout without member `id`, at version + 1, whether it was
    /// leaving or valid (then its partitions move as in
    /// [`Layout::with_member_leaving`]): for a member that is gone for good
    /// without handing anything off (Riak's force-remove).
    pub fn with_member_removed(&self, id: NodeId) -> Result<Layout, LeaveError> {
        let leaving = match self.member(id) {
            None => return Err(LeaveError::NotAMember),
            Some(member) if member.state == MemberState::Leaving => self.clone(),
            Some(_) => self.with_member_leaving(id)?,
        };
        let mut next = leaving.without_member(id).ok_or(LeaveError::LastVersion)?;
        next.version = self.version.checked_add(1).ok_or(LeaveError::LastVersion)?;
        Ok(next)
    }

    /// The ids of the valid members (sorted), and each partition's owner as
    /// an index into them.
    fn valid_owner_indices(&self) -> (Vec<NodeId>, Vec<usize>) {
        let valid: Vec<NodeId> = self
            .members
            .iter()
            .filter(|member| member.state == MemberState::Valid)
            .map(|member| member.id)
            .collect();
        let owners = self
            .owners
            .iter()
            .map(|owner| {
                valid
                    .binary_search(owner)
                    .expect("every owner is a valid member")
            })
            .collect();
        (valid, owners)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The replication the assignment is spread for (see [`super`]).
    pub fn target_n(&self) -> u32 {
        self.target_n
    }

    /// Sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Members that are not leaving: those that own partitions and hold replicas.
    pub fn valid_members(&self) -> usize {
        self.members
            .iter()
            .filter(|member| member.state == MemberState::Valid)
            .count()
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.index_of(id).map(|index| &self.members[index])
    }

    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    /// Position of `id` in [`Layout::members`].
    pub(super) fn index_of(&self, id: NodeId) -> Option<usize> {
        self.members
            .binary_search_by_key(&id, |member| member.id)
            .ok()
    }

    /// # Panics
    /// If `partition >= self.partitions()`.
    pub fn owner(&self, partition: u32) -> NodeId {
        self.owners[partition as usize]
    }

    /// The owner of each partition, indexed by partition.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    pub fn partitions_owned(&self, id: NodeId) -> usize {
        self.owners.iter().filter(|&&owner| owner == id).count()
    }

    /// Gossip's "newest wins": a higher version, or at equal versions the
    /// higher digest (a deterministic pick between concurrent changes).
    pub fn supersedes(&self, other: &Layout) -> bool {
        self.version > other.version
            || (self.version == other.version && self.digest() > other.digest())
    }

    /// xxh3-64 of [`Layout::encode`].
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.encode())
    }

    /// Format version byte (1), then the fields in postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![FORMAT_VERSION]).expect("a layout always serializes")
    }

    /// The inverse of [`Layout::encode`]; checks every invariant and rejects
    /// trailing bytes. Never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<Layout, LayoutError> {
        let (&format, body) = bytes.split_first().ok_or(LayoutError::Empty)?;
        if format != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedFormat {
                format,
                supported: FORMAT_VERSION,
            });
        }
        let (raw, rest) = postcard::take_from_bytes::<RawLayout>(body).map_err(|error| {
            LayoutError::Malformed {
                message: error.to_string(),
            }
        })?;
        if !rest.is_empty() {
            return Err(LayoutError::TrailingBytes { count: rest.len() });
        }
        Layout::try_from(raw)
    }
}
