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

/// A running attempt as its instance sees it: the log text from the byte
/// asked for (at most `LIVE_LOG_BYTES_MAX`), where to ask from next, and
/// the last progress reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveView {
    pub instance: String,
    pub attempt: u32,
    pub progress: Option<u8>,
    pub log: String,
    pub next_bytes: u64,
}

/// Log text in one `LiveView`, at most.
pub const LIVE_LOG_BYTES_MAX: usize = 256 * 1024;

pub use crate::version::{protocol_version, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};

/// A request or response on a bidirectional stream (a 1 MiB setting plus framing).
pub const REQUEST_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Settings in one `List` page when the client names no limit.
pub const LIST_COUNT_DEFAULT: u32 = 1_000;
/// Most settings one `List` page may hold.
pub const LIST_COUNT_MAX: u32 = 10_000;
/// Jobs per page of `claro jobs`, at most and by default.
pub const JOBS_COUNT_MAX: u32 = 1_000;
pub const JOBS_COUNT_DEFAULT: u32 = 50;
/// CBOR framing of one listed setting beyond its key and value bytes: an
/// array header and two string headers (9 bytes at most), rounded up.
pub const LIST_ITEM_OVERHEAD_BYTES: usize = 16;
/// The rest of a `List` answer: the variant and field names and
/// `next_after` (a key, at most `state::KEY_BYTES_MAX`), rounded up.
pub const LIST_ENVELOPE_BYTES: usize = 8 * 1024;
/// Key and value bytes one `List` page may hold, so that a full page of
/// `LIST_COUNT_MAX` settings still fits one frame of `REQUEST_BYTES_MAX`.
pub const LIST_PAGE_BYTES_MAX: usize =
    REQUEST_BYTES_MAX - LIST_ENVELOPE_BYTES - LIST_COUNT_MAX as usize * LIST_ITEM_OVERHEAD_BYTES;
// Any single setting fits a page: a page always makes progress.
const _: () =
    assert!(crate::state::KEY_BYTES_MAX + crate::state::VALUE_BYTES_MAX <= LIST_PAGE_BYTES_MAX);
/// A batch of Raft messages (appends are capped at 1 MiB each by raft).
pub const RAFT_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Raft messages sent in one batch frame.
pub const RAFT_BATCH_COUNT_MAX: usize = 256;
/// Largest database file a snapshot may carry.
pub const SNAPSHOT_BYTES_MAX: u64 = crate::state::DATABASE_BYTES_MAX;

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
    /// The oldest protocol the sender works beside (absent: only its own).
    #[serde(default)]
    pub protocol_version_min: Option<u32>,
    /// The level of the sender's cluster, when it holds its database: no
    /// instance that speaks less may join it.
    #[serde(default)]
    pub protocol_level: Option<u32>,
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
    /// `coordinator`, `follower`, `joining`, `witness`, `electing` (a member
    /// that knows no coordinator), `waiting`, `stopping`.
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
    /// Why it is waiting, has no coordinator, or refuses writes (e.g. "no
    /// space left on /data/srv1: writes refused"), if it does.
    pub note: Option<String>,
    pub last_stop: Option<StopRecord>,
    /// The voters of its cluster, as its database says (empty when fresh).
    #[serde(default)]
    pub voters: Vec<String>,
    /// Its latest digest checkpoints (`integrity`).
    #[serde(default)]
    pub checkpoints: Vec<crate::state::Checkpoint>,
    /// The protocol it speaks (0: not said, an instance before levels).
    #[serde(default)]
    pub protocol_version: u32,
    /// Free space of its data directory's file system, in percent.
    #[serde(default)]
    pub disk_free_percent: Option<u8>,
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
    /// Why the server is waiting (e.g. which servers to start first), has
    /// no coordinator (e.g. "no quorum: reaches 0 of 2 other voters"), or
    /// refuses writes (e.g. "no space left on /data/srv1: writes refused").
    pub note: Option<String>,
    /// Milliseconds since the answering instance last heard from this server
    /// (0 for itself; `None`: never heard since it started).
    #[serde(default)]
    pub heard_ago_ms: Option<u64>,
    /// The protocol it speaks, as last heard (`None`: not heard).
    #[serde(default)]
    pub protocol_version: Option<u32>,
    /// Free space of its data directory's file system, in percent, as last
    /// heard (`None`: not heard or not known).
    #[serde(default)]
    pub disk_free_percent: Option<u8>,
}

/// Something that needs an operator now (`cluster::alerts`): named as the
/// Prometheus rule that fires for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub name: String,
    /// `critical` or `warning`.
    pub severity: String,
    /// What it is about: a server, a hotfolder, `cluster` or `jobs`.
    pub subject: String,
    pub message: String,
}

/// `claro status`: the same view from every instance (the coordinator's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub cluster_id: Option<String>,
    pub coordinator: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub servers: Vec<ServerStatus>,
    /// Which instance answered.
    pub answered_by: String,
    /// The view is the coordinator's own (else the answering instance's, made
    /// from what it last heard: the coordinator was unknown or too slow).
    #[serde(default)]
    pub from_coordinator: bool,
    /// The cluster's protocol level as the answering replica holds it
    /// (0: it holds no database).
    #[serde(default)]
    pub protocol_level: u32,
    /// What needs an operator now (`cluster::alerts`), critical first.
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

/// How old a stale read's replica is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staleness {
    /// The instance that answered, and the applied index it read at.
    pub answered_by: String,
    pub applied_index: u64,
    /// Milliseconds since it last heard from the coordinator (0: it is the
    /// coordinator; `None`: it knows no coordinator it has heard from).
    pub coordinator_heard_ago_ms: Option<u64>,
}

/// Which page of settings a `Request::List` asks for: those after `after`
/// (from the first when `None`) in key order, at most `limit`
/// (`LIST_COUNT_DEFAULT` when `None`, at most `LIST_COUNT_MAX`) and at most
/// `LIST_PAGE_BYTES_MAX` bytes of keys and values (always at least one
/// setting when any is left). A field missing on the wire reads as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<u32>,
    /// Read the replica as it is (see `Request::Get`).
    pub stale: bool,
}

/// Longest hold of a job read (`Request::Job`'s `wait_ms`): below the
/// CLI's hedge time, so a held call is never also sent to a second
/// instance as if this one were slow.
pub const JOB_WAIT_MS_MAX: u64 = 800;

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
    /// Any instance takes it: one that is not the coordinator forwards it,
    /// and holds it through a coordinator change until `PROPOSAL_WAIT_MS`.
    Propose {
        command: Command,
        /// Chosen by the client, the same on every retry: the cluster applies
        /// a request id once (`state::REQUEST_IDS_KEEP_ENTRIES`).
        #[serde(default)]
        request_id: Option<String>,
        /// Sent on by an instance to the coordinator it knows: never sent on
        /// again (answered `NotLeader` if that is no longer the coordinator).
        #[serde(default)]
        forwarded: bool,
    },
    /// Read a setting. By default the answer includes every write
    /// acknowledged before the read began (Raft ReadIndex through the
    /// coordinator); `stale` reads this instance's replica as it is, and the
    /// answer says how old it is.
    Get {
        key: String,
        #[serde(default)]
        stale: bool,
    },
    List(ListQuery),
    /// One job, with its log. `wait_ms`: answered once the job has ended
    /// on the instance asked, or after that long (at most
    /// `JOB_WAIT_MS_MAX`), whichever is first; a
    /// build from before the field ignores it and answers at once.
    Job {
        id: String,
        #[serde(default)]
        stale: bool,
        #[serde(default)]
        wait_ms: u64,
    },
    /// The log (from byte `after_bytes`) and progress of a job's attempt
    /// while it runs, from the instance running it (any instance forwards
    /// the question there once: `forwarded`). Answered `Live`.
    Live {
        id: String,
        #[serde(default)]
        after_bytes: u64,
        #[serde(default)]
        forwarded: bool,
    },
    /// A stored script (its latest version without `version`).
    Script {
        name: String,
        version: Option<u32>,
        #[serde(default)]
        stale: bool,
    },
    /// The stored scripts' latest versions, by name.
    Scripts {
        #[serde(default)]
        stale: bool,
    },
    /// Every hotfolder with its counts.
    Hotfolders {
        #[serde(default)]
        stale: bool,
    },
    /// The API tokens (names and roles; never the tokens).
    Tokens,
    /// The revoked certificates.
    Revoked,
    /// Jobs, newest first (`JOBS_COUNT_MAX` at most per page).
    Jobs {
        filter: crate::state::jobs::JobFilter,
        limit: u32,
        #[serde(default)]
        stale: bool,
    },
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
    /// Peer only: the periodic exchange of the live view: the sender's own
    /// facts; answered with `Info` (the receiver's).
    Gossip {
        info: LocalInfo,
    },
    /// Peer only: the receiver's own status view, never forwarded.
    View,
    /// Peer only: a bootstrapper asks a fresh voter to take the new
    /// cluster's initial state; answered `Ok` once it is durable.
    Adopt {
        cluster_id: String,
        voters: Vec<String>,
    },
    /// Client only (`claro backup`): a consistent copy of the replicated
    /// database, at a read index (every write acknowledged before it is in
    /// the copy). Answered `Backup` followed by the database's raw bytes to
    /// the end of the stream, or `Unavailable` / `Error`. A client request
    /// only, so instances of a version without it still form a cluster.
    Backup,
    /// Client only (`claro log-level`): replace this instance's log filter
    /// (`RUST_LOG`'s syntax) until it restarts; never forwarded.
    LogLevel {
        filter: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Hello(Hello),
    /// What a `Backup` stream holds; the database's bytes follow.
    Backup(crate::backup::BackupHeader),
    Refused {
        reason: String,
        /// The refusing instance's cluster id: two clusters under one
        /// config learn of each other this way (`membership::conflict`).
        #[serde(default)]
        cluster_id: Option<String>,
    },
    Info(LocalInfo),
    Status(StatusView),
    Ok {
        message: String,
    },
    /// This instance cannot serve the request now, though another may: it
    /// is cut off from the coordinator, no coordinator confirmed in time,
    /// or it holds no database yet. A write carries a request id, so a
    /// client sends it again to another instance and it is applied at most
    /// once; every other failure is `Error`, the same on every instance.
    Unavailable {
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
        /// Set on a stale read: how old the replica that answered is.
        #[serde(default)]
        stale: Option<Staleness>,
    },
    List {
        items: Vec<(String, serde_bytes::ByteBuf)>,
        #[serde(default)]
        stale: Option<Staleness>,
        /// The key to list after for the next page; `None`: this was the last.
        #[serde(default)]
        next_after: Option<String>,
    },
    /// Snapshot receiver: send from this offset (bytes it already holds).
    Resume {
        offset: u64,
    },
    Digest {
        applied_index: u64,
        digest: String,
    },
    Job {
        job: Option<Box<crate::work::jobs::Job>>,
        #[serde(default)]
        stale: Option<Staleness>,
    },
    /// `None`: the job does not run now (queued, ended, or its instance
    /// did not answer); its stored log is in `Job`.
    Live(Option<LiveView>),
    Script {
        script: Option<crate::work::jobs::StoredScript>,
    },
    Scripts {
        scripts: Vec<crate::work::jobs::StoredScript>,
    },
    Tokens {
        tokens: Vec<crate::state::tokens::TokenInfo>,
    },
    /// At most `REVOKED_COUNT_MAX` (10,000), about 1 MB: within a frame.
    Revoked {
        revoked: Vec<crate::state::revoked::Revoked>,
    },
    Hotfolders {
        hotfolders: Vec<(
            crate::work::hotfolder::Hotfolder,
            crate::state::hotfolders::Counts,
        )>,
        #[serde(default)]
        stale: Option<Staleness>,
    },
    /// A page of jobs (summaries); `next_before`: the cursor of the next.
    Jobs {
        jobs: Vec<crate::work::jobs::Job>,
        next_before: Option<String>,
        #[serde(default)]
        stale: Option<Staleness>,
    },
    /// Not handled here; ask `leader` (a server name) instead.
    NotLeader {
        leader: Option<String>,
    },
    Error {
        message: String,
    },
}

/// A fresh request id: 128 random bits in hex. A client picks one per write
/// and sends it again on every retry of that write.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Request {
    /// Whether the same request may go to a second instance while the
    /// first still works on it: reads, and writes that carry a request id
    /// (applied once whoever answers). A transfer or a stop has none.
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::Get { .. }
                | Request::List(_)
                | Request::Job { .. }
                | Request::Live { .. }
                | Request::Script { .. }
                | Request::Scripts { .. }
                | Request::Hotfolders { .. }
                | Request::Tokens
                | Request::Revoked
                | Request::Jobs { .. }
                | Request::Propose {
                    request_id: Some(_),
                    ..
                }
        )
    }

    /// A client's proposal, tagged with its request id.
    pub fn propose(command: Command, request_id: Option<String>) -> Request {
        Request::Propose {
            command,
            request_id,
            forwarded: false,
        }
    }

    /// Requests only instances may make (never clients).
    pub fn is_peer_only(&self) -> bool {
        matches!(
            self,
            Request::Hello(_)
                | Request::Join { .. }
                | Request::Leave { .. }
                | Request::Snapshot { .. }
                | Request::Gossip { .. }
                | Request::View
                | Request::Adopt { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

    fn page(sizes: &[(usize, usize)], next_after: usize) -> Response {
        let items = sizes
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let mut key = format!("{i:08}");
                key.extend(std::iter::repeat_n('k', k.saturating_sub(8)));
                (key, serde_bytes::ByteBuf::from(vec![0xa5; *v]))
            })
            .collect();
        Response::List {
            items,
            stale: None,
            next_after: Some("n".repeat(next_after)),
        }
    }

    /// A `List` without fields (as a client that names no page sends it).
    #[test]
    fn list_query_fields_default_when_absent() {
        #[derive(Serialize)]
        enum Bare {
            List {},
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&Bare::List {}, &mut bytes).unwrap();
        let req: Request = ciborium::from_reader(&bytes[..]).unwrap();
        assert!(matches!(req, Request::List(q) if q == ListQuery::default()));
    }

    /// docs/CLI.md states these figures.
    #[test]
    fn documented_list_limits() {
        assert_eq!(
            (LIST_COUNT_DEFAULT, LIST_COUNT_MAX, LIST_PAGE_BYTES_MAX),
            (1_000, 10_000, 1_928_960)
        );
    }

    fn encoded_bytes(r: &Response) -> usize {
        crate::transport::encode(r, usize::MAX).unwrap().len()
    }

    /// A page filled to both of its bounds still fits one frame.
    #[test]
    fn a_full_list_page_fits_one_frame() {
        let count = LIST_COUNT_MAX as usize;
        // Every setting as large as the byte budget allows, with keys long
        // enough for the widest string headers.
        let per_item = LIST_PAGE_BYTES_MAX / count;
        let key = 300.min(per_item);
        let many = vec![(key, per_item - key); count];
        let one = vec![(KEY_BYTES_MAX, VALUE_BYTES_MAX)];
        let two_halves = vec![(KEY_BYTES_MAX, LIST_PAGE_BYTES_MAX / 2 - KEY_BYTES_MAX); 2];
        for sizes in [many, one, two_halves] {
            let total: usize = sizes.iter().map(|(k, v)| k + v).sum();
            assert!(total <= LIST_PAGE_BYTES_MAX);
            let bytes = encoded_bytes(&page(&sizes, KEY_BYTES_MAX));
            assert!(
                bytes <= REQUEST_BYTES_MAX,
                "{} settings, {total} bytes: frame of {bytes}",
                sizes.len()
            );
        }
    }
}
