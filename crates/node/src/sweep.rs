//! The tombstone sweeper. A delete is reaped when it is made (every
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

use std::sync::Arc;
use std::time::Duration;

use ringkv_core::causality::Object;
use ringkv_core::hint::split_object_key;
use ringkv_core::message::ClientReply;
use tracing::{debug, info, warn};

use crate::config::DeleteMode;
use crate::node::{Node, now_ms};

/// Records read from the store at a time.
const PAGE: usize = 256;

impl Node {
    /// Sweeps every `tombstone_sweep_interval_ms` (0: never), while
    /// tombstones are reaped at all.
    pub async fn tombstone_sweep_loop(self: Arc<Self>) {
        let (DeleteMode::ReapAfterMs(delay_ms), interval_ms @ 1..) = (
            self.config.delete_mode,
            self.config.tombstone_sweep_interval_ms,
        ) else {
            return;
        };
        loop {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            match self.sweep(delay_ms).await {
                Ok(0) => {}
                Ok(read) => info!(
                    tombstones = read,
                    "tombstone sweep read tombstones left behind"
                ),
                Err(e) => warn!(error = %e, "tombstone sweep stopped"),
            }
        }
    }

    /// One sweep: reads the tombstones older than `delay_ms` in the
    /// partitions this node owns. Returns how many it read.
    async fn sweep(self: &Arc<Self>, delay_ms: u64) -> Result<u64, crate::store::StoreError> {
        let layout = self.layout();
        let mut read = 0;
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
                    if !self.left_behind(&bytes, delay_ms) {
                        continue;
                    }
                    let Some((bucket, key)) = split_object_key(&raw) else {
                        continue;
                    };
                    if self.reaps_waiting() {
                        debug!("tombstone sweep paused: reaps are waiting");
                        return Ok(read);
                    }
                    let timeout_ms = self.config.request_timeout_ms;
                    let reply = self
                        .coordinate_get(bucket, key, None, None, timeout_ms)
                        .await;
                    if let ClientReply::Failed(e) = reply {
                        debug!(error = %e, "tombstone sweep: a read failed");
                    }
                    read += 1;
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
        Ok(read)
    }

    /// Whether `bytes` (a stored object) is tombstones only, the newest
    /// older than `delay_ms`: a delete that should have been reaped.
    fn left_behind(&self, bytes: &[u8], delay_ms: u64) -> bool {
        let Ok(object) = Object::decode(bytes) else {
            return false;
        };
        let newest = object.siblings().iter().map(|s| s.modified_ms).max();
        object.siblings().iter().all(|s| s.is_tombstone())
            && newest.is_some_and(|ms| ms.saturating_add(delay_ms) <= now_ms())
    }
}
