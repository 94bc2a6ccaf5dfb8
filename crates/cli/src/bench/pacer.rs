//! `Pacer`: wakes open-loop slots at their intended start times to within
//! tens of microseconds. tokio's timer wheel ticks every millisecond and
//! rounds a deadline up to the next tick, so a start slept for with
//! `tokio::time::sleep_until` begins up to a millisecond late, and since an
//! open-loop latency is measured from the intended start (no coordinated
//! omission), that lateness of the load generator would count as the
//! server's latency. One thread keeps the deadlines in a heap and waits on
//! its channel with a precise timeout (a futex wait on a high-resolution
//! timer), then completes the futures that are due.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Instant;

use tokio::sync::oneshot;

/// A handle to the pacing thread, which stops once every handle is gone.
pub struct Pacer {
    sender: Sender<Wake>,
}

struct Wake {
    at: Instant,
    done: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Wake {}

impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wake {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

impl Pacer {
    /// Starts the pacing thread.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start() -> std::io::Result<Pacer> {
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("ringkv-bench-pacer".to_string())
            .spawn(move || run(&receiver))?;
        Ok(Pacer { sender })
    }

    /// Returns at `at` (at once if it has passed).
    pub async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (done, woken) = oneshot::channel();
        if self.sender.send(Wake { at, done }).is_err() {
            // The thread is gone (it never is while a handle lives).
            tokio::time::sleep_until(at.into()).await;
            return;
        }
        let _ = woken.await;
    }
}

fn run(receiver: &Receiver<Wake>) {
    let mut due: BinaryHeap<Reverse<Wake>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while due.peek().is_some_and(|next| next.0.at <= now) {
            let Reverse(wake) = due.pop().expect("peeked");
            // The sleeper may be gone (a select took another branch).
            let _ = wake.done.send(());
        }
        let received = match due.peek() {
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(next) => receiver.recv_timeout(next.0.at - now),
        };
        match received {
            Ok(wake) => due.push(Reverse(wake)),
            Err(RecvTimeoutError::Timeout) => {}
            // Every handle is gone: the sleepers left see their sender dropped.
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_in_deadline_order_never_early() {
        let pacer = std::sync::Arc::new(Pacer::start().unwrap());
        let start = Instant::now();
        let (sender, mut woken) = tokio::sync::mpsc::unbounded_channel();
        for (name, after_ms) in [("c", 30), ("a", 10), ("b", 20)] {
            let (pacer, sender) = (pacer.clone(), sender.clone());
            tokio::spawn(async move {
                let at = start + Duration::from_millis(after_ms);
                pacer.sleep_until(at).await;
                sender.send((name, Instant::now() >= at)).unwrap();
            });
        }
        drop(sender);
        let mut order = Vec::new();
        while let Some((name, on_time)) = woken.recv().await {
            assert!(on_time, "{name} woke before its deadline");
            order.push(name);
        }
        assert_eq!(order, ["a", "b", "c"]);
        // A deadline in the past returns at once.
        pacer.sleep_until(start).await;
    }
}
