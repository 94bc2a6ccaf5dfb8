use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::conformance;
use crate::{MemoryStorage, RedbStorage};

fn small_options() -> LogOptions {
    LogOptions {
        flush_interval: Duration::from_secs(3600),
        flush_bytes: 4096,
        ..LogOptions::default()
    }
}

fn open_memory(inner: &MemoryStorage, log: &MemoryLogDir, options: LogOptions) -> LoggedStorage {
    LoggedStorage::open(Arc::new(inner.clone()), Box::new(log.clone()), options).unwrap()
}

/// A logged storage with its log in real files under `path`.
fn open_files(path: &std::path::Path, inner: &MemoryStorage) -> LoggedStorage {
    let log = FsLogDir::new(path).unwrap();
    LoggedStorage::open(
        Arc::new(inner.clone()),
        Box::new(log),
        LogOptions::default(),
    )
    .unwrap()
}

fn put(storage: &dyn Storage, key: &[u8], value: &[u8], durability: Durability) {
    let mut batch = WriteBatch::new();
    batch.put(Space::Data(3), key.to_vec(), value.to_vec());
    storage.write(&batch, durability).unwrap();
}

fn get(storage: &dyn Storage, key: &[u8]) -> Option<Vec<u8>> {
    storage.get(Space::Data(3), key).unwrap()
}

fn assert_open_finds_corruption(log: MemoryLogDir) {
    let error = LoggedStorage::open(
        Arc::new(MemoryStorage::new()),
        Box::new(log),
        LogOptions::default(),
    )
    .err()
    .expect("open must fail");
    assert!(matches!(error, StorageError::Corruption { .. }), "{error}");
}

/// A log record of `batch` (a seal if empty) for the file of `generation`.
fn record(batch: &WriteBatch, generation: u64) -> Vec<u8> {
    let mut record = encode_record(batch);
    stamp_record(&mut record, generation);
    record
}

fn one_put(key: &[u8], value: &[u8]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.put(Space::Data(3), key.to_vec(), value.to_vec());
    batch
}

/// A logged storage on memory that `crash` replaces by a reopened one, as
/// a restarted process would: the engine and the log lose their unsynced
/// writes, then the log is replayed.
struct Restartable {
    inner: MemoryStorage,
    log: MemoryLogDir,
    current: Mutex<Option<LoggedStorage>>,
    options: LogOptions,
}

impl Restartable {
    fn new(options: LogOptions) -> Self {
        let (inner, log) = (MemoryStorage::new(), MemoryLogDir::new());
        let current = Mutex::new(Some(open_memory(&inner, &log, options.clone())));
        Restartable {
            inner,
            log,
            current,
            options,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&LoggedStorage) -> T) -> T {
        f(self.current.lock().unwrap().as_ref().unwrap())
    }

    /// Crashes, keeping `torn` unsynced bytes of each log file; returns
    /// what the replay found.
    fn crash(&self, torn: usize) -> ReplayReport {
        let mut current = self.current.lock().unwrap();
        // A crash runs no destructor: no final flush.
        current.take().unwrap().halt();
        self.inner.crash();
        self.log.crash(torn);
        let reopened = open_memory(&self.inner, &self.log, self.options.clone());
        let report = reopened.replay_report();
        *current = Some(reopened);
        report
    }
}

impl Storage for Restartable {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(|s| s.get(space, key))
    }
    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        self.with(|s| s.write(batch, durability))
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.with(|s| s.sync())
    }
    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.with(|s| s.scan(space, after, limit))
    }
}

#[test]
fn passes_the_conformance_suite() {
    let storage = open_memory(&MemoryStorage::new(), &MemoryLogDir::new(), small_options());
    conformance::run_all(&storage);
}

#[test]
fn keeps_the_crash_promises() {
    let storage = Restartable::new(small_options());
    conformance::crash_durability(&storage, &|| {
        storage.crash(0);
    });
    let storage = Restartable::new(small_options());
    conformance::crash_durability(&storage, &|| {
        storage.crash(7);
    });
}

#[test]
fn keeps_the_reopen_promises_on_disk() {
    let directory = tempfile::tempdir().unwrap();
    let open = || -> Box<dyn Storage> {
        let inner = RedbStorage::open(&directory.path().join("db.redb")).unwrap();
        let log = FsLogDir::new(&directory.path().join("wal")).unwrap();
        Box::new(LoggedStorage::open(Arc::new(inner), Box::new(log), small_options()).unwrap())
    };
    conformance::reopen_durability(&open);
}

#[test]
fn a_synced_write_is_only_in_the_log_until_a_flush() {
    let (inner, log) = (MemoryStorage::new(), MemoryLogDir::new());
    let storage = open_memory(&inner, &log, LogOptions::default());
    put(&storage, b"k", b"v", Durability::Sync);
    assert_eq!(get(&storage, b"k").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        inner.get_durable(Space::Data(3), b"k").unwrap(),
        None,
        "the engine commit is not durable: the log is"
    );
    assert!(log.bytes() > 0);
    // A clean close flushes: the engine alone holds everything.
    drop(storage);
    assert_eq!(
        inner.get_durable(Space::Data(3), b"k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(log.bytes(), 0, "a clean close leaves an empty log");
}

#[test]
fn replays_the_log_from_real_files_after_a_crash() {
    let directory = tempfile::tempdir().unwrap();
    let inner = MemoryStorage::new();
    let open = || open_files(directory.path(), &inner);
    let storage = open();
    for i in 0..200u32 {
        put(
            &storage,
            &i.to_be_bytes(),
            &[i as u8; 100],
            Durability::Sync,
        );
    }
    let mut batch = WriteBatch::new();
    batch.delete(Space::Data(3), 7u32.to_be_bytes().to_vec());
    batch.put(Space::Meta, b"m".to_vec(), b"meta".to_vec());
    storage.write(&batch, Durability::Sync).unwrap();
    storage.halt();
    inner.crash();

    let storage = open();
    let report = storage.replay_report();
    assert!(report.records > 0, "{report:?}");
    for i in 0..200u32 {
        let expected = (i != 7).then(|| vec![i as u8; 100]);
        assert_eq!(get(&storage, &i.to_be_bytes()), expected, "key {i}");
    }
    assert_eq!(
        storage.get(Space::Meta, b"m").unwrap().as_deref(),
        Some(&b"meta"[..])
    );
    // Replayed logs are removed once the engine holds them durably.
    drop(storage);
    let logs = FsLogDir::new(directory.path())
        .unwrap()
        .generations()
        .unwrap();
    assert_eq!(logs.len(), 1, "only the newest (empty) log file is left");
}

#[test]
fn a_torn_tail_is_dropped_and_the_rest_replayed() {
    let directory = tempfile::tempdir().unwrap();
    let inner = MemoryStorage::new();
    let open = || open_files(directory.path(), &inner);
    let storage = open();
    put(&storage, b"a", b"1", Durability::Sync);
    put(&storage, b"b", b"2", Durability::Sync);
    storage.halt();
    inner.crash();
    let newest = FsLogDir::new(directory.path())
        .unwrap()
        .generations()
        .unwrap();
    let path = directory
        .path()
        .join(format!("{:016x}.log", newest.last().unwrap()));
    let mut bytes = std::fs::read(&path).unwrap();
    // The file reuses zero-filled space: the second record was cut short
    // if its last bytes are still zeros.
    let end = 2 * record(&one_put(b"b", b"2"), 0).len();
    bytes[end - 3..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let storage = open();
    let report = storage.replay_report();
    assert_eq!(report.records, 1);
    assert!(report.tail_bytes > 0);
    assert_eq!(get(&storage, b"a").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&storage, b"b"), None);
    // Writing goes on in a fresh file; nothing hides behind the torn bytes.
    put(&storage, b"c", b"3", Durability::Sync);
    storage.halt();
    inner.crash();
    let storage = open();
    assert_eq!(get(&storage, b"c").as_deref(), Some(&b"3"[..]));
    assert_eq!(get(&storage, b"a").as_deref(), Some(&b"1"[..]));
}

#[test]
fn a_bad_record_in_an_older_file_is_corruption() {
    let log = MemoryLogDir::new();
    let mut dir: Box<dyn LogDir> = Box::new(log.clone());
    dir.create(1).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Space::Data(3), b"k".to_vec(), b"v".to_vec());
    let mut bad = record(&batch, 1);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    dir.append(1, &bad).unwrap();
    dir.append(1, &record(&WriteBatch::new(), 1)).unwrap();
    dir.create(2).unwrap();
    dir.append(2, &record(&batch, 2)).unwrap();
    assert_open_finds_corruption(log);
}

#[test]
fn a_failed_append_changes_nothing_and_writing_goes_on() {
    let storage = Restartable::new(small_options());
    put(&storage, b"k", b"old", Durability::Sync);
    storage.log.fail_appends(true);
    let mut batch = WriteBatch::new();
    batch.put(Space::Data(3), b"k".to_vec(), b"new".to_vec());
    assert!(storage.write(&batch, Durability::Sync).is_err());
    assert_eq!(get(&storage, b"k").as_deref(), Some(&b"old"[..]));
    storage.log.fail_appends(false);
    put(&storage, b"k2", b"after", Durability::Sync);
    storage.crash(0);
    assert_eq!(get(&storage, b"k").as_deref(), Some(&b"old"[..]));
    assert_eq!(
        get(&storage, b"k2").as_deref(),
        Some(&b"after"[..]),
        "the half-written record was cut off, so a later one is replayed"
    );
}

#[test]
fn a_failed_log_sync_is_mended_in_place() {
    let storage = Restartable::new(small_options());
    put(&storage, b"k", b"1", Durability::Sync);
    put(&storage, b"buffered", b"b", Durability::Buffered);
    storage.log.fail_syncs(true);
    let mut batch = WriteBatch::new();
    batch.put(Space::Data(3), b"k".to_vec(), b"2".to_vec());
    assert!(storage.write(&batch, Durability::Sync).is_err());
    assert_eq!(
        get(&storage, b"k").as_deref(),
        Some(&b"1"[..]),
        "a write whose sync failed is not shown to readers"
    );
    // The log cannot be trusted after a failed sync: the flusher writes
    // what readers see to the engine and starts a new log file.
    storage.with(|s| s.flush()).unwrap();
    for (key, value) in [(&b"k"[..], &b"1"[..]), (b"buffered", b"b")] {
        assert_eq!(
            storage
                .inner
                .get_durable(Space::Data(3), key)
                .unwrap()
                .as_deref(),
            Some(value),
            "{key:?} is in the engine"
        );
    }
    storage.log.fail_syncs(false);
    put(&storage, b"k", b"3", Durability::Sync);
    storage.crash(0);
    assert_eq!(get(&storage, b"k").as_deref(), Some(&b"3"[..]));
    assert_eq!(get(&storage, b"buffered").as_deref(), Some(&b"b"[..]));
}

#[test]
fn writes_are_refused_from_a_failed_sync_until_the_log_is_mended() {
    // The flusher is told at once; this checks that it mends the log by
    // itself, with no flush called.
    let storage = Restartable::new(small_options());
    put(&storage, b"k", b"1", Durability::Buffered);
    storage.log.fail_syncs(true);
    assert!(storage.sync().is_err());
    storage.log.fail_syncs(false);
    let started = std::time::Instant::now();
    let mut batch = WriteBatch::new();
    batch.put(Space::Data(3), b"k".to_vec(), b"2".to_vec());
    while storage.write(&batch, Durability::Sync).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the flusher never mended the log"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    storage.crash(0);
    assert_eq!(get(&storage, b"k").as_deref(), Some(&b"2"[..]));
}

#[test]
fn an_engine_stopped_by_an_io_error_is_reopened_by_the_next_flush() {
    let directory = tempfile::tempdir().unwrap();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let engine =
        RedbStorage::open_failing(&directory.path().join("ringkv.redb"), Arc::clone(&failing))
            .unwrap();
    let log = MemoryLogDir::new();
    let storage = LoggedStorage::open(Arc::new(engine), Box::new(log), small_options()).unwrap();
    put(&storage, b"k", b"1", Durability::Sync);
    failing.store(true, std::sync::atomic::Ordering::Release);
    assert!(storage.flush().is_err(), "the engine's file fails");
    // With the disk fine again, redb alone would refuse every write until
    // it is opened again; the next flush does that.
    failing.store(false, std::sync::atomic::Ordering::Release);
    storage.flush().unwrap();
    put(&storage, b"k2", b"2", Durability::Sync);
    storage.flush().unwrap();
    drop(storage);
    let engine = RedbStorage::open(&directory.path().join("ringkv.redb")).unwrap();
    assert_eq!(get(&engine, b"k").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&engine, b"k2").as_deref(), Some(&b"2"[..]));
}

/// A small deterministic generator, so failures replay from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Random batches, syncs, flushes and crashes (with torn tails): after
/// every crash the state is the state after some prefix of the writes that
/// includes every write acknowledged as synced.
#[test]
fn crashes_keep_a_prefix_that_includes_every_synced_write() {
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let storage = Restartable::new(LogOptions {
            flush_interval: Duration::from_millis(rng.below(20)),
            flush_bytes: 200 + rng.below(2000),
            ..LogOptions::default()
        });
        // The model after each write since the last crash; index 0 is the
        // state the crash must not go behind.
        let mut states: Vec<Model> = vec![Model::new()];
        let mut synced = 0;
        for _ in 0..300 {
            match rng.below(20) {
                0 => {
                    let torn = rng.below(40) as usize;
                    storage.crash(torn);
                    let found: Model = storage
                        .scan(Space::Data(3), None, usize::MAX)
                        .unwrap()
                        .into_iter()
                        .collect();
                    let kept = states[synced..].iter().position(|s| *s == found);
                    let Some(kept) = kept else {
                        panic!(
                            "seed {seed}: after a crash the state is no prefix of the writes \
                             that holds the {synced} synced ones: {found:?}"
                        );
                    };
                    states = vec![states.swap_remove(synced + kept)];
                    synced = 0;
                }
                1 => {
                    storage.sync().unwrap();
                    synced = states.len() - 1;
                }
                _ => {
                    let mut batch = WriteBatch::new();
                    let mut model = states.last().unwrap().clone();
                    for _ in 0..1 + rng.below(4) {
                        let key = vec![b'k', rng.below(12) as u8];
                        if rng.below(5) == 0 {
                            batch.delete(Space::Data(3), key.clone());
                            model.remove(&key);
                        } else {
                            let value = vec![rng.below(256) as u8; rng.below(60) as usize];
                            batch.put(Space::Data(3), key.clone(), value.clone());
                            model.insert(key, value);
                        }
                    }
                    let durability = if rng.below(2) == 0 {
                        Durability::Sync
                    } else {
                        Durability::Buffered
                    };
                    storage.write(&batch, durability).unwrap();
                    states.push(model);
                    if durability == Durability::Sync {
                        synced = states.len() - 1;
                    }
                }
            }
        }
    }
}

#[test]
fn scans_merge_the_memtable_over_the_engine() {
    let storage = open_memory(
        &MemoryStorage::new(),
        &MemoryLogDir::new(),
        LogOptions::default(),
    );
    let space = Space::Data(5);
    let mut expected = BTreeMap::new();
    let mut batch = WriteBatch::new();
    for i in 0u8..100 {
        batch.put(space, vec![i], vec![i]);
        expected.insert(vec![i], vec![i]);
    }
    storage.write(&batch, Durability::Sync).unwrap();
    storage.flush().unwrap();
    // In the memtable: deletions of engine keys, overwrites, new keys, and
    // deletions of keys that exist nowhere.
    let mut batch = WriteBatch::new();
    for i in (0u8..100).step_by(2) {
        batch.delete(space, vec![i]);
        expected.remove(&vec![i]);
    }
    for i in (1u8..100).step_by(9) {
        batch.put(space, vec![i], b"new".to_vec());
        expected.insert(vec![i], b"new".to_vec());
    }
    for i in 100u8..110 {
        batch.put(space, vec![i], vec![i]);
        expected.insert(vec![i], vec![i]);
        batch.delete(space, vec![i, 0]);
    }
    storage.write(&batch, Durability::Sync).unwrap();
    let expected: Vec<KeyValue> = expected.into_iter().collect();
    for page in [1, 2, 7, 50, 1000] {
        let mut found = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let got = storage.scan(space, after.as_deref(), page).unwrap();
            assert!(got.len() <= page);
            let Some(last) = got.last() else { break };
            after = Some(last.0.clone());
            found.extend(got);
        }
        assert_eq!(found, expected, "pages of {page}");
    }
    // Other spaces do not leak in.
    assert!(storage.scan(Space::Data(6), None, 10).unwrap().is_empty());
    assert!(storage.scan(Space::Data(4), None, 10).unwrap().is_empty());
}

#[test]
fn writes_wait_for_a_full_memtable_then_fail_if_flushing_fails() {
    let (inner, log) = (MemoryStorage::new(), MemoryLogDir::new());
    let storage = open_memory(
        &inner,
        &log,
        LogOptions {
            flush_interval: Duration::from_secs(3600),
            flush_bytes: 1 << 20,
            max_memtable_bytes: 1000,
            stall_timeout: Duration::from_millis(300),
        },
    );
    inner.fail_writes(true);
    assert!(!storage.write_may_wait());
    let mut written = 0;
    let error = loop {
        let mut batch = WriteBatch::new();
        batch.put(Space::Data(3), vec![written], vec![0; 100]);
        match storage.write(&batch, Durability::Sync) {
            Ok(()) => written += 1,
            Err(error) => break error,
        }
        assert!(written < 50, "the memtable limit must stop writers");
    };
    assert!(error.to_string().contains("stalled"), "{error}");
    assert!(storage.write_may_wait(), "the memtable is full");
    // Reads still see every acknowledged write.
    for key in 0..written {
        assert!(storage.get(Space::Data(3), &[key]).unwrap().is_some());
    }
    inner.fail_writes(false);
    put(&storage, b"after", b"1", Durability::Sync);
    storage.flush().unwrap();
    assert_eq!(
        inner
            .get_durable(Space::Data(3), b"after")
            .unwrap()
            .as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn a_reused_file_replays_only_its_own_records() {
    let directory = tempfile::tempdir().unwrap();
    let inner = MemoryStorage::new();
    let open = || open_files(directory.path(), &inner);
    let storage = open();
    // Many records, then deleted: the files they were in become spares.
    for i in 0..300u32 {
        put(&storage, &i.to_be_bytes(), &[1; 200], Durability::Sync);
    }
    storage.flush().unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..300u32 {
        batch.delete(Space::Data(3), i.to_be_bytes().to_vec());
    }
    storage.write(&batch, Durability::Sync).unwrap();
    storage.flush().unwrap();
    storage.flush().unwrap();
    // The active file now reuses the space of the first one, whose puts
    // are still on disk after the new record.
    put(&storage, b"new", b"1", Durability::Sync);
    storage.halt();
    inner.crash();
    let newest = *FsLogDir::new(directory.path())
        .unwrap()
        .generations()
        .unwrap()
        .last()
        .unwrap();
    let on_disk = std::fs::read(directory.path().join(format!("{newest:016x}.log"))).unwrap();
    assert!(
        on_disk.len() > 300 * 200,
        "the newest file reuses a spare: {} bytes",
        on_disk.len()
    );

    let storage = open();
    let report = storage.replay_report();
    assert_eq!(report.records, 1, "{report:?}");
    assert!(report.tail_bytes > 0);
    assert_eq!(get(&storage, b"new").as_deref(), Some(&b"1"[..]));
    let left = storage.scan(Space::Data(3), None, 1000).unwrap();
    assert_eq!(left.len(), 1, "old records of the reused space came back");
}

#[test]
fn a_file_without_its_seal_behind_a_newer_one_is_corruption() {
    let log = MemoryLogDir::new();
    let mut dir: Box<dyn LogDir> = Box::new(log.clone());
    dir.create(1).unwrap();
    dir.append(1, &record(&one_put(b"a", b"1"), 1)).unwrap();
    dir.create(2).unwrap();
    dir.append(2, &record(&one_put(b"b", b"2"), 2)).unwrap();
    assert_open_finds_corruption(log);
}

#[test]
fn records_after_a_seal_are_replayed() {
    // A file goes on after its seal when the next one could not be
    // created; a later flush seals it again.
    let log = MemoryLogDir::new();
    let mut dir: Box<dyn LogDir> = Box::new(log.clone());
    dir.create(1).unwrap();
    dir.append(1, &record(&one_put(b"a", b"1"), 1)).unwrap();
    dir.append(1, &record(&WriteBatch::new(), 1)).unwrap();
    dir.append(1, &record(&one_put(b"b", b"2"), 1)).unwrap();
    dir.append(1, &record(&WriteBatch::new(), 1)).unwrap();
    dir.create(2).unwrap();
    dir.append(2, &record(&one_put(b"c", b"3"), 2)).unwrap();
    dir.append(2, &record(&WriteBatch::new(), 2)).unwrap();
    dir.append(2, &record(&one_put(b"d", b"4"), 2)).unwrap();
    let storage = LoggedStorage::open(
        Arc::new(MemoryStorage::new()),
        Box::new(log),
        LogOptions::default(),
    )
    .unwrap();
    assert_eq!(storage.replay_report().records, 4);
    for (key, value) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")] {
        assert_eq!(get(&storage, key).as_deref(), Some(&value[..]));
    }
}

#[test]
fn a_record_stamped_for_another_file_is_not_replayed() {
    let log = MemoryLogDir::new();
    let mut dir: Box<dyn LogDir> = Box::new(log.clone());
    dir.create(5).unwrap();
    dir.append(5, &record(&one_put(b"a", b"1"), 5)).unwrap();
    dir.append(5, &record(&one_put(b"b", b"2"), 4)).unwrap();
    let storage = LoggedStorage::open(
        Arc::new(MemoryStorage::new()),
        Box::new(log),
        LogOptions::default(),
    )
    .unwrap();
    assert_eq!(get(&storage, b"a").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(&storage, b"b"), None);
}

#[test]
fn a_new_generation_is_newer_than_any_kept_space() {
    // Only a spare is left (a crash at open, between removing the replayed
    // files and creating the next): its old records of generation 1 must
    // not check out in the next file.
    let log = MemoryLogDir::new();
    let mut dir: Box<dyn LogDir> = Box::new(log.clone());
    dir.create(1).unwrap();
    dir.append(1, &record(&one_put(b"a", b"1"), 1)).unwrap();
    dir.append(1, &record(&one_put(b"b", b"old"), 1)).unwrap();
    dir.sync(1).unwrap();
    dir.remove(1).unwrap();
    assert!(dir.generations().unwrap().is_empty());

    let inner = MemoryStorage::new();
    let storage = open_memory(&inner, &log, LogOptions::default());
    // The same length as the first old record, so the second one follows.
    put(&storage, b"a", b"2", Durability::Sync);
    storage.halt();
    inner.crash();
    log.crash(0);
    let storage = open_memory(&inner, &log, LogOptions::default());
    assert_eq!(get(&storage, b"a").as_deref(), Some(&b"2"[..]));
    assert_eq!(get(&storage, b"b"), None, "an old record was replayed");
}

#[test]
fn an_idle_flusher_sleeps_a_whole_interval() {
    let interval = Duration::from_secs(5);
    // An empty log long after the last flush: nothing to wait for but
    // the next write (this waited 1 ms, so an idle node woke ~1000 times
    // a second).
    assert_eq!(flusher_wait(0, Duration::from_secs(60), interval), interval);
    assert_eq!(flusher_wait(0, Duration::ZERO, interval), interval);
    // Bytes in the log: until they are an interval old.
    assert_eq!(
        flusher_wait(10, Duration::from_secs(2), interval),
        Duration::from_secs(3)
    );
    assert_eq!(
        flusher_wait(10, Duration::from_secs(9), interval),
        Duration::from_millis(1)
    );
}
