//! The binary as a user runs it: `ringkv server` with no flags, the CLI
//! commands, and `ringkv dev-cluster`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringkv_client::{Client, GetResult};
use support::{BIN, eventually, free_ports};

#[test]
fn server_without_flags_is_a_usable_single_node_store() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .arg("server")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let client = Client::new("http://127.0.0.1:8080");
    eventually("default node to serve", Duration::from_secs(30), || {
        client.cluster_status().ok()
    });
    // Default bucket (n=3, r=w=2) works on one node: capped at the member count.
    client
        .put("b", b"k", b"v", "text/plain", None, None)
        .unwrap();
    assert!(
        matches!(client.get("b", b"k", None).unwrap(), GetResult::Found { value, .. } if value == b"v")
    );
    assert_eq!(
        support::resp_command("127.0.0.1:6380", &[b"PING"]),
        b"+PONG\r\n"
    );
    assert!(dir.path().join("ringkv-data").join("ringkv.redb").exists());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_put_get_delete_and_cluster_status() {
    let cluster = support::Cluster::start(3);
    let url = cluster.nodes[0].url();
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .env("RINGKV_URL", &url)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["put", "demo", "k1", "v1"]);
    assert!(ok, "{err}");
    assert!(err.starts_with("context: "), "{err}");
    let (ok, out, err) = run(&["get", "demo", "k1", "--url", &cluster.nodes[2].url()]);
    assert!(ok, "{err}");
    assert_eq!(out, "v1");
    let context = err.trim().strip_prefix("context: ").unwrap().to_string();
    let (ok, _, err) = run(&["delete", "demo", "k1", "--context", &context]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["get", "demo", "k1"]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    let (ok, out, err) = run(&["cluster", "status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    let (ok, out, err) = run(&["cluster", "status"]);
    assert!(ok, "{err}");
    for node in &cluster.nodes {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{} ", node.name)))
            .unwrap_or_else(|| panic!("no line for {}:\n{out}", node.name));
        assert!(
            line.contains(" valid ") && line.contains(&node.http),
            "{out}"
        );
    }
    let (ok, _, err) = run(&["put", "bad bucket", "k", "v"]);
    assert!(!ok);
    assert!(err.contains("400 bad_request"), "{err}");

    // A value written with --ttl is read until it expires, then not found.
    let (ok, _, err) = run(&["put", "demo", "brief", "b", "--ttl", "3"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["get", "demo", "brief"]);
    assert!(ok, "{err}");
    assert_eq!(out, "b");
    let expires: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("expires_ms: "))
        .unwrap_or_else(|| panic!("no expiry shown: {err}"))
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(expires > now && expires <= now + 3000, "{expires} vs {now}");
    eventually("the value to expire", Duration::from_secs(10), || {
        let (ok, _, err) = run(&["get", "demo", "brief"]);
        (!ok && err.contains("not found")).then_some(())
    });
    let (ok, _, err) = run(&["put", "demo", "brief", "b", "--ttl", "0"]);
    assert!(!ok, "a TTL of 0 is refused: {err}");
}

/// Starts `ringkv dev-cluster` in `dir`; returns it, its nodes' pids as it
/// printed them, and node1's HTTP port, once it has printed its tour.
fn start_dev_cluster(
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, Vec<u32>, u16) {
    let (http, resp, peer) = (free_ports(3), free_ports(3), free_ports(3));
    let mut child = Command::new(BIN)
        .args(["dev-cluster", "--nodes", "3"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--http-port",
            &http.to_string(),
            "--resp-port",
            &resp.to_string(),
            "--peer-port",
            &peer.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Ctrl-C stops every node") {
            break;
        }
    }
    assert!(printed.contains("redis-cli -p"), "{printed}");
    assert!(printed.contains("curl"), "{printed}");
    let pids: Vec<u32> = printed
        .lines()
        .filter_map(|l| l.split("pid ").nth(1))
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{printed}");
    (child, pids, http)
}

/// Sends `signal` to dev-cluster: it exits with 0 and so does every node.
fn assert_signal_stops(mut child: std::process::Child, signal: &str, pids: &[u32], http: u16) {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "dev-cluster exited with {status}");
    for pid in pids {
        eventually("node processes to exit", Duration::from_secs(10), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")))
            .then_some(())
        });
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http)).is_err(),
        "node1 still serves HTTP"
    );
}

#[test]
fn dev_cluster_starts_three_nodes_survives_losing_one_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, pids, http) = start_dev_cluster(dir.path(), &[]);
    let first = Client::new(&format!("http://127.0.0.1:{http}"));
    let last = Client::new(&format!("http://127.0.0.1:{}", http + 2));
    first
        .put("demo", b"hello", b"world", "text/plain", None, None)
        .unwrap();
    assert!(
        matches!(last.get("demo", b"hello", None).unwrap(), GetResult::Found { value, .. } if value == b"world")
    );
    // A node that dies leaves the others serving (the README's tour kills one).
    Command::new("kill")
        .args(["-KILL", &pids[1].to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        child.try_wait().unwrap().is_none(),
        "dev-cluster ended when one node died"
    );
    first
        .put("demo", b"after", b"one down", "text/plain", None, None)
        .unwrap();
    assert!(
        matches!(last.get("demo", b"after", None).unwrap(), GetResult::Found { value, .. } if value == b"one down")
    );
    // Ctrl-C (SIGINT) stops the cluster and every node process.
    assert_signal_stops(child, "-INT", &pids, http);
}

/// A service manager or `timeout` stops it with SIGTERM: its nodes stop too
/// (they used to be left running).
#[test]
fn dev_cluster_stops_its_nodes_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, pids, http) = start_dev_cluster(dir.path(), &[]);
    assert_signal_stops(child, "-TERM", &pids, http);
}

/// `--tls`: the nodes talk TLS to each other and to clients that trust
/// the CA it made under the data dir.
#[test]
fn dev_cluster_with_tls_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let (child, pids, http) = start_dev_cluster(dir.path(), &["--tls"]);
    let ca = std::fs::read(dir.path().join("certs").join("ca.crt")).unwrap();
    let first = Client::with_tls(&format!("https://127.0.0.1:{http}"), None, &ca, None).unwrap();
    let last =
        Client::with_tls(&format!("https://127.0.0.1:{}", http + 2), None, &ca, None).unwrap();
    first
        .put("demo", b"hello", b"world", "text/plain", None, Some(3))
        .unwrap();
    assert!(
        matches!(last.get("demo", b"hello", Some(3)).unwrap(), GetResult::Found { value, .. } if value == b"world")
    );
    assert!(
        Client::new(&format!("http://127.0.0.1:{http}"))
            .get("demo", b"hello", None)
            .is_err()
    );
    for i in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node{i}.log"))).unwrap();
        assert!(log.contains("peer connections use TLS"), "{log}");
    }
    assert_signal_stops(child, "-TERM", &pids, http);
}
