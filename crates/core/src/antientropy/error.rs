//! `ExchangeError`: why a request (on the answering side) or a response (on
//! the initiating side) of an anti-entropy exchange was refused. All are
//! operating errors caused by the other replica or the network; the caller
//! drops the exchange (or the stray message) and tries again later.

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("exchange request names level {level}, the tree has {levels} levels")]
    LevelOutOfRange { level: u32, levels: usize },
    #[error("exchange request names index {index}, the level has {level_len} nodes")]
    IndexOutOfRange { index: u32, level_len: u32 },
    #[error("exchange request indices are not strictly increasing at position {position}")]
    IndicesNotIncreasing { position: usize },
    #[error("exchange request has {count} indices, at most {max} are allowed")]
    TooManyIndices { count: usize, max: usize },
    #[error("exchange expected a {expected} response, got a {got} response")]
    UnexpectedResponse {
        expected: &'static str,
        got: &'static str,
    },
    #[error("exchange response has {got} items for {expected} indices asked")]
    WrongCount { expected: usize, got: usize },
    #[error("exchange response item {position} is for index {got}, {expected} was asked")]
    WrongIndex {
        position: usize,
        expected: u32,
        got: u32,
    },
    #[error("exchange response entries of segment {segment} are not strictly sorted by key")]
    KeysNotSorted { segment: u32 },
    #[error("exchange response lists under segment {segment} a key of segment {key_segment}")]
    KeyOutsideSegment { segment: u32, key_segment: u32 },
    #[error("exchange is already finished")]
    Finished,
}
