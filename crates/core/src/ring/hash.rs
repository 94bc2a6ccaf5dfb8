//! The partitioner: the stable key hash and the map from hash to partition.
//! It knows nothing of members or owners (that is [`super::Layout`]).

use xxhash_rust::xxh3::Xxh3;

/// xxh3-64 of (u16 big-endian bucket length ‖ bucket ‖ key). Stable on disk
/// and wire: changing it moves every key, so never change it silently.
///
/// # Panics
/// If `bucket` is longer than `u16::MAX` bytes (bucket names are at most 255
/// bytes and are validated before any key is hashed).
pub fn key_hash(bucket: &[u8], key: &[u8]) -> u64 {
    let length =
        u16::try_from(bucket.len()).expect("bucket names are validated to at most 255 bytes");
    let mut hasher = Xxh3::new();
    hasher.update(&length.to_be_bytes());
    hasher.update(bucket);
    hasher.update(key);
    hasher.digest()
}

/// The partition of a hash: its top log2(`partitions`) bits (Dynamo's
/// strategy 3), so partition `p` holds the hash range starting at
/// `p << (64 - log2(partitions))`. `partitions == 1` maps everything to 0.
///
/// # Panics
/// If `partitions` is not a power of two in `1..=MAX_PARTITIONS` (a
/// [`super::Layout`] never holds such a count).
pub fn partition_of(hash: u64, partitions: u32) -> u32 {
    assert!(
        partitions.is_power_of_two() && partitions <= super::MAX_PARTITIONS,
        "partitions must be a power of two in 1..={}, got {partitions}",
        super::MAX_PARTITIONS
    );
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        0
    } else {
        u32::try_from(hash >> (64 - bits)).expect("at most 12 bits remain")
    }
}
