//! What a connection measured: latency histograms per operation kind,
//! successes, errors by kind, and the counters that explain a run (warm-up
//! operations, reads of absent keys, open-loop starts that could not be sent).
//! Merged across connections at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::slot::Issued;
use super::workload::OpKind;

/// Latencies in microseconds, 3 significant digits, up to one hour.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
/// Scheduled starts of slow operations kept per connection (16 bytes each);
/// past it slow operations are only counted.
const MAX_SLOW_STARTS: usize = 1 << 20;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    histogram.saturating_record(micros);
}

/// How one operation went, as a connection observed it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The read step of a read-modify-write.
    pub read_step: Option<Duration>,
    /// The write step of a read-modify-write.
    pub write_step: Option<Duration>,
    /// A read found no value (not an error: the key was never written).
    pub not_found: bool,
    /// Why the operation failed: `http_503`, `resp_ERR`, `timeout`, `connection`, ...
    pub error: Option<String>,
}

impl Outcome {
    pub fn failed(kind: impl Into<String>) -> Outcome {
        Outcome {
            error: Some(kind.into()),
            ..Outcome::default()
        }
    }
}

pub struct Stats {
    /// Every successful recorded operation.
    pub total: Histogram<u64>,
    /// Reads; for rmw, the read step.
    pub read: Histogram<u64>,
    /// Updates; for rmw, the write step.
    pub write: Histogram<u64>,
    /// Whole read-modify-writes.
    pub rmw: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub not_found: u64,
    pub unrecorded_ops: u64,
    pub unrecorded_errors: u64,
    pub late_unsent: u64,
    pub last_completion: Option<Instant>,
    /// `--slow-ms`: successful recorded operations at least this slow have
    /// their scheduled start kept in `slow_starts` (up to `MAX_SLOW_STARTS`,
    /// then counted in `slow_unplaced`).
    pub slow_threshold: Option<Duration>,
    pub slow_starts: Vec<Instant>,
    pub slow_unplaced: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            total: new_histogram(),
            read: new_histogram(),
            write: new_histogram(),
            rmw: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            not_found: 0,
            unrecorded_ops: 0,
            unrecorded_errors: 0,
            late_unsent: 0,
            last_completion: None,
            slow_threshold: None,
            slow_starts: Vec::new(),
            slow_unplaced: 0,
        }
    }
}

impl Stats {
    pub fn new(slow_threshold: Option<Duration>) -> Stats {
        Stats {
            slow_threshold,
            ..Stats::default()
        }
    }

    /// Accounts for an operation that completed at `now`.
    pub fn finish(&mut self, issued: &Issued, now: Instant, outcome: Outcome) {
        if !issued.recorded {
            self.unrecorded_ops += 1;
            self.unrecorded_errors += u64::from(outcome.error.is_some());
            return;
        }
        self.last_completion = Some(self.last_completion.map_or(now, |last| last.max(now)));
        if let Some(kind) = outcome.error {
            *self.errors.entry(kind).or_default() += 1;
            return;
        }
        self.ok += 1;
        self.not_found += u64::from(outcome.not_found);
        let latency = now.saturating_duration_since(issued.intended);
        record(&mut self.total, latency);
        if self.slow_threshold.is_some_and(|slow| latency >= slow) {
            if self.slow_starts.len() < MAX_SLOW_STARTS {
                self.slow_starts.push(issued.intended);
            } else {
                self.slow_unplaced += 1;
            }
        }
        match issued.op.kind {
            OpKind::Read => record(&mut self.read, latency),
            OpKind::Update => record(&mut self.write, latency),
            OpKind::ReadModifyWrite => {
                record(&mut self.rmw, latency);
                if let Some(step) = outcome.read_step {
                    record(&mut self.read, step);
                }
                if let Some(step) = outcome.write_step {
                    record(&mut self.write, step);
                }
            }
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Stats) {
        self.total
            .add(&other.total)
            .expect("histograms share bounds");
        self.read.add(&other.read).expect("histograms share bounds");
        self.write
            .add(&other.write)
            .expect("histograms share bounds");
        self.rmw.add(&other.rmw).expect("histograms share bounds");
        self.ok += other.ok;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.not_found += other.not_found;
        self.unrecorded_ops += other.unrecorded_ops;
        self.unrecorded_errors += other.unrecorded_errors;
        self.late_unsent += other.late_unsent;
        self.last_completion = match (self.last_completion, other.last_completion) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.slow_starts.extend(other.slow_starts);
        self.slow_unplaced += other.slow_unplaced;
    }
}

/// When the slow operations (`--slow-ms`) were scheduled to start, over
/// windows of `WINDOW_MS` from the end of the warm-up.
#[derive(Debug, Serialize)]
pub struct SlowSummary {
    pub threshold_ms: f64,
    /// Successful recorded operations at least `threshold_ms` slow.
    pub ops: u64,
    pub window_ms: u64,
    /// Windows of the measured run.
    pub windows: u64,
    /// Of which hold the scheduled start of at least one slow operation.
    pub windows_with_slow: u64,
    /// Slow operations by the second of the run their start falls in.
    pub per_second: Vec<u64>,
    /// `[window, slow operations]` for each window that holds any, in
    /// order: to line the slow moments up with a server's own log.
    pub by_window: Vec<[u64; 2]>,
    /// The wall clock (ms since the Unix epoch) at the end of the warm-up,
    /// where window 0 begins.
    pub start_unix_ms: u64,
}

impl SlowSummary {
    pub const WINDOW_MS: u64 = 100;

    pub fn of(
        threshold: Duration,
        starts: &[Instant],
        unplaced: u64,
        measure_start: Instant,
        elapsed: Duration,
    ) -> SlowSummary {
        let windows = elapsed
            .as_millis()
            .div_ceil(u128::from(Self::WINDOW_MS))
            .max(1);
        let windows = u64::try_from(windows).unwrap_or(u64::MAX);
        let mut by_window = std::collections::BTreeMap::new();
        let mut per_second = vec![0; usize::try_from(windows.div_ceil(10)).unwrap_or(0)];
        for start in starts {
            let ms = u64::try_from(start.saturating_duration_since(measure_start).as_millis())
                .unwrap_or(u64::MAX);
            let window = (ms / Self::WINDOW_MS).min(windows - 1);
            *by_window.entry(window).or_insert(0) += 1;
            if let Some(second) =
                per_second.get_mut(usize::try_from(window / 10).unwrap_or(usize::MAX))
            {
                *second += 1;
            }
        }
        SlowSummary {
            threshold_ms: threshold.as_secs_f64() * 1000.0,
            ops: starts.len() as u64 + unplaced,
            window_ms: Self::WINDOW_MS,
            windows,
            windows_with_slow: by_window.len() as u64,
            per_second,
            by_window: by_window.into_iter().map(|(w, n)| [w, n]).collect(),
            start_unix_ms: unix_ms_at(measure_start),
        }
    }
}

/// The wall clock, in ms since the Unix epoch, at `instant` (in the past).
fn unix_ms_at(instant: Instant) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_sub(instant.elapsed()).as_millis()).unwrap_or(u64::MAX)
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: histogram.len(),
            mean_us: (histogram.mean() * 10.0).round() / 10.0,
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::Op;

    fn issued(kind: OpKind, intended: Instant, recorded: bool) -> Issued {
        Issued {
            op: Op { kind, key: 0 },
            intended,
            recorded,
        }
    }

    #[test]
    fn latencies_go_to_their_kind_and_errors_are_counted_apart() {
        let t0 = Instant::now();
        let mut a = Stats::default();
        a.finish(
            &issued(OpKind::Read, t0, true),
            t0 + Duration::from_micros(100),
            Outcome::default(),
        );
        a.finish(
            &issued(OpKind::Update, t0, true),
            t0 + Duration::from_micros(300),
            Outcome::default(),
        );
        a.finish(
            &issued(OpKind::Update, t0, true),
            t0 + Duration::from_millis(9),
            Outcome::failed("http_503"),
        );
        a.finish(
            &issued(OpKind::Read, t0, false),
            t0 + Duration::from_millis(1),
            Outcome::default(),
        );
        let mut b = Stats::default();
        let rmw = Outcome {
            read_step: Some(Duration::from_micros(40)),
            write_step: Some(Duration::from_micros(60)),
            ..Outcome::default()
        };
        b.finish(
            &issued(OpKind::ReadModifyWrite, t0, true),
            t0 + Duration::from_micros(1000),
            rmw,
        );
        a.merge(b);
        assert_eq!((a.ok, a.errors_total(), a.unrecorded_ops), (3, 1, 1));
        assert_eq!(a.errors["http_503"], 1);
        assert_eq!(
            (a.total.len(), a.read.len(), a.write.len(), a.rmw.len()),
            (3, 2, 2, 1)
        );
        let total = LatencySummary::of(&a.total);
        assert!(total.p50_us <= total.p99_us && total.p99_us <= total.max_us);
        assert_eq!(total.max_us, a.total.highest_equivalent(1000));
        assert_eq!(a.last_completion, Some(t0 + Duration::from_millis(9)));
    }

    #[test]
    fn slow_operations_are_placed_by_their_scheduled_start() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut stats = [Stats::new(Some(ms(10))), Stats::new(Some(ms(10)))];
        for (connection, start, latency, recorded, outcome) in [
            (0, 50, 10, true, Outcome::default()),
            (0, 60, 30, true, Outcome::default()),
            (0, 70, 9, true, Outcome::default()), // fast enough
            (0, 950, 100, true, Outcome::default()), // placed by start, not end
            (1, 1250, 12, true, Outcome::default()),
            (1, 1300, 50, false, Outcome::default()), // warm-up
            (1, 1400, 50, true, Outcome::failed("timeout")), // an error
            (1, 2500, 11, true, Outcome::default()),  // after the end: the last window
        ] {
            let op = issued(OpKind::Read, t0 + ms(start), recorded);
            stats[connection].finish(&op, t0 + ms(start + latency), outcome);
        }
        let [mut a, b] = stats;
        a.merge(b);
        let summary = SlowSummary::of(ms(10), &a.slow_starts, 1, t0, ms(2000));
        assert_eq!(summary.ops, 6, "5 placed and 1 only counted");
        assert_eq!((summary.windows, summary.windows_with_slow), (20, 4));
        assert_eq!(summary.per_second, vec![3, 2]);
        assert_eq!(summary.by_window, vec![[0, 2], [9, 1], [12, 1], [19, 1]]);
        assert_eq!(summary.threshold_ms, 10.0);

        let none = SlowSummary::of(ms(10), &[], 0, t0, ms(0));
        assert_eq!((none.ops, none.windows, none.windows_with_slow), (0, 1, 0));
        assert_eq!(none.per_second, vec![0]);
    }
}
