//! Key listings on a 3-node cluster of real processes: `GET
//! /v1/buckets/{bucket}/keys` (and `ringkv keys`) lists exactly a bucket's
//! live keys, through any node, also keys only one member holds and keys
//! that are not UTF-8, and goes on without a member that is down, naming
//! it; RESP `KEYS`, `SCAN` (cursor, MATCH, COUNT, TYPE) and `DBSIZE` list
//! and count the RESP bucket's, and bad arguments get errors.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use ringkv_client::GetResult;
use support::{BIN, Cluster, eventually, http_get, resp_command};

fn set(keys: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    keys.iter().map(|k| k.to_vec()).collect()
}

#[test]
fn a_bucket_lists_its_live_keys_through_any_node_and_without_a_member() {
    let mut cluster = Cluster::start(3);
    let client = cluster.nodes[0].client();
    client
        .set_bucket("solo", &serde_json::json!({"n": 1, "r": 1, "w": 1}))
        .unwrap();
    for node in &cluster.nodes {
        let url = format!("{}/v1/buckets/solo", node.url());
        eventually(
            "bucket solo's n=1 to spread",
            Duration::from_secs(10),
            || http_get(&url).contains("\"n\":1").then_some(()),
        );
    }
    let keys: [&[u8]; 5] = [b"a", b"b", b"user:1", b"user:10", &[0xff, 0x00, b'x']];
    for key in keys {
        client
            .put("demo", key, b"v", "text/plain", None, None)
            .unwrap();
    }
    // Buckets around it: one name longer, one of the same length.
    for bucket in ["demo2", "deme", "dem"] {
        client
            .put(bucket, b"a", b"v", "text/plain", None, None)
            .unwrap();
    }
    // A deleted key is not listed; one written again after is.
    let context = |key: &[u8]| match client.get("demo", key, None).unwrap() {
        GetResult::Found { context, .. } => context,
        other => panic!("{other:?}"),
    };
    client
        .delete("demo", b"b", Some(&context(b"b")), None)
        .unwrap();
    client
        .put("demo", b"gone-and-back", b"v", "text/plain", None, None)
        .unwrap();
    let back = context(b"gone-and-back");
    client
        .delete("demo", b"gone-and-back", Some(&back), None)
        .unwrap();
    client
        .put("demo", b"gone-and-back", b"again", "text/plain", None, None)
        .unwrap();
    // n=1: each key is on one member only.
    let solo: Vec<Vec<u8>> = (0..20).map(|i| format!("s{i}").into_bytes()).collect();
    for key in &solo {
        client
            .put("solo", key, b"v", "text/plain", None, Some(1))
            .unwrap();
    }

    let expected = set(&[
        b"a",
        b"user:1",
        b"user:10",
        &[0xff, 0x00, b'x'],
        b"gone-and-back",
    ]);
    for node in &cluster.nodes {
        let listing = node.client().keys("demo").unwrap();
        assert_eq!(
            listing.keys.iter().cloned().collect::<BTreeSet<_>>(),
            expected
        );
        assert_eq!(listing.keys.len(), expected.len(), "each key once");
        assert!(listing.missing_members.is_empty() && listing.error.is_none());
        let listed: BTreeSet<Vec<u8>> = node
            .client()
            .keys("solo")
            .unwrap()
            .keys
            .into_iter()
            .collect();
        assert_eq!(listed, solo.iter().cloned().collect::<BTreeSet<_>>());
    }
    assert_eq!(client.keys("deme").unwrap().keys, [b"a".to_vec()]);
    assert!(client.keys("never-written").unwrap().keys.is_empty());
    let refused = client.keys("no such bucket").unwrap_err().to_string();
    assert!(refused.contains("bucket name"), "{refused}");

    // The CLI prints one key per line.
    assert_eq!(ringkv_keys(&cluster.nodes[1].url(), "deme").stdout, b"a\n");

    // With a member down, every key of an n=3 bucket is still listed and
    // the member is named.
    cluster.nodes[2].kill9();
    let listing = client.keys("demo").unwrap();
    assert_eq!(listing.keys.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(listing.missing_members, ["node3"]);
    let out = ringkv_keys(&cluster.nodes[0].url(), "demo");
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));
}

/// `ringkv keys BUCKET --url URL`, which must succeed.
fn ringkv_keys(url: &str, bucket: &str) -> std::process::Output {
    let out = Command::new(BIN)
        .args(["keys", bucket, "--url", url])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out
}

/// The bulk strings of a RESP array reply (one level, as KEYS answers).
fn bulks(reply: &[u8]) -> Vec<Vec<u8>> {
    let (items, rest) = array(reply);
    assert!(rest.is_empty(), "{reply:?}");
    items
}

/// An array of bulk strings at the start of `reply`, and what follows.
fn array(reply: &[u8]) -> (Vec<Vec<u8>>, &[u8]) {
    let (head, mut rest) = line(reply);
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*").expect("an array"))
        .unwrap()
        .parse()
        .unwrap();
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let (item, after) = bulk(rest);
        items.push(item);
        rest = after;
    }
    (items, rest)
}

fn bulk(reply: &[u8]) -> (Vec<u8>, &[u8]) {
    let (head, rest) = line(reply);
    let len: usize = std::str::from_utf8(head.strip_prefix(b"$").expect("a bulk string"))
        .unwrap()
        .parse()
        .unwrap();
    (rest[..len].to_vec(), &rest[len + 2..])
}

fn line(reply: &[u8]) -> (&[u8], &[u8]) {
    let end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
    (&reply[..end], &reply[end + 2..])
}

/// One SCAN call: the next cursor and the keys.
fn scan(addr: &str, args: &[&[u8]]) -> (String, Vec<Vec<u8>>) {
    let reply = resp_command(addr, args);
    let rest = reply
        .strip_prefix(b"*2\r\n")
        .unwrap_or_else(|| panic!("{reply:?}"));
    let (cursor, rest) = bulk(rest);
    let (keys, rest) = array(rest);
    assert!(rest.is_empty());
    (String::from_utf8(cursor).unwrap(), keys)
}

#[test]
fn resp_keys_and_scan_list_the_resp_bucket() {
    let cluster = Cluster::start(3);
    let resp = &cluster.nodes[0].resp;
    let keys: Vec<Vec<u8>> = (0..30).map(|i| format!("k{i}").into_bytes()).collect();
    for key in &keys {
        assert_eq!(resp_command(resp, &[b"SET", key, b"v"]), b"+OK\r\n");
    }
    assert_eq!(resp_command(resp, &[b"SET", b"other", b"v"]), b"+OK\r\n");
    assert_eq!(resp_command(resp, &[b"DEL", b"k0"]), b":1\r\n");
    let live: BTreeSet<Vec<u8>> = keys[1..].iter().cloned().collect();
    let mut all = live.clone();
    all.insert(b"other".to_vec());

    // KEYS, through another node.
    let via = &cluster.nodes[1].resp;
    let listed = bulks(&resp_command(via, &[b"KEYS", b"*"]));
    assert_eq!(listed.len(), all.len(), "each key once");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), all);
    let ones: BTreeSet<Vec<u8>> = bulks(&resp_command(via, &[b"KEYS", b"k1?"]))
        .into_iter()
        .collect();
    assert_eq!(
        ones,
        set(&[
            b"k10", b"k11", b"k12", b"k13", b"k14", b"k15", b"k16", b"k17", b"k18", b"k19"
        ])
    );
    assert!(bulks(&resp_command(via, &[b"KEYS", b"nothing*"])).is_empty());
    assert_eq!(
        resp_command(via, &[b"DBSIZE"]),
        format!(":{}\r\n", all.len()).into_bytes()
    );
    assert_eq!(resp_command(via, &[b"TYPE", b"k1"]), b"+string\r\n");
    assert_eq!(resp_command(via, &[b"TYPE", b"k0"]), b"+none\r\n");
    // UNLINK deletes as DEL does.
    assert_eq!(resp_command(via, &[b"UNLINK", b"other", b"k0"]), b":1\r\n");
    all.remove(b"other".as_slice());
    assert_eq!(
        bulks(&resp_command(via, &[b"KEYS", b"*"]))
            .into_iter()
            .collect::<BTreeSet<_>>(),
        all
    );

    // SCAN from cursor 0 until it answers 0 again: every key, in several
    // calls.
    let via = &cluster.nodes[2].resp;
    let (mut cursor, mut found, mut calls) = ("0".to_string(), Vec::new(), 0);
    loop {
        let (next, keys) = scan(
            via,
            &[b"SCAN", cursor.as_bytes(), b"MATCH", b"k*", b"COUNT", b"2"],
        );
        found.extend(keys);
        calls += 1;
        assert!(calls <= 1000, "SCAN did not end");
        if next == "0" {
            break;
        }
        assert!(next.parse::<u32>().unwrap() > cursor.parse::<u32>().unwrap());
        cursor = next;
    }
    assert!(calls > 1, "COUNT 2 took {calls} call");
    assert_eq!(found.len(), live.len(), "each key once");
    assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), live);
    let (next, everything) = scan(via, &[b"scan", b"0", b"count", b"1000"]);
    assert_eq!(next, "0");
    assert_eq!(everything.into_iter().collect::<BTreeSet<_>>(), all);
    assert_eq!(
        scan(via, &[b"SCAN", b"0", b"TYPE", b"hash"]),
        ("0".into(), vec![])
    );
    assert_eq!(scan(via, &[b"SCAN", b"4000000000"]), ("0".into(), vec![]));

    // Bad arguments: errors, and the connection goes on.
    for (args, error) in [
        (&[&b"SCAN"[..], b"x"][..], "-ERR invalid cursor"),
        (&[b"SCAN", b"-1"], "-ERR invalid cursor"),
        (&[b"SCAN", b"0", b"COUNT", b"0"], "-ERR syntax error"),
        (&[b"SCAN", b"0", b"COUNT"], "-ERR wrong number of arguments"),
        (&[b"SCAN", b"0", b"LIMIT", b"1"], "-ERR syntax error"),
        (&[b"SCAN"], "-ERR wrong number of arguments"),
        (&[b"KEYS"], "-ERR wrong number of arguments"),
        (&[b"KEYS", b"*", b"*"], "-ERR wrong number of arguments"),
    ] {
        let reply = String::from_utf8(resp_command(via, args)).unwrap();
        assert!(reply.starts_with(error), "{args:?}: {reply}");
    }
}
