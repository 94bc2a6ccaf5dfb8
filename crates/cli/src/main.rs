//! `ringkv`: the server, a local dev cluster, and a command-line client.

mod backup;
mod bench;
mod cert;
mod dev_cluster;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ringkv_client::{Client, GetResult};
use ringkv_node::NodeConfig;
use ringkv_node::config::DurabilityMode;

/// mimalloc instead of glibc's malloc: allocation and free were ~9% of the
/// server's CPU under redis-benchmark SET (docs/DECISIONS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A highly available, Dynamo-style distributed key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: a single-node store in ./ringkv-data on the default addresses.
    Server(Box<ServerArgs>),
    /// Start a local cluster of real `ringkv server` processes on 127.0.0.1; Ctrl-C stops it.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Make the certificates of peer TLS: a cluster CA, then one per node.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Read a key.
    Get {
        bucket: String,
        key: String,
        #[arg(long)]
        r: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Write a key (value from the argument or --file).
    Put {
        bucket: String,
        key: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Causal context from an earlier read: the write supersedes what that read saw.
        #[arg(long)]
        context: Option<String>,
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        #[arg(long)]
        w: Option<u32>,
        /// Seconds until the value expires (reads then find no value).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        ttl: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key (with the context of a read, to supersede what it saw).
    Delete {
        bucket: String,
        key: String,
        #[arg(long)]
        context: Option<String>,
        #[arg(long)]
        w: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// List a bucket's keys, one per line (read from every member: an operator's tool, costly on big buckets).
    Keys {
        bucket: String,
        #[command(flatten)]
        target: Target,
    },
    /// Generate load against ringkv, a Redis-protocol server or etcd and report latency percentiles.
    Bench(bench::BenchArgs),
    /// Save the data of the whole cluster to FILE, read online from every
    /// member and merged per key (siblings and version vectors kept).
    Backup {
        /// `-`: standard output.
        file: PathBuf,
        /// Skip members that do not answer (named in the summary) instead of failing.
        #[arg(long)]
        partial: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Merge a backup FILE into the cluster: every object goes to its
    /// replicas as a read repair would; newer writes are kept.
    Restore {
        /// `-`: standard input (checked by the node record by record, not first).
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, their liveness as seen by the node asked, and partitions owned.
    Status {
        /// Print `GET /v1/cluster` as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Ask a member to leave: its partitions go to the others at once; it
    /// hands them the data it holds, then removes itself and stops.
    /// `ringkv_aae_handoff_pending` on it counts what is left to hand off.
    Leave {
        /// The member's name (as `cluster status` lists it).
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Take a member that is gone for good (a dead machine) out of the
    /// cluster at once, without a handoff: its partitions go to the others,
    /// which refill them from the remaining replicas by anti-entropy.
    /// Refused while the node asked sees it up.
    Remove {
        /// The member's name (as `cluster status` lists it).
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
struct Target {
    /// HTTP address of any node.
    #[arg(long, env = "RINGKV_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The nodes' client password, if they require one.
    #[arg(long, env = "RINGKV_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// For an https:// URL: the CA certificate (PEM) that signed the
    /// nodes' client certificate, trusted instead of the public roots.
    #[arg(long, env = "RINGKV_CACERT")]
    cacert: Option<PathBuf>,
    /// For nodes that ask for a client certificate: this client's (PEM).
    #[arg(long, env = "RINGKV_CLIENT_CERT", requires_all = ["client_key", "cacert"])]
    client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, env = "RINGKV_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl Target {
    fn client(&self) -> anyhow::Result<Client> {
        let password = self.password.as_deref();
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("while reading {}", path.display()))
        };
        match &self.cacert {
            None => Ok(Client::with_password(&self.url, password)),
            Some(ca) => {
                let identity = match (&self.client_cert, &self.client_key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                let identity = identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
                Ok(Client::with_tls(&self.url, password, &read(ca)?, identity)?)
            }
        }
    }
}

/// Flags of `ringkv server`; each overrides the same key of --config.
#[derive(Args)]
struct ServerArgs {
    /// A TOML file with the same keys as the flags (kebab-case).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    peer_addr: Option<String>,
    #[arg(long)]
    http_addr: Option<String>,
    #[arg(long)]
    resp_addr: Option<String>,
    /// Peer address of a member to join through (repeatable; first start only).
    #[arg(long)]
    join: Vec<String>,
    /// Partitions of a new cluster: a power of two up to 4096.
    #[arg(long)]
    partitions: Option<u32>,
    #[arg(long)]
    resp_bucket: Option<String>,
    #[arg(long)]
    max_value_bytes: Option<usize>,
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    #[arg(long)]
    gossip_interval_ms: Option<u64>,
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    #[arg(long)]
    max_connections: Option<usize>,
    /// `sync` (default): acknowledge writes once synced to disk; `buffered`:
    /// once written, synced in the background within --buffered-sync-interval-ms.
    #[arg(long, value_parser = parse_durability)]
    durability: Option<DurabilityMode>,
    #[arg(long)]
    buffered_sync_interval_ms: Option<u64>,
    /// Longest time a write waits in the write-ahead log and memtable before
    /// the background flush writes it to the redb file (bounds replay at start).
    #[arg(long)]
    memtable_flush_interval_ms: Option<u64>,
    /// Memory for the storage engine's page cache, in MiB (default 256);
    /// the rest of the data file is read through the OS page cache.
    #[arg(long)]
    engine_cache_mb: Option<usize>,
    /// Threads serving requests; 0 (default): one per core. Nodes that
    /// share a machine should split its cores between them.
    #[arg(long)]
    worker_threads: Option<usize>,
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    hints_max: Option<u64>,
    #[arg(long)]
    hints_max_bytes: Option<u64>,
    #[arg(long)]
    hint_delivery_per_second: Option<usize>,
    #[arg(long)]
    aae_interval_ms: Option<u64>,
    #[arg(long)]
    aae_max_segments: Option<usize>,
    /// What becomes of tombstones (Riak's delete_mode): `keep`, or reap a
    /// delete this many milliseconds after every primary acknowledged it
    /// and no member holds a hint for the key [default: 3000].
    #[arg(long, value_name = "keep|MS", value_parser = parse_delete_mode)]
    delete_mode: Option<ringkv_node::config::DeleteMode>,
    /// How often a node reads the tombstones left behind in the partitions
    /// it owns (deletes not reaped when made: a member was down), so that
    /// they are reaped though no client reads them; 0: never [default: a day].
    #[arg(long, value_name = "MS")]
    tombstone_sweep_interval_ms: Option<u64>,
    /// How often a node deletes the keys whose values have all expired (in
    /// the partitions it owns, as they come due); 0: only the tombstone
    /// sweep does [default: 1000].
    #[arg(long, value_name = "MS")]
    expiry_interval_ms: Option<u64>,
    /// File with the cluster secret (16+ bytes, mode 600): peer connections
    /// then authenticate with it, and peers without it are refused.
    #[arg(long)]
    cluster_secret_file: Option<std::path::PathBuf>,
    /// File with the password clients must give (8+ bytes, mode 600):
    /// HTTP `Authorization: Bearer PASSWORD`, RESP `AUTH PASSWORD`.
    #[arg(long)]
    client_password_file: Option<std::path::PathBuf>,
    /// Peer TLS: this node's certificate (PEM; with the key and CA files).
    #[arg(long, requires_all = ["peer_tls_key_file", "peer_tls_ca_file"])]
    peer_tls_cert_file: Option<std::path::PathBuf>,
    /// Peer TLS: this node's private key (PEM, mode 600).
    #[arg(long, requires_all = ["peer_tls_cert_file", "peer_tls_ca_file"])]
    peer_tls_key_file: Option<std::path::PathBuf>,
    /// Peer TLS: the CA certificate that signs every member's (PEM).
    #[arg(long, requires_all = ["peer_tls_cert_file", "peer_tls_key_file"])]
    peer_tls_ca_file: Option<std::path::PathBuf>,
    /// Peer TLS: the CA's revocation list (PEM; `ringkv cert revoke`).
    /// Members whose certificates it lists are refused and cut off.
    #[arg(long, requires = "peer_tls_ca_file")]
    peer_tls_crl_file: Option<std::path::PathBuf>,
    /// Client TLS: the certificate the HTTP and RESP ports present (PEM).
    /// Both ports then speak TLS only.
    #[arg(long, requires = "client_tls_key_file")]
    client_tls_cert_file: Option<std::path::PathBuf>,
    /// Client TLS: its private key (PEM, mode 600).
    #[arg(long, requires = "client_tls_cert_file")]
    client_tls_key_file: Option<std::path::PathBuf>,
    /// Client TLS: clients must show a certificate signed by this CA (PEM).
    #[arg(long, requires = "client_tls_cert_file")]
    client_tls_ca_file: Option<std::path::PathBuf>,
    /// Client TLS: the client CA's revocation list (PEM): clients whose
    /// certificates it lists are refused.
    #[arg(long, requires = "client_tls_ca_file")]
    client_tls_crl_file: Option<std::path::PathBuf>,
}

fn parse_delete_mode(text: &str) -> Result<ringkv_node::config::DeleteMode, String> {
    text.parse()
}

fn parse_durability(text: &str) -> Result<DurabilityMode, String> {
    match text {
        "sync" => Ok(DurabilityMode::Sync),
        "buffered" => Ok(DurabilityMode::Buffered),
        other => Err(format!("expected sync or buffered, got {other:?}")),
    }
}

impl ServerArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("while reading {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("while parsing {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            name,
            data_dir,
            peer_addr,
            http_addr,
            resp_addr,
            partitions,
            resp_bucket,
            max_value_bytes,
            request_timeout_ms,
            gossip_interval_ms,
            max_frame_bytes,
            max_connections,
            durability,
            buffered_sync_interval_ms,
            memtable_flush_interval_ms,
            engine_cache_mb,
            worker_threads,
            heartbeat_interval_ms,
            hints_max,
            hints_max_bytes,
            hint_delivery_per_second,
            aae_interval_ms,
            aae_max_segments,
            delete_mode,
            tombstone_sweep_interval_ms,
            expiry_interval_ms
        );
        if !self.join.is_empty() {
            config.join = self.join;
        }
        if self.cluster_secret_file.is_some() {
            config.cluster_secret_file = self.cluster_secret_file;
        }
        if self.client_password_file.is_some() {
            config.client_password_file = self.client_password_file;
        }
        if self.peer_tls_cert_file.is_some() {
            config.peer_tls_cert_file = self.peer_tls_cert_file;
            config.peer_tls_key_file = self.peer_tls_key_file;
            config.peer_tls_ca_file = self.peer_tls_ca_file;
        }
        if self.peer_tls_crl_file.is_some() {
            config.peer_tls_crl_file = self.peer_tls_crl_file;
        }
        if self.client_tls_cert_file.is_some() {
            config.client_tls_cert_file = self.client_tls_cert_file;
            config.client_tls_key_file = self.client_tls_key_file;
            config.client_tls_ca_file = self.client_tls_ca_file;
        }
        if self.client_tls_crl_file.is_some() {
            config.client_tls_crl_file = self.client_tls_crl_file;
        }
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => {
            init_logging();
            let config = (*args).into_config()?;
            let runtime = ringkv_node::runtime(config.worker_threads)
                .context("while starting the runtime")?;
            let node = runtime.block_on(async {
                let running = ringkv_node::start(config).await?;
                tracing::info!(http = %running.http_addr, resp = %running.resp_addr, "ringkv node ready");
                tokio::select! {
                    () = shutdown_signal() => {}
                    () = running.node.has_left() => {}
                }
                tracing::info!("shutting down");
                anyhow::Ok(running.node)
            })?;
            // Every task stops (requests in flight are dropped, as a client
            // disconnect would); then the queued writes finish and are synced.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            if ringkv_node::stop_cleanly(node) {
                tracing::info!("stopped cleanly");
            } else {
                tracing::warn!("not stopped cleanly: the next start takes a new write actor");
            }
            Ok(())
        }
        Command::DevCluster(args) => {
            init_logging();
            dev_cluster::run(args)
        }
        Command::Cert(command) => cert::run(command),
        Command::Get {
            bucket,
            key,
            r,
            target,
        } => {
            let client = target.client()?;
            match client.get(&bucket, key.as_bytes(), r)? {
                GetResult::Found {
                    value,
                    context,
                    expires_ms,
                    ..
                } => {
                    use std::io::Write;
                    std::io::stdout().write_all(&value)?;
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        println!();
                    }
                    eprintln!("context: {context}");
                    if let Some(at) = expires_ms {
                        eprintln!("expires_ms: {at}");
                    }
                }
                GetResult::Siblings { siblings, context } => {
                    println!(
                        "{} siblings (write with --context to resolve):",
                        siblings.len()
                    );
                    for (i, s) in siblings.iter().enumerate() {
                        let expires = s
                            .expires_ms
                            .map(|at| format!(", expires_ms {at}"))
                            .unwrap_or_default();
                        println!(
                            "[{i}] {} ({}, modified_ms {}{expires})",
                            String::from_utf8_lossy(&s.value),
                            s.content_type,
                            s.modified_ms
                        );
                    }
                    eprintln!("context: {context}");
                }
                GetResult::NotFound { .. } => bail!("not found: {bucket}/{key}"),
            }
            Ok(())
        }
        Command::Put {
            bucket,
            key,
            value,
            file,
            context,
            content_type,
            w,
            ttl,
            target,
        } => {
            let value = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("while reading {}", path.display()))?,
                (None, None) => bail!("give a VALUE or --file"),
                (Some(_), Some(_)) => unreachable!("clap rejects VALUE with --file"),
            };
            let client = target.client()?;
            let context = client.put_with_ttl(
                &bucket,
                key.as_bytes(),
                &value,
                &content_type,
                context.as_deref(),
                w,
                ttl,
            )?;
            eprintln!("context: {context}");
            Ok(())
        }
        Command::Delete {
            bucket,
            key,
            context,
            w,
            target,
        } => {
            let client = target.client()?;
            client.delete(&bucket, key.as_bytes(), context.as_deref(), w)?;
            Ok(())
        }
        Command::Keys { bucket, target } => {
            use std::io::Write;
            let listing = target.client()?.keys(&bucket)?;
            let mut out = std::io::stdout().lock();
            for key in &listing.keys {
                out.write_all(key)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            if !listing.missing_members.is_empty() {
                eprintln!(
                    "members that did not answer (keys only they hold are missing): {}",
                    listing.missing_members.join(", ")
                );
            }
            if let Some(error) = listing.error {
                bail!("the listing stopped before its end: {error}");
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::Backup {
            file,
            partial,
            target,
        } => backup::backup(&target.client()?, &file, partial),
        Command::Restore { file, target } => backup::restore(&target.client()?, &file),
        Command::Cluster {
            command: ClusterCommand::Status { json, target },
        } => {
            let status = target.client()?.cluster_status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status_table(&status));
            }
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Leave { name, target },
        } => {
            let answer = target.client()?.leave(&name)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Remove { name, target },
        } => {
            let answer = target.client()?.remove(&name)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}

/// `GET /v1/cluster` as a table, one member a line.
fn status_table(status: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut out = format!(
        "layout version {}, {} partitions; as {} sees it (hints pending {}, handoffs pending {}, old holders its reads ask {})\n",
        text(&status["layout_version"]),
        text(&status["partitions"]),
        text(&status["node"]),
        text(&status["hints_pending"]),
        text(&status["handoff_pending"]),
        text(&status["handoff_holders"]),
    );
    out.push_str(&format!(
        "{:<16} {:<8} {:<8} {:>10} {:<22} {:<22} {}\n",
        "name", "state", "liveness", "partitions", "http", "resp", "peer"
    ));
    let mut members: Vec<&serde_json::Value> = status["members"]
        .as_array()
        .map(|members| members.iter().collect())
        .unwrap_or_default();
    members.sort_by_key(|m| text(&m["name"]));
    for m in members {
        out.push_str(&format!(
            "{:<16} {:<8} {:<8} {:>10} {:<22} {:<22} {}\n",
            text(&m["name"]),
            text(&m["state"]),
            text(&m["liveness"]),
            text(&m["partitions_owned"]),
            text(&m["http_addr"]),
            text(&m["resp_addr"]),
            text(&m["peer_addr"]),
        ));
    }
    out
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
