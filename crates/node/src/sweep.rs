//! The tombstone sweeper and the expiry loop. A delete is reaped when it is made (every
//! primary acknowledged it) or when a read finds its tombstone on every
//! primary (`Node::reap`). A delete made while a member was down or silent
//! is neither: until this sweeper, its tombstone stayed for as long as
//! nobody read the key, on every replica, in the anti-entropy trees and in
//! every backup.
//!
//! Every `--tombstone-sweep-interval-ms` (default a day: a sweep reads
//! every object of the partitions the node owns, at most a page of 256 a
//! millisecond), a node looks through the
//! partitions it owns (it is the first primary of each of their keys, so
//! one node sweeps each key) for objects that are tombstones only and older
//! than the reap delay, and reads each of them as a client's read would,
//! from every replica (`coordinate_get`): the read repairs replicas that
//! lack the tombstone, and when every primary answers it, reaps it by the
//! same rules as any read. One key at a time, and not while
//! `MAX_PENDING_REAPS` reaps are already waiting.
//!
//! Expired values are retired (whatever `--delete-mode`): an object whose
//! every value has expired is read as a client would, and if the merge of
//! the replicas' copies has expired too, deleted with that read's context,
//! stamped at the latest expiry (`Node::coordinate_put`'s
//! `retire_expired_at`), and only where the coordinator's own copy still
//! holds no live value. A write made since is kept: in a `siblings`
//! bucket the context does not cover it, in an `lww` one it is stamped
//! later. The tombstone is then reaped by the rules above. The expiry loop
//! does this every `--expiry-interval-ms` (a second) for the keys of the
//! store's expiry index (`store::Expiries`) that have come due in the
//! partitions this node owns, `EXPIRY_CONCURRENCY` at a time; the sweep
//! finds any the index missed (over `MAX_EXPIRIES`, or written while
//! another node owned the partition).

use std::sync::Arc;
use std::time::Duration;

use ringkv_core::causality::Object;
use ringkv_core::hint::split_object_key;
use ringkv_core::message::{ClientOp, ClientReply, OpError};
use tracing::{debug, info, warn};

use crate::config::DeleteMode;
use crate::node::{Node, now_ms};

/// Records read from the store at a time.
const PAGE: usize = 256;
/// Expired keys the expiry loop retires at once (each a read and a write).
const EXPIRY_CONCURRENCY: usize = 16;
/// Expired keys taken from the index at a time.
const EXPIRY_BATCH: usize = 1024;
/// How long a key whose retirement failed (replicas unreachable) waits
/// before the expiry loop tries it again.
const EXPIRY_RETRY: Duration = Duration::from_secs(10);

impl Node {
    /// Sweeps every `tombstone_sweep_interval_ms` (0: never): the
    /// tombstones left behind, when tombstones are reaped at all, and the
    /// expired values the expiry loop missed.
    pub async fn tombstone_sweep_loop(self: Arc<Self>) {
        let interval_ms @ 1.. = self.config.tombstone_sweep_interval_ms else {
            return;
        };
        let reap_delay_ms = match self.config.delete_mode {
            DeleteMode::ReapAfterMs(delay_ms) => Some(delay_ms),
            DeleteMode::Keep => None,
        };
        loop {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            match self.sweep(reap_delay_ms).await {
                Ok(Swept {
                    tombstones: 0,
                    expired: 0,
                }) => {}
                Ok(Swept {
                    tombstones,
                    expired,
                }) => info!(
                    tombstones,
                    expired, "sweep read tombstones left behind and retired expired values"
                ),
                Err(e) => warn!(error = %e, "tombstone sweep stopped"),
            }
        }
    }

    /// One sweep of the partitions this node owns: reads the tombstones
    /// older than `reap_delay_ms` (`None`: tombstones are kept) and
    /// retires the expired values.
    async fn sweep(
        self: &Arc<Self>,
        reap_delay_ms: Option<u64>,
    ) -> Result<Swept, crate::store::StoreError> {
        let layout = self.layout();
        let mut swept = Swept::default();
        for partition in 0..layout.partitions() {
            if layout.owner(partition) != self.id {
                continue;
            }
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self
                    .store()
                    .scan_objects(partition, after.as_deref(), PAGE)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                let full = page.len() == PAGE;
                for (raw, bytes) in page {
                    let Ok(object) = Object::decode(&bytes) else {
                        continue;
                    };
                    let Some((bucket, key)) = split_object_key(&raw) else {
                        continue;
                    };
                    if object.is_expired_at(now_ms()) {
                        if self.retire_expired(bucket, key).await == Retired::Deleted {
                            swept.expired += 1;
                        }
                        continue;
                    }
                    if !reap_delay_ms.is_some_and(|delay| left_behind(&object, delay)) {
                        continue;
                    }
                    if self.reaps_waiting() {
                        debug!("tombstone sweep paused: reaps are waiting");
                        return Ok(swept);
                    }
                    let timeout_ms = self.config.request_timeout_ms;
                    let reply = self
                        .coordinate_get(bucket, key, None, None, timeout_ms)
                        .await;
                    if let ClientReply::Failed(e) = reply {
                        debug!(error = %e, "tombstone sweep: a read failed");
                    }
                    swept.tombstones += 1;
                    self.metrics.tombstones_swept.inc();
                }
                if !full || self.layout().owner(partition) != self.id {
                    break;
                }
                // At most a page a millisecond: a sweep reads every object of
                // the partitions this node owns.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(swept)
    }

    /// Retires the keys of the expiry index that have come due, every
    /// `expiry_interval_ms` (0: never).
    pub async fn expiry_loop(self: Arc<Self>) {
        let interval_ms @ 1.. = self.config.expiry_interval_ms else {
            return;
        };
        let node = &self;
        loop {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            loop {
                let due = self.store().expiries().take_due(now_ms(), EXPIRY_BATCH);
                let taken = due.len();
                let layout = self.layout();
                // Another node owns the rest, and retires them.
                let mine: Vec<(u32, Vec<u8>)> = due
                    .into_iter()
                    .filter(|(partition, _)| layout.owner(*partition) == self.id)
                    .collect();
                for chunk in mine.chunks(EXPIRY_CONCURRENCY) {
                    futures::future::join_all(chunk.iter().map(
                        |(partition, raw_key)| async move {
                            let Some((bucket, key)) = split_object_key(raw_key) else {
                                return;
                            };
                            if node.retire_expired(bucket, key).await == Retired::Failed {
                                let again = now_ms() + EXPIRY_RETRY.as_millis() as u64;
                                node.store().expiries().record(again, *partition, raw_key);
                            }
                        },
                    ))
                    .await;
                }
                if taken < EXPIRY_BATCH {
                    break;
                }
            }
        }
    }

    /// Reads a key whose local copy has expired, as a client would, and
    /// deletes it if the replicas' merge has expired too (see the module
    /// documentation).
    async fn retire_expired(self: &Arc<Self>, bucket: String, key: Vec<u8>) -> Retired {
        let timeout_ms = self.config.request_timeout_ms;
        let merged = match self
            .coordinate_get(bucket.clone(), key.clone(), None, None, timeout_ms)
            .await
        {
            ClientReply::Found {
                object: Some(bytes),
            } => Object::decode(&bytes).ok(),
            ClientReply::Failed(e) => {
                debug!(error = %e, "expiry sweep: a read failed");
                return Retired::Failed;
            }
            _ => None,
        };
        let Some(merged) = merged.filter(|m| m.is_expired_at(now_ms())) else {
            return Retired::NotExpired;
        };
        let Some(expired_at) = merged.expires_at() else {
            return Retired::NotExpired;
        };
        let delete = ClientOp::Put {
            bucket,
            key,
            value: None,
            content_type: String::new(),
            context: merged.clock().clone(),
            w: None,
            pw: None,
            timeout_ms,
        };
        match self
            .coordinate_put(delete, None, Some(expired_at), false)
            .await
        {
            ClientReply::Written { .. } => {
                self.metrics.expired_swept.inc();
                Retired::Deleted
            }
            // Written since, on this node.
            ClientReply::Failed(OpError::BadRequest { .. }) => Retired::NotExpired,
            reply => {
                debug!(?reply, "expiry sweep: the delete was not made");
                Retired::Failed
            }
        }
    }
}

/// What became of a key [`Node::retire_expired`] was asked to delete.
#[derive(Debug, PartialEq, Eq)]
enum Retired {
    Deleted,
    /// Written again since it expired (or gone already): nothing to do.
    NotExpired,
    /// A read or the delete did not reach enough replicas.
    Failed,
}

/// What one sweep did.
#[derive(Debug, Default)]
struct Swept {
    /// Tombstones left behind that it read.
    tombstones: u64,
    /// Keys whose values had all expired that it deleted.
    expired: u64,
}

/// Whether `object` is tombstones only, the newest older than `delay_ms`:
/// a delete that should have been reaped.
fn left_behind(object: &Object, delay_ms: u64) -> bool {
    let newest = object.siblings().iter().map(|s| s.modified_ms).max();
    object.siblings().iter().all(|s| s.is_tombstone())
        && newest.is_some_and(|ms| ms.saturating_add(delay_ms) <= now_ms())
}
