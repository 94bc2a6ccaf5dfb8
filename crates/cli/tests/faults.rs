//! Concurrent clients write unique values with W=2 while nodes are killed
//! (kill -9), paused (SIGSTOP/SIGCONT), restarted, and wiped; afterwards
//! every acknowledged write is on every replica's disk, brought there by
//! hinted handoff, read repair or anti-entropy — no client reads needed.
//! One more client deletes keys and writes them again once their
//! tombstones may have been reaped (`--delete-mode 100`): those writes
//! survive too.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv_client::GetResult;
use support::{Cluster, assert_disk_holds, eventually, metric};

const BUCKET: &str = "faults";

#[test]
fn acknowledged_writes_survive_kill_pause_restart_and_wipe() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--aae-interval-ms",
            "200",
            "--aae-max-segments",
            "1024",
            "--delete-mode",
            "100",
        ],
    );
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (urls, stop, acked) = (urls.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let clients: Vec<_> = urls.iter().map(|u| ringkv_client::Client::new(u)).collect();
                let deadline = Instant::now() + Duration::from_secs(40);
                for i in 0..2_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let key = format!("w{t}-{i}");
                    // Try the nodes in turn; a failed attempt is indeterminate, not acknowledged.
                    for attempt in 0..3 {
                        let client = &clients[(t + i + attempt) % 3];
                        if client
                            .put(
                                BUCKET,
                                key.as_bytes(),
                                key.as_bytes(),
                                "text/plain",
                                None,
                                Some(2),
                            )
                            .is_ok()
                        {
                            acked.lock().unwrap().push(key.clone());
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // Write, delete with the read's context, wait out the reap delay, then
    // write again: only the last write is counted as acknowledged, and its
    // value (the key) is what the disks must hold.
    let deleter = {
        let (urls, stop, acked) = (urls.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let clients: Vec<_> = urls.iter().map(|u| ringkv_client::Client::new(u)).collect();
            let deadline = Instant::now() + Duration::from_secs(40);
            let mut reaped_then_written = 0;
            for i in 0..500 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let key = format!("d-{i}");
                let client = &clients[i % 3];
                let put = |value: &[u8]| {
                    client.put(BUCKET, key.as_bytes(), value, "text/plain", None, Some(2))
                };
                if put(b"old").is_err() {
                    continue;
                }
                let Ok(GetResult::Found { context, .. }) =
                    client.get(BUCKET, key.as_bytes(), Some(2))
                else {
                    continue;
                };
                if client
                    .delete(BUCKET, key.as_bytes(), Some(&context), Some(2))
                    .is_err()
                {
                    continue;
                }
                std::thread::sleep(Duration::from_millis(300));
                if put(key.as_bytes()).is_ok() {
                    acked.lock().unwrap().push(key.clone());
                    reaped_then_written += 1;
                }
            }
            reaped_then_written
        })
    };
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    let seed = cluster.nodes[0].peer.clone();
    pause(500);
    cluster.nodes[2].kill9();
    pause(800);
    cluster.nodes[2].start(Some(&seed));
    pause(500);
    cluster.nodes[1].signal("STOP");
    pause(1_500);
    cluster.nodes[1].signal("CONT");
    pause(500);
    cluster.nodes[2].kill9();
    std::fs::remove_dir_all(&cluster.nodes[2].dir).unwrap();
    cluster.nodes[2].start(Some(&seed));
    pause(800);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let rewritten = deleter.join().unwrap();
    assert!(
        rewritten > 3,
        "only {rewritten} keys were deleted and written again"
    );
    let reaped: u64 = cluster
        .nodes
        .iter()
        .map(|n| metric(n, "ringkv_tombstones_reaped_total"))
        .sum();
    assert!(reaped > 0, "no tombstone was reaped");
    let keys = acked.lock().unwrap().clone();
    assert!(
        keys.len() > 50,
        "only {} writes were acknowledged",
        keys.len()
    );
    cluster.wait_for_agreement();
    // Anti-entropy brings every replica to every key (3 nodes, n=3).
    for node in &cluster.nodes {
        eventually(
            "every replica to hold every key",
            Duration::from_secs(60),
            || (metric(node, "ringkv_aae_tree_keys") >= keys.len() as u64).then_some(()),
        );
    }
    for node in cluster.nodes.iter_mut() {
        assert_disk_holds(node, BUCKET, &keys);
    }
}
