//! A load slot: one sequence of operations with at most one in flight (a
//! connection carries `--pipeline` slots). It decides what the slot does next
//! — start an operation now, wait for its scheduled time, or stop — and knows
//! nothing of sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::schedule::{Admit, Phase, Schedule};
use super::workload::{Op, OpGenerator, OpKind};

/// tokio's timers fire on 1 ms ticks, so a sleep until the scheduled start
/// wakes up to 1 ms late. An open-loop slot therefore sleeps until one tick
/// before its start and starts when woken; an early start is measured from
/// when it was actually sent, so the latency is never shortened.
pub const EARLY_START: Duration = Duration::from_millis(1);

/// An operation a slot starts.
#[derive(Clone, Copy, Debug)]
pub struct Issued {
    pub op: Op,
    /// Latency is measured from here: the scheduled start (open loop) or the actual one.
    pub intended: Instant,
    /// False during warm-up and preload.
    pub recorded: bool,
}

#[derive(Debug)]
pub enum Next {
    Issue(Issued),
    Wait(Instant),
    Stop,
}

pub enum SlotSource {
    /// Writes every key once, keys shared out by a counter, until `deadline`; not recorded.
    Preload {
        next_key: Arc<AtomicU64>,
        keys: u64,
        deadline: Instant,
    },
    Load(LoadSlot),
}

pub struct LoadSlot {
    generator: OpGenerator,
    schedule: Option<Schedule>,
    next_index: u64,
    phase: Arc<Phase>,
    /// Scheduled starts that fell before the deadline but could not be started in time.
    late_unsent: u64,
}

impl LoadSlot {
    pub fn new(generator: OpGenerator, schedule: Option<Schedule>, phase: Arc<Phase>) -> LoadSlot {
        LoadSlot {
            generator,
            schedule,
            next_index: 0,
            phase,
            late_unsent: 0,
        }
    }
}

impl SlotSource {
    pub fn next(&mut self, now: Instant) -> Next {
        match self {
            SlotSource::Preload {
                next_key,
                keys,
                deadline,
            } => {
                if now >= *deadline {
                    return Next::Stop;
                }
                let key = next_key.fetch_add(1, Ordering::Relaxed);
                if key >= *keys {
                    next_key.store(*keys, Ordering::Relaxed);
                    return Next::Stop;
                }
                Next::Issue(Issued {
                    op: Op {
                        kind: OpKind::Update,
                        key,
                    },
                    intended: now,
                    recorded: false,
                })
            }
            SlotSource::Load(slot) => slot.next(now),
        }
    }

    pub fn late_unsent(&self) -> u64 {
        match self {
            SlotSource::Preload { .. } => 0,
            SlotSource::Load(slot) => slot.late_unsent,
        }
    }
}

impl LoadSlot {
    fn next(&mut self, now: Instant) -> Next {
        let intended = match &self.schedule {
            None => now,
            Some(schedule) => {
                let intended = schedule.intended(self.next_index);
                if intended >= self.phase.deadline || self.phase.budget_spent() {
                    return Next::Stop;
                }
                if intended > now + EARLY_START {
                    return Next::Wait(intended - EARLY_START);
                }
                intended
            }
        };
        match self.phase.admit(intended, now) {
            Admit::Stop => {
                if let Some(schedule) = &self.schedule
                    && !self.phase.budget_spent()
                {
                    self.late_unsent += schedule.due_before(self.next_index, self.phase.deadline);
                }
                Next::Stop
            }
            admit => {
                self.next_index += 1;
                Next::Issue(Issued {
                    op: self.generator.next_op(),
                    intended: intended.min(now),
                    recorded: admit == Admit::Measure,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::{Distribution, KeyChooser, Workload};
    use std::time::Duration;

    fn slot(schedule: Option<Schedule>, phase: Arc<Phase>) -> LoadSlot {
        let generator =
            OpGenerator::new(Workload::A, KeyChooser::new(Distribution::Uniform, 10), 1);
        LoadSlot::new(generator, schedule, phase)
    }

    #[test]
    fn an_open_loop_slot_waits_for_its_time_and_counts_what_it_could_not_send() {
        let t0 = Instant::now();
        let phase = Arc::new(Phase::new(
            t0 + Duration::from_millis(100),
            t0 + Duration::from_secs(1),
            None,
        ));
        // One slot at 10 ops/s: starts at 0, 100 ms, 200 ms, ...
        let mut slot = slot(Some(Schedule::new(t0, 10.0, 1, 0)), phase);
        assert!(
            matches!(
                slot.next(t0),
                Next::Issue(Issued {
                    recorded: false,
                    ..
                })
            ),
            "warm-up start"
        );
        let Next::Wait(at) = slot.next(t0) else {
            panic!("the second start is in the future")
        };
        assert_eq!(
            at,
            t0 + Duration::from_millis(100) - EARLY_START,
            "wakes one timer tick early"
        );
        // Running late: the start is issued at once, latency counted from the schedule.
        let late = t0 + Duration::from_millis(250);
        let Next::Issue(issued) = slot.next(late) else {
            panic!("due")
        };
        assert_eq!(issued.intended, t0 + Duration::from_millis(100));
        assert!(issued.recorded);
        // Woken a little early: starts now and is measured from now.
        let early = t0 + Duration::from_micros(199_500);
        let next = slot.next(early);
        let Next::Issue(issued) = next else {
            panic!("within a tick of its start: {next:?}")
        };
        assert_eq!(issued.intended, early);
        // Past the deadline the remaining due starts (300 ms .. 900 ms) are counted, not sent.
        assert!(matches!(slot.next(t0 + Duration::from_secs(2)), Next::Stop));
        assert_eq!(slot.late_unsent, 7);
    }

    #[test]
    fn preload_hands_every_key_out_once() {
        let next_key = Arc::new(AtomicU64::new(0));
        let now = Instant::now();
        let deadline = now + Duration::from_secs(1);
        let mut a = SlotSource::Preload {
            next_key: next_key.clone(),
            keys: 5,
            deadline,
        };
        let mut b = SlotSource::Preload {
            next_key: next_key.clone(),
            keys: 5,
            deadline,
        };
        let mut keys = Vec::new();
        for round in 0..8 {
            let source = if round % 2 == 0 { &mut a } else { &mut b };
            if let Next::Issue(issued) = source.next(now) {
                assert!(!issued.recorded);
                keys.push(issued.op.key);
            }
        }
        keys.sort();
        assert_eq!(keys, [0, 1, 2, 3, 4]);
        assert_eq!(
            next_key.load(Ordering::Relaxed),
            5,
            "the counter tells preload finished"
        );
        let mut late = SlotSource::Preload {
            next_key: Arc::new(AtomicU64::new(0)),
            keys: 5,
            deadline,
        };
        assert!(
            matches!(late.next(deadline), Next::Stop),
            "no preload past its deadline"
        );
    }
}
