//! The messages instances and clients exchange, and their size limits.
//!
//! Every message is a serde type carried as one length-prefixed CBOR frame
//! (`transport::read_frame`/`write_frame`); the limit depends on the kind of
//! stream, and a frame over it closes that stream without being read.
//!
//! Streams on a connection:
//! - a bidirectional stream carries one [`Request`] and one [`Response`];
//! - `Request::Snapshot` is followed on the same stream by the raw bytes of the
//!   database file (their count is in the request), then one `Response`;
//! - a unidirectional stream on a peer connection carries [`RaftBatch`] frames.

use serde::{Deserialize, Serialize};

use crate::consensus::SnapshotFile;
use crate::state::Command;

/// Bumped when the peer protocol changes incompatibly; peers must match.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request or response on a bidirectional stream (a 1 MiB setting plus framing).
pub const REQUEST_BYTES_MAX: usize = 2 * 1024 * 1024;
/// A batch of Raft messages (appends are capped at 1 MiB each by raft).
pub const RAFT_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Raft messages sent in one batch frame.
pub const RAFT_BATCH_COUNT_MAX: usize = 256;
/// Largest database file a snapshot may carry.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// First frame of every peer connection, both ways: who is speaking, and the
/// facts two instances must agree on to work together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    pub protocol_version: u32,
    pub software_version: String,
    pub cluster: String,
    pub membership_hash: String,
    pub membership_text: String,
    pub cluster_id: Option<String>,
    /// The random id of the sender's data directory, made when the directory
    /// was created: a member that comes back with another one lost its data.
    /// Absent from peers that predate it (they still decode this frame).
    #[serde(default)]
    pub incarnation: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftBatch {
    /// raft-rs messages, protobuf-encoded.
    pub messages: Vec<serde_bytes::ByteBuf>,
}

/// What an instance tells about itself (discovery, status, start order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInfo {
    pub name: String,
    /// `coordinator`, `follower`, `joining`, `witness`, `waiting`, `stopping`.
    pub state: String,
    pub cluster_id: Option<String>,
    /// Milliseconds since the epoch when this process started (discovery tie-break).
    pub started_at_ms: u64,
    /// Has a member's database (bootstrapped or received one).
    pub initialized: bool,
    pub is_member: bool,
    pub leader: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Why it is waiting, if it is.
    pub note: Option<String>,
    pub last_stop: Option<StopRecord>,
}

/// Written when an instance stops gracefully: when, whether it left the
/// membership, and which servers remained (they hold newer state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    pub stopped_at_ms: u64,
    pub left: bool,
    pub remaining: Vec<String>,
    pub applied_index: u64,
    pub cluster_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub address: String,
    pub role: String,
    pub state: String,
    pub connected: bool,
    pub synchronized: bool,
    pub applied_index: u64,
    /// Why the server is waiting (e.g. which servers to start first), if it is.
    pub note: Option<String>,
}

/// `claro status`: the same view from every instance (the coordinator's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub cluster_id: Option<String>,
    pub coordinator: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub servers: Vec<ServerStatus>,
    /// Which instance answered (and whether from the coordinator's view).
    pub answered_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Peer only: the first request on a peer connection.
    Hello(Hello),
    /// This instance's own facts.
    Info,
    /// The cluster-wide status view (forwarded to the coordinator).
    Status,
    /// Peer only: add the sender as a learner (it is sent the database).
    Join {
        name: String,
    },
    /// Peer only: remove the sender from the membership (graceful stop).
    Leave {
        name: String,
    },
    /// Apply a command through the coordinator; answers once applied there.
    Propose {
        command: Command,
    },
    /// Read a setting from this instance's replica.
    Get {
        key: String,
    },
    List,
    /// This replica's applied index and a digest of its whole replicated
    /// state: equal digests at equal indexes mean identical replicas.
    Digest,
    /// Stop an instance gracefully (forwarded to it).
    Stop {
        name: String,
    },
    /// Move the coordinator role (forwarded to the coordinator).
    Transfer {
        name: String,
    },
    /// Peer only: a database transfer. The receiver answers `Resume { offset }`
    /// (bytes of this file it already holds from an interrupted transfer); the
    /// sender then writes the file's raw bytes from that offset and finishes
    /// its side; the receiver verifies size and SHA-256, steps `raft_message`,
    /// and answers `Ok` or `Error`.
    Snapshot {
        meta: SnapshotFile,
        raft_message: serde_bytes::ByteBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Hello(Hello),
    Refused {
        reason: String,
    },
    Info(LocalInfo),
    Status(StatusView),
    Ok {
        message: String,
    },
    Proposed {
        index: u64,
    },
    /// The sender was removed from the membership; these voters remain.
    Left {
        remaining: Vec<String>,
    },
    Value {
        value: Option<serde_bytes::ByteBuf>,
    },
    List {
        items: Vec<(String, serde_bytes::ByteBuf)>,
    },
    /// Snapshot receiver: send from this offset (bytes it already holds).
    Resume {
        offset: u64,
    },
    Digest {
        applied_index: u64,
        digest: String,
    },
    /// Not handled here; ask `leader` (a server name) instead.
    NotLeader {
        leader: Option<String>,
    },
    Error {
        message: String,
    },
}

impl Request {
    /// Requests only instances may make (never clients).
    pub fn is_peer_only(&self) -> bool {
        matches!(
            self,
            Request::Hello(_)
                | Request::Join { .. }
                | Request::Leave { .. }
                | Request::Snapshot { .. }
        )
    }
}
