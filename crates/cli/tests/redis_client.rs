//! The RESP port driven by a Redis client library (redis-rs, as an
//! application uses it), across a 3-node cluster: what one node writes
//! every node reads; MGET, MSET, DEL, EXISTS, TYPE and pipelines;
//! `scan_match`'s iterator (SCAN with MATCH until the cursor is 0 again),
//! KEYS and DBSIZE; errors come back as errors; and AUTH from the URL on a
//! node with a client password.

mod support;

use std::collections::BTreeSet;

use redis::Commands;
use support::{Cluster, node_with_password, redis_connection as connect};

#[test]
fn a_redis_client_library_works_against_every_node() {
    let cluster = Cluster::start(3);
    let mut first = connect(&cluster.nodes[0].resp);
    let mut second = connect(&cluster.nodes[1].resp);
    let mut third = connect(&cluster.nodes[2].resp);

    let _: () = first.set("greeting", "hello").unwrap();
    let read: String = second.get("greeting").unwrap();
    assert_eq!(read, "hello");
    let missing: Option<String> = third.get("nothing").unwrap();
    assert_eq!(missing, None);

    let pairs: Vec<(String, String)> = (0..40)
        .map(|i| (format!("user:{i}"), format!("v{i}")))
        .collect();
    let _: () = first.mset(&pairs).unwrap();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let values: Vec<Option<String>> = third.mget(&keys).unwrap();
    assert!(
        values
            .iter()
            .zip(&pairs)
            .all(|(v, (_, want))| v.as_deref() == Some(want.as_str()))
    );

    let (exists, kind): (u32, String) = redis::pipe()
        .exists(&keys[..3])
        .cmd("TYPE")
        .arg("user:1")
        .query(&mut second)
        .unwrap();
    assert_eq!((exists, kind.as_str()), (3, "string"));
    let deleted: u32 = first.del(&["user:0", "user:1", "absent"]).unwrap();
    assert_eq!(deleted, 2);

    // Iterating SCAN with MATCH, as applications do.
    let scanned: Vec<String> = third.scan_match("user:*").unwrap().collect();
    let scanned_set: BTreeSet<String> = scanned.iter().cloned().collect();
    assert_eq!(scanned.len(), scanned_set.len(), "each key once");
    let expected: BTreeSet<String> = keys[2..].iter().map(|k| k.to_string()).collect();
    assert_eq!(scanned_set, expected);
    let mut listed: Vec<String> = second.keys("user:1*").unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [
            "user:10", "user:11", "user:12", "user:13", "user:14", "user:15", "user:16", "user:17",
            "user:18", "user:19"
        ]
    );
    let size: u64 = redis::cmd("DBSIZE").query(&mut first).unwrap();
    assert_eq!(size, 38 + 1, "user:2..39 and greeting");

    // A command ringkv does not have is an error the library returns.
    let unsupported: redis::RedisResult<i64> = first.incr("counter", 1);
    assert!(unsupported.is_err());
    let read: String = first.get("greeting").unwrap();
    assert_eq!(read, "hello", "the connection goes on after an error");
}

#[test]
fn a_redis_client_library_authenticates_from_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_password(dir.path(), "the client password");
    let refused = redis::Client::open(format!("redis://{}/", node.resp))
        .unwrap()
        .get_connection()
        .and_then(|mut c| c.get::<_, Option<String>>("k"));
    assert!(refused.is_err());
    let mut connection =
        redis::Client::open(format!("redis://:the%20client%20password@{}/", node.resp))
            .unwrap()
            .get_connection()
            .unwrap();
    let _: () = connection.set("k", "v").unwrap();
    let read: String = connection.get("k").unwrap();
    assert_eq!(read, "v");
}
