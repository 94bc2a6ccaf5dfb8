//! ringkv-sim: a deterministic simulator of a ringkv cluster, and the
//! checkers that judge its runs.
//!
//! # The event loop
//! One thread, one seed. [`Sim`] keeps a virtual clock in milliseconds and
//! an [`EventQueue`] ordered by (time, insertion sequence); nothing that
//! affects a run iterates a `HashMap` or reads the wall clock, and every
//! random draw comes from one [`SimRng`] (xoshiro256**) seeded by
//! [`SimConfig::seed`], so a seed replays a run exactly. Every processed
//! event is appended to a [`Trace`] whose hash ([`Sim::trace_hash`])
//! fingerprints the run. Events are: a client's next step, a client
//! request reaching its node, an answer reaching a client, a client's own
//! deadline, a peer message arriving, a node's commit and background sync,
//! a node's timer, the ticks of a node's heartbeat and hint delivery loops,
//! and a scheduled fault. The periodic ticks never stop; a run is *quiet*
//! when only they (and heartbeat messages) are left ([`Sim::run_until_quiet`]).
//! Heartbeat chatter is hashed into the trace but kept out of the tail
//! printed on failure.
//!
//! # What runs
//! 3 to 5 [`SimNode`]s share one `core::ring::Layout` (built with
//! `Layout::new` + `with_member`) and one bucket (N=3, R=2, W=2, siblings
//! by default). Each node runs the protocol of `crates/node/src/node.rs`
//! over the real core and the real storage:
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
//!   with the true count;
//! - a get asks the plan (`ReplicaGet`; a replica answers with its object
//!   merged with any hint it holds), answers when `GetRound` has R replies,
//!   and once all replied or the round timed out sends the causal merge to
//!   stale primaries (read repair);
//! - a hint delivery loop hands hints to their primaries once these are
//!   usable again and drops a target only after its durable acknowledgement.
//!
//! The coordinator picks the actor of a write's dot as the node does
//! (a56b069): its node id as a primary with synced writes, a per-process
//! incarnation id with buffered writes, a fresh id per write as a fallback
//! or outside the plan; and answers with `written_context`. A fallback
//! deletes a hint record once every target acknowledged it.
//!
//! The simulator reimplements no merge or quorum logic. Where it departs
//! from the node: gossip, joins and anti-entropy are not simulated (one
//! static layout).
//!
//! # The fault model
//! - Network: every message draws its own delay (so messages reorder),
//!   may be lost or duplicated ([`NetworkConfig`]); directed links can be
//!   blocked (partitions), checked when a message arrives. Requests and
//!   responses are matched by id, so a duplicate response is ignored, as
//!   the node's peer transport ignores it.
//! - Crash ([`Fault::Crash`]): the process loses all in-memory state
//!   (rounds, forwards, its queue of writes not yet committed) and
//!   `MemoryStorage::crash` drops whatever was not synced; clients whose
//!   request it held see the connection drop (outcome unknown). While down,
//!   a request sent to it is answered by a connection refusal (its host is
//!   up, the port is closed), other messages are lost. Restart: same
//!   storage, same node id.
//! - Clocks: each node's clock is skewed by a fixed amount.
//! - Timeouts: every put and get round, and every forward, has a timer;
//!   clients have their own deadline.
//!
//! # The checkers
//! Clients record a [`History`]: each operation's invoke and completion
//! time, outcome (ok, failed, unknown), the unique value a write wrote and
//! the context it carried (and which earlier operation it came from), the
//! versions and context a read returned. [`Sim::finish`] heals the
//! network, restarts crashed nodes, lets the detectors see them up and the
//! hints drain, reads every key at R = N (read repair then converges the
//! primaries), and runs [`check_history`]: no acknowledged write lost or
//! silently superseded, no covered version resurrected, no invented value
//! (see [`checker`]); plus checks that the primaries' stored objects agree
//! and that no hint is left undelivered.
//! [`PlantedBug`] injects known defects to show the checkers catch them.
//!
//! # Replay
//! Scenario tests run many seeds through [`run_seeds`]; a failure prints
//! the seed and `RINGKV_SIM_SEED=<seed> cargo test -p ringkv-sim <test>`,
//! which runs that one seed.

pub mod checker;
mod cluster;
mod config;
mod event;
mod fault;
mod hint;
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
pub use hint::Hint;
pub use history::{History, OpId, OpKind, OpRecord, Outcome};
pub use network::Network;
pub use node::{
    Effect, FORWARD_GRACE_MS, Payload, PlannedReplica, ReplyTo, SimNode, Timer, TransportError,
};
pub use rng::SimRng;
pub use seeds::{SEED_ENV, SEEDS_ENV, run_seeds};
pub use sim::{Report, Sim};
pub use stats::SimStats;
pub use trace::Trace;
pub use workload::{ContextFrom, Step, WorkloadShape};
