//! Durable local storage for one ringkv node.
//!
//! This crate owns:
//! - the [`Storage`] trait: point reads, atomic write batches, ordered scans
//!   of one [`Space`] and an explicit [`Storage::sync`];
//! - the engines behind it: [`RedbStorage`] (crash-safe, on disk) and
//!   [`MemoryStorage`] (a model of a disk that loses unsynced writes, for
//!   tests and the simulator);
//! - [`LoggedStorage`], a write-ahead log in front of an engine, so that a
//!   durable write is one small log append and sync, and the engine is
//!   committed durably only at checkpoints ([`open_data_dir`] puts it in
//!   front of redb for a node);
//! - the on-engine record format ([`record`]): every stored value carries a
//!   format version and an xxh3 checksum, verified on every read, so
//!   corruption is reported as [`StorageError::Corruption`], never returned
//!   as data;
//! - the [`GroupCommitter`], which runs read-modify-write [`Job`]s of many
//!   concurrent writers in one thread and shares one durable commit between
//!   them;
//! - the [`conformance`] suite that every engine must pass.
//!
//! This crate does not know about objects, siblings, causal contexts,
//! partition placement or replication: keys and values are opaque bytes,
//! and a partition is only a number that groups records for iteration.
//! It has no async runtime: the group committer is a plain std thread.

pub mod conformance;
mod group_commit;
mod memory;
pub mod record;
mod redb_engine;
mod wal;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use group_commit::{
    Change, GroupCommitOptions, GroupCommitStats, GroupCommitter, Job, SubmitError,
    commit_deferred, defer_commits_on_this_thread, job_fn,
};
pub use memory::MemoryStorage;
pub use redb_engine::RedbStorage;
pub use wal::{FsLogDir, LogDir, LogOptions, LoggedStorage, MemoryLogDir, ReplayReport};

/// Where a record lives. `Data` and `Hints` are per partition so that they
/// can be iterated one partition at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Node metadata (layout, identity, counters).
    Meta,
    /// The records of one partition.
    Data(u32),
    /// Hinted-handoff records held for one partition.
    Hints(u32),
}

/// How durable a write must be before [`Storage::write`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Synced to disk before `write` returns; survives a crash.
    #[default]
    Sync,
    /// Visible to reads at once, but may be lost by a crash until the next
    /// [`Storage::sync`] or `Sync` write. A crash never loses a buffered
    /// write while keeping a later one (engines persist in order).
    Buffered,
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOp {
    pub space: Space,
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// Puts and deletes applied atomically by [`Storage::write`], in order: a
/// later operation on the same key wins.
#[derive(Default, Clone, Debug)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp {
            space,
            key,
            value: Some(value),
        });
    }

    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.ops.push(WriteOp {
            space,
            key,
            value: None,
        });
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations in the order they were added.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

/// How a data directory is opened.
#[derive(Clone, Debug)]
pub struct DataDirOptions {
    pub log: LogOptions,
    /// Memory for redb's cache of the file's pages (reads and writes);
    /// pages beyond it are read from the file (the OS page cache).
    pub engine_cache_bytes: usize,
}

/// The default of [`DataDirOptions::engine_cache_bytes`]: 256 MiB (redb's
/// own default is 1 GiB).
pub const DEFAULT_ENGINE_CACHE_BYTES: usize = 256 << 20;

impl Default for DataDirOptions {
    fn default() -> Self {
        DataDirOptions {
            log: LogOptions::default(),
            engine_cache_bytes: DEFAULT_ENGINE_CACHE_BYTES,
        }
    }
}

/// The storage of a node's data directory: the redb file `ringkv.redb`
/// behind the write-ahead log in `wal/`. Replays the log first, so this is
/// also how tools and tests read a stopped (or killed) node's data.
pub fn open_data_dir(dir: &Path, options: DataDirOptions) -> Result<LoggedStorage, StorageError> {
    let engine =
        RedbStorage::open_with_cache(&dir.join("ringkv.redb"), options.engine_cache_bytes)?;
    let log = FsLogDir::new(&dir.join("wal"))
        .map_err(|e| StorageError::io("creating the write-ahead log directory", e))?;
    LoggedStorage::open(Arc::new(engine), Box::new(log), options.log)
}

/// One record returned by [`Storage::scan`]: (user key, value).
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A local key-value engine. Implementations are shared between threads.
pub trait Storage: Send + Sync + 'static {
    /// The value stored under `key` in `space`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies the whole batch atomically (all or nothing, also across a
    /// crash). With [`Durability::Sync`] the batch, and every earlier
    /// write, is on disk when this returns `Ok`.
    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError>;

    /// Like [`Storage::write`], for entries already keyed as the engine
    /// keys them ([`record::encode_key`]; `None` deletes): how a memtable
    /// flush reaches the engine without first copying every key and value
    /// into a [`WriteBatch`]. A key that does not decode is an error and
    /// nothing is written.
    fn write_engine_entries(
        &self,
        entries: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        for (engine_key, value) in entries {
            let (space, key) = record::decode_key(engine_key)
                .ok_or_else(|| StorageError::not_an_engine_key(engine_key))?;
            match value {
                Some(value) => batch.put(space, key.to_vec(), value.to_vec()),
                None => batch.delete(space, key.to_vec()),
            }
        }
        self.write(&batch, durability)
    }

    /// Makes every earlier [`Durability::Buffered`] write durable.
    fn sync(&self) -> Result<(), StorageError>;

    /// Whether a `write` now could wait (for room in a full memtable, or
    /// behind a sync holding the log). A hint for callers that must not
    /// block, such as an event loop applying writes itself: they hand the
    /// write to a thread that may wait instead. `false` promises nothing.
    fn write_may_wait(&self) -> bool {
        false
    }

    /// Makes the engine usable again if an I/O error left it refusing
    /// every operation (redb does, until reopened): reopens it as of its
    /// last durable commit, as a restart would. Does nothing otherwise.
    fn reopen_if_failed(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Records of one space in key order with key > `after` (`None` = from
    /// the start), at most `limit` of them. Pass the last key returned as
    /// `after` to read the next page.
    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError>;
}

/// Errors of the storage boundary. `Corruption` is fatal for the node: the
/// data on disk cannot be trusted. The others are operating errors of one
/// call.
///
/// `Clone` so that one failed commit can be reported to every job of a
/// group commit.
#[derive(Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error while {operation}: {source}")]
    Io {
        operation: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("storage engine error: {message}")]
    Engine { message: String },
    #[error("corrupted record in {space:?} at key {}: {reason}", Hex(key))]
    Corruption {
        space: Space,
        key: Vec<u8>,
        reason: String,
    },
    /// The storage, or the group committer in front of it, stopped before
    /// the operation completed: its outcome is unknown.
    #[error("storage closed before the operation completed")]
    Closed,
}

impl StorageError {
    pub fn io(operation: &'static str, source: std::io::Error) -> Self {
        StorageError::Io {
            operation,
            source: Arc::new(source),
        }
    }

    /// An entry given to [`Storage::write_engine_entries`] whose key is not
    /// one [`record::encode_key`] makes.
    pub fn not_an_engine_key(engine_key: &[u8]) -> Self {
        StorageError::Engine {
            message: format!("not an engine key: {}", Hex(engine_key)),
        }
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { operation, source } => f
                .debug_struct("Io")
                .field("operation", operation)
                .field("source", source)
                .finish(),
            StorageError::Engine { message } => {
                f.debug_struct("Engine").field("message", message).finish()
            }
            StorageError::Corruption { space, key, reason } => f
                .debug_struct("Corruption")
                .field("space", space)
                .field("key", &Hex(key))
                .field("reason", reason)
                .finish(),
            StorageError::Closed => f.write_str("Closed"),
        }
    }
}

/// Prints bytes as hex, truncated after [`Hex::MAX_BYTES`] bytes.
struct Hex<'a>(&'a [u8]);

impl Hex<'_> {
    const MAX_BYTES: usize = 32;
}

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for byte in self.0.iter().take(Self::MAX_BYTES) {
            write!(f, "{byte:02x}")?;
        }
        if self.0.len() > Self::MAX_BYTES {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_error_prints_key_as_truncated_hex() {
        let error = StorageError::Corruption {
            space: Space::Data(7),
            key: vec![0xab; 40],
            reason: "checksum mismatch".to_string(),
        };
        let expected_key = format!("0x{}…(40 bytes)", "ab".repeat(32));
        let display = error.to_string();
        assert!(display.contains(&expected_key), "{display}");
        assert!(display.contains("Data(7)"), "{display}");
        let debug = format!("{error:?}");
        assert!(debug.contains(&expected_key), "{debug}");
        assert!(!debug.contains("171"), "key printed as decimal: {debug}");
    }

    #[test]
    fn write_batch_keeps_operations_in_order() {
        let mut batch = WriteBatch::new();
        assert!(batch.is_empty());
        batch.put(Space::Meta, b"k".to_vec(), b"v".to_vec());
        batch.delete(Space::Meta, b"k".to_vec());
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.ops()[0].value.as_deref(), Some(&b"v"[..]));
        assert_eq!(batch.ops()[1].value, None);
        batch.clear();
        assert!(batch.is_empty());
    }
}
