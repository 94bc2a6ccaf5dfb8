//! A layout as peers gossip it: one that decodes encodes to a layout equal
//! to it (postcard also takes over-long varints, so not always to the same
//! bytes), and every question the node asks of it has an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_core::ring::{Layout, previous_holders};

fuzz_target!(|data: &[u8]| {
    let Ok(layout) = Layout::decode(data) else {
        return;
    };
    assert_eq!(Layout::decode(&layout.encode()).as_ref(), Ok(&layout));
    for partition in [0, layout.partitions() / 2, layout.partitions() - 1] {
        let owner = layout.owner(partition);
        assert!(layout.member(owner).is_some(), "an owner is not a member");
        for n in 1..=4 {
            let list = layout.preference_list(partition, n);
            assert!(list.primaries.len() <= n);
        }
    }
    let _ = previous_holders(&layout, &layout, 5);
    for member in layout.members() {
        let _ = layout.partitions_owned(member.id);
        let _ = layout.with_member_leaving(member.id);
        let _ = layout.with_member_removed(member.id);
        let _ = layout.without_member(member.id);
    }
});
