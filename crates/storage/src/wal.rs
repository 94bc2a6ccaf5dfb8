//! [`LoggedStorage`]: a write-ahead log and an in-memory table in front of
//! an engine, so that a durable write costs one small append and one
//! `fdatasync`, and the engine sees big, rare commits.
//!
//! A write is appended to the newest log file (and, for `Sync`, the log is
//! synced; `Buffered` records wait in a small in-memory buffer until the
//! next sync, so they cost no system call: like the engine's unsynced
//! pages, a crash may lose them), then applied to the *active memtable*, an ordered map that
//! reads consult before the engine. A background *flusher* thread freezes
//! the active memtable (it becomes the *immutable* one, still read) at the
//! same moment as it starts a new log file, writes it to the engine in one
//! durable commit, then drops it and removes the log files it covered.
//! A redb `Immediate` commit rewrites and syncs a copy-on-write path of
//! 4 KiB pages per changed leaf, twice (data, then header); a flush pays
//! that once for seconds of writes, and repeated writes of a hot key
//! collapse into one.
//!
//! Invariants that make replay correct:
//! - a write reaches the log before any reader can see it, and the log's
//!   order is the order writes are applied in (one lock around both);
//! - a `Sync` write becomes visible only once the log is synced, so no
//!   reader (read repair, a replica answering a GET) ever spreads a write
//!   that a crash could still take back from this node;
//! - the engine is written only by flushes (and by replay at open), each
//!   covering exactly the log files older than the one started at the
//!   freeze, so its durable image is always "everything up to the end of
//!   some log file";
//! - log records are absolute (a put carries the whole value), so replaying
//!   a log over an image that already holds some of its records ends in the
//!   same state;
//! - a log file is removed only after the flush that covered it is durable,
//!   oldest first, each removal synced.
//!
//! At open, every log file is replayed in order into the engine, the engine
//! is synced, and the files are removed. Replay of a file stops at its first
//! frame that does not check out: in the newest file that is the end of
//! what was written (a write cut short by the crash, never acknowledged as
//! synced, or old bytes of reused space); in an older file it must come
//! right after a *seal*, the empty record written and synced when the file
//! was closed for the next one, else the file is corrupt and the open fails.
//!
//! Reused files: appending to a file grows it, and ext4's `fdatasync` then
//! commits the file's new size and blocks through the journal as well as
//! the data: measured here, about twice as slow as overwriting blocks a
//! file already has (the reason PostgreSQL zero-fills and recycles WAL
//! segments and RocksDB has `recycle_log_file_num`). So [`FsLogDir`] keeps
//! up to [`SPARE_LOG_FILES`] removed files as spares (and zero-fills that
//! many at first start), and a new generation takes a spare's place and
//! overwrites it from the start. Old records left in it do not replay:
//! every checksum is seeded with the file's generation, and a new
//! generation is newer than every log file and spare (spares are named by
//! the generation they last had), so it is never one whose records remain.
//!
//! Limits: the active memtable is frozen at `flush_bytes` or after
//! `flush_interval`; writers wait (up to `stall_timeout`, then fail) while
//! it holds `max_memtable_bytes` and the previous flush has not finished.
//!
//! A failed append is undone (the file is truncated back); if that or a log
//! sync fails, the log may no longer match what readers see (after a failed
//! fsync, Linux may have dropped the pages: PostgreSQL crashes and replays
//! for this reason), so the storage refuses every later write until the
//! flusher has mended the log: it writes the memtables, which hold what
//! readers have seen, to the engine in one durable commit, removes every
//! log file and starts a new one. A write whose sync failed was told so,
//! but readers may have seen it (group commit writes, then syncs), and the
//! mend keeps it: its outcome was unknown, as with any failed write. A
//! failed flush is retried, after reopening an engine that an I/O error
//! stopped ([`Storage::reopen_if_failed`]); reads of the memtables keep
//! working meanwhile. So a full disk needs no restart: once there is room,
//! a retry takes writes again (flushes are retried at most 10 s apart;
//! redb is reopened at most 30 s apart, since each reopen repairs it).
//!
//! The log's files live behind [`LogDir`]: [`FsLogDir`] on disk,
//! [`MemoryLogDir`] in memory with a crash model, for tests.
//!
//! Record: `u32 BE payload length ‖ u64 BE xxh3-64(payload, seed =
//! generation) ‖ payload`; payload: `u8 version (2) ‖ u32 BE op count ‖
//! ops`; op: `u32 BE engine key length ‖ engine key (record::encode_key) ‖
//! u8 1 put / 0 delete ‖ (put) u32 BE value length ‖ value`. A record with
//! no ops is a seal.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::record::{decode_key, encode_key, space_range};
use crate::{Durability, KeyValue, Space, Storage, StorageError, WriteBatch};

const LOG_FORMAT_VERSION: u8 = 2;
const FRAME_HEADER_BYTES: usize = 4 + 8;
/// Ops per engine commit while replaying.
const REPLAY_BATCH_OPS: usize = 4096;
/// Memory charged per memtable entry beyond its key and value.
const ENTRY_OVERHEAD_BYTES: u64 = 64;
/// Buffered records kept in memory before they are written to the file.
const LOG_BUFFER_BYTES: usize = 256 << 10;
/// Wait between attempts after a failed flush.
const FLUSH_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between retries of a flush that keeps failing.
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(10);
/// Removed log files [`FsLogDir`] keeps for reuse.
pub const SPARE_LOG_FILES: usize = 2;
/// Size of each spare [`FsLogDir`] zero-fills when it has none.
const SPARE_LOG_BYTES: usize = 4 << 20;

/// The files of one log, numbered by generation. Appends go to one file at
/// a time; a new generation is created at every flush.
pub trait LogDir: Send + 'static {
    /// The generations present, oldest first.
    fn generations(&self) -> io::Result<Vec<u64>>;
    /// The file's bytes: what was appended, then possibly old bytes of
    /// reused space.
    fn read(&self, generation: u64) -> io::Result<Vec<u8>>;
    /// Creates a file to append to from its start; it may reuse the space
    /// of a removed file, old bytes included. It exists across a crash
    /// once this returns.
    fn create(&mut self, generation: u64) -> io::Result<()>;
    /// Writes `bytes` after those appended since `create`. Only the file
    /// created last is written to (appended, truncated, synced).
    fn append(&mut self, generation: u64, bytes: &[u8]) -> io::Result<()>;
    /// Cuts the file back to `len` bytes (undoes a failed append).
    fn truncate(&mut self, generation: u64, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable.
    fn sync(&mut self, generation: u64) -> io::Result<()>;
    /// Removes the file; it stays removed across a crash once this returns.
    /// Its space may be kept for reuse by a later `create`.
    fn remove(&mut self, generation: u64) -> io::Result<()>;
    /// The newest generation whose space is kept for reuse, if any. A new
    /// generation must be newer, or old records in the reused space could
    /// check out as its own.
    fn newest_spare(&self) -> Option<u64>;
}

/// When memtables are flushed to the engine, and how much they may hold.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Longest time a write stays only in the log and the memtable.
    pub flush_interval: Duration,
    /// The active memtable is frozen and flushed once it holds this much.
    pub flush_bytes: u64,
    /// Writers wait while the active memtable holds this much.
    pub max_memtable_bytes: u64,
    /// Longest such wait before a write fails.
    pub stall_timeout: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            flush_interval: Duration::from_secs(5),
            flush_bytes: 16 << 20,
            max_memtable_bytes: 64 << 20,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// What replay found at open, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub files: usize,
    /// Records replayed, seals not counted.
    pub records: u64,
    /// Bytes after the last good record of the newest file: a record cut
    /// short by the crash, or old bytes of reused space.
    pub tail_bytes: u64,
}

/// Engine key → value (`None`: deleted) of the writes not yet flushed.
type Memtable = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct Memtables {
    active: Memtable,
    /// Frozen, being flushed; read after `active`.
    immutable: Option<Arc<Memtable>>,
}

impl Memtables {
    fn get(&self, engine_key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.active
            .get(engine_key)
            .or_else(|| self.immutable.as_ref()?.get(engine_key))
    }
}

struct Log {
    dir: Box<dyn LogDir>,
    generation: u64,
    /// Bytes written to the current file.
    bytes: u64,
    /// Records of `Buffered` writes not yet written to the file: written
    /// out (one system call) by the next `Sync` write, `sync()`, flush, or
    /// once `LOG_BUFFER_BYTES` are waiting.
    buffer: Vec<u8>,
    /// Appended since the last log sync.
    unsynced: bool,
    /// Older generations, to be removed once a flush covers them.
    retired: Vec<u64>,
    /// Memory charged to the active memtable.
    active_bytes: u64,
    last_flush: Instant,
    /// Set when the log and the memtable may disagree: every write fails.
    failed: Option<StorageError>,
    stop: Stop,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Flush everything, then stop (a clean close).
    Close,
    /// Stop at once, as a crash would (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Halt,
}

impl Log {
    /// Writes the buffered records to the file. If that fails, buffered
    /// writes that readers already see may be lost: stop taking writes.
    fn write_out(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.dir.append(self.generation, &self.buffer) {
            let error = log_error("appending to the log", error);
            self.failed = Some(error.clone());
            return Err(error);
        }
        self.bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Makes every record appended so far durable.
    fn sync_file(&mut self) -> Result<(), StorageError> {
        self.write_out()?;
        if self.unsynced {
            if let Err(error) = self.dir.sync(self.generation) {
                let error = log_error("syncing the log", error);
                self.failed = Some(error.clone());
                return Err(error);
            }
            self.unsynced = false;
        }
        Ok(())
    }
}

struct Shared {
    inner: Arc<dyn Storage>,
    options: LogOptions,
    log: Mutex<Log>,
    tables: RwLock<Memtables>,
    /// Wakes the flusher (work to do, or stop).
    work: Condvar,
    /// Wakes writers waiting for memtable room.
    room: Condvar,
    /// One flush at a time (the flusher thread, or `flush` and close).
    flushing: Mutex<()>,
}

/// A [`Storage`] that logs every write and keeps it in memory until a
/// background flush writes it to `inner`.
pub struct LoggedStorage {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    replay: ReplayReport,
}

fn log_error(operation: &'static str, source: io::Error) -> StorageError {
    StorageError::io(operation, source)
}

impl LoggedStorage {
    /// Replays whatever `dir` holds into `inner`, makes it durable, starts
    /// a new log file and the flusher thread.
    pub fn open(
        inner: Arc<dyn Storage>,
        mut dir: Box<dyn LogDir>,
        options: LogOptions,
    ) -> Result<Self, StorageError> {
        let generations = dir
            .generations()
            .map_err(|e| log_error("listing the log files", e))?;
        let mut replay = ReplayReport::default();
        for (index, &generation) in generations.iter().enumerate() {
            let bytes = dir
                .read(generation)
                .map_err(|e| log_error("reading a log file", e))?;
            let newest = index + 1 == generations.len();
            replay_file(inner.as_ref(), generation, &bytes, newest, &mut replay)?;
            replay.files += 1;
        }
        inner.sync()?;
        // Removed before the next file exists, so that a crash in between
        // never leaves an unsealed file behind a newer one.
        for &old in &generations {
            dir.remove(old)
                .map_err(|e| log_error("removing a replayed log file", e))?;
        }
        let generation = generations
            .last()
            .copied()
            .max(dir.newest_spare())
            .map_or(1, |g| g + 1);
        dir.create(generation)
            .map_err(|e| log_error("creating a log file", e))?;
        let shared = Arc::new(Shared {
            inner,
            options,
            log: Mutex::new(Log {
                dir,
                generation,
                bytes: 0,
                buffer: Vec::new(),
                unsynced: false,
                retired: Vec::new(),
                active_bytes: 0,
                last_flush: Instant::now(),
                failed: None,
                stop: Stop::Running,
            }),
            tables: RwLock::new(Memtables::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            flushing: Mutex::new(()),
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("ringkv-flusher".to_string())
                .spawn(move || shared.run_flusher())
                .map_err(|e| log_error("starting the flusher thread", e))?
        };
        Ok(LoggedStorage {
            shared,
            flusher: Some(flusher),
            replay,
        })
    }

    /// What the open replayed.
    pub fn replay_report(&self) -> ReplayReport {
        self.replay
    }

    /// [`Storage::write`], before the flusher is told of a failure.
    fn write_logged(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        if batch.is_empty() {
            return match durability {
                Durability::Sync => self.sync(),
                Durability::Buffered => Ok(()),
            };
        }
        let shared = &*self.shared;
        let mut record = encode_record(batch);
        let mut log = shared.lock_log();
        let stalled = Instant::now();
        while log.active_bytes >= shared.options.max_memtable_bytes && log.failed.is_none() {
            let waited = stalled.elapsed();
            if waited >= shared.options.stall_timeout {
                return Err(StorageError::Engine {
                    message: format!(
                        "write stalled for {} ms: the memtable is full and flushing to the engine is behind",
                        waited.as_millis()
                    ),
                });
            }
            shared.work.notify_all();
            log = shared
                .room
                .wait_timeout(log, shared.options.stall_timeout - waited)
                .expect("write-ahead log lock poisoned")
                .0;
        }
        if let Some(error) = &log.failed {
            return Err(error.clone());
        }
        stamp_record(&mut record, log.generation);
        match durability {
            Durability::Sync if log.buffer.is_empty() => {
                let generation = log.generation;
                if let Err(error) = log.dir.append(generation, &record) {
                    let error = log_error("appending to the log", error);
                    // Cut the partial record off, or later records would
                    // sit behind it and be dropped by replay.
                    let len = log.bytes;
                    if log.dir.truncate(generation, len).is_err() {
                        log.failed = Some(error.clone());
                    }
                    return Err(error);
                }
                log.bytes += record.len() as u64;
                log.unsynced = true;
                log.sync_file()?;
            }
            Durability::Sync => {
                log.buffer.extend_from_slice(&record);
                log.unsynced = true;
                log.sync_file()?;
            }
            Durability::Buffered => {
                log.buffer.extend_from_slice(&record);
                log.unsynced = true;
                if log.buffer.len() >= LOG_BUFFER_BYTES {
                    log.write_out()?;
                }
            }
        }
        let mut added = 0;
        {
            let mut tables = shared.tables.write().expect("memtable lock poisoned");
            for op in batch.ops() {
                added += (op.key.len() + op.value.as_ref().map_or(0, Vec::len)) as u64
                    + ENTRY_OVERHEAD_BYTES;
                tables
                    .active
                    .insert(encode_key(op.space, &op.key), op.value.clone());
            }
        }
        log.active_bytes += added;
        if log.active_bytes >= shared.options.flush_bytes {
            shared.work.notify_all();
        }
        Ok(())
    }

    /// Writes every memtable to the engine now and removes the log files
    /// this covers.
    pub fn flush(&self) -> Result<(), StorageError> {
        // A frozen memtable left by an earlier failure goes first.
        self.shared.flush_once()?;
        self.shared.flush_once()
    }

    /// Stops as a crash would: no final flush, nothing more written.
    #[cfg(test)]
    fn halt(mut self) {
        self.shared.lock_log().stop = Stop::Halt;
        self.shared.work.notify_all();
        if let Some(flusher) = self.flusher.take() {
            flusher.join().expect("flusher thread panicked");
        }
    }
}

impl Drop for LoggedStorage {
    /// A clean close flushes everything: the engine's file alone then holds
    /// all data and the log is empty.
    fn drop(&mut self) {
        let Some(flusher) = self.flusher.take() else {
            return;
        };
        self.shared.lock_log().stop = Stop::Close;
        self.shared.work.notify_all();
        if flusher.join().is_err() {
            tracing::error!("the flusher thread panicked");
        }
    }
}

impl Shared {
    fn lock_log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("write-ahead log lock poisoned")
    }

    fn run_flusher(&self) {
        let mut retry = FLUSH_RETRY;
        loop {
            let mut log = self.lock_log();
            loop {
                match log.stop {
                    Stop::Halt => return,
                    Stop::Close => {
                        drop(log);
                        let clean = log_flush_failure(self.flush_once())
                            && log_flush_failure(self.flush_once());
                        if !clean {
                            tracing::warn!(
                                "final flush failed; the log will be replayed at the next open"
                            );
                        }
                        return;
                    }
                    Stop::Running => {}
                }
                let pending = self
                    .tables
                    .read()
                    .expect("memtable lock poisoned")
                    .immutable
                    .is_some();
                let since = log.last_flush.elapsed();
                let full = self
                    .options
                    .flush_bytes
                    .min(self.options.max_memtable_bytes);
                if pending
                    || log.failed.is_some()
                    || log.active_bytes >= full
                    || (log.active_bytes > 0 && since >= self.options.flush_interval)
                {
                    break;
                }
                let wait = flusher_wait(log.active_bytes, since, self.options.flush_interval);
                log = self
                    .work
                    .wait_timeout(log, wait)
                    .expect("write-ahead log lock poisoned")
                    .0;
            }
            drop(log);
            if log_flush_failure(self.flush_once()) {
                retry = FLUSH_RETRY;
            } else {
                // An engine that keeps failing (a full disk) is retried,
                // and logged, less and less often, unless writers wait for
                // room (then every FLUSH_RETRY); a stop ends the wait.
                let started = Instant::now();
                let mut log = self.lock_log();
                while log.stop == Stop::Running {
                    let room_wanted = log.active_bytes >= self.options.max_memtable_bytes;
                    let until = started + if room_wanted { FLUSH_RETRY } else { retry };
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    log = self
                        .work
                        .wait_timeout(log, until - now)
                        .expect("write-ahead log lock poisoned")
                        .0;
                }
                retry = (retry * 2).min(FLUSH_RETRY_MAX);
            }
        }
    }

    /// Freezes the active memtable (unless one is already frozen), writes
    /// the frozen one to the engine durably, then drops it and removes the
    /// log files it covered.
    fn flush_once(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.flushing.lock().expect("flush lock poisoned");
        let started = Instant::now();
        // An engine that an I/O error stopped (a full disk) is reopened
        // before it is written to again.
        self.inner.reopen_if_failed()?;
        let frozen = {
            // Writers insert into the memtable while holding the log lock,
            // so holding it keeps the memtable still; readers are kept out
            // only for the swap itself, never during the log sync.
            let mut log = self.lock_log();
            if log.failed.is_some() {
                drop(log);
                return self.rebuild_log();
            }
            let (pending, empty) = {
                let tables = self.tables.read().expect("memtable lock poisoned");
                (tables.immutable.clone(), tables.active.is_empty())
            };
            match pending {
                Some(frozen) => frozen,
                None if empty => {
                    log.last_flush = Instant::now();
                    return Ok(());
                }
                None => {
                    // The frozen memtable holds exactly the records of the
                    // log files up to this one: close it and start the next.
                    // Sealed first: replay accepts a file that ends before a
                    // newer one only at a seal. Should creating the next
                    // file fail, writes go on after the seal in this one
                    // (replay reads past a seal) and a later flush seals
                    // it again.
                    let generation = log.generation;
                    let mut seal = encode_record(&WriteBatch::new());
                    stamp_record(&mut seal, generation);
                    log.buffer.extend_from_slice(&seal);
                    log.unsynced = true;
                    log.sync_file()?;
                    log.dir
                        .create(generation + 1)
                        .map_err(|e| log_error("creating a log file", e))?;
                    log.retired.push(generation);
                    log.generation = generation + 1;
                    log.bytes = 0;
                    log.active_bytes = 0;
                    let mut tables = self.tables.write().expect("memtable lock poisoned");
                    let frozen = Arc::new(std::mem::take(&mut tables.active));
                    tables.immutable = Some(Arc::clone(&frozen));
                    frozen
                }
            }
        };
        let sealed = Instant::now();
        write_memtable(&*self.inner, &frozen)?;
        tracing::debug!(
            entries = frozen.len(),
            seal_ms = (sealed - started).as_secs_f64() * 1000.0,
            engine_ms = sealed.elapsed().as_secs_f64() * 1000.0,
            "flushed the memtable to the engine"
        );
        let mut log = self.lock_log();
        self.tables
            .write()
            .expect("memtable lock poisoned")
            .immutable = None;
        log.last_flush = Instant::now();
        self.room.notify_all();
        while let Some(&oldest) = log.retired.first() {
            log.dir
                .remove(oldest)
                .map_err(|e| log_error("removing a flushed log file", e))?;
            log.retired.remove(0);
        }
        Ok(())
    }

    /// Mends a failed log (see the module documentation); called by
    /// `flush_once`, under its lock. What the memtables hold is what
    /// readers have seen, while the log files may not hold it (a failed
    /// sync may have lost pages; an append that could not be undone left
    /// a torn record). So the memtables go to the engine in one durable
    /// commit, every log file is removed and a new one started: what a
    /// restart would do after replaying the files, except that buffered
    /// writes the files never got are kept.
    fn rebuild_log(&self) -> Result<(), StorageError> {
        let everything = {
            // The memtables stay still: writes are refused while the log
            // has failed, and only this clears that.
            let _log = self.lock_log();
            let mut tables = self.tables.write().expect("memtable lock poisoned");
            let mut merged = tables
                .immutable
                .take()
                .map(Arc::unwrap_or_clone)
                .unwrap_or_default();
            // The active memtable is newer: its entries win.
            merged.append(&mut tables.active);
            let merged = Arc::new(merged);
            tables.immutable = Some(Arc::clone(&merged));
            merged
        };
        write_memtable(&*self.inner, &everything)?;
        let mut log = self.lock_log();
        // Removed before the next file exists, as at open: a crash in
        // between leaves no file without its seal behind a newer one.
        let mut newest = log.generation.max(log.dir.newest_spare().unwrap_or(0));
        let generations = log
            .dir
            .generations()
            .map_err(|e| log_error("listing the log files", e))?;
        for generation in generations {
            newest = newest.max(generation);
            log.dir
                .remove(generation)
                .map_err(|e| log_error("removing a log file the engine now covers", e))?;
        }
        log.retired.clear();
        log.dir
            .create(newest + 1)
            .map_err(|e| log_error("creating a log file", e))?;
        log.generation = newest + 1;
        log.bytes = 0;
        log.buffer.clear();
        log.unsynced = false;
        log.active_bytes = 0;
        log.last_flush = Instant::now();
        let failure = log.failed.take();
        self.tables
            .write()
            .expect("memtable lock poisoned")
            .immutable = None;
        self.room.notify_all();
        if let Some(failure) = failure {
            tracing::info!(%failure, "the write-ahead log had failed: its writes are in the engine now, and a new log file takes writes again");
        }
        Ok(())
    }
}

/// Writes a memtable to the engine in one durable commit, straight from
/// its entries.
fn write_memtable(engine: &dyn Storage, memtable: &Memtable) -> Result<(), StorageError> {
    engine.write_engine_entries(
        &mut memtable
            .iter()
            .map(|(engine_key, value)| (engine_key.as_slice(), value.as_deref())),
        Durability::Sync,
    )
}

/// Logs a failed flush; `true` if it succeeded.
/// How long the flusher sleeps when no flush is due: until the active
/// log's bytes are `interval` old, and with an empty log a whole interval
/// (a write that comes meanwhile is then flushed when the wait ends, at
/// most an interval after it). Never less than a millisecond.
fn flusher_wait(active_bytes: u64, since_flush: Duration, interval: Duration) -> Duration {
    if active_bytes == 0 {
        return interval.max(Duration::from_millis(1));
    }
    interval
        .saturating_sub(since_flush)
        .max(Duration::from_millis(1))
}

fn log_flush_failure(result: Result<(), StorageError>) -> bool {
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "flushing the memtable to the engine failed; will retry");
            false
        }
    }
}

impl Storage for LoggedStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let engine_key = encode_key(space, key);
        if let Some(value) = self
            .shared
            .tables
            .read()
            .expect("memtable lock poisoned")
            .get(&engine_key)
        {
            return Ok(value.clone());
        }
        self.shared.inner.get(space, key)
    }

    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let result = self.write_logged(batch, durability);
        if result.is_err() {
            // The log may have failed: the flusher mends it.
            self.shared.work.notify_all();
        }
        result
    }

    fn write_may_wait(&self) -> bool {
        match self.shared.log.try_lock() {
            Ok(log) => log.active_bytes >= self.shared.options.max_memtable_bytes,
            Err(_) => true, // held by a writer, a sync or the flusher
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut log = self.shared.lock_log();
        if let Some(error) = &log.failed {
            return Err(error.clone());
        }
        let result = log.sync_file();
        if result.is_err() {
            self.shared.work.notify_all();
        }
        result
    }

    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let mut found = Vec::new();
        let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
        while found.len() < limit {
            let want = limit - found.len();
            let engine = self.shared.inner.scan(space, cursor.as_deref(), want)?;
            // Keys up to `bound` (inclusive; `None`: the end of the space)
            // are complete in both sources below.
            let mut bound = (engine.len() == want).then(|| engine[want - 1].0.clone());
            let overlay = self.memtable_range(space, cursor.as_deref(), bound.as_deref(), want);
            if overlay.len() == want {
                let last = &overlay[want - 1].0;
                if bound.as_ref().is_none_or(|b| last < b) {
                    bound = Some(last.clone());
                }
            }
            let within = |key: &Vec<u8>| bound.as_ref().is_none_or(|b| key <= b);
            let mut engine = engine.into_iter().filter(|(k, _)| within(k)).peekable();
            let mut overlay = overlay.into_iter().filter(|(k, _)| within(k)).peekable();
            loop {
                let order = match (engine.peek(), overlay.peek()) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some((e, _)), Some((o, _))) => e.cmp(o),
                };
                if order == Ordering::Less {
                    found.push(engine.next().expect("peeked"));
                    continue;
                }
                if order == Ordering::Equal {
                    engine.next(); // the memtable holds the newer value
                }
                if let (key, Some(value)) = overlay.next().expect("peeked") {
                    found.push((key, value));
                }
            }
            match bound {
                Some(bound) => cursor = Some(bound),
                None => break,
            }
        }
        found.truncate(limit);
        Ok(found)
    }
}

impl LoggedStorage {
    /// Up to `limit` memtable entries of `space` with user keys in
    /// (`after`, `until`], newest value of each, deletions included.
    fn memtable_range(
        &self,
        space: Space,
        after: Option<&[u8]>,
        until: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let range = space_range(space);
        let start = match after {
            Some(after) => Bound::Excluded(encode_key(space, after)),
            None => Bound::Included(range.start),
        };
        let end = match until {
            Some(until) => Bound::Included(encode_key(space, until)),
            None => Bound::Excluded(range.end),
        };
        let tables = self.shared.tables.read().expect("memtable lock poisoned");
        let mut merged: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
        if let Some(immutable) = &tables.immutable {
            for (key, value) in immutable.range((start.clone(), end.clone())).take(limit) {
                merged.insert(key, value);
            }
        }
        for (key, value) in tables.active.range((start, end)).take(limit) {
            merged.insert(key, value);
        }
        merged
            .into_iter()
            .take(limit)
            .map(|(key, value)| {
                let (_, user_key) = decode_key(key).expect("memtable keys are engine keys");
                (user_key.to_vec(), value.clone())
            })
            .collect()
    }
}

/// A record of `batch` whose header is left for [`stamp_record`].
fn encode_record(batch: &WriteBatch) -> Vec<u8> {
    let size: usize = batch
        .ops()
        .iter()
        .map(|op| 4 + 5 + op.key.len() + 1 + op.value.as_ref().map_or(0, |v| 4 + v.len()))
        .sum();
    let mut record = Vec::with_capacity(FRAME_HEADER_BYTES + 5 + size);
    record.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    record.push(LOG_FORMAT_VERSION);
    record.extend_from_slice(&(batch.len() as u32).to_be_bytes());
    for op in batch.ops() {
        let engine_key = encode_key(op.space, &op.key);
        record.extend_from_slice(&(engine_key.len() as u32).to_be_bytes());
        record.extend_from_slice(&engine_key);
        match &op.value {
            Some(value) => {
                record.push(1);
                record.extend_from_slice(&(value.len() as u32).to_be_bytes());
                record.extend_from_slice(value);
            }
            None => record.push(0),
        }
    }
    record
}

/// Fills in the header of an [`encode_record`] record for the file of
/// `generation`.
fn stamp_record(record: &mut [u8], generation: u64) {
    let (header, payload) = record.split_at_mut(FRAME_HEADER_BYTES);
    let checksum = xxhash_rust::xxh3::xxh3_64_with_seed(payload, generation);
    header[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    header[4..].copy_from_slice(&checksum.to_be_bytes());
}

/// Reads fixed-width fields from a payload; `None` when it runs out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

/// The batch in a payload whose checksum matched; `None` if it is
/// malformed anyway (a bug or a collision, treated as corruption).
fn decode_payload(payload: &[u8]) -> Option<WriteBatch> {
    let mut reader = Reader { bytes: payload };
    if reader.u8()? != LOG_FORMAT_VERSION {
        return None;
    }
    let count = reader.u32()?;
    let mut batch = WriteBatch::new();
    for _ in 0..count {
        let key_len = reader.u32()? as usize;
        let (space, key) = decode_key(reader.take(key_len)?)?;
        match reader.u8()? {
            1 => {
                let value_len = reader.u32()? as usize;
                batch.put(space, key.to_vec(), reader.take(value_len)?.to_vec());
            }
            0 => batch.delete(space, key.to_vec()),
            _ => return None,
        }
    }
    reader.bytes.is_empty().then_some(batch)
}

fn replay_file(
    inner: &dyn Storage,
    generation: u64,
    bytes: &[u8],
    newest: bool,
    report: &mut ReplayReport,
) -> Result<(), StorageError> {
    let corruption = |offset: usize, reason: &str| StorageError::Corruption {
        space: Space::Meta,
        key: format!("write-ahead log {generation:016x} at byte {offset}").into_bytes(),
        reason: reason.to_string(),
    };
    let mut pending = WriteBatch::new();
    let mut offset = 0;
    // An older file always holds at least its seal.
    let mut sealed = false;
    loop {
        let rest = &bytes[offset..];
        let frame = (rest.len() >= FRAME_HEADER_BYTES)
            .then(|| {
                let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                let checksum = u64::from_be_bytes(rest[4..12].try_into().expect("8 bytes"));
                let payload = rest[FRAME_HEADER_BYTES..].get(..len)?;
                (xxhash_rust::xxh3::xxh3_64_with_seed(payload, generation) == checksum)
                    .then_some(payload)
            })
            .flatten();
        let Some(payload) = frame else {
            if newest {
                report.tail_bytes = rest.len() as u64;
            } else if !sealed {
                return Err(corruption(offset, "bad record in a complete log file"));
            }
            break;
        };
        let batch = decode_payload(payload)
            .ok_or_else(|| corruption(offset, "malformed record with a valid checksum"))?;
        sealed = batch.is_empty();
        for op in batch.ops() {
            match &op.value {
                Some(value) => pending.put(op.space, op.key.clone(), value.clone()),
                None => pending.delete(op.space, op.key.clone()),
            }
        }
        if pending.len() >= REPLAY_BATCH_OPS {
            inner.write(&pending, Durability::Buffered)?;
            pending.clear();
        }
        if !sealed {
            report.records += 1;
        }
        offset += FRAME_HEADER_BYTES + payload.len();
    }
    if !pending.is_empty() {
        inner.write(&pending, Durability::Buffered)?;
    }
    Ok(())
}

/// Log files in a directory: `<generation as 16 hex digits>.log`, and up
/// to [`SPARE_LOG_FILES`] spares: removed log files kept so that new ones
/// overwrite blocks the file system has already allocated (see the module
/// documentation), named `<generation they last had>.spare` (so that
/// generations stay unique across restarts), or `fresh-N.spare` when
/// zero-filled.
pub struct FsLogDir {
    path: PathBuf,
    /// The file appends go to, kept open, and where the next append goes.
    open: Option<(u64, File, u64)>,
    /// Spare files and the generation each last had.
    spares: Vec<(PathBuf, Option<u64>)>,
}

impl FsLogDir {
    /// Uses (and creates) the directory at `path`; zero-fills spares if it
    /// has none.
    pub fn new(path: &Path) -> io::Result<Self> {
        fs::create_dir_all(path)?;
        let mut spares = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".spare")) else {
                continue;
            };
            let generation = u64::from_str_radix(stem, 16).ok();
            spares.push((entry.path(), generation));
        }
        let mut dir = FsLogDir {
            path: path.to_path_buf(),
            open: None,
            spares,
        };
        if dir.spares.is_empty() {
            for number in 0..SPARE_LOG_FILES {
                let spare = dir.path.join(format!("fresh-{number}.spare"));
                match zero_fill(&spare, SPARE_LOG_BYTES) {
                    Ok(()) => dir.spares.push((spare, None)),
                    Err(error) => {
                        // Only slower syncs without it (a full disk, say).
                        tracing::warn!(%error, "could not prepare a spare log file");
                        let _ = fs::remove_file(&spare);
                        break;
                    }
                }
            }
            dir.sync_dir()?;
        }
        Ok(dir)
    }

    fn file_path(&self, generation: u64) -> PathBuf {
        self.path.join(format!("{generation:016x}.log"))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    /// The file of `generation`, which must be the one `create` opened
    /// last (the only one written to), and its append offset.
    fn file(&mut self, generation: u64) -> io::Result<(&File, &mut u64)> {
        match &mut self.open {
            Some((open, file, offset)) if *open == generation => Ok((file, offset)),
            _ => Err(io::Error::other(format!(
                "log file {generation:016x} is not the one being written"
            ))),
        }
    }
}

/// Creates a file of `len` zero bytes, synced.
fn zero_fill(path: &Path, len: usize) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(&vec![0; len])?;
    file.sync_all()
}

impl LogDir for FsLogDir {
    fn generations(&self) -> io::Result<Vec<u64>> {
        let mut generations = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            if stem.len() == 16
                && let Ok(generation) = u64::from_str_radix(stem, 16)
            {
                generations.push(generation);
            }
        }
        generations.sort_unstable();
        Ok(generations)
    }

    fn read(&self, generation: u64) -> io::Result<Vec<u8>> {
        fs::read(self.file_path(generation))
    }

    fn create(&mut self, generation: u64) -> io::Result<()> {
        let path = self.file_path(generation);
        let file = match self.spares.last() {
            Some((spare, _)) => {
                if path.try_exists()? {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("log file {} exists", path.display()),
                    ));
                }
                fs::rename(spare, &path)?;
                self.spares.pop();
                File::options().write(true).open(&path)?
            }
            None => File::options().write(true).create_new(true).open(&path)?,
        };
        self.sync_dir()?;
        self.open = Some((generation, file, 0));
        Ok(())
    }

    fn append(&mut self, generation: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (file, offset) = self.file(generation)?;
        file.write_all_at(bytes, *offset)?;
        *offset += bytes.len() as u64;
        Ok(())
    }

    fn truncate(&mut self, generation: u64, len: u64) -> io::Result<()> {
        let (file, offset) = self.file(generation)?;
        file.set_len(len)?;
        *offset = len;
        Ok(())
    }

    fn sync(&mut self, generation: u64) -> io::Result<()> {
        self.file(generation)?.0.sync_data()
    }

    fn remove(&mut self, generation: u64) -> io::Result<()> {
        if self.open.as_ref().map(|(g, _, _)| *g) == Some(generation) {
            self.open = None;
        }
        let path = self.file_path(generation);
        if self.spares.len() < SPARE_LOG_FILES {
            let spare = self.path.join(format!("{generation:016x}.spare"));
            fs::rename(&path, &spare)?;
            self.spares.push((spare, Some(generation)));
        } else {
            fs::remove_file(path)?;
        }
        self.sync_dir()
    }

    fn newest_spare(&self) -> Option<u64> {
        self.spares.iter().filter_map(|(_, g)| *g).max()
    }
}

#[derive(Default)]
struct MemoryFile {
    /// What a read returns: `written` appended bytes, then old bytes of
    /// the reused space, if any.
    bytes: Vec<u8>,
    written: usize,
    synced: usize,
    /// The bytes before this file's first append; a crash restores those
    /// that unsynced appends overwrote.
    old: Vec<u8>,
}

#[derive(Default)]
struct MemoryLogState {
    files: BTreeMap<u64, MemoryFile>,
    /// Removed files (generation, bytes), reused by `create` as
    /// [`FsLogDir`] does.
    spares: Vec<(u64, Vec<u8>)>,
    fail_appends: bool,
    fail_syncs: bool,
}

/// A [`LogDir`] in memory that models a disk: [`crash`](Self::crash)
/// drops what was appended but not synced, keeping `torn` bytes of it to
/// model a write cut short; removed files are reused, old bytes included,
/// as [`FsLogDir`] does. Clones share the same files.
#[derive(Clone, Default)]
pub struct MemoryLogDir {
    state: Arc<Mutex<MemoryLogState>>,
}

impl MemoryLogDir {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryLogState> {
        self.state.lock().expect("memory log lock poisoned")
    }

    /// Loses every unsynced byte except the first `torn` of each file.
    pub fn crash(&self, torn: usize) {
        for file in self.lock().files.values_mut() {
            let keep = (file.synced + torn).min(file.written);
            file.bytes.truncate(keep);
            if file.old.len() > keep {
                file.bytes.extend_from_slice(&file.old[keep..]);
            }
            file.written = keep;
            file.synced = keep;
            file.old = file.bytes.clone();
        }
    }

    /// While `on`, appends write half of their bytes and then fail.
    pub fn fail_appends(&self, on: bool) {
        self.lock().fail_appends = on;
    }

    /// While `on`, syncs fail and make nothing durable.
    pub fn fail_syncs(&self, on: bool) {
        self.lock().fail_syncs = on;
    }

    /// Bytes appended to all files (old bytes of reused space not counted).
    pub fn bytes(&self) -> usize {
        self.lock().files.values().map(|f| f.written).sum()
    }

    fn missing(generation: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no log file {generation:016x}"),
        )
    }
}

impl MemoryFile {
    fn write(&mut self, bytes: &[u8]) {
        let end = self.written + bytes.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[self.written..end].copy_from_slice(bytes);
        self.written = end;
    }
}

impl LogDir for MemoryLogDir {
    fn generations(&self) -> io::Result<Vec<u64>> {
        Ok(self.lock().files.keys().copied().collect())
    }

    fn read(&self, generation: u64) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let file = state
            .files
            .get(&generation)
            .ok_or_else(|| Self::missing(generation))?;
        Ok(file.bytes.clone())
    }

    fn create(&mut self, generation: u64) -> io::Result<()> {
        let mut state = self.lock();
        if state.files.contains_key(&generation) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("log file {generation:016x} exists"),
            ));
        }
        let old = state
            .spares
            .pop()
            .map(|(_, bytes)| bytes)
            .unwrap_or_default();
        state.files.insert(
            generation,
            MemoryFile {
                bytes: old.clone(),
                old,
                ..MemoryFile::default()
            },
        );
        Ok(())
    }

    fn append(&mut self, generation: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let failing = state.fail_appends;
        let file = state
            .files
            .get_mut(&generation)
            .ok_or_else(|| Self::missing(generation))?;
        if failing {
            file.write(&bytes[..bytes.len() / 2]);
            return Err(io::Error::other(
                "append failure injected by MemoryLogDir::fail_appends",
            ));
        }
        file.write(bytes);
        Ok(())
    }

    fn truncate(&mut self, generation: u64, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let file = state
            .files
            .get_mut(&generation)
            .ok_or_else(|| Self::missing(generation))?;
        let len = len as usize;
        file.bytes.truncate(len);
        file.old.truncate(len);
        file.written = file.written.min(len);
        file.synced = file.synced.min(len);
        Ok(())
    }

    fn sync(&mut self, generation: u64) -> io::Result<()> {
        let mut state = self.lock();
        if state.fail_syncs {
            return Err(io::Error::other(
                "sync failure injected by MemoryLogDir::fail_syncs",
            ));
        }
        let file = state
            .files
            .get_mut(&generation)
            .ok_or_else(|| Self::missing(generation))?;
        file.synced = file.written;
        Ok(())
    }

    fn remove(&mut self, generation: u64) -> io::Result<()> {
        let mut state = self.lock();
        let file = state
            .files
            .remove(&generation)
            .ok_or_else(|| Self::missing(generation))?;
        if state.spares.len() < SPARE_LOG_FILES {
            state.spares.push((generation, file.bytes));
        }
        Ok(())
    }

    fn newest_spare(&self) -> Option<u64> {
        self.lock().spares.iter().map(|(g, _)| *g).max()
    }
}

#[cfg(test)]
mod tests;
