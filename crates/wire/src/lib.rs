//! Byte formats ringkv reads from outside: peer frames between nodes, the
//! peer authentication handshake, and the RESP2 request parser. Pure functions over byte slices so that they
//! can be fuzzed; the node shell does the I/O. Message types themselves are
//! defined in `ringkv-core` (the simulator passes them as values).

pub mod auth;
pub mod backup;
pub mod frame;
pub mod resp;

pub use auth::{AuthError, ClusterKey, Password};
pub use frame::{
    Frame, PROTOCOL_VERSION, Unreadable, WireError, decode_frame, encode_frame, peer_codec,
    unreadable,
};
