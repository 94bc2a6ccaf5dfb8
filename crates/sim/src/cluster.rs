//! `Cluster`: what every simulated node shares and never changes during a
//! run: the layout (built with the real `core::ring`), the bucket's
//! properties, the node ids by index, the request timeout and the planted
//! bug, if any.

use ringkv_core::NodeId;
use ringkv_core::bucket::{BucketProps, DurabilityMode};
use ringkv_core::membership::DetectorConfig;
use ringkv_core::ring::{DEFAULT_PARTITIONS, Layout, Member, MemberState, key_hash, partition_of};

use crate::config::{PlantedBug, SimConfig};
use crate::rng::SimRng;

pub struct Cluster {
    pub layout: Layout,
    pub props: BucketProps,
    /// The bucket's durability, else the nodes' `--durability`.
    pub durability: DurabilityMode,
    /// Node id by node index.
    pub ids: Vec<NodeId>,
    pub bug: Option<PlantedBug>,
    pub detector: DetectorConfig,
    pub heartbeat_interval_ms: u64,
    pub hint_delivery_interval_ms: u64,
    pub hint_delivery_per_second: usize,
    pub hints_max: u64,
    /// Timeout of the node's own requests (hint delivery, anti-entropy).
    pub node_request_timeout_ms: u64,
    /// `--aae-max-segments`.
    pub anti_entropy_max_segments: usize,
}

impl Cluster {
    /// Draws `config.nodes` distinct non-zero ids and builds a layout of
    /// `DEFAULT_PARTITIONS` partitions holding all of them.
    pub fn new(rng: &mut SimRng, config: &SimConfig) -> Cluster {
        let (nodes, props) = (config.nodes, config.bucket);
        assert!((1..=16).contains(&nodes), "1 to 16 nodes, not {nodes}");
        let mut ids: Vec<NodeId> = Vec::with_capacity(nodes);
        while ids.len() < nodes {
            let id = rng.next_u64();
            if id != 0 && !ids.contains(&id) {
                ids.push(id);
            }
        }
        let member = |index: usize| Member {
            id: ids[index],
            name: format!("n{index}"),
            peer_addr: format!("127.0.0.1:{}", 7000 + index),
            http_addr: format!("127.0.0.1:{}", 8000 + index),
            resp_addr: format!("127.0.0.1:{}", 6300 + index),
            state: MemberState::Valid,
        };
        let mut layout = Layout::new(DEFAULT_PARTITIONS, props.n, member(0))
            .expect("a layout of default partitions and one member is valid");
        for index in 1..nodes {
            layout = layout
                .with_member(member(index))
                .expect("a member with a fresh id joins the layout");
        }
        Cluster {
            layout,
            props,
            durability: props.durability.unwrap_or(config.node_durability),
            ids,
            bug: config.bug,
            detector: DetectorConfig::default(),
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            hint_delivery_interval_ms: config.hint_delivery_interval_ms,
            hint_delivery_per_second: config.hint_delivery_per_second,
            hints_max: config.hints_max,
            node_request_timeout_ms: config.node_request_timeout_ms,
            anti_entropy_max_segments: config.anti_entropy_max_segments,
        }
    }

    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }

    /// The bucket's `n`, capped at the member count (as the node does).
    pub fn n(&self) -> usize {
        (self.props.n as usize).min(self.ids.len()).max(1)
    }

    pub fn partition(&self, bucket: &str, key: &[u8]) -> u32 {
        partition_of(key_hash(bucket.as_bytes(), key), self.layout.partitions())
    }

    /// The key's N primaries, in preference-list order.
    pub fn primaries(&self, bucket: &str, key: &[u8]) -> Vec<NodeId> {
        let partition = self.partition(bucket, key);
        self.layout.preference_list(partition, self.n()).primaries
    }
}
