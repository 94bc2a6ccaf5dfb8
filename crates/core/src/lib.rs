//! The pure protocol core of ringkv.
//!
//! This crate must not depend on tokio, sockets, threads, the wall clock,
//! the thread RNG or `HashMap` iteration order: time, randomness and I/O come
//! in as inputs, decisions come out as values. The node shell and the
//! simulator drive the same code, so a seed replays a simulated run exactly.
//! (`crates/cli/tests/core_is_pure.rs` checks the dependency list.)

pub mod antientropy;
pub mod causality;
pub mod ring;

/// Identity of a node, and the replica id it stamps into dots. Random at
/// first start, persisted; a node that loses its data dir gets a new one
/// (never reused, Riak's "kv679" lesson).
pub type NodeId = u64;
pub mod bucket;
pub mod coordinator;
pub mod hint;
pub mod membership;
pub mod message;
