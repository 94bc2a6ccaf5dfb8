//! ringkv-sim: a deterministic simulator of a ringkv cluster, and the
//! checkers that judge its runs.
//!
//! # The event loop
//! One thread, one seed. [`Sim`] keeps a virtual clock in milliseconds and
//! an [`EventQueue`] ordered by (time, insertion sequence); nothing that
//! affects a run iterates a `HashMap` or reads the wall clock, and every
//! random draw comes from one [`SimRng`] (xoshiro256**) seeded by
//! [`SimConfig::seed`] (each node process gets a stream forked from it for
//! its random ids), so a seed replays a run exactly. Every processed event
//! is appended to a [`Trace`] whose hash ([`Sim::trace_hash`])
//! fingerprints the run. Events are: a client's next step, a client
//! request reaching its node, an answer reaching a client, a client's own
//! deadline, a peer message reaching a host (or, for a paused node, being
//! handled once it resumes), a node's commit and background sync, a
//! node's timer, the ticks of a node's heartbeat, hint delivery and
//! anti-entropy loops, and a scheduled fault. The periodic ticks never
//! stop; a run is *quiet* when only they, heartbeats and anti-entropy
//! exchange steps are left ([`Sim::run_until_quiet`]). That chatter is
//! hashed into the trace but kept out of the tail printed on failure.
//!
//! # What runs
//! 3 to 5 [`SimNode`]s share one `core::ring::Layout` (built with
//! `Layout::new` + `with_member`) and one bucket (N=3, R=2, W=2, siblings
//! by default). Each node runs the protocol of `crates/node/src/node.rs`
//! and `crates/node/src/antientropy.rs` over the real core and the real
//! storage:
//! - a heartbeat loop pings every peer and feeds the core's
//!   `FailureDetector` (phi-accrual; a refused request marks a peer down),
//!   as do the outcomes of the node's other requests;
//! - a put lands on any node; one outside the key's replica plan forwards
//!   it to the plan's nodes in turn. The plan is the key's primaries, each
//!   one the node sees down replaced by the next usable fallback (sloppy
//!   quorum). The coordinator applies `Object::update` in its commit queue
//!   (the group committer) to its stored object, or to its hint when it is
//!   a fallback, writes it to its own `MemoryStorage` (`Durability::Sync`
//!   by default; `SimConfig::node_durability` or the bucket's `durability`
//!   select buffered writes synced within `sync_interval_ms`), sends it to
//!   the rest of the plan (`ReplicaPut` to primaries, `HintPut` to
//!   fallbacks, each merged with `Object::merge` and committed before the
//!   acknowledgement) and answers when `PutRound` (W, PW) decides; an
//!   unreachable quorum is answered once the remaining replicas answered,
//!   with the true count. The dot's actor is chosen as the node does since
//!   a56b069: the node id for a primary with synced writes, a per-process
//!   incarnation id for buffered writes, a fresh id per write for a
//!   fallback or a node outside the plan; the client gets
//!   `written_context` (its context plus the new dot) back;
//! - a get asks the plan (`ReplicaGet`; a replica answers with its object
//!   merged with any hint it holds), answers when `GetRound` has R replies,
//!   and once all replied or the round timed out sends the causal merge to
//!   stale primaries (read repair);
//! - a hint delivery loop hands hints to their primaries once these are
//!   usable again, drops a target only after its durable acknowledgement,
//!   and deletes the record once no target is left;
//! - anti-entropy: one `core::antientropy::MerkleTree` per (partition, n)
//!   over (key → xxh3 of the stored object), rebuilt from storage at each
//!   start and updated in commit order once a data write is applied;
//!   every `anti_entropy_interval_ms` a pass exchanges each tree whose
//!   partition the node is a primary of with the next other usable
//!   primary in turn (`Exchange` here, `answer` there, over
//!   `PeerRequest::AntiEntropy`), then repairs each differing key by
//!   causal merge on both sides.
//!
//! The simulator reimplements no merge, quorum or Merkle logic.
//!
//! ## Where the simulated node differs from `crates/node`
//! - One static layout: no gossip, no joins, no bucket property changes;
//!   one bucket.
//! - The network never duplicates a forwarded put (`Coordinate`): TCP
//!   never delivers a frame twice, and a forwarded put run twice is two
//!   writes. The node's `forward` can still run a put twice, by trying the
//!   next primary after `Disconnected`; the simulator does not model
//!   connections, so that path is not exercised.
//! - Anti-entropy: a pass starts only when the previous one is over (the
//!   node's interval would tick again at once), each tree's peer is chosen
//!   when the pass starts, trees are rebuilt synchronously at start (the
//!   node rebuilds them in the background while it already serves), and
//!   the interval defaults to 1 s (the node's: 10 s).
//! - Requests time out through timers, never through a closed connection:
//!   a crashed peer's pending requests simply time out.
//! - Storage errors are not injected (`MemoryStorage::fail_writes` exists
//!   but no scenario uses it); the commit latency is drawn per commit.
//!
//! # The fault model
//! - Network ([`NetworkConfig`]): every message draws its own delay (so
//!   messages reorder), may be lost or duplicated. Links are cut by
//!   [`Fault::Block`]/[`Fault::Isolate`]/[`Fault::Cut`] (one-way or
//!   two-way [`Cut`]s: isolate one node, a minority split from the
//!   majority, one group unable to reach another, two groups cut while the
//!   rest reaches both) and [`Fault::Partition`], which replaces every cut
//!   at once; [`changing_partitions`] draws a schedule of such partitions
//!   that change over time. A cut is checked when a message reaches its
//!   destination. Requests and responses are matched by id, so a
//!   duplicate response is ignored, as the node's transport ignores it.
//! - Crash ([`Fault::Crash`]): the process loses all in-memory state
//!   (rounds, forwards, its queue of writes not yet committed, its Merkle
//!   trees) and `MemoryStorage::crash` drops whatever was not synced;
//!   clients whose request it held see the connection drop (outcome
//!   unknown). While down, a request sent to it is answered by a
//!   connection refusal (its host is up, the port is closed), other
//!   messages are lost. Restart: same storage, same node id, a new
//!   incarnation id, trees rebuilt from storage.
//! - Pause ([`Fault::Pause`]/[`Fault::Resume`], SIGSTOP/SIGCONT, a long
//!   GC): the process keeps its memory but handles nothing; messages,
//!   client requests, its commits and timers wait in arrival order and are
//!   handled, late, when it resumes; each periodic loop that missed ticks
//!   ticks once. Peers see it stop answering and declare it down.
//! - Clocks: each node's clock is skewed by a fixed amount drawn in
//!   `±clock_skew_ms`, and [`Fault::ClockJump`] steps one node's clock
//!   forwards or backwards (the failure detector and LWW read it).
//! - Timeouts: every put and get round, forward and node request has a
//!   timer; clients have their own deadline.
//!
//! # The checkers
//! Clients record a [`History`]: each operation's invoke and completion
//! time, outcome (ok, failed, unknown), the unique value a write wrote and
//! the context it carried (and which earlier operation it came from), the
//! context it got back, the versions and context a read returned.
//! [`Sim::finish`] lets the clients finish, heals the network, resumes
//! paused and restarts crashed nodes, and runs a quiet period with no
//! client operations (hinted handoff and anti-entropy only) until every
//! hint is handed off and the replicas agree, at most a minute of virtual
//! time. Then it checks, on every run:
//! - (a) **no acknowledged write lost**: every write acknowledged OK is in
//!   a final read at R = N, or some write's causal context covered it
//!   ([`checker`]); with buffered durability, only a write that W of its
//!   replicas may have lost in crashes before their sync is excused
//!   ([`CrashWindow`], [`writes_allowed_lost`]);
//! - (b) **nothing resurrected**: no read, at any time, returns a version
//!   beside one whose context covered it; the final read returns nothing
//!   an acknowledged write or delete covered;
//! - (c) **convergence**, before any final read: the primaries of every
//!   written key hold equal objects, and the primaries of every partition
//!   with a Merkle tree have equal roots, each tree describing what its
//!   node stores ([`replicas`]); no hint is left;
//! - (d) **causal history never goes backwards on a replica**: every data
//!   write a replica applies stores a clock that descends the one it
//!   replaced (checked on each commit, all along the run);
//! - plus: every version a read returned was written by some client, to
//!   that key, with that value, before the read ended; an LWW bucket's
//!   final read holds at most one version.
//!
//! [`PlantedBug`] injects known defects (acknowledging before the quorum,
//! dropping siblings on merge, reissued dots of fallbacks and of buffered
//! writes, whole-clock write contexts, resurrecting merges, stale
//! overwrites, no background repair) to show that each checker catches
//! the class of bug it exists for (`tests/planted_bugs.rs`).
//!
//! # Replay
//! Scenario tests run many seeds through [`run_seeds`]; a failure prints
//! the seed and `RINGKV_SIM_SEED=<seed> cargo test -p ringkv-sim <test>`,
//! which runs that one seed; `RINGKV_SIM_SEEDS=<count>` runs more.

pub mod checker;
mod cluster;
mod config;
mod event;
mod fault;
pub mod history;
mod network;
mod node;
pub mod replicas;
mod rng;
mod seeds;
mod sim;
mod stats;
mod trace;
mod workload;

pub use checker::{
    CrashWindow, Violation, ViolationKind, check_history, check_history_with, writes_allowed_lost,
};
pub use cluster::Cluster;
pub use config::{NetworkConfig, PlantedBug, SIM_BUCKET, SimConfig};
pub use event::EventQueue;
pub use fault::{Cut, Fault, changing_partitions};
pub use history::{History, OpId, OpKind, OpRecord, Outcome};
pub use network::Network;
pub use node::{
    Effect, FORWARD_GRACE_MS, Payload, PlannedReplica, ReplyTo, SimNode, Timer, TransportError,
};
pub use ringkv_core::hint::Hint;
pub use rng::SimRng;
pub use seeds::{SEED_ENV, SEEDS_ENV, run_seeds};
pub use sim::{Report, Sim};
pub use stats::SimStats;
pub use trace::Trace;
pub use workload::{ContextFrom, Step, WorkloadShape};
