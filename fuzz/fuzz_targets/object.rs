//! Objects as peers send them (replica and hint writes, read answers): two
//! objects from one input. One that decodes encodes back to the same
//! bytes, and merging follows the laws replicas converge by: commutative,
//! idempotent, and absorbing what was merged in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::causality::{ConflictMode, Object};

fn decoded(bytes: &[u8]) -> Option<Object> {
    let object = Object::decode(bytes).ok()?;
    assert_eq!(
        object.encode(),
        bytes,
        "decode then encode changed the bytes"
    );
    Some(object)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(data.len());
    let (a, b) = data.split_at(at);
    let a = decoded(a);
    let b = decoded(b);
    for mode in [ConflictMode::Siblings, ConflictMode::Lww] {
        for x in [&a, &b].into_iter().flatten() {
            if mode == ConflictMode::Siblings {
                assert_eq!(&x.merge(x, mode), x, "merge is not idempotent");
            }
        }
        if let (Some(a), Some(b)) = (&a, &b) {
            let ab = a.merge(b, mode);
            assert_eq!(ab, b.merge(a, mode), "merge is not commutative ({mode:?})");
            assert_eq!(ab.merge(b, mode), ab, "merging again changed it ({mode:?})");
            assert!(Object::decode(&ab.encode()).is_ok());
        }
    }
});
