//! Peer authentication with a cluster secret (`--cluster-secret-file`), on
//! real processes: members that share the secret form a cluster and
//! replicate; a node with another secret, or none, cannot join; a raw
//! connection that skips the handshake changes nothing; a secret file that
//! others can read, or a short secret, stops the server with a clear error.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringkv_client::GetResult;
use ringkv_core::message::PeerRequest;
use ringkv_core::ring::{Member, MemberState};
use ringkv_wire::auth::MAGIC;
use ringkv_wire::{Frame, encode_frame};
use support::{Cluster, TestNode};

fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn members(node: &TestNode) -> usize {
    node.client().cluster_status().unwrap()["members"]
        .as_array()
        .unwrap()
        .len()
}

/// Sends a `Join` of a made-up member straight to `peer_addr`, without
/// any handshake, as anything that reaches the peer port could. True if
/// the node answered.
fn raw_join(peer_addr: &str) -> bool {
    let join = Frame::Request {
        id: 1,
        body: PeerRequest::Join {
            member: Member {
                id: 0xbad,
                name: "intruder".into(),
                peer_addr: "127.0.0.1:9".into(),
                http_addr: "127.0.0.1:9".into(),
                resp_addr: "127.0.0.1:9".into(),
                state: MemberState::Valid,
            },
        },
    };
    let frame = encode_frame(&join).unwrap();
    let mut peer = TcpStream::connect(peer_addr).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    peer.write_all(&frame).unwrap();
    // An answer is a frame: a length, then the version byte 1 and kind 1
    // (a response). A node with a secret sends its challenge instead, and
    // hangs up.
    let mut head = [0u8; 6];
    match peer.read_exact(&mut head) {
        Ok(()) => !head.starts_with(&MAGIC[..6]) && head[4..6] == [1, 1],
        Err(_) => false,
    }
}

#[test]
fn only_members_with_the_cluster_secret_join_and_talk() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret", "our-cluster-secret-0123\n", 0o600);
    let secret_arg = secret.to_str().unwrap();
    let cluster = Cluster::start_with(2, &["--cluster-secret-file", secret_arg]);
    assert!(
        cluster.nodes[0]
            .log()
            .contains("authenticate with the cluster secret")
    );

    // The members replicate over their authenticated connections (n is
    // capped at 2: both hold every key).
    cluster.nodes[0]
        .client()
        .put("b", b"k", b"v", "text/plain", None, Some(2))
        .unwrap();
    match cluster.nodes[1].client().get("b", b"k", Some(2)) {
        Ok(GetResult::Found { value, .. }) => assert_eq!(value, b"v"),
        other => panic!("{other:?}"),
    }

    // Another secret: refused at once, saying why.
    let other = secret_file(dir.path(), "other", "not-our-cluster-secret", 0o600);
    let mut wrong = TestNode::new(
        "node3",
        dir.path().join("node3"),
        &["--cluster-secret-file", other.to_str().unwrap()],
    );
    let status = wrong.start_refused(Some(&cluster.nodes[0].peer));
    assert!(!status.success());
    assert!(
        wrong.log().contains("do not share a cluster secret"),
        "{}",
        wrong.log()
    );
    assert!(
        cluster.nodes[0]
            .log()
            .contains("peer failed authentication")
    );

    // No secret: refused, saying that the cluster requires one.
    let mut none = TestNode::new("node4", dir.path().join("node4"), &[]);
    let status = none.start_refused(Some(&cluster.nodes[0].peer));
    assert!(!status.success());
    assert!(
        none.log().contains("requires a cluster secret"),
        "{}",
        none.log()
    );

    // A raw request that skips the handshake is not even read.
    assert!(
        !raw_join(&cluster.nodes[0].peer),
        "answered without a handshake"
    );
    std::thread::sleep(Duration::from_millis(500));
    for node in &cluster.nodes {
        assert_eq!(members(node), 2, "{} took in a member", node.name);
    }

    // The same raw request to a node without a secret is answered and
    // taken in: the attack above is real.
    let open = Cluster::start(1);
    assert!(raw_join(&open.nodes[0].peer));
    assert_eq!(members(&open.nodes[0]), 2);
}

#[test]
fn a_secret_file_others_can_read_or_a_short_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let loose = secret_file(dir.path(), "loose", "our-cluster-secret-0123", 0o644);
    let mut node = TestNode::new(
        "node1",
        dir.path().join("node1"),
        &["--cluster-secret-file", loose.to_str().unwrap()],
    );
    assert!(!node.start_refused(None).success());
    assert!(node.log().contains("chmod 600"), "{}", node.log());

    let short = secret_file(dir.path(), "short", "tooshort\n", 0o600);
    let mut node = TestNode::new(
        "node1",
        dir.path().join("node1b"),
        &["--cluster-secret-file", short.to_str().unwrap()],
    );
    assert!(!node.start_refused(None).success());
    assert!(node.log().contains("at least 16 bytes"), "{}", node.log());
}
