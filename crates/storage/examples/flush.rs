//! What a memtable flush costs: CPU time of the flushing thread and the
//! process's peak memory. Writes 100,000 keys of 150 bytes (buffered, so
//! the log costs no sync each), then flushes them to redb in one commit.
//!
//!     cargo run --release -p ringkv-storage --example flush
//!
//! Compare two versions by building this example at each and running the
//! binaries alternately (BENCHMARKS.md).

use ringkv_storage::{DataDirOptions, Durability, Space, Storage, WriteBatch, open_data_dir};

const KEYS: u32 = 100_000;

/// CPU time this thread has used, in nanoseconds (Linux schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let storage = open_data_dir(dir.path(), DataDirOptions::default())?;
    for i in 0..KEYS {
        let mut batch = WriteBatch::new();
        batch.put(
            Space::Data(i % 64),
            format!("user{i}").into_bytes(),
            vec![7; 150],
        );
        storage.write(&batch, Durability::Buffered)?;
    }
    let rss_before = peak_rss_kib();
    let cpu_before = thread_cpu_ns();
    let started = std::time::Instant::now();
    storage.flush()?;
    let wall = started.elapsed();
    let cpu = thread_cpu_ns()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / 1_000_000);
    println!(
        "flush after {KEYS} writes: {} ms of CPU, {} ms wall; peak RSS {} KiB before it, {} KiB after",
        cpu.map_or("?".to_string(), |ms| ms.to_string()),
        wall.as_millis(),
        rss_before.map_or("?".to_string(), |kib| kib.to_string()),
        peak_rss_kib().map_or("?".to_string(), |kib| kib.to_string()),
    );
    Ok(())
}
