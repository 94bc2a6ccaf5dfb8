//! What each operation of a run is: the workload's mix of reads, updates and
//! read-modify-writes, and which key it touches (uniform or scrambled
//! zipfian). Pure and seeded: the same seed gives the same operations.

use clap::ValueEnum;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;

use super::zipfian::ScrambledZipfian;

/// YCSB's core workloads A, B, C plus write-only and read-modify-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 50% reads, 50% updates (YCSB A, "update heavy").
    A,
    /// 95% reads, 5% updates (YCSB B, "read mostly").
    B,
    /// Reads only (YCSB C).
    C,
    /// Updates only.
    Write,
    /// Read, then write back carrying the read's causal context.
    Rmw,
}

impl Workload {
    /// The fraction of plain reads; the rest are updates (or, for rmw, read-modify-writes).
    pub fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::Write | Workload::Rmw => 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    Uniform,
    /// θ = 0.99, scrambled over the key space as YCSB does.
    Zipfian,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Update,
    ReadModifyWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub key: u64,
}

/// The key for index `key` as every target stores it.
pub fn key_name(key: u64) -> String {
    format!("user{key}")
}

#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian(ScrambledZipfian),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(keys)),
        }
    }
}

/// The operation stream of one load slot.
pub struct OpGenerator {
    rng: SmallRng,
    workload: Workload,
    keys: KeyChooser,
}

impl OpGenerator {
    pub fn new(workload: Workload, keys: KeyChooser, seed: u64) -> OpGenerator {
        OpGenerator {
            rng: SmallRng::seed_from_u64(seed),
            workload,
            keys,
        }
    }

    pub fn next_op(&mut self) -> Op {
        let kind = if self.workload == Workload::C
            || self.rng.random::<f64>() < self.workload.read_fraction()
        {
            OpKind::Read
        } else if self.workload == Workload::Rmw {
            OpKind::ReadModifyWrite
        } else {
            OpKind::Update
        };
        let key = match &self.keys {
            KeyChooser::Uniform { keys } => self.rng.random_range(0..*keys),
            KeyChooser::Zipfian(zipfian) => zipfian.key(self.rng.random::<f64>()),
        };
        Op { kind, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(workload: Workload) -> [u64; 3] {
        let mut generator =
            OpGenerator::new(workload, KeyChooser::new(Distribution::Uniform, 1000), 11);
        let mut counts = [0u64; 3];
        for _ in 0..100_000 {
            let op = generator.next_op();
            assert!(op.key < 1000);
            counts[op.kind as usize] += 1;
        }
        counts
    }

    #[test]
    fn workload_mixes_match_their_ratios_over_100k_draws() {
        let [reads, updates, rmws] = mix(Workload::A);
        assert!((49_000..=51_000).contains(&reads), "A reads: {reads}");
        assert_eq!(reads + updates, 100_000);
        assert_eq!(rmws, 0);
        let [reads, updates, _] = mix(Workload::B);
        assert!((94_500..=95_500).contains(&reads), "B reads: {reads}");
        assert!((4_500..=5_500).contains(&updates), "B updates: {updates}");
        assert_eq!(mix(Workload::C), [100_000, 0, 0]);
        assert_eq!(mix(Workload::Write), [0, 100_000, 0]);
        assert_eq!(mix(Workload::Rmw), [0, 0, 100_000]);
    }

    #[test]
    fn uniform_keys_cover_the_space_evenly() {
        let mut generator =
            OpGenerator::new(Workload::C, KeyChooser::new(Distribution::Uniform, 10), 3);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[generator.next_op().key as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_500..=10_500).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_same_seed_replays_the_same_operations() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 500);
        let mut a = OpGenerator::new(Workload::A, chooser.clone(), 5);
        let mut b = OpGenerator::new(Workload::A, chooser, 5);
        for _ in 0..1000 {
            assert_eq!(a.next_op(), b.next_op());
        }
    }
}
