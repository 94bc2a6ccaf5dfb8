//! Partition tests across network namespaces (DESIGN §9, layer 4): real
//! nodes, each in its own namespace on a private bridge, links cut and
//! healed with nftables (`netns::Lab`), clients writing unique values with
//! W=2 while the network is split. Every write is recorded in a history;
//! after healing the history is checked against what the cluster returns
//! at R=3 and against each node's own disk:
//! - every acknowledged write is readable and held by every primary of its
//!   key (no client reads needed to get it there: the disks are checked
//!   after hinted handoff and anti-entropy went quiet, and the reads must
//!   find nothing to repair);
//! - all primaries of a key hold the same object (convergence);
//! - no value appears that no client wrote;
//! - no hint is left behind.
//!
//! Root only. Where network namespaces cannot be made the tests say
//! `SKIPPED` and pass, except under CI=true where they fail.

mod netns;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netns::{Lab, LabNode};
use ringkv_client::{Client, ClientError, GetResult};
use ringkv_core::causality::Object;
use ringkv_core::ring::{Layout, key_hash, partition_of};
use ringkv_storage::{DataDirOptions, Space, Storage, open_data_dir};
use support::eventually;

const BUCKET: &str = "partitions";
const N: usize = 3;
const SERVER_ARGS: &[&str] = &[
    "--gossip-interval-ms",
    "200",
    "--request-timeout-ms",
    "2000",
    "--aae-interval-ms",
    "200",
    "--aae-max-segments",
    "1024",
];
/// Failure detection of a silent peer takes ~1.5 s; leave room for load.
const DETECTION: Duration = Duration::from_secs(20);
const CONVERGENCE: Duration = Duration::from_secs(60);
/// Each writer writes at least this many keys during a partition.
const MIN_WRITES: usize = 20;
/// ... and at most this many (a bound; they are stopped long before).
const MAX_WRITES: usize = 5_000;

// ------------------------------------------------------------------ history

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// The server answered with an error (the write may still be stored:
    /// `stored` replicas said so).
    Refused {
        status: u16,
        message: String,
        stored: u32,
    },
    /// No answer: indeterminate.
    Unknown(String),
}

#[derive(Clone, Debug)]
struct Write {
    key: String,
    value: String,
    via: String,
    outcome: Outcome,
}

/// Every write a client made in one scenario, with its outcome.
#[derive(Default)]
struct History {
    writes: Mutex<Vec<Write>>,
}

impl History {
    fn put(&self, via: &str, client: &Client, key: &str, value: &str, w: u32) -> Outcome {
        let result = client.put(
            BUCKET,
            key.as_bytes(),
            value.as_bytes(),
            "text/plain",
            None,
            Some(w),
        );
        let outcome = match result {
            Ok(_) => Outcome::Acked,
            Err(ClientError::Server {
                status,
                code,
                message,
            }) => Outcome::Refused {
                status,
                stored: stored_replicas(&message),
                message: format!("{code}: {message}"),
            },
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        self.writes.lock().unwrap().push(Write {
            key: key.to_string(),
            value: value.to_string(),
            via: via.to_string(),
            outcome: outcome.clone(),
        });
        outcome
    }

    fn put_via(&self, node: &LabNode, key: &str, value: &str, w: u32) -> Outcome {
        self.put(&node.name, &node.client(), key, value, w)
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    fn values(&self, keep: impl Fn(&Write) -> bool) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for write in self.writes().into_iter().filter(keep) {
            out.entry(write.key).or_default().insert(write.value);
        }
        out
    }

    /// key → values of acknowledged writes.
    fn acked(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.values(|w| w.outcome == Outcome::Acked)
    }

    /// key → values of every write tried, whatever its outcome.
    fn attempted(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.values(|_| true)
    }

    /// Keys known to be stored somewhere: acknowledged, or refused after
    /// at least one replica stored them.
    fn stored_keys(&self) -> BTreeSet<String> {
        self.writes()
            .into_iter()
            .filter(|w| match w.outcome {
                Outcome::Acked => true,
                Outcome::Refused { stored, .. } => stored > 0,
                Outcome::Unknown(_) => false,
            })
            .map(|w| w.key)
            .collect()
    }

    /// Writes through `via` nodes that were not acknowledged.
    fn failed_through(&self, via: &[&str]) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|w| via.contains(&w.via.as_str()) && w.outcome != Outcome::Acked)
            .collect()
    }

    fn tried_through(&self, via: &str) -> usize {
        self.writes().iter().filter(|w| w.via == via).count()
    }

    fn acked_through(&self, via: &str) -> usize {
        self.writes()
            .iter()
            .filter(|w| w.via == via && w.outcome == Outcome::Acked)
            .count()
    }
}

/// "quorum not reached: 1 of 2 replicas answered" → 1.
fn stored_replicas(message: &str) -> u32 {
    message
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(" of ").next())
        .and_then(|got| got.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that writes unique keys `{prefix}-{i}` (value = key) at W=2
/// through one node until told to stop (after at least MIN_WRITES).
struct Writers {
    through: Vec<usize>,
    stop: Arc<AtomicBool>,
    /// Set when the test fails half-way: writers quit at once.
    abort: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    fn start(history: &Arc<History>, lab: &Lab, through: &[usize], prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let threads = through
            .iter()
            .map(|&n| {
                let (history, stop, abort) = (history.clone(), stop.clone(), abort.clone());
                let (name, client) = (lab.nodes[n].name.clone(), lab.nodes[n].client());
                let prefix = format!("{prefix}-{name}");
                std::thread::spawn(move || {
                    for i in 0..MAX_WRITES {
                        if abort.load(Ordering::Relaxed)
                            || (i >= MIN_WRITES && stop.load(Ordering::Relaxed))
                        {
                            break;
                        }
                        let key = format!("{prefix}-{i}");
                        history.put(&name, &client, &key, &key, 2);
                    }
                })
            })
            .collect();
        Writers {
            through: through.to_vec(),
            stop,
            abort,
            threads,
        }
    }

    /// Waits until every writer has tried MIN_WRITES more writes.
    fn keep_writing(&self, history: &History, lab: &Lab) {
        let names: Vec<&str> = self
            .through
            .iter()
            .map(|&n| lab.nodes[n].name.as_str())
            .collect();
        let target: Vec<usize> = names
            .iter()
            .map(|n| history.tried_through(n) + MIN_WRITES)
            .collect();
        eventually("writers to go on writing", Duration::from_secs(60), || {
            names
                .iter()
                .zip(&target)
                .all(|(name, target)| history.tried_through(name) >= *target)
                .then_some(())
        });
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in std::mem::take(&mut self.threads) {
            thread.join().expect("writer thread");
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------ checks

fn values_of(result: &GetResult) -> BTreeSet<String> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match result {
        GetResult::Found { value, .. } => BTreeSet::from([text(value)]),
        GetResult::Siblings { siblings, .. } => siblings.iter().map(|s| text(&s.value)).collect(),
        GetResult::NotFound { .. } => BTreeSet::new(),
    }
}

fn sum_metric(lab: &Lab, name: &str) -> u64 {
    lab.nodes.iter().map(|n| n.metric(name)).sum()
}

/// Primaries (node indexes) of each key, as node1 sees the layout.
fn primaries(lab: &Lab, keys: &BTreeSet<String>) -> BTreeMap<String, Vec<usize>> {
    let index = |name: &str| {
        lab.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a lab node")
    };
    keys.iter()
        .map(|key| {
            let url = format!("{}/v1/preflist/{BUCKET}/{key}", lab.nodes[0].url());
            let body: serde_json::Value = serde_json::from_str(&support::http_get(&url)).unwrap();
            let names = body["primaries"].as_array().expect("primaries");
            let nodes: Vec<usize> = names.iter().map(|n| index(n.as_str().unwrap())).collect();
            assert_eq!(nodes.len(), N, "{key}: {body}");
            (key.clone(), nodes)
        })
        .collect()
}

/// Waits, without reading any key, until hinted handoff and anti-entropy
/// are done: no hint pending, every node's trees hold at least the keys
/// known to be stored that it is a primary of, and no anti-entropy repair
/// for a while (every node exchanges with each other primary every two
/// rounds of 200 ms, so two quiet seconds cover many full comparisons).
fn wait_for_convergence(lab: &Lab, history: &History) {
    let started = Instant::now();
    eventually("every hint to be handed off", CONVERGENCE, || {
        lab.nodes
            .iter()
            .all(|n| n.metric("ringkv_hints_pending") == 0)
            .then_some(())
    });
    let stored = history.stored_keys();
    let mut owned = vec![0u64; lab.nodes.len()];
    for nodes in primaries(lab, &stored).values() {
        for &n in nodes {
            owned[n] += 1;
        }
    }
    eventually(
        "anti-entropy trees to hold every stored key",
        CONVERGENCE,
        || {
            lab.nodes
                .iter()
                .zip(&owned)
                .all(|(node, owned)| node.metric("ringkv_aae_tree_keys") >= *owned)
                .then_some(())
        },
    );
    let quiet = Duration::from_secs(2);
    let (mut repaired, mut since) = (
        sum_metric(lab, "ringkv_aae_keys_repaired_total"),
        Instant::now(),
    );
    eventually(
        "anti-entropy to find nothing left to repair",
        CONVERGENCE,
        || {
            let now = sum_metric(lab, "ringkv_aae_keys_repaired_total");
            if now != repaired {
                (repaired, since) = (now, Instant::now());
            }
            (since.elapsed() >= quiet).then_some(())
        },
    );
    eprintln!(
        "converged {:.1} s after healing ({repaired} keys repaired by anti-entropy)",
        started.elapsed().as_secs_f64()
    );
}

/// Reads every key that was written at R=3: the values returned include
/// every acknowledged one and nothing no client wrote, and since the
/// replicas have converged no read finds a replica to repair.
fn check_reads(lab: &Lab, history: &History) {
    let (acked, attempted) = (history.acked(), history.attempted());
    let repairs_before = sum_metric(lab, "ringkv_read_repairs_total");
    let clients: Vec<Client> = lab.nodes.iter().map(LabNode::client).collect();
    for (i, (key, written)) in attempted.iter().enumerate() {
        let result = clients[i % clients.len()]
            .get(BUCKET, key.as_bytes(), Some(N as u32))
            .unwrap_or_else(|e| panic!("R=3 read of {key} failed: {e}"));
        let read = values_of(&result);
        let acked = acked.get(key).cloned().unwrap_or_default();
        assert!(
            acked.is_subset(&read),
            "{key}: read {read:?}, acknowledged {acked:?}"
        );
        assert!(
            read.is_subset(written),
            "{key}: read {read:?}, never written: {written:?}"
        );
    }
    let repairs = sum_metric(lab, "ringkv_read_repairs_total") - repairs_before;
    assert_eq!(repairs, 0, "reads found stale replicas after convergence");
}

/// What one node holds on disk.
struct Disk {
    layout: Layout,
    objects: BTreeMap<String, Object>,
    hints: usize,
}

fn read_disk(node: &LabNode) -> Disk {
    assert!(
        !node.is_running(),
        "{} must be stopped to open its store",
        node.name
    );
    let storage = open_data_dir(&node.data_dir, DataDirOptions::default()).unwrap();
    let layout = Layout::decode(&storage.get(Space::Meta, b"layout").unwrap().unwrap()).unwrap();
    let scan = |space: Space| {
        let mut records = Vec::new();
        loop {
            let page = storage
                .scan(
                    space,
                    records
                        .last()
                        .map(|(k, _): &(Vec<u8>, Vec<u8>)| k.as_slice()),
                    512,
                )
                .unwrap();
            if page.is_empty() {
                return records;
            }
            records.extend(page);
        }
    };
    let mut disk = Disk {
        layout: layout.clone(),
        objects: BTreeMap::new(),
        hints: 0,
    };
    for partition in 0..layout.partitions() {
        disk.hints += scan(Space::Hints(partition)).len();
        for (raw_key, bytes) in scan(Space::Data(partition)) {
            let bucket_len = u16::from_be_bytes([raw_key[0], raw_key[1]]) as usize;
            let bucket = String::from_utf8_lossy(&raw_key[2..2 + bucket_len]).into_owned();
            let key = String::from_utf8_lossy(&raw_key[2 + bucket_len..]).into_owned();
            assert_eq!(
                bucket, BUCKET,
                "{} stores a key of an unknown bucket",
                node.name
            );
            let object = Object::decode(&bytes).unwrap();
            disk.objects.insert(key, object);
        }
    }
    disk
}

fn disk_values(object: &Object) -> BTreeSet<String> {
    object
        .live_siblings()
        .filter_map(|s| s.value.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Stops every node and checks their disks: no hint left, no value that
/// no client wrote, every primary of every key holds the same object, and
/// that object has every acknowledged value of the key.
fn check_disks(lab: &mut Lab, history: &History) {
    lab.kill_all();
    let (acked, attempted) = (history.acked(), history.attempted());
    let disks: Vec<Disk> = lab.nodes.iter().map(read_disk).collect();
    let layout = &disks[0].layout;
    for (node, disk) in lab.nodes.iter().zip(&disks) {
        assert_eq!(
            disk.layout.version(),
            layout.version(),
            "{} has another layout",
            node.name
        );
        assert_eq!(disk.hints, 0, "{} still holds hints", node.name);
        for (key, object) in &disk.objects {
            let values = disk_values(object);
            let written = attempted.get(key).cloned().unwrap_or_default();
            assert!(
                values.is_subset(&written),
                "{}: {key} holds {values:?}, written {written:?}",
                node.name
            );
        }
    }
    let index = |id| {
        let name = &layout.member(id).expect("a member").name;
        lab.nodes
            .iter()
            .position(|n| &n.name == name)
            .expect("a lab node")
    };
    let keys: BTreeSet<&String> = disks
        .iter()
        .flat_map(|d| d.objects.keys())
        .chain(acked.keys())
        .collect();
    for key in keys {
        let partition = partition_of(
            key_hash(BUCKET.as_bytes(), key.as_bytes()),
            layout.partitions(),
        );
        let primaries: Vec<usize> = layout
            .preference_list(partition, N)
            .primaries
            .into_iter()
            .map(index)
            .collect();
        let copies: Vec<Option<&Object>> = primaries
            .iter()
            .map(|&p| disks[p].objects.get(key))
            .collect();
        for (&p, copy) in primaries.iter().zip(&copies) {
            let name = &lab.nodes[p].name;
            let held = copy.map(disk_values).unwrap_or_default();
            let acked = acked.get(key).cloned().unwrap_or_default();
            assert!(
                acked.is_subset(&held),
                "primary {name} holds {held:?} for {key}, acknowledged: {acked:?}"
            );
            assert_eq!(
                *copy, copies[0],
                "primaries {primaries:?} of {key} differ ({name})"
            );
        }
    }
    eprintln!(
        "disks: {} keys ({} acknowledged writes) on every primary",
        disks
            .iter()
            .flat_map(|d| d.objects.keys())
            .collect::<BTreeSet<_>>()
            .len(),
        acked.values().map(BTreeSet::len).sum::<usize>()
    );
}

fn assert_all_acked(history: &History, via: &[&str]) {
    let failed = history.failed_through(via);
    assert!(
        failed.is_empty(),
        "{} writes through {via:?} failed: {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for name in via {
        let acked = history.acked_through(name);
        assert!(acked >= MIN_WRITES, "only {acked} writes through {name}");
    }
}

// ------------------------------------------------------------------ scenarios

/// 3 nodes, node3 cut off from both others. Writes at W=2 through node1
/// and node2 all succeed (they reach each other); writes at W=2 through
/// node3 fail with 503 (it stores them alone: 1 of 2), both before and after
/// it sees the others down. After healing, every acknowledged write is on
/// all three replicas.
#[test]
fn an_isolated_node_refuses_quorum_writes_and_catches_up_after_healing() {
    let started = Instant::now();
    let Some(mut lab) = Lab::cluster(3, SERVER_ARGS) else {
        return;
    };
    let history = Arc::new(History::default());
    for i in 0..20 {
        let key = format!("before-{i}");
        assert_eq!(
            history.put_via(&lab.nodes[i % 3], &key, &key, 3),
            Outcome::Acked
        );
    }

    lab.isolate(2);
    let writers = Writers::start(&history, &lab, &[0, 1], "majority");
    let isolated_write = |i: usize| {
        let key = format!("isolated-{i}");
        match history.put_via(&lab.nodes[2], &key, &key, 2) {
            Outcome::Refused {
                status: 503,
                stored: 1,
                ..
            } => {}
            other => panic!("write {key} through the isolated node3: {other:?}"),
        }
    };
    // Before node3 notices: its peers time out.
    isolated_write(0);
    for (observer, peer) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        lab.wait_liveness(observer, peer, "down", DETECTION);
    }
    // After: no replica but itself is usable (3 nodes: no fallback).
    for i in 1..6 {
        isolated_write(i);
    }
    writers.keep_writing(&history, &lab);
    writers.stop();
    assert_all_acked(&history, &["node1", "node2"]);

    lab.heal();
    lab.wait_all_up(DETECTION);
    wait_for_convergence(&lab, &history);
    check_reads(&lab, &history);
    check_disks(&mut lab, &history);
    eprintln!("isolate one of 3: {:.1} s", started.elapsed().as_secs_f64());
}

/// 5 nodes split 3 | 2. Once each side sees the other down, writes at W=2
/// succeed on both sides (sloppy quorum: fallbacks of the same side hold
/// hints for the primaries across the cut), including concurrent writes of
/// the same keys on both sides. After healing, every acknowledged write is
/// readable at R=3 (the keys written on both sides as siblings) and held
/// by every primary.
#[test]
fn both_sides_of_a_split_accept_writes_that_converge_after_healing() {
    let started = Instant::now();
    let Some(mut lab) = Lab::cluster(5, SERVER_ARGS) else {
        return;
    };
    let history = Arc::new(History::default());
    let (majority, minority) = ([0, 1, 2], [3, 4]);
    lab.split(&majority, &minority);
    for a in majority {
        for b in minority {
            lab.wait_liveness(a, b, "down", DETECTION);
            lab.wait_liveness(b, a, "down", DETECTION);
        }
    }
    let writers = Writers::start(&history, &lab, &[0, 1, 2, 3, 4], "split");
    for i in 0..20 {
        let key = format!("both-{i}");
        for (side, nodes) in [("majority", &majority[..]), ("minority", &minority[..])] {
            let node = &lab.nodes[nodes[i % nodes.len()]];
            let outcome = history.put_via(node, &key, &format!("{key}@{side}"), 2);
            assert_eq!(
                outcome,
                Outcome::Acked,
                "{key} through {} ({side})",
                node.name
            );
        }
    }
    let hints = sum_metric(&lab, "ringkv_hints_pending");
    writers.stop();
    assert_all_acked(&history, &["node1", "node2", "node3", "node4", "node5"]);
    assert!(
        hints > 0,
        "no fallback held a hint: the split did not exercise sloppy quorum"
    );

    lab.heal();
    lab.wait_all_up(DETECTION);
    wait_for_convergence(&lab, &history);
    check_reads(&lab, &history);
    for i in 0..20 {
        let key = format!("both-{i}");
        let read = values_of(
            &lab.nodes[i % 5]
                .client()
                .get(BUCKET, key.as_bytes(), Some(3))
                .unwrap(),
        );
        let expected = BTreeSet::from([format!("{key}@majority"), format!("{key}@minority")]);
        assert_eq!(
            read, expected,
            "{key}: concurrent writes of both sides must be siblings"
        );
    }
    check_disks(&mut lab, &history);
    eprintln!("split 3|2 of 5: {:.1} s", started.elapsed().as_secs_f64());
}

/// 3 nodes; node1 drops everything node2 sends, node2 still receives from
/// node1 (requests arrive, answers do not). Both see each other down,
/// node3 sees both up; writes at W=2 through every node succeed (node3 is
/// reachable both ways from each), and everything converges after healing.
#[test]
fn a_one_way_partition_keeps_quorum_writes_flowing_and_converges() {
    let started = Instant::now();
    let Some(mut lab) = Lab::cluster(3, SERVER_ARGS) else {
        return;
    };
    let history = Arc::new(History::default());
    lab.drop_from(0, 1);
    let writers = Writers::start(&history, &lab, &[0, 1, 2], "oneway");
    lab.wait_liveness(0, 1, "down", DETECTION);
    lab.wait_liveness(1, 0, "down", DETECTION);
    let view = lab.nodes[2].liveness().expect("node3's view");
    assert!(
        view["node1"] != "down" && view["node2"] != "down",
        "node3 sees {view:?}"
    );
    writers.keep_writing(&history, &lab);
    writers.stop();
    assert_all_acked(&history, &["node1", "node2", "node3"]);

    lab.heal();
    lab.wait_all_up(DETECTION);
    wait_for_convergence(&lab, &history);
    check_reads(&lab, &history);
    check_disks(&mut lab, &history);
    eprintln!(
        "one-way node2 -/-> node1: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
