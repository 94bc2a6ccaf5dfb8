//! A walk over every member's records of one partition at a time: each
//! member's replica objects and the objects of the hints it holds, in key
//! order, a page at a time (`PeerRequest::ScanPartition`), merged key by
//! key as a read merges replicas (`merge_into`, the bucket's conflict
//! mode). So every write that some member holds is seen, with its version
//! vector and its siblings. Backups (`backup`) and key listings
//! (`GET /v1/buckets/{bucket}/keys`, RESP `KEYS` and `SCAN`) walk the
//! cluster this way; a listing walks only its bucket's range of each
//! partition (object keys begin with the bucket, `hint::object_key`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::causality::{ConflictMode, Object};
use ringkv_core::hint::{object_key, split_object_key};
use ringkv_core::message::{PeerRequest, PeerResponse};
use ringkv_core::ring::{Layout, Member};

use crate::node::{Node, merge_into};
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

/// Why a walk stopped.
#[derive(Debug)]
pub enum Stop {
    /// A member did not answer (or refused); a walk that may skip members
    /// skips it instead (`Walk::missing`).
    Unanswered(String),
    /// A member sent something unreadable.
    Bad(String),
}

/// A walk over the cluster's records, one partition at a time.
pub struct Walk {
    node: Arc<Node>,
    layout: Arc<Layout>,
    /// Whether a member that does not answer is skipped (and named in
    /// `missing`) rather than stopping the walk.
    skip_unanswered: bool,
    /// Members skipped so far.
    pub missing: BTreeMap<NodeId, String>,
    /// Only this bucket's records, when set (its object-key prefix).
    prefix: Option<Vec<u8>>,
    partition: u32,
    cursors: Vec<Cursor>,
}

impl Walk {
    /// A walk over every bucket, or over `bucket` only.
    pub fn new(node: Arc<Node>, skip_unanswered: bool, bucket: Option<&str>) -> Walk {
        let layout = node.layout();
        Walk {
            node,
            layout,
            skip_unanswered,
            missing: BTreeMap::new(),
            prefix: bucket.map(|bucket| object_key(bucket, b"")),
            partition: 0,
            cursors: Vec::new(),
        }
    }

    /// The newest layout the walk has seen (at its start or at the start
    /// of its current partition).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Starts on `partition`, asking the members of the newest layout: a
    /// member that joined since the walk started may hold keys handed off
    /// to it, which their old holders then delete.
    pub fn start(&mut self, partition: u32) {
        self.layout = self.node.layout();
        self.partition = partition;
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
                    // Object keys of a bucket follow its prefix (the empty
                    // key is no key), so the scan starts right after it.
                    after: self.prefix.clone(),
                    page: VecDeque::new(),
                    done: false,
                });
            }
        }
        self.cursors = cursors;
    }

    /// The next key of the partition (bucket, key, the merge of every
    /// member's copies), or None at its end.
    pub async fn next(&mut self) -> Result<Option<(String, Vec<u8>, Object)>, Stop> {
        let partition = self.partition;
        let mut cursors = std::mem::take(&mut self.cursors);
        for cursor in cursors.iter_mut() {
            if cursor.page.is_empty()
                && !cursor.done
                && !self.missing.contains_key(&cursor.member)
                && let Err(message) = self.fill(partition, cursor).await
            {
                if !self.skip_unanswered {
                    return Err(Stop::Unanswered(message));
                }
                tracing::warn!(member = %cursor.name, error = %message, "a walk over the cluster's records skips a member that does not answer");
                self.missing.insert(cursor.member, cursor.name.clone());
            }
        }
        cursors.retain(|c| !self.missing.contains_key(&c.member));
        let node = &self.node;
        let next = take_smallest(&mut cursors, |bucket| node.bucket_props(bucket).conflict)
            .map_err(|e| Stop::Bad(format!("partition {partition}: {e}")))?;
        self.cursors = cursors;
        if let (Some(prefix), Some((bucket, key, _))) = (&self.prefix, &next)
            && !object_key(bucket, key).starts_with(prefix)
        {
            // Past the bucket's range: the partition is done for it.
            self.cursors.clear();
            return Ok(None);
        }
        Ok(next)
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

#[cfg(test)]
mod tests {
    use ringkv_core::causality::{NewVersion, VersionVector};

    use super::*;

    fn write(current: Option<&Object>, value: &str, actor: NodeId) -> Object {
        let context = current.map_or_else(VersionVector::new, |o| o.clock().clone());
        let new = NewVersion {
            value: Some(value.as_bytes().to_vec()),
            content_type: "text/plain".into(),
            now_ms: 1,
            expires_ms: None,
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
