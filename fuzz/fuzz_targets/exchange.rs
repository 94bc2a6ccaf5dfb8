//! One anti-entropy exchange against a peer that answers anything: the
//! input is the peer's responses (postcard, as in frames). The asking side
//! must refuse what does not fit, never panic, and finish. A second part
//! of the input is a request that this node answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::antientropy::{
    Exchange, ExchangeLimits, ExchangeRequest, ExchangeResponse, ExchangeStep, MerkleTree, answer,
};

fn tree() -> MerkleTree {
    let mut tree = MerkleTree::new(64, 4).expect("shape");
    for i in 0u64..40 {
        tree.insert(
            format!("key-{i}").as_bytes(),
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
    }
    tree
}

fuzz_target!(|data: &[u8]| {
    if let Ok((request, _)) = postcard::take_from_bytes::<ExchangeRequest>(data) {
        let _ = answer(&mut tree(), &request);
    }
    let mut local = tree();
    let limits = ExchangeLimits {
        max_indices_per_request: 8,
        max_segments: 16,
    };
    let (mut exchange, _) = Exchange::start(&mut local, limits);
    let mut rest = data;
    // Each step consumes input, so the loop ends.
    while let Ok((response, tail)) = postcard::take_from_bytes::<ExchangeResponse>(rest) {
        if tail.len() == rest.len() {
            break;
        }
        rest = tail;
        match exchange.on_response(&mut local, response) {
            Ok(ExchangeStep::Send(_)) => {}
            Ok(ExchangeStep::Done(outcome)) => {
                assert!(outcome.segments_compared <= limits.max_segments);
                break;
            }
            Err(_) => break,
        }
    }
});
