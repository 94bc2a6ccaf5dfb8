//! `SimNode`: one simulated ringkv node. It runs the protocol of
//! `crates/node/src/node.rs` (coordinate_put / coordinate_get / forward /
//! read_repair / handle_peer) as a synchronous state machine over the real
//! core: `Object::update` and `Object::merge` for versions, `PutRound` and
//! `GetRound` for quorums, the real `MemoryStorage` for its disk. Inputs are
//! calls (client operation, peer message, commit, timer); outputs are
//! [`Effect`]s that the simulator carries out (send, reply, set a timer,
//! schedule a commit). It owns no clock, randomness or network.
//!
//! Writes go through a commit queue that stands for the node's group
//! committer: a write is queued, and at the next commit every queued
//! read-modify-write runs against the stored object (earlier jobs of the
//! batch included) and the batch is written, with `Durability::Sync` if any
//! job asked for it (the default), else `Durability::Buffered`; only then
//! are acknowledgements sent. Buffered writes are synced by a background
//! sync within the sync interval. A crash loses the queue, as a process
//! crash loses the committer's in-memory jobs, and `MemoryStorage::crash`
//! loses what was not synced.

use std::collections::BTreeMap;

use ringkv_core::NodeId;
use ringkv_core::bucket::{BucketProps, DurabilityMode, validate_bucket_name, validate_key};
use ringkv_core::causality::{ConflictMode, NewVersion, Object, UpdateError, VersionVector};
use ringkv_core::coordinator::{GetRound, PutRound, Quorum};
use ringkv_core::message::{ClientOp, ClientReply, OpError, PeerRequest, PeerResponse};
use ringkv_storage::{Durability, MemoryStorage, Space, Storage, WriteBatch};

use crate::cluster::Cluster;
use crate::config::PlantedBug;
use crate::history::OpId;

/// Extra time a forwarding node waits beyond the operation's own timeout
/// (`FORWARD_GRACE` in the node).
pub const FORWARD_GRACE_MS: u64 = 500;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    PutRound(u64),
    GetRound(u64),
    Forward { forward: u64, request: RequestId },
}

/// The key of an object inside its partition: `u16 BE bucket length ‖
/// bucket ‖ key`, as `crates/node/src/store.rs` stores it.
pub fn object_key(bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bucket.len() + key.len());
    out.extend_from_slice(&(bucket.len() as u16).to_be_bytes());
    out.extend_from_slice(bucket.as_bytes());
    out.extend_from_slice(key);
    out
}

/// Reads one object from a node's storage.
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

fn quorum(
    props: &BucketProps,
    field: &'static str,
    requested: Option<u32>,
    n: usize,
) -> Result<usize, OpError> {
    props
        .quorum(field, requested)
        .map(|q| q.min(n))
        .map_err(|e| OpError::BadRequest {
            message: e.to_string(),
        })
}

struct Target {
    partition: u32,
    bucket: String,
    key: Vec<u8>,
}

impl Target {
    fn storage_key(&self) -> (u32, Vec<u8>) {
        (self.partition, object_key(&self.bucket, &self.key))
    }
}

enum CommitJob {
    /// The coordinator's write: `Object::update` on the stored object.
    Coordinate {
        reply_to: Option<ReplyTo>,
        target: Target,
        context: VersionVector,
        new: NewVersion,
        mode: ConflictMode,
        max_siblings: usize,
        durability: DurabilityMode,
        primaries: Vec<NodeId>,
        w: usize,
        timeout_ms: u64,
    },
    /// A replica's (or read repair's) `Object::merge` of an incoming object.
    Merge {
        target: Target,
        incoming: Object,
        conflict: ConflictMode,
        durability: DurabilityMode,
        ack: Option<(NodeId, RequestId)>,
    },
}

/// What to do once a commit is durable (or failed).
enum AfterCommit {
    StartPut {
        reply_to: Option<ReplyTo>,
        target: Target,
        object: Object,
        mode: ConflictMode,
        durability: DurabilityMode,
        primaries: Vec<NodeId>,
        w: usize,
        timeout_ms: u64,
    },
    Reply(Option<ReplyTo>, ClientReply),
    Ack(Option<(NodeId, RequestId)>),
    /// A replica merge that failed: refuse the request.
    Refuse(Option<(NodeId, RequestId)>, String),
}

struct PutState {
    reply_to: Option<ReplyTo>,
    round: PutRound,
    context: VersionVector,
    /// Replica requests not answered yet.
    outstanding: usize,
    /// Set once the round found W unreachable: the node then waits for the
    /// answers still out (within the deadline) to report how many replicas
    /// really hold the write, counting late acknowledgements here.
    unreachable: Option<(u32, u32)>,
}

struct GetState {
    reply_to: Option<ReplyTo>,
    round: GetRound,
    target: Target,
    mode: ConflictMode,
    durability: DurabilityMode,
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
    PutReplica { round: u64 },
    GetReplica { round: u64, replica: NodeId },
    Forward { forward: u64 },
}

pub struct SimNode {
    pub id: NodeId,
    storage: MemoryStorage,
    next_id: u64,
    commit_queue: Vec<CommitJob>,
    /// A Buffered commit has not been made durable yet.
    unsynced: bool,
    /// Virtual time of the last sync (or of the start).
    last_sync_ms: u64,
    put_rounds: BTreeMap<u64, PutState>,
    get_rounds: BTreeMap<u64, GetState>,
    forwards: BTreeMap<u64, ForwardState>,
    pending: BTreeMap<RequestId, Pending>,
}

impl SimNode {
    /// A node process. `incarnation` (0 at first start, +1 per restart)
    /// keeps request and round ids of different incarnations apart, so an
    /// answer to a request of a previous life is never taken for a new one.
    pub fn new(id: NodeId, storage: MemoryStorage, incarnation: u64, now_ms: u64) -> SimNode {
        SimNode {
            id,
            storage,
            next_id: incarnation << 40,
            commit_queue: Vec::new(),
            unsynced: false,
            last_sync_ms: now_ms,
            put_rounds: BTreeMap::new(),
            get_rounds: BTreeMap::new(),
            forwards: BTreeMap::new(),
            pending: BTreeMap::new(),
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

    // ------------------------------------------------------------ client operations

    /// Runs a client operation (`Node::execute`). `may_forward`: a put that
    /// lands on a node that is not a primary goes to a primary.
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
            let reply = ClientReply::Failed(OpError::BadRequest {
                message: e.to_string(),
            });
            reply_with(Some(reply_to), reply, out);
            return;
        }
        match op {
            ClientOp::Get {
                bucket,
                key,
                r,
                timeout_ms,
            } => self.coordinate_get(cluster, reply_to, bucket, key, r, timeout_ms, out),
            put @ ClientOp::Put { .. } => {
                self.coordinate_put(cluster, now_ms, put, reply_to, may_forward, out)
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
            pw: _,
            timeout_ms,
        } = op.clone()
        else {
            unreachable!("coordinate_put is called with puts only");
        };
        let w = match quorum(&cluster.props, "w", w, cluster.n()) {
            Ok(w) => w,
            Err(e) => return reply_with(Some(reply_to), ClientReply::Failed(e), out),
        };
        let partition = cluster.partition(&bucket, &key);
        let primaries = cluster.primaries(&bucket, &key);
        if !primaries.contains(&self.id) && may_forward {
            self.start_forward(op, primaries, w, reply_to, out);
            return;
        }
        let new = NewVersion {
            value,
            content_type,
            now_ms,
        };
        let (mode, max_siblings, durability) = (
            cluster.props.conflict,
            cluster.props.max_siblings as usize,
            cluster.durability,
        );
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
                self.id,
                mode,
                max_siblings,
            ) {
                let reply = ClientReply::Written {
                    context: object.clock().clone(),
                };
                reply_with(reply_to.take(), reply, out);
            }
        }
        self.enqueue(
            CommitJob::Coordinate {
                reply_to,
                target,
                context,
                new,
                mode,
                max_siblings,
                durability,
                primaries,
                w,
                timeout_ms,
            },
            out,
        );
    }

    fn start_forward(
        &mut self,
        op: ClientOp,
        primaries: Vec<NodeId>,
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
                candidates: primaries,
                next: 0,
                w,
                request: 0,
            },
        );
        self.forward_to_next(forward, out);
    }

    /// Sends the forwarded put to the next primary, or answers unavailable
    /// when none is left.
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
            // An unexpected answer or an unreachable primary: try the next.
            Ok(_) | Err(TransportError::ConnectionRefused) => {
                return self.forward_to_next(forward, out);
            }
        };
        if let Some(state) = self.forwards.remove(&forward) {
            reply_with(Some(state.reply_to), reply, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn coordinate_get(
        &mut self,
        cluster: &Cluster,
        reply_to: ReplyTo,
        bucket: String,
        key: Vec<u8>,
        r: Option<u32>,
        timeout_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let r = match quorum(&cluster.props, "r", r, cluster.n()) {
            Ok(r) => r,
            Err(e) => return reply_with(Some(reply_to), ClientReply::Failed(e), out),
        };
        let partition = cluster.partition(&bucket, &key);
        let asked = cluster.primaries(&bucket, &key);
        let mode = cluster.props.conflict;
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
                        bucket: bucket.clone(),
                        key: key.clone(),
                    },
                },
            });
        }
        let local = asked
            .contains(&self.id)
            .then(|| read_object(&self.storage, partition, &bucket, &key));
        let mut round = GetRound::new(r, asked, mode);
        let decision = round.start();
        self.get_rounds.insert(
            round_id,
            GetState {
                reply_to: Some(reply_to),
                round,
                target: Target {
                    partition,
                    bucket,
                    key,
                },
                mode,
                durability: cluster.durability,
            },
        );
        out.push(Effect::Timer {
            after_ms: timeout_ms,
            timer: Timer::GetRound(round_id),
        });
        self.get_progress(round_id, decision, out);
        if let Some(local) = local {
            let id = self.id;
            let decision = match self.get_rounds.get_mut(&round_id) {
                Some(state) => match local {
                    Ok(object) => state.round.replied(id, object),
                    Err(_) => state.round.failed(id),
                },
                None => None,
            };
            self.get_progress(round_id, decision, out);
        }
    }

    /// Answers the client at the first decision; once every replica
    /// answered, repairs the stale ones and forgets the round.
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

    fn read_repair(&mut self, state: GetState, out: &mut Vec<Effect>) {
        let stale = state.round.stale_replicas();
        let Some(merged) = state.round.merged() else {
            return;
        };
        for replica in stale {
            if replica == self.id {
                self.enqueue(
                    CommitJob::Merge {
                        target: Target {
                            partition: state.target.partition,
                            bucket: state.target.bucket.clone(),
                            key: state.target.key.clone(),
                        },
                        incoming: merged.clone(),
                        conflict: state.mode,
                        durability: state.durability,
                        ack: None,
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
        self.unsynced.then(|| self.last_sync_ms + interval_ms)
    }

    /// The committer's background sync: makes buffered writes durable.
    pub fn background_sync(&mut self, now_ms: u64) {
        if self.storage.sync().is_ok() {
            self.unsynced = false;
        }
        self.last_sync_ms = now_ms;
    }

    /// One group commit (`now_ms`: virtual time): runs every queued job in
    /// order against the stored objects, writes the batch (`Sync` if any job
    /// asked for it, else `Buffered`), then sends what waited for it.
    pub fn commit(&mut self, cluster: &Cluster, now_ms: u64, out: &mut Vec<Effect>) {
        let jobs = std::mem::take(&mut self.commit_queue);
        if jobs.is_empty() {
            return;
        }
        let mut batch_view: BTreeMap<(u32, Vec<u8>), Object> = BTreeMap::new();
        let mut batch = WriteBatch::new();
        let mut after = Vec::with_capacity(jobs.len());
        let mut durability = Durability::Buffered;
        for job in jobs {
            let job_durability = match &job {
                CommitJob::Coordinate { durability, .. } | CommitJob::Merge { durability, .. } => {
                    *durability
                }
            };
            if storage_durability(job_durability) == Durability::Sync {
                durability = Durability::Sync;
            }
            let target = match &job {
                CommitJob::Coordinate { target, .. } | CommitJob::Merge { target, .. } => target,
            };
            let storage_key = target.storage_key();
            let current = match batch_view.get(&storage_key) {
                Some(object) => Ok(Some(object.clone())),
                None => read_object(&self.storage, target.partition, &target.bucket, &target.key),
            };
            let current = match current {
                Ok(current) => current,
                Err(e) => {
                    // A corrupt stored object: this job fails, nothing is
                    // written for it.
                    after.push(job.failed(e));
                    continue;
                }
            };
            match job {
                CommitJob::Coordinate {
                    reply_to,
                    target,
                    context,
                    new,
                    mode,
                    max_siblings,
                    durability: job_durability,
                    primaries,
                    w,
                    timeout_ms,
                } => {
                    match Object::update(
                        current.as_ref(),
                        &context,
                        new,
                        self.id,
                        mode,
                        max_siblings,
                    ) {
                        Ok(object) => {
                            batch.put(
                                Space::Data(target.partition),
                                storage_key.1.clone(),
                                object.encode(),
                            );
                            batch_view.insert(storage_key, object.clone());
                            after.push(AfterCommit::StartPut {
                                reply_to,
                                target,
                                object,
                                mode,
                                durability: job_durability,
                                primaries,
                                w,
                                timeout_ms,
                            });
                        }
                        Err(UpdateError::TooManySiblings { count, max }) => {
                            let reply = ClientReply::Failed(OpError::TooManySiblings {
                                count: count as u32,
                                max: max as u32,
                            });
                            after.push(AfterCommit::Reply(reply_to, reply));
                        }
                        Err(e) => {
                            let reply = ClientReply::Failed(OpError::BadRequest {
                                message: e.to_string(),
                            });
                            after.push(AfterCommit::Reply(reply_to, reply));
                        }
                    }
                }
                CommitJob::Merge {
                    target,
                    incoming,
                    conflict,
                    durability: _,
                    ack,
                } => {
                    let merged = if cluster.bug == Some(PlantedBug::DropSiblingsOnMerge) {
                        incoming
                    } else {
                        merge_into(current, &incoming, conflict)
                    };
                    batch.put(
                        Space::Data(target.partition),
                        storage_key.1.clone(),
                        merged.encode(),
                    );
                    batch_view.insert(storage_key, merged);
                    after.push(AfterCommit::Ack(ack));
                }
            }
        }
        // As the group committer: a batch without changes still syncs when
        // a job asked for Sync and buffered writes are pending.
        let written = if !batch.is_empty() {
            self.storage.write(&batch, durability)
        } else if durability == Durability::Sync && self.unsynced {
            self.storage.sync()
        } else {
            Ok(())
        };
        if written.is_ok() {
            match durability {
                Durability::Sync => {
                    self.unsynced = false;
                    self.last_sync_ms = now_ms;
                }
                Durability::Buffered => self.unsynced |= !batch.is_empty(),
            }
        }
        for step in after {
            match (step, &written) {
                (step, Err(e)) => self.after_failed_commit(step, &e.to_string(), out),
                (
                    AfterCommit::StartPut {
                        reply_to,
                        target,
                        object,
                        mode,
                        durability,
                        primaries,
                        w,
                        timeout_ms,
                    },
                    Ok(()),
                ) => self.start_put_round(
                    reply_to,
                    target,
                    object,
                    (mode, durability),
                    &primaries,
                    w,
                    timeout_ms,
                    out,
                ),
                (AfterCommit::Reply(reply_to, reply), Ok(())) => reply_with(reply_to, reply, out),
                (AfterCommit::Ack(Some((to, id))), Ok(())) => out.push(Effect::Send {
                    to,
                    payload: Payload::Response {
                        id,
                        response: Ok(PeerResponse::ReplicaPutDone),
                    },
                }),
                (AfterCommit::Ack(None), Ok(())) => {}
                (AfterCommit::Refuse(ack, message), Ok(())) => {
                    self.after_failed_commit(AfterCommit::Ack(ack), &message, out)
                }
            }
        }
    }

    fn after_failed_commit(&mut self, step: AfterCommit, error: &str, out: &mut Vec<Effect>) {
        match step {
            AfterCommit::StartPut { reply_to, .. } => reply_with(reply_to, internal(error), out),
            AfterCommit::Reply(reply_to, reply) => reply_with(reply_to, reply, out),
            AfterCommit::Ack(Some((to, id))) => out.push(Effect::Send {
                to,
                payload: Payload::Response {
                    id,
                    response: Ok(PeerResponse::Refused {
                        message: error.to_string(),
                    }),
                },
            }),
            AfterCommit::Ack(None) => {}
            AfterCommit::Refuse(ack, _) => {
                self.after_failed_commit(AfterCommit::Ack(ack), error, out)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_put_round(
        &mut self,
        reply_to: Option<ReplyTo>,
        target: Target,
        object: Object,
        (mode, durability): (ConflictMode, DurabilityMode),
        primaries: &[NodeId],
        w: usize,
        timeout_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let primary_here = primaries.contains(&self.id);
        let remotes: Vec<NodeId> = primaries
            .iter()
            .copied()
            .filter(|&p| p != self.id)
            .collect();
        let round_id = self.fresh_id();
        let mut round = PutRound::new(w, primary_here, remotes.len());
        let encoded = object.encode();
        for to in remotes {
            let id = self.fresh_id();
            self.pending
                .insert(id, Pending::PutReplica { round: round_id });
            out.push(Effect::Send {
                to,
                payload: Payload::Request {
                    id,
                    request: PeerRequest::ReplicaPut {
                        bucket: target.bucket.clone(),
                        key: target.key.clone(),
                        object: encoded.clone(),
                        conflict: mode,
                        durability,
                    },
                },
            });
        }
        let decision = round.start();
        self.put_rounds.insert(
            round_id,
            PutState {
                reply_to,
                outstanding: remotes_count(primaries, self.id),
                round,
                context: object.clock().clone(),
                unreachable: None,
            },
        );
        out.push(Effect::Timer {
            after_ms: timeout_ms,
            timer: Timer::PutRound(round_id),
        });
        if let Some(decision) = decision {
            self.finish_put(round_id, decision, out);
        }
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
            Quorum::Unreachable { got, needed } if state.outstanding > 0 => {
                state.unreachable = Some((got, needed));
                return;
            }
            Quorum::Unreachable { got, needed } | Quorum::TimedOut { got, needed } => {
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
    fn put_answered(&mut self, round_id: u64, ok: bool, out: &mut Vec<Effect>) {
        let Some(state) = self.put_rounds.get_mut(&round_id) else {
            return;
        };
        state.outstanding = state.outstanding.saturating_sub(1);
        if let Some((got, needed)) = &mut state.unreachable {
            *got += u32::from(ok);
            if state.outstanding == 0 {
                let reply = ClientReply::Failed(OpError::Unavailable {
                    got: *got,
                    needed: *needed,
                });
                self.end_put(round_id, reply, out);
            }
            return;
        }
        let decision = if ok {
            state.round.acked()
        } else {
            state.round.failed()
        };
        if let Some(decision) = decision {
            self.finish_put(round_id, decision, out);
        }
    }

    /// Drops the pending requests of a finished round: late answers are
    /// then ignored, as the node ignores them once the round decided.
    fn forget_requests_of(&mut self, round_id: u64) {
        self.pending.retain(|_, pending| match pending {
            Pending::PutReplica { round } | Pending::GetReplica { round, .. } => *round != round_id,
            Pending::Forward { .. } => true,
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
                match pending {
                    Pending::PutReplica { round } => {
                        let ok = matches!(response, Ok(PeerResponse::ReplicaPutDone));
                        self.put_answered(round, ok, out);
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
        match request {
            PeerRequest::ReplicaGet { bucket, key } => {
                if let Err(e) = validate_bucket_name(&bucket).and(validate_key(&key)) {
                    return respond(
                        PeerResponse::Refused {
                            message: e.to_string(),
                        },
                        out,
                    );
                }
                let partition = cluster.partition(&bucket, &key);
                let response = match read_object(&self.storage, partition, &bucket, &key) {
                    Ok(object) => PeerResponse::ReplicaGetDone {
                        object: object.map(|o| o.encode()),
                    },
                    Err(message) => PeerResponse::Refused { message },
                };
                respond(response, out);
            }
            PeerRequest::ReplicaPut {
                bucket,
                key,
                object,
                conflict,
                durability,
            } => {
                if let Err(e) = validate_bucket_name(&bucket).and(validate_key(&key)) {
                    return respond(
                        PeerResponse::Refused {
                            message: e.to_string(),
                        },
                        out,
                    );
                }
                let incoming = match Object::decode(&object) {
                    Ok(object) => object,
                    Err(e) => {
                        return respond(
                            PeerResponse::Refused {
                                message: e.to_string(),
                            },
                            out,
                        );
                    }
                };
                let partition = cluster.partition(&bucket, &key);
                self.enqueue(
                    CommitJob::Merge {
                        target: Target {
                            partition,
                            bucket,
                            key,
                        },
                        incoming,
                        conflict,
                        durability,
                        ack: Some((from, id)),
                    },
                    out,
                );
            }
            PeerRequest::Coordinate(op) => {
                let reply_to = ReplyTo::Peer {
                    to: from,
                    request: id,
                };
                self.execute(cluster, now_ms, op, reply_to, false, out);
            }
            PeerRequest::Ping { .. } => respond(PeerResponse::Pong { from: self.id }, out),
            PeerRequest::HintPut { .. } | PeerRequest::Gossip(_) | PeerRequest::Join { .. } => {
                respond(
                    PeerResponse::Refused {
                        message: "membership is not simulated".to_string(),
                    },
                    out,
                )
            }
        }
    }

    pub fn timer(&mut self, timer: Timer, out: &mut Vec<Effect>) {
        match timer {
            Timer::PutRound(round_id) => {
                let Some(state) = self.put_rounds.get_mut(&round_id) else {
                    return;
                };
                let reply = match (state.unreachable, state.round.timed_out()) {
                    (Some((got, needed)), _) | (None, Some(Quorum::TimedOut { got, needed })) => {
                        ClientReply::Failed(OpError::Unavailable { got, needed })
                    }
                    // A round still here is undecided or waiting: not reached.
                    (None, _) => return,
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
                // The primary may have written it: the outcome is unknown.
                let reply = ClientReply::Failed(OpError::Timeout {
                    got: 0,
                    needed: state.w as u32,
                    timeout_ms: state.op.timeout_ms(),
                });
                reply_with(Some(state.reply_to), reply, out);
            }
        }
    }
}

impl CommitJob {
    /// What to answer when the job cannot run.
    fn failed(self, message: String) -> AfterCommit {
        match self {
            CommitJob::Coordinate { reply_to, .. } => {
                AfterCommit::Reply(reply_to, internal(&message))
            }
            CommitJob::Merge { ack, .. } => AfterCommit::Refuse(ack, message),
        }
    }
}

fn remotes_count(primaries: &[NodeId], me: NodeId) -> usize {
    primaries.iter().filter(|&&p| p != me).count()
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
