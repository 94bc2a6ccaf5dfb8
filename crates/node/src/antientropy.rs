//! Active anti-entropy on a node: the Merkle trees of `store::Trees` are
//! rebuilt from storage at start, then every `--aae-interval-ms` this node
//! runs one exchange per (partition, n) it is a primary of (spread over
//! half the interval, not back to back), with the next
//! other primary in turn, and repairs every differing key by causal merge
//! on both sides. For a (partition, n) it holds keys of but is no primary
//! of (it is leaving, or a join or leave moved the partition), it
//! exchanges with every primary: ownership handoff, counted by
//! `ringkv_aae_handoff_pending` until a round finds them all in sync. The
//! exchange logic itself is `ringkv_core::antientropy`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::antientropy::{Exchange, ExchangeLimits, ExchangeStep, answer};
use ringkv_core::bucket::{validate_bucket_name, validate_key};
use ringkv_core::message::{PeerRequest, PeerResponse};
use ringkv_core::ring::{Layout, MemberState, key_hash, partition_of};
use tracing::{debug, info, warn};

use crate::node::{Node, merge_into, split_object_key};
use crate::store::StoreError;

impl Node {
    /// Fills the trees, and the expiry index, from what is on disk. Runs
    /// once at start, in pages, yielding between them so that start-up CPU
    /// stays bounded.
    pub async fn rebuild_trees(self: &Arc<Self>) -> Result<(), StoreError> {
        let layout = self.layout();
        let mut keys = 0usize;
        for partition in 0..layout.partitions() {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.store.scan_objects(partition, after.as_deref(), 512)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after = Some(last.clone());
                for (raw_key, bytes) in &page {
                    let Some((bucket, _)) = split_object_key(raw_key) else {
                        continue;
                    };
                    let digest = xxhash_rust::xxh3::xxh3_64(bytes);
                    let tree = self.store.trees().tree(partition, self.tree_n(&bucket));
                    tree.lock().expect("tree lock").insert(raw_key, digest);
                    // Keys that expire, for the expiry loop (`sweep`).
                    if let Some(at) = ringkv_core::causality::Object::decode(bytes)
                        .ok()
                        .and_then(|o| o.expires_at())
                    {
                        self.store.expiries().record(at, partition, raw_key);
                    }
                    keys += 1;
                }
                tokio::task::yield_now().await;
            }
        }
        info!(keys, "anti-entropy trees built");
        self.trees_built.store(true, Ordering::Release);
        Ok(())
    }

    /// Keys in all of this node's trees.
    pub fn tree_keys(&self) -> usize {
        let trees = self.store.trees();
        trees
            .keys()
            .into_iter()
            .map(|(p, n)| trees.tree(p, n).lock().expect("tree lock").len())
            .sum()
    }

    pub(crate) fn answer_exchange(
        &self,
        partition: u32,
        n: u32,
        request: &ringkv_core::antientropy::ExchangeRequest,
    ) -> PeerResponse {
        if partition >= self.layout().partitions() || n == 0 || n > ringkv_core::bucket::MAX_N {
            return PeerResponse::Refused {
                message: format!("no tree for partition {partition} and n {n}"),
            };
        }
        // A tree still being filled at start would look as if this node
        // lacked most keys, and the peer would repair them all for nothing.
        if !self.trees_built.load(Ordering::Acquire) {
            return PeerResponse::Refused {
                message: "anti-entropy trees are still being built".to_string(),
            };
        }
        let tree = self.store.trees().tree(partition, n);
        let mut tree = tree.lock().expect("tree lock");
        match answer(&mut tree, request) {
            Ok(response) => PeerResponse::AntiEntropy(response),
            Err(e) => PeerResponse::Refused {
                message: e.to_string(),
            },
        }
    }

    /// Runs exchanges forever, one round every `aae_interval_ms`.
    pub async fn anti_entropy_loop(self: Arc<Self>) {
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.config.aae_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: usize = 0;
        loop {
            interval.tick().await;
            round += 1;
            // Finishing a leave needs a whole round made as a leaving member.
            let mut leaving = self.is_leaving(&self.layout());
            let mut pending = 0;
            let trees = self.store.trees().keys();
            // The round's exchanges are spread over half the interval, as
            // Riak's AAE exchanges one partition per tick: run back to
            // back they are a burst of CPU on every member, and requests
            // arriving meanwhile wait behind it.
            let pace = Duration::from_millis(self.config.aae_interval_ms / 2)
                / u32::try_from(trees.len().max(1)).unwrap_or(u32::MAX);
            for (i, (partition, n)) in trees.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(pace).await;
                }
                // Read for each exchange, since a round lasts a while.
                let layout = self.layout();
                let leaving_now = self.is_leaving(&layout);
                leaving &= leaving_now;
                // Long enough for every node to use this layout, so that no
                // coordinator still sends this node writes of a partition it
                // hands off (the digest check below covers the rest).
                let settled = self.layout_age() >= self.handoff_grace();
                let preference = layout.preference_list(partition, n as usize);
                if !preference.primaries.contains(&self.id) {
                    let drop_after = settled && !leaving_now;
                    if !self
                        .hand_off(&layout, partition, n, &preference.primaries, drop_after)
                        .await
                    {
                        pending += 1;
                    }
                    continue;
                }
                if n < 2 {
                    continue;
                }
                let peers: Vec<NodeId> = preference
                    .primaries
                    .iter()
                    .copied()
                    .filter(|p| *p != self.id && self.usable(*p))
                    .collect();
                if peers.is_empty() {
                    continue;
                }
                let peer = peers[round % peers.len()];
                if let Err(e) = self.exchange(&layout, partition, n, peer, Side::Both).await {
                    debug!(partition, peer = format!("{peer:016x}"), error = %e, "anti-entropy exchange failed");
                }
            }
            self.metrics.handoff_pending.set(pending);
            // Hints it holds for others are delivered first too.
            if leaving && pending == 0 && self.hints_pending() == 0 {
                info!("handoff complete: every replica holds this node's data");
                self.finish_leaving().await;
            }
        }
    }

    fn is_leaving(&self, layout: &Layout) -> bool {
        layout
            .member(self.id)
            .is_some_and(|m| m.state == MemberState::Leaving)
    }

    /// Ownership handoff: this node holds keys of `(partition, n)` but is
    /// no replica of it (it is leaving, or a join or leave gave the
    /// partition to others). Exchanges with every replica, which repairs
    /// whatever they lack; `true` once every exchange finds that they lack
    /// nothing of this node's (keys they have and it lacks are copied here
    /// too, as in every exchange, but do not hold the handoff up).
    /// With `drop_after`, the keys found handed off are then deleted here,
    /// each only if unchanged since the exchange began.
    async fn hand_off(
        self: &Arc<Self>,
        layout: &Layout,
        partition: u32,
        n: u32,
        primaries: &[NodeId],
        drop_after: bool,
    ) -> bool {
        let tree = self.store.trees().tree(partition, n);
        let before: Vec<(Vec<u8>, u64)> = {
            let tree = tree.lock().expect("tree lock");
            if tree.is_empty() {
                return true;
            }
            if drop_after {
                (0..tree.segments())
                    .flat_map(|segment| tree.segment_entries(segment))
                    .collect()
            } else {
                Vec::new()
            }
        };
        let mut in_sync = true;
        for &peer in primaries {
            if !self.usable(peer) {
                in_sync = false;
                continue;
            }
            match self.exchange(layout, partition, n, peer, Side::Peer).await {
                Ok(true) => {}
                Ok(false) => in_sync = false,
                Err(e) => {
                    in_sync = false;
                    debug!(partition, peer = format!("{peer:016x}"), error = %e, "handoff exchange failed");
                }
            }
        }
        if in_sync && !primaries.is_empty() {
            let mut dropped = 0;
            for (raw_key, digest) in before {
                match self
                    .store
                    .drop_if_unchanged(partition, n, raw_key, digest)
                    .await
                {
                    Ok(deleted) => dropped += u64::from(deleted),
                    Err(e) => {
                        warn!(partition, error = %e, "cannot delete a handed-off key");
                        break;
                    }
                }
            }
            if dropped > 0 {
                self.metrics.keys_dropped.inc_by(dropped);
                info!(partition, n, keys = dropped, "handed off; deleted here");
            }
        }
        in_sync
    }

    /// How long a layout must have been in use here before handed-off data
    /// is deleted: ten gossip intervals and three anti-entropy rounds.
    fn handoff_grace(&self) -> Duration {
        Duration::from_millis(10 * self.config.gossip_interval_ms + 3 * self.config.aae_interval_ms)
    }

    /// One exchange with `peer`, repairing what differs on `side`;
    /// `Ok(true)` if the peer lacked nothing of this node's.
    async fn exchange(
        self: &Arc<Self>,
        layout: &Layout,
        partition: u32,
        n: u32,
        peer: NodeId,
        side: Side,
    ) -> Result<bool, String> {
        let addr = Self::peer_addr(layout, peer).ok_or("peer left the layout")?;
        let tree = self.store.trees().tree(partition, n);
        let limits = ExchangeLimits {
            max_indices_per_request: 1024,
            max_segments: self.config.aae_max_segments,
        };
        let (mut exchange, mut request) =
            Exchange::start(&mut tree.lock().expect("tree lock"), limits);
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let outcome = loop {
            let result = self
                .peers
                .request(
                    &addr,
                    PeerRequest::AntiEntropy {
                        partition,
                        n,
                        request,
                    },
                    timeout,
                )
                .await;
            self.observe(peer, &result);
            let response = match result {
                Ok(PeerResponse::AntiEntropy(response)) => response,
                Ok(other) => return Err(format!("unexpected answer {other:?}")),
                Err(e) => return Err(e.to_string()),
            };
            let step = exchange
                .on_response(&mut tree.lock().expect("tree lock"), response)
                .map_err(|e| e.to_string())?;
            match step {
                ExchangeStep::Send(next) => request = next,
                ExchangeStep::Done(outcome) => break outcome,
            }
        };
        self.metrics.exchanges.inc();
        if outcome.differences.is_empty() {
            return Ok(true);
        }
        let mut synced = !outcome.truncated;
        debug!(
            partition,
            n,
            keys = outcome.differences.len(),
            truncated = outcome.truncated,
            "anti-entropy found differences"
        );
        for difference in outcome.differences {
            match self
                .repair_key(partition, n, &difference.key, peer, &addr, side)
                .await
            {
                Ok(pushed) => synced &= !pushed,
                Err(e) => {
                    synced = false;
                    warn!(partition, error = %e, "anti-entropy repair failed");
                }
            }
        }
        Ok(synced)
    }

    /// Merges the local and the peer's copy of a key and stores the merge
    /// wherever it is news (only at the peer with `Side::Peer`); `Ok(true)`
    /// if the peer lacked it (was sent it).
    async fn repair_key(
        &self,
        partition: u32,
        n: u32,
        raw_key: &[u8],
        peer: NodeId,
        addr: &str,
        side: Side,
    ) -> Result<bool, String> {
        let (bucket, key) = split_object_key(raw_key).ok_or("malformed key in tree")?;
        validate_bucket_name(&bucket)
            .and(validate_key(&key))
            .map_err(|e| e.to_string())?;
        let layout = self.layout();
        // A key named by a peer is repaired only in the partition it hashes to.
        if partition_of(key_hash(bucket.as_bytes(), &key), layout.partitions()) != partition {
            return Err(format!("key of another partition than {partition}"));
        }
        let effective = self.effective(&bucket, &layout);
        let mode = effective.props.conflict;
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let local = self
            .store
            .read(partition, &bucket, &key)
            .map_err(|e| e.to_string())?;
        let result = self
            .peers
            .request(
                addr,
                PeerRequest::ReplicaGet {
                    bucket: bucket.clone(),
                    key: key.clone(),
                },
                timeout,
            )
            .await;
        self.observe(peer, &result);
        let remote = match result {
            Ok(PeerResponse::ReplicaGetDone { object }) => object
                .map(|bytes| ringkv_core::causality::Object::decode(&bytes))
                .transpose()
                .map_err(|e| e.to_string())?,
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let merged = match (&local, &remote) {
            (None, None) => return Ok(false),
            (Some(l), None) => l.clone(),
            (None, Some(r)) => r.clone(),
            (Some(l), Some(r)) => l.merge(r, mode),
        };
        // Written locally even when unchanged, so the tree records the
        // digest of what is really stored.
        if side == Side::Both {
            let incoming = merged.clone();
            self.store
                .update(
                    partition,
                    &bucket,
                    &key,
                    n,
                    effective.durability,
                    move |current| Ok::<_, ()>(merge_into(current, &incoming, mode)),
                )
                .await
                .map_err(|e| e.to_string())?
                .map_err(|()| "merge cannot fail".to_string())?;
        }
        let pushed = remote.as_ref() != Some(&merged);
        if pushed {
            let request = PeerRequest::ReplicaPut {
                bucket,
                key,
                object: merged.encode(),
                conflict: mode,
                durability: effective.durability,
            };
            let result = self.peers.request(addr, request, timeout).await;
            self.observe(peer, &result);
            if !matches!(result, Ok(PeerResponse::ReplicaPutDone)) {
                return Err("peer did not take the repair".into());
            }
        }
        self.metrics.keys_repaired.inc();
        Ok(pushed)
    }
}

/// Where an exchange repairs: on both sides (replicas of a partition), or
/// only at the peer (a handoff: this node no longer holds the partition,
/// and copying the peer's keys here would only bring back what it drops).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Both,
    Peer,
}

#[cfg(test)]
mod tests {
    use ringkv_core::antientropy::ExchangeRequest;
    use ringkv_core::bucket::BucketRegistry;
    use ringkv_core::ring::{Layout, Member, MemberState};
    use ringkv_storage::{GroupCommitOptions, GroupCommitter, MemoryStorage, Storage};

    use super::*;
    use crate::config::NodeConfig;
    use crate::store::LocalStore;
    use crate::transport::{Peers, Security};

    #[tokio::test]
    async fn exchanges_are_answered_only_once_the_trees_are_built() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let committer = GroupCommitter::start(storage.clone(), GroupCommitOptions::default());
        let me = Member {
            id: 1,
            name: "node1".into(),
            peer_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            resp_addr: "127.0.0.1:3".into(),
            state: MemberState::Valid,
        };
        let layout = Layout::new(8, 3, me.clone()).unwrap();
        let security = Security {
            key: None,
            tls: None,
        };
        let node = Node::new(
            NodeConfig::default(),
            1,
            1,
            0,
            me,
            LocalStore::new(storage, committer),
            Peers::new(1 << 20, security),
            layout,
            BucketRegistry::default(),
            None,
        );
        let root = ExchangeRequest::Level {
            level: 0,
            indices: vec![0],
        };
        match node.answer_exchange(0, 3, &root) {
            PeerResponse::Refused { message } => {
                assert!(message.contains("still being built"), "{message}")
            }
            other => panic!("answered from a tree being built: {other:?}"),
        }
        node.rebuild_trees().await.unwrap();
        assert!(matches!(
            node.answer_exchange(0, 3, &root),
            PeerResponse::AntiEntropy(_)
        ));
    }
}
