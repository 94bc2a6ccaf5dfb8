//! `VersionVector`: a causal history summarised as, per replica, the highest
//! counter seen (all lower counters of that replica are seen too). Used as an
//! object's clock and as the causal context a client hands back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Dot, ZeroCounterError};
use crate::NodeId;

/// Replica → highest counter seen. Entries with counter 0 are never stored,
/// so equal histories compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "BTreeMap<NodeId, u64>", try_from = "BTreeMap<NodeId, u64>")]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector(BTreeMap::new())
    }

    /// Highest counter seen from `replica`, 0 if none.
    pub fn get(&self, replica: NodeId) -> u64 {
        self.0.get(&replica).copied().unwrap_or(0)
    }

    /// Whether this history includes the write `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.replica)
    }

    /// Adds `dot` (and, implicitly, every earlier dot of its replica).
    /// A dot with counter 0 adds nothing.
    pub fn add(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let entry = self.0.entry(dot.replica).or_insert(0);
        *entry = (*entry).max(dot.counter);
    }

    /// Pointwise maximum: the union of both histories.
    pub fn merge(&mut self, other: &VersionVector) {
        for (replica, counter) in other.iter() {
            self.add(Dot { replica, counter });
        }
    }

    /// Whether this history includes all of `other` (pointwise `>=`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .iter()
            .all(|(replica, counter)| self.get(replica) >= counter)
    }

    /// Whether this history strictly includes `other`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        self != other && self.descends(other)
    }

    /// Number of replicas with a non-zero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries `(replica, counter)` in increasing replica order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(&replica, &counter)| (replica, counter))
    }
}

impl FromIterator<Dot> for VersionVector {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> VersionVector {
        let mut vv = VersionVector::new();
        for dot in dots {
            vv.add(dot);
        }
        vv
    }
}

impl From<VersionVector> for BTreeMap<NodeId, u64> {
    fn from(vv: VersionVector) -> BTreeMap<NodeId, u64> {
        vv.0
    }
}

impl TryFrom<BTreeMap<NodeId, u64>> for VersionVector {
    type Error = ZeroCounterError;

    fn try_from(entries: BTreeMap<NodeId, u64>) -> Result<VersionVector, ZeroCounterError> {
        if let Some((&replica, _)) = entries.iter().find(|(_, counter)| **counter == 0) {
            return Err(ZeroCounterError { replica });
        }
        Ok(VersionVector(entries))
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn vv(entries: &[(NodeId, u64)]) -> VersionVector {
        entries.iter().map(|&(r, c)| Dot::new(r, c)).collect()
    }

    #[test]
    fn get_contains_add() {
        let mut v = VersionVector::new();
        assert!(v.is_empty());
        assert_eq!(v.get(3), 0);
        assert!(!v.contains(Dot::new(3, 1)));
        v.add(Dot::new(3, 2));
        assert!(v.contains(Dot::new(3, 1)));
        assert!(v.contains(Dot::new(3, 2)));
        assert!(!v.contains(Dot::new(3, 3)));
        v.add(Dot::new(3, 1));
        assert_eq!(v.get(3), 2, "add keeps the maximum");
        v.add(Dot {
            replica: 4,
            counter: 0,
        });
        assert_eq!(v.len(), 1, "a zero counter is never stored");
    }

    #[test]
    fn merge_and_descends() {
        let a = vv(&[(1, 3), (2, 1)]);
        let b = vv(&[(2, 4), (5, 1)]);
        assert!(!a.descends(&b) && !b.descends(&a));
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m, vv(&[(1, 3), (2, 4), (5, 1)]));
        assert!(m.descends(&a) && m.descends(&b) && m.dominates(&a));
        assert!(m.descends(&m) && !m.dominates(&m));
        assert!(m.descends(&VersionVector::new()));
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(1, 3), (2, 4), (5, 1)]);
    }

    #[test]
    fn serde_round_trip_and_rejects_zero() {
        let v = vv(&[(1, 3), (9, 1)]);
        let bytes = postcard::to_stdvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<VersionVector>(&bytes).unwrap(), v);
        let zero: BTreeMap<NodeId, u64> = [(1, 0)].into_iter().collect();
        let bytes = postcard::to_stdvec(&zero).unwrap();
        assert!(postcard::from_bytes::<VersionVector>(&bytes).is_err());
    }
}
