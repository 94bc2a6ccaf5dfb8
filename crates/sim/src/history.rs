//! `History`: what the simulated clients did and saw, one record per
//! operation with its invoke and completion time, outcome, the value a
//! write wrote and the context it carried (and where that context came
//! from), the versions a read returned and the context it got. The input
//! of the checkers; tests can also build one by hand.

use ringkv_core::causality::VersionVector;

/// Index of an operation in [`History::ops`].
pub type OpId = usize;

/// Every write gets a unique id, `c{client}-{n}`; a put writes the id's
/// bytes as its value, a delete writes a tombstone. Both carry the id in
/// their content type (`WRITE_TAG_PREFIX` + id) so that a reader can tell
/// which write a version (tombstones included) comes from.
pub const WRITE_TAG_PREFIX: &str = "text/plain; ringkv-sim-write=";

pub fn write_tag(write: &str) -> String {
    format!("{WRITE_TAG_PREFIX}{write}")
}

/// The write id in a content type made by [`write_tag`].
pub fn write_of_tag(content_type: &str) -> Option<&str> {
    content_type.strip_prefix(WRITE_TAG_PREFIX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// Put: acknowledged (W replicas). Get: answered.
    Ok,
    /// An error answer. For a put this is *not* proof that nothing was
    /// written (fewer than W replicas may have it): the checkers treat it
    /// like `Unknown`.
    Failed,
    /// No answer (timeout, connection lost): may or may not have happened.
    Unknown,
}

/// One version a read returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenVersion {
    /// The write id from the version's content type, as stored (a bug could
    /// make it name no write).
    pub write: String,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub write: String,
    /// `None`: a delete.
    pub value: Option<Vec<u8>>,
    /// The causal context the client sent (empty: blind write).
    pub context: VersionVector,
    /// The operation whose returned context this write carried: a read
    /// (the usual read-modify-write) or an earlier write.
    pub context_from: Option<OpId>,
    /// The context an acknowledged write returned.
    pub returned_context: Option<VersionVector>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub r: Option<u32>,
    /// A read of the final check (after healing, with R = N).
    pub final_read: bool,
    /// Every version returned, tombstones included, in the reply's order.
    pub seen: Vec<SeenVersion>,
    /// The context returned (None when no replica had the key).
    pub context: Option<VersionVector>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write(WriteRecord),
    Read(ReadRecord),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    pub client: usize,
    /// The node the client sent the operation to.
    pub node: usize,
    pub key: String,
    pub invoke_ms: u64,
    pub complete_ms: Option<u64>,
    pub outcome: Outcome,
    pub kind: OpKind,
}

impl OpRecord {
    pub fn as_write(&self) -> Option<&WriteRecord> {
        match &self.kind {
            OpKind::Write(write) => Some(write),
            OpKind::Read(_) => None,
        }
    }

    pub fn as_read(&self) -> Option<&ReadRecord> {
        match &self.kind {
            OpKind::Read(read) => Some(read),
            OpKind::Write(_) => None,
        }
    }

    /// Live values a read returned (tombstones left out), as strings.
    pub fn live_values(&self) -> Vec<String> {
        self.as_read()
            .map(|read| {
                read.seen
                    .iter()
                    .filter_map(|s| s.value.as_ref())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<OpRecord>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn push(&mut self, record: OpRecord) -> OpId {
        self.ops.push(record);
        self.ops.len() - 1
    }

    pub fn get(&self, op: OpId) -> &OpRecord {
        &self.ops[op]
    }

    /// The write op with id `write`, if any.
    pub fn find_write(&self, write: &str) -> Option<OpId> {
        self.ops
            .iter()
            .position(|op| op.as_write().is_some_and(|w| w.write == write))
    }

    // Builders for hand-made histories (checker tests). Times are the
    // index of the operation; the client is 0, the node 0.

    /// Records a completed put of value `write` (a delete when `delete`).
    pub fn record_write(
        &mut self,
        key: &str,
        write: &str,
        delete: bool,
        context_from: Option<OpId>,
        outcome: Outcome,
    ) -> OpId {
        let time = self.ops.len() as u64;
        self.push(OpRecord {
            client: 0,
            node: 0,
            key: key.to_string(),
            invoke_ms: time,
            complete_ms: Some(time),
            outcome,
            kind: OpKind::Write(WriteRecord {
                write: write.to_string(),
                value: (!delete).then(|| write.as_bytes().to_vec()),
                context: VersionVector::new(),
                context_from,
                returned_context: None,
            }),
        })
    }

    /// Records a successful read that returned the versions of `writes`
    /// (each as its write recorded it: value or tombstone; unknown ids as
    /// values equal to the id).
    pub fn record_read(&mut self, key: &str, writes: &[&str], final_read: bool) -> OpId {
        let seen = writes
            .iter()
            .map(|w| {
                let value = match self.find_write(w) {
                    Some(op) => self.ops[op].as_write().and_then(|r| r.value.clone()),
                    None => Some(w.as_bytes().to_vec()),
                };
                SeenVersion {
                    write: (*w).to_string(),
                    value,
                }
            })
            .collect();
        let time = self.ops.len() as u64;
        self.push(OpRecord {
            client: 0,
            node: 0,
            key: key.to_string(),
            invoke_ms: time,
            complete_ms: Some(time),
            outcome: Outcome::Ok,
            kind: OpKind::Read(ReadRecord {
                r: None,
                final_read,
                seen,
                context: Some(VersionVector::new()),
            }),
        })
    }
}
