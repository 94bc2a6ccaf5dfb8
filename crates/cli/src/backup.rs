//! `ringkv backup` and `ringkv restore`: a backup file of the whole
//! cluster (`ringkv_node::backup` describes its format and meaning).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ringkv_client::Client;
use ringkv_wire::backup::{Parser, Record, Summary};

/// The longest record a file may hold (the largest peer frame).
const MAX_RECORD_BYTES: usize = ringkv_node::config::MAX_FRAME_BYTES;

/// Writes the backup to `FILE.partial`, checking each record as it
/// arrives, then syncs it and renames it to `file`: `file` is a whole,
/// valid backup or is not touched.
pub fn backup(client: &Client, file: &Path, partial: bool) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.partial", file.display()));
    let out = File::create(&tmp).with_context(|| format!("while creating {}", tmp.display()))?;
    let mut checked = Checked {
        out: io::BufWriter::with_capacity(1 << 20, out),
        parser: Parser::new(MAX_RECORD_BYTES),
        tally: Tally::default(),
    };
    let result = client
        .backup(partial, &mut checked)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| {
            checked.parser.finish()?;
            let out = checked.out.into_inner().map_err(|e| e.into_error())?;
            out.sync_all()?;
            fs::rename(&tmp, file)?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(bytes)
        });
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e.context(format!("the backup from {} failed", client.url())));
        }
    };
    let summary = checked
        .tally
        .summary
        .expect("a finished backup has its summary");
    println!(
        "wrote {}: {} objects in {} partitions, {} configured buckets, {:.1} MiB, from members {} (layout version {}) in {:.1} s",
        file.display(),
        summary.objects,
        summary.partitions,
        summary.buckets,
        bytes as f64 / (1024.0 * 1024.0),
        summary.members.join(", "),
        summary.layout_version,
        summary.finished_ms.saturating_sub(summary.started_ms) as f64 / 1000.0
    );
    if !summary.missing_members.is_empty() {
        eprintln!(
            "warning: members {} did not answer and are not in it: writes only they hold are missing",
            summary.missing_members.join(", ")
        );
    }
    Ok(())
}

/// What a whole backup shows, counted record by record.
#[derive(Default)]
struct Tally {
    objects: u64,
    summary: Option<Summary>,
}

impl Tally {
    /// Err: why the records cannot make a whole backup.
    fn take(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Object { .. } => self.objects += 1,
            Record::End(summary) if summary.objects != self.objects => {
                return Err(format!(
                    "its summary counts {} objects but it holds {}",
                    summary.objects, self.objects
                ));
            }
            Record::End(summary) => self.summary = Some(summary),
            Record::Error(message) => {
                return Err(format!("the node writing it failed: {message}"));
            }
            Record::Buckets(_) => {}
        }
        Ok(())
    }
}

/// The file being written, and the check of what goes into it.
struct Checked {
    out: io::BufWriter<File>,
    parser: Parser,
    tally: Tally,
}

impl Write for Checked {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.parser.push(bytes);
        while let Some(record) = self.parser.next_record().map_err(io::Error::other)? {
            self.tally.take(record).map_err(io::Error::other)?;
        }
        self.out.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads the whole file first, so that a damaged or truncated one changes
/// nothing; then sends it to the node, which merges it into the cluster.
pub fn restore(client: &Client, file: &Path) -> anyhow::Result<()> {
    let summary = check(file)?;
    eprintln!(
        "{} is a whole backup: {} objects, {} configured buckets, written {} ms after the epoch; restoring through {}",
        file.display(),
        summary.objects,
        summary.buckets,
        summary.finished_ms,
        client.url()
    );
    let mut body = BufReader::with_capacity(
        1 << 20,
        File::open(file).with_context(|| format!("while opening {}", file.display()))?,
    );
    let (status, report) = client.restore(&mut body)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if status != 200 {
        let message = report["message"].as_str().unwrap_or("no message");
        bail!("the restore did not finish ({status}): {message}");
    }
    Ok(())
}

/// The summary of a whole, valid backup file.
fn check(file: &Path) -> anyhow::Result<Summary> {
    let mut input =
        File::open(file).with_context(|| format!("while opening {}", file.display()))?;
    let mut parser = Parser::new(MAX_RECORD_BYTES);
    let mut buf = vec![0u8; 1 << 20];
    let mut tally = Tally::default();
    let not_restored = || format!("{} is not restored", file.display());
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("while reading {}", file.display()))?;
        if n == 0 {
            break;
        }
        parser.push(&buf[..n]);
        while let Some(record) = parser.next_record().with_context(not_restored)? {
            tally
                .take(record)
                .map_err(anyhow::Error::msg)
                .with_context(not_restored)?;
        }
    }
    parser.finish().with_context(not_restored)?;
    Ok(tally
        .summary
        .expect("a finished parser has read the end record"))
}
