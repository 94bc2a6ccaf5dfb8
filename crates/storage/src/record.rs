//! The record format shared by every engine: how a ([`Space`], key) pair
//! becomes one engine key, and how a value is wrapped with a version and a
//! checksum. Engines store only what this module produces and verify every
//! value they read with [`decode_value`].
//!
//! Engine key: `u8 space tag ‖ u32 BE partition (0 for Meta) ‖ user key`, so
//! all records of one space are one contiguous, ordered key range.
//!
//! Stored value: `u8 format version (1) ‖ u64 BE xxh3-64(payload) ‖ payload`.
//!
//! This module does not do I/O.

use std::ops::Range;

use crate::{Space, StorageError};

/// The only record format version written so far.
pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Bytes in front of the payload of a stored value.
pub const VALUE_HEADER_BYTES: usize = 1 + 8;
/// Bytes in front of the user key of an engine key.
pub const KEY_PREFIX_BYTES: usize = 1 + 4;

const TAG_META: u8 = 0;
const TAG_DATA: u8 = 1;
const TAG_HINTS: u8 = 2;

fn space_prefix(space: Space) -> [u8; KEY_PREFIX_BYTES] {
    let (tag, partition) = match space {
        Space::Meta => (TAG_META, 0u32),
        Space::Data(partition) => (TAG_DATA, partition),
        Space::Hints(partition) => (TAG_HINTS, partition),
    };
    let mut prefix = [0u8; KEY_PREFIX_BYTES];
    prefix[0] = tag;
    prefix[1..].copy_from_slice(&partition.to_be_bytes());
    prefix
}

/// The engine key of `key` in `space`.
pub fn encode_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(KEY_PREFIX_BYTES + key.len());
    encoded.extend_from_slice(&space_prefix(space));
    encoded.extend_from_slice(key);
    encoded
}

/// The user key inside an engine key of `space`, or `None` if the engine
/// key belongs to another space.
pub fn user_key(space: Space, engine_key: &[u8]) -> Option<&[u8]> {
    engine_key.strip_prefix(&space_prefix(space)[..])
}

/// The space and user key of an engine key, or `None` if its prefix is not
/// one this module writes.
pub fn decode_key(engine_key: &[u8]) -> Option<(Space, &[u8])> {
    if engine_key.len() < KEY_PREFIX_BYTES {
        return None;
    }
    let (prefix, key) = engine_key.split_at(KEY_PREFIX_BYTES);
    let partition = u32::from_be_bytes(prefix[1..].try_into().expect("4 bytes"));
    let space = match (prefix[0], partition) {
        (TAG_META, 0) => Space::Meta,
        (TAG_DATA, partition) => Space::Data(partition),
        (TAG_HINTS, partition) => Space::Hints(partition),
        _ => return None,
    };
    Some((space, key))
}

/// The engine keys of `space`: `start..end`, `end` exclusive.
pub fn space_range(space: Space) -> Range<Vec<u8>> {
    let start = space_prefix(space);
    // The prefix read as a 40-bit big-endian number, plus one: the first
    // key of the next (tag, partition). The tag is at most 2, so this
    // never overflows.
    let mut end = start;
    for byte in end.iter_mut().rev() {
        let (next, overflow) = byte.overflowing_add(1);
        *byte = next;
        if !overflow {
            break;
        }
    }
    start.to_vec()..end.to_vec()
}

/// Wraps `payload` in the stored value format.
pub fn encode_value(payload: &[u8]) -> Vec<u8> {
    let mut stored = vec![0; VALUE_HEADER_BYTES + payload.len()];
    encode_value_into(payload, &mut stored);
    stored
}

/// [`encode_value`] into `stored`, which is `VALUE_HEADER_BYTES +
/// payload.len()` bytes long (space an engine reserved for it).
pub fn encode_value_into(payload: &[u8], stored: &mut [u8]) {
    let (header, body) = stored.split_at_mut(VALUE_HEADER_BYTES);
    header[0] = RECORD_FORMAT_VERSION;
    header[1..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_be_bytes());
    body.copy_from_slice(payload);
}

/// The payload of a stored value, after checking its version and checksum.
/// `space` and `key` only label the error.
pub fn decode_value<'a>(
    space: Space,
    key: &[u8],
    stored: &'a [u8],
) -> Result<&'a [u8], StorageError> {
    let corruption = |reason: String| StorageError::Corruption {
        space,
        key: key.to_vec(),
        reason,
    };
    if stored.len() < VALUE_HEADER_BYTES {
        return Err(corruption(format!(
            "stored value has {} bytes, shorter than the {VALUE_HEADER_BYTES}-byte header",
            stored.len()
        )));
    }
    let (header, payload) = stored.split_at(VALUE_HEADER_BYTES);
    if header[0] != RECORD_FORMAT_VERSION {
        return Err(corruption(format!(
            "unknown record format version {} (expected {RECORD_FORMAT_VERSION})",
            header[0]
        )));
    }
    let mut checksum_bytes = [0u8; 8];
    checksum_bytes.copy_from_slice(&header[1..]);
    let expected = u64::from_be_bytes(checksum_bytes);
    let actual = xxhash_rust::xxh3::xxh3_64(payload);
    if expected != actual {
        return Err(corruption(format!(
            "checksum mismatch: stored {expected:#018x}, computed {actual:#018x}"
        )));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips() {
        for payload in [&b""[..], b"x", &[0u8, 0xff, 1, 2][..]] {
            let stored = encode_value(payload);
            assert_eq!(stored.len(), VALUE_HEADER_BYTES + payload.len());
            assert_eq!(stored[0], RECORD_FORMAT_VERSION);
            assert_eq!(decode_value(Space::Meta, b"k", &stored).unwrap(), payload);
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let stored = encode_value(b"hello, ringkv");
        for index in 0..stored.len() {
            for bit in 0..8 {
                let mut damaged = stored.clone();
                damaged[index] ^= 1 << bit;
                let error = decode_value(Space::Data(3), b"key", &damaged)
                    .expect_err("a flipped bit must be detected");
                match error {
                    StorageError::Corruption { space, key, .. } => {
                        assert_eq!(space, Space::Data(3));
                        assert_eq!(key, b"key");
                    }
                    other => panic!("expected Corruption, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn truncated_and_unknown_version_values_are_corruption() {
        let stored = encode_value(b"payload");
        for length in 0..VALUE_HEADER_BYTES {
            assert!(matches!(
                decode_value(Space::Meta, b"k", &stored[..length]),
                Err(StorageError::Corruption { .. })
            ));
        }
        // Dropping payload bytes changes the checksum.
        assert!(matches!(
            decode_value(Space::Meta, b"k", &stored[..stored.len() - 1]),
            Err(StorageError::Corruption { .. })
        ));
        let mut future = stored.clone();
        future[0] = 2;
        let error = decode_value(Space::Meta, b"k", &future).unwrap_err();
        assert!(error.to_string().contains("version 2"), "{error}");
    }

    #[test]
    fn keys_are_grouped_by_space_and_ordered_within() {
        let spaces = [
            Space::Meta,
            Space::Data(0),
            Space::Data(1),
            Space::Data(u32::MAX),
            Space::Hints(0),
            Space::Hints(u32::MAX),
        ];
        for (index, space) in spaces.iter().enumerate() {
            let range = space_range(*space);
            for key in [&b""[..], b"\x00", b"a", b"\xff\xff\xff\xff\xff\xff"] {
                let encoded = encode_key(*space, key);
                assert!(range.contains(&encoded), "{space:?} {key:?}");
                assert_eq!(user_key(*space, &encoded), Some(key));
                for other in spaces.iter().filter(|other| *other != space) {
                    assert!(!space_range(*other).contains(&encoded));
                    assert_eq!(user_key(*other, &encoded), None);
                }
            }
            if let Some(next) = spaces.get(index + 1) {
                assert!(range.end <= space_range(*next).start);
            }
        }
        assert!(encode_key(Space::Data(1), b"a") < encode_key(Space::Data(1), b"a\x00"));
        assert!(encode_key(Space::Data(1), b"a\xff") < encode_key(Space::Data(1), b"b"));
    }
}
