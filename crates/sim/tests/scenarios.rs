//! Simulated scenarios, each over many seeds. A failure prints the seed and
//! `RINGKV_SIM_SEED=<seed> cargo test -p ringkv-sim <test>` to replay it;
//! `RINGKV_SIM_SEEDS=<count>` runs more seeds.

mod common;

use std::collections::BTreeSet;

use common::{
    anti_entropy_config, anti_entropy_run, buffered_config, buffered_crash_run,
    changing_partitions_config, changing_partitions_run, crash_config, crash_restart_run,
    last_write_config, last_write_run, long_partition_run, nemesis_config, nemesis_run, nodes_for,
    other_node, partition_run, pause_config, pause_run,
};

use ringkv_core::bucket::BucketProps;
use ringkv_core::causality::ConflictMode;
use ringkv_sim::{
    ContextFrom, Fault, History, NetworkConfig, OpKind, Outcome, Report, Sim, SimConfig, Step,
    WorkloadShape, check_history, run_seeds,
};

fn clean(report: &Report) -> Result<(), String> {
    if report.is_clean() {
        Ok(())
    } else {
        Err(report.to_string())
    }
}

fn put(key: &str, node: usize, context: ContextFrom) -> Step {
    Step::Put {
        key: key.to_string(),
        node,
        context,
    }
}

fn get(key: &str, node: usize) -> Step {
    Step::Get {
        key: key.to_string(),
        node,
        r: None,
    }
}

fn describe(history: &History, op: usize) -> String {
    format!("op {op}: {:?}", history.get(op))
}

// ---------------------------------------------------------------- 1

/// Each client owns a key and alternates: write (with the context of its
/// last read) through one node, read through another. At R = W = 2 every
/// read that follows an acknowledged write returns exactly that value.
#[test]
fn read_after_write_at_r2_w2() {
    run_seeds("read_after_write_at_r2_w2", 100, |seed| {
        let nodes = nodes_for(seed);
        let mut sim = Sim::new(SimConfig::new(seed, nodes));
        let mut rng = sim.fork_rng();
        for client in 0..3 {
            let key = format!("own{client}");
            let mut steps = Vec::new();
            for _ in 0..8 {
                let writer = rng.index(nodes);
                let reader = other_node(&mut rng, nodes, writer);
                steps.push(put(&key, writer, ContextFrom::LastRead));
                steps.push(get(&key, reader));
                steps.push(Step::Pause {
                    ms: rng.between(0, 20),
                });
            }
            sim.add_client(rng.between(0, 10), steps);
        }
        sim.run_until_clients_done();
        let history = sim.history().clone();
        let mut reads = 0;
        for client in 0..3 {
            let mut last_write: Option<String> = None;
            for (op, record) in history.ops.iter().enumerate() {
                if record.client != client {
                    continue;
                }
                if record.outcome != Outcome::Ok {
                    return Err(format!("no faults, yet {}", describe(&history, op)));
                }
                match &record.kind {
                    OpKind::Write(write) => last_write = Some(write.write.clone()),
                    OpKind::Read(_) => {
                        let expected = vec![last_write.clone().expect("a write comes first")];
                        if record.live_values() != expected {
                            return Err(format!(
                                "read returned {:?}, expected {expected:?}: {}",
                                record.live_values(),
                                describe(&history, op)
                            ));
                        }
                        reads += 1;
                    }
                }
            }
        }
        if reads != 24 {
            return Err(format!("checked {reads} reads, expected 24"));
        }
        clean(&sim.finish())
    });
}

// ---------------------------------------------------------------- 2

/// 2 to 4 clients write one key blindly at the same moment through
/// different nodes; all are acknowledged; a read returns all of them as
/// siblings; a write with that read's context resolves them to one value.
#[test]
fn concurrent_blind_writes_become_siblings_that_a_read_context_resolves() {
    run_seeds(
        "concurrent_blind_writes_become_siblings_that_a_read_context_resolves",
        100,
        |seed| {
            let nodes = nodes_for(seed);
            let mut sim = Sim::new(SimConfig::new(seed, nodes));
            let mut rng = sim.fork_rng();
            let writers = 2 + rng.index(3);
            let first = rng.index(nodes);
            for writer in 0..writers {
                let node = (first + writer) % nodes;
                sim.add_client(5, vec![put("k", node, ContextFrom::Blind)]);
            }
            sim.run_until_clients_done();
            let blind: BTreeSet<String> = sim
                .history()
                .ops
                .iter()
                .map(|op| match &op.kind {
                    OpKind::Write(w) if op.outcome == Outcome::Ok => Ok(w.write.clone()),
                    _ => Err(format!("a blind write failed without faults: {op:?}")),
                })
                .collect::<Result<_, _>>()?;

            let node = rng.index(nodes);
            let resolver = sim.add_client(
                sim.now_ms() + 1,
                vec![
                    get("k", node),
                    put(
                        "k",
                        other_node(&mut rng, nodes, node),
                        ContextFrom::LastRead,
                    ),
                    get("k", rng.index(nodes)),
                ],
            );
            sim.run_until_clients_done();
            let history = sim.history().clone();
            let ops: Vec<usize> = (0..history.ops.len())
                .filter(|&op| history.get(op).client == resolver)
                .collect();
            let [read, resolve, reread] = ops[..] else {
                return Err(format!("resolver ran {} operations", ops.len()));
            };
            let siblings: BTreeSet<String> = history.get(read).live_values().into_iter().collect();
            if siblings != blind || history.get(read).live_values().len() != writers {
                return Err(format!(
                    "read returned {siblings:?}, expected the siblings {blind:?}"
                ));
            }
            let resolved = history.get(resolve);
            if resolved.outcome != Outcome::Ok {
                return Err(format!("resolving write failed: {resolved:?}"));
            }
            let value = resolved.as_write().expect("a write").write.clone();
            if history.get(reread).live_values() != vec![value.clone()] {
                return Err(format!(
                    "after the resolving write {value}, a read returned {:?}",
                    history.get(reread).live_values()
                ));
            }
            clean(&sim.finish())
        },
    );
}

/// In an LWW bucket the same concurrent writes leave exactly one value,
/// the same on every replica.
#[test]
fn lww_bucket_keeps_one_of_concurrent_writes() {
    run_seeds("lww_bucket_keeps_one_of_concurrent_writes", 50, |seed| {
        let nodes = nodes_for(seed);
        let mut config = SimConfig::new(seed, nodes);
        config.bucket = BucketProps::lww();
        let mut sim = Sim::new(config);
        let mut rng = sim.fork_rng();
        let writers = 2 + rng.index(3);
        for writer in 0..writers {
            sim.add_client(5, vec![put("k", writer % nodes, ContextFrom::Blind)]);
        }
        sim.run_until_clients_done();
        let reader = sim.add_client(sim.now_ms() + 1, vec![get("k", rng.index(nodes))]);
        sim.run_until_clients_done();
        let history = sim.history().clone();
        let read = history
            .ops
            .iter()
            .find(|op| op.client == reader)
            .expect("the reader read");
        if read.live_values().len() != 1 {
            return Err(format!("lww read returned {:?}", read.live_values()));
        }
        clean(&sim.finish())
    });
}

// ---------------------------------------------------------------- 3

/// One node is down from the start and the network only delays: every
/// read and write sent to a live node succeeds at R = W = 2.
#[test]
fn one_node_down_reads_and_writes_still_succeed() {
    run_seeds(
        "one_node_down_reads_and_writes_still_succeed",
        100,
        |seed| {
            let nodes = nodes_for(seed);
            let mut sim = Sim::new(SimConfig::new(seed, nodes));
            let mut rng = sim.fork_rng();
            // A primary of k0, so that some key has a primary down.
            let down = sim.primaries("k0")[rng.index(3)];
            sim.schedule(0, Fault::Crash(down));
            let live: Vec<usize> = (0..nodes).filter(|&n| n != down).collect();
            let shape = WorkloadShape::new(4, 20, 4, live);
            for steps in shape.generate(&mut rng) {
                sim.add_client(1 + rng.between(0, 10), steps);
            }
            sim.run_until_clients_done();
            let history = sim.history().clone();
            if let Some(op) = history.ops.iter().position(|op| op.outcome != Outcome::Ok) {
                return Err(format!("n{down} is down, yet {}", describe(&history, op)));
            }
            clean(&sim.finish())
        },
    );
}

// ---------------------------------------------------------------- 4

#[test]
fn crash_and_restart_of_every_node_lose_no_acknowledged_write() {
    run_seeds(
        "crash_and_restart_of_every_node_lose_no_acknowledged_write",
        100,
        |seed| {
            let mut sim = crash_restart_run(crash_config(seed));
            let report = sim.finish();
            clean(&report)?;
            let acked = sim
                .history()
                .ops
                .iter()
                .filter(|op| op.as_write().is_some() && op.outcome == Outcome::Ok)
                .count();
            if acked < 10 {
                return Err(format!("only {acked} writes were acknowledged"));
            }
            Ok(())
        },
    );
}

#[test]
fn partitions_loss_and_duplicates_lose_no_acknowledged_write() {
    run_seeds(
        "partitions_loss_and_duplicates_lose_no_acknowledged_write",
        100,
        |seed| clean(&partition_run(seed).finish()),
    );
}

// ---------------------------------------------------------------- sloppy quorum

/// Five nodes, two of the three primaries of `k0` down from the start.
/// Once the failure detectors saw them down (a refused heartbeat), every
/// read and write through a live node succeeds at R = W = 2, fallbacks
/// keeping hints for the down primaries; after the restart `finish` checks
/// that the hints were handed off, nothing acknowledged was lost and the
/// primaries agree.
#[test]
fn sloppy_quorum_takes_writes_for_down_primaries_and_hands_them_off() {
    run_seeds(
        "sloppy_quorum_takes_writes_for_down_primaries_and_hands_them_off",
        100,
        |seed| {
            let nodes = 5;
            let mut sim = Sim::new(SimConfig::new(seed, nodes));
            let mut rng = sim.fork_rng();
            let primaries = sim.primaries("k0");
            let kept = rng.index(3);
            let down: Vec<usize> = (0..3)
                .filter(|&i| i != kept)
                .map(|i| primaries[i])
                .collect();
            for &node in &down {
                sim.schedule(0, Fault::Crash(node));
            }
            let live: Vec<usize> = (0..nodes).filter(|n| !down.contains(n)).collect();
            for steps in WorkloadShape::new(4, 20, 3, live).generate(&mut rng) {
                sim.add_client(1_000 + rng.between(0, 10), steps);
            }
            sim.run_until_clients_done();
            let history = sim.history().clone();
            if let Some(op) = history.ops.iter().position(|op| op.outcome != Outcome::Ok) {
                return Err(format!(
                    "n{} and n{} are down and detected, yet {}",
                    down[0],
                    down[1],
                    describe(&history, op)
                ));
            }
            if sim.hints_pending() == 0 {
                return Err("no fallback holds a hint".to_string());
            }
            clean(&sim.finish())
        },
    );
}

#[test]
fn long_partitions_use_fallbacks_without_losing_writes() {
    run_seeds(
        "long_partitions_use_fallbacks_without_losing_writes",
        100,
        |seed| clean(&long_partition_run(seed).finish()),
    );
}

// ---------------------------------------------------------------- contexts

/// Clients pass on the context their last write returned. That context
/// covers the write and what its own context covered, never a concurrent
/// sibling the client did not see, so no acknowledged write is dropped.
#[test]
fn contexts_returned_by_writes_supersede_only_what_their_writer_saw() {
    run_seeds(
        "contexts_returned_by_writes_supersede_only_what_their_writer_saw",
        100,
        |seed| {
            let mut sim = last_write_run(last_write_config(seed));
            clean(&sim.finish())?;
            let chained = sim
                .history()
                .ops
                .iter()
                .filter(|op| {
                    op.outcome == Outcome::Ok
                        && op.as_write().is_some_and(|w| {
                            w.context_from
                                .is_some_and(|from| sim.history().get(from).as_write().is_some())
                        })
                })
                .count();
            if chained < 5 {
                return Err(format!(
                    "only {chained} acknowledged writes passed on a write's context"
                ));
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- durability

/// Buffered durability acknowledges before the sync, so a crash may lose
/// what the node committed since its last sync (DESIGN §1: "a crash may
/// lose the last moments"). Crashes one at a time, spaced beyond the sync
/// interval: the checker allows only acknowledged writes that overlap such
/// a window to be missing, and still requires that nothing is resurrected,
/// no value appears that nobody wrote, and the replicas converge.
#[test]
fn buffered_writes_survive_crashes_spaced_beyond_the_sync_interval() {
    run_seeds(
        "buffered_writes_survive_crashes_spaced_beyond_the_sync_interval",
        100,
        |seed| {
            let mut sim = buffered_crash_run(buffered_config(seed));
            let report = sim.finish();
            clean(&report)?;
            let acked = sim
                .history()
                .ops
                .iter()
                .filter(|op| op.as_write().is_some() && op.outcome == Outcome::Ok)
                .count();
            if report.writes_allowed_lost * 2 > acked {
                return Err(format!(
                    "{} of {acked} acknowledged writes were allowed to be lost: the check is too weak",
                    report.writes_allowed_lost
                ));
            }
            Ok(())
        },
    );
}

/// The same with every node crashing at once (scenario 4 under buffered
/// durability): writes acknowledged by replicas that all crash before
/// their sync may be lost, and are on some seeds; the checker allows
/// exactly those (and what they superseded coming back), nothing else.
#[test]
fn buffered_writes_lost_only_when_w_replicas_crash_before_their_sync() {
    run_seeds(
        "buffered_writes_lost_only_when_w_replicas_crash_before_their_sync",
        50,
        |seed| {
            let mut config = buffered_config(seed);
            config.network = NetworkConfig::lossy(0.03, 0.0);
            clean(&crash_restart_run(config).finish())
        },
    );
    // Not vacuous: on some seed the strict check (nothing lost) fails.
    let needed = (1..=20).find(|&seed| {
        let mut config = buffered_config(seed);
        config.network = NetworkConfig::lossy(0.03, 0.0);
        let mut sim = crash_restart_run(config);
        let report = sim.finish();
        report.writes_allowed_lost > 0
            && !check_history(sim.history(), ConflictMode::Siblings).is_empty()
    });
    assert!(needed.is_some(), "no seed in 1..=20 lost a buffered write");
}

// ---------------------------------------------------------------- network and process faults

/// Partitions that change over time: one node isolated, a minority split
/// from the majority, one group unable to reach another (one way), two
/// groups cut while the rest reaches both, healed; some held long enough
/// for nodes to be declared down and fallbacks to take writes.
#[test]
fn changing_partitions_lose_nothing_and_converge() {
    run_seeds(
        "changing_partitions_lose_nothing_and_converge",
        100,
        |seed| {
            let mut sim = changing_partitions_run(changing_partitions_config(seed));
            clean(&sim.finish())?;
            if sim.stats().messages_cut == 0 {
                return Err("no message was cut".to_string());
            }
            Ok(())
        },
    );
}

/// Nodes paused for up to 3 s (they keep their memory and handle what
/// waited when they resume, late), clocks stepping by up to 5 s either
/// way, and a crash.
#[test]
fn pauses_and_clock_steps_lose_nothing_and_converge() {
    run_seeds(
        "pauses_and_clock_steps_lose_nothing_and_converge",
        100,
        |seed| {
            let mut sim = pause_run(pause_config(seed));
            clean(&sim.finish())?;
            if sim.stats().pauses == 0 {
                return Err("no node was paused".to_string());
            }
            Ok(())
        },
    );
}

/// A replica that missed every write while it was cut off or down is
/// brought up to date by anti-entropy alone: no client reads, no write
/// after the heal, no hints (three nodes, no fallbacks). The convergence
/// check runs before the final reads.
#[test]
fn anti_entropy_alone_brings_a_replica_that_missed_writes_up_to_date() {
    run_seeds(
        "anti_entropy_alone_brings_a_replica_that_missed_writes_up_to_date",
        100,
        |seed| {
            let mut sim = anti_entropy_run(anti_entropy_config(seed));
            clean(&sim.finish())?;
            let stats = sim.stats();
            if stats.anti_entropy_keys_repaired == 0 || stats.read_repairs > 0 {
                return Err(format!("not repaired by anti-entropy alone: {stats:?}"));
            }
            Ok(())
        },
    );
}

/// Every fault at once: changing partitions, pauses, crashes, clock
/// steps, loss, duplicates and reordering; every kind of client
/// operation; buffered durability on one seed of three.
#[test]
fn every_fault_at_once_loses_nothing_and_converges() {
    run_seeds(
        "every_fault_at_once_loses_nothing_and_converges",
        100,
        |seed| clean(&nemesis_run(nemesis_config(seed)).finish()),
    );
}

// ---------------------------------------------------------------- 5

#[test]
fn same_seed_same_trace_and_history() {
    run_seeds("same_seed_same_trace_and_history", 20, |seed| {
        let mut first = crash_restart_run(crash_config(seed));
        let mut second = crash_restart_run(crash_config(seed));
        let (a, b) = (first.finish(), second.finish());
        if a.trace_hash != b.trace_hash || a.events != b.events {
            return Err(format!(
                "same seed, different traces: {:016x} ({} events) vs {:016x} ({} events)",
                a.trace_hash, a.events, b.trace_hash, b.events
            ));
        }
        if first.history() != second.history() {
            return Err("same seed, different histories".to_string());
        }
        let mut third = partition_run(seed);
        let mut fourth = partition_run(seed);
        if third.finish().trace_hash != fourth.finish().trace_hash {
            return Err("same seed, different partition traces".to_string());
        }
        let mut fifth = nemesis_run(nemesis_config(seed));
        let mut sixth = nemesis_run(nemesis_config(seed));
        let (e, f) = (fifth.finish(), sixth.finish());
        if e.trace_hash != f.trace_hash || fifth.history() != sixth.history() {
            return Err("same seed, different runs with every fault".to_string());
        }
        Ok(())
    });
}

#[test]
fn different_seeds_give_different_traces() {
    let hashes: BTreeSet<u64> = (1..=30)
        .map(|seed| crash_restart_run(crash_config(seed)).finish().trace_hash)
        .collect();
    assert!(
        hashes.len() >= 29,
        "30 seeds gave only {} distinct traces",
        hashes.len()
    );
    // Same cluster size, same workload shape: only the seed differs.
    let hashes: BTreeSet<u64> = (0..10)
        .map(|i| {
            let seed = 3 * i + 3;
            let mut config = SimConfig::new(seed, 3);
            config.network = NetworkConfig::reliable();
            crash_restart_run(config).finish().trace_hash
        })
        .collect();
    assert_eq!(hashes.len(), 10, "seeds with 3 nodes collided");
}
