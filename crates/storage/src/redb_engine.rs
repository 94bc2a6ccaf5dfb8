//! [`RedbStorage`]: the on-disk engine, one redb file (a copy-on-write
//! B+tree) holding one table of encoded records ([`crate::record`]).
//!
//! Durability mapping:
//! - `Durability::Sync` commits with `redb::Durability::Immediate`: the
//!   commit is fsynced before `commit()` returns.
//! - `Durability::Buffered` commits with `redb::Durability::None`: visible
//!   to later reads at once, not persisted on its own.
//! - `sync()` commits an empty transaction with `Immediate`.
//!
//! Why that `sync()` is enough (redb 4.5 source, `src/transactions.rs`):
//! `Durability::None` is documented as "will not be persisted to disk
//! unless followed by a commit with [`Durability::Immediate`]". An
//! Immediate commit always runs `durable_commit`, even with no changes (no
//! early return for empty transactions): it writes out the freed-page
//! records that earlier non-durable commits kept in memory, flushes every
//! page allocated since the last durable commit ("including previously
//! unpersisted allocations that are now becoming durable") and then writes
//! and fsyncs the header naming the newest root — which contains the
//! non-durable commits. Each redb commit is atomic across a crash (the
//! header flip selects the old or the new root), so a crash keeps a prefix
//! of the commits.
//!
//! Note also that dropping a redb `Database` makes a pending non-durable
//! commit durable (`close_database` in `src/db.rs`), so only a real crash
//! loses Buffered writes, not a clean close.
//!
//! This module does not cache, batch concurrent writers (see
//! [`crate::GroupCommitter`]) or compact the file.

use std::ops::Bound;
use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};

use crate::record::{decode_value, encode_key, encode_value, space_range, user_key};
use crate::{Durability, KeyValue, Space, Storage, StorageError, WriteBatch};

/// Every record, keyed by the encoded engine key.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// A [`Storage`] on one redb file. Writes are serialized by redb (one write
/// transaction at a time); reads run concurrently on snapshots.
pub struct RedbStorage {
    database: redb::Database,
}

/// Converts a redb error, keeping I/O errors apart from the engine's own.
fn engine_error(operation: &'static str, error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Io(source) => StorageError::io(operation, source),
        other => StorageError::Engine {
            message: format!("redb failed while {operation}: {other}"),
        },
    }
}

impl RedbStorage {
    /// Opens the database file at `path`, creating it if missing.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let database =
            redb::Database::create(path).map_err(|e| engine_error("opening the database", e))?;
        let storage = RedbStorage { database };
        // Create the table up front so that readers never meet a missing
        // table.
        storage.commit(Durability::Sync, "creating the records table", |_| Ok(()))?;
        Ok(storage)
    }

    fn commit(
        &self,
        durability: Durability,
        operation: &'static str,
        fill: impl FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), StorageError> {
        let mut transaction = self
            .database
            .begin_write()
            .map_err(|e| engine_error(operation, e))?;
        let redb_durability = match durability {
            Durability::Sync => redb::Durability::Immediate,
            Durability::Buffered => redb::Durability::None,
        };
        transaction
            .set_durability(redb_durability)
            .map_err(|e| engine_error(operation, e))?;
        {
            let mut table = transaction
                .open_table(RECORDS)
                .map_err(|e| engine_error(operation, e))?;
            fill(&mut table).map_err(|e| engine_error(operation, e))?;
        }
        // On error the transaction is dropped, which aborts it.
        transaction.commit().map_err(|e| engine_error(operation, e))
    }

    fn read_table(
        &self,
        operation: &'static str,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StorageError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|e| engine_error(operation, e))?;
        transaction
            .open_table(RECORDS)
            .map_err(|e| engine_error(operation, e))
    }

    #[cfg(test)]
    fn put_raw(&self, engine_key: &[u8], stored: &[u8]) {
        self.commit(Durability::Sync, "writing a raw record", |table| {
            table.insert(engine_key, stored)?;
            Ok(())
        })
        .unwrap();
    }
}

impl Storage for RedbStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let operation = "reading a record";
        let table = self.read_table(operation)?;
        let engine_key = encode_key(space, key);
        let Some(stored) = table
            .get(engine_key.as_slice())
            .map_err(|e| engine_error(operation, e))?
        else {
            return Ok(None);
        };
        decode_value(space, key, stored.value()).map(|payload| Some(payload.to_vec()))
    }

    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        self.commit(durability, "writing a batch", |table| {
            for op in batch.ops() {
                let engine_key = encode_key(op.space, &op.key);
                match &op.value {
                    Some(value) => {
                        table.insert(engine_key.as_slice(), encode_value(value).as_slice())?;
                    }
                    None => {
                        table.remove(engine_key.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.commit(Durability::Sync, "syncing", |_| Ok(()))
    }

    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let operation = "scanning records";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range = space_range(space);
        let after_key = after.map(|after| encode_key(space, after));
        let start = match &after_key {
            Some(after_key) => Bound::Excluded(after_key.as_slice()),
            None => Bound::Included(range.start.as_slice()),
        };
        let end = Bound::Excluded(range.end.as_slice());
        let table = self.read_table(operation)?;
        let entries = table
            .range::<&[u8]>((start, end))
            .map_err(|e| engine_error(operation, e))?;
        let mut records = Vec::new();
        for entry in entries.take(limit) {
            let (engine_key, stored) = entry.map_err(|e| engine_error(operation, e))?;
            let key = user_key(space, engine_key.value())
                .expect("engine key inside the space range has the space prefix");
            let value = decode_value(space, key, stored.value())?;
            records.push((key.to_vec(), value.to_vec()));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    fn open_in(directory: &tempfile::TempDir) -> RedbStorage {
        RedbStorage::open(&directory.path().join("ringkv.redb")).unwrap()
    }

    #[test]
    fn passes_the_conformance_suite() {
        let directory = tempfile::tempdir().unwrap();
        conformance::run_all(&open_in(&directory));
    }

    #[test]
    fn synced_writes_survive_a_reopen() {
        let directory = tempfile::tempdir().unwrap();
        conformance::reopen_durability(&|| Box::new(open_in(&directory)));
    }

    #[test]
    fn a_missing_file_is_created() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("new.redb");
        assert!(!path.exists());
        let storage = RedbStorage::open(&path).unwrap();
        assert!(path.exists());
        assert_eq!(storage.get(Space::Meta, b"anything").unwrap(), None);
        assert!(storage.scan(Space::Data(0), None, 10).unwrap().is_empty());
    }

    #[test]
    fn a_bad_checksum_written_through_the_raw_table_is_reported_as_corruption() {
        let directory = tempfile::tempdir().unwrap();
        let storage = open_in(&directory);
        let mut batch = WriteBatch::new();
        batch.put(Space::Hints(4), b"good".to_vec(), b"fine".to_vec());
        storage.write(&batch, Durability::Sync).unwrap();

        let mut stored = encode_value(b"damaged payload");
        stored[3] ^= 0x80; // inside the checksum
        storage.put_raw(&encode_key(Space::Hints(4), b"bad"), &stored);
        let mut truncated = encode_value(b"x");
        truncated.truncate(4);
        storage.put_raw(&encode_key(Space::Meta, b"short"), &truncated);

        match storage.get(Space::Hints(4), b"bad") {
            Err(StorageError::Corruption { space, key, reason }) => {
                assert_eq!(space, Space::Hints(4));
                assert_eq!(key, b"bad");
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected Corruption, got {other:?}"),
        }
        assert!(matches!(
            storage.get(Space::Meta, b"short"),
            Err(StorageError::Corruption { .. })
        ));
        // A scan stops at the damaged record instead of returning it.
        assert!(matches!(
            storage.scan(Space::Hints(4), None, 10),
            Err(StorageError::Corruption { .. })
        ));
        // "bad" < "good": a scan after the damaged key still works.
        assert_eq!(
            storage.scan(Space::Hints(4), Some(b"bad"), 10).unwrap(),
            vec![(b"good".to_vec(), b"fine".to_vec())]
        );
    }

    #[test]
    fn buffered_writes_are_visible_and_sync_persists_them() {
        let directory = tempfile::tempdir().unwrap();
        {
            let storage = open_in(&directory);
            let mut batch = WriteBatch::new();
            batch.put(Space::Data(2), b"k".to_vec(), b"buffered".to_vec());
            storage.write(&batch, Durability::Buffered).unwrap();
            assert_eq!(
                storage.get(Space::Data(2), b"k").unwrap().as_deref(),
                Some(&b"buffered"[..])
            );
            storage.sync().unwrap();
        }
        let storage = open_in(&directory);
        assert_eq!(
            storage.get(Space::Data(2), b"k").unwrap().as_deref(),
            Some(&b"buffered"[..])
        );
    }

    #[test]
    fn a_second_open_of_the_same_file_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let _first = open_in(&directory);
        let second = RedbStorage::open(&directory.path().join("ringkv.redb"));
        assert!(
            matches!(second, Err(StorageError::Engine { .. })),
            "{:?}",
            second.err()
        );
    }
}
