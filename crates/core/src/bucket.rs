//! Buckets: name and key validation, bucket properties and their
//! last-writer-wins registry spread by gossip. Knows nothing of storage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::causality::ConflictMode;

pub const MAX_BUCKET_NAME_BYTES: usize = 255;
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest `n` a bucket may ask for. More replicas than this is a
/// configuration mistake, not a use case.
pub const MAX_N: u32 = 9;
pub const DEFAULT_MAX_SIBLINGS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("bucket name must be 1-255 bytes of [A-Za-z0-9_.-], got {len} bytes")]
    BucketName { len: usize },
    #[error("key must be 1-1024 bytes, got {len} bytes")]
    KeyLength { len: usize },
    #[error("{field} must be between 1 and {max}, got {value}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        max: u32,
    },
    #[error("{what}")]
    Other { what: String },
}

pub fn validate_bucket_name(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= MAX_BUCKET_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::BucketName { len: name.len() })
    }
}

pub fn validate_key(key: &[u8]) -> Result<(), InvalidInput> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(InvalidInput::KeyLength { len: key.len() });
    }
    Ok(())
}

/// When a replica acknowledges a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// After the write is synced to disk (the default).
    #[default]
    Sync,
    /// After the write is in the engine; synced in the background within a
    /// bounded interval (Dynamo §6.1): a crash may lose the last moments.
    Buffered,
}

/// Per-bucket replication and conflict settings (DESIGN §3).
/// Ordered only to break ties between registry entries with the same stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketProps {
    #[serde(default = "default_n")]
    pub n: u32,
    #[serde(default = "default_quorum")]
    pub r: u32,
    #[serde(default = "default_quorum")]
    pub w: u32,
    #[serde(default)]
    pub conflict: ConflictMode,
    #[serde(default = "default_max_siblings")]
    pub max_siblings: u32,
    /// None: the node's `--durability`. (No `skip_serializing_if`: gossip
    /// encodes this with postcard, which is not self-describing.)
    #[serde(default)]
    pub durability: Option<DurabilityMode>,
}

fn default_n() -> u32 {
    3
}
fn default_quorum() -> u32 {
    2
}
fn default_max_siblings() -> u32 {
    DEFAULT_MAX_SIBLINGS
}

impl Default for BucketProps {
    fn default() -> Self {
        BucketProps {
            n: default_n(),
            r: default_quorum(),
            w: default_quorum(),
            conflict: ConflictMode::Siblings,
            max_siblings: DEFAULT_MAX_SIBLINGS,
            durability: None,
        }
    }
}

impl BucketProps {
    /// Defaults of a bucket that was never configured. `lww` buckets are
    /// what Redis users expect of the RESP bucket.
    pub fn lww() -> Self {
        BucketProps {
            conflict: ConflictMode::Lww,
            ..BucketProps::default()
        }
    }

    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_range("n", self.n, MAX_N)?;
        check_range("r", self.r, self.n)?;
        check_range("w", self.w, self.n)?;
        check_range("max_siblings", self.max_siblings, 100_000)?;
        Ok(())
    }

    /// Checks a per-request quorum override against `n`.
    pub fn quorum(
        &self,
        field: &'static str,
        requested: Option<u32>,
    ) -> Result<usize, InvalidInput> {
        let value = requested.unwrap_or(if field == "r" { self.r } else { self.w });
        check_range(field, value, self.n)?;
        Ok(value as usize)
    }
}

fn check_range(field: &'static str, value: u32, max: u32) -> Result<(), InvalidInput> {
    if value == 0 || value > max {
        return Err(InvalidInput::OutOfRange { field, value, max });
    }
    Ok(())
}

/// One bucket's properties with the stamp that orders concurrent changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEntry {
    pub props: BucketProps,
    pub updated_ms: u64,
    pub updated_by: NodeId,
}

/// Every configured bucket. Merged by gossip: per bucket the greatest
/// (updated_ms, updated_by) wins, so all nodes converge on one value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRegistry {
    buckets: BTreeMap<String, BucketEntry>,
}

/// The most buckets a cluster may configure: gossip sends them all.
pub const MAX_CONFIGURED_BUCKETS: usize = 10_000;

impl BucketRegistry {
    pub fn get(&self, bucket: &str) -> Option<&BucketEntry> {
        self.buckets.get(bucket)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &BucketEntry)> {
        self.buckets.iter()
    }

    /// Sets a bucket's properties locally. The stamp is at least one past
    /// the current one so a change always wins over what it replaces.
    pub fn set(
        &mut self,
        bucket: &str,
        props: BucketProps,
        now_ms: u64,
        by: NodeId,
    ) -> Result<BucketEntry, InvalidInput> {
        validate_bucket_name(bucket)?;
        props.validate()?;
        if !self.buckets.contains_key(bucket) && self.buckets.len() >= MAX_CONFIGURED_BUCKETS {
            return Err(InvalidInput::Other {
                what: format!("at most {MAX_CONFIGURED_BUCKETS} buckets can be configured"),
            });
        }
        let floor = self
            .buckets
            .get(bucket)
            .map_or(0, |e| e.updated_ms.saturating_add(1));
        let entry = BucketEntry {
            props,
            updated_ms: now_ms.max(floor),
            updated_by: by,
        };
        self.buckets.insert(bucket.to_string(), entry);
        Ok(entry)
    }

    /// Merges another registry into this one; returns whether anything changed.
    /// Invalid entries from a peer are ignored.
    pub fn merge(&mut self, other: &BucketRegistry) -> bool {
        let mut changed = false;
        for (name, theirs) in &other.buckets {
            if validate_bucket_name(name).is_err() || theirs.props.validate().is_err() {
                continue;
            }
            let newer = match self.buckets.get(name) {
                None => self.buckets.len() < MAX_CONFIGURED_BUCKETS,
                // Two entries with one stamp come only from a faulty or
                // forged peer; the props break the tie, so that every
                // order of merges still ends in the same registry.
                Some(ours) => {
                    (theirs.updated_ms, theirs.updated_by, theirs.props)
                        > (ours.updated_ms, ours.updated_by, ours.props)
                }
            };
            if newer {
                self.buckets.insert(name.clone(), *theirs);
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(validate_bucket_name("users_v1.eu-west").is_ok());
        assert!(validate_bucket_name("").is_err());
        assert!(validate_bucket_name("a/b").is_err());
        assert!(validate_bucket_name("ä").is_err());
        assert!(validate_bucket_name(&"a".repeat(255)).is_ok());
        assert!(validate_bucket_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn keys() {
        assert!(validate_key(b"").is_err());
        assert!(validate_key(&[0u8; 1024]).is_ok());
        assert!(validate_key(&[0u8; 1025]).is_err());
    }

    #[test]
    fn props_validation() {
        assert!(BucketProps::default().validate().is_ok());
        let bad = BucketProps {
            r: 4,
            ..BucketProps::default()
        };
        assert!(bad.validate().is_err());
        let bad = BucketProps {
            n: 0,
            ..BucketProps::default()
        };
        assert!(bad.validate().is_err());
        let one = BucketProps {
            n: 1,
            r: 1,
            w: 1,
            ..BucketProps::default()
        };
        assert!(one.validate().is_ok());
        assert_eq!(BucketProps::default().quorum("r", Some(3)), Ok(3));
        assert!(BucketProps::default().quorum("w", Some(4)).is_err());
        assert!(BucketProps::default().quorum("w", Some(0)).is_err());
    }

    #[test]
    fn registry_converges_whatever_the_merge_order() {
        let mut a = BucketRegistry::default();
        let mut b = BucketRegistry::default();
        a.set(
            "x",
            BucketProps {
                n: 1,
                r: 1,
                w: 1,
                ..BucketProps::default()
            },
            10,
            1,
        )
        .unwrap();
        b.set("x", BucketProps::lww(), 10, 2).unwrap();
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.get("x").unwrap().props, BucketProps::lww());
        // A later local change wins even with an older clock.
        ab.set("x", BucketProps::default(), 5, 1).unwrap();
        assert_eq!(ab.get("x").unwrap().props, BucketProps::default());
        assert!(ba.merge(&ab));
        assert_eq!(ab, ba);
    }

    /// Found by `fuzz/` (target bucket_props): two entries with one stamp
    /// (a faulty or forged peer) and different props must still converge.
    #[test]
    fn entries_with_one_stamp_converge() {
        let entry = |max_siblings| BucketEntry {
            props: BucketProps {
                max_siblings,
                ..BucketProps::default()
            },
            updated_ms: 6,
            updated_by: 2,
        };
        let a = BucketRegistry {
            buckets: [("x".to_string(), entry(100))].into(),
        };
        let b = BucketRegistry {
            buckets: [("x".to_string(), entry(116))].into(),
        };
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.get("x").unwrap().props.max_siblings, 116);
    }
}
