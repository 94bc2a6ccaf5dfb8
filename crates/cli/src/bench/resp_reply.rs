//! A RESP2 reply reader for the load generator: parses one reply from the
//! front of a buffer that may hold part of a reply, exactly one, or several
//! (pipelining). Pure; the connection does the reading. (`ringkv_wire::resp`
//! parses requests, the server's side; this is the client's.)

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    /// `None` is the null bulk string (`$-1`), GET of an absent key.
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// For error replies, the error's kind: its first word (`ERR`, `WRONGTYPE`, ...).
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Reply::Error(message) => {
                let word = message.split(|b| *b == b' ').next().unwrap_or_default();
                Some(String::from_utf8_lossy(word).into_owned())
            }
            _ => None,
        }
    }
}

/// Limits that keep a hostile or broken server from making the client allocate without bound.
pub const MAX_BULK_BYTES: usize = 512 * 1024 * 1024;
const MAX_ARRAY_LEN: usize = 1024 * 1024;
const MAX_DEPTH: usize = 8;

/// The bytes are not a RESP2 reply: the connection cannot continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub &'static str);

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed RESP reply: {}", self.0)
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, ReplyError> {
    if depth > MAX_DEPTH {
        return Err(ReplyError("arrays nested too deep"));
    }
    let Some((line, next)) = line(buf, at) else {
        return Ok(None);
    };
    let Some((&tag, body)) = line.split_first() else {
        return Err(ReplyError("empty line"));
    };
    let reply = match tag {
        b'+' => Reply::Simple(body.to_vec()),
        b'-' => Reply::Error(body.to_vec()),
        b':' => Reply::Integer(number(body)?),
        b'$' => {
            let len = number(body)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|_| ReplyError("bulk length"))?;
            if len > MAX_BULK_BYTES {
                return Err(ReplyError("bulk string too large"));
            }
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ReplyError("bulk string not followed by CRLF"));
            }
            return Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)));
        }
        b'*' => {
            let count = number(body)?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let count = usize::try_from(count).map_err(|_| ReplyError("array length"))?;
            if count > MAX_ARRAY_LEN {
                return Err(ReplyError("array too long"));
            }
            let mut items = Vec::with_capacity(count.min(64));
            let mut at = next;
            for _ in 0..count {
                let Some((item, after)) = parse_at(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = after;
            }
            return Ok(Some((Reply::Array(Some(items)), at)));
        }
        _ => return Err(ReplyError("unknown type byte")),
    };
    Ok(Some((reply, next)))
}

/// The line starting at `at` without its CRLF, and the index after the CRLF.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(digits: &[u8]) -> Result<i64, ReplyError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ReplyError("not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `chunk` bytes and collects every reply.
    fn read_in_chunks(stream: &[u8], chunk: usize) -> Vec<Reply> {
        let mut buffer = Vec::new();
        let mut replies = Vec::new();
        for piece in stream.chunks(chunk) {
            buffer.extend_from_slice(piece);
            while let Some((reply, used)) = parse_reply(&buffer).unwrap() {
                buffer.drain(..used);
                replies.push(reply);
            }
        }
        assert!(buffer.is_empty(), "leftover bytes: {buffer:?}");
        replies
    }

    #[test]
    fn replies_split_anywhere_parse_the_same() {
        let stream = b"+OK\r\n$5\r\nhello\r\n$-1\r\n-ERR unknown command 'FOO'\r\n:42\r\n*2\r\n$1\r\na\r\n*-1\r\n$0\r\n\r\n";
        let expected = vec![
            Reply::Simple(b"OK".to_vec()),
            Reply::Bulk(Some(b"hello".to_vec())),
            Reply::Bulk(None),
            Reply::Error(b"ERR unknown command 'FOO'".to_vec()),
            Reply::Integer(42),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"a".to_vec())),
                Reply::Array(None),
            ])),
            Reply::Bulk(Some(Vec::new())),
        ];
        for chunk in 1..=stream.len() {
            assert_eq!(
                read_in_chunks(stream, chunk),
                expected,
                "chunks of {chunk} bytes"
            );
        }
    }

    #[test]
    fn a_bulk_string_may_contain_crlf() {
        let stream = b"$4\r\n\r\n\r\n\r\n+OK\r\n";
        assert_eq!(
            read_in_chunks(stream, 3),
            vec![
                Reply::Bulk(Some(b"\r\n\r\n".to_vec())),
                Reply::Simple(b"OK".to_vec())
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_wait() {
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"$abc\r\n").is_err());
        assert!(parse_reply(b"$3\r\nabcXY").is_err());
        assert!(parse_reply(b"\r\n").is_err());
        assert_eq!(parse_reply(b"$3\r\nab").unwrap(), None);
        assert_eq!(parse_reply(b"+OK\r").unwrap(), None);
    }

    #[test]
    fn error_kind_is_the_first_word() {
        assert_eq!(
            Reply::Error(b"ERR unknown command".to_vec())
                .error_kind()
                .as_deref(),
            Some("ERR")
        );
        assert_eq!(
            Reply::Error(b"OVERLOADED".to_vec()).error_kind().as_deref(),
            Some("OVERLOADED")
        );
        assert_eq!(Reply::Simple(b"OK".to_vec()).error_kind(), None);
    }
}
