//! Online backups and restores of a whole cluster (`GET /v1/backup`,
//! `POST /v1/restore`; `ringkv backup` and `ringkv restore` drive them).
//!
//! A backup is read from every member, one partition at a time: each
//! member's replica objects and the objects of the hints it holds, in key
//! order, a page at a time (`PeerRequest::ScanPartition`), merged key by
//! key as a read merges replicas (`merge_into`, the bucket's conflict
//! mode). So every acknowledged write that some member holds is in it,
//! with its version vector and its siblings. It is not a point-in-time
//! snapshot: writes made while it runs may be in it or not, as with
//! Riak's `riak-admin backup` or a Cassandra snapshot taken node by node.
//!
//! A restore merges each object into the replicas of its key under the
//! current layout, as read repair does (`ReplicaPut`, or `HintPut` to a
//! fallback for a primary that is down). A merge issues no dot, so a
//! restore never makes two versions with one dot, and what the cluster
//! wrote since the backup is kept: a version that the backup's supersedes
//! is replaced, one concurrent with it becomes its sibling (`lww` buckets
//! keep the later). Restoring the same file twice changes nothing the second
//! time.
//!
//! The file format is `ringkv_wire::backup`'s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ringkv_core::bucket::BucketProps;
use ringkv_core::causality::{ConflictMode, Object};
use ringkv_core::hint::split_object_key;
use ringkv_core::message::{PeerRequest, PeerResponse};
use ringkv_core::ring::{Layout, key_hash, partition_of};
use ringkv_core::{NodeId, ring::Member};
use ringkv_wire::backup::{
    FormatError, KIND_BUCKETS, KIND_END, KIND_ERROR, MAGIC, Parser, Record, Summary, encode_object,
    encode_record,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::node::{Node, merge_into, now_ms};
use crate::store::StoreError;

/// (object key, encoded object).
type KeyValue = (Vec<u8>, Vec<u8>);

/// A page of one member's scan holds about this many bytes at most ...
const PAGE_BYTES: usize = 1024 * 1024;
/// ... and at least this many ...
const MIN_PAGE_BYTES: usize = 64 * 1024;
/// ... so that the pages of all members together hold about this many.
const BUFFERED_BYTES: usize = 16 * 1024 * 1024;
/// The most records of one scan page.
const PAGE_RECORDS: usize = 1024;
/// The stream of a backup is sent in chunks of about this size.
const CHUNK_BYTES: usize = 256 * 1024;
/// Objects a restore merges into their replicas at once.
const RESTORE_IN_FLIGHT: usize = 64;
/// Errors a restore reports (it counts the others).
const ERRORS_REPORTED: usize = 10;

// ---------------------------------------------------------------- backup

impl Node {
    /// One page of this node's records of a partition (see
    /// `PeerRequest::ScanPartition`): (object key, encoded object), and
    /// whether none follows.
    pub fn scan_page(
        &self,
        partition: u32,
        hints: bool,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<(Vec<KeyValue>, bool), StoreError> {
        let page: Vec<KeyValue> = if hints {
            self.store
                .scan_hints(partition, after, PAGE_RECORDS)?
                .into_iter()
                .map(|(key, hint)| (key, hint.object.encode()))
                .collect()
        } else {
            self.store.scan_objects(partition, after, PAGE_RECORDS)?
        };
        let full = page.len() == PAGE_RECORDS;
        let mut bytes = 0;
        let mut entries = Vec::with_capacity(page.len());
        for (key, object) in page {
            bytes += key.len() + object.len();
            if !entries.is_empty() && bytes > max_bytes {
                return Ok((entries, false));
            }
            entries.push((key, object));
        }
        Ok((entries, !full))
    }
}

/// The records of one member in one space of a partition, a page at a time.
struct Cursor {
    member: NodeId,
    name: String,
    /// None: this node.
    addr: Option<String>,
    hints: bool,
    after: Option<Vec<u8>>,
    page: VecDeque<KeyValue>,
    done: bool,
}

/// Why a backup stopped.
struct Failed(String);

struct Backup {
    node: Arc<Node>,
    layout: Arc<Layout>,
    partial: bool,
    missing: BTreeMap<NodeId, String>,
    out: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    objects: u64,
}

/// The body of `GET /v1/backup`. With `partial`, a member that does not
/// answer is skipped (and named in the summary) instead of failing it.
pub fn backup_body(node: Arc<Node>, partial: bool) -> Body {
    let (tx, mut rx) = mpsc::channel(4);
    let layout = node.layout();
    let backup = Backup {
        node,
        layout,
        partial,
        missing: BTreeMap::new(),
        out: MAGIC.to_vec(),
        tx,
        objects: 0,
    };
    tokio::spawn(backup.run());
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

impl Backup {
    async fn run(mut self) {
        let started_ms = now_ms();
        info!(
            partitions = self.layout.partitions(),
            members = self.layout.members().len(),
            partial = self.partial,
            "backup started"
        );
        let result = self.write_all(started_ms).await;
        if let Err(Failed(message)) = result {
            warn!(error = %message, objects = self.objects, "backup failed");
            let mut record = Vec::new();
            encode_record(KIND_ERROR, message.as_bytes(), &mut record);
            self.out.extend_from_slice(&record);
        }
        let _ = self.flush(true).await;
    }

    async fn write_all(&mut self, started_ms: u64) -> Result<(), Failed> {
        let buckets: BTreeMap<String, BucketProps> = self
            .node
            .buckets()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.props))
            .collect();
        let body = serde_json::to_vec(&buckets).expect("bucket properties serialise");
        encode_record(KIND_BUCKETS, &body, &mut self.out);
        for partition in 0..self.layout.partitions() {
            self.partition(partition).await?;
        }
        let summary = Summary {
            objects: self.objects,
            buckets: buckets.len() as u64,
            partitions: self.layout.partitions(),
            layout_version: self.layout.version(),
            members: self
                .layout
                .members()
                .iter()
                .filter(|m| !self.missing.contains_key(&m.id))
                .map(|m| m.name.clone())
                .collect(),
            missing_members: self.missing.values().cloned().collect(),
            started_ms,
            finished_ms: now_ms(),
        };
        let body = serde_json::to_vec(&summary).expect("summary serialises");
        encode_record(KIND_END, &body, &mut self.out);
        info!(objects = self.objects, missing = ?summary.missing_members, "backup written");
        Ok(())
    }

    /// Sends what is buffered once it is a chunk (or at the end). Err: the
    /// reader went away.
    async fn flush(&mut self, all: bool) -> Result<(), Failed> {
        if self.out.is_empty() || (!all && self.out.len() < CHUNK_BYTES) {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.out));
        self.tx
            .send(Ok(chunk))
            .await
            .map_err(|_| Failed("the reader of the backup went away".into()))
    }

    fn cursors(&self) -> Vec<Cursor> {
        let members: Vec<&Member> = self
            .layout
            .members()
            .iter()
            .filter(|m| !self.missing.contains_key(&m.id))
            .collect();
        let mut cursors = Vec::with_capacity(members.len() * 2);
        for member in members {
            for hints in [false, true] {
                cursors.push(Cursor {
                    member: member.id,
                    name: member.name.clone(),
                    addr: (member.id != self.node.id).then(|| member.peer_addr.clone()),
                    hints,
                    after: None,
                    page: VecDeque::new(),
                    done: false,
                });
            }
        }
        cursors
    }

    async fn partition(&mut self, partition: u32) -> Result<(), Failed> {
        // The members of the newest layout: a member that joined since
        // the backup started may hold keys handed off to it, which their
        // old holders then delete.
        self.layout = self.node.layout();
        let mut cursors = self.cursors();
        loop {
            for cursor in cursors.iter_mut() {
                if cursor.page.is_empty()
                    && !cursor.done
                    && let Err(message) = self.fill(partition, cursor).await
                {
                    if !self.partial {
                        return Err(Failed(format!(
                            "{message} (a partial backup skips members that do not answer: ringkv backup --partial, or ?partial=true)"
                        )));
                    }
                    warn!(member = %cursor.name, error = %message, "backup skips a member that does not answer");
                    self.missing.insert(cursor.member, cursor.name.clone());
                }
            }
            cursors.retain(|c| !self.missing.contains_key(&c.member));
            let node = &self.node;
            let Some((bucket, key, object)) =
                take_smallest(&mut cursors, |bucket| node.bucket_props(bucket).conflict)
                    .map_err(|e| Failed(format!("partition {partition}: {e}")))?
            else {
                return Ok(());
            };
            encode_object(&bucket, &key, &object.encode(), &mut self.out);
            self.objects += 1;
            self.flush(false).await?;
        }
    }

    /// The next page of `cursor`. Err: why its member did not give it.
    async fn fill(&self, partition: u32, cursor: &mut Cursor) -> Result<(), String> {
        let node = &self.node;
        let cursors = 2 * self.layout.members().len().max(1);
        let max_bytes = (BUFFERED_BYTES / cursors)
            .clamp(MIN_PAGE_BYTES, PAGE_BYTES)
            .min(node.config.max_frame_bytes / 4);
        let (entries, done) = match &cursor.addr {
            None => node
                .scan_page(partition, cursor.hints, cursor.after.as_deref(), max_bytes)
                .map_err(|e| format!("this node's storage failed: {e}"))?,
            Some(addr) => {
                let request = PeerRequest::ScanPartition {
                    partition,
                    hints: cursor.hints,
                    after: cursor.after.clone(),
                    max_bytes: max_bytes as u32,
                };
                let timeout = Duration::from_millis(node.config.request_timeout_ms.max(10_000));
                match node.peers.request(addr, request, timeout).await {
                    Ok(PeerResponse::ScanPage { entries, done }) => (entries, done),
                    Ok(PeerResponse::Refused { message }) => {
                        return Err(format!("member {} refused: {message}", cursor.name));
                    }
                    Ok(_) => {
                        return Err(format!(
                            "member {} answered a scan with another message",
                            cursor.name
                        ));
                    }
                    Err(e) => return Err(format!("member {} did not answer: {e}", cursor.name)),
                }
            }
        };
        // A page must move on, in key order, or the merge would not end.
        let ordered = entries.windows(2).all(|w| w[0].0 < w[1].0);
        let after = cursor.after.as_deref();
        if !ordered
            || entries
                .first()
                .is_some_and(|(k, _)| after.is_some_and(|a| k.as_slice() <= a))
        {
            return Err(format!(
                "member {} sent a page out of key order",
                cursor.name
            ));
        }
        if let Some((key, _)) = entries.last() {
            cursor.after = Some(key.clone());
        }
        cursor.done = done || entries.is_empty();
        cursor.page.extend(entries);
        Ok(())
    }
}

/// Takes the smallest key at the front of the cursors' pages off each
/// that has it and merges its copies (`mode`: a bucket's conflict mode).
/// None when every page is empty.
fn take_smallest(
    cursors: &mut [Cursor],
    mode: impl Fn(&str) -> ConflictMode,
) -> Result<Option<(String, Vec<u8>, Object)>, String> {
    let Some(next) = cursors
        .iter()
        .filter_map(|c| c.page.front().map(|(key, _)| key))
        .min()
        .cloned()
    else {
        return Ok(None);
    };
    let (bucket, key) =
        split_object_key(&next).ok_or_else(|| format!("a malformed key {next:?}"))?;
    let mode = mode(&bucket);
    let mut merged: Option<Object> = None;
    for cursor in cursors.iter_mut() {
        if cursor.page.front().is_some_and(|(k, _)| *k == next) {
            let (_, bytes) = cursor.page.pop_front().expect("front");
            let object = Object::decode(&bytes).map_err(|e| {
                format!(
                    "{} holds an unreadable copy of {bucket}/{}: {e}",
                    cursor.name,
                    String::from_utf8_lossy(&key)
                )
            })?;
            merged = Some(merge_into(merged, &object, mode));
        }
    }
    let merged = merged.expect("the smallest key is at some cursor's front");
    Ok(Some((bucket, key, merged)))
}

// ---------------------------------------------------------------- restore

/// What `POST /v1/restore` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Objects merged into at least W of their replicas.
    pub objects_restored: u64,
    pub objects_failed: u64,
    /// Buckets configured from the backup (not configured here before).
    pub buckets_created: u64,
    /// Buckets already configured here, left as they are.
    pub buckets_kept: u64,
    /// The whole file was read, up to its end record.
    pub complete: bool,
    /// The backup's own summary, once its end record is read.
    pub summary: Option<Summary>,
    /// The first errors.
    pub errors: Vec<String>,
}

impl RestoreReport {
    fn error(&mut self, message: String) {
        if self.errors.len() < ERRORS_REPORTED {
            self.errors.push(message);
        }
    }
}

/// Reads a backup from `body` and merges it into the cluster. Returns the
/// report and, if the file was not a valid backup, why.
pub async fn restore(node: Arc<Node>, body: Body) -> (RestoreReport, Option<FormatError>) {
    let mut report = RestoreReport::default();
    let mut parser = Parser::new(node.config.max_frame_bytes);
    let mut stream = body.into_data_stream();
    let mut in_flight = FuturesUnordered::new();
    let mut format_error = None;
    'read: loop {
        let chunk = match stream.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                report.error(format!("reading the request body failed: {e}"));
                break;
            }
            None => {
                format_error = parser.finish().err();
                break;
            }
        };
        parser.push(&chunk);
        loop {
            let record = match parser.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(e) => {
                    format_error = Some(e);
                    break 'read;
                }
            };
            match record {
                Record::Buckets(buckets) => create_buckets(&node, buckets, &mut report),
                Record::Object {
                    bucket,
                    key,
                    object,
                } => {
                    while in_flight.len() >= RESTORE_IN_FLIGHT {
                        count(&mut report, in_flight.next().await);
                    }
                    in_flight.push(restore_object(node.clone(), bucket, key, object));
                }
                Record::End(summary) => {
                    report.summary = Some(summary);
                }
                Record::Error(message) => {
                    format_error = Some(FormatError {
                        records: parser.records(),
                        message: format!("the backup failed while it was written: {message}"),
                    });
                    break 'read;
                }
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        count(&mut report, Some(result));
    }
    report.complete = format_error.is_none() && report.summary.is_some();
    info!(
        restored = report.objects_restored,
        failed = report.objects_failed,
        complete = report.complete,
        "restore finished"
    );
    (report, format_error)
}

fn count(report: &mut RestoreReport, result: Option<Result<(), String>>) {
    match result {
        Some(Ok(())) => report.objects_restored += 1,
        Some(Err(message)) => {
            report.objects_failed += 1;
            report.error(message);
        }
        None => {}
    }
}

fn create_buckets(
    node: &Arc<Node>,
    buckets: BTreeMap<String, BucketProps>,
    report: &mut RestoreReport,
) {
    let mut created = false;
    for (name, props) in buckets {
        if node.buckets().get(&name).is_some() {
            report.buckets_kept += 1;
            continue;
        }
        match node.set_bucket(&name, props) {
            Ok(()) => {
                report.buckets_created += 1;
                created = true;
            }
            Err(e) => report.error(format!("bucket {name}: {e}")),
        }
    }
    if created {
        let gossip = node.clone();
        tokio::spawn(async move { gossip.announce().await });
    }
}

/// Merges one object into the replicas of its key; Ok once W of them
/// (the bucket's `w`) have it.
async fn restore_object(
    node: Arc<Node>,
    bucket: String,
    key: Vec<u8>,
    object: Object,
) -> Result<(), String> {
    let layout = node.layout();
    let effective = node.effective(&bucket, &layout);
    let w = effective.quorum("w", None).map_err(|e| e.to_string())?;
    let partition = partition_of(key_hash(bucket.as_bytes(), &key), layout.partitions());
    let plan = node.replica_plan(&layout, partition, effective.n);
    let encoded = object.encode();
    let timeout = Duration::from_millis(node.config.request_timeout_ms);
    let sends = plan.iter().map(|replica| {
        let request = replica.write(
            &bucket,
            &key,
            &encoded,
            effective.props.conflict,
            effective.durability,
        );
        let node = node.clone();
        let addr = Node::peer_addr(&layout, replica.node);
        let replica = replica.node;
        async move {
            if replica == node.id {
                return node.handle_peer(request).await;
            }
            let Some(addr) = addr else {
                return PeerResponse::Refused {
                    message: "not a member".into(),
                };
            };
            let result = node.peers.request(&addr, request, timeout).await;
            node.observe(replica, &result);
            result.unwrap_or_else(|e| PeerResponse::Refused {
                message: e.to_string(),
            })
        }
    });
    let answers = futures::future::join_all(sends).await;
    let acked = answers
        .iter()
        .filter(|a| matches!(a, PeerResponse::ReplicaPutDone))
        .count();
    if acked >= w {
        return Ok(());
    }
    let why = answers
        .iter()
        .find_map(|a| match a {
            PeerResponse::Refused { message } => Some(message.as_str()),
            _ => None,
        })
        .unwrap_or("no replica answered");
    Err(format!(
        "{bucket}/{}: {acked} of the {w} replicas needed took it ({why})",
        String::from_utf8_lossy(&key)
    ))
}

#[cfg(test)]
mod tests {
    use ringkv_core::causality::{NewVersion, VersionVector};
    use ringkv_core::hint::object_key;

    use super::*;

    fn write(current: Option<&Object>, value: &str, actor: NodeId) -> Object {
        let context = current.map_or_else(VersionVector::new, |o| o.clock().clone());
        let new = NewVersion {
            value: Some(value.as_bytes().to_vec()),
            content_type: "text/plain".into(),
            now_ms: 1,
        };
        Object::update(current, &context, new, actor, ConflictMode::Siblings, 100).unwrap()
    }

    fn values(object: &Object) -> Vec<&[u8]> {
        let mut values: Vec<&[u8]> = object
            .live_siblings()
            .filter_map(|s| s.value.as_deref())
            .collect();
        values.sort();
        values
    }

    fn cursor(name: &str, entries: Vec<(&str, &Object)>) -> Cursor {
        Cursor {
            member: 1,
            name: name.into(),
            addr: None,
            hints: false,
            after: None,
            page: entries
                .into_iter()
                .map(|(key, o)| (object_key("b", key.as_bytes()), o.encode()))
                .collect(),
            done: true,
        }
    }

    #[test]
    fn each_key_comes_once_in_order_with_its_copies_merged() {
        let old = write(None, "old", 7);
        let new = write(Some(&old), "new", 7);
        let concurrent = write(Some(&old), "other", 8);
        let only = write(None, "only", 9);
        // Three members: one stale, one with the newest version, one with
        // a concurrent version and a key nobody else has.
        let mut cursors = vec![
            cursor("stale", vec![("a", &old), ("c", &old)]),
            cursor("fresh", vec![("a", &new), ("c", &new)]),
            cursor("other", vec![("b", &only), ("c", &concurrent)]),
        ];
        let mut taken = Vec::new();
        while let Some((bucket, key, object)) =
            take_smallest(&mut cursors, |_| ConflictMode::Siblings).unwrap()
        {
            assert_eq!(bucket, "b");
            taken.push((String::from_utf8(key).unwrap(), object));
        }
        let keys: Vec<&str> = taken.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(values(&taken[0].1), [b"new".as_slice()]);
        assert_eq!(values(&taken[1].1), [b"only".as_slice()]);
        assert_eq!(
            values(&taken[2].1),
            [b"new".as_slice(), b"other".as_slice()]
        );
        assert!(cursors.iter().all(|c| c.page.is_empty()));
    }

    #[test]
    fn a_damaged_copy_stops_the_backup() {
        let object = write(None, "v", 1);
        let mut bad = cursor("broken", vec![("a", &object)]);
        bad.page[0].1.truncate(3);
        let mut cursors = vec![cursor("fine", vec![("a", &object)]), bad];
        let e = take_smallest(&mut cursors, |_| ConflictMode::Siblings).unwrap_err();
        assert!(e.contains("broken holds an unreadable copy of b/a"), "{e}");
    }
}
