//! `Hint`: a write a fallback holds for primaries that were down (sloppy
//! quorum), in the record format of `crates/node/src/store.rs`: the causal
//! merge of every hinted write of the key and the primaries it is still
//! owed to. `u8 version ‖ u32 BE target count ‖ u64 BE targets ‖ object`.
//! The merging itself is `Object::merge`'s.

use std::collections::BTreeSet;

use ringkv_core::NodeId;
use ringkv_core::causality::Object;

const HINT_FORMAT: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub targets: BTreeSet<NodeId>,
    pub object: Object,
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

    pub fn decode(bytes: &[u8]) -> Result<Hint, String> {
        let (&version, rest) = bytes.split_first().ok_or("empty hint record")?;
        if version != HINT_FORMAT {
            return Err(format!("unknown hint format version {version}"));
        }
        let count = rest.get(..4).ok_or("truncated hint target count")?;
        let count = u32::from_be_bytes(count.try_into().expect("4 bytes")) as usize;
        let targets_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .filter(|end| *end <= rest.len())
            .ok_or("truncated hint targets")?;
        let targets = rest[4..targets_end]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let object = Object::decode(&rest[targets_end..]).map_err(|e| e.to_string())?;
        Ok(Hint { targets, object })
    }
}

/// Splits an object key (`u16 BE bucket length ‖ bucket ‖ key`).
pub fn split_object_key(raw: &[u8]) -> Option<(String, Vec<u8>)> {
    let len = u16::from_be_bytes(raw.get(..2)?.try_into().ok()?) as usize;
    let bucket = std::str::from_utf8(raw.get(2..2 + len)?).ok()?.to_string();
    Some((bucket, raw[2 + len..].to_vec()))
}

#[cfg(test)]
mod tests {
    use ringkv_core::causality::{ConflictMode, NewVersion, VersionVector};

    use super::*;
    use crate::node::object_key;

    #[test]
    fn hints_round_trip_and_garbage_is_refused() {
        let object = Object::update(
            None,
            &VersionVector::new(),
            NewVersion {
                value: Some(b"v".to_vec()),
                content_type: "t".to_string(),
                now_ms: 1,
            },
            9,
            ConflictMode::Siblings,
            10,
        )
        .unwrap();
        let hint = Hint {
            targets: [3, 1].into_iter().collect(),
            object,
        };
        assert_eq!(Hint::decode(&hint.encode()), Ok(hint.clone()));
        let bytes = hint.encode();
        assert!(Hint::decode(&bytes[..7]).is_err());
        assert!(Hint::decode(&[2]).is_err());
        assert!(Hint::decode(&[]).is_err());
        let key = object_key("sim", b"k1");
        assert_eq!(
            split_object_key(&key),
            Some(("sim".to_string(), b"k1".to_vec()))
        );
        assert_eq!(split_object_key(&[0]), None);
    }
}
