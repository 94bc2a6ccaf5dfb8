//! `Exchange`: the initiator's side of one anti-entropy exchange, a pure
//! state machine that compares its local `MerkleTree` with a peer's, one
//! request at a time, and ends with the keys whose digests differ.
//!
//! Owns the descent (root first, then only the children of differing
//! nodes, then the entries of differing segments), the work limits and the
//! validation of responses. Does not own scheduling, transport, matching a
//! reply to its request (the shell keeps one request in flight per exchange
//! and tags it), or the repair itself (the replica merges the objects).

use serde::{Deserialize, Serialize};

use super::{
    ExchangeError, ExchangeRequest, ExchangeResponse, MAX_REQUEST_INDICES, MerkleTree,
    SegmentEntries,
};

/// Bounds on the work of one exchange (rate limiting: what does not fit is
/// left for the next exchange and reported as `truncated`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeLimits {
    /// Most node or segment indices per request; clamped to
    /// 1..=`MAX_REQUEST_INDICES`.
    pub max_indices_per_request: usize,
    /// Most segments whose entries one exchange fetches; also caps how many
    /// differing nodes of any level it descends into. At least 1.
    pub max_segments: usize,
}

impl Default for ExchangeLimits {
    fn default() -> ExchangeLimits {
        ExchangeLimits {
            max_indices_per_request: 1024,
            max_segments: 64,
        }
    }
}

/// A key whose digest differs between the replicas, or that only one holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyDifference {
    pub key: Vec<u8>,
    pub local: Option<u64>,
    pub remote: Option<u64>,
}

/// What an exchange found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeOutcome {
    /// Sorted by key; each differs (`local != remote`).
    pub differences: Vec<KeyDifference>,
    /// The limits stopped the descent: more differences may remain, run
    /// another exchange after repairing these. When false, `differences`
    /// is every difference between the trees as they were seen.
    pub truncated: bool,
    /// Segments whose entries were fetched and compared.
    pub segments_compared: usize,
}

/// What the initiator does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeStep {
    /// Send this to the peer and feed its answer to `on_response`.
    Send(ExchangeRequest),
    Done(ExchangeOutcome),
}

#[derive(Clone, Debug)]
enum Phase {
    /// Comparing nodes of `level`: `pending[next..]` are still to be asked,
    /// `differing` collects those found different so far.
    Level {
        level: usize,
        pending: Vec<u32>,
        next: usize,
        differing: Vec<u32>,
    },
    /// Fetching differing segments: `pending[next..]` are still to be asked.
    Segments {
        pending: Vec<u32>,
        next: usize,
    },
    Finished,
}

impl Phase {
    fn kind(&self) -> &'static str {
        match self {
            Phase::Level { .. } => "level",
            Phase::Segments { .. } => "segments",
            Phase::Finished => "finished",
        }
    }
}

/// One exchange, run by the replica that starts it. Both trees must have the
/// same shape (a cluster-wide setting). On error the exchange is left as it
/// was: the caller may drop the offending message or the whole exchange.
#[derive(Clone, Debug)]
pub struct Exchange {
    limits: ExchangeLimits,
    shape: (u32, u32),
    phase: Phase,
    /// Indices of the request in flight.
    asked: Vec<u32>,
    differences: Vec<KeyDifference>,
    truncated: bool,
    segments_compared: usize,
}

impl Exchange {
    /// Starts an exchange of `local` with a peer: the first request always
    /// asks for the peer's root.
    pub fn start(local: &mut MerkleTree, limits: ExchangeLimits) -> (Exchange, ExchangeRequest) {
        let limits = ExchangeLimits {
            max_indices_per_request: limits.max_indices_per_request.clamp(1, MAX_REQUEST_INDICES),
            max_segments: limits.max_segments.max(1),
        };
        let mut exchange = Exchange {
            limits,
            shape: (local.segments(), local.width()),
            phase: Phase::Level {
                level: 0,
                pending: vec![0],
                next: 0,
                differing: Vec::new(),
            },
            asked: Vec::new(),
            differences: Vec::new(),
            truncated: false,
            segments_compared: 0,
        };
        match exchange.advance(local) {
            ExchangeStep::Send(request) => (exchange, request),
            ExchangeStep::Done(_) => unreachable!("an exchange starts by asking for the root"),
        }
    }

    /// Whether the exchange has finished (returned `Done`).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Feeds the peer's answer to the request in flight.
    pub fn on_response(
        &mut self,
        local: &mut MerkleTree,
        response: ExchangeResponse,
    ) -> Result<ExchangeStep, ExchangeError> {
        assert_eq!(
            (local.segments(), local.width()),
            self.shape,
            "exchange fed a tree of another shape"
        );
        match (&mut self.phase, response) {
            (Phase::Finished, _) => Err(ExchangeError::Finished),
            (
                Phase::Level {
                    level,
                    pending,
                    next,
                    differing,
                },
                ExchangeResponse::Level { hashes },
            ) => {
                check_answered(&self.asked, hashes.iter().map(|&(index, _)| index))?;
                let local_hashes = local.level_hashes(*level, &self.asked);
                differing.extend(
                    hashes
                        .iter()
                        .zip(&local_hashes)
                        .filter(|((_, remote), (_, local))| remote != local)
                        .map(|(&(index, _), _)| index),
                );
                let cap = self.limits.max_segments;
                if differing.len() >= cap && (differing.len() > cap || *next < pending.len()) {
                    differing.truncate(cap);
                    pending.truncate(*next);
                    self.truncated = true;
                }
                Ok(self.advance(local))
            }
            (Phase::Segments { .. }, ExchangeResponse::Segments { entries }) => {
                check_answered(&self.asked, entries.iter().map(|(index, _)| *index))?;
                for (segment, remote) in &entries {
                    check_segment(local, *segment, remote)?;
                }
                for (segment, remote) in entries {
                    self.compare_segment(local.segment_entries(segment), remote);
                    self.segments_compared += 1;
                }
                Ok(self.advance(local))
            }
            (phase, response) => Err(ExchangeError::UnexpectedResponse {
                expected: phase.kind(),
                got: response.kind(),
            }),
        }
    }

    /// Sends the next request, moving down a level when this one is done,
    /// or finishes.
    fn advance(&mut self, local: &MerkleTree) -> ExchangeStep {
        let chunk = self.limits.max_indices_per_request;
        match &mut self.phase {
            Phase::Level {
                level,
                pending,
                next,
                differing,
            } => {
                if *next < pending.len() {
                    let end = pending.len().min(*next + chunk);
                    self.asked = pending[*next..end].to_vec();
                    *next = end;
                    return ExchangeStep::Send(ExchangeRequest::Level {
                        level: *level as u32,
                        indices: self.asked.clone(),
                    });
                }
                if differing.is_empty() {
                    return self.finish();
                }
                if *level + 1 == local.levels() {
                    self.phase = Phase::Segments {
                        pending: std::mem::take(differing),
                        next: 0,
                    };
                } else {
                    let children = differing
                        .iter()
                        .flat_map(|&index| local.children(*level, index))
                        .collect();
                    self.phase = Phase::Level {
                        level: *level + 1,
                        pending: children,
                        next: 0,
                        differing: Vec::new(),
                    };
                }
                self.advance(local)
            }
            Phase::Segments { pending, next } => {
                if *next < pending.len() {
                    let end = pending.len().min(*next + chunk);
                    self.asked = pending[*next..end].to_vec();
                    *next = end;
                    return ExchangeStep::Send(ExchangeRequest::Segments {
                        indices: self.asked.clone(),
                    });
                }
                self.finish()
            }
            Phase::Finished => unreachable!("a finished exchange does not advance"),
        }
    }

    fn finish(&mut self) -> ExchangeStep {
        self.phase = Phase::Finished;
        self.asked.clear();
        let mut differences = std::mem::take(&mut self.differences);
        differences.sort();
        ExchangeStep::Done(ExchangeOutcome {
            differences,
            truncated: self.truncated,
            segments_compared: self.segments_compared,
        })
    }

    /// Merge-joins two key-sorted entry lists of one segment.
    fn compare_segment(&mut self, local: SegmentEntries, remote: SegmentEntries) {
        let mut local = local.into_iter().peekable();
        let mut remote = remote.into_iter().peekable();
        loop {
            let order = match (local.peek(), remote.peek()) {
                (None, None) => return,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((local_key, _)), Some((remote_key, _))) => local_key.cmp(remote_key),
            };
            let difference = match order {
                std::cmp::Ordering::Less => {
                    let (key, digest) = local.next().expect("peeked");
                    Some((key, Some(digest), None))
                }
                std::cmp::Ordering::Greater => {
                    let (key, digest) = remote.next().expect("peeked");
                    Some((key, None, Some(digest)))
                }
                std::cmp::Ordering::Equal => {
                    let (key, local_digest) = local.next().expect("peeked");
                    let (_, remote_digest) = remote.next().expect("peeked");
                    (local_digest != remote_digest).then_some((
                        key,
                        Some(local_digest),
                        Some(remote_digest),
                    ))
                }
            };
            if let Some((key, local, remote)) = difference {
                self.differences.push(KeyDifference { key, local, remote });
            }
        }
    }
}

/// Checks that a response answers exactly the indices asked, in order.
fn check_answered(
    asked: &[u32],
    answered: impl ExactSizeIterator<Item = u32>,
) -> Result<(), ExchangeError> {
    if answered.len() != asked.len() {
        return Err(ExchangeError::WrongCount {
            expected: asked.len(),
            got: answered.len(),
        });
    }
    for (position, (&expected, got)) in asked.iter().zip(answered).enumerate() {
        if expected != got {
            return Err(ExchangeError::WrongIndex {
                position,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// Checks that a segment's remote entries are strictly sorted and all
/// belong to it (which also catches a peer whose tree has another shape).
fn check_segment(
    local: &MerkleTree,
    segment: u32,
    entries: &[(Vec<u8>, u64)],
) -> Result<(), ExchangeError> {
    for (position, (key, _)) in entries.iter().enumerate() {
        if position > 0 && *key <= entries[position - 1].0 {
            return Err(ExchangeError::KeysNotSorted { segment });
        }
        let key_segment = local.segment_of(key);
        if key_segment != segment {
            return Err(ExchangeError::KeyOutsideSegment {
                segment,
                key_segment,
            });
        }
    }
    Ok(())
}
