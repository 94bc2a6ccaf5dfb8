//! `Trace`: what happened in a run, as a running FNV-1a hash over one line
//! per event plus the last few lines for failure reports. Two runs with the
//! same seed must produce the same hash.

use std::collections::VecDeque;

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01B3;

pub struct Trace {
    hash: u64,
    events: u64,
    tail: VecDeque<String>,
    tail_len: usize,
}

impl Trace {
    pub fn new(tail_len: usize) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            events: 0,
            tail: VecDeque::with_capacity(tail_len.min(4096)),
            tail_len,
        }
    }

    pub fn record(&mut self, line: String) {
        self.hash_line(&line);
        if self.tail_len > 0 {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(line);
        }
    }

    /// Hashes a line without keeping it in the tail (background chatter
    /// such as heartbeats, which would crowd the failure report out).
    pub fn record_quiet(&mut self, line: &str) {
        self.hash_line(line);
    }

    fn hash_line(&mut self, line: &str) {
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        self.events += 1;
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_content_and_order() {
        let mut a = Trace::new(2);
        let mut b = Trace::new(0);
        for line in ["x", "y", "z"] {
            a.record(line.to_string());
            b.record(line.to_string());
        }
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.tail().collect::<Vec<_>>(), vec!["y", "z"]);
        let mut c = Trace::new(0);
        for line in ["x", "z", "y"] {
            c.record(line.to_string());
        }
        assert_ne!(a.hash(), c.hash());
        assert_eq!(c.events(), 3);
        let mut d = Trace::new(5);
        d.record_quiet("x");
        d.record("y".to_string());
        d.record_quiet("z");
        assert_eq!(d.hash(), a.hash(), "quiet lines are hashed");
        assert_eq!(d.tail().collect::<Vec<_>>(), vec!["y"]);
    }
}
