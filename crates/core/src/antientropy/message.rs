//! The messages of an anti-entropy exchange and the peer's side of it:
//! `answer` reads the peer's own `MerkleTree` to reply to one request.
//!
//! Owns request validation on the answering side. Does not own framing,
//! correlation of replies with requests (the shell tags them) or the
//! initiator's logic (`Exchange`).

use serde::{Deserialize, Serialize};

use super::{ExchangeError, MerkleTree, SegmentEntries};

/// Most indices one request may carry; `answer` refuses more, and
/// `ExchangeLimits::max_indices_per_request` is clamped to it.
pub const MAX_REQUEST_INDICES: usize = 4096;

/// What the replica running an exchange asks its peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeRequest {
    /// Hashes of nodes `indices` (strictly increasing) on `level`
    /// (0 = root, the last level = segments).
    Level { level: u32, indices: Vec<u32> },
    /// Entries of segments `indices` (strictly increasing).
    Segments { indices: Vec<u32> },
}

/// The peer's reply, in the order of the request's indices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeResponse {
    Level {
        hashes: Vec<(u32, u64)>,
    },
    /// Per segment, its (key, digest) entries sorted by key.
    Segments {
        entries: Vec<(u32, SegmentEntries)>,
    },
}

impl ExchangeResponse {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            ExchangeResponse::Level { .. } => "level",
            ExchangeResponse::Segments { .. } => "segments",
        }
    }
}

/// Answers `request` from `tree`, the peer's tree of the same partition and
/// shape. Refuses malformed requests (level or index out of range, indices
/// not strictly increasing, more than `MAX_REQUEST_INDICES`).
pub fn answer(
    tree: &mut MerkleTree,
    request: &ExchangeRequest,
) -> Result<ExchangeResponse, ExchangeError> {
    match request {
        ExchangeRequest::Level { level, indices } => {
            let level_len =
                tree.level_len(*level as usize)
                    .ok_or(ExchangeError::LevelOutOfRange {
                        level: *level,
                        levels: tree.levels(),
                    })?;
            check_indices(indices, level_len)?;
            Ok(ExchangeResponse::Level {
                hashes: tree.level_hashes(*level as usize, indices),
            })
        }
        ExchangeRequest::Segments { indices } => {
            check_indices(indices, tree.segments())?;
            Ok(ExchangeResponse::Segments {
                entries: indices
                    .iter()
                    .map(|&segment| (segment, tree.segment_entries(segment)))
                    .collect(),
            })
        }
    }
}

fn check_indices(indices: &[u32], level_len: u32) -> Result<(), ExchangeError> {
    if indices.len() > MAX_REQUEST_INDICES {
        return Err(ExchangeError::TooManyIndices {
            count: indices.len(),
            max: MAX_REQUEST_INDICES,
        });
    }
    for (position, &index) in indices.iter().enumerate() {
        if index >= level_len {
            return Err(ExchangeError::IndexOutOfRange { index, level_len });
        }
        if position > 0 && index <= indices[position - 1] {
            return Err(ExchangeError::IndicesNotIncreasing { position });
        }
    }
    Ok(())
}
