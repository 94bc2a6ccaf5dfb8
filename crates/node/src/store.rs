//! The node's local replica store: objects by (partition, bucket, key) on
//! a `Storage` engine, read directly and updated through the group
//! committer (one read-modify-write per key at a time, many keys per sync).
//! Also the node's metadata records (identity, layout, buckets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ringkv_core::antientropy::MerkleTree;
use ringkv_core::bucket::DurabilityMode;
use ringkv_core::causality::{DecodeError, Object};
use ringkv_storage::{
    Change, Durability, GroupCommitter, Job, Space, Storage, StorageError, SubmitError,
};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored object is corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    #[error("stored hint is corrupt: {0}")]
    CorruptHint(#[from] ringkv_core::hint::HintDecodeError),
    #[error("the write queue is full")]
    Busy,
    #[error("the store is shut down")]
    Closed,
}

impl From<SubmitError> for StoreError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Busy => StoreError::Busy,
            SubmitError::Closed => StoreError::Closed,
        }
    }
}

#[derive(Clone)]
pub struct LocalStore {
    storage: Arc<dyn Storage>,
    committer: GroupCommitter,
    trees: Arc<Trees>,
    expiries: Arc<Expiries>,
    hints: Arc<HintUsage>,
    fallback_actor: Arc<FallbackActor>,
}

/// The actor of the writes this node coordinates as a fallback (into its
/// hint store): random at start, and replaced whenever a hint record is
/// deleted, inside the committer job that deletes it.
///
/// A coordinator counts a key's next dot on from its local copy. A
/// fallback's copy is the key's hint record, which holds every dot this
/// actor issued for the key for as long as the record exists (it only
/// grows until it is deleted). Once any record is deleted, a later write
/// could find no copy of dots the actor issued, so the actor changes:
/// dots are never issued twice, and a key gains one clock entry per hint
/// record's life instead of one per fallback write. Read and replaced
/// only inside committer jobs, which run one at a time in commit order.
pub struct FallbackActor(AtomicU64);

impl FallbackActor {
    fn new() -> Self {
        FallbackActor(AtomicU64::new(rand::random::<u64>().max(1)))
    }

    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn replace(&self) {
        self.0
            .store(rand::random::<u64>().max(1), Ordering::Relaxed);
    }
}

/// Hint records and their bytes on disk: counted at start, then kept
/// exact by the committer as hint records are written and deleted.
#[derive(Default)]
pub struct HintUsage {
    records: AtomicI64,
    bytes: AtomicI64,
}

impl HintUsage {
    fn apply(&self, records: i64, bytes: i64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Most keys [`Expiries`] holds: past it, a key that expires is left to
/// the daily sweep (~70 bytes each, so about 140 MiB at the limit).
pub const MAX_EXPIRIES: usize = 2_000_000;

/// The keys this node stores whose values all expire, by when: what the
/// expiry loop retires soon after they expire (`sweep`). Kept in memory,
/// filled from storage at start and as writes are applied; an entry may be
/// stale (the key was written again since), so the loop reads the key
/// before it deletes anything.
#[derive(Default)]
pub struct Expiries {
    due: Mutex<BTreeSet<(u64, u32, Vec<u8>)>>,
}

impl Expiries {
    /// Records that `raw_key` of `partition` expires at `at` (ms since the
    /// Unix epoch), unless [`MAX_EXPIRIES`] are held already.
    pub fn record(&self, at: u64, partition: u32, raw_key: &[u8]) {
        let mut due = self.due.lock().expect("expiries lock");
        if due.len() < MAX_EXPIRIES {
            due.insert((at, partition, raw_key.to_vec()));
        }
    }

    /// Takes out up to `limit` entries due at `now`, soonest first.
    pub fn take_due(&self, now: u64, limit: usize) -> Vec<(u32, Vec<u8>)> {
        let mut due = self.due.lock().expect("expiries lock");
        let mut taken = Vec::new();
        while taken.len() < limit
            && let Some(first) = due.first()
            && first.0 <= now
        {
            let (_, partition, raw_key) = due.pop_first().expect("a first entry");
            taken.push((partition, raw_key));
        }
        taken
    }

    pub fn len(&self) -> usize {
        self.due.lock().expect("expiries lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The anti-entropy Merkle trees of this node, one per (partition, n):
/// replicas of buckets with different `n` differ, so they are compared
/// separately. Kept in memory, rebuilt from storage at start, updated in
/// commit order by the group committer once a write is applied.
#[derive(Default)]
pub struct Trees {
    trees: RwLock<BTreeMap<TreeId, SharedTree>>,
}

/// (partition, n).
type TreeId = (u32, u32);
pub type SharedTree = Arc<Mutex<MerkleTree>>;

impl Trees {
    pub fn tree(&self, partition: u32, n: u32) -> Arc<Mutex<MerkleTree>> {
        if let Some(tree) = self.trees.read().expect("trees lock").get(&(partition, n)) {
            return tree.clone();
        }
        self.trees
            .write()
            .expect("trees lock")
            .entry((partition, n))
            .or_insert_with(|| Arc::new(Mutex::new(MerkleTree::default())))
            .clone()
    }

    /// Records that `key` of `partition` is now stored with `digest`, under
    /// its bucket's `n`; takes it out of the partition's trees for other
    /// `n` (the bucket's `n` changed, or a node stored it before it learned
    /// the bucket's properties), which would otherwise keep a stale entry.
    pub fn record(&self, partition: u32, n: u32, key: &[u8], digest: u64) {
        for (_, tree) in self
            .of_partition(partition)
            .into_iter()
            .filter(|(other, _)| *other != n)
        {
            tree.lock().expect("tree lock").remove(key);
        }
        self.tree(partition, n)
            .lock()
            .expect("tree lock")
            .insert(key, digest);
    }

    /// The trees of `partition`, with their `n`.
    pub fn of_partition(&self, partition: u32) -> Vec<(u32, SharedTree)> {
        self.trees
            .read()
            .expect("trees lock")
            .range((partition, 0)..=(partition, u32::MAX))
            .map(|((_, n), tree)| (*n, tree.clone()))
            .collect()
    }

    /// Every (partition, n) that has a tree.
    pub fn keys(&self) -> Vec<(u32, u32)> {
        self.trees
            .read()
            .expect("trees lock")
            .keys()
            .copied()
            .collect()
    }
}

pub use ringkv_core::hint::{Hint, object_key};

impl LocalStore {
    pub fn new(storage: Arc<dyn Storage>, committer: GroupCommitter) -> Self {
        LocalStore {
            storage,
            committer,
            trees: Arc::new(Trees::default()),
            expiries: Arc::new(Expiries::default()),
            hints: Arc::new(HintUsage::default()),
            fallback_actor: Arc::new(FallbackActor::new()),
        }
    }

    /// See [`FallbackActor`]: read it inside an `update_hint` closure.
    pub fn fallback_actor(&self) -> Arc<FallbackActor> {
        self.fallback_actor.clone()
    }

    /// Hint records held and their encoded bytes.
    pub fn hint_usage(&self) -> (u64, u64) {
        let load = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        (load(&self.hints.records), load(&self.hints.bytes))
    }

    /// Counts the hints on disk (at start, before serving).
    pub fn count_hints(&self, partitions: u32) -> Result<(), StoreError> {
        let (mut records, mut bytes) = (0i64, 0i64);
        for partition in 0..partitions {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self
                    .storage
                    .scan(Space::Hints(partition), after.as_deref(), 1024)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                records += page.len() as i64;
                bytes += page.iter().map(|(_, v)| v.len() as i64).sum::<i64>();
            }
        }
        self.hints.records.store(records, Ordering::Relaxed);
        self.hints.bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    pub fn trees(&self) -> &Trees {
        &self.trees
    }

    pub fn expiries(&self) -> &Expiries {
        &self.expiries
    }

    /// One page of a partition's objects (raw keys, encoded objects).
    pub fn scan_objects(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ringkv_storage::KeyValue>, StoreError> {
        Ok(self.storage.scan(Space::Data(partition), after, limit)?)
    }

    pub fn read(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Object>, StoreError> {
        match self
            .storage
            .get(Space::Data(partition), &object_key(bucket, key))?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(Object::decode(&bytes)?)),
        }
    }

    /// Runs `update` on the current object inside the committer (or, for
    /// a buffered write while no batch is running, inline on this thread)
    /// and returns its result once it is durable. `update` returning `Err`
    /// writes nothing.
    /// `n`: the bucket's replica count, which names the Merkle tree the
    /// new version's digest goes to.
    pub async fn update<E: Send + 'static>(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        n: u32,
        durability: DurabilityMode,
        update: impl FnOnce(Option<Object>) -> Result<Object, E> + Send + 'static,
    ) -> Result<Result<Object, E>, StoreError> {
        let staged = self.update_staged(
            partition,
            bucket,
            key,
            n,
            durability,
            Commit::Queued,
            update,
        );
        Ok(staged.await?.0)
    }

    /// As [`update`](Self::update), committed as `commit` says: with
    /// `Commit::Early`, returns as soon as the new object is written and
    /// visible to reads, before its sync, and [`Durable::wait`] then tells
    /// whether it became durable.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_staged<E: Send + 'static>(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        n: u32,
        durability: DurabilityMode,
        commit: Commit,
        update: impl FnOnce(Option<Object>) -> Result<Object, E> + Send + 'static,
    ) -> Result<(Result<Object, E>, Option<Durable>), StoreError> {
        let early = commit == Commit::Early;
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let (reply, durable) = if early {
            let (durable_tx, durable_rx) = oneshot::channel();
            let reply = Reply::Staged {
                written: Some(outcome_tx),
                durable: durable_tx,
            };
            (reply, Some(Durable(durable_rx)))
        } else {
            (Reply::Done(outcome_tx), None)
        };
        let raw_key = object_key(bucket, key);
        let job = UpdateJob {
            update: Some(Box::new(update)),
            outcome: None,
            reply,
            trees: self.trees.clone(),
            expiries: self.expiries.clone(),
            partition,
            n,
            raw_key: raw_key.clone(),
            digest: None,
            expires_at: None,
        };
        let submit = match commit {
            Commit::Own => GroupCommitter::run_or_defer,
            Commit::Early | Commit::Queued => GroupCommitter::run_or_submit,
        };
        submit(
            &self.committer,
            Space::Data(partition),
            raw_key,
            storage_durability(durability),
            Box::new(job),
        )?;
        let outcome = outcome_rx.await.map_err(|_| StoreError::Closed)??;
        Ok((outcome, durable))
    }

    /// Deletes the object stored under `raw_key` in `partition` if its
    /// bytes still have `digest`, and takes it out of the `(partition, n)`
    /// tree: `true` if deleted. For data handed off to the partition's
    /// replicas: a write that changed it since keeps it. Not synced (a
    /// crash brings the copy back, to be handed off again).
    pub async fn drop_if_unchanged(
        &self,
        partition: u32,
        n: u32,
        raw_key: Vec<u8>,
        digest: u64,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = DropJob {
            digest,
            matched: false,
            tree: self.trees.tree(partition, n),
            raw_key: raw_key.clone(),
            reply,
        };
        self.committer.run_or_submit(
            Space::Data(partition),
            raw_key,
            Durability::Buffered,
            Box::new(job),
        )?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub fn stats(&self) -> ringkv_storage::GroupCommitStats {
        self.committer.stats()
    }

    /// The hint held for a key (sloppy quorum), if any.
    pub fn read_hint(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Hint>, StoreError> {
        match self
            .storage
            .get(Space::Hints(partition), &object_key(bucket, key))?
        {
            None => Ok(None),
            Some(bytes) => Ok(Some(Hint::decode(&bytes)?)),
        }
    }

    /// One page of the hints of a partition, in key order after `after`.
    pub fn scan_hints(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Hint)>, StoreError> {
        let page = self.storage.scan(Space::Hints(partition), after, limit)?;
        page.into_iter()
            .map(|(key, bytes)| Ok((key, Hint::decode(&bytes)?)))
            .collect()
    }

    /// Runs `update` on the hint record of a key inside the committer:
    /// `None` from `update` deletes the record. Returns `update`'s second
    /// value once the change is durable.
    pub async fn update_hint<T: Send + 'static>(
        &self,
        partition: u32,
        raw_key: Vec<u8>,
        durability: DurabilityMode,
        update: impl FnOnce(Option<Hint>) -> (Option<Hint>, T) + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = HintJob {
            update: Some(Box::new(update)),
            outcome: None,
            reply: tx,
            usage: self.hints.clone(),
            fallback_actor: self.fallback_actor.clone(),
            delta: (0, 0),
        };
        self.committer.run_or_submit(
            Space::Hints(partition),
            raw_key,
            storage_durability(durability),
            Box::new(job),
        )?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes the queued writes and stops the committer: the storage
    /// then holds every write made through this store, synced. `None` if
    /// other handles to the store still exist (nothing was stopped).
    pub fn close(self) -> Option<Arc<dyn Storage>> {
        let LocalStore {
            storage, committer, ..
        } = self;
        if !committer.close() {
            return None;
        }
        Some(storage)
    }

    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.storage.get(Space::Meta, name.as_bytes())?)
    }

    /// Writes a metadata record durably (used for identity, layout, buckets).
    pub fn meta_put_sync(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let mut batch = ringkv_storage::WriteBatch::default();
        batch.put(Space::Meta, name.as_bytes().to_vec(), value);
        Ok(self.storage.write(&batch, Durability::Sync)?)
    }
}

type UpdateFn<E> = Box<dyn FnOnce(Option<Object>) -> Result<Object, E> + Send>;

/// How an update is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// By the commit thread; the caller hears as soon as it is written,
    /// then whether it became durable (a coordinator sends it to the other
    /// replicas while it syncs).
    Early,
    /// By the commit thread, once durable. For writes others wait on (a
    /// replica's copy): a one-thread node that synced them itself would
    /// serve nothing, reads included, meanwhile.
    Queued,
    /// Its sync is all its client waits for (a write with no other
    /// replica): on a one-thread node, by that thread when it runs out of
    /// work, shared with the writes that came with it
    /// (`GroupCommitter::run_or_defer`).
    Own,
}

/// Whether a written update became durable (see
/// [`LocalStore::update_staged`]).
pub struct Durable(oneshot::Receiver<Result<(), StoreError>>);

impl Durable {
    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

type Outcome<E> = Result<Result<Object, E>, StoreError>;

/// Where an update's outcome goes.
enum Reply<E> {
    /// All of it once durable (or failed).
    Done(oneshot::Sender<Outcome<E>>),
    /// The outcome once the batch is written (or, if it never is, the
    /// failure), then whether it became durable.
    Staged {
        written: Option<oneshot::Sender<Outcome<E>>>,
        durable: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct UpdateJob<E> {
    update: Option<UpdateFn<E>>,
    outcome: Option<Outcome<E>>,
    reply: Reply<E>,
    trees: Arc<Trees>,
    expiries: Arc<Expiries>,
    partition: u32,
    n: u32,
    raw_key: Vec<u8>,
    /// Digest of the bytes written, recorded in the tree once durable.
    digest: Option<u64>,
    /// When the object written expires (`Object::expires_at`), recorded
    /// in `expiries` once durable.
    expires_at: Option<u64>,
}

impl<E: Send + 'static> Job for UpdateJob<E> {
    fn apply(&mut self, current: Option<&[u8]>) -> Change {
        let Some(update) = self.update.take() else {
            return Change::Unchanged;
        };
        let current = match current.map(Object::decode).transpose() {
            Ok(current) => current,
            Err(e) => {
                self.outcome = Some(Err(StoreError::Corrupt(e)));
                return Change::Unchanged;
            }
        };
        match update(current) {
            Ok(object) => {
                let bytes = object.encode();
                self.digest = Some(xxhash_rust::xxh3::xxh3_64(&bytes));
                self.expires_at = object.expires_at();
                self.outcome = Some(Ok(Ok(object)));
                Change::Put(bytes)
            }
            Err(e) => {
                self.outcome = Some(Ok(Err(e)));
                Change::Unchanged
            }
        }
    }

    fn written(&mut self) {
        if let Reply::Staged { written, .. } = &mut self.reply
            && let Some(written) = written.take()
        {
            let outcome = self.outcome.take().unwrap_or(Err(StoreError::Closed));
            // The requester may have given up (timeout); nothing to do then.
            let _ = written.send(outcome);
        }
    }

    fn done(mut self: Box<Self>, result: Result<(), StorageError>) {
        if result.is_ok()
            && let Some(digest) = self.digest
        {
            self.trees
                .record(self.partition, self.n, &self.raw_key, digest);
            if let Some(at) = self.expires_at {
                self.expiries.record(at, self.partition, &self.raw_key);
            }
        }
        let outcome = match &result {
            Err(e) => Err(StoreError::Storage(e.clone())),
            Ok(()) => self.outcome.take().unwrap_or(Err(StoreError::Closed)),
        };
        match self.reply {
            Reply::Done(reply) => {
                let _ = reply.send(outcome);
            }
            Reply::Staged { written, durable } => {
                // Never written: the outcome is the failure.
                if let Some(written) = written {
                    let _ = written.send(outcome);
                }
                let _ = durable.send(result.map_err(StoreError::Storage));
            }
        }
    }
}

fn storage_durability(mode: DurabilityMode) -> Durability {
    match mode {
        DurabilityMode::Sync => Durability::Sync,
        DurabilityMode::Buffered => Durability::Buffered,
    }
}

/// See [`LocalStore::drop_if_unchanged`].
struct DropJob {
    digest: u64,
    matched: bool,
    tree: SharedTree,
    raw_key: Vec<u8>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

impl Job for DropJob {
    fn apply(&mut self, current: Option<&[u8]>) -> Change {
        self.matched =
            current.is_some_and(|bytes| xxhash_rust::xxh3::xxh3_64(bytes) == self.digest);
        if self.matched {
            Change::Delete
        } else {
            Change::Unchanged
        }
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        if result.is_ok() && self.matched {
            self.tree.lock().expect("tree lock").remove(&self.raw_key);
        }
        let _ = self
            .reply
            .send(result.map(|()| self.matched).map_err(StoreError::Storage));
    }
}

type HintFn<T> = Box<dyn FnOnce(Option<Hint>) -> (Option<Hint>, T) + Send>;

struct HintJob<T> {
    update: Option<HintFn<T>>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    usage: Arc<HintUsage>,
    fallback_actor: Arc<FallbackActor>,
    /// (records, bytes) this job adds once applied.
    delta: (i64, i64),
}

impl<T: Send + 'static> Job for HintJob<T> {
    fn apply(&mut self, current: Option<&[u8]>) -> Change {
        let Some(update) = self.update.take() else {
            return Change::Unchanged;
        };
        let old_bytes = current.map_or(0, |c| c.len() as i64);
        let current = match current.map(Hint::decode).transpose() {
            Ok(current) => current,
            Err(e) => {
                self.outcome = Some(Err(e.into()));
                return Change::Unchanged;
            }
        };
        let existed = i64::from(current.is_some());
        let (next, value) = update(current);
        self.outcome = Some(Ok(value));
        match next {
            Some(hint) => {
                let bytes = hint.encode();
                self.delta = (1 - existed, bytes.len() as i64 - old_bytes);
                Change::Put(bytes)
            }
            None if existed == 1 => {
                self.delta = (-1, -old_bytes);
                self.fallback_actor.replace();
                Change::Delete
            }
            None => Change::Unchanged,
        }
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        let outcome = match result {
            Err(e) => Err(StoreError::Storage(e)),
            Ok(()) => {
                self.usage.apply(self.delta.0, self.delta.1);
                self.outcome.unwrap_or(Err(StoreError::Closed))
            }
        };
        let _ = self.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_come_due_soonest_first_and_at_most_limit_at_a_time() {
        let expiries = Expiries::default();
        expiries.record(30, 1, b"c");
        expiries.record(10, 2, b"a");
        expiries.record(20, 1, b"b");
        expiries.record(10, 2, b"a"); // the same entry twice is one
        assert_eq!(expiries.len(), 3);
        assert!(expiries.take_due(9, 10).is_empty(), "nothing due yet");
        assert_eq!(expiries.take_due(25, 1), vec![(2, b"a".to_vec())]);
        assert_eq!(expiries.take_due(25, 10), vec![(1, b"b".to_vec())]);
        assert_eq!(expiries.len(), 1, "c is not due until 30");
        assert_eq!(expiries.take_due(u64::MAX, 10), vec![(1, b"c".to_vec())]);
        assert!(expiries.is_empty());
    }
}
