//! When operations start and whether they count. `Schedule` is the open-loop
//! timetable of one load slot (each operation has an intended start time on a
//! fixed grid, so a slow reply delays the next start but not the clock its
//! latency is measured from: no coordinated omission). `Phase` says whether an
//! operation falls in the warm-up, in the measured window, or after the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The i-th operation of slot `slot` (of `slots`) at total rate `rate_ops_s`
/// is intended to start at `start + (i * slots + slot) / rate_ops_s`: the
/// slots interleave, so together they start one operation every 1/rate.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    slot: u64,
    slots: u64,
    rate_ops_s: f64,
}

impl Schedule {
    pub fn new(start: Instant, rate_ops_s: f64, slots: usize, slot: usize) -> Schedule {
        assert!(
            rate_ops_s > 0.0 && rate_ops_s.is_finite(),
            "rate must be positive"
        );
        assert!(slot < slots, "slot {slot} of {slots}");
        Schedule {
            start,
            slot: slot as u64,
            slots: slots as u64,
            rate_ops_s,
        }
    }

    pub fn intended(&self, index: u64) -> Instant {
        let global = index as f64 * self.slots as f64 + self.slot as f64;
        self.start + Duration::from_secs_f64(global / self.rate_ops_s)
    }

    /// How many of this slot's starts from `index` on fall before `end`.
    pub fn due_before(&self, index: u64, end: Instant) -> u64 {
        // Closed form first, then correct for float rounding at the edge.
        let span = end.saturating_duration_since(self.start).as_secs_f64() * self.rate_ops_s;
        let last_global = span.ceil() as u64; // first global index at or after `end`, give or take one
        let mut count = last_global.saturating_sub(self.slot).div_ceil(self.slots);
        while count > 0 && self.intended(count - 1) >= end {
            count -= 1;
        }
        while self.intended(count) < end {
            count += 1;
        }
        count.saturating_sub(index)
    }
}

/// What an operation about to start is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Before the measured window: run it, do not record it.
    Warmup,
    /// Record it.
    Measure,
    /// The run is over (deadline passed or the operation budget is spent).
    Stop,
}

/// The measured window, shared by every connection of a run.
#[derive(Debug)]
pub struct Phase {
    pub measure_start: Instant,
    pub deadline: Instant,
    ops_limit: u64,
    tickets: AtomicU64,
}

impl Phase {
    pub fn new(measure_start: Instant, deadline: Instant, ops_limit: Option<u64>) -> Phase {
        Phase {
            measure_start,
            deadline,
            ops_limit: ops_limit.unwrap_or(u64::MAX),
            tickets: AtomicU64::new(0),
        }
    }

    /// Decides for an operation intended to start at `intended`, now being `now`.
    /// An operation is recorded when its intended start is inside the window;
    /// with an operation budget exactly that many are recorded.
    pub fn admit(&self, intended: Instant, now: Instant) -> Admit {
        if intended >= self.deadline || now >= self.deadline {
            return Admit::Stop;
        }
        if intended < self.measure_start {
            return Admit::Warmup;
        }
        if self.tickets.fetch_add(1, Ordering::Relaxed) >= self.ops_limit {
            return Admit::Stop;
        }
        Admit::Measure
    }

    pub fn budget_spent(&self) -> bool {
        self.tickets.load(Ordering::Relaxed) >= self.ops_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_interleave_into_one_evenly_spaced_timetable() {
        let start = Instant::now();
        let slots = 4;
        let schedules: Vec<_> = (0..slots)
            .map(|s| Schedule::new(start, 1000.0, slots, s))
            .collect();
        let mut starts: Vec<Duration> = schedules
            .iter()
            .flat_map(|s| (0..250).map(move |i| s.intended(i) - start))
            .collect();
        starts.sort();
        assert_eq!(starts.len(), 1000);
        for (i, at) in starts.iter().enumerate() {
            let expected = Duration::from_millis(i as u64);
            let error = at.abs_diff(expected);
            assert!(error < Duration::from_micros(1), "start {i} at {at:?}");
        }
        // Each slot starts every slots/rate = 4 ms.
        assert_eq!(
            schedules[2].intended(3) - schedules[2].intended(2),
            Duration::from_millis(4)
        );
    }

    #[test]
    fn due_before_counts_the_starts_left_in_a_window() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 100.0, 2, 1); // starts at 10 ms, 30 ms, 50 ms, ...
        let end = start + Duration::from_millis(100);
        assert_eq!(schedule.due_before(0, end), 5);
        assert_eq!(schedule.due_before(3, end), 2);
        assert_eq!(schedule.due_before(5, end), 0);
        assert_eq!(schedule.due_before(9, end), 0);
        assert_eq!(schedule.due_before(0, start + Duration::from_millis(10)), 0);
        assert_eq!(
            schedule.due_before(0, start + Duration::from_micros(10_001)),
            1
        );
        // Agrees with counting one by one for an awkward rate.
        let odd = Schedule::new(start, 333.0, 7, 3);
        let end = start + Duration::from_millis(1234);
        let counted = (0..10_000).filter(|i| odd.intended(*i) < end).count() as u64;
        assert_eq!(odd.due_before(0, end), counted);
    }

    #[test]
    fn the_phase_skips_warmup_and_records_exactly_the_budget() {
        let t0 = Instant::now();
        let measure = t0 + Duration::from_secs(2);
        let deadline = measure + Duration::from_secs(10);
        let phase = Phase::new(measure, deadline, Some(3));
        assert_eq!(phase.admit(t0, t0), Admit::Warmup);
        let in_window = measure + Duration::from_secs(1);
        let admitted: Vec<_> = (0..5).map(|_| phase.admit(in_window, in_window)).collect();
        assert_eq!(
            admitted,
            [
                Admit::Measure,
                Admit::Measure,
                Admit::Measure,
                Admit::Stop,
                Admit::Stop
            ]
        );
        assert!(phase.budget_spent());
        let unlimited = Phase::new(measure, deadline, None);
        assert_eq!(
            unlimited.admit(deadline, in_window),
            Admit::Stop,
            "intended at the deadline"
        );
        assert_eq!(
            unlimited.admit(in_window, deadline),
            Admit::Stop,
            "late past the deadline"
        );
        assert_eq!(unlimited.admit(in_window, in_window), Admit::Measure);
    }
}
