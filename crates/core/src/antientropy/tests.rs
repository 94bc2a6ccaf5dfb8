use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

type Map = BTreeMap<Vec<u8>, u64>;

fn build(shape: (u32, u32), map: &Map) -> MerkleTree {
    let mut tree = MerkleTree::new(shape.0, shape.1).unwrap();
    for (key, &digest) in map {
        tree.insert(key, digest);
    }
    tree
}

/// Every level's hashes, root first.
fn all_hashes(tree: &mut MerkleTree) -> Vec<Vec<(u32, u64)>> {
    (0..tree.levels())
        .map(|level| {
            let indices: Vec<u32> = (0..tree.level_len(level).unwrap()).collect();
            tree.level_hashes(level, &indices)
        })
        .collect()
}

fn expected_differences(local: &Map, remote: &Map) -> Vec<KeyDifference> {
    let keys: BTreeSet<&Vec<u8>> = local.keys().chain(remote.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (l, r) = (local.get(key).copied(), remote.get(key).copied());
            (l != r).then(|| KeyDifference {
                key: key.clone(),
                local: l,
                remote: r,
            })
        })
        .collect()
}

/// Segments whose contents differ between the maps.
fn differing_segments(shape: (u32, u32), local: &Map, remote: &Map) -> BTreeSet<u32> {
    let tree = MerkleTree::new(shape.0, shape.1).unwrap();
    expected_differences(local, remote)
        .iter()
        .map(|difference| tree.segment_of(&difference.key))
        .collect()
}

/// Runs an exchange of `local` against `remote` answering through `answer`;
/// returns the outcome and the requests sent.
fn run(
    local: &mut MerkleTree,
    remote: &mut MerkleTree,
    limits: ExchangeLimits,
) -> (ExchangeOutcome, Vec<ExchangeRequest>) {
    let (mut exchange, mut request) = Exchange::start(local, limits);
    let mut requests = Vec::new();
    for _ in 0..100_000 {
        requests.push(request.clone());
        let response = answer(remote, &request).expect("own requests are well formed");
        match exchange
            .on_response(local, response)
            .expect("honest answer")
        {
            ExchangeStep::Send(next) => request = next,
            ExchangeStep::Done(outcome) => {
                assert!(exchange.is_finished());
                return (outcome, requests);
            }
        }
    }
    panic!("exchange did not finish");
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b"abc".to_vec()), 1..=3)
}

fn digest() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..3, any::<u64>()]
}

fn map() -> impl Strategy<Value = Map> {
    prop::collection::btree_map(key(), digest(), 0..30)
}

fn shape() -> impl Strategy<Value = (u32, u32)> {
    (
        prop::sample::select(vec![1u32, 2, 4, 8, 16, 64, 256]),
        prop::sample::select(vec![2u32, 4, 16]),
    )
}

fn apply(map: &mut Map, edits: &[(Vec<u8>, Option<u64>)]) {
    for (key, edit) in edits {
        match edit {
            Some(digest) => map.insert(key.clone(), *digest),
            None => map.remove(key),
        };
    }
}

/// Two maps that are often equal or nearly so, and sometimes unrelated.
fn map_pair() -> impl Strategy<Value = (Map, Map)> {
    let edits = prop::collection::vec((key(), prop::option::of(digest())), 0..6);
    prop_oneof![
        (map(), edits).prop_map(|(a, edits)| {
            let mut b = a.clone();
            apply(&mut b, &edits);
            (a, b)
        }),
        (map(), map()),
    ]
}

proptest! {
    #[test]
    fn exchange_finds_exactly_the_differences((a, b) in map_pair(), shape in shape()) {
        let (mut tree_a, mut tree_b) = (build(shape, &a), build(shape, &b));
        let limits = ExchangeLimits { max_indices_per_request: 4096, max_segments: 1 << 20 };
        let (outcome, _) = run(&mut tree_a, &mut tree_b, limits);
        prop_assert_eq!(&outcome.differences, &expected_differences(&a, &b));
        prop_assert!(!outcome.truncated);
        // Only segments that really differ are fetched.
        prop_assert_eq!(outcome.segments_compared, differing_segments(shape, &a, &b).len());
    }

    #[test]
    fn small_limits_find_a_subset_and_say_so(
        (a, b) in map_pair(),
        shape in shape(),
        max_indices_per_request in 1usize..4,
        max_segments in 1usize..4,
    ) {
        let (mut tree_a, mut tree_b) = (build(shape, &a), build(shape, &b));
        let limits = ExchangeLimits { max_indices_per_request, max_segments };
        let (outcome, requests) = run(&mut tree_a, &mut tree_b, limits);
        let expected = expected_differences(&a, &b);
        for difference in &outcome.differences {
            prop_assert!(expected.contains(difference), "{:?} is not a difference", difference);
        }
        prop_assert!(outcome.truncated || outcome.differences == expected);
        prop_assert!(outcome.segments_compared <= max_segments);
        let differing = differing_segments(shape, &a, &b).len();
        prop_assert_eq!(outcome.segments_compared, differing.min(max_segments));
        for request in &requests {
            let count = match request {
                ExchangeRequest::Level { indices, .. } => indices.len(),
                ExchangeRequest::Segments { indices } => indices.len(),
            };
            prop_assert!((1..=max_indices_per_request).contains(&count));
        }
    }

    #[test]
    fn repeated_limited_exchanges_with_repair_converge(
        (a, b) in map_pair(),
        shape in shape(),
        max_segments in 1usize..4,
    ) {
        let (mut tree_a, mut tree_b) = (build(shape, &a), build(shape, &b));
        let limits = ExchangeLimits { max_indices_per_request: 2, max_segments };
        let rounds = differing_segments(shape, &a, &b).len().div_ceil(max_segments) + 1;
        let mut a = a;
        for round in 1..=rounds {
            let (outcome, _) = run(&mut tree_a, &mut tree_b, limits);
            if outcome.differences.is_empty() {
                prop_assert!(!outcome.truncated);
                prop_assert_eq!(round, rounds);
                break;
            }
            prop_assert!(round < rounds, "still differing after {} rounds", round);
            // Repair: take the remote side.
            for difference in outcome.differences {
                match difference.remote {
                    Some(digest) => tree_a.insert(&difference.key, digest),
                    None => tree_a.remove(&difference.key),
                }
                apply(&mut a, &[(difference.key, difference.remote)]);
            }
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(tree_a.root(), tree_b.root());
    }

    #[test]
    fn roots_equal_iff_maps_equal((a, b) in map_pair(), shape in shape()) {
        let (mut tree_a, mut tree_b) = (build(shape, &a), build(shape, &b));
        prop_assert_eq!(tree_a.root() == tree_b.root(), a == b);
    }

    #[test]
    fn incremental_updates_match_a_fresh_build(
        start in map(),
        ops in prop::collection::vec((key(), prop::option::of(digest()), any::<bool>()), 0..60),
        shape in shape(),
    ) {
        let mut tree = build(shape, &start);
        let mut map = start;
        for (key, edit, look) in &ops {
            match edit {
                Some(digest) => tree.insert(key, *digest),
                None => tree.remove(key),
            }
            apply(&mut map, &[(key.clone(), *edit)]);
            if *look {
                // Reading mid-way exercises the dirty flags.
                tree.root();
                let segment = tree.segment_of(key);
                tree.level_hashes(tree.levels() - 1, &[segment]);
            }
        }
        // Rebuilt from scratch, in reverse order.
        let mut fresh = MerkleTree::new(shape.0, shape.1).unwrap();
        for (key, &digest) in map.iter().rev() {
            fresh.insert(key, digest);
        }
        prop_assert_eq!(all_hashes(&mut tree), all_hashes(&mut fresh));
        prop_assert_eq!(tree.len(), map.len());
        prop_assert_eq!(tree.is_empty(), map.is_empty());
        for (key, &digest) in &map {
            prop_assert_eq!(tree.digest_of(key), Some(digest));
            prop_assert_eq!(tree.segment_entries(tree.segment_of(key)).iter()
                .filter(|(k, _)| k == key).count(), 1);
        }
        for (key, _, _) in &ops {
            prop_assert_eq!(tree.digest_of(key), map.get(key).copied());
        }
        // Every segment lists exactly its keys, sorted, however many
        // removals compacted its key buffer.
        for segment in 0..tree.segments() {
            let expected: Vec<(Vec<u8>, u64)> = map
                .iter()
                .filter(|(key, _)| tree.segment_of(key) == segment)
                .map(|(key, &digest)| (key.clone(), digest))
                .collect();
            prop_assert_eq!(tree.segment_entries(segment), expected);
        }
    }

    #[test]
    fn hashes_do_not_depend_on_insertion_order(
        entries in map().prop_map(|m| m.into_iter().collect::<Vec<_>>()).prop_shuffle(),
        shape in shape(),
    ) {
        let mut sorted = build(shape, &entries.iter().cloned().collect());
        let mut shuffled = MerkleTree::new(shape.0, shape.1).unwrap();
        for (key, digest) in &entries {
            shuffled.insert(key, *digest);
        }
        prop_assert_eq!(all_hashes(&mut sorted), all_hashes(&mut shuffled));
    }

    /// Whatever a peer sends back, the exchange returns a value, never panics.
    #[test]
    fn arbitrary_responses_never_panic(
        (a, b) in map_pair(),
        shape in shape(),
        steps in 0usize..4,
        garbage in prop_oneof![
            prop::collection::vec((0u32..300, any::<u64>()), 0..5)
                .prop_map(|hashes| ExchangeResponse::Level { hashes }),
            prop::collection::vec(
                (0u32..300, prop::collection::vec((key(), digest()), 0..4)), 0..4)
                .prop_map(|entries| ExchangeResponse::Segments { entries }),
        ],
    ) {
        let (mut tree_a, mut tree_b) = (build(shape, &a), build(shape, &b));
        let limits = ExchangeLimits { max_indices_per_request: 3, max_segments: 8 };
        let (mut exchange, mut request) = Exchange::start(&mut tree_a, limits);
        for _ in 0..steps {
            let response = answer(&mut tree_b, &request).unwrap();
            match exchange.on_response(&mut tree_a, response).unwrap() {
                ExchangeStep::Send(next) => request = next,
                ExchangeStep::Done(_) => break,
            }
        }
        let honest = if exchange.is_finished() { None } else {
            Some(answer(&mut tree_b, &request).unwrap())
        };
        let result = exchange.on_response(&mut tree_a, garbage.clone());
        match honest {
            None => prop_assert_eq!(result, Err(ExchangeError::Finished)),
            Some(honest) if garbage != honest => {
                // A wrong answer may only pass if it is a valid answer to the
                // request (e.g. other hashes); otherwise it is an error.
                if result.is_ok() {
                    prop_assert_eq!(
                        std::mem::discriminant(&garbage),
                        std::mem::discriminant(&honest)
                    );
                }
            }
            Some(_) => prop_assert!(result.is_ok()),
        }
    }
}

fn keys(map: &Map) -> Vec<Vec<u8>> {
    map.keys().cloned().collect()
}

fn sample_map() -> Map {
    (0..200u64)
        .map(|i| (format!("key-{i}").into_bytes(), i * 7))
        .collect()
}

#[test]
fn shapes_are_validated_and_laid_out() {
    assert_eq!(
        MerkleTree::new(1000, 16).unwrap_err(),
        TreeShapeError::BadSegments {
            segments: 1000,
            max: MAX_SEGMENTS
        }
    );
    assert!(MerkleTree::new(0, 16).is_err());
    assert!(MerkleTree::new(MAX_SEGMENTS * 2, 16).is_err());
    assert!(MerkleTree::new(64, 1).is_err());
    assert!(MerkleTree::new(64, 12).is_err());
    assert!(MerkleTree::new(64, MAX_WIDTH * 2).is_err());

    let tree = MerkleTree::default();
    assert_eq!((tree.segments(), tree.width()), (1024, 16));
    let sizes: Vec<u32> = (0..tree.levels())
        .map(|level| tree.level_len(level).unwrap())
        .collect();
    assert_eq!(sizes, vec![1, 4, 64, 1024]);
    assert_eq!(tree.level_len(4), None);
    assert_eq!(tree.children(0, 0), 0..4);
    assert_eq!(tree.children(2, 63), 1008..1024);
    assert_eq!(MerkleTree::new(1, 16).unwrap().levels(), 1);
    assert_eq!(MerkleTree::new(16, 16).unwrap().levels(), 2);
}

#[test]
fn keys_of_one_partition_spread_over_all_segments() {
    // Keys the partitioner puts in one partition share the top bits of
    // their unseeded xxh3; the tree must not crowd them into few segments.
    let tree = MerkleTree::new(64, 16).unwrap();
    let used: BTreeSet<u32> = (0..20_000u32)
        .map(|i| i.to_be_bytes())
        .filter(|key| xxhash_rust::xxh3::xxh3_64(key) >> 58 == 0)
        .map(|key| tree.segment_of(&key))
        .collect();
    assert_eq!(used.len(), 64);
}

#[test]
fn insert_replace_remove_and_len() {
    let mut tree = MerkleTree::new(16, 4).unwrap();
    let empty_root = tree.root();
    assert!(tree.is_empty());
    tree.insert(b"k", 1);
    tree.insert(b"k", 2);
    assert_eq!((tree.len(), tree.digest_of(b"k")), (1, Some(2)));
    let segment = tree.segment_of(b"k");
    assert_eq!(tree.segment_entries(segment), vec![(b"k".to_vec(), 2)]);
    assert_ne!(tree.root(), empty_root);
    tree.remove(b"absent");
    assert_eq!(tree.len(), 1);
    tree.remove(b"k");
    assert_eq!((tree.len(), tree.digest_of(b"k")), (0, None));
    assert_eq!(tree.root(), empty_root);
}

/// Tree hashes travel between nodes of different versions: pin them, and
/// check them against the formulas documented on `MerkleTree`.
#[test]
fn hashes_are_stable_and_as_documented() {
    let mut tree = MerkleTree::default();
    assert_eq!(tree.root(), 0x52f3_10dd_a8b1_8015);
    tree.insert(b"ringkv", 42);
    assert_eq!(tree.segment_of(b"ringkv"), 548);
    assert_eq!(tree.root(), 0x40e6_c570_a74f_8351);

    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    let entry = |key: &[u8], digest: u64| xxh3_64(&[key, &digest.to_be_bytes()].concat());
    let node = |children: &[u64]| {
        xxh3_64(
            &children
                .iter()
                .flat_map(|h| h.to_be_bytes())
                .collect::<Vec<u8>>(),
        )
    };
    let mut tree = MerkleTree::new(4, 2).unwrap();
    let mut segments = [0u64; 4];
    for (key, digest) in [(&b"x"[..], 1), (b"y", 2), (b"z", 3), (b"w", 4)] {
        tree.insert(key, digest);
        let segment = (xxh3_64_with_seed(key, 0x6d65_726b_6c65_7365) >> 62) as usize;
        assert_eq!(tree.segment_of(key) as usize, segment);
        segments[segment] = segments[segment].wrapping_add(entry(key, digest));
    }
    let inner = [node(&segments[..2]), node(&segments[2..])];
    assert_eq!(
        all_hashes(&mut tree),
        vec![
            vec![(0, node(&inner))],
            vec![(0, inner[0]), (1, inner[1])],
            (0..4).zip(segments).collect::<Vec<_>>(),
        ]
    );
}

#[test]
fn one_differing_key_costs_one_request_per_level_plus_one() {
    let a = sample_map();
    let mut b = a.clone();
    b.insert(b"key-17".to_vec(), 0);
    let (mut tree_a, mut tree_b) = (build((1024, 16), &a), build((1024, 16), &b));
    let (outcome, requests) = run(&mut tree_a, &mut tree_b, ExchangeLimits::default());
    assert_eq!(
        outcome.differences,
        vec![KeyDifference {
            key: b"key-17".to_vec(),
            local: Some(17 * 7),
            remote: Some(0)
        }]
    );
    assert_eq!(requests.len(), tree_a.levels() + 1);
    assert_eq!(
        requests[0],
        ExchangeRequest::Level {
            level: 0,
            indices: vec![0]
        }
    );
    let segment = tree_a.segment_of(b"key-17");
    assert_eq!(
        requests.last().unwrap(),
        &ExchangeRequest::Segments {
            indices: vec![segment]
        }
    );
    for request in &requests[1..requests.len() - 1] {
        let ExchangeRequest::Level { indices, .. } = request else {
            panic!("expected a level request, got {request:?}");
        };
        assert!(indices.len() <= 16);
    }
}

#[test]
fn equal_trees_finish_after_the_root() {
    let map = sample_map();
    let (mut tree_a, mut tree_b) = (build((64, 4), &map), build((64, 4), &map));
    let (outcome, requests) = run(&mut tree_a, &mut tree_b, ExchangeLimits::default());
    assert_eq!(requests.len(), 1);
    assert!(outcome.differences.is_empty() && !outcome.truncated);
    assert_eq!(outcome.segments_compared, 0);
}

#[test]
fn wiped_replica_learns_every_key_and_truncation_is_reported() {
    let map = sample_map();
    let (mut wiped, mut full) = (MerkleTree::default(), build((1024, 16), &map));
    let limits = ExchangeLimits {
        max_indices_per_request: 64,
        max_segments: 8,
    };
    let (outcome, _) = run(&mut wiped, &mut full, limits);
    assert!(outcome.truncated);
    assert_eq!(outcome.segments_compared, 8);
    assert!(!outcome.differences.is_empty());
    assert!(outcome.differences.iter().all(|d| d.local.is_none()));

    let limits = ExchangeLimits {
        max_indices_per_request: 64,
        max_segments: 1024,
    };
    let (outcome, _) = run(&mut wiped, &mut full, limits);
    assert!(!outcome.truncated);
    assert_eq!(
        outcome
            .differences
            .iter()
            .map(|d| d.key.clone())
            .collect::<Vec<_>>(),
        keys(&map)
    );
}

/// Starts an exchange of two different trees and returns it with the peer's
/// honest answer to its first request.
fn started() -> (MerkleTree, MerkleTree, Exchange, ExchangeResponse) {
    let a = sample_map();
    let mut b = a.clone();
    b.remove(b"key-3".as_slice());
    let (mut tree_a, mut tree_b) = (build((16, 4), &a), build((16, 4), &b));
    let limits = ExchangeLimits {
        max_indices_per_request: 2,
        max_segments: 16,
    };
    let (exchange, request) = Exchange::start(&mut tree_a, limits);
    let response = answer(&mut tree_b, &request).unwrap();
    (tree_a, tree_b, exchange, response)
}

#[test]
fn malformed_level_responses_are_errors_and_change_nothing() {
    let (mut tree_a, mut tree_b, mut exchange, honest) = started();
    let bad = [
        (
            ExchangeResponse::Level { hashes: vec![] },
            ExchangeError::WrongCount {
                expected: 1,
                got: 0,
            },
        ),
        (
            ExchangeResponse::Level {
                hashes: vec![(0, 1), (1, 2)],
            },
            ExchangeError::WrongCount {
                expected: 1,
                got: 2,
            },
        ),
        (
            ExchangeResponse::Level {
                hashes: vec![(5, 1)],
            },
            ExchangeError::WrongIndex {
                position: 0,
                expected: 0,
                got: 5,
            },
        ),
        (
            ExchangeResponse::Segments { entries: vec![] },
            ExchangeError::UnexpectedResponse {
                expected: "level",
                got: "segments",
            },
        ),
    ];
    for (response, error) in bad {
        assert_eq!(exchange.on_response(&mut tree_a, response), Err(error));
    }
    // The honest answer still drives the exchange to the right result.
    let mut step = exchange.on_response(&mut tree_a, honest).unwrap();
    while let ExchangeStep::Send(request) = step {
        let response = answer(&mut tree_b, &request).unwrap();
        step = exchange.on_response(&mut tree_a, response).unwrap();
    }
    let ExchangeStep::Done(outcome) = step else {
        unreachable!()
    };
    assert_eq!(
        outcome.differences,
        vec![KeyDifference {
            key: b"key-3".to_vec(),
            local: Some(21),
            remote: None
        }]
    );
    assert_eq!(
        exchange.on_response(&mut tree_a, ExchangeResponse::Level { hashes: vec![] }),
        Err(ExchangeError::Finished)
    );
}

#[test]
fn malformed_segment_responses_are_errors() {
    let (mut tree_a, mut tree_b, mut exchange, honest) = started();
    let mut step = exchange.on_response(&mut tree_a, honest).unwrap();
    let request = loop {
        match step {
            ExchangeStep::Send(request @ ExchangeRequest::Segments { .. }) => break request,
            ExchangeStep::Send(request) => {
                let response = answer(&mut tree_b, &request).unwrap();
                step = exchange.on_response(&mut tree_a, response).unwrap();
            }
            ExchangeStep::Done(outcome) => panic!("finished early: {outcome:?}"),
        }
    };
    let ExchangeRequest::Segments { indices } = &request else {
        unreachable!()
    };
    assert_eq!(indices.len(), 1);
    let segment = indices[0];
    let honest = answer(&mut tree_b, &request).unwrap();
    let ExchangeResponse::Segments { entries } = honest.clone() else {
        unreachable!()
    };
    let remote = entries[0].1.clone();
    assert!(remote.len() >= 2, "segment {segment} too small: {remote:?}");
    let foreign_key = (0..1000u32)
        .map(|i| format!("other-{i}").into_bytes())
        .find(|key| tree_a.segment_of(key) != segment)
        .unwrap();

    let mut unsorted = remote.clone();
    unsorted.swap(0, 1);
    let mut duplicated = remote.clone();
    duplicated.insert(1, remote[0].clone());
    let mut foreign = remote.clone();
    foreign.push((foreign_key.clone(), 1));
    let bad = [
        (
            vec![(segment, remote.clone()), (segment + 1, vec![])],
            ExchangeError::WrongCount {
                expected: 1,
                got: 2,
            },
        ),
        (
            vec![((segment + 1) % 16, remote.clone())],
            ExchangeError::WrongIndex {
                position: 0,
                expected: segment,
                got: (segment + 1) % 16,
            },
        ),
        (
            vec![(segment, unsorted)],
            ExchangeError::KeysNotSorted { segment },
        ),
        (
            vec![(segment, duplicated)],
            ExchangeError::KeysNotSorted { segment },
        ),
        (
            vec![(segment, foreign)],
            ExchangeError::KeyOutsideSegment {
                segment,
                key_segment: tree_a.segment_of(&foreign_key),
            },
        ),
    ];
    for (entries, error) in bad {
        let response = ExchangeResponse::Segments { entries };
        assert_eq!(exchange.on_response(&mut tree_a, response), Err(error));
    }
    assert_eq!(
        exchange.on_response(&mut tree_a, ExchangeResponse::Level { hashes: vec![] }),
        Err(ExchangeError::UnexpectedResponse {
            expected: "segments",
            got: "level"
        })
    );
    assert!(matches!(
        exchange.on_response(&mut tree_a, honest),
        Ok(ExchangeStep::Done(_))
    ));
}

#[test]
fn answer_refuses_malformed_requests() {
    let mut tree = build((64, 4), &sample_map());
    let level = |level: u32, indices: Vec<u32>| ExchangeRequest::Level { level, indices };
    let cases = [
        (
            level(4, vec![0]),
            ExchangeError::LevelOutOfRange {
                level: 4,
                levels: 4,
            },
        ),
        (
            level(1, vec![4]),
            ExchangeError::IndexOutOfRange {
                index: 4,
                level_len: 4,
            },
        ),
        (
            level(2, vec![3, 1]),
            ExchangeError::IndicesNotIncreasing { position: 1 },
        ),
        (
            level(2, vec![1, 1]),
            ExchangeError::IndicesNotIncreasing { position: 1 },
        ),
        (
            ExchangeRequest::Segments {
                indices: vec![0, 64],
            },
            ExchangeError::IndexOutOfRange {
                index: 64,
                level_len: 64,
            },
        ),
        (
            ExchangeRequest::Segments {
                indices: vec![0; MAX_REQUEST_INDICES + 1],
            },
            ExchangeError::TooManyIndices {
                count: MAX_REQUEST_INDICES + 1,
                max: MAX_REQUEST_INDICES,
            },
        ),
    ];
    for (request, error) in cases {
        assert_eq!(answer(&mut tree, &request), Err(error), "{request:?}");
    }
    let root = tree.root();
    assert_eq!(
        answer(&mut tree, &level(0, vec![0])),
        Ok(ExchangeResponse::Level {
            hashes: vec![(0, root)]
        })
    );
}

#[test]
fn messages_round_trip_through_postcard() {
    let messages = (
        ExchangeRequest::Level {
            level: 2,
            indices: vec![1, 5],
        },
        ExchangeRequest::Segments { indices: vec![7] },
        ExchangeResponse::Level {
            hashes: vec![(1, u64::MAX)],
        },
        ExchangeResponse::Segments {
            entries: vec![(7, vec![(b"k".to_vec(), 3)])],
        },
        KeyDifference {
            key: b"k".to_vec(),
            local: None,
            remote: Some(3),
        },
    );
    let bytes = postcard::to_allocvec(&messages).unwrap();
    let back: (
        ExchangeRequest,
        ExchangeRequest,
        ExchangeResponse,
        ExchangeResponse,
        KeyDifference,
    ) = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, messages);
}

#[test]
fn limits_are_clamped() {
    let map = sample_map();
    let (mut tree_a, mut tree_b) = (build((64, 4), &map), build((64, 4), &Map::new()));
    let limits = ExchangeLimits {
        max_indices_per_request: 0,
        max_segments: 0,
    };
    let (outcome, requests) = run(&mut tree_a, &mut tree_b, limits);
    assert!(outcome.truncated);
    assert_eq!(outcome.segments_compared, 1);
    assert!(!outcome.differences.is_empty());
    // A level stops being asked about once one differing node is found.
    assert_eq!(requests.len(), tree_a.levels() + 1);
    assert!(requests.iter().all(|request| match request {
        ExchangeRequest::Level { indices, .. } => indices.len() == 1,
        ExchangeRequest::Segments { indices } => indices.len() == 1,
    }));
}
