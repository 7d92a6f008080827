//! The replicated state machine: `state.db` (SQLite).
//!
//! Every change arrives as a committed Raft entry and is applied in order; the
//! applied index and term, and the conf state, are written in the same
//! transaction as the change, so after a crash state.db is exactly "the log
//! applied up to `applied_index`". The whole file is the Raft snapshot shipped to
//! late joiners. This module never talks to the network and never decides
//! anything: it applies what Raft committed.

pub mod hotfolders;
pub mod job_counts;
pub mod job_events;
pub mod jobs;
pub mod revoked;
pub mod tokens;

use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::ConfState;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// Largest state.db a transfer, a snapshot or a backup may carry.
pub const DATABASE_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Largest value a `Put` may carry: keeps every entry and message bounded.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest key.
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest client request id.
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Request ids are remembered for this many log entries after they were
/// applied: a client retry of an ambiguous write (it waits at most
/// `PROPOSAL_WAIT_MS`, 10 s) arrives well within it even at 9,000 writes/s.
pub const REQUEST_IDS_KEEP_ENTRIES: u64 = 200_000;
/// Old request ids are pruned at indexes that are multiples of this: at most
/// `REQUEST_IDS_KEEP_ENTRIES + REQUEST_IDS_PRUNE_ENTRIES` are kept.
pub const REQUEST_IDS_PRUNE_ENTRIES: u64 = 1024;
/// Largest server name and incarnation id in `SetIncarnation`.
pub const INCARNATION_NAME_BYTES_MAX: usize = 256;
/// Largest reason text in `SetIncarnation`.
pub const INCARNATION_REASON_BYTES_MAX: usize = 1024;

/// Digest checkpoints a replica keeps (and reports to its peers): enough
/// that peers that applied a checkpoint a little later still find a common one.
pub const CHECKPOINTS_KEPT: usize = 4;

/// A replica's digest of its whole replicated state at `index`
/// (`StateMachine::digest`), taken where a `Command::Checkpoint` was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub index: u64,
    pub digest: String,
}

/// A change to the replicated state, carried in a Raft entry as CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Written once by the instance that bootstraps the cluster.
    SetCluster {
        cluster_id: String,
    },
    /// The cluster's protocol level rises to `level` (never falls): the
    /// coordinator proposes it once every voter speaks that protocol, and
    /// what a level changes applies from this entry on, on every replica.
    SetLevel {
        level: u32,
    },
    /// A setting (key/value), e.g. what `claro settings set` writes.
    Put {
        key: String,
        /// As CBOR bytes: as an array of numbers, a 1 MiB value of high
        /// bytes took 2 MiB and broke the frame limit. (An entry written
        /// as an array still reads.)
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// `command` under a client's request id: applied the first time the id
    /// is seen, a no-op on every later entry carrying it (a retried write).
    Once {
        request_id: String,
        command: Box<Command>,
    },
    /// Which data directory (its random incarnation id) a member joined
    /// with, and why it was re-added if it was: a member that returns with
    /// another one is re-added (`membership::readmission`).
    SetIncarnation {
        name: String,
        incarnation: String,
        reason: Option<String>,
    },
    /// A digest checkpoint: every replica computes the digest of its state
    /// at this entry's index, keeps it, and compares it with the other
    /// replicas' (`integrity`). Changes nothing replicated.
    Checkpoint,
    /// A new job, queued as attempt 1 (`jobs`); `at_ms` is the submission time.
    JobSubmit {
        id: String,
        spec: crate::work::jobs::JobSpec,
        at_ms: u64,
    },
    /// The coordinator's placements: each applies only if that attempt is
    /// still queued.
    JobAssign {
        assignments: Vec<crate::work::scheduler::Assignment>,
        at_ms: u64,
    },
    /// An instance started an attempt assigned to it.
    JobStarted {
        id: String,
        instance: String,
        attempt: u32,
        at_ms: u64,
    },
    /// An attempt ended; ignored unless it is the job's current attempt on
    /// that instance (a stale report is fenced off).
    JobFinished {
        id: String,
        instance: String,
        attempt: u32,
        at_ms: u64,
        outcome: crate::work::jobs::Outcome,
    },
    /// Several attempts of `instance` ended (one entry for many: the
    /// worker batches its reports); each as `JobFinished`.
    JobsFinished {
        instance: String,
        at_ms: u64,
        ends: Vec<crate::work::jobs::AttemptEnd>,
    },
    /// These attempts (job id, attempt) lost their instance: each that is
    /// still current is queued again, or failed when it was the last.
    JobRelease {
        attempts: Vec<(String, u32)>,
        reason: String,
        at_ms: u64,
    },
    JobCancel {
        id: String,
        at_ms: u64,
    },
    JobRetry {
        id: String,
        at_ms: u64,
    },
    /// Finished jobs go: those that ended before `finished_before_ms`, and
    /// the oldest beyond `keep_count`; at most `batch_max` per entry.
    JobPurge {
        finished_before_ms: u64,
        keep_count: u64,
        batch_max: u32,
    },
    /// A stored script's next version (its code checked before proposing).
    ScriptAdd {
        name: String,
        code: String,
        at_ms: u64,
    },
    /// Every version of a stored script.
    ScriptRemove {
        name: String,
    },
    /// A server's mode: `active`, or `maintenance` (it gets no new jobs).
    NodeMode {
        name: String,
        mode: String,
    },
    /// Several new jobs in one entry (a hotfolder scan's stable files).
    JobsSubmit {
        jobs: Vec<(String, crate::work::jobs::JobSpec)>,
        at_ms: u64,
    },
    /// A submission (`JobSubmit` or `JobsSubmit`) with the coordinator's
    /// placements of its new jobs, in one entry: an idle job costs one
    /// commit to be queued and placed, not two. Or an end report
    /// (`JobsFinished`) with placements of queued jobs in the slots it
    /// frees: a busy slot passes to the next job in one commit. The inner
    /// command applies first; then each placement, only if that attempt is
    /// still queued and its instance holds fewer active attempts than its
    /// slots (as `JobAssign`'s); a job left over stays queued for the next
    /// round. (Protocol 7 and later apply both forms alike: no level.)
    Placed {
        submission: Box<Command>,
        assignments: Vec<crate::work::scheduler::Assignment>,
        at_ms: u64,
    },
    /// A hotfolder's definition, added or replaced.
    HotfolderPut {
        def: crate::work::hotfolder::Hotfolder,
    },
    HotfolderRemove {
        name: String,
    },
    HotfolderPause {
        name: String,
        paused: bool,
    },
    /// The hotfolders of `ClaroServers.conf`: applied once per cluster.
    HotfoldersSeed {
        defs: Vec<crate::work::hotfolder::Hotfolder>,
    },
    /// These final hotfolder jobs' files are published (outputs in `out/`,
    /// the original in `done/` or `error/`, or deleted).
    JobsPublished {
        ids: Vec<String>,
    },
    /// The files each hotfolder's `in/` holds without a job, from the
    /// coordinator's last scan (all hotfolders with some; the rest have none).
    HotfolderFilesWaiting {
        counts: Vec<(String, u64)>,
    },
    /// An API token: its name, role and SHA-256 (never the token).
    TokenAdd {
        name: String,
        role: crate::web::access::Role,
        hash: String,
        at_ms: u64,
    },
    TokenRemove {
        name: String,
    },
    /// A certificate (by SHA-256 fingerprint, lowercase hex) that no
    /// instance accepts any more; `name` says whose it was.
    CertRevoke {
        fingerprint: String,
        name: String,
        at_ms: u64,
    },
}

/// Placements in one `JobAssign`, and attempts in one `JobRelease`.
pub const JOB_BATCH_COUNT_MAX: usize = 4096;
const _: () = assert!(JOB_BATCH_COUNT_MAX == crate::work::submission::BATCH_COUNT_MAX);
/// Jobs one purge entry deletes, at most (bounded work per apply).
pub const JOB_PURGE_COUNT_MAX: usize = 10_000;
/// Longest release reason.
pub const REASON_BYTES_MAX: usize = 1024;

impl Command {
    /// Checks the limits before a command is proposed: bad input changes nothing.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::SetCluster { cluster_id } if cluster_id.is_empty() => {
                Err("empty cluster id".into())
            }
            Command::SetLevel { level }
                if !(crate::version::PROTOCOL_VERSION_MIN..=crate::version::PROTOCOL_VERSION)
                    .contains(level) =>
            {
                Err(format!(
                    "protocol level {level} is not one this version speaks"
                ))
            }
            Command::Put { key, value } if value.len() > VALUE_BYTES_MAX => Err(format!(
                "value of `{key}` is {} bytes, the limit is {VALUE_BYTES_MAX}",
                value.len()
            )),
            Command::Put { key, .. } | Command::Delete { key }
                if key.is_empty() || key.len() > KEY_BYTES_MAX =>
            {
                Err(format!("key must be 1..={KEY_BYTES_MAX} bytes"))
            }
            Command::Once { request_id, .. }
                if request_id.is_empty() || request_id.len() > REQUEST_ID_BYTES_MAX =>
            {
                Err(format!(
                    "request id must be 1..={REQUEST_ID_BYTES_MAX} bytes"
                ))
            }
            Command::Once { command, .. } if matches!(**command, Command::Once { .. }) => {
                Err("a request id cannot wrap another request id".into())
            }
            Command::Once { command, .. } => command.validate(),
            Command::SetIncarnation {
                name,
                incarnation,
                reason,
            } => validate_incarnation(name, incarnation, reason.as_deref()),
            other => other.validate_job(),
        }
    }

    fn validate_job(&self) -> Result<(), String> {
        use crate::work::jobs::check_job_id;
        match self {
            Command::JobSubmit { id, spec, .. } => check_job_id(id).and_then(|()| spec.validate()),
            Command::JobAssign { assignments, .. } if assignments.len() > JOB_BATCH_COUNT_MAX => {
                Err(format!("more than {JOB_BATCH_COUNT_MAX} placements"))
            }
            Command::JobRelease {
                attempts, reason, ..
            } if attempts.len() > JOB_BATCH_COUNT_MAX || reason.len() > REASON_BYTES_MAX => {
                Err("a release over its limits".into())
            }
            Command::JobStarted { id, .. }
            | Command::JobCancel { id, .. }
            | Command::JobRetry { id, .. } => check_job_id(id),
            Command::JobFinished { id, outcome, .. } => {
                check_job_id(id).and_then(|()| outcome.validate())
            }
            Command::JobsFinished { ends, .. } if ends.len() > JOB_BATCH_COUNT_MAX => Err(format!(
                "more than {JOB_BATCH_COUNT_MAX} ends in one report"
            )),
            Command::JobsFinished { ends, .. } => ends
                .iter()
                .try_for_each(|e| check_job_id(&e.id).and_then(|()| e.outcome.validate())),
            Command::NodeMode { mode, .. } if mode != "active" && mode != "maintenance" => Err(
                format!("`{mode}` is not a server mode (active, maintenance)"),
            ),
            other => other.validate_hotfolder(),
        }
    }

    fn validate_hotfolder(&self) -> Result<(), String> {
        use crate::work::hotfolder::{check_name, HOTFOLDERS_MAX};
        use crate::work::jobs::check_job_id;
        match self {
            Command::Placed {
                submission,
                assignments,
                ..
            } => validate_placed(submission, assignments),
            Command::JobsSubmit { jobs, .. } if jobs.len() > JOB_BATCH_COUNT_MAX => Err(format!(
                "more than {JOB_BATCH_COUNT_MAX} jobs in one submission"
            )),
            Command::JobsSubmit { jobs, .. } => jobs
                .iter()
                .try_for_each(|(id, spec)| check_job_id(id).and_then(|()| spec.validate())),
            Command::HotfolderPut { def } => def.validate(),
            Command::HotfolderRemove { name } | Command::HotfolderPause { name, .. } => {
                check_name(name)
            }
            Command::HotfoldersSeed { defs } if defs.len() > HOTFOLDERS_MAX => {
                Err(format!("more than {HOTFOLDERS_MAX} hotfolders"))
            }
            Command::HotfoldersSeed { defs } => defs.iter().try_for_each(|d| d.validate()),
            Command::JobsPublished { ids } if ids.len() > JOB_BATCH_COUNT_MAX => {
                Err(format!("more than {JOB_BATCH_COUNT_MAX} jobs in one entry"))
            }
            Command::JobsPublished { ids } => ids.iter().try_for_each(|id| check_job_id(id)),
            Command::HotfolderFilesWaiting { counts } if counts.len() > HOTFOLDERS_MAX => {
                Err(format!("more than {HOTFOLDERS_MAX} hotfolders"))
            }
            Command::HotfolderFilesWaiting { counts } => {
                counts.iter().try_for_each(|(name, _)| check_name(name))
            }
            Command::TokenAdd { name, hash, .. } => {
                crate::web::access::check_token_name(name)?;
                let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                hex.then_some(())
                    .ok_or_else(|| "a token hash is 64 hex digits".into())
            }
            Command::TokenRemove { name } => crate::web::access::check_token_name(name),
            Command::CertRevoke {
                fingerprint, name, ..
            } => revoked::check(fingerprint, name),
            _ => Ok(()),
        }
    }

    /// The jobs a submission makes (also when placed in its entry), as a
    /// keyed request records them: one id, or a batch's ids joined by `,`
    /// in order (ids are hexadecimal).
    pub fn submitted_ids(&self) -> Option<String> {
        match self {
            Command::JobSubmit { id, .. } => Some(id.clone()),
            Command::JobsSubmit { jobs, .. } => Some(
                jobs.iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Command::Placed { submission, .. } => submission.submitted_ids(),
            _ => None,
        }
    }

    /// The ids of the jobs a submission makes, in order; empty for any
    /// other command.
    pub fn submitted_jobs(&self) -> Vec<(&str, &crate::work::jobs::JobSpec)> {
        match self {
            Command::JobSubmit { id, spec, .. } => vec![(id.as_str(), spec)],
            Command::JobsSubmit { jobs, .. } => jobs.iter().map(|(i, s)| (i.as_str(), s)).collect(),
            _ => Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("command encodes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }
}

/// A placed submission: a plain submission inside, and placements of its
/// own new jobs only (first attempts); or an end report inside, and
/// placements of any jobs (each applies only while still queued at that
/// attempt); within the batch limit.
fn validate_placed(
    submission: &Command,
    assignments: &[crate::work::scheduler::Assignment],
) -> Result<(), String> {
    if assignments.len() > JOB_BATCH_COUNT_MAX {
        return Err(format!("more than {JOB_BATCH_COUNT_MAX} placements"));
    }
    // An end report carries placements of queued jobs in the slots it
    // frees: any job, each applied only while still queued at that attempt.
    if let Command::JobsFinished { .. } = submission {
        if let Some(a) = assignments.iter().find(|a| a.attempt == 0) {
            return Err(format!("a placement of attempt 0 of job `{}`", a.id));
        }
        assignments
            .iter()
            .try_for_each(|a| crate::work::jobs::check_job_id(&a.id))?;
        return submission.validate();
    }
    let jobs = submission.submitted_jobs();
    if jobs.is_empty() {
        return Err("only a job submission or an end report can carry placements".into());
    }
    let own = |a: &crate::work::scheduler::Assignment| {
        a.attempt == 1 && jobs.iter().any(|(id, _)| *id == a.id)
    };
    if !assignments.iter().all(own) {
        return Err("a placement of a job this submission does not make".into());
    }
    submission.validate()
}

fn validate_incarnation(name: &str, incarnation: &str, reason: Option<&str>) -> Result<(), String> {
    let max = INCARNATION_NAME_BYTES_MAX;
    if name.is_empty() || name.len() > max || incarnation.is_empty() || incarnation.len() > max {
        return Err(format!(
            "server name and incarnation must be 1..={max} bytes"
        ));
    }
    if reason.is_some_and(|r| r.len() > INCARNATION_REASON_BYTES_MAX) {
        return Err(format!(
            "reason must be at most {INCARNATION_REASON_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

/// How state.db is synced. WAL with NORMAL is atomic on a process crash; on
/// power loss the last transactions may roll back, which is safe because the
/// Raft log still holds them (it is only compacted after a checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Normal,
    Off,
}

pub struct StateMachine {
    conn: Connection,
    path: PathBuf,
    sync: Sync,
    applied_index: u64,
    applied_term: u64,
    conf_state: ConfState,
    cluster_id: Option<String>,
    /// The latest digest checkpoints, oldest first, at most `CHECKPOINTS_KEPT`.
    checkpoints: std::collections::VecDeque<Checkpoint>,
    /// Changes whenever the revoked certificates may have: at every open
    /// (a new value for the process) and at every applied `CertRevoke`.
    revoked_version: u64,
}

/// Source of `revoked_version`s: unique in the process, so that a state
/// machine opened anew (a snapshot installed) never repeats an old one.
static REVOKED_VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_revoked_version() -> u64 {
    REVOKED_VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn revokes(cmd: &Command) -> bool {
    match cmd {
        Command::CertRevoke { .. } => true,
        Command::Once { command, .. } => revokes(command),
        _ => false,
    }
}

/// One page of settings (`StateMachine::list_page`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// (key, value) in key order.
    pub items: Vec<(String, Vec<u8>)>,
    /// More settings follow the last one.
    pub more: bool,
}

/// One entry to apply.
pub enum Change<'a> {
    Command(&'a Command),
    /// A conf change already applied to raft; only its resulting conf state is stored.
    Conf(&'a ConfState),
    /// An empty entry (leader's no-op, or a dropped proposal).
    Empty,
}

impl StateMachine {
    pub fn open(path: &Path, sync: Sync) -> rusqlite::Result<StateMachine> {
        let conn = open_conn(path, sync)?;
        let mut sm = StateMachine {
            conn,
            path: path.to_path_buf(),
            sync,
            applied_index: 0,
            applied_term: 0,
            conf_state: ConfState::default(),
            cluster_id: None,
            checkpoints: Default::default(),
            revoked_version: next_revoked_version(),
        };
        sm.load_meta()?;
        Ok(sm)
    }

    /// Reads `path`'s meta (applied index and term, cluster id, conf state)
    /// without writing anything: the data directory check
    /// (`consensus::check`). Returns the applied index.
    pub fn read_meta_only(path: &Path) -> Result<u64, String> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
        let text = |e: rusqlite::Error| e.to_string();
        let applied = read_meta::<u64>(&conn, "applied_index").map_err(text)?;
        read_meta::<u64>(&conn, "applied_term").map_err(text)?;
        read_meta::<String>(&conn, "cluster_id").map_err(text)?;
        let cs: Option<Vec<u8>> = read_meta(&conn, "conf_state").map_err(text)?;
        if let Some(b) = cs {
            ConfState::parse_from_bytes(&b).map_err(|e| format!("conf_state: {e}"))?;
        }
        Ok(applied.unwrap_or(0))
    }

    fn load_meta(&mut self) -> rusqlite::Result<()> {
        self.applied_index = read_meta::<u64>(&self.conn, "applied_index")?.unwrap_or(0);
        self.applied_term = read_meta::<u64>(&self.conn, "applied_term")?.unwrap_or(0);
        self.cluster_id = read_meta::<String>(&self.conn, "cluster_id")?;
        let cs: Option<Vec<u8>> = read_meta(&self.conn, "conf_state")?;
        self.conf_state = cs
            .map(|b| ConfState::parse_from_bytes(&b).expect("stored conf state decodes"))
            .unwrap_or_default();
        self.checkpoints = read_checkpoint(&self.conn)?.into_iter().collect();
        Ok(())
    }

    /// The latest digest checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.checkpoints.iter().cloned().collect()
    }

    /// Checks a state database at rest against the digest it recorded at
    /// its last checkpoint, when nothing was applied since (otherwise there
    /// is nothing to compare with): a value changed outside claro, which
    /// SQLite's own check cannot see, is found here. Returns what differs.
    pub fn verify_at_rest(path: &Path) -> Result<Option<String>, String> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
        let text = |e: rusqlite::Error| e.to_string();
        let applied = read_meta::<u64>(&conn, "applied_index").map_err(text)?;
        let Some(cp) = read_checkpoint(&conn).map_err(text)? else {
            return Ok(None);
        };
        if applied != Some(cp.index) {
            return Ok(None);
        }
        let cluster_id = read_meta::<String>(&conn, "cluster_id").map_err(text)?;
        let now = digest_of(&conn, cluster_id.as_deref()).map_err(text)?;
        Ok((now != cp.digest).then(|| {
            format!(
                "its content differs from the digest it recorded at index {} (changed outside claro)",
                cp.index
            )
        }))
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// The cluster's protocol level as this replica holds it.
    pub fn protocol_level(&self) -> u32 {
        protocol_level(&self.conn).unwrap_or(PROTOCOL_LEVEL_DEFAULT)
    }

    /// Compare with the last one seen: when it differs, the revoked
    /// certificates may have changed (`revoked::fingerprints`).
    pub fn revoked_version(&self) -> u64 {
        self.revoked_version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for the read-only queries of `state::jobs`.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Applies a batch of committed entries `(index, term, change)` in one
    /// transaction; indexes must follow the applied index without a gap.
    pub fn apply(&mut self, batch: &[(u64, u64, Change<'_>)]) -> rusqlite::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = write_tx(&mut self.conn)?;

        let mut cluster_id = self.cluster_id.clone();
        let mut conf_state = None;
        let mut checkpoints = Vec::new();
        let mut revoked = false;
        for (expected, (index, _term, change)) in (self.applied_index + 1..).zip(batch) {
            assert_eq!(*index, expected, "entries applied out of order");
            match change {
                // Taken inside the transaction, so it sees exactly the
                // entries up to this one, wherever it falls in the batch.
                Change::Command(Command::Checkpoint) => {
                    debug_assert!(job_counts::agree(&tx)?, "kept job counts drifted");
                    checkpoints.push(Checkpoint {
                        index: *index,
                        digest: digest_of(&tx, cluster_id.as_deref())?,
                    })
                }
                Change::Command(cmd) => {
                    apply_command(&tx, *index, cmd, &mut cluster_id)?;
                    revoked |= revokes(cmd);
                }
                Change::Conf(cs) => conf_state = Some((*cs).clone()),
                Change::Empty => {}
            }
        }
        if let Some(cp) = checkpoints.last() {
            write_meta(&tx, "checkpoint_index", &cp.index)?;
            write_meta(&tx, "checkpoint_digest", &cp.digest)?;
        }
        let (last_index, last_term, _) = batch.last().expect("non-empty batch");
        write_meta(&tx, "applied_index", last_index)?;
        write_meta(&tx, "applied_term", last_term)?;
        if let Some(cs) = &conf_state {
            write_meta(
                &tx,
                "conf_state",
                &cs.write_to_bytes().expect("conf state encodes"),
            )?;
        }
        if cluster_id != self.cluster_id {
            write_meta(&tx, "cluster_id", cluster_id.as_ref().expect("set"))?;
        }
        tx.commit()?;
        job_events::trim(&self.conn)?;
        self.applied_index = *last_index;
        self.applied_term = *last_term;
        self.cluster_id = cluster_id;
        if let Some(cs) = conf_state {
            self.conf_state = cs;
        }
        if revoked {
            self.revoked_version = next_revoked_version();
        }
        for cp in checkpoints {
            if self.checkpoints.len() == CHECKPOINTS_KEPT {
                self.checkpoints.pop_front();
            }
            self.checkpoints.push_back(cp);
        }
        Ok(())
    }

    /// Sets the conf state outside the log: only for creating a cluster
    /// (bootstrap) or re-creating one (`--force-bootstrap`).
    pub fn set_conf_state(&mut self, cs: &ConfState) -> rusqlite::Result<()> {
        let tx = write_tx(&mut self.conn)?;
        write_meta(
            &tx,
            "conf_state",
            &cs.write_to_bytes().expect("conf state encodes"),
        )?;
        tx.commit()?;
        self.conf_state = cs.clone();
        Ok(())
    }

    /// Gives the database a new cluster id: only for `--force-bootstrap`, which
    /// forks a new cluster from this (possibly older) database, so that it is
    /// never mistaken for the cluster it came from.
    ///
    /// The cluster id is part of every digest, so the recorded checkpoint
    /// is taken again with the new id where it stands at the applied index
    /// (the at-rest check compares exactly that one), and dropped otherwise:
    /// a digest of the old cluster would read as a change made outside claro.
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> rusqlite::Result<()> {
        let tx = write_tx(&mut self.conn)?;
        write_meta(&tx, "cluster_id", cluster_id)?;
        let last = read_checkpoint(&tx)?;
        tx.execute(
            "DELETE FROM meta WHERE key IN ('checkpoint_index', 'checkpoint_digest')",
            [],
        )?;
        let retaken = match last {
            Some(cp) if cp.index == self.applied_index => Some(Checkpoint {
                index: cp.index,
                digest: digest_of(&tx, Some(cluster_id))?,
            }),
            _ => None,
        };
        if let Some(cp) = &retaken {
            write_meta(&tx, "checkpoint_index", &cp.index)?;
            write_meta(&tx, "checkpoint_digest", &cp.digest)?;
        }
        tx.commit()?;
        self.cluster_id = Some(cluster_id.to_string());
        self.checkpoints = retaken.into_iter().collect();
        Ok(())
    }

    pub fn get(&self, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
    }

    /// The index at which the write tagged `request_id` was applied, if it was
    /// (within the last `REQUEST_IDS_KEEP_ENTRIES` entries).
    pub fn request_index(&self, request_id: &str) -> rusqlite::Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT applied_index FROM requests WHERE id = ?1",
                params![request_id],
                |r| r.get(0),
            )
            .optional()
    }

    /// The job made by the submission tagged `request_id`, if it was applied
    /// (within the last `REQUEST_IDS_KEEP_ENTRIES` entries).
    pub fn request_job(&self, request_id: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT job FROM requests WHERE id = ?1",
                params![request_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
    }

    /// The incarnation `name` joined with, and why it was re-added (if it was).
    pub fn incarnation(&self, name: &str) -> rusqlite::Result<Option<(String, Option<String>)>> {
        self.conn
            .query_row(
                "SELECT incarnation, reason FROM incarnations WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// One page of settings in key order, those after `after` (exclusive;
    /// from the first when `None`): at most `count_max` of them and at most
    /// `bytes_max` bytes of keys and values, but always the first one left
    /// (a caller's `bytes_max` holds any one setting). Also whether more follow.
    pub fn list_page(
        &self,
        after: Option<&str>,
        count_max: usize,
        bytes_max: usize,
    ) -> rusqlite::Result<ListPage> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM settings WHERE ?1 IS NULL OR key > ?1 ORDER BY key",
        )?;
        let mut rows = stmt.query(params![after])?;
        let mut items = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let (key, value): (String, Vec<u8>) = (row.get(0)?, row.get(1)?);
            let size = key.len() + value.len();
            if items.len() == count_max || (!items.is_empty() && bytes + size > bytes_max) {
                return Ok(ListPage { items, more: true });
            }
            bytes += size;
            items.push((key, value));
        }
        Ok(ListPage { items, more: false })
    }

    /// A digest of the whole replicated content (settings and cluster id), for
    /// checking that replicas at the same applied index are identical.
    pub fn digest(&self) -> rusqlite::Result<String> {
        digest_of(&self.conn, self.cluster_id.as_deref())
    }

    /// Makes every applied transaction durable in the main database file, so the
    /// Raft log up to the applied index may be compacted.
    /// Returns whether the whole WAL was copied into the database (and synced);
    /// PASSIVE never waits for readers, so the raft loop never blocks here.
    pub fn checkpoint(&self) -> rusqlite::Result<bool> {
        let (busy, log, done): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok(busy == 0 && log == done)
    }

    /// Replaces the database with `file` (a verified snapshot), which must be at
    /// `index`. The old database is gone afterwards; nothing else changes if the
    /// file is not a state database at that index.
    pub fn install(&mut self, file: &Path, index: u64) -> Result<(), String> {
        let found =
            applied_index_of(file).map_err(|e| format!("snapshot file {}: {e}", file.display()))?;
        if found != index {
            return Err(format!(
                "snapshot file is at index {found}, expected {index}"
            ));
        }
        let placeholder = Connection::open_in_memory().map_err(|e| e.to_string())?;
        let old = std::mem::replace(&mut self.conn, placeholder);
        old.close().map_err(|(_, e)| e.to_string())?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&self.path, suffix));
            let _ = std::fs::remove_file(with_suffix(file, suffix));
        }
        std::fs::rename(file, &self.path).map_err(|e| format!("install snapshot: {e}"))?;
        // The rename must be durable before the log forgets what it replaced.
        sync_dir(self.path.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
        self.conn = open_conn(&self.path, self.sync).map_err(|e| e.to_string())?;
        self.load_meta().map_err(|e| e.to_string())?;
        assert_eq!(self.applied_index, index);
        Ok(())
    }
}

/// Checks a database file at rest (one received from a peer, before it is
/// installed): SQLite's `quick_check` and the state's meta must read. The
/// file is opened read-only and left as it was.
pub fn check_file(path: &Path) -> Result<(), String> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if verdict != "ok" {
        return Err(verdict);
    }
    read_meta::<u64>(&conn, "applied_index").map_err(|e| e.to_string())?;
    Ok(())
}

/// Checks that a database file from outside the cluster (a backup to
/// restore) holds no schema object of its own: every table, index,
/// trigger and view in it must be one claro makes, and a trigger or view
/// must be claro's to the letter. A crafted file could otherwise carry a
/// trigger that runs on the cluster's own writes once installed. Read
/// only, before anything runs on the file (migrations would fire
/// triggers); objects of an older schema that are missing are fine (they
/// are made when it is opened).
pub fn check_schema(path: &Path) -> Result<(), String> {
    let theirs = schema_objects(path)?;
    // claro's own schema: a fresh database beside the file, then removed.
    let fresh = with_suffix(path, ".schema");
    let made = StateMachine::open(&fresh, Sync::Off).map(drop);
    let ours = made
        .map_err(|e| e.to_string())
        .and_then(|()| schema_objects(&fresh));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(&fresh, suffix));
    }
    let ours = ours?;
    for (kind, name, sql) in &theirs {
        let known = ours.iter().find(|(k, n, _)| k == kind && n == name);
        let Some((_, _, our_sql)) = known else {
            return Err(format!(
                "it holds a {kind} `{name}` that claro does not make"
            ));
        };
        if !same_object(kind, sql.as_deref(), our_sql.as_deref()) {
            return Err(format!("its {kind} `{name}` is not claro's"));
        }
    }
    Ok(())
}

/// Triggers, views and indexes are made once, as they are: to the letter.
/// Tables may have grown columns since (migrations), but never a
/// constraint or a computed column that could fail or steer the cluster's
/// writes.
fn same_object(kind: &str, theirs: Option<&str>, ours: Option<&str>) -> bool {
    if kind != "table" {
        return theirs == ours;
    }
    let theirs = theirs.unwrap_or("").to_ascii_uppercase();
    let ours = ours.unwrap_or("").to_ascii_uppercase();
    [
        "CHECK",
        "GENERATED",
        " AS ",
        "REFERENCES",
        "COLLATE",
        "DEFAULT",
    ]
    .iter()
    .all(|w| !theirs.contains(w) || ours.contains(w))
}

/// (type, name, sql) of every schema object of a database file, read only.
fn schema_objects(path: &Path) -> Result<Vec<(String, String, Option<String>)>, String> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let mut stmt = conn
        // Only SQLite's own objects are left out, by their exact names: a
        // LIKE pattern would let `sqlite1evil` (any case) through.
        .prepare(
            "SELECT type, name, sql FROM sqlite_master
             WHERE name NOT IN ('sqlite_sequence', 'sqlite_stat1', 'sqlite_stat2', 'sqlite_stat3', 'sqlite_stat4')
               AND NOT (type = 'index' AND sql IS NULL AND name GLOB 'sqlite_autoindex_*')",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| e.to_string())?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| e.to_string())
}

/// The applied index of a state database file, opened without creating it.
fn applied_index_of(file: &Path) -> rusqlite::Result<u64> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(file, flags)?;
    Ok(read_meta::<u64>(&conn, "applied_index")?.unwrap_or(0))
}

/// fsyncs a directory, making renames and new files in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// How long a write waits for another program holding state.db's write
/// lock (an operator's `sqlite3`) before the Ready cycle fails.
pub const DB_BUSY_MS_MAX: u64 = 5_000;

/// A write transaction that takes the write lock at BEGIN. A deferred one
/// that reads first (a checkpoint's digest, a job's row) gets SQLITE_BUSY at
/// once, without waiting, when it comes to write while another connection
/// holds the lock, and that failure would be taken for damage.
pub fn write_tx(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Prepared statements a connection keeps (`prepare_cached`), at most.
/// rusqlite keeps 16 by default, fewer than an apply cycle (a job's
/// submission, placement, end, feed and counts, the request ids, the meta
/// rows) and the reads beside it on the same connection (placement, the
/// worker loop, held reads, the event hub) use together: they evicted each
/// other, and a busy coordinator parsed and planned statements again in
/// about a twelfth of its CPU. A statement is a few kilobytes; only those
/// used are kept.
pub(crate) const STATEMENTS_CACHED_MAX: usize = 256;

fn open_conn(path: &Path, sync: Sync) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
    conn.busy_timeout(std::time::Duration::from_millis(DB_BUSY_MS_MAX))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = if sync == Sync::Normal {
        "NORMAL"
    } else {
        "OFF"
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL, updated_index INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, applied_index INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS requests_by_index ON requests (applied_index);
         CREATE TABLE IF NOT EXISTS incarnations (name TEXT PRIMARY KEY, incarnation TEXT NOT NULL, reason TEXT);",
    )?;
    conn.execute_batch(jobs::SCHEMA)?;
    jobs::migrate(&conn)?;
    // Added after the first release: the job a keyed submission made.
    let has_job: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('requests') WHERE name = 'job'",
        [],
        |r| r.get(0),
    )?;
    if !has_job {
        conn.execute_batch("ALTER TABLE requests ADD COLUMN job TEXT")?;
    }
    conn.execute_batch(hotfolders::SCHEMA)?;
    conn.execute_batch(tokens::SCHEMA)?;
    conn.execute_batch(revoked::SCHEMA)?;
    conn.execute_batch(job_events::SCHEMA_TEMP)?;
    conn.execute_batch(job_counts::SCHEMA_TEMP)?;
    Ok(conn)
}

fn apply_command(
    tx: &Transaction<'_>,
    index: u64,
    cmd: &Command,
    cluster_id: &mut Option<String>,
) -> rusqlite::Result<()> {
    match cmd {
        // The first SetCluster wins; a later one (which no correct instance
        // proposes) is ignored rather than forking the cluster's identity.
        Command::SetCluster { cluster_id: id } => {
            if cluster_id.is_none() {
                *cluster_id = Some(id.clone());
            }
        }
        Command::SetLevel { level } => {
            // A replica cannot give a level it does not speak its meaning:
            // it stops here rather than apply later entries otherwise than
            // the others (the coordinator raises a level only once every
            // server speaks it, so this is a broken promise, not an input).
            let speaks = crate::version::protocol_version();
            assert!(
                *level <= speaks,
                "the cluster's level rises to {level}, and this instance speaks protocol {speaks}: upgrade it"
            );
            let now = protocol_level(tx)?;
            write_meta(tx, "protocol_level", &now.max(*level))?;
        }
        Command::Put { key, value } => {
            tx.prepare_cached(
                "INSERT INTO settings (key, value, updated_index) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_index = excluded.updated_index",
            )?
            .execute(params![key, value, index])?;
        }
        Command::Delete { key } => {
            tx.prepare_cached("DELETE FROM settings WHERE key = ?1")?
                .execute(params![key])?;
        }
        Command::Once {
            request_id,
            command,
        } => {
            // One statement both checks and records the id: it inserts only
            // the first time (the whole apply is one transaction).
            let first = tx
                .prepare_cached(
                    "INSERT INTO requests (id, applied_index) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
                )?
                .execute(params![request_id, index])?
                == 1;
            if first {
                apply_command(tx, index, command, cluster_id)?;
                // The job a keyed submission made: an HTTP client's retry
                // with the same Idempotency-Key is answered with it.
                if let Some(id) = command.submitted_ids() {
                    tx.prepare_cached("UPDATE requests SET job = ?2 WHERE id = ?1")?
                        .execute(params![request_id, id])?;
                }
            }
            // Forget ids older than the window, by index (the same on every
            // replica), once every REQUEST_IDS_PRUNE_ENTRIES entries rather
            // than at each write.
            if index.is_multiple_of(REQUEST_IDS_PRUNE_ENTRIES) {
                let horizon = index.saturating_sub(REQUEST_IDS_KEEP_ENTRIES);
                tx.prepare_cached("DELETE FROM requests WHERE applied_index < ?1")?
                    .execute(params![horizon])?;
            }
        }
        // Taken by `StateMachine::apply`; one inside `Once` changes nothing.
        Command::Checkpoint => {}
        Command::SetIncarnation {
            name,
            incarnation,
            reason,
        } => {
            tx.prepare_cached(
                "INSERT INTO incarnations (name, incarnation, reason) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET incarnation = excluded.incarnation, reason = excluded.reason",
            )?
            .execute(params![name, incarnation, reason])?;
        }
        other => apply_job_command(tx, other)?,
    }
    Ok(())
}

fn apply_job_command(tx: &Transaction<'_>, cmd: &Command) -> rusqlite::Result<()> {
    match cmd {
        Command::JobSubmit { id, spec, at_ms } => jobs::submit(tx, id, spec, *at_ms),
        Command::JobAssign { assignments, at_ms } => jobs::assign(tx, assignments, *at_ms),
        Command::JobStarted {
            id,
            instance,
            attempt,
            at_ms,
        } => jobs::started(tx, id, instance, *attempt, *at_ms),
        Command::JobFinished {
            id,
            instance,
            attempt,
            at_ms,
            outcome,
        } => jobs::finished(tx, id, instance, *attempt, *at_ms, outcome),
        Command::JobsFinished {
            instance,
            at_ms,
            ends,
        } => ends
            .iter()
            .try_for_each(|e| jobs::finished(tx, &e.id, instance, e.attempt, *at_ms, &e.outcome)),
        Command::JobRelease {
            attempts,
            reason,
            at_ms,
        } => jobs::release(tx, attempts, reason, *at_ms),
        Command::JobCancel { id, at_ms } => jobs::cancel(tx, id, *at_ms),
        Command::JobRetry { id, at_ms } => jobs::retry(tx, id, *at_ms),
        Command::NodeMode { name, mode } => jobs::set_mode(tx, name, mode),
        Command::ScriptAdd { name, code, at_ms } => jobs::add_script(tx, name, code, *at_ms),
        Command::JobPurge {
            finished_before_ms,
            keep_count,
            batch_max,
        } => jobs::purge(tx, *finished_before_ms, *keep_count, *batch_max),
        Command::ScriptRemove { name } => jobs::remove_script(tx, name),
        Command::JobsSubmit { jobs: list, at_ms } => list
            .iter()
            .try_for_each(|(id, spec)| jobs::submit(tx, id, spec, *at_ms)),
        Command::Placed {
            submission,
            assignments,
            at_ms,
        } => {
            apply_job_command(tx, submission)?;
            jobs::assign(tx, assignments, *at_ms)
        }
        Command::HotfolderPut { def } => hotfolders::put(tx, def),
        Command::HotfolderRemove { name } => hotfolders::remove(tx, name),
        Command::HotfolderPause { name, paused } => hotfolders::set_paused(tx, name, *paused),
        Command::HotfoldersSeed { defs } => hotfolders::seed(tx, defs),
        Command::JobsPublished { ids } => hotfolders::published(tx, ids),
        Command::HotfolderFilesWaiting { counts } => hotfolders::set_files_waiting(tx, counts),
        Command::TokenAdd {
            name,
            role,
            hash,
            at_ms,
        } => tokens::add(tx, name, *role, hash, *at_ms),
        Command::TokenRemove { name } => tokens::remove(tx, name),
        Command::CertRevoke {
            fingerprint,
            name,
            at_ms,
        } => revoked::add(tx, fingerprint, name, *at_ms),
        _ => unreachable!("not a job command: {cmd:?}"),
    }
}

/// The digest of the replicated content seen through `conn` (inside a
/// transaction: with its changes so far) under `cluster_id`.
fn digest_of(conn: &Connection, cluster_id: Option<&str>) -> rusqlite::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(cluster_id.unwrap_or("").as_bytes());
    let mut stmt = conn.prepare_cached("SELECT key, value FROM settings ORDER BY key")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        let value: Vec<u8> = row.get(1)?;
        digest_field(&mut ctx, key.as_bytes());
        digest_field(&mut ctx, &value);
    }
    let mut stmt = conn.prepare_cached("SELECT id, applied_index FROM requests ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let index: u64 = row.get(1)?;
        digest_field(&mut ctx, id.as_bytes());
        ctx.update(&index.to_be_bytes());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name, incarnation, coalesce(reason, '') FROM incarnations ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        for i in 0..3 {
            let text: String = row.get(i)?;
            digest_field(&mut ctx, text.as_bytes());
        }
    }
    jobs::digest(conn, &mut |bytes| digest_field(&mut ctx, bytes))?;
    hotfolders::digest(conn, &mut |bytes| digest_field(&mut ctx, bytes))?;
    tokens::digest(conn, &mut |bytes| digest_field(&mut ctx, bytes))?;
    revoked::digest(conn, &mut |bytes| digest_field(&mut ctx, bytes))?;
    Ok(hex(ctx.finish().as_ref()))
}

/// One length-prefixed field, so that no two different contents digest alike.
fn digest_field(ctx: &mut ring::digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_be_bytes());
    ctx.update(bytes);
}

/// The last digest checkpoint recorded in `conn`'s meta.
fn read_checkpoint(conn: &Connection) -> rusqlite::Result<Option<Checkpoint>> {
    let index = read_meta::<u64>(conn, "checkpoint_index")?;
    let digest = read_meta::<String>(conn, "checkpoint_digest")?;
    Ok(index
        .zip(digest)
        .map(|(index, digest)| Checkpoint { index, digest }))
}

/// The level of a database that records none: it was made by protocol 8,
/// which knew no levels (and so applied everything as level 8 does).
pub const PROTOCOL_LEVEL_DEFAULT: u32 = 8;

/// The cluster's protocol level as this replica holds it: what the commands
/// mean (`Command::SetLevel`).
pub fn protocol_level(conn: &Connection) -> rusqlite::Result<u32> {
    Ok(read_meta::<u32>(conn, "protocol_level")?.unwrap_or(PROTOCOL_LEVEL_DEFAULT))
}

fn read_meta<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> rusqlite::Result<Option<T>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
}

fn write_meta<T: rusqlite::ToSql + ?Sized>(
    tx: &Transaction<'_>,
    key: &str,
    value: &T,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_database_with_schema_objects_of_its_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(StateMachine::open(&path, Sync::Off).unwrap());
        check_schema(&path).unwrap();
        assert!(
            !dir.path().join("state.db.schema").exists(),
            "the fresh copy is removed"
        );
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER evil AFTER INSERT ON settings BEGIN DELETE FROM settings; END;",
        )
        .unwrap();
        let e = check_schema(&path).unwrap_err();
        assert!(e.contains("trigger `evil` that claro does not make"), "{e}");
        conn.execute_batch(
            "DROP TRIGGER evil; DROP TRIGGER job_attempts_purge;
             CREATE TRIGGER job_attempts_purge AFTER DELETE ON jobs BEGIN DELETE FROM settings; END;",
        )
        .unwrap();
        let e = check_schema(&path).unwrap_err();
        assert!(
            e.contains("trigger `job_attempts_purge` is not claro's"),
            "{e}"
        );
        // Names that look like SQLite's own are looked at too.
        conn.execute_batch(
            "DROP TRIGGER job_attempts_purge;
             CREATE TRIGGER SQLITEXevil AFTER INSERT ON settings BEGIN DELETE FROM settings; END;",
        )
        .unwrap();
        let e = check_schema(&path).unwrap_err();
        assert!(e.contains("trigger `SQLITEXevil`"), "{e}");
        // A table of claro's with a constraint of its own.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("state.db");
        let conn2 = Connection::open(&path2).unwrap();
        conn2
            .execute_batch("CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB CHECK (length(value) < 0), updated_index INTEGER)")
            .unwrap();
        let e = check_schema(&path2).unwrap_err();
        assert!(e.contains("table `settings` is not claro's"), "{e}");
    }

    use super::*;

    /// A database received from a peer is checked before it is installed:
    /// a copy made as the coordinator makes one passes; the same copy with
    /// bytes of another file in its middle (what a transfer resumed onto a
    /// partial file of another database would leave) is refused, and the
    /// file is left as it was. Once, the fault campaign saw an instance stop
    /// on installing a malformed database after a resumed transfer.
    #[test]
    fn a_received_database_is_checked_before_it_is_installed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Normal).unwrap();
        let puts: Vec<Command> = (0..2000)
            .map(|i| Command::Put {
                key: format!("k{i}"),
                value: vec![b'x'; 500],
            })
            .collect();
        let batch: Vec<_> = (1..)
            .zip(&puts)
            .map(|(i, c)| (i, 1, Change::Command(c)))
            .collect();
        sm.apply(&batch).unwrap();
        let copy = tmp.path().join("snap-2000-1.db");
        {
            let from = Connection::open_with_flags(
                tmp.path().join("state.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let mut to = Connection::open(&copy).unwrap();
            rusqlite::backup::Backup::new(&from, &mut to)
                .unwrap()
                .step(-1)
                .unwrap();
        }
        check_file(&copy).unwrap();
        let good = std::fs::read(&copy).unwrap();
        let mut bad = good.clone();
        let middle = bad.len() / 2;
        bad[middle..middle + 8192].fill(0x5a);
        std::fs::write(&copy, &bad).unwrap();
        assert!(check_file(&copy).is_err(), "a damaged copy is refused");
        assert_eq!(std::fs::read(&copy).unwrap(), bad, "and left as it was");
        assert!(check_file(&tmp.path().join("missing.db")).is_err());
    }

    #[test]
    fn list_pages_are_bounded_in_count_and_bytes_and_resume_after_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Normal).unwrap();
        let puts: Vec<Command> = [("a", 10), ("b", 10), ("c", 30), ("d", 10)]
            .iter()
            .map(|(k, n)| Command::Put {
                key: k.to_string(),
                value: vec![b'x'; *n],
            })
            .collect();
        let batch: Vec<_> = (1..)
            .zip(&puts)
            .map(|(i, c)| (i, 1, Change::Command(c)))
            .collect();
        sm.apply(&batch).unwrap();
        let keys = |page: ListPage| {
            let keys: Vec<String> = page.items.into_iter().map(|(k, _)| k).collect();
            (keys.join(","), page.more)
        };
        assert_eq!(
            keys(sm.list_page(None, 10, 1000).unwrap()),
            ("a,b,c,d".into(), false)
        );
        assert_eq!(
            keys(sm.list_page(None, 2, 1000).unwrap()),
            ("a,b".into(), true)
        );
        assert_eq!(
            keys(sm.list_page(Some("b"), 2, 1000).unwrap()),
            ("c,d".into(), false)
        );
        // 11 + 11 bytes fit in 25, the third (31) does not.
        assert_eq!(
            keys(sm.list_page(None, 10, 25).unwrap()),
            ("a,b".into(), true)
        );
        // The first setting left is always listed, however small the budget.
        assert_eq!(
            keys(sm.list_page(Some("b"), 10, 5).unwrap()),
            ("c".into(), true)
        );
        // `after` need not be a key; past the last, the page is empty.
        assert_eq!(
            keys(sm.list_page(Some("bb"), 10, 1000).unwrap()),
            ("c,d".into(), false)
        );
        assert_eq!(
            keys(sm.list_page(Some("d"), 10, 1000).unwrap()),
            ("".into(), false)
        );
        // Exactly `count_max` left: no further page is announced.
        assert!(!sm.list_page(Some("b"), 2, 1000).unwrap().more);
    }

    #[test]
    fn checkpoint_reports_incomplete_while_a_reader_holds_old_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        let put = |k: &str| Command::Put {
            key: k.into(),
            value: vec![1; 100],
        };
        sm.apply(&[(1, 1, Change::Command(&put("a")))]).unwrap();
        assert!(sm.checkpoint().unwrap());
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM settings;")
            .unwrap();
        sm.apply(&[(2, 1, Change::Command(&put("b")))]).unwrap();
        assert!(
            !sm.checkpoint().unwrap(),
            "frames newer than the reader's snapshot cannot be copied"
        );
        reader.execute_batch("COMMIT;").unwrap();
        assert!(sm.checkpoint().unwrap());
    }

    /// Another program writing to state.db (an operator's sqlite3, or the
    /// damage tests) is waited for, not taken for damage: an apply whose
    /// first statement reads (a checkpoint's digest) must not find its
    /// snapshot stale when it comes to write (SQLITE_BUSY_SNAPSHOT).
    #[test]
    fn an_apply_waits_for_another_writer_instead_of_failing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        let put = |k: &str| Command::Put {
            key: k.into(),
            value: vec![1; 10],
        };
        sm.apply(&[(1, 1, Change::Command(&put("a")))]).unwrap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let other_path = path.clone();
        let other = std::thread::spawn(move || {
            let conn = Connection::open(&other_path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE; UPDATE settings SET value = x'00';")
                .unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            conn.execute_batch("COMMIT;").unwrap();
        });
        locked_rx.recv().unwrap();
        let batch = [
            (2, 1, Change::Command(&Command::Checkpoint)),
            (3, 1, Change::Command(&put("b"))),
        ];
        sm.apply(&batch)
            .expect("the apply waits for the other writer");
        other.join().unwrap();
        assert_eq!(sm.applied_index(), 3);
    }

    /// The job feed records each job's changes in order, also those no
    /// command names one by one, and is not part of the digest.
    #[test]
    fn the_job_feed_holds_every_applied_change_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Off).unwrap();
        let submit = Command::JobSubmit {
            id: "j1".into(),
            spec: crate::work::jobs::JobSpec::script("1"),
            at_ms: 5,
        };
        let cancel = Command::JobCancel {
            id: "j1".into(),
            at_ms: 6,
        };
        sm.apply(&[(1, 1, Change::Command(&submit))]).unwrap();
        sm.apply(&[(2, 1, Change::Command(&cancel))]).unwrap();
        let feed = job_events::after(&sm.conn, 0, 10).unwrap();
        let states: Vec<(&str, &str)> = feed
            .iter()
            .map(|e| (e.id.as_str(), e.state.as_str()))
            .collect();
        assert_eq!(states, [("j1", "queued"), ("j1", "cancelled")]);
        assert_eq!(job_events::after(&sm.conn, 1, 10).unwrap().len(), 1);
        assert_eq!(job_events::last(&sm.conn).unwrap(), 2);
        // The feed is no replicated state: emptied, the digest is the same.
        let with_feed = digest_of(&sm.conn, None).unwrap();
        sm.conn
            .execute_batch("DELETE FROM temp.job_events")
            .unwrap();
        assert_eq!(digest_of(&sm.conn, None).unwrap(), with_feed);
    }

    #[test]
    fn a_request_id_is_applied_once_and_forgotten_after_the_window() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Off).unwrap();
        let once = |v: u8| Command::Once {
            request_id: "r1".into(),
            command: Box::new(Command::Put {
                key: "k".into(),
                value: vec![v],
            }),
        };
        sm.apply(&[(1, 1, Change::Command(&once(1)))]).unwrap();
        let other = Command::Put {
            key: "k".into(),
            value: vec![2],
        };
        sm.apply(&[(2, 1, Change::Command(&other))]).unwrap();
        // The retry of r1 must not overwrite the later write.
        sm.apply(&[(3, 1, Change::Command(&once(1)))]).unwrap();
        assert_eq!(sm.get("k").unwrap(), Some(vec![2]));
        assert_eq!(sm.request_index("r1").unwrap(), Some(1));
        // Far beyond the window, another id's apply prunes r1.
        // The first pruning index past the window.
        let late =
            (REQUEST_IDS_KEEP_ENTRIES / REQUEST_IDS_PRUNE_ENTRIES + 1) * REQUEST_IDS_PRUNE_ENTRIES;
        let batch: Vec<(u64, u64, Change<'_>)> = (4..late).map(|i| (i, 1, Change::Empty)).collect();
        sm.apply(&batch).unwrap();
        let r2 = Command::Once {
            request_id: "r2".into(),
            command: Box::new(other.clone()),
        };
        sm.apply(&[(late, 1, Change::Command(&r2))]).unwrap();
        assert_eq!(sm.request_index("r1").unwrap(), None);
        assert_eq!(sm.request_index("r2").unwrap(), Some(late));
    }

    #[test]
    fn request_ids_are_validated() {
        let put = Command::Put {
            key: "k".into(),
            value: vec![],
        };
        let once = |id: &str, c: Command| Command::Once {
            request_id: id.into(),
            command: Box::new(c),
        };
        assert!(once("", put.clone()).validate().is_err());
        assert!(once(&"x".repeat(REQUEST_ID_BYTES_MAX + 1), put.clone())
            .validate()
            .is_err());
        assert!(once("a", once("b", put.clone())).validate().is_err());
        assert!(once("a", put).validate().is_ok());
    }

    #[test]
    fn install_refuses_a_missing_file_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Off).unwrap();
        let missing = tmp.path().join("snap-5-1.db");
        assert!(sm.install(&missing, 5).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn an_incarnation_is_recorded_replaced_and_part_of_the_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Off).unwrap();
        let set = |inc: &str, reason: Option<&str>| Command::SetIncarnation {
            name: "srv3".into(),
            incarnation: inc.into(),
            reason: reason.map(str::to_string),
        };
        assert_eq!(sm.incarnation("srv3").unwrap(), None);
        let before = sm.digest().unwrap();
        sm.apply(&[(1, 1, Change::Command(&set("a", None)))])
            .unwrap();
        assert_eq!(sm.incarnation("srv3").unwrap(), Some(("a".into(), None)));
        let first = sm.digest().unwrap();
        assert_ne!(before, first);
        sm.apply(&[(2, 1, Change::Command(&set("b", Some("new data directory"))))])
            .unwrap();
        assert_eq!(
            sm.incarnation("srv3").unwrap(),
            Some(("b".into(), Some("new data directory".into())))
        );
        assert_ne!(sm.digest().unwrap(), first);
        let long = "x".repeat(INCARNATION_REASON_BYTES_MAX + 1);
        assert!(set("c", Some(&long)).validate().is_err());
        assert!(set("", None).validate().is_err());
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_checkpoint_in_the_middle_of_a_batch_digests_the_state_at_its_index() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        let (a, b) = (put("a", "1"), put("b", "2"));
        let cp = Command::Checkpoint;
        let batch = [
            (1, 1, Change::Command(&a)),
            (2, 1, Change::Command(&cp)),
            (3, 1, Change::Command(&b)),
        ];
        sm.apply(&batch).unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut one_by_one = StateMachine::open(&other.path().join("state.db"), Sync::Off).unwrap();
        one_by_one.apply(&[(1, 1, Change::Command(&a))]).unwrap();
        let at_2 = one_by_one.digest().unwrap();
        assert_eq!(
            sm.checkpoints(),
            vec![Checkpoint {
                index: 2,
                digest: at_2
            }]
        );
        drop(sm);
        // Kept across a restart; at rest it is only comparable at its index.
        let sm = StateMachine::open(&path, Sync::Normal).unwrap();
        assert_eq!(sm.checkpoints().len(), 1);
        assert_eq!(StateMachine::verify_at_rest(&path).unwrap(), None);
    }

    #[test]
    fn a_value_changed_outside_claro_differs_from_the_checkpoint_at_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        let (a, cp) = (put("colour", "RED"), Command::Checkpoint);
        sm.apply(&[(1, 1, Change::Command(&a)), (2, 1, Change::Command(&cp))])
            .unwrap();
        drop(sm);
        assert_eq!(StateMachine::verify_at_rest(&path).unwrap(), None);
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE settings SET value = x'424c5545'", [])
            .unwrap();
        drop(conn);
        let found = StateMachine::verify_at_rest(&path).unwrap();
        assert!(found.is_some_and(|w| w.contains("index 2")));
    }

    #[test]
    fn a_new_cluster_id_retakes_the_checkpoint_so_the_at_rest_check_still_passes() {
        // `claro restore` and `--force-bootstrap` give the database a new
        // id; a backup taken right at a checkpoint once started as
        // "changed outside claro" and was set aside as damaged.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.db");
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        let (a, cp) = (put("colour", "RED"), Command::Checkpoint);
        sm.apply(&[(1, 1, Change::Command(&a)), (2, 1, Change::Command(&cp))])
            .unwrap();
        sm.set_cluster_id("forked").unwrap();
        let retaken = sm.checkpoints();
        assert_eq!(retaken.len(), 1);
        assert_eq!(retaken[0].digest, sm.digest().unwrap());
        drop(sm);
        assert_eq!(StateMachine::verify_at_rest(&path).unwrap(), None);
        // A checkpoint behind the applied index is of the old cluster: gone.
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        sm.apply(&[(3, 1, Change::Command(&a))]).unwrap();
        sm.set_cluster_id("forked again").unwrap();
        assert!(sm.checkpoints().is_empty());
        drop(sm);
        let sm = StateMachine::open(&path, Sync::Normal).unwrap();
        assert!(sm.checkpoints().is_empty());
    }

    #[test]
    fn only_the_latest_checkpoints_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&tmp.path().join("state.db"), Sync::Off).unwrap();
        let cp = Command::Checkpoint;
        for i in 1..=(CHECKPOINTS_KEPT as u64 + 3) {
            sm.apply(&[(i, 1, Change::Command(&cp))]).unwrap();
        }
        let kept: Vec<u64> = sm.checkpoints().iter().map(|c| c.index).collect();
        assert_eq!(kept, (4..=CHECKPOINTS_KEPT as u64 + 3).collect::<Vec<_>>());
    }
}
