//! Tombstone reaping (`--delete-mode`, Riak's `delete_mode`), on real
//! processes: a delete that every primary acknowledged is dropped from
//! every replica after the delay, and the key can be written again; a new
//! write after a reap is not taken, by a replica that kept the tombstone,
//! for one already deleted (Riak's "kv679"); a tombstone stays while a
//! member does not answer, or holds another copy of the key, and a read
//! that finds it on every primary reaps it once nothing holds it back, as
//! does the sweeper (`--tombstone-sweep-interval-ms`) with no read at all.

mod support;

use std::time::Duration;

use ringkv_client::{Client, GetResult};
use support::{Cluster, TestNode, eventually, metric, wait_for_layout_agreement};

const REAPED: &str = "ringkv_tombstones_reaped_total";
const SKIPPED: &str = "ringkv_reaps_skipped_total";

/// Writes `value` to `key` of bucket `b` through `client` with the context
/// of its current version (if any), waiting for `w` replicas.
fn overwrite(client: &Client, key: &[u8], value: &[u8], w: u32) {
    let context = match client.get("b", key, Some(w)).unwrap() {
        GetResult::Found { context, .. } | GetResult::Siblings { context, .. } => Some(context),
        GetResult::NotFound { context } => context,
    };
    client
        .put("b", key, value, "text/plain", context.as_deref(), Some(w))
        .unwrap();
}

/// Deletes `key` of bucket `b` with the context of a read, waiting for
/// `w` replicas.
fn delete(client: &Client, key: &[u8], w: u32) {
    let GetResult::Found { context, .. } = client.get("b", key, Some(w)).unwrap() else {
        panic!("nothing to delete");
    };
    client.delete("b", key, Some(&context), Some(w)).unwrap();
}

/// What a read of `key` from `r` replicas finds: its value, or None.
fn value(client: &Client, key: &[u8], r: u32) -> Option<Vec<u8>> {
    match client.get("b", key, Some(r)).unwrap() {
        GetResult::Found { value, .. } => Some(value),
        GetResult::NotFound { .. } => None,
        other => panic!("{other:?}"),
    }
}

/// Whether a read of `key` still finds a tombstone: a not-found answer
/// with a context.
fn has_tombstone(client: &Client, key: &[u8], r: u32) -> bool {
    matches!(
        client.get("b", key, Some(r)).unwrap(),
        GetResult::NotFound { context: Some(_) }
    )
}

/// Sets bucket `b` to n=2 on a 3-node cluster, and waits for every node
/// to have it: the primaries of key `k` in preference-list order (the first
/// owns its partition) and the node that is no replica of it.
fn n2_roles(cluster: &Cluster) -> (Vec<&TestNode>, &TestNode) {
    cluster.nodes[0]
        .client()
        .set_bucket("b", &serde_json::json!({"n": 2, "r": 2, "w": 2}))
        .unwrap();
    for node in &cluster.nodes {
        let url = format!("{}/v1/buckets/b", node.url());
        eventually("bucket b's n=2 to spread", Duration::from_secs(10), || {
            support::http_get(&url).contains("\"n\":2").then_some(())
        });
    }
    let url = format!("{}/v1/preflist/b/k", cluster.nodes[0].url());
    let preflist: serde_json::Value = serde_json::from_str(&support::http_get(&url)).unwrap();
    let primaries: Vec<&TestNode> = preflist["primaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p.as_str().unwrap();
            cluster.nodes.iter().find(|n| n.name == name).unwrap()
        })
        .collect();
    let outside = cluster
        .nodes
        .iter()
        .find(|n| primaries.iter().all(|p| p.name != n.name))
        .unwrap();
    (primaries, outside)
}

/// Writes key `k` through `coordinator`, stops `silent` (SIGSTOP; the
/// caller continues it), deletes `k`, and waits until `first` skipped the
/// reap.
fn delete_while_silent(coordinator: &Client, first: &TestNode, silent: &TestNode) {
    overwrite(coordinator, b"k", b"v1", 2);
    silent.signal("STOP");
    delete(coordinator, b"k", 2);
    eventually("the reap to be skipped", Duration::from_secs(10), || {
        (metric(first, SKIPPED) >= 1).then_some(())
    });
}

#[test]
fn a_delete_every_primary_acknowledged_is_reaped_and_the_key_written_again() {
    let cluster = Cluster::start_with(3, &["--delete-mode", "200"]);
    let client = cluster.nodes[0].client();
    overwrite(&client, b"k", b"v1", 3);
    delete(&client, b"k", 3);
    for node in &cluster.nodes {
        eventually(
            "the tombstone to be reaped",
            Duration::from_secs(10),
            || (metric(node, REAPED) == 1).then_some(()),
        );
    }
    // Gone from every replica: not found, with no tombstone's context.
    assert!(!has_tombstone(&client, b"k", 3));
    // Written again, blind, and read back from all three.
    client
        .put("b", b"k", b"v2", "text/plain", None, Some(3))
        .unwrap();
    for node in &cluster.nodes {
        assert_eq!(value(&node.client(), b"k", 3).as_deref(), Some(&b"v2"[..]));
    }
    // A delete with a concurrent sibling left (a blind write it did not
    // see) leaves a live version: nothing is reaped.
    client
        .put("b", b"s", b"one", "text/plain", None, Some(3))
        .unwrap();
    let GetResult::Found { context, .. } = client.get("b", b"s", Some(3)).unwrap() else {
        panic!("s not found");
    };
    client
        .put("b", b"s", b"two", "text/plain", None, Some(3))
        .unwrap();
    client.delete("b", b"s", Some(&context), Some(3)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(value(&client, b"s", 3).as_deref(), Some(&b"two"[..]));
    for node in &cluster.nodes {
        assert_eq!(metric(node, REAPED), 1);
    }
}

#[test]
fn a_write_after_a_reap_is_not_taken_for_one_already_deleted() {
    // node3 keeps its tombstones: after the reap on node1 and node2 it
    // still holds the delete's clock. node1's next write of the key must
    // count its dot above that clock, or node3 (and any read that merges
    // node3's copy) takes the new write for one the delete superseded.
    let dir = tempfile::tempdir().unwrap();
    let reaping = ["--delete-mode", "200"];
    let keeping = ["--delete-mode", "keep"];
    let mut nodes = [
        TestNode::new("node1", dir.path().join("node1"), &reaping),
        TestNode::new("node2", dir.path().join("node2"), &reaping),
        TestNode::new("node3", dir.path().join("node3"), &keeping),
    ];
    let seed = nodes[0].peer.clone();
    for (i, node) in nodes.iter_mut().enumerate() {
        node.start((i > 0).then_some(seed.as_str()));
    }
    let clients: Vec<Client> = nodes.iter().map(TestNode::client).collect();
    wait_for_layout_agreement(&clients, 3);
    let node1 = &clients[0];
    overwrite(node1, b"k", b"v1", 3);
    overwrite(node1, b"k", b"v2", 3);
    overwrite(node1, b"k", b"v3", 3);
    delete(node1, b"k", 3);
    for node in &nodes[..2] {
        eventually("node1 and node2 to reap", Duration::from_secs(10), || {
            (metric(node, REAPED) == 1).then_some(())
        });
    }
    assert_eq!(metric(&nodes[2], REAPED), 0);
    // A blind write through node1, acknowledged by all three, is read back
    // from all three.
    node1
        .put("b", b"k", b"after", "text/plain", None, Some(3))
        .unwrap();
    for client in &clients {
        assert_eq!(value(client, b"k", 3).as_deref(), Some(&b"after"[..]));
    }

    // The floor lives on across a clean restart of node1.
    overwrite(node1, b"j", b"v1", 3);
    overwrite(node1, b"j", b"v2", 3);
    delete(node1, b"j", 3);
    eventually("node1 to reap j", Duration::from_secs(10), || {
        (metric(&nodes[0], REAPED) == 2).then_some(())
    });
    nodes[0].stop();
    nodes[0].start(None);
    let node1 = nodes[0].client();
    wait_for_layout_agreement(&clients, 3);
    // (The others see node1 up again within a heartbeat or two.)
    eventually("node1 to be seen up", Duration::from_secs(10), || {
        clients
            .iter()
            .all(|c| c.get("b", b"k", Some(3)).is_ok())
            .then_some(())
    });
    node1
        .put("b", b"j", b"after", "text/plain", None, Some(3))
        .unwrap();
    for client in &clients {
        assert_eq!(value(client, b"j", 3).as_deref(), Some(&b"after"[..]));
    }
}

#[test]
fn a_tombstone_stays_while_a_member_is_silent_or_holds_another_copy() {
    let cluster = Cluster::start_with(3, &["--delete-mode", "200"]);
    let client = cluster.nodes[0].client();
    let (in_list, silent) = n2_roles(&cluster);
    let coordinator = in_list[0].client();

    // The node outside the preference list is stopped: it cannot say that
    // it holds no copy, so nothing is reaped.
    delete_while_silent(&coordinator, in_list[0], silent);
    assert_eq!(metric(in_list[0], SKIPPED), 1);
    silent.signal("CONT");
    for node in &cluster.nodes {
        assert_eq!(metric(node, REAPED), 0, "{}", node.name);
    }
    // Once it answers, a read that finds the same tombstone on every
    // primary reaps it (as Riak reaps on reads).
    assert!(has_tombstone(&coordinator, b"k", 2));
    for node in &in_list {
        eventually("the read to reap", Duration::from_secs(10), || {
            (metric(node, REAPED) == 1).then_some(())
        });
    }
    assert!(!has_tombstone(&coordinator, b"k", 2));
    assert_eq!(metric(silent, REAPED), 0);

    // A copy outside the preference list (written while the bucket had
    // n=3): its holder answers that it holds one, so nothing is reaped.
    client
        .set_bucket("b", &serde_json::json!({"n": 3, "r": 2, "w": 3}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2)); // bucket properties spread by gossip
    overwrite(&coordinator, b"c", b"v1", 3);
    client
        .set_bucket("b", &serde_json::json!({"n": 2, "r": 2, "w": 2}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("{}/v1/preflist/b/c", cluster.nodes[0].url());
    let preflist: serde_json::Value = serde_json::from_str(&support::http_get(&url)).unwrap();
    let first = preflist["primaries"][0].as_str().unwrap();
    let coordinator = cluster.nodes.iter().find(|n| n.name == first).unwrap();
    let before = metric(coordinator, SKIPPED);
    delete(&coordinator.client(), b"c", 2);
    eventually("the reap to be skipped", Duration::from_secs(10), || {
        (metric(coordinator, SKIPPED) == before + 1).then_some(())
    });
    // Nor does a read reap it.
    assert!(has_tombstone(&coordinator.client(), b"c", 2));
    eventually(
        "the read's reap to be skipped",
        Duration::from_secs(10),
        || (metric(coordinator, SKIPPED) == before + 2).then_some(()),
    );
    assert!(has_tombstone(&coordinator.client(), b"c", 2));
    let reaped: u64 = cluster.nodes.iter().map(|n| metric(n, REAPED)).sum();
    assert_eq!(reaped, 2, "only k's two primaries reaped");
}

#[test]
fn a_tombstone_left_behind_is_swept_without_a_read() {
    let cluster = Cluster::start_with(
        3,
        &[
            "--delete-mode",
            "200",
            "--tombstone-sweep-interval-ms",
            "300",
        ],
    );
    let (in_list, silent) = n2_roles(&cluster);
    let coordinator = in_list[0].client();

    // Deleted while a member is silent: not reaped at the delete, nor by
    // the sweeps meanwhile.
    delete_while_silent(&coordinator, in_list[0], silent);
    std::thread::sleep(Duration::from_millis(700)); // two sweeps
    for node in &in_list {
        assert_eq!(metric(node, REAPED), 0, "{}", node.name);
    }
    silent.signal("CONT");
    // No client reads the key: the sweeper of its first primary does, and
    // that read reaps the tombstone on both primaries.
    for node in &in_list {
        eventually("the sweep to reap", Duration::from_secs(20), || {
            (metric(node, REAPED) == 1).then_some(())
        });
    }
    assert!(!has_tombstone(&coordinator, b"k", 2));
    assert_eq!(metric(silent, REAPED), 0);
    // Swept by the key's first primary only.
    assert!(metric(in_list[0], "ringkv_tombstones_swept_total") >= 1);
    for node in cluster.nodes.iter().filter(|n| n.name != in_list[0].name) {
        assert_eq!(
            metric(node, "ringkv_tombstones_swept_total"),
            0,
            "{}",
            node.name
        );
    }
}

#[test]
fn a_redis_del_on_one_node_is_reaped() {
    // One node, so N=1: the delete is reaped without asking anyone.
    let cluster = Cluster::start_with(1, &["--delete-mode", "0"]);
    let node = &cluster.nodes[0];
    assert_eq!(
        support::resp_command(&node.resp, &[b"SET", b"k", b"v"]),
        b"+OK\r\n"
    );
    assert_eq!(
        support::resp_command(&node.resp, &[b"DEL", b"k"]),
        b":1\r\n"
    );
    eventually(
        "the tombstone to be reaped",
        Duration::from_secs(10),
        || (metric(node, REAPED) == 1).then_some(()),
    );
    assert_eq!(
        support::resp_command(&node.resp, &[b"EXISTS", b"k"]),
        b":0\r\n"
    );
    assert_eq!(
        support::resp_command(&node.resp, &[b"SET", b"k", b"w"]),
        b"+OK\r\n"
    );
    assert_eq!(
        support::resp_command(&node.resp, &[b"GET", b"k"]),
        b"$1\r\nw\r\n"
    );
}
