//! Active anti-entropy: per partition and replica set, a Merkle tree over
//! (object key → version digest) kept up to date as writes land, and a pure,
//! step-by-step exchange that finds the keys whose digests differ between
//! two replicas. Knows nothing of timers, transport, storage or how a
//! difference is repaired (the replica merges the objects causally).

mod error;
mod exchange;
mod message;
mod tree;

#[cfg(test)]
mod tests;

pub use error::ExchangeError;
pub use exchange::{Exchange, ExchangeLimits, ExchangeOutcome, ExchangeStep, KeyDifference};
pub use message::{ExchangeRequest, ExchangeResponse, MAX_REQUEST_INDICES, answer};
pub use tree::{
    DEFAULT_SEGMENTS, DEFAULT_WIDTH, MAX_SEGMENTS, MAX_WIDTH, MerkleTree, SegmentEntries,
    TreeShapeError,
};
