//! The async shell of a ringkv node: listeners, peer transport, storage
//! execution, gossip. Protocol decisions live in `ringkv-core`; this crate
//! moves bytes, runs timers and executes what the core decides.

pub mod antientropy;
pub mod backup;
pub mod config;
pub mod http;
pub mod listing;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod store;
pub mod sweep;
pub mod tls;
pub mod transport;
pub mod walk;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use ringkv_core::NodeId;
use ringkv_core::bucket::BucketRegistry;
use ringkv_core::message::{Holders, PeerRequest, PeerResponse};
use ringkv_core::ring::{DEFAULT_TARGET_N, Layout, Member, MemberState};
use ringkv_storage::{
    DataDirOptions, GroupCommitOptions, GroupCommitter, LogOptions, Storage, open_data_dir,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

pub use config::NodeConfig;
pub use node::Node;

use crate::node::{
    META_ACTOR, META_BUCKETS, META_DOT_FLOOR, META_IDENTITY, META_LAYOUT, META_LEFT,
};
use crate::store::LocalStore;
use crate::transport::{PeerError, Peers};

/// How long a joining node keeps trying its `--join` addresses.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct Identity {
    id: NodeId,
    name: String,
}

/// The actor id that stamps the writes this node coordinates as a primary,
/// and whether the process that used it last stopped cleanly. A primary
/// sends a write to the other replicas before its own copy is synced (and
/// with buffered durability acknowledges before), so a crash can lose a
/// copy that other replicas hold: a restarted node counting on from what
/// it kept would issue that dot again. Hence a new actor after every stop
/// that was not clean; a clean stop first syncs every write, so its actor
/// lives on.
#[derive(Serialize, Deserialize)]
struct ActorRecord {
    actor: NodeId,
    clean_stop: bool,
}

/// The actor's dot floor at a clean stop (`Node::dot_floor`): kept with
/// the actor, since its dots must go on counting above it.
#[derive(Serialize, Deserialize)]
struct DotFloorRecord {
    actor: NodeId,
    floor: u64,
}

const META_FORMAT: u8 = 1;

fn encode_meta<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![META_FORMAT];
    out.extend_from_slice(&postcard::to_stdvec(value).expect("metadata serialises"));
    out
}

fn decode_meta<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> anyhow::Result<T> {
    match bytes.split_first() {
        Some((&META_FORMAT, rest)) => {
            postcard::from_bytes(rest).with_context(|| format!("while decoding the stored {what}"))
        }
        Some((version, _)) => bail!("stored {what} has unknown format version {version}"),
        None => bail!("stored {what} is empty"),
    }
}

/// A started node: its addresses and the handle of its main task.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub peer_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub resp_addr: SocketAddr,
}

/// Opens the data dir, binds the listeners, joins or creates the cluster
/// and starts serving. Returns once the node is serving.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    config.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("while creating data dir {}", config.data_dir.display()))?;
    let options = DataDirOptions {
        log: LogOptions {
            flush_interval: Duration::from_millis(config.memtable_flush_interval_ms),
            ..LogOptions::default()
        },
        engine_cache_bytes: config.engine_cache_mb << 20,
    };
    let storage = open_data_dir(&config.data_dir, options)
        .with_context(|| format!("while opening the store in {}", config.data_dir.display()))?;
    let replay = storage.replay_report();
    if replay.records > 0 {
        info!(
            records = replay.records,
            files = replay.files,
            "replayed the write-ahead log"
        );
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let committer = GroupCommitter::start(
        storage.clone(),
        GroupCommitOptions {
            sync_interval: Some(Duration::from_millis(config.buffered_sync_interval_ms)),
            ..GroupCommitOptions::default()
        },
    );
    let store = LocalStore::new(storage, committer);

    if let Some(version) = store.meta_get(META_LEFT)? {
        let version = <[u8; 8]>::try_from(version.as_slice()).map_or(0, u64::from_be_bytes);
        bail!(
            "the node in {} left its cluster (layout version {version}); to join a cluster again, start it with an empty data dir",
            config.data_dir.display()
        );
    }
    let identity = match store.meta_get(META_IDENTITY)? {
        Some(bytes) => {
            let identity: Identity = decode_meta("identity", &bytes)?;
            if identity.name != config.name {
                bail!(
                    "data dir {} belongs to node {:?}, not {:?}: start it with --name {} or use another data dir",
                    config.data_dir.display(),
                    identity.name,
                    config.name,
                    identity.name
                );
            }
            identity
        }
        None => {
            let identity = Identity {
                id: rand::random::<u64>().max(1),
                name: config.name.clone(),
            };
            store.meta_put_sync(META_IDENTITY, encode_meta(&identity))?;
            info!(node = %identity.name, id = format!("{:016x}", identity.id), "new node identity");
            identity
        }
    };

    let actor = match store.meta_get(META_ACTOR)? {
        Some(bytes) => {
            let record: ActorRecord = decode_meta("actor", &bytes)?;
            record.clean_stop.then_some(record.actor)
        }
        None => None,
    };
    let dot_floor = match (actor, store.meta_get(META_DOT_FLOOR)?) {
        (Some(actor), Some(bytes)) => {
            let record: DotFloorRecord = decode_meta("dot floor", &bytes)?;
            if record.actor == actor {
                record.floor
            } else {
                0
            }
        }
        _ => 0,
    };
    let actor = match actor {
        Some(actor) => actor,
        None => {
            let actor = rand::random::<u64>().max(1);
            info!(
                actor = format!("{actor:016x}"),
                "new write actor (first start or unclean stop)"
            );
            actor
        }
    };
    // From here on a crash is an unclean stop.
    let record = ActorRecord {
        actor,
        clean_stop: false,
    };
    store.meta_put_sync(META_ACTOR, encode_meta(&record))?;

    let bind = |addr: &str, what: &str| {
        let addr = addr.to_string();
        let what = what.to_string();
        async move {
            TcpListener::bind(&addr)
                .await
                .with_context(|| format!("while binding the {what} address {addr}"))
        }
    };
    let peer_listener = bind(&config.peer_addr, "peer").await?;
    let http_listener = bind(&config.http_addr, "HTTP").await?;
    let resp_listener = bind(&config.resp_addr, "RESP").await?;
    let peer_addr = peer_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let resp_addr = resp_listener.local_addr()?;
    let me = Member {
        id: identity.id,
        name: identity.name.clone(),
        peer_addr: peer_addr.to_string(),
        http_addr: http_addr.to_string(),
        resp_addr: resp_addr.to_string(),
        state: MemberState::Valid,
    };
    let key = cluster_key(&config)?;
    let password = client_password(&config)?;
    let security = transport::Security {
        key,
        tls: peer_tls(&config)?,
    };
    let peers = Peers::new(config.max_frame_bytes, security.clone());

    let (mut joined_buckets, mut joined_holders) = (None, None);
    let layout = match store.meta_get(META_LAYOUT)? {
        Some(bytes) => {
            let layout = Layout::decode(&bytes).context("while decoding the stored layout")?;
            if !config.join.is_empty() {
                info!("this node already belongs to a cluster; --join is ignored");
            }
            layout
        }
        None if config.join.is_empty() => {
            let layout = Layout::new(config.partitions, DEFAULT_TARGET_N, me.clone())?;
            info!(partitions = config.partitions, "new cluster");
            layout
        }
        None => {
            let joined = join(&peers, &config.join, &me).await?;
            joined_buckets = Some(joined.buckets);
            joined_holders = Some(joined.holders);
            joined.layout
        }
    };
    let mut buckets = match store.meta_get(META_BUCKETS)? {
        Some(bytes) => decode_meta::<BucketRegistry>("bucket properties", &bytes)?,
        None => BucketRegistry::default(),
    };
    if let Some(joined) = joined_buckets
        && buckets.merge(&joined)
    {
        store.meta_put_sync(META_BUCKETS, encode_meta(&buckets))?;
    }
    store.meta_put_sync(META_LAYOUT, layout.encode())?;

    let node = Node::new(
        config.clone(),
        identity.id,
        actor,
        dot_floor,
        me.clone(),
        store,
        peers,
        layout.clone(),
        buckets,
        password,
    );
    if let Some(holders) = joined_holders {
        node.add_holders(holders, &layout)?;
    }
    // Our own addresses may have changed since the layout was written.
    if let Some(next) = layout.with_member(me) {
        node.adopt_layout(next)?;
    }

    let connections = Arc::new(Semaphore::new(config.max_connections));
    let handler_node = node.clone();
    let handler: transport::Handler = Arc::new(move |request: PeerRequest| {
        let node = handler_node.clone();
        Box::pin(async move { node.handle_peer(request).await })
    });
    if let Some(peer_tls) = &security.tls {
        tokio::spawn(peer_tls.clone().watch_files());
    }
    tokio::spawn(transport::serve(
        peer_listener,
        handler,
        config.max_frame_bytes,
        connections.clone(),
        security,
    ));
    let app = http::router(node.clone());
    let client_tls = client_tls(&config)?;
    if let Some(client_tls) = &client_tls {
        tokio::spawn(client_tls.clone().watch_files());
    }
    match client_tls.clone() {
        None => {
            // Replies are small and written whole: never hold one back for
            // Nagle (with the client's delayed ACK that costs up to 40 ms).
            let http_listener = http_listener.tap_io(|stream| {
                let _ = stream.set_nodelay(true);
            });
            tokio::spawn(async move {
                if let Err(e) = axum::serve(http_listener, app).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            });
        }
        Some(acceptor) => {
            let https = tls::TlsListener::new(http_listener, acceptor, config.max_connections)?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(https, app).await {
                    tracing::error!(error = %e, "HTTPS server stopped");
                }
            });
        }
    }
    tokio::spawn(resp::serve(
        resp_listener,
        node.clone(),
        Arc::new(Semaphore::new(config.max_connections)),
        client_tls,
    ));
    node.store().count_hints(node.layout().partitions())?;
    tokio::spawn(node.clone().gossip_loop());
    tokio::spawn(node.clone().heartbeat_loop());
    tokio::spawn(node.clone().hint_delivery_loop());
    tokio::spawn(node.clone().tombstone_sweep_loop());
    tokio::spawn(node.clone().expiry_loop());
    let aae = node.clone();
    tokio::spawn(async move {
        match aae.rebuild_trees().await {
            Ok(()) => aae.anti_entropy_loop().await,
            Err(e) => {
                tracing::error!(error = %e, "cannot build anti-entropy trees; anti-entropy is off")
            }
        }
    });
    node.announce().await;
    info!(node = %node.me.name, %peer_addr, %http_addr, %resp_addr, "serving");
    Ok(RunningNode {
        node,
        peer_addr,
        http_addr,
        resp_addr,
    })
}

/// The runtime a node serves on, `worker_threads` as `--worker-threads`
/// (0: one per core).
///
/// With one thread it is a current-thread runtime, driven by the thread
/// that calls its `block_on` (the caller: this sets that thread up), which
/// commits its own durable writes each time it runs out of work, the way
/// Redis's event loop syncs before it sleeps: the writes that arrived
/// together share one sync, with no hand-off to the commit thread and
/// back. Only writes with no other replica are committed so (see
/// `store::Commit`): the thread serves nothing while it syncs.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads == 1 {
        ringkv_storage::defer_commits_on_this_thread();
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(ringkv_storage::commit_deferred)
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build()
}

/// After the runtime that served `node` has shut down (no task holds it any
/// more): finishes the queued writes (those the stopping thread deferred
/// too), syncs, and records a clean stop, so
/// that the next start keeps this node's write actor. Returns `false`, and
/// records nothing, if something still holds the node or the sync failed;
/// the next start then takes a new actor, which is always safe.
pub fn stop_cleanly(node: Arc<Node>) -> bool {
    ringkv_storage::commit_deferred();
    let Ok(node) = Arc::try_unwrap(node) else {
        return false;
    };
    let (actor, floor) = (node.actor(), node.dot_floor());
    let Some(storage) = node.into_store().close() else {
        return false;
    };
    let record = ActorRecord {
        actor,
        clean_stop: true,
    };
    let mut batch = ringkv_storage::WriteBatch::default();
    batch.put(
        ringkv_storage::Space::Meta,
        META_DOT_FLOOR.as_bytes().to_vec(),
        encode_meta(&DotFloorRecord { actor, floor }),
    );
    batch.put(
        ringkv_storage::Space::Meta,
        META_ACTOR.as_bytes().to_vec(),
        encode_meta(&record),
    );
    match storage
        .sync()
        .and_then(|()| storage.write(&batch, ringkv_storage::Durability::Sync))
    {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "could not record a clean stop");
            false
        }
    }
}

/// The key of the cluster secret in `config.cluster_secret_file`, if set.
fn cluster_key(config: &NodeConfig) -> anyhow::Result<Option<ringkv_wire::ClusterKey>> {
    let Some(path) = &config.cluster_secret_file else {
        return Ok(None);
    };
    let context = || format!("cluster secret file {}", path.display());
    let key = ringkv_wire::ClusterKey::from_secret(&read_secret(path, &context)?)
        .with_context(context)?;
    info!("peer connections authenticate with the cluster secret");
    Ok(Some(key))
}

/// The peer TLS of `config`, when its three files are set.
fn peer_tls(config: &NodeConfig) -> anyhow::Result<Option<tls::PeerTls>> {
    let (Some(cert), Some(key), Some(ca)) = (
        &config.peer_tls_cert_file,
        &config.peer_tls_key_file,
        &config.peer_tls_ca_file,
    ) else {
        return Ok(None);
    };
    let context = || format!("private key file {}", key.display());
    read_secret(key, &context)?;
    let crl = config.peer_tls_crl_file.as_deref();
    let peer_tls = tls::PeerTls::load(cert, key, ca, crl)?;
    info!("peer connections use TLS (mutual, certificates signed by the cluster CA)");
    if let Some(crl) = crl {
        info!(crl = %crl.display(), "peer certificates the CRL lists are refused");
    }
    Ok(Some(peer_tls))
}

/// The TLS acceptor of the client ports, when `config` sets their files.
fn client_tls(config: &NodeConfig) -> anyhow::Result<Option<tls::ClientAcceptor>> {
    let (Some(cert), Some(key)) = (&config.client_tls_cert_file, &config.client_tls_key_file)
    else {
        return Ok(None);
    };
    let context = || format!("private key file {}", key.display());
    read_secret(key, &context)?;
    let ca = config.client_tls_ca_file.as_deref();
    let crl = config.client_tls_crl_file.as_deref();
    let acceptor = tls::client_acceptor(cert, key, ca, crl)?;
    if ca.is_some() {
        info!("clients connect with TLS (HTTPS, RESP over TLS) and a certificate of the client CA");
    } else {
        info!("clients connect with TLS (HTTPS, RESP over TLS)");
    }
    Ok(Some(acceptor))
}

/// The client password in `config.client_password_file`, if set.
fn client_password(config: &NodeConfig) -> anyhow::Result<Option<ringkv_wire::Password>> {
    let Some(path) = &config.client_password_file else {
        return Ok(None);
    };
    let context = || format!("client password file {}", path.display());
    let password =
        ringkv_wire::Password::new(&read_secret(path, &context)?).with_context(context)?;
    info!("clients must give the password (HTTP Authorization, RESP AUTH)");
    Ok(Some(password))
}

/// The bytes of a file holding a secret. It must be readable by its owner
/// only, as Erlang's cookie file must.
fn read_secret(path: &Path, context: &dyn Fn() -> String) -> anyhow::Result<Vec<u8>> {
    let metadata = std::fs::metadata(path).with_context(context)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {:o}); make it readable by its owner only: chmod 600",
                context(),
                mode & 0o777
            );
        }
    }
    std::fs::read(path).with_context(context)
}

/// What a seed gives a joiner (`PeerResponse::Joined`).
struct Joined {
    layout: Layout,
    buckets: BucketRegistry,
    holders: Holders,
}

/// Joins through one of `seeds`: the layout with this node in it, the
/// cluster's bucket properties and the seed's handoff holders.
async fn join(peers: &Peers, seeds: &[String], me: &Member) -> anyhow::Result<Joined> {
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    loop {
        for seed in seeds {
            let request = PeerRequest::Join { member: me.clone() };
            match peers.request(seed, request, Duration::from_secs(5)).await {
                Ok(PeerResponse::Joined {
                    layout,
                    buckets,
                    holders,
                }) => {
                    let layout = Layout::decode(&layout)
                        .context("while decoding the layout sent by the seed")?;
                    if layout.member(me.id).is_some() {
                        info!(%seed, version = layout.version(), "joined the cluster");
                        return Ok(Joined {
                            layout,
                            buckets,
                            holders,
                        });
                    }
                    warn!(%seed, "seed answered without adding this node; retrying");
                }
                Ok(PeerResponse::Refused { message }) => {
                    bail!("{seed} refused the join: {message}")
                }
                Ok(other) => warn!(%seed, ?other, "unexpected answer to join"),
                Err(e @ (PeerError::Unauthenticated | PeerError::Tls)) => {
                    bail!("cannot join through {seed}: {e}")
                }
                Err(e) => warn!(%seed, error = %e, "cannot reach seed"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("could not join through {seeds:?} within {JOIN_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
