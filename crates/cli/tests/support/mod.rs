//! Test harness: real `ringkv server` processes on 127.0.0.1 ports picked
//! free, each with its own data dir. Every process is killed (by its pid,
//! through its `Child`) when the harness is dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ringkv_client::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringkv");

/// A port for a server started by this test process. Taken below the
/// kernel's ephemeral range (32768-60999 by default), so that no outgoing
/// connection of a concurrent test gets it as its local port before the
/// server binds it; never handed out twice by this process; free when
/// picked. (Port 0 gave both races: a server failed to start with "address
/// already in use".)
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports, each as [`free_port`].
pub fn free_ports(n: u16) -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(u32::from(n), Ordering::Relaxed);
        let base = LOW + (start + offset) % SPAN;
        if base + u32::from(n) > LOW + SPAN {
            continue;
        }
        let base = base as u16;
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports in {LOW}..{}", LOW + SPAN);
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub http: String,
    pub resp: String,
    pub peer: String,
    pub extra_args: Vec<String>,
    /// The client password the node requires, if any.
    pub password: Option<String>,
    /// With client TLS: the CA certificate (PEM) clients trust, and the
    /// certificate and key the harness's client shows, if any.
    pub cacert: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl TestNode {
    /// A node not started yet, on fresh ports, keeping its data in `dir`.
    pub fn new(name: &str, dir: PathBuf, extra_args: &[&str]) -> TestNode {
        TestNode {
            name: name.to_string(),
            dir,
            http: format!("127.0.0.1:{}", free_port()),
            resp: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            password: None,
            cacert: None,
            identity: None,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.cacert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http)
    }

    pub fn client(&self) -> Client {
        let password = self.password.as_deref();
        match &self.cacert {
            None => Client::with_password(&self.url(), password),
            Some(ca) => {
                let read = |path: &PathBuf| std::fs::read(path).unwrap();
                let identity = self.identity.as_ref().map(|(c, k)| (read(c), read(k)));
                let identity = identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
                Client::with_tls(&self.url(), password, &read(ca), identity).unwrap()
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    pub fn start(&mut self, join: Option<&str>) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.child = Some(self.command(join).spawn().expect("start ringkv server"));
        let client = self.client();
        eventually(
            &format!("{} to serve HTTP", self.name),
            Duration::from_secs(30),
            || {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("{} exited with {status}; log:\n{}", self.name, self.log());
                }
                client.cluster_status().ok()
            },
        );
    }

    /// Starts the server expecting it to refuse to: its exit status.
    pub fn start_refused(&mut self, join: Option<&str>) -> std::process::ExitStatus {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut child = self.command(join).spawn().expect("start ringkv server");
        eventually(
            &format!("{} to exit", self.name),
            Duration::from_secs(30),
            || child.try_wait().unwrap(),
        )
    }

    /// Waits for the process to exit by itself: its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = eventually(&format!("{} to exit", self.name), timeout, || {
            child.try_wait().unwrap()
        });
        self.child = None;
        status
    }

    fn command(&self, join: Option<&str>) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["server", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--http-addr",
                &self.http,
                "--resp-addr",
                &self.resp,
                "--peer-addr",
                &self.peer,
            ])
            .args([
                "--gossip-interval-ms",
                "200",
                "--request-timeout-ms",
                "3000",
            ])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(join) = join {
            command.args(["--join", join]);
        }
        command
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit; it must exit with 0.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(status.success(), "kill -TERM {pid}");
            let exited = child.wait().unwrap();
            assert!(exited.success(), "{} exited with {exited}", self.name);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub nodes: Vec<TestNode>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(count: usize) -> Cluster {
        Self::start_with(count, &[])
    }

    pub fn start_with(count: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<TestNode> = (1..=count)
            .map(|i| {
                let name = format!("node{i}");
                let node_dir = dir.path().join(&name);
                TestNode::new(&name, node_dir, extra_args)
            })
            .collect();
        let seed = nodes[0].peer.clone();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.start(if i == 0 { None } else { Some(&seed) });
        }
        let cluster = Cluster { nodes, _dir: dir };
        cluster.wait_for_agreement();
        cluster
    }

    /// Every running node reports the same layout with every member in it.
    pub fn wait_for_agreement(&self) {
        let running: Vec<Client> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(TestNode::client)
            .collect();
        wait_for_layout_agreement(&running, self.nodes.len());
    }
}

/// Sends raw RESP and reads one reply (up to the first complete line set).
pub fn resp_command(addr: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).unwrap();
    read_reply(&mut stream)
}

/// Reads until the peer has sent a full RESP reply (simple/bulk/integer/error/array of bulks).
pub fn read_reply(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        if reply_complete(&out) {
            return out;
        }
    }
}

fn reply_complete(buf: &[u8]) -> bool {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    fn one(buf: &[u8], at: usize) -> Option<usize> {
        let (head, next) = line(buf, at)?;
        match head.first()? {
            b'+' | b'-' | b':' => Some(next),
            b'$' => {
                let len: i64 = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
                if len < 0 {
                    return Some(next);
                }
                let end = next + len as usize + 2;
                (buf.len() >= end).then_some(end)
            }
            b'*' => {
                let count: i64 = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
                let mut at = next;
                for _ in 0..count.max(0) {
                    at = one(buf, at)?;
                }
                Some(at)
            }
            _ => None,
        }
    }
    one(buf, 0).is_some()
}

/// A plain HTTP GET; returns the body (panics on transport errors).
pub fn http_get(url: &str) -> String {
    let (_, body) = http("GET", url, b"");
    body
}

/// The status of a plain HTTP GET.
pub fn http_status(url: &str) -> u16 {
    http("GET", url, b"").0
}

/// A plain HTTP PUT; returns (status, body).
pub fn http_put(url: &str, body: &[u8]) -> (u16, String) {
    http("PUT", url, body)
}

fn http(method: &str, url: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_request(method, url, &[], body);
    (status, body)
}

/// One HTTP/1.1 request with extra headers; returns the status, the
/// response's head (status line and headers, lower-cased) and its body.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A connection of a Redis client library (redis-rs) to a RESP address.
pub fn redis_connection(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

impl TestNode {
    /// Sends a signal (e.g. "STOP", "CONT") to this node's process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("node is running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// Stops `node` (SIGKILL) and checks on its own disk that it holds each
/// key of `bucket` with the key itself among its values.
pub fn assert_disk_holds(node: &mut TestNode, bucket: &str, keys: &[String]) {
    use ringkv_core::causality::Object;
    use ringkv_core::ring::{Layout, key_hash, partition_of};
    use ringkv_storage::{DataDirOptions, Space, Storage, open_data_dir};
    node.kill9();
    let storage = open_data_dir(&node.dir, DataDirOptions::default()).unwrap();
    let layout = Layout::decode(&storage.get(Space::Meta, b"layout").unwrap().unwrap()).unwrap();
    for key in keys {
        let partition = partition_of(
            key_hash(bucket.as_bytes(), key.as_bytes()),
            layout.partitions(),
        );
        let bytes = storage
            .get(
                Space::Data(partition),
                &ringkv_node::store::object_key(bucket, key.as_bytes()),
            )
            .unwrap()
            .unwrap_or_else(|| panic!("{} lacks acknowledged write {key}", node.name));
        let object = Object::decode(&bytes).unwrap();
        let values: Vec<&[u8]> = object
            .live_siblings()
            .filter_map(|s| s.value.as_deref())
            .collect();
        assert!(
            values.contains(&key.as_bytes()),
            "{} holds {values:?} for {key}",
            node.name
        );
    }
}

/// How `observer` sees the member named `peer`: "up", "down", ...
pub fn liveness(observer: &TestNode, peer: &str) -> String {
    let status = observer.client().cluster_status().unwrap();
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == peer)
        .map(|m| m["liveness"].as_str().unwrap().to_string())
        .unwrap()
}

/// The value of a metric without labels, 0 when absent.
pub fn metric(node: &TestNode, name: &str) -> u64 {
    http_get(&format!("{}/metrics", node.url()))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until every client's node reports the same layout version with
/// `members` members.
pub fn wait_for_layout_agreement(clients: &[Client], members: usize) {
    eventually(
        "nodes to agree on the layout",
        Duration::from_secs(30),
        || {
            let mut versions = Vec::new();
            for client in clients {
                let status = client.cluster_status().ok()?;
                if status["members"].as_array()?.len() != members {
                    return None;
                }
                versions.push(status["layout_version"].as_u64()?);
            }
            versions.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    );
}

/// Writes `secret` to `dir/name` with permissions `mode`.
pub fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A started one-node store in `dir` that requires the client password
/// `password`; its `client()` gives it.
pub fn node_with_password(dir: &Path, password: &str) -> TestNode {
    let file = secret_file(dir, "password", password, 0o600);
    let mut node = TestNode::new(
        "node1",
        dir.join("node1"),
        &["--client-password-file", file.to_str().unwrap()],
    );
    node.password = Some(password.to_string());
    node.start(None);
    node
}

/// A `Join` of a made-up member, as a peer would send it on the wire
/// (length prefix included): what anything that reaches a peer port could
/// send.
pub fn intruder_join_frame() -> Vec<u8> {
    use ringkv_core::message::PeerRequest;
    use ringkv_core::ring::{Member, MemberState};
    use ringkv_wire::{Frame, encode_frame};
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
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&frame);
    bytes
}

/// A node named `name` (data under `dir/name`), started with `args` (to
/// join through `join`), exits with an error, and its log says `why`.
pub fn refused_start(
    dir: &Path,
    name: &str,
    args: &[impl AsRef<str>],
    join: Option<&str>,
    why: &str,
) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut node = TestNode::new(name, dir.join(name), &args);
    assert!(!node.start_refused(join).success());
    assert!(node.log().contains(why), "{}", node.log());
}
