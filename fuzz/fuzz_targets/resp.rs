//! RESP requests as a connection reads them: a command split over reads at
//! arbitrary places parses to the same arguments (or the same refusal) as
//! when it arrives whole, and no argument exceeds the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_wire::resp::{CommandParser, RespLimits};

const LIMITS: RespLimits = RespLimits {
    max_args: 16,
    max_bulk_bytes: 256,
    max_inline_bytes: 256,
    max_command_bytes: 1024,
};

/// Parses every command of `data`, fed in pieces of `step` bytes, as the
/// RESP server does: append, parse until more is needed, drop what a
/// command consumed.
fn commands(data: &[u8], step: usize) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut parser = CommandParser::new(LIMITS);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&buf) {
                Ok(Some((args, consumed))) => {
                    assert!(consumed > 0 && consumed <= buf.len());
                    assert!(args.len() <= LIMITS.max_args);
                    assert!(args.iter().all(|a| a.len() <= LIMITS.max_bulk_bytes));
                    buf.drain(..consumed);
                    out.push(args);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let whole = commands(data, data.len());
    assert_eq!(commands(data, usize::from(cut)), whole);
});
