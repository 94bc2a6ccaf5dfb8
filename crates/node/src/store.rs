//! The node's local replica store: objects by (partition, bucket, key) on
//! a `Storage` engine, read directly and updated through the group
//! committer (one read-modify-write per key at a time, many keys per sync).
//! Also the node's metadata records (identity, layout, buckets).

use std::sync::Arc;

use ringkv_core::bucket::DurabilityMode;
use ringkv_core::causality::{DecodeError, Object};
use ringkv_storage::{Change, Durability, GroupCommitter, Job, Space, Storage, StorageError, SubmitError};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored object is corrupt: {0}")]
    Corrupt(#[from] DecodeError),
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
}

/// The key of an object inside its partition: `u16 BE bucket length ‖ bucket ‖ key`
/// (the same bytes the partition hash covers).
pub fn object_key(bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bucket.len() + key.len());
    out.extend_from_slice(&(bucket.len() as u16).to_be_bytes());
    out.extend_from_slice(bucket.as_bytes());
    out.extend_from_slice(key);
    out
}

impl LocalStore {
    pub fn new(storage: Arc<dyn Storage>, committer: GroupCommitter) -> Self {
        LocalStore { storage, committer }
    }

    pub fn read(&self, partition: u32, bucket: &str, key: &[u8]) -> Result<Option<Object>, StoreError> {
        match self.storage.get(Space::Data(partition), &object_key(bucket, key))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(Object::decode(&bytes)?)),
        }
    }

    /// Runs `update` on the current object inside the committer and
    /// returns its result once it is durable. `update` returning `Err`
    /// writes nothing.
    pub async fn update<E: Send + 'static>(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        durability: DurabilityMode,
        update: impl FnOnce(Option<Object>) -> Result<Object, E> + Send + 'static,
    ) -> Result<Result<Object, E>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = UpdateJob {
            update: Some(Box::new(update)),
            outcome: None,
            reply: tx,
        };
        let durability = match durability {
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Buffered => Durability::Buffered,
        };
        self.committer
            .submit(Space::Data(partition), object_key(bucket, key), durability, Box::new(job))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn stats(&self) -> ringkv_storage::GroupCommitStats {
        self.committer.stats()
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

struct UpdateJob<E> {
    update: Option<UpdateFn<E>>,
    outcome: Option<Result<Result<Object, E>, StoreError>>,
    reply: oneshot::Sender<Result<Result<Object, E>, StoreError>>,
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
                self.outcome = Some(Ok(Ok(object)));
                Change::Put(bytes)
            }
            Err(e) => {
                self.outcome = Some(Ok(Err(e)));
                Change::Unchanged
            }
        }
    }

    fn done(self: Box<Self>, result: Result<(), StorageError>) {
        let outcome = match result {
            Err(e) => Err(StoreError::Storage(e)),
            Ok(()) => self.outcome.unwrap_or(Err(StoreError::Closed)),
        };
        // The requester may have given up (timeout); nothing to do then.
        let _ = self.reply.send(outcome);
    }
}
