//! Node configuration: what `ringkv server` flags and config files set.

use std::path::PathBuf;

pub use ringkv_core::bucket::DurabilityMode;
use serde::{Deserialize, Serialize};

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_RESP_ADDR: &str = "127.0.0.1:6380";
pub const DEFAULT_PEER_ADDR: &str = "127.0.0.1:7070";
/// The largest `max-frame-bytes`: below any length that the refusals of
/// `ringkv_wire::auth::MAGIC` and `tls::TLS_REQUIRED` read as.
pub const MAX_FRAME_BYTES: usize = 1280 * 1024 * 1024;

/// Every field has a config-file key of the same name (kebab-case).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of the node in the cluster; unique per cluster.
    pub name: String,
    pub data_dir: PathBuf,
    pub peer_addr: String,
    pub http_addr: String,
    pub resp_addr: String,
    /// Peer addresses of existing members to join through (first start only).
    pub join: Vec<String>,
    /// Partitions of a new cluster (power of two, at most 4096).
    pub partitions: u32,
    /// Bucket that RESP commands read and write (an `lww` bucket unless configured).
    pub resp_bucket: String,
    pub max_value_bytes: usize,
    /// Default time a client operation may take before it fails.
    pub request_timeout_ms: u64,
    pub gossip_interval_ms: u64,
    /// Largest peer frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Client connections served at once per listener (HTTP, RESP).
    pub max_connections: usize,
    /// `sync` (default): a replica acknowledges a write once it is synced
    /// to disk. `buffered`: once it is written; synced in the background
    /// within `buffered-sync-interval-ms` (a crash may lose that window).
    /// A bucket's `durability` property overrides it.
    pub durability: DurabilityMode,
    pub buffered_sync_interval_ms: u64,
    /// Longest time a write stays only in the write-ahead log and the
    /// memtable before the flusher writes it to redb (it also flushes at
    /// 16 MiB). Bounds the log replayed at start, not durability.
    pub memtable_flush_interval_ms: u64,
    /// Memory for redb's page cache, in MiB. Pages beyond it are read from
    /// the file (through the OS page cache).
    pub engine_cache_mb: usize,
    /// Threads serving requests (tokio workers); 0: one per core. Several
    /// nodes sharing one machine should split its cores between them.
    pub worker_threads: usize,
    /// Failure-detector heartbeats to every member.
    pub heartbeat_interval_ms: u64,
    /// Most hint records a node holds for other nodes (sloppy quorum).
    pub hints_max: u64,
    /// Most bytes of hint records a node holds for other nodes.
    pub hints_max_bytes: u64,
    /// Hints handed off per second at most.
    pub hint_delivery_per_second: usize,
    /// Anti-entropy: one exchange per (partition, n) this node is a primary
    /// of, every this many milliseconds.
    pub aae_interval_ms: u64,
    /// Anti-entropy rate limit: Merkle segments (of 1024 per tree) compared
    /// and repaired per exchange.
    pub aae_max_segments: usize,
    /// What becomes of a tombstone (Riak's `delete_mode`): `keep`, or a
    /// number of milliseconds after which a delete that every primary
    /// acknowledged is reaped, once no member holds a hint for the key
    /// (default 3000).
    pub delete_mode: DeleteMode,
    /// How often a node reads the tombstones left behind in the partitions
    /// it owns (a delete that could not be reaped when it was made), so
    /// that they are reaped without a client reading them; 0: never.
    pub tombstone_sweep_interval_ms: u64,
    /// How often a node deletes the keys whose values have all expired
    /// (of the partitions it owns, as they come due); 0: only the
    /// tombstone sweep does, at its own interval.
    pub expiry_interval_ms: u64,
    /// A file holding the cluster secret (at least 16 bytes, readable by
    /// its owner only): when set, peer connections authenticate with it
    /// and peers without it are cut off. Every member needs the same.
    pub cluster_secret_file: Option<PathBuf>,
    /// A file holding the password clients must give (at least 8 bytes,
    /// readable by its owner only): HTTP `Authorization: Bearer` (or Basic),
    /// RESP `AUTH`, as Redis's `requirepass`. `/healthz` and `/metrics`
    /// stay open.
    pub client_password_file: Option<PathBuf>,
    /// Peer TLS (all three or none): this node's certificate chain (PEM),
    /// its private key (PEM, readable by its owner only), and the CA
    /// certificate that signs every member's. Connections between members
    /// are then mutual TLS; `ringkv cert` makes such files.
    pub peer_tls_cert_file: Option<PathBuf>,
    pub peer_tls_key_file: Option<PathBuf>,
    pub peer_tls_ca_file: Option<PathBuf>,
    /// With peer TLS: the CA's certificate revocation list (PEM; `ringkv
    /// cert revoke` writes it). A member whose certificate it lists is
    /// refused, and cut off when the file changes.
    pub peer_tls_crl_file: Option<PathBuf>,
    /// Client TLS (both or none): the certificate chain (PEM) the HTTP and
    /// RESP ports present, and its private key (PEM, readable by its owner
    /// only). Both ports then speak TLS only.
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    /// With client TLS: clients must show a certificate signed by a CA in
    /// this file (PEM), as etcd's `--client-cert-auth`.
    pub client_tls_ca_file: Option<PathBuf>,
    /// With a client CA: the CA's certificate revocation list (PEM).
    pub client_tls_crl_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "node1".into(),
            data_dir: PathBuf::from("ringkv-data"),
            peer_addr: DEFAULT_PEER_ADDR.into(),
            http_addr: DEFAULT_HTTP_ADDR.into(),
            resp_addr: DEFAULT_RESP_ADDR.into(),
            join: Vec::new(),
            partitions: ringkv_core::ring::DEFAULT_PARTITIONS,
            resp_bucket: "redis".into(),
            max_value_bytes: 16 * 1024 * 1024,
            request_timeout_ms: 5_000,
            gossip_interval_ms: 1_000,
            max_frame_bytes: 128 * 1024 * 1024,
            max_connections: 4096,
            durability: DurabilityMode::Sync,
            buffered_sync_interval_ms: 1000,
            memtable_flush_interval_ms: 5000,
            engine_cache_mb: ringkv_storage::DEFAULT_ENGINE_CACHE_BYTES >> 20,
            worker_threads: 0,
            heartbeat_interval_ms: 500,
            hints_max: 1_000_000,
            hints_max_bytes: 1024 * 1024 * 1024,
            hint_delivery_per_second: 2000,
            aae_interval_ms: 10_000,
            aae_max_segments: 64,
            delete_mode: DeleteMode::ReapAfterMs(3000),
            tombstone_sweep_interval_ms: 24 * 60 * 60 * 1000,
            expiry_interval_ms: 1000,
            cluster_secret_file: None,
            client_password_file: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_ca_file: None,
            peer_tls_crl_file: None,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            client_tls_crl_file: None,
        }
    }
}

/// What becomes of a tombstone: kept for ever, or reaped this many
/// milliseconds after a delete every primary acknowledged. Written `keep`
/// or a number (`delete-mode = 3000` or `"3000"` in a config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DeleteModeText", into = "String")]
pub enum DeleteMode {
    Keep,
    ReapAfterMs(u64),
}

/// The longest reap delay accepted: a day.
const MAX_REAP_DELAY_MS: u64 = 24 * 3600 * 1000;

impl std::str::FromStr for DeleteMode {
    type Err = String;

    fn from_str(text: &str) -> Result<DeleteMode, String> {
        match text {
            "keep" => Ok(DeleteMode::Keep),
            ms => match ms.parse::<u64>() {
                Ok(ms) if ms <= MAX_REAP_DELAY_MS => Ok(DeleteMode::ReapAfterMs(ms)),
                _ => Err(format!(
                    "delete-mode: expected keep or a delay in milliseconds up to {MAX_REAP_DELAY_MS}, got {text:?}"
                )),
            },
        }
    }
}

/// `delete-mode` as a config file may write it.
#[derive(Deserialize)]
#[serde(untagged)]
enum DeleteModeText {
    Text(String),
    Ms(u64),
    Negative(i64),
}

impl TryFrom<DeleteModeText> for DeleteMode {
    type Error = String;

    fn try_from(text: DeleteModeText) -> Result<DeleteMode, String> {
        match text {
            DeleteModeText::Text(text) => text.parse(),
            DeleteModeText::Ms(ms) => ms.to_string().parse(),
            DeleteModeText::Negative(ms) => ms.to_string().parse(),
        }
    }
}

impl From<DeleteMode> for String {
    fn from(mode: DeleteMode) -> String {
        match mode {
            DeleteMode::Keep => "keep".into(),
            DeleteMode::ReapAfterMs(ms) => ms.to_string(),
        }
    }
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "node name {:?} must be 1-64 characters of [A-Za-z0-9_.-]",
                self.name
            ));
        }
        ringkv_core::bucket::validate_bucket_name(&self.resp_bucket)
            .map_err(|e| format!("resp-bucket: {e}"))?;
        if !self.partitions.is_power_of_two() || self.partitions > ringkv_core::ring::MAX_PARTITIONS
        {
            return Err(format!(
                "partitions must be a power of two up to 4096, got {}",
                self.partitions
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 512 * 1024 * 1024 {
            return Err("max-value-bytes must be between 1 and 512 MiB".into());
        }
        let tls_files = [
            &self.peer_tls_cert_file,
            &self.peer_tls_key_file,
            &self.peer_tls_ca_file,
        ];
        let set = tls_files.iter().filter(|f| f.is_some()).count();
        if set != 0 && set != 3 {
            return Err(
                "peer TLS needs all three of peer-tls-cert-file, peer-tls-key-file and peer-tls-ca-file"
                    .into(),
            );
        }
        if self.client_tls_cert_file.is_some() != self.client_tls_key_file.is_some() {
            return Err(
                "client TLS needs both client-tls-cert-file and client-tls-key-file".into(),
            );
        }
        if self.peer_tls_crl_file.is_some() && set != 3 {
            return Err("peer-tls-crl-file needs peer TLS (peer-tls-cert-file, peer-tls-key-file, peer-tls-ca-file)".into());
        }
        if self.client_tls_crl_file.is_some() && self.client_tls_ca_file.is_none() {
            return Err(
                "client-tls-crl-file needs client-tls-ca-file (the CA whose certificates it revokes)"
                    .into(),
            );
        }
        if self.client_tls_ca_file.is_some() && self.client_tls_cert_file.is_none() {
            return Err(
                "client-tls-ca-file needs client TLS (client-tls-cert-file, client-tls-key-file)"
                    .into(),
            );
        }
        // A peer that refuses a connection for want of a secret or of TLS
        // says so in 8 bytes that, read as a frame length ("RK..", about
        // 1.29 GiB), exceed the limit. (The largest value still fits.)
        if self.max_frame_bytes > MAX_FRAME_BYTES {
            return Err("max-frame-bytes must be at most 1280 MiB".into());
        }
        if self.max_frame_bytes < 2 * self.max_value_bytes + 64 * 1024 {
            return Err(
                "max-frame-bytes must be at least twice max-value-bytes plus 64 KiB".into(),
            );
        }
        if self.buffered_sync_interval_ms == 0 || self.buffered_sync_interval_ms > 60_000 {
            return Err("buffered-sync-interval-ms must be between 1 and 60000".into());
        }
        if self.memtable_flush_interval_ms == 0 || self.memtable_flush_interval_ms > 3_600_000 {
            return Err("memtable-flush-interval-ms must be between 1 and 3600000".into());
        }
        if self.engine_cache_mb > 1 << 20 {
            return Err("engine-cache-mb must be at most 1048576 (1 TiB)".into());
        }
        if self.worker_threads > 1024 {
            return Err("worker-threads must be at most 1024 (0: one per core)".into());
        }
        if self.aae_interval_ms == 0 || self.aae_max_segments == 0 {
            return Err("aae-interval-ms and aae-max-segments must be positive".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.hints_max == 0
            || self.hints_max_bytes == 0
            || self.hint_delivery_per_second == 0
        {
            return Err(
                "heartbeat-interval-ms, hints-max, hints-max-bytes and hint-delivery-per-second must be positive"
                    .into(),
            );
        }
        if self.request_timeout_ms == 0 || self.gossip_interval_ms == 0 || self.max_connections == 0
        {
            return Err(
                "request-timeout-ms, gossip-interval-ms and max-connections must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_mode_is_keep_or_milliseconds_as_text_or_number() {
        let parse = |json: &str| serde_json::from_str::<NodeConfig>(json).map(|c| c.delete_mode);
        assert_eq!(
            parse(r#"{"delete-mode": "keep"}"#).unwrap(),
            DeleteMode::Keep
        );
        assert_eq!(
            parse(r#"{"delete-mode": 250}"#).unwrap(),
            DeleteMode::ReapAfterMs(250)
        );
        assert_eq!(
            parse(r#"{"delete-mode": "250"}"#).unwrap(),
            DeleteMode::ReapAfterMs(250)
        );
        assert_eq!(parse("{}").unwrap(), DeleteMode::ReapAfterMs(3000));
        for bad in [r#""sometimes""#, "-1", r#""""#, "86400001"] {
            let error = parse(&format!(r#"{{"delete-mode": {bad}}}"#)).unwrap_err();
            assert!(error.to_string().contains("delete-mode"), "{bad}: {error}");
        }
        // Written back as it is read.
        let text = serde_json::to_string(&NodeConfig {
            delete_mode: DeleteMode::Keep,
            ..NodeConfig::default()
        })
        .unwrap();
        assert!(text.contains(r#""delete-mode":"keep""#), "{text}");
    }
}
