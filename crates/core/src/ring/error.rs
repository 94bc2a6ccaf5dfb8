//! Errors of building or decoding a [`super::Layout`].

use crate::NodeId;

/// Why a layout could not be built or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("partitions must be a power of two between 1 and {max}, got {partitions}")]
    InvalidPartitions { partitions: u32, max: u32 },
    #[error("target_n must be at least 1")]
    ZeroTargetN,
    #[error("layout version must be at least 1")]
    ZeroVersion,
    #[error("layout bytes are empty")]
    Empty,
    #[error("unsupported layout format version {format} (this build reads {supported})")]
    UnsupportedFormat { format: u8, supported: u8 },
    #[error("malformed layout bytes: {message}")]
    Malformed { message: String },
    #[error("{count} unexpected bytes after the layout")]
    TrailingBytes { count: usize },
    #[error("a layout needs at least one member")]
    NoMembers,
    #[error(
        "{members} members do not fit in {partitions} partitions (each member owns at least one)"
    )]
    TooManyMembers { members: usize, partitions: u32 },
    #[error("members must be sorted by id: {id} follows {previous}")]
    MembersUnsorted { previous: NodeId, id: NodeId },
    #[error("member id {id} appears twice")]
    DuplicateMemberId { id: NodeId },
    #[error("member name {name:?} appears twice")]
    DuplicateMemberName { name: String },
    #[error("the layout has {owners} owners for {partitions} partitions")]
    OwnersLength { owners: usize, partitions: u32 },
    #[error("partition {partition} is owned by {owner}, which is not a member")]
    UnknownOwner { partition: u32, owner: NodeId },
    #[error("partition {partition} is owned by {owner}, which is leaving")]
    LeavingOwner { partition: u32, owner: NodeId },
}
