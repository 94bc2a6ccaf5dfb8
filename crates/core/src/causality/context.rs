//! The causal context token: the opaque string clients get with every read
//! and write and pass back with the next write. It is a version vector in a
//! small versioned byte format, base64url without padding:
//!
//! ```text
//! u8 version = 1, u16 entry count (<= MAX_CONTEXT_ENTRIES),
//! per entry: u64 replica, u64 counter (>= 1), replicas strictly increasing
//! ```
//!
//! All integers big-endian. Owns parsing of untrusted tokens only; what a
//! context means is `Object::update`'s business.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::codec::{Reader, Short};
use super::{Dot, VersionVector};
use crate::NodeId;

/// Version byte that opens every context token.
pub const CONTEXT_FORMAT_VERSION: u8 = 1;
/// Most replicas a context may name.
pub const MAX_CONTEXT_ENTRIES: usize = 1024;

/// The largest counter a client's context may carry (2^48: at a million
/// writes a second, nine years of writes to one key through one replica).
/// A forged context could otherwise hand a replica a counter next to
/// `u64::MAX` and leave it no dots for the key; past this bound 2^64 − 2^48
/// remain.
pub const MAX_CONTEXT_COUNTER: u64 = 1 << 48;
const CONTEXT_ENTRY_BYTES: usize = 8 + 8;
const MAX_CONTEXT_BYTES: usize = 1 + 2 + MAX_CONTEXT_ENTRIES * CONTEXT_ENTRY_BYTES;
/// Longest token `decode_context` accepts (characters), the length of a
/// token with `MAX_CONTEXT_ENTRIES` entries.
pub const MAX_CONTEXT_TOKEN_LEN: usize = (MAX_CONTEXT_BYTES * 4).div_ceil(3);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("causal context is empty (omit it for a blind write)")]
    Empty,
    #[error("causal context is {len} characters long, at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("causal context is not base64url without padding: {detail}")]
    BadBase64 { detail: String },
    #[error("causal context has unknown format version {version} (this build reads version 1)")]
    UnknownVersion { version: u8 },
    #[error("causal context is truncated: {what} needs {needed} bytes, {remaining} remain")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("causal context has {count} trailing bytes")]
    TrailingBytes { count: usize },
    #[error("causal context has {count} entries, at most {max} are allowed")]
    TooManyEntries { count: usize, max: usize },
    #[error("causal context entry {index} (replica {replica}) is not after the previous one")]
    NotSorted { index: usize, replica: NodeId },
    #[error("causal context entry for replica {replica} has counter 0")]
    ZeroCounter { replica: NodeId },
}

impl From<Short> for ContextError {
    fn from(short: Short) -> ContextError {
        ContextError::Truncated {
            what: short.what,
            needed: short.needed,
            remaining: short.remaining,
        }
    }
}

/// Encodes `vv` as an opaque token.
///
/// # Panics
/// If `vv` names more than `MAX_CONTEXT_ENTRIES` replicas; use
/// `try_encode_context` where that can happen.
pub fn encode_context(vv: &VersionVector) -> String {
    match try_encode_context(vv) {
        Ok(token) => token,
        Err(error) => panic!("{error}"),
    }
}

/// Encodes `vv` as an opaque token, or says why it cannot.
pub fn try_encode_context(vv: &VersionVector) -> Result<String, ContextError> {
    let count = u16::try_from(vv.len())
        .ok()
        .filter(|&count| usize::from(count) <= MAX_CONTEXT_ENTRIES)
        .ok_or(ContextError::TooManyEntries {
            count: vv.len(),
            max: MAX_CONTEXT_ENTRIES,
        })?;
    let mut bytes = Vec::with_capacity(3 + vv.len() * CONTEXT_ENTRY_BYTES);
    bytes.push(CONTEXT_FORMAT_VERSION);
    bytes.extend_from_slice(&count.to_be_bytes());
    for (replica, counter) in vv.iter() {
        bytes.extend_from_slice(&replica.to_be_bytes());
        bytes.extend_from_slice(&counter.to_be_bytes());
    }
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Parses a token from a client. Never panics; accepts exactly the tokens
/// `encode_context` produces.
pub fn decode_context(token: &str) -> Result<VersionVector, ContextError> {
    if token.is_empty() {
        return Err(ContextError::Empty);
    }
    if token.len() > MAX_CONTEXT_TOKEN_LEN {
        return Err(ContextError::TooLong {
            len: token.len(),
            max: MAX_CONTEXT_TOKEN_LEN,
        });
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|error| ContextError::BadBase64 {
            detail: error.to_string(),
        })?;
    let mut r = Reader::new(&bytes);
    let version = r.u8("format version")?;
    if version != CONTEXT_FORMAT_VERSION {
        return Err(ContextError::UnknownVersion { version });
    }
    let count = usize::from(r.u16("entry count")?);
    if count > MAX_CONTEXT_ENTRIES {
        return Err(ContextError::TooManyEntries {
            count,
            max: MAX_CONTEXT_ENTRIES,
        });
    }
    let mut vv = VersionVector::new();
    let mut previous: Option<NodeId> = None;
    for index in 0..count {
        let replica = r.u64("entry replica")?;
        let counter = r.u64("entry counter")?;
        if previous.is_some_and(|p| p >= replica) {
            return Err(ContextError::NotSorted { index, replica });
        }
        if counter == 0 {
            return Err(ContextError::ZeroCounter { replica });
        }
        vv.add(Dot { replica, counter });
        previous = Some(replica);
    }
    if r.remaining() != 0 {
        return Err(ContextError::TrailingBytes {
            count: r.remaining(),
        });
    }
    Ok(vv)
}
