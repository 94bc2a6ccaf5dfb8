//! The history checkers: what must hold of every run, judged only from what
//! clients did and saw (no peeking at dots or replicas; the replica-side
//! checks, convergence and monotonic clocks, live in [`crate::replicas`]).
//!
//! A write *covers* what its causal context came from: the versions
//! returned by the read it got the context from, or the write whose
//! returned context it passed on (unless that context is the one the write
//! was sent with, which `written_context` returns when it cannot cover the
//! new version safely), and transitively whatever those covered.
//!
//! - **No acknowledged write lost** (siblings buckets, DESIGN §1): every
//!   write acknowledged OK is in the final read of its key, or some write
//!   of the key (acknowledged or merely attempted) covered it.
//! - **Nothing resurrected**: no read returns a version together with a
//!   version that covers it (every read, final or not: the covering
//!   version's clock holds the covered dot, so any merge that holds the
//!   first has dropped the second); and the final read, after convergence,
//!   returns no version that an acknowledged write or delete covered.
//!   Earlier reads may be stale (sloppy quorums need not intersect) and are
//!   not held to the second rule.
//! - **No invented values**: every version any read returned is one some
//!   client wrote (same value or tombstone, same key), before that read
//!   completed.
//! - **LWW**: the final read of an `lww` bucket holds at most one version.
//!
//! Buffered durability may lose what a node committed since its last sync
//! when it crashes (DESIGN §1, docs/ARCHITECTURE.md "Durability modes").
//! Given the crash windows of a run ([`CrashWindow`]), an acknowledged write
//! may be lost only if as many nodes as acknowledged it (W) crashed before
//! syncing it ([`writes_allowed_lost`]); everything else above still holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ringkv_core::causality::ConflictMode;

use crate::history::{History, OpId, OpKind, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// An acknowledged write is neither in the final read nor covered by a
    /// later write's context.
    LostWrite,
    /// A resurrection: a read returned a version beside one that covers
    /// it, or the final read returned a version an acknowledged write
    /// covered.
    SupersededVersionReturned,
    /// A read returned a version no client wrote (or wrote later, or to
    /// another key, or with another value).
    UnknownVersion,
    /// A key that was written has no successful final read.
    FinalReadMissing,
    /// An `lww` bucket's final read returned more than one version.
    SiblingsInLww,
    /// After healing and the quiet period (hinted handoff and anti-entropy
    /// only, before any final read), the primaries of a key hold different
    /// objects, or the primaries of a partition have different Merkle roots.
    Divergence,
    /// A hint was still not handed off long after every node was up.
    HintsNotDelivered,
    /// A replica applied a write whose clock does not descend the clock it
    /// replaced: the key's causal history went backwards on that replica.
    ClockRegressed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub key: String,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on key {:?}: {}", self.kind, self.key, self.detail)
    }
}

/// A crash of a node with buffered writes not yet synced: what it had
/// committed since `unsynced_since_ms` may be gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashWindow {
    pub node: usize,
    pub unsynced_since_ms: u64,
    pub crash_ms: u64,
}

/// Acknowledged writes that crashes may have lost: a write acknowledged by
/// `w` replicas is gone only if each of them crashed before syncing it,
/// so at least `w` distinct nodes have a window that overlaps the write
/// (the node crashed after the write was invoked, and its unsynced writes
/// date from before the write was acknowledged).
pub fn writes_allowed_lost(history: &History, windows: &[CrashWindow], w: usize) -> BTreeSet<OpId> {
    history
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.as_write().is_some() && op.outcome == Outcome::Ok)
        .filter(|(_, op)| {
            let crashed: BTreeSet<usize> = windows
                .iter()
                .filter(|window| {
                    op.invoke_ms <= window.crash_ms
                        && op.complete_ms.unwrap_or(0) >= window.unsynced_since_ms
                })
                .map(|window| window.node)
                .collect();
            crashed.len() >= w.max(1)
        })
        .map(|(op, _)| op)
        .collect()
}

/// Runs every history check for a bucket in `mode`.
pub fn check_history(history: &History, mode: ConflictMode) -> Vec<Violation> {
    check_history_with(history, mode, &BTreeSet::new())
}

/// Runs every history check, allowing the writes in `allowed_lost` (see
/// [`writes_allowed_lost`]) to be missing from the final read.
pub fn check_history_with(
    history: &History,
    mode: ConflictMode,
    allowed_lost: &BTreeSet<OpId>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let writes = write_index(history);
    check_versions_were_written(history, &writes, &mut violations);
    let covers = Covers::compute(history, &writes);
    if mode == ConflictMode::Siblings {
        check_no_read_holds_a_covered_version(history, &writes, &covers, &mut violations);
    }

    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for op in &history.ops {
        if op.as_write().is_some() {
            keys.insert(&op.key);
        }
    }
    for key in keys {
        let final_read = history.ops.iter().enumerate().rev().find(|(_, op)| {
            op.key == key && op.outcome == Outcome::Ok && op.as_read().is_some_and(|r| r.final_read)
        });
        let Some((final_op, final_record)) = final_read else {
            violations.push(Violation {
                kind: ViolationKind::FinalReadMissing,
                key: key.to_string(),
                detail: "no final read of this key succeeded".to_string(),
            });
            continue;
        };
        let final_read = final_record.as_read().expect("found as a read");
        let final_writes: BTreeSet<OpId> = final_read
            .seen
            .iter()
            .filter_map(|s| writes.get(s.write.as_str()).copied())
            .collect();
        let shown: Vec<&str> = final_read.seen.iter().map(|s| s.write.as_str()).collect();
        match mode {
            ConflictMode::Lww => {
                if final_read.seen.len() > 1 {
                    violations.push(Violation {
                        kind: ViolationKind::SiblingsInLww,
                        key: key.to_string(),
                        detail: format!("final read (op {final_op}) returned {shown:?}"),
                    });
                }
            }
            ConflictMode::Siblings => {
                for (op, record) in history.ops.iter().enumerate() {
                    let Some(write) = record.as_write() else {
                        continue;
                    };
                    if record.key != key || record.outcome != Outcome::Ok {
                        continue;
                    }
                    let lost = !final_writes.contains(&op) && !covers.is_covered(op);
                    if allowed_lost.contains(&op) && !final_writes.contains(&op) {
                        // May be lost in crashes before its sync: then what
                        // it covered comes back (the state before it). A
                        // write that covered it is checked on its own.
                        continue;
                    }
                    if lost {
                        violations.push(Violation {
                            kind: ViolationKind::LostWrite,
                            key: key.to_string(),
                            detail: format!(
                                "write {} (op {op}, client {}, node {}, invoked at {} ms, acknowledged at {} ms) \
                                 is not in the final read {shown:?} and no write's context covered it",
                                write.write,
                                record.client,
                                record.node,
                                record.invoke_ms,
                                record.complete_ms.unwrap_or(0),
                            ),
                        });
                    }
                    // A covering version in the read itself is reported by
                    // the check of every read.
                    if final_writes.contains(&op) {
                        continue;
                    }
                    for covered in covers.of(op) {
                        if final_writes.contains(covered) {
                            let old = history.ops[*covered]
                                .as_write()
                                .map_or("?", |w| w.write.as_str());
                            violations.push(Violation {
                                kind: ViolationKind::SupersededVersionReturned,
                                key: key.to_string(),
                                detail: format!(
                                    "acknowledged write {} (op {op}) covered {old}, yet the final read returned {shown:?}",
                                    write.write
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
    violations
}

/// No read returns a version together with one that covers it.
fn check_no_read_holds_a_covered_version(
    history: &History,
    writes: &BTreeMap<&str, OpId>,
    covers: &Covers,
    violations: &mut Vec<Violation>,
) {
    for (op, record) in history.ops.iter().enumerate() {
        let Some(read) = record.as_read() else {
            continue;
        };
        if record.outcome != Outcome::Ok {
            continue;
        }
        let seen: Vec<(OpId, &str)> = read
            .seen
            .iter()
            .filter_map(|s| writes.get(s.write.as_str()).map(|&w| (w, s.write.as_str())))
            .collect();
        for &(newer, newer_name) in &seen {
            for &(older, older_name) in &seen {
                if covers.of(newer).any(|&c| c == older) {
                    violations.push(Violation {
                        kind: ViolationKind::SupersededVersionReturned,
                        key: record.key.clone(),
                        detail: format!(
                            "read op {op} (at {} ms) returned {older_name} beside {newer_name}, whose context covered it",
                            record.invoke_ms
                        ),
                    });
                }
            }
        }
    }
}

/// Write id → the op that wrote it (the first, should ids repeat).
fn write_index(history: &History) -> BTreeMap<&str, OpId> {
    let mut index = BTreeMap::new();
    for (op, record) in history.ops.iter().enumerate() {
        if let Some(write) = record.as_write() {
            index.entry(write.write.as_str()).or_insert(op);
        }
    }
    index
}

fn check_versions_were_written(
    history: &History,
    writes: &BTreeMap<&str, OpId>,
    violations: &mut Vec<Violation>,
) {
    for (op, record) in history.ops.iter().enumerate() {
        let OpKind::Read(read) = &record.kind else {
            continue;
        };
        if record.outcome != Outcome::Ok {
            continue;
        }
        for seen in &read.seen {
            let problem = match writes.get(seen.write.as_str()) {
                None => Some("no client wrote it".to_string()),
                Some(&writer) => {
                    let writer_record = &history.ops[writer];
                    let write = writer_record.as_write().expect("indexed as a write");
                    if writer_record.key != record.key {
                        Some(format!("it was written to key {:?}", writer_record.key))
                    } else if write.value != seen.value {
                        Some(format!(
                            "the write wrote {:?}, the read returned {:?}",
                            write.value.as_deref().map(String::from_utf8_lossy),
                            seen.value.as_deref().map(String::from_utf8_lossy)
                        ))
                    } else if record
                        .complete_ms
                        .is_some_and(|done| writer_record.invoke_ms > done)
                    {
                        Some("it was written after the read completed".to_string())
                    } else {
                        None
                    }
                }
            };
            if let Some(problem) = problem {
                violations.push(Violation {
                    kind: ViolationKind::UnknownVersion,
                    key: record.key.clone(),
                    detail: format!("read op {op} returned version {:?}: {problem}", seen.write),
                });
            }
        }
    }
}

/// For each write, the writes its context covered (transitively).
struct Covers {
    by_write: BTreeMap<OpId, BTreeSet<OpId>>,
    covered: BTreeSet<OpId>,
}

impl Covers {
    fn compute(history: &History, writes: &BTreeMap<&str, OpId>) -> Covers {
        let mut by_write = BTreeMap::new();
        for (op, record) in history.ops.iter().enumerate() {
            if record.as_write().is_some() {
                let mut visiting = BTreeSet::new();
                covers_of(history, writes, op, &mut by_write, &mut visiting);
            }
        }
        let covered = by_write.values().flatten().copied().collect();
        Covers { by_write, covered }
    }

    fn of(&self, op: OpId) -> impl Iterator<Item = &OpId> {
        self.by_write.get(&op).into_iter().flatten()
    }

    fn is_covered(&self, op: OpId) -> bool {
        self.covered.contains(&op)
    }
}

fn covers_of(
    history: &History,
    writes: &BTreeMap<&str, OpId>,
    op: OpId,
    memo: &mut BTreeMap<OpId, BTreeSet<OpId>>,
    visiting: &mut BTreeSet<OpId>,
) -> BTreeSet<OpId> {
    if let Some(done) = memo.get(&op) {
        return done.clone();
    }
    // A cycle can only come from a hand-made or corrupt history; cut it.
    if !visiting.insert(op) {
        return BTreeSet::new();
    }
    let record = &history.ops[op];
    let mut covered = BTreeSet::new();
    let source = record.as_write().and_then(|w| w.context_from);
    if let Some(source) = source.filter(|&s| s < history.ops.len()) {
        let source_record = &history.ops[source];
        if source_record.key == record.key {
            let direct: Vec<OpId> = match &source_record.kind {
                OpKind::Read(read) if source_record.outcome == Outcome::Ok => read
                    .seen
                    .iter()
                    .filter_map(|s| writes.get(s.write.as_str()).copied())
                    .filter(|&w| history.ops[w].key == record.key)
                    .collect(),
                OpKind::Read(_) => Vec::new(),
                // The context a write returns covers that write, unless it
                // is the very context the write was sent with: the node
                // hands that back when covering the new dot would also
                // cover an older sibling of the same actor
                // (`written_context`). Either way it covers what the sent
                // context covered.
                OpKind::Write(write) if write.returned_context.as_ref() == Some(&write.context) => {
                    Vec::new()
                }
                OpKind::Write(_) => vec![source],
            };
            for writer in direct {
                if writer == op {
                    continue;
                }
                covered.insert(writer);
                covered.extend(covers_of(history, writes, writer, memo, visiting));
            }
            if let OpKind::Write(_) = &source_record.kind {
                covered.extend(covers_of(history, writes, source, memo, visiting));
            }
        }
    }
    covered.remove(&op);
    visiting.remove(&op);
    memo.insert(op, covered.clone());
    covered
}

#[cfg(test)]
mod tests;
