//! Active anti-entropy on real processes: a replica that missed writes
//! while it was down, and a replica whose data dir was wiped, get every key
//! back without any client reading them.

mod support;

use std::time::Duration;

use support::{Cluster, TestNode, assert_disk_holds, eventually, metric};

const BUCKET: &str = "aae";

fn tree_keys(node: &TestNode) -> u64 {
    metric(node, "ringkv_aae_tree_keys")
}

#[test]
fn anti_entropy_repairs_a_stale_replica_and_repopulates_a_wiped_one() {
    let mut cluster = Cluster::start_with(
        3,
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    let mut keys: Vec<String> = (0..60).map(|i| format!("before-{i}")).collect();
    for key in &keys {
        cluster.nodes[0]
            .client()
            .put(
                BUCKET,
                key.as_bytes(),
                key.as_bytes(),
                "text/plain",
                None,
                Some(3),
            )
            .unwrap();
    }
    // node3 misses writes while it is down (3 nodes: no fallback to hold hints).
    cluster.nodes[2].kill9();
    for i in 0..40 {
        let key = format!("missed-{i}");
        cluster.nodes[i % 2]
            .client()
            .put(
                BUCKET,
                key.as_bytes(),
                key.as_bytes(),
                "text/plain",
                None,
                Some(2),
            )
            .unwrap();
        keys.push(key);
    }
    let seed = cluster.nodes[0].peer.clone();
    cluster.nodes[2].start(Some(&seed));
    let total = keys.len() as u64;
    eventually(
        "anti-entropy to repair node3",
        Duration::from_secs(60),
        || (tree_keys(&cluster.nodes[2]) >= total).then_some(()),
    );
    assert_disk_holds(&mut cluster.nodes[2], BUCKET, &keys);

    // Wipe node3's data dir: it comes back with a new identity, takes over
    // its old place by name, and anti-entropy refills it.
    std::fs::remove_dir_all(&cluster.nodes[2].dir).unwrap();
    cluster.nodes[2].start(Some(&seed));
    cluster.wait_for_agreement();
    eventually(
        "anti-entropy to refill the wiped node3",
        Duration::from_secs(60),
        || (tree_keys(&cluster.nodes[2]) >= total).then_some(()),
    );
    assert_disk_holds(&mut cluster.nodes[2], BUCKET, &keys);
    let metrics = support::http_get(&format!("{}/metrics", cluster.nodes[0].url()));
    let repaired: u64 = (0..2)
        .map(|n| metric(&cluster.nodes[n], "ringkv_aae_keys_repaired_total"))
        .sum();
    assert!(repaired >= total, "keys repaired: {repaired}\n{metrics}");
}
