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
/// valid backup or is not touched. `-` writes it to standard output
/// (checked too: the command fails if it is not whole).
pub fn backup(client: &Client, file: &Path, partial: bool) -> anyhow::Result<()> {
    let failed = || format!("the backup from {} failed", client.url());
    let (bytes, summary) = if file == Path::new("-") {
        let (bytes, _, summary) = receive(client, partial, io::BufWriter::new(io::stdout().lock()))
            .with_context(failed)?;
        (bytes, summary)
    } else {
        let tmp = PathBuf::from(format!("{}.partial", file.display()));
        let out =
            File::create(&tmp).with_context(|| format!("while creating {}", tmp.display()))?;
        let result = receive(client, partial, io::BufWriter::with_capacity(1 << 20, out)).and_then(
            |(bytes, out, summary)| {
                let out = out.into_inner().map_err(|e| e.into_error())?;
                out.sync_all()?;
                fs::rename(&tmp, file)?;
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)?.sync_all()?;
                }
                Ok((bytes, summary))
            },
        );
        match result {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.context(failed()));
            }
        }
    };
    let name = match file.to_str() {
        Some("-") => "standard output".to_string(),
        _ => file.display().to_string(),
    };
    eprintln!(
        "wrote {name}: {} objects in {} partitions, {} configured buckets, {:.1} MiB, from members {} (layout version {}) in {:.1} s",
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

/// Copies a backup into `out`, checking every record: the bytes copied,
/// `out` flushed, and the backup's summary.
fn receive<W: Write>(client: &Client, partial: bool, out: W) -> anyhow::Result<(u64, W, Summary)> {
    let mut checked = Checked {
        out,
        parser: Parser::new(MAX_RECORD_BYTES),
        tally: Tally::default(),
    };
    let bytes = client.backup(partial, &mut checked)?;
    checked.parser.finish()?;
    checked.out.flush()?;
    let summary = checked
        .tally
        .summary
        .expect("a finished backup has its summary");
    Ok((bytes, checked.out, summary))
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
struct Checked<W> {
    out: W,
    parser: Parser,
    tally: Tally,
}

impl<W: Write> Write for Checked<W> {
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
/// `-` sends standard input as it comes, unchecked: the node checks each
/// record, and merges those before a bad one.
pub fn restore(client: &Client, file: &Path) -> anyhow::Result<()> {
    if file == Path::new("-") {
        eprintln!(
            "restoring standard input through {}: the node checks each record as it comes",
            client.url()
        );
        return send(client, &mut io::stdin().lock());
    }
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
    send(client, &mut body)
}

/// Sends a backup to the node and prints its report.
fn send(client: &Client, body: &mut dyn Read) -> anyhow::Result<()> {
    let (status, report) = client.restore(body)?;
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
