//! `Sim`: one simulated cluster run. Owns the event queue, the virtual
//! clock, the nodes and their storage, the network, the clients and the
//! history; executes the nodes' effects; injects faults (crashes, pauses,
//! cuts, clock steps); checks every data write a replica applies (clock
//! regressions); ends a run with `finish` (heal, resume, restart, a quiet
//! period, the convergence check, final reads at R = N, the history
//! checks).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use ringkv_core::antientropy::MerkleTree;
use ringkv_core::bucket::DurabilityMode;
use ringkv_core::causality::{Object, VersionVector};
use ringkv_core::message::{ClientOp, ClientReply, OpError, PeerRequest, PeerResponse};
use ringkv_storage::MemoryStorage;

use crate::checker::{
    CrashWindow, Violation, ViolationKind, check_history_with, writes_allowed_lost,
};
use crate::cluster::Cluster;
use crate::config::{SIM_BUCKET, SimConfig};
use crate::event::EventQueue;
use crate::fault::Fault;
use crate::history::{
    History, OpId, OpKind, OpRecord, Outcome, ReadRecord, SeenVersion, WriteRecord, write_of_tag,
    write_tag,
};
use crate::network::Network;
use crate::node::{Effect, FORWARD_GRACE_MS, Payload, ReplyTo, SimNode, Timer, read_object};
use crate::replicas::{CopyOfPartition, compare_roots, tree_from_storage};
use crate::rng::SimRng;
use crate::stats::SimStats;
use crate::trace::Trace;
use crate::workload::{ContextFrom, Step};

/// Node clocks read `EPOCH_MS + virtual time + skew`.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// A client gives up on an answer this long after the operation's timeout.
const CLIENT_GRACE_MS: u64 = FORWARD_GRACE_MS + 1_000;
/// Longest quiet period `finish` allows for hinted handoff and
/// anti-entropy to bring every primary to the same state.
const CONVERGENCE_DEADLINE_MS: u64 = 60_000;
/// A run that processes more events than this is stuck in a loop.
const MAX_EVENTS: u64 = 20_000_000;

/// How a client operation ended, from the client's side of the socket.
#[derive(Clone, Debug)]
enum ClientResult {
    Reply(ClientReply),
    /// The node was down when the request arrived: nothing was done.
    ConnectionRefused,
    /// The node died with the request in hand, or never answered.
    NoAnswer,
}

/// A node's periodic loops (tokio intervals in the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Periodic {
    Heartbeat,
    HintDelivery,
    AntiEntropy,
}

impl Event {
    /// Periodic background events (the loops' ticks, heartbeats and
    /// anti-entropy exchange messages, request timeouts) are not work: a
    /// run is quiet when only they remain.
    fn is_work(&self) -> bool {
        match self {
            Event::Tick { .. } => false,
            Event::Timer {
                timer: Timer::Request(_),
                ..
            } => false,
            Event::Deliver { payload, .. } | Event::Arrived { payload, .. } => {
                !is_background(payload)
            }
            _ => true,
        }
    }
}

/// Heartbeats and anti-entropy exchange steps: background chatter, hashed
/// into the trace but kept out of the tail printed on failure.
fn is_background(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::Request {
            request: PeerRequest::Ping { .. } | PeerRequest::AntiEntropy { .. },
            ..
        } | Payload::Response {
            response: Ok(PeerResponse::Pong { .. } | PeerResponse::AntiEntropy(_)),
            ..
        }
    )
}

enum Event {
    ClientNext {
        client: usize,
    },
    ClientRequest {
        op: OpId,
        node: usize,
        request: ClientOp,
    },
    ClientAnswer {
        op: OpId,
        result: ClientResult,
    },
    ClientDeadline {
        op: OpId,
    },
    /// A message reaches the host of `to` (unless its link is cut).
    Deliver {
        from: usize,
        to: usize,
        payload: Payload,
    },
    /// A message that reached a paused node, handled once it resumes.
    Arrived {
        from: usize,
        to: usize,
        payload: Payload,
    },
    Commit {
        node: usize,
        incarnation: u64,
    },
    BackgroundSync {
        node: usize,
        incarnation: u64,
    },
    /// The disk finished syncing the batch the node wrote.
    Synced {
        node: usize,
        incarnation: u64,
    },
    /// One of the node's periodic loops ticks.
    Tick {
        node: usize,
        incarnation: u64,
        periodic: Periodic,
    },
    Timer {
        node: usize,
        incarnation: u64,
        timer: Timer,
    },
    Fault(Fault),
}

struct Client {
    steps: VecDeque<Step>,
    current: Option<OpId>,
    writes: u64,
    last_read: BTreeMap<String, OpId>,
    last_write: BTreeMap<String, OpId>,
    final_reader: bool,
    done: bool,
}

/// The result of [`Sim::finish`].
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// Acknowledged buffered writes the checker allowed to be lost (W of
    /// their replicas crashed before syncing them).
    pub writes_allowed_lost: usize,
    /// How long after healing the primaries agreed (None: they did not
    /// within `CONVERGENCE_DEADLINE_MS`).
    pub converged_after_ms: Option<u64>,
    pub trace_hash: u64,
    pub events: u64,
    /// The last trace lines (as many as `SimConfig::trace_tail`).
    pub trace_tail: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn has(&self, kind: ViolationKind) -> bool {
        self.violations.iter().any(|v| v.kind == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} violation(s) after {} events (trace hash {:016x}); {}; {} buffered write(s) allowed lost",
            self.seed,
            self.violations.len(),
            self.events,
            self.trace_hash,
            match self.converged_after_ms {
                Some(ms) => format!("replicas converged {ms} ms after healing"),
                None => "replicas did not converge".to_string(),
            },
            self.writes_allowed_lost
        )?;
        for violation in self.violations.iter().take(20) {
            writeln!(f, "  {violation}")?;
        }
        if !self.trace_tail.is_empty() {
            writeln!(f, "last {} trace lines:", self.trace_tail.len())?;
            for line in &self.trace_tail {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

pub struct Sim {
    config: SimConfig,
    rng: SimRng,
    now_ms: u64,
    queue: EventQueue<Event>,
    cluster: Cluster,
    nodes: Vec<SimNode>,
    storages: Vec<MemoryStorage>,
    up: Vec<bool>,
    incarnation: Vec<u64>,
    commit_scheduled: Vec<bool>,
    sync_scheduled: Vec<bool>,
    skew_ms: Vec<i64>,
    /// Paused nodes, what reached each while paused (in order), and which
    /// of its periodic loops missed a tick.
    paused: Vec<bool>,
    backlog: Vec<Vec<Event>>,
    missed_ticks: Vec<BTreeSet<Periodic>>,
    network: Network,
    clients: Vec<Client>,
    history: History,
    /// Client operations a node holds and has not answered, by op.
    held: BTreeMap<OpId, usize>,
    trace: Trace,
    /// Faults scheduled for later are ignored once `finish` started.
    finishing: bool,
    /// Work events in the queue (see `Event::is_work`).
    work_events: usize,
    /// Counters of the run, with those of node processes that ended.
    stats: SimStats,
    /// Crashes that found buffered writes not yet synced.
    crash_windows: Vec<CrashWindow>,
    /// Replica-side violations seen during the run (clock regressions).
    replica_violations: Vec<Violation>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mut rng = SimRng::new(config.seed);
        let cluster = Cluster::new(&mut rng, &config);
        let storages: Vec<MemoryStorage> =
            (0..config.nodes).map(|_| MemoryStorage::new()).collect();
        let nodes = cluster
            .ids
            .iter()
            .zip(&storages)
            .map(|(&id, storage)| SimNode::new(id, storage.clone(), 0, 0, &cluster, rng.fork()))
            .collect();
        let skew = config.clock_skew_ms as i64;
        let skew_ms = (0..config.nodes)
            .map(|_| rng.between(0, 2 * skew as u64) as i64 - skew)
            .collect();
        let mut trace = Trace::new(config.trace_tail);
        // Node ids differ by seed; the trace names nodes by index so that it
        // records the schedule, not the ids.
        trace.record(format!(
            "{} nodes, bucket {:?}",
            config.nodes, config.bucket
        ));
        let mut sim = Sim {
            network: Network::new(config.network.clone()),
            rng,
            now_ms: 0,
            queue: EventQueue::new(),
            cluster,
            nodes,
            storages,
            up: vec![true; config.nodes],
            incarnation: vec![0; config.nodes],
            commit_scheduled: vec![false; config.nodes],
            sync_scheduled: vec![false; config.nodes],
            skew_ms,
            paused: vec![false; config.nodes],
            backlog: (0..config.nodes).map(|_| Vec::new()).collect(),
            missed_ticks: vec![BTreeSet::new(); config.nodes],
            clients: Vec::new(),
            history: History::new(),
            held: BTreeMap::new(),
            trace,
            finishing: false,
            work_events: 0,
            stats: SimStats::default(),
            crash_windows: Vec::new(),
            replica_violations: Vec::new(),
            config,
        };
        for node in 0..sim.nodes.len() {
            for periodic in [
                Periodic::Heartbeat,
                Periodic::HintDelivery,
                Periodic::AntiEntropy,
            ] {
                let phase = sim.rng.below(sim.interval_ms(periodic).max(1));
                sim.start_periodic(node, periodic, phase);
            }
        }
        sim
    }

    fn interval_ms(&self, periodic: Periodic) -> u64 {
        match periodic {
            Periodic::Heartbeat => self.config.heartbeat_interval_ms,
            Periodic::HintDelivery => self.config.hint_delivery_interval_ms,
            Periodic::AntiEntropy => self.config.anti_entropy_interval_ms,
        }
    }

    fn push(&mut self, time_ms: u64, event: Event) {
        if event.is_work() {
            self.work_events += 1;
        }
        self.queue.push(time_ms, event);
    }

    /// Starts one of a node's periodic loops, first tick in `after_ms`.
    fn start_periodic(&mut self, node: usize, periodic: Periodic, after_ms: u64) {
        let incarnation = self.incarnation[node];
        self.push(
            self.now_ms + after_ms,
            Event::Tick {
                node,
                incarnation,
                periodic,
            },
        );
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    pub fn trace_events(&self) -> u64 {
        self.trace.events()
    }

    pub fn is_up(&self, node: usize) -> bool {
        self.up[node]
    }

    /// The node indexes of a key's primaries, in preference-list order.
    pub fn primaries(&self, key: &str) -> Vec<usize> {
        self.cluster
            .primaries(SIM_BUCKET, key.as_bytes())
            .into_iter()
            .map(|id| self.cluster.index_of(id).expect("a primary is a member"))
            .collect()
    }

    /// A randomness stream for the scenario (workloads, fault schedules)
    /// derived from the seed, independent of the draws the run makes.
    pub fn fork_rng(&mut self) -> SimRng {
        self.rng.fork()
    }

    /// Adds a client that starts its program at `start_ms`. Returns its
    /// index (the `client` of its history records).
    pub fn add_client(&mut self, start_ms: u64, steps: Vec<Step>) -> usize {
        self.add_client_inner(start_ms, steps, false)
    }

    fn add_client_inner(&mut self, start_ms: u64, steps: Vec<Step>, final_reader: bool) -> usize {
        for step in &steps {
            if let Step::Put { node, .. } | Step::Delete { node, .. } | Step::Get { node, .. } =
                step
            {
                assert!(*node < self.nodes.len(), "step targets missing node {node}");
            }
        }
        let client = self.clients.len();
        self.clients.push(Client {
            steps: steps.into(),
            current: None,
            writes: 0,
            last_read: BTreeMap::new(),
            last_write: BTreeMap::new(),
            final_reader,
            done: false,
        });
        self.push(start_ms.max(self.now_ms), Event::ClientNext { client });
        client
    }

    pub fn schedule(&mut self, at_ms: u64, fault: Fault) {
        self.push(at_ms.max(self.now_ms), Event::Fault(fault));
    }

    pub fn clients_done(&self) -> bool {
        self.clients.iter().all(|c| c.done)
    }

    /// Runs every event up to and including time `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while self.queue.peek_time().is_some_and(|t| t <= until_ms) {
            self.step();
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs until every client has finished its program (or nothing is
    /// left to run).
    pub fn run_until_clients_done(&mut self) {
        while !self.clients_done() && self.step() {}
    }

    /// Runs until no work is left: only the periodic background events
    /// (heartbeats, hint delivery ticks) remain in the queue.
    pub fn run_until_quiet(&mut self) {
        while self.work_events > 0 && self.step() {}
    }

    /// Runs for `ms` more milliseconds of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now_ms + ms);
    }

    /// What happened so far: faults, hand-offs, repairs.
    pub fn stats(&self) -> SimStats {
        let mut stats = self.stats;
        for node in &self.nodes {
            stats += node.stats;
        }
        stats
    }

    /// Hint records every node holds (for others that were down).
    pub fn hints_pending(&self) -> usize {
        self.storages
            .iter()
            .map(|s| crate::node::scan_hints(s, self.cluster.layout.partitions()).len())
            .sum()
    }

    fn step(&mut self) -> bool {
        let Some((time_ms, event)) = self.queue.pop() else {
            return false;
        };
        assert!(time_ms >= self.now_ms, "time went backwards");
        assert!(
            self.trace.events() < MAX_EVENTS,
            "seed {}: more than {MAX_EVENTS} events, the run does not end",
            self.config.seed
        );
        self.now_ms = time_ms;
        if event.is_work() {
            self.work_events -= 1;
        }
        self.handle(event);
        true
    }

    /// Ends the run: lets the clients finish (faults still apply), then
    /// heals the network, stops message loss, resumes paused nodes and
    /// restarts crashed ones, and lets the cluster run without clients (the
    /// quiet period: hinted handoff and anti-entropy only) until every
    /// hint is handed off and the primaries of every key agree, for at most
    /// `CONVERGENCE_DEADLINE_MS`. Checks convergence there, before any
    /// final read could repair anything; then reads every written key at
    /// R = N and checks the history. Clock regressions are checked all
    /// along, on every write a replica applies.
    pub fn finish(&mut self) -> Report {
        self.run_until_clients_done();
        self.finishing = true;
        self.trace.record(format!("{} finish: heal", self.now_ms));
        self.network.heal();
        self.network.make_reliable();
        for node in 0..self.nodes.len() {
            if self.paused[node] {
                self.resume(node);
            }
            if !self.up[node] {
                self.restart(node);
            }
        }
        let keys: BTreeSet<String> = self.history.ops.iter().map(|op| op.key.clone()).collect();
        let healed_ms = self.now_ms;
        let deadline_ms = healed_ms + CONVERGENCE_DEADLINE_MS;
        let step_ms = self
            .config
            .anti_entropy_interval_ms
            .max(self.config.hint_delivery_interval_ms)
            .max(1);
        let divergence = loop {
            self.run_for(step_ms);
            let divergence = self.divergence(&keys);
            let done = divergence.is_empty() && self.hints_pending() == 0;
            if done || self.now_ms >= deadline_ms {
                break divergence;
            }
        };
        let converged_after_ms = (divergence.is_empty()).then_some(self.now_ms - healed_ms);
        let mut violations = std::mem::take(&mut self.replica_violations);
        violations.extend(divergence);
        violations.extend(self.hints_left());
        self.trace.record(format!(
            "{} quiet period over: {}",
            self.now_ms,
            match converged_after_ms {
                Some(ms) => format!("converged after {ms} ms"),
                None => "diverged".to_string(),
            }
        ));

        let n = self.cluster.n() as u32;
        let steps = keys
            .iter()
            .enumerate()
            .map(|(i, key)| Step::Get {
                key: key.clone(),
                node: i % self.nodes.len(),
                r: Some(n),
            })
            .collect();
        let now = self.now_ms;
        self.add_client_inner(now, steps, true);
        self.run_until_clients_done();
        self.run_until_quiet();

        // Buffered writes may be lost by a crash before their sync (the
        // documented window); synced ones never.
        let allowed_lost = if self.cluster.durability == DurabilityMode::Buffered {
            let w = self.cluster.props.w as usize;
            writes_allowed_lost(&self.history, &self.crash_windows, w.min(self.cluster.n()))
        } else {
            BTreeSet::new()
        };
        violations.extend(check_history_with(
            &self.history,
            self.config.bucket.conflict,
            &allowed_lost,
        ));
        violations.extend(std::mem::take(&mut self.replica_violations));
        Report {
            seed: self.config.seed,
            writes_allowed_lost: allowed_lost.len(),
            converged_after_ms,
            violations,
            trace_hash: self.trace.hash(),
            events: self.trace.events(),
            trace_tail: self.trace.tail().map(str::to_string).collect(),
        }
    }

    /// Hints still held after the handoff deadline.
    fn hints_left(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        for (node, storage) in self.storages.iter().enumerate() {
            for (_, raw_key, hint) in
                crate::node::scan_hints(storage, self.cluster.layout.partitions())
            {
                let key = ringkv_core::hint::split_object_key(&raw_key)
                    .map(|(_, key)| String::from_utf8_lossy(&key).into_owned())
                    .unwrap_or_default();
                let targets: Vec<String> = hint
                    .targets
                    .iter()
                    .map(|t| node_name(*t, &self.cluster))
                    .collect();
                violations.push(Violation {
                    kind: ViolationKind::HintsNotDelivered,
                    key,
                    detail: format!(
                        "n{node} still holds a hint for {targets:?} after every node was up for {} s",
                        CONVERGENCE_DEADLINE_MS / 1000
                    ),
                });
            }
        }
        violations
    }

    /// Check (c): the primaries of every key hold equal objects, and the
    /// primaries of every partition that has a tree anywhere have equal
    /// Merkle roots, each describing what its node stores.
    fn divergence(&mut self, keys: &BTreeSet<String>) -> Vec<Violation> {
        let mut violations = Vec::new();
        for key in keys {
            let partition = self.cluster.partition(SIM_BUCKET, key.as_bytes());
            let copies: Vec<(usize, Result<Option<Object>, String>)> = self
                .primaries(key)
                .into_iter()
                .map(|node| {
                    let object =
                        read_object(&self.storages[node], partition, SIM_BUCKET, key.as_bytes());
                    (node, object)
                })
                .collect();
            let first = &copies[0].1;
            if copies.iter().any(|(_, copy)| copy != first) {
                let described: Vec<String> = copies
                    .iter()
                    .map(|(node, copy)| format!("n{node}: {}", describe_copy(copy, &self.cluster)))
                    .collect();
                violations.push(Violation {
                    kind: ViolationKind::Divergence,
                    key: key.clone(),
                    detail: format!("primaries differ: {}", described.join("; ")),
                });
            }
        }
        let n = self.cluster.n() as u32;
        let empty_root = MerkleTree::default().root();
        let partitions: BTreeSet<u32> = (0..self.nodes.len())
            .flat_map(|node| {
                let node = &mut self.nodes[node];
                (0..self.cluster.layout.partitions())
                    .filter(|&p| node.merkle_root(p, n).is_some())
                    .collect::<Vec<_>>()
            })
            .collect();
        for partition in partitions {
            let primaries = self
                .cluster
                .layout
                .preference_list(partition, n as usize)
                .primaries;
            let copies: Vec<CopyOfPartition> = primaries
                .iter()
                .map(|&id| {
                    let node = self.cluster.index_of(id).expect("a primary is a member");
                    CopyOfPartition {
                        node,
                        root: self.nodes[node]
                            .merkle_root(partition, n)
                            .unwrap_or(empty_root),
                        stored_root: tree_from_storage(&self.storages[node], partition).root(),
                    }
                })
                .collect();
            if let Some(detail) = compare_roots(&copies) {
                violations.push(Violation {
                    kind: ViolationKind::Divergence,
                    key: String::new(),
                    detail: format!("partition {partition}: {detail}"),
                });
            }
        }
        violations
    }

    // ------------------------------------------------------------ events

    fn handle(&mut self, event: Event) {
        // A paused process handles nothing: what reaches it waits, and its
        // loops miss their ticks (a tokio interval then ticks once).
        let paused_node = match &event {
            Event::ClientRequest { node, .. } | Event::Arrived { to: node, .. } => {
                Some(*node).filter(|&n| self.up[n] && self.paused[n])
            }
            Event::Commit { node, incarnation }
            | Event::Synced { node, incarnation }
            | Event::BackgroundSync { node, incarnation }
            | Event::Tick {
                node, incarnation, ..
            }
            | Event::Timer {
                node, incarnation, ..
            } => Some(*node).filter(|&n| self.is_current(n, *incarnation) && self.paused[n]),
            _ => None,
        };
        if let Some(node) = paused_node {
            match event {
                Event::Tick { periodic, .. } => {
                    self.missed_ticks[node].insert(periodic);
                }
                event => self.backlog[node].push(event),
            }
            return;
        }
        match event {
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientRequest { op, node, request } => {
                if !self.up[node] {
                    self.trace
                        .record(format!("{} op{op} refused by down n{node}", self.now_ms));
                    let at = self.now_ms + self.client_link_delay();
                    self.push(
                        at,
                        Event::ClientAnswer {
                            op,
                            result: ClientResult::ConnectionRefused,
                        },
                    );
                    return;
                }
                self.trace.record(format!(
                    "{} op{op} at n{node}: {}",
                    self.now_ms,
                    describe_op(&request, &self.cluster)
                ));
                self.held.insert(op, node);
                let now = self.node_clock(node);
                let mut out = Vec::new();
                self.nodes[node].execute(
                    &self.cluster,
                    now,
                    request,
                    ReplyTo::Client(op),
                    true,
                    &mut out,
                );
                self.apply(node, out);
            }
            Event::ClientAnswer { op, result } => self.complete(op, result),
            Event::ClientDeadline { op } => {
                if self.history.ops[op].outcome == Outcome::Pending {
                    self.held.remove(&op);
                    self.complete(op, ClientResult::NoAnswer);
                }
            }
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::Arrived { from, to, payload } => {
                // It reached the host before a crash that lost it.
                if self.up[to] {
                    self.receive(from, to, payload);
                }
            }
            Event::Commit { node, incarnation } => {
                if !self.is_current(node, incarnation) {
                    return;
                }
                self.commit_scheduled[node] = false;
                self.trace.record(format!("{} n{node} commit", self.now_ms));
                let mut out = Vec::new();
                self.nodes[node].commit(&self.cluster, self.now_ms, &mut out);
                self.check_applied_writes(node);
                self.apply(node, out);
                self.schedule_background_sync(node);
            }
            Event::Synced { node, incarnation } => {
                if !self.is_current(node, incarnation) {
                    return;
                }
                self.trace
                    .record(format!("{} n{node} batch synced", self.now_ms));
                let mut out = Vec::new();
                self.nodes[node].synced(&self.cluster, self.now_ms, &mut out);
                self.apply(node, out);
                self.schedule_background_sync(node);
            }
            Event::Tick {
                node,
                incarnation,
                periodic,
            } => {
                if !self.is_current(node, incarnation) {
                    return;
                }
                self.tick(node, periodic);
                let next = self.now_ms + self.interval_ms(periodic);
                self.push(
                    next,
                    Event::Tick {
                        node,
                        incarnation,
                        periodic,
                    },
                );
            }
            Event::BackgroundSync { node, incarnation } => {
                if !self.is_current(node, incarnation) {
                    return;
                }
                self.sync_scheduled[node] = false;
                self.trace.record(format!("{} n{node} sync", self.now_ms));
                self.nodes[node].background_sync(self.now_ms);
                self.schedule_background_sync(node);
            }
            Event::Timer {
                node,
                incarnation,
                timer,
            } => {
                if !self.is_current(node, incarnation) {
                    return;
                }
                let line = format!("{} n{node} timer {timer:?}", self.now_ms);
                if matches!(timer, Timer::Request(_)) {
                    self.trace.record_quiet(&line);
                } else {
                    self.trace.record(line);
                }
                let mut out = Vec::new();
                self.nodes[node].timer(&self.cluster, timer, &mut out);
                self.apply(node, out);
            }
            Event::Fault(fault) => {
                if self.finishing {
                    return;
                }
                self.trace
                    .record(format!("{} fault {fault:?}", self.now_ms));
                self.inject(fault);
            }
        }
    }

    /// One tick of a node's periodic loop.
    fn tick(&mut self, node: usize, periodic: Periodic) {
        let now = self.node_clock(node);
        let mut out = Vec::new();
        match periodic {
            Periodic::Heartbeat => self.nodes[node].heartbeat_tick(&self.cluster, &mut out),
            Periodic::HintDelivery => {
                self.nodes[node].hint_delivery_tick(&self.cluster, now, &mut out);
                if !out.is_empty() {
                    self.trace
                        .record(format!("{} n{node} hint delivery", self.now_ms));
                }
            }
            Periodic::AntiEntropy => {
                self.nodes[node].anti_entropy_tick(&self.cluster, now, &mut out);
                if !out.is_empty() {
                    self.trace
                        .record_quiet(&format!("{} n{node} anti-entropy", self.now_ms));
                }
            }
        }
        self.apply(node, out);
    }

    /// Check (d): every write a replica applied to its data grew (or kept)
    /// the key's clock there.
    fn check_applied_writes(&mut self, node: usize) {
        for applied in self.nodes[node].take_applied_writes() {
            if let Some(detail) = applied.regression(|id| node_name(id, &self.cluster)) {
                let key = ringkv_core::hint::split_object_key(&applied.raw_key)
                    .map(|(_, key)| String::from_utf8_lossy(&key).into_owned())
                    .unwrap_or_default();
                self.replica_violations.push(Violation {
                    kind: ViolationKind::ClockRegressed,
                    key,
                    detail: format!("n{node} at {} ms: {detail}", self.now_ms),
                });
            }
        }
    }

    fn schedule_background_sync(&mut self, node: usize) {
        if self.sync_scheduled[node] {
            return;
        }
        if let Some(due) = self.nodes[node].background_sync_due(self.config.sync_interval_ms) {
            self.sync_scheduled[node] = true;
            let incarnation = self.incarnation[node];
            self.push(
                due.max(self.now_ms),
                Event::BackgroundSync { node, incarnation },
            );
        }
    }

    fn is_current(&self, node: usize, incarnation: u64) -> bool {
        self.up[node] && self.incarnation[node] == incarnation
    }

    fn inject(&mut self, fault: Fault) {
        let cuts_links = match &fault {
            Fault::Isolate(_) | Fault::Block { .. } => true,
            Fault::Cut(cut) => !cut.links().is_empty(),
            Fault::Partition(cuts) => cuts.iter().any(|cut| !cut.links().is_empty()),
            _ => false,
        };
        if cuts_links {
            self.stats.partitions += 1;
        }
        match fault {
            Fault::Crash(node) => self.crash(node),
            Fault::Restart(node) => self.restart(node),
            Fault::Pause(node) => self.pause(node),
            Fault::Resume(node) => self.resume(node),
            Fault::Isolate(node) => self.network.isolate(node, self.nodes.len()),
            Fault::Block { from, to } => self.network.block(from, to),
            Fault::Unblock { from, to } => self.network.unblock(from, to),
            Fault::Cut(cut) => self.network.cut(&cut),
            Fault::Partition(cuts) => self.network.partition(&cuts),
            Fault::Heal => self.network.heal(),
            Fault::ClockJump { node, by_ms } => self.skew_ms[node] += by_ms,
        }
    }

    fn pause(&mut self, node: usize) {
        if self.up[node] && !self.paused[node] {
            self.paused[node] = true;
            self.stats.pauses += 1;
        }
    }

    /// The paused node handles what waited, in order, now; its loops that
    /// missed a tick tick now.
    fn resume(&mut self, node: usize) {
        if !self.paused[node] {
            return;
        }
        self.paused[node] = false;
        let waiting = std::mem::take(&mut self.backlog[node]);
        self.trace.record(format!(
            "{} n{node} resumes with {} waiting events",
            self.now_ms,
            waiting.len()
        ));
        for event in waiting {
            self.push(self.now_ms, event);
        }
        for periodic in std::mem::take(&mut self.missed_ticks[node]) {
            self.start_periodic(node, periodic, 0);
        }
    }

    fn crash(&mut self, node: usize) {
        if !self.up[node] {
            return;
        }
        if let Some(since) = self.nodes[node].unsynced_since_ms() {
            self.crash_windows.push(CrashWindow {
                node,
                unsynced_since_ms: since,
                crash_ms: self.now_ms,
            });
        }
        self.up[node] = false;
        self.paused[node] = false;
        self.backlog[node].clear();
        self.missed_ticks[node].clear();
        self.stats.crashes += 1;
        self.incarnation[node] += 1;
        self.commit_scheduled[node] = false;
        self.sync_scheduled[node] = false;
        self.storages[node].crash();
        // Clients whose request the node held see the connection drop.
        let lost: Vec<OpId> = self
            .held
            .iter()
            .filter(|&(_, &n)| n == node)
            .map(|(&op, _)| op)
            .collect();
        for op in lost {
            self.held.remove(&op);
            self.complete(op, ClientResult::NoAnswer);
        }
    }

    fn restart(&mut self, node: usize) {
        if self.up[node] {
            return;
        }
        self.trace
            .record(format!("{} n{node} restarts", self.now_ms));
        let restarted = SimNode::new(
            self.cluster.ids[node],
            self.storages[node].clone(),
            self.incarnation[node],
            self.now_ms,
            &self.cluster,
            self.rng.fork(),
        );
        let mut ended = std::mem::replace(&mut self.nodes[node], restarted);
        self.nodes[node].carry_over_observations(&mut ended);
        self.stats += ended.stats;
        self.up[node] = true;
        // The loops tick at once when a node starts (tokio intervals).
        for periodic in [
            Periodic::Heartbeat,
            Periodic::HintDelivery,
            Periodic::AntiEntropy,
        ] {
            self.start_periodic(node, periodic, 0);
        }
    }

    /// Records a message event; heartbeats only in the hash.
    fn trace_message(&mut self, from: usize, to: usize, what: &str, payload: &Payload) {
        let line = format!(
            "{} n{from}->n{to}{what} {}",
            self.now_ms,
            describe_payload(payload, &self.cluster)
        );
        if is_background(payload) {
            self.trace.record_quiet(&line);
        } else {
            self.trace.record(line);
        }
    }

    fn deliver(&mut self, from: usize, to: usize, payload: Payload) {
        if self.network.is_blocked(from, to) {
            self.stats.messages_cut += 1;
            self.trace_message(from, to, " blocked", &payload);
            return;
        }
        if !self.up[to] {
            self.trace_message(from, to, " down", &payload);
            if let Payload::Request { id, .. } = payload {
                let reset = Payload::Response {
                    id,
                    response: Err(crate::node::TransportError::ConnectionRefused),
                };
                self.send(to, from, reset);
            }
            return;
        }
        if self.paused[to] {
            // In the host's socket buffers until the process resumes.
            self.trace_message(from, to, " waits", &payload);
            self.backlog[to].push(Event::Arrived { from, to, payload });
            return;
        }
        self.trace_message(from, to, "", &payload);
        self.receive(from, to, payload);
    }

    fn receive(&mut self, from: usize, to: usize, payload: Payload) {
        let now = self.node_clock(to);
        let from_id = self.cluster.ids[from];
        let mut out = Vec::new();
        self.nodes[to].receive(&self.cluster, now, from_id, payload, &mut out);
        self.apply(to, out);
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        // The node's transport runs over TCP and never sends a request
        // twice, so duplicates stand for the re-sends of idempotent
        // requests (hint delivery, repairs) and stray answers. A forwarded
        // put is not idempotent: run twice it is two writes with two dots.
        let may_duplicate = !matches!(
            payload,
            Payload::Request {
                request: PeerRequest::Coordinate(_),
                ..
            }
        );
        let delays = self.network.fate(&mut self.rng, may_duplicate);
        if delays.is_empty() {
            self.trace_message(from, to, " lost", &payload);
        }
        for delay in delays {
            self.push(
                self.now_ms + delay,
                Event::Deliver {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn apply(&mut self, node: usize, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { to, payload } => {
                    let to = self
                        .cluster
                        .index_of(to)
                        .expect("nodes only send to members");
                    self.send(node, to, payload);
                }
                Effect::ReplyToClient { op, reply } => {
                    self.held.remove(&op);
                    let at = self.now_ms + self.client_link_delay();
                    self.push(
                        at,
                        Event::ClientAnswer {
                            op,
                            result: ClientResult::Reply(reply),
                        },
                    );
                }
                Effect::Timer { after_ms, timer } => {
                    let incarnation = self.incarnation[node];
                    self.push(
                        self.now_ms + after_ms,
                        Event::Timer {
                            node,
                            incarnation,
                            timer,
                        },
                    );
                }
                Effect::CommitNeeded => {
                    if !self.commit_scheduled[node] {
                        self.commit_scheduled[node] = true;
                        let (low, high) = self.config.disk_commit_ms;
                        let at = self.now_ms + self.rng.between(low, high);
                        let incarnation = self.incarnation[node];
                        self.push(at, Event::Commit { node, incarnation });
                    }
                }
                Effect::SyncNeeded => {
                    let (low, high) = self.config.disk_commit_ms;
                    let at = self.now_ms + self.rng.between(low, high);
                    let incarnation = self.incarnation[node];
                    self.push(at, Event::Synced { node, incarnation });
                }
            }
        }
    }

    fn node_clock(&self, node: usize) -> u64 {
        (EPOCH_MS + self.now_ms).saturating_add_signed(self.skew_ms[node])
    }

    fn client_link_delay(&mut self) -> u64 {
        let (low, high) = self.config.client_link_ms;
        self.rng.between(low, high)
    }

    // ------------------------------------------------------------ clients

    fn client_next(&mut self, client: usize) {
        let state = &mut self.clients[client];
        if state.current.is_some() || state.done {
            return;
        }
        match state.steps.pop_front() {
            None => {
                state.done = true;
                self.trace
                    .record(format!("{} client{client} done", self.now_ms));
            }
            Some(Step::Pause { ms }) => {
                self.push(self.now_ms + ms, Event::ClientNext { client });
            }
            Some(step) => self.invoke(client, step),
        }
    }

    fn invoke(&mut self, client: usize, step: Step) {
        let timeout_ms = self.config.request_timeout_ms;
        let now = self.now_ms;
        let (node, key, kind, request) = match step {
            Step::Get { key, node, r } => {
                let request = ClientOp::Get {
                    bucket: SIM_BUCKET.to_string(),
                    key: key.clone().into_bytes(),
                    r,
                    pr: None,
                    timeout_ms,
                };
                let kind = OpKind::Read(ReadRecord {
                    r,
                    final_read: self.clients[client].final_reader,
                    seen: Vec::new(),
                    context: None,
                });
                (node, key, kind, request)
            }
            Step::Put { key, node, context } => {
                let (kind, request) = self.write_request(client, &key, context, false);
                (node, key, kind, request)
            }
            Step::Delete { key, node, context } => {
                let (kind, request) = self.write_request(client, &key, context, true);
                (node, key, kind, request)
            }
            Step::Pause { .. } => unreachable!("client_next handles pauses"),
        };
        self.trace.record(format!(
            "{now} client{client} invokes op{} at n{node}: {}",
            self.history.ops.len(),
            describe_op(&request, &self.cluster)
        ));
        let op = self.history.push(OpRecord {
            client,
            node,
            key,
            invoke_ms: now,
            complete_ms: None,
            outcome: Outcome::Pending,
            kind,
        });
        self.clients[client].current = Some(op);
        let at = now + self.client_link_delay();
        self.push(at, Event::ClientRequest { op, node, request });
        self.push(
            now + timeout_ms + CLIENT_GRACE_MS,
            Event::ClientDeadline { op },
        );
    }

    /// A put (or delete) of a fresh unique value with the chosen context.
    fn write_request(
        &mut self,
        client: usize,
        key: &str,
        context: ContextFrom,
        delete: bool,
    ) -> (OpKind, ClientOp) {
        let state = &mut self.clients[client];
        let write = format!("c{client}-{}", state.writes);
        state.writes += 1;
        let context_from = match context {
            ContextFrom::Blind => None,
            ContextFrom::LastRead => state.last_read.get(key).copied(),
            ContextFrom::LastWrite => state.last_write.get(key).copied(),
        };
        let context = context_from
            .and_then(|op| match &self.history.ops[op].kind {
                OpKind::Read(read) => read.context.clone(),
                OpKind::Write(write) => write.returned_context.clone(),
            })
            .unwrap_or_default();
        let value = (!delete).then(|| write.clone().into_bytes());
        let request = ClientOp::Put {
            bucket: SIM_BUCKET.to_string(),
            key: key.as_bytes().to_vec(),
            value: value.clone(),
            content_type: write_tag(&write),
            context: context.clone(),
            w: None,
            pw: None,
            timeout_ms: self.config.request_timeout_ms,
        };
        let kind = OpKind::Write(WriteRecord {
            write,
            value,
            context,
            context_from,
            returned_context: None,
        });
        (kind, request)
    }

    fn complete(&mut self, op: OpId, result: ClientResult) {
        let now = self.now_ms;
        let record = &mut self.history.ops[op];
        if record.outcome != Outcome::Pending {
            self.trace
                .record(format!("{now} op{op} late answer ignored"));
            return;
        }
        record.complete_ms = Some(now);
        let outcome = match (&mut record.kind, result) {
            (OpKind::Write(write), ClientResult::Reply(ClientReply::Written { context })) => {
                write.returned_context = Some(context);
                Outcome::Ok
            }
            (OpKind::Read(read), ClientResult::Reply(ClientReply::Found { object })) => {
                match object.as_deref().map(Object::decode).transpose() {
                    Ok(object) => {
                        if let Some(object) = object {
                            read.seen = object
                                .siblings()
                                .iter()
                                .map(|s| SeenVersion {
                                    write: write_of_tag(&s.content_type)
                                        .unwrap_or(&s.content_type)
                                        .to_string(),
                                    value: s.value.clone(),
                                })
                                .collect();
                            read.context = Some(object.clock().clone());
                        }
                        Outcome::Ok
                    }
                    Err(_) => Outcome::Failed,
                }
            }
            (_, ClientResult::Reply(ClientReply::Failed(OpError::Timeout { .. }))) => {
                Outcome::Unknown
            }
            (_, ClientResult::Reply(_)) | (_, ClientResult::ConnectionRefused) => Outcome::Failed,
            (_, ClientResult::NoAnswer) => Outcome::Unknown,
        };
        record.outcome = outcome;
        let (client, key) = (record.client, record.key.clone());
        let is_write = record.as_write().is_some();
        self.trace
            .record(format!("{now} op{op} client{client} {outcome:?}"));
        let state = &mut self.clients[client];
        let next = state.current == Some(op);
        if next {
            state.current = None;
        }
        if outcome == Outcome::Ok {
            if is_write {
                state.last_write.insert(key, op);
            } else {
                state.last_read.insert(key, op);
            }
        }
        if next {
            self.push(now, Event::ClientNext { client });
        }
    }
}

fn describe_copy(copy: &Result<Option<Object>, String>, cluster: &Cluster) -> String {
    match copy {
        Err(e) => format!("unreadable ({e})"),
        Ok(None) => "absent".to_string(),
        Ok(Some(object)) => {
            let versions: Vec<String> = object
                .siblings()
                .iter()
                .map(|s| {
                    let write = write_of_tag(&s.content_type).unwrap_or("?");
                    match s.value {
                        Some(_) => format!("{write}@{}", s.dot),
                        None => format!("{write}(deleted)@{}", s.dot),
                    }
                })
                .collect();
            format!(
                "{versions:?} clock {}",
                describe_clock(object.clock(), cluster)
            )
        }
    }
}

/// A node by index (`n2`), an unknown id in hex.
fn node_name(id: u64, cluster: &Cluster) -> String {
    match cluster.index_of(id) {
        Some(index) => format!("n{index}"),
        None => format!("{id:x}"),
    }
}

/// A clock with replicas named by node index (`n0:3`), unknown ids in hex.
fn describe_clock(clock: &VersionVector, cluster: &Cluster) -> String {
    let entries: Vec<String> = clock
        .iter()
        .map(|(replica, counter)| match cluster.index_of(replica) {
            Some(index) => format!("n{index}:{counter}"),
            None => format!("{replica:x}:{counter}"),
        })
        .collect();
    format!("[{}]", entries.join(","))
}

fn describe_op(op: &ClientOp, cluster: &Cluster) -> String {
    match op {
        ClientOp::Get { key, r, .. } => {
            format!("get {} r={r:?}", String::from_utf8_lossy(key))
        }
        ClientOp::Put {
            key,
            value,
            content_type,
            context,
            ..
        } => format!(
            "{} {} {} ctx={}",
            if value.is_some() { "put" } else { "delete" },
            String::from_utf8_lossy(key),
            write_of_tag(content_type).unwrap_or("?"),
            describe_clock(context, cluster)
        ),
        ClientOp::PutWithTtl { key, ttl_ms, .. } => {
            format!("put {} ttl={ttl_ms}ms", String::from_utf8_lossy(key))
        }
    }
}

fn describe_payload(payload: &Payload, cluster: &Cluster) -> String {
    match payload {
        Payload::Request { id, request } => {
            let what = match request {
                PeerRequest::ReplicaPut { key, object, .. } => format!(
                    "ReplicaPut {} {}b",
                    String::from_utf8_lossy(key),
                    object.len()
                ),
                PeerRequest::ReplicaGet { key, .. } => {
                    format!("ReplicaGet {}", String::from_utf8_lossy(key))
                }
                PeerRequest::Coordinate(op) => {
                    format!("Coordinate({})", describe_op(op, cluster))
                }
                PeerRequest::HintPut { key, hint_for, .. } => format!(
                    "HintPut {} for {}",
                    String::from_utf8_lossy(key),
                    node_name(*hint_for, cluster)
                ),
                PeerRequest::Ping { .. } => "Ping".to_string(),
                _ => "(not simulated)".to_string(),
            };
            format!("req{id:x} {what}")
        }
        Payload::Response { id, response } => {
            let what = match response {
                Ok(PeerResponse::ReplicaPutDone) => "ReplicaPutDone".to_string(),
                Ok(PeerResponse::ReplicaGetDone { object }) => {
                    format!("ReplicaGetDone {}", object.as_ref().map_or(0, |o| o.len()))
                }
                Ok(PeerResponse::Coordinated(reply)) => match reply {
                    ClientReply::Written { .. } => "Coordinated(Written)".to_string(),
                    ClientReply::Found { .. } => "Coordinated(Found)".to_string(),
                    ClientReply::Failed(e) => format!("Coordinated(Failed {e})"),
                },
                Ok(PeerResponse::Refused { message }) => format!("Refused {message}"),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("{e:?}"),
            };
            format!("resp{id:x} {what}")
        }
    }
}
