//! `Fault`: what a scenario can do to a run besides its client workload
//! (crash, restart, pause, resume, cut links, heal, step a clock), `Cut`:
//! the shapes of network partitions, and `changing_partitions`, a seeded
//! schedule of partitions that change over time. What a fault does to the
//! run is `Sim`'s business; this module only describes faults.

use std::collections::BTreeSet;

use crate::rng::SimRng;

/// Messages from every node of `from` to every node of `to` are lost (and
/// back, when `both_ways`). Links inside a group, and links of nodes in
/// neither group, are untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub from: Vec<usize>,
    pub to: Vec<usize>,
    pub both_ways: bool,
}

impl Cut {
    /// `node` against every other node, both ways.
    pub fn isolate(node: usize, nodes: usize) -> Cut {
        Cut::split(&[node], nodes)
    }

    /// `side` against every node not in it, both ways (a minority side
    /// gives a majority/minority split).
    pub fn split(side: &[usize], nodes: usize) -> Cut {
        Cut {
            from: side.to_vec(),
            to: (0..nodes).filter(|n| !side.contains(n)).collect(),
            both_ways: true,
        }
    }

    /// `from` cannot reach `to`; `to` still reaches `from`.
    pub fn one_way(from: &[usize], to: &[usize]) -> Cut {
        Cut {
            from: from.to_vec(),
            to: to.to_vec(),
            both_ways: false,
        }
    }

    /// `a` and `b` cannot reach each other; every other node reaches both
    /// (a bridge: a non-transitive partition).
    pub fn between(a: &[usize], b: &[usize]) -> Cut {
        Cut {
            from: a.to_vec(),
            to: b.to_vec(),
            both_ways: true,
        }
    }

    /// The directed links this cut blocks.
    pub fn links(&self) -> BTreeSet<(usize, usize)> {
        let mut links = BTreeSet::new();
        for &from in &self.from {
            for &to in self.to.iter().filter(|&&to| to != from) {
                links.insert((from, to));
                if self.both_ways {
                    links.insert((to, from));
                }
            }
        }
        links
    }
}

/// A fault the scenario schedules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The process dies: in-memory state (rounds, commit queue) is lost,
    /// the storage keeps what was synced (`MemoryStorage::crash`).
    Crash(usize),
    /// The process starts again with the same storage and node id.
    Restart(usize),
    /// The process stops (SIGSTOP, a long GC pause, a stalled VM): it
    /// handles nothing, but keeps its memory, and whatever reaches it
    /// (messages, client requests, its own timers and commits) waits.
    Pause(usize),
    /// The paused process goes on (SIGCONT) and handles everything that
    /// waited, in arrival order; its periodic loops tick at once.
    Resume(usize),
    /// Cuts the node off from every other node, both directions (adds to
    /// the cuts in place).
    Isolate(usize),
    /// Loses every message from `from` to `to` (one direction).
    Block {
        from: usize,
        to: usize,
    },
    Unblock {
        from: usize,
        to: usize,
    },
    /// Adds a cut to those in place.
    Cut(Cut),
    /// Replaces every cut in place by these (one step of a partition
    /// schedule; an empty list heals).
    Partition(Vec<Cut>),
    /// Unblocks every link.
    Heal,
    /// The node's clock steps by `by_ms` (NTP stepping it, a VM migrated):
    /// its skew changes from now on. Negative steps go back in time.
    ClockJump {
        node: usize,
        by_ms: i64,
    },
}

/// Shapes of partitions `changing_partitions` draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    IsolateOne,
    MinorityMajority,
    OneWay,
    Bridge,
    Healed,
}

/// `Healed` last: the first step of a schedule draws from the others.
const SHAPES: [Shape; 5] = [
    Shape::IsolateOne,
    Shape::MinorityMajority,
    Shape::OneWay,
    Shape::Bridge,
    Shape::Healed,
];

/// A schedule of partitions that change over time between `start_ms` and
/// `end_ms`: each step replaces the previous partition by a new one
/// (isolate one node, split a minority from the majority, cut one group
/// from another one way, cut two groups while the rest reaches both, or
/// healed), held for `hold_ms` (a range) before the next step. The first
/// step cuts something; the schedule ends healed.
pub fn changing_partitions(
    rng: &mut SimRng,
    nodes: usize,
    start_ms: u64,
    end_ms: u64,
    hold_ms: (u64, u64),
) -> Vec<(u64, Fault)> {
    assert!(nodes >= 2, "partitions need two nodes");
    let mut schedule = Vec::new();
    let mut t = start_ms;
    while t < end_ms {
        // The first step always cuts something.
        let shapes = if schedule.is_empty() {
            &SHAPES[..SHAPES.len() - 1]
        } else {
            &SHAPES[..]
        };
        let cuts = match shapes[rng.index(shapes.len())] {
            Shape::IsolateOne => vec![Cut::isolate(rng.index(nodes), nodes)],
            Shape::MinorityMajority => {
                let minority = shuffled(rng, nodes)[..(nodes - 1) / 2].to_vec();
                vec![Cut::split(&minority, nodes)]
            }
            Shape::OneWay => {
                let order = shuffled(rng, nodes);
                let at = 1 + rng.index(nodes - 1);
                vec![Cut::one_way(&order[..at], &order[at..])]
            }
            Shape::Bridge => {
                let order = shuffled(rng, nodes);
                let a = 1 + rng.index(nodes - 1);
                let b = (a + 1 + rng.index(nodes - a)).min(nodes);
                vec![Cut::between(&order[..a], &order[a..b])]
            }
            Shape::Healed => Vec::new(),
        };
        schedule.push((t, Fault::Partition(cuts)));
        t += rng.between(hold_ms.0, hold_ms.1);
    }
    schedule.push((t.max(end_ms), Fault::Heal));
    schedule
}

fn shuffled(rng: &mut SimRng, nodes: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.index(i + 1));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_block_the_links_they_name() {
        let isolate = Cut::isolate(1, 3).links();
        let expected: BTreeSet<(usize, usize)> =
            [(1, 0), (0, 1), (1, 2), (2, 1)].into_iter().collect();
        assert_eq!(isolate, expected);
        let one_way = Cut::one_way(&[0, 1], &[2]).links();
        assert_eq!(one_way, [(0, 2), (1, 2)].into_iter().collect());
        let bridge = Cut::between(&[0], &[1]).links();
        assert_eq!(bridge, [(0, 1), (1, 0)].into_iter().collect());
        let split = Cut::split(&[3, 4], 5).links();
        assert_eq!(split.len(), 2 * 2 * 3);
        assert!(!split.contains(&(3, 4)) && !split.contains(&(0, 1)));
    }

    #[test]
    fn a_partition_schedule_covers_its_span_and_ends_healed() {
        let mut rng = SimRng::new(5);
        for nodes in 2..=5 {
            let schedule = changing_partitions(&mut rng, nodes, 100, 5_000, (100, 400));
            assert_eq!(schedule.first().map(|s| s.0), Some(100));
            let Some((_, Fault::Partition(first))) = schedule.first() else {
                panic!("a schedule starts with a partition");
            };
            assert!(first.iter().any(|cut| !cut.links().is_empty()) || nodes == 2);
            assert_eq!(schedule.last().map(|s| &s.1), Some(&Fault::Heal));
            assert!(schedule.windows(2).all(|w| w[0].0 <= w[1].0));
            for (_, fault) in &schedule {
                if let Fault::Partition(cuts) = fault {
                    for (from, to) in cuts.iter().flat_map(Cut::links) {
                        assert!(from < nodes && to < nodes && from != to);
                    }
                }
            }
        }
    }
}
