//! A network lab for partition tests: real `ringkv server` processes, each
//! in a network namespace of its own, on a private bridge, with links cut
//! and healed by nftables inside the node namespaces.
//!
//! Layout of one lab (names start with `rkv-<pid>-<token>`):
//! - a namespace `…-br` holding the bridge `br0`;
//! - a namespace `…-nI` per node, whose `eth0` (a veth into the bridge)
//!   has `10.213.X.I/24`; the node listens there (HTTP 8080, RESP 6380,
//!   peers 7070) and an nftables table `ringkv_partition` with an input
//!   chain holds the cuts;
//! - a veth `rkv<pid>c<k>` in the root namespace, also on the bridge, with
//!   `10.213.X.254/24`, so that the test itself is the client.
//!
//! X is picked so that no other interface of the root namespace has an
//! address in 10.213.X.0/24. Traffic only ever goes to addresses of the lab.
//!
//! A cut is silent, as in a real network partition: the receiving namespace
//! drops packets from the sender (nothing is refused, TCP just stalls).
//! Healing flushes the rules.
//!
//! Cleanup: `Lab` owns everything it creates and its `Drop` (which also
//! runs when a test panics) kills the node processes it started, by pid,
//! then deletes its namespaces, which takes the veths, the bridge and the
//! nftables tables with them. Nodes run under `setpriv --pdeathsig KILL`,
//! so they die with the test thread even if the test process is killed;
//! namespaces left by a killed test process (its pid is gone) are removed
//! by the next lab, with their data directories (`$TMPDIR/rkv-<pid>-…`).
//!
//! It does not own what runs on the nodes (that is the test's) nor the
//! checks of the store's invariants.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringkv_client::Client;

use crate::support::{BIN, eventually, http_get, wait_for_layout_agreement};

const TABLE: &str = "ringkv_partition";
const HTTP_PORT: u16 = 8080;
const RESP_PORT: u16 = 6380;
const PEER_PORT: u16 = 7070;
const CLIENT_HOST: u8 = 254;

/// Labs made by this process (names and subnets must differ between the
/// tests that run in parallel).
static LABS: AtomicUsize = AtomicUsize::new(0);
/// Serialises subnet claims between this process's tests.
static SUBNETS: Mutex<()> = Mutex::new(());

/// Runs a command to completion; Err carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip` with whitespace-separated arguments (names here have no spaces).
fn ip(args: &str) -> String {
    must("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// Runs an nftables script inside `namespace`.
fn nft(namespace: &str, script: &str) -> String {
    must("ip", &["netns", "exec", namespace, "nft", script])
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether this machine lets us build a lab: root, `ip netns add` works,
/// nftables works inside a fresh namespace.
fn probe(prefix: &str) -> Result<(), String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => return Err(format!("not root (euid {uid})")),
        None => return Err("cannot read the effective uid".into()),
    }
    run("ip", &["-V"]).map_err(|e| format!("iproute2 missing: {e}"))?;
    run("nft", &["--version"]).map_err(|e| format!("nftables missing: {e}"))?;
    let namespace = format!("{prefix}-probe");
    run("ip", &["netns", "add", &namespace])?;
    let table = run(
        "ip",
        &[
            "netns",
            "exec",
            &namespace,
            "nft",
            &format!("add table inet {TABLE}"),
        ],
    );
    let deleted = run("ip", &["netns", "del", &namespace]);
    table.and(deleted).map(|_| ())
}

/// The pid in a name made by a lab (`rkv-<pid>-…`).
fn lab_pid(name: &str) -> Option<u32> {
    name.strip_prefix("rkv-")?.split('-').next()?.parse().ok()
}

/// Removes the namespaces and directories of earlier labs whose test
/// process is gone (killed before its `Drop` ran). Once per process.
fn remove_stale_labs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let gone = |name: &str| {
            lab_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        };
        let namespaces = run("ip", &["netns", "list"]).unwrap_or_default();
        for name in namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
        {
            if gone(name) {
                eprintln!("partition lab: removing stale namespace {name}");
                let _ = run("ip", &["netns", "del", name]);
            }
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(gone) {
                eprintln!(
                    "partition lab: removing stale directory {}",
                    entry.path().display()
                );
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Interfaces of the root namespace with an address in 10.213.`x`.0/24.
fn subnet_users(x: u8) -> Vec<String> {
    let prefix = format!("10.213.{x}.");
    ip("-4 -o addr show")
        .lines()
        .filter(|l| l.contains(&format!(" {prefix}")))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn subnet_routed(x: u8) -> bool {
    let prefix = format!("10.213.{x}.");
    ip("-4 route show").lines().any(|l| l.starts_with(&prefix))
}

pub struct LabNode {
    pub name: String,
    pub namespace: String,
    pub address: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl LabNode {
    pub fn url(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.address)
    }

    pub fn peer_addr(&self) -> String {
        format!("{}:{PEER_PORT}", self.address)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url())
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The value of an unlabelled metric, 0 when absent.
    pub fn metric(&self, name: &str) -> u64 {
        http_get(&format!("{}/metrics", self.url()))
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// How this node sees each member: name → "up" / "suspect" / "down".
    pub fn liveness(&self) -> Option<BTreeMap<String, String>> {
        let status = self.client().cluster_status().ok()?;
        status["members"]
            .as_array()?
            .iter()
            .map(|m| {
                Some((
                    m["name"].as_str()?.to_string(),
                    m["liveness"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// SIGKILL, by the pid this lab started.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Lab {
    /// 10.213.`subnet`.0/24
    subnet: u8,
    client_link: Option<String>,
    /// Created namespaces, deleted in reverse order.
    namespaces: Vec<String>,
    pub nodes: Vec<LabNode>,
    server_args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Builds a lab of `count` namespaces (no node started yet). None when
    /// this machine cannot make namespaces: that is said loudly, and it is
    /// a failure when the environment says CI=true.
    pub fn create(count: usize, server_args: &[&str]) -> Option<Lab> {
        assert!((1..CLIENT_HOST as usize).contains(&count), "1..254 nodes");
        let index = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let token = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() & 0xffff);
        let prefix = format!("rkv-{pid}-{index}{token:04x}");
        if let Err(reason) = probe(&prefix) {
            let message = format!("SKIPPED: network namespaces unavailable ({reason})");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}; CI=true requires the partition tests to run");
            }
            eprintln!("\n{}\n{message}\n{}\n", "=".repeat(72), "=".repeat(72));
            return None;
        }
        remove_stale_labs();
        let mut lab = Lab {
            subnet: 0,
            client_link: None,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            server_args: server_args.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::Builder::new()
                .prefix(&format!("{prefix}-"))
                .tempdir()
                .expect("temporary directory"),
        };
        // From here on every object is recorded in `lab` as soon as it
        // exists, so that a failure half-way still cleans up.
        let bridge = lab.add_namespace(&format!("{prefix}-br"));
        ip(&format!("-n {bridge} link add br0 type bridge"));
        ip(&format!("-n {bridge} link set br0 up"));
        let client_link = format!("rkv{pid}c{index}");
        assert!(
            client_link.len() <= 15,
            "interface name {client_link} is too long"
        );
        ip(&format!(
            "link add {client_link} type veth peer name client netns {bridge}"
        ));
        lab.client_link = Some(client_link.clone());
        ip(&format!("-n {bridge} link set client master br0 up"));
        ip(&format!("link set {client_link} up"));
        lab.subnet = claim_subnet(&client_link, pid as usize + index * 37);
        for i in 1..=count {
            let namespace = lab.add_namespace(&format!("{prefix}-n{i}"));
            let address = format!("10.213.{}.{i}", lab.subnet);
            ip(&format!(
                "-n {bridge} link add n{i} type veth peer name eth0 netns {namespace}"
            ));
            ip(&format!("-n {bridge} link set n{i} master br0 up"));
            ip(&format!("-n {namespace} addr add {address}/24 dev eth0"));
            ip(&format!("-n {namespace} link set eth0 up"));
            ip(&format!("-n {namespace} link set lo up"));
            nft(
                &namespace,
                &format!(
                    "add table inet {TABLE}; add chain inet {TABLE} input \
                     {{ type filter hook input priority 0; policy accept; }}"
                ),
            );
            let data_dir = lab.dir.path().join(format!("node{i}"));
            lab.nodes.push(LabNode {
                name: format!("node{i}"),
                namespace,
                address,
                data_dir,
                child: None,
            });
        }
        eprintln!(
            "partition lab {prefix}: {count} nodes on 10.213.{}.0/24, client {client_link}",
            lab.subnet
        );
        Some(lab)
    }

    fn add_namespace(&mut self, name: &str) -> String {
        ip(&format!("netns add {name}"));
        self.namespaces.push(name.to_string());
        name.to_string()
    }

    /// Creates the lab and starts a cluster on it: node1 first, the others
    /// joining through it; returns once every node agrees on the layout.
    pub fn cluster(count: usize, server_args: &[&str]) -> Option<Lab> {
        let mut lab = Lab::create(count, server_args)?;
        let seed = lab.nodes[0].peer_addr();
        for i in 0..count {
            lab.start(i, (i > 0).then_some(seed.as_str()));
        }
        lab.wait_for_agreement();
        Some(lab)
    }

    /// Starts node `i` inside its namespace and waits until it serves HTTP.
    pub fn start(&mut self, i: usize, join: Option<&str>) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is already running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("node log");
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &node.namespace]);
        // Exec chain (ip → setpriv → ringkv): the child's pid is the node's.
        if run("setpriv", &["--version"]).is_ok() {
            command.args(["setpriv", "--pdeathsig", "KILL", "--"]);
        }
        command
            .arg(BIN)
            .args(["server", "--name", &node.name])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--peer-addr", &node.peer_addr()])
            .args(["--http-addr", &format!("{}:{HTTP_PORT}", node.address)])
            .args(["--resp-addr", &format!("{}:{RESP_PORT}", node.address)])
            .args(&self.server_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("node log"))
            .stderr(log);
        if let Some(join) = join {
            command.args(["--join", join]);
        }
        node.child = Some(
            command
                .spawn()
                .expect("start ringkv server in its namespace"),
        );
        let url = node.url();
        eventually(
            &format!("{} to serve HTTP", node.name),
            Duration::from_secs(30),
            || {
                if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                    let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
                    panic!("{} exited with {status}; log:\n{log}", node.name);
                }
                Client::new(&url).cluster_status().ok()
            },
        );
    }

    /// Every running node reports the same layout with every member in it.
    pub fn wait_for_agreement(&self) {
        let running: Vec<Client> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.client())
            .collect();
        wait_for_layout_agreement(&running, self.nodes.len());
    }

    /// Node `receiver` silently drops every packet from node `sender`.
    pub fn drop_from(&self, receiver: usize, sender: usize) {
        assert_ne!(receiver, sender);
        let sender = &self.nodes[sender].address;
        nft(
            &self.nodes[receiver].namespace,
            &format!("add rule inet {TABLE} input ip saddr {sender} drop"),
        );
    }

    /// Cuts the link between `a` and `b` both ways.
    pub fn cut(&self, a: usize, b: usize) {
        self.drop_from(a, b);
        self.drop_from(b, a);
    }

    /// Cuts `node` off from every other node (the client still reaches it).
    pub fn isolate(&self, node: usize) {
        for other in (0..self.nodes.len()).filter(|o| *o != node) {
            self.cut(node, other);
        }
    }

    /// Cuts every link between the two sides.
    pub fn split(&self, left: &[usize], right: &[usize]) {
        for a in left {
            for b in right {
                self.cut(*a, *b);
            }
        }
    }

    /// Deletes every cut.
    pub fn heal(&self) {
        for node in &self.nodes {
            nft(&node.namespace, &format!("flush table inet {TABLE}"));
        }
    }

    /// Waits until node `observer` sees `peer` with the given liveness.
    pub fn wait_liveness(&self, observer: usize, peer: usize, liveness: &str, timeout: Duration) {
        let peer_name = &self.nodes[peer].name;
        let what = format!(
            "{} to see {peer_name} {liveness}",
            self.nodes[observer].name
        );
        let mut last = None;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            last = self.nodes[observer].liveness();
            if last
                .as_ref()
                .and_then(|l| l.get(peer_name))
                .is_some_and(|l| l == liveness)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; last view: {last:?}");
    }

    /// Waits until every running node sees every other one up.
    pub fn wait_all_up(&self, timeout: Duration) {
        for observer in 0..self.nodes.len() {
            for peer in (0..self.nodes.len()).filter(|p| *p != observer) {
                self.wait_liveness(observer, peer, "up", timeout);
            }
        }
    }

    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    fn print_logs(&self) {
        for node in &self.nodes {
            let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ({}) ----", node.name, node.namespace);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        self.kill_all();
        for namespace in self.namespaces.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", namespace]) {
                eprintln!("partition lab cleanup: {e}");
            }
        }
        // Gone with the bridge namespace; deleted here in case it is not.
        if let Some(link) = &self.client_link
            && run("ip", &["link", "show", link]).is_ok()
        {
            let _ = run("ip", &["link", "del", link]);
        }
    }
}

/// Gives `link` the client address of a 10.213.X.0/24 that nothing else in
/// the root namespace uses or routes, and returns X.
fn claim_subnet(link: &str, start: usize) -> u8 {
    let _serial = SUBNETS.lock().unwrap_or_else(|e| e.into_inner());
    for offset in 0..250 {
        let x = ((start + offset) % 250 + 1) as u8;
        if !subnet_users(x).is_empty() || subnet_routed(x) {
            continue;
        }
        let address = format!("10.213.{x}.{CLIENT_HOST}/24");
        if run("ip", &["addr", "add", &address, "dev", link]).is_err() {
            continue;
        }
        // Another process may have claimed the same subnet meanwhile.
        if subnet_users(x) == [link.to_string()] {
            return x;
        }
        let _ = run("ip", &["addr", "del", &address, "dev", link]);
    }
    panic!("no free 10.213.X.0/24 subnet in the root namespace");
}
