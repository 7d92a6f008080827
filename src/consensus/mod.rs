//! The consensus core: raft-rs's `RawNode` over our SQLite storage, and the
//! replicated state machine, driven by events with no I/O of its own besides the
//! two database files.
//!
//! The async shell (`node`) and the deterministic simulation (`tests/sim.rs`)
//! both drive this same struct: they feed it ticks, inbound messages and
//! proposals, call [`Core::pump`], and carry out the returned [`Output`]s
//! (send a message, stream a snapshot file, answer a waiting client). It never
//! reads a clock, opens a socket, or decides anything about discovery.
//!
//! The Ready cycle follows raft-rs's contract: messages a leader may send early
//! go out first; a received snapshot is installed; committed entries are applied
//! in order; new entries and the hard state are made durable in one transaction;
//! only then are the messages that depend on them released.
//!
//! For the simulation, a cycle has crash points between its I/O steps
//! ([`CrashPoint`]) where a test's hook may stop it as a crash would, and a
//! test may switch on a [`Mutation`] that breaks a guarantee on purpose, to
//! show the simulation notices; production sets neither.

pub mod check;
pub mod guard;
pub mod log_store;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};

use crate::state::{self, Change, Command, StateMachine};
use log_store::LogStore;

/// Tuning of one core, in ticks (the shell decides how long a tick is).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub id: u64,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
    /// Upper bound (exclusive) of the randomized election timeout. The simulation
    /// sets it to `election_ticks + 1`: raft-rs draws the timeout from an OS-seeded
    /// RNG, so a fixed timeout (and seeded tick jitter) keeps runs replayable.
    pub election_ticks_max: usize,
    /// A witness votes and holds the database but never campaigns.
    pub witness: bool,
    /// Ids of all witnesses: never chosen for a leadership transfer.
    pub witnesses: HashSet<u64>,
    /// fsync the Raft log (production) or not (simulation).
    pub durable: bool,
    /// Entries kept behind the applied index when the log is compacted; a peer
    /// further behind receives the database instead.
    pub log_keep_entries: u64,
    /// Largest append message, bytes.
    pub msg_bytes_max: u64,
    /// Most voters the leader promotes learners up to (`VOTERS_MAX` in
    /// production): the rest stay non-voting members.
    pub voters_max: usize,
    /// The servers that may vote, in the configuration's order: a learner
    /// outside it (`vote = false`) is never promoted.
    pub voter_rank: Vec<u64>,
}

/// Most voters a cluster has: every commit and election waits on a majority
/// of them, so more voters cost latency and tolerate no more than two lost
/// at once (with five). Further servers are non-voting members.
pub const VOTERS_MAX: usize = 5;

/// The learner to promote to voter, if any: while there are fewer than
/// `max` voters, the first of `rank` (the servers that may vote, in the
/// configuration's order) among the learners that are caught up.
pub fn promotion(cs: &ConfState, caught_up: &[u64], rank: &[u64], max: usize) -> Option<u64> {
    if cs.voters.len() >= max {
        return None;
    }
    rank.iter()
        .copied()
        .find(|id| cs.learners.contains(id) && caught_up.contains(id))
}

/// Fewest voters a demotion of a server that may not vote leaves: a
/// majority of three survives the loss of one.
pub const VOTERS_KEPT_MIN: usize = 3;

/// The voter a leader makes a non-voting member now, if any (one at a
/// time, each a simple membership change): any voter while more than
/// `max` vote (a cluster made by a version without the limit, or promoted
/// by one during a rolling upgrade), and a voter outside `rank` (a server
/// set to `vote = false`) while more than `VOTERS_KEPT_MIN` vote.
///
/// Which one: a voter not heard from lately (outside `active`) first (its
/// loss no longer counts against the majority), then one outside `rank`,
/// then the last in `rank` order, a witness last (it is there to vote).
/// None when the active voters left would not be a majority of the voters
/// left: a demotion never stalls the cluster. It may be the leader itself,
/// which then hands its role on first (`leader_duties`). Never the
/// reverse of a promotion: `promotion` stops below `max`, and never
/// promotes outside `rank`.
pub fn demotion(
    cs: &ConfState,
    rank: &[u64],
    max: usize,
    witnesses: &HashSet<u64>,
    active: &[u64],
) -> Option<u64> {
    let count = cs.voters.len();
    let position = |id: &u64| rank.iter().position(|r| r == id);
    let surplus = count > max;
    let eligible = |id: &&u64| surplus || (position(id).is_none() && count > VOTERS_KEPT_MIN);
    let pick = cs
        .voters
        .iter()
        .filter(eligible)
        .max_by_key(|id| {
            let pos = position(id);
            let kept_last = (pos.is_none(), !witnesses.contains(id), pos, **id);
            (!active.contains(id), kept_last)
        })
        .copied()?;
    let active_left = cs
        .voters
        .iter()
        .filter(|v| **v != pick && active.contains(v))
        .count();
    (active_left > (count - 1) / 2).then_some(pick)
}

/// What the shell must carry out after [`Core::pump`].
#[derive(Debug)]
pub enum Output {
    Send(Message),
    /// A `MsgSnapshot`: the state file must reach `msg.to` (into its incoming
    /// folder, verified) before the message is stepped there.
    SendSnapshot {
        msg: Message,
        file: PathBuf,
        meta: SnapshotFile,
    },
    /// An entry was applied; `context` is the proposer's tag (empty for none).
    Applied {
        index: u64,
        term: u64,
        context: Vec<u8>,
        digest: u64,
    },
    /// This instance was removed from the membership.
    Removed,
    /// A read index request tagged `context` is confirmed: a read that waits
    /// until `index` is applied here sees every write acknowledged before it.
    ReadReady {
        context: Vec<u8>,
        index: u64,
    },
    /// Raft needs a database copy for a peer: run the job (off the raft loop)
    /// and hand its result to [`Core::offer_snapshot`].
    MakeSnapshot(SnapshotJob),
}

/// What a Raft snapshot's data carries: which file, how big, its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub file_name: String,
    pub size_bytes: u64,
    pub sha256: String,
}

impl SnapshotFile {
    pub fn decode(data: &[u8]) -> Result<SnapshotFile, String> {
        ciborium::from_reader(data).map_err(|e| format!("snapshot descriptor: {e}"))
    }
}

/// A point between the I/O steps of a Ready cycle where a test may crash the
/// instance (see [`Core::inject_faults`]): in production no hook is set and
/// these points cost one branch each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Messages were handed to the network; this cycle's entries and hard
    /// state are not durable yet.
    Sent,
    /// Entries and hard state are durable; the acknowledgments that depend on
    /// them are not sent and newly committed entries are not applied.
    Persisted,
    /// A batch of committed entries is applied (its transaction committed);
    /// its proposers are not answered yet.
    Applied,
}

/// Asked at every [`CrashPoint`]; `true` crashes the instance there.
pub type CrashHook = Box<dyn FnMut(CrashPoint) -> bool + Send>;

/// Test-only fault injection: a deliberate break of a guarantee, so that the
/// simulation can show it notices ("check the checker"). Never set in
/// production.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// A follower sends its acknowledgments (raft's persisted messages) before
    /// its entries and hard state are durable.
    AckBeforePersist,
    /// Proposers are answered (`Output::Applied`) before the entry is applied
    /// to state.db.
    AnswerBeforeApply,
    /// A read index is answered at once with this instance's own commit
    /// index, without the coordinator confirming it still leads.
    ReadWithoutQuorum,
    /// The hard state is written without its vote: the term is durable but
    /// whom this instance voted for in it is not, so after a restart it may
    /// vote again in the same term.
    ForgetVote,
}

#[derive(Debug)]
pub enum CoreError {
    Db(rusqlite::Error),
    Raft(raft::Error),
    Snapshot(String),
    /// A crash hook fired: the caller must drop the core now, as if the
    /// process died there (the databases hold only committed transactions).
    Crashed(CrashPoint),
    /// A peer's message that failed [`guard::check`]; nothing changed.
    Refused(String),
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::Db(e) => write!(f, "database: {e}"),
            CoreError::Raft(e) => write!(f, "raft: {e}"),
            CoreError::Snapshot(e) => write!(f, "snapshot: {e}"),
            CoreError::Crashed(p) => write!(f, "crash injected at {p:?}"),
            CoreError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}
impl std::error::Error for CoreError {}
impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::Db(e)
    }
}
impl From<raft::Error> for CoreError {
    fn from(e: raft::Error) -> Self {
        CoreError::Raft(e)
    }
}

/// Log writes of a core that are not durable yet: [`SyncTicket::sync`]
/// makes them so, then [`Core::synced`] lets what waited for them go.
pub struct SyncTicket {
    core: u64,
    number: u64,
    wal: Option<std::sync::Arc<std::fs::File>>,
}

impl SyncTicket {
    /// fsyncs the log (nothing with a log that is not synced, `durable =
    /// false`). Takes no lock: run it where waiting blocks nobody.
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.wal {
            Some(wal) => wal.sync_data(),
            None => Ok(()),
        }
    }
}

/// What waits for the log to be durable: up to Ready `number`, the
/// messages raft releases only then.
struct Unsynced {
    number: u64,
    messages: Vec<Message>,
    since: std::time::Instant,
}

/// Rounds of write and sync one [`Core::pump`] runs at most (each one's
/// acknowledgments may make raft commit more, and a round after that apply
/// it): far above what one call needs.
const PUMP_SYNCS_MAX: usize = 64;

/// Tells cores apart, so that a ticket of a replaced core is not taken.
static CORE_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub use log_store::sync_error;

pub struct Core {
    node: RawNode<LogStore>,
    state: StateMachine,
    dir: PathBuf,
    cfg: CoreConfig,
    /// A member (voter or learner) as of the last applied conf state.
    member: bool,
    /// A [`SnapshotJob`] was handed out and has not come back yet.
    snapshot_in_flight: bool,
    /// Test-only: see [`Core::inject_faults`].
    crash_hook: Option<CrashHook>,
    mutation: Option<Mutation>,
    /// Reads answered locally under `Mutation::ReadWithoutQuorum`.
    pending_local_reads: Vec<(Vec<u8>, u64)>,
    /// Data loss seen by the guard: ours, and (as leader) our followers'.
    losses: Losses,
    /// How long log writes (with their fsync) and applies took: measured
    /// for /metrics, never used to decide anything.
    pub latency: StorageLatency,
    /// Log writes not yet synced, and what waits for them.
    unsynced: Option<Unsynced>,
    serial: u64,
}

/// Upper bounds of the storage latency histograms, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Latency of the two writes of a Ready cycle.
#[derive(Debug, Clone)]
pub struct StorageLatency {
    /// Appending entries and the hard state to the log until they are
    /// durable: from the first write of a batch to its fsync's end.
    pub persist_us: crate::histogram::Histogram,
    /// Applying committed entries to state.db (one transaction).
    pub apply_us: crate::histogram::Histogram,
}

impl Default for StorageLatency {
    fn default() -> StorageLatency {
        StorageLatency {
            persist_us: crate::histogram::Histogram::new(&LATENCY_BUCKETS_US),
            apply_us: crate::histogram::Histogram::new(&LATENCY_BUCKETS_US),
        }
    }
}

/// A server holds less than it acknowledged: its log ends at `holds`, but it
/// had acknowledged entries up to `acknowledged` (a wiped data directory, or
/// one restored from an older copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostData {
    pub acknowledged: u64,
    pub holds: u64,
}

#[derive(Debug, Default)]
struct Losses {
    /// This instance's, until its commit index passes what it had acknowledged.
    own: Option<LostData>,
    /// Followers that reported a loss, for the shell to re-add.
    members: BTreeMap<u64, LostData>,
    /// Lost-data reports to send to the leader at the next pump.
    reports: Vec<Message>,
    /// Messages refused so far (warnings are logged at powers of two).
    refused: u64,
}

pub fn raft_db(dir: &Path) -> PathBuf {
    dir.join("raft.db")
}
pub fn state_db(dir: &Path) -> PathBuf {
    dir.join("state.db")
}
pub fn incoming_dir(dir: &Path) -> PathBuf {
    dir.join("incoming")
}
fn snapshots_dir(dir: &Path) -> PathBuf {
    dir.join("snapshots")
}

fn syncs(durable: bool) -> (log_store::Sync, state::Sync) {
    if durable {
        (log_store::Sync::Full, state::Sync::Normal)
    } else {
        (log_store::Sync::Off, state::Sync::Off)
    }
}

/// Creates a new one-voter cluster in `dir`: state.db at index 1 holding the
/// cluster id and the conf state, and a log that starts after index 1 — so
/// every later joiner is sent the database rather than a replay of the log.
pub fn bootstrap(dir: &Path, id: u64, cluster_id: &str, durable: bool) -> Result<(), CoreError> {
    bootstrap_voters(dir, &[id], cluster_id, durable)
}

/// Creates a new cluster with `voters` as its initial voters: the same
/// state.db at index 1 (cluster id and conf state) on every one of them, so
/// that each can create it on its own (bootstrapper and adopters alike).
pub fn bootstrap_voters(
    dir: &Path,
    voters: &[u64],
    cluster_id: &str,
    durable: bool,
) -> Result<(), CoreError> {
    assert!(!voters.is_empty(), "a cluster needs a voter");
    let mut voters = voters.to_vec();
    voters.sort_unstable();
    std::fs::create_dir_all(dir).map_err(|e| CoreError::Snapshot(e.to_string()))?;
    let (log_sync, state_sync) = syncs(durable);
    let mut sm = StateMachine::open(&state_db(dir), state_sync)?;
    assert_eq!(sm.applied_index(), 0, "bootstrap over an existing state");
    let cs = ConfState {
        voters,
        ..Default::default()
    };
    let cmd = Command::SetCluster {
        cluster_id: cluster_id.to_string(),
    };
    // Conf state first: a crash before the apply leaves applied index 0, a
    // fresh instance that bootstraps again; after it, a member.
    sm.set_conf_state(&cs)?;
    sm.apply(&[(1, 1, Change::Command(&cmd))])?;
    let mut log = LogStore::open(&raft_db(dir), log_sync)?;
    log.apply_snapshot(&snapshot_meta(1, 1, cs))?;
    Ok(())
}

/// Starts a new one-voter cluster from an existing state.db (an operator's
/// `--force-bootstrap`): the data is kept, the log restarts after the applied
/// index, and the cluster gets `cluster_id`, a new id: servers of the old
/// cluster, which may hold newer data, refuse it rather than mix histories.
pub fn rebootstrap(dir: &Path, id: u64, cluster_id: &str, durable: bool) -> Result<(), CoreError> {
    let (log_sync, state_sync) = syncs(durable);
    let mut sm = StateMachine::open(&state_db(dir), state_sync)?;
    sm.set_cluster_id(cluster_id)?;
    let cs = ConfState {
        voters: vec![id],
        ..Default::default()
    };
    sm.set_conf_state(&cs)?;
    let term = sm.applied_term().max(1);
    let mut log = LogStore::open(&raft_db(dir), log_sync)?;
    let mut meta = snapshot_meta(sm.applied_index(), term, cs);
    meta.term = meta.term.max(log.hard_state().term);
    log.apply_snapshot(&meta)?;
    Ok(())
}

fn snapshot_meta(index: u64, term: u64, cs: ConfState) -> raft::eraftpb::SnapshotMetadata {
    let mut meta = raft::eraftpb::SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    meta.set_conf_state(cs);
    meta
}

impl Core {
    /// Opens (or creates empty) the databases in `dir` and starts raft on them.
    pub fn open(dir: &Path, cfg: CoreConfig, logger: &slog::Logger) -> Result<Core, CoreError> {
        std::fs::create_dir_all(incoming_dir(dir))
            .map_err(|e| CoreError::Snapshot(e.to_string()))?;
        std::fs::create_dir_all(snapshots_dir(dir))
            .map_err(|e| CoreError::Snapshot(e.to_string()))?;
        let (log_sync, state_sync) = syncs(cfg.durable);
        let state = StateMachine::open(&state_db(dir), state_sync)?;
        let mut log = LogStore::open(&raft_db(dir), log_sync)?;
        let applied = state.applied_index();
        // A crash after a snapshot was installed into state.db but before the log
        // was reset leaves state ahead of the log: restart the log there.
        // Likewise when the log holds, at the applied index, an entry of another
        // term than the one state.db applied there (a divergent tail the
        // snapshot replaced).
        let diverged = applied > 0
            && applied <= log.last()
            && raft::Storage::term(&log, applied).ok() != Some(state.applied_term());
        if applied + 1 < log.first() {
            return Err(CoreError::Snapshot(format!(
                "state.db is at index {applied} but the Raft log starts at {}: the database is older than the log (restore it or remove this instance's data directory to receive the coordinator's database)",
                log.first()
            )));
        }
        if applied > log.last() || diverged {
            let meta = snapshot_meta(applied, state.applied_term(), state.conf_state().clone());
            log.apply_snapshot(&meta)?;
        }
        log.set_conf_state(state.conf_state().clone());
        log.raise_commit(applied);
        let raft_cfg = raft_config(&cfg, applied);
        let node = RawNode::new(&raft_cfg, log, logger)?;
        let mut core = Core {
            node,
            state,
            dir: dir.to_path_buf(),
            cfg,
            member: false,
            snapshot_in_flight: false,
            crash_hook: None,
            mutation: None,
            pending_local_reads: Vec::new(),
            losses: Losses::default(),
            latency: StorageLatency::default(),
            unsynced: None,
            serial: CORE_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        core.member = core.is_member();
        Ok(core)
    }

    pub fn state(&self) -> &StateMachine {
        &self.state
    }
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }
    /// The leader this instance knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        let id = self.node.raft.leader_id;
        (id != raft::INVALID_ID).then_some(id)
    }
    /// The leader's commit index is final: it has committed an entry of its
    /// own term (before that, entries of earlier terms it holds may still
    /// commit, and its commit index can lag what the cluster acknowledged).
    pub fn committed_in_term(&self) -> bool {
        self.node.raft.commit_to_current_term()
    }
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }
    /// This instance's Raft id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index()
    }
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }
    /// Whom this instance voted for in its current term (0: nobody).
    pub fn vote(&self) -> u64 {
        self.node.raft.vote
    }
    /// The term of the entry at `index` in this instance's log, if it holds
    /// that entry (not compacted away, not past its end).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.node
            .raft
            .raft_log
            .term(index)
            .ok()
            .filter(|_| index <= self.last_index())
    }
    pub fn conf_state(&self) -> &ConfState {
        self.state.conf_state()
    }
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf_state().voters.contains(&id)
    }
    pub fn is_learner(&self, id: u64) -> bool {
        self.conf_state().learners.contains(&id)
    }
    /// This instance is a non-voting member: a learner that holds what it
    /// knows is committed and will not be promoted (the cluster has its
    /// most voters, or this server may not vote). A learner that will be
    /// promoted is still joining.
    pub fn is_non_voter(&self) -> bool {
        let me = self.cfg.id;
        let stays = self.conf_state().voters.len() >= self.cfg.voters_max
            || !self.cfg.voter_rank.contains(&me);
        let commit = self.commit_index();
        self.is_learner(me) && stays && commit > 0 && self.applied_index() >= commit
    }
    /// The leader's view of a peer's replication: (matched index, recently active).
    pub fn progress(&self, id: u64) -> Option<(u64, bool)> {
        if !self.is_leader() {
            return None;
        }
        self.node
            .raft
            .prs()
            .get(id)
            .map(|p| (p.matched, p.recent_active))
    }

    /// The leader's replication progress of every peer, for diagnostics.
    pub fn progress_report(&self) -> String {
        let mut ids: Vec<u64> = self.node.raft.prs().iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| {
                self.node
                    .raft
                    .prs()
                    .get(*id)
                    .map(|p| format!("{id}:{:?}/{}/{}", p.state, p.matched, p.next_idx))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn tick(&mut self) {
        self.node.tick();
        if self.is_leader() {
            self.leader_duties();
        }
    }

    /// Steps a message that came from the network. It is checked first
    /// ([`guard::check`]): what would make raft-rs panic is refused, and a
    /// sign of lost data is handled here. Local-only message types and
    /// messages from unknown peers are refused by raft-rs with an error.
    pub fn step(&mut self, msg: Message) -> Result<(), CoreError> {
        match guard::check(&msg, &self.guard_facts(&msg)) {
            guard::Verdict::Step => self.node.step(msg).map_err(CoreError::Raft),
            guard::Verdict::Refuse(reason) => {
                self.losses.refused += 1;
                let n = self.losses.refused;
                if n.is_power_of_two() {
                    tracing::warn!(
                        from = msg.from,
                        refused = n,
                        "raft message refused: {reason}"
                    );
                }
                Err(CoreError::Refused(reason))
            }
            guard::Verdict::OwnDataLost { claimed, holds } => self.own_data_lost(
                msg,
                LostData {
                    acknowledged: claimed,
                    holds,
                },
            ),
            guard::Verdict::PeerDataLost {
                acknowledged,
                holds,
            } => {
                let lost = LostData {
                    acknowledged,
                    holds,
                };
                self.peer_data_lost(msg.from, lost, msg.commit);
                Ok(())
            }
        }
    }

    fn guard_facts(&self, m: &Message) -> guard::Facts {
        let log = &self.node.raft.raft_log;
        guard::Facts {
            id: self.cfg.id,
            term: self.term(),
            leader: self.is_leader(),
            last_index: log.last_index(),
            committed: log.committed,
            sender_matched: self.node.raft.prs().get(m.from).map(|p| p.matched),
            unfit_to_vote: self.applied_index() == 0 || self.losses.own.is_some(),
        }
    }

    /// The leader's heartbeat claims entries we do not hold: step it without
    /// its commit (which would point past our log), and report where our log
    /// ends so that the leader sends what we miss.
    fn own_data_lost(&mut self, mut msg: Message, lost: LostData) -> Result<(), CoreError> {
        let leader = msg.from;
        msg.commit = msg.commit.min(self.commit_index());
        self.node.step(msg).map_err(CoreError::Raft)?;
        if self.losses.own != Some(lost) {
            tracing::warn!(
                acknowledged = lost.acknowledged,
                holds = lost.holds,
                "the coordinator counts entries this instance no longer holds: its data directory was lost or restored from an older copy; reporting it"
            );
        }
        self.losses.own = Some(lost);
        let f = self.guard_facts(&Message::default());
        let holds_term = self.node.raft.raft_log.term(f.last_index).unwrap_or(0);
        let report = guard::lost_data_report(&f, leader, lost.acknowledged, holds_term);
        self.losses.reports.push(report);
        Ok(())
    }

    /// A follower lost entries it had acknowledged: count only what it still
    /// holds and had committed, probe it from there (raft-rs would ignore its
    /// rejections as stale), and remember it for the shell to re-add.
    fn peer_data_lost(&mut self, id: u64, lost: LostData, its_commit: u64) {
        let Some(pr) = self.node.raft.mut_prs().get_mut(id) else {
            return;
        };
        pr.matched = pr.matched.min(lost.holds).min(its_commit);
        pr.become_probe();
        if self.losses.members.insert(id, lost) != Some(lost) {
            tracing::warn!(
                peer = id,
                acknowledged = lost.acknowledged,
                holds = lost.holds,
                "a member lost entries it had acknowledged: it is sent what it misses"
            );
        }
    }

    /// Members that reported lost data since the last call (leader only).
    pub fn take_lost_members(&mut self) -> Vec<(u64, LostData)> {
        std::mem::take(&mut self.losses.members)
            .into_iter()
            .collect()
    }

    /// This instance's own loss, until it has caught up past it.
    pub fn own_loss(&self) -> Option<LostData> {
        self.losses.own
    }

    /// Proposes a command; `context` tags it so the proposer can be answered
    /// when it is applied. Only the leader accepts proposals.
    pub fn propose(&mut self, context: Vec<u8>, cmd: &Command) -> Result<(), String> {
        cmd.validate()?;
        if !self.is_leader() {
            return Err("not the coordinator".into());
        }
        self.node
            .propose(context, cmd.encode())
            .map_err(|e| e.to_string())
    }

    /// Proposes a membership change (one at a time: raft-rs drops a second one
    /// proposed while the first is pending, so callers retry).
    pub fn propose_conf_change(&mut self, kind: ConfChangeType, id: u64) -> Result<(), String> {
        if !self.is_leader() {
            return Err("not the coordinator".into());
        }
        if self.node.raft.has_pending_conf() {
            return Err("another membership change is in progress".into());
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        self.node
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| e.to_string())
    }

    /// Asks for a read index (Raft ReadIndex: the coordinator confirms it
    /// still leads with a round of heartbeats); the answer comes as
    /// [`Output::ReadReady`] with `context`. raft-rs drops the request when
    /// no coordinator is known or it has not committed in its term yet, so
    /// callers ask again after a while.
    pub fn read_index(&mut self, context: Vec<u8>) {
        if self.mutation == Some(Mutation::ReadWithoutQuorum) {
            self.pending_local_reads
                .push((context, self.commit_index()));
            return;
        }
        self.node.read_index(context);
    }

    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    pub fn campaign(&mut self) -> Result<(), CoreError> {
        self.node.campaign().map_err(CoreError::Raft)
    }

    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    pub fn report_unreachable(&mut self, to: u64) {
        self.node.report_unreachable(to);
    }

    /// The voter (not a witness, not this one) with the most replicated log:
    /// the best successor for a handover.
    pub fn best_successor(&self) -> Option<u64> {
        let me = self.cfg.id;
        self.conf_state()
            .voters
            .iter()
            .filter(|id| **id != me && !self.cfg.witnesses.contains(id))
            .filter_map(|id| {
                self.progress(*id)
                    .map(|(matched, active)| (active, matched, *id))
            })
            .max()
            .map(|(_, _, id)| id)
    }

    /// What a leader does on every tick: promote caught-up learners, or
    /// make a voter beyond the limit a non-voting member (`demotion`), and
    /// a witness that somehow leads (only via a transfer) hands the role on.
    fn leader_duties(&mut self) {
        if self.cfg.witness {
            if let Some(to) = self.best_successor() {
                self.node.transfer_leader(to);
            }
            return;
        }
        if self.node.raft.has_pending_conf() {
            return;
        }
        let commit = self.commit_index();
        let caught_up: Vec<u64> = self
            .conf_state()
            .learners
            .iter()
            .copied()
            .filter(|id| {
                self.progress(*id)
                    .is_some_and(|(matched, _)| matched >= commit)
            })
            .collect();
        let cs = self.conf_state();
        let ready = promotion(cs, &caught_up, &self.cfg.voter_rank, self.cfg.voters_max);
        if let Some(id) = ready {
            let _ = self.propose_conf_change(ConfChangeType::AddNode, id);
            return;
        }
        let me = self.cfg.id;
        let active: Vec<u64> = cs
            .voters
            .iter()
            .copied()
            .filter(|id| *id == me || self.progress(*id).is_some_and(|(_, active)| active))
            .collect();
        let rank = &self.cfg.voter_rank;
        match demotion(cs, rank, self.cfg.voters_max, &self.cfg.witnesses, &active) {
            // A leader that is no longer a voter steps down in the middle
            // of its term: it hands its role on first, and its successor
            // makes it a non-voting member.
            Some(id) if id == me => {
                if let Some(to) = self.best_successor() {
                    self.node.transfer_leader(to);
                }
            }
            Some(id) => {
                tracing::info!(
                    id,
                    "more voters than the cluster keeps: one becomes a non-voting member"
                );
                let _ = self.propose_conf_change(ConfChangeType::AddLearnerNode, id);
            }
            None => {}
        }
    }

    /// Runs Ready cycles until raft has nothing more to do, handing each effect
    /// to `out` as soon as it is known: a leader's appends go out while its own
    /// log write is still in progress (raft allows it), halving commit latency.
    /// Runs every Ready cycle due and syncs the log at once after them:
    /// [`Core::pump_async`] and [`Core::synced`] in one call, for callers
    /// that hold no lock others wait on (the simulation, tests).
    pub fn pump(&mut self, out: &mut dyn FnMut(Output)) -> Result<(), CoreError> {
        for _ in 0..PUMP_SYNCS_MAX {
            let Some(ticket) = self.pump_async(out)? else {
                return Ok(());
            };
            ticket.sync().map_err(|e| CoreError::Db(sync_error(e)))?;
            self.synced(&ticket, out)?;
        }
        Ok(())
    }

    /// Runs every Ready cycle due. Returns a ticket when log writes wait to
    /// be made durable: the caller syncs it (without holding the core, so
    /// that proposals, messages and reads go on meanwhile) and hands it back
    /// to [`Core::synced`].
    pub fn pump_async(
        &mut self,
        out: &mut dyn FnMut(Output),
    ) -> Result<Option<SyncTicket>, CoreError> {
        for (context, index) in std::mem::take(&mut self.pending_local_reads) {
            out(Output::ReadReady { context, index });
        }
        for report in self.losses.reports.drain(..) {
            out(Output::Send(report));
        }
        while self.node.has_ready() {
            self.ready_cycle(out)?;
        }
        if let Some(lost) = self.losses.own {
            if self.commit_index() >= lost.acknowledged {
                tracing::info!(
                    commit = self.commit_index(),
                    "caught up past the entries this instance had lost"
                );
                self.losses.own = None;
            }
        }
        if self.node.store().take_snapshot_wanted() && !self.snapshot_in_flight {
            self.snapshot_in_flight = true;
            let job = SnapshotJob {
                state_db: state_db(&self.dir),
                dir: snapshots_dir(&self.dir),
            };
            out(Output::MakeSnapshot(job));
        }
        let Some(number) = self.unsynced.as_ref().map(|u| u.number) else {
            return Ok(None);
        };
        let wal = self
            .node
            .mut_store()
            .wal()
            .map_err(|e| CoreError::Db(sync_error(e)))?;
        Ok(Some(SyncTicket {
            core: self.serial,
            number,
            wal,
        }))
    }

    /// Test-only fault injection (the simulation's): `crash` is asked at every
    /// [`CrashPoint`] of a Ready cycle and may make [`Core::pump`] return
    /// [`CoreError::Crashed`] there; `mutation` deliberately breaks a
    /// guarantee. Production never calls this.
    #[doc(hidden)]
    pub fn inject_faults(&mut self, crash: Option<CrashHook>, mutation: Option<Mutation>) {
        self.crash_hook = crash;
        self.mutation = mutation;
    }

    fn crash_point(&mut self, point: CrashPoint) -> Result<(), CoreError> {
        match self.crash_hook.as_mut().map(|hook| hook(point)) {
            Some(true) => Err(CoreError::Crashed(point)),
            _ => Ok(()),
        }
    }

    /// One Ready: messages that may leave before persisting (a leader's
    /// appends) leave now, committed entries are applied, new entries and
    /// the hard state are written to the log, not yet synced. What must
    /// wait for them to be durable (raft's persisted messages: acknowledgments
    /// and votes) is held in `unsynced` until [`Core::synced`].
    fn ready_cycle(&mut self, out: &mut dyn FnMut(Output)) -> Result<(), CoreError> {
        let mut rd = self.node.ready();
        self.emit(rd.take_messages(), out);
        for rs in rd.take_read_states() {
            out(Output::ReadReady {
                context: rs.request_ctx,
                index: rs.index,
            });
        }
        if self.mutation == Some(Mutation::AckBeforePersist) {
            self.emit(rd.take_persisted_messages(), out);
        }
        self.crash_point(CrashPoint::Sent)?;
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        self.apply(rd.take_committed_entries(), out)?;
        let forgotten = rd
            .hs()
            .filter(|_| self.mutation == Some(Mutation::ForgetVote))
            .map(|hs| {
                let mut hs = hs.clone();
                hs.vote = 0;
                hs
            });
        let writes = self
            .node
            .mut_store()
            .persist(rd.entries(), forgotten.as_ref().or(rd.hs()))?;
        let number = rd.number();
        let snapshot = !rd.snapshot().is_empty();
        let held = rd.take_persisted_messages();
        self.node.advance_append_async(rd);
        // A received database is installed durably in the cycle (raft may
        // count it applied only once persisted): the log is synced with it,
        // and everything written before is durable too.
        if snapshot && (writes || self.unsynced.is_some()) {
            self.node.mut_store().sync_now()?;
        }
        match (&mut self.unsynced, snapshot || !writes) {
            (None, true) => {
                self.node.on_persist_ready(number);
                self.emit(held, out);
            }
            (Some(_), true) if snapshot => {
                let earlier = self.unsynced.take().expect("unsynced");
                self.node.on_persist_ready(number);
                self.emit(earlier.messages, out);
                self.emit(held, out);
            }
            (Some(u), _) => {
                u.number = number;
                u.messages.extend(held);
            }
            (None, false) => {
                self.unsynced = Some(Unsynced {
                    number,
                    messages: held,
                    since: std::time::Instant::now(),
                });
            }
        }
        // Committed entries handed out stop at what is persisted here.
        self.node.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    /// The log written by the last Ready cycles is durable (the caller
    /// synced the handle of `ticket`): what waited for it leaves, and raft
    /// counts the entries as persisted. A ticket of another core (one that
    /// was replaced meanwhile) or an older one changes nothing.
    pub fn synced(
        &mut self,
        ticket: &SyncTicket,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), CoreError> {
        if ticket.core != self.serial {
            return Ok(());
        }
        let Some(u) = self.unsynced.take_if(|u| u.number == ticket.number) else {
            return Ok(());
        };
        self.crash_point(CrashPoint::Persisted)?;
        self.latency
            .persist_us
            .observe(u.since.elapsed().as_micros() as u64);
        self.node.on_persist_ready(u.number);
        self.emit(u.messages, out);
        Ok(())
    }

    fn emit(&mut self, msgs: Vec<Message>, out: &mut dyn FnMut(Output)) {
        for msg in msgs {
            if msg.get_msg_type() != MessageType::MsgSnapshot {
                out(Output::Send(msg));
                continue;
            }
            match SnapshotFile::decode(msg.get_snapshot().get_data()) {
                Ok(meta) => {
                    let file = snapshots_dir(&self.dir).join(&meta.file_name);
                    out(Output::SendSnapshot { msg, file, meta });
                }
                Err(_) => self.node.report_snapshot(msg.to, SnapshotStatus::Failure),
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut dyn FnMut(Output)) -> Result<(), CoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let answer_early = self.mutation == Some(Mutation::AnswerBeforeApply);
        if answer_early {
            answer(&entries, out);
        }
        let mut commands: Vec<Option<Command>> = Vec::with_capacity(entries.len());
        let mut confs: Vec<Option<ConfState>> = Vec::with_capacity(entries.len());
        for e in &entries {
            let (cmd, cs) = self.decode_entry(e)?;
            commands.push(cmd);
            confs.push(cs);
        }
        let batch: Vec<(u64, u64, Change<'_>)> = entries
            .iter()
            .zip(commands.iter().zip(confs.iter()))
            .map(|(e, (cmd, cs))| {
                let change = match (cmd, cs) {
                    (Some(c), _) => Change::Command(c),
                    (None, Some(cs)) => Change::Conf(cs),
                    (None, None) => Change::Empty,
                };
                (e.index, e.term, change)
            })
            .collect();
        let started = std::time::Instant::now();
        self.state.apply(&batch)?;
        self.latency
            .apply_us
            .observe(started.elapsed().as_micros() as u64);
        drop(batch);
        self.node
            .mut_store()
            .set_conf_state(self.state.conf_state().clone());
        self.crash_point(CrashPoint::Applied)?;
        if !answer_early {
            answer(&entries, out);
        }
        // Only a member that stops being one is removed: an instance catching up
        // before it was (re-)added applies conf states that do not name it yet.
        let member = self.is_member();
        if self.member && !member {
            out(Output::Removed);
        }
        self.member = member;
        Ok(())
    }

    pub fn is_member(&self) -> bool {
        let cs = self.conf_state();
        let me = self.cfg.id;
        cs.voters.contains(&me) || cs.learners.contains(&me)
    }

    /// Decodes one committed entry; conf changes are applied to raft here, in
    /// log order. An undecodable command is applied as a no-op on every replica
    /// alike (it can only come from a faulty proposer: ours validate first).
    fn decode_entry(
        &mut self,
        e: &Entry,
    ) -> Result<(Option<Command>, Option<ConfState>), CoreError> {
        match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => Ok((None, None)),
            EntryType::EntryNormal => match Command::decode(&e.data) {
                Ok(cmd) => Ok((Some(cmd), None)),
                Err(err) => {
                    tracing::error!(
                        index = e.index,
                        "undecodable command applied as no-op: {err}"
                    );
                    Ok((None, None))
                }
            },
            EntryType::EntryConfChange => {
                let cc =
                    ConfChange::parse_from_bytes(&e.data).map_err(|x| CoreError::Raft(x.into()))?;
                let cs = self.node.apply_conf_change(&cc)?;
                self.step_down_unless_voter();
                Ok((None, Some(cs)))
            }
            EntryType::EntryConfChangeV2 => {
                let cc = raft::eraftpb::ConfChangeV2::parse_from_bytes(&e.data)
                    .map_err(|x| CoreError::Raft(x.into()))?;
                let cs = self.node.apply_conf_change(&cc)?;
                self.step_down_unless_voter();
                Ok((None, Some(cs)))
            }
        }
    }

    /// raft-rs keeps a leader that applies its own removal or demotion
    /// leading, and no longer counting itself, it panics at its next
    /// commit. That happens when a coordinator proposed the change and was
    /// replaced before it committed, by the very voter it removes. Such a
    /// leader steps down, a follower of the same term (its vote in that
    /// term stands); the voters elect another at their next timeout.
    fn step_down_unless_voter(&mut self) {
        let raft = &mut self.node.raft;
        if raft.state != StateRole::Leader || raft.prs().conf().voters().contains(raft.id) {
            return;
        }
        let term = raft.term;
        tracing::info!(term, "no longer a voter: this coordinator steps down");
        raft.become_follower(term, raft::INVALID_ID);
    }

    /// Installs a received snapshot: the verified file from the incoming folder
    /// replaces state.db, then the log restarts after the snapshot's index.
    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), CoreError> {
        let meta = snap.get_metadata();
        let file_meta = SnapshotFile::decode(snap.get_data()).map_err(CoreError::Snapshot)?;
        if !valid_snapshot_name(&file_meta.file_name) {
            return Err(CoreError::Snapshot(format!(
                "bad snapshot file name {:?}",
                file_meta.file_name
            )));
        }
        let file = incoming_dir(&self.dir).join(&file_meta.file_name);
        self.state
            .install(&file, meta.index)
            .map_err(CoreError::Snapshot)?;
        self.node.mut_store().apply_snapshot(meta)?;
        remove_older_snapshots(&incoming_dir(&self.dir), "");
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed the coordinator's database"
        );
        Ok(())
    }

    /// Hands raft a database copy made by a [`SnapshotJob`] (or forgets the
    /// job if it failed: raft asks again).
    pub fn offer_snapshot(&mut self, made: Result<PreparedSnapshot, String>) {
        self.snapshot_in_flight = false;
        let p = match made {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("could not copy the database for a snapshot: {e}");
                return;
            }
        };
        tracing::info!(
            index = p.index,
            size_bytes = p.file.size_bytes,
            "prepared a database snapshot"
        );
        let mut data = Vec::new();
        ciborium::into_writer(&p.file, &mut data).expect("descriptor encodes");
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_meta(p.index, p.term, p.conf_state));
        snap.data = data.into();
        self.node.store().offer_snapshot(snap);
    }

    /// Drops old log entries once there are twice the kept number; the state is
    /// checkpointed first, so what the log forgets is durable in state.db.
    fn maybe_compact(&mut self) -> Result<(), CoreError> {
        let applied = self.state.applied_index();
        let first = self.node.store().first();
        let keep = self.cfg.log_keep_entries;
        if applied < first + 2 * keep {
            return Ok(());
        }
        // Only what a complete checkpoint made durable in state.db may leave
        // the log; a reader (a snapshot copy) may hold the checkpoint back.
        if self.state.checkpoint()? {
            self.node.mut_store().compact(applied - keep)?;
        }
        Ok(())
    }
}

/// Answers the proposers of applied entries (and tells the shell what was
/// applied): only once the entries are in state.db.
fn answer(entries: &[Entry], out: &mut dyn FnMut(Output)) {
    for e in entries {
        out(Output::Applied {
            index: e.index,
            term: e.term,
            context: e.context.to_vec(),
            digest: fnv1a(&e.data),
        });
    }
}

/// A consistent copy of state.db to make off the raft loop: SQLite's online
/// backup from its own connection, in one step, reads one snapshot of the
/// database while the loop goes on applying (WAL readers do not block writers).
#[derive(Debug, Clone)]
pub struct SnapshotJob {
    state_db: PathBuf,
    dir: PathBuf,
}

/// The result of a [`SnapshotJob`]: the file and the Raft position it holds.
#[derive(Debug, Clone)]
pub struct PreparedSnapshot {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    pub file: SnapshotFile,
}

impl SnapshotJob {
    /// Copies state.db into the snapshots folder. The copy is made under a
    /// temporary name of this job's own and renamed once whole; whatever
    /// fails (a full disk, say), the temporary file is removed, and so are
    /// those a crashed process left.
    pub fn run(self) -> Result<PreparedSnapshot, String> {
        static JOBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ours = format!("copy-{}-", std::process::id());
        remove_copies(&self.dir, |name| !name.starts_with(&ours));
        let tmp = self.dir.join(format!("{ours}{seq}.tmp"));
        let made = self.copy_to(&tmp);
        if made.is_err() {
            let name = tmp.file_name().map(|n| n.to_string_lossy().to_string());
            remove_copies(&self.dir, |n| {
                name.as_deref().is_some_and(|t| n.starts_with(t))
            });
        }
        made
    }

    fn copy_to(&self, tmp: &Path) -> Result<PreparedSnapshot, String> {
        copy_database(&self.state_db, tmp).map_err(|e| e.to_string())?;
        let copy = StateMachine::open(tmp, state::Sync::Off).map_err(|e| e.to_string())?;
        let (index, term, conf_state) = (
            copy.applied_index(),
            copy.applied_term(),
            copy.conf_state().clone(),
        );
        copy.checkpoint().map_err(|e| e.to_string())?;
        drop(copy);
        let file_name = format!("snap-{index}-{term}.db");
        let (size_bytes, sha256) = file_digest(tmp)?;
        std::fs::rename(tmp, self.dir.join(&file_name)).map_err(|e| e.to_string())?;
        remove_older_snapshots(&self.dir, &file_name);
        Ok(PreparedSnapshot {
            index,
            term,
            conf_state,
            file: SnapshotFile {
                file_name,
                size_bytes,
                sha256,
            },
        })
    }
}

/// What [`backup_copy`] made: the copy's Raft position, cluster and digest.
#[derive(Debug, Clone)]
pub struct BackupCopy {
    pub index: u64,
    pub term: u64,
    pub cluster_id: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// A consistent copy of the state.db of data directory `dir` for `claro
/// backup`, written to `dest` in the snapshots folder: SQLite's online
/// backup in one step, as for a snapshot, so the raft loop goes on
/// applying meanwhile. A name `copy-PID-...` keeps it from the clean-up of
/// other processes' copies while this one lives.
pub fn backup_copy(dir: &Path, name: &str) -> Result<(PathBuf, BackupCopy), String> {
    let folder = snapshots_dir(dir);
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let dest = folder.join(format!("copy-{}-{name}.tmp", std::process::id()));
    let made = backup_copy_to(&state_db(dir), &dest);
    if made.is_err() {
        // The copy and SQLite's files beside it, by their exact names.
        let base = format!("copy-{}-{name}.tmp", std::process::id());
        remove_copies(&folder, |n| {
            n == base
                || n.strip_prefix(base.as_str())
                    .is_some_and(|s| s.starts_with('-'))
        });
    }
    made.map(|copy| (dest, copy))
}

fn backup_copy_to(state_db: &Path, dest: &Path) -> Result<BackupCopy, String> {
    copy_database(state_db, dest).map_err(|e| e.to_string())?;
    let copy = StateMachine::open(dest, state::Sync::Off).map_err(|e| e.to_string())?;
    let cluster_id = copy
        .cluster_id()
        .ok_or("this replica holds no cluster yet")?
        .to_string();
    let (index, term) = (copy.applied_index(), copy.applied_term());
    copy.checkpoint().map_err(|e| e.to_string())?;
    drop(copy);
    let (size_bytes, sha256) = file_digest(dest)?;
    Ok(BackupCopy {
        index,
        term,
        cluster_id,
        size_bytes,
        sha256,
    })
}

/// Removes the database copies in `dir` (`copy-*`, with SQLite's journal,
/// WAL and shm files beside them) whose names `doomed` picks.
fn remove_copies(dir: &Path, doomed: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("copy-") && doomed(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn copy_database(src: &Path, dest: &Path) -> rusqlite::Result<()> {
    let from =
        rusqlite::Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut to = rusqlite::Connection::open(dest)?;
    let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
    // -1: every page in one step, i.e. within one read transaction.
    backup.step(-1)?;
    Ok(())
}

fn raft_config(cfg: &CoreConfig, applied: u64) -> raft::Config {
    assert!(cfg.heartbeat_ticks >= 1 && cfg.election_ticks > cfg.heartbeat_ticks);
    assert!(cfg.election_ticks_max > cfg.election_ticks);
    let (min, max) = if cfg.witness {
        // Votes and lease checks use `election_ticks`; a witness just never
        // reaches its own (astronomical) campaign timeout.
        (usize::MAX / 4, usize::MAX / 4 + 1)
    } else {
        (cfg.election_ticks, cfg.election_ticks_max)
    };
    raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        min_election_tick: min,
        max_election_tick: max,
        applied,
        max_size_per_msg: cfg.msg_bytes_max,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

/// Size and SHA-256 of a file, read in 1 MiB blocks.
pub fn file_digest(path: &Path) -> Result<(u64, String), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((size, state::hex(ctx.finish().as_ref())))
}

fn remove_older_snapshots(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != keep && name.starts_with("snap-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Snapshot files are named `snap-INDEX-TERM.db`; anything else (a path, say)
/// is refused before a byte is written or a file is opened.
pub fn valid_snapshot_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("snap-")
        .and_then(|r| r.strip_suffix(".db"))
    else {
        return false;
    };
    let mut parts = rest.split('-');
    let numeric = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
}

/// FNV-1a, 64 bits: a cheap fingerprint of an entry's bytes for the checks that
/// replicas applied the same entry at the same index.
pub use crate::fingerprint::fnv1a;

/// A server's Raft id: derived from its name, so that it is the same on every
/// instance and does not depend on the order of the config.
pub fn raft_id(name: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    (u64::from_be_bytes(b) >> 1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;

    fn cfg(id: u64) -> CoreConfig {
        CoreConfig {
            id,
            heartbeat_ticks: 2,
            election_ticks: 10,
            election_ticks_max: 11,
            witness: false,
            witnesses: HashSet::new(),
            durable: false,
            log_keep_entries: 16,
            msg_bytes_max: 64 * 1024,
            voters_max: VOTERS_MAX,
            voter_rank: (1..=9).collect(),
        }
    }

    fn cs(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn learners_are_promoted_in_the_configurations_order_up_to_the_most_voters() {
        let rank = [1, 2, 3, 4, 5, 6, 7];
        // Caught up and fewer voters than the most: the first in the order.
        assert_eq!(promotion(&cs(&[1], &[3, 2]), &[3, 2], &rank, 5), Some(2));
        // Not caught up: not yet.
        assert_eq!(promotion(&cs(&[1], &[2]), &[], &rank, 5), None);
        // Five voters: the rest stay non-voting members.
        let five = [1, 2, 3, 4, 5];
        assert_eq!(promotion(&cs(&five, &[6, 7]), &[6, 7], &rank, 5), None);
        // A voter lost for good (removed): the next one takes its place.
        assert_eq!(
            promotion(&cs(&[1, 2, 4, 5], &[6, 7]), &[7, 6], &rank, 5),
            Some(6)
        );
        // A server that may not vote (`vote = false`) is never promoted.
        assert_eq!(promotion(&cs(&[1], &[8]), &[8], &rank, 5), None);
    }

    #[test]
    fn voters_beyond_the_most_become_non_voting_members_one_at_a_time() {
        let rank = [1, 2, 3, 4, 5, 6, 7];
        let none = HashSet::new();
        let all: Vec<u64> = (1..=9).collect();
        let seven = [1, 2, 3, 4, 5, 6, 7];
        // Seven voters (made by a version without the limit): the last in
        // the configuration's order first, until five vote.
        assert_eq!(demotion(&cs(&seven, &[]), &rank, 5, &none, &all), Some(7));
        assert_eq!(
            demotion(&cs(&seven[..6], &[7]), &rank, 5, &none, &all),
            Some(6)
        );
        assert_eq!(
            demotion(&cs(&seven[..5], &[6, 7]), &rank, 5, &none, &all),
            None
        );
        // A witness is kept while another can go.
        let w7 = HashSet::from([7]);
        assert_eq!(demotion(&cs(&seven, &[]), &rank, 5, &w7, &all), Some(6));
        // A voter set to `vote = false` goes first, while more than three
        // vote; and is kept where its loss would leave two.
        assert_eq!(
            demotion(&cs(&[1, 2, 8, 3], &[]), &rank, 5, &none, &all),
            Some(8)
        );
        assert_eq!(demotion(&cs(&[1, 8, 3], &[2]), &rank, 5, &none, &all), None);
        // Never the reverse of a promotion: what `demotion` leaves,
        // `promotion` does not change back, and the other way round.
        for voters in 1..=7usize {
            let v: Vec<u64> = (1..=voters as u64).collect();
            let l: Vec<u64> = (voters as u64 + 1..=9).collect();
            let c = cs(&v, &l);
            let promoted = promotion(&c, &l, &rank, 5);
            let demoted = demotion(&c, &rank, 5, &none, &all);
            assert!(promoted.is_none() || demoted.is_none(), "{voters}");
        }
        // Only voters are named, and nothing with no voters.
        assert_eq!(demotion(&cs(&[], &[1, 2]), &rank, 5, &none, &all), None);
        // Down voters go first, and never one whose loss would leave the
        // active voters short of a majority: seven voters with 2, 3 and 4
        // down (1, 5, 6, 7 are four of seven) must not lose 7 (three of
        // six could not commit), but may lose 4, then 3.
        let up = [1, 5, 6, 7];
        assert_eq!(demotion(&cs(&seven, &[]), &rank, 5, &none, &up), Some(4));
        let six = [1, 2, 3, 5, 6, 7];
        assert_eq!(demotion(&cs(&six, &[4]), &rank, 5, &none, &up), Some(3));
        // Four of seven up, all of them in the first four: none can go
        // without a stall but the down ones.
        let first_four = [1, 2, 3, 4];
        assert_eq!(
            demotion(&cs(&seven, &[]), &rank, 5, &none, &first_four),
            Some(7)
        );
        // Five voters, three up, one of them set to `vote = false`: its
        // loss would leave two of four up, so it stays for now.
        let with8 = [1, 2, 3, 4, 8];
        assert_eq!(
            demotion(&cs(&with8, &[]), &rank, 5, &none, &[1, 2, 8]),
            None
        );
        assert_eq!(
            demotion(&cs(&with8, &[]), &rank, 5, &none, &[1, 2, 3, 8]),
            Some(8)
        );
        // A voter set to `vote = false` that is down goes too.
        assert_eq!(
            demotion(&cs(&[1, 2, 8, 3], &[]), &rank, 5, &none, &[1, 2, 3]),
            Some(8)
        );
    }

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    /// Runs Ready cycles on every core and hands their messages over,
    /// until none is left or `rounds` ran.
    fn exchange(cores: &mut [Core], rounds: usize) {
        for _ in 0..rounds {
            let mut msgs = Vec::new();
            for c in cores.iter_mut() {
                c.pump(&mut |o| {
                    if let Output::Send(m) = o {
                        msgs.push(m);
                    }
                })
                .unwrap();
            }
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                let to = m.to as usize - 1;
                let _ = cores[to].step(m);
            }
        }
    }

    /// Ticks core `i` alone (and hands messages over) until it leads, for
    /// at most 100 ticks; whether it does.
    fn lead(cores: &mut [Core], i: usize) -> bool {
        for _ in 0..100 {
            if cores[i].is_leader() {
                return true;
            }
            cores[i].tick();
            exchange(cores, 10);
        }
        cores[i].is_leader()
    }

    /// A coordinator that applies its own removal (proposed by one before
    /// it, committed under it) steps down; raft-rs alone keeps it leading,
    /// and it panicked at its next commit, no longer counting itself.
    #[test]
    fn a_leader_that_applies_its_own_removal_steps_down() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cores: Vec<Core> = (1..=2u64)
            .map(|id| {
                let dir = tmp.path().join(format!("n{id}"));
                bootstrap_voters(&dir, &[1, 2], "t", false).unwrap();
                Core::open(&dir, cfg(id), &logger()).unwrap()
            })
            .collect();
        assert!(lead(&mut cores, 0), "n1 never led");
        cores[0]
            .propose_conf_change(ConfChangeType::RemoveNode, 1)
            .unwrap();
        exchange(&mut cores, 20);
        assert!(!cores[0].conf_state().voters.contains(&1), "not applied");
        assert!(!cores[0].is_leader(), "a removed leader still leads");
        // Later messages (n2's acknowledgments, its campaign) are stepped
        // without a panic, and n2 leads alone.
        assert!(lead(&mut cores, 1), "n2 never took over");
    }

    #[test]
    fn a_snapshot_naming_a_path_is_refused_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut core = Core::open(&dir, cfg(1), &logger()).unwrap();
        let descriptor = SnapshotFile {
            file_name: "../evil.db".into(),
            size_bytes: 1,
            sha256: "00".into(),
        };
        let mut data = Vec::new();
        ciborium::into_writer(&descriptor, &mut data).unwrap();
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.from = 2;
        msg.to = 1;
        msg.term = 1;
        let snap = msg.mut_snapshot();
        snap.set_metadata(snapshot_meta(
            5,
            1,
            ConfState {
                voters: vec![1, 2],
                ..Default::default()
            },
        ));
        snap.data = data.into();
        core.step(msg).unwrap();
        let err = core.pump(&mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("bad snapshot file name"), "{err}");
        assert!(
            !dir.join("evil.db").exists(),
            "a file was created outside incoming/"
        );
    }

    #[test]
    fn a_log_that_diverges_from_the_applied_state_is_reset_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        std::fs::create_dir_all(&dir).unwrap();
        // The log holds entries 1..=5 of term 1; state.db applied index 3 of
        // term 2 (a snapshot from a later leader replaced the tail).
        let mut log = LogStore::open(&raft_db(&dir), log_store::Sync::Off).unwrap();
        let entries: Vec<Entry> = (1..=5)
            .map(|i| Entry {
                index: i,
                term: 1,
                ..Default::default()
            })
            .collect();
        log.persist(&entries, None).unwrap();
        drop(log);
        let mut sm = StateMachine::open(&state_db(&dir), state::Sync::Off).unwrap();
        sm.set_conf_state(&ConfState {
            voters: vec![1],
            ..Default::default()
        })
        .unwrap();
        let cmd = Command::SetCluster {
            cluster_id: "c".into(),
        };
        sm.apply(&[
            (1, 2, Change::Empty),
            (2, 2, Change::Empty),
            (3, 2, Change::Command(&cmd)),
        ])
        .unwrap();
        drop(sm);
        let core = Core::open(&dir, cfg(1), &logger()).unwrap();
        assert_eq!(
            core.last_index(),
            3,
            "the divergent tail 4..=5 of term 1 must be gone"
        );
    }

    /// A single-voter leader of `dir`, elected.
    fn leader(dir: &Path) -> Core {
        let mut core = Core::open(dir, cfg(1), &logger()).unwrap();
        core.campaign().unwrap();
        core.pump(&mut |_| {}).unwrap();
        assert!(core.is_leader());
        core
    }

    #[test]
    fn a_crash_point_stops_the_cycle_where_it_fires() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        bootstrap(&dir, 1, "c", false).unwrap();
        let put = Command::Put {
            key: "k".into(),
            value: vec![1],
        };
        // At Sent the proposal's entry is not durable yet.
        let mut core = leader(&dir);
        let last = core.last_index();
        core.propose(b"p".to_vec(), &put).unwrap();
        core.inject_faults(Some(Box::new(|p| p == CrashPoint::Sent)), None);
        let err = core.pump(&mut |_| {}).unwrap_err();
        assert!(matches!(err, CoreError::Crashed(CrashPoint::Sent)), "{err}");
        drop(core);
        let reopened = Core::open(&dir, cfg(1), &logger()).unwrap();
        assert_eq!(reopened.last_index(), last, "the entry became durable");
        drop(reopened);
        let mut core = leader(&dir);
        // At Applied the entry is in state.db, but its proposer has no answer.
        core.propose(b"p".to_vec(), &put).unwrap();
        core.inject_faults(Some(Box::new(|p| p == CrashPoint::Applied)), None);
        let mut answered = false;
        let err = core
            .pump(&mut |o| answered |= matches!(o, Output::Applied { .. }))
            .unwrap_err();
        assert!(
            matches!(err, CoreError::Crashed(CrashPoint::Applied)),
            "{err}"
        );
        assert!(!answered, "answered before the crash point");
        let applied = core.applied_index();
        drop(core);
        let core = Core::open(&dir, cfg(1), &logger()).unwrap();
        assert_eq!(core.applied_index(), applied);
        assert_eq!(core.state().get("k").unwrap(), Some(vec![1]));
    }

    #[test]
    fn a_failed_database_copy_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = tmp.path().join("snapshots");
        std::fs::create_dir_all(&snaps).unwrap();
        // What a crashed process (another pid) left behind.
        std::fs::write(snaps.join("copy-1-0.tmp"), b"half").unwrap();
        std::fs::write(snaps.join("copy-1-0.tmp-journal"), b"half").unwrap();
        // Not a database: the copy fails after its temporary file exists.
        let garbage = tmp.path().join("state.db");
        std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
        let job = SnapshotJob {
            state_db: garbage,
            dir: snaps.clone(),
        };
        assert!(job.run().is_err(), "a copy of garbage succeeded");
        let left: Vec<String> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn a_state_older_than_the_log_start_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        bootstrap(&dir, 1, "c", false).unwrap();
        let mut log = LogStore::open(&raft_db(&dir), log_store::Sync::Off).unwrap();
        log.apply_snapshot(&snapshot_meta(
            50,
            3,
            ConfState {
                voters: vec![1],
                ..Default::default()
            },
        ))
        .unwrap();
        drop(log);
        let err = Core::open(&dir, cfg(1), &logger())
            .err()
            .expect("must refuse");
        assert!(err.to_string().contains("older than the log"), "{err}");
    }

    fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    fn sent(core: &mut Core) -> Vec<Message> {
        let mut msgs = Vec::new();
        core.pump(&mut |o| {
            if let Output::Send(m) = o {
                msgs.push(m);
            }
        })
        .unwrap();
        msgs
    }

    #[test]
    fn a_heartbeat_committing_past_a_wiped_log_does_not_panic_and_is_reported() {
        // An empty data directory (a member that lost its disk) hears from the
        // coordinator, which still counts the 7 entries it had acknowledged.
        let tmp = tempfile::tempdir().unwrap();
        let mut core = Core::open(&tmp.path().join("n1"), cfg(1), &logger()).unwrap();
        let mut hb = message(MessageType::MsgHeartbeat, 2, 1, 5);
        hb.commit = 7;
        core.step(hb).unwrap();
        assert_eq!(core.commit_index(), 0);
        assert_eq!(
            core.own_loss(),
            Some(LostData {
                acknowledged: 7,
                holds: 0
            })
        );
        let msgs = sent(&mut core);
        let report = msgs
            .iter()
            .find(|m| m.context.as_ref() == guard::LOST_DATA_CONTEXT)
            .expect("a lost-data report to the leader");
        assert_eq!((report.to, report.term, report.reject_hint), (2, 5, 0));
        assert!(report.reject);
        // It still answers the heartbeat: the leader knows it is alive.
        assert!(msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse));
    }

    /// A one-voter cluster led by 1 with 2 added as a learner.
    fn leader_with_learner(dir: &Path) -> Core {
        bootstrap(dir, 1, "c", false).unwrap();
        let mut core = Core::open(dir, cfg(1), &logger()).unwrap();
        core.campaign().unwrap();
        sent(&mut core);
        assert!(core.is_leader());
        core.propose_conf_change(ConfChangeType::AddLearnerNode, 2)
            .unwrap();
        sent(&mut core);
        assert!(core.is_learner(2));
        core
    }

    #[test]
    fn a_leader_never_counts_an_acknowledgment_beyond_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let mut core = leader_with_learner(&tmp.path().join("n1"));
        let mut ack = message(MessageType::MsgAppendResponse, 2, 1, core.term());
        ack.index = core.last_index() + 100;
        let err = core.step(ack).unwrap_err();
        assert!(err.to_string().contains("beyond this log"), "{err}");
        assert_eq!(core.progress(2).map(|p| p.0), Some(0));
    }

    #[test]
    fn a_lost_data_report_resets_the_followers_progress_and_is_handed_to_the_shell() {
        let tmp = tempfile::tempdir().unwrap();
        let mut core = leader_with_learner(&tmp.path().join("n1"));
        let last = core.last_index();
        let mut ack = message(MessageType::MsgAppendResponse, 2, 1, core.term());
        ack.index = last;
        core.step(ack).unwrap();
        assert_eq!(core.progress(2).map(|p| p.0), Some(last));
        let follower = guard::Facts {
            id: 2,
            term: core.term(),
            ..Default::default()
        };
        let report = guard::lost_data_report(&follower, 1, last, 0);
        core.step(report).unwrap();
        assert_eq!(core.progress(2).map(|p| p.0), Some(0));
        assert_eq!(
            core.take_lost_members(),
            vec![(
                2,
                LostData {
                    acknowledged: last,
                    holds: 0
                }
            )]
        );
        assert!(core.take_lost_members().is_empty());
    }

    #[test]
    fn a_vote_request_without_a_term_is_refused_without_panicking() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        bootstrap(&dir, 1, "c", false).unwrap();
        let mut core = Core::open(&dir, cfg(1), &logger()).unwrap();
        let vote = message(MessageType::MsgRequestVote, 2, 1, 0);
        let err = core.step(vote).unwrap_err();
        assert!(err.to_string().contains("without a term"), "{err}");
        sent(&mut core);
    }

    #[test]
    fn a_wiped_member_does_not_vote() {
        // Its vote could elect a candidate that lacks entries committed with
        // the acknowledgment it no longer holds.
        let tmp = tempfile::tempdir().unwrap();
        let mut core = Core::open(&tmp.path().join("n1"), cfg(1), &logger()).unwrap();
        let mut vote = message(MessageType::MsgRequestVote, 2, 1, 5);
        vote.index = 3;
        vote.log_term = 2;
        assert!(core.step(vote).is_err());
        let answers = sent(&mut core);
        assert!(answers.is_empty(), "{answers:?}");
        assert_eq!(core.term(), 0);
    }
}
