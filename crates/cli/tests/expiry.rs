//! Expiry (TTL) on a 3-node cluster, as applications use it: over RESP with
//! a Redis client library (SET EX/PX, SETEX, PSETEX, EXPIRE, PEXPIRE, TTL,
//! PTTL, PERSIST) and over HTTP (`X-Ringkv-Ttl`). A value reads as absent
//! on every node from its expiry on, and listings leave it out; bad TTLs
//! are refused with Redis's errors and change nothing.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Commands;
use support::{Cluster, eventually, http_request as request, redis_connection as connect};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn error_of<T: std::fmt::Debug>(result: redis::RedisResult<T>) -> String {
    result.expect_err("an error reply").to_string()
}

#[test]
fn values_expire_on_every_node_over_resp() {
    let cluster = Cluster::start(3);
    let mut first = connect(&cluster.nodes[0].resp);
    let mut second = connect(&cluster.nodes[1].resp);
    let mut third = connect(&cluster.nodes[2].resp);

    let _: () = first.set_ex("session", "s1", 3).unwrap();
    let _: () = redis::cmd("SET")
        .arg("token")
        .arg("t1")
        .arg("PX")
        .arg(3000)
        .query(&mut first)
        .unwrap();
    let _: () = first.pset_ex("nonce", "n1", 3000).unwrap();
    let _: () = first.set("forever", "f").unwrap();
    let _: () = first.set("short", "s").unwrap();

    let read: String = second.get("session").unwrap();
    assert_eq!(read, "s1");
    let ttl: i64 = third.ttl("session").unwrap();
    assert!((1..=3).contains(&ttl), "TTL session: {ttl}");
    let pttl: i64 = third.pttl("token").unwrap();
    assert!(0 < pttl && pttl <= 3000, "PTTL token: {pttl}");
    let ttl: i64 = second.ttl("forever").unwrap();
    assert_eq!(ttl, -1, "a key without an expiry");
    let ttl: i64 = second.ttl("nothing").unwrap();
    assert_eq!(ttl, -2, "a key that does not exist");

    // EXPIRE and PERSIST rewrite the value with the context they read.
    let set: i64 = second.expire("short", 2).unwrap();
    assert_eq!(set, 1);
    let pttl: i64 = first.pttl("short").unwrap();
    assert!(0 < pttl && pttl <= 2000, "PTTL short: {pttl}");
    let set: i64 = third.pexpire("forever", 60_000).unwrap();
    assert_eq!(set, 1);
    let persisted: i64 = first.persist("forever").unwrap();
    assert_eq!(persisted, 1);
    let persisted: i64 = second.persist("forever").unwrap();
    assert_eq!(persisted, 0, "nothing to persist any more");
    let ttl: i64 = third.ttl("forever").unwrap();
    assert_eq!(ttl, -1);
    let set: i64 = first.expire("nothing", 10).unwrap();
    assert_eq!(set, 0, "EXPIRE of a key that does not exist");
    let persisted: i64 = first.persist("nothing").unwrap();
    assert_eq!(persisted, 0);

    // EXPIRE with a TTL of 0 or less deletes, as in Redis.
    let _: () = first.set("doomed", "d").unwrap();
    let set: i64 = second.expire("doomed", 0).unwrap();
    assert_eq!(set, 1);
    let read: Option<String> = third.get("doomed").unwrap();
    assert_eq!(read, None);

    // Bad TTLs and options get Redis's errors and write nothing.
    let mut bad =
        |args: &[&str]| error_of(redis::cmd(args[0]).arg(&args[1..]).query::<()>(&mut first));
    assert!(bad(&["SET", "k", "v", "EX", "0"]).contains("invalid expire time"));
    assert!(bad(&["SET", "k", "v", "PX", "-5"]).contains("invalid expire time"));
    assert!(bad(&["SET", "k", "v", "EX", "soon"]).contains("not an integer"));
    assert!(bad(&["SET", "k", "v", "EX", "1", "PX", "5"]).contains("syntax error"));
    assert!(bad(&["SET", "k", "v", "EX"]).contains("syntax error"));
    assert!(bad(&["SET", "k", "v", "NX"]).contains("NX is not supported"));
    assert!(bad(&["SET", "k", "v", "KEEPTTL"]).contains("KEEPTTL is not supported"));
    assert!(bad(&["SETEX", "k", "-1", "v"]).contains("invalid expire time"));
    assert!(bad(&["SETEX", "k", "999999999999", "v"]).contains("TTL must be between"));
    assert!(bad(&["EXPIRE", "forever", "10", "NX"]).contains("not supported"));
    assert!(bad(&["EXPIRE", "forever", "x"]).contains("not an integer"));
    let read: Option<String> = second.get("k").unwrap();
    assert_eq!(read, None, "no refused SET wrote anything");

    // From their expiry on, the values are gone on every node: reads,
    // EXISTS, TTL, KEYS and DBSIZE agree.
    let gone = ["session", "token", "nonce", "short"];
    eventually("the values to expire", Duration::from_secs(20), || {
        let found: Vec<Option<String>> = first.mget(&gone).ok()?;
        found.iter().all(Option::is_none).then_some(())
    });
    for connection in [&mut first, &mut second, &mut third] {
        for key in gone {
            let read: Option<String> = connection.get(key).unwrap();
            assert_eq!(read, None, "{key}");
            let ttl: i64 = connection.ttl(key).unwrap();
            assert_eq!(ttl, -2, "{key}");
        }
        let exists: u32 = connection.exists(&gone).unwrap();
        assert_eq!(exists, 0);
        let mut keys: Vec<String> = connection.keys("*").unwrap();
        keys.sort();
        assert_eq!(keys, ["forever"]);
        let size: u64 = redis::cmd("DBSIZE").query(connection).unwrap();
        assert_eq!(size, 1);
        let persisted: i64 = connection.persist("session").unwrap();
        assert_eq!(persisted, 0, "an expired key is not brought back");
    }
    let deleted: u32 = first.del(&gone).unwrap();
    assert_eq!(deleted, 0, "an expired key is not there to delete");

    // A key that expired can be written again.
    let _: () = second.set("session", "s2").unwrap();
    let read: String = third.get("session").unwrap();
    assert_eq!(read, "s2");
    let ttl: i64 = first.ttl("session").unwrap();
    assert_eq!(ttl, -1);
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .map(str::to_string)
}

#[test]
fn values_expire_over_http() {
    let cluster = Cluster::start(3);
    let url = |i: usize, path: &str| format!("{}{path}", cluster.nodes[i].url());

    let before = now_ms();
    let (status, _, body) = request(
        "PUT",
        &url(0, "/v1/kv/cache/page"),
        &[("x-ringkv-ttl", "3"), ("content-type", "text/html")],
        b"<p>hi</p>",
    );
    assert_eq!(status, 204, "{body}");
    let (status, _, _) = request("PUT", &url(0, "/v1/kv/cache/kept"), &[], b"k");
    assert_eq!(status, 204);

    let (status, head, body) = request("GET", &url(1, "/v1/kv/cache/page"), &[], b"");
    assert_eq!((status, body.as_str()), (200, "<p>hi</p>"));
    let expires: u64 = header(&head, "x-ringkv-expires-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        before + 3000 <= expires && expires <= now_ms() + 3000,
        "expires at {expires}, written after {before}"
    );
    let (_, head, _) = request("GET", &url(2, "/v1/kv/cache/kept"), &[], b"");
    assert_eq!(header(&head, "x-ringkv-expires-ms"), None);

    // Bad TTLs are refused and write nothing.
    for (method, ttl) in [("PUT", "0"), ("PUT", "-1"), ("PUT", "1.5"), ("PUT", "soon")] {
        let (status, _, body) = request(
            method,
            &url(0, "/v1/kv/cache/bad"),
            &[("x-ringkv-ttl", ttl)],
            b"v",
        );
        assert_eq!(status, 400, "TTL {ttl:?}: {body}");
        assert!(body.contains("X-Ringkv-Ttl"), "{body}");
    }
    let (status, _, body) = request(
        "PUT",
        &url(0, "/v1/kv/cache/bad"),
        &[("x-ringkv-ttl", "999999999999")],
        b"v",
    );
    assert_eq!(status, 400);
    assert!(body.contains("TTL must be between"), "{body}");
    let (status, _, body) = request(
        "DELETE",
        &url(0, "/v1/kv/cache/kept"),
        &[("x-ringkv-ttl", "5")],
        b"",
    );
    assert_eq!(status, 400);
    assert!(body.contains("only a write of a value"), "{body}");
    let (status, _, _) = request(
        "GET",
        &url(0, "/v1/kv/cache/kept"),
        &[("x-ringkv-ttl", "5")],
        b"",
    );
    assert_eq!(status, 400);
    assert_eq!(request("GET", &url(0, "/v1/kv/cache/bad"), &[], b"").0, 404);
    assert_eq!(
        request("GET", &url(0, "/v1/kv/cache/kept"), &[], b"").0,
        200
    );

    // In a bucket with one replica, two of three nodes are no replica of
    // a key and forward its write (`PutWithTtl` between nodes): every node
    // reads the expiry the replica stamped.
    cluster.nodes[0]
        .client()
        .set_bucket("solo", &serde_json::json!({"n": 1, "r": 1, "w": 1}))
        .unwrap();
    for i in 0..3 {
        eventually("bucket props to spread", Duration::from_secs(10), || {
            let (_, _, body) = request("GET", &url(i, "/v1/buckets/solo"), &[], b"");
            body.contains("\"n\":1").then_some(())
        });
    }
    for (i, key) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        let path = format!("/v1/kv/solo/{key}");
        let (status, _, body) =
            request("PUT", &url(i % 3, &path), &[("x-ringkv-ttl", "600")], b"v");
        assert_eq!(status, 204, "{body}");
        let mut expiries = Vec::new();
        for node in 0..3 {
            let (status, head, _) = request("GET", &url(node, &path), &[], b"");
            assert_eq!(status, 200);
            expiries.push(header(&head, "x-ringkv-expires-ms").unwrap());
        }
        assert!(
            expiries.iter().all(|e| *e == expiries[0]),
            "{key}: {expiries:?}"
        );
    }
    let forwarded = support::metric(&cluster.nodes[0], "ringkv_forwarded_total")
        + support::metric(&cluster.nodes[1], "ringkv_forwarded_total")
        + support::metric(&cluster.nodes[2], "ringkv_forwarded_total");
    assert!(forwarded > 0, "some write was forwarded");

    eventually("the value to expire", Duration::from_secs(20), || {
        (request("GET", &url(2, "/v1/kv/cache/page"), &[], b"").0 == 404).then_some(())
    });
    for i in 0..3 {
        let (status, _, body) = request("GET", &url(i, "/v1/kv/cache/page"), &[], b"");
        assert_eq!(status, 404, "node {i}: {body}");
        let (_, _, listing) = request("GET", &url(i, "/v1/buckets/cache/keys"), &[], b"");
        assert!(
            listing.contains("\"kept\"") && !listing.contains("\"page\""),
            "{listing}"
        );
    }
}

/// How a test cluster retires expired keys.
enum Retiring {
    /// The expiry loop, as its index comes due (the default, 1 s).
    ExpiryLoop,
    /// The tombstone sweep alone (`--expiry-interval-ms 0`).
    Sweep,
    /// The expiry loop, after every node restarted before the keys
    /// expired: the index is rebuilt from storage.
    ExpiryLoopAfterRestart,
}

/// Keys written with short TTLs are deleted once each (by the owner of
/// their partition), a key written again after it expired is kept, and
/// the tombstones are then reaped on every replica.
fn expired_keys_are_retired(how: Retiring) {
    let args: &[&str] = match how {
        Retiring::ExpiryLoop => &[],
        Retiring::Sweep => &[
            "--expiry-interval-ms",
            "0",
            "--tombstone-sweep-interval-ms",
            "300",
        ],
        Retiring::ExpiryLoopAfterRestart => &["--expiry-interval-ms", "300"],
    };
    let ttl_ms = match how {
        Retiring::ExpiryLoopAfterRestart => 4000,
        _ => 200,
    };
    let mut cluster = Cluster::start_with(3, args);
    let mut first = connect(&cluster.nodes[0].resp);
    const KEYS: u64 = 20;
    // The temp keys and `later`.
    const RETIRED: u64 = KEYS + 1;
    for i in 0..KEYS {
        let _: () = first.pset_ex(format!("temp:{i}"), "t", ttl_ms).unwrap();
    }
    let _: () = first.pset_ex("reborn", "old", ttl_ms).unwrap();
    let _: () = first.pset_ex("later", "l", ttl_ms + 400).unwrap();
    if let Retiring::ExpiryLoopAfterRestart = how {
        let seed = cluster.nodes[0].peer.clone();
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            node.stop();
            node.start((i > 0).then_some(seed.as_str()));
        }
        cluster.wait_for_agreement();
        first = connect(&cluster.nodes[0].resp);
    }
    std::thread::sleep(Duration::from_millis(ttl_ms + 50));
    // Written again after it expired, before a sweep could see it: kept.
    let mut second = connect(&cluster.nodes[1].resp);
    let _: () = second.set("reborn", "new").unwrap();

    let sum = |name: &str| -> u64 { cluster.nodes.iter().map(|n| support::metric(n, name)).sum() };
    // Each key is retired once, by the node that owns its partition
    // (reborn too if its retirement came between its expiry and its new
    // write).
    eventually(
        "the expired keys to be retired",
        Duration::from_secs(20),
        || (sum("ringkv_expired_swept_total") >= RETIRED).then_some(()),
    );
    assert!(sum("ringkv_expired_swept_total") <= RETIRED + 1);
    let read: String = first.get("reborn").unwrap();
    assert_eq!(read, "new", "a write made after the expiry is kept");
    let ttl: i64 = second.ttl("reborn").unwrap();
    assert_eq!(ttl, -1);
    // Their tombstones are then reaped by the usual rules (all primaries
    // acknowledged the delete): every replica drops its copy.
    eventually(
        "the tombstones to be reaped",
        Duration::from_secs(30),
        || (sum("ringkv_tombstones_reaped_total") >= 3 * RETIRED).then_some(()),
    );
    let size: u64 = redis::cmd("DBSIZE").query(&mut second).unwrap();
    assert_eq!(size, 1, "only reborn is left");
}

#[test]
fn the_expiry_loop_deletes_expired_keys_and_keeps_what_was_written_since() {
    expired_keys_are_retired(Retiring::ExpiryLoop);
}

#[test]
fn the_tombstone_sweep_deletes_expired_keys_the_loop_did_not() {
    expired_keys_are_retired(Retiring::Sweep);
}

#[test]
fn a_restarted_node_rebuilds_its_expiry_index_from_storage() {
    expired_keys_are_retired(Retiring::ExpiryLoopAfterRestart);
}
