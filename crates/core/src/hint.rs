//! Stored record formats shared by the node and the simulator: the key of
//! an object inside its partition, and the hint record a fallback keeps for
//! primaries that were down (sloppy quorum). The merging itself is
//! `Object::merge`'s; storage and delivery are the shells'.

use std::collections::BTreeSet;

use crate::NodeId;
use crate::causality::{DecodeError, Object};

/// The key of an object inside its partition: `u16 BE bucket length ‖
/// bucket ‖ key` (the same bytes the partition hash covers).
pub fn object_key(bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bucket.len() + key.len());
    out.extend_from_slice(&(bucket.len() as u16).to_be_bytes());
    out.extend_from_slice(bucket.as_bytes());
    out.extend_from_slice(key);
    out
}

/// Bucket and key back from `object_key`; None when malformed.
pub fn split_object_key(raw: &[u8]) -> Option<(String, Vec<u8>)> {
    let len = u16::from_be_bytes(raw.get(..2)?.try_into().ok()?) as usize;
    let bucket = std::str::from_utf8(raw.get(2..2 + len)?).ok()?.to_string();
    Some((bucket, raw[2 + len..].to_vec()))
}

/// A write held by a fallback for primaries that were down: the causal
/// merge of every hinted write of the key, and the primaries it is still
/// owed to. Format: u8 version ‖ u32 BE target count ‖ u64 BE targets ‖
/// encoded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub targets: BTreeSet<NodeId>,
    pub object: Object,
}

const HINT_FORMAT: u8 = 1;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HintDecodeError {
    #[error("hint record: {what}")]
    Malformed { what: &'static str },
    #[error("hint record object: {0}")]
    Object(#[from] DecodeError),
}

impl Hint {
    pub fn encode(&self) -> Vec<u8> {
        let object = self.object.encode();
        let mut out = Vec::with_capacity(5 + 8 * self.targets.len() + object.len());
        out.push(HINT_FORMAT);
        out.extend_from_slice(&(self.targets.len() as u32).to_be_bytes());
        for target in &self.targets {
            out.extend_from_slice(&target.to_be_bytes());
        }
        out.extend_from_slice(&object);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Hint, HintDecodeError> {
        let malformed = |what| HintDecodeError::Malformed { what };
        let (&version, rest) = bytes.split_first().ok_or(malformed("empty"))?;
        if version != HINT_FORMAT {
            return Err(malformed("unknown format version"));
        }
        let count = rest.get(..4).ok_or(malformed("truncated target count"))?;
        let count = u32::from_be_bytes(count.try_into().expect("4 bytes")) as usize;
        let targets_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .filter(|end| *end <= rest.len())
            .ok_or(malformed("truncated targets"))?;
        let targets = rest[4..targets_end]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let object = Object::decode(&rest[targets_end..])?;
        Ok(Hint { targets, object })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::{ConflictMode, NewVersion, VersionVector};

    #[test]
    fn hint_records_round_trip_and_reject_garbage() {
        let object = Object::update(
            None,
            &VersionVector::new(),
            NewVersion {
                value: Some(b"v".to_vec()),
                content_type: "text/plain".into(),
                now_ms: 1,
                expires_ms: None,
            },
            7,
            ConflictMode::Siblings,
            10,
        )
        .unwrap();
        let hint = Hint {
            targets: [3, 9].into_iter().collect(),
            object,
        };
        assert_eq!(Hint::decode(&hint.encode()).unwrap(), hint);
        let bytes = hint.encode();
        for cut in 0..bytes.len() {
            assert!(
                Hint::decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        assert!(Hint::decode(&[1, 255, 255, 255, 255]).is_err());
        assert!(Hint::decode(&[2, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn object_keys_split_back() {
        let key = object_key("sim", b"k/\x00");
        assert_eq!(
            split_object_key(&key),
            Some(("sim".to_string(), b"k/\x00".to_vec()))
        );
        assert_eq!(split_object_key(&[0]), None);
        assert_eq!(split_object_key(&[0, 5, b'a']), None);
    }
}
