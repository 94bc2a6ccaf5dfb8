//! A peer connection's byte stream, cut into reads at arbitrary places:
//! the length-prefix codec yields the same frames, or the same refusal,
//! however the bytes arrive, and never buffers a frame over its limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMIT: usize = 4096;

fn frames(chunks: &[&[u8]]) -> (Vec<BytesMut>, bool) {
    let mut codec = ringkv_wire::peer_codec(LIMIT);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT);
                    let _ = ringkv_wire::decode_frame(&frame);
                    out.push(frame);
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
    let whole = frames(&[data]);
    let step = usize::from(cut).max(1);
    let pieces: Vec<&[u8]> = data.chunks(step).collect();
    assert_eq!(frames(&pieces), whole);
});
