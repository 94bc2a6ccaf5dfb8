//! Partition → owner assignment on member *indices* (positions in the
//! id-sorted member list): fresh assignments, and joins that move only the
//! partitions the new member takes. Ids, versions and validation belong to
//! [`super::Layout`]; the guarantees are stated in [`super`].

use std::cmp::Reverse;

/// How many start points a minimal-movement join tries before it falls back.
const JOIN_START_ATTEMPTS: usize = 4;
/// Search steps per start point, as a multiple of the partition count.
const JOIN_STEPS_PER_PARTITION: usize = 4;

/// The window whose owners should be distinct: min(target_n, members).
pub(crate) fn window(members: usize, target_n: usize) -> usize {
    target_n.min(members)
}

/// Whether every circular window of `window(members, target_n)` partitions
/// can have distinct owners while counts stay balanced: a member owning
/// ⌈Q/M⌉ partitions needs a gap of at least w after each of them.
pub(crate) fn distinct_feasible(partitions: usize, members: usize, target_n: usize) -> bool {
    partitions.div_ceil(members) * window(members, target_n) <= partitions
}

/// The least possible [`shortfall`] of a balanced assignment: each of the
/// Q mod M members owning ⌈Q/M⌉ partitions falls short by ⌈Q/M⌉·w − Q in
/// total, the others need not fall short at all.
pub(crate) fn minimal_shortfall(partitions: usize, members: usize, target_n: usize) -> usize {
    let w = window(members, target_n);
    (partitions % members) * (partitions.div_ceil(members) * w).saturating_sub(partitions)
}

/// Σ over members, over the circular gaps between consecutive partitions
/// each owns, of max(0, w − gap). Zero exactly when every circular window of
/// `w` partitions has distinct owners; otherwise an upper bound on the number
/// of windows that repeat an owner.
pub(crate) fn shortfall(owners: &[usize], members: usize, w: usize) -> usize {
    let partitions = owners.len();
    let mut first = vec![usize::MAX; members];
    let mut last = vec![usize::MAX; members];
    let mut total = 0;
    for (partition, &owner) in owners.iter().enumerate() {
        if last[owner] == usize::MAX {
            first[owner] = partition;
        } else {
            total += w.saturating_sub(partition - last[owner]);
        }
        last[owner] = partition;
    }
    for member in 0..members {
        if first[member] != last[member] {
            total += w.saturating_sub(first[member] + partitions - last[member]);
        }
    }
    total
}

/// Every member owns ⌊Q/M⌋ or ⌈Q/M⌉ partitions.
pub(crate) fn is_balanced(owners: &[usize], members: usize) -> bool {
    let counts = counts(owners, members);
    let most = counts.iter().copied().max().unwrap_or(0);
    let least = counts.iter().copied().min().unwrap_or(0);
    most - least <= 1
}

fn counts(owners: &[usize], members: usize) -> Vec<usize> {
    let mut counts = vec![0; members];
    for &owner in owners {
        counts[owner] += 1;
    }
    counts
}

/// Balanced, and distinct in every circular window whenever that is possible.
fn acceptable(owners: &[usize], members: usize, target_n: usize) -> bool {
    is_balanced(owners, members)
        && (!distinct_feasible(owners.len(), members, target_n)
            || shortfall(owners, members, window(members, target_n)) == 0)
}

/// A fresh assignment of `partitions` to `members` (indices), ignoring any
/// previous one.
pub(crate) fn fresh(partitions: usize, members: usize, target_n: usize) -> Vec<usize> {
    assert!(
        (1..=partitions).contains(&members),
        "{members} members cannot share {partitions} partitions"
    );
    let w = window(members, target_n);
    if w == members {
        rounds(partitions, members)
    } else {
        greedy(partitions, members, w)
    }
}

/// For w == M: rounds of all members in one order; the r = Q mod M members
/// with an extra partition repeat once each, in different rounds, rotating
/// among themselves so that the circle closes. Each repeat is the only short
/// gap of its member (length r), which a later joiner can take over.
fn rounds(partitions: usize, members: usize) -> Vec<usize> {
    let (full, extra) = (partitions / members, partitions % members);
    let mut extras: Vec<usize> = (0..extra).collect();
    let mut owners = Vec::with_capacity(partitions);
    for round in 0..full {
        let repeats = (round + 1) * extra / full - round * extra / full;
        owners.extend_from_slice(&extras);
        owners.extend_from_slice(&extras[..repeats]);
        owners.extend(extra..members);
        extras.rotate_left(repeats);
    }
    assert_eq!(owners.len(), partitions, "rounds cover every partition");
    owners
}

/// For w < M: fill positions in order with the member of largest remaining
/// quota that neither appeared in the previous w−1 positions nor (near the
/// end) in the first ones it would wrap onto; if none qualifies, the member
/// that falls shortest of that. Quotas are ⌈Q/M⌉ for the first Q mod M
/// members, ⌊Q/M⌋ for the rest, so the result is always balanced.
fn greedy(partitions: usize, members: usize, w: usize) -> Vec<usize> {
    let mut quota: Vec<usize> = (0..members)
        .map(|i| partitions / members + usize::from(i < partitions % members))
        .collect();
    let mut first: Vec<Option<usize>> = vec![None; members];
    let mut last: Vec<Option<usize>> = vec![None; members];
    let mut owners = Vec::with_capacity(partitions);
    for position in 0..partitions {
        let mut best: Option<(usize, Reverse<usize>, usize)> = None;
        for member in 0..members {
            if quota[member] == 0 {
                continue;
            }
            let mut penalty = 0;
            if let Some(last) = last[member] {
                penalty += w.saturating_sub(position - last);
            }
            if let Some(first) = first[member] {
                penalty += w.saturating_sub(first + partitions - position);
            }
            let key = (penalty, Reverse(quota[member]), member);
            if best.is_none_or(|best| key < best) {
                best = Some(key);
            }
        }
        let (_, _, member) = best.expect("quotas add up to the partition count");
        quota[member] -= 1;
        last[member] = Some(position);
        first[member].get_or_insert(position);
        owners.push(member);
    }
    owners
}

/// The assignment after a new member (index `members`) joins `owners`
/// (indices below `members`). Moves only partitions to the new member when
/// it can keep the guarantees that way; otherwise a fresh assignment,
/// relabelled to keep as many partitions with their owners as it can.
pub(crate) fn join(owners: &[usize], members: usize, target_n: usize) -> Vec<usize> {
    let partitions = owners.len();
    assert!(
        members < partitions,
        "{} members cannot share {partitions} partitions",
        members + 1
    );
    if window(members + 1, target_n) == window(members, target_n)
        && let Some(next) = join_moving_least(owners, members, target_n)
    {
        return next;
    }
    relabel(owners, &fresh(partitions, members + 1, target_n), members)
}

/// The assignment after member `leaver` (an index below `members`) leaves
/// `owners`: indices of the `members − 1` others, renumbered without it.
/// Only the leaver's partitions move, each to the least loaded member that
/// keeps its window distinct, when that keeps the guarantees; otherwise a
/// fresh assignment, relabelled to keep as many partitions with their
/// owners as it can.
pub(crate) fn leave(
    owners: &[usize],
    members: usize,
    leaver: usize,
    target_n: usize,
) -> Vec<usize> {
    assert!(
        leaver < members && members >= 2,
        "{leaver} of {members} cannot leave"
    );
    let partitions = owners.len();
    let remaining = members - 1;
    // The leaver is renumbered last, as `remaining`.
    let renumbered: Vec<usize> = owners
        .iter()
        .map(|&owner| match owner.cmp(&leaver) {
            std::cmp::Ordering::Less => owner,
            std::cmp::Ordering::Equal => remaining,
            std::cmp::Ordering::Greater => owner - 1,
        })
        .collect();
    let w = window(remaining, target_n);
    let most = partitions.div_ceil(remaining);
    let mut next = renumbered.clone();
    let count = counts(&next, members);
    // The leaver's partitions are at least w apart when its old windows were
    // distinct, so giving one of them a member that no other partition within
    // w − 1 of it has never spoils another: a matching of partitions to
    // members with room (b-matching by augmenting paths).
    let orphans: Vec<usize> = (0..partitions).filter(|&p| next[p] == remaining).collect();
    let fits = |partition: usize, member: usize| {
        (1..w).all(|d| {
            renumbered[(partition + d) % partitions] != member
                && renumbered[(partition + partitions - d) % partitions] != member
        })
    };
    let mut by_load: Vec<usize> = (0..remaining).collect();
    by_load.sort_by_key(|&member| (count[member], member));
    let candidates: Vec<Vec<usize>> = orphans
        .iter()
        .map(|&p| by_load.iter().copied().filter(|&m| fits(p, m)).collect())
        .collect();
    // First up to ⌊Q/M⌋ each, then the rest up to ⌈Q/M⌉: balanced when all fit.
    let mut taken_by: Vec<Vec<usize>> = vec![Vec::new(); remaining];
    let mut unmatched: Vec<usize> = (0..orphans.len()).collect();
    for limit in [partitions / remaining, most] {
        let room: Vec<usize> = (0..remaining)
            .map(|m| limit.saturating_sub(count[m]))
            .collect();
        unmatched.retain(|&orphan| {
            let mut seen = vec![false; remaining];
            !augment(orphan, &candidates, &room, &mut taken_by, &mut seen)
        });
    }
    let moved_all = unmatched.is_empty();
    for (member, taken) in taken_by.iter().enumerate() {
        for &orphan in taken {
            next[orphans[orphan]] = member;
        }
    }
    // Where distinctness is impossible and w = M, the guarantee is the least
    // shortfall, which the fresh rounds give.
    let least = || {
        w < remaining
            || distinct_feasible(partitions, remaining, target_n)
            || shortfall(&next, remaining, w) == minimal_shortfall(partitions, remaining, target_n)
    };
    if moved_all && acceptable(&next, remaining, target_n) && least() {
        return next;
    }
    relabel(
        &renumbered,
        &fresh(partitions, remaining, target_n),
        remaining - 1,
    )
}

/// Kuhn's augmenting path for a b-matching: finds `orphan` a member among
/// its `candidates` with `room`, moving earlier orphans along if needed.
fn augment(
    orphan: usize,
    candidates: &[Vec<usize>],
    room: &[usize],
    taken_by: &mut [Vec<usize>],
    seen: &mut [bool],
) -> bool {
    for &member in &candidates[orphan] {
        if seen[member] {
            continue;
        }
        seen[member] = true;
        if taken_by[member].len() < room[member] {
            taken_by[member].push(orphan);
            return true;
        }
        for slot in 0..taken_by[member].len() {
            let other = taken_by[member][slot];
            if augment(other, candidates, room, taken_by, seen) {
                taken_by[member][slot] = orphan;
                return true;
            }
        }
    }
    false
}

fn join_moving_least(owners: &[usize], members: usize, target_n: usize) -> Option<Vec<usize>> {
    let partitions = owners.len();
    let w = window(members + 1, target_n);
    // Where the old layout repeats an owner within w, the joiner must take
    // the later partition of the pair; without that no join can be distinct.
    let repairs = if distinct_feasible(partitions, members + 1, target_n) {
        repair_points(owners, w)
    } else {
        Vec::new()
    };
    let before = shortfall(owners, members, w);
    let starts = repairs
        .iter()
        .copied()
        .chain((0..partitions).filter(|p| repairs.binary_search(p).is_err()))
        .take(JOIN_START_ATTEMPTS);
    for start in starts {
        if let Some(next) = Sweep::new(owners, members, w, start, &repairs).and_then(Sweep::run)
            && acceptable(&next, members + 1, target_n)
            && shortfall(&next, members + 1, w) <= before
        {
            return Some(next);
        }
    }
    None
}

/// The later partition of every pair of circularly consecutive partitions
/// with the same owner less than `w` apart, sorted.
fn repair_points(owners: &[usize], w: usize) -> Vec<usize> {
    let partitions = owners.len();
    let members = owners.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_member: Vec<Vec<usize>> = vec![Vec::new(); members];
    for (partition, &owner) in owners.iter().enumerate() {
        by_member[owner].push(partition);
    }
    let mut points = Vec::new();
    for owned in by_member.iter().filter(|owned| owned.len() >= 2) {
        for (i, &from) in owned.iter().enumerate() {
            let to = owned[(i + 1) % owned.len()];
            if (to + partitions - from) % partitions < w {
                points.push(to);
            }
        }
    }
    points.sort_unstable();
    points.dedup();
    points
}

/// Picks the t = ⌊Q/(M+1)⌋ partitions a joiner takes, walking the ring from
/// `start`: each pick lies at least w after the previous one (and w before
/// the first, round the circle), near an even spacing, from the donor that
/// currently owns the most, such that every donor ends with t or t+1. A
/// bounded depth-first search revisits earlier picks when the walk gets
/// stuck. Positions `k` are relative to `start`.
struct Sweep {
    partitions: usize,
    w: usize,
    t: usize,
    start: usize,
    joiner: usize,
    old: Vec<usize>,
    own: Vec<usize>,
    counts: Vec<usize>,
    high: Vec<usize>,
    low: Vec<usize>,
    given: Vec<usize>,
    positions: Vec<Vec<usize>>,
    repairs: Vec<usize>,
    taken: Vec<usize>,
}

impl Sweep {
    fn new(
        owners: &[usize],
        members: usize,
        w: usize,
        start: usize,
        repairs: &[usize],
    ) -> Option<Sweep> {
        let partitions = owners.len();
        let t = partitions / (members + 1);
        let counts = counts(owners, members);
        if t == 0 || counts.iter().any(|&count| count < t) {
            return None;
        }
        let own: Vec<usize> = (0..partitions)
            .map(|k| owners[(start + k) % partitions])
            .collect();
        let mut positions = vec![Vec::new(); members];
        for (k, &owner) in own.iter().enumerate() {
            positions[owner].push(k);
        }
        let mut repairs: Vec<usize> = repairs
            .iter()
            .map(|&p| (p + partitions - start) % partitions)
            .collect();
        repairs.sort_unstable();
        if repairs.len() > t {
            return None;
        }
        Some(Sweep {
            partitions,
            w,
            t,
            start,
            joiner: members,
            old: owners.to_vec(),
            own,
            high: counts.iter().map(|&count| count - t).collect(),
            low: counts
                .iter()
                .map(|&count| count.saturating_sub(t + 1))
                .collect(),
            counts,
            given: vec![0; members],
            positions,
            repairs,
            taken: Vec::new(),
        })
    }

    /// Whether, after picking `k` with `after` picks still to make (of which
    /// the repairs from index `repair` on), the rest still fit with spacing w.
    fn room_after(&self, k: usize, after: usize, repair: usize) -> bool {
        let first = self.taken.first().copied().unwrap_or(k);
        let fixed = self.repairs.len() - repair;
        if after < fixed {
            return false;
        }
        let mut room = 0;
        let mut previous = k;
        for &next in &self.repairs[repair..] {
            if next < previous + self.w {
                return false;
            }
            room += (next - previous) / self.w - 1;
            previous = next;
        }
        let closing = first + self.partitions - previous;
        if closing < self.w {
            return false;
        }
        room += closing / self.w - 1;
        room >= after - fixed
    }

    /// Whether the owner of `k` may give it up and every donor can still end
    /// with t or t+1 partitions.
    fn donor_allows(&self, k: usize, after: usize) -> bool {
        let donor = self.own[k];
        if self.given[donor] >= self.high[donor] {
            return false;
        }
        let mut owed_total = 0;
        for (member, positions) in self.positions.iter().enumerate() {
            let owed =
                self.low[member].saturating_sub(self.given[member] + usize::from(member == donor));
            if owed > 0 {
                let left = positions.len() - positions.partition_point(|&p| p <= k);
                if owed > left {
                    return false;
                }
                owed_total += owed;
            }
        }
        owed_total <= after
    }

    fn candidates(&self, repair: usize) -> Vec<(usize, bool)> {
        let after = self.t - self.taken.len() - 1;
        let next_repair = self.repairs.get(repair).copied().unwrap_or(self.partitions);
        let (earliest, low, high) = match self.taken.last() {
            Some(&previous) => {
                // Aim at an even split of the arc left to the first pick,
                // give or take max(1, (spacing − w) / 2); all in units of 1/(2d).
                let arc = to_i64(self.taken[0] + self.partitions - previous);
                let d = to_i64(self.t - self.taken.len() + 1);
                let slack = (2 * d).max(arc - to_i64(self.w) * d);
                let earliest = previous + self.w;
                let low = to_i64(previous)
                    + (2 * arc - slack).div_euclid(2 * d)
                    + i64::from((2 * arc - slack).rem_euclid(2 * d) != 0);
                let high = to_i64(previous) + (2 * arc + slack).div_euclid(2 * d);
                let low = usize::try_from(low).unwrap_or(0).max(earliest);
                (earliest, low, usize::try_from(high).unwrap_or(0))
            }
            None => (0, 0, next_repair.saturating_sub(1).min(self.joiner)),
        };
        let usable = |k: usize, repair: usize| {
            self.donor_allows(k, after) && self.room_after(k, after, repair)
        };
        let bound = next_repair.min(self.partitions);
        let window_end = if bound == 0 {
            low
        } else {
            (high.min(bound - 1) + 1).max(low)
        };
        let mut in_window: Vec<(Reverse<usize>, usize)> = (low..window_end)
            .filter(|&k| usable(k, repair))
            .map(|k| {
                (
                    Reverse(self.counts[self.own[k]] - self.given[self.own[k]]),
                    k,
                )
            })
            .collect();
        in_window.sort_unstable();
        let mut out: Vec<(usize, bool)> = in_window.into_iter().map(|(_, k)| (k, false)).collect();
        let repair_pick = (repair < self.repairs.len()
            && next_repair >= earliest
            && self.donor_allows(next_repair, after)
            && self.room_after(next_repair, after, repair + 1))
        .then_some((next_repair, true));
        let others: Vec<(usize, bool)> = (earliest..low.min(bound))
            .chain((high + 1).max(earliest)..bound)
            .filter(|&k| usable(k, repair))
            .take(2)
            .map(|k| (k, false))
            .collect();
        if next_repair <= high.max(low) {
            out.extend(repair_pick);
            out.extend(others);
        } else {
            out.extend(others);
            out.extend(repair_pick);
        }
        out
    }

    fn run(mut self) -> Option<Vec<usize>> {
        let budget = JOIN_STEPS_PER_PARTITION * self.partitions;
        let mut steps = 0;
        // Per pick made: the candidates it was chosen from, its index among
        // them, and how many repairs were made before it.
        let mut stack: Vec<Frame> = Vec::new();
        let mut repair = 0;
        let mut candidates = self.candidates(repair);
        let mut index = 0;
        while self.taken.len() < self.t {
            if let Some(&(k, is_repair)) = candidates.get(index) {
                steps += 1;
                if steps > budget {
                    return None;
                }
                stack.push(Frame {
                    candidates: std::mem::take(&mut candidates),
                    index,
                    repair,
                });
                self.given[self.own[k]] += 1;
                self.taken.push(k);
                if is_repair {
                    repair += 1;
                }
                if self.taken.len() == self.t {
                    break;
                }
                candidates = self.candidates(repair);
                index = 0;
            } else {
                let frame = stack.pop()?;
                let k = self.taken.pop().expect("every stack frame made one pick");
                self.given[self.own[k]] -= 1;
                candidates = frame.candidates;
                index = frame.index + 1;
                repair = frame.repair;
            }
        }
        let balanced = self
            .given
            .iter()
            .zip(self.low.iter().zip(&self.high))
            .all(|(g, (l, h))| l <= g && g <= h);
        if repair != self.repairs.len() || !balanced {
            return None;
        }
        let mut next = self.old;
        for k in self.taken {
            next[(self.start + k) % self.partitions] = self.joiner;
        }
        Some(next)
    }
}

/// A pick of [`Sweep::run`]'s search, to come back to.
struct Frame {
    candidates: Vec<(usize, bool)>,
    index: usize,
    repair: usize,
}

fn to_i64(value: usize) -> i64 {
    i64::try_from(value).expect("partition counts are at most 4096")
}

/// Maps the slots of a fresh assignment to members `0..=members` (in a
/// join, the old indices and the new one, `members`; in a leave, the
/// members that stay) so that as many partitions as possible keep their owner:
/// greedily by largest overlap. Balance and distinctness do not depend on
/// labels, so they carry over.
fn relabel(old: &[usize], slots: &[usize], members: usize) -> Vec<usize> {
    let mut pairs: Vec<(usize, usize)> = slots.iter().copied().zip(old.iter().copied()).collect();
    pairs.sort_unstable();
    let mut overlaps: Vec<(Reverse<usize>, usize, usize)> = pairs
        .chunk_by(|a, b| a == b)
        .map(|run| (Reverse(run.len()), run[0].0, run[0].1))
        .collect();
    overlaps.sort_unstable();
    let mut slot_member: Vec<Option<usize>> = vec![None; members + 1];
    let mut used = vec![false; members + 1];
    for (_, slot, member) in overlaps {
        // In a leave, the leaver (numbered past `members`) gets no slot.
        if member <= members && slot_member[slot].is_none() && !used[member] {
            slot_member[slot] = Some(member);
            used[member] = true;
        }
    }
    let mut unused = (0..=members).filter(|&member| !used[member]);
    let slot_member: Vec<usize> = slot_member
        .into_iter()
        .map(|member| member.unwrap_or_else(|| unused.next().expect("as many members as slots")))
        .collect();
    slots.iter().map(|&slot| slot_member[slot]).collect()
}
