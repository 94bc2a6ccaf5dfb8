//! Messages between nodes. The node shell frames them (crate `wire`); the
//! simulator passes them as values. Objects and layouts travel in their
//! own versioned encodings as bytes so that one codec serves disk and wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::antientropy::{ExchangeRequest, ExchangeResponse};
use crate::bucket::{BucketRegistry, DurabilityMode};
use crate::causality::{ConflictMode, VersionVector};

/// A client operation, as a coordinator runs it (also forwarded between
/// nodes when the receiving node is not a primary of the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    Get {
        bucket: String,
        key: Vec<u8>,
        r: Option<u32>,
        /// Replies that must come from primaries (not fallbacks); None = 0.
        pr: Option<u32>,
        timeout_ms: u64,
    },
    Put {
        bucket: String,
        key: Vec<u8>,
        /// None deletes (writes a tombstone).
        value: Option<Vec<u8>>,
        content_type: String,
        context: VersionVector,
        w: Option<u32>,
        /// Primaries (not fallbacks) that must acknowledge; None = 0.
        pw: Option<u32>,
        timeout_ms: u64,
    },
    /// A `Put` of a value that expires `ttl_ms` after the coordinator
    /// stamps it. A variant of its own, added after `Put`, so that a
    /// forwarded put without a TTL encodes as before and a member that
    /// predates TTLs refuses this one rather than dropping the TTL.
    PutWithTtl {
        ttl_ms: u64,
        bucket: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        content_type: String,
        context: VersionVector,
        w: Option<u32>,
        pw: Option<u32>,
        timeout_ms: u64,
    },
}

impl ClientOp {
    pub fn bucket(&self) -> &str {
        match self {
            ClientOp::Get { bucket, .. }
            | ClientOp::Put { bucket, .. }
            | ClientOp::PutWithTtl { bucket, .. } => bucket,
        }
    }

    pub fn key(&self) -> &[u8] {
        match self {
            ClientOp::Get { key, .. }
            | ClientOp::Put { key, .. }
            | ClientOp::PutWithTtl { key, .. } => key,
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        match self {
            ClientOp::Get { timeout_ms, .. }
            | ClientOp::Put { timeout_ms, .. }
            | ClientOp::PutWithTtl { timeout_ms, .. } => *timeout_ms,
        }
    }

    /// The operation without its TTL (a `PutWithTtl` becomes a `Put`),
    /// and the TTL.
    pub fn split_ttl(self) -> (ClientOp, Option<u64>) {
        match self {
            ClientOp::PutWithTtl {
                ttl_ms,
                bucket,
                key,
                value,
                content_type,
                context,
                w,
                pw,
                timeout_ms,
            } => (
                ClientOp::Put {
                    bucket,
                    key,
                    value,
                    content_type,
                    context,
                    w,
                    pw,
                    timeout_ms,
                },
                Some(ttl_ms),
            ),
            op => (op, None),
        }
    }

    /// The inverse of [`split_ttl`](Self::split_ttl): a `Put` with a TTL
    /// becomes a `PutWithTtl`; anything else is returned as it is.
    pub fn with_ttl(self, ttl_ms: Option<u64>) -> ClientOp {
        match (self, ttl_ms) {
            (
                ClientOp::Put {
                    bucket,
                    key,
                    value,
                    content_type,
                    context,
                    w,
                    pw,
                    timeout_ms,
                },
                Some(ttl_ms),
            ) => ClientOp::PutWithTtl {
                ttl_ms,
                bucket,
                key,
                value,
                content_type,
                context,
                w,
                pw,
                timeout_ms,
            },
            (op, _) => op,
        }
    }
}

/// The outcome of a client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// A get: the causal merge of what R replicas hold (encoded object), or
    /// None when no replica had the key.
    Found {
        object: Option<Vec<u8>>,
    },
    /// A put or delete reached W replicas; the context covers the new version.
    Written {
        context: VersionVector,
    },
    Failed(OpError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("{message}")]
    BadRequest { message: String },
    #[error("quorum not reached: {got} of {needed} replicas answered")]
    Unavailable { got: u32, needed: u32 },
    #[error("timed out after {timeout_ms} ms: {got} of {needed} replicas answered")]
    Timeout {
        got: u32,
        needed: u32,
        timeout_ms: u64,
    },
    #[error("too many siblings: the write would leave {count}, the bucket allows {max}")]
    TooManySiblings { count: u32, max: u32 },
    #[error("node is overloaded, try again")]
    Overloaded,
    #[error("internal error: {message}")]
    Internal { message: String },
}

/// What gossip carries: the newest layout a node has seen and the bucket
/// properties it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipState {
    pub from: NodeId,
    pub layout: Vec<u8>,
    pub buckets: BucketRegistry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Merge this object into the local replica durably, then acknowledge.
    ReplicaPut {
        bucket: String,
        key: Vec<u8>,
        object: Vec<u8>,
        conflict: ConflictMode,
        durability: DurabilityMode,
    },
    /// Store this object as a hint for `hint_for`, a primary that is down
    /// (sloppy quorum): merged into the hint store durably, then acknowledged.
    HintPut {
        bucket: String,
        key: Vec<u8>,
        object: Vec<u8>,
        conflict: ConflictMode,
        durability: DurabilityMode,
        hint_for: NodeId,
    },
    /// Read the local replica (and any hint held for the key).
    ReplicaGet {
        bucket: String,
        key: Vec<u8>,
    },
    /// Failure-detector heartbeat.
    Ping {
        from: NodeId,
    },
    /// One step of an anti-entropy exchange over the Merkle tree of
    /// `partition` for buckets with `n` replicas.
    AntiEntropy {
        partition: u32,
        n: u32,
        request: ExchangeRequest,
    },
    /// Coordinate a client operation on behalf of a node that is not a primary.
    Coordinate(ClientOp),
    Gossip(GossipState),
    /// A node asks to join the cluster.
    Join {
        member: crate::ring::Member,
    },
    /// Read the local copy of a key from a member that held its partition
    /// under an earlier layout and may not have handed it off yet.
    /// `layout_version` is the asker's.
    HandoffGet {
        bucket: String,
        key: Vec<u8>,
        layout_version: u64,
    },
    // New variants go last: the frame body encodes the variant's index.
    /// One page of this node's records of a partition, for a backup: the
    /// objects of its replica (`hints` false) or of the hints it holds
    /// (`hints` true), keys after `after`, about `max_bytes` at most (at
    /// least one record when any is left).
    ScanPartition {
        partition: u32,
        hints: bool,
        after: Option<Vec<u8>>,
        max_bytes: u32,
    },
    /// Whether this node holds a copy of the key that could be handed to
    /// its primaries later: a hint (for any target), or, if it is none of
    /// `primaries`, a replica copy (an earlier layout's, not handed off
    /// yet). A tombstone is not reaped while such a copy exists.
    CopyHeld {
        bucket: String,
        key: Vec<u8>,
        primaries: Vec<NodeId>,
    },
    /// Drop the local replica of the key if it is still exactly the
    /// tombstone object with `digest` (its clock is `clock`): every primary
    /// acknowledged the delete and no hint for the key is left.
    Reap {
        bucket: String,
        key: Vec<u8>,
        digest: u64,
        clock: VersionVector,
        /// The tombstone's latest `modified_ms`.
        modified_ms: u64,
    },
}

/// Handoff holders: partition → member that held it under an earlier
/// layout and may not have handed it off yet → the version of the layout
/// that made it a holder.
pub type Holders = BTreeMap<u32, BTreeMap<NodeId, u64>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    ReplicaPutDone,
    Pong {
        from: NodeId,
    },
    AntiEntropy(ExchangeResponse),
    ReplicaGetDone {
        object: Option<Vec<u8>>,
    },
    Coordinated(ClientReply),
    Gossip(GossipState),
    Joined {
        layout: Vec<u8>,
        /// The bucket properties, so that the joiner stores its first
        /// writes under their buckets' `n` (their Merkle trees).
        buckets: BucketRegistry,
        /// The seed's handoff holders, this join's included: the joiner
        /// asks them too when it reads the partitions it was given.
        holders: Holders,
    },
    /// The request could not be served (bad input, storage error, overload).
    Refused {
        message: String,
    },
    // New variants go last: the frame body encodes the variant's index.
    /// The answer to `HandoffGet`: the local copy, and whether this node
    /// still holds keys of the partition that it has to hand off (`true`
    /// too while its layout is older than the asker's: it cannot tell yet).
    HandoffGetDone {
        object: Option<Vec<u8>>,
        holding: bool,
    },
    /// The answer to `ScanPartition`: (object key, encoded object) pairs in
    /// key order; `done` when no record follows the last one.
    ScanPage {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
    },
    /// The answer to `CopyHeld`.
    CopyHeld {
        held: bool,
    },
    /// The answer to `Reap`: whether the local copy was dropped.
    Reaped {
        dropped: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> ClientOp {
        ClientOp::Put {
            bucket: "b".into(),
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            content_type: "text/plain".into(),
            context: VersionVector::new(),
            w: Some(2),
            pw: None,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn a_ttl_travels_in_its_own_variant_and_comes_back_off() {
        assert_eq!(put().with_ttl(None), put(), "no TTL: the plain put");
        let expiring = put().with_ttl(Some(5000));
        assert!(matches!(
            expiring,
            ClientOp::PutWithTtl { ttl_ms: 5000, .. }
        ));
        assert_eq!((expiring.bucket(), expiring.key()), ("b", &b"k"[..]));
        assert_eq!(expiring.timeout_ms(), 1000);
        assert_eq!(expiring.split_ttl(), (put(), Some(5000)));
        assert_eq!(put().split_ttl(), (put(), None));
        let get = ClientOp::Get {
            bucket: "b".into(),
            key: b"k".to_vec(),
            r: None,
            pr: None,
            timeout_ms: 1000,
        };
        assert_eq!(get.clone().with_ttl(Some(1)), get, "only puts carry one");
    }
}
