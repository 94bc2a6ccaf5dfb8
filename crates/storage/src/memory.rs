//! [`MemoryStorage`]: an in-memory engine that models a disk.
//!
//! It keeps two images: what reads see (`live`) and what a crash would
//! leave (`durable`). Buffered batches wait in order in `unsynced` until a
//! `sync()` or a `Sync` write moves them, then the new batch, to `durable`
//! — so, like a log or a copy-on-write tree, a crash keeps a prefix of the
//! writes and never a later write without an earlier one. `crash()` resets
//! `live` to `durable`. Write errors can be injected with `fail_writes`.
//!
//! It stores the same encoded keys and checksummed values as the on-disk
//! engines ([`crate::record`]). It does not model torn writes or bit rot
//! (tests corrupt values directly), nor memory limits.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::record::{decode_value, encode_key, encode_value, space_range, user_key};
use crate::{Durability, KeyValue, Space, Storage, StorageError, WriteBatch};

type Image = BTreeMap<Vec<u8>, Vec<u8>>;
/// One batch in engine form: (engine key, stored value or `None` to delete).
type EncodedBatch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

#[derive(Default)]
struct State {
    live: Image,
    durable: Image,
    unsynced: Vec<EncodedBatch>,
    fail_writes: bool,
}

impl State {
    fn make_durable(&mut self) {
        for batch in std::mem::take(&mut self.unsynced) {
            apply(&mut self.durable, &batch);
        }
    }
}

fn apply(image: &mut Image, batch: &EncodedBatch) {
    for (key, value) in batch {
        match value {
            Some(value) => image.insert(key.clone(), value.clone()),
            None => image.remove(key),
        };
    }
}

/// An in-memory [`Storage`] that loses unsynced writes on [`crash`].
/// Clones share the same state.
///
/// [`crash`]: MemoryStorage::crash
#[derive(Clone, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held could leave a batch half applied;
        // refuse to go on rather than serve such a state.
        self.state.lock().expect("memory storage lock poisoned")
    }

    /// Simulates a crash and restart: every write that was not yet durable
    /// (Buffered writes since the last `sync()` or `Sync` write) is lost.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.unsynced.clear();
        state.live = state.durable.clone();
    }

    /// While `on`, `write` and `sync` fail with [`StorageError::Io`] and
    /// change nothing. Reads keep working.
    pub fn fail_writes(&self, on: bool) {
        self.lock().fail_writes = on;
    }

    /// The value a crash right now would leave under `key`: what `get`
    /// would return after [`crash`](MemoryStorage::crash), without crashing.
    pub fn get_durable(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let state = self.lock();
        read(&state.durable, space, key)
    }

    fn injected_failure(operation: &'static str) -> StorageError {
        StorageError::io(
            operation,
            io::Error::other("write failure injected by MemoryStorage::fail_writes"),
        )
    }

    #[cfg(test)]
    fn overwrite_stored_value(&self, space: Space, key: &[u8], stored: Vec<u8>) {
        self.lock().live.insert(encode_key(space, key), stored);
    }
}

fn read(image: &Image, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    image
        .get(&encode_key(space, key))
        .map(|stored| decode_value(space, key, stored).map(<[u8]>::to_vec))
        .transpose()
}

impl Storage for MemoryStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let state = self.lock();
        read(&state.live, space, key)
    }

    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        // Encode before taking the lock: checksums of large values are not
        // free.
        let encoded: EncodedBatch = batch
            .ops()
            .iter()
            .map(|op| {
                (
                    encode_key(op.space, &op.key),
                    op.value.as_deref().map(encode_value),
                )
            })
            .collect();
        let mut state = self.lock();
        if state.fail_writes {
            return Err(Self::injected_failure("writing a batch"));
        }
        apply(&mut state.live, &encoded);
        match durability {
            Durability::Buffered => state.unsynced.push(encoded),
            Durability::Sync => {
                state.make_durable();
                apply(&mut state.durable, &encoded);
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut state = self.lock();
        if state.fail_writes {
            return Err(Self::injected_failure("syncing"));
        }
        state.make_durable();
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        use std::ops::Bound;
        let range = space_range(space);
        let start = match after {
            Some(after) => Bound::Excluded(encode_key(space, after)),
            None => Bound::Included(range.start),
        };
        let state = self.lock();
        state
            .live
            .range((start, Bound::Excluded(range.end)))
            .take(limit)
            .map(|(engine_key, stored)| {
                let key = user_key(space, engine_key)
                    .expect("engine key inside the space range has the space prefix");
                let value = decode_value(space, key, stored)?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[test]
    fn passes_the_conformance_suite() {
        conformance::run_all(&MemoryStorage::new());
    }

    #[test]
    fn keeps_synced_writes_across_a_crash() {
        let storage = MemoryStorage::new();
        conformance::crash_durability(&storage, &|| storage.crash());
    }

    #[test]
    fn a_crash_loses_buffered_writes_that_were_not_synced() {
        let storage = MemoryStorage::new();
        let mut batch = WriteBatch::new();
        batch.put(Space::Data(1), b"synced".to_vec(), b"1".to_vec());
        storage.write(&batch, Durability::Sync).unwrap();

        let mut batch = WriteBatch::new();
        batch.put(Space::Data(1), b"buffered".to_vec(), b"2".to_vec());
        batch.put(Space::Data(1), b"synced".to_vec(), b"overwritten".to_vec());
        storage.write(&batch, Durability::Buffered).unwrap();
        assert_eq!(
            storage.get(Space::Data(1), b"buffered").unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(
            storage.get_durable(Space::Data(1), b"buffered").unwrap(),
            None
        );

        storage.crash();
        assert_eq!(storage.get(Space::Data(1), b"buffered").unwrap(), None);
        assert_eq!(
            storage.get(Space::Data(1), b"synced").unwrap().as_deref(),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn a_sync_write_also_makes_earlier_buffered_writes_durable() {
        let storage = MemoryStorage::new();
        let mut batch = WriteBatch::new();
        batch.put(Space::Meta, b"first".to_vec(), b"buffered".to_vec());
        storage.write(&batch, Durability::Buffered).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Space::Meta, b"second".to_vec(), b"synced".to_vec());
        storage.write(&batch, Durability::Sync).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Space::Meta, b"third".to_vec(), b"buffered".to_vec());
        storage.write(&batch, Durability::Buffered).unwrap();

        storage.crash();
        assert!(storage.get(Space::Meta, b"first").unwrap().is_some());
        assert!(storage.get(Space::Meta, b"second").unwrap().is_some());
        assert_eq!(storage.get(Space::Meta, b"third").unwrap(), None);
    }

    #[test]
    fn injected_write_failures_change_nothing() {
        let storage = MemoryStorage::new();
        let mut batch = WriteBatch::new();
        batch.put(Space::Meta, b"k".to_vec(), b"v".to_vec());
        storage.fail_writes(true);
        assert!(matches!(
            storage.write(&batch, Durability::Sync),
            Err(StorageError::Io { .. })
        ));
        assert!(matches!(storage.sync(), Err(StorageError::Io { .. })));
        assert_eq!(storage.get(Space::Meta, b"k").unwrap(), None);
        storage.fail_writes(false);
        storage.write(&batch, Durability::Sync).unwrap();
        assert!(storage.get(Space::Meta, b"k").unwrap().is_some());
    }

    #[test]
    fn clones_share_state() {
        let storage = MemoryStorage::new();
        let clone = storage.clone();
        let mut batch = WriteBatch::new();
        batch.put(Space::Meta, b"k".to_vec(), b"v".to_vec());
        storage.write(&batch, Durability::Buffered).unwrap();
        assert!(clone.get(Space::Meta, b"k").unwrap().is_some());
        clone.crash();
        assert_eq!(storage.get(Space::Meta, b"k").unwrap(), None);
    }

    #[test]
    fn a_flipped_byte_is_reported_as_corruption_by_get_and_scan() {
        let storage = MemoryStorage::new();
        let mut batch = WriteBatch::new();
        batch.put(Space::Data(9), b"good".to_vec(), b"fine".to_vec());
        batch.put(Space::Data(9), b"bad".to_vec(), b"soon damaged".to_vec());
        storage.write(&batch, Durability::Sync).unwrap();

        let mut stored = encode_value(b"soon damaged");
        let last = stored.len() - 1;
        stored[last] ^= 0x01;
        storage.overwrite_stored_value(Space::Data(9), b"bad", stored);

        match storage.get(Space::Data(9), b"bad") {
            Err(StorageError::Corruption { space, key, .. }) => {
                assert_eq!(space, Space::Data(9));
                assert_eq!(key, b"bad");
            }
            other => panic!("expected Corruption, got {other:?}"),
        }
        assert!(matches!(
            storage.scan(Space::Data(9), None, 10),
            Err(StorageError::Corruption { .. })
        ));
        assert_eq!(
            storage.get(Space::Data(9), b"good").unwrap().as_deref(),
            Some(&b"fine"[..])
        );
    }
}
