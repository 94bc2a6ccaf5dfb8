//! `ringkv bench`: a load generator for ringkv (HTTP or RESP), any
//! Redis-protocol server and etcd (v3 JSON gateway), so that all of them are
//! measured by the same client. It owns the workload (YCSB A/B/C, write-only,
//! read-modify-write), the key distribution, closed- and open-loop pacing and
//! the latency histograms; it does not start or configure the servers it
//! measures (`bench/compare.sh` does).
//!
//! Pure parts (testable without sockets): `zipfian`, `workload`, `schedule`,
//! `slot`, `stats`, `resp_reply`. I/O: `http_conn`, `resp_conn`, and `run` here.

mod http_conn;
mod pacer;
mod report;
mod resp_conn;
mod resp_reply;
mod schedule;
mod slot;
mod stats;
mod workload;
mod zipfian;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use http_conn::{Api, HttpConn, authority_of, run_http};
use report::{PreloadSummary, Report};
use resp_conn::run_resp;
use schedule::{Phase, Schedule};
use slot::{Issued, LoadSlot, SlotSource};
use stats::{SlowSummary, Stats};
use workload::{Distribution, KeyChooser, OpGenerator, Workload};

/// Preloading stops here even if keys remain (it then fails the run).
const PRELOAD_MAX: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// ringkv's HTTP API (`--url`).
    RingkvHttp,
    /// A Redis-protocol server: ringkv's RESP port or redis-server (`--addr`).
    Resp,
    /// etcd's v3 JSON gateway (`--url`), e.g. http://127.0.0.1:2379.
    Etcd,
}

/// Flags of `ringkv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The system to drive.
    #[arg(long, value_enum, default_value_t = TargetKind::RingkvHttp)]
    pub target: TargetKind,
    /// Base URL(s) for ringkv-http and etcd; repeat or comma-separate to spread connections over nodes
    /// [default: http://127.0.0.1:8080, or http://127.0.0.1:2379 for etcd].
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// host:port of RESP server(s); repeat or comma-separate [default: 127.0.0.1:6380].
    #[arg(long, value_delimiter = ',')]
    pub addr: Vec<String>,
    /// Updates are blind writes (no context): against a ringkv bucket in
    /// `siblings` mode hot keys gather siblings (409 past max_siblings), so
    /// benchmark an `lww` bucket, as Redis and etcd overwrite; rmw carries contexts.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,
    /// Size of the key space (keys user0 .. user{N-1}).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// TCP connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Requests in flight per connection (RESP only; HTTP/1.1 sends one at a time).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Measured time after the warm-up; with --ops, whichever ends first.
    #[arg(long, default_value_t = 30.0)]
    pub duration_s: f64,
    /// Operations to record after the warm-up.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Load before measuring that is not recorded.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Target rate in operations per second, open loop: latency counts from each
    /// operation's scheduled start, so queueing is measured (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write every key once before the run, so that reads find values.
    #[arg(long)]
    pub preload: bool,
    /// ringkv bucket (ringkv-http) or key prefix (etcd); RESP keys go to the server's RESP bucket.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// Print one JSON object instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// A request not answered within this fails as `timeout`.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Seed of the operation streams: the same seed issues the same operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Password of the servers (ringkv's `--client-password-file`, Redis's
    /// `requirepass`): `AUTH` on each RESP connection, `Authorization:
    /// Bearer` over HTTP. Not for etcd.
    #[arg(long, env = "RINGKV_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Also report when the operations slower than this many milliseconds
    /// were scheduled to start: in how many 100 ms windows of the run, and
    /// how many per second. A few stalls fill a few windows; queueing fills
    /// most of them.
    #[arg(long)]
    pub slow_ms: Option<f64>,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        let in_range = |name: &str, value: f64, low: f64, high: f64| {
            if !(value.is_finite() && value >= low && value <= high) {
                bail!("--{name} must be between {low} and {high}");
            }
            Ok(())
        };
        in_range("keys", self.keys as f64, 1.0, 1e9)?;
        in_range(
            "value-bytes",
            self.value_bytes as f64,
            0.0,
            (16 << 20) as f64,
        )?;
        in_range("connections", self.connections as f64, 1.0, 10_000.0)?;
        in_range("pipeline", self.pipeline as f64, 1.0, 1024.0)?;
        in_range("duration-s", self.duration_s, 0.001, 86_400.0)?;
        in_range("warmup-s", self.warmup_s, 0.0, 3_600.0)?;
        in_range("timeout-ms", self.timeout_ms as f64, 1.0, 600_000.0)?;
        if let Some(rate) = self.rate {
            in_range("rate", rate, 0.001, 1e8)?;
        }
        if let Some(slow_ms) = self.slow_ms {
            in_range("slow-ms", slow_ms, 0.0, 3_600_000.0)?;
        }
        if self.ops == Some(0) {
            bail!("--ops must be at least 1");
        }
        if self.bucket.is_empty()
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bail!("--bucket must be non-empty ASCII letters, digits, '.', '_' or '-'");
        }
        if self.pipeline > 1 && self.target != TargetKind::Resp {
            bail!(
                "--pipeline > 1 needs --target resp: HTTP/1.1 carries one request at a time per connection (raise --connections)"
            );
        }
        match self.target {
            TargetKind::Resp if !self.url.is_empty() => {
                bail!("--target resp takes --addr host:port, not --url")
            }
            TargetKind::RingkvHttp | TargetKind::Etcd if !self.addr.is_empty() => {
                bail!(
                    "--target {} takes --url, not --addr",
                    self.target
                        .to_possible_value()
                        .expect("no skipped variants")
                        .get_name()
                )
            }
            _ => Ok(()),
        }
    }

    /// host:port of each endpoint.
    fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let given: Vec<String> = match self.target {
            TargetKind::Resp => self.addr.clone(),
            TargetKind::RingkvHttp | TargetKind::Etcd => self
                .url
                .iter()
                .map(|url| authority_of(url))
                .collect::<Result<_, _>>()?,
        };
        let endpoints: Vec<String> = given
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if !endpoints.is_empty() {
            return Ok(endpoints);
        }
        Ok(vec![
            match self.target {
                TargetKind::RingkvHttp => "127.0.0.1:8080",
                TargetKind::Resp => "127.0.0.1:6380",
                TargetKind::Etcd => "127.0.0.1:2379",
            }
            .to_string(),
        ])
    }
}

/// What every connection of a run shares.
pub struct Settings {
    pub bucket: String,
    pub value: Bytes,
    pub value_base64: String,
    pub timeout: Duration,
    pub password: Option<String>,
    /// Operations completed so far, warm-up included (for the progress bar's rate).
    pub completed: AtomicU64,
    /// Of which recorded.
    pub recorded: AtomicU64,
    /// `--slow-ms`.
    pub slow: Option<Duration>,
}

impl Settings {
    pub fn count_completed(&self, issued: &Issued) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if issued.recorded {
            self.recorded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A value of `len` printable bytes, the same for every write of a run.
fn value_of(len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Entry point of `ringkv bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let endpoints = args.endpoints()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("while starting the runtime")?;
    let report = runtime.block_on(execute(&args, endpoints))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

async fn execute(args: &BenchArgs, endpoints: Vec<String>) -> anyhow::Result<Report> {
    let timeout = Duration::from_millis(args.timeout_ms);
    for endpoint in &endpoints {
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(endpoint))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|connected| Ok(connected?))
            .with_context(|| format!("while connecting to {endpoint}"))?;
    }
    let value = value_of(args.value_bytes);
    let settings = Arc::new(Settings {
        bucket: args.bucket.clone(),
        value_base64: base64::engine::general_purpose::STANDARD.encode(&value),
        value,
        timeout,
        password: args.password.clone(),
        completed: AtomicU64::new(0),
        recorded: AtomicU64::new(0),
        slow: args.slow_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    });

    let preload = if args.preload {
        Some(preload(args, &endpoints, &settings).await?)
    } else {
        None
    };

    let start = Instant::now();
    let measure_start = start + Duration::from_secs_f64(args.warmup_s);
    let duration = Duration::from_secs_f64(args.duration_s);
    let phase = Arc::new(Phase::new(
        measure_start,
        measure_start + duration,
        args.ops,
    ));
    let keys = KeyChooser::new(args.distribution, args.keys);
    let slots = args.connections * args.pipeline;
    let source = |slot: usize| {
        let seed = args.seed ^ (slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let generator = OpGenerator::new(args.workload, keys.clone(), seed);
        let schedule = args
            .rate
            .map(|rate| Schedule::new(start, rate, slots, slot));
        SlotSource::Load(LoadSlot::new(generator, schedule, phase.clone()))
    };
    let sources: Vec<Vec<SlotSource>> = (0..args.connections)
        .map(|connection| {
            (0..args.pipeline)
                .map(|p| source(connection * args.pipeline + p))
                .collect()
        })
        .collect();

    let progress = Progress::start(args, start, &settings);
    let cpu_before = process_cpu();
    let stats = run_connections(args.target, &endpoints, sources, &settings).await?;
    let client_cpu = process_cpu().saturating_sub(cpu_before);
    progress.finish();

    let elapsed = match stats.last_completion {
        Some(last) if last > measure_start => last - measure_start,
        _ => duration,
    };
    let slow = settings.slow.map(|threshold| {
        SlowSummary::of(
            threshold,
            &stats.slow_starts,
            stats.slow_unplaced,
            measure_start,
            elapsed,
        )
    });
    Ok(Report::new(
        args, endpoints, &stats, elapsed, preload, slow, client_cpu,
    ))
}

/// CPU time this process has used, user and system, all threads.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Runs one task per connection and merges what they measured.
async fn run_connections(
    target: TargetKind,
    endpoints: &[String],
    sources: Vec<Vec<SlotSource>>,
    settings: &Arc<Settings>,
) -> anyhow::Result<Stats> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut slot_sources) in sources.into_iter().enumerate() {
        let endpoint = endpoints[index % endpoints.len()].clone();
        let settings = settings.clone();
        match target {
            TargetKind::Resp => {
                tasks.spawn(async move { run_resp(&endpoint, slot_sources, &settings).await });
            }
            TargetKind::RingkvHttp | TargetKind::Etcd => {
                let api = if target == TargetKind::Etcd {
                    Api::Etcd
                } else {
                    Api::Ringkv
                };
                let conn = HttpConn::new(endpoint, settings.timeout, settings.password.as_deref())?;
                let source = slot_sources.pop().expect("one slot per HTTP connection");
                tasks.spawn(async move { run_http(conn, api, source, &settings).await });
            }
        }
    }
    let mut stats = Stats::default();
    while let Some(joined) = tasks.join_next().await {
        stats.merge(joined.context("a load task panicked")?);
    }
    Ok(stats)
}

/// Writes every key once through all connections; fails the run if any write fails.
async fn preload(
    args: &BenchArgs,
    endpoints: &[String],
    settings: &Arc<Settings>,
) -> anyhow::Result<PreloadSummary> {
    let started = Instant::now();
    let next_key = Arc::new(AtomicU64::new(0));
    let deadline = started + PRELOAD_MAX;
    let sources = (0..args.connections)
        .map(|_| {
            (0..args.pipeline)
                .map(|_| SlotSource::Preload {
                    next_key: next_key.clone(),
                    keys: args.keys,
                    deadline,
                })
                .collect()
        })
        .collect();
    let stats = run_connections(args.target, endpoints, sources, settings).await?;
    if stats.unrecorded_errors > 0 {
        bail!(
            "preload: {} of {} writes failed",
            stats.unrecorded_errors,
            args.keys
        );
    }
    if next_key.load(Ordering::Relaxed) < args.keys {
        bail!("preload: not finished within {} s", PRELOAD_MAX.as_secs());
    }
    Ok(PreloadSummary {
        keys: args.keys,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// A progress bar on stderr while the load runs, only when stderr is a terminal.
struct Progress {
    bar: Option<(ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl Progress {
    fn start(args: &BenchArgs, start: Instant, settings: &Arc<Settings>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let total = Duration::from_secs_f64(args.warmup_s + args.duration_s);
        let bar = ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let ops_limit = args.ops;
        let warmup = Duration::from_secs_f64(args.warmup_s);
        let settings = settings.clone();
        let ticker_bar = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(250));
            let mut last = (Instant::now(), 0u64);
            loop {
                interval.tick().await;
                let now = Instant::now();
                let completed = settings.completed.load(Ordering::Relaxed);
                let rate = (completed - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, completed);
                ticker_bar.set_position(now.duration_since(start).as_millis() as u64);
                let phase = if now < start + warmup {
                    "warm-up"
                } else {
                    "measuring"
                };
                let limit = ops_limit.map(|n| format!("/{n}")).unwrap_or_default();
                let recorded = settings.recorded.load(Ordering::Relaxed);
                ticker_bar.set_message(format!(
                    "{phase}: {rate:.0} ops/s, {recorded}{limit} ops recorded"
                ));
            }
        });
        Progress {
            bar: Some((bar, ticker)),
        }
    }

    fn finish(self) {
        if let Some((bar, ticker)) = self.bar {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}
