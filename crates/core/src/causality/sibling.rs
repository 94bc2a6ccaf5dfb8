//! `Sibling`: one stored version of a key (value or tombstone, content type,
//! timestamp, expiry) tagged with the dot of the write that made it; and
//! `NewVersion`, what a client write brings before it gets a dot.

use super::Dot;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    pub dot: Dot,
    /// `None` is a tombstone: the write was a delete.
    pub value: Option<Vec<u8>>,
    pub content_type: String,
    /// Coordinator's wall clock at the write (LWW orders by it).
    pub modified_ms: u64,
    /// Wall-clock time (ms since the Unix epoch) from which the version
    /// counts as absent: stamped once by the coordinator from the TTL the
    /// client asked for, so every replica holds the same instant, and
    /// compared with the clock of whoever reads. `None`: never expires.
    pub expires_ms: Option<u64>,
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True once the version's expiry has come (at `now_ms`, a reader's clock).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now_ms)
    }

    /// A value that has not expired at `now_ms`: what reads return.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && !self.is_expired_at(now_ms)
    }
}

/// A write as the client asked for it, before a coordinator stamps a dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVersion {
    /// `None` deletes.
    pub value: Option<Vec<u8>>,
    pub content_type: String,
    /// The coordinator's clock, an input (the core reads no clock).
    pub now_ms: u64,
    /// When the new version expires (see [`Sibling::expires_ms`]).
    pub expires_ms: Option<u64>,
}
