//! Backup files as `POST /v1/restore` and `ringkv restore` read them, in
//! pieces of a size taken from the input. Whatever the bytes, the parser
//! answers records or an error, never panics; a file it takes whole
//! encodes back to records that parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_wire::backup::{
    KIND_BUCKETS, KIND_END, KIND_ERROR, MAGIC, Parser, Record, encode_object, encode_record,
};

fn parse(data: &[u8], piece: usize) -> Option<Vec<Record>> {
    let mut parser = Parser::new(1 << 20);
    let mut records = Vec::new();
    for piece in data.chunks(piece.max(1)) {
        parser.push(piece);
        loop {
            match parser.next_record() {
                Ok(Some(record)) => records.push(record),
                Ok(None) => break,
                Err(_) => return None,
            }
        }
    }
    parser.finish().ok()?;
    Some(records)
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let Some(records) = parse(data, usize::from(piece)) else {
        return;
    };
    let mut again = MAGIC.to_vec();
    for record in &records {
        match record {
            Record::Buckets(buckets) => encode_record(
                KIND_BUCKETS,
                &serde_json::to_vec(buckets).unwrap(),
                &mut again,
            ),
            Record::Object {
                bucket,
                key,
                object,
            } => encode_object(bucket, key, &object.encode(), &mut again),
            Record::End(summary) => {
                encode_record(KIND_END, &serde_json::to_vec(summary).unwrap(), &mut again)
            }
            Record::Error(message) => encode_record(KIND_ERROR, message.as_bytes(), &mut again),
        }
    }
    assert_eq!(
        parse(&again, again.len()).as_ref(),
        Some(&records),
        "re-encoded records parse differently"
    );
});
