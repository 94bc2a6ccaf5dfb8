//! Failure detection: a phi-accrual detector per peer (Hayashibara et
//! al.; as in Cassandra and Akka) fed with heartbeat arrival times, plus
//! direct evidence from requests (connection refused, timeouts). Pure:
//! times come in as milliseconds from the caller's clock. A peer that stops
//! answering is *down*, never *gone*: membership changes are explicit.

use std::collections::{BTreeMap, VecDeque};

use crate::NodeId;

#[derive(Debug, Clone, Copy)]
pub struct DetectorConfig {
    /// Heartbeat intervals remembered per peer.
    pub window: usize,
    /// Floor of the standard deviation, so a very regular peer is not
    /// declared dead by a small hiccup.
    pub min_std_deviation_ms: f64,
    /// Pause tolerated beyond the mean interval (GC, a loaded machine).
    pub acceptable_pause_ms: f64,
    /// phi at or above which a peer is suspect (shown, not acted on).
    pub suspect_phi: f64,
    /// phi at or above which a peer is down.
    pub down_phi: f64,
    /// Interval assumed before the first samples arrive.
    pub first_interval_ms: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            window: 100,
            min_std_deviation_ms: 100.0,
            acceptable_pause_ms: 500.0,
            suspect_phi: 3.0,
            down_phi: 8.0,
            first_interval_ms: 500.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    /// Never heard from since this node started.
    Unknown,
    Up,
    Suspect,
    Down,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Up => "up",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        }
    }

    /// Worth sending requests to (unknown peers are tried: they may be up).
    pub fn is_usable(self) -> bool {
        matches!(self, Liveness::Unknown | Liveness::Up | Liveness::Suspect)
    }
}

#[derive(Debug, Clone, Default)]
struct PeerHistory {
    intervals: VecDeque<f64>,
    last_heartbeat_ms: Option<u64>,
    /// A request failed in a way that proves the peer unreachable
    /// (connection refused) after the last heartbeat.
    unreachable_since_ms: Option<u64>,
}

/// What one node believes about the liveness of its peers.
#[derive(Debug, Clone, Default)]
pub struct FailureDetector {
    config: DetectorConfig,
    peers: BTreeMap<NodeId, PeerHistory>,
}

/// One peer's state for display (`GET /v1/cluster`) and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerView {
    pub liveness: Liveness,
    pub phi: f64,
    pub last_heard_ms_ago: Option<u64>,
}

impl FailureDetector {
    pub fn new(config: DetectorConfig) -> Self {
        assert!(
            config.window >= 2 && config.down_phi > config.suspect_phi,
            "bad detector config"
        );
        FailureDetector {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// The peer answered (a heartbeat, or any successful request).
    pub fn heartbeat(&mut self, peer: NodeId, now_ms: u64) {
        let window = self.config.window;
        let history = self.peers.entry(peer).or_default();
        if let Some(last) = history.last_heartbeat_ms
            && now_ms > last
        {
            if history.intervals.len() == window {
                history.intervals.pop_front();
            }
            history.intervals.push_back((now_ms - last) as f64);
        }
        history.last_heartbeat_ms =
            Some(history.last_heartbeat_ms.map_or(now_ms, |l| l.max(now_ms)));
        history.unreachable_since_ms = None;
    }

    /// A request proved the peer unreachable (connection refused or reset).
    pub fn unreachable(&mut self, peer: NodeId, now_ms: u64) {
        let history = self.peers.entry(peer).or_default();
        if history.last_heartbeat_ms.is_none_or(|last| now_ms >= last)
            && history.unreachable_since_ms.is_none()
        {
            history.unreachable_since_ms = Some(now_ms);
        }
    }

    pub fn forget(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// phi: -log10 of the probability that a heartbeat arrives later than
    /// now, given the intervals seen (normal approximation, Akka's formula).
    pub fn phi(&self, peer: NodeId, now_ms: u64) -> f64 {
        let Some(history) = self.peers.get(&peer) else {
            return 0.0;
        };
        let Some(last) = history.last_heartbeat_ms else {
            return 0.0;
        };
        let elapsed = now_ms.saturating_sub(last) as f64;
        let (mean, std) = if history.intervals.is_empty() {
            (
                self.config.first_interval_ms,
                self.config.first_interval_ms / 4.0,
            )
        } else {
            let n = history.intervals.len() as f64;
            let mean = history.intervals.iter().sum::<f64>() / n;
            let var = history
                .intervals
                .iter()
                .map(|i| (i - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        };
        let mean = mean + self.config.acceptable_pause_ms;
        let std = std.max(self.config.min_std_deviation_ms);
        let y = (elapsed - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let phi = if elapsed > mean {
            -(e / (1.0 + e)).log10()
        } else {
            -(1.0 - 1.0 / (1.0 + e)).log10()
        };
        if phi.is_finite() {
            phi.max(0.0)
        } else {
            f64::MAX
        }
    }

    pub fn view(&self, peer: NodeId, now_ms: u64) -> PeerView {
        let Some(history) = self.peers.get(&peer) else {
            return PeerView {
                liveness: Liveness::Unknown,
                phi: 0.0,
                last_heard_ms_ago: None,
            };
        };
        let phi = self.phi(peer, now_ms);
        let liveness = if history.unreachable_since_ms.is_some() || phi >= self.config.down_phi {
            Liveness::Down
        } else if history.last_heartbeat_ms.is_none() {
            Liveness::Unknown
        } else if phi >= self.config.suspect_phi {
            Liveness::Suspect
        } else {
            Liveness::Up
        };
        PeerView {
            liveness,
            phi,
            last_heard_ms_ago: history.last_heartbeat_ms.map(|l| now_ms.saturating_sub(l)),
        }
    }

    pub fn liveness(&self, peer: NodeId, now_ms: u64) -> Liveness {
        self.view(peer, now_ms).liveness
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beating(detector: &mut FailureDetector, peer: NodeId, from: u64, to: u64, every: u64) {
        let mut t = from;
        while t <= to {
            detector.heartbeat(peer, t);
            t += every;
        }
    }

    #[test]
    fn regular_heartbeats_are_up_and_silence_becomes_down_within_seconds() {
        let mut d = FailureDetector::new(DetectorConfig::default());
        assert_eq!(d.liveness(1, 0), Liveness::Unknown);
        beating(&mut d, 1, 0, 10_000, 500);
        assert_eq!(d.liveness(1, 10_200), Liveness::Up);
        // Silence: suspect, then down, within a few seconds.
        let down_after = (10_000..20_000)
            .step_by(50)
            .find(|t| d.liveness(1, *t) == Liveness::Down)
            .expect("a silent peer is declared down");
        assert!(
            down_after - 10_000 <= 3_000,
            "took {} ms",
            down_after - 10_000
        );
        let suspect_at = (10_000..down_after)
            .step_by(50)
            .find(|t| d.liveness(1, *t) == Liveness::Suspect);
        assert!(suspect_at.is_some(), "a peer is suspect before it is down");
        // It comes back.
        d.heartbeat(1, 30_000);
        assert_eq!(d.liveness(1, 30_010), Liveness::Up);
    }

    #[test]
    fn jittery_heartbeats_of_a_loaded_peer_do_not_flap() {
        let mut d = FailureDetector::new(DetectorConfig::default());
        // Intervals between 300 and 900 ms (a loaded but healthy peer).
        let mut t = 0;
        let mut seed = 7u64;
        let mut worst = Liveness::Up;
        for _ in 0..2_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let interval = 300 + (seed >> 33) % 600;
            // Check just before the next heartbeat arrives: the worst moment.
            if t > 5_000 {
                worst = worst.max(d.liveness(1, t + interval - 1));
            }
            t += interval;
            d.heartbeat(1, t);
        }
        assert!(
            worst <= Liveness::Suspect,
            "a healthy peer was declared down"
        );
        assert_ne!(worst, Liveness::Down);
    }

    #[test]
    fn refused_connections_are_down_at_once_until_the_next_heartbeat() {
        let mut d = FailureDetector::new(DetectorConfig::default());
        beating(&mut d, 2, 0, 2_000, 500);
        d.unreachable(2, 2_100);
        assert_eq!(d.liveness(2, 2_100), Liveness::Down);
        d.heartbeat(2, 2_600);
        assert_eq!(d.liveness(2, 2_600), Liveness::Up);
        // Evidence older than the last heartbeat is ignored.
        d.unreachable(2, 2_500);
        assert_eq!(d.liveness(2, 2_650), Liveness::Up);
    }

    #[test]
    fn phi_grows_with_silence() {
        let mut d = FailureDetector::new(DetectorConfig::default());
        beating(&mut d, 3, 0, 5_000, 500);
        let phis: Vec<f64> = (0..10).map(|i| d.phi(3, 5_000 + i * 300)).collect();
        assert!(phis.windows(2).all(|w| w[0] <= w[1]), "{phis:?}");
        assert!(phis[0] < 1.0 && phis[9] > 8.0, "{phis:?}");
    }
}
