//! Writes a seed corpus for the fuzz targets in `fuzz/`: well-formed
//! inputs of every kind, so that libFuzzer starts from deep inside each
//! format instead of rediscovering it. `fuzz/run.sh` runs this first.
//!
//! Usage: `cargo run -p ringkv-wire --example fuzz_seeds -- fuzz/corpus`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ringkv_core::antientropy::{ExchangeRequest, ExchangeResponse};
use ringkv_core::bucket::{BucketProps, BucketRegistry, DurabilityMode};
use ringkv_core::causality::{ConflictMode, NewVersion, Object, VersionVector, encode_context};
use ringkv_core::hint::object_key;
use ringkv_core::message::{ClientOp, ClientReply, GossipState, PeerRequest, PeerResponse};
use ringkv_core::ring::{Layout, Member, MemberState};
use ringkv_wire::backup::{KIND_BUCKETS, KIND_END, MAGIC, Summary, encode_object, encode_record};
use ringkv_wire::{Frame, encode_frame};

fn member(id: u64) -> Member {
    Member {
        id,
        name: format!("node{id}"),
        peer_addr: format!("127.0.0.1:{}", 7070 + id),
        http_addr: format!("127.0.0.1:{}", 8080 + id),
        resp_addr: format!("127.0.0.1:{}", 6380 + id),
        state: MemberState::Valid,
    }
}

fn layouts() -> Vec<Layout> {
    let one = Layout::new(16, 3, member(1)).expect("layout");
    let three = one
        .with_member(member(2))
        .and_then(|l| l.with_member(member(3)))
        .expect("members");
    let leaving = three.with_member_leaving(2).expect("leave");
    vec![one, three, leaving]
}

fn write(
    current: Option<&Object>,
    context: &VersionVector,
    value: &str,
    replica: u64,
    now_ms: u64,
) -> Object {
    let new = NewVersion {
        value: Some(value.as_bytes().to_vec()),
        content_type: "text/plain".into(),
        now_ms,
        expires_ms: None,
    };
    Object::update(current, context, new, replica, ConflictMode::Siblings, 100).expect("update")
}

/// A few related objects: a first write, concurrent writes (siblings),
/// one that supersedes them, and a delete.
fn objects() -> Vec<Object> {
    let empty = VersionVector::new();
    let a = write(None, &empty, "apple", 1, 1_000);
    let b = write(Some(&a), &empty, "pear", 2, 1_001);
    let c = write(Some(&b), b.clock(), "apple,pear", 3, 1_002);
    let deleted = Object::update(
        Some(&c),
        c.clock(),
        NewVersion {
            value: None,
            content_type: String::new(),
            now_ms: 1_003,
            expires_ms: None,
        },
        1,
        ConflictMode::Siblings,
        100,
    )
    .expect("delete");
    let expiring = Object::update(
        Some(&c),
        &empty,
        NewVersion {
            value: Some(b"plum".to_vec()),
            content_type: "text/plain".into(),
            now_ms: 1_004,
            expires_ms: Some(61_004),
        },
        2,
        ConflictMode::Siblings,
        100,
    )
    .expect("expiring write");
    vec![a, b, c, deleted, expiring]
}

fn registry() -> BucketRegistry {
    let mut registry = BucketRegistry::default();
    registry
        .set("demo", BucketProps::default(), 5, 1)
        .expect("bucket");
    registry
        .set("redis", BucketProps::lww(), 6, 2)
        .expect("bucket");
    registry
}

fn frames() -> Vec<Frame> {
    let objects = objects();
    let layout = layouts()[1].encode();
    let key = b"user/42".to_vec();
    let requests = vec![
        PeerRequest::ReplicaPut {
            bucket: "demo".into(),
            key: key.clone(),
            object: objects[1].encode(),
            conflict: ConflictMode::Siblings,
            durability: DurabilityMode::Sync,
        },
        PeerRequest::HintPut {
            bucket: "demo".into(),
            key: key.clone(),
            object: objects[2].encode(),
            conflict: ConflictMode::Lww,
            durability: DurabilityMode::Buffered,
            hint_for: 3,
        },
        PeerRequest::ReplicaGet {
            bucket: "demo".into(),
            key: key.clone(),
        },
        PeerRequest::Ping { from: 2 },
        PeerRequest::AntiEntropy {
            partition: 3,
            n: 3,
            request: ExchangeRequest::Level {
                level: 1,
                indices: vec![0, 2, 3],
            },
        },
        PeerRequest::Coordinate(ClientOp::Put {
            bucket: "demo".into(),
            key: key.clone(),
            value: Some(b"v".to_vec()),
            content_type: "text/plain".into(),
            context: objects[2].clock().clone(),
            w: Some(2),
            pw: None,
            timeout_ms: 1000,
        }),
        PeerRequest::Coordinate(ClientOp::PutWithTtl {
            ttl_ms: 60_000,
            bucket: "demo".into(),
            key: key.clone(),
            value: Some(b"v".to_vec()),
            content_type: "text/plain".into(),
            context: VersionVector::new(),
            w: None,
            pw: None,
            timeout_ms: 1000,
        }),
        PeerRequest::Coordinate(ClientOp::Get {
            bucket: "demo".into(),
            key: key.clone(),
            r: Some(2),
            pr: None,
            timeout_ms: 1000,
        }),
        PeerRequest::Gossip(GossipState {
            from: 1,
            layout: layout.clone(),
            buckets: registry(),
        }),
        PeerRequest::Join { member: member(4) },
        PeerRequest::HandoffGet {
            bucket: "demo".into(),
            key: key.clone(),
            layout_version: 3,
        },
        PeerRequest::ScanPartition {
            partition: 5,
            hints: true,
            after: Some(object_key("demo", &key)),
            max_bytes: 1 << 20,
        },
        PeerRequest::CopyHeld {
            bucket: "demo".into(),
            key: key.clone(),
            primaries: vec![1, 2, 3],
        },
        PeerRequest::Reap {
            bucket: "demo".into(),
            key: key.clone(),
            digest: objects[1].digest(),
            clock: objects[1].clock().clone(),
            modified_ms: 1_700_000_000_000,
        },
    ];
    let responses = vec![
        PeerResponse::ReplicaPutDone,
        PeerResponse::Pong { from: 1 },
        PeerResponse::ReplicaGetDone {
            object: Some(objects[2].encode()),
        },
        PeerResponse::Coordinated(ClientReply::Written {
            context: objects[2].clock().clone(),
        }),
        PeerResponse::Joined {
            layout,
            buckets: registry(),
            holders: [(1, [(2, 3)].into())].into(),
        },
        PeerResponse::HandoffGetDone {
            object: Some(objects[0].encode()),
            holding: true,
        },
        PeerResponse::Refused {
            message: "no".into(),
        },
        PeerResponse::ScanPage {
            entries: vec![(object_key("demo", &key), objects[1].encode())],
            done: false,
        },
        PeerResponse::CopyHeld { held: true },
        PeerResponse::Reaped { dropped: false },
    ];
    let mut frames: Vec<Frame> = requests
        .into_iter()
        .enumerate()
        .map(|(i, body)| Frame::Request {
            id: i as u64 + 1,
            body,
        })
        .collect();
    frames.extend(
        responses
            .into_iter()
            .enumerate()
            .map(|(i, body)| Frame::Response {
                id: i as u64 + 1,
                body,
            }),
    );
    frames
}

struct Corpus(PathBuf);

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let corpus = Corpus(Path::new(&root).to_path_buf());

    let mut stream = vec![7u8];
    for (i, frame) in frames().iter().enumerate() {
        let bytes = encode_frame(frame).expect("encode");
        corpus.put("peer_frame", &format!("seed-{i}"), &bytes);
        stream.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        stream.extend_from_slice(&bytes);
    }
    corpus.put("peer_stream", "seed-all", &stream);

    let resp: [&[u8]; 4] = [
        b"\x05*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$5\r\nworld\r\n*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n",
        b"\x03PING\r\nGET k\r\n",
        b"\x01*1\r\n$4\r\nPING\r\n*0\r\n",
        b"\x02*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$0\r\n\r\n",
    ];
    for (i, seed) in resp.iter().enumerate() {
        corpus.put("resp", &format!("seed-{i}"), seed);
    }

    let objects = objects();
    for (i, object) in objects.iter().enumerate() {
        corpus.put(
            "context",
            &format!("seed-{i}"),
            encode_context(object.clock()).as_bytes(),
        );
        for (j, other) in objects.iter().enumerate() {
            let (a, b) = (object.encode(), other.encode());
            let mut seed = vec![u8::try_from(a.len()).expect("small object")];
            seed.extend_from_slice(&a);
            seed.extend_from_slice(&b);
            corpus.put("object", &format!("seed-{i}-{j}"), &seed);
        }
    }

    for (i, layout) in layouts().iter().enumerate() {
        corpus.put("layout", &format!("seed-{i}"), &layout.encode());
    }

    let exchange = [
        postcard::to_stdvec(&ExchangeRequest::Segments {
            indices: vec![1, 5],
        }),
        postcard::to_stdvec(&ExchangeResponse::Level {
            hashes: vec![(0, 42)],
        }),
    ];
    for (i, seed) in exchange.into_iter().enumerate() {
        corpus.put("exchange", &format!("seed-{i}"), &seed.expect("postcard"));
    }

    let mut backup = vec![7u8];
    backup.extend_from_slice(MAGIC);
    let buckets: BTreeMap<&str, BucketProps> = [("demo", BucketProps::lww())].into();
    encode_record(
        KIND_BUCKETS,
        &serde_json::to_vec(&buckets).expect("json"),
        &mut backup,
    );
    for (i, object) in objects.iter().enumerate() {
        encode_object(
            "demo",
            format!("k{i}").as_bytes(),
            &object.encode(),
            &mut backup,
        );
    }
    let summary = Summary {
        objects: objects.len() as u64,
        buckets: 1,
        partitions: 64,
        layout_version: 3,
        members: vec!["node1".into()],
        missing_members: vec!["node2".into()],
        started_ms: 1,
        finished_ms: 2,
    };
    encode_record(
        KIND_END,
        &serde_json::to_vec(&summary).expect("json"),
        &mut backup,
    );
    corpus.put("backup_file", "seed-whole", &backup);

    let json = serde_json::to_vec(&BucketProps::default()).expect("json");
    corpus.put("bucket_props", "seed-json", &json);
    let mut registries = postcard::to_stdvec(&registry()).expect("postcard");
    registries.extend(postcard::to_stdvec(&registry()).expect("postcard"));
    corpus.put("bucket_props", "seed-registries", &registries);
}
