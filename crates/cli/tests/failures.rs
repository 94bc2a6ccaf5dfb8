//! Failures on real processes: failure detection, sloppy quorum with
//! hinted handoff, strict `pw` quorums.

mod support;

use std::time::Duration;

use support::{Cluster, assert_disk_holds, eventually, liveness};

fn hints_pending(cluster: &Cluster, node: usize) -> u64 {
    cluster.nodes[node].client().cluster_status().unwrap()["hints_pending"]
        .as_u64()
        .unwrap()
}

fn primaries(cluster: &Cluster, key: &str) -> Vec<String> {
    let url = format!("{}/v1/preflist/sloppy/{key}", cluster.nodes[0].url());
    let body: serde_json::Value = serde_json::from_str(&support::http_get(&url)).unwrap();
    body["primaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_killed_node_is_seen_down_within_seconds_and_up_after_restart() {
    let mut cluster = Cluster::start(3);
    eventually("node3 to be seen up", Duration::from_secs(10), || {
        (liveness(&cluster.nodes[0], "node3") == "up").then_some(())
    });
    cluster.nodes[2].kill9();
    eventually("node3 to be seen down", Duration::from_secs(5), || {
        (liveness(&cluster.nodes[0], "node3") == "down").then_some(())
    });
    let metrics = support::http_get(&format!("{}/metrics", cluster.nodes[0].url()));
    assert!(
        metrics.contains("ringkv_peer_up{peer=\"node3\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringkv_peer_up{peer=\"node2\"} 1"),
        "{metrics}"
    );
    let seed = cluster.nodes[0].peer.clone();
    cluster.nodes[2].start(Some(&seed));
    eventually("node3 to be seen up again", Duration::from_secs(10), || {
        (liveness(&cluster.nodes[0], "node3") == "up").then_some(())
    });
}

/// A node that comes back is heard from (its heartbeats reach the others)
/// before the others' connections to it have reconnected, which back off
/// up to a second: writes it is the only replica of (N=1) must not fail
/// meanwhile, but go to a fallback as hints.
#[test]
fn writes_right_after_a_replica_returns_do_not_fail() {
    let mut cluster = Cluster::start(3);
    cluster.nodes[0]
        .client()
        .set_bucket("solo", &serde_json::json!({"n": 1, "r": 1, "w": 1}))
        .unwrap();
    for node in &cluster.nodes {
        eventually("bucket props to spread", Duration::from_secs(10), || {
            support::http_get(&format!("{}/v1/buckets/solo", node.url()))
                .contains("\"n\":1")
                .then_some(())
        });
    }
    cluster.nodes[2].kill9();
    for observer in 0..2 {
        eventually("node3 to be seen down", Duration::from_secs(5), || {
            (liveness(&cluster.nodes[observer], "node3") == "down").then_some(())
        });
    }
    // Long enough for the reconnect backoff to reach a second.
    std::thread::sleep(Duration::from_millis(1500));
    let seed = cluster.nodes[0].peer.clone();
    cluster.nodes[2].start(Some(&seed));
    let mut failed = Vec::new();
    for i in 0..40 {
        let key = format!("back-{i}");
        if let Err(e) = cluster.nodes[i % 2].client().put(
            "solo",
            key.as_bytes(),
            key.as_bytes(),
            "text/plain",
            None,
            None,
        ) {
            failed.push(format!("{key}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 40 writes failed: {failed:?}",
        failed.len()
    );
    for i in 0..40 {
        let key = format!("back-{i}");
        eventually(
            "every write to be readable",
            Duration::from_secs(10),
            || match cluster.nodes[0].client().get("solo", key.as_bytes(), None) {
                Ok(ringkv_client::GetResult::Found { value, .. }) => {
                    (value == key.as_bytes()).then_some(())
                }
                _ => None,
            },
        );
    }
}

#[test]
fn sloppy_quorum_keeps_writes_flowing_and_hints_reach_the_primaries() {
    let mut cluster = Cluster::start(5);
    let keys: Vec<String> = (0..80).map(|i| format!("key-{i}")).collect();
    let preflists: Vec<Vec<String>> = keys.iter().map(|k| primaries(&cluster, k)).collect();
    cluster.nodes[3].kill9();
    cluster.nodes[4].kill9();
    for observer in 0..3 {
        for peer in ["node4", "node5"] {
            eventually(
                "the killed nodes to be seen down",
                Duration::from_secs(5),
                || (liveness(&cluster.nodes[observer], peer) == "down").then_some(()),
            );
        }
    }
    // Every write at W=2 succeeds, even for keys with two primaries down.
    for (i, key) in keys.iter().enumerate() {
        cluster.nodes[i % 3]
            .client()
            .put(
                "sloppy",
                key.as_bytes(),
                key.as_bytes(),
                "text/plain",
                None,
                Some(2),
            )
            .unwrap_or_else(|e| panic!("{key} (primaries {:?}): {e}", preflists[i]));
    }
    // pw=2 is refused where two primaries are down, accepted where none is.
    let both_down =
        |p: &Vec<String>| p.contains(&"node4".to_string()) && p.contains(&"node5".to_string());
    let none_down = |p: &Vec<String>| !p.iter().any(|n| n == "node4" || n == "node5");
    let strict_put = |key: &str| {
        let url = format!("{}/v1/kv/sloppy/{key}?w=2&pw=2", cluster.nodes[0].url());
        support::http_put(&url, b"strict")
    };
    let i = preflists
        .iter()
        .position(both_down)
        .expect("some key has node4 and node5 as primaries");
    let (status, body) = strict_put(&keys[i]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("of 2"), "{body}");
    let j = preflists
        .iter()
        .position(none_down)
        .expect("some key has no primary on node4 or node5");
    assert_eq!(strict_put(&keys[j]).0, 204);
    // pr=2 reads likewise need two real primaries.
    let strict_get = |key: &str| {
        let url = format!("{}/v1/kv/sloppy/{key}?r=2&pr=2", cluster.nodes[1].url());
        support::http_status(&url)
    };
    assert_eq!(strict_get(&keys[i]), 503);
    // (300: the blind strict write above made a sibling of the first value.)
    assert_eq!(strict_get(&keys[j]), 300);
    let held: u64 = (0..3).map(|n| hints_pending(&cluster, n)).sum();
    assert!(held > 0, "fallbacks hold hints for the down primaries");

    // The down nodes come back; hints drain without any client reading.
    let seed = cluster.nodes[0].peer.clone();
    cluster.nodes[3].start(Some(&seed));
    cluster.nodes[4].start(Some(&seed));
    eventually("hints to drain", Duration::from_secs(30), || {
        (0..5)
            .all(|n| hints_pending(&cluster, n) == 0)
            .then_some(())
    });
    let metrics: String = (0..3)
        .map(|n| support::http_get(&format!("{}/metrics", cluster.nodes[n].url())))
        .collect();
    assert!(
        metrics.contains("ringkv_hints_delivered_total"),
        "{metrics}"
    );

    // node4's and node5's own disks hold every write they missed while down.
    for node_index in [3, 4] {
        let name = cluster.nodes[node_index].name.clone();
        let owned: Vec<String> = keys
            .iter()
            .zip(&preflists)
            .filter(|(_, preflist)| preflist.contains(&name))
            .map(|(key, _)| key.clone())
            .collect();
        assert!(
            owned.len() > 10,
            "{name} is a primary of only {} keys",
            owned.len()
        );
        assert_disk_holds(&mut cluster.nodes[node_index], "sloppy", &owned);
    }
}

#[test]
fn a_full_hint_store_never_fails_a_write_that_reaches_w_otherwise() {
    // Every hint is refused (the store holds at most 1 byte of hints).
    let mut cluster = Cluster::start_with(4, &["--hints-max-bytes", "1"]);
    cluster.nodes[3].kill9();
    for observer in 0..3 {
        eventually("node4 to be seen down", Duration::from_secs(5), || {
            (liveness(&cluster.nodes[observer], "node4") == "down").then_some(())
        });
    }
    let mut with_node4 = 0;
    for i in 0..40 {
        let key = format!("full-{i}");
        let url = format!("{}/v1/preflist/sloppy/{key}", cluster.nodes[0].url());
        let preflist: serde_json::Value = serde_json::from_str(&support::http_get(&url)).unwrap();
        let primaries = preflist["primaries"].to_string();
        // Two live primaries reach W=2 although the fallback refuses the hint.
        cluster.nodes[i % 3]
            .client()
            .put("sloppy", key.as_bytes(), b"v", "text/plain", None, Some(2))
            .unwrap_or_else(|e| panic!("{key} (primaries {primaries}): {e}"));
        if primaries.contains("node4") {
            with_node4 += 1;
            // W=3 needs the refused hint: 503.
            let url = format!("{}/v1/kv/sloppy/{key}?w=3", cluster.nodes[0].url());
            assert_eq!(support::http_put(&url, b"w3").0, 503, "{key}");
        }
    }
    assert!(
        with_node4 > 5,
        "only {with_node4} keys had node4 as a primary"
    );
    for n in 0..3 {
        assert_eq!(hints_pending(&cluster, n), 0);
    }
}

/// A fallback stamps the writes it coordinates with one actor for as long
/// as it holds the key's hint record (until this version: a fresh actor
/// per write), so a key written again and again through a fallback during
/// an outage gains one clock entry, not one per write.
#[test]
fn writes_through_a_fallback_add_one_clock_entry_per_outage() {
    let mut cluster = Cluster::start(5);
    let key = "hot";
    let primaries = primaries(&cluster, key);
    let index = |name: &str| cluster.nodes.iter().position(|n| n.name == name).unwrap();
    let down: Vec<usize> = primaries.iter().map(|p| index(p)).collect();
    let up: Vec<usize> = (0..5).filter(|i| !down.contains(i)).collect();
    for &i in &down {
        cluster.nodes[i].kill9();
    }
    for &observer in &up {
        for &i in &down {
            let name = cluster.nodes[i].name.clone();
            eventually(
                "the key's primaries to be seen down",
                Duration::from_secs(5),
                || (liveness(&cluster.nodes[observer], &name) == "down").then_some(()),
            );
        }
    }
    let client = cluster.nodes[up[0]].client();
    let mut context: Option<String> = None;
    for i in 0..10 {
        let value = format!("v{i}");
        let written = client
            .put(
                "sloppy",
                key.as_bytes(),
                value.as_bytes(),
                "text/plain",
                context.as_deref(),
                Some(2),
            )
            .unwrap_or_else(|e| panic!("write {i} with {primaries:?} down: {e}"));
        context = Some(written);
    }
    let context = context.unwrap();
    let actors = ringkv_core::causality::decode_context(&context)
        .unwrap()
        .iter()
        .count();
    assert_eq!(actors, 1, "10 writes through one fallback: {context}");
    match client.get("sloppy", key.as_bytes(), Some(2)).unwrap() {
        ringkv_client::GetResult::Found { value, .. } => assert_eq!(value, b"v9"),
        other => panic!("expected the last write, got {other:?}"),
    }
}
