//! [`GroupCommitter`]: many concurrent writers share one durable commit.
//!
//! Writers submit read-modify-write [`Job`]s for one key each into a
//! bounded queue; submitting never blocks (a full queue answers
//! [`SubmitError::Busy`]). One dedicated thread owns the commit loop:
//!
//! 1. block for one job, then take more without blocking, up to
//!    `max_batch_jobs`;
//! 2. run each job's [`Job::apply`] in order against the key's current
//!    value — the value written by an earlier job of the same batch, else
//!    the one in storage — so concurrent updates of one key never
//!    overwrite each other;
//! 3. write all changes as one [`WriteBatch`], visible to reads from then
//!    on, and call every job's [`Job::written`];
//! 4. sync, if any job asked for `Sync`;
//! 5. call every job's [`Job::done`] with the outcome.
//!
//! Step 3 comes before the sync so that a job's owner can act on the
//! written value while the sync runs (a coordinator sends the new version
//! to the other replicas), and hears `done` once it is durable.
//!
//!
//! A `Buffered` job submitted with [`GroupCommitter::run_or_submit`] while
//! no batch is running runs the same steps as a batch of one on the
//! caller's thread instead: read-modify-writes stay one at a time (they
//! hold the same lock as the thread's batches), and a buffered write,
//! which waits for no sync, costs no thread hand-off.
//!
//! A thread that runs a single-threaded event loop can instead commit its
//! own `Sync` jobs, as Redis does before it sleeps: after
//! [`defer_commits_on_this_thread`], [`GroupCommitter::run_or_defer`] on
//! that thread keeps them in a thread-local queue, and the loop calls
//! [`commit_deferred`] when it has nothing else to run (tokio's
//! `on_thread_park` of a current-thread runtime). The requests that arrived
//! together then share one sync with no thread hand-off either way; the
//! price is that the loop does nothing else while it syncs.
//!
//! The loop is the only writer this module coordinates: writes made to the
//! same storage around the committer are not serialized with its jobs.
//! It does not retry failed writes; each job sees the error.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{Durability, Space, Storage, StorageError, WriteBatch};

/// What a [`Job`] does to its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Vec<u8>),
    Delete,
    Unchanged,
}

/// A read-modify-write on one key, run inside the committer thread so that
/// concurrent updates of one key never overwrite each other.
///
/// Jobs must not panic, and should be quick: they run one after another
/// on the committer thread. A panic in `apply` or `done` stops the
/// committer: it logs an error, every job it still holds or has queued gets
/// `done(Err(StorageError::Closed))` (outcome unknown), and `submit`
/// answers [`SubmitError::Closed`] from then on.
pub trait Job: Send + 'static {
    /// Called once, in the committer thread, with the key's current value
    /// (including the changes of earlier jobs of the same batch).
    fn apply(&mut self, current: Option<&[u8]>) -> Change;

    /// Called once the batch holding this job is written and visible to
    /// reads, before it is synced; not called if the write (or the job's
    /// read) failed. `done` follows. Runs in the committer thread, like
    /// `done`. A crash before the sync can still lose the change.
    fn written(&mut self) {}

    /// Called once the batch holding this job is durable (or failed).
    /// Never called before the data is synced when the job asked for
    /// `Durability::Sync`; with `Buffered`, called once the change is
    /// visible to reads. Runs in the committer thread: hand results off
    /// (for example through a channel) rather than doing slow work here.
    fn done(self: Box<Self>, result: Result<(), StorageError>);
}

/// A [`Job`] made of two closures; see [`job_fn`].
struct FnJob<A, D> {
    apply: Option<A>,
    done: D,
}

impl<A, D> Job for FnJob<A, D>
where
    A: FnOnce(Option<&[u8]>) -> Change + Send + 'static,
    D: FnOnce(Result<(), StorageError>) + Send + 'static,
{
    fn apply(&mut self, current: Option<&[u8]>) -> Change {
        let apply = self.apply.take().expect("Job::apply is called once");
        apply(current)
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        (self.done)(result)
    }
}

/// A [`Job`] from closures: `apply` computes the change from the current
/// value, `done` receives the outcome.
pub fn job_fn(
    apply: impl FnOnce(Option<&[u8]>) -> Change + Send + 'static,
    done: impl FnOnce(Result<(), StorageError>) + Send + 'static,
) -> Box<dyn Job> {
    Box::new(FnJob {
        apply: Some(apply),
        done,
    })
}

#[derive(Clone, Debug)]
pub struct GroupCommitOptions {
    /// Most jobs written by one commit.
    pub max_batch_jobs: usize,
    /// Most jobs waiting in the queue; `submit` answers `Busy` beyond it.
    pub queue_capacity: usize,
    pub thread_name: String,
    /// Longest time a `Buffered` write stays unsynced: the committer syncs
    /// on its own once this much time has passed since the last sync.
    /// `None`: only a later `Sync` job makes buffered writes durable.
    pub sync_interval: Option<Duration>,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            max_batch_jobs: 1024,
            queue_capacity: 8192,
            thread_name: "ringkv-group-commit".to_string(),
            sync_interval: Some(Duration::from_millis(1000)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Batches written to storage (`write` or `sync` calls).
    pub commits: u64,
    /// Jobs finished (`done` called), failed ones included.
    pub jobs: u64,
    /// Commits made durable (`Durability::Sync` writes and syncs).
    pub synced_batches: u64,
    /// Commits whose write or sync failed.
    pub failed_batches: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: shed load or retry later. The job was dropped
    /// without `done` being called.
    #[error("group commit queue is full")]
    Busy,
    /// The committer thread has stopped. The job was dropped without
    /// `done` being called.
    #[error("group committer has stopped")]
    Closed,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    synced_batches: AtomicU64,
    failed_batches: AtomicU64,
}

/// A job that has not been reported yet. If it is dropped unreported (the
/// committer thread stopped), its `done` gets `Closed`, so every accepted
/// job hears back exactly once.
struct PendingJob {
    job: Option<Box<dyn Job>>,
}

impl PendingJob {
    fn apply(&mut self, current: Option<&[u8]>) -> Change {
        self.job
            .as_mut()
            .expect("a pending job is present until reported")
            .apply(current)
    }

    fn written(&mut self) {
        if let Some(job) = self.job.as_mut() {
            job.written();
        }
    }

    fn finish(mut self, result: Result<(), StorageError>) {
        if let Some(job) = self.job.take() {
            job.done(result);
        }
    }

    /// Drops the job without reporting: the submitter got an error instead.
    fn discard(mut self) {
        self.job = None;
    }
}

impl Drop for PendingJob {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.done(Err(StorageError::Closed));
        }
    }
}

struct Submission {
    space: Space,
    key: Vec<u8>,
    durability: Durability,
    job: PendingJob,
}

impl Submission {
    fn new(space: Space, key: Vec<u8>, durability: Durability, job: Box<dyn Job>) -> Self {
        Submission {
            space,
            key,
            durability,
            job: PendingJob { job: Some(job) },
        }
    }
}

/// Owned by the handles; the last one dropped stops the thread.
struct Shared {
    sender: Option<SyncSender<Submission>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    /// Whoever holds it runs read-modify-writes: the thread for a batch,
    /// a caller of `run_or_submit` for one buffered job, or an event loop
    /// for its deferred jobs.
    committer: Arc<Mutex<Committer>>,
    max_batch_jobs: usize,
    queue_capacity: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish the queued jobs and stop.
        drop(self.sender.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        // The last handle may be dropped by a job's `done` on the committer
        // thread itself: it stops on its own once the batch is done.
        if thread.thread().id() != thread::current().id() {
            // A panic in the thread was already logged by `PanicReport`.
            let _ = thread.join();
        }
    }
}

/// A cloneable handle to the committer thread. The thread finishes the
/// queued jobs and stops when the last handle is dropped; that drop waits
/// for it.
#[derive(Clone)]
pub struct GroupCommitter {
    shared: Arc<Shared>,
}

impl GroupCommitter {
    /// Starts the committer thread.
    ///
    /// Panics if `max_batch_jobs` or `queue_capacity` is zero, or if the
    /// thread cannot be spawned.
    pub fn start(storage: Arc<dyn Storage>, options: GroupCommitOptions) -> GroupCommitter {
        assert!(
            options.max_batch_jobs > 0,
            "max_batch_jobs must be positive"
        );
        assert!(
            options.queue_capacity > 0,
            "queue_capacity must be positive"
        );
        let (sender, receiver) = mpsc::sync_channel(options.queue_capacity);
        let counters = Arc::new(Counters::default());
        let committer = Arc::new(Mutex::new(Committer {
            storage,
            counters: Arc::clone(&counters),
            unsynced: false,
            last_sync: Instant::now(),
            quiet_failures: 0,
            last_failure_logged: None,
        }));
        let thread = {
            let committer = Arc::clone(&committer);
            let (max_batch_jobs, sync_interval) = (options.max_batch_jobs, options.sync_interval);
            thread::Builder::new()
                .name(options.thread_name)
                .spawn(move || run(&committer, &receiver, max_batch_jobs, sync_interval))
                .expect("spawn the group commit thread")
        };
        GroupCommitter {
            shared: Arc::new(Shared {
                sender: Some(sender),
                thread: Some(thread),
                counters,
                committer,
                max_batch_jobs: options.max_batch_jobs,
                queue_capacity: options.queue_capacity,
            }),
        }
    }

    /// As [`run_or_submit`], except that on a thread that defers commits
    /// (see [`defer_commits_on_this_thread`]) a `Sync` job waits in that
    /// thread's queue for [`commit_deferred`]. Either way the job's `done`
    /// is called exactly once. A full queue (`queue_capacity` jobs)
    /// answers `Busy`, as `submit` does.
    ///
    /// [`run_or_submit`]: GroupCommitter::run_or_submit
    pub fn run_or_defer(
        &self,
        space: Space,
        key: Vec<u8>,
        durability: Durability,
        job: Box<dyn Job>,
    ) -> Result<(), SubmitError> {
        if durability != Durability::Sync {
            return self.run_or_submit(space, key, durability, job);
        }
        let submission = Submission::new(space, key, durability, job);
        DEFERRED.with(|deferred| {
            let mut deferred = deferred.borrow_mut();
            let Some(queued) = deferred.as_mut() else {
                return self.send(submission);
            };
            let waiting: usize = queued.iter().map(|(_, jobs)| jobs.len()).sum();
            if waiting >= self.shared.queue_capacity {
                submission.job.discard();
                return Err(SubmitError::Busy);
            }
            match queued
                .iter_mut()
                .find(|(committer, _)| Arc::ptr_eq(&committer.shared, &self.shared))
            {
                Some((_, jobs)) => jobs.push(submission),
                None => queued.push((self.clone(), vec![submission])),
            }
            Ok(())
        })
    }

    /// Runs a `Buffered` job at once on the calling thread when no batch
    /// is being committed (no queueing, no thread hand-off: a buffered
    /// write costs no sync, so the hand-off would be most of its cost);
    /// otherwise, and for `Sync` jobs, queues it like [`submit`].
    /// Either way the job's `done` is called exactly once; when this
    /// returns `Ok` after running inline, it has been called already.
    ///
    /// [`submit`]: GroupCommitter::submit
    pub fn run_or_submit(
        &self,
        space: Space,
        key: Vec<u8>,
        durability: Durability,
        job: Box<dyn Job>,
    ) -> Result<(), SubmitError> {
        if durability == Durability::Buffered
            && let Ok(mut committer) = self.shared.committer.try_lock()
            && !committer.storage.write_may_wait()
        {
            let mut batch = vec![Submission::new(space, key, durability, job)];
            committer.commit(&mut batch);
            return Ok(());
        }
        self.submit(space, key, durability, job)
    }

    /// Queues deferred submissions for the committer thread; returns those
    /// its queue had no room for.
    fn hand_over(&self, jobs: Vec<Submission>) -> Vec<Submission> {
        let sender = self
            .shared
            .sender
            .as_ref()
            .expect("the sender lives as long as a handle");
        jobs.into_iter()
            .filter_map(|submission| match sender.try_send(submission) {
                Ok(()) => None,
                Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => Some(s),
            })
            .collect()
    }

    /// Queues `job` for `key` in `space`. Never blocks. On error the job is
    /// dropped and its `done` is not called.
    pub fn submit(
        &self,
        space: Space,
        key: Vec<u8>,
        durability: Durability,
        job: Box<dyn Job>,
    ) -> Result<(), SubmitError> {
        self.send(Submission::new(space, key, durability, job))
    }

    fn send(&self, submission: Submission) -> Result<(), SubmitError> {
        let sender = self
            .shared
            .sender
            .as_ref()
            .expect("the sender lives as long as a handle");
        match sender.try_send(submission) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(submission)) => {
                submission.job.discard();
                Err(SubmitError::Busy)
            }
            Err(TrySendError::Disconnected(submission)) => {
                submission.job.discard();
                Err(SubmitError::Closed)
            }
        }
    }

    /// Stops the committer thread once it has finished the queued jobs,
    /// and waits for it; `false` (nothing stopped) if other handles still
    /// exist.
    pub fn close(self) -> bool {
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => {
                drop(shared);
                true
            }
            Err(_) => false,
        }
    }

    pub fn stats(&self) -> GroupCommitStats {
        let counters = &self.shared.counters;
        GroupCommitStats {
            commits: counters.commits.load(Ordering::Relaxed),
            jobs: counters.jobs.load(Ordering::Relaxed),
            synced_batches: counters.synced_batches.load(Ordering::Relaxed),
            failed_batches: counters.failed_batches.load(Ordering::Relaxed),
        }
    }
}

/// `Sync` jobs a thread queued with `run_or_defer`, per committer.
type Deferred = Vec<(GroupCommitter, Vec<Submission>)>;

thread_local! {
    /// `None`: this thread does not defer.
    static DEFERRED: RefCell<Option<Deferred>> = const { RefCell::new(None) };
}

/// From now on, `Sync` jobs given to [`GroupCommitter::run_or_defer`] on
/// this thread wait for [`commit_deferred`] on this thread instead of going
/// to the committer thread. For the one thread of an event loop that calls
/// `commit_deferred` whenever it runs out of work; other threads keep the
/// committer thread.
pub fn defer_commits_on_this_thread() {
    DEFERRED.with(|deferred| {
        deferred.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// Commits, on this thread, the jobs it deferred (see
/// [`defer_commits_on_this_thread`]): all of one committer's jobs in one
/// batch (up to its `max_batch_jobs`), synced once, then their `done`.
/// Waits if the committer thread is committing a batch of its own. Nothing
/// to do (the usual case of a loop with no writes) costs a thread-local
/// check.
pub fn commit_deferred() {
    loop {
        let queued = DEFERRED.with(|deferred| match deferred.borrow_mut().as_mut() {
            Some(queued) if !queued.is_empty() => Some(std::mem::take(queued)),
            _ => None,
        });
        // Jobs' `done` may queue new jobs: go on until none are left.
        let Some(queued) = queued else {
            return;
        };
        for (committer, mut jobs) in queued {
            let shared = &committer.shared;
            let mut state = lock(&shared.committer);
            if state.storage.write_may_wait() {
                // The write would hold this loop up: the committer thread
                // takes the jobs, and this thread commits only those its
                // queue has no room for.
                drop(state);
                jobs = committer.hand_over(jobs);
                if jobs.is_empty() {
                    continue;
                }
                state = lock(&shared.committer);
            }
            while !jobs.is_empty() {
                let rest = jobs.split_off(jobs.len().min(shared.max_batch_jobs));
                state.commit(&mut jobs);
                jobs = rest;
            }
        }
    }
}

/// Logs when the committer thread unwinds from a panic, so that it never
/// stops silently.
struct PanicReport;

impl Drop for PanicReport {
    fn drop(&mut self) {
        if thread::panicking() {
            tracing::error!(
                "group commit thread stopped: a job panicked; pending jobs are reported as Closed"
            );
        }
    }
}

/// The key's value as seen by the jobs of one batch.
struct OverlayEntry {
    value: Option<Vec<u8>>,
    /// Changed by a job of this batch, so it must be written.
    changed: bool,
}

/// The read-modify-write state, behind the mutex in [`Shared`].
struct Committer {
    storage: Arc<dyn Storage>,
    counters: Arc<Counters>,
    /// A Buffered commit has not been made durable yet.
    unsynced: bool,
    last_sync: Instant,
    /// Failed background syncs not logged yet, and when one last was: a
    /// failure that lasts (a full disk) is logged once a minute, with a
    /// count, not at every interval.
    quiet_failures: u64,
    last_failure_logged: Option<Instant>,
}

/// How often a lasting failure of background syncs is logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

fn lock(committer: &Mutex<Committer>) -> MutexGuard<'_, Committer> {
    // A job that panicked while the lock was held left no half-written
    // state behind (writes are atomic batches): go on with the next.
    committer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The committer thread: batches of queued jobs, and the bounded interval
/// of buffered writes.
fn run(
    committer: &Mutex<Committer>,
    receiver: &Receiver<Submission>,
    max_batch_jobs: usize,
    sync_interval: Option<Duration>,
) {
    let _panic_report = PanicReport;
    let mut batch = Vec::with_capacity(max_batch_jobs);
    // `recv` keeps returning queued jobs after the last handle is gone
    // and fails only once the queue is empty.
    loop {
        let first = match sync_interval {
            Some(interval) => {
                let wait = lock(committer).time_to_sync(interval);
                match receiver.recv_timeout(wait) {
                    Ok(submission) => submission,
                    Err(RecvTimeoutError::Timeout) => {
                        lock(committer).sync_if_due(interval);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match receiver.recv() {
                Ok(submission) => submission,
                Err(_) => break,
            },
        };
        batch.push(first);
        let mut state = lock(committer);
        while batch.len() < max_batch_jobs {
            match receiver.try_recv() {
                Ok(submission) => batch.push(submission),
                Err(_) => break,
            }
        }
        state.commit(&mut batch);
        if let Some(interval) = sync_interval {
            state.sync_if_due(interval);
        }
    }
    // A clean stop leaves nothing unsynced.
    lock(committer).sync_if_due(Duration::ZERO);
}

impl Committer {
    /// How long the thread may wait for a job before buffered writes are
    /// due for a sync: the rest of the interval since the last sync if a
    /// write is unsynced, else a whole interval (it wakes at least that
    /// often, because a buffered job run inline by `run_or_submit` while it
    /// waits makes a write unsynced without waking it).
    fn time_to_sync(&self, interval: Duration) -> Duration {
        if self.unsynced {
            interval.saturating_sub(self.last_sync.elapsed())
        } else {
            interval
        }
    }

    /// Syncs buffered writes once one is unsynced and `interval` has
    /// passed since the last sync.
    fn sync_if_due(&mut self, interval: Duration) {
        if self.unsynced && self.last_sync.elapsed() >= interval {
            self.background_sync();
        }
    }

    /// Makes earlier Buffered commits durable (the bounded interval of
    /// buffered durability). A failure is logged; the next interval retries.
    fn background_sync(&mut self) {
        match self.sync(true) {
            Ok(()) => {
                if self.last_failure_logged.take().is_some() {
                    tracing::info!("background sync of buffered writes works again");
                }
                self.quiet_failures = 0;
            }
            Err(error) => {
                self.last_sync = Instant::now();
                let due = self
                    .last_failure_logged
                    .is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL);
                if due {
                    let also = std::mem::take(&mut self.quiet_failures);
                    tracing::error!(%error, failures_since_last_logged = also, "background sync of buffered writes failed");
                    self.last_failure_logged = Some(Instant::now());
                } else {
                    self.quiet_failures += 1;
                }
            }
        }
    }

    fn commit(&mut self, batch: &mut Vec<Submission>) {
        let mut overlay: BTreeMap<Space, BTreeMap<Vec<u8>, OverlayEntry>> = BTreeMap::new();
        // A job whose read failed gets that error and changes nothing.
        let mut read_errors: Vec<Option<StorageError>> = Vec::with_capacity(batch.len());
        let mut durability = Durability::Buffered;
        for submission in batch.iter_mut() {
            if submission.durability == Durability::Sync {
                durability = Durability::Sync;
            }
            let space_overlay = overlay.entry(submission.space).or_default();
            if !space_overlay.contains_key(&submission.key) {
                match self.storage.get(submission.space, &submission.key) {
                    Ok(value) => {
                        space_overlay.insert(
                            submission.key.clone(),
                            OverlayEntry {
                                value,
                                changed: false,
                            },
                        );
                    }
                    Err(error) => {
                        read_errors.push(Some(error));
                        continue;
                    }
                }
            }
            let entry = space_overlay
                .get_mut(&submission.key)
                .expect("entry inserted above");
            match submission.job.apply(entry.value.as_deref()) {
                Change::Put(value) => {
                    entry.value = Some(value);
                    entry.changed = true;
                }
                Change::Delete => {
                    entry.value = None;
                    entry.changed = true;
                }
                Change::Unchanged => {}
            }
            read_errors.push(None);
        }

        let mut write_batch = WriteBatch::new();
        for (space, entries) in overlay {
            for (key, entry) in entries.into_iter().filter(|(_, entry)| entry.changed) {
                match entry.value {
                    Some(value) => write_batch.put(space, key, value),
                    None => write_batch.delete(space, key),
                }
            }
        }

        let mut result = self.write(&write_batch);
        if result.is_ok() {
            for (submission, read_error) in batch.iter_mut().zip(&read_errors) {
                if read_error.is_none() {
                    submission.job.written();
                }
            }
            if durability == Durability::Sync {
                result = self.sync(write_batch.is_empty());
            }
        }
        for (submission, read_error) in batch.drain(..).zip(read_errors) {
            let job_result = match read_error {
                Some(error) => Err(error),
                None => result.clone(),
            };
            // Counted first, so that whoever hears from `done` sees it.
            self.counters.jobs.fetch_add(1, Ordering::Relaxed);
            submission.job.finish(job_result);
        }
    }

    /// Writes the batch's changes, unsynced (`sync` follows for a batch
    /// with a `Sync` job).
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        let result = self.storage.write(batch, Durability::Buffered);
        match &result {
            Ok(()) => self.unsynced = true,
            Err(_) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Makes every earlier write durable, for a batch with a `Sync` job. A
    /// batch with no changes still syncs if an earlier Buffered commit is
    /// pending, so that what the job read is durable before it is told so;
    /// that sync alone counts as the batch's commit (`counts_as_commit`).
    fn sync(&mut self, counts_as_commit: bool) -> Result<(), StorageError> {
        if !self.unsynced {
            return Ok(());
        }
        if counts_as_commit {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        let result = self.storage.sync();
        match &result {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                self.counters.synced_batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
