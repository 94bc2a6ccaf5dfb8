//! Bucket properties as `PUT /v1/buckets/{b}` takes them (JSON), and bucket
//! registries as peers gossip them (postcard): what is accepted is valid,
//! and merging registries converges whatever the order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::bucket::{BucketProps, BucketRegistry};

fuzz_target!(|data: &[u8]| {
    if let Ok(props) = serde_json::from_slice::<BucketProps>(data)
        && props.validate().is_ok()
    {
        let _ = props.quorum("r", None);
        let _ = props.quorum("w", Some(2));
        let mut registry = BucketRegistry::default();
        assert!(registry.set("b", props, 1, 1).is_ok());
    }
    let Ok((a, rest)) = postcard::take_from_bytes::<BucketRegistry>(data) else {
        return;
    };
    let Ok((b, _)) = postcard::take_from_bytes::<BucketRegistry>(rest) else {
        return;
    };
    let (mut ab, mut ba) = (BucketRegistry::default(), BucketRegistry::default());
    ab.merge(&a);
    ab.merge(&b);
    ba.merge(&b);
    ba.merge(&a);
    if a.len() + b.len() < 10_000 {
        assert_eq!(ab, ba, "registries merged in another order differ");
    }
    for (_, entry) in ab.iter() {
        assert!(entry.props.validate().is_ok());
    }
});
