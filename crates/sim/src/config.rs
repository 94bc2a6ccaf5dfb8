//! `SimConfig`: everything that shapes one simulated run besides the
//! workload and the fault schedule: cluster size, bucket properties,
//! network and disk timing, fault probabilities, planted bugs.

use ringkv_core::bucket::{BucketProps, DurabilityMode};

/// The bucket every simulated client uses.
pub const SIM_BUCKET: &str = "sim";

/// A deliberate defect the simulator can inject into its own copy of the
/// node protocol, to show that the checkers catch the class of bug they
/// exist for. `None` in every real scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The coordinator answers a put OK as soon as it has queued its local
    /// write, before the write is durable anywhere and before W replicas
    /// acknowledged it. A crash before the commit loses an acknowledged
    /// write.
    AckBeforeQuorum,
    /// A replica stores the object it receives in place of merging it with
    /// the one it holds, dropping concurrent siblings (and their dots from
    /// its clock).
    DropSiblingsOnMerge,
    /// A fallback (or a node outside the plan) stamps the writes it
    /// coordinates with its node id, counting on from its hint copy of the
    /// key, as the node did before commit a56b069. Once the hint is handed
    /// off and deleted, its next write of the key reissues a dot the
    /// primaries already hold, and they drop one of the two writes.
    ReuseFallbackActor,
    /// A fallback keeps its per-process actor when it deletes a hint record
    /// (the node changes it then, `FallbackActor`): once a handed-off hint
    /// is gone, its next write of the key reissues a dot the primaries
    /// already hold.
    FallbackActorOutlivesHint,
    /// A primary stamps its writes with its node id instead of a
    /// per-process incarnation id (the node before a56b069 for buffered
    /// writes, and for synced ones once they went out before their local
    /// sync): a crash that loses the coordinator's unsynced copy, which
    /// other replicas already hold, lets the restarted node reissue its dot.
    PrimaryActorIsNodeId,
    /// A write answers with the object's whole clock as its context (the
    /// node before a56b069), which also covers concurrent siblings the
    /// client never saw: a write passing that context drops them.
    WholeClockContext,
    /// A replica merging an incoming object keeps its own siblings that
    /// the incoming history superseded: covered versions come back.
    MergeResurrects,
    /// A replica that receives an older copy of a key (a late duplicate, a
    /// stale hint, a slow repair) stores it over its newer one.
    OverwriteWithStale,
    /// Neither anti-entropy nor hinted handoff runs: replicas that missed
    /// writes stay behind until a read repairs them.
    NoBackgroundRepair,
}

/// The simulated network between nodes. Reordering needs no knob: every
/// message draws its own delay.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Probability that a message is lost.
    pub drop_probability: f64,
    /// Probability that a delivered message is delivered a second time
    /// (with its own delay).
    pub duplicate_probability: f64,
}

impl NetworkConfig {
    /// Delays only: no loss, no duplicates.
    pub fn reliable() -> NetworkConfig {
        NetworkConfig {
            min_delay_ms: 1,
            max_delay_ms: 20,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
        }
    }

    pub fn lossy(drop_probability: f64, duplicate_probability: f64) -> NetworkConfig {
        NetworkConfig {
            drop_probability,
            duplicate_probability,
            ..NetworkConfig::reliable()
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Number of nodes, 1 to 16 (scenarios use 3 to 5).
    pub nodes: usize,
    /// Properties of [`SIM_BUCKET`].
    pub bucket: BucketProps,
    pub network: NetworkConfig,
    /// Latency of a durable commit (one group commit of every write queued
    /// on the node), drawn per commit.
    pub disk_commit_ms: (u64, u64),
    /// The nodes' `--durability` (a bucket's `durability` overrides it).
    pub node_durability: DurabilityMode,
    /// The group committer's `sync_interval`: longest time a buffered write
    /// stays unsynced.
    pub sync_interval_ms: u64,
    /// One-way latency between a client and the node it talks to.
    pub client_link_ms: (u64, u64),
    /// `timeout_ms` of every client operation (the coordinator's round
    /// timeout).
    pub request_timeout_ms: u64,
    /// Each node's clock is off by a fixed amount drawn in
    /// `-clock_skew_ms..=clock_skew_ms` (matters to LWW buckets).
    pub clock_skew_ms: u64,
    /// The nodes' heartbeat interval (failure detection).
    pub heartbeat_interval_ms: u64,
    /// How often a node tries to hand its hints off.
    pub hint_delivery_interval_ms: u64,
    pub hint_delivery_per_second: usize,
    /// Most hints a node holds (`--hints-max`).
    pub hints_max: u64,
    /// Timeout of a node's own requests (hint delivery, read repair,
    /// anti-entropy).
    pub node_request_timeout_ms: u64,
    /// How often a node starts an anti-entropy pass (`--aae-interval-ms`;
    /// the node's default is 10 s, runs here are seconds long).
    pub anti_entropy_interval_ms: u64,
    /// Most segments one exchange compares (`--aae-max-segments`).
    pub anti_entropy_max_segments: usize,
    /// How many trace lines to keep for failure reports (the hash covers
    /// all of them).
    pub trace_tail: usize,
    pub bug: Option<PlantedBug>,
}

impl SimConfig {
    /// Defaults: N=3, R=2, W=2 siblings bucket, sync durability, reliable
    /// network with 1-20 ms delays, 1-8 ms commits, 500 ms request timeout,
    /// 50 ms clock skew.
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            bucket: BucketProps::default(),
            network: NetworkConfig::reliable(),
            disk_commit_ms: (1, 8),
            node_durability: DurabilityMode::Sync,
            sync_interval_ms: 1_000,
            client_link_ms: (1, 3),
            request_timeout_ms: 500,
            clock_skew_ms: 50,
            heartbeat_interval_ms: 500,
            hint_delivery_interval_ms: 500,
            hint_delivery_per_second: 2000,
            hints_max: 1_000_000,
            node_request_timeout_ms: 5_000,
            anti_entropy_interval_ms: 1_000,
            anti_entropy_max_segments: 64,
            trace_tail: 200,
            bug: None,
        }
    }
}
