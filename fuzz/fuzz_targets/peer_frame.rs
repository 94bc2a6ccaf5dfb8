//! A peer frame (what arrives after the length prefix), and the bytes
//! nested in its messages: objects, layouts, bucket registries, exchanges.
//! A frame that decodes must encode back to a frame that decodes to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::bucket::BucketRegistry;
use ringkv_core::causality::{ConflictMode, Object};
use ringkv_core::message::{PeerRequest, PeerResponse};
use ringkv_core::ring::Layout;
use ringkv_wire::{Frame, decode_frame, encode_frame};

fn object(bytes: &[u8]) {
    if let Ok(object) = Object::decode(bytes) {
        for mode in [ConflictMode::Siblings, ConflictMode::Lww] {
            let _ = object.merge(&object, mode);
        }
    }
}

fn layout(bytes: &[u8]) {
    if let Ok(layout) = Layout::decode(bytes) {
        let _ = layout.preference_list(0, 3);
    }
}

fn registry(buckets: &BucketRegistry) {
    let mut ours = BucketRegistry::default();
    ours.merge(buckets);
    for (_, entry) in ours.iter() {
        assert!(
            entry.props.validate().is_ok(),
            "an invalid bucket was merged"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode_frame(data) else {
        return;
    };
    let encoded = encode_frame(&frame).expect("a decoded frame encodes");
    assert_eq!(decode_frame(&encoded).expect("re-decodes"), frame);
    match &frame {
        Frame::Request { body, .. } => match body {
            PeerRequest::ReplicaPut { object: o, .. } | PeerRequest::HintPut { object: o, .. } => {
                object(o)
            }
            PeerRequest::Gossip(state) => {
                layout(&state.layout);
                registry(&state.buckets);
            }
            _ => {}
        },
        Frame::Response { body, .. } => match body {
            PeerResponse::ReplicaGetDone { object: Some(o) }
            | PeerResponse::HandoffGetDone {
                object: Some(o), ..
            } => object(o),
            PeerResponse::Gossip(state) => {
                layout(&state.layout);
                registry(&state.buckets);
            }
            PeerResponse::ScanPage { entries, .. } => {
                for (_, o) in entries {
                    object(o);
                }
            }
            PeerResponse::Joined {
                layout: l, buckets, ..
            } => {
                layout(l);
                registry(buckets);
            }
            _ => {}
        },
    }
});
