//! Online backups and restores of a whole cluster (`GET /v1/backup`,
//! `POST /v1/restore`; `ringkv backup` and `ringkv restore` drive them).
//!
//! A backup is read from every member, one partition at a time (a
//! `walk::Walk`): each member's replica objects and the objects of the
//! hints it holds, merged key by key as a read merges replicas. So every
//! acknowledged write that some member holds is in it,
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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ringkv_core::bucket::BucketProps;
use ringkv_core::causality::Object;
use ringkv_core::message::PeerResponse;
use ringkv_core::ring::{key_hash, partition_of};
use ringkv_wire::backup::{
    FormatError, KIND_BUCKETS, KIND_END, KIND_ERROR, MAGIC, Parser, Record, Summary, encode_object,
    encode_record,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::node::{Node, now_ms};
use crate::walk::{Stop, Walk};

/// The stream of a backup is sent in chunks of about this size.
const CHUNK_BYTES: usize = 256 * 1024;
/// Objects a restore merges into their replicas at once.
const RESTORE_IN_FLIGHT: usize = 64;
/// Errors a restore reports (it counts the others).
const ERRORS_REPORTED: usize = 10;

// ---------------------------------------------------------------- backup

/// Why a backup stopped.
struct Failed(String);

struct Backup {
    node: Arc<Node>,
    walk: Walk,
    out: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    objects: u64,
}

/// The body of `GET /v1/backup`. With `partial`, a member that does not
/// answer is skipped (and named in the summary) instead of failing it.
pub fn backup_body(node: Arc<Node>, partial: bool) -> Body {
    let (tx, mut rx) = mpsc::channel(4);
    let backup = Backup {
        walk: Walk::new(node.clone(), partial, None),
        node,
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
        let layout = self.walk.layout();
        info!(
            partitions = layout.partitions(),
            members = layout.members().len(),
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
        for partition in 0..self.walk.layout().partitions() {
            self.walk.start(partition);
            loop {
                let next = self.walk.next().await.map_err(|stop| match stop {
                    Stop::Unanswered(message) => Failed(format!(
                        "{message} (a partial backup skips members that do not answer: ringkv backup --partial, or ?partial=true)"
                    )),
                    Stop::Bad(message) => Failed(message),
                })?;
                let Some((bucket, key, object)) = next else {
                    break;
                };
                encode_object(&bucket, &key, &object.encode(), &mut self.out);
                self.objects += 1;
                self.flush(false).await?;
            }
        }
        let (layout, missing) = (self.walk.layout(), &self.walk.missing);
        let summary = Summary {
            objects: self.objects,
            buckets: buckets.len() as u64,
            partitions: layout.partitions(),
            layout_version: layout.version(),
            members: layout
                .members()
                .iter()
                .filter(|m| !missing.contains_key(&m.id))
                .map(|m| m.name.clone())
                .collect(),
            missing_members: missing.values().cloned().collect(),
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
