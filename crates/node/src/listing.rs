//! Key listings, as Riak's list keys and Redis's `KEYS` and `SCAN`:
//! `GET /v1/buckets/{bucket}/keys` streams a bucket's keys as JSON, RESP
//! `KEYS pattern` and `SCAN cursor [MATCH pattern] [COUNT count]` list the
//! RESP bucket's.
//!
//! A listing walks the cluster one partition at a time (`walk::Walk`,
//! only the bucket's range of each partition): every member's copies of
//! each key, replica objects and hints, merged as a read merges them. A key
//! is listed when that merge holds a value (not only tombstones), so a
//! listing sees every write some member holds, as a read with R = every
//! member would. A member that does not answer is skipped and named (its
//! keys are listed anyway if another replica holds them). Keys come in
//! partition order, which is no order a client should rely on; `SCAN`'s
//! cursor is the next partition to list.
//!
//! It reads every copy of every key of the bucket, values included (a
//! member's scan pages carry whole objects): as in Riak, a listing is an
//! operator's or a batch job's tool, not a request to serve traffic with.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use base64::Engine;
use serde_json::json;
use tokio::sync::mpsc;

use crate::node::Node;
use crate::walk::{Stop, Walk};

/// The stream of a listing is sent in chunks of about this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// The live keys of `bucket` in the partitions from `first` on, a
/// partition at a time, until at least `want` keys were found or the last
/// partition was listed: the keys, and the partition to go on from (None
/// after the last). `keep` filters the keys.
pub async fn live_keys(
    walk: &mut Walk,
    first: u32,
    want: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<(Vec<Vec<u8>>, Option<u32>), String> {
    let partitions = walk.layout().partitions();
    let mut keys = Vec::new();
    let mut partition = first;
    while partition < partitions {
        keys.extend(
            partition_keys(walk, partition)
                .await?
                .into_iter()
                .filter(|key| keep(key)),
        );
        partition += 1;
        if keys.len() >= want {
            break;
        }
    }
    Ok((keys, (partition < partitions).then_some(partition)))
}

/// The live keys of the walk's bucket in `partition`.
async fn partition_keys(walk: &mut Walk, partition: u32) -> Result<Vec<Vec<u8>>, String> {
    walk.start(partition);
    let mut keys = Vec::new();
    let now = crate::node::now_ms();
    loop {
        match walk.next().await {
            Ok(Some((_, key, object))) => {
                if !object.is_absent_at(now) {
                    keys.push(key);
                }
            }
            Ok(None) => return Ok(keys),
            Err(Stop::Unanswered(message) | Stop::Bad(message)) => return Err(message),
        }
    }
}

/// The body of `GET /v1/buckets/{bucket}/keys`:
/// `{"keys":[...],"missing_members":[...],"error":null}`, streamed a
/// partition at a time. A key is a JSON string when it is UTF-8, else
/// `{"base64":"..."}`. A listing that stops half-way (a member sent a
/// damaged copy) ends with the keys found so far and `"error"` saying why.
pub fn keys_body(node: Arc<Node>, bucket: String) -> Body {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut walk = Walk::new(node, true, Some(&bucket));
        let mut out = b"{\"keys\":[".to_vec();
        let mut first = true;
        let mut error = None;
        let mut next = Some(0);
        while let Some(partition) = next {
            match live_keys(&mut walk, partition, 1, |_| true).await {
                Ok((keys, after)) => {
                    for key in keys {
                        if !std::mem::take(&mut first) {
                            out.push(b',');
                        }
                        serde_json::to_writer(&mut out, &key_json(&key)).expect("a key serialises");
                    }
                    next = after;
                }
                Err(message) => {
                    tracing::warn!(%bucket, error = %message, "key listing stopped");
                    error = Some(message);
                    break;
                }
            }
            if out.len() >= CHUNK_BYTES
                && tx
                    .send(Ok(Bytes::from(std::mem::take(&mut out))))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let missing: Vec<&String> = walk.missing.values().collect();
        out.extend_from_slice(b"],\"missing_members\":");
        serde_json::to_writer(&mut out, &missing).expect("names serialise");
        out.extend_from_slice(b",\"error\":");
        serde_json::to_writer(&mut out, &error).expect("a message serialises");
        out.extend_from_slice(b"}\n");
        let _ = tx.send(Ok(Bytes::from(out))).await;
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// A key as JSON: the string if it is UTF-8, else `{"base64": ...}`.
fn key_json(key: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(key) {
        Ok(text) => json!(text),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(key) }),
    }
}

/// Whether `text` matches the Redis glob `pattern`: `*` any run of bytes,
/// `?` any one byte, `[abc]`, `[^abc]` and `[a-z]` a byte of a set (an
/// unclosed set runs to the end of the pattern, as in Redis), `\x` the
/// byte x. Linear in practice: one backtracking point, the last `*`.
pub fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let tokens = tokens(pattern);
    let (mut t, mut s) = (0, 0);
    // After the last `*`: the token after it, and where in `text` it
    // matched from.
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t + 1, s));
                t += 1;
            }
            Some(token) if token.matches(text[s]) => {
                t += 1;
                s += 1;
            }
            _ => match star {
                // Let the last `*` take one more byte.
                Some((after, from)) => {
                    t = after;
                    s = from + 1;
                    star = Some((after, from + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|token| matches!(token, Token::Star))
}

enum Token {
    Star,
    Any,
    Byte(u8),
    /// (negated, ranges)
    Set(bool, Vec<(u8, u8)>),
}

impl Token {
    fn matches(&self, byte: u8) -> bool {
        match self {
            Token::Star => true,
            Token::Any => true,
            Token::Byte(b) => *b == byte,
            Token::Set(negated, ranges) => {
                ranges.iter().any(|&(lo, hi)| lo <= byte && byte <= hi) != *negated
            }
        }
    }
}

fn tokens(pattern: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' => {
                if !matches!(tokens.last(), Some(Token::Star)) {
                    tokens.push(Token::Star);
                }
            }
            b'?' => tokens.push(Token::Any),
            b'\\' if i + 1 < pattern.len() => {
                i += 1;
                tokens.push(Token::Byte(pattern[i]));
            }
            b'[' => {
                i += 1;
                let negated = pattern.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                while i < pattern.len() && pattern[i] != b']' {
                    let mut lo = pattern[i];
                    if lo == b'\\' && i + 1 < pattern.len() {
                        i += 1;
                        lo = pattern[i];
                    }
                    if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() {
                        let hi = pattern[i + 2];
                        ranges.push((lo.min(hi), lo.max(hi)));
                        i += 3;
                    } else {
                        ranges.push((lo, lo));
                        i += 1;
                    }
                }
                tokens.push(Token::Set(negated, ranges));
            }
            byte => tokens.push(Token::Byte(byte)),
        }
        i += 1;
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        glob_matches(pattern.as_bytes(), text.as_bytes())
    }

    #[test]
    fn globs_match_as_in_redis() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:42"));
        assert!(!m("user:*", "users:42"));
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello") && !m("h*llo", "hellox"));
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(
            m("h[b-a]llo", "hallo"),
            "a reversed range is the same range"
        );
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("[\\]]", "]"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("a*", "a") && !m("a", "ab") && !m("ab", "a"));
        assert!(m("[abc", "b"), "an unclosed set runs to the end");
        assert!(!m("a[]b", "ab"), "an empty set matches nothing");
        assert!(m("**x", "abx"));
    }

    #[test]
    fn many_stars_against_a_long_text_end() {
        // A matcher that backtracks into every `*` would not end here.
        let text = "a".repeat(10_000);
        assert!(!m(&("*a".repeat(50) + "b"), &text));
        assert!(m(&"*a".repeat(50), &text));
    }

    #[test]
    fn keys_that_are_not_utf8_come_as_base64() {
        assert_eq!(key_json(b"user:1"), json!("user:1"));
        assert_eq!(key_json(&[0xff, 0x00]), json!({ "base64": "/wA=" }));
    }
}
