//! Peer frames: `u32 BE length ‖ u8 protocol version ‖ u8 kind ‖ u64 BE
//! request id ‖ postcard body`. The length prefix and its limit are
//! tokio-util's `LengthDelimitedCodec`; this module owns what is inside.

use bytes::{BufMut, Bytes, BytesMut};
use ringkv_core::message::{PeerRequest, PeerResponse};
use tokio_util::codec::LengthDelimitedCodec;

pub const PROTOCOL_VERSION: u8 = 1;
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
pub fn peer_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max_frame_bytes)
        .new_codec()
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
    use proptest::prelude::*;
    use ringkv_core::message::ClientOp;

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
