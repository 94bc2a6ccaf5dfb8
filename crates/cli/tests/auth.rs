//! Peer authentication with a cluster secret (`--cluster-secret-file`), on
//! real processes: members that share the secret form a cluster and
//! replicate; a node with another secret, or none, cannot join; a raw
//! connection that skips the handshake changes nothing; a secret file that
//! others can read, or a short secret, stops the server with a clear error.
//! And the client password (`--client-password-file`): HTTP and RESP
//! clients without it are turned away before anything is done.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringkv_client::{Client, ClientError, GetResult};
use ringkv_wire::PROTOCOL_VERSION;
use ringkv_wire::auth::MAGIC;
use support::{
    BIN, Cluster, TestNode, http_get, intruder_join_frame, node_with_password, read_reply,
    refused_start, secret_file,
};

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
    let mut peer = TcpStream::connect(peer_addr).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.write_all(&intruder_join_frame()).unwrap();
    // An answer is a frame: a length, then the protocol version and kind 1
    // (a response). A node with a secret sends its challenge instead, and
    // hangs up.
    let mut head = [0u8; 6];
    match peer.read_exact(&mut head) {
        Ok(()) => !head.starts_with(&MAGIC[..6]) && head[4..6] == [PROTOCOL_VERSION, 1],
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
    let seed = &cluster.nodes[0].peer;
    let wrong = ["--cluster-secret-file", other.to_str().unwrap()];
    refused_start(
        dir.path(),
        "node3",
        &wrong,
        Some(seed),
        "do not share a cluster secret",
    );
    assert!(
        cluster.nodes[0]
            .log()
            .contains("peer failed authentication")
    );

    // No secret: refused, saying that the cluster requires one.
    refused_start(
        dir.path(),
        "node4",
        &[] as &[&str],
        Some(seed),
        "requires a cluster secret",
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
    let args = ["--cluster-secret-file", loose.to_str().unwrap()];
    refused_start(dir.path(), "node1", &args, None, "chmod 600");

    let short = secret_file(dir.path(), "short", "tooshort\n", 0o600);
    let args = ["--cluster-secret-file", short.to_str().unwrap()];
    refused_start(dir.path(), "node1b", &args, None, "at least 16 bytes");
}

/// Sends RESP commands one after the other on one connection: the replies.
fn resp_session(addr: &str, commands: &[&[&[u8]]]) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    commands
        .iter()
        .map(|args| {
            let mut request = format!("*{}\r\n", args.len()).into_bytes();
            for arg in *args {
                request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                request.extend_from_slice(arg);
                request.extend_from_slice(b"\r\n");
            }
            stream.write_all(&request).unwrap();
            String::from_utf8_lossy(&read_reply(&mut stream)).into_owned()
        })
        .collect()
}

fn unauthorized<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Server { status: 401, .. }))
}

#[test]
fn a_client_password_turns_away_http_and_resp_clients_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_password(dir.path(), "open-sesame-42");
    node.client()
        .put("b", b"k", b"v", "text/plain", None, None)
        .unwrap();

    // HTTP without the password, or with another: 401, nothing written.
    let anonymous = Client::new(&node.url());
    assert!(unauthorized(anonymous.put(
        "b",
        b"k",
        b"x",
        "text/plain",
        None,
        None
    )));
    assert!(unauthorized(anonymous.get("b", b"k", None)));
    assert!(unauthorized(anonymous.cluster_status()));
    let wrong = Client::with_password(&node.url(), Some("open-sesame-43"));
    assert!(unauthorized(wrong.put(
        "b",
        b"k",
        b"x",
        "text/plain",
        None,
        None
    )));
    match node.client().get("b", b"k", None).unwrap() {
        GetResult::Found { value, .. } => assert_eq!(value, b"v"),
        other => panic!("{other:?}"),
    }
    // Basic authentication with any user name, as `curl -u :PASSWORD`.
    let mut http = TcpStream::connect(&node.http).unwrap();
    http.write_all(
        b"GET /v1/kv/b/k HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Om9wZW4tc2VzYW1lLTQy\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Health and metrics stay open, for probes and scrapers.
    assert_eq!(http_get(&format!("{}/healthz", node.url())), "ok");
    assert!(http_get(&format!("{}/metrics", node.url())).contains("ringkv_"));

    // The CLI takes it from RINGKV_PASSWORD.
    let cli = |password: Option<&str>| {
        let mut command = std::process::Command::new(BIN);
        command.args(["get", "b", "k", "--url", &node.url()]);
        command.env_remove("RINGKV_PASSWORD");
        if let Some(password) = password {
            command.env("RINGKV_PASSWORD", password);
        }
        command.output().unwrap()
    };
    let with = cli(Some("open-sesame-42"));
    assert!(with.status.success() && with.stdout == b"v", "{with:?}");
    let without = cli(None);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("401"),
        "{without:?}"
    );

    // RESP: nothing but AUTH until the password is given.
    let replies = resp_session(
        &node.resp,
        &[
            &[b"GET", b"k"],
            &[b"SET", b"k", b"x"],
            &[b"AUTH", b"open-sesame-43"],
            &[b"AUTH", b"someone", b"open-sesame-42"],
            &[b"AUTH", b"default", b"open-sesame-42"],
            &[b"SET", b"k", b"y"],
            &[b"GET", b"k"],
        ],
    );
    assert!(replies[0].starts_with("-NOAUTH"), "{replies:?}");
    assert!(replies[1].starts_with("-NOAUTH"), "{replies:?}");
    assert!(replies[2].starts_with("-WRONGPASS"), "{replies:?}");
    assert!(replies[3].starts_with("-WRONGPASS"), "{replies:?}");
    assert_eq!(replies[4], "+OK\r\n");
    assert_eq!(replies[5], "+OK\r\n");
    assert_eq!(replies[6], "$1\r\ny\r\n");
    let replies = resp_session(
        &node.resp,
        &[&[b"AUTH", b"open-sesame-42"], &[b"GET", b"k"]],
    );
    assert_eq!(replies, ["+OK\r\n", "$1\r\ny\r\n"]);
}
