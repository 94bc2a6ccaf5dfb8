//! `Dot`: the identity of one write, the pair (replica id, counter) that the
//! coordinator stamps on it. Owns nothing else: sets of dots live in
//! `VersionVector`, versions in `Sibling`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One write: the `counter`-th write to a key coordinated by `replica`.
/// Counters start at 1; a replica numbers its writes to a key without gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawDot")]
pub struct Dot {
    pub replica: NodeId,
    pub counter: u64,
}

impl Dot {
    /// # Panics
    /// If `counter` is 0 (counters start at 1).
    pub fn new(replica: NodeId, counter: u64) -> Dot {
        assert!(counter >= 1, "dot counters start at 1");
        Dot { replica, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replica, self.counter)
    }
}

/// A dot or a version-vector entry with counter 0 was deserialized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replica {replica} has counter 0; counters start at 1")]
pub struct ZeroCounterError {
    pub replica: NodeId,
}

#[derive(Deserialize)]
struct RawDot {
    replica: NodeId,
    counter: u64,
}

impl TryFrom<RawDot> for Dot {
    type Error = ZeroCounterError;

    fn try_from(raw: RawDot) -> Result<Dot, ZeroCounterError> {
        if raw.counter == 0 {
            return Err(ZeroCounterError {
                replica: raw.replica,
            });
        }
        Ok(Dot {
            replica: raw.replica,
            counter: raw.counter,
        })
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn dots_order_by_replica_then_counter() {
        assert!(Dot::new(1, 9) < Dot::new(2, 1));
        assert!(Dot::new(2, 1) < Dot::new(2, 2));
    }

    #[test]
    #[should_panic(expected = "counters start at 1")]
    fn zero_counter_is_a_programmer_error() {
        let _ = Dot::new(1, 0);
    }

    #[test]
    fn serde_rejects_zero_counter() {
        let bytes = postcard::to_stdvec(&Dot::new(7, 3)).unwrap();
        assert_eq!(postcard::from_bytes::<Dot>(&bytes).unwrap(), Dot::new(7, 3));
        let zero = postcard::to_stdvec(&(7u64, 0u64)).unwrap();
        assert!(postcard::from_bytes::<Dot>(&zero).is_err());
    }
}
