//! Client programs: what each simulated client does, one step after the
//! other (a client waits for each answer before its next step), and a
//! seeded generator of random programs.

use crate::rng::SimRng;

/// Which causal context a write carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextFrom {
    /// None: a blind write.
    Blind,
    /// The context of this client's last successful read of the key
    /// (blind if it has none): the read-modify-write of DESIGN §3.
    LastRead,
    /// The context returned by this client's last acknowledged write of the
    /// key (blind if none): `written_context`, the write's own context plus
    /// its new dot, so a write carrying it supersedes that write and what
    /// it superseded, never a concurrent sibling the client did not see.
    LastWrite,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Writes a fresh unique value.
    Put {
        key: String,
        node: usize,
        context: ContextFrom,
    },
    /// Writes a tombstone.
    Delete {
        key: String,
        node: usize,
        context: ContextFrom,
    },
    Get {
        key: String,
        node: usize,
        /// `None`: the bucket's R.
        r: Option<u32>,
    },
    /// Waits before the next step.
    Pause { ms: u64 },
}

/// The shape of a random workload.
#[derive(Clone, Debug)]
pub struct WorkloadShape {
    pub clients: usize,
    pub ops_per_client: usize,
    /// Keys `k0`, `k1`, ...: few keys, much contention.
    pub keys: usize,
    /// Nodes clients may talk to.
    pub nodes: Vec<usize>,
    /// Longest pause between two operations of a client.
    pub max_pause_ms: u64,
    /// Relative weights of: get, put with the last read's context, blind
    /// put, delete with the last read's context, put with the last write's
    /// context.
    pub mix: [u64; 5],
}

impl WorkloadShape {
    pub fn new(clients: usize, ops_per_client: usize, keys: usize, nodes: Vec<usize>) -> Self {
        WorkloadShape {
            clients,
            ops_per_client,
            keys,
            nodes,
            max_pause_ms: 30,
            mix: [40, 35, 15, 10, 0],
        }
    }

    /// One program per client.
    pub fn generate(&self, rng: &mut SimRng) -> Vec<Vec<Step>> {
        assert!(
            !self.nodes.is_empty() && self.keys > 0,
            "empty workload shape"
        );
        let total: u64 = self.mix.iter().sum();
        assert!(total > 0, "operation mix has no weight");
        (0..self.clients)
            .map(|_| {
                let mut steps = Vec::with_capacity(self.ops_per_client * 2);
                for _ in 0..self.ops_per_client {
                    let key = format!("k{}", rng.index(self.keys));
                    let node = self.nodes[rng.index(self.nodes.len())];
                    let mut pick = rng.below(total);
                    let mut kind = 0;
                    while pick >= self.mix[kind] {
                        pick -= self.mix[kind];
                        kind += 1;
                    }
                    steps.push(match kind {
                        0 => Step::Get { key, node, r: None },
                        1 => Step::Put {
                            key,
                            node,
                            context: ContextFrom::LastRead,
                        },
                        2 => Step::Put {
                            key,
                            node,
                            context: ContextFrom::Blind,
                        },
                        3 => Step::Delete {
                            key,
                            node,
                            context: ContextFrom::LastRead,
                        },
                        _ => Step::Put {
                            key,
                            node,
                            context: ContextFrom::LastWrite,
                        },
                    });
                    if self.max_pause_ms > 0 {
                        steps.push(Step::Pause {
                            ms: rng.between(0, self.max_pause_ms),
                        });
                    }
                }
                steps
            })
            .collect()
    }
}
