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
//! After an I/O error (a full disk), redb refuses every later operation,
//! reads included, with `PreviousIo` until the file is opened again
//! (redb's `cached_file.rs` latches `io_failed`). [`Storage::reopen_if_failed`]
//! does that in place: the file comes back as of its last durable commit,
//! which is what a restart would give. While it reopens, operations fail at
//! once instead of waiting for it.
//!
//! This module does not cache, batch concurrent writers (see
//! [`crate::GroupCommitter`]) or compact the file.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, TableDefinition};

use crate::record::{
    VALUE_HEADER_BYTES, decode_key, decode_value, encode_key, encode_value, encode_value_into,
    space_range, user_key,
};
use crate::{Durability, KeyValue, Space, Storage, StorageError, WriteBatch};

/// Every record, keyed by the encoded engine key.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// A [`Storage`] on one redb file. Writes are serialized by redb (one write
/// transaction at a time); reads run concurrently on snapshots.
pub struct RedbStorage {
    path: PathBuf,
    cache_bytes: usize,
    /// `None` only while [`Storage::reopen_if_failed`] replaces it.
    database: RwLock<Option<redb::Database>>,
    /// An operation failed with an I/O error, after which redb refuses
    /// every other: the file must be opened again.
    failed: AtomicBool,
    /// When the next reopen may be tried. Reopening a file that was not
    /// closed cleanly makes redb repair it (a walk over the whole file), so
    /// a disk that stays full is not made to pay that at every flush
    /// retry: the wait doubles from `REOPEN_WAIT_MIN` to `REOPEN_WAIT_MAX`.
    reopen: Mutex<Reopen>,
    /// Tests: while set, the file's writes and syncs fail.
    #[cfg(test)]
    inject_failures: Option<std::sync::Arc<AtomicBool>>,
}

const REOPEN_WAIT_MIN: Duration = Duration::from_millis(200);
const REOPEN_WAIT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Reopen {
    not_before: Instant,
    wait: Duration,
}

impl Default for Reopen {
    fn default() -> Self {
        Reopen {
            not_before: Instant::now(),
            wait: REOPEN_WAIT_MIN,
        }
    }
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
    /// Opens the database file at `path`, creating it if missing, with
    /// [`crate::DEFAULT_ENGINE_CACHE_BYTES`] of page cache.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with_cache(path, crate::DEFAULT_ENGINE_CACHE_BYTES)
    }

    /// [`RedbStorage::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        let storage = Self::unopened(path, cache_bytes);
        storage.open_file()?;
        Ok(storage)
    }

    /// Tests: [`RedbStorage::open`] on a file whose writes and syncs fail
    /// while `failing` is set.
    #[cfg(test)]
    pub(crate) fn open_failing(
        path: &Path,
        failing: std::sync::Arc<AtomicBool>,
    ) -> Result<Self, StorageError> {
        let mut storage = Self::unopened(path, crate::DEFAULT_ENGINE_CACHE_BYTES);
        storage.inject_failures = Some(failing);
        storage.open_file()?;
        Ok(storage)
    }

    fn unopened(path: &Path, cache_bytes: usize) -> Self {
        RedbStorage {
            path: path.to_path_buf(),
            cache_bytes,
            database: RwLock::new(None),
            failed: AtomicBool::new(false),
            reopen: Mutex::default(),
            #[cfg(test)]
            inject_failures: None,
        }
    }

    /// Opens the file into `self.database`, which must be `None`.
    fn open_file(&self) -> Result<(), StorageError> {
        let database = self
            .create_database()
            .map_err(|e| engine_error("opening the database", e))?;
        *self.database.write().expect("database lock poisoned") = Some(database);
        // Create the table up front so that readers never meet a missing
        // table.
        self.commit(Durability::Sync, "creating the records table", |_| Ok(()))
    }

    fn create_database(&self) -> Result<redb::Database, redb::DatabaseError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(self.cache_bytes);
        #[cfg(test)]
        if let Some(failing) = &self.inject_failures {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            let backend = tests::FailingBackend {
                file: redb::backends::FileBackend::new(file)?,
                failing: std::sync::Arc::clone(failing),
            };
            return builder.create_with_backend(backend);
        }
        builder.create(&self.path)
    }

    /// The open database, or the error that it is being reopened.
    fn database(
        &self,
        operation: &'static str,
    ) -> Result<RwLockReadGuard<'_, Option<redb::Database>>, StorageError> {
        let database = self.database.read().expect("database lock poisoned");
        if database.is_none() {
            return Err(StorageError::Engine {
                message: format!(
                    "redb is being opened again after an I/O error, while {operation}"
                ),
            });
        }
        Ok(database)
    }

    /// [`engine_error`], noting errors after which redb must be reopened.
    fn error(&self, operation: &'static str, error: impl Into<redb::Error>) -> StorageError {
        let error = error.into();
        if matches!(
            error,
            redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
        ) {
            self.failed.store(true, Ordering::Release);
        }
        engine_error(operation, error)
    }

    fn commit(
        &self,
        durability: Durability,
        operation: &'static str,
        fill: impl FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), StorageError> {
        let database = self.database(operation)?;
        let database = database.as_ref().expect("checked by database()");
        let mut transaction = database
            .begin_write()
            .map_err(|e| self.error(operation, e))?;
        let redb_durability = match durability {
            Durability::Sync => redb::Durability::Immediate,
            Durability::Buffered => redb::Durability::None,
        };
        transaction
            .set_durability(redb_durability)
            .map_err(|e| self.error(operation, e))?;
        {
            let mut table = transaction
                .open_table(RECORDS)
                .map_err(|e| self.error(operation, e))?;
            fill(&mut table).map_err(|e| self.error(operation, e))?;
        }
        // On error the transaction is dropped, which aborts it.
        transaction.commit().map_err(|e| self.error(operation, e))
    }

    /// Runs `read` on the records table of a read transaction.
    fn read<T>(
        &self,
        operation: &'static str,
        read: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        // Held until `read` is done, so that a reopen never closes the
        // file under a reader.
        let database = self.database(operation)?;
        let transaction = database
            .as_ref()
            .expect("checked by database()")
            .begin_read()
            .map_err(|e| self.error(operation, e))?;
        let table = transaction
            .open_table(RECORDS)
            .map_err(|e| self.error(operation, e))?;
        read(&table)
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
        let engine_key = encode_key(space, key);
        self.read(operation, |table| {
            let Some(stored) = table
                .get(engine_key.as_slice())
                .map_err(|e| self.error(operation, e))?
            else {
                return Ok(None);
            };
            decode_value(space, key, stored.value()).map(|payload| Some(payload.to_vec()))
        })
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

    /// Each value is written straight into the space redb reserves for it.
    fn write_engine_entries(
        &self,
        entries: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let mut undecodable = None;
        self.commit(durability, "writing engine entries", |table| {
            for (engine_key, value) in entries {
                if decode_key(engine_key).is_none() {
                    undecodable = Some(engine_key.to_vec());
                    // Aborts the transaction: nothing is written.
                    return Err(redb::Error::Corrupted("not an engine key".to_string()));
                }
                match value {
                    Some(value) => {
                        let mut stored =
                            table.insert_reserve(engine_key, VALUE_HEADER_BYTES + value.len())?;
                        encode_value_into(value, stored.as_mut());
                    }
                    None => {
                        table.remove(engine_key)?;
                    }
                }
            }
            Ok(())
        })
        .map_err(|error| match undecodable {
            Some(engine_key) => StorageError::not_an_engine_key(&engine_key),
            None => error,
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
        self.read(operation, |table| {
            let entries = table
                .range::<&[u8]>((start, end))
                .map_err(|e| self.error(operation, e))?;
            let mut records = Vec::new();
            for entry in entries.take(limit) {
                let (engine_key, stored) = entry.map_err(|e| self.error(operation, e))?;
                let key = user_key(space, engine_key.value())
                    .expect("engine key inside the space range has the space prefix");
                let value = decode_value(space, key, stored.value())?;
                records.push((key.to_vec(), value.to_vec()));
            }
            Ok(records)
        })
    }

    fn reopen_if_failed(&self) -> Result<(), StorageError> {
        let mut reopen = self.reopen.lock().expect("reopen lock poisoned");
        if !self.failed.load(Ordering::Acquire) {
            reopen.wait = REOPEN_WAIT_MIN;
            return Ok(());
        }
        let now = Instant::now();
        if now < reopen.not_before {
            return Err(StorageError::Engine {
                message: format!(
                    "redb stopped after an I/O error; it is opened again in {} ms",
                    (reopen.not_before - now).as_millis()
                ),
            });
        }
        // Until the engine has worked again, each attempt waits longer.
        reopen.not_before = now + reopen.wait;
        reopen.wait = (reopen.wait * 2).min(REOPEN_WAIT_MAX);
        // Taken out under the lock, dropped outside it: readers fail at
        // once meanwhile instead of waiting. Dropping closes the file and
        // releases its lock, so it can be opened again.
        let old = self
            .database
            .write()
            .expect("database lock poisoned")
            .take();
        drop(old);
        self.open_file()?;
        self.failed.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "opened redb again after an I/O error");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use redb::StorageBackend;
    use redb::backends::FileBackend;

    use super::*;
    use crate::conformance;

    /// A file whose writes, length changes and syncs fail while `failing`.
    #[derive(Debug)]
    pub(super) struct FailingBackend {
        pub(super) file: FileBackend,
        pub(super) failing: Arc<AtomicBool>,
    }

    impl FailingBackend {
        fn check(&self) -> Result<(), io::Error> {
            if self.failing.load(Ordering::Acquire) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "failure injected by FailingBackend",
                ));
            }
            Ok(())
        }
    }

    impl StorageBackend for FailingBackend {
        fn len(&self) -> Result<u64, io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> Result<(), io::Error> {
            self.file.close()
        }
        fn try_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
            self.file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.query_lock_range(start, end)
        }
    }

    fn put(storage: &RedbStorage, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(Space::Data(1), key.to_vec(), value.to_vec());
        storage.write(&batch, Durability::Sync)
    }

    #[test]
    fn an_io_error_is_mended_by_reopening_in_place() {
        let directory = tempfile::tempdir().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let storage =
            RedbStorage::open_failing(&directory.path().join("ringkv.redb"), Arc::clone(&failing))
                .unwrap();
        storage.reopen_if_failed().unwrap(); // nothing failed: a no-op
        put(&storage, b"durable", b"1").unwrap();

        failing.store(true, Ordering::Release);
        let error = put(&storage, b"lost", b"2").unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error}");
        // redb latches the error: with the disk fine again, it still
        // refuses writes until it is opened again.
        failing.store(false, Ordering::Release);
        let error = put(&storage, b"later", b"2").unwrap_err();
        assert!(error.to_string().contains("Previous I/O"), "{error}");
        failing.store(true, Ordering::Release);
        assert!(
            storage.reopen_if_failed().is_err(),
            "opening writes the file, which still fails"
        );
        let read = storage.get(Space::Data(1), b"durable").unwrap_err();
        assert!(read.to_string().contains("opened again"), "{read}");

        failing.store(false, Ordering::Release);
        // Attempts are spaced out (a reopen after an I/O error repairs the
        // whole file): the next one waits for REOPEN_WAIT_MIN.
        let error = storage.reopen_if_failed().unwrap_err();
        assert!(error.to_string().contains("opened again in"), "{error}");
        std::thread::sleep(REOPEN_WAIT_MIN);
        storage.reopen_if_failed().unwrap();
        assert_eq!(
            storage.get(Space::Data(1), b"durable").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(storage.get(Space::Data(1), b"lost").unwrap(), None);
        put(&storage, b"after", b"3").unwrap();
        drop(storage);
        let reopened = open_in(&directory);
        assert_eq!(
            reopened.get(Space::Data(1), b"after").unwrap().as_deref(),
            Some(&b"3"[..])
        );
    }

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
