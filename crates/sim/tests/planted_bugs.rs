//! The checkers must catch real bugs. These tests plant one in the
//! simulated node, look for a seed on which the checker reports it, and
//! show the same seed is clean without the bug. They also feed the checker
//! a hand-made bad history.

mod common;

use common::{
    anti_entropy_config, anti_entropy_run, buffered_config, buffered_crash_run, crash_config,
    crash_restart_run, last_write_config, last_write_run, nodes_for, partition_run,
    partition_run_with_bug,
};
use ringkv_core::causality::ConflictMode;
use ringkv_sim::{
    ContextFrom, History, NetworkConfig, Outcome, PlantedBug, Report, Sim, SimConfig, SimStats,
    Step, ViolationKind, check_history,
};

#[test]
fn checker_reports_a_hand_made_lost_write() {
    let mut history = History::new();
    history.record_write("k", "a", false, None, Outcome::Ok);
    let read = history.record_read("k", &["a"], false);
    // b covers a (its context came from a read of a), c is blind.
    history.record_write("k", "b", false, Some(read), Outcome::Ok);
    history.record_write("k", "c", false, None, Outcome::Ok);
    // c silently replaced b.
    history.record_read("k", &["c"], true);
    let violations = check_history(&history, ConflictMode::Siblings);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].kind, ViolationKind::LostWrite);
    assert!(
        violations[0].detail.contains("write b "),
        "{}",
        violations[0]
    );
    // The same history is fine for an LWW bucket, which may drop writes.
    assert_eq!(check_history(&history, ConflictMode::Lww), vec![]);
}

/// A finished run: its report and what it exercised.
struct Run {
    report: Report,
    stats: SimStats,
}

fn finish(mut sim: Sim) -> Run {
    let report = sim.finish();
    Run {
        report,
        stats: sim.stats(),
    }
}

/// Scenario 4 (crash and restart of every node under a lossy network):
/// a coordinator that acknowledges before its write is durable anywhere
/// loses the write when it crashes in that window.
fn crash_scenario(seed: u64, bug: Option<PlantedBug>) -> Run {
    let mut config = crash_config(seed);
    config.bug = bug;
    finish(crash_restart_run(config))
}

/// Clients passing on the contexts their writes returned.
fn last_write_scenario(seed: u64, bug: Option<PlantedBug>) -> Run {
    let mut config = last_write_config(seed);
    config.bug = bug;
    finish(last_write_run(config))
}

/// Concurrent readers and writers of one key through different
/// coordinators, reliable network, no faults.
fn contended_run(seed: u64, bug: Option<PlantedBug>) -> Run {
    let nodes = nodes_for(seed);
    let mut config = SimConfig::new(seed, nodes);
    config.bug = bug;
    config.network = NetworkConfig::reliable();
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    for client in 0..4 {
        let mut steps = Vec::new();
        for _ in 0..6 {
            let context = if rng.chance(0.5) {
                ContextFrom::Blind
            } else {
                ContextFrom::LastRead
            };
            steps.push(Step::Get {
                key: "k".to_string(),
                node: rng.index(nodes),
                r: None,
            });
            steps.push(Step::Put {
                key: "k".to_string(),
                node: (client + rng.index(2)) % nodes,
                context,
            });
        }
        sim.add_client(0, steps);
    }
    finish(sim)
}

/// The first seed in `1..=100` on which `run(seed, true)` (the bug) is
/// reported with a violation of `kind`, after checking that the seed is
/// clean with `run(seed, false)`. Returns the seed, the buggy run and the
/// healthy one.
fn first_caught(
    what: &str,
    kind: ViolationKind,
    run: impl Fn(u64, bool) -> Run,
) -> (u64, Run, Run) {
    for seed in 1..=100 {
        let buggy = run(seed, true);
        if buggy.report.has(kind) {
            let healthy = run(seed, false);
            assert!(
                healthy.report.is_clean(),
                "seed {seed} fails even without {what}:\n{}",
                healthy.report
            );
            return (seed, buggy, healthy);
        }
    }
    panic!("no {kind:?} reported for {what} in 100 seeds");
}

fn with_bug(run: fn(u64, Option<PlantedBug>) -> Run, bug: PlantedBug) -> impl Fn(u64, bool) -> Run {
    move |seed, planted| run(seed, planted.then_some(bug))
}

#[test]
fn checker_catches_ack_before_quorum() {
    let (seed, Run { report, .. }, _) = first_caught(
        "AckBeforeQuorum",
        ViolationKind::LostWrite,
        with_bug(crash_scenario, PlantedBug::AckBeforeQuorum),
    );
    assert!(
        report.has(ViolationKind::LostWrite),
        "seed {seed}: expected a lost write:\n{report}"
    );
    println!("AckBeforeQuorum caught on seed {seed}:\n{report}");
}

#[test]
fn checker_catches_drop_siblings_on_merge() {
    let (seed, Run { report, .. }, _) = first_caught(
        "DropSiblingsOnMerge",
        ViolationKind::LostWrite,
        with_bug(contended_run, PlantedBug::DropSiblingsOnMerge),
    );
    assert!(
        report.has(ViolationKind::LostWrite)
            || report.has(ViolationKind::SupersededVersionReturned),
        "seed {seed}: expected a lost or resurrected write:\n{report}"
    );
    println!("DropSiblingsOnMerge caught on seed {seed}:\n{report}");
}

/// The node deletes a hint record once every target acknowledged it. A
/// fallback counts its dots on from its hint copy, which deletion forgets:
/// before commit a56b069 it did so under its node id and reissued dots the
/// primaries already held (`ReuseFallbackActor`). The checker catches
/// that, and the same seed is clean with the node's rule (a fallback actor
/// per process, replaced whenever a hint record is deleted) although a
/// fallback did write a key again after deleting its hint for it.
#[test]
fn deleting_delivered_hints_is_safe_with_fresh_fallback_actors() {
    let (seed, Run { report, .. }, healthy) = first_caught(
        "ReuseFallbackActor",
        ViolationKind::LostWrite,
        with_bug(crash_scenario, PlantedBug::ReuseFallbackActor),
    );
    assert!(
        report.has(ViolationKind::LostWrite),
        "seed {seed}: expected a lost write:\n{report}"
    );
    assert!(
        healthy.stats.hint_records_deleted > 0,
        "{:?}",
        healthy.stats
    );
    assert!(
        healthy.stats.fallback_writes_after_hint_deletion > 0,
        "seed {seed} never wrote a key again through a fallback that deleted its hint: {:?}",
        healthy.stats
    );
    println!("ReuseFallbackActor caught on seed {seed}:\n{report}");
}

/// A fallback actor that outlives a deleted hint record reissues dots
/// (`FallbackActorOutlivesHint`): what changing it on every deletion
/// prevents, while a key gains one clock entry per hint record's life
/// rather than one per fallback write.
#[test]
fn a_fallback_actor_is_replaced_when_a_hint_record_is_deleted() {
    let (seed, Run { report, .. }, healthy) = first_caught(
        "FallbackActorOutlivesHint",
        ViolationKind::LostWrite,
        with_bug(crash_scenario, PlantedBug::FallbackActorOutlivesHint),
    );
    assert!(
        report.has(ViolationKind::LostWrite),
        "seed {seed}: expected a lost write:\n{report}"
    );
    assert!(
        healthy.stats.fallback_writes_after_hint_deletion > 0,
        "{:?}",
        healthy.stats
    );
    println!("FallbackActorOutlivesHint caught on seed {seed}:\n{report}");
}

/// Returning the object's whole clock to a writer lets its next write drop
/// concurrent siblings it never saw (fixed in a56b069 by
/// `written_context`).
#[test]
fn checker_catches_whole_clock_write_context() {
    let (seed, Run { report, .. }, _) = first_caught(
        "WholeClockContext",
        ViolationKind::LostWrite,
        with_bug(last_write_scenario, PlantedBug::WholeClockContext),
    );
    assert!(
        report.has(ViolationKind::LostWrite),
        "seed {seed}: expected a lost write:\n{report}"
    );
    println!("WholeClockContext caught on seed {seed}:\n{report}");
}

/// Buffered crashes spaced beyond the sync interval.
fn buffered_scenario(seed: u64, bug: Option<PlantedBug>) -> Run {
    let mut config = buffered_config(seed);
    config.bug = bug;
    finish(buffered_crash_run(config))
}

/// A primary that stamps buffered writes with its node id reissues the
/// dots of buffered writes a crash lost (fixed in a56b069 by a
/// per-process incarnation actor): the buffered scenario, whose checker
/// allows only writes that W replicas lost in a crash, catches it.
#[test]
fn checker_catches_buffered_dot_reuse_after_a_crash() {
    let (seed, Run { report, .. }, _) = first_caught(
        "PrimaryActorIsNodeId",
        ViolationKind::LostWrite,
        with_bug(buffered_scenario, PlantedBug::PrimaryActorIsNodeId),
    );
    assert!(
        report.has(ViolationKind::LostWrite),
        "seed {seed}: expected a lost write:\n{report}"
    );
    println!("PrimaryActorIsNodeId caught on seed {seed}:\n{report}");
}

/// The same bug with synced writes: a coordinator sends a write to the
/// other replicas before its own sync, so a crash in between loses its
/// copy while they keep it, and the restarted node, counting on from what
/// it still has, reissues the dot (the crash scenario, where no
/// acknowledged write may be lost, catches it).
#[test]
fn checker_catches_synced_dot_reuse_after_a_crash_before_the_local_sync() {
    let (seed, Run { report, .. }, _) = first_caught(
        "PrimaryActorIsNodeId",
        ViolationKind::LostWrite,
        with_bug(crash_scenario, PlantedBug::PrimaryActorIsNodeId),
    );
    assert!(
        report.has(ViolationKind::LostWrite),
        "seed {seed}: expected a lost write:\n{report}"
    );
    println!("PrimaryActorIsNodeId (sync) caught on seed {seed}:\n{report}");
}

/// Check (b), nothing resurrected: a replica whose merge keeps its own
/// siblings that the incoming history superseded hands covered versions
/// back to readers beside the versions that covered them.
#[test]
fn checker_catches_a_merge_that_resurrects_covered_siblings() {
    let (seed, Run { report, .. }, _) = first_caught(
        "MergeResurrects",
        ViolationKind::SupersededVersionReturned,
        with_bug(contended_run, PlantedBug::MergeResurrects),
    );
    assert!(
        report.has(ViolationKind::SupersededVersionReturned),
        "seed {seed}: expected a resurrected version:\n{report}"
    );
    println!("MergeResurrects caught on seed {seed}:\n{report}");
}

/// A replica cut off or down while clients write, healed after the last
/// write, no client reads.
fn anti_entropy_scenario(seed: u64, bug: Option<PlantedBug>) -> Run {
    let mut config = anti_entropy_config(seed);
    config.bug = bug;
    finish(anti_entropy_run(config))
}

/// Check (c), convergence: without anti-entropy and hinted handoff, the
/// replica that missed writes is still behind after the quiet period (the
/// convergence check runs before the final reads, whose read repair would
/// hide it).
#[test]
fn checker_catches_replicas_left_behind_without_background_repair() {
    let (seed, Run { report, .. }, healthy) = first_caught(
        "NoBackgroundRepair",
        ViolationKind::Divergence,
        with_bug(anti_entropy_scenario, PlantedBug::NoBackgroundRepair),
    );
    assert!(
        report.has(ViolationKind::Divergence),
        "seed {seed}: expected divergence:\n{report}"
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.detail.contains("Merkle roots differ")),
        "seed {seed}: expected differing Merkle roots:\n{report}"
    );
    assert!(healthy.stats.anti_entropy_keys_repaired > 0);
    assert_eq!(report.converged_after_ms, None);
    println!("NoBackgroundRepair caught on seed {seed}:\n{report}");
}

/// Scenario 4 of partitions, loss and duplicates, where late and
/// duplicated replica writes bring replicas older copies of keys.
fn partition_scenario(seed: u64, bug: Option<PlantedBug>) -> Run {
    finish(match bug {
        Some(bug) => partition_run_with_bug(seed, bug),
        None => partition_run(seed),
    })
}

/// Check (d), causal history never goes backwards on a replica: a replica
/// that stores an older copy over its newer one is reported on the write
/// that did it.
#[test]
fn checker_catches_a_replica_storing_an_older_copy() {
    let (seed, Run { report, .. }, _) = first_caught(
        "OverwriteWithStale",
        ViolationKind::ClockRegressed,
        with_bug(partition_scenario, PlantedBug::OverwriteWithStale),
    );
    assert!(
        report.has(ViolationKind::ClockRegressed),
        "seed {seed}: expected a clock regression:\n{report}"
    );
    println!("OverwriteWithStale caught on seed {seed}:\n{report}");
}
