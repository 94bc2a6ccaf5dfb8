//! Scenario runs shared by the scenario tests and the planted-bug tests.
#![allow(dead_code)] // each test binary uses a subset

use ringkv_sim::{
    Fault, NetworkConfig, PlantedBug, Sim, SimConfig, SimRng, WorkloadShape, changing_partitions,
};

/// 3, 4 or 5 nodes depending on the seed.
pub fn nodes_for(seed: u64) -> usize {
    3 + (seed % 3) as usize
}

/// A node other than `node`.
pub fn other_node(rng: &mut SimRng, nodes: usize, node: usize) -> usize {
    (node + 1 + rng.index(nodes - 1)) % nodes
}

/// A write-heavy workload over a lossy network while every node crashes
/// and restarts, one at a time, then all at once.
pub fn crash_restart_run(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    let mut shape = WorkloadShape::new(4, 30, 4, (0..nodes).collect());
    shape.mix = [30, 40, 20, 10, 0];
    for steps in shape.generate(&mut rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
    let mut order: Vec<usize> = (0..nodes).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.index(i + 1));
    }
    let mut t = 50;
    for node in order {
        t += rng.between(50, 200);
        sim.schedule(t, Fault::Crash(node));
        sim.schedule(t + rng.between(20, 150), Fault::Restart(node));
        t += 150;
    }
    t += rng.between(50, 200);
    for node in 0..nodes {
        sim.schedule(t + rng.between(0, 5), Fault::Crash(node));
        sim.schedule(t + rng.between(50, 250), Fault::Restart(node));
    }
    sim
}

pub fn crash_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.network = NetworkConfig::lossy(0.03, 0.0);
    config
}

/// Partitions (isolated nodes, one-way links), loss and duplicates.
pub fn partition_run(seed: u64) -> Sim {
    partition_run_config(partition_config(seed))
}

/// The same with a planted bug.
pub fn partition_run_with_bug(seed: u64, bug: PlantedBug) -> Sim {
    let mut config = partition_config(seed);
    config.bug = Some(bug);
    partition_run_config(config)
}

fn partition_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.network = NetworkConfig::lossy(0.02, 0.05);
    config
}

fn partition_run_config(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    for steps in WorkloadShape::new(4, 30, 3, (0..nodes).collect()).generate(&mut rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
    let mut t = 0;
    for _ in 0..4 {
        t += rng.between(50, 300);
        if rng.chance(0.5) {
            sim.schedule(t, Fault::Isolate(rng.index(nodes)));
        } else {
            for _ in 0..3 {
                let from = rng.index(nodes);
                let to = other_node(&mut rng, nodes, from);
                sim.schedule(t, Fault::Block { from, to });
            }
        }
        t += rng.between(100, 400);
        sim.schedule(t, Fault::Heal);
    }
    sim
}

/// A node isolated for 2-3 s, twice, under a slightly lossy network: long
/// enough for the other nodes' failure detectors to declare it down and
/// write to fallbacks (sloppy quorum), which hand their hints off after the
/// heal.
pub fn long_partition_run(seed: u64) -> Sim {
    let nodes = nodes_for(seed);
    let mut config = SimConfig::new(seed, nodes);
    config.network = NetworkConfig::lossy(0.01, 0.02);
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    let mut shape = WorkloadShape::new(4, 50, 3, (0..nodes).collect());
    shape.max_pause_ms = 80;
    for steps in shape.generate(&mut rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
    let mut t = 0;
    for _ in 0..2 {
        t += rng.between(100, 400);
        sim.schedule(t, Fault::Isolate(rng.index(nodes)));
        t += rng.between(2_000, 3_000);
        sim.schedule(t, Fault::Heal);
    }
    sim
}

/// Clients that mostly pass on the context their own last write returned
/// (`ContextFrom::LastWrite`), among blind writers, readers and deleters
/// of two keys through every node, over a lossy network with one crash.
pub fn last_write_run(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    let mut shape = WorkloadShape::new(4, 30, 2, (0..nodes).collect());
    shape.mix = [20, 10, 20, 5, 45];
    for steps in shape.generate(&mut rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
    let node = rng.index(nodes);
    let at = rng.between(100, 400);
    sim.schedule(at, Fault::Crash(node));
    sim.schedule(at + rng.between(50, 300), Fault::Restart(node));
    sim
}

pub fn last_write_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.network = NetworkConfig::lossy(0.02, 0.02);
    config
}

/// Buffered durability (acknowledged before the sync, synced within
/// `sync_interval_ms`): nodes crash one at a time, each crash more than a
/// sync interval after the previous one, while clients write.
pub fn buffered_crash_run(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let interval = config.sync_interval_ms;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    let mut shape = WorkloadShape::new(4, 40, 3, (0..nodes).collect());
    shape.mix = [25, 35, 20, 10, 10];
    shape.max_pause_ms = 60;
    for steps in shape.generate(&mut rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
    let mut t = rng.between(100, 400);
    for _ in 0..5 {
        let node = rng.index(nodes);
        sim.schedule(t, Fault::Crash(node));
        let down = rng.between(50, 300);
        sim.schedule(t + down, Fault::Restart(node));
        t += down + interval + rng.between(50, 300);
    }
    sim
}

pub fn buffered_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.node_durability = ringkv_core::bucket::DurabilityMode::Buffered;
    // Shorter than the node's 1 s default, so that several crashes spaced
    // beyond it fit in one run.
    config.sync_interval_ms = 300;
    config.network = NetworkConfig::lossy(0.01, 0.01);
    config
}

/// Clients of every kind (reads, context writes, blind writes, deletes,
/// writes passing their last write's context) on a few keys.
fn mixed_clients(sim: &mut Sim, rng: &mut SimRng, clients: usize, ops: usize, keys: usize) {
    let nodes = sim.config().nodes;
    let mut shape = WorkloadShape::new(clients, ops, keys, (0..nodes).collect());
    shape.mix = [30, 30, 15, 10, 15];
    shape.max_pause_ms = 50;
    for steps in shape.generate(rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
}

/// Partitions that change over time (isolate one node, minority/majority,
/// one way, a bridge, healed), some held long enough for the failure
/// detectors to declare nodes down, over a network that loses, duplicates,
/// delays and reorders.
pub fn changing_partitions_run(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    mixed_clients(&mut sim, &mut rng, 4, 50, 3);
    for (at, fault) in changing_partitions(&mut rng, nodes, 50, 3_000, (100, 2_000)) {
        sim.schedule(at, fault);
    }
    sim
}

pub fn changing_partitions_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.network = NetworkConfig::lossy(0.02, 0.05);
    config.network.max_delay_ms = 40;
    config
}

/// Nodes paused (SIGSTOP) for 0.2 to 3 s, some long enough to be declared
/// down, clocks stepping forwards and backwards by up to 5 s, and a crash.
pub fn pause_run(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    mixed_clients(&mut sim, &mut rng, 4, 50, 3);
    let mut t = 0;
    for _ in 0..3 {
        t += rng.between(100, 600);
        let node = rng.index(nodes);
        sim.schedule(t, Fault::Pause(node));
        sim.schedule(t + rng.between(200, 3_000), Fault::Resume(node));
    }
    for _ in 0..3 {
        let by_ms = rng.between(100, 5_000) as i64;
        let by_ms = if rng.chance(0.5) { by_ms } else { -by_ms };
        let node = rng.index(nodes);
        sim.schedule(rng.between(0, 3_000), Fault::ClockJump { node, by_ms });
    }
    let node = rng.index(nodes);
    let at = rng.between(200, 2_500);
    sim.schedule(at, Fault::Crash(node));
    sim.schedule(at + rng.between(50, 500), Fault::Restart(node));
    sim
}

pub fn pause_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.network = NetworkConfig::lossy(0.01, 0.02);
    config
}

/// Three nodes (every node a primary of every key, so no fallback and no
/// hint), one of them cut off or down from the start while clients only
/// write through the other two: it misses every write, and `finish` heals
/// it after the last one. Each write ships the whole object, but none
/// comes after the heal and no client reads, so only anti-entropy can
/// bring it up to date before the convergence check.
pub fn anti_entropy_run(config: SimConfig) -> Sim {
    assert_eq!(
        config.nodes, 3,
        "with more nodes fallbacks would keep hints"
    );
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    let behind = rng.index(3);
    let live: Vec<usize> = (0..3).filter(|&n| n != behind).collect();
    let mut shape = WorkloadShape::new(3, 20, 4, live);
    shape.mix = [0, 0, 50, 0, 50];
    for steps in shape.generate(&mut rng) {
        sim.add_client(rng.between(0, 10), steps);
    }
    if rng.chance(0.5) {
        sim.schedule(0, Fault::Isolate(behind));
    } else {
        sim.schedule(0, Fault::Crash(behind));
    }
    sim
}

pub fn anti_entropy_config(seed: u64) -> SimConfig {
    SimConfig::new(seed, 3)
}

/// Everything at once: changing partitions, pauses, crashes, clock steps,
/// loss, duplicates and reordering, every kind of client operation; sync
/// durability on two seeds of three, buffered on the third.
pub fn nemesis_run(config: SimConfig) -> Sim {
    let nodes = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = sim.fork_rng();
    mixed_clients(&mut sim, &mut rng, 5, 50, 4);
    for (at, fault) in changing_partitions(&mut rng, nodes, 100, 3_000, (100, 1_800)) {
        sim.schedule(at, fault);
    }
    for _ in 0..2 {
        let node = rng.index(nodes);
        let at = rng.between(0, 3_000);
        sim.schedule(at, Fault::Pause(node));
        sim.schedule(at + rng.between(100, 2_500), Fault::Resume(node));
        let node = rng.index(nodes);
        let at = rng.between(0, 3_000);
        sim.schedule(at, Fault::Crash(node));
        sim.schedule(at + rng.between(50, 600), Fault::Restart(node));
        let by_ms = rng.between(0, 6_000) as i64 - 3_000;
        sim.schedule(
            rng.between(0, 3_000),
            Fault::ClockJump {
                node: rng.index(nodes),
                by_ms,
            },
        );
    }
    sim
}

pub fn nemesis_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes_for(seed));
    config.network = NetworkConfig::lossy(0.03, 0.05);
    config.network.max_delay_ms = 40;
    if seed.is_multiple_of(3) {
        config.node_durability = ringkv_core::bucket::DurabilityMode::Buffered;
        config.sync_interval_ms = 300;
    }
    config
}
