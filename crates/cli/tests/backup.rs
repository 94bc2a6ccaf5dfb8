//! `ringkv backup` and `ringkv restore` between real clusters: a backup
//! taken online from a 3-node cluster brings every key back into an empty
//! cluster, with its siblings, its deletions, its bucket properties and its
//! version vectors; writes made after the backup survive a restore; a
//! damaged file changes nothing; a member down fails a backup unless
//! `--partial` is asked for.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use ringkv_client::{Client, GetResult};
use ringkv_wire::backup::{Parser, Record};
use support::{BIN, Cluster, TestNode, http_get};

const DOCS: &str = "docs";
const SIBS: &str = "sibs";
const LWW: &str = "last";

fn ringkv(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run ringkv")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeed(args: &[&str]) -> String {
    let output = ringkv(args);
    assert!(
        output.status.success(),
        "ringkv {args:?} failed: {}",
        text(&output)
    );
    text(&output)
}

/// A value of `len` bytes that names its key (so a mix-up shows).
fn value(key: &str, len: usize) -> Vec<u8> {
    let mut value = format!("{key}:").into_bytes();
    value.resize(len.max(value.len()), b'0' + (key.len() % 10) as u8);
    value
}

/// What the first cluster holds, key by key, as a reader sees it.
struct Written {
    /// (bucket, key, value), large ones included.
    docs: Vec<(&'static str, String, Vec<u8>)>,
    deleted: String,
}

fn load(client: &Client) -> Written {
    // n=2 of 3 members: no member holds every key, so a backup must read
    // the others.
    client
        .set_bucket(DOCS, &serde_json::json!({"n": 2, "conflict": "siblings"}))
        .unwrap();
    client
        .set_bucket(SIBS, &serde_json::json!({"n": 3, "conflict": "siblings"}))
        .unwrap();
    client
        .set_bucket(LWW, &serde_json::json!({"n": 2, "w": 1, "conflict": "lww"}))
        .unwrap();
    let mut docs = Vec::new();
    for i in 0..300 {
        let key = format!("doc-{i}");
        // Some values of 300 KiB, so that a partition's records need
        // several scan pages (8 partitions, 1 MiB pages).
        let len = if i % 25 == 0 { 300 * 1024 } else { 100 };
        let v = value(&key, len);
        // Every tenth in the n=3 bucket.
        let bucket = if i % 10 == 3 { SIBS } else { DOCS };
        client
            .put(bucket, key.as_bytes(), &v, "text/plain", None, None)
            .unwrap();
        docs.push((bucket, key, v));
    }
    // Two blind writes of one key: two siblings.
    for v in ["left", "right"] {
        client
            .put(SIBS, b"both", v.as_bytes(), "text/plain", None, None)
            .unwrap();
    }
    for v in ["first", "second"] {
        client
            .put(LWW, b"one", v.as_bytes(), "text/plain", None, None)
            .unwrap();
    }
    // A key deleted with the context of a read: a tombstone.
    let deleted = docs.remove(1).1;
    let GetResult::Found { context, .. } = client.get(DOCS, deleted.as_bytes(), None).unwrap()
    else {
        panic!("{deleted} was written");
    };
    client
        .delete(DOCS, deleted.as_bytes(), Some(&context), None)
        .unwrap();
    Written { docs, deleted }
}

fn found(client: &Client, bucket: &str, key: &str) -> (Vec<u8>, String) {
    match client.get(bucket, key.as_bytes(), None).unwrap() {
        GetResult::Found { value, context, .. } => (value, context),
        other => panic!("{bucket}/{key}: expected one value, got {other:?}"),
    }
}

fn assert_holds(client: &Client, written: &Written) {
    for (bucket, key, v) in &written.docs {
        let (got, _) = found(client, bucket, key);
        assert!(
            got == *v,
            "{bucket}/{key}: a value of {} bytes, not the {} written",
            got.len(),
            v.len()
        );
    }
    match client.get(DOCS, written.deleted.as_bytes(), None).unwrap() {
        GetResult::NotFound { context } => {
            assert!(
                context.is_some(),
                "the tombstone of {} came back with its clock",
                written.deleted
            )
        }
        other => panic!("{} was deleted, got {other:?}", written.deleted),
    }
    match client.get(SIBS, b"both", None).unwrap() {
        GetResult::Siblings { siblings, .. } => {
            let mut values: Vec<&[u8]> = siblings.iter().map(|s| s.value.as_slice()).collect();
            values.sort();
            assert_eq!(values, [b"left".as_slice(), b"right".as_slice()]);
        }
        other => panic!("{SIBS}/both: expected two siblings, got {other:?}"),
    }
    assert_eq!(found(client, LWW, "one").0, b"second");
}

#[test]
fn a_backup_restores_every_key_into_an_empty_cluster_and_keeps_newer_writes() {
    // Tombstones kept, so that the backup holds one to restore.
    let args = ["--partitions", "8", "--delete-mode", "keep"];
    let mut old = Cluster::start_with(3, &args);
    let written = load(&old.nodes[0].client());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let file = file.to_str().unwrap();

    // Through node3: it reads every member (n=2 of 3).
    let out = succeed(&["backup", file, "--url", &old.nodes[2].url()]);
    assert!(
        out.contains("wrote") && out.contains("302 objects"),
        "{out}"
    );
    let (_, old_context) = found(&old.nodes[0].client(), DOCS, "doc-7");
    // `-`: the same backup on standard output, for a pipe.
    let piped = ringkv(&["backup", "-", "--url", &old.nodes[0].url()]);
    assert!(piped.status.success(), "{}", text(&piped));
    assert!(
        records_of(&piped.stdout) == records(file),
        "a piped backup differs"
    );

    // A member down: no backup (nor file) unless asked for a partial one.
    old.nodes[2].kill9();
    let second = dir.path().join("second.backup");
    let second = second.to_str().unwrap();
    let output = ringkv(&["backup", second, "--url", &old.nodes[0].url()]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("member node3 did not answer"),
        "{}",
        text(&output)
    );
    assert!(text(&output).contains("--partial"), "{}", text(&output));
    assert!(!Path::new(second).exists() && !Path::new(&format!("{second}.partial")).exists());
    let out = succeed(&["backup", second, "--partial", "--url", &old.nodes[0].url()]);
    assert!(
        out.contains("302 objects") && out.contains("members node3 did not answer"),
        "{out}"
    );
    drop(old);

    let new = Cluster::start_with(3, &args);
    let client = new.nodes[2].client();
    // A damaged or truncated file is refused before anything is sent.
    let bytes = std::fs::read(file).unwrap();
    for (name, damaged, why) in [
        ("truncated", bytes[..bytes.len() - 9].to_vec(), "truncated"),
        ("flipped", flip(&bytes, bytes.len() / 2), "checksum"),
        ("empty", Vec::new(), "empty"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &damaged).unwrap();
        let output = ringkv(&[
            "restore",
            path.to_str().unwrap(),
            "--url",
            &new.nodes[0].url(),
        ]);
        assert!(!output.status.success(), "{name}: {}", text(&output));
        assert!(text(&output).contains(why), "{name}: {}", text(&output));
    }
    // The node refuses one too, if sent by other means (curl).
    let (status, report) = client
        .restore(&mut &b"RINGKV-BACKUP\0\0\x09rest"[..])
        .unwrap();
    assert_eq!(status, 400, "{report}");
    assert_eq!(report["error"], "bad_backup", "{report}");
    assert!(matches!(
        client.get(DOCS, b"doc-0", None).unwrap(),
        GetResult::NotFound { .. }
    ));
    assert_eq!(
        bucket_n(&new.nodes[2], LWW),
        3,
        "a refused restore configured a bucket"
    );

    let out = succeed(&["restore", file, "--url", &new.nodes[0].url()]);
    assert!(
        out.contains("\"objects_restored\": 302") && out.contains("\"buckets_created\": 3"),
        "{out}"
    );
    assert_holds(&client, &written);
    assert_eq!(
        bucket_n(&new.nodes[2], LWW),
        2,
        "bucket properties come back"
    );
    // A backup of the restored cluster holds the same records: versions,
    // clocks, siblings and tombstones (only its summary differs).
    let again = dir.path().join("again.backup");
    let again = again.to_str().unwrap();
    succeed(&["backup", again, "--url", &new.nodes[1].url()]);
    assert!(
        records(again) == records(file),
        "the restored cluster backs up differently"
    );

    // Version vectors come back: a context read from the old cluster
    // supersedes the restored version (no sibling).
    client
        .put(
            DOCS,
            b"doc-7",
            b"edited",
            "text/plain",
            Some(&old_context),
            None,
        )
        .unwrap();
    assert_eq!(found(&client, DOCS, "doc-7").0, b"edited");

    // A restore merges: what was written since is kept, and the partial
    // backup restores the same keys again without harm.
    // (From standard input, as from a pipe.)
    let output = Command::new(BIN)
        .args(["restore", "-", "--url", &new.nodes[1].url()])
        .stdin(std::fs::File::open(second).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let out = text(&output);
    assert!(
        out.contains("\"objects_restored\": 302") && out.contains("\"buckets_kept\": 3"),
        "{out}"
    );
    assert_eq!(found(&client, DOCS, "doc-7").0, b"edited");
    let mut rest = Written {
        docs: written.docs.clone(),
        deleted: written.deleted.clone(),
    };
    rest.docs.retain(|(_, key, _)| key != "doc-7");
    assert_holds(&new.nodes[1].client(), &rest);
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] ^= 0x20;
    bytes
}

/// The `n` a node applies to `bucket` (3 when not configured).
fn bucket_n(node: &TestNode, bucket: &str) -> u64 {
    let props: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/v1/buckets/{bucket}", node.url()))).unwrap();
    props["n"].as_u64().expect("n")
}

/// The records of a backup file but its summary.
fn records(path: &str) -> Vec<Record> {
    records_of(&std::fs::read(path).unwrap())
}

fn records_of(bytes: &[u8]) -> Vec<Record> {
    let mut parser = Parser::new(64 << 20);
    parser.push(bytes);
    let mut records = Vec::new();
    while let Some(record) = parser.next_record().unwrap() {
        if !matches!(record, Record::End(_)) {
            records.push(record);
        }
    }
    parser.finish().unwrap();
    records
}
