//! A causal context token from a client (`X-Ringkv-Context`): one that is
//! accepted encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::causality::{decode_context, encode_context};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(vv) = decode_context(token) {
        assert_eq!(encode_context(&vv), token);
    }
});
