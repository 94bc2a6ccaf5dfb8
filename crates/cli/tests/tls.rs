//! Peer TLS (`--peer-tls-cert-file`, `--peer-tls-key-file`,
//! `--peer-tls-ca-file`, with certificates made by `ringkv cert`), on real
//! processes: members with certificates of the cluster's CA form a
//! cluster and replicate; a node with a certificate of another CA, or
//! without TLS, cannot join and is told why; a TLS node cannot join a
//! plain cluster; a plain frame sent to a TLS port is not read; what
//! crosses the wire is encrypted (a relay in between sees no plain text);
//! bad TLS files stop the server with a clear error; a member whose
//! certificate the CRL revokes (`ringkv cert revoke`,
//! `--peer-tls-crl-file`) is cut off at once and cannot join again, with
//! no restart of the others. And client TLS
//! (`--client-tls-cert-file`, `--client-tls-key-file`): HTTPS and RESP over
//! TLS for clients that trust the CA, nothing for plain ones; a client whose
//! certificate is revoked is refused and loses the connections it has.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringkv_client::GetResult;
use support::{
    BIN, Cluster, TestNode, eventually, intruder_join_frame, liveness, refused_start,
    wait_for_layout_agreement,
};

/// Runs `ringkv cert ...`, which must succeed.
fn cert(args: &[&str]) {
    if let Err(stderr) = cert_output(args) {
        panic!("ringkv cert {args:?}: {stderr}");
    }
}

/// A CA in `dir` and a certificate for 127.0.0.1 for each of `names`.
fn ca_with_nodes(dir: &Path, names: &[&str]) -> PathBuf {
    let ca = dir.to_str().unwrap();
    cert(&["create-ca", "--dir", ca]);
    for name in names {
        cert(&[
            "create-node",
            "--dir",
            ca,
            "--name",
            name,
            "--host",
            "127.0.0.1",
        ]);
    }
    dir.to_path_buf()
}

fn tls_args(ca: &Path, name: &str) -> Vec<String> {
    let file = |f: String| ca.join(f).to_str().unwrap().to_string();
    vec![
        "--peer-tls-cert-file".into(),
        file(format!("{name}.crt")),
        "--peer-tls-key-file".into(),
        file(format!("{name}.key")),
        "--peer-tls-ca-file".into(),
        file("ca.crt".into()),
    ]
}

fn node(dir: &Path, name: &str, args: &[String]) -> TestNode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestNode::new(name, dir.join(name), &args)
}

/// Sends a plain `Join` frame to `peer_addr`: what the node sends back
/// before it closes the connection (at most 64 bytes).
fn plain_join(peer_addr: &str) -> Vec<u8> {
    let mut peer = TcpStream::connect(peer_addr).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.write_all(&intruder_join_frame()).unwrap();
    let mut reply = Vec::new();
    let _ = peer.take(64).read_to_end(&mut reply);
    reply
}

/// A TCP relay to `target` that keeps a copy of every byte either way:
/// what an on-path observer sees. Returns its address.
fn relay(target: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (target, record) = (target.to_string(), seen.clone());
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = TcpStream::connect(&target) else {
                return;
            };
            for (mut from, mut to) in [
                (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                (outbound, inbound),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The value of key `k` of bucket `b` read through `client` (at `r`),
/// which must be found.
fn value_of(client: &ringkv_client::Client, r: Option<u32>) -> Vec<u8> {
    match client.get("b", b"k", r) {
        Ok(GetResult::Found { value, .. }) => value,
        other => panic!("{other:?}"),
    }
}

/// A node (not started) whose client ports speak TLS with node1's
/// certificate of `ca`, also started with `extra`; the harness's client
/// trusts `ca`.
fn client_tls_node(dir: &Path, ca: &Path, extra: &[&str]) -> TestNode {
    let (cert, key) = (ca.join("node1.crt"), ca.join("node1.key"));
    let mut args = vec![
        "--client-tls-cert-file",
        cert.to_str().unwrap(),
        "--client-tls-key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut node = TestNode::new("node1", dir.join("node1"), &args);
    node.cacert = Some(ca.join("ca.crt"));
    node
}

/// A write through `writer` that waits for `n` replicas (None: the
/// bucket's w) is read back through `reader` from as many.
fn assert_round_trip(
    writer: &ringkv_client::Client,
    reader: &ringkv_client::Client,
    n: Option<u32>,
) {
    writer.put("b", b"k", b"v", "text/plain", None, n).unwrap();
    assert_eq!(value_of(reader, n), b"v");
}

/// Two members replicate (n is capped at 2: both hold every key).
fn assert_replicate(from: &TestNode, to: &TestNode) {
    assert_round_trip(&from.client(), &to.client(), Some(2));
}

fn members(node: &TestNode) -> usize {
    node.client().cluster_status().unwrap()["members"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn only_members_with_certificates_of_the_cluster_ca_join_and_talk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_nodes(&dir.path().join("ca"), &["node1", "node2", "node3"]);
    let other = ca_with_nodes(&dir.path().join("other-ca"), &["intruder"]);

    let mut node1 = node(dir.path(), "node1", &tls_args(&ca, "node1"));
    node1.start(None);
    let mut node2 = node(dir.path(), "node2", &tls_args(&ca, "node2"));
    node2.start(Some(&node1.peer));
    wait_for_layout_agreement(&[node1.client(), node2.client()], 2);
    assert!(node1.log().contains("peer connections use TLS"));

    // They replicate over TLS.
    assert_replicate(&node1, &node2);

    // A certificate of another CA: refused, saying why; so is a node
    // without TLS.
    let why = "TLS with the peer failed";
    let intruder = tls_args(&other, "intruder");
    refused_start(dir.path(), "intruder", &intruder, Some(&node1.peer), why);
    assert!(node1.log().contains("TLS handshake"), "{}", node1.log());
    refused_start(dir.path(), "plain", &[] as &[&str], Some(&node1.peer), why);
    assert!(node1.log().contains("connected without TLS"));

    // A plain frame is not read: the answer is the TLS refusal, no frame.
    let reply = plain_join(&node1.peer);
    assert!(
        reply.starts_with(ringkv_node::tls::TLS_REQUIRED),
        "{reply:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(members(&node1), 2);
    assert_eq!(members(&node2), 2);

    // Encrypted on the wire: node3 joins through a relay, which then saw
    // the seed's answer (the layout, every member's addresses) only as
    // cipher text.
    let (through, seen) = relay(&node1.peer);
    let mut node3 = node(dir.path(), "node3", &tls_args(&ca, "node3"));
    node3.start(Some(&through));
    wait_for_layout_agreement(&[node1.client(), node2.client(), node3.client()], 3);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 1000, "the join went through the relay");
    assert!(!contains(&seen, &node2.http), "plain text on the wire");

    // And a TLS node cannot join a plain cluster, whose join is plain text
    // (the control for the check above).
    let open = Cluster::start(1);
    let args = tls_args(&ca, "node2");
    refused_start(dir.path(), "node4", &args, Some(&open.nodes[0].peer), why);
    assert_eq!(members(&open.nodes[0]), 1);
    let (through, seen) = relay(&open.nodes[0].peer);
    let mut node5 = node(dir.path(), "node5", &[]);
    node5.start(Some(&through));
    assert_eq!(members(&open.nodes[0]), 2);
    assert!(contains(&seen.lock().unwrap(), &open.nodes[0].http));
}

/// Runs `ringkv cert ...`: its standard output, or its standard error if
/// it fails.
fn cert_output(args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .env_remove("RUST_BACKTRACE")
        .arg("cert")
        .args(args)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match out.status.success() {
        true => Ok(text(&out.stdout)),
        false => Err(text(&out.stderr)),
    }
}

/// A write of `key` (its own name as value) through `writer` that waits
/// for `n` replicas is read back through `reader` from as many.
fn write_and_read(
    writer: &ringkv_client::Client,
    reader: &ringkv_client::Client,
    key: &[u8],
    n: Option<u32>,
) {
    writer.put("b", key, key, "text/plain", None, n).unwrap();
    match reader.get("b", key, n) {
        Ok(GetResult::Found { value, .. }) => assert_eq!(value, key),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_revoked_member_is_cut_off_at_once_and_cannot_join_again() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_nodes(&dir.path().join("ca"), &["node1", "node2", "node3"]);
    let ca_dir = ca.to_str().unwrap();
    // A CRL that revokes nothing yet, read by every node.
    let out = cert_output(&["revoke", "--dir", ca_dir]).unwrap();
    assert!(out.contains("0 newly revoked, 0 in all"), "{out}");
    let crl = ca.join("crl.pem");
    let args = |name: &str| {
        let mut args = tls_args(&ca, name);
        args.extend(["--peer-tls-crl-file".into(), crl.to_str().unwrap().into()]);
        args
    };
    let mut node1 = node(dir.path(), "node1", &args("node1"));
    node1.start(None);
    let mut node2 = node(dir.path(), "node2", &args("node2"));
    node2.start(Some(&node1.peer));
    let mut node3 = node(dir.path(), "node3", &args("node3"));
    node3.start(Some(&node1.peer));
    let all = [node1.client(), node2.client(), node3.client()];
    wait_for_layout_agreement(&all, 3);
    assert!(
        node1
            .log()
            .contains("peer certificates the CRL lists are refused")
    );
    // Every member takes part: a write through node3 that needs all three.
    write_and_read(&node3.client(), &node1.client(), b"k1", Some(3));

    // A certificate of another CA is refused as no CRL of this CA; one
    // that is not a certificate, or a missing CA, is refused too, and the
    // CRL is left as it was.
    let other = ca_with_nodes(&dir.path().join("other-ca"), &["intruder"]);
    let foreign = other.join("intruder.crt");
    let why = cert_output(&["revoke", "--dir", ca_dir, foreign.to_str().unwrap()]).unwrap_err();
    assert!(why.contains("was not issued by the CA"), "{why}");
    let not_a_cert = ca.join("node3.key");
    assert!(cert_output(&["revoke", "--dir", ca_dir, not_a_cert.to_str().unwrap()]).is_err());
    write_and_read(&node3.client(), &node1.client(), b"k2", Some(3));

    // Revoke node3's certificate: node1 and node2 drop their connections
    // with it, with no restart, and see it down; writes go on between
    // them, and no longer reach node3.
    let revoked = ca.join("node3.crt");
    let out = cert_output(&["revoke", "--dir", ca_dir, revoked.to_str().unwrap()]).unwrap();
    assert!(out.contains("1 newly revoked, 1 in all"), "{out}");
    for observer in [&node1, &node2] {
        eventually("node3 to be cut off", Duration::from_secs(20), || {
            (liveness(observer, "node3") == "down").then_some(())
        });
    }
    assert!(
        node1.log().contains("invalid peer certificate: Revoked"),
        "{}",
        node1.log()
    );
    write_and_read(&node1.client(), &node2.client(), b"k3", Some(2));
    assert!(
        node1
            .client()
            .put("b", b"k5", b"k5", "text/plain", None, Some(3))
            .is_err(),
        "a write acknowledged by node3"
    );
    // node3 sees the others refuse it.
    eventually("node3 to see node1 down", Duration::from_secs(20), || {
        (liveness(&node3, "node1") == "down").then_some(())
    });
    assert!(node3.log().contains("TLS"), "{}", node3.log());

    // A later CRL keeps what an earlier one revoked; a new node with the
    // revoked certificate cannot join.
    let out = cert_output(&["revoke", "--dir", ca_dir]).unwrap();
    assert!(out.contains("0 newly revoked, 1 in all"), "{out}");
    node3.stop();
    let intruder_args = args("node3");
    refused_start(
        dir.path(),
        "node3-again",
        &intruder_args,
        Some(&node1.peer),
        "TLS with the peer failed",
    );
    assert_eq!(members(&node1), 3);
    write_and_read(&node2.client(), &node1.client(), b"k4", Some(2));
}

#[test]
fn members_take_a_new_ca_without_a_restart() {
    // The move to a new CA: node1 has a certificate of the old CA; node2
    // a certificate of the new one and both CAs in its CA file. node1
    // refuses node2 until both CAs are in node1's CA file too, then takes
    // it in, with no restart.
    let dir = tempfile::tempdir().unwrap();
    let old = ca_with_nodes(&dir.path().join("old"), &["node1"]);
    let new = ca_with_nodes(&dir.path().join("new"), &["node2"]);
    let both = [
        std::fs::read(old.join("ca.crt")).unwrap(),
        std::fs::read(new.join("ca.crt")).unwrap(),
    ]
    .concat();
    let node1_ca = dir.path().join("node1-ca.crt");
    std::fs::copy(old.join("ca.crt"), &node1_ca).unwrap();
    let node2_ca = dir.path().join("node2-ca.crt");
    std::fs::write(&node2_ca, &both).unwrap();
    let with_ca = |ca_dir: &Path, name: &str, ca_file: &Path| {
        let mut args = tls_args(ca_dir, name);
        *args.last_mut().unwrap() = ca_file.to_str().unwrap().to_string();
        args
    };

    let mut node1 = node(dir.path(), "node1", &with_ca(&old, "node1", &node1_ca));
    node1.start(None);
    let node2_args = with_ca(&new, "node2", &node2_ca);
    let why = "TLS with the peer failed";
    refused_start(dir.path(), "node2", &node2_args, Some(&node1.peer), why);

    std::fs::write(&node1_ca, &both).unwrap();
    let mut node2 = node(dir.path(), "node2-joined", &node2_args);
    node2.start(Some(&node1.peer));
    wait_for_layout_agreement(&[node1.client(), node2.client()], 2);
    assert!(node1.log().contains("TLS CA file changed; reloaded"));
    assert_replicate(&node1, &node2);
}

#[test]
fn bad_tls_files_stop_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_nodes(&dir.path().join("ca"), &["node1", "node2"]);
    // A key others can read.
    let key = ca.join("node1.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    refused_start(dir.path(), "a", &tls_args(&ca, "node1"), None, "chmod 600");

    // node2's certificate with node1's key.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut mismatched = tls_args(&ca, "node2");
    mismatched[3] = key.to_str().unwrap().to_string();
    refused_start(
        dir.path(),
        "b",
        &mismatched,
        None,
        "does not match the private key",
    );

    // A CA file that holds no certificate.
    let mut no_ca = tls_args(&ca, "node1");
    no_ca[5] = key.to_str().unwrap().to_string();
    refused_start(dir.path(), "c", &no_ca, None, "holds no CA certificate");

    // A CRL file that holds no CRL, and a CRL of another CA.
    let crl_args = |crl: &Path| {
        let mut args = tls_args(&ca, "node1");
        args.extend(["--peer-tls-crl-file".into(), crl.to_str().unwrap().into()]);
        args
    };
    let no_crl = crl_args(&ca.join("node1.crt"));
    refused_start(
        dir.path(),
        "d",
        &no_crl,
        None,
        "holds no certificate revocation list",
    );
    let other = ca_with_nodes(&dir.path().join("other-ca"), &[]);
    cert(&["revoke", "--dir", other.to_str().unwrap()]);
    let foreign = crl_args(&other.join("crl.pem"));
    refused_start(dir.path(), "e", &foreign, None, "not signed by a CA of");

    // Two of the three flags.
    let out = Command::new(BIN)
        .args([
            "server",
            "--peer-tls-cert-file",
            "x",
            "--peer-tls-ca-file",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peer-tls-key-file"));

    // `ringkv cert create-ca` never replaces a CA.
    let out = Command::new(BIN)
        .args(["cert", "create-ca", "--dir", ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
}

type RespTls = tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream>;

/// A RESP connection over TLS (rustls, trusting `ca`), showing the
/// certificate and key `identity` if given.
fn resp_tls_session(addr: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> RespTls {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let name = "127.0.0.1".try_into().unwrap();
    let tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(tls, tcp)
}

/// Sends `command` on `session` and reads its reply (an error or no
/// bytes when the node closed the connection).
fn resp_command(session: &mut RespTls, command: &[u8]) -> std::io::Result<Vec<u8>> {
    session.write_all(command)?;
    let mut reply = vec![0u8; 256];
    let n = session.read(&mut reply)?;
    reply.truncate(n);
    Ok(reply)
}

/// One RESP command over TLS (trusting `ca`): the reply's bytes.
fn resp_over_tls(addr: &str, ca: &Path, command: &[u8]) -> Vec<u8> {
    resp_command(&mut resp_tls_session(addr, ca, None), command).unwrap()
}

#[test]
fn clients_reach_a_tls_node_over_https_and_resp_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_nodes(&dir.path().join("ca"), &["node1"]);
    let file = |name: &str| ca.join(name).to_str().unwrap().to_string();
    let mut node1 = client_tls_node(dir.path(), &ca, &[]);
    node1.start(None);
    assert!(node1.url().starts_with("https://"));
    assert!(node1.log().contains("clients connect with TLS"));

    // HTTPS with the CA: reads and writes.
    let client = node1.client();
    assert_round_trip(&client, &client, None);
    // Plain HTTP gets nothing; HTTPS without the CA trusts no certificate.
    let plain = ringkv_client::Client::new(&format!("http://{}", node1.http));
    assert!(plain.get("b", b"k", None).is_err());
    let untrusting = ringkv_client::Client::new(&node1.url());
    let refused = untrusting.get("b", b"k", None).unwrap_err().to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // RESP over TLS; a plain RESP client gets no answer of RESP.
    let ping = b"*1\r\n$4\r\nPING\r\n";
    assert_eq!(
        resp_over_tls(&node1.resp, &ca.join("ca.crt"), ping),
        b"+PONG\r\n"
    );
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let reply = resp_over_tls(&node1.resp, &ca.join("ca.crt"), get);
    assert!(reply.starts_with(b"$"), "{reply:?}");
    let mut plain = TcpStream::connect(&node1.resp).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(ping).unwrap();
    let mut reply = Vec::new();
    let _ = plain.take(64).read_to_end(&mut reply);
    assert!(!reply.starts_with(b"+PONG"), "{reply:?}");

    // The CLI takes --cacert (RINGKV_CACERT).
    let out = Command::new(BIN)
        .args([
            "get",
            "b",
            "k",
            "--url",
            &node1.url(),
            "--cacert",
            &file("ca.crt"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with('v'));

    // Renewal without a restart: replace the files with a certificate of
    // another CA; new connections get it (old clients no longer trust it).
    // The certificate alone first: its key does not match yet, so the old
    // pair stays in use.
    let other = ca_with_nodes(&dir.path().join("other-ca"), &["node1"]);
    std::fs::copy(other.join("node1.crt"), ca.join("node1.crt")).unwrap();
    assert!(node1.client().get("b", b"k", None).is_ok());
    std::fs::copy(other.join("node1.key"), ca.join("node1.key")).unwrap();
    let renewed = std::fs::read(other.join("ca.crt")).unwrap();
    let trusting = ringkv_client::Client::with_tls(&node1.url(), None, &renewed, None).unwrap();
    assert_eq!(value_of(&trusting, None), b"v");
    assert!(node1.client().get("b", b"k", None).is_err());
    assert!(node1.log().contains("TLS certificate changed; reloaded"));
    assert!(node1.log().contains("cannot be used; keeping the previous"));
}

#[test]
fn a_node_that_asks_for_client_certificates_serves_only_clients_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_nodes(&dir.path().join("ca"), &["node1", "app"]);
    let other = ca_with_nodes(&dir.path().join("other-ca"), &["app"]);
    let file = |dir: &Path, name: &str| dir.join(name).to_str().unwrap().to_string();
    // A file of the node's own, changed below.
    let ca_file = file(dir.path(), "client-ca.crt");
    std::fs::copy(ca.join("ca.crt"), &ca_file).unwrap();
    let mut node1 = client_tls_node(dir.path(), &ca, &["--client-tls-ca-file", &ca_file]);
    node1.identity = Some((ca.join("app.crt"), ca.join("app.key")));
    node1.start(None);
    assert!(node1.log().contains("a certificate of the client CA"));
    let with_cert = node1.client();
    assert_round_trip(&with_cert, &with_cert, None);
    // No certificate, or one of another CA: turned away.
    let ca_pem = std::fs::read(ca.join("ca.crt")).unwrap();
    let none = ringkv_client::Client::with_tls(&node1.url(), None, &ca_pem, None).unwrap();
    assert!(none.get("b", b"k", None).is_err());
    let read = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    let (cert, key) = (read(&other, "app.crt"), read(&other, "app.key"));
    let refused =
        ringkv_client::Client::with_tls(&node1.url(), None, &ca_pem, Some((&cert, &key))).unwrap();
    assert!(refused.get("b", b"k", None).is_err());

    // A new client CA is taken when its file changes, with no restart:
    // with both CAs in the file, both clients get in; with only the new
    // one, the old client no longer does. A file that cannot be used
    // leaves the CA in use as it was.
    // (New clients each time: a client's open connection keeps going.)
    let foreign = || {
        ringkv_client::Client::with_tls(&node1.url(), None, &ca_pem, Some((&cert, &key))).unwrap()
    };
    let both = [read(&ca, "ca.crt"), read(&other, "ca.crt")].concat();
    std::fs::write(&ca_file, both).unwrap();
    assert_eq!(value_of(&foreign(), None), b"v");
    assert_eq!(value_of(&node1.client(), None), b"v");
    std::fs::write(&ca_file, read(&other, "ca.crt")).unwrap();
    assert_eq!(value_of(&foreign(), None), b"v");
    assert!(node1.client().get("b", b"k", None).is_err());
    std::fs::write(&ca_file, b"not a certificate").unwrap();
    assert_eq!(value_of(&foreign(), None), b"v");
    assert!(
        node1
            .log()
            .contains("TLS CA file changed but cannot be used")
    );
    std::fs::copy(ca.join("ca.crt"), &ca_file).unwrap();

    // The CLI: --cacert, --client-cert, --client-key.
    let out = Command::new(BIN)
        .args(["get", "b", "k", "--url", &node1.url()])
        .args(["--cacert", &file(&ca, "ca.crt")])
        .args([
            "--client-cert",
            &file(&ca, "app.crt"),
            "--client-key",
            &file(&ca, "app.key"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_client_whose_certificate_is_revoked_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_nodes(&dir.path().join("ca"), &["node1", "app", "other-app"]);
    let ca_dir = ca.to_str().unwrap();
    cert_output(&["revoke", "--dir", ca_dir]).unwrap();
    let (ca_file, crl) = (ca.join("ca.crt"), ca.join("crl.pem"));
    let extra = [
        "--client-tls-ca-file",
        ca_file.to_str().unwrap(),
        "--client-tls-crl-file",
        crl.to_str().unwrap(),
    ];
    let mut node1 = client_tls_node(dir.path(), &ca, &extra);
    node1.identity = Some((ca.join("app.crt"), ca.join("app.key")));
    node1.start(None);
    let ca_pem = std::fs::read(&ca_file).unwrap();
    let client_as = |name: &str| {
        let read = |file: String| std::fs::read(ca.join(file)).unwrap();
        let (cert, key) = (read(format!("{name}.crt")), read(format!("{name}.key")));
        ringkv_client::Client::with_tls(&node1.url(), None, &ca_pem, Some((&cert, &key))).unwrap()
    };
    assert_round_trip(&client_as("app"), &client_as("other-app"), None);
    // Connections made before the revocation, kept open: HTTP (the
    // client keeps its connection alive) and RESP.
    let (held_app, held_other) = (client_as("app"), client_as("other-app"));
    assert_eq!(value_of(&held_app, None), b"v");
    assert_eq!(value_of(&held_other, None), b"v");
    let identity = |name: &str| {
        (
            ca.join(format!("{name}.crt")),
            ca.join(format!("{name}.key")),
        )
    };
    let resp_as = |name: &str| {
        let (cert, key) = identity(name);
        resp_tls_session(&node1.resp, &ca_file, Some((&cert, &key)))
    };
    let ping = b"*1\r\n$4\r\nPING\r\n";
    let (mut resp_app, mut resp_other) = (resp_as("app"), resp_as("other-app"));
    assert_eq!(resp_command(&mut resp_app, ping).unwrap(), b"+PONG\r\n");
    assert_eq!(resp_command(&mut resp_other, ping).unwrap(), b"+PONG\r\n");

    // Revoked: refused from the next connection on, with no restart, and
    // the connections it had are closed; a certificate the CRL does not
    // list still gets in, and keeps its connections.
    let app = ca.join("app.crt");
    cert_output(&["revoke", "--dir", ca_dir, app.to_str().unwrap()]).unwrap();
    eventually("app to be refused", Duration::from_secs(10), || {
        client_as("app").get("b", b"k", None).is_err().then_some(())
    });
    eventually(
        "app's open connections to be closed",
        Duration::from_secs(10),
        || {
            let resp_closed =
                !matches!(resp_command(&mut resp_app, ping), Ok(reply) if !reply.is_empty());
            (resp_closed && held_app.get("b", b"k", None).is_err()).then_some(())
        },
    );
    assert!(resp_command(&mut resp_as("app"), ping).is_err());
    assert_eq!(value_of(&held_other, None), b"v");
    assert_eq!(resp_command(&mut resp_other, ping).unwrap(), b"+PONG\r\n");
    assert!(
        node1
            .log()
            .contains("a client's certificate is no longer trusted")
    );
    assert_eq!(value_of(&client_as("other-app"), None), b"v");

    // A CRL file that is not one leaves the CRL in use as it was.
    std::fs::write(&crl, b"not a CRL").unwrap();
    eventually("the bad CRL to be seen", Duration::from_secs(10), || {
        let _ = client_as("other-app").get("b", b"k", None);
        node1
            .log()
            .contains("TLS CA file changed but cannot be used")
            .then_some(())
    });
    assert!(client_as("app").get("b", b"k", None).is_err());
    assert_eq!(value_of(&client_as("other-app"), None), b"v");
}
