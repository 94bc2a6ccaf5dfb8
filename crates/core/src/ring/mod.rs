//! The ring (DESIGN §4): the partitioner (key → hash → partition), the
//! layout (members and partition → owner, versioned) and preference lists.
//! Liveness, gossip and handoff are not here.
//!
//! # Guarantees of the assignment
//! With Q partitions, M members and w = min(target_n, M):
//! - **Balance**: every member owns ⌊Q/M⌋ or ⌈Q/M⌉ partitions.
//! - **Distinctness**: every w circularly consecutive partitions (across
//!   the wrap from Q−1 to 0 too) have w different owners *whenever that is
//!   possible*, which is exactly when ⌈Q/M⌉·w ≤ Q: a member owning ⌈Q/M⌉
//!   partitions needs a gap of at least w after each. It is possible when M
//!   divides Q and in almost every case with M > target_n; it is not when
//!   M ≤ target_n and M ∤ Q (3 nodes, target 3, Q = 64), nor in tiny rings
//!   with Q < target_n² (Q = 8, target 5, M = 6 or 7).
//! - When it is impossible and M ≤ target_n, each of the r = Q mod M
//!   members owning an extra partition repeats exactly once, r partitions
//!   after itself, the repeats spread round the ring: the total shortfall
//!   is r·(M−r), the least possible, so at most r·(M−r) windows repeat an
//!   owner. (Placement is unaffected: with M ≤ n every member is a primary
//!   of every partition.) The repeats are spread rather than bunched at the
//!   wrap so that the next joiner can take them all over: bunched, it could
//!   not, and growing from M = target_n would reshuffle the ring. When it
//!   is impossible and M > target_n, best effort.
//! - **Movement**: when a member joins a layout of M ≥ target_n members,
//!   exactly ⌊Q/(M+1)⌋ partitions change owner, all to the joiner (checked
//!   for every power-of-two Q ≤ 4096, M ≤ 24, target_n ≤ 5 by the tests).
//!   When that greedy cannot keep the guarantees (always when M < target_n,
//!   as the window grows), the layout is assigned afresh and relabelled to
//!   keep as many partitions with their owners as it can.
//!
//! - **Leaving** ([`Layout::with_member_leaving`]): the leaver keeps its
//!   place in the member list, marked leaving, but owns nothing and is in no
//!   preference list; M above then counts valid members only, and balance
//!   and distinctness hold for them. Its partitions go to members that keep
//!   every window distinct (a b-matching) when that is possible with counts
//!   balanced, and nothing else moves; otherwise the layout is assigned
//!   afresh and relabelled. Over every ring size, target_n ≤ 5 and M ≤ 8,
//!   1,099 of 1,805 leaves moved only the leaver's partitions; undoing the
//!   last join always does when M − 1 ≥ target_n and distinctness is possible.
//!
//! Preference lists always have distinct primaries: the walk skips owners
//! already taken.

mod assignment;
mod error;
mod hash;
mod layout;
mod member;
mod preference_list;
#[cfg(test)]
mod tests;

pub use error::LayoutError;
pub use hash::{key_hash, partition_of};
pub use layout::{DEFAULT_PARTITIONS, DEFAULT_TARGET_N, Layout, LeaveError, MAX_PARTITIONS};
pub use member::{Member, MemberState};
pub use preference_list::{PreferenceList, previous_holders};
