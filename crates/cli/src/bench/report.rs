//! The result of a run: one serialisable object (`--json`) and its text form.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use super::stats::{LatencySummary, SlowSummary, Stats};
use super::workload::{Distribution, Workload};
use super::{BenchArgs, TargetKind};

#[derive(Debug, Serialize)]
pub struct PreloadSummary {
    pub keys: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: TargetKind,
    pub endpoints: Vec<String>,
    pub workload: Workload,
    pub distribution: Distribution,
    pub keys: u64,
    pub value_bytes: usize,
    pub connections: usize,
    pub pipeline: usize,
    /// "closed" (each slot starts its next operation when the previous one ends) or "open" (--rate).
    pub pacing: &'static str,
    pub target_rate_ops_s: Option<f64>,
    pub warmup_s: f64,
    pub max_duration_s: f64,
    pub ops_limit: Option<u64>,
    pub seed: u64,
    /// From the end of the warm-up to the last recorded completion.
    pub elapsed_s: f64,
    /// Recorded operations: successes plus errors.
    pub ops: u64,
    pub ops_ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub throughput_ops_s: f64,
    /// Reads (or read steps) that found no value: not errors.
    pub not_found: u64,
    /// Open loop: scheduled starts before the deadline that could not be started in time.
    pub late_unsent: u64,
    /// Operations during the warm-up (not recorded), and how many of them failed.
    pub warmup_ops: u64,
    pub warmup_errors: u64,
    pub preload: Option<PreloadSummary>,
    /// Successful operations only: "total", "read", "write" and, for rmw, "rmw"
    /// (whole operation; "read"/"write" then hold its steps). Open loop: from the scheduled start.
    pub latency_us: BTreeMap<&'static str, LatencySummary>,
    /// `--slow-ms`: when the slow operations were scheduled to start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow: Option<SlowSummary>,
    /// CPU time (user + system) this load generator spent per operation,
    /// warm-up included, preload excluded: its own share of a machine it
    /// shares with the servers it measures.
    pub client_cpu_us_per_op: f64,
}

impl Report {
    pub fn new(
        args: &BenchArgs,
        endpoints: Vec<String>,
        stats: &Stats,
        elapsed: Duration,
        preload: Option<PreloadSummary>,
        slow: Option<SlowSummary>,
        client_cpu: Duration,
    ) -> Report {
        let errors = stats.errors_total();
        let ops = stats.ok + errors;
        let mut latency_us = BTreeMap::new();
        for (name, histogram) in [
            ("total", &stats.total),
            ("read", &stats.read),
            ("write", &stats.write),
            ("rmw", &stats.rmw),
        ] {
            if name == "total" || !histogram.is_empty() {
                latency_us.insert(name, LatencySummary::of(histogram));
            }
        }
        let elapsed_s = elapsed.as_secs_f64();
        Report {
            target: args.target,
            endpoints,
            workload: args.workload,
            distribution: args.distribution,
            keys: args.keys,
            value_bytes: args.value_bytes,
            connections: args.connections,
            pipeline: args.pipeline,
            pacing: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            target_rate_ops_s: args.rate,
            warmup_s: args.warmup_s,
            max_duration_s: args.duration_s,
            ops_limit: args.ops,
            seed: args.seed,
            elapsed_s: round(elapsed_s, 3),
            ops,
            ops_ok: stats.ok,
            errors,
            errors_by_kind: stats.errors.clone(),
            throughput_ops_s: round(ops as f64 / elapsed_s.max(1e-9), 1),
            not_found: stats.not_found,
            late_unsent: stats.late_unsent,
            warmup_ops: stats.unrecorded_ops,
            warmup_errors: stats.unrecorded_errors,
            preload,
            latency_us,
            slow,
            client_cpu_us_per_op: round(
                client_cpu.as_secs_f64() * 1e6 / (ops + stats.unrecorded_ops).max(1) as f64,
                1,
            ),
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let pacing = match self.target_rate_ops_s {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "{} {} | workload {} | {} over {} keys | {}-byte values | {} connections x {} in flight | {pacing}",
            flag(&self.target),
            self.endpoints.join(","),
            flag(&self.workload),
            flag(&self.distribution),
            self.keys,
            self.value_bytes,
            self.connections,
            self.pipeline,
        );
        if let Some(preload) = &self.preload {
            let _ = writeln!(
                out,
                "preloaded {} keys in {:.1} s",
                preload.keys, preload.elapsed_s
            );
        }
        let _ = writeln!(
            out,
            "{} ops in {:.2} s after {} s warm-up ({} ops): {:.1} ops/s, {} errors, {} not found",
            self.ops,
            self.elapsed_s,
            self.warmup_s,
            self.warmup_ops,
            self.throughput_ops_s,
            self.errors,
            self.not_found
        );
        if self.late_unsent > 0 {
            let _ = writeln!(
                out,
                "open loop fell behind: {} scheduled operations were never started",
                self.late_unsent
            );
        }
        let _ = writeln!(
            out,
            "load generator CPU: {:.1} µs per operation",
            self.client_cpu_us_per_op
        );
        let _ = writeln!(
            out,
            "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "µs", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        for (kind, l) in &self.latency_us {
            let _ = writeln!(
                out,
                "{kind:<6} {:>9} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9}",
                l.count, l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        for (kind, count) in &self.errors_by_kind {
            let _ = writeln!(out, "error {kind}: {count}");
        }
        if let Some(slow) = &self.slow {
            let per_second: Vec<String> = slow.per_second.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "{} ops took {} ms or more; their starts fall in {} of {} windows of {} ms; per second: {}",
                slow.ops,
                slow.threshold_ms,
                slow.windows_with_slow,
                slow.windows,
                slow.window_ms,
                per_second.join(" ")
            );
        }
        out
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A value enum as it is spelled on the command line.
fn flag<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
