//! `SimNode`: one simulated ringkv node. It runs the protocol of
//! `crates/node/src/node.rs` — coordinate_put (sloppy quorum with
//! fallbacks and hints, the dot's actor, `written_context`), forward,
//! coordinate_get, read_repair, handle_peer, the heartbeat loop feeding the
//! failure detector, hinted handoff — and anti-entropy (`antientropy.rs`
//! beside this file) as a synchronous state machine over the real core:
//! `Object::update` and `Object::merge` for versions, `PutRound` and
//! `GetRound` for quorums, `FailureDetector` for liveness, `MerkleTree` and
//! `Exchange` for anti-entropy, the real `MemoryStorage` for its disk.
//! Inputs are calls (client operation, peer message, commit, timer,
//! periodic tick); outputs are [`Effect`]s that the simulator carries out
//! (send, reply, set a timer, schedule a commit). It owns no clock or
//! network; its random ids come from a stream the simulator forks from the
//! run's seed at each start.
//!
//! Writes go through a commit queue that stands for the node's group
//! committer: a write is queued, and at the next commit every queued
//! read-modify-write runs against the stored record (earlier jobs of the
//! batch included) and the batch is written, with `Durability::Sync` if any
//! job asked for it (the default), else `Durability::Buffered`; only then
//! are acknowledgements sent. Buffered writes are synced by a background
//! sync within the sync interval. A crash loses the queue, as a process
//! crash loses the committer's in-memory jobs, and `MemoryStorage::crash`
//! loses what was not synced.

use std::collections::{BTreeMap, BTreeSet};

use ringkv_core::NodeId;
use ringkv_core::bucket::{BucketProps, DurabilityMode, validate_bucket_name, validate_key};
use ringkv_core::causality::{ConflictMode, NewVersion, Object, UpdateError, VersionVector};
use ringkv_core::coordinator::{GetRound, PutRound, Quorum, Role, written_context};
use ringkv_core::membership::FailureDetector;
use ringkv_core::message::{ClientOp, ClientReply, OpError, PeerRequest, PeerResponse};
use ringkv_storage::{Durability, MemoryStorage, Space, Storage, StorageError, WriteBatch};

use crate::cluster::Cluster;
use crate::config::PlantedBug;
use crate::history::OpId;
use crate::replicas::AppliedWrite;
use crate::rng::SimRng;
use crate::stats::SimStats;
use antientropy::AntiEntropy;
use ringkv_core::hint::{Hint, split_object_key};

/// Extra time a forwarding node waits beyond the operation's own timeout
/// (`FORWARD_GRACE` in the node).
pub const FORWARD_GRACE_MS: u64 = 500;
/// Hints scanned per page by hint delivery (as the node).
const HINT_PAGE: usize = 128;

pub type RequestId = u64;

/// What travels between nodes: a request or the response to one, matched
/// by request id (the peer transport's job in the node).
#[derive(Clone, Debug)]
pub enum Payload {
    Request {
        id: RequestId,
        request: PeerRequest,
    },
    Response {
        id: RequestId,
        response: Result<PeerResponse, TransportError>,
    },
}

/// A request that failed below the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The destination process is down (its host answers with a reset).
    ConnectionRefused,
}

/// Where the answer to an operation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    Client(OpId),
    /// A forwarded put: answer the forwarding node's request.
    Peer {
        to: NodeId,
        request: RequestId,
    },
}

#[derive(Clone, Debug)]
pub enum Effect {
    Send {
        to: NodeId,
        payload: Payload,
    },
    ReplyToClient {
        op: OpId,
        reply: ClientReply,
    },
    Timer {
        after_ms: u64,
        timer: Timer,
    },
    /// Jobs wait in the commit queue; commit them soon.
    CommitNeeded,
    /// A batch is written and waits for its sync; finish it (`synced`)
    /// once the disk has synced.
    SyncNeeded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    PutRound(u64),
    GetRound(u64),
    Forward {
        forward: u64,
        request: RequestId,
    },
    /// A peer request with its own timeout (ping, hint delivery).
    Request(RequestId),
}

/// One replica of a key for a request: a primary, or a fallback standing
/// in for `hint_for`, a primary that is down (sloppy quorum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedReplica {
    pub node: NodeId,
    pub hint_for: Option<NodeId>,
}

impl PlannedReplica {
    fn role(&self) -> Role {
        if self.hint_for.is_some() {
            Role::Fallback
        } else {
            Role::Primary
        }
    }
}

pub use ringkv_core::hint::object_key;

/// Reads one object from a node's storage (data only, no hints).
pub fn read_object(
    storage: &MemoryStorage,
    partition: u32,
    bucket: &str,
    key: &[u8],
) -> Result<Option<Object>, String> {
    let stored = storage
        .get(Space::Data(partition), &object_key(bucket, key))
        .map_err(|e| e.to_string())?;
    stored
        .map(|bytes| Object::decode(&bytes).map_err(|e| e.to_string()))
        .transpose()
}

/// Reads the hint a node holds for one key.
pub fn read_hint(
    storage: &MemoryStorage,
    partition: u32,
    bucket: &str,
    key: &[u8],
) -> Result<Option<Hint>, String> {
    let stored = storage
        .get(Space::Hints(partition), &object_key(bucket, key))
        .map_err(|e| e.to_string())?;
    stored
        .map(|bytes| Hint::decode(&bytes))
        .transpose()
        .map_err(|e| e.to_string())
}

/// Every hint record a node's storage holds that is still owed to some
/// primary, in key order.
pub fn scan_hints(storage: &MemoryStorage, partitions: u32) -> Vec<(u32, Vec<u8>, Hint)> {
    let mut hints = Vec::new();
    for partition in 0..partitions {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = storage
                .scan(Space::Hints(partition), after.as_deref(), HINT_PAGE)
                .unwrap_or_default();
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            for (raw_key, bytes) in page {
                if let Ok(hint) = Hint::decode(&bytes)
                    && !hint.targets.is_empty()
                {
                    hints.push((partition, raw_key, hint));
                }
            }
        }
    }
    hints
}

fn storage_durability(mode: DurabilityMode) -> Durability {
    match mode {
        DurabilityMode::Sync => Durability::Sync,
        DurabilityMode::Buffered => Durability::Buffered,
    }
}

fn merge_into(current: Option<Object>, incoming: &Object, mode: ConflictMode) -> Object {
    match current {
        None => incoming.clone(),
        Some(current) => current.merge(incoming, mode),
    }
}

fn bad_request(message: String) -> OpError {
    OpError::BadRequest { message }
}

fn quorum(
    props: &BucketProps,
    field: &'static str,
    requested: Option<u32>,
    n: usize,
) -> Result<usize, OpError> {
    props
        .quorum(field, requested)
        .map(|q| q.min(n))
        .map_err(|e| bad_request(e.to_string()))
}

/// `pr`/`pw`: how many primaries must answer (0 when not asked for).
fn strict_quorum(
    props: &BucketProps,
    field: &'static str,
    requested: Option<u32>,
    n: usize,
) -> Result<usize, OpError> {
    match requested {
        None | Some(0) => Ok(0),
        Some(_) => quorum(props, field, requested, n),
    }
}

#[derive(Clone)]
struct Target {
    partition: u32,
    bucket: String,
    key: Vec<u8>,
}

impl Target {
    fn raw_key(&self) -> Vec<u8> {
        object_key(&self.bucket, &self.key)
    }
}

/// What a put round needs once the coordinator's own write is stored.
struct PutPlan {
    reply_to: Option<ReplyTo>,
    target: Target,
    mode: ConflictMode,
    durability: DurabilityMode,
    plan: Vec<PlannedReplica>,
    mine: Option<PlannedReplica>,
    w: usize,
    pw: usize,
    timeout_ms: u64,
}

enum CommitJob {
    /// The coordinator's write: `Object::update` on its stored object, or
    /// on its hint for the key when it stands in for `hint_for`.
    Coordinate {
        put: PutPlan,
        context: VersionVector,
        new: NewVersion,
        max_siblings: usize,
        hint_for: Option<NodeId>,
        /// The replica id whose dot stamps the write.
        actor: NodeId,
    },
    /// A replica's (or read repair's, or anti-entropy's) `Object::merge`
    /// of an incoming object.
    Merge {
        target: Target,
        incoming: Object,
        conflict: ConflictMode,
        durability: DurabilityMode,
        ack: Option<(NodeId, RequestId)>,
        /// An anti-entropy repair waits for this merge.
        anti_entropy: bool,
    },
    /// A fallback keeps an incoming object as a hint for `hint_for`.
    HintMerge {
        target: Target,
        incoming: Object,
        conflict: ConflictMode,
        durability: DurabilityMode,
        hint_for: NodeId,
        ack: (NodeId, RequestId),
    },
    /// `target` durably acknowledged the hint `sent`: drop it from the
    /// hint's targets (the record when none is left), unless a newer
    /// hinted write changed the hint meanwhile.
    HintDelivered {
        partition: u32,
        raw_key: Vec<u8>,
        target: NodeId,
        sent: Object,
    },
}

impl CommitJob {
    fn space_and_key(&self) -> (Space, Vec<u8>) {
        match self {
            CommitJob::Coordinate { put, hint_for, .. } => {
                let space = match hint_for {
                    Some(_) => Space::Hints(put.target.partition),
                    None => Space::Data(put.target.partition),
                };
                (space, put.target.raw_key())
            }
            CommitJob::Merge { target, .. } => (Space::Data(target.partition), target.raw_key()),
            CommitJob::HintMerge { target, .. } => {
                (Space::Hints(target.partition), target.raw_key())
            }
            CommitJob::HintDelivered {
                partition, raw_key, ..
            } => (Space::Hints(*partition), raw_key.clone()),
        }
    }

    fn durability(&self) -> DurabilityMode {
        match self {
            CommitJob::Coordinate { put, .. } => put.durability,
            CommitJob::Merge { durability, .. } | CommitJob::HintMerge { durability, .. } => {
                *durability
            }
            CommitJob::HintDelivered { .. } => DurabilityMode::Sync,
        }
    }

    /// What to answer when the job cannot run.
    fn failed(self, message: String) -> AfterCommit {
        match self {
            CommitJob::Coordinate { put, .. } => {
                AfterCommit::Reply(put.reply_to, internal(&message))
            }
            CommitJob::Merge {
                anti_entropy: true, ..
            } => AfterCommit::AntiEntropyStored { ok: false },
            CommitJob::Merge { ack, .. } => AfterCommit::Refuse(ack, message),
            CommitJob::HintMerge { ack, .. } => AfterCommit::Refuse(Some(ack), message),
            CommitJob::HintDelivered { .. } => AfterCommit::Nothing,
        }
    }
}

/// The batch's view of one record it touched: its value, and whether a job
/// changed it.
type OverlayEntry = (Option<Vec<u8>>, bool);

/// The change one job makes to its record.
enum Change {
    Put(Vec<u8>),
    Delete,
    Unchanged,
}

/// What to do once a commit is durable (or failed).
enum AfterCommit {
    StartPut {
        put: PutPlan,
        object: Object,
        new_hint: bool,
        /// The client's context and the write's actor, from which the
        /// context returned to the client is computed.
        context_in: VersionVector,
        actor: NodeId,
        /// The coordinator's copy is a data record (not a hint): as the
        /// node's `update_staged`, it goes out once written, before its
        /// sync, when it has one and there are other replicas.
        data: bool,
    },
    /// The coordinator's own copy of a put round's object is synced (or
    /// the sync failed): it counts toward W (PW as a primary).
    LocalSynced {
        round: u64,
        role: Role,
    },
    Reply(Option<ReplyTo>, ClientReply),
    Ack {
        ack: Option<(NodeId, RequestId)>,
        new_hint: bool,
    },
    /// A replica merge that could not run: refuse the request.
    Refuse(Option<(NodeId, RequestId)>, String),
    /// The hint record was deleted.
    HintRemoved {
        partition: u32,
        raw_key: Vec<u8>,
    },
    HintDelivered,
    /// An anti-entropy repair's local merge is durable (or failed).
    AntiEntropyStored {
        ok: bool,
    },
    Nothing,
}

/// A written batch waiting for its sync: what runs once it is durable.
struct Syncing {
    steps: Vec<AfterCommit>,
    /// (partition, raw key, digest) of each data write, for the trees.
    digests: Vec<(u32, Vec<u8>, u64)>,
}

struct PutState {
    reply_to: Option<ReplyTo>,
    round: PutRound,
    context: VersionVector,
    w: usize,
    pw: usize,
    /// Replica requests not answered yet.
    outstanding: usize,
    /// Acknowledgements so far, the coordinator's own included, and how
    /// many of them came from primaries.
    acked: u32,
    primaries_acked: u32,
    /// Set once the round found W (or PW) unreachable: the node then waits
    /// for the answers still out (within the deadline) to report how many
    /// replicas really hold the write.
    unreachable: bool,
}

impl PutState {
    /// The shortfall the node reports in its 503.
    fn shortfall(&self) -> OpError {
        let (got, needed) = if (self.acked as usize) < self.w {
            (self.acked, self.w as u32)
        } else {
            (self.primaries_acked, self.pw as u32)
        };
        OpError::Unavailable { got, needed }
    }
}

struct GetState {
    reply_to: Option<ReplyTo>,
    round: GetRound,
    target: Target,
    mode: ConflictMode,
    durability: DurabilityMode,
    /// Only stale primaries are repaired (fallbacks hand their hints off).
    primaries: Vec<NodeId>,
}

struct ForwardState {
    reply_to: ReplyTo,
    op: ClientOp,
    candidates: Vec<NodeId>,
    next: usize,
    w: usize,
    request: RequestId,
}

enum Pending {
    /// A request of the running anti-entropy pass.
    AntiEntropy,
    PutReplica {
        round: u64,
        role: Role,
    },
    GetReplica {
        round: u64,
        replica: NodeId,
    },
    Forward {
        forward: u64,
    },
    Ping,
    HintDelivery {
        partition: u32,
        raw_key: Vec<u8>,
        target: NodeId,
        sent: Object,
    },
}

pub struct SimNode {
    pub id: NodeId,
    /// Random per process start: the actor of writes this node
    /// coordinates as a primary (the node's `actor`, which it keeps across
    /// clean stops; the simulator's restarts all follow crashes).
    pub incarnation_actor: NodeId,
    /// The actor of writes this node coordinates into its hint store:
    /// random per process start, and replaced whenever a commit job deletes
    /// a hint record (the node's `FallbackActor`).
    fallback_actor: NodeId,
    /// This process's random ids (the node's `rand::random`), forked from
    /// the run's seed at each start.
    rng: SimRng,
    storage: MemoryStorage,
    next_id: u64,
    commit_queue: Vec<CommitJob>,
    /// The batch written and waiting for its sync (the committer thread
    /// commits nothing else meanwhile).
    syncing: Option<Syncing>,
    /// Virtual time of the first Buffered commit not made durable yet.
    unsynced_since_ms: Option<u64>,
    /// Virtual time of the last sync (or of the start).
    last_sync_ms: u64,
    detector: FailureDetector,
    /// What this process did (hints, repairs); the simulator sums them.
    pub stats: SimStats,
    /// The bucket's `n`, capped at the member count: names its trees.
    tree_n: u32,
    anti_entropy: AntiEntropy,
    /// Data writes applied since the simulator last looked (check d).
    applied_writes: Vec<AppliedWrite>,
    /// Hint records this node deleted after handing them off, in this
    /// life or an earlier one (bookkeeping for `stats`, not node state).
    deleted_hints: BTreeSet<(u32, Vec<u8>)>,
    /// Hint records held for other nodes (counted at start, then kept up
    /// to date, as the node's `hints_pending`).
    hints_pending: i64,
    /// Hint deliveries of the current pass still out.
    deliveries_out: usize,
    put_rounds: BTreeMap<u64, PutState>,
    get_rounds: BTreeMap<u64, GetState>,
    forwards: BTreeMap<u64, ForwardState>,
    pending: BTreeMap<RequestId, Pending>,
}

impl SimNode {
    /// A node process starting on `storage`. `incarnation` (0 at first
    /// start, +1 per restart) keeps request and round ids of different
    /// incarnations apart, so an answer to a request of a previous life is
    /// never taken for a new one. `now_ms` is virtual time.
    pub fn new(
        id: NodeId,
        storage: MemoryStorage,
        incarnation: u64,
        now_ms: u64,
        cluster: &Cluster,
        mut rng: SimRng,
    ) -> SimNode {
        let hints_pending = scan_hints(&storage, cluster.layout.partitions()).len() as i64;
        SimNode {
            id,
            incarnation_actor: rng.next_u64().max(1),
            fallback_actor: rng.next_u64().max(1),
            rng,
            stats: SimStats::default(),
            tree_n: cluster.n() as u32,
            anti_entropy: AntiEntropy::rebuilt(&storage, cluster),
            applied_writes: Vec::new(),
            deleted_hints: BTreeSet::new(),
            storage,
            next_id: incarnation << 40,
            commit_queue: Vec::new(),
            syncing: None,
            unsynced_since_ms: None,
            last_sync_ms: now_ms,
            detector: FailureDetector::new(cluster.detector),
            hints_pending,
            deliveries_out: 0,
            put_rounds: BTreeMap::new(),
            get_rounds: BTreeMap::new(),
            forwards: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The data writes applied since the last call (for the clock check).
    pub fn take_applied_writes(&mut self) -> Vec<AppliedWrite> {
        std::mem::take(&mut self.applied_writes)
    }

    /// Takes over the bookkeeping of the process this one replaces (the
    /// simulator's observations, not node state, which a restart loses).
    pub fn carry_over_observations(&mut self, previous: &mut SimNode) {
        self.deleted_hints = std::mem::take(&mut previous.deleted_hints);
    }

    /// The actor whose dot stamps a write this node coordinates (as
    /// `coordinate_put` in the node). A dot must never be issued twice, and
    /// a coordinator counts on from its local copy of the key, so the actor
    /// changes whenever that copy may miss dots the actor already issued:
    /// the incarnation actor for a primary (its copy goes out before its sync,
    /// or has none with buffered durability, so a crash can lose the copy
    /// others hold); a fresh id otherwise, which `apply` replaces with the
    /// fallback actor for a write into the hint store (its hint copy holds
    /// the actor's dots until it is deleted, and deleting one changes the
    /// actor).
    fn write_actor(&mut self, cluster: &Cluster, role: Option<Role>) -> NodeId {
        match role {
            Some(Role::Primary) if cluster.bug == Some(PlantedBug::PrimaryActorIsNodeId) => self.id,
            Some(Role::Primary) => self.incarnation_actor,
            _ if cluster.bug == Some(PlantedBug::ReuseFallbackActor) => self.id,
            _ => self.rng.next_u64().max(1),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Rounds and forwards still waiting (for tests and the trace).
    pub fn in_flight(&self) -> usize {
        self.put_rounds.len() + self.get_rounds.len() + self.forwards.len()
    }

    pub fn hints_pending(&self) -> i64 {
        self.hints_pending.max(0)
    }

    // ------------------------------------------------------------ liveness

    /// Whether this node sends requests to `peer` (itself: always).
    pub fn usable(&self, peer: NodeId, now_ms: u64) -> bool {
        peer == self.id || self.detector.view(peer, now_ms).liveness.is_usable()
    }

    /// Feeds the failure detector with the outcome of a request.
    fn observe(
        &mut self,
        peer: NodeId,
        response: &Result<PeerResponse, TransportError>,
        now_ms: u64,
    ) {
        match response {
            Ok(_) => self.detector.heartbeat(peer, now_ms),
            Err(TransportError::ConnectionRefused) => self.detector.unreachable(peer, now_ms),
        }
    }

    /// The replicas of a key for a request now: the primaries that are not
    /// down, each down one replaced by the next usable fallback.
    pub fn replica_plan(
        &self,
        cluster: &Cluster,
        partition: u32,
        now_ms: u64,
    ) -> Vec<PlannedReplica> {
        let preference = cluster.layout.preference_list(partition, cluster.n());
        let mut fallbacks = preference
            .fallbacks
            .iter()
            .copied()
            .filter(|f| self.usable(*f, now_ms));
        let mut plan = Vec::with_capacity(preference.primaries.len());
        for primary in preference.primaries {
            if self.usable(primary, now_ms) {
                plan.push(PlannedReplica {
                    node: primary,
                    hint_for: None,
                });
            } else if let Some(fallback) = fallbacks.next() {
                plan.push(PlannedReplica {
                    node: fallback,
                    hint_for: Some(primary),
                });
            }
        }
        plan
    }

    /// The local copy of a key: the replica's object merged with any hint
    /// this node holds for it.
    fn read_local(&self, target: &Target, mode: ConflictMode) -> Result<Option<Object>, String> {
        let data = read_object(&self.storage, target.partition, &target.bucket, &target.key)?;
        let hint = read_hint(&self.storage, target.partition, &target.bucket, &target.key)?;
        Ok(match (data, hint) {
            (None, None) => None,
            (Some(object), None) => Some(object),
            (None, Some(hint)) => Some(hint.object),
            (Some(object), Some(hint)) => Some(object.merge(&hint.object, mode)),
        })
    }

    // ------------------------------------------------------------ periodic tasks

    /// The heartbeat loop's tick: pings every other member.
    pub fn heartbeat_tick(&mut self, cluster: &Cluster, out: &mut Vec<Effect>) {
        let me = self.id;
        for peer in cluster.ids.iter().copied().filter(|&p| p != me) {
            let id = self.fresh_id();
            self.pending.insert(id, Pending::Ping);
            out.push(Effect::Send {
                to: peer,
                payload: Payload::Request {
                    id,
                    request: PeerRequest::Ping { from: self.id },
                },
            });
            out.push(Effect::Timer {
                after_ms: cluster.heartbeat_interval_ms * 4,
                timer: Timer::Request(id),
            });
        }
    }

    /// The hint delivery loop's tick: hands every hint off to its targets
    /// that are usable, within the per-pass budget. A pass starts only once
    /// the previous one is over (the node's loop awaits each delivery).
    pub fn hint_delivery_tick(&mut self, cluster: &Cluster, now_ms: u64, out: &mut Vec<Effect>) {
        if self.hints_pending() == 0
            || self.deliveries_out > 0
            || cluster.bug == Some(PlantedBug::NoBackgroundRepair)
        {
            return;
        }
        let budget = cluster.hint_delivery_per_second.div_ceil(2).max(1);
        let mut delivered = 0;
        for (partition, raw_key, hint) in scan_hints(&self.storage, cluster.layout.partitions()) {
            let Some((bucket, key)) = split_object_key(&raw_key) else {
                continue;
            };
            for target in hint.targets.iter().copied() {
                if delivered >= budget {
                    return;
                }
                if !self.usable(target, now_ms) {
                    continue;
                }
                delivered += 1;
                let id = self.fresh_id();
                self.pending.insert(
                    id,
                    Pending::HintDelivery {
                        partition,
                        raw_key: raw_key.clone(),
                        target,
                        sent: hint.object.clone(),
                    },
                );
                self.deliveries_out += 1;
                out.push(Effect::Send {
                    to: target,
                    payload: Payload::Request {
                        id,
                        request: PeerRequest::ReplicaPut {
                            bucket: bucket.clone(),
                            key: key.clone(),
                            object: hint.object.encode(),
                            conflict: cluster.props.conflict,
                            durability: DurabilityMode::Sync,
                        },
                    },
                });
                out.push(Effect::Timer {
                    after_ms: cluster.node_request_timeout_ms,
                    timer: Timer::Request(id),
                });
            }
        }
    }

    // ------------------------------------------------------------ client operations

    /// Runs a client operation (`Node::execute`). `may_forward`: a put that
    /// lands on a node that is not a replica goes to one.
    pub fn execute(
        &mut self,
        cluster: &Cluster,
        now_ms: u64,
        op: ClientOp,
        reply_to: ReplyTo,
        may_forward: bool,
        out: &mut Vec<Effect>,
    ) {
        if let Err(e) = validate_bucket_name(op.bucket()).and(validate_key(op.key())) {
            let reply = ClientReply::Failed(bad_request(e.to_string()));
            reply_with(Some(reply_to), reply, out);
            return;
        }
        match op {
            ClientOp::Get {
                bucket,
                key,
                r,
                timeout_ms,
                ..
            } => {
                let get = GetRequest {
                    bucket,
                    key,
                    r,
                    timeout_ms,
                };
                self.coordinate_get(cluster, now_ms, reply_to, get, out)
            }
            put @ ClientOp::Put { .. } => {
                self.coordinate_put(cluster, now_ms, put, reply_to, may_forward, out)
            }
            // Expiry is not modelled: the workload never asks for it.
            ClientOp::PutWithTtl { .. } => {
                let reply = ClientReply::Failed(bad_request("TTLs are not simulated".into()));
                reply_with(Some(reply_to), reply, out);
            }
        }
    }

    fn coordinate_put(
        &mut self,
        cluster: &Cluster,
        now_ms: u64,
        op: ClientOp,
        reply_to: ReplyTo,
        may_forward: bool,
        out: &mut Vec<Effect>,
    ) {
        let ClientOp::Put {
            bucket,
            key,
            value,
            content_type,
            context,
            w,
            pw,
            timeout_ms,
        } = op.clone()
        else {
            unreachable!("coordinate_put is called with puts only");
        };
        let n = cluster.n();
        let (w, pw) = match (
            quorum(&cluster.props, "w", w, n),
            strict_quorum(&cluster.props, "pw", pw, n),
        ) {
            (Ok(w), Ok(pw)) => (w.max(pw), pw),
            (Err(e), _) | (_, Err(e)) => {
                return reply_with(Some(reply_to), ClientReply::Failed(e), out);
            }
        };
        let partition = cluster.partition(&bucket, &key);
        let plan = self.replica_plan(cluster, partition, now_ms);
        let mine = plan.iter().find(|r| r.node == self.id).copied();
        if mine.is_none() && may_forward {
            let candidates = plan.iter().map(|r| r.node).collect();
            self.start_forward(op, candidates, w, reply_to, out);
            return;
        }
        // Not a replica by this node's view (a forwarded request, views
        // differ): keep the write as a hint for the key's first primary.
        let first_primary = cluster
            .layout
            .preference_list(partition, 1)
            .primaries
            .first()
            .copied();
        let hint_for = match mine {
            Some(m) => m.hint_for,
            None => first_primary.filter(|p| *p != self.id),
        };
        let actor = self.write_actor(cluster, mine.map(|m| m.role()));
        let new = NewVersion {
            value,
            content_type,
            now_ms,
            expires_ms: None,
        };
        let (mode, max_siblings) = (cluster.props.conflict, cluster.props.max_siblings as usize);
        let target = Target {
            partition,
            bucket,
            key,
        };
        let mut reply_to = Some(reply_to);
        if cluster.bug == Some(PlantedBug::AckBeforeQuorum) {
            // The bug: answer with the context the write will probably get,
            // before it is durable anywhere.
            let current = read_object(&self.storage, partition, &target.bucket, &target.key)
                .ok()
                .flatten();
            if let Ok(object) = Object::update(
                current.as_ref(),
                &context,
                new.clone(),
                actor,
                mode,
                max_siblings,
            ) {
                let reply = ClientReply::Written {
                    context: written_context(&object, context.clone(), actor),
                };
                reply_with(reply_to.take(), reply, out);
            }
        }
        let put = PutPlan {
            reply_to,
            target,
            mode,
            durability: cluster.durability,
            plan,
            mine,
            w,
            pw,
            timeout_ms,
        };
        self.enqueue(
            CommitJob::Coordinate {
                put,
                context,
                new,
                max_siblings,
                hint_for,
                actor,
            },
            out,
        );
    }

    fn start_forward(
        &mut self,
        op: ClientOp,
        candidates: Vec<NodeId>,
        w: usize,
        reply_to: ReplyTo,
        out: &mut Vec<Effect>,
    ) {
        let forward = self.fresh_id();
        self.forwards.insert(
            forward,
            ForwardState {
                reply_to,
                op,
                candidates,
                next: 0,
                w,
                request: 0,
            },
        );
        self.forward_to_next(forward, out);
    }

    /// Sends the forwarded put to the next candidate, or answers
    /// unavailable when none is left.
    fn forward_to_next(&mut self, forward: u64, out: &mut Vec<Effect>) {
        let request = self.fresh_id();
        let Some(state) = self.forwards.get_mut(&forward) else {
            return;
        };
        let Some(&to) = state.candidates.get(state.next) else {
            let state = self.forwards.remove(&forward).expect("present");
            let reply = ClientReply::Failed(OpError::Unavailable {
                got: 0,
                needed: state.w as u32,
            });
            return reply_with(Some(state.reply_to), reply, out);
        };
        state.next += 1;
        state.request = request;
        let timeout_ms = state.op.timeout_ms() + FORWARD_GRACE_MS;
        out.push(Effect::Send {
            to,
            payload: Payload::Request {
                id: request,
                request: PeerRequest::Coordinate(state.op.clone()),
            },
        });
        out.push(Effect::Timer {
            after_ms: timeout_ms,
            timer: Timer::Forward { forward, request },
        });
        self.pending.insert(request, Pending::Forward { forward });
    }

    fn forward_answered(
        &mut self,
        forward: u64,
        response: Result<PeerResponse, TransportError>,
        out: &mut Vec<Effect>,
    ) {
        let reply = match response {
            Ok(PeerResponse::Coordinated(reply)) => reply,
            Ok(PeerResponse::Refused { message }) => {
                ClientReply::Failed(OpError::Internal { message })
            }
            // An unexpected answer or an unreachable node: try the next.
            Ok(_) | Err(TransportError::ConnectionRefused) => {
                return self.forward_to_next(forward, out);
            }
        };
        if let Some(state) = self.forwards.remove(&forward) {
            reply_with(Some(state.reply_to), reply, out);
        }
    }

    fn coordinate_get(
        &mut self,
        cluster: &Cluster,
        now_ms: u64,
        reply_to: ReplyTo,
        get: GetRequest,
        out: &mut Vec<Effect>,
    ) {
        let r = match quorum(&cluster.props, "r", get.r, cluster.n()) {
            Ok(r) => r,
            Err(e) => return reply_with(Some(reply_to), ClientReply::Failed(e), out),
        };
        let target = Target {
            partition: cluster.partition(&get.bucket, &get.key),
            bucket: get.bucket,
            key: get.key,
        };
        let plan = self.replica_plan(cluster, target.partition, now_ms);
        let mode = cluster.props.conflict;
        let asked: Vec<NodeId> = plan.iter().map(|r| r.node).collect();
        let primaries = plan
            .iter()
            .filter(|r| r.hint_for.is_none())
            .map(|r| r.node)
            .collect();
        let round_id = self.fresh_id();
        let me = self.id;
        for &replica in asked.iter().filter(|&&a| a != me) {
            let id = self.fresh_id();
            self.pending.insert(
                id,
                Pending::GetReplica {
                    round: round_id,
                    replica,
                },
            );
            out.push(Effect::Send {
                to: replica,
                payload: Payload::Request {
                    id,
                    request: PeerRequest::ReplicaGet {
                        bucket: target.bucket.clone(),
                        key: target.key.clone(),
                    },
                },
            });
        }
        let local = asked.contains(&me).then(|| self.read_local(&target, mode));
        let mut round = GetRound::new(r, asked, mode);
        let decision = round.start();
        self.get_rounds.insert(
            round_id,
            GetState {
                reply_to: Some(reply_to),
                round,
                target,
                mode,
                durability: cluster.durability,
                primaries,
            },
        );
        out.push(Effect::Timer {
            after_ms: get.timeout_ms,
            timer: Timer::GetRound(round_id),
        });
        self.get_progress(round_id, decision, out);
        if let Some(local) = local {
            let decision = match self.get_rounds.get_mut(&round_id) {
                Some(state) => match local {
                    Ok(object) => state.round.replied(me, object),
                    Err(_) => state.round.failed(me),
                },
                None => None,
            };
            self.get_progress(round_id, decision, out);
        }
    }

    /// Answers the client at the first decision; once every replica
    /// answered, repairs the stale primaries and forgets the round.
    fn get_progress(
        &mut self,
        round_id: u64,
        decision: Option<Quorum<Option<Object>>>,
        out: &mut Vec<Effect>,
    ) {
        let Some(state) = self.get_rounds.get_mut(&round_id) else {
            return;
        };
        if let Some(decision) = decision {
            reply_with(state.reply_to.take(), get_reply(decision), out);
        }
        if state.round.is_complete() {
            let state = self.get_rounds.remove(&round_id).expect("present");
            self.forget_requests_of(round_id);
            self.read_repair(state, out);
        }
    }

    /// Sends the merged object to the stale primaries (fallbacks hand
    /// their hints off on their own).
    fn read_repair(&mut self, state: GetState, out: &mut Vec<Effect>) {
        let stale = state.round.stale_replicas();
        let Some(merged) = state.round.merged() else {
            return;
        };
        for replica in stale.into_iter().filter(|r| state.primaries.contains(r)) {
            self.stats.read_repairs += 1;
            if replica == self.id {
                self.enqueue(
                    CommitJob::Merge {
                        target: state.target.clone(),
                        incoming: merged.clone(),
                        conflict: state.mode,
                        durability: state.durability,
                        ack: None,
                        anti_entropy: false,
                    },
                    out,
                );
            } else {
                // Fire and forget: the answer finds no pending request.
                let id = self.fresh_id();
                out.push(Effect::Send {
                    to: replica,
                    payload: Payload::Request {
                        id,
                        request: PeerRequest::ReplicaPut {
                            bucket: state.target.bucket.clone(),
                            key: state.target.key.clone(),
                            object: merged.encode(),
                            conflict: state.mode,
                            durability: state.durability,
                        },
                    },
                });
            }
        }
    }

    // ------------------------------------------------------------ commits

    fn enqueue(&mut self, job: CommitJob, out: &mut Vec<Effect>) {
        // As the node's store: a data write names its tree when submitted.
        if let (Space::Data(partition), _) = job.space_and_key() {
            self.anti_entropy.tree(partition, self.tree_n);
        }
        self.commit_queue.push(job);
        out.push(Effect::CommitNeeded);
    }

    /// Whether jobs wait for a commit.
    pub fn has_queued_writes(&self) -> bool {
        !self.commit_queue.is_empty()
    }

    /// When the background sync of buffered writes is due, if any is
    /// (the group committer's `sync_interval`).
    pub fn background_sync_due(&self, interval_ms: u64) -> Option<u64> {
        self.unsynced_since_ms
            .map(|_| self.last_sync_ms + interval_ms)
    }

    /// Since when (virtual time) buffered writes wait for a sync, if any
    /// do: a crash now loses what was committed since then.
    pub fn unsynced_since_ms(&self) -> Option<u64> {
        self.unsynced_since_ms
    }

    /// The committer's background sync: makes buffered writes durable.
    pub fn background_sync(&mut self, now_ms: u64) {
        if self.storage.sync().is_ok() {
            self.unsynced_since_ms = None;
        }
        self.last_sync_ms = now_ms;
    }

    /// One group commit (`now_ms`: virtual time), as the node's group
    /// committer: runs every queued job in order against the stored
    /// records and writes the batch, visible to reads but unsynced. Then,
    /// as `Job::written`, a coordinator's data write goes out to the other
    /// replicas; the rest waits for the sync (`synced`, after
    /// `Effect::SyncNeeded`) when a job asked for one, else runs now.
    pub fn commit(&mut self, cluster: &Cluster, now_ms: u64, out: &mut Vec<Effect>) {
        if self.syncing.is_some() {
            // The committer is busy with a sync; `synced` asks again.
            return;
        }
        let jobs = std::mem::take(&mut self.commit_queue);
        if jobs.is_empty() {
            return;
        }
        let mut overlay: BTreeMap<(Space, Vec<u8>), OverlayEntry> = BTreeMap::new();
        let mut after = Vec::with_capacity(jobs.len());
        let mut durability = Durability::Buffered;
        // Data writes in commit order: for the Merkle trees (the node's
        // `UpdateJob::done`) and for the clock check.
        let mut digests: Vec<(u32, Vec<u8>, u64)> = Vec::new();
        let mut applied_writes = Vec::new();
        for job in jobs {
            if storage_durability(job.durability()) == Durability::Sync {
                durability = Durability::Sync;
            }
            let location = job.space_and_key();
            if !overlay.contains_key(&location) {
                match self.storage.get(location.0, &location.1) {
                    Ok(value) => {
                        overlay.insert(location.clone(), (value, false));
                    }
                    Err(e) => {
                        after.push((job.failed(e.to_string()), false));
                        continue;
                    }
                }
            }
            let entry = overlay.get_mut(&location).expect("inserted above");
            let (change, next) = self.apply(cluster, job, entry.0.as_deref());
            if let (Space::Hints(_), Change::Delete) = (location.0, &change)
                && cluster.bug != Some(PlantedBug::FallbackActorOutlivesHint)
            {
                self.fallback_actor = self.rng.next_u64().max(1);
            }
            if let (Space::Data(partition), Change::Put(value)) = (location.0, &change)
                && let Ok(written) = Object::decode(value)
            {
                let before = entry
                    .0
                    .as_deref()
                    .and_then(|bytes| Object::decode(bytes).ok())
                    .map(|object| object.clock().clone());
                applied_writes.push(AppliedWrite {
                    partition,
                    raw_key: location.1.clone(),
                    before,
                    after: written.clock().clone(),
                });
                digests.push((partition, location.1.clone(), written.digest()));
            }
            match change {
                Change::Put(value) => *entry = (Some(value), true),
                Change::Delete => *entry = (None, true),
                Change::Unchanged => {}
            }
            after.push((next, true));
        }
        let mut batch = WriteBatch::new();
        for ((space, key), (value, changed)) in overlay {
            if changed {
                match value {
                    Some(value) => batch.put(space, key, value),
                    None => batch.delete(space, key),
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = self.storage.write(&batch, Durability::Buffered) {
                for (step, _) in after {
                    self.after_failed_commit(cluster, step, &e.to_string(), out);
                }
                return;
            }
            self.unsynced_since_ms.get_or_insert(now_ms);
        }
        self.applied_writes.extend(applied_writes);
        let sync = durability == Durability::Sync;
        let mut steps = Vec::with_capacity(after.len());
        for (step, was_run) in after {
            match step {
                AfterCommit::StartPut {
                    put,
                    object,
                    new_hint,
                    context_in,
                    actor,
                    data: true,
                } if put.durability == DurabilityMode::Sync
                    && put.plan.iter().any(|r| r.node != self.id) =>
                {
                    let role = put.mine.map(|m| m.role());
                    let round = self
                        .start_put(cluster, put, object, new_hint, context_in, actor, true, out);
                    if let Some(role) = role {
                        steps.push(AfterCommit::LocalSynced { round, role });
                    }
                }
                // An answer that waits for nothing (the node's
                // `update_staged` returns the update's error at once).
                step @ AfterCommit::Reply(..) if was_run => self.after_commit(cluster, step, out),
                step => steps.push(step),
            }
        }
        let syncing = Syncing { steps, digests };
        if sync {
            self.syncing = Some(syncing);
            out.push(Effect::SyncNeeded);
        } else {
            self.finish_batch(cluster, syncing, Ok(()), out);
        }
    }

    /// The sync of the batch `commit` wrote is done (`now_ms`: virtual
    /// time): as the group committer, syncs if anything is unsynced, then
    /// runs what waited for it, and takes the next batch.
    pub fn synced(&mut self, cluster: &Cluster, now_ms: u64, out: &mut Vec<Effect>) {
        let Some(syncing) = self.syncing.take() else {
            return;
        };
        let result = if self.unsynced_since_ms.is_some() {
            self.storage.sync()
        } else {
            Ok(())
        };
        if result.is_ok() {
            self.unsynced_since_ms = None;
            self.last_sync_ms = now_ms;
        }
        self.finish_batch(cluster, syncing, result, out);
        if !self.commit_queue.is_empty() {
            out.push(Effect::CommitNeeded);
        }
    }

    /// The end of a batch (as the jobs' `done`): trees learn the digests
    /// of what is durable, and what waited for the batch runs.
    fn finish_batch(
        &mut self,
        cluster: &Cluster,
        syncing: Syncing,
        result: Result<(), StorageError>,
        out: &mut Vec<Effect>,
    ) {
        if result.is_ok() {
            for (partition, raw_key, digest) in syncing.digests {
                self.anti_entropy
                    .tree(partition, self.tree_n)
                    .insert(&raw_key, digest);
            }
        }
        for step in syncing.steps {
            match &result {
                Ok(()) => self.after_commit(cluster, step, out),
                Err(e) => self.after_failed_commit(cluster, step, &e.to_string(), out),
            }
        }
    }

    /// One job's read-modify-write of its record.
    fn apply(
        &self,
        cluster: &Cluster,
        job: CommitJob,
        current: Option<&[u8]>,
    ) -> (Change, AfterCommit) {
        match job {
            CommitJob::Coordinate {
                put,
                context,
                new,
                max_siblings,
                hint_for,
                actor,
            } => {
                let (current_object, current_hint) = match hint_for {
                    None => match current.map(Object::decode).transpose() {
                        Ok(object) => (object, None),
                        Err(e) => return (Change::Unchanged, job_failed(put, e.to_string())),
                    },
                    Some(_) => match current.map(Hint::decode).transpose() {
                        Ok(hint) => (hint.as_ref().map(|h| h.object.clone()), hint),
                        Err(e) => return (Change::Unchanged, job_failed(put, e.to_string())),
                    },
                };
                let actor = match hint_for {
                    Some(_) if cluster.bug != Some(PlantedBug::ReuseFallbackActor) => {
                        self.fallback_actor
                    }
                    _ => actor,
                };
                let updated = Object::update(
                    current_object.as_ref(),
                    &context,
                    new,
                    actor,
                    put.mode,
                    max_siblings,
                );
                match updated {
                    Ok(object) => {
                        let (value, new_hint) = match hint_for {
                            None => (object.encode(), false),
                            Some(hint_for) => {
                                let new_hint =
                                    current_hint.as_ref().is_none_or(|h| h.targets.is_empty());
                                let mut targets =
                                    current_hint.map(|h| h.targets).unwrap_or_default();
                                targets.insert(hint_for);
                                let hint = Hint {
                                    targets,
                                    object: object.clone(),
                                };
                                (hint.encode(), new_hint)
                            }
                        };
                        let next = AfterCommit::StartPut {
                            put,
                            object,
                            new_hint,
                            context_in: context,
                            actor,
                            data: hint_for.is_none(),
                        };
                        (Change::Put(value), next)
                    }
                    Err(UpdateError::TooManySiblings { count, max }) => {
                        let reply = ClientReply::Failed(OpError::TooManySiblings {
                            count: count as u32,
                            max: max as u32,
                        });
                        (Change::Unchanged, AfterCommit::Reply(put.reply_to, reply))
                    }
                    Err(e) => {
                        let reply = ClientReply::Failed(bad_request(e.to_string()));
                        (Change::Unchanged, AfterCommit::Reply(put.reply_to, reply))
                    }
                }
            }
            CommitJob::Merge {
                incoming,
                conflict,
                ack,
                anti_entropy,
                ..
            } => {
                let current = match current.map(Object::decode).transpose() {
                    Ok(current) => current,
                    Err(_) if anti_entropy => {
                        return (
                            Change::Unchanged,
                            AfterCommit::AntiEntropyStored { ok: false },
                        );
                    }
                    Err(e) => return (Change::Unchanged, AfterCommit::Refuse(ack, e.to_string())),
                };
                let merged = match cluster.bug {
                    Some(bug) => planted::replica_merge(bug, current, incoming, conflict),
                    None => merge_into(current, &incoming, conflict),
                };
                let next = if anti_entropy {
                    AfterCommit::AntiEntropyStored { ok: true }
                } else {
                    AfterCommit::Ack {
                        ack,
                        new_hint: false,
                    }
                };
                (Change::Put(merged.encode()), next)
            }
            CommitJob::HintMerge {
                incoming,
                conflict,
                hint_for,
                ack,
                ..
            } => {
                let current = match current.map(Hint::decode).transpose() {
                    Ok(current) => current,
                    Err(e) => {
                        return (
                            Change::Unchanged,
                            AfterCommit::Refuse(Some(ack), e.to_string()),
                        );
                    }
                };
                let new_hint = current.as_ref().is_none_or(|h| h.targets.is_empty());
                let hint = match current {
                    None => Hint {
                        targets: [hint_for].into_iter().collect(),
                        object: incoming,
                    },
                    Some(mut hint) => {
                        hint.targets.insert(hint_for);
                        hint.object = hint.object.merge(&incoming, conflict);
                        hint
                    }
                };
                let next = AfterCommit::Ack {
                    ack: Some(ack),
                    new_hint,
                };
                (Change::Put(hint.encode()), next)
            }
            CommitJob::HintDelivered {
                target,
                sent,
                partition,
                raw_key,
            } => {
                match current.map(Hint::decode).transpose() {
                    // A newer hinted write arrived meanwhile: keep the target.
                    Ok(Some(hint)) if hint.object != sent => {
                        (Change::Unchanged, AfterCommit::Nothing)
                    }
                    Ok(Some(mut hint)) => {
                        hint.targets.remove(&target);
                        if hint.targets.is_empty() {
                            let next = AfterCommit::HintRemoved { partition, raw_key };
                            (Change::Delete, next)
                        } else {
                            (Change::Put(hint.encode()), AfterCommit::HintDelivered)
                        }
                    }
                    Ok(None) | Err(_) => (Change::Unchanged, AfterCommit::Nothing),
                }
            }
        }
    }

    fn after_commit(&mut self, cluster: &Cluster, step: AfterCommit, out: &mut Vec<Effect>) {
        match step {
            AfterCommit::StartPut {
                put,
                object,
                new_hint,
                context_in,
                actor,
                ..
            } => {
                self.start_put(
                    cluster, put, object, new_hint, context_in, actor, false, out,
                );
            }
            AfterCommit::LocalSynced { round, role } => self.put_answered(round, role, true, out),
            AfterCommit::Reply(reply_to, reply) => reply_with(reply_to, reply, out),
            AfterCommit::Ack { ack, new_hint } => {
                if new_hint {
                    self.hints_pending += 1;
                }
                if let Some((to, id)) = ack {
                    out.push(Effect::Send {
                        to,
                        payload: Payload::Response {
                            id,
                            response: Ok(PeerResponse::ReplicaPutDone),
                        },
                    });
                }
            }
            AfterCommit::Refuse(ack, message) => self.refuse(ack, &message, out),
            AfterCommit::HintRemoved { partition, raw_key } => {
                self.hints_pending -= 1;
                self.stats.hints_delivered += 1;
                self.stats.hint_records_deleted += 1;
                self.deleted_hints.insert((partition, raw_key));
            }
            AfterCommit::HintDelivered => self.stats.hints_delivered += 1,
            AfterCommit::AntiEntropyStored { ok } => self.anti_entropy_stored(cluster, ok, out),
            AfterCommit::Nothing => {}
        }
    }

    fn after_failed_commit(
        &mut self,
        cluster: &Cluster,
        step: AfterCommit,
        error: &str,
        out: &mut Vec<Effect>,
    ) {
        match step {
            AfterCommit::AntiEntropyStored { .. } => self.anti_entropy_stored(cluster, false, out),
            AfterCommit::StartPut { put, .. } => reply_with(put.reply_to, internal(error), out),
            AfterCommit::LocalSynced { round, role } => self.put_answered(round, role, false, out),
            AfterCommit::Reply(reply_to, reply) => reply_with(reply_to, reply, out),
            AfterCommit::Ack { ack, .. } | AfterCommit::Refuse(ack, _) => {
                self.refuse(ack, error, out)
            }
            AfterCommit::HintRemoved { .. } | AfterCommit::HintDelivered | AfterCommit::Nothing => {
            }
        }
    }

    fn refuse(&self, ack: Option<(NodeId, RequestId)>, message: &str, out: &mut Vec<Effect>) {
        if let Some((to, id)) = ack {
            out.push(Effect::Send {
                to,
                payload: Payload::Response {
                    id,
                    response: Ok(PeerResponse::Refused {
                        message: message.to_string(),
                    }),
                },
            });
        }
    }

    /// The coordinator's own copy is written: counts a fallback write and
    /// starts the put round with the context handed back to the client.
    /// Returns the round's id.
    #[allow(clippy::too_many_arguments)]
    fn start_put(
        &mut self,
        cluster: &Cluster,
        put: PutPlan,
        object: Object,
        new_hint: bool,
        context_in: VersionVector,
        actor: NodeId,
        local_pending: bool,
        out: &mut Vec<Effect>,
    ) -> u64 {
        if new_hint {
            self.hints_pending += 1;
        }
        if put.mine.is_none_or(|m| m.hint_for.is_some()) {
            self.stats.fallback_writes += 1;
            let location = (put.target.partition, put.target.raw_key());
            if self.deleted_hints.contains(&location) {
                self.stats.fallback_writes_after_hint_deletion += 1;
            }
        }
        // The context handed back covers the client's context and this
        // write, not concurrent siblings the client never saw.
        let context = if cluster.bug == Some(PlantedBug::WholeClockContext) {
            object.clock().clone()
        } else {
            written_context(&object, context_in, actor)
        };
        self.start_put_round(put, object, context, local_pending, out)
    }

    /// The coordinator's own copy is written: sends the object to the other
    /// replicas of the plan (`ReplicaPut` to primaries, `HintPut` to
    /// fallbacks) and starts the quorum round. `local_pending`: that copy
    /// counts only once synced (`AfterCommit::LocalSynced`); otherwise it
    /// already is. Returns the round's id.
    fn start_put_round(
        &mut self,
        put: PutPlan,
        object: Object,
        context: VersionVector,
        local_pending: bool,
        out: &mut Vec<Effect>,
    ) -> u64 {
        let remotes: Vec<PlannedReplica> = put
            .plan
            .iter()
            .copied()
            .filter(|r| r.node != self.id)
            .collect();
        let mut roles: Vec<Role> = remotes.iter().map(PlannedReplica::role).collect();
        let mut local = put.mine.map(|m| m.role());
        if local_pending && let Some(role) = local.take() {
            roles.push(role);
        }
        let mut round = PutRound::with_roles(put.w, put.pw, local, &roles);
        let round_id = self.fresh_id();
        let encoded = object.encode();
        for replica in &remotes {
            let id = self.fresh_id();
            self.pending.insert(
                id,
                Pending::PutReplica {
                    round: round_id,
                    role: replica.role(),
                },
            );
            let (bucket, key) = (put.target.bucket.clone(), put.target.key.clone());
            let request = match replica.hint_for {
                None => PeerRequest::ReplicaPut {
                    bucket,
                    key,
                    object: encoded.clone(),
                    conflict: put.mode,
                    durability: put.durability,
                },
                Some(hint_for) => PeerRequest::HintPut {
                    bucket,
                    key,
                    object: encoded.clone(),
                    conflict: put.mode,
                    durability: put.durability,
                    hint_for,
                },
            };
            out.push(Effect::Send {
                to: replica.node,
                payload: Payload::Request { id, request },
            });
        }
        let decision = round.start();
        self.put_rounds.insert(
            round_id,
            PutState {
                reply_to: put.reply_to,
                round,
                context,
                w: put.w,
                pw: put.pw,
                outstanding: roles.len(),
                acked: u32::from(local.is_some()),
                primaries_acked: u32::from(local == Some(Role::Primary)),
                unreachable: false,
            },
        );
        out.push(Effect::Timer {
            after_ms: put.timeout_ms,
            timer: Timer::PutRound(round_id),
        });
        if let Some(decision) = decision {
            self.finish_put(round_id, decision, out);
        }
        round_id
    }

    /// Acts on a put round's decision. An unreachable quorum is answered
    /// only once the replicas still out have answered (or the deadline
    /// fired), with the true count of replicas holding the write.
    fn finish_put(&mut self, round_id: u64, decision: Quorum<()>, out: &mut Vec<Effect>) {
        let Some(state) = self.put_rounds.get_mut(&round_id) else {
            return;
        };
        let reply = match decision {
            Quorum::Reached(()) => ClientReply::Written {
                context: state.context.clone(),
            },
            Quorum::Unreachable { .. } if state.outstanding > 0 => {
                state.unreachable = true;
                return;
            }
            Quorum::Unreachable { .. } => ClientReply::Failed(state.shortfall()),
            Quorum::TimedOut { got, needed } => {
                ClientReply::Failed(OpError::Unavailable { got, needed })
            }
        };
        self.end_put(round_id, reply, out);
    }

    fn end_put(&mut self, round_id: u64, reply: ClientReply, out: &mut Vec<Effect>) {
        if let Some(state) = self.put_rounds.remove(&round_id) {
            self.forget_requests_of(round_id);
            reply_with(state.reply_to, reply, out);
        }
    }

    /// A replica answered a put round.
    fn put_answered(&mut self, round_id: u64, role: Role, ok: bool, out: &mut Vec<Effect>) {
        let Some(state) = self.put_rounds.get_mut(&round_id) else {
            return;
        };
        state.outstanding = state.outstanding.saturating_sub(1);
        if ok {
            state.acked += 1;
            state.primaries_acked += u32::from(role == Role::Primary);
        }
        if state.unreachable {
            if state.outstanding == 0 {
                let reply = ClientReply::Failed(state.shortfall());
                self.end_put(round_id, reply, out);
            }
            return;
        }
        let decision = if ok {
            state.round.acked_by(role)
        } else {
            state.round.failed_by(role)
        };
        if let Some(decision) = decision {
            self.finish_put(round_id, decision, out);
        }
    }

    /// Drops the pending requests of a finished round: late answers are
    /// then ignored, as the node ignores them once the round decided.
    fn forget_requests_of(&mut self, round_id: u64) {
        self.pending.retain(|_, pending| match pending {
            Pending::PutReplica { round, .. } | Pending::GetReplica { round, .. } => {
                *round != round_id
            }
            _ => true,
        });
    }

    // ------------------------------------------------------------ messages and timers

    pub fn receive(
        &mut self,
        cluster: &Cluster,
        now_ms: u64,
        from: NodeId,
        payload: Payload,
        out: &mut Vec<Effect>,
    ) {
        match payload {
            Payload::Request { id, request } => {
                self.handle_peer(cluster, now_ms, from, id, request, out)
            }
            Payload::Response { id, response } => {
                // Unknown id: a duplicate, an answer to a finished round or
                // to a previous incarnation, or to a fire-and-forget repair.
                let Some(pending) = self.pending.remove(&id) else {
                    return;
                };
                self.observe(from, &response, now_ms);
                match pending {
                    Pending::PutReplica { round, role } => {
                        let ok = matches!(response, Ok(PeerResponse::ReplicaPutDone));
                        self.put_answered(round, role, ok, out);
                    }
                    Pending::GetReplica { round, replica } => {
                        let reply = match response {
                            Ok(PeerResponse::ReplicaGetDone { object: None }) => Some(None),
                            Ok(PeerResponse::ReplicaGetDone {
                                object: Some(bytes),
                            }) => Object::decode(&bytes).ok().map(Some),
                            _ => None,
                        };
                        let decision =
                            self.get_rounds
                                .get_mut(&round)
                                .and_then(|state| match reply {
                                    Some(object) => state.round.replied(replica, object),
                                    None => state.round.failed(replica),
                                });
                        self.get_progress(round, decision, out);
                    }
                    Pending::Forward { forward } => self.forward_answered(forward, response, out),
                    Pending::Ping => {}
                    Pending::AntiEntropy => self.anti_entropy_answered(cluster, id, response, out),
                    Pending::HintDelivery {
                        partition,
                        raw_key,
                        target,
                        sent,
                    } => {
                        self.deliveries_out = self.deliveries_out.saturating_sub(1);
                        if matches!(response, Ok(PeerResponse::ReplicaPutDone)) {
                            self.enqueue(
                                CommitJob::HintDelivered {
                                    partition,
                                    raw_key,
                                    target,
                                    sent,
                                },
                                out,
                            );
                        }
                    }
                }
            }
        }
    }

    fn handle_peer(
        &mut self,
        cluster: &Cluster,
        now_ms: u64,
        from: NodeId,
        id: RequestId,
        request: PeerRequest,
        out: &mut Vec<Effect>,
    ) {
        let respond = |response: PeerResponse, out: &mut Vec<Effect>| {
            out.push(Effect::Send {
                to: from,
                payload: Payload::Response {
                    id,
                    response: Ok(response),
                },
            })
        };
        let refuse = |message: String, out: &mut Vec<Effect>| {
            respond(PeerResponse::Refused { message }, out)
        };
        match request {
            PeerRequest::ReplicaGet { bucket, key } => {
                if let Err(e) = validate_bucket_name(&bucket).and(validate_key(&key)) {
                    return refuse(e.to_string(), out);
                }
                let target = Target {
                    partition: cluster.partition(&bucket, &key),
                    bucket,
                    key,
                };
                match self.read_local(&target, cluster.props.conflict) {
                    Ok(object) => respond(
                        PeerResponse::ReplicaGetDone {
                            object: object.map(|o| o.encode()),
                        },
                        out,
                    ),
                    Err(message) => refuse(message, out),
                }
            }
            PeerRequest::ReplicaPut {
                bucket,
                key,
                object,
                conflict,
                durability,
            } => {
                if let Err(e) = validate_bucket_name(&bucket).and(validate_key(&key)) {
                    return refuse(e.to_string(), out);
                }
                let incoming = match Object::decode(&object) {
                    Ok(object) => object,
                    Err(e) => return refuse(e.to_string(), out),
                };
                let target = Target {
                    partition: cluster.partition(&bucket, &key),
                    bucket,
                    key,
                };
                let job = CommitJob::Merge {
                    target,
                    incoming,
                    conflict,
                    durability,
                    ack: Some((from, id)),
                    anti_entropy: false,
                };
                self.enqueue(job, out);
            }
            PeerRequest::HintPut {
                bucket,
                key,
                object,
                conflict,
                durability,
                hint_for,
            } => {
                if let Err(e) = validate_bucket_name(&bucket).and(validate_key(&key)) {
                    return refuse(e.to_string(), out);
                }
                let incoming = match Object::decode(&object) {
                    Ok(object) => object,
                    Err(e) => return refuse(e.to_string(), out),
                };
                // A full hint store refuses: the coordinator then counts
                // this replica as failed.
                if self.hints_pending() >= cluster.hints_max as i64 {
                    let message = format!("hint store is full ({} hints)", cluster.hints_max);
                    return refuse(message, out);
                }
                let target = Target {
                    partition: cluster.partition(&bucket, &key),
                    bucket,
                    key,
                };
                let job = CommitJob::HintMerge {
                    target,
                    incoming,
                    conflict,
                    durability,
                    hint_for,
                    ack: (from, id),
                };
                self.enqueue(job, out);
            }
            PeerRequest::Ping { from: pinger } => {
                self.detector.heartbeat(pinger, now_ms);
                respond(PeerResponse::Pong { from: self.id }, out);
            }
            PeerRequest::Coordinate(op) => {
                let reply_to = ReplyTo::Peer {
                    to: from,
                    request: id,
                };
                self.execute(cluster, now_ms, op, reply_to, false, out);
            }
            PeerRequest::AntiEntropy {
                partition,
                n,
                request,
            } => respond(self.answer_exchange(cluster, partition, n, &request), out),
            // Gossip and joins: not simulated.
            _ => refuse("not simulated".to_string(), out),
        }
    }

    pub fn timer(&mut self, cluster: &Cluster, timer: Timer, out: &mut Vec<Effect>) {
        match timer {
            Timer::PutRound(round_id) => {
                let Some(state) = self.put_rounds.get_mut(&round_id) else {
                    return;
                };
                let reply = if state.unreachable {
                    ClientReply::Failed(state.shortfall())
                } else {
                    match state.round.timed_out() {
                        Some(Quorum::TimedOut { got, needed }) => {
                            ClientReply::Failed(OpError::Unavailable { got, needed })
                        }
                        // A round still here is undecided or waiting.
                        _ => return,
                    }
                };
                self.end_put(round_id, reply, out);
            }
            Timer::GetRound(round_id) => {
                let Some(mut state) = self.get_rounds.remove(&round_id) else {
                    return;
                };
                self.forget_requests_of(round_id);
                if let Some(decision) = state.round.timed_out() {
                    reply_with(state.reply_to.take(), get_reply(decision), out);
                }
                self.read_repair(state, out);
            }
            Timer::Forward { forward, request } => {
                let current = self
                    .forwards
                    .get(&forward)
                    .is_some_and(|state| state.request == request);
                if !current {
                    return;
                }
                self.pending.remove(&request);
                let state = self.forwards.remove(&forward).expect("present");
                // The node may have written it: the outcome is unknown.
                let reply = ClientReply::Failed(OpError::Timeout {
                    got: 0,
                    needed: state.w as u32,
                    timeout_ms: state.op.timeout_ms(),
                });
                reply_with(Some(state.reply_to), reply, out);
            }
            Timer::Request(id) => {
                // A timeout proves nothing about the peer: no observation.
                match self.pending.remove(&id) {
                    Some(Pending::HintDelivery { .. }) => {
                        self.deliveries_out = self.deliveries_out.saturating_sub(1);
                    }
                    Some(Pending::AntiEntropy) => self.anti_entropy_failed(cluster, id, out),
                    _ => {}
                }
            }
        }
    }
}

/// A get as the client asked for it.
struct GetRequest {
    bucket: String,
    key: Vec<u8>,
    r: Option<u32>,
    timeout_ms: u64,
}

fn job_failed(put: PutPlan, message: String) -> AfterCommit {
    AfterCommit::Reply(put.reply_to, internal(&message))
}

fn internal(message: &str) -> ClientReply {
    ClientReply::Failed(OpError::Internal {
        message: message.to_string(),
    })
}

fn get_reply(decision: Quorum<Option<Object>>) -> ClientReply {
    match decision {
        Quorum::Reached(object) => ClientReply::Found {
            object: object.map(|o| o.encode()),
        },
        Quorum::Unreachable { got, needed } | Quorum::TimedOut { got, needed } => {
            ClientReply::Failed(OpError::Unavailable { got, needed })
        }
    }
}

mod antientropy;
mod planted;
#[cfg(test)]
mod tests;

fn reply_with(reply_to: Option<ReplyTo>, reply: ClientReply, out: &mut Vec<Effect>) {
    match reply_to {
        None => {}
        Some(ReplyTo::Client(op)) => out.push(Effect::ReplyToClient { op, reply }),
        Some(ReplyTo::Peer { to, request }) => out.push(Effect::Send {
            to,
            payload: Payload::Response {
                id: request,
                response: Ok(PeerResponse::Coordinated(reply)),
            },
        }),
    }
}
