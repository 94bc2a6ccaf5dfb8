//! Tests of the causality module: examples, then property tests over
//! simulated histories checked against an explicit model of causality
//! (sets of dots rather than version vectors).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::NodeId;

const TEXT: &str = "text/plain";
const SIBLINGS: ConflictMode = ConflictMode::Siblings;
const LWW: ConflictMode = ConflictMode::Lww;

fn put(value: &str, now_ms: u64) -> NewVersion {
    NewVersion {
        value: Some(value.as_bytes().to_vec()),
        content_type: TEXT.to_owned(),
        now_ms,
        expires_ms: None,
    }
}

fn delete(now_ms: u64) -> NewVersion {
    NewVersion {
        value: None,
        content_type: String::new(),
        now_ms,
        expires_ms: None,
    }
}

/// A write that must succeed (bucket limit 100).
fn write(
    current: Option<&Object>,
    context: &VersionVector,
    new: NewVersion,
    replica: NodeId,
    mode: ConflictMode,
) -> Object {
    Object::update(current, context, new, replica, mode, 100).expect("write within limits")
}

/// Live values, in dot order.
fn values(object: &Object) -> Vec<String> {
    object
        .live_siblings()
        .map(|s| String::from_utf8(s.value.clone().unwrap()).unwrap())
        .collect()
}

fn dots(object: &Object) -> BTreeSet<Dot> {
    object.siblings().iter().map(|s| s.dot).collect()
}

fn vv(entries: &[(NodeId, u64)]) -> VersionVector {
    entries.iter().map(|&(r, c)| Dot::new(r, c)).collect()
}

#[test]
fn a_dot_counts_above_the_floor_and_the_floor_supersedes_nothing() {
    let (a, b): (NodeId, NodeId) = (1, 2);
    // The key was reaped here after (a, 5); another replica may still hold
    // that tombstone: a new blind write must not reuse a counter up to 5.
    let fresh = Object::update_above(None, &vv(&[]), put("x", 1), a, 5, SIBLINGS, 100).unwrap();
    assert_eq!(dots(&fresh), BTreeSet::from([Dot::new(a, 6)]));
    let tombstone_elsewhere = write(None, &vv(&[(a, 5)]), delete(1), b, SIBLINGS);
    let merged = tombstone_elsewhere.merge(&fresh, SIBLINGS);
    assert_eq!(values(&merged), ["x"]);
    // Without the floor the new write is taken for one already deleted.
    let reused = write(None, &vv(&[]), put("x", 1), a, SIBLINGS);
    assert!(values(&tombstone_elsewhere.merge(&reused, SIBLINGS)).is_empty());

    // The floor does not supersede a sibling of `a` below it.
    let one = write(None, &vv(&[]), put("one", 1), a, SIBLINGS);
    let two =
        Object::update_above(Some(&one), &vv(&[]), put("two", 2), a, 9, SIBLINGS, 100).unwrap();
    assert_eq!(values(&two), ["one", "two"]);
    assert_eq!(
        dots(&two),
        BTreeSet::from([Dot::new(a, 1), Dot::new(a, 10)])
    );
}

/// Raw big-endian bytes, for hand-built (possibly invalid) encodings.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u8(mut self, v: u8) -> Bytes {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Bytes {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Bytes {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Bytes {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Bytes {
        self.0.extend_from_slice(v);
        self
    }
    /// Sibling header: dot, modified_ms, flags, content type.
    fn sibling(self, replica: u64, counter: u64, flags: u8, content_type: &[u8]) -> Bytes {
        self.u64(replica)
            .u64(counter)
            .u64(0)
            .u8(flags)
            .u16(content_type.len() as u16)
            .raw(content_type)
    }
    fn token(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }
}

// ---------------------------------------------------------------- update and merge examples

#[test]
fn first_write_gets_dot_one_and_a_clock_covering_it() {
    let object = write(None, &VersionVector::new(), put("a", 5), 7, SIBLINGS);
    assert_eq!(object.clock(), &vv(&[(7, 1)]));
    assert_eq!(object.siblings().len(), 1);
    let sibling = &object.siblings()[0];
    assert_eq!(sibling.dot, Dot::new(7, 1));
    assert_eq!(sibling.modified_ms, 5);
    assert_eq!(sibling.content_type, TEXT);
    assert!(!object.is_deleted());
    assert_eq!(
        Object::update(
            Some(&Object::default()),
            &VersionVector::new(),
            put("a", 5),
            7,
            SIBLINGS,
            100
        ),
        Ok(object),
        "an empty current object is the same as none"
    );
}

#[test]
fn write_with_read_context_replaces_what_the_read_saw() {
    let a = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let read = a.clock().clone();
    let b = write(Some(&a), &read, put("b", 2), 1, SIBLINGS);
    assert_eq!(values(&b), ["b"]);
    assert_eq!(b.clock(), &vv(&[(1, 2)]));
}

#[test]
fn blind_writes_become_siblings_and_a_later_write_with_context_resolves_them() {
    let a = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let b = write(Some(&a), &VersionVector::new(), put("b", 2), 1, SIBLINGS);
    assert_eq!(values(&b), ["a", "b"]);
    let elsewhere = write(None, &VersionVector::new(), put("c", 3), 2, SIBLINGS);
    let merged = b.merge(&elsewhere, SIBLINGS);
    assert_eq!(values(&merged), ["a", "b", "c"]);
    let resolved = write(Some(&merged), merged.clock(), put("abc", 4), 2, SIBLINGS);
    assert_eq!(values(&resolved), ["abc"]);
    assert_eq!(resolved.siblings()[0].dot, Dot::new(2, 2));
    // The stale replica learns of the resolution by merge.
    assert_eq!(values(&b.merge(&resolved, SIBLINGS)), ["abc"]);
}

#[test]
fn write_with_stale_context_keeps_the_versions_it_did_not_see() {
    let a = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let read = a.clock().clone();
    let b = write(Some(&a), &VersionVector::new(), put("b", 2), 1, SIBLINGS);
    let c = write(Some(&b), &read, put("c", 3), 1, SIBLINGS);
    assert_eq!(values(&c), ["b", "c"], "b was not seen by the read, a was");
}

#[test]
fn coordinator_counter_follows_the_context_when_it_is_ahead() {
    // Defensive: the coordinator's copy is behind the context on its own
    // id (not reachable while ids are never reused). The new counter still
    // passes the context, so no dot is issued twice.
    let one = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let two = write(Some(&one), one.clock(), put("b", 2), 1, SIBLINGS);
    let next = write(Some(&one), two.clock(), put("c", 3), 1, SIBLINGS);
    assert_eq!(next.siblings()[0].dot, Dot::new(1, 3));
    assert_eq!(values(&next), ["c"]);
}

#[test]
fn delete_is_a_tombstone_and_a_blind_write_revives_beside_it() {
    let a = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let deleted = write(Some(&a), a.clock(), delete(2), 1, SIBLINGS);
    assert!(deleted.is_deleted());
    assert_eq!(deleted.siblings().len(), 1);
    assert!(deleted.siblings()[0].is_tombstone());
    assert_eq!(deleted.live_siblings().count(), 0);

    let blind = write(
        Some(&deleted),
        &VersionVector::new(),
        put("b", 3),
        2,
        SIBLINGS,
    );
    assert!(!blind.is_deleted());
    assert_eq!(values(&blind), ["b"]);
    assert_eq!(blind.siblings().len(), 2, "the tombstone stays a sibling");
    assert!(Object::default().is_deleted());
}

#[test]
fn max_siblings_is_enforced_and_a_refused_write_changes_nothing() {
    let max = 3;
    let mut object: Option<Object> = None;
    for i in 0..max {
        object = Some(
            Object::update(
                object.as_ref(),
                &VersionVector::new(),
                put(&format!("v{i}"), i as u64),
                1,
                SIBLINGS,
                max,
            )
            .unwrap(),
        );
    }
    let object = object.unwrap();
    assert_eq!(object.siblings().len(), max);
    let refused = Object::update(
        Some(&object),
        &VersionVector::new(),
        put("x", 9),
        1,
        SIBLINGS,
        max,
    );
    assert_eq!(
        refused,
        Err(UpdateError::TooManySiblings { count: 4, max: 3 })
    );
    assert_eq!(
        refused.unwrap_err().to_string(),
        "too many siblings: the write would leave 4, the bucket allows 3"
    );
    // Superseding one sibling keeps the count at the limit: allowed.
    let one_seen = vv(&[(1, 1)]);
    let ok = Object::update(Some(&object), &one_seen, put("y", 9), 1, SIBLINGS, max).unwrap();
    assert_eq!(values(&ok), ["v1", "v2", "y"]);
    assert_eq!(
        ok.siblings()[2].dot,
        Dot::new(1, 4),
        "the refused write used no counter"
    );
    // With the full context the write resolves everything.
    let resolved =
        Object::update(Some(&object), object.clock(), put("z", 9), 1, SIBLINGS, 1).unwrap();
    assert_eq!(values(&resolved), ["z"]);
    assert_eq!(
        Object::update(None, &VersionVector::new(), put("z", 9), 1, LWW, 0),
        Err(UpdateError::TooManySiblings { count: 1, max: 0 })
    );
}

#[test]
fn update_rejects_what_the_encoding_cannot_hold() {
    let long = NewVersion {
        value: Some(vec![]),
        content_type: "x".repeat(MAX_CONTENT_TYPE_BYTES + 1),
        now_ms: 0,
        expires_ms: None,
    };
    assert_eq!(
        Object::update(None, &VersionVector::new(), long, 1, SIBLINGS, 10),
        Err(UpdateError::ContentTypeTooLong {
            len: MAX_CONTENT_TYPE_BYTES + 1,
            max: MAX_CONTENT_TYPE_BYTES
        })
    );
    let exhausted = vv(&[(1, u64::MAX)]);
    assert_eq!(
        Object::update(None, &exhausted, put("a", 0), 1, SIBLINGS, 10),
        Err(UpdateError::CounterExhausted { replica: 1 })
    );
}

#[test]
fn siblings_merge_drops_what_the_other_side_superseded_and_keeps_the_unseen() {
    let a = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let b_only = write(None, &VersionVector::new(), put("b", 1), 2, SIBLINGS);
    // Replica 2 learns of a, then a client overwrites a (with context).
    let both = b_only.merge(&a, SIBLINGS);
    let over_a = write(Some(&both), a.clock(), put("a2", 2), 2, SIBLINGS);
    assert_eq!(values(&over_a), ["b", "a2"]);
    // Replica 1 still holds a; merging in either order drops it.
    assert_eq!(values(&a.merge(&over_a, SIBLINGS)), ["b", "a2"]);
    assert_eq!(values(&over_a.merge(&a, SIBLINGS)), ["b", "a2"]);
}

#[test]
fn merge_of_one_dot_with_two_contents_is_still_commutative() {
    // Not reachable when replica ids are never reused; merge must still be
    // deterministic.
    let a = write(None, &VersionVector::new(), put("a", 1), 1, SIBLINGS);
    let b = write(None, &VersionVector::new(), put("b", 1), 1, SIBLINGS);
    let ab = a.merge(&b, SIBLINGS);
    assert_eq!(ab, b.merge(&a, SIBLINGS));
    assert_eq!(ab.siblings().len(), 1);
    let ab = a.merge(&b, LWW);
    assert_eq!(ab, b.merge(&a, LWW));
}

// ---------------------------------------------------------------- LWW examples

#[test]
fn lww_keeps_the_greatest_timestamp_then_replica() {
    let early = write(None, &VersionVector::new(), put("early", 10), 9, LWW);
    let late = write(None, &VersionVector::new(), put("late", 20), 1, LWW);
    assert_eq!(values(&early.merge(&late, LWW)), ["late"]);
    assert_eq!(values(&late.merge(&early, LWW)), ["late"]);
    let tie_low = write(None, &VersionVector::new(), put("low", 20), 2, LWW);
    let tie_high = write(None, &VersionVector::new(), put("high", 20), 3, LWW);
    assert_eq!(values(&tie_low.merge(&tie_high, LWW)), ["high"]);
    assert_eq!(values(&tie_high.merge(&tie_low, LWW)), ["high"]);
    let merged = early.merge(&late, LWW);
    assert_eq!(merged.clock(), &vv(&[(1, 1), (9, 1)]));
}

#[test]
fn lww_write_after_seeing_a_later_timestamp_still_wins() {
    // Replica 1's clock runs ahead; replica 2 has seen its write and then
    // coordinates a write with an earlier wall clock.
    let ahead = write(None, &VersionVector::new(), put("ahead", 1_000), 1, LWW);
    let seen = Object::default().merge(&ahead, LWW);
    let behind = write(
        Some(&seen),
        &VersionVector::new(),
        put("behind", 500),
        2,
        LWW,
    );
    assert_eq!(values(&behind), ["behind"]);
    assert_eq!(behind.siblings()[0].modified_ms, 1_001);
    assert_eq!(values(&behind.merge(&ahead, LWW)), ["behind"]);
    assert_eq!(values(&ahead.merge(&behind, LWW)), ["behind"]);
    // A write replaces even versions its context did not cover.
    let blind = write(Some(&behind), &VersionVector::new(), delete(0), 3, LWW);
    assert!(blind.is_deleted());
    assert_eq!(blind.siblings().len(), 1);
    assert_eq!(blind.siblings()[0].modified_ms, 1_002);
}

// ---------------------------------------------------------------- encoding examples

fn sample_object() -> Object {
    let a = write(None, &VersionVector::new(), put("hi", 7), 5, SIBLINGS);
    let b = write(None, &VersionVector::new(), delete(9), 3, SIBLINGS);
    a.merge(&b, SIBLINGS)
}

#[test]
fn encoding_is_pinned() {
    let expected = Bytes::default()
        .u8(1)
        .u32(2)
        .u64(3)
        .u64(1)
        .u64(5)
        .u64(1)
        .u32(2)
        // tombstone (3, 1)
        .u64(3)
        .u64(1)
        .u64(9)
        .u8(0)
        .u16(0)
        // value (5, 1)
        .u64(5)
        .u64(1)
        .u64(7)
        .u8(1)
        .u16(10)
        .raw(b"text/plain")
        .u32(2)
        .raw(b"hi");
    let object = sample_object();
    assert_eq!(object.encode(), expected.0);
    assert_eq!(object.encoded_len(), expected.0.len());
    assert_eq!(Object::decode(&expected.0), Ok(object.clone()));
    assert_eq!(
        Object::default().encode(),
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        "the empty object"
    );
}

fn expiring(value: &str, now_ms: u64, expires_ms: u64) -> NewVersion {
    NewVersion {
        expires_ms: Some(expires_ms),
        ..put(value, now_ms)
    }
}

#[test]
fn an_expiry_is_encoded_after_the_flags_under_bit_1() {
    let object = write(None, &VersionVector::new(), expiring("hi", 7, 1000), 5, LWW);
    let expected = Bytes::default()
        .u8(1)
        .u32(1)
        .u64(5)
        .u64(1)
        .u32(1)
        .u64(5)
        .u64(1)
        .u64(7)
        .u8(0b11)
        .u64(1000)
        .u16(10)
        .raw(b"text/plain")
        .u32(2)
        .raw(b"hi");
    assert_eq!(object.encode(), expected.0);
    assert_eq!(object.encoded_len(), expected.0.len());
    assert_eq!(Object::decode(&expected.0), Ok(object.clone()));
    // Cut inside the expiry: truncated, not misread.
    let cut = &expected.0[..expected.0.len() - (2 + 10 + 4 + 2) - 4];
    assert!(matches!(
        Object::decode(cut),
        Err(DecodeError::Truncated {
            what: "sibling expires_ms",
            ..
        })
    ));
}

#[test]
fn an_expired_version_reads_as_absent_from_its_expiry_on() {
    let object = write(
        None,
        &VersionVector::new(),
        expiring("v", 10, 50),
        1,
        SIBLINGS,
    );
    let sibling = &object.siblings()[0];
    assert_eq!(sibling.expires_ms, Some(50));
    assert!(sibling.is_live_at(49) && !sibling.is_expired_at(49));
    assert!(!sibling.is_live_at(50) && sibling.is_expired_at(50));
    assert!(!object.is_absent_at(49) && !object.is_expired_at(49));
    assert!(object.is_absent_at(50) && object.is_expired_at(50));
    // Expired, but not deleted: it still holds a value, for the sweeper.
    assert!(!object.is_deleted());
    assert_eq!(object.expires_at(), Some(50));

    // A sibling that does not expire keeps the object present.
    let both = write(
        Some(&object),
        &VersionVector::new(),
        put("w", 20),
        2,
        SIBLINGS,
    );
    assert_eq!(both.live_siblings_at(60).count(), 1);
    assert!(!both.is_absent_at(60) && !both.is_expired_at(60));
    assert_eq!(both.expires_at(), None, "one value never expires");
    let later = write(
        Some(&object),
        &VersionVector::new(),
        expiring("x", 20, 80),
        2,
        SIBLINGS,
    );
    assert_eq!(later.expires_at(), Some(80), "the latest expiry of all");
    assert!(later.is_expired_at(80) && !later.is_expired_at(79));

    // A tombstone is absent, never "expired".
    let gone = write(Some(&object), object.clock(), delete(30), 1, SIBLINGS);
    assert!(gone.is_absent_at(0) && !gone.is_expired_at(100));
    assert_eq!(gone.expires_at(), None);
}

#[test]
fn a_write_replaces_the_expiry_and_merges_keep_each_versions_own() {
    let a = write(None, &VersionVector::new(), expiring("a", 10, 100), 1, LWW);
    // A later write without a TTL (Redis's SET without EX) never expires.
    let b = write(Some(&a), a.clock(), put("b", 20), 1, LWW);
    assert_eq!(b.siblings()[0].expires_ms, None);
    // The LWW winner brings its expiry along, from either side.
    let c = write(None, &VersionVector::new(), expiring("c", 30, 300), 2, LWW);
    for merged in [b.merge(&c, LWW), c.merge(&b, LWW)] {
        assert_eq!(merged.siblings().len(), 1);
        assert_eq!(merged.siblings()[0].expires_ms, Some(300));
    }
    // Concurrent siblings each keep theirs.
    let x = write(
        None,
        &VersionVector::new(),
        expiring("x", 10, 100),
        1,
        SIBLINGS,
    );
    let y = write(None, &VersionVector::new(), put("y", 10), 2, SIBLINGS);
    let merged = x.merge(&y, SIBLINGS);
    let expiries: Vec<_> = merged.siblings().iter().map(|s| s.expires_ms).collect();
    assert_eq!(expiries, vec![Some(100), None]);
    assert_eq!(merged.live_siblings_at(100).count(), 1);
}

#[test]
fn digest_follows_content() {
    let object = sample_object();
    assert_eq!(object.digest(), object.clone().digest());
    assert_eq!(
        object.digest(),
        xxhash_rust::xxh3::xxh3_64(&object.encode())
    );
    let other = write(
        Some(&object),
        &VersionVector::new(),
        put("x", 1),
        3,
        SIBLINGS,
    );
    assert_ne!(object.digest(), other.digest());
}

#[test]
fn every_strict_prefix_of_an_encoding_is_rejected() {
    let bytes = sample_object().encode();
    for len in 0..bytes.len() {
        let error = Object::decode(&bytes[..len]).unwrap_err();
        assert!(
            matches!(
                error,
                DecodeError::Truncated { .. } | DecodeError::CountTooLarge { .. }
            ),
            "prefix of {len} bytes: {error}"
        );
    }
}

#[test]
fn decode_rejects_each_kind_of_malformed_object() {
    let header = || Bytes::default().u8(1);
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (
            vec![],
            DecodeError::Truncated {
                what: "format version",
                offset: 0,
                needed: 1,
                remaining: 0,
            },
        ),
        (vec![2], DecodeError::UnknownVersion { version: 2 }),
        (
            header().u32(1).u64(1).0,
            DecodeError::CountTooLarge {
                what: "clock entries",
                count: 1,
                remaining: 8,
            },
        ),
        (
            header().u32(u32::MAX).0,
            DecodeError::CountTooLarge {
                what: "clock entries",
                count: u64::from(u32::MAX),
                remaining: 0,
            },
        ),
        (
            header().u32(2).u64(4).u64(1).u64(4).u64(2).u32(0).0,
            DecodeError::ClockNotSorted {
                index: 1,
                replica: 4,
            },
        ),
        (
            header().u32(2).u64(4).u64(1).u64(3).u64(2).u32(0).0,
            DecodeError::ClockNotSorted {
                index: 1,
                replica: 3,
            },
        ),
        (
            header().u32(1).u64(4).u64(0).u32(0).0,
            DecodeError::ClockZeroCounter { replica: 4 },
        ),
        (
            header().u32(0).u32(1).raw(&[0; 26]).0,
            DecodeError::CountTooLarge {
                what: "siblings",
                count: 1,
                remaining: 26,
            },
        ),
        (
            header()
                .u32(1)
                .u64(4)
                .u64(2)
                .u32(2)
                .sibling(4, 2, 0, b"")
                .sibling(4, 1, 0, b"")
                .0,
            DecodeError::SiblingsNotSorted {
                index: 1,
                dot: Dot::new(4, 1),
            },
        ),
        (
            header()
                .u32(1)
                .u64(4)
                .u64(2)
                .u32(2)
                .sibling(4, 2, 0, b"")
                .sibling(4, 2, 0, b"")
                .0,
            DecodeError::SiblingsNotSorted {
                index: 1,
                dot: Dot::new(4, 2),
            },
        ),
        (
            header().u32(1).u64(4).u64(2).u32(1).sibling(4, 0, 0, b"").0,
            DecodeError::SiblingZeroCounter {
                index: 0,
                replica: 4,
            },
        ),
        (
            header().u32(1).u64(4).u64(2).u32(1).sibling(4, 3, 0, b"").0,
            DecodeError::DotNotInClock {
                index: 0,
                dot: Dot::new(4, 3),
            },
        ),
        (
            header().u32(1).u64(4).u64(2).u32(1).sibling(5, 1, 0, b"").0,
            DecodeError::DotNotInClock {
                index: 0,
                dot: Dot::new(5, 1),
            },
        ),
        (
            header().u32(1).u64(4).u64(2).u32(1).sibling(4, 1, 4, b"").0,
            DecodeError::UnknownFlags { index: 0, flags: 4 },
        ),
        (
            header()
                .u32(1)
                .u64(4)
                .u64(2)
                .u32(1)
                .sibling(4, 1, 0, &[0xff, 0xfe])
                .0,
            DecodeError::BadUtf8 { index: 0 },
        ),
        (
            header()
                .u32(1)
                .u64(4)
                .u64(2)
                .u32(1)
                .sibling(4, 1, 1, b"")
                .u32(5)
                .raw(b"abc")
                .0,
            DecodeError::Truncated {
                what: "value",
                offset: 1 + 4 + 16 + 4 + 27 + 4,
                needed: 5,
                remaining: 3,
            },
        ),
        (
            header()
                .u32(1)
                .u64(4)
                .u64(2)
                .u32(1)
                .sibling(4, 1, 0, b"")
                .u8(0)
                .0,
            DecodeError::TrailingBytes { count: 1 },
        ),
    ];
    for (bytes, expected) in cases {
        let error = Object::decode(&bytes).unwrap_err();
        assert!(!error.to_string().is_empty());
        assert_eq!(error, expected, "bytes {bytes:?}");
    }
}

// ---------------------------------------------------------------- context token examples

#[test]
fn context_token_round_trips_and_is_base64url() {
    let empty = encode_context(&VersionVector::new());
    assert_eq!(empty, "AQAA");
    assert_eq!(decode_context(&empty), Ok(VersionVector::new()));
    let v = vv(&[(1, 2), (u64::MAX, u64::MAX)]);
    let token = encode_context(&v);
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert_eq!(decode_context(&token), Ok(v));
}

#[test]
fn context_with_the_most_entries_fits_and_one_more_does_not() {
    let full: VersionVector = (1..=MAX_CONTEXT_ENTRIES as u64)
        .map(|r| Dot::new(r, u64::MAX))
        .collect();
    let token = encode_context(&full);
    assert_eq!(token.len(), MAX_CONTEXT_TOKEN_LEN);
    assert_eq!(decode_context(&token), Ok(full.clone()));
    let mut over = full;
    over.add(Dot::new(0, 1));
    assert_eq!(
        try_encode_context(&over),
        Err(ContextError::TooManyEntries {
            count: MAX_CONTEXT_ENTRIES + 1,
            max: MAX_CONTEXT_ENTRIES
        })
    );
}

#[test]
fn a_context_may_not_grow_a_clock_past_what_a_context_carries() {
    let forged = |from: u64| -> VersionVector {
        (from..from + MAX_CONTEXT_ENTRIES as u64)
            .map(|r| Dot::new(r, 1))
            .collect()
    };
    // One forged context fills the clock to the limit (plus the new dot).
    let full = write(None, &forged(1000), put("a", 1), 7, LWW);
    assert_eq!(full.clock().len(), MAX_CONTEXT_ENTRIES + 1);
    // A second one with other made-up actors is refused, changing nothing.
    assert_eq!(
        Object::update(Some(&full), &forged(5000), put("b", 2), 7, LWW, 100),
        Err(UpdateError::ClockTooLarge {
            len: 2 * MAX_CONTEXT_ENTRIES + 1,
            max: MAX_CONTEXT_ENTRIES,
        })
    );
    // Writes that add no context entries still work: a blind one, one with
    // the key's own clock, and one by a replica new to the key.
    let blind = write(Some(&full), &VersionVector::new(), put("c", 3), 7, LWW);
    let read_context = blind.clock().clone();
    let with_context = write(Some(&blind), &read_context, put("d", 4), 7, LWW);
    let new_replica = write(Some(&with_context), &read_context, put("e", 5), 8, LWW);
    assert_eq!(values(&new_replica), ["e"]);
    assert_eq!(new_replica.clock().len(), MAX_CONTEXT_ENTRIES + 2);
}

#[test]
#[should_panic(expected = "causal context has 1025 entries")]
fn encode_context_panics_past_the_limit() {
    let over: VersionVector = (0..=MAX_CONTEXT_ENTRIES as u64)
        .map(|r| Dot::new(r, 1))
        .collect();
    let _ = encode_context(&over);
}

#[test]
fn decode_context_rejects_each_kind_of_malformed_token() {
    let header = |count: u16| Bytes::default().u8(1).u16(count);
    let cases: Vec<(String, ContextError)> = vec![
        (String::new(), ContextError::Empty),
        (
            "A".repeat(MAX_CONTEXT_TOKEN_LEN + 1),
            ContextError::TooLong {
                len: MAX_CONTEXT_TOKEN_LEN + 1,
                max: MAX_CONTEXT_TOKEN_LEN,
            },
        ),
        (
            Bytes::default().u8(2).u16(0).token(),
            ContextError::UnknownVersion { version: 2 },
        ),
        (
            Bytes::default().u8(1).token(),
            ContextError::Truncated {
                what: "entry count",
                needed: 2,
                remaining: 0,
            },
        ),
        (
            header(1).u64(7).token(),
            ContextError::Truncated {
                what: "entry counter",
                needed: 8,
                remaining: 0,
            },
        ),
        (
            header(0).u8(0).token(),
            ContextError::TrailingBytes { count: 1 },
        ),
        (
            header(1025).token(),
            ContextError::TooManyEntries {
                count: 1025,
                max: MAX_CONTEXT_ENTRIES,
            },
        ),
        (
            header(2).u64(7).u64(1).u64(7).u64(2).token(),
            ContextError::NotSorted {
                index: 1,
                replica: 7,
            },
        ),
        (
            header(2).u64(7).u64(1).u64(6).u64(2).token(),
            ContextError::NotSorted {
                index: 1,
                replica: 6,
            },
        ),
        (
            header(1).u64(7).u64(0).token(),
            ContextError::ZeroCounter { replica: 7 },
        ),
    ];
    for (token, expected) in cases {
        let error = decode_context(&token).unwrap_err();
        assert!(!error.to_string().is_empty());
        assert_eq!(error, expected, "token {token:?}");
    }
    // Not base64url without padding: padding, standard alphabet, bad
    // length, non-canonical trailing bits, whitespace.
    for token in [
        "AQAA=", "AQA+", "AQA/", "A", "AR", "AQ AA", " AQAA", "AQAA\n",
    ] {
        assert!(
            matches!(decode_context(token), Err(ContextError::BadBase64 { .. })),
            "token {token:?}: {:?}",
            decode_context(token)
        );
    }
}

// ---------------------------------------------------------------- simulated histories

/// Generous limit: simulated histories never reach it.
const SIM_MAX_SIBLINGS: usize = 100;

#[derive(Clone, Debug)]
enum Step {
    /// A client writes through `replica`, with the context of an earlier
    /// read, or blind.
    Write {
        replica: Index,
        context: Option<Index>,
        tombstone: bool,
        now_ms: u64,
    },
    /// A client reads `replica`, merged with `also` (a quorum read).
    Read { replica: Index, also: Option<Index> },
    /// `from` sends its copy to `to` (replication, read repair, hints,
    /// anti-entropy: all the same merge).
    Sync { from: Index, to: Index },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<Index>(), proptest::option::of(any::<Index>()), prop::bool::weighted(0.15), 0u64..1_000)
            .prop_map(|(replica, context, tombstone, now_ms)| Step::Write { replica, context, tombstone, now_ms }),
        2 => (any::<Index>(), proptest::option::of(any::<Index>()))
            .prop_map(|(replica, also)| Step::Read { replica, also }),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

fn mode() -> impl Strategy<Value = ConflictMode> {
    prop_oneof![Just(SIBLINGS), Just(LWW)]
}

/// 3–4 replicas with random ids, and a history of steps.
fn history(max_steps: usize) -> impl Strategy<Value = (Vec<NodeId>, Vec<Step>)> {
    (
        btree_set(any::<NodeId>(), 3..=4).prop_map(|ids| ids.into_iter().collect()),
        vec(step(), 1..max_steps),
    )
}

/// What the model knows of one write.
struct WriteRecord {
    /// The explicit causal history its context carried: it supersedes these.
    obsoletes: BTreeSet<Dot>,
    value: Option<Vec<u8>>,
    modified_ms: u64,
}

struct ReadRecord {
    context: VersionVector,
    known: BTreeSet<Dot>,
    returned: BTreeSet<Dot>,
}

/// An object with its model: the explicit set of writes in its causal
/// history, and (LWW) the writes that could still be the winner.
#[derive(Clone, Default)]
struct State {
    object: Object,
    known: BTreeSet<Dot>,
    candidates: BTreeSet<Dot>,
}

struct Sim {
    mode: ConflictMode,
    ids: Vec<NodeId>,
    replicas: Vec<State>,
    reads: Vec<ReadRecord>,
    writes: BTreeMap<Dot, WriteRecord>,
    /// Every state a replica or a read reached, starting with the empty one.
    snapshots: Vec<State>,
}

impl Sim {
    fn run(mode: ConflictMode, ids: Vec<NodeId>, steps: &[Step]) -> Result<Sim, TestCaseError> {
        let mut sim = Sim {
            mode,
            replicas: vec![State::default(); ids.len()],
            ids,
            reads: Vec::new(),
            writes: BTreeMap::new(),
            snapshots: vec![State::default()],
        };
        for step in steps {
            sim.apply(step)?;
        }
        Ok(sim)
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        match step {
            Step::Write {
                replica,
                context,
                tombstone,
                now_ms,
            } => {
                let i = replica.index(n);
                let id = self.ids[i];
                let (context, obsoletes, returned) = match context {
                    Some(pick) if !self.reads.is_empty() => {
                        let read = &self.reads[pick.index(self.reads.len())];
                        (
                            read.context.clone(),
                            read.known.clone(),
                            read.returned.clone(),
                        )
                    }
                    _ => (VersionVector::new(), BTreeSet::new(), BTreeSet::new()),
                };
                let value = (!tombstone).then(|| format!("w{}", self.writes.len()).into_bytes());
                let before = &self.replicas[i].object;
                let current = (!before.clock().is_empty()).then_some(before);
                let new = NewVersion {
                    value: value.clone(),
                    content_type: TEXT.to_owned(),
                    now_ms: *now_ms,
                    // Every third write expires: the encoding and the
                    // merges carry expiries along with everything else.
                    expires_ms: (*now_ms % 3 == 0).then_some(*now_ms + 5),
                };
                let after = Object::update(current, &context, new, id, self.mode, SIM_MAX_SIBLINGS)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;

                let dot = Dot::new(id, after.clock().get(id));
                prop_assert!(!self.writes.contains_key(&dot), "dot {} reused", dot);
                prop_assert_eq!(dot.counter, before.clock().get(id).max(context.get(id)) + 1);
                let fresh = after.siblings().iter().find(|s| s.dot == dot);
                prop_assert!(fresh.is_some(), "the new version is a sibling");
                let fresh = fresh.unwrap();
                prop_assert_eq!(&fresh.value, &value);
                match self.mode {
                    ConflictMode::Siblings => {
                        prop_assert_eq!(fresh.modified_ms, *now_ms);
                        for old in before.siblings() {
                            let kept = after.siblings().contains(old);
                            if returned.contains(&old.dot) {
                                prop_assert!(!kept, "{} was read, so it is superseded", old.dot);
                            }
                            if !obsoletes.contains(&old.dot) {
                                prop_assert!(kept, "{} was not seen, so it stays", old.dot);
                            }
                        }
                    }
                    ConflictMode::Lww => {
                        prop_assert_eq!(after.siblings().len(), 1);
                        prop_assert!(fresh.modified_ms >= *now_ms);
                        for old in before.siblings() {
                            prop_assert!(fresh.modified_ms > old.modified_ms);
                        }
                    }
                }
                self.writes.insert(
                    dot,
                    WriteRecord {
                        obsoletes: obsoletes.clone(),
                        value,
                        modified_ms: fresh.modified_ms,
                    },
                );
                let state = &mut self.replicas[i];
                state.object = after;
                state.known.extend(obsoletes);
                state.known.insert(dot);
                state.candidates = BTreeSet::from([dot]);
                self.changed(i)
            }
            Step::Read { replica, also } => {
                let mut read = self.replicas[replica.index(n)].clone();
                if let Some(also) = also {
                    read = self.merge(&read, &self.replicas[also.index(n)]);
                }
                self.check(&read)?;
                self.reads.push(ReadRecord {
                    context: read.object.clock().clone(),
                    known: read.known.clone(),
                    returned: dots(&read.object),
                });
                self.snapshots.push(read);
                Ok(())
            }
            Step::Sync { from, to } => {
                let to = to.index(n);
                self.replicas[to] = self.merge(&self.replicas[to], &self.replicas[from.index(n)]);
                self.changed(to)
            }
        }
    }

    fn changed(&mut self, i: usize) -> Result<(), TestCaseError> {
        self.check(&self.replicas[i])?;
        self.snapshots.push(self.replicas[i].clone());
        Ok(())
    }

    fn merge(&self, a: &State, b: &State) -> State {
        State {
            object: a.object.merge(&b.object, self.mode),
            known: a.known.union(&b.known).copied().collect(),
            candidates: a.candidates.union(&b.candidates).copied().collect(),
        }
    }

    /// The object agrees with the model: its clock is exactly its causal
    /// history, its siblings exactly the writes of that history that no
    /// write of that history superseded (LWW: the greatest candidate), with
    /// the content written.
    fn check(&self, state: &State) -> Result<(), TestCaseError> {
        let object = &state.object;
        prop_assert_eq!(object.invariant_violation(), None);
        let history: VersionVector = state.known.iter().copied().collect();
        prop_assert_eq!(object.clock(), &history);
        let expected: BTreeSet<Dot> = match self.mode {
            ConflictMode::Siblings => state
                .known
                .iter()
                .copied()
                .filter(|d| {
                    !state
                        .known
                        .iter()
                        .any(|w| self.writes[w].obsoletes.contains(d))
                })
                .collect(),
            ConflictMode::Lww => state
                .candidates
                .iter()
                .copied()
                .max_by_key(|d| (self.writes[d].modified_ms, *d))
                .into_iter()
                .collect(),
        };
        prop_assert_eq!(dots(object), expected);
        for sibling in object.siblings() {
            let written = &self.writes[&sibling.dot];
            prop_assert_eq!(&sibling.value, &written.value);
            prop_assert_eq!(sibling.modified_ms, written.modified_ms);
            prop_assert_eq!(&sibling.content_type, TEXT);
        }
        Ok(())
    }
}

/// Takes the items in the order the picks say (a random permutation).
fn permute<T>(mut items: Vec<T>, picks: &[Index]) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    let mut k = 0;
    while !items.is_empty() {
        let at = picks.get(k).map_or(0, |p| p.index(items.len()));
        out.push(items.remove(at));
        k += 1;
    }
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, v)| Mutation::Set(at, v)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, v)| Mutation::Insert(at, v)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match *mutation {
        Mutation::Insert(at, v) => bytes.insert(at.index(len + 1), v),
        Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
        _ if len == 0 => {}
        Mutation::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Set(at, v) => bytes[at.index(len)] = v,
        Mutation::Remove(at) => {
            bytes.remove(at.index(len));
        }
    }
}

/// Decoding never panics; whatever it accepts is a valid object that
/// encodes back to the same bytes.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Object::decode(bytes) {
        Ok(object) => {
            prop_assert_eq!(object.invariant_violation(), None);
            prop_assert_eq!(object.encode(), bytes);
        }
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every step of a random history agrees with the explicit model;
    /// reads with context supersede exactly what they saw.
    #[test]
    fn histories_agree_with_the_model(mode in mode(), (ids, steps) in history(60)) {
        let sim = Sim::run(mode, ids, &steps)?;
        // Once everything is exchanged, all replicas converge to the model
        // of the whole history, whatever the order.
        let mut all = State::default();
        for state in &sim.replicas {
            all = sim.merge(&all, state);
        }
        sim.check(&all)?;
        let mut reversed = State::default();
        for state in sim.replicas.iter().rev() {
            reversed = sim.merge(state, &reversed);
        }
        prop_assert_eq!(&reversed.object, &all.object);
    }

    #[test]
    fn merge_is_commutative_associative_idempotent(
        mode in mode(),
        (ids, steps) in history(40),
        picks in vec((any::<Index>(), any::<Index>(), any::<Index>()), 16),
    ) {
        let sim = Sim::run(mode, ids, &steps)?;
        let pool = &sim.snapshots;
        for (a, b, c) in picks {
            let (a, b, c) = (&pool[a.index(pool.len())], &pool[b.index(pool.len())], &pool[c.index(pool.len())]);
            let (a, b, c) = (&a.object, &b.object, &c.object);
            let ab = a.merge(b, mode);
            prop_assert_eq!(&ab, &b.merge(a, mode), "commutative");
            prop_assert_eq!(&a.merge(a, mode), a, "idempotent");
            prop_assert_eq!(&ab.merge(a, mode), &ab, "absorbs its inputs");
            prop_assert_eq!(ab.merge(c, mode), a.merge(&b.merge(c, mode), mode), "associative");
        }
    }

    /// Merging any two states ever reached gives the model of the union of
    /// their histories.
    #[test]
    fn merge_of_reached_states_agrees_with_the_model(
        mode in mode(),
        (ids, steps) in history(40),
        picks in vec((any::<Index>(), any::<Index>()), 16),
    ) {
        let sim = Sim::run(mode, ids, &steps)?;
        let pool = &sim.snapshots;
        for (a, b) in picks {
            let merged = sim.merge(&pool[a.index(pool.len())], &pool[b.index(pool.len())]);
            sim.check(&merged)?;
        }
    }

    #[test]
    fn reached_objects_round_trip_through_the_encoding(mode in mode(), (ids, steps) in history(40)) {
        let sim = Sim::run(mode, ids, &steps)?;
        for state in &sim.snapshots {
            let bytes = state.object.encode();
            prop_assert_eq!(bytes.len(), state.object.encoded_len());
            prop_assert_eq!(Object::decode(&bytes), Ok(state.object.clone()));
            prop_assert_eq!(state.object.digest(), xxhash_rust::xxh3::xxh3_64(&bytes));
        }
    }

    /// k clients each write once without context through random replicas,
    /// with random replication in between; once all copies are merged, in
    /// any order, there are exactly k siblings: the k writes.
    #[test]
    fn concurrent_blind_writes_all_become_siblings(
        ids in btree_set(any::<NodeId>(), 4..=4).prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        writes in vec((0usize..4, proptest::option::of((0usize..4, 0usize..4))), 1..=8),
        order in vec(any::<Index>(), 4),
    ) {
        let mut objects = vec![Object::default(); ids.len()];
        for (k, &(coordinator, sync)) in writes.iter().enumerate() {
            let current = &objects[coordinator];
            objects[coordinator] = write(Some(current), &VersionVector::new(), put(&format!("c{k}"), 0), ids[coordinator], SIBLINGS);
            if let Some((from, to)) = sync {
                objects[to] = objects[to].merge(&objects[from], SIBLINGS);
            }
        }
        let merged = permute(objects, &order).into_iter().fold(Object::default(), |acc, o| acc.merge(&o, SIBLINGS));
        prop_assert_eq!(merged.siblings().len(), writes.len());
        let mut got = values(&merged);
        got.sort();
        let mut expected: Vec<String> = (0..writes.len()).map(|k| format!("c{k}")).collect();
        expected.sort();
        prop_assert_eq!(got, expected);
    }

    /// Each write carries the clock the previous write returned: never a
    /// false conflict, even through stale replicas.
    #[test]
    fn sequential_writes_with_context_leave_one_sibling(
        mode in mode(),
        ids in btree_set(any::<NodeId>(), 3..=3).prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        writes in vec((0usize..3, proptest::option::of((0usize..3, 0usize..3)), any::<bool>()), 1..=12),
    ) {
        let mut objects = vec![Object::default(); ids.len()];
        let mut context = VersionVector::new();
        let mut last = None;
        for (k, &(coordinator, sync, tombstone)) in writes.iter().enumerate() {
            let new = if tombstone { delete(k as u64) } else { put(&format!("s{k}"), k as u64) };
            let result = write(Some(&objects[coordinator]), &context, new, ids[coordinator], mode);
            prop_assert_eq!(result.siblings().len(), 1);
            context = result.clock().clone();
            last = Some(result.siblings()[0].clone());
            objects[coordinator] = result;
            if let Some((from, to)) = sync {
                objects[to] = objects[to].merge(&objects[from], mode);
            }
        }
        let merged = objects.iter().fold(Object::default(), |acc, o| acc.merge(o, mode));
        prop_assert_eq!(merged.siblings(), &[last.unwrap()][..]);
    }

    /// LWW: each replica writes once; merged in any order, the greatest
    /// (modified_ms, replica) wins.
    #[test]
    fn lww_winner_does_not_depend_on_merge_order(
        writes in btree_map(any::<NodeId>(), 0u64..4, 2..=6),
        order in vec(any::<Index>(), 6),
    ) {
        let objects: Vec<Object> = writes
            .iter()
            .map(|(&id, &now)| write(None, &VersionVector::new(), put(&format!("r{id}"), now), id, LWW))
            .collect();
        let (&winner, _) = writes.iter().max_by_key(|&(&id, &now)| (now, id)).unwrap();
        let left = permute(objects.clone(), &order).into_iter().fold(Object::default(), |acc, o| acc.merge(&o, LWW));
        let right = permute(objects, &order).into_iter().rev().fold(Object::default(), |acc, o| o.merge(&acc, LWW));
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(values(&left), vec![format!("r{winner}")]);
        prop_assert_eq!(left.clock().len(), writes.len());
    }

    #[test]
    fn decode_of_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..256)) {
        check_decode(&bytes)?;
        let mut versioned = vec![OBJECT_FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        check_decode(&versioned)?;
    }

    #[test]
    fn decode_of_mutated_encodings_never_panics(
        mode in mode(),
        (ids, steps) in history(24),
        pick in any::<Index>(),
        mutations in vec(mutation(), 1..4),
    ) {
        let sim = Sim::run(mode, ids, &steps)?;
        let mut bytes = sim.snapshots[pick.index(sim.snapshots.len())].object.encode();
        for m in &mutations {
            mutate(&mut bytes, m);
            check_decode(&bytes)?;
        }
    }

    #[test]
    fn context_tokens_round_trip(entries in btree_map(any::<NodeId>(), 1..=u64::MAX, 0..40)) {
        let v = VersionVector::try_from(entries).unwrap();
        let token = encode_context(&v);
        prop_assert!(token.len() <= MAX_CONTEXT_TOKEN_LEN);
        prop_assert_eq!(decode_context(&token), Ok(v));
    }

    /// Whatever `decode_context` accepts is exactly what `encode_context`
    /// produces for the result.
    #[test]
    fn decode_context_never_panics(
        any_text in any::<String>(),
        url_safe in "[A-Za-z0-9_-]{0,64}",
        raw in vec(any::<u8>(), 0..64),
    ) {
        let raw_token = URL_SAFE_NO_PAD.encode(&raw);
        let mut versioned = vec![CONTEXT_FORMAT_VERSION];
        versioned.extend_from_slice(&raw);
        let versioned_token = URL_SAFE_NO_PAD.encode(&versioned);
        for token in [any_text.as_str(), &url_safe, &raw_token, &versioned_token] {
            match decode_context(token) {
                Ok(v) => prop_assert_eq!(encode_context(&v), token),
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
        }
    }
}
