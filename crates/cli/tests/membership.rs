//! Leaving a cluster, on real processes: `ringkv cluster leave` gives the
//! leaver's partitions to the others, the leaver hands its data to them,
//! then takes itself out of the layout and stops, without losing a write —
//! checked with N=1, where the leaver holds the only copy of its keys.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ringkv_client::GetResult;
use ringkv_core::bucket::BucketRegistry;
use ringkv_core::message::{GossipState, PeerRequest};
use ringkv_core::ring::{Layout, Member, MemberState};
use ringkv_wire::{Frame, encode_frame};
use serde_json::json;
use support::{BIN, Cluster, TestNode, eventually, http_get, metric, wait_for_layout_agreement};

const BUCKET: &str = "solo";

fn put(node: &TestNode, key: &str) {
    node.client()
        .put(
            BUCKET,
            key.as_bytes(),
            key.as_bytes(),
            "text/plain",
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("writing {key} through {}: {e}", node.name));
}

/// Makes `BUCKET` N=1 (R=W=1) and waits until every node knows it: each
/// key then has one copy, on its partition's owner.
fn one_copy_bucket(cluster: &Cluster) {
    cluster.nodes[0]
        .client()
        .set_bucket(BUCKET, &json!({"n": 1, "r": 1, "w": 1}))
        .unwrap();
    for node in &cluster.nodes {
        eventually("bucket props to spread", Duration::from_secs(10), || {
            http_get(&format!("{}/v1/buckets/{BUCKET}", node.url()))
                .contains("\"n\":1")
                .then_some(())
        });
    }
}

/// Waits until `key` of `BUCKET` reads back as its own value through `node`.
fn eventually_readable(node: &TestNode, key: &str) {
    eventually(
        "every key to be readable",
        Duration::from_secs(30),
        || match node.client().get(BUCKET, key.as_bytes(), None) {
            Ok(GetResult::Found { value, .. }) => (value == key.as_bytes()).then_some(()),
            _ => None,
        },
    );
}

/// `ringkv cluster leave NAME --url URL`: exit status and output.
fn leave(url: &str, name: &str) -> (bool, String) {
    cluster_command("leave", url, name)
}

/// `ringkv cluster remove NAME --url URL`: exit status and output.
fn remove(url: &str, name: &str) -> (bool, String) {
    cluster_command("remove", url, name)
}

fn cluster_command(command: &str, url: &str, name: &str) -> (bool, String) {
    let output = Command::new(BIN)
        .args(["cluster", command, name, "--url", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// `(state, partitions owned)` of member `name` as `node` sees it.
fn member_state(node: &TestNode, name: &str) -> Option<(String, u64)> {
    let status = node.client().cluster_status().ok()?;
    let member = status["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?
        .clone();
    Some((
        member["state"].as_str()?.to_string(),
        member["partitions_owned"].as_u64()?,
    ))
}

#[test]
fn a_leaving_node_hands_its_only_copies_off_and_can_then_be_stopped() {
    let mut cluster = Cluster::start_with(
        4,
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    one_copy_bucket(&cluster);
    let mut keys: Vec<String> = (0..200).map(|i| format!("before-{i}")).collect();
    for key in &keys {
        put(&cluster.nodes[0], key);
    }
    let held = metric(&cluster.nodes[3], "ringkv_aae_tree_keys");
    assert!(held > 10, "node4 holds the only copy of {held} keys");

    // Bad requests change nothing.
    let (ok, text) = leave(&cluster.nodes[1].url(), "nobody");
    assert!(!ok && text.contains("404"), "{text}");

    // While node3 is down, node4 cannot hand it the partitions it gets:
    // the leave waits, and a restart of node4 keeps it leaving.
    cluster.nodes[2].kill9();
    let (ok, text) = leave(&cluster.nodes[1].url(), "node4");
    assert!(ok && text.contains("layout_version"), "{text}");
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        eventually(
            "every node to see node4 leaving",
            Duration::from_secs(10),
            || (member_state(node, "node4")? == ("leaving".to_string(), 0)).then_some(()),
        );
    }
    let (ok, text) = leave(&cluster.nodes[0].url(), "node4");
    assert!(
        !ok && text.contains("409") && text.contains("already leaving"),
        "{text}"
    );
    eventually(
        "node4 to count its pending handoffs",
        Duration::from_secs(10),
        || (metric(&cluster.nodes[3], "ringkv_aae_handoff_pending") > 0).then_some(()),
    );
    cluster.nodes[3].stop();
    let seed = cluster.nodes[0].peer.clone();
    cluster.nodes[3].start(Some(&seed));
    eventually("node4 to be back", Duration::from_secs(10), || {
        member_state(&cluster.nodes[3], "node4")
    });
    std::thread::sleep(Duration::from_secs(1));
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        assert_eq!(
            member_state(node, "node4"),
            Some(("leaving".to_string(), 0)),
            "as {} sees it",
            node.name
        );
    }
    assert!(!cluster.nodes[3].log().contains("handoff complete"));
    // Its name is not free meanwhile: a new node by that name is refused.
    let scratch = tempfile::tempdir().unwrap();
    let mut namesake = TestNode::new("node4", scratch.path().join("node4"), &[]);
    assert!(!namesake.start_refused(Some(&seed)).success());
    assert!(
        namesake.log().contains("member that is leaving"),
        "{}",
        namesake.log()
    );

    // Writes go on meanwhile, to the members that stay.
    cluster.nodes[2].start(Some(&seed));
    for i in 0..50 {
        let key = format!("during-{i}");
        put(&cluster.nodes[i % 4], &key);
        keys.push(key);
    }

    // With node3 back, node4 hands everything off, leaves the layout and
    // stops by itself; its data dir does not start again.
    let status = cluster.nodes[3].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "node4 exited with {status}");
    let log = cluster.nodes[3].log();
    assert!(
        log.contains("handoff complete") && log.contains("left the cluster"),
        "{log}"
    );
    // node4 is gone from every layout.
    let staying: Vec<_> = cluster.nodes[..3].iter().map(TestNode::client).collect();
    wait_for_layout_agreement(&staying, 3);
    let status = cluster.nodes[3].start_refused(Some(&seed));
    assert!(!status.success());
    assert!(
        cluster.nodes[3].log().contains("left its cluster"),
        "{}",
        cluster.nodes[3].log()
    );

    // It took nothing with it. (A key of a partition that moved off node3,
    // which was down during the leave, is readable once node3 has handed
    // it off as well.)
    for key in &keys {
        eventually_readable(&cluster.nodes[1], key);
    }
}

/// `ringkv cluster remove`: a dead member is taken out without a handoff,
/// and anti-entropy restores N copies on the members that stay.
#[test]
fn a_dead_node_is_removed_and_its_copies_are_restored_on_the_others() {
    let mut cluster = Cluster::start_with(
        4,
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        cluster.nodes[0]
            .client()
            .put(
                "three",
                key.as_bytes(),
                key.as_bytes(),
                "text/plain",
                None,
                Some(3),
            )
            .unwrap();
    }
    // A running node is not removed: it should leave instead.
    let (ok, text) = remove(&cluster.nodes[0].url(), "node4");
    assert!(
        !ok && text.contains("409") && text.contains("cluster leave"),
        "{text}"
    );
    let (ok, text) = remove(&cluster.nodes[0].url(), "node1");
    assert!(!ok && text.contains("409"), "{text}");
    assert_eq!(
        member_state(&cluster.nodes[0], "node4"),
        Some(("valid".to_string(), 16))
    );

    cluster.nodes[3].kill9();
    eventually("node1 to see node4 down", Duration::from_secs(10), || {
        let (ok, text) = remove(&cluster.nodes[0].url(), "node4");
        assert!(ok || text.contains("409"), "{text}");
        ok.then_some(())
    });
    // node4 is gone from every layout.
    let staying: Vec<_> = cluster.nodes[..3].iter().map(TestNode::client).collect();
    wait_for_layout_agreement(&staying, 3);
    // With 3 members and N=3, every one of them ends up with every key.
    for node in &cluster.nodes[..3] {
        eventually(
            "anti-entropy to restore 3 copies",
            Duration::from_secs(60),
            || (metric(node, "ringkv_aae_tree_keys") >= keys.len() as u64).then_some(()),
        );
    }
    for key in &keys {
        match cluster.nodes[1]
            .client()
            .get("three", key.as_bytes(), Some(3))
        {
            Ok(GetResult::Found { value, .. }) => assert_eq!(value, key.as_bytes()),
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// A leave that loses the gossip to a concurrent layout change (here a
/// forged newer layout listing the leaver as valid, sent over the peer
/// port) is applied again by the nodes that saw it, and still completes.
#[test]
fn a_leave_lost_to_a_concurrent_change_is_applied_again() {
    let mut cluster = Cluster::start_with(
        4,
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    one_copy_bucket(&cluster);
    for i in 0..100 {
        put(&cluster.nodes[0], &format!("k-{i}"));
    }
    // With node3 down, node4's handoff cannot finish: it stays leaving.
    cluster.nodes[2].kill9();
    let (ok, text) = leave(&cluster.nodes[0].url(), "node4");
    assert!(ok, "{text}");
    for node in [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[3]] {
        eventually("node4 to be seen leaving", Duration::from_secs(10), || {
            (member_state(node, "node4")?.0 == "leaving").then_some(())
        });
    }

    // A newer layout in which node4 is valid, as a concurrent join elsewhere
    // that won the gossip would be.
    let status = cluster.nodes[0].client().cluster_status().unwrap();
    let version = status["layout_version"].as_u64().unwrap();
    let members: Vec<Member> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Member {
            id: u64::from_str_radix(m["id"].as_str().unwrap(), 16).unwrap(),
            name: m["name"].as_str().unwrap().to_string(),
            peer_addr: m["peer_addr"].as_str().unwrap().to_string(),
            http_addr: m["http_addr"].as_str().unwrap().to_string(),
            resp_addr: m["resp_addr"].as_str().unwrap().to_string(),
            state: MemberState::Valid,
        })
        .collect();
    let mut forged = Layout::new(64, 3, members[0].clone()).unwrap();
    for member in &members[1..] {
        forged = forged.with_member(member.clone()).unwrap();
    }
    while forged.version() <= version {
        let moved = Member {
            http_addr: "127.0.0.1:1".to_string(),
            ..members[0].clone()
        };
        forged = forged.with_member(moved).unwrap();
        forged = forged.with_member(members[0].clone()).unwrap();
    }
    assert_eq!(
        forged.member_by_name("node4").unwrap().state,
        MemberState::Valid
    );
    let gossip = Frame::Request {
        id: 1,
        body: PeerRequest::Gossip(GossipState {
            from: members[0].id,
            layout: forged.encode(),
            buckets: BucketRegistry::default(),
        }),
    };
    let frame = encode_frame(&gossip).unwrap();
    let mut peer = TcpStream::connect(&cluster.nodes[1].peer).unwrap();
    peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    peer.write_all(&frame).unwrap();
    let mut length = [0u8; 4];
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.read_exact(&mut length).unwrap(); // answered: the layout was taken in

    // The leave is applied again on top of the forged layout.
    for node in [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[3]] {
        eventually("node4 to be leaving again", Duration::from_secs(10), || {
            let status = node.client().cluster_status().ok()?;
            let newer = status["layout_version"].as_u64()? > forged.version();
            (newer && member_state(node, "node4")? == ("leaving".to_string(), 0)).then_some(())
        });
    }
    // And it completes once node3 is back.
    let seed = cluster.nodes[0].peer.clone();
    cluster.nodes[2].start(Some(&seed));
    let status = cluster.nodes[3].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "node4 exited with {status}");
    // The forged layout moved many partitions, and node3 holds the only
    // copy of some keys of partitions it no longer owns: those are readable
    // once it has handed them off too.
    for i in 0..100 {
        let key = format!("k-{i}");
        eventually_readable(&cluster.nodes[1], &key);
    }
}

/// Writes acknowledged while a node leaves (N=3, W=2, writers on every
/// node that stays) are all readable once it has gone.
#[test]
fn no_write_acknowledged_during_a_leave_is_lost() {
    let mut cluster = Cluster::start_with(
        4,
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    let writers = Writers::start(&cluster.nodes[..3], "three");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, text) = leave(&cluster.nodes[0].url(), "node4");
    assert!(ok, "{text}");
    let status = cluster.nodes[3].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "node4 exited with {status}");
    std::thread::sleep(Duration::from_millis(300));
    for key in &writers.stop().0 {
        match cluster.nodes[1].client().get("three", key.as_bytes(), None) {
            Ok(GetResult::Found { value, .. }) => assert_eq!(value, key.as_bytes()),
            other => panic!("{key} was acknowledged: {other:?}"),
        }
    }
}

/// One writer thread per node, each writing keys of its own to `bucket`
/// until stopped (bounded: 5,000 writes or 60 s), recording the
/// acknowledged ones.
struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Each thread's acknowledged keys, and how many writes failed.
    threads: Vec<std::thread::JoinHandle<(Vec<String>, u64)>>,
}

impl Writers {
    fn start(nodes: &[TestNode], bucket: &'static str) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = nodes
            .iter()
            .enumerate()
            .map(|(w, node)| {
                let client = node.client();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let started = std::time::Instant::now();
                    let (mut acked, mut failed) = (Vec::new(), 0);
                    for i in 0..5_000 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(60)
                        {
                            break;
                        }
                        let key = format!("w{w}-{i}");
                        let put = client.put(
                            bucket,
                            key.as_bytes(),
                            key.as_bytes(),
                            "text/plain",
                            None,
                            None,
                        );
                        match put {
                            Ok(_) => acked.push(key),
                            Err(_) => failed += 1,
                        }
                    }
                    (acked, failed)
                })
            })
            .collect();
        Writers { stop, threads }
    }

    /// Stops them: the acknowledged keys (at least 50 of them), and the
    /// number of failed writes (which may or may not have been stored).
    fn stop(self) -> (Vec<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut acked, mut failed) = (Vec::new(), 0);
        for thread in self.threads {
            let (keys, failures) = thread.join().unwrap();
            acked.extend(keys);
            failed += failures;
        }
        assert!(
            acked.len() > 50,
            "only {} writes were acknowledged",
            acked.len()
        );
        (acked, failed)
    }
}

/// After a join, the nodes that gave partitions to the joiner hand their
/// copies to it and then delete them: every key ends up stored once (N=1),
/// and every key stays readable.
#[test]
fn after_a_join_the_old_holders_hand_off_and_delete_their_copies() {
    let cluster = Cluster::start_with(
        3,
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    one_copy_bucket(&cluster);
    let keys: Vec<String> = (0..200).map(|i| format!("k-{i}")).collect();
    for key in &keys {
        put(&cluster.nodes[0], key);
    }
    let held = |nodes: &[TestNode]| -> u64 {
        nodes
            .iter()
            .map(|n| metric(n, "ringkv_aae_tree_keys"))
            .sum()
    };
    assert_eq!(held(&cluster.nodes), 200);

    // Writers on the old members keep going through the join and well past
    // the grace after which handed-off copies are deleted.
    let writers = Writers::start(&cluster.nodes, BUCKET);
    let scratch = tempfile::tempdir().unwrap();
    let mut joiner = TestNode::new(
        "node4",
        scratch.path().join("node4"),
        &["--aae-interval-ms", "200", "--aae-max-segments", "1024"],
    );
    joiner.start(Some(&cluster.nodes[0].peer.clone()));
    std::thread::sleep(Duration::from_secs(5));
    let (acked, failed) = writers.stop();
    // A failed write may have been stored: between these many keys exist.
    let least = (keys.len() + acked.len()) as u64;
    let most = least + failed;
    eventually("the joiner to be filled", Duration::from_secs(30), || {
        (metric(&joiner, "ringkv_aae_tree_keys") > 20).then_some(())
    });
    let counts = || -> Vec<u64> {
        cluster
            .nodes
            .iter()
            .chain([&joiner])
            .map(|n| metric(n, "ringkv_aae_tree_keys"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(least..=most).contains(&counts().iter().sum::<u64>()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{least}..={most} keys; stored per node: {:?}; handoffs pending: {:?}",
            counts(),
            cluster
                .nodes
                .iter()
                .map(|n| metric(n, "ringkv_aae_handoff_pending"))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dropped: u64 = cluster
        .nodes
        .iter()
        .map(|n| metric(n, "ringkv_aae_keys_dropped_total"))
        .sum();
    assert!(dropped > 20, "{dropped} keys dropped");
    for key in keys.iter().chain(&acked) {
        match joiner.client().get(BUCKET, key.as_bytes(), None) {
            Ok(GetResult::Found { value, .. }) => assert_eq!(value, key.as_bytes()),
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// Right after a join, before any handoff (anti-entropy is made too slow
/// to run), the joiner owns partitions whose only copies (N=1) are still
/// on their old owners: reads ask those holders too, so every key stays
/// readable through every node, and a write that carries the context read
/// supersedes the holder's copy instead of becoming its sibling.
#[test]
fn keys_not_yet_handed_off_to_a_joiner_stay_readable() {
    let slow_aae = ["--aae-interval-ms", "3600000"];
    let cluster = Cluster::start_with(3, &slow_aae);
    one_copy_bucket(&cluster);
    let keys: Vec<String> = (0..200).map(|i| format!("k-{i}")).collect();
    for key in &keys {
        put(&cluster.nodes[0], key);
    }
    let scratch = tempfile::tempdir().unwrap();
    let mut joiner = TestNode::new("node4", scratch.path().join("node4"), &slow_aae);
    joiner.start(Some(&cluster.nodes[0].peer.clone()));
    let clients: Vec<_> = cluster
        .nodes
        .iter()
        .chain([&joiner])
        .map(TestNode::client)
        .collect();
    wait_for_layout_agreement(&clients, 4);
    let (_, owned) = member_state(&joiner, "node4").unwrap();
    assert!(owned > 0, "node4 owns {owned} partitions");
    for node in cluster.nodes.iter().chain([&joiner]) {
        let holders = metric(node, "ringkv_handoff_holders");
        assert!(holders > 0, "{} asks {holders} old holders", node.name);
    }
    assert_eq!(
        metric(&joiner, "ringkv_aae_tree_keys"),
        0,
        "nothing handed off yet"
    );

    let read_all = |nodes: &[&TestNode]| {
        for node in nodes {
            for key in &keys {
                match node.client().get(BUCKET, key.as_bytes(), None) {
                    Ok(GetResult::Found { value, .. }) => assert_eq!(value, key.as_bytes()),
                    other => panic!("{key} through {}: {other:?}", node.name),
                }
            }
        }
    };
    // The holders are remembered across a restart of the new owner. (Read
    // first through the old nodes, the answers would repair the new owner.)
    joiner.stop();
    joiner.start(None);
    read_all(&[
        &joiner,
        &cluster.nodes[0],
        &cluster.nodes[1],
        &cluster.nodes[2],
    ]);
    for key in &keys {
        let Ok(GetResult::Found { context, .. }) =
            joiner.client().get(BUCKET, key.as_bytes(), None)
        else {
            panic!("{key} through node4");
        };
        let value = format!("new-{key}");
        joiner
            .client()
            .put(
                BUCKET,
                key.as_bytes(),
                value.as_bytes(),
                "text/plain",
                Some(&context),
                None,
            )
            .unwrap();
        match cluster.nodes[0].client().get(BUCKET, key.as_bytes(), None) {
            Ok(GetResult::Found { value: read, .. }) => assert_eq!(read, value.as_bytes()),
            other => panic!("{key} after the write: {other:?}"),
        }
    }
    assert!(
        metric(&joiner, "ringkv_aae_tree_keys") > 0,
        "node4 stored the writes of its partitions"
    );
}
