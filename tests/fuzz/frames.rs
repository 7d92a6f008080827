//! Frames and messages: the peer and client protocol (`transport` frames of
//! `proto` messages), replicated commands, snapshot descriptors, Raft's
//! protobuf messages and a script worker's frames.

use claro::consensus::SnapshotFile;
use claro::proto::{Hello, ListQuery, LocalInfo, RaftBatch, Request, Response, StopRecord};
use claro::state::{Checkpoint, Command};
use claro::transport::{decode_frame, encode, WireError};
use claro::work::hotfolder::{Action, Hotfolder};
use claro::work::jobs::JobSpec;
use protobuf::Message as _;
use rand::Rng as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::harness::{deep_cbor, huge_lengths, mutate, random_bytes, run, text, Bytes, Rng};

const REQUEST_BYTES_MAX: usize = claro::proto::REQUEST_BYTES_MAX;
const CASES: u64 = 10_000;

/// The frame of `body` as a peer would send it (the prefix says its length).
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Frame bytes: random, a valid frame mutated (prefix included), a body
/// of deep nesting or huge declared lengths, or a lying prefix.
fn frame_input(rng: &mut Rng, valid: &[u8]) -> Bytes {
    Bytes(match rng.gen_range(0..6) {
        0 => random_bytes(rng, 64),
        1 => framed(&random_bytes(rng, 64)),
        2 => mutate(rng, valid),
        3 => framed(&mutate(rng, &valid[4..])),
        4 => {
            let depth = rng.gen_range(1..5_000);
            framed(&deep_cbor(rng, depth))
        }
        _ => {
            let mut lying = rng.gen::<u32>().to_be_bytes().to_vec();
            lying.extend(huge_lengths(rng));
            lying
        }
    })
}

/// Decodes frames from `bytes` until the end or an error; each message
/// decoded must encode again to a frame that decodes to the same encoding.
fn decode_all<T: Serialize + DeserializeOwned>(bytes: &[u8], bytes_max: usize) {
    let mut rest = bytes;
    loop {
        match decode_frame::<T>(&mut rest, bytes_max) {
            Ok(Some(msg)) => round_trips(&msg),
            Ok(None) => return,
            Err(WireError::Decode(_) | WireError::TooLarge { .. }) => return,
            Err(other) => panic!("a decoder reported {other:?}"),
        }
    }
}

/// encode → decode → encode gives the same bytes.
pub fn round_trips<T: Serialize + DeserializeOwned>(msg: &T) {
    let frame = encode(msg, usize::MAX).expect("a decoded message encodes");
    let back: T = decode_frame(&mut &frame[..], usize::MAX)
        .expect("an encoded message decodes")
        .expect("one frame");
    let again = encode(&back, usize::MAX).unwrap();
    assert_eq!(again, frame, "decoding changed the message");
}

fn opt_text(rng: &mut Rng) -> Option<String> {
    rng.gen_bool(0.5).then(|| text(rng))
}

fn names(rng: &mut Rng) -> Vec<String> {
    (0..rng.gen_range(0..4)).map(|_| text(rng)).collect()
}

fn hello(rng: &mut Rng) -> Hello {
    Hello {
        name: text(rng),
        protocol_version: rng.gen(),
        software_version: text(rng),
        cluster: text(rng),
        membership_hash: text(rng),
        membership_text: text(rng),
        cluster_id: opt_text(rng),
        incarnation: opt_text(rng),
        protocol_version_min: rng.gen_bool(0.5).then(|| rng.gen()),
        protocol_level: rng.gen_bool(0.5).then(|| rng.gen()),
    }
}

fn local_info(rng: &mut Rng) -> LocalInfo {
    LocalInfo {
        name: text(rng),
        state: text(rng),
        cluster_id: opt_text(rng),
        started_at_ms: rng.gen(),
        initialized: rng.gen(),
        is_member: rng.gen(),
        leader: opt_text(rng),
        term: rng.gen(),
        commit_index: rng.gen(),
        applied_index: rng.gen(),
        note: opt_text(rng),
        last_stop: rng.gen_bool(0.5).then(|| StopRecord {
            stopped_at_ms: rng.gen(),
            left: rng.gen(),
            remaining: names(rng),
            applied_index: rng.gen(),
            cluster_id: opt_text(rng),
        }),
        voters: names(rng),
        checkpoints: vec![Checkpoint {
            index: rng.gen(),
            digest: text(rng),
        }],
        protocol_version: rng.gen(),
        disk_free_percent: rng.gen_bool(0.5).then(|| rng.gen()),
    }
}

fn job_spec(rng: &mut Rng) -> JobSpec {
    let mut spec = JobSpec::script(&text(rng));
    spec.args = names(rng);
    spec.stored = opt_text(rng);
    spec.priority = rng.gen();
    spec.timeout_ms = rng.gen();
    spec
}

fn hotfolder(rng: &mut Rng) -> Hotfolder {
    let action = if rng.gen() {
        Action::Command { argv: names(rng) }
    } else {
        Action::Script { code: text(rng) }
    };
    let mut def = Hotfolder::new(&text(rng), action);
    def.include = names(rng);
    def.stable_ms = rng.gen();
    def.allow_shell = rng.gen();
    def
}

/// A random command; `Once` nests up to `depth` deep.
pub fn command(rng: &mut Rng, depth: u32) -> Command {
    let at_ms = rng.gen();
    match rng.gen_range(0..10) {
        0 => Command::Put {
            key: text(rng),
            value: random_bytes(rng, 64),
        },
        1 => Command::Delete { key: text(rng) },
        2 if depth > 0 => Command::Once {
            request_id: text(rng),
            command: Box::new(command(rng, depth - 1)),
        },
        3 => Command::JobSubmit {
            id: text(rng),
            spec: job_spec(rng),
            at_ms,
        },
        4 => Command::JobRelease {
            attempts: vec![(text(rng), rng.gen())],
            reason: text(rng),
            at_ms,
        },
        5 => Command::ScriptAdd {
            name: text(rng),
            code: text(rng),
            at_ms,
        },
        6 => Command::HotfolderPut {
            def: hotfolder(rng),
        },
        7 => Command::HotfolderFilesWaiting {
            counts: vec![(text(rng), rng.gen())],
        },
        8 => Command::SetIncarnation {
            name: text(rng),
            incarnation: text(rng),
            reason: opt_text(rng),
        },
        _ => Command::Checkpoint,
    }
}

fn snapshot_file(rng: &mut Rng) -> SnapshotFile {
    SnapshotFile {
        file_name: text(rng),
        size_bytes: rng.gen(),
        sha256: text(rng),
    }
}

/// A random request of any kind.
pub fn request(rng: &mut Rng) -> Request {
    let stale = rng.gen();
    match rng.gen_range(0..15) {
        0 => Request::Hello(hello(rng)),
        1 => Request::Join { name: text(rng) },
        2 => Request::propose(command(rng, 3), opt_text(rng)),
        3 => Request::Get {
            key: text(rng),
            stale,
        },
        4 => Request::List(ListQuery {
            after: opt_text(rng),
            limit: rng.gen_bool(0.5).then(|| rng.gen()),
            stale,
        }),
        5 => Request::Job {
            id: text(rng),
            stale,
            wait_ms: rng.gen_range(0..=2_000),
        },
        6 => Request::Script {
            name: text(rng),
            version: rng.gen_bool(0.5).then(|| rng.gen()),
            stale,
        },
        7 => Request::Jobs {
            filter: Default::default(),
            limit: rng.gen(),
            stale,
        },
        8 => Request::Snapshot {
            meta: snapshot_file(rng),
            raft_message: serde_bytes::ByteBuf::from(random_bytes(rng, 32)),
        },
        9 => Request::Gossip {
            info: local_info(rng),
        },
        10 => Request::Adopt {
            cluster_id: text(rng),
            voters: names(rng),
        },
        11 => Request::Transfer { name: text(rng) },
        12 => Request::Status,
        13 => Request::Live {
            id: text(rng),
            after_bytes: rng.gen(),
            forwarded: rng.gen(),
        },
        _ => Request::Digest,
    }
}

/// A random response of the kinds peers and clients decode most.
pub fn response(rng: &mut Rng) -> Response {
    match rng.gen_range(0..10) {
        0 => Response::Hello(hello(rng)),
        1 => Response::Refused {
            reason: text(rng),
            cluster_id: opt_text(rng),
        },
        2 => Response::Info(local_info(rng)),
        3 => Response::Value {
            value: rng
                .gen_bool(0.5)
                .then(|| serde_bytes::ByteBuf::from(random_bytes(rng, 32))),
            stale: None,
        },
        4 => Response::List {
            items: vec![(text(rng), serde_bytes::ByteBuf::from(random_bytes(rng, 16)))],
            stale: None,
            next_after: opt_text(rng),
        },
        5 => Response::Left {
            remaining: names(rng),
        },
        6 => Response::NotLeader {
            leader: opt_text(rng),
        },
        7 => Response::Unavailable { message: text(rng) },
        8 => Response::Live(rng.gen_bool(0.5).then(|| claro::proto::LiveView {
            instance: text(rng),
            attempt: rng.gen(),
            progress: rng.gen_bool(0.5).then(|| rng.gen()),
            log: text(rng),
            next_bytes: rng.gen(),
        })),
        _ => Response::Error { message: text(rng) },
    }
}

#[test]
fn request_frames() {
    run(
        "request_frames",
        CASES,
        |rng| {
            let valid = encode(&request(rng), usize::MAX).unwrap();
            frame_input(rng, &valid)
        },
        |input| decode_all::<Request>(&input.0, REQUEST_BYTES_MAX),
    );
}

#[test]
fn response_frames() {
    run(
        "response_frames",
        CASES,
        |rng| {
            let valid = encode(&response(rng), usize::MAX).unwrap();
            frame_input(rng, &valid)
        },
        |input| decode_all::<Response>(&input.0, REQUEST_BYTES_MAX),
    );
}

/// Random requests and responses round-trip whole.
#[test]
fn valid_messages_round_trip() {
    run(
        "valid_messages_round_trip",
        CASES,
        |rng| (request(rng), response(rng), command(rng, 8)),
        |(req, resp, cmd)| {
            round_trips(req);
            round_trips(resp);
            assert_eq!(&Command::decode(&cmd.encode()).unwrap(), cmd);
        },
    );
}

/// Replicated commands as the state machine decodes a log entry's data.
#[test]
fn command_entries() {
    run(
        "command_entries",
        CASES,
        |rng| {
            let valid = command(rng, 4).encode();
            Bytes(match rng.gen_range(0..4) {
                0 => random_bytes(rng, 64),
                1 => {
                    let depth = rng.gen_range(1..5_000);
                    deep_cbor(rng, depth)
                }
                2 => huge_lengths(rng),
                _ => mutate(rng, &valid),
            })
        },
        |input| {
            if let Ok(cmd) = Command::decode(&input.0) {
                let _ = cmd.validate();
                assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
            }
        },
    );
}

/// `Once` nested as deep as a frame allows: refused or decoded, never a
/// stack overflow (which no test could catch: the process would abort).
#[test]
fn deeply_nested_commands() {
    run(
        "deeply_nested_commands",
        200,
        |rng| {
            let depth = rng.gen_range(1..20_000);
            Bytes(b"\xa1\x64Once\xa2\x6arequest_id\x60\x67command".repeat(depth))
        },
        |input| {
            let _ = Command::decode(&input.0);
            let mut propose = b"\xa1\x67Propose\xa1\x67command".to_vec();
            propose.extend(&input.0);
            decode_all::<Request>(&framed(&propose), REQUEST_BYTES_MAX);
        },
    );
}

#[test]
fn snapshot_descriptors() {
    run(
        "snapshot_descriptors",
        CASES,
        |rng| {
            let mut valid = Vec::new();
            ciborium::into_writer(&snapshot_file(rng), &mut valid).unwrap();
            Bytes(match rng.gen_range(0..3) {
                0 => random_bytes(rng, 64),
                1 => huge_lengths(rng),
                _ => mutate(rng, &valid),
            })
        },
        |input| {
            if let Ok(meta) = SnapshotFile::decode(&input.0) {
                let mut again = Vec::new();
                ciborium::into_writer(&meta, &mut again).unwrap();
                assert_eq!(SnapshotFile::decode(&again), Ok(meta));
            }
        },
    );
}

/// A Raft message of random fields, with entries and a snapshot.
fn raft_message(rng: &mut Rng) -> raft::eraftpb::Message {
    use protobuf::ProtobufEnum as _;
    use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::from_i32(rng.gen_range(0..20)).unwrap_or_default());
    msg.from = rng.gen();
    msg.to = rng.gen();
    msg.term = rng.gen();
    msg.index = rng.gen();
    msg.commit = rng.gen();
    for _ in 0..rng.gen_range(0..3) {
        let mut e = Entry::default();
        e.set_entry_type(if rng.gen() {
            EntryType::EntryNormal
        } else {
            EntryType::EntryConfChangeV2
        });
        e.term = rng.gen();
        e.index = rng.gen();
        e.data = command(rng, 2).encode().into();
        msg.mut_entries().push(e);
    }
    if rng.gen() {
        let mut snap = Snapshot::default();
        let mut data = Vec::new();
        ciborium::into_writer(&snapshot_file(rng), &mut data).unwrap();
        snap.data = data.into();
        snap.mut_metadata().index = rng.gen();
        snap.mut_metadata().mut_conf_state().voters = vec![rng.gen(), rng.gen()];
        msg.set_snapshot(snap);
    }
    msg
}

/// Protobuf groups nested `depth` deep (an unknown field of wire type 3).
fn nested_groups(depth: usize) -> Vec<u8> {
    [0x9b, 0x06].repeat(depth)
}

/// Raft batches as a peer's stream carries them, and each message in them
/// as the receiver parses it.
#[test]
fn raft_batches() {
    run(
        "raft_batches",
        CASES,
        |rng| {
            let messages = (0..rng.gen_range(0..4))
                .map(|_| raft_message(rng).write_to_bytes().unwrap())
                .collect::<Vec<_>>();
            let one = messages.first().cloned().unwrap_or_default();
            let mut batch = RaftBatch {
                messages: messages
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            };
            let raw = match rng.gen_range(0..4) {
                0 => random_bytes(rng, 64),
                1 => nested_groups(rng.gen_range(1..50_000)),
                2 => mutate(rng, &one),
                _ => one,
            };
            batch.messages.push(serde_bytes::ByteBuf::from(raw));
            frame_input(rng, &encode(&batch, usize::MAX).unwrap())
        },
        |input| {
            let mut rest = &input.0[..];
            let max = claro::proto::RAFT_BATCH_BYTES_MAX;
            while let Ok(Some(batch)) = decode_frame::<RaftBatch>(&mut rest, max) {
                round_trips(&batch);
                for m in &batch.messages {
                    raft_parses(m);
                }
            }
        },
    );
}

/// Parses `bytes` as every protobuf type claro reads from a peer or a log
/// entry; what parses writes back to what parses equal.
fn raft_parses(bytes: &[u8]) {
    use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, Message};
    if let Ok(msg) = Message::parse_from_bytes(bytes) {
        let again = Message::parse_from_bytes(&msg.write_to_bytes().unwrap()).unwrap();
        assert_eq!(again, msg);
        let _ = SnapshotFile::decode(msg.get_snapshot().get_data());
        for e in msg.get_entries() {
            let _ = Command::decode(e.get_data());
            let _ = ConfChangeV2::parse_from_bytes(e.get_data());
        }
    }
    let _ = Entry::parse_from_bytes(bytes);
    let _ = ConfChange::parse_from_bytes(bytes);
}

/// A script worker's frames, both ways, as the pipes' readers take them.
#[test]
fn worker_frames() {
    #[derive(Serialize)]
    enum FromWorker {
        Log(String),
        Progress(u8),
    }
    run(
        "worker_frames",
        CASES,
        |rng| {
            let msg = if rng.gen() {
                FromWorker::Log(text(rng))
            } else {
                FromWorker::Progress(rng.gen())
            };
            frame_input(rng, &encode(&msg, usize::MAX).unwrap())
        },
        |input| {
            use claro::node::inputs::{read_order_frame, read_worker_frame};
            let _ = read_worker_frame(&input.0);
            let _ = read_order_frame(&input.0);
        },
    );
}

/// A few bytes that announce gigabytes are refused without allocating
/// them (the allocation guard aborts over `ALLOC_BYTES_MAX`).
#[test]
fn huge_declared_lengths() {
    run(
        "huge_declared_lengths",
        CASES,
        |rng| Bytes(huge_lengths(rng)),
        |input| {
            let body = &input.0;
            let _ = Command::decode(body);
            let _ = SnapshotFile::decode(body);
            decode_all::<Request>(&framed(body), REQUEST_BYTES_MAX);
            decode_all::<Response>(&framed(body), REQUEST_BYTES_MAX);
            decode_all::<RaftBatch>(&framed(body), claro::proto::RAFT_BATCH_BYTES_MAX);
            let _ = claro::node::inputs::read_worker_frame(&framed(body));
        },
    );
}
