//! Peer frames: `u32 BE length ‖ u8 protocol version ‖ u8 kind ‖ u64 BE
//! request id ‖ postcard body`. `PeerCodec` handles the length prefix and
//! its limit; this module also owns what is inside.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ringkv_core::message::{PeerRequest, PeerResponse};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Bumped whenever a message changes shape, so that nodes of different
/// versions refuse each other's frames with a clear error instead of
/// misreading them. 2: `Joined` carries the handoff holders.
pub const PROTOCOL_VERSION: u8 = 2;
const KIND_REQUEST: u8 = 0;
const KIND_RESPONSE: u8 = 1;
const HEADER_BYTES: usize = 1 + 1 + 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request { id: u64, body: PeerRequest },
    Response { id: u64, body: PeerResponse },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is shorter than its {HEADER_BYTES}-byte header")]
    Truncated { len: usize },
    #[error("peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}")]
    Version { version: u8 },
    #[error("unknown frame kind {kind}")]
    Kind { kind: u8 },
    #[error("malformed frame body: {reason}")]
    Body { reason: String },
}

/// The length-prefix codec for peer connections; frames longer than
/// `max_frame_bytes` are refused by the reader and the writer alike.
pub fn peer_codec(max_frame_bytes: usize) -> PeerCodec {
    PeerCodec {
        max_frame_bytes,
        writer: LengthDelimitedCodec::builder()
            .length_field_type::<u32>()
            .max_frame_length(max_frame_bytes)
            .new_codec(),
    }
}

/// Writes with tokio-util's `LengthDelimitedCodec`. Reads check the
/// announced length against the limit, then wait for the bytes without
/// reserving room for them: the buffer grows with what arrives, so a bare
/// header cannot make a node allocate a whole frame (`LengthDelimitedCodec`
/// reserves the announced length at once).
#[derive(Debug)]
pub struct PeerCodec {
    max_frame_bytes: usize,
    writer: LengthDelimitedCodec,
}

const LENGTH_BYTES: usize = 4;

impl Decoder for PeerCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(&[a, b, c, d]) = src.get(..LENGTH_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.max_frame_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes exceeds the limit of {}",
                    self.max_frame_bytes
                ),
            ));
        }
        if src.len() < LENGTH_BYTES + len {
            return Ok(None);
        }
        src.advance(LENGTH_BYTES);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for PeerCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.writer.encode(frame, dst)
    }
}

pub fn encode_frame(frame: &Frame) -> Result<Bytes, WireError> {
    let (kind, id, body) = match frame {
        Frame::Request { id, body } => (KIND_REQUEST, *id, postcard::to_stdvec(body)),
        Frame::Response { id, body } => (KIND_RESPONSE, *id, postcard::to_stdvec(body)),
    };
    let body = body.map_err(|e| WireError::Body {
        reason: e.to_string(),
    })?;
    let mut out = BytesMut::with_capacity(HEADER_BYTES + body.len());
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(kind);
    out.put_u64(id);
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

pub fn decode_frame(bytes: &[u8]) -> Result<Frame, WireError> {
    if bytes.len() < HEADER_BYTES {
        return Err(WireError::Truncated { len: bytes.len() });
    }
    let version = bytes[0];
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { version });
    }
    let kind = bytes[1];
    let id = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_BYTES..];
    let malformed = |e: postcard::Error| WireError::Body {
        reason: e.to_string(),
    };
    match kind {
        KIND_REQUEST => {
            let (body, rest) = postcard::take_from_bytes(body).map_err(malformed)?;
            no_trailing(rest)?;
            Ok(Frame::Request { id, body })
        }
        KIND_RESPONSE => {
            let (body, rest) = postcard::take_from_bytes(body).map_err(malformed)?;
            no_trailing(rest)?;
            Ok(Frame::Response { id, body })
        }
        kind => Err(WireError::Kind { kind }),
    }
}

/// A frame with a good header whose body this version cannot read: a
/// message that a newer version added, or a damaged one. The frame still
/// ended where its length said, so the connection can go on: a request is
/// answered with a refusal, a response fails only its own request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    Request { id: u64 },
    Response { id: u64 },
}

/// `Some` when `bytes` is such a frame (`decode_frame` failed on its body).
pub fn unreadable(bytes: &[u8]) -> Option<Unreadable> {
    if bytes.len() < HEADER_BYTES || bytes[0] != PROTOCOL_VERSION {
        return None;
    }
    let id = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let unreadable = match bytes[1] {
        KIND_REQUEST => Unreadable::Request { id },
        KIND_RESPONSE => Unreadable::Response { id },
        _ => return None,
    };
    matches!(decode_frame(bytes), Err(WireError::Body { .. })).then_some(unreadable)
}

fn no_trailing(rest: &[u8]) -> Result<(), WireError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(WireError::Body {
            reason: format!("{} trailing bytes", rest.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_of_a_newer_version_is_unreadable_but_keeps_its_id() {
        let ping = |id| {
            encode_frame(&Frame::Request {
                id,
                body: PeerRequest::Ping { from: 1 },
            })
            .unwrap()
        };
        assert_eq!(unreadable(&ping(9)), None, "a readable frame");
        // A variant index past this version's last one.
        let mut newer = ping(7).to_vec();
        newer[HEADER_BYTES] = 120;
        assert!(matches!(decode_frame(&newer), Err(WireError::Body { .. })));
        assert_eq!(unreadable(&newer), Some(Unreadable::Request { id: 7 }));
        newer[1] = KIND_RESPONSE;
        assert_eq!(unreadable(&newer), Some(Unreadable::Response { id: 7 }));
        // Not this version's header: nothing can be answered.
        newer[0] = PROTOCOL_VERSION + 1;
        assert_eq!(unreadable(&newer), None);
        assert_eq!(unreadable(&newer[..5]), None);
    }
    use proptest::prelude::*;
    use ringkv_core::message::ClientOp;

    #[test]
    fn the_length_prefix_is_checked_and_no_room_is_reserved_for_a_frame_not_yet_sent() {
        let mut codec = peer_codec(1 << 20);
        let mut wire = BytesMut::new();
        codec.encode(Bytes::from_static(b"one"), &mut wire).unwrap();
        codec.encode(Bytes::from_static(b""), &mut wire).unwrap();
        assert_eq!(&wire[..], b"\0\0\0\x03one\0\0\0\0");
        assert_eq!(&codec.decode(&mut wire).unwrap().unwrap()[..], b"one");
        assert_eq!(&codec.decode(&mut wire).unwrap().unwrap()[..], b"");
        assert_eq!(codec.decode(&mut wire).unwrap(), None);

        // A header announcing the largest frame, and a few bytes of it.
        let mut partial = BytesMut::with_capacity(16);
        partial.put_u32(1 << 20);
        partial.extend_from_slice(b"start");
        assert_eq!(codec.decode(&mut partial).unwrap(), None);
        assert!(partial.capacity() < 1024, "reserved {}", partial.capacity());

        let mut over = BytesMut::new();
        over.put_u32((1 << 20) + 1);
        assert_eq!(
            codec.decode(&mut over).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(
            codec
                .encode(Bytes::from(vec![0; (1 << 20) + 1]), &mut over)
                .is_err()
        );
    }

    #[test]
    fn round_trip() {
        let frame = Frame::Request {
            id: 7,
            body: PeerRequest::Coordinate(ClientOp::Get {
                bucket: "b".into(),
                key: b"k".to_vec(),
                r: Some(2),
                pr: None,
                timeout_ms: 100,
            }),
        };
        let bytes = encode_frame(&frame).unwrap();
        assert_eq!(decode_frame(&bytes).unwrap(), frame);
        let frame = Frame::Response {
            id: u64::MAX,
            body: PeerResponse::ReplicaGetDone { object: None },
        };
        assert_eq!(decode_frame(&encode_frame(&frame).unwrap()).unwrap(), frame);
    }

    #[test]
    fn rejects_bad_headers_and_bodies() {
        let good = encode_frame(&Frame::Response {
            id: 1,
            body: PeerResponse::ReplicaPutDone,
        })
        .unwrap();
        assert_eq!(
            decode_frame(&good[..5]),
            Err(WireError::Truncated { len: 5 })
        );
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 9;
        assert_eq!(
            decode_frame(&wrong_version),
            Err(WireError::Version { version: 9 })
        );
        let mut wrong_kind = good.to_vec();
        wrong_kind[1] = 7;
        assert_eq!(decode_frame(&wrong_kind), Err(WireError::Kind { kind: 7 }));
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_frame(&trailing),
            Err(WireError::Body { .. })
        ));
        let mut bad_body = good[..HEADER_BYTES].to_vec();
        bad_body.push(200);
        assert!(matches!(
            decode_frame(&bad_body),
            Err(WireError::Body { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
            let mut framed = vec![PROTOCOL_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            framed.extend_from_slice(&bytes);
            let _ = decode_frame(&framed);
            framed[1] = 1;
            let _ = decode_frame(&framed);
        }
    }
}
