//! Every frame and message decoder a peer, a client or a script worker
//! reaches, on the same bytes: errors are fine, panics and oversized
//! allocations (libFuzzer's -rss_limit_mb, -malloc_limit_mb) are not.
#![no_main]

use claro::proto::{RaftBatch, Request, Response, RAFT_BATCH_BYTES_MAX, REQUEST_BYTES_MAX};
use claro::transport::decode_frame;
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<Request>(&mut &data[..], REQUEST_BYTES_MAX);
    let _ = decode_frame::<Response>(&mut &data[..], REQUEST_BYTES_MAX);
    if let Ok(Some(batch)) = decode_frame::<RaftBatch>(&mut &data[..], RAFT_BATCH_BYTES_MAX) {
        for m in &batch.messages {
            let _ = raft::eraftpb::Message::parse_from_bytes(m);
        }
    }
    let _ = raft::eraftpb::Message::parse_from_bytes(data);
    let _ = claro::state::Command::decode(data);
    let _ = claro::consensus::SnapshotFile::decode(data);
    let _ = claro::node::inputs::read_worker_frame(data);
    let _ = claro::node::inputs::read_order_frame(data);
});
