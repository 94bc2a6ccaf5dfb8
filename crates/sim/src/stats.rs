//! `SimStats`: counters of what happened in a run (faults injected, hints
//! handed off, repairs made), so that a scenario test can show that it
//! exercised what it claims to test. Not part of any check.

use std::ops::AddAssign;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub crashes: u64,
    pub pauses: u64,
    /// Faults that cut links (partitions, isolations, blocks).
    pub partitions: u64,
    /// Messages lost because their link was cut (partitions).
    pub messages_cut: u64,
    /// Hints a target durably acknowledged.
    pub hints_delivered: u64,
    /// Hint records deleted once every target acknowledged them.
    pub hint_records_deleted: u64,
    /// Writes coordinated by a fallback or a node outside the plan.
    pub fallback_writes: u64,
    /// Of those, writes of a key whose hint record the same node had
    /// deleted before (the case that reissued dots before a56b069).
    pub fallback_writes_after_hint_deletion: u64,
    /// Merged objects sent to (or stored on) stale primaries by reads.
    pub read_repairs: u64,
    /// Anti-entropy exchanges run to the end.
    pub anti_entropy_exchanges: u64,
    /// Keys anti-entropy merged and stored (as the node's `keys_repaired`).
    pub anti_entropy_keys_repaired: u64,
}

impl AddAssign for SimStats {
    fn add_assign(&mut self, other: SimStats) {
        self.crashes += other.crashes;
        self.pauses += other.pauses;
        self.partitions += other.partitions;
        self.messages_cut += other.messages_cut;
        self.hints_delivered += other.hints_delivered;
        self.hint_records_deleted += other.hint_records_deleted;
        self.fallback_writes += other.fallback_writes;
        self.fallback_writes_after_hint_deletion += other.fallback_writes_after_hint_deletion;
        self.read_repairs += other.read_repairs;
        self.anti_entropy_exchanges += other.anti_entropy_exchanges;
        self.anti_entropy_keys_repaired += other.anti_entropy_keys_repaired;
    }
}
