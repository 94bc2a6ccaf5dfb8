//! `Object`: what a replica stores for one key, a dotted version vector set
//! (Riak 2.0 style): a clock (the causal history) plus the siblings, each
//! tagged with the dot of its write. Owns the coordinator-side `update` and
//! the replica-side `merge`; the byte format lives in `encoding.rs`. Knows
//! nothing of quorums, storage or buckets beyond the two knobs passed in.

use std::cmp::Ordering;

use super::{ConflictMode, Dot, MAX_CONTEXT_ENTRIES, NewVersion, Sibling, VersionVector};
use crate::NodeId;

/// Longest content type the encoding can hold (u16 length).
pub const MAX_CONTENT_TYPE_BYTES: usize = u16::MAX as usize;
/// Largest value the encoding can hold (u32 length). Buckets set far lower
/// limits (`--max-value-bytes`); this is the format's ceiling.
pub const MAX_ENCODABLE_VALUE_BYTES: usize = u32::MAX as usize;

/// Invariants: siblings sorted by dot, dots unique, the clock contains every
/// sibling's dot, content types and values fit the encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    pub(super) clock: VersionVector,
    pub(super) siblings: Vec<Sibling>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateError {
    #[error("too many siblings: the write would leave {count}, the bucket allows {max}")]
    TooManySiblings { count: usize, max: usize },
    #[error("content type is {len} bytes, at most {max} are allowed")]
    ContentTypeTooLong { len: usize, max: usize },
    #[error("value is {len} bytes, at most {max} can be stored")]
    ValueTooLarge { len: usize, max: usize },
    #[error("replica {replica} has no write counter left for this key")]
    CounterExhausted { replica: NodeId },
    #[error("the causal context would grow the key's clock to {len} entries, past {max}")]
    ClockTooLarge { len: usize, max: usize },
    #[error("the key holds a value that has not expired")]
    NotExpired,
}

impl Object {
    /// The causal history of this object; hand it to clients as their
    /// causal context (see `encode_context`).
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// All versions, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Versions that are not tombstones, sorted by dot.
    pub fn live_siblings(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.is_tombstone())
    }

    /// True when no live version is left (absent or deleted): reads answer
    /// not found.
    pub fn is_deleted(&self) -> bool {
        self.live_siblings().next().is_none()
    }

    /// Versions that are neither tombstones nor expired at `now_ms` (a
    /// reader's clock), sorted by dot: what reads return.
    pub fn live_siblings_at(&self, now_ms: u64) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(move |s| s.is_live_at(now_ms))
    }

    /// True when reads at `now_ms` answer not found: every version is a
    /// tombstone or has expired.
    pub fn is_absent_at(&self, now_ms: u64) -> bool {
        self.live_siblings_at(now_ms).next().is_none()
    }

    /// True when the object still holds a value, but every value has
    /// expired at `now_ms`: the sweeper turns it into a tombstone.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        !self.is_deleted() && self.is_absent_at(now_ms)
    }

    /// When [`is_expired_at`](Self::is_expired_at) turns true for good:
    /// the latest expiry of its values, if it holds values and every one
    /// of them expires.
    pub fn expires_at(&self) -> Option<u64> {
        self.live_siblings()
            .map(|s| s.expires_ms)
            .try_fold(None, |latest: Option<u64>, at| Some(latest.max(Some(at?))))
            .flatten()
    }

    /// Coordinator-side write at replica `replica` with the causal context
    /// `context` the client sent (empty = blind write). In `Siblings` mode the
    /// new version supersedes exactly the siblings `context` covers; in `Lww`
    /// mode it replaces all of them and is stamped later than any of them.
    /// On error nothing changes and no dot is used.
    pub fn update(
        current: Option<&Object>,
        context: &VersionVector,
        new: NewVersion,
        replica: NodeId,
        mode: ConflictMode,
        max_siblings: usize,
    ) -> Result<Object, UpdateError> {
        Object::update_above(current, context, new, replica, 0, mode, max_siblings)
    }

    /// [`update`](Self::update) whose new dot also counts above `floor`:
    /// the highest counter of `replica` in copies this replica no longer
    /// has (reaped tombstones), which other replicas may still hold. A dot
    /// at or below it could be taken there for one already seen and
    /// dropped (Riak's "kv679"). The floor supersedes nothing.
    pub fn update_above(
        current: Option<&Object>,
        context: &VersionVector,
        new: NewVersion,
        replica: NodeId,
        floor: u64,
        mode: ConflictMode,
        max_siblings: usize,
    ) -> Result<Object, UpdateError> {
        if new.content_type.len() > MAX_CONTENT_TYPE_BYTES {
            return Err(UpdateError::ContentTypeTooLong {
                len: new.content_type.len(),
                max: MAX_CONTENT_TYPE_BYTES,
            });
        }
        if let Some(value) = &new.value
            && value.len() > MAX_ENCODABLE_VALUE_BYTES
        {
            return Err(UpdateError::ValueTooLarge {
                len: value.len(),
                max: MAX_ENCODABLE_VALUE_BYTES,
            });
        }
        let empty = Object::default();
        let current = current.unwrap_or(&empty);
        let counter = current
            .clock
            .get(replica)
            .max(context.get(replica))
            .max(floor)
            .checked_add(1)
            .ok_or(UpdateError::CounterExhausted { replica })?;
        let dot = Dot { replica, counter };

        let (kept, modified_ms): (Vec<&Sibling>, u64) = match mode {
            ConflictMode::Siblings => (
                current
                    .siblings
                    .iter()
                    .filter(|s| !context.contains(s.dot))
                    .collect(),
                new.now_ms,
            ),
            ConflictMode::Lww => (Vec::new(), lww_timestamp(current, new.now_ms)),
        };
        let count = kept.len() + 1;
        if count > max_siblings {
            return Err(UpdateError::TooManySiblings {
                count,
                max: max_siblings,
            });
        }

        let mut siblings: Vec<Sibling> = Vec::with_capacity(count);
        siblings.extend(kept.into_iter().cloned());
        // The new counter exceeds every counter of `replica` the clock has,
        // hence every sibling dot of `replica`: the dot is fresh.
        let position = siblings.partition_point(|s| s.dot < dot);
        siblings.insert(
            position,
            Sibling {
                dot,
                value: new.value,
                content_type: new.content_type,
                modified_ms,
                expires_ms: new.expires_ms,
            },
        );
        let mut clock = current.clock.clone();
        clock.merge(context);
        // A context is client input: it may not grow a clock past what a
        // context can carry. New dots still may (each replica's own actor).
        if clock.len() > MAX_CONTEXT_ENTRIES && clock.len() > current.clock.len() {
            return Err(UpdateError::ClockTooLarge {
                len: clock.len(),
                max: MAX_CONTEXT_ENTRIES,
            });
        }
        clock.add(dot);
        let object = Object { clock, siblings };
        debug_assert_eq!(object.invariant_violation(), None);
        Ok(object)
    }

    /// Replica-side merge (Riak's "sync"): the union of both histories.
    /// Commutative, associative and idempotent, so replicas converge
    /// whatever the order of repairs.
    pub fn merge(&self, other: &Object, mode: ConflictMode) -> Object {
        let mut clock = self.clock.clone();
        clock.merge(&other.clock);
        let siblings = match mode {
            ConflictMode::Siblings => merge_siblings(self, other),
            ConflictMode::Lww => self
                .siblings
                .iter()
                .chain(&other.siblings)
                .max_by(|a, b| lww_order(a, b))
                .cloned()
                .into_iter()
                .collect(),
        };
        let object = Object { clock, siblings };
        debug_assert_eq!(object.invariant_violation(), None);
        object
    }

    /// Describes the first broken invariant, if any.
    pub(super) fn invariant_violation(&self) -> Option<String> {
        for pair in self.siblings.windows(2) {
            if pair[0].dot >= pair[1].dot {
                return Some(format!(
                    "siblings not strictly sorted: {} then {}",
                    pair[0].dot, pair[1].dot
                ));
            }
        }
        for sibling in &self.siblings {
            if sibling.dot.counter == 0 {
                return Some(format!("sibling dot {} has counter 0", sibling.dot));
            }
            if !self.clock.contains(sibling.dot) {
                return Some(format!(
                    "clock does not contain sibling dot {}",
                    sibling.dot
                ));
            }
            if sibling.content_type.len() > MAX_CONTENT_TYPE_BYTES {
                return Some(format!("content type of {} too long", sibling.dot));
            }
            if sibling
                .value
                .as_ref()
                .is_some_and(|v| v.len() > MAX_ENCODABLE_VALUE_BYTES)
            {
                return Some(format!("value of {} too large", sibling.dot));
            }
        }
        None
    }
}

/// LWW stamp: the coordinator's clock, but later than every version it
/// replaces, so a write that saw a version sorts after it despite clock skew.
fn lww_timestamp(current: &Object, now_ms: u64) -> u64 {
    current
        .siblings
        .iter()
        .map(|s| s.modified_ms.saturating_add(1))
        .fold(now_ms, u64::max)
}

/// Total order used by LWW: (modified_ms, replica, counter); content and
/// expiry break the (never expected) tie of one dot with two contents, so
/// that merge stays commutative even then.
fn lww_order(a: &Sibling, b: &Sibling) -> Ordering {
    a.modified_ms
        .cmp(&b.modified_ms)
        .then(a.dot.cmp(&b.dot))
        .then_with(|| a.value.cmp(&b.value))
        .then_with(|| a.content_type.cmp(&b.content_type))
        .then_with(|| a.expires_ms.cmp(&b.expires_ms))
}

/// Keeps a sibling of one side unless the other side has seen its dot and
/// dropped it (superseded it); walks both sorted lists once.
fn merge_siblings(a: &Object, b: &Object) -> Vec<Sibling> {
    let mut out = Vec::with_capacity(a.siblings.len().max(b.siblings.len()));
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.siblings.get(i), b.siblings.get(j)) {
            (Some(x), Some(y)) => match x.dot.cmp(&y.dot) {
                Ordering::Less => {
                    if !b.clock.contains(x.dot) {
                        out.push(x.clone());
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    if !a.clock.contains(y.dot) {
                        out.push(y.clone());
                    }
                    j += 1;
                }
                Ordering::Equal => {
                    let keep = if lww_order(x, y) == Ordering::Less {
                        y
                    } else {
                        x
                    };
                    out.push(keep.clone());
                    i += 1;
                    j += 1;
                }
            },
            (Some(x), None) => {
                if !b.clock.contains(x.dot) {
                    out.push(x.clone());
                }
                i += 1;
            }
            (None, Some(y)) => {
                if !a.clock.contains(y.dot) {
                    out.push(y.clone());
                }
                j += 1;
            }
            (None, None) => return out,
        }
    }
}
