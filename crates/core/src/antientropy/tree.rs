//! `MerkleTree`: the hash tree of one partition's replica over
//! (object key → version digest), kept up to date write by write.
//!
//! Owns the fixed shape (segments, fan-out), the entries of each segment,
//! the incremental segment hashes and the lazily recomputed inner hashes.
//! Does not own what a digest means (the replica computes it from an
//! object's clock), persistence, or the exchange between replicas.

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64_with_seed};

/// Default number of segments (leaves).
pub const DEFAULT_SEGMENTS: u32 = 1024;
/// Default fan-out of the inner levels.
pub const DEFAULT_WIDTH: u32 = 16;
/// Most segments a tree may have (2^20).
pub const MAX_SEGMENTS: u32 = 1 << 20;
/// Widest fan-out allowed.
pub const MAX_WIDTH: u32 = 256;

/// Seed of the hash that picks a key's segment. It differs from the
/// partitioner's unseeded xxh3 on purpose: all keys of one partition share
/// the top bits of that hash, so reusing it would crowd them into a few
/// segments. Part of the wire contract: both replicas must agree.
const SEGMENT_SEED: u64 = 0x6d65_726b_6c65_7365; // "merklese"

/// The (key, digest) entries of one segment, sorted by key.
pub type SegmentEntries = Vec<(Vec<u8>, u64)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeShapeError {
    #[error("Merkle tree segments must be a power of two from 1 to {max}, got {segments}")]
    BadSegments { segments: u32, max: u32 },
    #[error("Merkle tree width must be a power of two from 2 to {max}, got {width}")]
    BadWidth { width: u32, max: u32 },
}

/// The entries of one segment, compactly: every key's bytes in one
/// buffer, and a sorted list of (where the key is, digest). About 16 bytes
/// plus the key per entry, where a `BTreeMap<Vec<u8>, u64>` took 80–110
/// (a heap allocation per key, the `Vec` header, node slack); a node keeps
/// one entry per key it holds, so this is most of its memory beyond the
/// storage engine's cache.
#[derive(Clone, Debug, Default)]
struct Segment {
    /// Sorted by key.
    entries: Vec<Entry>,
    /// The keys' bytes. A removed or replaced key leaves a hole until the
    /// holes make up half of it; then it is rewritten without them.
    keys: Vec<u8>,
    holes: usize,
    /// Wrapping sum of `entry_hash` over the entries; 0 when empty.
    hash: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u32,
    len: u32,
    digest: u64,
}

impl Segment {
    fn key(&self, entry: &Entry) -> &[u8] {
        &self.keys[entry.start as usize..(entry.start + entry.len) as usize]
    }

    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|entry| self.key(entry).cmp(key))
    }

    fn get(&self, key: &[u8]) -> Option<u64> {
        self.find(key).ok().map(|at| self.entries[at].digest)
    }

    /// Records `digest` for `key`; the digest it replaces, if any.
    fn insert(&mut self, key: &[u8], digest: u64) -> Option<u64> {
        match self.find(key) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].digest, digest)),
            Err(at) => {
                let start = self.keys.len();
                self.keys.extend_from_slice(key);
                let entry = Entry {
                    start: u32::try_from(start).expect("a segment holds under 4 GiB of keys"),
                    len: u32::try_from(key.len()).expect("a key is under 4 GiB"),
                    digest,
                };
                self.entries.insert(at, entry);
                None
            }
        }
    }

    /// Forgets `key`; its digest, if it was there.
    fn remove(&mut self, key: &[u8]) -> Option<u64> {
        let at = self.find(key).ok()?;
        let entry = self.entries.remove(at);
        self.holes += entry.len as usize;
        if self.holes * 2 > self.keys.len() {
            self.compact();
        }
        Some(entry.digest)
    }

    fn compact(&mut self) {
        let mut keys = Vec::with_capacity(self.keys.len() - self.holes);
        for entry in &mut self.entries {
            let start = keys.len();
            keys.extend_from_slice(
                &self.keys[entry.start as usize..(entry.start + entry.len) as usize],
            );
            entry.start = start as u32;
        }
        self.keys = keys;
        self.holes = 0;
        if self.entries.capacity() > 2 * self.entries.len() + 4 {
            self.entries.shrink_to_fit();
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.entries
            .iter()
            .map(|entry| (self.key(entry), entry.digest))
    }
}

#[derive(Clone, Debug)]
struct InnerLevel {
    hashes: Vec<u64>,
    /// A dirty node's hash is stale. Invariant: every ancestor of a dirty
    /// node is dirty too, so marking stops at the first dirty ancestor.
    dirty: Vec<bool>,
}

/// A fixed-shape Merkle tree over (key → digest).
///
/// Shape: `segments` leaves; a key's segment is the top log2(segments) bits
/// of xxh3-64(key) seeded with a fixed constant. Above them, levels of
/// fan-out `width` (the level just below the root may be narrower) up to one
/// root. Level 0 is the root, level `levels() - 1` the segments.
///
/// Hashes (stable, both replicas must compute them alike):
/// - entry: xxh3-64(key ‖ digest as u64 big-endian);
/// - segment: wrapping sum of its entry hashes (0 when empty), so insert,
///   replace and remove update it in O(1) and it does not depend on order;
/// - inner node: xxh3-64 of its children's hashes, each u64 big-endian,
///   recomputed only when asked for and a segment below it changed.
///
/// Memory: per key, the key bytes plus 16 (see `Segment`) and the slack
/// of growing vectors; per tree, about 80 bytes per segment and 9 bytes
/// per inner node (≈ 90 KiB for the default 1024 × 16 shape).
#[derive(Clone, Debug)]
pub struct MerkleTree {
    width: u32,
    /// Number of nodes per level, root (1) first, segments last.
    level_sizes: Vec<u32>,
    segment_bits: u32,
    segments: Vec<Segment>,
    /// One per level except the segment level, root first.
    inner: Vec<InnerLevel>,
    len: usize,
}

impl Default for MerkleTree {
    fn default() -> MerkleTree {
        MerkleTree::new(DEFAULT_SEGMENTS, DEFAULT_WIDTH).expect("default shape is valid")
    }
}

impl MerkleTree {
    /// An empty tree of the given shape.
    pub fn new(segments: u32, width: u32) -> Result<MerkleTree, TreeShapeError> {
        if !segments.is_power_of_two() || segments > MAX_SEGMENTS {
            return Err(TreeShapeError::BadSegments {
                segments,
                max: MAX_SEGMENTS,
            });
        }
        if !width.is_power_of_two() || !(2..=MAX_WIDTH).contains(&width) {
            return Err(TreeShapeError::BadWidth {
                width,
                max: MAX_WIDTH,
            });
        }
        let mut level_sizes = vec![segments];
        let mut size = segments;
        while size > 1 {
            size = (size / width).max(1);
            level_sizes.push(size);
        }
        level_sizes.reverse();
        let inner = level_sizes[..level_sizes.len() - 1]
            .iter()
            .map(|&size| InnerLevel {
                hashes: vec![0; size as usize],
                dirty: vec![true; size as usize],
            })
            .collect();
        Ok(MerkleTree {
            width,
            level_sizes,
            segment_bits: segments.trailing_zeros(),
            segments: vec![Segment::default(); segments as usize],
            inner,
            len: 0,
        })
    }

    /// Number of segments (leaves).
    pub fn segments(&self) -> u32 {
        self.segments.len() as u32
    }

    /// Fan-out of the inner levels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Number of levels, root and segment levels included (1 when the tree
    /// has a single segment, which is then also the root).
    pub fn levels(&self) -> usize {
        self.level_sizes.len()
    }

    /// Number of nodes on `level`, or `None` past the segment level.
    pub fn level_len(&self, level: usize) -> Option<u32> {
        self.level_sizes.get(level).copied()
    }

    /// Indices on `level + 1` of the children of node `index` on `level`.
    /// Panics if `level` is the segment level or `index` is out of range.
    pub fn children(&self, level: usize, index: u32) -> std::ops::Range<u32> {
        assert!(level + 1 < self.levels(), "level {level} has no children");
        assert!(
            index < self.level_sizes[level],
            "index {index} out of range"
        );
        let fan_out = self.level_sizes[level + 1] / self.level_sizes[level];
        index * fan_out..(index + 1) * fan_out
    }

    /// Segment that holds `key`.
    pub fn segment_of(&self, key: &[u8]) -> u32 {
        if self.segment_bits == 0 {
            return 0;
        }
        (xxh3_64_with_seed(key, SEGMENT_SEED) >> (64 - self.segment_bits)) as u32
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Digest recorded for `key`.
    pub fn digest_of(&self, key: &[u8]) -> Option<u64> {
        self.segments[self.segment_of(key) as usize].get(key)
    }

    /// Records `digest` for `key`, replacing any earlier one.
    pub fn insert(&mut self, key: &[u8], digest: u64) {
        let index = self.segment_of(key);
        let segment = &mut self.segments[index as usize];
        match segment.insert(key, digest) {
            Some(old) if old == digest => return,
            Some(old) => {
                segment.hash = segment
                    .hash
                    .wrapping_sub(entry_hash(key, old))
                    .wrapping_add(entry_hash(key, digest));
            }
            None => {
                segment.hash = segment.hash.wrapping_add(entry_hash(key, digest));
                self.len += 1;
            }
        }
        self.mark_dirty(index);
    }

    /// Forgets `key`; nothing happens if it is absent.
    pub fn remove(&mut self, key: &[u8]) {
        let index = self.segment_of(key);
        let segment = &mut self.segments[index as usize];
        if let Some(old) = segment.remove(key) {
            segment.hash = segment.hash.wrapping_sub(entry_hash(key, old));
            self.len -= 1;
            self.mark_dirty(index);
        }
    }

    /// Hash of the whole tree.
    pub fn root(&mut self) -> u64 {
        self.node_hash(0, 0)
    }

    /// Hashes of nodes `indices` on `level` (0 = root), in the order asked.
    /// Panics if `level` or an index is out of range (callers validate
    /// untrusted requests first, as `answer` does).
    pub fn level_hashes(&mut self, level: usize, indices: &[u32]) -> Vec<(u32, u64)> {
        let size = self.level_len(level);
        assert!(size.is_some(), "level {level} out of range");
        indices
            .iter()
            .map(|&index| {
                assert!(Some(index) < size, "index {index} out of range");
                (index, self.node_hash(level, index))
            })
            .collect()
    }

    /// Entries of `segment`, sorted by key. Panics if out of range.
    pub fn segment_entries(&self, segment: u32) -> SegmentEntries {
        self.segments[segment as usize]
            .iter()
            .map(|(key, digest)| (key.to_vec(), digest))
            .collect()
    }

    /// Marks the ancestors of `segment` dirty, stopping at the first one
    /// already dirty (its ancestors are dirty too).
    fn mark_dirty(&mut self, segment: u32) {
        for level in (0..self.inner.len()).rev() {
            let span = self.segments() / self.level_sizes[level];
            let index = (segment / span) as usize;
            let dirty = &mut self.inner[level].dirty[index];
            if *dirty {
                return;
            }
            *dirty = true;
        }
    }

    fn node_hash(&mut self, level: usize, index: u32) -> u64 {
        if level == self.inner.len() {
            return self.segments[index as usize].hash;
        }
        if !self.inner[level].dirty[index as usize] {
            return self.inner[level].hashes[index as usize];
        }
        let mut hasher = Xxh3Default::new();
        for child in self.children(level, index) {
            hasher.update(&self.node_hash(level + 1, child).to_be_bytes());
        }
        let hash = hasher.digest();
        self.inner[level].hashes[index as usize] = hash;
        self.inner[level].dirty[index as usize] = false;
        hash
    }
}

fn entry_hash(key: &[u8], digest: u64) -> u64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(key);
    hasher.update(&digest.to_be_bytes());
    hasher.digest()
}
