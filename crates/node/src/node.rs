//! The node: runs client operations as coordinator (quorum rounds of
//! `ringkv_core::coordinator`), answers peers as a replica, and keeps the
//! layout and bucket properties current by joining and gossip.
//!
//! Concurrency: every client request and every peer request is its own
//! tokio task. Shared state is read through `RwLock<Arc<_>>` snapshots
//! (layout, buckets) taken for a moment; the only serialisation point is
//! the storage engine's group committer, which batches many writes into
//! one durable commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use ringkv_core::NodeId;
use ringkv_core::bucket::{
    BucketProps, BucketRegistry, DurabilityMode, InvalidInput, validate_bucket_name, validate_key,
};
use ringkv_core::causality::{ConflictMode, NewVersion, Object, UpdateError, VersionVector};
use ringkv_core::coordinator::{GetRound, PutRound, Quorum, Role, written_context};
use ringkv_core::membership::{DetectorConfig, FailureDetector, Liveness, PeerView};
use ringkv_core::message::{
    ClientOp, ClientReply, GossipState, Holders, OpError, PeerRequest, PeerResponse,
};
use ringkv_core::ring::{Layout, Member, MemberState, key_hash, partition_of, previous_holders};
use ringkv_wire::Password;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::{DeleteMode, NodeConfig};
use crate::metrics::{FailureLabels, FailureReason, Metrics, Op, OpLabels};
use crate::store::{Commit, Hint, LocalStore, StoreError, object_key};
use crate::transport::{PeerError, Peers};
pub(crate) use ringkv_core::hint::split_object_key;

pub const META_IDENTITY: &str = "identity";
pub const META_LAYOUT: &str = "layout";
pub const META_BUCKETS: &str = "buckets";
pub const META_ACTOR: &str = "actor";
/// The actor's dot floor (`Node::dot_floor`), recorded at a clean stop.
pub const META_DOT_FLOOR: &str = "dot-floor";
/// Present once this node has left its cluster: the layout version that
/// removed it (u64 BE). A data dir with it does not start again.
pub const META_LEFT: &str = "left";
/// `Node::holders`, as of the last layout change.
pub const META_HOLDERS: &str = "holders";

/// Extra time a forwarding node waits beyond the operation's own timeout.
const FORWARD_GRACE: Duration = Duration::from_millis(500);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Node {
    pub config: NodeConfig,
    pub id: NodeId,
    /// This node as a layout member, with the addresses it really listens on.
    pub me: Member,
    pub(crate) store: LocalStore,
    pub(crate) peers: Arc<Peers>,
    layout: RwLock<Arc<Layout>>,
    buckets: RwLock<Arc<BucketRegistry>>,
    membership: tokio::sync::Mutex<()>,
    /// The actor of the writes this node coordinates as a primary: kept
    /// across clean stops, new after any other (see `start`).
    actor: NodeId,
    /// The highest counter of `actor` in a tombstone this node reaped: its
    /// new dots count above it, since another replica may still hold that
    /// tombstone (`Object::update_above`). Raised before a reap is
    /// submitted, so every write the committer runs after the reap sees it.
    dot_floor: AtomicU64,
    /// The latest `modified_ms` of a tombstone this node reaped: its new
    /// writes are stamped later, so that in an `lww` bucket a replica that
    /// kept the tombstone does not take it for the newer write when this
    /// node's clock is behind the deleter's. Not recorded across restarts.
    stamp_floor: AtomicU64,
    /// Bounds the deletes waiting to be reaped (`MAX_PENDING_REAPS`).
    pending_reaps: Arc<tokio::sync::Semaphore>,
    detector: Mutex<FailureDetector>,
    /// When a local write last failed in storage (ms since the epoch; 0:
    /// never). For `LOCAL_FAILURE_BACKOFF_MS` after it, writes this node would
    /// coordinate go to another replica instead (a full or failing disk).
    local_write_failed_ms: AtomicU64,
    /// When this node last adopted a new layout (ms since the epoch).
    layout_changed_ms: AtomicU64,
    /// Set once this node takes itself out of the layout (`finish_leaving`).
    left: AtomicBool,
    /// Set once the anti-entropy trees are built from storage at start.
    pub(crate) trees_built: AtomicBool,
    /// Members seen leaving in an adopted layout: if a concurrent layout
    /// change wins the gossip and lists one as valid again, the leave is
    /// applied again (`ensure_leaves`). Ids are never reused.
    leavers: Mutex<std::collections::BTreeSet<NodeId>>,
    /// Members that held a partition under an earlier layout and may not
    /// have handed it off yet, each with the version of the layout that
    /// made it a holder: reads of the partition ask them too
    /// (`GetRound::with_holders`) until one answers that it holds nothing
    /// there to hand off. Stored with each layout change, so that a restart
    /// remembers them (one forgotten since is asked once more).
    holders: Mutex<Holders>,
    /// What clients must give (`--client-password-file`), if anything.
    pub(crate) client_password: Option<Password>,
    /// True once it has told the others too: the server stops.
    stop: tokio::sync::watch::Sender<bool>,
    pub metrics: Metrics,
}

/// A delete whose tombstone is to be reaped (`Node::reap`): every one of
/// the key's primaries (`primaries`, under the layout of `layout_version`)
/// acknowledged it, and no fallback took part.
struct Reap {
    bucket: String,
    key: Vec<u8>,
    layout_version: u64,
    primaries: Vec<NodeId>,
    /// The coordinator's copy after the delete: tombstones only.
    object: Object,
    delay: Duration,
    /// One of `Node::pending_reaps`.
    _pending: tokio::sync::OwnedSemaphorePermit,
}

/// Deletes waiting to be reaped at once, at most (each holds its
/// tombstone); a delete beyond them keeps its tombstone.
const MAX_PENDING_REAPS: usize = 100_000;

/// The most a reaped tombstone's stamp may be ahead of this node's clock
/// for `Node::stamp_floor` to follow it.
const MAX_STAMP_LEAD_MS: u64 = 60_000;

/// How long a node forwards the writes it would coordinate after its own
/// storage failed one; the next write after that tries it again.
const LOCAL_FAILURE_BACKOFF_MS: u64 = 10_000;

/// A bucket's properties as they apply in this cluster now: `n` is capped
/// at the number of members (a one-node store is usable with defaults).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effective {
    pub(crate) props: BucketProps,
    pub(crate) n: usize,
    pub(crate) durability: DurabilityMode,
}

impl Effective {
    pub(crate) fn quorum(
        &self,
        field: &'static str,
        requested: Option<u32>,
    ) -> Result<usize, OpError> {
        let q = self.props.quorum(field, requested).map_err(bad_request)?;
        Ok(q.min(self.n))
    }

    /// `pr`/`pw`: how many primaries must answer (0 when not asked for).
    fn strict_quorum(&self, field: &'static str, requested: Option<u32>) -> Result<usize, OpError> {
        match requested {
            None | Some(0) => Ok(0),
            Some(_) => self.quorum(field, requested),
        }
    }
}

/// One replica of a key for a request: a primary, or a fallback standing
/// in for `hint_for`, a primary that is down (sloppy quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// The request that stores `object` on this replica: a merge into a
    /// primary's copy, or into a fallback's hint store.
    pub(crate) fn write(
        &self,
        bucket: &str,
        key: &[u8],
        object: &[u8],
        conflict: ConflictMode,
        durability: DurabilityMode,
    ) -> PeerRequest {
        let (bucket, key, object) = (bucket.to_string(), key.to_vec(), object.to_vec());
        match self.hint_for {
            None => PeerRequest::ReplicaPut {
                bucket,
                key,
                object,
                conflict,
                durability,
            },
            Some(hint_for) => PeerRequest::HintPut {
                bucket,
                key,
                object,
                conflict,
                durability,
                hint_for,
            },
        }
    }
}

/// The client's answer to a put, from its quorum's decision and the acks
/// counted: `(acked, primaries_acked)` against `(w, pw)`.
fn put_reply(
    decision: Quorum<()>,
    (acked, primaries_acked): (u32, u32),
    (w, pw): (usize, usize),
    object: &Object,
    context_in: VersionVector,
    actor: NodeId,
) -> ClientReply {
    match decision {
        Quorum::Reached(()) => ClientReply::Written {
            context: written_context(object, context_in, actor),
        },
        Quorum::Unreachable { .. } => {
            let (got, needed) = if (acked as usize) < w {
                (acked, w as u32)
            } else {
                (primaries_acked, pw as u32)
            };
            ClientReply::Failed(OpError::Unavailable { got, needed })
        }
        Quorum::TimedOut { got, needed } => {
            ClientReply::Failed(OpError::Unavailable { got, needed })
        }
    }
}

fn bad_request(e: InvalidInput) -> OpError {
    OpError::BadRequest {
        message: e.to_string(),
    }
}

/// The longest TTL a write may carry: 20 years, Cassandra's limit.
pub const MAX_TTL_MS: u64 = 20 * 365 * 24 * 3600 * 1000;

/// A TTL comes with a put of a value (not a delete) and lies between 1 ms
/// and [`MAX_TTL_MS`].
pub(crate) fn check_ttl(op: &ClientOp, ttl_ms: Option<u64>) -> Result<(), OpError> {
    let Some(ttl_ms) = ttl_ms else {
        return Ok(());
    };
    let message = match op {
        ClientOp::Put { value: Some(_), .. } if (1..=MAX_TTL_MS).contains(&ttl_ms) => {
            return Ok(());
        }
        ClientOp::Put { value: Some(_), .. } => {
            format!("the TTL must be between 1 ms and {MAX_TTL_MS} ms (20 years), got {ttl_ms} ms")
        }
        _ => "only a write of a value can carry a TTL".to_string(),
    };
    Err(OpError::BadRequest { message })
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        id: NodeId,
        actor: NodeId,
        dot_floor: u64,
        me: Member,
        store: LocalStore,
        peers: Arc<Peers>,
        layout: Layout,
        buckets: BucketRegistry,
        client_password: Option<Password>,
    ) -> Arc<Node> {
        let metrics = Metrics::new();
        metrics.layout_version.set(layout.version() as i64);
        let holders = stored_holders(&store);
        Arc::new(Node {
            config,
            id,
            me,
            store,
            peers,
            layout: RwLock::new(Arc::new(layout)),
            buckets: RwLock::new(Arc::new(buckets)),
            membership: tokio::sync::Mutex::new(()),
            actor,
            dot_floor: AtomicU64::new(dot_floor),
            stamp_floor: AtomicU64::new(0),
            pending_reaps: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_REAPS)),
            detector: Mutex::new(FailureDetector::new(DetectorConfig::default())),
            local_write_failed_ms: AtomicU64::new(0),
            layout_changed_ms: AtomicU64::new(now_ms()),
            left: AtomicBool::new(false),
            trees_built: AtomicBool::new(false),
            leavers: Mutex::new(std::collections::BTreeSet::new()),
            holders: Mutex::new(holders),
            client_password,
            stop: tokio::sync::watch::Sender::new(false),
            metrics,
        })
    }

    /// The actor of the writes this node coordinates as a primary.
    pub fn actor(&self) -> NodeId {
        self.actor
    }

    /// The counter the actor's next dots count above (see `dot_floor`).
    pub fn dot_floor(&self) -> u64 {
        self.dot_floor.load(AtomicOrdering::SeqCst)
    }

    /// The node's store, the rest dropped (for a clean stop).
    pub(crate) fn into_store(self) -> LocalStore {
        self.store
    }

    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().expect("layout lock").clone()
    }

    pub fn buckets(&self) -> Arc<BucketRegistry> {
        self.buckets.read().expect("buckets lock").clone()
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    pub fn store_stats(&self) -> ringkv_storage::GroupCommitStats {
        self.store.stats()
    }

    /// A bucket's configured properties (defaults when never set).
    pub fn bucket_props(&self, bucket: &str) -> BucketProps {
        match self.buckets().get(bucket) {
            Some(entry) => entry.props,
            None if bucket == self.config.resp_bucket => BucketProps::lww(),
            None => BucketProps::default(),
        }
    }

    pub(crate) fn effective(&self, bucket: &str, layout: &Layout) -> Effective {
        let props = self.bucket_props(bucket);
        let n = (props.n as usize).min(layout.valid_members()).max(1);
        let durability = props.durability.unwrap_or(self.config.durability);
        Effective {
            props,
            n,
            durability,
        }
    }

    /// The `n` whose Merkle tree holds a bucket's keys on this node.
    pub(crate) fn tree_n(&self, bucket: &str) -> u32 {
        self.effective(bucket, &self.layout()).n as u32
    }

    pub(crate) fn peer_addr(layout: &Layout, id: NodeId) -> Option<String> {
        layout.member(id).map(|m| m.peer_addr.clone())
    }

    /// This node's view of a peer (itself: up).
    pub fn peer_view(&self, id: NodeId) -> PeerView {
        if id == self.id {
            return PeerView {
                liveness: Liveness::Up,
                phi: 0.0,
                last_heard_ms_ago: Some(0),
            };
        }
        self.detector
            .lock()
            .expect("detector lock")
            .view(id, now_ms())
    }

    /// Worth sending a request to: not down by the failure detector, and
    /// (another node) not behind a connection of ours that is down. A peer
    /// that comes back is heard from before this node's connection to it
    /// has reconnected (up to a second of backoff), and until then a
    /// request to it would fail at once: a fallback stands in meanwhile.
    pub(crate) fn usable(&self, id: NodeId) -> bool {
        if !self.peer_view(id).liveness.is_usable() {
            return false;
        }
        id == self.id
            || self
                .layout()
                .member(id)
                .is_none_or(|member| !self.peers.is_down(&member.peer_addr))
    }

    /// Feeds the failure detector with the outcome of a request to a peer.
    pub(crate) fn observe<T>(&self, id: NodeId, result: &Result<T, PeerError>) {
        let mut detector = self.detector.lock().expect("detector lock");
        match result {
            Ok(_) => detector.heartbeat(id, now_ms()),
            // A peer we cannot authenticate with is as good as unreachable.
            Err(
                PeerError::Unreachable
                | PeerError::Disconnected
                | PeerError::Unauthenticated
                | PeerError::Tls,
            ) => detector.unreachable(id, now_ms()),
            Err(PeerError::Timeout | PeerError::Overloaded) => {}
        }
    }

    /// The replicas of a partition for a request now: the primaries that
    /// are not down, each down one replaced by the next usable fallback.
    pub fn replica_plan(&self, layout: &Layout, partition: u32, n: usize) -> Vec<PlannedReplica> {
        let preference = layout.preference_list(partition, n);
        let mut fallbacks = preference
            .fallbacks
            .iter()
            .copied()
            .filter(|f| self.usable(*f));
        let mut plan = Vec::with_capacity(n);
        for primary in preference.primaries {
            if self.usable(primary) {
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

    /// Hint records held for other nodes.
    pub fn hints_pending(&self) -> u64 {
        self.store.hint_usage().0
    }

    /// The hint store cannot take `incoming` more bytes.
    fn hint_store_full(&self, incoming: usize) -> bool {
        let (records, bytes) = self.store.hint_usage();
        records >= self.config.hints_max || bytes + incoming as u64 > self.config.hints_max_bytes
    }

    fn hint_stored(&self) {
        self.metrics.hints_stored.inc();
    }

    /// The local copy of a key: the replica's object merged with any hint
    /// this node holds for it.
    pub(crate) fn read_local(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        mode: ConflictMode,
    ) -> Result<Option<Object>, StoreError> {
        let data = self.store.read(partition, bucket, key)?;
        // Most of the time no hint exists at all: skip the second lookup.
        let hint = if self.hints_pending() > 0 {
            self.store.read_hint(partition, bucket, key)?
        } else {
            None
        };
        Ok(match (data, hint) {
            (None, None) => None,
            (Some(object), None) => Some(object),
            (None, Some(hint)) => Some(hint.object),
            (Some(object), Some(hint)) => Some(object.merge(&hint.object, mode)),
        })
    }

    // ---------------------------------------------------------------- client operations

    /// Runs a client operation. `may_forward`: a put that lands on a node
    /// that is not a primary of the key is sent to a primary (once).
    pub async fn execute(self: &Arc<Self>, op: ClientOp, may_forward: bool) -> ClientReply {
        let started = Instant::now();
        let (op, ttl_ms) = op.split_ttl();
        let kind = match &op {
            ClientOp::Get { .. } => Op::Get,
            ClientOp::Put { value: None, .. } => Op::Delete,
            ClientOp::Put { .. } | ClientOp::PutWithTtl { .. } => Op::Put,
        };
        let reply = match self.check(&op).and_then(|()| check_ttl(&op, ttl_ms)) {
            Err(e) => ClientReply::Failed(e),
            Ok(()) => match op {
                ClientOp::Get {
                    bucket,
                    key,
                    r,
                    pr,
                    timeout_ms,
                } => self.coordinate_get(bucket, key, r, pr, timeout_ms).await,
                put => self.coordinate_put(put, ttl_ms, None, may_forward).await,
            },
        };
        self.metrics
            .request_seconds
            .get_or_create(&OpLabels { op: kind })
            .observe(started.elapsed().as_secs_f64());
        if let ClientReply::Failed(e) = &reply {
            let reason = match e {
                OpError::BadRequest { .. } => FailureReason::BadRequest,
                OpError::Unavailable { .. } => FailureReason::Unavailable,
                OpError::Timeout { .. } => FailureReason::Timeout,
                OpError::Overloaded => FailureReason::Overloaded,
                OpError::TooManySiblings { .. } => FailureReason::TooManySiblings,
                OpError::Internal { .. } => FailureReason::Internal,
            };
            self.metrics
                .request_failures
                .get_or_create(&FailureLabels { op: kind, reason })
                .inc();
        }
        reply
    }

    /// Input checks shared by every way in (HTTP, RESP, forwarded), of an
    /// operation without its TTL (`ClientOp::split_ttl`; see `check_ttl`).
    pub(crate) fn check(&self, op: &ClientOp) -> Result<(), OpError> {
        validate_bucket_name(op.bucket()).map_err(bad_request)?;
        validate_key(op.key()).map_err(bad_request)?;
        if op.timeout_ms() == 0 || op.timeout_ms() > 600_000 {
            return Err(OpError::BadRequest {
                message: format!(
                    "timeout_ms must be between 1 and 600000, got {}",
                    op.timeout_ms()
                ),
            });
        }
        if let ClientOp::Put {
            value: Some(value), ..
        } = op
            && value.len() > self.config.max_value_bytes
        {
            return Err(OpError::BadRequest {
                message: format!(
                    "value of {} bytes exceeds max-value-bytes ({})",
                    value.len(),
                    self.config.max_value_bytes
                ),
            });
        }
        if let ClientOp::Put {
            context,
            content_type,
            ..
        } = op
            && (context.len() > ringkv_core::causality::MAX_CONTEXT_ENTRIES
                || content_type.len() > 256)
        {
            return Err(OpError::BadRequest {
                message: "context or content type too large".into(),
            });
        }
        if let ClientOp::Put { context, .. } = op
            && let Some((replica, counter)) = context
                .iter()
                .find(|&(_, counter)| counter > ringkv_core::causality::MAX_CONTEXT_COUNTER)
        {
            return Err(OpError::BadRequest {
                message: format!(
                    "context counter {counter} of replica {replica} is out of range (at most {})",
                    ringkv_core::causality::MAX_CONTEXT_COUNTER
                ),
            });
        }
        Ok(())
    }

    /// Runs a put (`op` is a `ClientOp::Put`); with `ttl_ms`, the new
    /// version expires that long after this node's clock now.
    /// `retire_expired_at` is the expiry sweeper's delete of values that
    /// expired: stamped at that time (the latest expiry among them) rather
    /// than now, so that in an `lww` bucket any write made after they
    /// expired wins over it, and refused (`UpdateError::NotExpired`) where
    /// the local copy holds a value that has not expired.
    pub(crate) async fn coordinate_put(
        self: &Arc<Self>,
        op: ClientOp,
        ttl_ms: Option<u64>,
        retire_expired_at: Option<u64>,
        may_forward: bool,
    ) -> ClientReply {
        let ClientOp::Put {
            bucket,
            key,
            value,
            content_type,
            context,
            w: w_asked,
            pw: pw_asked,
            timeout_ms,
        } = op
        else {
            unreachable!("coordinate_put is called with puts only");
        };
        let layout = self.layout();
        let effective = self.effective(&bucket, &layout);
        let (w, pw) = match (
            effective.quorum("w", w_asked),
            effective.strict_quorum("pw", pw_asked),
        ) {
            (Ok(w), Ok(pw)) => (w.max(pw), pw),
            (Err(e), _) | (_, Err(e)) => return ClientReply::Failed(e),
        };
        let partition = partition_of(key_hash(bucket.as_bytes(), &key), layout.partitions());
        let plan = self.replica_plan(&layout, partition, effective.n);
        let mine = plan.iter().find(|r| r.node == self.id).copied();
        let timeout = Duration::from_millis(timeout_ms);
        // Not a replica, or one whose storage fails writes while another
        // replica could take them: another replica coordinates.
        let local_failing = self.local_writes_failing() && plan.iter().any(|r| r.node != self.id);
        if may_forward && (mine.is_none() || local_failing) {
            let others: Vec<NodeId> = plan
                .iter()
                .map(|r| r.node)
                .filter(|node| *node != self.id)
                .collect();
            let op = ClientOp::Put {
                bucket,
                key,
                value,
                content_type,
                context,
                w: w_asked,
                pw: pw_asked,
                timeout_ms,
            }
            .with_ttl(ttl_ms);
            return self.forward(&layout, &others, op, w, timeout).await;
        }
        let durability = effective.durability;
        // The actor whose dot stamps this write. A dot must never be issued
        // twice, and a coordinator derives its counter from its local copy
        // of the key, so the actor changes whenever that copy may miss dots
        // the actor already issued (found by the simulator):
        // - a primary: its actor id, new after every unclean stop (the new
        //   version goes out to the other replicas before its local sync,
        //   and with buffered durability without one, so a crash can lose
        //   the local copy that others already hold);
        // - a fallback or a node outside the plan, writing into its hint
        //   store: the store's fallback actor, read inside the job, which
        //   changes whenever a hint record is deleted (`FallbackActor`), or
        //   a fresh id if the store is full and keeps no copy;
        // - a node outside the plan that keeps the write as a replica (it
        //   is the key's first primary, yet not in the plan): a fresh id.
        // Later than any tombstone this node reaped (`stamp_floor`).
        let clock_now = now_ms();
        let (mode, max_siblings, now) = (
            effective.props.conflict,
            effective.props.max_siblings as usize,
            retire_expired_at
                .unwrap_or(clock_now)
                .max(self.stamp_floor.load(AtomicOrdering::SeqCst) + 1),
        );
        let context_in = context.clone();
        let value_bytes = value.as_ref().map_or(0, Vec::len);
        let new_version = NewVersion {
            value,
            content_type,
            now_ms: now,
            // `check_ttl` bounds the TTL, so this cannot overflow.
            expires_ms: ttl_ms.map(|ttl| now.saturating_add(ttl)),
        };
        let update = move |current: Option<&Object>, actor: NodeId, floor: u64| {
            if retire_expired_at.is_some() && current.is_some_and(|c| !c.is_absent_at(clock_now)) {
                return Err(UpdateError::NotExpired);
            }
            Object::update_above(
                current,
                &context,
                new_version,
                actor,
                floor,
                mode,
                max_siblings,
            )
        };
        // Not a replica by this node's view (a forwarded request, views
        // differ): keep the write as a hint for the key's first primary.
        let local_hint_for = match mine {
            Some(m) => m.hint_for,
            None => layout
                .preference_list(partition, 1)
                .primaries
                .first()
                .copied()
                .filter(|p| *p != self.id),
        };
        // A full hint store keeps nothing more: the coordinator then still
        // stamps and sends the write, but does not count as a replica.
        // (An object's encoding adds its clock and metadata to the value.)
        let hint_store_full = local_hint_for.is_some() && self.hint_store_full(value_bytes + 64);
        let remotes: Vec<PlannedReplica> =
            plan.iter().filter(|r| r.node != self.id).copied().collect();
        let fallback_actor = self.store.fallback_actor();
        let stored = match local_hint_for {
            // A fallback coordinating for a primary that is down: the
            // write lives in the hint store until it is handed off.
            Some(hint_for) => self
                .store
                .update_hint(
                    partition,
                    object_key(&bucket, &key),
                    durability,
                    move |current| {
                        let is_new = current.is_none();
                        // A full hint store keeps no copy of this write,
                        // so its dot must not be counted on from: a fresh
                        // actor.
                        let actor = if hint_store_full {
                            rand::random::<u64>().max(1)
                        } else {
                            fallback_actor.current()
                        };
                        match update(current.as_ref().map(|h| &h.object), actor, 0) {
                            Ok(object) if hint_store_full => (current, (Ok(object), false, actor)),
                            Ok(object) => {
                                let mut targets = current.map(|h| h.targets).unwrap_or_default();
                                targets.insert(hint_for);
                                (
                                    Some(Hint {
                                        targets,
                                        object: object.clone(),
                                    }),
                                    (Ok(object), is_new, actor),
                                )
                            }
                            Err(e) => (current, (Err(e), false, actor)),
                        }
                    },
                )
                .await
                .map(|(result, new_hint, actor)| (result, new_hint, None, actor)),
            // A replica's copy with a sync to wait for and other replicas
            // to send to goes out as soon as it is written, and counts once
            // its sync is done.
            None => {
                let actor = match mine.map(|m| m.role()) {
                    Some(Role::Primary) => self.actor,
                    _ => rand::random::<u64>().max(1),
                };
                // Read inside the job: a reap raises it before its own job.
                let node = self.clone();
                let commit = if remotes.is_empty() {
                    Commit::Own
                } else if durability == DurabilityMode::Sync {
                    Commit::Early
                } else {
                    Commit::Queued
                };
                self.store
                    .update_staged(
                        partition,
                        &bucket,
                        &key,
                        effective.n as u32,
                        durability,
                        commit,
                        move |current| {
                            let floor = if actor == node.actor {
                                node.dot_floor()
                            } else {
                                0
                            };
                            update(current.as_ref(), actor, floor)
                        },
                    )
                    .await
                    .map(|(result, durable)| (result, false, durable, actor))
            }
        };
        let (object, local_sync, actor) = match stored {
            Ok((Ok(object), new_hint, durable, actor)) => {
                if new_hint {
                    self.hint_stored();
                }
                (object, durable, actor)
            }
            Ok((Err(UpdateError::TooManySiblings { count, max }), ..)) => {
                return ClientReply::Failed(OpError::TooManySiblings {
                    count: count as u32,
                    max: max as u32,
                });
            }
            Ok((Err(e), ..)) => {
                return ClientReply::Failed(OpError::BadRequest {
                    message: e.to_string(),
                });
            }
            Err(e) => {
                self.local_write_failed(&e);
                return ClientReply::Failed(self.store_failure(e));
            }
        };
        let mut roles: Vec<Role> = remotes.iter().map(|r| r.role()).collect();
        let local_role = mine.map(|m| m.role()).filter(|_| !hint_store_full);
        let local_acked = local_role.filter(|_| local_sync.is_none());
        if let (Some(role), Some(_)) = (local_role, &local_sync) {
            roles.push(role);
        }
        let mut round = PutRound::with_roles(w, pw, local_acked, &roles);
        let (mut acked, mut primaries_acked) = (
            local_acked.is_some() as u32,
            (local_acked == Some(Role::Primary)) as u32,
        );
        // A delete that all N primaries (and no fallback) acknowledge is
        // reaped later.
        let reap = if plan.len() == effective.n && plan.iter().all(|r| r.hint_for.is_none()) {
            let primaries = plan.iter().map(|r| r.node).collect();
            self.reap_of(&bucket, &key, &object, layout.version(), primaries)
        } else {
            None
        };
        if roles.is_empty() {
            // Nothing to send or wait for (N=1, or no other replica in the
            // plan): the local copy decides, with no channel, timer or
            // encoding.
            let decision = round
                .start()
                .or_else(|| round.timed_out())
                .expect("an undecided round decides when it times out");
            if let (Some(reap), Quorum::Reached(_)) = (reap, &decision)
                && primaries_acked as usize == reap.primaries.len()
            {
                tokio::spawn(self.clone().reap(reap));
            }
            return put_reply(
                decision,
                (acked, primaries_acked),
                (w, pw),
                &object,
                context_in,
                actor,
            );
        }
        let (acks_tx, mut acks) = mpsc::channel(roles.len());
        if let (Some(role), Some(durable)) = (local_role, local_sync) {
            let acks_tx = acks_tx.clone();
            let node = self.clone();
            tokio::spawn(async move {
                let ok = match durable.wait().await {
                    Ok(()) => true,
                    Err(e) => {
                        error!(error = %e, "the local copy of a put did not sync");
                        node.local_write_failed(&e);
                        false
                    }
                };
                let _ = acks_tx.send((role, ok)).await;
            });
        }
        let encoded = object.encode();
        for replica in remotes {
            let Some(addr) = Self::peer_addr(&layout, replica.node) else {
                continue;
            };
            let request = replica.write(&bucket, &key, &encoded, mode, durability);
            let node = self.clone();
            let acks_tx = acks_tx.clone();
            tokio::spawn(async move {
                let result = node.peers.request(&addr, request, timeout).await;
                node.observe(replica.node, &result);
                let ok = matches!(result, Ok(PeerResponse::ReplicaPutDone));
                if !ok {
                    node.metrics.peer_failures.inc();
                }
                let _ = acks_tx.send((replica.role(), ok)).await;
            });
        }
        drop(acks_tx);
        let deadline_at = tokio::time::Instant::now() + timeout;
        let deadline = tokio::time::sleep_until(deadline_at);
        tokio::pin!(deadline);
        let mut decision = round.start();
        while decision.is_none() {
            decision = tokio::select! {
                ack = acks.recv() => match ack {
                    Some((role, true)) => {
                        acked += 1;
                        primaries_acked += (role == Role::Primary) as u32;
                        round.acked_by(role)
                    }
                    Some((role, false)) => round.failed_by(role),
                    None => round.timed_out(),
                },
                () = &mut deadline => round.timed_out(),
            };
        }
        let decision = decision.expect("loop ends with a decision");
        if let Quorum::Unreachable { .. } = decision {
            // Tell the client how many replicas really hold the write:
            // wait (within the deadline) for the answers still out.
            loop {
                tokio::select! {
                    ack = acks.recv() => match ack {
                        Some((role, true)) => {
                            acked += 1;
                            primaries_acked += (role == Role::Primary) as u32;
                        }
                        Some((_, false)) => {}
                        None => break,
                    },
                    () = &mut deadline => break,
                }
            }
        } else if let (Some(reap), Quorum::Reached(_)) = (reap, &decision) {
            // The acknowledgements of a delete to reap that are still out
            // are awaited in the background.
            let node = self.clone();
            tokio::spawn(async move {
                let mut primaries_acked = primaries_acked as usize;
                while primaries_acked < reap.primaries.len() {
                    tokio::select! {
                        ack = acks.recv() => match ack {
                            Some((Role::Primary, true)) => primaries_acked += 1,
                            _ => return,
                        },
                        () = tokio::time::sleep_until(deadline_at) => return,
                    }
                }
                node.reap(reap).await;
            });
        }
        put_reply(
            decision,
            (acked, primaries_acked),
            (w, pw),
            &object,
            context_in,
            actor,
        )
    }

    /// Whether `MAX_PENDING_REAPS` reaps are waiting already.
    pub(crate) fn reaps_waiting(&self) -> bool {
        self.pending_reaps.available_permits() == 0
    }

    /// A reap of `object`, the copy every one of the key's `primaries`
    /// holds (or acknowledged), if it is tombstones only and this node
    /// reaps (`--delete-mode`), within `MAX_PENDING_REAPS`.
    fn reap_of(
        &self,
        bucket: &str,
        key: &[u8],
        object: &Object,
        layout_version: u64,
        primaries: Vec<NodeId>,
    ) -> Option<Reap> {
        let DeleteMode::ReapAfterMs(delay_ms) = self.config.delete_mode else {
            return None;
        };
        if !object.is_deleted() || !object.siblings().iter().all(|s| s.is_tombstone()) {
            return None;
        }
        let Ok(pending) = self.pending_reaps.clone().try_acquire_owned() else {
            self.metrics.reaps_skipped.inc();
            return None;
        };
        Some(Reap {
            bucket: bucket.to_string(),
            key: key.to_vec(),
            layout_version,
            primaries,
            object: object.clone(),
            delay: Duration::from_millis(delay_ms),
            _pending: pending,
        })
    }

    /// Reaps a delete's tombstone after `reap.delay` (Riak's `delete_mode`),
    /// if nothing could bring back what it deleted: the layout has not
    /// changed, and every member answers that it holds no copy of the key
    /// other than a primary's (`CopyHeld`: a hint, or an earlier layout's
    /// copy not handed off yet, handed to the primaries after the reap,
    /// would be stored again with no tombstone to supersede it).
    /// Each primary then drops its copy if it is still exactly this
    /// tombstone (`reap_local`); one that holds more keeps it, and
    /// anti-entropy brings that back to the others, which is safe: it is
    /// the tombstone or a newer write. Skipped otherwise: the tombstone stays.
    async fn reap(self: Arc<Self>, reap: Reap) {
        tokio::time::sleep(reap.delay).await;
        let layout = self.layout();
        let skip = |why: &str| {
            debug!(bucket = %reap.bucket, why, "tombstone not reaped");
            self.metrics.reaps_skipped.inc();
        };
        if layout.version() != reap.layout_version {
            return skip("the layout changed");
        }
        if !matches!(
            self.copy_held(&reap.bucket, &reap.key, &reap.primaries),
            Ok(false)
        ) {
            return skip("this node holds another copy of the key");
        }
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let asks = layout
            .members()
            .iter()
            .filter(|m| m.id != self.id)
            .map(|member| {
                let request = PeerRequest::CopyHeld {
                    bucket: reap.bucket.clone(),
                    key: reap.key.clone(),
                    primaries: reap.primaries.clone(),
                };
                self.peers.request(&member.peer_addr, request, timeout)
            });
        let answers = futures::future::join_all(asks).await;
        if !answers
            .iter()
            .all(|a| matches!(a, Ok(PeerResponse::CopyHeld { held: false })))
        {
            return skip("a member holds another copy of the key, or did not answer");
        }
        let digest = reap.object.digest();
        let clock = reap.object.clock().clone();
        let modified_ms = reap
            .object
            .siblings()
            .iter()
            .map(|s| s.modified_ms)
            .max()
            .unwrap_or(0);
        let drops = reap.primaries.iter().map(|&primary| {
            let (node, bucket, key, clock) = (
                self.clone(),
                reap.bucket.clone(),
                reap.key.clone(),
                clock.clone(),
            );
            let addr = Self::peer_addr(&layout, primary);
            async move {
                if primary == node.id {
                    return node
                        .reap_local(&bucket, &key, digest, &clock, modified_ms)
                        .await
                        .is_ok();
                }
                let Some(addr) = addr else { return false };
                let request = PeerRequest::Reap {
                    bucket,
                    key,
                    digest,
                    clock,
                    modified_ms,
                };
                matches!(
                    node.peers.request(&addr, request, timeout).await,
                    Ok(PeerResponse::Reaped { .. })
                )
            }
        });
        futures::future::join_all(drops).await;
    }

    /// Drops this node's copy of a key if it is still exactly the
    /// tombstone object with `digest` (and clock `clock`); `true` if it was
    /// dropped. This node's dots then count above the actor's counter in
    /// that clock (`dot_floor`: another replica may keep the tombstone).
    /// A node with `--delete-mode keep` keeps its tombstones.
    async fn reap_local(
        &self,
        bucket: &str,
        key: &[u8],
        digest: u64,
        clock: &VersionVector,
        modified_ms: u64,
    ) -> Result<bool, PeerResponse> {
        let partition = peer_key_partition(&self.layout(), bucket, key)?;
        if self.config.delete_mode == DeleteMode::Keep {
            return Ok(false);
        }
        // Before the drop's job is queued, so that every write the
        // committer runs after the drop counts above it.
        self.dot_floor
            .fetch_max(clock.get(self.actor), AtomicOrdering::SeqCst);
        // A stamp far ahead of this clock is a broken clock's: not followed
        // (every later write of this node would carry it).
        if modified_ms <= now_ms() + MAX_STAMP_LEAD_MS {
            self.stamp_floor
                .fetch_max(modified_ms, AtomicOrdering::SeqCst);
        }
        let dropped = self
            .store
            .drop_if_unchanged(
                partition,
                self.tree_n(bucket),
                object_key(bucket, key),
                digest,
            )
            .await
            .map_err(refused)?;
        if dropped {
            self.metrics.tombstones_reaped.inc();
        }
        Ok(dropped)
    }

    /// Whether this node holds a copy of the key that could reach its
    /// `primaries` later: a hint for any target, or, if it is none of
    /// them, a replica copy.
    fn copy_held(
        &self,
        bucket: &str,
        key: &[u8],
        primaries: &[NodeId],
    ) -> Result<bool, PeerResponse> {
        let partition = peer_key_partition(&self.layout(), bucket, key)?;
        if self
            .store
            .read_hint(partition, bucket, key)
            .map_err(refused)?
            .is_some()
        {
            return Ok(true);
        }
        Ok(!primaries.contains(&self.id)
            && self
                .store
                .read(partition, bucket, key)
                .map_err(refused)?
                .is_some())
    }

    /// Sends a put to the first primary that answers.
    async fn forward(
        &self,
        layout: &Layout,
        primaries: &[NodeId],
        op: ClientOp,
        w: usize,
        timeout: Duration,
    ) -> ClientReply {
        self.metrics.forwarded.inc();
        for primary in primaries {
            let Some(addr) = Self::peer_addr(layout, *primary) else {
                continue;
            };
            let result = self
                .peers
                .request(
                    &addr,
                    PeerRequest::Coordinate(op.clone()),
                    timeout + FORWARD_GRACE,
                )
                .await;
            self.observe(*primary, &result);
            match result {
                Ok(PeerResponse::Coordinated(reply)) => return reply,
                Ok(PeerResponse::Refused { message }) => {
                    return ClientReply::Failed(OpError::Internal { message });
                }
                Ok(other) => {
                    warn!(?other, "unexpected answer to a forwarded request");
                    self.metrics.peer_failures.inc();
                }
                // The primary may have written it: the outcome is unknown,
                // and trying another primary could apply the write twice.
                Err(PeerError::Timeout | PeerError::Disconnected) => {
                    return ClientReply::Failed(OpError::Timeout {
                        got: 0,
                        needed: w as u32,
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                Err(e) => {
                    debug!(peer = %addr, error = %e, "primary unreachable; trying the next");
                    self.metrics.peer_failures.inc();
                }
            }
        }
        ClientReply::Failed(OpError::Unavailable {
            got: 0,
            needed: w as u32,
        })
    }

    pub(crate) async fn coordinate_get(
        self: &Arc<Self>,
        bucket: String,
        key: Vec<u8>,
        r: Option<u32>,
        pr: Option<u32>,
        timeout_ms: u64,
    ) -> ClientReply {
        let layout = self.layout();
        let effective = self.effective(&bucket, &layout);
        let (r, pr) = match (effective.quorum("r", r), effective.strict_quorum("pr", pr)) {
            (Ok(r), Ok(pr)) => (r.max(pr), pr),
            (Err(e), _) | (_, Err(e)) => return ClientReply::Failed(e),
        };
        let partition = partition_of(key_hash(bucket.as_bytes(), &key), layout.partitions());
        let plan = self.replica_plan(&layout, partition, effective.n);
        let timeout = Duration::from_millis(timeout_ms);
        let (mode, durability) = (effective.props.conflict, effective.durability);
        let asked: Vec<NodeId> = plan.iter().map(|r| r.node).collect();
        let holders = self.holders_to_ask(&layout, partition, &asked);
        // A single local replica (n=1, or a one-node cluster): answer inline,
        // without tasks and channels; nothing to repair.
        if asked == [self.id] && holders.is_empty() && (pr == 0 || plan[0].hint_for.is_none()) {
            return match self.read_local(partition, &bucket, &key, mode) {
                Ok(object) => {
                    if let Some(object) = &object {
                        self.metrics
                            .siblings_read
                            .observe(object.live_siblings().count() as f64);
                    }
                    ClientReply::Found {
                        object: object.map(|o| o.encode()),
                    }
                }
                Err(e) => ClientReply::Failed(self.store_failure(e)),
            };
        }
        let primaries: Vec<NodeId> = plan
            .iter()
            .filter(|r| r.hint_for.is_none())
            .map(|r| r.node)
            .collect();
        let plan_is_primaries = holders.is_empty() && primaries.len() == effective.n;
        let layout_version = layout.version();
        let (replies_tx, mut replies) =
            mpsc::channel::<(NodeId, Option<Option<Object>>)>(asked.len() + holders.len());
        let copies = asked.iter().map(|replica| (*replica, None));
        for (from, holder_since) in
            copies.chain(holders.iter().map(|(h, since)| (*h, Some(*since))))
        {
            let node = self.clone();
            let (bucket, key, replies_tx) = (bucket.clone(), key.clone(), replies_tx.clone());
            let addr = Self::peer_addr(&layout, from);
            tokio::spawn(async move {
                let reply = node
                    .read_copy(
                        from,
                        holder_since,
                        addr,
                        partition,
                        bucket,
                        key,
                        mode,
                        timeout,
                    )
                    .await;
                let _ = replies_tx.send((from, reply)).await;
            });
        }
        drop(replies_tx);
        let (decided_tx, decided) = oneshot::channel();
        let node = self.clone();
        tokio::spawn(async move {
            let mut round = GetRound::with_primaries(r, pr, primaries.clone(), asked, mode)
                .with_holders(holders.into_iter().map(|(holder, _)| holder));
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut decided_tx = Some(decided_tx);
            if let Some(decision) = round.start() {
                let _ = decided_tx.take().expect("first decision").send(decision);
            }
            while !round.is_complete() {
                let decision = tokio::select! {
                    reply = replies.recv() => match reply {
                        Some((from, Some(object))) => round.replied(from, object),
                        Some((from, None)) => round.failed(from),
                        None => break,
                    },
                    () = &mut deadline => break,
                };
                if let Some(decision) = decision
                    && let Some(tx) = decided_tx.take()
                {
                    let _ = tx.send(decision);
                }
            }
            if let (Some(tx), Some(d)) = (decided_tx.take(), round.timed_out()) {
                let _ = tx.send(d);
            }
            node.read_repair(
                &round, &primaries, partition, &bucket, &key, mode, durability,
            )
            .await;
            // Every primary answered with the same tombstone (a delete
            // that could not be reaped when it was made, as Riak reaps on
            // reads too): reaped now, by the same rules.
            if round.all_replied()
                && round.stale_replicas().is_empty()
                && plan_is_primaries
                && let Some(object) = round.merged()
                && let Some(reap) = node.reap_of(&bucket, &key, &object, layout_version, primaries)
            {
                node.reap(reap).await;
            }
        });
        match decided.await {
            Ok(Quorum::Reached(object)) => {
                if let Some(object) = &object {
                    self.metrics
                        .siblings_read
                        .observe(object.live_siblings().count() as f64);
                }
                ClientReply::Found {
                    object: object.map(|o| o.encode()),
                }
            }
            Ok(Quorum::Unreachable { got, needed } | Quorum::TimedOut { got, needed }) => {
                ClientReply::Failed(OpError::Unavailable { got, needed })
            }
            Err(_) => ClientReply::Failed(OpError::Internal {
                message: "get round ended without a decision".into(),
            }),
        }
    }

    /// A peer's read of the local copy of a key: the encoded object and the
    /// key's partition, or the refusal to send.
    fn answer_read(
        &self,
        bucket: &str,
        key: &[u8],
    ) -> Result<(Option<Vec<u8>>, u32), PeerResponse> {
        let layout = self.layout();
        let partition = peer_key_partition(&layout, bucket, key)?;
        let mode = self.effective(bucket, &layout).props.conflict;
        match self.read_local(partition, bucket, key, mode) {
            Ok(object) => Ok((object.map(|o| o.encode()), partition)),
            Err(e) => {
                error!(error = %e, %bucket, "replica read failed");
                Err(PeerResponse::Refused {
                    message: e.to_string(),
                })
            }
        }
    }

    /// One copy of a key: a replica's, or with `holder_since` a handoff
    /// holder's (see `Node::holders`; forgotten once it answers that it
    /// has nothing left to hand off). Some(object or None) on an answer,
    /// None on failure.
    #[allow(clippy::too_many_arguments)]
    async fn read_copy(
        &self,
        from: NodeId,
        holder_since: Option<u64>,
        addr: Option<String>,
        partition: u32,
        bucket: String,
        key: Vec<u8>,
        mode: ConflictMode,
        timeout: Duration,
    ) -> Option<Option<Object>> {
        if from == self.id {
            if let Some(since) = holder_since
                && !self.holds_handoff(&self.layout(), partition)
            {
                self.forget_holder(partition, from, since);
            }
            return match self.read_local(partition, &bucket, &key, mode) {
                Ok(object) => Some(object),
                Err(e) => {
                    error!(error = %e, %bucket, "local read failed");
                    None
                }
            };
        }
        let addr = addr?;
        let request = match holder_since {
            None => PeerRequest::ReplicaGet { bucket, key },
            Some(since) => PeerRequest::HandoffGet {
                bucket,
                key,
                layout_version: since,
            },
        };
        let result = self.peers.request(&addr, request, timeout).await;
        self.observe(from, &result);
        let object = match (result, holder_since) {
            (Ok(PeerResponse::ReplicaGetDone { object }), None) => object,
            (Ok(PeerResponse::HandoffGetDone { object, holding }), Some(since)) => {
                if !holding {
                    self.forget_holder(partition, from, since);
                }
                object
            }
            _ => {
                self.metrics.peer_failures.inc();
                return None;
            }
        };
        match object.map(|bytes| Object::decode(&bytes)).transpose() {
            Ok(object) => Some(object),
            Err(e) => {
                warn!(peer = %addr, error = %e, "peer sent a malformed object");
                None
            }
        }
    }

    /// Sends the merged object to the stale primaries (fallbacks hand
    /// their hints off on their own).
    #[allow(clippy::too_many_arguments)]
    async fn read_repair(
        &self,
        round: &GetRound,
        primaries: &[NodeId],
        partition: u32,
        bucket: &str,
        key: &[u8],
        mode: ConflictMode,
        durability: DurabilityMode,
    ) {
        let stale = round.stale_replicas();
        let Some(merged) = round.merged() else {
            return;
        };
        if stale.is_empty() {
            return;
        }
        let layout = self.layout();
        for replica in stale.into_iter().filter(|r| primaries.contains(r)) {
            self.metrics.read_repairs.inc();
            if replica == self.id {
                let incoming = merged.clone();
                let result = self
                    .store
                    .update(
                        partition,
                        bucket,
                        key,
                        self.tree_n(bucket),
                        durability,
                        move |current| Ok::<_, ()>(merge_into(current, &incoming, mode)),
                    )
                    .await;
                if let Err(e) = result {
                    warn!(error = %e, "local read repair failed");
                }
            } else if let Some(addr) = Self::peer_addr(&layout, replica) {
                let request = PeerRequest::ReplicaPut {
                    bucket: bucket.to_string(),
                    key: key.to_vec(),
                    object: merged.encode(),
                    conflict: mode,
                    durability,
                };
                let timeout = Duration::from_millis(self.config.request_timeout_ms);
                if self.peers.request(&addr, request, timeout).await.is_err() {
                    self.metrics.peer_failures.inc();
                }
            }
        }
    }

    /// Storage failed a local write (not a full queue): see
    /// `local_write_failed_ms`.
    fn local_write_failed(&self, e: &StoreError) {
        if !matches!(e, StoreError::Busy) {
            self.local_write_failed_ms
                .store(now_ms(), AtomicOrdering::Relaxed);
        }
    }

    /// Whether a local write failed in storage in the last
    /// `LOCAL_FAILURE_BACKOFF_MS`.
    pub(crate) fn local_writes_failing(&self) -> bool {
        let failed = self.local_write_failed_ms.load(AtomicOrdering::Relaxed);
        failed != 0 && now_ms().saturating_sub(failed) < LOCAL_FAILURE_BACKOFF_MS
    }

    fn store_failure(&self, e: StoreError) -> OpError {
        match e {
            StoreError::Busy => OpError::Overloaded,
            e => {
                error!(error = %e, "local storage failed");
                OpError::Internal {
                    message: e.to_string(),
                }
            }
        }
    }

    // ---------------------------------------------------------------- peer requests

    pub async fn handle_peer(self: Arc<Self>, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::ReplicaGet { bucket, key } => match self.answer_read(&bucket, &key) {
                Ok((object, _)) => PeerResponse::ReplicaGetDone { object },
                Err(refused) => refused,
            },
            PeerRequest::HandoffGet {
                bucket,
                key,
                layout_version,
            } => match self.answer_read(&bucket, &key) {
                Ok((object, partition)) => {
                    let layout = self.layout();
                    // Until it uses the asker's layout, it cannot tell.
                    let holding =
                        layout.version() < layout_version || self.holds_handoff(&layout, partition);
                    PeerResponse::HandoffGetDone { object, holding }
                }
                Err(refused) => refused,
            },
            PeerRequest::ReplicaPut {
                bucket,
                key,
                object,
                conflict,
                durability,
            } => {
                let incoming =
                    match incoming_write(&bucket, &key, &object, self.config.max_value_bytes) {
                        Ok(incoming) => incoming,
                        Err(refused) => return refused,
                    };
                let partition = partition_of(
                    key_hash(bucket.as_bytes(), &key),
                    self.layout().partitions(),
                );
                let result = self
                    .store
                    .update(
                        partition,
                        &bucket,
                        &key,
                        self.tree_n(&bucket),
                        durability,
                        move |current| Ok::<_, ()>(merge_into(current, &incoming, conflict)),
                    )
                    .await;
                match result {
                    Ok(_) => PeerResponse::ReplicaPutDone,
                    Err(e) => PeerResponse::Refused {
                        message: e.to_string(),
                    },
                }
            }
            PeerRequest::HintPut {
                bucket,
                key,
                object,
                conflict,
                durability,
                hint_for,
            } => {
                self.store_hint(bucket, key, object, conflict, durability, hint_for)
                    .await
            }
            PeerRequest::Ping { from } => {
                // Only members are tracked: ids that are not cannot grow the detector.
                if self.layout().member(from).is_some() {
                    self.detector
                        .lock()
                        .expect("detector lock")
                        .heartbeat(from, now_ms());
                }
                PeerResponse::Pong { from: self.id }
            }
            PeerRequest::AntiEntropy {
                partition,
                n,
                request,
            } => self.answer_exchange(partition, n, &request),
            PeerRequest::Coordinate(op) => PeerResponse::Coordinated(self.execute(op, false).await),
            PeerRequest::Gossip(state) => {
                self.absorb(state).await;
                PeerResponse::Gossip(self.gossip_state())
            }
            PeerRequest::Join { member } => self.handle_join(member).await,
            PeerRequest::CopyHeld {
                bucket,
                key,
                primaries,
            } => match self.copy_held(&bucket, &key, &primaries) {
                Ok(held) => PeerResponse::CopyHeld { held },
                Err(refused) => refused,
            },
            PeerRequest::Reap {
                bucket,
                key,
                digest,
                clock,
                modified_ms,
            } => match self
                .reap_local(&bucket, &key, digest, &clock, modified_ms)
                .await
            {
                Ok(dropped) => PeerResponse::Reaped { dropped },
                Err(refused) => refused,
            },
            PeerRequest::ScanPartition {
                partition,
                hints,
                after,
                max_bytes,
            } => {
                if partition >= self.layout().partitions() {
                    return PeerResponse::Refused {
                        message: format!("no partition {partition}"),
                    };
                }
                // The answer must fit in a frame.
                let max_bytes = (max_bytes as usize).min(self.config.max_frame_bytes / 2);
                match self.scan_page(partition, hints, after.as_deref(), max_bytes) {
                    Ok((entries, done)) => PeerResponse::ScanPage { entries, done },
                    Err(e) => PeerResponse::Refused {
                        message: e.to_string(),
                    },
                }
            }
        }
    }

    async fn handle_join(self: &Arc<Self>, member: Member) -> PeerResponse {
        if let Err(message) = check_member(&member) {
            return PeerResponse::Refused { message };
        }
        {
            let _serial = self.membership.lock().await;
            let layout = self.layout();
            match layout.with_member(member.clone()) {
                Some(next) => {
                    info!(joining = %member.name, version = next.version(), "member joined");
                    if let Err(e) = self.adopt_layout(next) {
                        return PeerResponse::Refused {
                            message: e.to_string(),
                        };
                    }
                }
                None if layout.member(member.id).is_none() => {
                    let message = match layout.member_by_name(&member.name) {
                        Some(m) if m.state == MemberState::Leaving => format!(
                            "{} is the name of a member that is leaving: wait until it has left, or use another name",
                            member.name
                        ),
                        _ => format!(
                            "the cluster is full: {} partitions, each member owns at least one",
                            layout.partitions()
                        ),
                    };
                    return PeerResponse::Refused { message };
                }
                None => {} // already a member, unchanged
            }
        }
        let node = self.clone();
        tokio::spawn(async move { node.announce().await });
        PeerResponse::Joined {
            layout: self.layout().encode(),
            buckets: (*self.buckets()).clone(),
            holders: self.holders.lock().expect("holders lock").clone(),
        }
    }

    // ---------------------------------------------------------------- hinted handoff

    async fn store_hint(
        &self,
        bucket: String,
        key: Vec<u8>,
        object: Vec<u8>,
        conflict: ConflictMode,
        durability: DurabilityMode,
        hint_for: NodeId,
    ) -> PeerResponse {
        let incoming = match incoming_write(&bucket, &key, &object, self.config.max_value_bytes) {
            Ok(incoming) => incoming,
            Err(refused) => return refused,
        };
        // A full hint store refuses: the coordinator then counts this
        // replica as failed and may still reach W through others.
        if self.hint_store_full(object.len()) {
            let (records, bytes) = self.store.hint_usage();
            return PeerResponse::Refused {
                message: format!(
                    "hint store is full ({records} hints, {bytes} bytes; limits {} and {})",
                    self.config.hints_max, self.config.hints_max_bytes
                ),
            };
        }
        let partition = partition_of(
            key_hash(bucket.as_bytes(), &key),
            self.layout().partitions(),
        );
        let result = self
            .store
            .update_hint(
                partition,
                object_key(&bucket, &key),
                durability,
                move |current| {
                    let is_new = current.is_none();
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
                    (Some(hint), is_new)
                },
            )
            .await;
        match result {
            Ok(is_new) => {
                if is_new {
                    self.hint_stored();
                }
                PeerResponse::ReplicaPutDone
            }
            Err(e) => PeerResponse::Refused {
                message: e.to_string(),
            },
        }
    }

    /// Hands hints off to their primaries once these are reachable again;
    /// a hint is deleted only after its primary durably acknowledged it.
    pub async fn hint_delivery_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.hints_pending() == 0 {
                continue;
            }
            if let Err(e) = self.deliver_hints().await {
                warn!(error = %e, "hint delivery failed");
            }
        }
    }

    async fn deliver_hints(self: &Arc<Self>) -> Result<(), StoreError> {
        let layout = self.layout();
        let budget_per_pass = self.config.hint_delivery_per_second.div_ceil(2).max(1);
        let mut delivered = 0usize;
        for partition in 0..layout.partitions() {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.store.scan_hints(partition, after.as_deref(), 128)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                for (raw_key, hint) in page {
                    let Some((bucket, key)) = split_object_key(&raw_key) else {
                        warn!("hint with a malformed key; skipping");
                        continue;
                    };
                    let mode = self.effective(&bucket, &layout).props.conflict;
                    for target in hint.targets.iter().copied() {
                        if delivered >= budget_per_pass {
                            return Ok(());
                        }
                        if layout.member(target).is_none() {
                            // The target was replaced (a wiped node rejoins
                            // with a new id); its successor gets the data
                            // through anti-entropy.
                            self.drop_hint_target(partition, &raw_key, target, None)
                                .await?;
                            continue;
                        }
                        let Some(addr) =
                            Self::peer_addr(&layout, target).filter(|_| self.usable(target))
                        else {
                            continue;
                        };
                        delivered += 1;
                        let request = PeerRequest::ReplicaPut {
                            bucket: bucket.clone(),
                            key: key.clone(),
                            object: hint.object.encode(),
                            conflict: mode,
                            durability: DurabilityMode::Sync,
                        };
                        let timeout = Duration::from_millis(self.config.request_timeout_ms);
                        let result = self.peers.request(&addr, request, timeout).await;
                        self.observe(target, &result);
                        if !matches!(result, Ok(PeerResponse::ReplicaPutDone)) {
                            continue;
                        }
                        self.drop_hint_target(
                            partition,
                            &raw_key,
                            target,
                            Some(hint.object.clone()),
                        )
                        .await?;
                        self.metrics.hints_delivered.inc();
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes `target` from a key's hint (deleting the record once no
    /// target is left). With `only_if`, only while the hint still holds
    /// exactly that object: a newer hinted write keeps the target.
    async fn drop_hint_target(
        &self,
        partition: u32,
        raw_key: &[u8],
        target: NodeId,
        only_if: Option<Object>,
    ) -> Result<bool, StoreError> {
        let removed = self
            .store
            .update_hint(
                partition,
                raw_key.to_vec(),
                DurabilityMode::Sync,
                move |current| match current {
                    Some(h) if only_if.as_ref().is_some_and(|sent| *sent != h.object) => {
                        (Some(h), false)
                    }
                    Some(mut h) => {
                        h.targets.remove(&target);
                        if h.targets.is_empty() {
                            (None, true)
                        } else {
                            (Some(h), false)
                        }
                    }
                    None => (None, false),
                },
            )
            .await?;
        Ok(removed)
    }

    /// Pings every other member so the failure detector has fresh samples.
    pub async fn heartbeat_loop(self: Arc<Self>) {
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let layout = self.layout();
            for member in layout.members().iter().filter(|m| m.id != self.id) {
                let node = self.clone();
                let (id, addr) = (member.id, member.peer_addr.clone());
                tokio::spawn(async move {
                    let timeout = Duration::from_millis(node.config.heartbeat_interval_ms * 4);
                    let result = node
                        .peers
                        .request(&addr, PeerRequest::Ping { from: node.id }, timeout)
                        .await;
                    node.observe(id, &result);
                });
            }
        }
    }

    // ---------------------------------------------------------------- membership

    pub fn gossip_state(&self) -> GossipState {
        GossipState {
            from: self.id,
            layout: self.layout().encode(),
            buckets: (*self.buckets()).clone(),
        }
    }

    /// Persists and uses `layout` if it is newer than the current one.
    pub fn adopt_layout(&self, layout: Layout) -> Result<bool, StoreError> {
        let mut current = self.layout.write().expect("layout lock");
        if !layout.supersedes(&current) {
            return Ok(false);
        }
        // The partition count is fixed when a cluster is created; a layout
        // with another is from another cluster, and adopting it would put
        // every key in a partition it was not stored under.
        if layout.partitions() != current.partitions() {
            warn!(
                ours = current.partitions(),
                theirs = layout.partitions(),
                version = layout.version(),
                "refusing a layout with another partition count (a node of another cluster?)"
            );
            return Ok(false);
        }
        self.store.meta_put_sync(META_LAYOUT, layout.encode())?;
        info!(
            version = layout.version(),
            members = layout.members().len(),
            "using new layout"
        );
        self.metrics.layout_version.set(layout.version() as i64);
        self.layout_changed_ms
            .store(now_ms(), AtomicOrdering::Relaxed);
        {
            let mut leavers = self.leavers.lock().expect("leavers lock");
            leavers.retain(|id| layout.member(*id).is_some());
            leavers.extend(
                layout
                    .members()
                    .iter()
                    .filter(|m| m.state == MemberState::Leaving)
                    .map(|m| m.id),
            );
        }
        let version = layout.version();
        // Only a restart needs them stored: a failure there is no reason
        // not to use the layout.
        if let Err(e) = self.add_holders(
            previous_holders(&current, &layout, self.max_n())
                .into_iter()
                .map(|(partition, members)| {
                    (
                        partition,
                        members.into_iter().map(|m| (m, version)).collect(),
                    )
                })
                .collect(),
            &layout,
        ) {
            warn!(error = %e, "cannot store the handoff holders");
        }
        *current = Arc::new(layout);
        Ok(true)
    }

    /// Records handoff holders (see the field), forgets those that are no
    /// member of `layout` any more, and stores them all.
    pub fn add_holders(&self, found: Holders, layout: &Layout) -> Result<(), StoreError> {
        let record = {
            let mut holders = self.holders.lock().expect("holders lock");
            holders.retain(|_, known| {
                known.retain(|member, _| layout.member(*member).is_some());
                !known.is_empty()
            });
            for (partition, members) in found {
                let known = holders.entry(partition).or_default();
                for (member, version) in members {
                    let since = known.entry(member).or_insert(version);
                    *since = (*since).max(version);
                }
            }
            let mut record = vec![1u8];
            record.extend(postcard::to_stdvec(&*holders).expect("holders serialise"));
            record
        };
        self.store.meta_put_sync(META_HOLDERS, record)
    }

    /// (partition, member) pairs in `Node::holders`.
    pub fn holder_count(&self) -> usize {
        let holders = self.holders.lock().expect("holders lock");
        holders.values().map(BTreeMap::len).sum()
    }

    /// The largest `n` of any bucket (set or default).
    fn max_n(&self) -> usize {
        let buckets = self.buckets();
        buckets
            .iter()
            .map(|(_, entry)| entry.props.n)
            .chain([BucketProps::default().n, BucketProps::lww().n])
            .max()
            .unwrap_or(1) as usize
    }

    /// The holders (see the field) of `partition` to ask besides `asked`:
    /// members still in the layout, and reachable.
    fn holders_to_ask(
        &self,
        layout: &Layout,
        partition: u32,
        asked: &[NodeId],
    ) -> Vec<(NodeId, u64)> {
        // Copied out first: `usable` takes the layout lock, which
        // `adopt_layout` holds while it takes this one.
        let known: Vec<(NodeId, u64)> =
            match self.holders.lock().expect("holders lock").get(&partition) {
                Some(known) => known.iter().map(|(m, since)| (*m, *since)).collect(),
                None => return Vec::new(),
            };
        known
            .into_iter()
            .filter(|(m, _)| {
                !asked.contains(m)
                    && layout.member(*m).is_some()
                    && (*m == self.id || self.usable(*m))
            })
            .collect()
    }

    /// `holder` answered that it holds nothing of `partition` to hand off,
    /// having seen the layout of version `since` that made it a holder.
    fn forget_holder(&self, partition: u32, holder: NodeId, since: u64) {
        let mut holders = self.holders.lock().expect("holders lock");
        if let Some(known) = holders.get_mut(&partition) {
            if known.get(&holder).is_some_and(|v| *v <= since) {
                known.remove(&holder);
            }
            if known.is_empty() {
                holders.remove(&partition);
            }
        }
    }

    /// This node holds keys of `partition` that it is no replica of under
    /// `layout`: its handoff of the partition is not done. Also true while
    /// its trees are still being built at start: it cannot tell yet.
    pub(crate) fn holds_handoff(&self, layout: &Layout, partition: u32) -> bool {
        !self.trees_built.load(AtomicOrdering::Acquire)
            || self
                .store
                .trees()
                .of_partition(partition)
                .into_iter()
                .any(|(n, tree)| {
                    !tree.lock().expect("tree lock").is_empty()
                        && !layout
                            .preference_list(partition, n as usize)
                            .primaries
                            .contains(&self.id)
                })
    }

    pub fn set_bucket(&self, bucket: &str, props: BucketProps) -> Result<(), OpError> {
        let mut current = self.buckets.write().expect("buckets lock");
        let mut next = (**current).clone();
        next.set(bucket, props, now_ms(), self.id)
            .map_err(bad_request)?;
        self.persist_buckets(&next)
            .map_err(|e| self.store_failure(e))?;
        *current = Arc::new(next);
        Ok(())
    }

    fn persist_buckets(&self, buckets: &BucketRegistry) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(buckets).expect("bucket registry serialises");
        let mut record = vec![1u8];
        record.extend_from_slice(&bytes);
        self.store.meta_put_sync(META_BUCKETS, record)
    }

    /// Takes in a peer's gossip: newer layout, newer bucket properties.
    pub async fn absorb(self: &Arc<Self>, state: GossipState) {
        match Layout::decode(&state.layout) {
            Ok(layout) => {
                if let Err(e) = self.adopt_layout(layout) {
                    error!(error = %e, "cannot persist layout");
                }
            }
            Err(e) => warn!(from = state.from, error = %e, "peer gossiped a malformed layout"),
        }
        let changed = {
            let mut current = self.buckets.write().expect("buckets lock");
            let mut next = (**current).clone();
            if next.merge(&state.buckets) {
                if let Err(e) = self.persist_buckets(&next) {
                    error!(error = %e, "cannot persist bucket properties");
                }
                *current = Arc::new(next);
                true
            } else {
                false
            }
        };
        if changed {
            debug!("bucket properties updated by gossip");
        }
        self.ensure_membership().await;
        self.ensure_leaves().await;
    }

    /// Applies again the leave of a member seen leaving that a newer layout
    /// lists as valid (a concurrent change won the gossip over the leave).
    async fn ensure_leaves(&self) {
        let lost: Vec<NodeId> = {
            let layout = self.layout();
            let leavers = self.leavers.lock().expect("leavers lock");
            leavers
                .iter()
                .copied()
                .filter(|id| {
                    layout
                        .member(*id)
                        .is_some_and(|m| m.state == MemberState::Valid)
                })
                .collect()
        };
        for id in lost {
            let outcome = self
                .apply_membership_change(id, |layout, member| {
                    layout
                        .with_member_leaving(member.id)
                        .map_err(LeaveRefusal::Layout)
                })
                .await;
            match outcome {
                Ok(version) => info!(
                    member = format!("{id:016x}"),
                    version, "a lost leave applied again"
                ),
                Err(e) => {
                    warn!(member = format!("{id:016x}"), error = ?e, "cannot apply a lost leave again");
                    self.leavers.lock().expect("leavers lock").remove(&id);
                }
            }
        }
    }

    /// Marks member `name` leaving ([`Layout::with_member_leaving`]),
    /// adopts the layout and announces it; answers its version. As with a
    /// join, a concurrent layout change at the same version may win the
    /// gossip: `cluster status` shows whether the leave took.
    pub async fn ask_to_leave(self: &Arc<Self>, name: &str) -> Result<u64, LeaveRefusal> {
        self.change_membership(name, |layout, member| {
            layout
                .with_member_leaving(member.id)
                .map_err(LeaveRefusal::Layout)
        })
        .await
    }

    /// Takes member `name` out of the layout at once, without a handoff
    /// ([`Layout::with_member_removed`]): for a node that is gone for good.
    /// Refused for this node itself and for a member this node hears from
    /// (up or suspect): `cluster leave` hands a running node's data off first.
    pub async fn ask_to_remove(self: &Arc<Self>, name: &str) -> Result<u64, LeaveRefusal> {
        self.change_membership(name, |layout, member| {
            let heard = matches!(
                self.peer_view(member.id).liveness,
                Liveness::Up | Liveness::Suspect
            );
            if member.id == self.id || heard {
                return Err(LeaveRefusal::Running);
            }
            layout
                .with_member_removed(member.id)
                .map_err(LeaveRefusal::Layout)
        })
        .await
    }

    /// Applies `change` to member `name` of the current layout, adopts the
    /// result and announces it; answers its version.
    async fn change_membership(
        self: &Arc<Self>,
        name: &str,
        change: impl FnOnce(&Layout, &Member) -> Result<Layout, LeaveRefusal>,
    ) -> Result<u64, LeaveRefusal> {
        let id = self
            .layout()
            .member_by_name(name)
            .ok_or(LeaveRefusal::NoSuchMember)?
            .id;
        let version = self.apply_membership_change(id, change).await?;
        let node = self.clone();
        tokio::spawn(async move { node.announce().await });
        Ok(version)
    }

    /// Applies `change` to member `id` and adopts the result (gossip
    /// spreads it); answers its version.
    async fn apply_membership_change(
        &self,
        id: NodeId,
        change: impl FnOnce(&Layout, &Member) -> Result<Layout, LeaveRefusal>,
    ) -> Result<u64, LeaveRefusal> {
        let _serial = self.membership.lock().await;
        let layout = self.layout();
        let member = layout.member(id).ok_or(LeaveRefusal::NoSuchMember)?;
        let next = change(&layout, member)?;
        let version = next.version();
        self.adopt_layout(next).map_err(LeaveRefusal::Store)?;
        info!(member = %member.name, version, "membership changed");
        Ok(version)
    }

    /// If the layout lost this node (a concurrent change won) or has stale
    /// addresses for it, put it back. Its state is the layout's to keep.
    async fn ensure_membership(self: &Arc<Self>) {
        if self.left.load(AtomicOrdering::SeqCst) {
            return;
        }
        let layout = self.layout();
        let listed_as_me = |m: &Member| {
            *m == Member {
                state: m.state,
                ..self.me.clone()
            }
        };
        if layout.member(self.id).is_some_and(listed_as_me) {
            return;
        }
        let _serial = self.membership.lock().await;
        if let Some(next) = self.layout().with_member(self.me.clone())
            && let Err(e) = self.adopt_layout(next)
        {
            error!(error = %e, "cannot persist layout");
        }
    }

    /// Sends gossip to every other member now (after a layout change).
    pub async fn announce(self: &Arc<Self>) {
        let layout = self.layout();
        for member in layout.members().iter().filter(|m| m.id != self.id) {
            let node = self.clone();
            let addr = member.peer_addr.clone();
            tokio::spawn(async move { node.gossip_with(&addr).await });
        }
    }

    /// Exchanges state with the member at `addr`; `true` if it answered.
    async fn gossip_with(self: &Arc<Self>, addr: &str) -> bool {
        let timeout = Duration::from_millis(self.config.gossip_interval_ms.max(1000));
        match self
            .peers
            .request(addr, PeerRequest::Gossip(self.gossip_state()), timeout)
            .await
        {
            Ok(PeerResponse::Gossip(state)) => {
                self.absorb(state).await;
                true
            }
            Ok(_) => false,
            Err(e) => {
                debug!(peer = %addr, error = %e, "gossip failed");
                false
            }
        }
    }

    /// Once a leaving node has handed everything off: takes it out of the
    /// layout, records that in its data dir (it will not start again),
    /// tells every other member (trying for a few seconds until one
    /// answers), and wakes [`Node::has_left`], on which the server stops.
    pub(crate) async fn finish_leaving(self: &Arc<Self>) {
        let next = {
            let _serial = self.membership.lock().await;
            let Some(next) = self.layout().without_member(self.id) else {
                return;
            };
            self.left.store(true, AtomicOrdering::SeqCst);
            // The layout first: a marker without it would keep a node that
            // is still a member from starting again.
            if let Err(e) = self.adopt_layout(next.clone()).and_then(|_| {
                self.store
                    .meta_put_sync(META_LEFT, next.version().to_be_bytes().to_vec())
            }) {
                error!(error = %e, "cannot record leaving the cluster; staying");
                self.left.store(false, AtomicOrdering::SeqCst);
                return;
            }
            next
        };
        let addrs: Vec<String> = next.members().iter().map(|m| m.peer_addr.clone()).collect();
        let mut told = 0;
        for _attempt in 0..10 {
            for addr in &addrs {
                told += usize::from(self.gossip_with(addr).await);
            }
            if told > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if told == 0 {
            warn!(
                "no member answered: the others list this node as leaving until a member is told"
            );
        }
        info!(version = next.version(), told, "left the cluster; stopping");
        self.stop.send_replace(true);
    }

    /// How long ago this node last adopted a new layout.
    pub(crate) fn layout_age(&self) -> Duration {
        Duration::from_millis(
            now_ms().saturating_sub(self.layout_changed_ms.load(AtomicOrdering::Relaxed)),
        )
    }

    /// Returns once this node has left the cluster and told the others.
    pub async fn has_left(&self) {
        let mut stop = self.stop.subscribe();
        // The sender lives as long as `self`, so this waits until it is true.
        let _ = stop.wait_for(|stop| *stop).await;
    }

    /// Every interval, exchanges state with one random other member.
    pub async fn gossip_loop(self: Arc<Self>) {
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.config.gossip_interval_ms));
        loop {
            interval.tick().await;
            let layout = self.layout();
            let others: Vec<&Member> = layout
                .members()
                .iter()
                .filter(|m| m.id != self.id)
                .collect();
            if others.is_empty() {
                continue;
            }
            let pick = rand::rng().random_range(0..others.len());
            let addr = others[pick].peer_addr.clone();
            self.gossip_with(&addr).await;
        }
    }
}

/// The partition of a key a peer names, once the bucket name and key
/// are checked (a refusal saying why otherwise).
fn peer_key_partition(layout: &Layout, bucket: &str, key: &[u8]) -> Result<u32, PeerResponse> {
    validate_bucket_name(bucket)
        .and(validate_key(key))
        .map_err(refused)?;
    Ok(partition_of(
        key_hash(bucket.as_bytes(), key),
        layout.partitions(),
    ))
}

fn refused(error: impl std::fmt::Display) -> PeerResponse {
    PeerResponse::Refused {
        message: error.to_string(),
    }
}

pub(crate) fn merge_into(current: Option<Object>, incoming: &Object, mode: ConflictMode) -> Object {
    match current {
        None => incoming.clone(),
        Some(current) => current.merge(incoming, mode),
    }
}

fn check_member(member: &Member) -> Result<(), String> {
    if member.id == 0 {
        return Err("member id must not be 0".into());
    }
    if member.name.is_empty() || member.name.len() > 64 {
        return Err("member name must be 1-64 characters".into());
    }
    for addr in [&member.peer_addr, &member.http_addr, &member.resp_addr] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|_| format!("member address {addr:?} is not ip:port"))?;
    }
    Ok(())
}

/// `Node::holders` as last stored (none if never, or unreadable).
fn stored_holders(store: &LocalStore) -> Holders {
    match store.meta_get(META_HOLDERS) {
        Ok(Some(record)) => match record.split_first() {
            Some((1, bytes)) => postcard::from_bytes(bytes).unwrap_or_else(|e| {
                warn!(error = %e, "stored handoff holders are unreadable; starting without");
                BTreeMap::new()
            }),
            _ => {
                warn!("stored handoff holders have an unknown format; starting without");
                BTreeMap::new()
            }
        },
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            warn!(error = %e, "cannot read the stored handoff holders; starting without");
            BTreeMap::new()
        }
    }
}

/// Checks a replica or hint write from a peer: valid bucket and key, an
/// object that decodes, values within `max_value_bytes`. A bad one is
/// refused and changes nothing.
fn incoming_write(
    bucket: &str,
    key: &[u8],
    object: &[u8],
    max_value_bytes: usize,
) -> Result<Object, PeerResponse> {
    let refused = |message: String| PeerResponse::Refused { message };
    validate_bucket_name(bucket)
        .and(validate_key(key))
        .map_err(|e| refused(e.to_string()))?;
    let object = Object::decode(object).map_err(|e| refused(e.to_string()))?;
    // The limit a client's write is held to holds for a peer's too.
    if let Some(len) = object
        .live_siblings()
        .filter_map(|s| s.value.as_ref().map(Vec::len))
        .find(|len| *len > max_value_bytes)
    {
        return Err(refused(format!(
            "a value of {len} bytes exceeds max-value-bytes ({max_value_bytes})"
        )));
    }
    Ok(object)
}

/// Why [`Node::ask_to_leave`] or [`Node::ask_to_remove`] refused.
#[derive(Debug)]
pub enum LeaveRefusal {
    NoSuchMember,
    /// A removal of a member that is running: it should leave instead.
    Running,
    Layout(ringkv_core::ring::LeaveError),
    Store(StoreError),
}
