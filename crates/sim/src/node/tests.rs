//! `SimNode` driven by hand: inputs in, effects out.

use ringkv_core::bucket::BucketProps;
use ringkv_core::causality::VersionVector;
use ringkv_core::message::{ClientOp, ClientReply, OpError, PeerRequest, PeerResponse};
use ringkv_storage::MemoryStorage;

use super::*;
use crate::config::{SIM_BUCKET, SimConfig};
use crate::rng::SimRng;

fn cluster(nodes: usize, w: u32) -> Cluster {
    let mut config = SimConfig::new(7, nodes);
    config.bucket = BucketProps {
        w,
        ..BucketProps::default()
    };
    Cluster::new(&mut SimRng::new(7), &config)
}

fn put(key: &str) -> ClientOp {
    ClientOp::Put {
        bucket: SIM_BUCKET.to_string(),
        key: key.as_bytes().to_vec(),
        value: Some(b"v".to_vec()),
        content_type: "text/plain".to_string(),
        context: VersionVector::new(),
        w: None,
        pw: None,
        timeout_ms: 500,
    }
}

/// The requests sent, as (to, id, request).
fn requests(effects: &[Effect]) -> Vec<(NodeId, RequestId, PeerRequest)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                to,
                payload: Payload::Request { id, request },
            } => Some((*to, *id, request.clone())),
            _ => None,
        })
        .collect()
}

fn client_replies(effects: &[Effect]) -> Vec<ClientReply> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ReplyToClient { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

fn ack(id: RequestId) -> Payload {
    Payload::Response {
        id,
        response: Ok(PeerResponse::ReplicaPutDone),
    }
}

/// A coordinator (the key's first primary) that committed and synced
/// `key` and sent it to the other primaries; returns the node, the replica
/// requests and the round's timer.
fn coordinated_put(
    cluster: &Cluster,
    key: &str,
) -> (SimNode, Vec<(NodeId, RequestId, PeerRequest)>, Timer) {
    let (mut node, sent, timer) = written_put(cluster, key);
    let mut out = Vec::new();
    node.synced(cluster, 1, &mut out);
    assert!(client_replies(&out).is_empty(), "{out:?}");
    (node, sent, timer)
}

/// As `coordinated_put`, but the coordinator's own copy is written and
/// not synced yet.
fn written_put(
    cluster: &Cluster,
    key: &str,
) -> (SimNode, Vec<(NodeId, RequestId, PeerRequest)>, Timer) {
    let coordinator = cluster.primaries(SIM_BUCKET, key.as_bytes())[0];
    let mut node = SimNode::new(
        coordinator,
        MemoryStorage::new(),
        0,
        0,
        cluster,
        SimRng::new(1),
    );
    let mut out = Vec::new();
    node.execute(cluster, 1, put(key), ReplyTo::Client(0), true, &mut out);
    assert!(
        requests(&out).is_empty(),
        "nothing is sent before the commit"
    );
    assert!(matches!(out[..], [Effect::CommitNeeded]));
    out.clear();
    node.commit(cluster, 1, &mut out);
    assert!(
        out.iter().any(|e| matches!(e, Effect::SyncNeeded)),
        "the batch waits for its sync: {out:?}"
    );
    let sent = requests(&out);
    assert_eq!(
        sent.len(),
        2,
        "the other two primaries get the object before the sync"
    );
    assert!(
        sent.iter()
            .all(|(_, _, r)| matches!(r, PeerRequest::ReplicaPut { .. }))
    );
    assert!(client_replies(&out).is_empty());
    let timer = out
        .iter()
        .find_map(|e| match e {
            Effect::Timer { timer, after_ms } => {
                assert_eq!(*after_ms, 500, "the round times out after timeout_ms");
                Some(*timer)
            }
            _ => None,
        })
        .expect("a put round sets a timer");
    (node, sent, timer)
}

#[test]
fn a_put_is_answered_after_w_acks_and_a_duplicate_ack_counts_once() {
    let cluster = cluster(3, 3);
    let (mut node, sent, _) = coordinated_put(&cluster, "k");
    let mut out = Vec::new();
    let (first, first_id, _) = sent[0];
    node.receive(&cluster, 2, first, ack(first_id), &mut out);
    node.receive(&cluster, 3, first, ack(first_id), &mut out);
    assert!(client_replies(&out).is_empty(), "2 of 3 acks: {out:?}");
    let (second, second_id, _) = sent[1];
    node.receive(&cluster, 4, second, ack(second_id), &mut out);
    assert!(matches!(
        client_replies(&out)[..],
        [ClientReply::Written { .. }]
    ));
}

#[test]
fn the_coordinators_own_copy_counts_once_synced() {
    let cluster = cluster(3, 2);
    let (mut node, sent, _) = written_put(&cluster, "k");
    let mut out = Vec::new();
    node.receive(&cluster, 2, sent[0].0, ack(sent[0].1), &mut out);
    assert!(
        client_replies(&out).is_empty(),
        "one replica synced, the coordinator's copy is not yet: {out:?}"
    );
    node.synced(&cluster, 3, &mut out);
    assert!(matches!(
        client_replies(&out)[..],
        [ClientReply::Written { .. }]
    ));
}

#[test]
fn a_crash_before_the_sync_gives_the_restarted_coordinator_a_new_actor() {
    let cluster = cluster(3, 2);
    let storage = MemoryStorage::new();
    let coordinator = cluster.primaries(SIM_BUCKET, b"k")[0];
    let mut node = SimNode::new(coordinator, storage.clone(), 0, 0, &cluster, SimRng::new(1));
    let mut out = Vec::new();
    node.execute(&cluster, 1, put("k"), ReplyTo::Client(0), true, &mut out);
    out.clear();
    node.commit(&cluster, 1, &mut out);
    let dot_of = |request: &PeerRequest| match request {
        PeerRequest::ReplicaPut { object, .. } => Object::decode(object).unwrap().siblings()[0].dot,
        other => panic!("not a replica put: {other:?}"),
    };
    let first = dot_of(&requests(&out)[0].2);
    // The process dies before its sync: its copy is gone, the others
    // hold the write.
    storage.crash();
    let partition = cluster.partition(SIM_BUCKET, b"k");
    assert_eq!(
        read_object(&storage, partition, SIM_BUCKET, b"k").unwrap(),
        None
    );
    let mut node = SimNode::new(coordinator, storage, 1, 2, &cluster, SimRng::new(2));
    out.clear();
    node.execute(&cluster, 3, put("k"), ReplyTo::Client(1), true, &mut out);
    out.clear();
    node.commit(&cluster, 3, &mut out);
    let second = dot_of(&requests(&out)[0].2);
    assert_ne!(second, first, "a dot is never issued twice");
    assert_ne!(second.replica, coordinator);
}

#[test]
fn an_unreachable_quorum_is_answered_once_the_remaining_replica_answered() {
    let cluster = cluster(3, 3);
    let (mut node, sent, _) = coordinated_put(&cluster, "k");
    let mut out = Vec::new();
    let refused = Payload::Response {
        id: sent[0].1,
        response: Err(TransportError::ConnectionRefused),
    };
    node.receive(&cluster, 2, sent[0].0, refused, &mut out);
    assert!(
        client_replies(&out).is_empty(),
        "W=3 is unreachable, but one replica is still out"
    );
    node.receive(&cluster, 3, sent[1].0, ack(sent[1].1), &mut out);
    assert_eq!(
        client_replies(&out),
        vec![ClientReply::Failed(OpError::Unavailable {
            got: 2,
            needed: 3
        })]
    );
}

#[test]
fn the_round_timer_answers_a_put_short_of_w() {
    let cluster = cluster(3, 2);
    let (mut node, sent, round) = coordinated_put(&cluster, "k");
    let mut out = Vec::new();
    node.timer(&cluster, round, &mut out);
    assert_eq!(
        client_replies(&out),
        vec![ClientReply::Failed(OpError::Unavailable {
            got: 1,
            needed: 2
        })]
    );
    // A late ack changes nothing.
    out.clear();
    node.receive(&cluster, 600, sent[0].0, ack(sent[0].1), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_put_at_a_non_primary_is_forwarded_to_the_next_primary_when_one_refuses() {
    let cluster = cluster(5, 2);
    let key = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| {
            !cluster
                .primaries(SIM_BUCKET, k.as_bytes())
                .contains(&cluster.ids[0])
        })
        .expect("with 5 nodes some key avoids node 0");
    let primaries = cluster.primaries(SIM_BUCKET, key.as_bytes());
    let mut node = SimNode::new(
        cluster.ids[0],
        MemoryStorage::new(),
        0,
        0,
        &cluster,
        SimRng::new(1),
    );
    let mut out = Vec::new();
    node.execute(&cluster, 1, put(&key), ReplyTo::Client(9), true, &mut out);
    let sent = requests(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, primaries[0]);
    assert!(matches!(sent[0].2, PeerRequest::Coordinate(_)));
    out.clear();
    let refused = Payload::Response {
        id: sent[0].1,
        response: Err(TransportError::ConnectionRefused),
    };
    node.receive(&cluster, 2, primaries[0], refused, &mut out);
    let sent = requests(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, primaries[1], "the next primary is tried");
    out.clear();
    let reply = ClientReply::Written {
        context: VersionVector::new(),
    };
    let coordinated = Payload::Response {
        id: sent[0].1,
        response: Ok(PeerResponse::Coordinated(reply.clone())),
    };
    node.receive(&cluster, 3, primaries[1], coordinated, &mut out);
    assert_eq!(client_replies(&out), vec![reply]);
}

/// Carries effects between `nodes` at once (messages delivered, commits
/// made) until none is left; timers and client replies are dropped.
fn run_until_quiet(cluster: &Cluster, nodes: &mut [SimNode], from: NodeId, effects: Vec<Effect>) {
    let mut work: Vec<(NodeId, Effect)> = effects.into_iter().map(|e| (from, e)).collect();
    while let Some((at, effect)) = work.pop() {
        let mut out = Vec::new();
        let target = match effect {
            Effect::Send { to, payload } => {
                let node = nodes.iter_mut().find(|n| n.id == to).expect("a member");
                node.receive(cluster, 1, at, payload, &mut out);
                to
            }
            Effect::CommitNeeded => {
                let node = nodes.iter_mut().find(|n| n.id == at).expect("a member");
                node.commit(cluster, 1, &mut out);
                at
            }
            Effect::SyncNeeded => {
                let node = nodes.iter_mut().find(|n| n.id == at).expect("a member");
                node.synced(cluster, 1, &mut out);
                at
            }
            Effect::Timer { .. } | Effect::ReplyToClient { .. } => continue,
        };
        work.extend(out.into_iter().map(|e| (target, e)));
    }
}

#[test]
fn anti_entropy_copies_a_key_to_the_primaries_that_lack_it() {
    use ringkv_core::causality::{ConflictMode, NewVersion};
    use ringkv_storage::{Durability, Space, Storage, WriteBatch};

    let cluster = cluster(3, 2);
    let object = Object::update(
        None,
        &VersionVector::new(),
        NewVersion {
            value: Some(b"v".to_vec()),
            content_type: "text/plain".to_string(),
            now_ms: 1,
            expires_ms: None,
        },
        cluster.ids[0],
        ConflictMode::Siblings,
        10,
    )
    .unwrap();
    let partition = cluster.partition(SIM_BUCKET, b"k");
    let holder = MemoryStorage::new();
    let mut batch = WriteBatch::new();
    batch.put(
        Space::Data(partition),
        object_key(SIM_BUCKET, b"k"),
        object.encode(),
    );
    holder.write(&batch, Durability::Sync).unwrap();
    let storages = [holder, MemoryStorage::new(), MemoryStorage::new()];
    let mut nodes: Vec<SimNode> = cluster
        .ids
        .iter()
        .zip(&storages)
        .map(|(&id, storage)| SimNode::new(id, storage.clone(), 0, 0, &cluster, SimRng::new(id)))
        .collect();
    let n = cluster.n() as u32;
    assert!(
        nodes[0].merkle_root(partition, n).is_some(),
        "rebuilt at start"
    );
    assert_eq!(nodes[1].merkle_root(partition, n), None);
    // Two passes: one exchange with each other primary in turn.
    for _ in 0..2 {
        let mut out = Vec::new();
        nodes[0].anti_entropy_tick(&cluster, 1, &mut out);
        assert!(!out.is_empty(), "a pass starts");
        let from = nodes[0].id;
        run_until_quiet(&cluster, &mut nodes, from, out);
    }
    for storage in &storages {
        let copy = read_object(storage, partition, SIM_BUCKET, b"k").unwrap();
        assert_eq!(copy.as_ref(), Some(&object));
    }
    let root = nodes[0].merkle_root(partition, n);
    assert!(
        nodes
            .iter_mut()
            .all(|node| node.merkle_root(partition, n) == root)
    );
    assert_eq!(nodes[0].stats.anti_entropy_exchanges, 2);
    assert_eq!(nodes[0].stats.anti_entropy_keys_repaired, 2);
    // In sync: the next pass compares roots and repairs nothing.
    let mut out = Vec::new();
    nodes[0].anti_entropy_tick(&cluster, 1, &mut out);
    let from = nodes[0].id;
    run_until_quiet(&cluster, &mut nodes, from, out);
    assert_eq!(nodes[0].stats.anti_entropy_exchanges, 3);
    assert_eq!(nodes[0].stats.anti_entropy_keys_repaired, 2);
}
