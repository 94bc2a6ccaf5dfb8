//! Prometheus metrics of a node, rendered by `GET /metrics`.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Delete,
}

impl EncodeLabelValue for Op {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: Op,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FailureReason {
    BadRequest,
    Unavailable,
    Timeout,
    Overloaded,
    TooManySiblings,
    Internal,
}

impl EncodeLabelValue for FailureReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            FailureReason::BadRequest => "bad_request",
            FailureReason::Unavailable => "unavailable",
            FailureReason::Timeout => "timeout",
            FailureReason::Overloaded => "overloaded",
            FailureReason::TooManySiblings => "too_many_siblings",
            FailureReason::Internal => "internal",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub op: Op,
    pub reason: FailureReason,
}

pub struct Metrics {
    registry: Registry,
    pub request_seconds: Family<OpLabels, Histogram>,
    pub request_failures: Family<FailureLabels, Counter>,
    pub read_repairs: Counter,
    pub siblings_read: Histogram,
    pub forwarded: Counter,
    pub peer_failures: Counter,
    pub group_commit_batches: Gauge,
    pub group_commit_jobs: Gauge,
    /// 1 while the node passes its writes on because its storage failed one.
    pub local_storage_failing: Gauge,
    pub layout_version: Gauge,
    pub hints_pending: Gauge,
    pub hints_stored: Counter,
    pub hints_delivered: Counter,
    pub peer_up: Family<PeerLabels, Gauge>,
    pub keys_repaired: Counter,
    pub exchanges: Counter,
    pub tree_keys: Gauge,
    pub handoff_pending: Gauge,
    pub handoff_holders: Gauge,
    pub keys_dropped: Counter,
    pub tombstones_reaped: Counter,
    pub reaps_skipped: Counter,
    pub tombstones_swept: Counter,
    pub expired_swept: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringkv");
        let request_seconds = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register(
            "request_duration_seconds",
            "Latency of client operations as the coordinator saw them",
            request_seconds.clone(),
        );
        let request_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "request_failures",
            "Client operations that failed, by reason (unavailable = quorum not reached)",
            request_failures.clone(),
        );
        let read_repairs = Counter::default();
        registry.register(
            "read_repairs",
            "Stale replicas repaired after a read",
            read_repairs.clone(),
        );
        let siblings_read = Histogram::new([1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        registry.register(
            "siblings",
            "Live siblings of the objects returned by reads",
            siblings_read.clone(),
        );
        let forwarded = Counter::default();
        registry.register(
            "forwarded",
            "Writes forwarded to a primary of the key",
            forwarded.clone(),
        );
        let peer_failures = Counter::default();
        registry.register(
            "peer_request_failures",
            "Requests to peers that failed (unreachable, timeout, refused)",
            peer_failures.clone(),
        );
        let group_commit_batches = Gauge::default();
        registry.register(
            "group_commit_batches",
            "Durable commits made by the group committer",
            group_commit_batches.clone(),
        );
        let group_commit_jobs = Gauge::default();
        registry.register(
            "group_commit_jobs",
            "Writes committed by the group committer",
            group_commit_jobs.clone(),
        );
        let local_storage_failing = Gauge::default();
        registry.register(
            "local_storage_failing",
            "1 while local storage failed a write in the last 10 s (a full disk?): the node passes the writes it would coordinate to the key's other replicas",
            local_storage_failing.clone(),
        );
        let layout_version = Gauge::default();
        registry.register(
            "layout_version",
            "Version of the layout this node uses",
            layout_version.clone(),
        );
        let hints_pending = Gauge::default();
        registry.register(
            "hints_pending",
            "Hint records held for nodes that were down",
            hints_pending.clone(),
        );
        let hints_stored = Counter::default();
        registry.register(
            "hints_stored",
            "Hint records created (sloppy quorum writes held for a down primary)",
            hints_stored.clone(),
        );
        let hints_delivered = Counter::default();
        registry.register(
            "hints_delivered",
            "Hints handed off to their primary and acknowledged",
            hints_delivered.clone(),
        );
        let peer_up = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_up",
            "1 when this node sees the peer up or suspect, 0 when down",
            peer_up.clone(),
        );
        let keys_repaired = Counter::default();
        registry.register(
            "aae_keys_repaired",
            "Keys repaired by active anti-entropy",
            keys_repaired.clone(),
        );
        let tree_keys = Gauge::default();
        registry.register(
            "aae_tree_keys",
            "Keys in this node's anti-entropy Merkle trees",
            tree_keys.clone(),
        );
        let handoff_pending = Gauge::default();
        registry.register(
            "aae_handoff_pending",
            "Trees of partitions this node holds data for but is no replica of (it is leaving, or a join or leave moved them), not yet found in sync with every replica",
            handoff_pending.clone(),
        );
        let handoff_holders = Gauge::default();
        registry.register(
            "handoff_holders",
            "Old holders (partition, member) that this node's reads still ask, until each says it has handed the partition off",
            handoff_holders.clone(),
        );
        let keys_dropped = Counter::default();
        registry.register(
            "aae_keys_dropped",
            "Keys deleted from this node after it handed them off to the replicas of a partition it no longer holds",
            keys_dropped.clone(),
        );
        let tombstones_reaped = Counter::default();
        registry.register(
            "tombstones_reaped",
            "Tombstones this node dropped after every primary acknowledged the delete (delete-mode)",
            tombstones_reaped.clone(),
        );
        let reaps_skipped = Counter::default();
        registry.register(
            "reaps_skipped",
            "Deletes this node coordinated whose tombstone it did not reap: a member held a hint for the key, did not answer, or the layout changed",
            reaps_skipped.clone(),
        );
        let tombstones_swept = Counter::default();
        registry.register(
            "tombstones_swept",
            "Tombstones left behind (older than the reap delay) that the sweeper read so that they are reaped",
            tombstones_swept.clone(),
        );
        let expired_swept = Counter::default();
        registry.register(
            "expired_swept",
            "Keys whose every value had expired that the sweeper turned into tombstones",
            expired_swept.clone(),
        );
        let exchanges = Counter::default();
        registry.register(
            "aae_exchanges",
            "Anti-entropy exchanges completed",
            exchanges.clone(),
        );
        Metrics {
            registry,
            keys_repaired,
            exchanges,
            tree_keys,
            handoff_pending,
            handoff_holders,
            keys_dropped,
            tombstones_reaped,
            reaps_skipped,
            tombstones_swept,
            expired_swept,
            hints_pending,
            hints_stored,
            hints_delivered,
            peer_up,
            request_seconds,
            request_failures,
            read_repairs,
            siblings_read,
            forwarded,
            peer_failures,
            group_commit_batches,
            group_commit_jobs,
            local_storage_failing,
            layout_version,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
