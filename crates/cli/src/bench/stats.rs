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
        }
    }
}

impl Stats {
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
    }
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
}
