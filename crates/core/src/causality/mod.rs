//! Causality: dots, version vectors, objects holding a clock and their
//! siblings (Riak 2.0 style dotted version vectors), their byte format, and
//! the opaque causal context tokens handed to clients. Pure values; knows
//! nothing of quorums, storage or the network (coordinator and replica own
//! those).

mod codec;
mod conflict_mode;
mod context;
mod dot;
mod encoding;
mod object;
mod sibling;
mod version_vector;

#[cfg(test)]
mod tests;

pub use conflict_mode::{ConflictMode, UnknownConflictMode};
pub use context::{
    CONTEXT_FORMAT_VERSION, ContextError, MAX_CONTEXT_COUNTER, MAX_CONTEXT_ENTRIES,
    MAX_CONTEXT_TOKEN_LEN, decode_context, encode_context, try_encode_context,
};
pub use dot::{Dot, ZeroCounterError};
pub use encoding::{DecodeError, OBJECT_FORMAT_VERSION};
pub use object::{MAX_CONTENT_TYPE_BYTES, MAX_ENCODABLE_VALUE_BYTES, Object, UpdateError};
pub use sibling::{NewVersion, Sibling};
pub use version_vector::VersionVector;
