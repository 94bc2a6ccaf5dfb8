//! Tests of the ring: the hash, the layout's guarantees (balance,
//! distinctness, minimal movement) over every ring size and small cluster,
//! preference lists, and the byte format.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::assignment;
use super::layout::RawLayout;
use super::*;
use crate::NodeId;

/// Every ring size a cluster can have.
const ALL_PARTITIONS: [u32; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// The ring sizes the property tests draw from.
const SOME_PARTITIONS: [u32; 8] = [8, 16, 32, 64, 128, 256, 1024, 4096];
const MOST_MEMBERS: usize = 24;
const MOST_TARGET_N: u32 = 5;

fn member(id: NodeId, name: &str) -> Member {
    Member {
        id,
        name: name.to_owned(),
        peer_addr: format!("{name}.example:7000"),
        http_addr: format!("{name}.example:8080"),
        resp_addr: format!("{name}.example:6380"),
        state: MemberState::Valid,
    }
}

fn raw(layout: &Layout) -> RawLayout {
    RawLayout {
        version: layout.version(),
        partitions: layout.partitions(),
        target_n: layout.target_n(),
        members: layout.members().to_vec(),
        owners: layout.owners().to_vec(),
    }
}

fn encode_raw(raw: &RawLayout) -> Vec<u8> {
    let mut bytes = vec![1];
    bytes.extend(postcard::to_allocvec(raw).unwrap());
    bytes
}

/// Builds a layout by joining members with these ids (named `n{id}`) in order.
fn grow(partitions: u32, target_n: u32, ids: &[NodeId]) -> Layout {
    let mut layout = Layout::new(
        partitions,
        target_n,
        member(ids[0], &format!("n{}", ids[0])),
    )
    .unwrap();
    for &id in &ids[1..] {
        layout = layout.with_member(member(id, &format!("n{id}"))).unwrap();
    }
    layout
}

/// Circular gaps between consecutive partitions of each owner.
fn gaps<T: Ord + Copy>(owners: &[T]) -> BTreeMap<T, Vec<usize>> {
    let mut positions: BTreeMap<T, Vec<usize>> = BTreeMap::new();
    for (partition, &owner) in owners.iter().enumerate() {
        positions.entry(owner).or_default().push(partition);
    }
    positions
        .into_iter()
        .map(|(owner, at)| {
            let gaps = (0..at.len())
                .map(|i| (at[(i + 1) % at.len()] + owners.len() - at[i]) % owners.len());
            (
                owner,
                gaps.map(|gap| if gap == 0 { owners.len() } else { gap })
                    .collect(),
            )
        })
        .collect()
}

/// Starts of the circular windows of `w` partitions that repeat an owner.
fn repeating_windows<T: Ord + Copy>(owners: &[T], w: usize) -> Vec<usize> {
    (0..owners.len())
        .filter(|&start| {
            let mut window: Vec<T> = (0..w).map(|i| owners[(start + i) % owners.len()]).collect();
            window.sort_unstable();
            window.windows(2).any(|pair| pair[0] == pair[1])
        })
        .collect()
}

/// Checks balance and distinctness as the module documents them; `Err`
/// says what failed.
fn check_guarantees<T: Ord + Copy + std::fmt::Debug>(
    owners: &[T],
    members: usize,
    target_n: usize,
) -> Result<(), String> {
    let q = owners.len();
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for &owner in owners {
        *counts.entry(owner).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap();
    let least = if counts.len() < members {
        0
    } else {
        counts.values().copied().min().unwrap()
    };
    if most - least > 1 {
        return Err(format!("unbalanced: counts {counts:?}"));
    }
    let w = target_n.min(members);
    let repeats = repeating_windows(owners, w);
    if q.div_ceil(members) * w <= q {
        if !repeats.is_empty() {
            return Err(format!(
                "windows of {w} starting at {repeats:?} repeat an owner"
            ));
        }
    } else if w == members {
        let r = q % members;
        let shortfall: usize = gaps(owners)
            .values()
            .flatten()
            .map(|gap| w.saturating_sub(*gap))
            .sum();
        if shortfall != r * (members - r) || repeats.len() > r * (members - r) {
            return Err(format!(
                "shortfall {shortfall} and {} repeating windows, expected {}",
                repeats.len(),
                r * (members - r)
            ));
        }
    }
    Ok(())
}

/// Only partitions now owned by `joiner` changed owner, and it owns ⌊Q/M⌋.
fn check_minimal_movement(before: &Layout, after: &Layout, joiner: NodeId) -> Result<(), String> {
    let changed: Vec<u32> = (0..before.partitions())
        .filter(|&p| before.owner(p) != after.owner(p))
        .collect();
    let expected = before.partitions() as usize / after.members().len();
    if changed.len() != expected || changed.iter().any(|&p| after.owner(p) != joiner) {
        return Err(format!(
            "{} partitions changed owner, expected {expected} all to {joiner}: {changed:?}",
            changed.len()
        ));
    }
    Ok(())
}

#[test]
fn key_hash_matches_its_definition_and_golden_values() {
    let cases: [(&[u8], &[u8], u64); 3] = [
        (b"users", b"alice", 0x63ca_103b_1a1c_0a6e),
        (b"redis", b"counter:1", 0x8513_2f26_a54a_7db9),
        (b"b", b"", 0x2955_f6f5_2bbc_229d),
    ];
    for (bucket, key, golden) in cases {
        let mut bytes = (bucket.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(bucket);
        bytes.extend_from_slice(key);
        assert_eq!(key_hash(bucket, key), xxhash_rust::xxh3::xxh3_64(&bytes));
        assert_eq!(
            key_hash(bucket, key),
            golden,
            "hash of {bucket:?}/{key:?} changed"
        );
    }
    // The length prefix separates bucket from key.
    assert_ne!(key_hash(b"ab", b"c"), key_hash(b"a", b"bc"));
}

#[test]
fn partition_of_takes_the_top_bits() {
    assert_eq!(partition_of(u64::MAX, 64), 63);
    assert_eq!(partition_of(0, 64), 0);
    assert_eq!(partition_of(u64::MAX, 1), 0);
    assert_eq!(partition_of(1 << 63, 2), 1);
    assert_eq!(partition_of((1 << 63) - 1, 2), 0);
    assert_eq!(partition_of(0x0123_4567_89ab_cdef, 4096), 0x012);
    assert_eq!(partition_of(0xfedc_ba98_7654_3210, 64), 0xfe >> 2);
}

#[test]
fn new_checks_partitions_and_target_n() {
    for partitions in [0, 3, 6, 100, 8192, u32::MAX] {
        assert_eq!(
            Layout::new(partitions, 3, member(1, "a")),
            Err(LayoutError::InvalidPartitions {
                partitions,
                max: MAX_PARTITIONS
            })
        );
    }
    assert_eq!(
        Layout::new(64, 0, member(1, "a")),
        Err(LayoutError::ZeroTargetN)
    );
    let layout = Layout::new(DEFAULT_PARTITIONS, DEFAULT_TARGET_N, member(7, "a")).unwrap();
    assert_eq!(layout.version(), 1);
    assert_eq!(layout.partitions(), 64);
    assert_eq!(layout.target_n(), 3);
    assert_eq!(layout.members(), &[member(7, "a")]);
    assert_eq!(layout.partitions_owned(7), 64);
    assert_eq!(layout.member_by_name("a").map(|m| m.id), Some(7));
    assert_eq!(layout.member(8), None);
}

/// Every ring size, target_n ≤ 5 and cluster grown one member at a time up
/// to 24 (ids descending, so each joiner sorts first).
#[test]
fn every_join_keeps_balance_distinctness_and_moves_least() {
    for partitions in ALL_PARTITIONS {
        for target_n in 1..=MOST_TARGET_N {
            let most = MOST_MEMBERS.min(partitions as usize);
            let mut layout = Layout::new(partitions, target_n, member(1000, "n0")).unwrap();
            for size in 2..=most {
                let id = 1000 - size as NodeId;
                let next = layout.with_member(member(id, &format!("n{size}"))).unwrap();
                let context = format!("Q={partitions} target_n={target_n} M={size}");
                check_guarantees(next.owners(), size, target_n as usize)
                    .map_err(|e| format!("{context}: {e}"))
                    .unwrap();
                // The old layout had size − 1 members.
                if size > target_n as usize {
                    check_minimal_movement(&layout, &next, id)
                        .map_err(|e| format!("{context}: {e}"))
                        .unwrap();
                }
                assert_eq!(next.version(), layout.version() + 1);
                layout = next;
            }
            assert_eq!(
                layout.with_member(member(1, "extra")).is_none(),
                most == partitions as usize
            );
        }
    }
}

/// The fresh assignment of every size keeps the guarantees, and joining it
/// moves only the joiner's partitions when M ≥ target_n.
#[test]
fn fresh_assignments_keep_guarantees_and_joins_move_least() {
    for partitions in ALL_PARTITIONS.map(|q| q as usize) {
        for target_n in 1..=MOST_TARGET_N as usize {
            for members in 1..=MOST_MEMBERS.min(partitions) {
                let context = format!("Q={partitions} target_n={target_n} M={members}");
                let fresh = assignment::fresh(partitions, members, target_n);
                check_guarantees(&fresh, members, target_n)
                    .map_err(|e| format!("{context}: {e}"))
                    .unwrap();
                if members < partitions && members >= target_n {
                    let joined = assignment::join(&fresh, members, target_n);
                    check_guarantees(&joined, members + 1, target_n)
                        .map_err(|e| format!("{context}+1: {e}"))
                        .unwrap();
                    let moved: Vec<usize> =
                        (0..partitions).filter(|&p| fresh[p] != joined[p]).collect();
                    assert_eq!(
                        moved.len(),
                        partitions / (members + 1),
                        "{context}: moved {moved:?}"
                    );
                    assert!(
                        moved.iter().all(|&p| joined[p] == members),
                        "{context}: moved {moved:?}"
                    );
                }
            }
        }
    }
}

/// Every member of clusters of up to 8 leaving in turn: it owns nothing
/// and is neither replica nor fallback, and the others keep the guarantees.
/// Moving only the leaver's partitions is not always possible (its
/// neighbours may leave no member that keeps windows distinct and counts
/// balanced); it is when the leaver is the last joiner of a cluster that
/// keeps at least target_n members and can keep windows distinct, and then
/// nothing else moves.
#[test]
fn every_leave_keeps_balance_distinctness_and_moves_least() {
    let (mut leaves, mut minimal) = (0, 0);
    for partitions in ALL_PARTITIONS {
        for target_n in 1..=MOST_TARGET_N {
            for size in 2..=8.min(partitions as usize) {
                let ids: Vec<NodeId> = (1..=size as NodeId).map(|i| i * 10).collect();
                let layout = grow(partitions, target_n, &ids);
                for &leaver in &ids {
                    let context =
                        format!("Q={partitions} target_n={target_n} M={size} leaver={leaver}");
                    let next = layout.with_member_leaving(leaver).unwrap();
                    assert_eq!(next.version(), layout.version() + 1, "{context}");
                    assert_eq!(next.member(leaver).unwrap().state, MemberState::Leaving);
                    assert_eq!(next.partitions_owned(leaver), 0, "{context}");
                    check_guarantees(next.owners(), size - 1, target_n as usize)
                        .map_err(|e| format!("{context}: {e}"))
                        .unwrap();
                    for partition in 0..partitions {
                        let list = next.preference_list(partition, target_n as usize);
                        assert!(
                            !list.primaries.contains(&leaver) && !list.fallbacks.contains(&leaver),
                            "{context}: the leaver is still listed for {partition}"
                        );
                        assert_eq!(list.primaries.len() + list.fallbacks.len(), size - 1);
                    }
                    let others_moved = (0..partitions)
                        .filter(|&p| layout.owner(p) != leaver && layout.owner(p) != next.owner(p))
                        .count();
                    leaves += 1;
                    minimal += usize::from(others_moved == 0);
                    let w = (target_n as usize).min(size - 1);
                    let distinct =
                        (partitions as usize).div_ceil(size - 1) * w <= partitions as usize;
                    if leaver == ids[size - 1] && size > target_n as usize && distinct {
                        assert_eq!(
                            others_moved, 0,
                            "{context}: undoing the last join moved others"
                        );
                    }
                    // Decodes as valid, and cannot leave twice.
                    assert_eq!(Layout::decode(&next.encode()).unwrap(), next);
                    assert_eq!(
                        next.with_member_leaving(leaver),
                        Err(LeaveError::AlreadyLeaving)
                    );
                }
            }
        }
    }
    // Most leaves move nothing else (measured: see the assertion message).
    assert!(
        minimal * 2 > leaves,
        "{minimal} of {leaves} leaves moved only the leaver's partitions"
    );
}

#[test]
fn leaving_refuses_what_it_cannot_do_and_a_join_skips_leaving_members() {
    let layout = grow(16, 3, &[10, 20, 30, 40]);
    assert_eq!(layout.with_member_leaving(99), Err(LeaveError::NotAMember));
    let one = grow(16, 3, &[10]);
    assert_eq!(one.with_member_leaving(10), Err(LeaveError::LastMember));
    let left = layout.with_member_leaving(40).unwrap();
    let last = left
        .with_member_leaving(30)
        .and_then(|l| l.with_member_leaving(20))
        .unwrap();
    assert_eq!(last.with_member_leaving(10), Err(LeaveError::LastMember));
    assert!(last.owners().iter().all(|&owner| owner == 10));
    // A leaving member that restarts and re-announces itself stays leaving,
    // and its name cannot be taken over by a new id.
    assert_eq!(left.with_member(member(40, "n40")), None);
    let moved = left
        .with_member(Member {
            peer_addr: "elsewhere:7000".into(),
            ..member(40, "n40")
        })
        .unwrap();
    assert_eq!(moved.member(40).unwrap().state, MemberState::Leaving);
    assert_eq!(moved.partitions_owned(40), 0);
    assert_eq!(left.with_member(member(41, "n40")), None);
    // A joiner is balanced against the valid members only.
    let joined = left.with_member(member(50, "n50")).unwrap();
    assert_eq!(joined.partitions_owned(40), 0);
    check_guarantees(joined.owners(), 4, 3).unwrap();
    // Only a leaving member can be removed, and then nothing else changes.
    assert_eq!(left.without_member(10), None);
    assert_eq!(left.without_member(99), None);
    let removed = left.without_member(40).unwrap();
    assert_eq!(removed.version(), left.version() + 1);
    assert_eq!(removed.member(40), None);
    assert_eq!(removed.owners(), left.owners());
    assert_eq!(removed.valid_members(), 3);
    assert_eq!(Layout::decode(&removed.encode()).unwrap(), removed);
    // A forced removal takes a valid or a leaving member out in one version.
    let forced = layout.with_member_removed(30).unwrap();
    assert_eq!(forced.version(), layout.version() + 1);
    assert_eq!(forced.member(30), None);
    check_guarantees(forced.owners(), 3, 3).unwrap();
    let forced_leaver = left.with_member_removed(40).unwrap();
    assert_eq!(forced_leaver, left.without_member(40).unwrap());
    assert_eq!(layout.with_member_removed(99), Err(LeaveError::NotAMember));
    assert_eq!(one.with_member_removed(10), Err(LeaveError::LastMember));
    // A layout in which a leaving member owns a partition does not decode.
    let mut broken = raw(&left);
    broken.owners[0] = 40;
    assert_eq!(
        Layout::decode(&encode_raw(&broken)),
        Err(LayoutError::LeavingOwner {
            partition: 0,
            owner: 40
        })
    );
}

#[test]
fn guarantees_are_as_documented_for_the_default_three_nodes() {
    // 3 nodes, target 3, Q = 64: 64 = 21·3 + 1, one member owns 22 and
    // repeats once, 1 partition after itself: 2 windows of 3 repeat it.
    let layout = grow(64, 3, &[1, 2, 3]);
    let counts: Vec<usize> = [1, 2, 3].map(|id| layout.partitions_owned(id)).to_vec();
    assert_eq!(counts.iter().sum::<usize>(), 64);
    assert!(counts.iter().all(|&c| c == 21 || c == 22));
    assert_eq!(repeating_windows(layout.owners(), 3).len(), 2);
    // Every member is a primary of every partition.
    for partition in 0..64 {
        let mut primaries = layout.preference_list(partition, 3).primaries;
        primaries.sort_unstable();
        assert_eq!(primaries, vec![1, 2, 3]);
    }
    // A fourth moves exactly 16 partitions to itself and makes every window distinct.
    let four = layout.with_member(member(4, "n4")).unwrap();
    check_minimal_movement(&layout, &four, 4).unwrap();
    assert!(repeating_windows(four.owners(), 3).is_empty());
}

#[test]
fn distinctness_is_impossible_exactly_when_documented() {
    // A member owning ⌈Q/M⌉ partitions needs ⌈Q/M⌉·w ≤ Q.
    assert!(!assignment::distinct_feasible(64, 3, 3));
    assert!(assignment::distinct_feasible(64, 4, 3));
    assert!(assignment::distinct_feasible(64, 4, 4));
    assert!(!assignment::distinct_feasible(64, 5, 5));
    assert!(!assignment::distinct_feasible(8, 6, 5));
    assert!(!assignment::distinct_feasible(8, 7, 5));
    assert!(assignment::distinct_feasible(8, 8, 5));
    assert!(assignment::distinct_feasible(16, 6, 5));
    assert_eq!(assignment::minimal_shortfall(64, 3, 3), 2);
    assert_eq!(assignment::minimal_shortfall(64, 5, 5), 4);
    assert_eq!(assignment::minimal_shortfall(128, 5, 5), 6);
    assert_eq!(assignment::minimal_shortfall(64, 4, 3), 0);
}

#[test]
fn with_member_updates_in_place_and_refuses_what_it_cannot_do() {
    let layout = grow(16, 3, &[10, 20, 30]);
    // Identical: nothing changes.
    assert_eq!(layout.with_member(member(20, "n20")), None);
    // A rename onto another member's name is refused.
    assert_eq!(layout.with_member(member(20, "n30")), None);
    // A rename to a free name is an update.
    let renamed = layout.with_member(member(20, "twenty")).unwrap();
    assert_eq!(renamed.member(20).unwrap().name, "twenty");
    assert_eq!(renamed.owners(), layout.owners());
    assert_eq!(renamed.version(), layout.version() + 1);
    // A state in the update is ignored: leaving is `with_member_leaving`'s.
    let update = Member {
        state: MemberState::Leaving,
        ..member(30, "n30")
    };
    assert_eq!(layout.with_member(update), None);
    // A full ring takes no new member, but still takes a replacement.
    let full = grow(2, 3, &[1, 2]);
    assert_eq!(full.with_member(member(3, "n3")), None);
    let replaced = full.with_member(member(3, "n2")).unwrap();
    assert_eq!(replaced.partitions_owned(3), 1);
    assert_eq!(replaced.member(2), None);
    // The last version has no successor.
    let mut last = raw(&layout);
    last.version = u64::MAX;
    let last = Layout::decode(&encode_raw(&last)).unwrap();
    assert_eq!(last.with_member(member(40, "n40")), None);
}

#[test]
fn preference_list_walks_the_ring() {
    let raw = RawLayout {
        version: 3,
        partitions: 8,
        target_n: 3,
        members: vec![
            member(10, "a"),
            member(20, "b"),
            member(30, "c"),
            member(40, "d"),
        ],
        owners: vec![10, 20, 10, 30, 20, 10, 20, 30],
    };
    let layout = Layout::decode(&encode_raw(&raw)).unwrap();
    let list = |partition, n| {
        let list = layout.preference_list(partition, n);
        (list.primaries, list.fallbacks)
    };
    assert_eq!(list(2, 2), (vec![10, 30], vec![20, 40]));
    assert_eq!(list(7, 3), (vec![30, 10, 20], vec![40]));
    // 40 owns nothing: it comes last, and is a primary only when n asks for all.
    assert_eq!(list(0, 5), (vec![10, 20, 30, 40], vec![]));
    assert_eq!(list(4, 0), (vec![], vec![20, 10, 30, 40]));
}

#[test]
fn supersedes_orders_by_version_then_digest() {
    let one = grow(16, 3, &[1]);
    let two = one.with_member(member(2, "n2")).unwrap();
    let other_two = one.with_member(member(3, "n3")).unwrap();
    assert!(two.supersedes(&one));
    assert!(!one.supersedes(&two));
    assert!(!two.supersedes(&two));
    assert_eq!(two.version(), other_two.version());
    assert_ne!(two.digest(), other_two.digest());
    assert!(two.supersedes(&other_two) != other_two.supersedes(&two));
    assert_eq!(
        two.supersedes(&other_two),
        two.digest() > other_two.digest()
    );
}

#[test]
fn decode_rejects_every_broken_invariant() {
    let good = raw(&grow(8, 3, &[10, 20, 30]));
    assert!(Layout::decode(&encode_raw(&good)).is_ok());
    let broken = |change: fn(&mut RawLayout)| {
        let mut raw = good.clone();
        change(&mut raw);
        Layout::decode(&encode_raw(&raw)).unwrap_err()
    };
    assert_eq!(
        broken(|r| r.partitions = 6),
        LayoutError::InvalidPartitions {
            partitions: 6,
            max: 4096
        }
    );
    assert_eq!(
        broken(|r| r.partitions = 8192),
        LayoutError::InvalidPartitions {
            partitions: 8192,
            max: 4096
        }
    );
    assert_eq!(broken(|r| r.target_n = 0), LayoutError::ZeroTargetN);
    assert_eq!(broken(|r| r.version = 0), LayoutError::ZeroVersion);
    assert_eq!(broken(|r| r.members.clear()), LayoutError::NoMembers);
    assert_eq!(
        broken(|r| r.partitions = 2),
        LayoutError::TooManyMembers {
            members: 3,
            partitions: 2
        }
    );
    assert_eq!(
        broken(|r| r.members.swap(0, 1)),
        LayoutError::MembersUnsorted {
            previous: 20,
            id: 10
        }
    );
    assert_eq!(
        broken(|r| r.members[1].id = 10),
        LayoutError::DuplicateMemberId { id: 10 }
    );
    assert_eq!(
        broken(|r| r.members[2].name = "n10".into()),
        LayoutError::DuplicateMemberName { name: "n10".into() }
    );
    assert_eq!(
        broken(|r| r.owners.truncate(7)),
        LayoutError::OwnersLength {
            owners: 7,
            partitions: 8
        }
    );
    assert_eq!(
        broken(|r| r.owners[5] = 99),
        LayoutError::UnknownOwner {
            partition: 5,
            owner: 99
        }
    );

    let bytes = encode_raw(&good);
    assert_eq!(Layout::decode(&[]), Err(LayoutError::Empty));
    let mut future = bytes.clone();
    future[0] = 2;
    assert_eq!(
        Layout::decode(&future),
        Err(LayoutError::UnsupportedFormat {
            format: 2,
            supported: 1
        })
    );
    let mut longer = bytes.clone();
    longer.extend([0, 0]);
    assert_eq!(
        Layout::decode(&longer),
        Err(LayoutError::TrailingBytes { count: 2 })
    );
    assert!(matches!(
        Layout::decode(&bytes[..bytes.len() - 1]),
        Err(LayoutError::Malformed { .. })
    ));
}

#[test]
fn serde_deserialization_validates_too() {
    let mut broken = raw(&grow(8, 3, &[10, 20]));
    broken.owners[0] = 99;
    let bytes = postcard::to_allocvec(&broken).unwrap();
    assert!(postcard::from_bytes::<Layout>(&bytes).is_err());
    let good = grow(8, 3, &[10, 20]);
    let bytes = postcard::to_allocvec(&good).unwrap();
    assert_eq!(postcard::from_bytes::<Layout>(&bytes).unwrap(), good);
}

fn layout_strategy() -> impl Strategy<Value = Layout> {
    (
        prop::sample::select(SOME_PARTITIONS.to_vec()),
        1..=MOST_TARGET_N,
        prop::collection::btree_set(any::<u64>(), 1..=MOST_MEMBERS),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(partitions, target_n, ids, shuffle)| {
            // Join in an order other than id order.
            let mut ids: Vec<NodeId> = ids.into_iter().collect();
            let turn = shuffle.index(ids.len());
            ids.rotate_left(turn);
            ids.truncate(partitions as usize);
            grow(partitions, target_n, &ids)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_joins_keep_guarantees(layout in layout_strategy(), id in any::<u64>()) {
        let members = layout.members().len();
        let target_n = layout.target_n() as usize;
        prop_assert!(check_guarantees(layout.owners(), members, target_n).is_ok());
        prop_assume!(layout.member(id).is_none() && members < layout.partitions() as usize);
        let next = layout.with_member(member(id, "joiner")).unwrap();
        if let Err(e) = check_guarantees(next.owners(), members + 1, target_n) {
            prop_assert!(false, "{}", e);
        }
        if members >= target_n
            && let Err(e) = check_minimal_movement(&layout, &next, id)
        {
            prop_assert!(false, "{}", e);
        }
        prop_assert!(next.members().windows(2).all(|pair| pair[0].id < pair[1].id));
    }

    #[test]
    fn random_leaves_then_joins_keep_guarantees(
        layout in layout_strategy(),
        which in any::<prop::sample::Index>(),
        id in any::<u64>(),
    ) {
        let members = layout.members().len();
        let target_n = layout.target_n() as usize;
        prop_assume!(members >= 2);
        let leaver = layout.members()[which.index(members)].id;
        let left = layout.with_member_leaving(leaver).unwrap();
        prop_assert_eq!(left.partitions_owned(leaver), 0);
        if let Err(e) = check_guarantees(left.owners(), members - 1, target_n) {
            prop_assert!(false, "after the leave: {}", e);
        }
        prop_assume!(left.member(id).is_none() && members < left.partitions() as usize);
        let joined = left.with_member(member(id, "joiner")).unwrap();
        prop_assert_eq!(joined.partitions_owned(leaver), 0);
        if let Err(e) = check_guarantees(joined.owners(), members, target_n) {
            prop_assert!(false, "after the join: {}", e);
        }
    }

    #[test]
    fn preference_lists_cover_every_member_once(
        layout in layout_strategy(),
        partition in any::<prop::sample::Index>(),
        n in 0usize..8,
    ) {
        let partition = partition.index(layout.partitions() as usize) as u32;
        let list = layout.preference_list(partition, n);
        let members = layout.members().len();
        prop_assert_eq!(list.primaries.len(), n.min(members));
        if n > 0 {
            prop_assert_eq!(list.primaries[0], layout.owner(partition));
        }
        let mut all: Vec<NodeId> = list.primaries.iter().chain(&list.fallbacks).copied().collect();
        all.sort_unstable();
        let ids: Vec<NodeId> = layout.members().iter().map(|m| m.id).collect();
        prop_assert_eq!(all, ids);
        // Walk order: each member's first partition from `partition` on
        // comes no later than those of the members listed after it.
        let q = layout.partitions();
        let first_seen = |id: NodeId| {
            (0..q).find(|step| layout.owner((partition + step) % q) == id).unwrap()
        };
        let order: Vec<u32> =
            list.primaries.iter().chain(&list.fallbacks).map(|&id| first_seen(id)).collect();
        prop_assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "walk order {:?}", order);
    }

    #[test]
    fn replacement_by_name_takes_over_exactly_the_old_partitions(
        layout in layout_strategy(),
        which in any::<prop::sample::Index>(),
        new_id in any::<u64>(),
    ) {
        prop_assume!(layout.member(new_id).is_none());
        let old = layout.members()[which.index(layout.members().len())].clone();
        let next = layout.with_member(member(new_id, &old.name)).unwrap();
        prop_assert_eq!(next.version(), layout.version() + 1);
        prop_assert_eq!(next.member(old.id), None);
        prop_assert_eq!(next.members().len(), layout.members().len());
        for partition in 0..layout.partitions() {
            let before = layout.owner(partition);
            let expected = if before == old.id { new_id } else { before };
            prop_assert_eq!(next.owner(partition), expected);
        }
        prop_assert!(next.members().windows(2).all(|pair| pair[0].id < pair[1].id));
    }

    #[test]
    fn updating_addresses_changes_no_owner(
        layout in layout_strategy(),
        which in any::<prop::sample::Index>(),
    ) {
        let mut updated = layout.members()[which.index(layout.members().len())].clone();
        updated.http_addr = "moved.example:9090".into();
        let next = layout.with_member(updated.clone()).unwrap();
        prop_assert_eq!(next.owners(), layout.owners());
        prop_assert_eq!(next.member(updated.id), Some(&updated));
        prop_assert_eq!(next.version(), layout.version() + 1);
    }

    #[test]
    fn encode_decode_round_trips(layout in layout_strategy()) {
        let bytes = layout.encode();
        prop_assert_eq!(bytes[0], 1);
        let decoded = Layout::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.digest(), layout.digest());
        prop_assert_eq!(decoded, layout);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        mut bytes in prop::collection::vec(any::<u8>(), 0..400),
        versioned in any::<bool>(),
    ) {
        if versioned && !bytes.is_empty() {
            bytes[0] = 1;
        }
        if let Ok(layout) = Layout::decode(&bytes) {
            prop_assert_eq!(Layout::decode(&layout.encode()).unwrap(), layout);
        }
    }

    #[test]
    fn decode_never_panics_on_damaged_layouts(
        layout in layout_strategy(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = layout.encode();
        let at = at.index(bytes.len());
        bytes[at] = byte;
        if let Ok(decoded) = Layout::decode(&bytes) {
            prop_assert_eq!(decoded.owners().len(), decoded.partitions() as usize);
            prop_assert!(decoded.owners().iter().all(|&owner| decoded.member(owner).is_some()));
        }
    }
}

#[test]
fn previous_holders_name_every_old_replica_that_is_no_new_one() {
    for partitions in [8, 64] {
        let three = grow(partitions, 3, &[1, 2, 3]);
        assert!(previous_holders(&three, &three, 3).is_empty());
        let four = three.with_member(member(4, "n4")).unwrap();
        let leaving = four.with_member_leaving(2).unwrap();
        let removed = four.with_member_removed(3).unwrap();
        for (old, new) in [(&three, &four), (&four, &leaving), (&four, &removed)] {
            let holders = previous_holders(old, new, 3);
            assert!(!holders.is_empty(), "some partitions move");
            for partition in 0..partitions {
                let named = holders.get(&partition).cloned().unwrap_or_default();
                for n in 1..=3 {
                    let before = old.preference_list(partition, n);
                    let after = new.preference_list(partition, n.min(new.valid_members()));
                    for m in before.primaries {
                        let kept = after.primaries.contains(&m);
                        let gone = new.member(m).is_none();
                        assert!(
                            kept || gone || named.contains(&m),
                            "partition {partition}, n {n}: old replica {m} is neither a replica nor a holder"
                        );
                    }
                }
                for m in &named {
                    assert!(new.member(*m).is_some(), "a removed member is no holder");
                }
            }
        }
        // The leaver holds what it owned.
        let holders = previous_holders(&four, &leaving, 1);
        for partition in 0..partitions {
            if four.owner(partition) == 2 {
                assert!(holders[&partition].contains(&2));
            }
        }
    }
}
