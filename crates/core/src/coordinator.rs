//! Quorum state machines of a coordinator: a put waits for W durable
//! acknowledgements, a get for R replies merged causally, then finds the
//! replicas to repair. Replies come in as calls; decisions come out as
//! values. No timers here: the caller calls `timed_out` when its timer fires.

use std::collections::{BTreeMap, BTreeSet};

use crate::NodeId;
use crate::causality::{ConflictMode, Dot, Object, VersionVector};

/// How a quorum round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quorum<T> {
    Reached(T),
    /// Too many replicas failed for the quorum to be reachable.
    Unreachable {
        got: u32,
        needed: u32,
    },
    /// The timer fired first.
    TimedOut {
        got: u32,
        needed: u32,
    },
}

/// Where a replica of a put sits: a primary of the key, or a fallback
/// holding the write as a hint for a primary that is down (sloppy quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Fallback,
}

/// A put or delete: the coordinator has stored the new object locally
/// (its own acknowledgement, unless it is not a replica) and sent it to the
/// other replicas. Reached when `w` replicas acknowledged, at least `pw`
/// of them primaries.
#[derive(Debug)]
pub struct PutRound {
    w: usize,
    pw: usize,
    acks: usize,
    primary_acks: usize,
    pending: usize,
    pending_primaries: usize,
    decided: bool,
}

impl PutRound {
    /// A strict round among primaries: `local_ack` when the coordinator
    /// stored the object itself, `remote` primaries it was sent to.
    pub fn new(w: usize, local_ack: bool, remote: usize) -> Self {
        Self::with_roles(
            w,
            0,
            local_ack.then_some(Role::Primary),
            &vec![Role::Primary; remote],
        )
    }

    /// `local`: the role of the coordinator's own durable copy, if it is a
    /// replica. `remote`: the roles of the replicas the object was sent to.
    pub fn with_roles(w: usize, pw: usize, local: Option<Role>, remote: &[Role]) -> Self {
        assert!(w >= 1 && pw <= w, "quorums must satisfy 1 <= w and pw <= w");
        PutRound {
            w,
            pw,
            acks: usize::from(local.is_some()),
            primary_acks: usize::from(local == Some(Role::Primary)),
            pending: remote.len(),
            pending_primaries: remote.iter().filter(|r| **r == Role::Primary).count(),
            decided: false,
        }
    }

    /// The decision if it can be made before any reply (W=1, or too few replicas).
    pub fn start(&mut self) -> Option<Quorum<()>> {
        self.decide()
    }

    /// A primary acknowledged.
    pub fn acked(&mut self) -> Option<Quorum<()>> {
        self.acked_by(Role::Primary)
    }

    /// A primary failed.
    pub fn failed(&mut self) -> Option<Quorum<()>> {
        self.failed_by(Role::Primary)
    }

    pub fn acked_by(&mut self, role: Role) -> Option<Quorum<()>> {
        self.settle(role);
        self.acks += 1;
        if role == Role::Primary {
            self.primary_acks += 1;
        }
        self.decide()
    }

    pub fn failed_by(&mut self, role: Role) -> Option<Quorum<()>> {
        self.settle(role);
        self.decide()
    }

    pub fn timed_out(&mut self) -> Option<Quorum<()>> {
        if self.decided {
            return None;
        }
        self.decided = true;
        let (got, needed) = self.shortfall();
        Some(Quorum::TimedOut { got, needed })
    }

    pub fn acks(&self) -> usize {
        self.acks
    }

    pub fn is_decided(&self) -> bool {
        self.decided
    }

    fn settle(&mut self, role: Role) {
        self.pending = self.pending.saturating_sub(1);
        if role == Role::Primary {
            self.pending_primaries = self.pending_primaries.saturating_sub(1);
        }
    }

    /// The count that falls short, for the error message.
    fn shortfall(&self) -> (u32, u32) {
        let primaries_short = self.primary_acks + self.pending_primaries < self.pw;
        if self.acks < self.w && !primaries_short {
            (self.acks as u32, self.w as u32)
        } else {
            (self.primary_acks as u32, self.pw as u32)
        }
    }

    fn decide(&mut self) -> Option<Quorum<()>> {
        if self.decided {
            return None;
        }
        if self.acks >= self.w && self.primary_acks >= self.pw {
            self.decided = true;
            return Some(Quorum::Reached(()));
        }
        if self.acks + self.pending < self.w || self.primary_acks + self.pending_primaries < self.pw
        {
            self.decided = true;
            let (got, needed) = self.shortfall();
            return Some(Quorum::Unreachable { got, needed });
        }
        None
    }
}

/// A get: collects replies of replicas, answers after R of them with their
/// causal merge, and once every replica answered (or the timer fired)
/// names the replicas whose copy is stale (read repair).
///
/// During an ownership change the round may also ask *holders*: members
/// that held the key's partition under an earlier layout and may not have
/// handed it off yet. Their copies are merged in, but they never count
/// toward R and are never repaired; while R is met, the answer waits for
/// them until each has replied or failed (or the timer fires).
#[derive(Debug)]
pub struct GetRound {
    needed: usize,
    /// `pr`: replies that must come from primaries (not fallbacks).
    primaries_needed: usize,
    primaries: BTreeSet<NodeId>,
    asked: Vec<NodeId>,
    holders: BTreeSet<NodeId>,
    replies: BTreeMap<NodeId, Option<Object>>,
    failures: BTreeSet<NodeId>,
    mode: ConflictMode,
    decided: bool,
}

impl GetRound {
    pub fn new(needed: usize, asked: Vec<NodeId>, mode: ConflictMode) -> Self {
        Self::with_primaries(needed, 0, Vec::new(), asked, mode)
    }

    /// A round that also needs `pr` replies from `primaries` (a subset of
    /// `asked`; the others are fallbacks standing in for primaries).
    pub fn with_primaries(
        needed: usize,
        pr: usize,
        primaries: Vec<NodeId>,
        asked: Vec<NodeId>,
        mode: ConflictMode,
    ) -> Self {
        assert!(needed >= 1, "a quorum of zero is a programming error");
        GetRound {
            needed,
            primaries_needed: pr,
            primaries: primaries.into_iter().collect(),
            asked,
            holders: BTreeSet::new(),
            replies: BTreeMap::new(),
            failures: BTreeSet::new(),
            mode,
            decided: false,
        }
    }

    /// Also asks `holders` (see the type's documentation); any that is
    /// among the replicas asked is left out.
    pub fn with_holders(mut self, holders: impl IntoIterator<Item = NodeId>) -> Self {
        self.holders = holders
            .into_iter()
            .filter(|h| !self.asked.contains(h))
            .collect();
        self
    }

    pub fn start(&mut self) -> Option<Quorum<Option<Object>>> {
        self.decide()
    }

    pub fn replied(
        &mut self,
        from: NodeId,
        object: Option<Object>,
    ) -> Option<Quorum<Option<Object>>> {
        if self.awaits(from) {
            self.replies.insert(from, object);
        }
        self.decide()
    }

    pub fn failed(&mut self, from: NodeId) -> Option<Quorum<Option<Object>>> {
        if self.awaits(from) {
            self.failures.insert(from);
        }
        self.decide()
    }

    /// The answer when the timer fires: what the replies so far give if
    /// they make the quorum (holders that did not answer in time are left
    /// out), else a time-out.
    pub fn timed_out(&mut self) -> Option<Quorum<Option<Object>>> {
        if self.decided {
            return None;
        }
        self.decided = true;
        if self.quorum_met() {
            return Some(Quorum::Reached(self.merged()));
        }
        Some(Quorum::TimedOut {
            got: self.replica_replies() as u32,
            needed: self.needed as u32,
        })
    }

    /// Every asked replica and holder has answered or failed.
    pub fn is_complete(&self) -> bool {
        self.replies.len() + self.failures.len() >= self.asked.len() + self.holders.len()
    }

    /// Every asked replica and holder has answered (none failed).
    pub fn all_replied(&self) -> bool {
        self.replies.len() >= self.asked.len() + self.holders.len()
    }

    fn awaits(&self, from: NodeId) -> bool {
        (self.asked.contains(&from) || self.holders.contains(&from))
            && !self.replies.contains_key(&from)
            && !self.failures.contains(&from)
    }

    /// Replies that count toward R: those of replicas, not of holders.
    fn replica_replies(&self) -> usize {
        self.replies
            .keys()
            .filter(|n| !self.holders.contains(n))
            .count()
    }

    fn quorum_met(&self) -> bool {
        self.replica_replies() >= self.needed && self.primary_replies() >= self.primaries_needed
    }

    /// The causal merge of every reply so far (None when nobody had the key).
    pub fn merged(&self) -> Option<Object> {
        let mut merged: Option<Object> = None;
        for object in self.replies.values().flatten() {
            merged = Some(match merged {
                None => object.clone(),
                Some(m) => m.merge(object, self.mode),
            });
        }
        merged
    }

    /// Replicas that replied with something other than the merge of all
    /// replies: each should receive the merged object (read repair).
    /// Holders are not among them.
    pub fn stale_replicas(&self) -> Vec<NodeId> {
        let Some(merged) = self.merged() else {
            return Vec::new();
        };
        self.replies
            .iter()
            .filter(|(node, _)| !self.holders.contains(node))
            .filter(|(_, object)| object.as_ref() != Some(&merged))
            .map(|(node, _)| *node)
            .collect()
    }

    fn primary_replies(&self) -> usize {
        self.replies
            .keys()
            .filter(|n| self.primaries.contains(n))
            .count()
    }

    fn decide(&mut self) -> Option<Quorum<Option<Object>>> {
        if self.decided {
            return None;
        }
        let primary_replies = self.primary_replies();
        let pending_primaries = self
            .primaries
            .iter()
            .filter(|n| {
                self.asked.contains(n)
                    && !self.replies.contains_key(n)
                    && !self.failures.contains(n)
            })
            .count();
        if primary_replies + pending_primaries < self.primaries_needed {
            self.decided = true;
            return Some(Quorum::Unreachable {
                got: primary_replies as u32,
                needed: self.primaries_needed as u32,
            });
        }
        if primary_replies < self.primaries_needed {
            return None;
        }
        let replies = self.replica_replies();
        if replies >= self.needed {
            if self.holders.iter().any(|h| self.awaits(*h)) {
                return None;
            }
            self.decided = true;
            return Some(Quorum::Reached(self.merged()));
        }
        let pending = self.asked.iter().filter(|n| self.awaits(**n)).count();
        if replies + pending < self.needed {
            self.decided = true;
            return Some(Quorum::Unreachable {
                got: replies as u32,
                needed: self.needed as u32,
            });
        }
        None
    }
}

/// The context a write hands back to its client: what the client's context
/// covered plus the new version's dot, and nothing else. The object's whole
/// clock would also cover concurrent siblings the client never saw, and a
/// write passing it would silently supersede them. A version vector cannot
/// cover the new dot without covering the actor's earlier dots; if one of
/// those is still a sibling, the request's own context is returned instead,
/// so the client's next write becomes a sibling rather than dropping it.
pub fn written_context(object: &Object, context_in: VersionVector, actor: NodeId) -> VersionVector {
    let new_dot = Dot {
        replica: actor,
        counter: object.clock().get(actor),
    };
    let mut candidate = context_in.clone();
    candidate.add(new_dot);
    let safe = object
        .siblings()
        .iter()
        .all(|s| s.dot == new_dot || !candidate.contains(s.dot));
    if safe { candidate } else { context_in }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::NewVersion;

    fn object(replica: NodeId, value: &[u8]) -> Object {
        Object::update(
            None,
            &VersionVector::new(),
            NewVersion {
                value: Some(value.to_vec()),
                content_type: "text/plain".into(),
                now_ms: 1,
                expires_ms: None,
            },
            replica,
            ConflictMode::Siblings,
            100,
        )
        .unwrap()
    }

    #[test]
    fn put_reaches_quorum_with_local_and_one_remote() {
        let mut round = PutRound::new(2, true, 2);
        assert_eq!(round.start(), None);
        assert_eq!(round.acked(), Some(Quorum::Reached(())));
        // Late answers change nothing.
        assert_eq!(round.acked(), None);
        assert_eq!(round.timed_out(), None);
    }

    #[test]
    fn put_with_w1_is_decided_by_the_local_write() {
        let mut round = PutRound::new(1, true, 2);
        assert_eq!(round.start(), Some(Quorum::Reached(())));
    }

    #[test]
    fn put_fails_as_soon_as_quorum_is_impossible() {
        let mut round = PutRound::new(3, true, 2);
        assert_eq!(
            round.failed(),
            Some(Quorum::Unreachable { got: 1, needed: 3 })
        );
        let mut round = PutRound::new(2, true, 2);
        assert_eq!(round.failed(), None);
        assert_eq!(
            round.timed_out(),
            Some(Quorum::TimedOut { got: 1, needed: 2 })
        );
    }

    #[test]
    fn put_without_enough_replicas_fails_at_start() {
        let mut round = PutRound::new(3, true, 1);
        assert_eq!(
            round.start(),
            Some(Quorum::Unreachable { got: 1, needed: 3 })
        );
    }

    #[test]
    fn fallbacks_count_toward_w_but_not_pw() {
        const P: Role = Role::Primary;
        const F: Role = Role::Fallback;
        // Sloppy: two primaries down, two fallbacks stand in.
        let mut round = PutRound::with_roles(2, 0, Some(P), &[F, F]);
        assert_eq!(round.acked_by(F), Some(Quorum::Reached(())));
        // Strict: pw=2 cannot be met by fallbacks.
        let mut round = PutRound::with_roles(2, 2, Some(P), &[F, F]);
        assert_eq!(
            round.start(),
            Some(Quorum::Unreachable { got: 1, needed: 2 })
        );
        let mut round = PutRound::with_roles(2, 2, Some(P), &[P, F]);
        assert_eq!(round.acked_by(F), None);
        assert_eq!(round.acked_by(P), Some(Quorum::Reached(())));
        // A coordinator that is not a replica itself.
        let mut round = PutRound::with_roles(2, 1, None, &[P, F, F]);
        assert_eq!(round.acked_by(F), None);
        assert_eq!(
            round.failed_by(P),
            Some(Quorum::Unreachable { got: 0, needed: 1 })
        );
    }

    #[test]
    fn get_merges_r_replies_and_names_stale_replicas() {
        let a = object(1, b"a");
        let b = object(2, b"b");
        let mut round = GetRound::new(2, vec![1, 2, 3], ConflictMode::Siblings);
        assert_eq!(round.start(), None);
        assert_eq!(round.replied(1, Some(a.clone())), None);
        let Some(Quorum::Reached(Some(merged))) = round.replied(2, Some(b.clone())) else {
            panic!("quorum of two replies must be reached");
        };
        assert_eq!(merged.live_siblings().count(), 2);
        assert!(!round.is_complete());
        assert_eq!(round.replied(3, None), None);
        assert!(round.is_complete());
        assert_eq!(round.stale_replicas(), vec![1, 2, 3]);
    }

    #[test]
    fn get_of_missing_key_is_none_and_repairs_nothing() {
        let mut round = GetRound::new(2, vec![1, 2, 3], ConflictMode::Siblings);
        round.replied(1, None);
        assert_eq!(round.replied(2, None), Some(Quorum::Reached(None)));
        assert!(round.stale_replicas().is_empty());
    }

    #[test]
    fn pr_counts_primary_replies_only() {
        // Asked: primary 1, fallbacks 8 and 9 (primaries 2 and 3 are down).
        let mut round =
            GetRound::with_primaries(2, 2, vec![1], vec![1, 8, 9], ConflictMode::Siblings);
        assert_eq!(
            round.start(),
            Some(Quorum::Unreachable { got: 0, needed: 2 })
        );
        let mut round =
            GetRound::with_primaries(2, 1, vec![1, 2], vec![1, 2, 9], ConflictMode::Siblings);
        assert_eq!(round.replied(9, None), None);
        assert_eq!(round.replied(2, None), Some(Quorum::Reached(None)));
        let mut round = GetRound::with_primaries(1, 1, vec![1], vec![1, 9], ConflictMode::Siblings);
        assert_eq!(
            round.replied(9, None),
            None,
            "a fallback's reply does not meet pr"
        );
        assert_eq!(
            round.failed(1),
            Some(Quorum::Unreachable { got: 0, needed: 1 })
        );
    }

    #[test]
    fn get_fails_when_too_many_replicas_fail() {
        let mut round = GetRound::new(2, vec![1, 2, 3], ConflictMode::Siblings);
        assert_eq!(round.failed(1), None);
        assert_eq!(
            round.failed(2),
            Some(Quorum::Unreachable { got: 0, needed: 2 })
        );
        // Replies from nodes that were not asked are ignored.
        let mut round = GetRound::new(1, vec![1], ConflictMode::Siblings);
        assert_eq!(round.replied(9, None), None);
    }

    #[test]
    fn holders_are_merged_and_waited_for_but_never_count_toward_r() {
        // N=1 after a join: the new owner 2 has nothing yet, the old owner
        // 7 still holds the key.
        let a = object(7, b"a");
        let mut round = GetRound::new(1, vec![2], ConflictMode::Siblings).with_holders([7, 2]);
        assert_eq!(round.start(), None);
        assert_eq!(round.replied(2, None), None, "waits for the holder");
        assert_eq!(
            round.replied(7, Some(a.clone())),
            Some(Quorum::Reached(Some(a.clone())))
        );
        assert!(round.is_complete());
        assert_eq!(
            round.stale_replicas(),
            vec![2],
            "the holder is not repaired"
        );

        // A holder's reply alone is no quorum; a failed holder is not
        // waited for.
        let mut round = GetRound::new(1, vec![2], ConflictMode::Siblings).with_holders([7]);
        assert_eq!(round.replied(7, Some(a.clone())), None);
        assert_eq!(
            round.timed_out(),
            Some(Quorum::TimedOut { got: 0, needed: 1 })
        );
        let mut round = GetRound::new(1, vec![2], ConflictMode::Siblings).with_holders([7]);
        assert_eq!(round.failed(7), None);
        assert_eq!(round.replied(2, None), Some(Quorum::Reached(None)));
        let mut round = GetRound::new(1, vec![2], ConflictMode::Siblings).with_holders([7]);
        assert_eq!(
            round.failed(2),
            Some(Quorum::Unreachable { got: 0, needed: 1 })
        );

        // The timer answers with the quorum's merge when a holder is silent.
        let mut round = GetRound::new(1, vec![2], ConflictMode::Siblings).with_holders([7]);
        assert_eq!(round.replied(2, Some(a.clone())), None);
        assert_eq!(round.timed_out(), Some(Quorum::Reached(Some(a))));
    }

    fn write(
        current: Option<&Object>,
        context: &VersionVector,
        actor: NodeId,
        value: &[u8],
    ) -> Object {
        Object::update(
            current,
            context,
            NewVersion {
                value: Some(value.to_vec()),
                content_type: "text/plain".into(),
                now_ms: 1,
                expires_ms: None,
            },
            actor,
            ConflictMode::Siblings,
            100,
        )
        .unwrap()
    }

    #[test]
    fn a_written_context_covers_the_new_version_and_not_unseen_siblings() {
        // Client B's blind write lands next to A's: B's context must not
        // cover A's sibling, or B's next write would drop it.
        let a = write(None, &VersionVector::new(), 1, b"a");
        let ab = write(Some(&a), &VersionVector::new(), 2, b"b");
        let context = written_context(&ab, VersionVector::new(), 2);
        let a_dot = a.siblings()[0].dot;
        assert!(!context.contains(a_dot));
        let b_dot = ab
            .siblings()
            .iter()
            .find(|s| s.dot.replica == 2)
            .unwrap()
            .dot;
        assert!(context.contains(b_dot));
        // B writes again with that context: A's value survives.
        let next = write(Some(&ab), &context, 2, b"b2");
        let values: Vec<&[u8]> = next
            .live_siblings()
            .filter_map(|s| s.value.as_deref())
            .collect();
        assert_eq!(values.len(), 2);
        assert!(values.contains(&&b"a"[..]) && values.contains(&&b"b2"[..]));
    }

    #[test]
    fn a_written_context_falls_back_when_the_actor_has_an_earlier_sibling() {
        // Two blind writes through the same coordinator (actor 1).
        let first = write(None, &VersionVector::new(), 1, b"x");
        let second = write(Some(&first), &VersionVector::new(), 1, b"y");
        assert_eq!(second.live_siblings().count(), 2);
        // Covering (1, 2) would cover (1, 1), a sibling the client never saw.
        let context = written_context(&second, VersionVector::new(), 1);
        assert!(context.is_empty());
    }
}
