//! `Pacer`: sleeps until an open-loop slot's intended start time to within
//! tens of microseconds. tokio's timer wheel ticks every millisecond and
//! rounds a deadline up to the next tick, so a start slept for with
//! `tokio::time::sleep_until` begins up to a millisecond late, and since an
//! open-loop latency is measured from the intended start (no coordinated
//! omission), that lateness of the load generator would count as the
//! server's latency. Each connection arms its own `timerfd` at the absolute
//! deadline and waits for it on tokio's reactor: the wake-up comes from a
//! high-resolution kernel timer on the connection's own worker thread, with
//! no extra thread and no cross-thread hand-off. Where no timerfd can be
//! made, tokio's timer is used instead.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, clock_gettime,
    timerfd_create, timerfd_settime,
};
use tokio::io::unix::AsyncFd;

pub struct Pacer {
    timer: Option<AsyncFd<OwnedFd>>,
}

impl Pacer {
    pub fn new() -> Pacer {
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(io::Error::from)
        .and_then(register);
        Pacer { timer: timer.ok() }
    }

    /// Returns at `at` (at once if it has passed).
    pub async fn sleep_until(&mut self, at: Instant) {
        let now = Instant::now();
        if at <= now {
            return;
        }
        let precise = match &self.timer {
            Some(timer) => wait_timerfd(timer, at - now).await,
            None => Err(io::ErrorKind::Unsupported.into()),
        };
        if precise.is_err() {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

/// Hands the timer to tokio's reactor. `AsyncFd::new` is deprecated as
/// unsound for an arbitrary `AsRawFd` (which might close its descriptor or
/// return another one; tokio #8587), and its replacement is `unsafe`, which
/// this workspace forbids. An `OwnedFd` returns the same descriptor for its
/// whole life and closes it only when dropped, by the `AsyncFd` that owns it:
/// the condition is met.
#[allow(deprecated)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// Arms `timer` for `after` from now (`Instant` is `CLOCK_MONOTONIC` on
/// Linux) and waits for it to expire.
async fn wait_timerfd(timer: &AsyncFd<OwnedFd>, after: std::time::Duration) -> io::Result<()> {
    let now = clock_gettime(ClockId::Monotonic);
    let nanos =
        i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec) + after.as_nanos() as i128;
    let deadline = Timespec {
        tv_sec: (nanos / 1_000_000_000) as i64,
        tv_nsec: (nanos % 1_000_000_000) as i64,
    };
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    timerfd_settime(
        timer.get_ref(),
        TimerfdTimerFlags::ABSTIME,
        &Itimerspec {
            it_interval: zero,
            it_value: deadline,
        },
    )?;
    loop {
        let mut ready = timer.readable().await?;
        let mut expirations = [0u8; 8];
        // Arming resets the count, so an expiry of an earlier arming (a
        // sleep given up in a select) is never read as this one.
        match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_never_early() {
        let mut pacer = Pacer::new();
        assert!(pacer.timer.is_some(), "timerfd is available on Linux");
        let start = Instant::now();
        for after_us in [300, 1_500, 20_000] {
            let at = Instant::now() + Duration::from_micros(after_us);
            pacer.sleep_until(at).await;
            assert!(Instant::now() >= at, "woke before the deadline");
        }
        // A deadline in the past returns at once.
        pacer.sleep_until(start).await;
        // A sleep given up halfway leaves no expiry behind for the next.
        let given_up = Instant::now() + Duration::from_millis(5);
        tokio::select! {
            () = pacer.sleep_until(given_up) => panic!("should not finish first"),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let at = Instant::now() + Duration::from_millis(3);
        pacer.sleep_until(at).await;
        assert!(Instant::now() >= at, "an old expiry woke the new sleep");
    }
}
