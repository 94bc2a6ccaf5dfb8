//! RESP2 requests (what redis-cli, redis-benchmark and Redis client
//! libraries send) and reply encoding. A request is an array of bulk
//! strings, or an inline command line. Every length is checked against
//! `RespLimits` before any allocation.

use bytes::{BufMut, BytesMut};

#[derive(Debug, Clone, Copy)]
pub struct RespLimits {
    pub max_args: usize,
    pub max_bulk_bytes: usize,
    pub max_inline_bytes: usize,
    /// The whole command, headers included: refused as soon as a bulk
    /// header announces more, before its bytes are buffered.
    pub max_command_bytes: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_args: 1024 * 1024,
            max_bulk_bytes: 16 * 1024 * 1024 + 1024,
            max_inline_bytes: 64 * 1024,
            max_command_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A malformed request. Like Redis, the server answers
/// `-ERR Protocol error: ...` and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {reason}")]
pub struct RespError {
    pub reason: String,
}

fn error<T>(reason: impl Into<String>) -> Result<T, RespError> {
    Err(RespError {
        reason: reason.into(),
    })
}

/// A parsed command's arguments and the bytes of input it used.
pub type ParsedCommand = (Vec<Vec<u8>>, usize);

/// Parses one command from the front of `buf` with a fresh parser.
/// `Ok(None)`: more bytes are needed. `Ok(Some((args, consumed)))`: a
/// whole command.
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Result<Option<ParsedCommand>, RespError> {
    CommandParser::new(*limits).parse(buf)
}

/// The commands of one connection, parsed as their bytes arrive. An
/// incomplete array is remembered (arguments so far, where to go on), so a
/// command that arrives over many reads is scanned and copied once, not
/// once per read.
#[derive(Debug)]
pub struct CommandParser {
    limits: RespLimits,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    count: usize,
    args: Vec<Vec<u8>>,
    pos: usize,
}

impl CommandParser {
    pub fn new(limits: RespLimits) -> CommandParser {
        CommandParser {
            limits,
            partial: None,
        }
    }

    /// Parses one command from the front of `buf`: `Ok(None)` when more
    /// bytes are needed. Between calls the caller may only append to
    /// `buf`, until a command is returned; it then removes the `consumed`
    /// bytes from the front. After an error the connection is closed.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<ParsedCommand>, RespError> {
        if self.partial.is_some() {
            return self.parse_array(buf);
        }
        match buf.first() {
            None => Ok(None),
            Some(b'*') => self.parse_array(buf),
            Some(_) => parse_inline(buf, &self.limits),
        }
    }

    fn parse_array(&mut self, buf: &[u8]) -> Result<Option<ParsedCommand>, RespError> {
        let limits = self.limits;
        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None => {
                let Some((count, pos)) = read_length(buf, 0, b'*', "multibulk")? else {
                    return Ok(None);
                };
                if count <= 0 {
                    // Redis ignores empty arrays.
                    return Ok(Some((Vec::new(), pos)));
                }
                if count as u64 > limits.max_args as u64 {
                    return error("invalid multibulk length");
                }
                Partial {
                    count: count as usize,
                    // Never trust the count for allocation: grow as arguments arrive.
                    args: Vec::with_capacity((count as usize).min(64)),
                    pos,
                }
            }
        };
        while partial.args.len() < partial.count {
            let pos = partial.pos;
            let header = if pos >= buf.len() {
                None
            } else {
                read_length(buf, pos, b'$', "bulk")?
            };
            let Some((len, start)) = header else {
                self.partial = Some(partial);
                return Ok(None);
            };
            if len < 0 || len as u64 > limits.max_bulk_bytes as u64 {
                return error("invalid bulk length");
            }
            let end = start + len as usize;
            if end + 2 > limits.max_command_bytes {
                return error(format!(
                    "command larger than {} bytes",
                    limits.max_command_bytes
                ));
            }
            if buf.len() < end + 2 {
                self.partial = Some(partial);
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return error("bulk string not terminated by CRLF");
            }
            partial.args.push(buf[start..end].to_vec());
            partial.pos = end + 2;
        }
        Ok(Some((partial.args, partial.pos)))
    }
}

/// Finds `\r\n` from `from`; returns the index of `\r`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// Reads `<prefix><integer>\r\n` at `pos`; returns (value, position after).
fn read_length(
    buf: &[u8],
    pos: usize,
    prefix: u8,
    what: &str,
) -> Result<Option<(i64, usize)>, RespError> {
    const MAX_HEADER: usize = 32;
    let Some(end) = find_crlf(buf, pos) else {
        if buf.len() - pos > MAX_HEADER {
            return error(format!("invalid {what} length"));
        }
        return Ok(None);
    };
    if buf[pos] != prefix {
        return error(format!(
            "expected '{}', got '{}'",
            prefix as char,
            buf[pos].escape_ascii()
        ));
    }
    let digits = &buf[pos + 1..end];
    let text = std::str::from_utf8(digits).ok();
    match text.and_then(|t| t.parse::<i64>().ok()) {
        Some(n) if digits.len() <= 20 => Ok(Some((n, end + 2))),
        _ => error(format!("invalid {what} length")),
    }
}

fn parse_inline(buf: &[u8], limits: &RespLimits) -> Result<Option<ParsedCommand>, RespError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline_bytes {
            return error("too big inline request");
        }
        return Ok(None);
    };
    if newline > limits.max_inline_bytes {
        return error("too big inline request");
    }
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args: Vec<Vec<u8>> = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|word| !word.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.len() > limits.max_args {
        return error("too many arguments");
    }
    Ok(Some((args, newline + 1)))
}

/// Reply encoders.
pub fn simple(out: &mut BytesMut, text: &str) {
    out.put_u8(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An error reply; CR and LF in the message are replaced so the reply stays one line.
pub fn error_reply(out: &mut BytesMut, message: &str) {
    out.put_u8(b'-');
    for b in message.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut BytesMut, value: i64) {
    out.put_u8(b':');
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn bulk(out: &mut BytesMut, value: &[u8]) {
    out.put_u8(b'$');
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn null(out: &mut BytesMut) {
    out.extend_from_slice(b"$-1\r\n");
}

pub fn array_header(out: &mut BytesMut, len: usize) {
    out.put_u8(b'*');
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(buf: &[u8]) -> Result<Option<ParsedCommand>, RespError> {
        parse_command(buf, &RespLimits::default())
    }

    #[test]
    fn arrays_of_bulk_strings() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$0\r\n\r\n";
        let (args, used) = parse(req).unwrap().unwrap();
        assert_eq!(args, vec![b"SET".to_vec(), b"a".to_vec(), b"".to_vec()]);
        assert_eq!(used, req.len());
        // Every strict prefix needs more bytes.
        for cut in 0..req.len() {
            assert_eq!(parse(&req[..cut]).unwrap(), None, "prefix {cut}");
        }
        // Binary-safe values.
        let (args, _) = parse(b"*1\r\n$4\r\n\r\n\0\xff\r\n").unwrap().unwrap();
        assert_eq!(args, vec![b"\r\n\0\xff".to_vec()]);
    }

    #[test]
    fn pipelined_commands_are_parsed_one_at_a_time() {
        let req = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let (_, used) = parse(req).unwrap().unwrap();
        assert_eq!(used, req.len() / 2);
    }

    #[test]
    fn inline_commands() {
        let (args, used) = parse(b"set  a b\r\nGET a\r\n").unwrap().unwrap();
        assert_eq!(args, vec![b"set".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(used, 10);
        assert_eq!(parse(b"PING").unwrap(), None);
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(parse(b"*x\r\n").is_err());
        assert!(parse(b"*2\r\n+OK\r\n").is_err());
        assert!(parse(b"*1\r\n$-5\r\n").is_err());
        assert!(parse(b"*1\r\n$3\r\nabcde\r\n").is_err());
        assert!(parse(b"*99999999999\r\n").is_err());
        assert!(parse(b"*1\r\n$999999999999\r\n").is_err());
        assert!(parse(&[b'*'; 100]).is_err());
        let limits = RespLimits {
            max_args: 2,
            max_bulk_bytes: 4,
            max_inline_bytes: 8,
            max_command_bytes: 20,
        };
        assert!(parse_command(b"*3\r\n", &limits).is_err());
        assert!(parse_command(b"*1\r\n$5\r\n", &limits).is_err());
        assert!(parse_command(b"aaaaaaaaaaaa", &limits).is_err());
        assert!(
            parse_command(b"*1\r\n$4\r\nabcd\r\n", &limits)
                .unwrap()
                .is_some()
        );
        // 22 bytes in all: refused at the second header, before its bytes.
        let too_big = parse_command(b"*2\r\n$4\r\nabcd\r\n$2\r\n", &limits).unwrap_err();
        assert!(too_big.reason.contains("larger than 20 bytes"), "{too_big}");
    }

    #[test]
    fn a_command_arriving_over_many_reads_parses_as_when_whole() {
        let mut wire = BytesMut::new();
        array_header(&mut wire, 3);
        bulk(&mut wire, b"SET");
        bulk(&mut wire, b"key");
        bulk(&mut wire, &[7u8; 300]);
        wire.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let first_len = wire.len() - 14;
        for step in [1, 2, 7, 64] {
            let mut parser = CommandParser::new(RespLimits::default());
            let mut arrived = 0;
            let (args, used) = loop {
                arrived = (arrived + step).min(wire.len());
                if let Some(parsed) = parser.parse(&wire[..arrived]).unwrap() {
                    break parsed;
                }
                assert!(arrived < first_len, "step {step}: nothing at {arrived}");
            };
            assert_eq!(used, first_len, "step {step}");
            assert_eq!(args, vec![b"SET".to_vec(), b"key".to_vec(), vec![7u8; 300]]);
            // The same parser goes on with the next command.
            let (args, used) = parser.parse(&wire[first_len..]).unwrap().unwrap();
            assert_eq!((args, used), (vec![b"PING".to_vec()], 14));
        }
    }

    #[test]
    fn replies() {
        let mut out = BytesMut::new();
        simple(&mut out, "OK");
        error_reply(&mut out, "ERR bad\r\nthing");
        integer(&mut out, -3);
        bulk(&mut out, b"hi");
        null(&mut out);
        array_header(&mut out, 2);
        assert_eq!(
            &out[..],
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*2\r\n"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let mut array = b"*2\r\n$".to_vec();
            array.extend_from_slice(&bytes);
            if let Ok(Some((_, used))) = parse(&array) {
                prop_assert!(used <= array.len());
            }
        }

        #[test]
        fn encoded_commands_round_trip(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8)) {
            let mut out = BytesMut::new();
            array_header(&mut out, args.len());
            for arg in &args {
                bulk(&mut out, arg);
            }
            let (parsed, used) = parse(&out).unwrap().unwrap();
            prop_assert_eq!(parsed, args);
            prop_assert_eq!(used, out.len());
        }
    }
}
