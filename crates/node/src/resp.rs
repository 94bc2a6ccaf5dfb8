//! The RESP2 server: enough of Redis for redis-cli, redis-benchmark and
//! Redis client libraries. Keys live in one bucket (`--resp-bucket`, an
//! `lww` bucket unless configured otherwise).

use std::borrow::Borrow;
use std::sync::Arc;

use bytes::BytesMut;
use ringkv_core::causality::{Object, VersionVector};
use ringkv_core::message::{ClientOp, ClientReply, OpError};
use ringkv_wire::resp::{self, CommandParser, RespLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::listing::{glob_matches, live_keys};
use crate::node::{Node, now_ms};
use crate::walk::Walk;

/// Commands of one connection answered before replies are flushed.
const MAX_PIPELINE: usize = 1024;
/// Replies buffered before they are flushed, whatever their number: a
/// pipeline of GETs of large values must not pile up in memory.
const FLUSH_BYTES: usize = 64 * 1024;
/// Keys of one MGET, DEL or EXISTS read at a time.
const KEYS_AT_ONCE: usize = 16;
/// The largest MGET reply: past it the command answers an error instead.
const MAX_MGET_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Serves RESP on `listener`; with `tls`, each connection is a TLS
/// session first (Redis's `tls-port`).
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    connections: Arc<Semaphore>,
    tls: Option<crate::tls::ClientAcceptor>,
) {
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = match &tls {
                        None => serve_connection(stream, node).await,
                        Some(acceptor) => {
                            match crate::tls::accept(acceptor, stream, remote).await {
                                Some(stream) => serve_connection(stream, node).await,
                                None => Ok(()),
                            }
                        }
                    };
                    if let Err(e) = served {
                        debug!(%remote, error = %e, "RESP connection ended");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a RESP connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

enum Next {
    Continue,
    Close,
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    node: Arc<Node>,
) -> std::io::Result<()> {
    let defaults = RespLimits::default();
    let mut parser = CommandParser::new(RespLimits {
        max_bulk_bytes: node.config.max_value_bytes,
        // A SET of the largest value always fits.
        max_command_bytes: defaults
            .max_command_bytes
            .max(2 * node.config.max_value_bytes + 64 * 1024),
        ..defaults
    });
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut authenticated = node.client_password.is_none();
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        let mut answered = 0;
        loop {
            match parser.parse(&input) {
                Ok(None) => break,
                Ok(Some((args, used))) => {
                    let _ = input.split_to(used);
                    if args.is_empty() {
                        continue;
                    }
                    let next = if authenticated {
                        execute(&node, &args, &mut output).await
                    } else {
                        unauthenticated(&node, &args, &mut authenticated, &mut output)
                    };
                    answered += 1;
                    if matches!(next, Next::Close) {
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                    if answered >= MAX_PIPELINE || output.len() >= FLUSH_BYTES {
                        stream.write_all(&output).await?;
                        output.clear();
                        answered = 0;
                    }
                }
                Err(e) => {
                    resp::error_reply(&mut output, &format!("ERR {e}"));
                    stream.write_all(&output).await?;
                    return Ok(());
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        // Don't keep a huge buffer around after one big value.
        if input.capacity() > 1024 * 1024 && input.is_empty() {
            input = BytesMut::with_capacity(16 * 1024);
        }
    }
}

fn wrong_args(out: &mut BytesMut, name: &str) -> Next {
    resp::error_reply(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
    Next::Continue
}

/// A connection that has not given the client password yet may only
/// `AUTH` (or `QUIT`), as with Redis's `requirepass`.
fn unauthenticated(
    node: &Node,
    args: &[Vec<u8>],
    authenticated: &mut bool,
    out: &mut BytesMut,
) -> Next {
    match String::from_utf8_lossy(&args[0])
        .to_ascii_lowercase()
        .as_str()
    {
        "auth" => *authenticated = auth(node, args, out),
        "quit" => {
            resp::simple(out, "OK");
            return Next::Close;
        }
        _ => resp::error_reply(out, "NOAUTH Authentication required."),
    }
    Next::Continue
}

/// `AUTH [default] PASSWORD`: answers, and whether the password is right.
/// (Once authenticated, a wrong one later leaves the connection as it is,
/// as in Redis.)
fn auth(node: &Node, args: &[Vec<u8>], out: &mut BytesMut) -> bool {
    let Some(expected) = &node.client_password else {
        resp::error_reply(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
        return false;
    };
    let password = match args {
        [_, password] => Some(password),
        [_, user, password] => (user == b"default").then_some(password),
        _ => {
            wrong_args(out, "auth");
            return false;
        }
    };
    if password.is_some_and(|p| expected.matches(p)) {
        resp::simple(out, "OK");
        true
    } else {
        resp::error_reply(
            out,
            "WRONGPASS invalid username-password pair or user is disabled.",
        );
        false
    }
}

async fn execute(node: &Arc<Node>, args: &[Vec<u8>], out: &mut BytesMut) -> Next {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let argc = args.len();
    match name.as_str() {
        "ping" => match argc {
            1 => resp::simple(out, "PONG"),
            2 => resp::bulk(out, &args[1]),
            _ => return wrong_args(out, &name),
        },
        "echo" => {
            if argc != 2 {
                return wrong_args(out, &name);
            }
            resp::bulk(out, &args[1]);
        }
        "quit" => {
            resp::simple(out, "OK");
            return Next::Close;
        }
        // Already authenticated, or no password is set.
        "auth" => {
            auth(node, args, out);
        }
        "select" => match args.get(1).map(|a| a.as_slice()) {
            Some(b"0") if argc == 2 => resp::simple(out, "OK"),
            Some(_) if argc == 2 => resp::error_reply(
                out,
                "ERR DB index is out of range (ringkv has database 0 only)",
            ),
            _ => return wrong_args(out, &name),
        },
        "client" => match args.get(1).map(|a| a.to_ascii_lowercase()) {
            Some(sub) if sub == b"setname" && argc == 3 => resp::simple(out, "OK"),
            Some(sub) if sub == b"setinfo" && argc == 4 => resp::simple(out, "OK"),
            Some(sub) if sub == b"getname" && argc == 2 => resp::null(out),
            _ => resp::error_reply(out, "ERR unknown or unsupported CLIENT subcommand"),
        },
        "command" => resp::array_header(out, 0),
        "config" => match args.get(1).map(|a| a.to_ascii_lowercase()) {
            // No Redis configuration exists here: every parameter is unknown.
            Some(sub) if sub == b"get" && argc == 3 => resp::array_header(out, 0),
            _ => resp::error_reply(out, "ERR only CONFIG GET is supported"),
        },
        "info" => {
            let text = format!(
                "# Server\r\nredis_version:7.0.0\r\nringkv_version:{}\r\nringkv_node:{}\r\n# Keyspace\r\n",
                env!("CARGO_PKG_VERSION"),
                node.me.name
            );
            resp::bulk(out, text.as_bytes());
        }
        "get" => {
            if argc != 2 {
                return wrong_args(out, &name);
            }
            match get(node, &args[1]).await {
                Ok(Some(value)) => resp::bulk(out, &value),
                Ok(None) => resp::null(out),
                Err(e) => error(out, &e),
            }
        }
        "mget" => {
            if argc < 2 {
                return wrong_args(out, &name);
            }
            let keys = &args[1..];
            if let Err(e) = check_all(node, keys.iter().map(|k| get_op(node, k))) {
                error(out, &e);
                return Next::Continue;
            }
            let start = out.len();
            resp::array_header(out, keys.len());
            for chunk in keys.chunks(KEYS_AT_ONCE) {
                let results = futures::future::join_all(chunk.iter().map(|k| get(node, k))).await;
                for result in results {
                    match result {
                        Ok(Some(value)) => resp::bulk(out, &value),
                        Ok(None) => resp::null(out),
                        Err(e) => {
                            out.truncate(start);
                            error(out, &e);
                            return Next::Continue;
                        }
                    }
                }
                if out.len() - start > MAX_MGET_REPLY_BYTES {
                    out.truncate(start);
                    resp::error_reply(
                        out,
                        &format!(
                            "ERR MGET reply larger than {MAX_MGET_REPLY_BYTES} bytes; ask for fewer keys"
                        ),
                    );
                    return Next::Continue;
                }
            }
        }
        "set" => {
            if argc < 3 {
                return wrong_args(out, &name);
            }
            let ttl_ms = match set_options(&args[3..]) {
                Ok(ttl_ms) => ttl_ms,
                Err(message) => {
                    resp::error_reply(out, &message);
                    return Next::Continue;
                }
            };
            set(node, out, &args[1], &args[2], ttl_ms).await;
        }
        // SETEX key seconds value, PSETEX key milliseconds value.
        "setex" | "psetex" => {
            if argc != 4 {
                return wrong_args(out, &name);
            }
            let unit = if name == "setex" { 1000 } else { 1 };
            match positive_ttl(&args[2], unit, &name) {
                Ok(ttl_ms) => set(node, out, &args[1], &args[3], Some(ttl_ms)).await,
                Err(message) => resp::error_reply(out, &message),
            }
        }
        // EXPIRE key seconds, PEXPIRE key milliseconds: a read, then the
        // value written again with the read's context and the new TTL. A
        // TTL of 0 or less deletes the key, as in Redis.
        "expire" | "pexpire" => {
            if argc != 3 {
                if argc > 3 {
                    resp::error_reply(
                        out,
                        &format!(
                            "ERR syntax error ({name} options NX, XX, GT and LT are not supported)"
                        ),
                    );
                    return Next::Continue;
                }
                return wrong_args(out, &name);
            }
            let unit = if name == "expire" { 1000 } else { 1 };
            let Some(ttl) = integer(&args[2]).and_then(|n| n.checked_mul(unit)) else {
                resp::error_reply(out, "ERR value is not an integer or out of range");
                return Next::Continue;
            };
            let Some(current) = read_or_reply(node, out, &args[1]).await else {
                return Next::Continue;
            };
            let op = if ttl <= 0 {
                put_op(node, &args[1], None, current.context)
            } else {
                put_op(node, &args[1], Some(current.value), current.context)
                    .with_ttl(Some(ttl as u64))
            };
            match put(node, op).await {
                Ok(()) => resp::integer(out, 1),
                Err(e) => error(out, &e),
            }
        }
        // PERSIST key: the value written again without a TTL.
        "persist" => {
            if argc != 2 {
                return wrong_args(out, &name);
            }
            let Some(current) = read_or_reply(node, out, &args[1]).await else {
                return Next::Continue;
            };
            if current.expires_ms.is_none() {
                resp::integer(out, 0);
                return Next::Continue;
            }
            let op = put_op(node, &args[1], Some(current.value), current.context);
            match put(node, op).await {
                Ok(()) => resp::integer(out, 1),
                Err(e) => error(out, &e),
            }
        }
        // TTL key (seconds, rounded as Redis does), PTTL key (ms): -2 for
        // a key that does not exist, -1 for one that does not expire.
        "ttl" | "pttl" => {
            if argc != 2 {
                return wrong_args(out, &name);
            }
            match read(node, &args[1]).await {
                Ok(None) => resp::integer(out, -2),
                Ok(Some(Current {
                    expires_ms: None, ..
                })) => resp::integer(out, -1),
                Ok(Some(Current {
                    expires_ms: Some(at),
                    ..
                })) => {
                    let left = i64::try_from(at.saturating_sub(now_ms())).unwrap_or(i64::MAX);
                    resp::integer(
                        out,
                        if name == "ttl" {
                            (left + 500) / 1000
                        } else {
                            left
                        },
                    );
                }
                Err(e) => error(out, &e),
            }
        }
        "mset" => {
            if argc < 3 || argc.is_multiple_of(2) {
                return wrong_args(out, &name);
            }
            // Every pair is checked before any is written.
            let ops: Vec<ClientOp> = args[1..]
                .chunks(2)
                .map(|p| put_op(node, &p[0], Some(p[1].clone()), VersionVector::new()))
                .collect();
            if let Err(e) = check_all(node, &ops) {
                error(out, &e);
                return Next::Continue;
            }
            let mut ops = ops.into_iter();
            loop {
                let chunk: Vec<ClientOp> = ops.by_ref().take(KEYS_AT_ONCE).collect();
                if chunk.is_empty() {
                    resp::simple(out, "OK");
                    break;
                }
                let results =
                    futures::future::join_all(chunk.into_iter().map(|op| put(node, op))).await;
                if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                    error(out, &e);
                    break;
                }
            }
        }
        // UNLINK frees the memory later in Redis; here both write a
        // tombstone (reaped after `--delete-mode`'s delay).
        "del" | "unlink" | "exists" => {
            if argc < 2 {
                return wrong_args(out, &name);
            }
            let keys = &args[1..];
            // Every key is checked before any is deleted.
            if let Err(e) = check_all(
                node,
                keys.iter()
                    .map(|k| put_op(node, k, None, VersionVector::new())),
            ) {
                error(out, &e);
                return Next::Continue;
            }
            let mut count = 0;
            for chunk in keys.chunks(KEYS_AT_ONCE) {
                let found = futures::future::join_all(chunk.iter().map(|k| read(node, k))).await;
                for (key, result) in chunk.iter().zip(found) {
                    match result {
                        Ok(Some(current)) => {
                            if name != "exists"
                                && let Err(e) =
                                    put(node, put_op(node, key, None, current.context)).await
                            {
                                error(out, &e);
                                return Next::Continue;
                            }
                            count += 1;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            error(out, &e);
                            return Next::Continue;
                        }
                    }
                }
            }
            resp::integer(out, count);
        }
        "type" => {
            if argc != 2 {
                return wrong_args(out, &name);
            }
            match get(node, &args[1]).await {
                Ok(Some(_)) => resp::simple(out, "string"),
                Ok(None) => resp::simple(out, "none"),
                Err(e) => error(out, &e),
            }
        }
        "dbsize" => {
            if argc != 1 {
                return wrong_args(out, &name);
            }
            // A partition's keys at a time, counted and let go.
            let mut walk = Walk::new(node.clone(), true, Some(&node.config.resp_bucket));
            let (mut count, mut next) = (0, Some(0));
            while let Some(partition) = next {
                match live_keys(&mut walk, partition, 1, |_| true).await {
                    Ok((keys, after)) => (count, next) = (count + keys.len() as i64, after),
                    Err(message) => {
                        resp::error_reply(out, &format!("ERR DBSIZE stopped: {message}"));
                        return Next::Continue;
                    }
                }
            }
            resp::integer(out, count);
        }
        "keys" => {
            if argc != 2 {
                return wrong_args(out, &name);
            }
            let pattern = &args[1];
            list_keys(node, out, "KEYS", 0, usize::MAX, |key| {
                glob_matches(pattern, key)
            })
            .await;
        }
        "scan" => {
            let Some(options) = scan_options(args, out) else {
                return Next::Continue;
            };
            let keep = |key: &[u8]| {
                options.string_type && options.pattern.is_none_or(|p| glob_matches(p, key))
            };
            list_keys(node, out, "SCAN", options.cursor, options.count, keep).await;
        }
        _ => {
            let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
            resp::error_reply(out, &format!("ERR unknown command '{shown}'"));
        }
    }
    Next::Continue
}

/// SET's value, with an expiry when `ttl_ms` is set; answers OK.
async fn set(node: &Arc<Node>, out: &mut BytesMut, key: &[u8], value: &[u8], ttl_ms: Option<u64>) {
    let op = put_op(node, key, Some(value.to_vec()), VersionVector::new()).with_ttl(ttl_ms);
    match put(node, op).await {
        Ok(()) => resp::simple(out, "OK"),
        Err(e) => error(out, &e),
    }
}

/// Reads a key for a command that rewrites it: `None` once the answer is
/// written (0 for a key that does not exist, or the error).
async fn read_or_reply(node: &Arc<Node>, out: &mut BytesMut, key: &[u8]) -> Option<Current> {
    match read(node, key).await {
        Ok(Some(current)) => Some(current),
        Ok(None) => {
            resp::integer(out, 0);
            None
        }
        Err(e) => {
            error(out, &e);
            None
        }
    }
}

/// A decimal integer argument, as Redis reads one.
fn integer(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// A TTL argument in `unit` ms that must be positive (SET's EX and PX,
/// SETEX, PSETEX), in ms; else Redis's error for `command`.
fn positive_ttl(arg: &[u8], unit: i64, command: &str) -> Result<u64, String> {
    let n = integer(arg).ok_or("ERR value is not an integer or out of range")?;
    match n.checked_mul(unit) {
        Some(ms) if ms > 0 => Ok(ms as u64),
        _ => Err(format!("ERR invalid expire time in '{command}' command")),
    }
}

/// The TTL that SET's options ask for: `EX seconds` or `PX milliseconds`.
/// The options that need a condition or the old value (NX, XX, GET,
/// KEEPTTL) and absolute times (EXAT, PXAT) are refused by name.
fn set_options(options: &[Vec<u8>]) -> Result<Option<u64>, String> {
    let mut ttl_ms = None;
    let mut rest = options.iter();
    while let Some(option) = rest.next() {
        let option = String::from_utf8_lossy(option).to_ascii_uppercase();
        let unit = match option.as_str() {
            "EX" => 1000,
            "PX" => 1,
            "NX" | "XX" | "GET" | "KEEPTTL" | "EXAT" | "PXAT" => {
                return Err(format!(
                    "ERR syntax error (SET option {option} is not supported)"
                ));
            }
            _ => return Err("ERR syntax error".into()),
        };
        let Some(arg) = rest.next() else {
            return Err("ERR syntax error".into());
        };
        if ttl_ms.is_some() {
            return Err("ERR syntax error".into());
        }
        ttl_ms = Some(positive_ttl(arg, unit, "set")?);
    }
    Ok(ttl_ms)
}

/// What `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]` asks for.
struct ScanOptions<'a> {
    /// The partition to go on from (0 at the start).
    cursor: u64,
    pattern: Option<&'a [u8]>,
    count: usize,
    /// False when TYPE names another type than `string` (every value of
    /// ringkv is a string, so then no key is listed).
    string_type: bool,
}

/// SCAN's arguments, or None with the error written to `out`.
fn scan_options<'a>(args: &'a [Vec<u8>], out: &mut BytesMut) -> Option<ScanOptions<'a>> {
    if args.len() < 2 || !args.len().is_multiple_of(2) {
        wrong_args(out, "scan");
        return None;
    }
    let number = |arg: &[u8]| std::str::from_utf8(arg).ok()?.parse::<u64>().ok();
    let Some(cursor) = number(&args[1]) else {
        resp::error_reply(out, "ERR invalid cursor");
        return None;
    };
    let mut options = ScanOptions {
        cursor,
        pattern: None,
        count: 10,
        string_type: true,
    };
    for pair in args[2..].chunks(2) {
        match String::from_utf8_lossy(&pair[0])
            .to_ascii_lowercase()
            .as_str()
        {
            "match" => options.pattern = Some(&pair[1]),
            "count" => match number(&pair[1]) {
                Some(count) if count >= 1 => {
                    options.count = usize::try_from(count).unwrap_or(usize::MAX)
                }
                _ => {
                    resp::error_reply(out, "ERR syntax error (COUNT must be a positive integer)");
                    return None;
                }
            },
            "type" => options.string_type = pair[1].eq_ignore_ascii_case(b"string"),
            _ => {
                resp::error_reply(out, "ERR syntax error (SCAN takes MATCH, COUNT and TYPE)");
                return None;
            }
        }
    }
    Some(options)
}

/// Answers KEYS (`from` 0, every partition) or SCAN (from the cursor's
/// partition until `want` keys): the RESP bucket's live keys that `keep`
/// keeps (see `listing`). KEYS answers an array of keys; SCAN the next
/// cursor ("0" after the last partition) and the array.
async fn list_keys(
    node: &Arc<Node>,
    out: &mut BytesMut,
    command: &str,
    from: u64,
    want: usize,
    keep: impl Fn(&[u8]) -> bool,
) {
    let mut walk = Walk::new(node.clone(), true, Some(&node.config.resp_bucket));
    let partitions = walk.layout().partitions();
    let (keys, next) = if from >= u64::from(partitions) {
        (Vec::new(), None)
    } else {
        match live_keys(&mut walk, from as u32, want, keep).await {
            Ok(found) => found,
            Err(message) => {
                resp::error_reply(out, &format!("ERR {command} stopped: {message}"));
                return;
            }
        }
    };
    let bytes: usize = keys.iter().map(|key| key.len() + 16).sum();
    if bytes > MAX_MGET_REPLY_BYTES {
        resp::error_reply(
            out,
            &format!(
                "ERR {command} reply larger than {MAX_MGET_REPLY_BYTES} bytes; use SCAN with a MATCH pattern, or list the keys over HTTP (GET /v1/buckets/{}/keys)",
                node.config.resp_bucket
            ),
        );
        return;
    }
    if command == "SCAN" {
        resp::array_header(out, 2);
        resp::bulk(out, next.unwrap_or(0).to_string().as_bytes());
    }
    resp::array_header(out, keys.len());
    for key in keys {
        resp::bulk(out, &key);
    }
}

fn error(out: &mut BytesMut, e: &OpError) {
    let prefix = match e {
        OpError::BadRequest { .. } => "ERR",
        OpError::Unavailable { .. } | OpError::Timeout { .. } | OpError::Overloaded => {
            "UNAVAILABLE"
        }
        OpError::TooManySiblings { .. } | OpError::Internal { .. } => "ERR",
    };
    resp::error_reply(out, &format!("{prefix} {e}"));
}

/// The value of a key: the newest live sibling (an `lww` bucket has one).
async fn get(node: &Arc<Node>, key: &[u8]) -> Result<Option<Vec<u8>>, OpError> {
    Ok(read(node, key).await?.map(|current| current.value))
}

/// What a read of a key found: its newest live value.
struct Current {
    value: Vec<u8>,
    /// The causal context of the read: a write with it supersedes what was read.
    context: VersionVector,
    /// When the value expires (ms since the Unix epoch).
    expires_ms: Option<u64>,
}

/// The newest live value of a key, with the causal context of the read.
async fn read(node: &Arc<Node>, key: &[u8]) -> Result<Option<Current>, OpError> {
    match node.execute(get_op(node, key), true).await {
        ClientReply::Found { object: None } => Ok(None),
        ClientReply::Found {
            object: Some(bytes),
        } => {
            let object = Object::decode(&bytes).map_err(|e| OpError::Internal {
                message: e.to_string(),
            })?;
            let newest = object
                .live_siblings_at(now_ms())
                .max_by_key(|s| (s.modified_ms, s.dot));
            Ok(newest.and_then(|s| {
                Some(Current {
                    value: s.value.clone()?,
                    context: object.clock().clone(),
                    expires_ms: s.expires_ms,
                })
            }))
        }
        ClientReply::Failed(e) => Err(e),
        ClientReply::Written { .. } => Err(OpError::Internal {
            message: "a read answered as a write".into(),
        }),
    }
}

fn get_op(node: &Node, key: &[u8]) -> ClientOp {
    ClientOp::Get {
        bucket: node.config.resp_bucket.clone(),
        key: key.to_vec(),
        r: None,
        pr: None,
        timeout_ms: node.config.request_timeout_ms,
    }
}

/// SET writes without a causal context: in the default `lww` bucket the
/// newest write wins, as Redis users expect. DEL passes the context of its
/// read so that it supersedes what it saw in a `siblings` bucket too.
fn put_op(node: &Node, key: &[u8], value: Option<Vec<u8>>, context: VersionVector) -> ClientOp {
    ClientOp::Put {
        bucket: node.config.resp_bucket.clone(),
        key: key.to_vec(),
        value,
        content_type: "application/octet-stream".into(),
        context,
        w: None,
        pw: None,
        timeout_ms: node.config.request_timeout_ms,
    }
}

/// The first input error among a multi-key command's operations.
fn check_all<O: Borrow<ClientOp>>(
    node: &Node,
    ops: impl IntoIterator<Item = O>,
) -> Result<(), OpError> {
    ops.into_iter().try_for_each(|op| node.check(op.borrow()))
}

async fn put(node: &Arc<Node>, op: ClientOp) -> Result<(), OpError> {
    match node.execute(op, true).await {
        ClientReply::Written { .. } => Ok(()),
        ClientReply::Failed(e) => Err(e),
        ClientReply::Found { .. } => Err(OpError::Internal {
            message: "a write answered as a read".into(),
        }),
    }
}
