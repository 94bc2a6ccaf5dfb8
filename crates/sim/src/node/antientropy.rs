//! Active anti-entropy on a simulated node, as `crates/node/src/antientropy.rs`
//! runs it: one `MerkleTree` per (partition, n) over (object key → xxh3 of
//! the stored object), rebuilt from storage at start, updated in commit
//! order once a data write is applied (see `SimNode::commit`); every
//! `anti_entropy_interval_ms` one pass runs, for each tree whose partition
//! this node is a primary of, one exchange with the next other primary in
//! turn (`ringkv_core::antientropy::Exchange` on this side, `answer` on the
//! peer's), then repairs each differing key by causal merge on both sides:
//! read the local copy, `ReplicaGet` the peer's, store the merge locally
//! (always, so the tree describes what is stored) and send it to the peer
//! with `ReplicaPut` when it is news there. Trees, exchanges and keys are
//! handled one after the other, as the node's loop awaits each step.
//!
//! Differences from the node: a pass starts only when the previous one
//! ended (the node's interval then ticks at once; here the next tick
//! does), and the peer of each tree is chosen when the pass starts rather
//! than when its exchange starts.

use std::collections::{BTreeMap, VecDeque};

use ringkv_core::NodeId;
use ringkv_core::antientropy::{
    Exchange, ExchangeLimits, ExchangeRequest, ExchangeStep, MerkleTree, answer,
};
use ringkv_core::bucket::MAX_N;
use ringkv_core::causality::Object;
use ringkv_core::message::{PeerRequest, PeerResponse};
use ringkv_storage::MemoryStorage;

use super::{
    CommitJob, Effect, Payload, Pending, RequestId, SimNode, Target, Timer, TransportError,
    read_object,
};
use crate::cluster::Cluster;
use crate::config::PlantedBug;
use crate::replicas::tree_from_storage;
use ringkv_core::hint::split_object_key;

/// (partition, n).
type TreeId = (u32, u32);

/// A node's trees and its running pass, if any.
pub(super) struct AntiEntropy {
    trees: BTreeMap<TreeId, MerkleTree>,
    /// Passes started (picks each tree's peer in turn).
    round: usize,
    pass: Option<Pass>,
}

struct Pass {
    /// Trees still to exchange, each with its peer.
    todo: VecDeque<(TreeId, NodeId)>,
    step: Step,
}

enum Step {
    /// Between two trees.
    Idle,
    Exchanging {
        tree: TreeId,
        peer: NodeId,
        exchange: Exchange,
        request: RequestId,
    },
    Repairing {
        tree: TreeId,
        peer: NodeId,
        keys: VecDeque<Vec<u8>>,
        key: KeyRepair,
    },
}

/// Where the repair of the current key stands.
enum KeyRepair {
    /// Between two keys.
    Idle,
    ReadingPeer {
        raw_key: Vec<u8>,
        local: Option<Object>,
        request: RequestId,
    },
    StoringLocally {
        raw_key: Vec<u8>,
        merged: Object,
        peer_copy: Option<Object>,
    },
    StoringOnPeer {
        request: RequestId,
    },
}

impl AntiEntropy {
    /// The trees of what `storage` holds (the node's `rebuild_trees`).
    pub(super) fn rebuilt(storage: &MemoryStorage, cluster: &Cluster) -> AntiEntropy {
        let n = cluster.n() as u32;
        let trees = (0..cluster.layout.partitions())
            .map(|partition| ((partition, n), tree_from_storage(storage, partition)))
            .filter(|(_, tree)| !tree.is_empty())
            .collect();
        AntiEntropy {
            trees,
            round: 0,
            pass: None,
        }
    }

    /// The tree of (partition, n), created empty if missing.
    pub(super) fn tree(&mut self, partition: u32, n: u32) -> &mut MerkleTree {
        self.trees.entry((partition, n)).or_default()
    }

    /// The root of (partition, n), if this node has that tree.
    pub(super) fn root(&mut self, partition: u32, n: u32) -> Option<u64> {
        self.trees.get_mut(&(partition, n)).map(MerkleTree::root)
    }
}

impl SimNode {
    /// The root of this node's tree of (partition, n), if it has one.
    pub fn merkle_root(&mut self, partition: u32, n: u32) -> Option<u64> {
        self.anti_entropy.root(partition, n)
    }

    /// The peer's side of an exchange (the node's `answer_exchange`).
    pub(super) fn answer_exchange(
        &mut self,
        cluster: &Cluster,
        partition: u32,
        n: u32,
        request: &ExchangeRequest,
    ) -> PeerResponse {
        if partition >= cluster.layout.partitions() || n == 0 || n > MAX_N {
            return PeerResponse::Refused {
                message: format!("no tree for partition {partition} and n {n}"),
            };
        }
        match answer(self.anti_entropy.tree(partition, n), request) {
            Ok(response) => PeerResponse::AntiEntropy(response),
            Err(e) => PeerResponse::Refused {
                message: e.to_string(),
            },
        }
    }

    /// The anti-entropy loop's tick: starts a pass over the trees of the
    /// partitions this node is a primary of, unless one is running.
    pub fn anti_entropy_tick(&mut self, cluster: &Cluster, now_ms: u64, out: &mut Vec<Effect>) {
        if self.anti_entropy.pass.is_some() || cluster.bug == Some(PlantedBug::NoBackgroundRepair) {
            return;
        }
        self.anti_entropy.round += 1;
        let round = self.anti_entropy.round;
        let mut todo = VecDeque::new();
        for &(partition, n) in self.anti_entropy.trees.keys() {
            if n < 2 {
                continue;
            }
            let preference = cluster.layout.preference_list(partition, n as usize);
            if !preference.primaries.contains(&self.id) {
                continue;
            }
            let peers: Vec<NodeId> = preference
                .primaries
                .iter()
                .copied()
                .filter(|&p| p != self.id && self.usable(p, now_ms))
                .collect();
            if !peers.is_empty() {
                todo.push_back(((partition, n), peers[round % peers.len()]));
            }
        }
        if todo.is_empty() {
            return;
        }
        self.anti_entropy.pass = Some(Pass {
            todo,
            step: Step::Idle,
        });
        self.next_tree(cluster, out);
    }

    /// Sends one request of the pass, with its timeout.
    fn send_for_pass(
        &mut self,
        cluster: &Cluster,
        peer: NodeId,
        request: PeerRequest,
        out: &mut Vec<Effect>,
    ) -> RequestId {
        let id = self.fresh_id();
        self.pending.insert(id, Pending::AntiEntropy);
        out.push(Effect::Send {
            to: peer,
            payload: Payload::Request { id, request },
        });
        out.push(Effect::Timer {
            after_ms: cluster.node_request_timeout_ms,
            timer: Timer::Request(id),
        });
        id
    }

    /// Starts the exchange of the next tree, or ends the pass.
    fn next_tree(&mut self, cluster: &Cluster, out: &mut Vec<Effect>) {
        let Some(pass) = self.anti_entropy.pass.as_mut() else {
            return;
        };
        let Some(((partition, n), peer)) = pass.todo.pop_front() else {
            self.anti_entropy.pass = None;
            return;
        };
        let limits = ExchangeLimits {
            max_indices_per_request: 1024,
            max_segments: cluster.anti_entropy_max_segments,
        };
        let (exchange, request) = Exchange::start(self.anti_entropy.tree(partition, n), limits);
        let request = PeerRequest::AntiEntropy {
            partition,
            n,
            request,
        };
        let request = self.send_for_pass(cluster, peer, request, out);
        if let Some(pass) = self.anti_entropy.pass.as_mut() {
            pass.step = Step::Exchanging {
                tree: (partition, n),
                peer,
                exchange,
                request,
            };
        }
    }

    /// A request of the pass failed (timeout or an error answer): the
    /// exchange is dropped, or the key skipped.
    pub(super) fn anti_entropy_failed(
        &mut self,
        cluster: &Cluster,
        id: RequestId,
        out: &mut Vec<Effect>,
    ) {
        let Some(pass) = self.anti_entropy.pass.as_mut() else {
            return;
        };
        match &mut pass.step {
            Step::Exchanging { request, .. } if *request == id => self.next_tree(cluster, out),
            Step::Repairing { key, .. } => {
                let current = matches!(key,
                    KeyRepair::ReadingPeer { request, .. } | KeyRepair::StoringOnPeer { request }
                        if *request == id);
                if current {
                    self.next_key(cluster, out);
                }
            }
            _ => {}
        }
    }

    /// The peer answered a request of the pass.
    pub(super) fn anti_entropy_answered(
        &mut self,
        cluster: &Cluster,
        id: RequestId,
        response: Result<PeerResponse, TransportError>,
        out: &mut Vec<Effect>,
    ) {
        let Some(pass) = self.anti_entropy.pass.as_mut() else {
            return;
        };
        match &mut pass.step {
            Step::Exchanging {
                tree,
                peer,
                exchange,
                request,
            } if *request == id => {
                let (tree, peer) = (*tree, *peer);
                let Ok(PeerResponse::AntiEntropy(response)) = response else {
                    return self.next_tree(cluster, out);
                };
                let local = self.anti_entropy.trees.entry(tree).or_default();
                match exchange.on_response(local, response) {
                    Ok(ExchangeStep::Send(next)) => {
                        let next = PeerRequest::AntiEntropy {
                            partition: tree.0,
                            n: tree.1,
                            request: next,
                        };
                        let id = self.send_for_pass(cluster, peer, next, out);
                        if let Some(Pass {
                            step: Step::Exchanging { request, .. },
                            ..
                        }) = self.anti_entropy.pass.as_mut()
                        {
                            *request = id;
                        }
                    }
                    Ok(ExchangeStep::Done(outcome)) => {
                        self.stats.anti_entropy_exchanges += 1;
                        let keys = outcome.differences.into_iter().map(|d| d.key).collect();
                        if let Some(pass) = self.anti_entropy.pass.as_mut() {
                            pass.step = Step::Repairing {
                                tree,
                                peer,
                                keys,
                                key: KeyRepair::Idle,
                            };
                        }
                        self.next_key(cluster, out);
                    }
                    Err(_) => self.next_tree(cluster, out),
                }
            }
            Step::Repairing {
                tree,
                key:
                    KeyRepair::ReadingPeer {
                        raw_key,
                        local,
                        request,
                    },
                ..
            } if *request == id => {
                let peer_copy = match response {
                    Ok(PeerResponse::ReplicaGetDone { object }) => {
                        match object.map(|bytes| Object::decode(&bytes)).transpose() {
                            Ok(copy) => copy,
                            Err(_) => return self.next_key(cluster, out),
                        }
                    }
                    _ => return self.next_key(cluster, out),
                };
                let mode = cluster.props.conflict;
                let merged = match (local.take(), &peer_copy) {
                    (None, None) => return self.next_key(cluster, out),
                    (Some(local), None) => local,
                    (None, Some(remote)) => remote.clone(),
                    (Some(local), Some(remote)) => local.merge(remote, mode),
                };
                let (partition, raw_key) = (tree.0, std::mem::take(raw_key));
                let Some((bucket, key)) = split_object_key(&raw_key) else {
                    return self.next_key(cluster, out);
                };
                let job = CommitJob::Merge {
                    target: Target {
                        partition,
                        bucket,
                        key,
                    },
                    incoming: merged.clone(),
                    conflict: mode,
                    durability: cluster.durability,
                    ack: None,
                    anti_entropy: true,
                };
                if let Some(Pass {
                    step: Step::Repairing { key, .. },
                    ..
                }) = self.anti_entropy.pass.as_mut()
                {
                    *key = KeyRepair::StoringLocally {
                        raw_key,
                        merged,
                        peer_copy,
                    };
                }
                self.enqueue(job, out);
            }
            Step::Repairing {
                key: KeyRepair::StoringOnPeer { request },
                ..
            } if *request == id => {
                if matches!(response, Ok(PeerResponse::ReplicaPutDone)) {
                    self.stats.anti_entropy_keys_repaired += 1;
                }
                self.next_key(cluster, out);
            }
            // An answer to an abandoned step.
            _ => {}
        }
    }

    /// The local merge of the key being repaired is durable (or failed):
    /// sends the merge to the peer if it is news there.
    pub(super) fn anti_entropy_stored(
        &mut self,
        cluster: &Cluster,
        ok: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(Pass {
            step: Step::Repairing { peer, key, .. },
            ..
        }) = self.anti_entropy.pass.as_mut()
        else {
            return;
        };
        let KeyRepair::StoringLocally {
            raw_key,
            merged,
            peer_copy,
        } = std::mem::replace(key, KeyRepair::Idle)
        else {
            return;
        };
        if !ok {
            return self.next_key(cluster, out);
        }
        if peer_copy.as_ref() == Some(&merged) {
            self.stats.anti_entropy_keys_repaired += 1;
            return self.next_key(cluster, out);
        }
        let peer = *peer;
        let Some((bucket, key)) = split_object_key(&raw_key) else {
            return self.next_key(cluster, out);
        };
        let request = PeerRequest::ReplicaPut {
            bucket,
            key,
            object: merged.encode(),
            conflict: cluster.props.conflict,
            durability: cluster.durability,
        };
        let id = self.send_for_pass(cluster, peer, request, out);
        if let Some(Pass {
            step: Step::Repairing { key, .. },
            ..
        }) = self.anti_entropy.pass.as_mut()
        {
            *key = KeyRepair::StoringOnPeer { request: id };
        }
    }

    /// Starts repairing the next differing key of the exchange, or moves
    /// on to the next tree.
    fn next_key(&mut self, cluster: &Cluster, out: &mut Vec<Effect>) {
        loop {
            let Some(Pass {
                step: Step::Repairing {
                    tree, peer, keys, ..
                },
                ..
            }) = self.anti_entropy.pass.as_mut()
            else {
                return;
            };
            let (partition, peer) = (tree.0, *peer);
            let Some(raw_key) = keys.pop_front() else {
                return self.next_tree(cluster, out);
            };
            let Some((bucket, key)) = split_object_key(&raw_key) else {
                continue;
            };
            let Ok(local) = read_object(&self.storage, partition, &bucket, &key) else {
                continue;
            };
            let request = PeerRequest::ReplicaGet { bucket, key };
            let id = self.send_for_pass(cluster, peer, request, out);
            if let Some(Pass {
                step: Step::Repairing { key, .. },
                ..
            }) = self.anti_entropy.pass.as_mut()
            {
                *key = KeyRepair::ReadingPeer {
                    raw_key,
                    local,
                    request: id,
                };
            }
            return;
        }
    }
}
