//! `Network`: the simulated links between nodes. Decides, for each message
//! sent, whether it is lost, how long it takes and whether it arrives
//! twice; holds the set of blocked directed links (partitions), checked
//! when a message arrives. Knows nothing of what messages mean.

use std::collections::BTreeSet;

use crate::config::NetworkConfig;
use crate::fault::Cut;
use crate::rng::SimRng;

pub struct Network {
    config: NetworkConfig,
    /// Directed links (from, to) that currently lose every message.
    blocked: BTreeSet<(usize, usize)>,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Network {
        assert!(
            config.min_delay_ms <= config.max_delay_ms,
            "network delay range is empty"
        );
        Network {
            config,
            blocked: BTreeSet::new(),
        }
    }

    /// Delays (ms from now) of the copies of one message that will arrive:
    /// none when it is lost, two when it is duplicated (only if
    /// `may_duplicate`).
    pub fn fate(&mut self, rng: &mut SimRng, may_duplicate: bool) -> Vec<u64> {
        if rng.chance(self.config.drop_probability) {
            return Vec::new();
        }
        let mut delays = vec![self.delay(rng)];
        if may_duplicate && rng.chance(self.config.duplicate_probability) {
            delays.push(self.delay(rng));
        }
        delays
    }

    fn delay(&self, rng: &mut SimRng) -> u64 {
        rng.between(self.config.min_delay_ms, self.config.max_delay_ms)
    }

    pub fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked.contains(&(from, to))
    }

    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    pub fn unblock(&mut self, from: usize, to: usize) {
        self.blocked.remove(&(from, to));
    }

    /// Cuts `node` off from every other node, both directions.
    pub fn isolate(&mut self, node: usize, nodes: usize) {
        self.cut(&Cut::isolate(node, nodes));
    }

    /// Blocks every link of `cut`, besides those blocked already.
    pub fn cut(&mut self, cut: &Cut) {
        self.blocked.extend(cut.links());
    }

    /// Blocks exactly the links of `cuts`.
    pub fn partition(&mut self, cuts: &[Cut]) {
        self.blocked = cuts.iter().flat_map(Cut::links).collect();
    }

    /// Unblocks every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// No more losses or duplicates (delays stay).
    pub fn make_reliable(&mut self) {
        self.config.drop_probability = 0.0;
        self.config.duplicate_probability = 0.0;
    }
}
