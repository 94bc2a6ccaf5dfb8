use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::{KeyValue, MemoryStorage};

const WAIT: Duration = Duration::from_secs(60);

fn recv<T>(receiver: &Receiver<T>) -> T {
    receiver
        .recv_timeout(WAIT)
        .expect("timed out waiting for the committer")
}

fn counter(value: Option<&[u8]>) -> u64 {
    match value {
        None => 0,
        Some(bytes) => u64::from_be_bytes(bytes.try_into().expect("counter is 8 bytes")),
    }
}

/// Delegates to a [`MemoryStorage`], sleeping 1 ms in every write so that
/// jobs pile up while a commit is running; says `may_wait` of every write.
struct SlowStorage {
    inner: MemoryStorage,
    may_wait: bool,
}

impl Storage for SlowStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(space, key)
    }

    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        thread::sleep(Duration::from_millis(1));
        self.inner.write(batch, durability)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync()
    }

    fn write_may_wait(&self) -> bool {
        self.may_wait
    }

    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(space, after, limit)
    }
}

/// Delegates to a [`MemoryStorage`]; every `write` first reports on
/// `entered`, then waits for one message on `release` (a batch's sync
/// follows its write, so the gate holds the committer either way). Reads
/// of the key `unreadable` fail.
struct GatedStorage {
    inner: MemoryStorage,
    entered: SyncSender<()>,
    release: Mutex<Receiver<()>>,
}

struct Gate {
    storage: Arc<GatedStorage>,
    entered: Receiver<()>,
    release: SyncSender<()>,
}

fn gated(inner: MemoryStorage) -> Gate {
    let (entered_sender, entered) = sync_channel(64);
    let (release, release_receiver) = sync_channel(64);
    Gate {
        storage: Arc::new(GatedStorage {
            inner,
            entered: entered_sender,
            release: Mutex::new(release_receiver),
        }),
        entered,
        release,
    }
}

impl GatedStorage {
    fn pass_gate(&self) {
        self.entered
            .send(())
            .expect("test holds the entered receiver");
        self.release
            .lock()
            .unwrap()
            .recv_timeout(WAIT)
            .expect("test never released the gate");
    }
}

impl Storage for GatedStorage {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if key == b"unreadable" {
            return Err(StorageError::Engine {
                message: "injected read failure".to_string(),
            });
        }
        self.inner.get(space, key)
    }

    fn write(&self, batch: &WriteBatch, durability: Durability) -> Result<(), StorageError> {
        self.pass_gate();
        self.inner.write(batch, durability)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync()
    }

    fn scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(space, after, limit)
    }
}

/// What one increment job saw.
struct Report {
    name: String,
    result: Result<(), StorageError>,
    /// The counter value this job wrote.
    written: Option<u64>,
    /// The counter in storage when `done` ran: readable, and durable.
    live: Result<Option<u64>, StorageError>,
    durable: Result<Option<u64>, StorageError>,
}

/// Adds one to the big-endian u64 counter under its key.
struct IncrementJob {
    name: String,
    space: Space,
    key: Vec<u8>,
    storage: MemoryStorage,
    written: Option<u64>,
    reports: SyncSender<Report>,
}

impl Job for IncrementJob {
    fn apply(&mut self, current: Option<&[u8]>) -> Change {
        let next = counter(current) + 1;
        self.written = Some(next);
        Change::Put(next.to_be_bytes().to_vec())
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        let read = |value: Result<Option<Vec<u8>>, StorageError>| {
            value.map(|value| value.map(|bytes| counter(Some(&bytes))))
        };
        let report = Report {
            name: self.name,
            result,
            written: self.written,
            live: read(self.storage.get(self.space, &self.key)),
            durable: read(self.storage.get_durable(self.space, &self.key)),
        };
        // The test may have stopped listening after a failure of its own.
        let _ = self.reports.send(report);
    }
}

fn increment(
    name: &str,
    key: &[u8],
    storage: &MemoryStorage,
    reports: &SyncSender<Report>,
) -> Box<dyn Job> {
    Box::new(IncrementJob {
        name: name.to_string(),
        space: Space::Data(1),
        key: key.to_vec(),
        storage: storage.clone(),
        written: None,
        reports: reports.clone(),
    })
}

#[test]
fn concurrent_increments_are_never_lost_and_share_commits() {
    concurrent_increments(false);
}

/// Buffered jobs run inline on their callers' threads whenever no batch is
/// being committed, interleaved with queued Sync batches on the same keys.
#[test]
fn increments_run_inline_and_queued_are_never_lost() {
    concurrent_increments(true);
}

fn concurrent_increments(inline: bool) {
    const THREADS: usize = 16;
    const JOBS_PER_THREAD: usize = 200;
    const KEYS: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
    let memory = MemoryStorage::new();
    let committer = GroupCommitter::start(
        Arc::new(SlowStorage {
            inner: memory.clone(),
            may_wait: false,
        }),
        GroupCommitOptions::default(),
    );
    let (reports, report_receiver) = sync_channel(THREADS * JOBS_PER_THREAD);

    let submitters: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let committer = committer.clone();
            let memory = memory.clone();
            let reports = reports.clone();
            thread::spawn(move || {
                // Even threads ask for Sync, odd ones for Buffered.
                let durability = if thread_index % 2 == 0 {
                    Durability::Sync
                } else {
                    Durability::Buffered
                };
                for job_index in 0..JOBS_PER_THREAD {
                    let key = KEYS[(thread_index + job_index) % KEYS.len()];
                    let name = format!("{thread_index}/{job_index}/{durability:?}");
                    let job = increment(&name, key, &memory, &reports);
                    let submitted = if inline {
                        committer.run_or_submit(Space::Data(1), key.to_vec(), durability, job)
                    } else {
                        committer.submit(Space::Data(1), key.to_vec(), durability, job)
                    };
                    submitted.expect("the queue holds every job of this test");
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter.join().unwrap();
    }

    for _ in 0..THREADS * JOBS_PER_THREAD {
        let report = recv(&report_receiver);
        assert!(
            report.result.is_ok(),
            "{}: {:?}",
            report.name,
            report.result
        );
        let written = report.written.expect("apply ran before done");
        // Later jobs of the same batch may have counted further.
        let live = report.live.unwrap().expect("counter readable in done");
        assert!(live >= written, "{}: read {live} < {written}", report.name);
        if report.name.ends_with("Sync") {
            let durable = report.durable.unwrap().expect("counter durable in done");
            assert!(
                durable >= written,
                "{}: durable {durable} < {written}",
                report.name
            );
        }
    }

    let per_key = (THREADS * JOBS_PER_THREAD / KEYS.len()) as u64;
    for key in KEYS {
        let value = memory.get(Space::Data(1), key).unwrap();
        assert_eq!(counter(value.as_deref()), per_key, "key {key:?}");
    }
    let stats = committer.stats();
    assert_eq!(stats.jobs, (THREADS * JOBS_PER_THREAD) as u64);
    assert!(
        stats.commits < stats.jobs,
        "no batching happened: {stats:?}"
    );
    assert!(stats.synced_batches >= 1, "{stats:?}");
    assert_eq!(stats.failed_batches, 0);
}

#[test]
fn jobs_of_one_batch_see_each_others_changes() {
    let memory = MemoryStorage::new();
    let gate = gated(memory.clone());
    let committer = GroupCommitter::start(gate.storage.clone(), GroupCommitOptions::default());
    let (reports, report_receiver) = sync_channel(16);

    let first = increment("first", b"k", &memory, &reports);
    committer
        .submit(Space::Data(1), b"k".to_vec(), Durability::Sync, first)
        .unwrap();
    recv(&gate.entered);
    // The committer is inside the first write: these four queue up and
    // form the second batch.
    for index in 0..4 {
        let job = increment(&format!("queued {index}"), b"k", &memory, &reports);
        committer
            .submit(Space::Data(1), b"k".to_vec(), Durability::Sync, job)
            .unwrap();
    }
    gate.release.send(()).unwrap();
    recv(&gate.entered);
    gate.release.send(()).unwrap();

    let mut written: Vec<u64> = (0..5)
        .map(|_| recv(&report_receiver).written.unwrap())
        .collect();
    written.sort_unstable();
    assert_eq!(written, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        counter(memory.get(Space::Data(1), b"k").unwrap().as_deref()),
        5
    );
    assert_eq!(committer.stats().commits, 2);
}

#[test]
fn a_full_queue_answers_busy_without_blocking() {
    let memory = MemoryStorage::new();
    let gate = gated(memory.clone());
    let options = GroupCommitOptions {
        queue_capacity: 2,
        ..GroupCommitOptions::default()
    };
    let committer = GroupCommitter::start(gate.storage.clone(), options);
    let (reports, report_receiver) = sync_channel(16);
    let submit = |name: &str| {
        let job = increment(name, name.as_bytes(), &memory, &reports);
        committer.submit(
            Space::Data(1),
            name.as_bytes().to_vec(),
            Durability::Sync,
            job,
        )
    };

    submit("a").unwrap();
    recv(&gate.entered);
    submit("b").unwrap();
    submit("c").unwrap();
    assert_eq!(submit("d"), Err(SubmitError::Busy));

    gate.release.send(()).unwrap();
    recv(&gate.entered);
    gate.release.send(()).unwrap();
    let mut names: Vec<String> = (0..3)
        .map(|_| {
            let report = recv(&report_receiver);
            assert!(report.result.is_ok(), "{:?}", report.result);
            report.name
        })
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    // Room again once the queue drained.
    submit("e").unwrap();
    recv(&gate.entered);
    gate.release.send(()).unwrap();
    assert_eq!(recv(&report_receiver).name, "e");
    drop(committer);
    assert!(
        report_receiver.try_recv().is_err(),
        "the job refused as Busy must not be reported"
    );
    assert_eq!(memory.get(Space::Data(1), b"d").unwrap(), None);
}

#[test]
fn a_write_error_reaches_every_job_of_the_batch() {
    let memory = MemoryStorage::new();
    let gate = gated(memory.clone());
    let committer = GroupCommitter::start(gate.storage.clone(), GroupCommitOptions::default());
    let (reports, report_receiver) = sync_channel(16);

    let first = increment("first", b"first", &memory, &reports);
    committer
        .submit(Space::Data(1), b"first".to_vec(), Durability::Sync, first)
        .unwrap();
    recv(&gate.entered);
    for (name, key, durability) in [
        ("k1", &b"k"[..], Durability::Sync),
        ("k2", b"k", Durability::Buffered),
        ("other", b"other", Durability::Buffered),
    ] {
        let job = increment(name, key, &memory, &reports);
        committer
            .submit(Space::Data(1), key.to_vec(), durability, job)
            .unwrap();
    }
    gate.release.send(()).unwrap();
    let first_report = recv(&report_receiver);
    assert_eq!(first_report.name, "first");
    assert!(first_report.result.is_ok());

    recv(&gate.entered);
    memory.fail_writes(true);
    gate.release.send(()).unwrap();
    let mut failed = Vec::new();
    for _ in 0..3 {
        let report = recv(&report_receiver);
        assert!(
            matches!(report.result, Err(StorageError::Io { .. })),
            "{}: {:?}",
            report.name,
            report.result
        );
        failed.push(report.name);
    }
    failed.sort();
    assert_eq!(failed, ["k1", "k2", "other"]);
    assert_eq!(memory.get(Space::Data(1), b"k").unwrap(), None);
    assert_eq!(memory.get(Space::Data(1), b"other").unwrap(), None);
    let stats = committer.stats();
    assert_eq!((stats.commits, stats.failed_batches, stats.jobs), (2, 1, 4));
}

#[test]
fn a_read_error_fails_only_its_job() {
    let memory = MemoryStorage::new();
    let gate = gated(memory.clone());
    let committer = GroupCommitter::start(gate.storage.clone(), GroupCommitOptions::default());
    let (reports, report_receiver) = sync_channel(16);

    let first = increment("first", b"first", &memory, &reports);
    committer
        .submit(Space::Data(1), b"first".to_vec(), Durability::Sync, first)
        .unwrap();
    recv(&gate.entered);
    for (name, key) in [("unreadable", &b"unreadable"[..]), ("fine", b"fine")] {
        let job = increment(name, key, &memory, &reports);
        committer
            .submit(Space::Data(1), key.to_vec(), Durability::Sync, job)
            .unwrap();
    }
    gate.release.send(()).unwrap();
    recv(&gate.entered);
    gate.release.send(()).unwrap();

    for _ in 0..3 {
        let report = recv(&report_receiver);
        match report.name.as_str() {
            "unreadable" => {
                assert!(matches!(report.result, Err(StorageError::Engine { .. })));
                assert_eq!(report.written, None, "apply must not run without a read");
            }
            _ => assert!(
                report.result.is_ok(),
                "{}: {:?}",
                report.name,
                report.result
            ),
        }
    }
    assert_eq!(
        counter(memory.get(Space::Data(1), b"fine").unwrap().as_deref()),
        1
    );
    assert_eq!(memory.get(Space::Data(1), b"unreadable").unwrap(), None);
}

#[test]
fn delete_and_unchanged_changes() {
    let memory = MemoryStorage::new();
    let committer = GroupCommitter::start(Arc::new(memory.clone()), GroupCommitOptions::default());
    let (done, done_receiver) = sync_channel(16);
    let submit = |change: Change, durability: Durability| {
        let done = done.clone();
        let (seen_sender, seen) = sync_channel(1);
        let job = job_fn(
            move |current| {
                seen_sender.send(current.map(<[u8]>::to_vec)).unwrap();
                change
            },
            move |result| done.send(result).unwrap(),
        );
        committer
            .submit(Space::Meta, b"k".to_vec(), durability, job)
            .unwrap();
        recv(&done_receiver).unwrap();
        recv(&seen)
    };

    assert_eq!(
        submit(Change::Put(b"v".to_vec()), Durability::Buffered),
        None
    );
    assert_eq!(memory.get_durable(Space::Meta, b"k").unwrap(), None);
    // A Sync job that changes nothing still learns of durable data only.
    assert_eq!(
        submit(Change::Unchanged, Durability::Sync).as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        memory.get_durable(Space::Meta, b"k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        submit(Change::Delete, Durability::Sync).as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(memory.get(Space::Meta, b"k").unwrap(), None);
    assert_eq!(submit(Change::Unchanged, Durability::Sync), None);
    let stats = committer.stats();
    // Put, the sync for the Unchanged job, delete; the last job needs no
    // commit.
    assert_eq!((stats.commits, stats.synced_batches, stats.jobs), (3, 2, 4));
}

#[test]
fn dropping_the_last_handle_finishes_queued_jobs() {
    let memory = MemoryStorage::new();
    let committer = GroupCommitter::start(
        Arc::new(SlowStorage {
            inner: memory.clone(),
            may_wait: false,
        }),
        GroupCommitOptions::default(),
    );
    let (reports, report_receiver) = sync_channel(100);
    for index in 0..100 {
        let job = increment(&index.to_string(), b"k", &memory, &reports);
        committer
            .submit(Space::Data(1), b"k".to_vec(), Durability::Sync, job)
            .unwrap();
    }
    drop(committer);
    for _ in 0..100 {
        let report = report_receiver
            .try_recv()
            .expect("drop returns after every queued job is done");
        assert!(report.result.is_ok());
    }
    assert_eq!(
        counter(memory.get_durable(Space::Data(1), b"k").unwrap().as_deref()),
        100
    );
}

#[test]
fn a_panicking_job_stops_the_committer_and_pending_jobs_hear_closed() {
    let memory = MemoryStorage::new();
    let committer = GroupCommitter::start(Arc::new(memory.clone()), GroupCommitOptions::default());
    let (reports, report_receiver) = sync_channel(16);
    let (go_sender, go) = sync_channel::<()>(1);
    let (applying_sender, applying) = sync_channel::<()>(1);
    let panicking = job_fn(
        move |_| {
            applying_sender.send(()).unwrap();
            go.recv_timeout(WAIT).unwrap();
            panic!("job panics on purpose (expected in this test)");
        },
        |_| {},
    );
    committer
        .submit(Space::Meta, b"p".to_vec(), Durability::Sync, panicking)
        .unwrap();
    recv(&applying);
    for name in ["queued 1", "queued 2"] {
        let job = increment(name, b"k", &memory, &reports);
        committer
            .submit(Space::Data(1), b"k".to_vec(), Durability::Sync, job)
            .unwrap();
    }
    go_sender.send(()).unwrap();

    for _ in 0..2 {
        let report = recv(&report_receiver);
        assert!(
            matches!(report.result, Err(StorageError::Closed)),
            "{}: {:?}",
            report.name,
            report.result
        );
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let job = job_fn(|_| Change::Unchanged, |_| {});
        match committer.submit(Space::Meta, b"x".to_vec(), Durability::Sync, job) {
            Err(SubmitError::Closed) => break,
            Ok(()) | Err(SubmitError::Busy) => {
                assert!(Instant::now() < deadline, "submit never answered Closed");
                thread::yield_now();
            }
        }
    }
    assert_eq!(memory.get(Space::Data(1), b"k").unwrap(), None);
    // Dropping the last handle after the thread died must not panic.
    drop(committer);
}

#[test]
fn buffered_writes_are_synced_within_the_interval() {
    buffered_write_synced_within_the_interval(false);
}

#[test]
fn a_buffered_job_run_inline_is_synced_within_the_interval() {
    buffered_write_synced_within_the_interval(true);
}

/// A buffered job is acknowledged from memory, then made durable by the
/// committer thread once the interval has passed, with nothing else
/// submitted: queued, or run `inline` while the thread waits idle (which
/// does not wake it).
fn buffered_write_synced_within_the_interval(inline: bool) {
    let memory = MemoryStorage::new();
    let options = GroupCommitOptions {
        sync_interval: Some(Duration::from_millis(20)),
        ..GroupCommitOptions::default()
    };
    let committer = GroupCommitter::start(Arc::new(memory.clone()), options);
    let (reports, report_receiver) = sync_channel(1);
    let job = job_fn(
        |_| Change::Put(b"v".to_vec()),
        move |result| reports.send(result).unwrap(),
    );
    if inline {
        // Long enough for the committer thread to be idle, waiting.
        thread::sleep(Duration::from_millis(100));
        committer
            .run_or_submit(Space::Data(1), b"k".to_vec(), Durability::Buffered, job)
            .unwrap();
        // Run inline: `done` was called before `run_or_submit` returned.
        report_receiver.try_recv().unwrap().unwrap();
    } else {
        committer
            .submit(Space::Data(1), b"k".to_vec(), Durability::Buffered, job)
            .unwrap();
        recv(&report_receiver).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while memory.get_durable(Space::Data(1), b"k").unwrap().is_none() {
        assert!(Instant::now() < deadline, "buffered write never synced");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(committer.stats().synced_batches >= 1);
    memory.crash();
    assert_eq!(
        memory.get(Space::Data(1), b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[test]
fn without_an_interval_buffered_writes_wait_for_a_sync_job() {
    let memory = MemoryStorage::new();
    let options = GroupCommitOptions {
        sync_interval: None,
        ..GroupCommitOptions::default()
    };
    let committer = GroupCommitter::start(Arc::new(memory.clone()), options);
    let (reports, report_receiver) = sync_channel(1);
    let job = job_fn(
        |_| Change::Put(b"v".to_vec()),
        move |result| reports.send(result).unwrap(),
    );
    committer
        .submit(Space::Data(1), b"k".to_vec(), Durability::Buffered, job)
        .unwrap();
    recv(&report_receiver).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    memory.crash();
    assert_eq!(memory.get(Space::Data(1), b"k").unwrap(), None);
}

#[test]
fn a_buffered_job_runs_inline_when_no_batch_is_running() {
    let memory = MemoryStorage::new();
    let committer = GroupCommitter::start(Arc::new(memory.clone()), GroupCommitOptions::default());
    let (reports, report_receiver) = sync_channel(4);
    let on_this_thread = thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let job = put_recording_thread(b"v", &ran_on, reports);
    committer
        .run_or_submit(Space::Data(1), b"k".to_vec(), Durability::Buffered, job)
        .unwrap();
    // `done` was called before `run_or_submit` returned.
    assert!(report_receiver.try_recv().unwrap().is_ok());
    assert_eq!(*ran_on.lock().unwrap(), Some(on_this_thread));
    assert_eq!(
        memory.get(Space::Data(1), b"k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    // A Sync job goes to the committer thread.
    let (reports, report_receiver) = sync_channel(4);
    let ran_on = Arc::new(Mutex::new(None));
    let job = put_recording_thread(b"w", &ran_on, reports);
    committer
        .run_or_submit(Space::Data(1), b"k".to_vec(), Durability::Sync, job)
        .unwrap();
    assert!(recv(&report_receiver).is_ok());
    assert_ne!(*ran_on.lock().unwrap(), Some(on_this_thread));
    assert_eq!(
        memory.get_durable(Space::Data(1), b"k").unwrap().as_deref(),
        Some(&b"w"[..])
    );
}

/// A job that records the thread it was applied on.
fn put_recording_thread(
    value: &'static [u8],
    ran_on: &Arc<Mutex<Option<thread::ThreadId>>>,
    reports: SyncSender<Result<(), StorageError>>,
) -> Box<dyn Job> {
    let ran_on = Arc::clone(ran_on);
    job_fn(
        move |_| {
            *ran_on.lock().unwrap() = Some(thread::current().id());
            Change::Put(value.to_vec())
        },
        move |result| reports.send(result).unwrap(),
    )
}

#[test]
fn jobs_go_to_the_committer_thread_when_a_write_may_wait() {
    on_a_new_thread(|| {
        let memory = MemoryStorage::new();
        let storage = SlowStorage {
            inner: memory.clone(),
            may_wait: true,
        };
        let committer = GroupCommitter::start(Arc::new(storage), GroupCommitOptions::default());
        let on_this_thread = thread::current().id();
        let ran_on = Arc::new(Mutex::new(None));
        // Buffered: not run inline, though no batch is running.
        thread::sleep(Duration::from_millis(50));
        let (reports, report_receiver) = sync_channel(4);
        let job = put_recording_thread(b"v", &ran_on, reports.clone());
        committer
            .run_or_submit(Space::Data(1), b"k".to_vec(), Durability::Buffered, job)
            .unwrap();
        assert!(recv(&report_receiver).is_ok());
        assert_ne!(*ran_on.lock().unwrap(), Some(on_this_thread));
        // Deferred Sync jobs: `commit_deferred` hands them over.
        defer_commits_on_this_thread();
        *ran_on.lock().unwrap() = None;
        let job = put_recording_thread(b"w", &ran_on, reports);
        committer
            .run_or_defer(Space::Data(1), b"k".to_vec(), Durability::Sync, job)
            .unwrap();
        commit_deferred();
        assert!(recv(&report_receiver).is_ok());
        assert_ne!(*ran_on.lock().unwrap(), Some(on_this_thread));
        assert_eq!(
            memory.get_durable(Space::Data(1), b"k").unwrap().as_deref(),
            Some(&b"w"[..])
        );
    });
}

/// A step of a job, with the key's value then (readable, durable).
type Step = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>);

/// Reports what storage held when `written` and `done` ran.
struct StepsJob {
    storage: MemoryStorage,
    steps: SyncSender<Step>,
}

impl StepsJob {
    fn report(&self, step: &'static str) {
        let live = self.storage.get(Space::Meta, b"k").unwrap();
        let durable = self.storage.get_durable(Space::Meta, b"k").unwrap();
        self.steps.send((step, live, durable)).unwrap();
    }
}

impl Job for StepsJob {
    fn apply(&mut self, _current: Option<&[u8]>) -> Change {
        Change::Put(b"v".to_vec())
    }

    fn written(&mut self) {
        self.report("written");
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        self.report(if result.is_ok() { "done" } else { "failed" });
    }
}

#[test]
fn a_sync_job_hears_written_before_the_sync_and_done_after_it() {
    let memory = MemoryStorage::new();
    let committer = GroupCommitter::start(Arc::new(memory.clone()), GroupCommitOptions::default());
    let (steps, step_receiver) = sync_channel(4);
    let job = Box::new(StepsJob {
        storage: memory.clone(),
        steps: steps.clone(),
    });
    committer
        .submit(Space::Meta, b"k".to_vec(), Durability::Sync, job)
        .unwrap();
    let v = Some(b"v".to_vec());
    assert_eq!(recv(&step_receiver), ("written", v.clone(), None));
    assert_eq!(recv(&step_receiver), ("done", v.clone(), v.clone()));

    // A failed write is never reported as written.
    memory.fail_writes(true);
    let job = Box::new(StepsJob {
        storage: memory.clone(),
        steps,
    });
    committer
        .submit(Space::Meta, b"k2".to_vec(), Durability::Sync, job)
        .unwrap();
    assert_eq!(recv(&step_receiver).0, "failed");
}

/// Runs `body` on a thread of its own: deferral is per thread.
fn on_a_new_thread(body: impl FnOnce() + Send + 'static) {
    thread::spawn(body).join().expect("test thread panicked");
}

/// `run_or_defer` of an increment of key `k` named `name`.
fn defer_increment(
    committer: &GroupCommitter,
    name: &str,
    durability: Durability,
    memory: &MemoryStorage,
    reports: &SyncSender<Report>,
) -> Result<(), SubmitError> {
    committer.run_or_defer(
        Space::Data(1),
        b"k".to_vec(),
        durability,
        increment(name, b"k", memory, reports),
    )
}

#[test]
fn sync_jobs_deferred_by_a_thread_share_one_commit_when_it_commits_them() {
    on_a_new_thread(|| {
        let memory = MemoryStorage::new();
        let committer =
            GroupCommitter::start(Arc::new(memory.clone()), GroupCommitOptions::default());
        defer_commits_on_this_thread();
        let (reports, report_receiver) = sync_channel(8);
        for name in ["a", "b", "c"] {
            defer_increment(&committer, name, Durability::Sync, &memory, &reports).unwrap();
        }
        // Nothing runs them until this thread commits: not the committer
        // thread either.
        thread::sleep(Duration::from_millis(50));
        assert!(report_receiver.try_recv().is_err());
        assert_eq!(memory.get(Space::Data(1), b"k").unwrap(), None);
        assert_eq!(committer.stats().jobs, 0);

        commit_deferred();
        // All done before `commit_deferred` returned, in order, each one
        // durable when it heard so.
        for (name, value) in [("a", 1), ("b", 2), ("c", 3)] {
            let report = report_receiver
                .try_recv()
                .expect("done during commit_deferred");
            assert_eq!(report.name, name);
            assert!(report.result.is_ok());
            assert_eq!(report.written, Some(value));
            assert_eq!(report.durable.unwrap(), Some(3));
        }
        let stats = committer.stats();
        assert_eq!((stats.commits, stats.synced_batches, stats.jobs), (1, 1, 3));
        // Nothing left: a second call commits nothing.
        commit_deferred();
        assert_eq!(committer.stats().commits, 1);
    });
}

#[test]
fn run_or_defer_uses_the_committer_thread_unless_this_thread_defers() {
    on_a_new_thread(|| {
        let memory = MemoryStorage::new();
        let committer =
            GroupCommitter::start(Arc::new(memory.clone()), GroupCommitOptions::default());
        let (reports, report_receiver) = sync_channel(8);
        // Not deferring: the committer thread commits it.
        defer_increment(&committer, "queued", Durability::Sync, &memory, &reports).unwrap();
        assert!(recv(&report_receiver).result.is_ok());
        // Deferring: a buffered job is not deferred (it waits for no sync);
        // it runs inline, or queued while the committer thread still holds
        // the lock, without `commit_deferred` either way.
        defer_commits_on_this_thread();
        defer_increment(
            &committer,
            "buffered",
            Durability::Buffered,
            &memory,
            &reports,
        )
        .unwrap();
        let report = recv(&report_receiver);
        assert_eq!(
            (report.name.as_str(), report.written),
            ("buffered", Some(2))
        );
    });
}

#[test]
fn a_full_deferred_queue_answers_busy() {
    on_a_new_thread(|| {
        let memory = MemoryStorage::new();
        let options = GroupCommitOptions {
            queue_capacity: 2,
            ..GroupCommitOptions::default()
        };
        let committer = GroupCommitter::start(Arc::new(memory.clone()), options);
        defer_commits_on_this_thread();
        let (reports, report_receiver) = sync_channel(8);
        let defer = |name| defer_increment(&committer, name, Durability::Sync, &memory, &reports);
        assert_eq!(defer("a"), Ok(()));
        assert_eq!(defer("b"), Ok(()));
        assert_eq!(defer("c"), Err(SubmitError::Busy));
        commit_deferred();
        let names: Vec<String> = report_receiver.try_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(defer("d"), Ok(()));
    });
}
