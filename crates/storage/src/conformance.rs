//! The conformance suite every [`Storage`] engine must pass.
//!
//! Each check takes a fresh, empty storage and panics with a message naming
//! the broken promise. [`run_all`] runs every check on one storage: the
//! checks use disjoint partitions (and only [`spaces_and_partitions_are_isolated`]
//! writes `Meta`), so they do not see each other's records.
//!
//! Durability across a crash or a restart depends on how the engine is
//! crashed or reopened, so those checks take a closure:
//! [`crash_durability`] and [`reopen_durability`].
//!
//! This module is compiled into the library (not only under `cfg(test)`) so
//! that engine crates and the simulator can run it.

use crate::record::encode_key;
use crate::{Durability, KeyValue, Space, Storage, WriteBatch};

/// Runs every check that needs only a fresh storage.
pub fn run_all(storage: &dyn Storage) {
    get_missing(storage);
    put_then_get(storage);
    overwrite(storage);
    delete(storage);
    atomic_batch(storage);
    scan_order_and_pagination(storage);
    spaces_and_partitions_are_isolated(storage);
    empty_and_large_values(storage);
    binary_keys(storage);
    engine_entries(storage);
}

fn put(storage: &dyn Storage, space: Space, key: &[u8], value: &[u8], durability: Durability) {
    let mut batch = WriteBatch::new();
    batch.put(space, key.to_vec(), value.to_vec());
    storage
        .write(&batch, durability)
        .unwrap_or_else(|error| panic!("writing {space:?} {key:?} failed: {error}"));
}

fn get(storage: &dyn Storage, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    storage
        .get(space, key)
        .unwrap_or_else(|error| panic!("reading {space:?} {key:?} failed: {error}"))
}

fn scan(storage: &dyn Storage, space: Space, after: Option<&[u8]>, limit: usize) -> Vec<KeyValue> {
    storage
        .scan(space, after, limit)
        .unwrap_or_else(|error| panic!("scanning {space:?} after {after:?} failed: {error}"))
}

/// Reads every record of `space` page by page.
fn scan_all(storage: &dyn Storage, space: Space, page: usize) -> Vec<KeyValue> {
    let mut records: Vec<KeyValue> = Vec::new();
    loop {
        let after = records.last().map(|(key, _)| key.clone());
        let next = scan(storage, space, after.as_deref(), page);
        assert!(
            next.len() <= page,
            "scan returned {} records, more than the limit {page}",
            next.len()
        );
        let done = next.len() < page;
        records.extend(next);
        if done {
            return records;
        }
    }
}

pub fn get_missing(storage: &dyn Storage) {
    let space = Space::Data(10);
    assert_eq!(
        get(storage, space, b"missing"),
        None,
        "get of a missing key"
    );
    assert!(
        scan(storage, space, None, 10).is_empty(),
        "scan of an empty space"
    );
}

pub fn put_then_get(storage: &dyn Storage) {
    let space = Space::Data(11);
    put(storage, space, b"key", b"value", Durability::Sync);
    assert_eq!(
        get(storage, space, b"key").as_deref(),
        Some(&b"value"[..]),
        "get after a Sync put"
    );
    put(
        storage,
        space,
        b"buffered",
        b"visible",
        Durability::Buffered,
    );
    assert_eq!(
        get(storage, space, b"buffered").as_deref(),
        Some(&b"visible"[..]),
        "a Buffered put must be visible to reads at once"
    );
    storage
        .sync()
        .unwrap_or_else(|error| panic!("sync failed: {error}"));
    assert_eq!(
        get(storage, space, b"buffered").as_deref(),
        Some(&b"visible"[..]),
        "get after sync"
    );
}

pub fn overwrite(storage: &dyn Storage) {
    let space = Space::Data(12);
    put(storage, space, b"key", b"first", Durability::Sync);
    put(storage, space, b"key", b"second, longer", Durability::Sync);
    assert_eq!(
        get(storage, space, b"key").as_deref(),
        Some(&b"second, longer"[..]),
        "an overwrite must replace the value"
    );
    put(storage, space, b"key", b"3", Durability::Buffered);
    assert_eq!(get(storage, space, b"key").as_deref(), Some(&b"3"[..]));
    assert_eq!(
        scan(storage, space, None, 10).len(),
        1,
        "an overwrite must not add a record"
    );
}

pub fn delete(storage: &dyn Storage) {
    let space = Space::Data(13);
    put(storage, space, b"a", b"1", Durability::Sync);
    put(storage, space, b"b", b"2", Durability::Sync);
    let mut batch = WriteBatch::new();
    batch.delete(space, b"a".to_vec());
    batch.delete(space, b"never written".to_vec());
    storage
        .write(&batch, Durability::Sync)
        .unwrap_or_else(|error| panic!("deleting failed: {error}"));
    assert_eq!(
        get(storage, space, b"a"),
        None,
        "a deleted key must be gone"
    );
    assert_eq!(get(storage, space, b"never written"), None);
    assert_eq!(
        scan(storage, space, None, 10),
        vec![(b"b".to_vec(), b"2".to_vec())],
        "scan after delete"
    );
    put(storage, space, b"a", b"again", Durability::Sync);
    assert_eq!(
        get(storage, space, b"a").as_deref(),
        Some(&b"again"[..]),
        "a deleted key can be written again"
    );
}

pub fn atomic_batch(storage: &dyn Storage) {
    let data = Space::Data(14);
    let hints = Space::Hints(14);
    put(storage, data, b"to delete", b"x", Durability::Sync);
    let mut batch = WriteBatch::new();
    for index in 0u32..500 {
        batch.put(
            data,
            index.to_be_bytes().to_vec(),
            index.to_le_bytes().to_vec(),
        );
    }
    batch.put(hints, b"hint".to_vec(), b"h".to_vec());
    batch.delete(data, b"to delete".to_vec());
    // Later operations on one key win.
    batch.put(data, b"twice".to_vec(), b"first".to_vec());
    batch.put(data, b"twice".to_vec(), b"second".to_vec());
    batch.put(data, b"put then deleted".to_vec(), b"x".to_vec());
    batch.delete(data, b"put then deleted".to_vec());
    assert_eq!(batch.len(), 506);
    storage
        .write(&batch, Durability::Sync)
        .unwrap_or_else(|error| panic!("writing a batch of {} failed: {error}", batch.len()));

    let records = scan_all(storage, data, 64);
    assert_eq!(records.len(), 501, "records after the batch");
    for index in 0u32..500 {
        assert_eq!(
            get(storage, data, &index.to_be_bytes()).as_deref(),
            Some(&index.to_le_bytes()[..]),
            "batch put {index}"
        );
    }
    assert_eq!(get(storage, hints, b"hint").as_deref(), Some(&b"h"[..]));
    assert_eq!(get(storage, data, b"to delete"), None, "batch delete");
    assert_eq!(
        get(storage, data, b"twice").as_deref(),
        Some(&b"second"[..]),
        "the later put of one key in a batch wins"
    );
    assert_eq!(
        get(storage, data, b"put then deleted"),
        None,
        "a delete after a put of one key in a batch wins"
    );

    let empty = WriteBatch::new();
    storage
        .write(&empty, Durability::Sync)
        .unwrap_or_else(|error| panic!("an empty batch must be accepted: {error}"));
    storage
        .write(&empty, Durability::Buffered)
        .unwrap_or_else(|error| panic!("an empty batch must be accepted: {error}"));
}

/// [`Storage::write_engine_entries`]: puts and deletes keyed as the
/// engine keys them land as if written by `write`; a key that does not
/// decode fails the whole call and writes nothing.
pub fn engine_entries(storage: &dyn Storage) {
    let data = Space::Data(18);
    let hints = Space::Hints(18);
    put(storage, data, b"to delete", b"x", Durability::Sync);
    let keys = [
        encode_key(data, b"a"),
        encode_key(data, b"empty"),
        encode_key(hints, b"h"),
        encode_key(data, b"to delete"),
    ];
    let values: [Option<&[u8]>; 4] = [Some(b"1"), Some(b""), Some(b"hint"), None];
    storage
        .write_engine_entries(
            &mut keys.iter().map(Vec::as_slice).zip(values),
            Durability::Sync,
        )
        .unwrap_or_else(|error| panic!("writing engine entries failed: {error}"));
    assert_eq!(get(storage, data, b"a").as_deref(), Some(&b"1"[..]));
    assert_eq!(get(storage, data, b"empty").as_deref(), Some(&b""[..]));
    assert_eq!(get(storage, hints, b"h").as_deref(), Some(&b"hint"[..]));
    assert_eq!(
        get(storage, data, b"to delete"),
        None,
        "an entry of None deletes"
    );
    assert_eq!(
        scan(storage, data, None, 10),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"empty".to_vec(), Vec::new())
        ],
    );

    let good = encode_key(data, b"not written");
    let entries: [(&[u8], Option<&[u8]>); 3] = [
        (&good, Some(b"x")),
        (&[0xff, 0xff], Some(b"y")),
        (&keys[0], None),
    ];
    assert!(
        storage
            .write_engine_entries(&mut entries.into_iter(), Durability::Sync)
            .is_err(),
        "an entry whose key does not decode must fail the call"
    );
    assert_eq!(
        get(storage, data, b"not written"),
        None,
        "a failed call must write nothing, not even the entries before the bad one"
    );
    assert_eq!(get(storage, data, b"a").as_deref(), Some(&b"1"[..]));
}

pub fn scan_order_and_pagination(storage: &dyn Storage) {
    let space = Space::Data(15);
    // Written out of order, in two batches.
    let keys: Vec<Vec<u8>> = (0u32..100)
        .map(|index| (index * 37 % 100).to_be_bytes().to_vec())
        .collect();
    for (round, chunk) in keys.chunks(50).enumerate() {
        let mut batch = WriteBatch::new();
        for key in chunk {
            batch.put(space, key.clone(), [&b"value-"[..], key].concat());
        }
        let durability = if round == 0 {
            Durability::Sync
        } else {
            Durability::Buffered
        };
        storage
            .write(&batch, durability)
            .unwrap_or_else(|error| panic!("writing failed: {error}"));
    }
    let mut expected: Vec<KeyValue> = keys
        .iter()
        .map(|key| (key.clone(), [&b"value-"[..], key].concat()))
        .collect();
    expected.sort();

    assert_eq!(
        scan(storage, space, None, 1000),
        expected,
        "full scan in key order"
    );
    for page in [1, 7, 100] {
        assert_eq!(
            scan_all(storage, space, page),
            expected,
            "scan in pages of {page}"
        );
    }
    assert!(
        scan(storage, space, None, 0).is_empty(),
        "limit 0 returns nothing"
    );
    assert_eq!(scan(storage, space, None, 3), expected[..3], "limit");

    // `after` is exclusive, and need not be a stored key.
    let fifth = &expected[5].0;
    assert_eq!(
        scan(storage, space, Some(fifth), 2),
        expected[6..8],
        "after a stored key"
    );
    let between = [&fifth[..], &[0]].concat();
    assert_eq!(
        scan(storage, space, Some(&between), 2),
        expected[6..8],
        "after a key between stored keys"
    );
    let last = &expected[expected.len() - 1].0;
    assert!(
        scan(storage, space, Some(last), 10).is_empty(),
        "after the last key"
    );
    assert!(
        scan(storage, space, Some(&[0xff; 16]), 10).is_empty(),
        "after every key"
    );
    assert_eq!(
        scan(storage, space, Some(&[]), 1000),
        expected,
        "after the empty key (none stored)"
    );

    // Keys that are prefixes of each other sort shortest first.
    let prefixes = Space::Data(16);
    for key in [&b"ab"[..], b"a", b"a\x00", b"b", b"a\xff"] {
        put(storage, prefixes, key, key, Durability::Sync);
    }
    let order: Vec<Vec<u8>> = scan(storage, prefixes, None, 10)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        order,
        [&b"a"[..], b"a\x00", b"ab", b"a\xff", b"b"],
        "byte-wise key order"
    );
}

pub fn spaces_and_partitions_are_isolated(storage: &dyn Storage) {
    // Neighbours in the engine's key order, including the extremes.
    let spaces = [
        Space::Meta,
        Space::Data(0),
        Space::Data(1),
        Space::Data(u32::MAX - 1),
        Space::Data(u32::MAX),
        Space::Hints(0),
        Space::Hints(1),
        Space::Hints(u32::MAX),
    ];
    let value_of = |space: Space| format!("{space:?}").into_bytes();
    for space in spaces {
        let mut batch = WriteBatch::new();
        batch.put(space, b"".to_vec(), value_of(space));
        batch.put(space, b"shared key".to_vec(), value_of(space));
        batch.put(space, vec![0xff; 8], value_of(space));
        storage
            .write(&batch, Durability::Sync)
            .unwrap_or_else(|error| panic!("writing {space:?} failed: {error}"));
    }
    for space in spaces {
        let expected = vec![
            (b"".to_vec(), value_of(space)),
            (b"shared key".to_vec(), value_of(space)),
            (vec![0xff; 8], value_of(space)),
        ];
        assert_eq!(
            scan(storage, space, None, 100),
            expected,
            "a scan of {space:?} must return exactly its own records"
        );
        assert_eq!(
            get(storage, space, b"shared key"),
            Some(value_of(space)),
            "get in {space:?}"
        );
    }
    let mut batch = WriteBatch::new();
    batch.delete(Space::Data(1), b"shared key".to_vec());
    storage
        .write(&batch, Durability::Sync)
        .unwrap_or_else(|error| panic!("deleting failed: {error}"));
    assert_eq!(get(storage, Space::Data(1), b"shared key"), None);
    for space in spaces.iter().filter(|space| **space != Space::Data(1)) {
        assert_eq!(
            get(storage, *space, b"shared key"),
            Some(value_of(*space)),
            "a delete in Data(1) must not touch {space:?}"
        );
    }
}

pub fn empty_and_large_values(storage: &dyn Storage) {
    let space = Space::Data(17);
    put(storage, space, b"empty", b"", Durability::Sync);
    assert_eq!(
        get(storage, space, b"empty"),
        Some(Vec::new()),
        "an empty value is present, not missing"
    );
    let large: Vec<u8> = (0..1024 * 1024)
        .map(|index: u32| (index % 251) as u8)
        .collect();
    put(storage, space, b"large", &large, Durability::Sync);
    assert!(
        get(storage, space, b"large") == Some(large.clone()),
        "a 1 MiB value must read back unchanged"
    );
    let scanned = scan(storage, space, None, 10);
    assert_eq!(scanned.len(), 2);
    assert_eq!(scanned[0], (b"empty".to_vec(), Vec::new()));
    assert!(
        scanned[1] == (b"large".to_vec(), large),
        "1 MiB value in a scan"
    );
}

pub fn binary_keys(storage: &dyn Storage) {
    let space = Space::Hints(18);
    let keys: [&[u8]; 7] = [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\xff",
        b"\x7f",
        b"\xff",
        &[0xff; 300],
    ];
    for (index, key) in keys.iter().enumerate() {
        put(storage, space, key, &[index as u8], Durability::Sync);
    }
    for (index, key) in keys.iter().enumerate() {
        assert_eq!(
            get(storage, space, key),
            Some(vec![index as u8]),
            "binary key {key:?}"
        );
    }
    let scanned: Vec<Vec<u8>> = scan(storage, space, None, 100)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        scanned, keys,
        "binary keys in byte order, the empty key first"
    );
    assert_eq!(
        scan(storage, space, Some(b""), 1)[0].0,
        b"\x00",
        "after the empty key"
    );
}

/// Checks what every engine promises across a crash. `crash` must simulate
/// a crash and restart of `storage` (for example `MemoryStorage::crash`),
/// leaving `storage` usable. Starts from a fresh storage.
///
/// Buffered writes may or may not survive a crash, so this checks only
/// that a Buffered batch is kept whole or not at all.
pub fn crash_durability(storage: &dyn Storage, crash: &dyn Fn()) {
    let space = Space::Data(20);
    put(storage, space, b"sync", b"1", Durability::Sync);

    let mut buffered = WriteBatch::new();
    buffered.put(space, b"buffered a".to_vec(), b"2".to_vec());
    buffered.put(space, b"buffered b".to_vec(), b"3".to_vec());
    storage
        .write(&buffered, Durability::Buffered)
        .unwrap_or_else(|error| panic!("buffered write failed: {error}"));

    let mut synced_later = WriteBatch::new();
    synced_later.put(space, b"synced later".to_vec(), b"4".to_vec());
    storage
        .write(&synced_later, Durability::Buffered)
        .unwrap_or_else(|error| panic!("buffered write failed: {error}"));
    storage
        .sync()
        .unwrap_or_else(|error| panic!("sync failed: {error}"));

    let mut torn = WriteBatch::new();
    torn.put(space, b"maybe a".to_vec(), b"5".to_vec());
    torn.put(space, b"maybe b".to_vec(), b"6".to_vec());
    torn.delete(space, b"sync".to_vec());
    storage
        .write(&torn, Durability::Buffered)
        .unwrap_or_else(|error| panic!("buffered write failed: {error}"));

    crash();

    assert_eq!(
        get(storage, space, b"buffered a").as_deref(),
        Some(&b"2"[..]),
        "a Buffered write followed by sync() must survive a crash"
    );
    assert_eq!(
        get(storage, space, b"buffered b").as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(
        get(storage, space, b"synced later").as_deref(),
        Some(&b"4"[..]),
        "a Buffered write followed by sync() must survive a crash"
    );
    let torn_state = (
        get(storage, space, b"maybe a"),
        get(storage, space, b"maybe b"),
        get(storage, space, b"sync"),
    );
    let kept = (Some(b"5".to_vec()), Some(b"6".to_vec()), None);
    let lost = (None, None, Some(b"1".to_vec()));
    assert!(
        torn_state == kept || torn_state == lost,
        "a batch must survive a crash whole or not at all, found {torn_state:?}"
    );

    // The storage keeps working after the crash.
    put(storage, space, b"after", b"7", Durability::Sync);
    crash();
    assert_eq!(
        get(storage, space, b"after").as_deref(),
        Some(&b"7"[..]),
        "a Sync write after a crash must survive the next crash"
    );
}

/// Checks that Sync writes and synced Buffered writes survive closing and
/// reopening the engine. `open` opens the same storage each call; the
/// previous instance is dropped before the next call.
pub fn reopen_durability(open: &dyn Fn() -> Box<dyn Storage>) {
    let space = Space::Data(21);
    {
        let storage = open();
        put(storage.as_ref(), space, b"sync", b"1", Durability::Sync);
        put(
            storage.as_ref(),
            space,
            b"buffered",
            b"2",
            Durability::Buffered,
        );
        storage
            .sync()
            .unwrap_or_else(|error| panic!("sync failed: {error}"));
        put(
            storage.as_ref(),
            Space::Meta,
            b"meta",
            b"3",
            Durability::Sync,
        );
    }
    let storage = open();
    assert_eq!(
        get(storage.as_ref(), space, b"sync").as_deref(),
        Some(&b"1"[..]),
        "a Sync write must survive a reopen"
    );
    assert_eq!(
        get(storage.as_ref(), space, b"buffered").as_deref(),
        Some(&b"2"[..]),
        "a synced Buffered write must survive a reopen"
    );
    assert_eq!(
        scan(storage.as_ref(), Space::Meta, None, 10),
        vec![(b"meta".to_vec(), b"3".to_vec())],
        "scan after a reopen"
    );
}
