//! `Sibling`: one stored version of a key (value or tombstone, content type,
//! timestamp) tagged with the dot of the write that made it; and
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
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
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
}
