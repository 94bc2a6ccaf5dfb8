//! The backup file of `GET /v1/backup` and `POST /v1/restore` (the node
//! crate's `backup` module writes and reads it): its records, a writer and
//! an incremental parser that checks every record.
//!
//! Format (version 1): the header `MAGIC`, then records
//! `kind u8 ‖ length u32 BE ‖ body ‖ xxh3-64 BE of (kind ‖ length ‖ body)`:
//! - `KIND_BUCKETS`: JSON `{bucket: properties}` of the configured buckets;
//! - `KIND_OBJECT`: `u16 BE bucket length ‖ bucket ‖ u32 BE key length ‖
//!   key ‖ encoded object` (the object format of storage and peers);
//! - `KIND_END`: JSON [`Summary`]; nothing may follow it, and a file
//!   without it is truncated;
//! - `KIND_ERROR`: UTF-8 text: the node failed while it wrote the backup.

use std::collections::BTreeMap;
use std::fmt;

use ringkv_core::bucket::{BucketProps, validate_bucket_name, validate_key};
use ringkv_core::causality::Object;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// The first bytes of a backup file: a name and the format version.
pub const MAGIC: &[u8; 16] = b"RINGKV-BACKUP\0\0\x01";
pub const KIND_BUCKETS: u8 = 1;
pub const KIND_OBJECT: u8 = 2;
pub const KIND_END: u8 = 3;
pub const KIND_ERROR: u8 = 4;
/// Record overhead: kind, length, checksum.
const RECORD_OVERHEAD: usize = 1 + 4 + 8;
/// What the last record of a backup says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub objects: u64,
    pub buckets: u64,
    pub partitions: u32,
    pub layout_version: u64,
    /// Members whose records are in it.
    pub members: Vec<String>,
    /// Members that did not answer and were skipped (`partial` only):
    /// writes only they hold are missing.
    pub missing_members: Vec<String>,
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// One record of a backup file.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Buckets(BTreeMap<String, BucketProps>),
    Object {
        bucket: String,
        key: Vec<u8>,
        object: Object,
    },
    End(Summary),
    Error(String),
}

/// Why a backup file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// Records read before the bad one.
    pub records: u64,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a valid backup: {} (after {} good records)",
            self.message, self.records
        )
    }
}

impl std::error::Error for FormatError {}

pub fn encode_record(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    let sum = xxh3_64(&out[start..]);
    out.extend_from_slice(&sum.to_be_bytes());
}

pub fn encode_object(bucket: &str, key: &[u8], object: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(2 + bucket.len() + 4 + key.len() + object.len());
    body.extend_from_slice(&(bucket.len() as u16).to_be_bytes());
    body.extend_from_slice(bucket.as_bytes());
    body.extend_from_slice(&(key.len() as u32).to_be_bytes());
    body.extend_from_slice(key);
    body.extend_from_slice(object);
    encode_record(KIND_OBJECT, &body, out);
}

/// Reads a backup from bytes pushed in pieces of any size: `push`, then
/// `next` until it gives `None`; `finish` at the end of the input.
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already taken.
    at: usize,
    header_seen: bool,
    ended: bool,
    records: u64,
    max_record_bytes: usize,
}

impl Parser {
    /// `max_record_bytes`: a longer record is refused, not buffered.
    pub fn new(max_record_bytes: usize) -> Self {
        Parser {
            buf: Vec::new(),
            at: 0,
            header_seen: false,
            ended: false,
            records: 0,
            max_record_bytes,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at >= self.buf.len() / 2 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn fail(&self, message: impl Into<String>) -> FormatError {
        FormatError {
            records: self.records,
            message: message.into(),
        }
    }

    /// The next whole record, or `None` until more bytes are pushed.
    pub fn next_record(&mut self) -> Result<Option<Record>, FormatError> {
        let rest = &self.buf[self.at..];
        if !self.header_seen {
            let n = rest.len().min(MAGIC.len());
            if rest[..n] != MAGIC[..n] {
                return Err(self.fail(if rest[..n.min(14)] == MAGIC[..n.min(14)] {
                    "a backup format this version of ringkv does not know"
                } else {
                    "it does not start as a ringkv backup does"
                }));
            }
            if n < MAGIC.len() {
                return Ok(None);
            }
            self.header_seen = true;
            self.at += MAGIC.len();
            return self.next_record();
        }
        if rest.is_empty() {
            return Ok(None);
        }
        if self.ended {
            return Err(self.fail("bytes follow its end record"));
        }
        if rest.len() < 5 {
            return Ok(None);
        }
        let kind = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        if len > self.max_record_bytes {
            return Err(self.fail(format!(
                "a record of {len} bytes is longer than the limit of {}",
                self.max_record_bytes
            )));
        }
        if rest.len() < RECORD_OVERHEAD + len {
            return Ok(None);
        }
        let sum = u64::from_be_bytes(rest[5 + len..13 + len].try_into().expect("8 bytes"));
        if xxh3_64(&rest[..5 + len]) != sum {
            return Err(self.fail("a record's checksum does not match: the file is damaged"));
        }
        let body = &rest[5..5 + len];
        let record = match kind {
            KIND_BUCKETS => Record::Buckets(
                serde_json::from_slice(body)
                    .map_err(|e| self.fail(format!("bucket properties: {e}")))?,
            ),
            KIND_OBJECT => self.object(body)?,
            KIND_END => {
                self.ended = true;
                Record::End(
                    serde_json::from_slice(body)
                        .map_err(|e| self.fail(format!("end record: {e}")))?,
                )
            }
            KIND_ERROR => Record::Error(String::from_utf8_lossy(body).into_owned()),
            other => return Err(self.fail(format!("unknown record kind {other}"))),
        };
        self.at += RECORD_OVERHEAD + len;
        self.records += 1;
        Ok(Some(record))
    }

    fn object(&self, body: &[u8]) -> Result<Record, FormatError> {
        let malformed = || self.fail("a malformed object record");
        let bucket_len =
            u16::from_be_bytes(body.get(..2).ok_or_else(malformed)?.try_into().expect("2"))
                as usize;
        let bucket = body.get(2..2 + bucket_len).ok_or_else(malformed)?;
        let bucket = std::str::from_utf8(bucket).map_err(|_| malformed())?;
        let at = 2 + bucket_len;
        let key_len = u32::from_be_bytes(
            body.get(at..at + 4)
                .ok_or_else(malformed)?
                .try_into()
                .expect("4"),
        ) as usize;
        let key = body.get(at + 4..at + 4 + key_len).ok_or_else(malformed)?;
        validate_bucket_name(bucket)
            .and(validate_key(key))
            .map_err(|e| self.fail(format!("object record: {e}")))?;
        let object = Object::decode(&body[at + 4 + key_len..]).map_err(|e| {
            self.fail(format!(
                "object record of {bucket}/{}: {e}",
                String::from_utf8_lossy(key)
            ))
        })?;
        Ok(Record::Object {
            bucket: bucket.to_string(),
            key: key.to_vec(),
            object,
        })
    }

    /// At the end of the input: the file must have ended with its end record.
    pub fn finish(&self) -> Result<(), FormatError> {
        if !self.header_seen {
            return Err(self.fail("it is empty or shorter than its header"));
        }
        if !self.ended {
            return Err(self.fail("it is truncated: its end record is missing"));
        }
        if self.at < self.buf.len() {
            return Err(self.fail("bytes follow its end record"));
        }
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use ringkv_core::NodeId;
    use ringkv_core::causality::{ConflictMode, NewVersion, VersionVector};

    use super::*;

    fn write(value: &str, actor: NodeId) -> Object {
        let new = NewVersion {
            value: Some(value.as_bytes().to_vec()),
            content_type: "text/plain".into(),
            now_ms: 1,
            expires_ms: None,
        };
        Object::update(
            None,
            &VersionVector::new(),
            new,
            actor,
            ConflictMode::Siblings,
            100,
        )
        .unwrap()
    }

    fn file() -> (Vec<u8>, Vec<Record>) {
        let mut buckets = BTreeMap::new();
        buckets.insert("b".to_string(), BucketProps::lww());
        let object = write("value", 3);
        let summary = Summary {
            objects: 2,
            buckets: 1,
            partitions: 64,
            layout_version: 4,
            members: vec!["n1".into()],
            missing_members: vec![],
            started_ms: 1,
            finished_ms: 2,
        };
        let mut out = MAGIC.to_vec();
        encode_record(
            KIND_BUCKETS,
            &serde_json::to_vec(&buckets).unwrap(),
            &mut out,
        );
        encode_object("b", b"k1", &object.encode(), &mut out);
        encode_object("b", b"k/\x00\xff", &object.encode(), &mut out);
        encode_record(KIND_END, &serde_json::to_vec(&summary).unwrap(), &mut out);
        let records = vec![
            Record::Buckets(buckets),
            Record::Object {
                bucket: "b".into(),
                key: b"k1".to_vec(),
                object: object.clone(),
            },
            Record::Object {
                bucket: "b".into(),
                key: b"k/\x00\xff".to_vec(),
                object,
            },
            Record::End(summary),
        ];
        (out, records)
    }

    /// Every record of `bytes` pushed `step` bytes at a time, or the error.
    fn parse(bytes: &[u8], step: usize) -> Result<Vec<Record>, FormatError> {
        let mut parser = Parser::new(1 << 20);
        let mut records = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            parser.push(piece);
            while let Some(record) = parser.next_record()? {
                records.push(record);
            }
        }
        parser.finish()?;
        Ok(records)
    }

    #[test]
    fn records_read_back_whatever_the_pieces_they_arrive_in() {
        let (bytes, records) = file();
        for step in [1, 2, 5, 13, 64, bytes.len()] {
            assert_eq!(parse(&bytes, step).unwrap(), records, "pieces of {step}");
        }
    }

    #[test]
    fn a_damaged_file_is_refused_with_the_reason() {
        let (bytes, _) = file();
        let error = |bytes: &[u8]| parse(bytes, 7).unwrap_err().message;
        assert!(error(&[]).contains("empty"));
        assert!(error(b"GET / HTTP/1.1\r\n\r\n").contains("does not start"));
        let mut newer = bytes.clone();
        newer[15] = 9;
        assert!(error(&newer).contains("does not know"));
        for cut in [MAGIC.len() + 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(error(&bytes[..cut]).contains("truncated"), "cut at {cut}");
        }
        // Any flipped bit after the header is caught, by a checksum or a
        // length that no longer fits.
        for at in MAGIC.len()..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            assert!(
                parse(&flipped, 7).is_err(),
                "a flip at byte {at} went unseen"
            );
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&bytes[MAGIC.len()..]);
        assert!(error(&longer).contains("follow its end"));
        let mut huge = MAGIC.to_vec();
        huge.push(KIND_OBJECT);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(error(&huge).contains("longer than the limit"));
        let mut unknown = MAGIC.to_vec();
        encode_record(77, b"", &mut unknown);
        assert!(error(&unknown).contains("unknown record kind 77"));
        let mut bad_key = MAGIC.to_vec();
        encode_object(
            "no/such bucket!",
            b"k",
            &write("v", 1).encode(),
            &mut bad_key,
        );
        assert!(error(&bad_key).contains("object record"));
    }

    #[test]
    fn a_failure_of_the_writer_reads_back_as_an_error_record() {
        let mut bytes = MAGIC.to_vec();
        encode_record(KIND_ERROR, b"member n2 did not answer", &mut bytes);
        let mut parser = Parser::new(1 << 20);
        parser.push(&bytes);
        assert_eq!(
            parser.next_record().unwrap(),
            Some(Record::Error("member n2 did not answer".into()))
        );
        assert!(parser.finish().unwrap_err().message.contains("truncated"));
    }
}
