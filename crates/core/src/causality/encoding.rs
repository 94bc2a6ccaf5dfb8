//! The byte format of an `Object` on disk and on the wire, and its digest.
//! Format version 1, fixed-width big-endian integers:
//!
//! ```text
//! u8 version = 1
//! u32 clock entry count, then per entry: u64 replica, u64 counter   (replica strictly increasing, counter >= 1)
//! u32 sibling count, then per sibling (dot strictly increasing, in the clock):
//!     u64 replica, u64 counter, u64 modified_ms, u8 flags (bit 0 = has value,
//!     bit 1 = expires), [u64 expires_ms if expires],
//!     u16 content type length + UTF-8, [u32 value length + bytes if has value]
//! ```
//!
//! No checksum: the storage layer checksums every record. The encoding is
//! canonical: `decode` accepts exactly the bytes `encode` can produce.

use super::codec::{Reader, Short};
use super::{Dot, Object, Sibling, VersionVector};
use crate::NodeId;

/// Version byte that opens every encoded object.
pub const OBJECT_FORMAT_VERSION: u8 = 1;

const CLOCK_ENTRY_BYTES: usize = 8 + 8;
/// A sibling without content type and value.
const MIN_SIBLING_BYTES: usize = 8 + 8 + 8 + 1 + 2;
const FLAG_HAS_VALUE: u8 = 0b1;
/// Added after version 1 shipped: objects without an expiry encode exactly
/// as before, and an older build refuses one with it (unknown flags).
const FLAG_EXPIRES: u8 = 0b10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("object has unknown format version {version} (this build reads version 1)")]
    UnknownVersion { version: u8 },
    #[error(
        "object is truncated: {what} at byte {offset} needs {needed} bytes, {remaining} remain"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        remaining: usize,
    },
    #[error("object has {count} trailing bytes after its last sibling")]
    TrailingBytes { count: usize },
    #[error("object claims {count} {what}, but only {remaining} bytes remain")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        remaining: usize,
    },
    #[error("object clock entry {index} (replica {replica}) is not after the previous one")]
    ClockNotSorted { index: usize, replica: NodeId },
    #[error("object clock entry for replica {replica} has counter 0")]
    ClockZeroCounter { replica: NodeId },
    #[error("object sibling {index} has dot {dot}, not after the previous sibling's")]
    SiblingsNotSorted { index: usize, dot: Dot },
    #[error("object sibling {index} has a dot with counter 0 (replica {replica})")]
    SiblingZeroCounter { index: usize, replica: NodeId },
    #[error("object sibling {index} has unknown flags {flags:#04x}")]
    UnknownFlags { index: usize, flags: u8 },
    #[error("object sibling {index} has a content type that is not UTF-8")]
    BadUtf8 { index: usize },
    #[error("object sibling {index} has dot {dot}, which its clock does not contain")]
    DotNotInClock { index: usize, dot: Dot },
}

impl From<Short> for DecodeError {
    fn from(short: Short) -> DecodeError {
        DecodeError::Truncated {
            what: short.what,
            offset: short.offset,
            needed: short.needed,
            remaining: short.remaining,
        }
    }
}

impl Object {
    /// Length of `encode()`'s output.
    pub fn encoded_len(&self) -> usize {
        let siblings: usize = self
            .siblings
            .iter()
            .map(|s| {
                MIN_SIBLING_BYTES
                    + s.expires_ms.map_or(0, |_| 8)
                    + s.content_type.len()
                    + s.value.as_ref().map_or(0, |v| 4 + v.len())
            })
            .sum();
        1 + 4 + self.clock.len() * CLOCK_ENTRY_BYTES + 4 + siblings
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(OBJECT_FORMAT_VERSION);
        out.extend_from_slice(&count_u32(self.clock.len()).to_be_bytes());
        for (replica, counter) in self.clock.iter() {
            out.extend_from_slice(&replica.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
        out.extend_from_slice(&count_u32(self.siblings.len()).to_be_bytes());
        for sibling in &self.siblings {
            out.extend_from_slice(&sibling.dot.replica.to_be_bytes());
            out.extend_from_slice(&sibling.dot.counter.to_be_bytes());
            out.extend_from_slice(&sibling.modified_ms.to_be_bytes());
            let mut flags = 0;
            if sibling.value.is_some() {
                flags |= FLAG_HAS_VALUE;
            }
            if sibling.expires_ms.is_some() {
                flags |= FLAG_EXPIRES;
            }
            out.push(flags);
            if let Some(expires_ms) = sibling.expires_ms {
                out.extend_from_slice(&expires_ms.to_be_bytes());
            }
            let content_type_len = u16::try_from(sibling.content_type.len())
                .expect("Object invariant: content type fits u16");
            out.extend_from_slice(&content_type_len.to_be_bytes());
            out.extend_from_slice(sibling.content_type.as_bytes());
            if let Some(value) = &sibling.value {
                let value_len =
                    u32::try_from(value.len()).expect("Object invariant: value fits u32");
                out.extend_from_slice(&value_len.to_be_bytes());
                out.extend_from_slice(value);
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Decodes and validates an encoded object. Never panics; checks every
    /// count against the remaining input before allocating.
    pub fn decode(bytes: &[u8]) -> Result<Object, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("format version")?;
        if version != OBJECT_FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion { version });
        }

        let clock_count = r.u32("clock entry count")?;
        check_count(&r, clock_count, CLOCK_ENTRY_BYTES, "clock entries")?;
        let mut clock = VersionVector::new();
        let mut previous: Option<NodeId> = None;
        for index in 0..clock_count as usize {
            let replica = r.u64("clock replica")?;
            let counter = r.u64("clock counter")?;
            if previous.is_some_and(|p| p >= replica) {
                return Err(DecodeError::ClockNotSorted { index, replica });
            }
            if counter == 0 {
                return Err(DecodeError::ClockZeroCounter { replica });
            }
            clock.add(Dot { replica, counter });
            previous = Some(replica);
        }

        let sibling_count = r.u32("sibling count")?;
        check_count(&r, sibling_count, MIN_SIBLING_BYTES, "siblings")?;
        let mut siblings: Vec<Sibling> = Vec::with_capacity(sibling_count as usize);
        for index in 0..sibling_count as usize {
            let replica = r.u64("sibling replica")?;
            let counter = r.u64("sibling counter")?;
            let modified_ms = r.u64("sibling modified_ms")?;
            let flags = r.u8("sibling flags")?;
            if counter == 0 {
                return Err(DecodeError::SiblingZeroCounter { index, replica });
            }
            let dot = Dot { replica, counter };
            if siblings.last().is_some_and(|s| s.dot >= dot) {
                return Err(DecodeError::SiblingsNotSorted { index, dot });
            }
            if !clock.contains(dot) {
                return Err(DecodeError::DotNotInClock { index, dot });
            }
            if flags & !(FLAG_HAS_VALUE | FLAG_EXPIRES) != 0 {
                return Err(DecodeError::UnknownFlags { index, flags });
            }
            let expires_ms = if flags & FLAG_EXPIRES != 0 {
                Some(r.u64("sibling expires_ms")?)
            } else {
                None
            };
            let content_type_len = r.u16("content type length")?;
            let content_type = r.take(usize::from(content_type_len), "content type")?;
            let content_type = std::str::from_utf8(content_type)
                .map_err(|_| DecodeError::BadUtf8 { index })?
                .to_owned();
            let value = if flags & FLAG_HAS_VALUE != 0 {
                let value_len = r.u32("value length")?;
                Some(r.take(value_len as usize, "value")?.to_vec())
            } else {
                None
            };
            siblings.push(Sibling {
                dot,
                value,
                content_type,
                modified_ms,
                expires_ms,
            });
        }

        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                count: r.remaining(),
            });
        }
        let object = Object { clock, siblings };
        debug_assert_eq!(object.invariant_violation(), None);
        Ok(object)
    }

    /// xxh3-64 of `encode()`: equal objects have equal digests (anti-entropy
    /// compares these).
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.encode())
    }
}

fn count_u32(count: usize) -> u32 {
    u32::try_from(count).expect("object has more than u32::MAX clock entries or siblings")
}

/// A count is plausible only if the remaining input could hold that many
/// minimal items.
fn check_count(
    r: &Reader<'_>,
    count: u32,
    min_item_bytes: usize,
    what: &'static str,
) -> Result<(), DecodeError> {
    if count as usize > r.remaining() / min_item_bytes {
        return Err(DecodeError::CountTooLarge {
            what,
            count: u64::from(count),
            remaining: r.remaining(),
        });
    }
    Ok(())
}
