//! A member of the cluster as the layout records it: identity, name,
//! addresses and state. Liveness is not here (that is failure detection's).

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Where a member stands in the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Owns partitions and serves them.
    Valid,
    /// Asked to leave: owns no partition, is no replica or fallback, and
    /// hands the data it still holds off to the partitions' primaries.
    Leaving,
}

/// One node of the cluster. `id` is never reused: a node that lost its data
/// comes back under the same `name` with a new `id` and replaces the old one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub peer_addr: String,
    pub http_addr: String,
    pub resp_addr: String,
    pub state: MemberState,
}
