//! Deterministic simulation of a claro cluster's consensus core.
//!
//! Several instances' real `Core` (raft-rs driver, SQLite log store, SQLite state
//! machine) run in one process over a simulated network and clock. Everything
//! random comes from one seed: message delay, loss, reordering, partitions,
//! crashes and restarts, at most one wipe per seed (a crash after which the
//! instance's data directory is gone: it restarts empty and must be sent the
//! database), and the client proposals.
//!
//! A crash drops the `Core`: only its database files survive, with the
//! transactions committed so far (SQLite rolls back anything uncommitted when
//! the connection goes); what it had sent stays in flight, what was on its way
//! to it is lost. Crashes come between steps and also inside a Ready cycle, at
//! the core's crash points (`consensus::CrashPoint`), each with a chance of
//! `CRASH_POINT_PER_MILLE` while fewer than a minority are down:
//!
//! - `Sent`: messages were handed to the network, this cycle's entries and
//!   hard state are not durable yet;
//! - `Persisted`: they are durable, the acknowledgments that depend on them
//!   are not sent and newly committed entries are not applied;
//! - `Applied`: a batch is applied in state.db, its proposers not answered.
//!
//! After every step the invariants of BRIEF §5 that concern consensus are
//! checked:
//!
//! - at most one coordinator (Raft leader) per term;
//! - no committed entry is lost or reordered: every replica applies, at each
//!   index, the same entry (term and content digest), in increasing order;
//! - replicas at the same applied index have identical state (digest of state.db),
//!   and so do their digest checkpoints (`Command::Checkpoint`) at the same index;
//! - a proposal answered to its proposer (`Output::Applied` carrying its
//!   context, on the instance that proposed it) is already applied in that
//!   instance's state.db at that moment, read through a connection of our own;
//!   it is never lost: no replica applies another entry at its index, and the
//!   healed cluster's commit index covers it;
//! - a read served at its read index (`Core::read_index`, Raft ReadIndex)
//!   sees every write answered before the read began: the index is not below
//!   theirs;
//! - a restarted instance holds exactly what it acknowledged before its
//!   crash: the entries of its append responses (up to their index, with
//!   the same term there) and its votes (the term and whom); Raft counts
//!   those towards commits and elections;
//! - at the end, with the network healed, every replica converges.
//!
//! The checks are themselves checked: `consensus::Mutation` makes every core
//! break a guarantee on purpose, and the `mutation_*` tests expect a seed to
//! fail, on the guarantee broken:
//!
//! - `AckBeforePersist`: followers send their acknowledgments before their
//!   entries are durable; caught when one crashes at `Sent` after acking;
//! - `AnswerBeforeApply`: proposers are answered before state.db holds the
//!   entry; caught at the first answer;
//! - `ReadWithoutQuorum`: a read index is the instance's own commit index,
//!   unconfirmed by the coordinator; caught as a stale read;
//! - `ForgetVote`: the hard state is written without its vote (its term
//!   is durable, whom it voted for is not); caught by the exact vote
//!   promise (whom, not only the term) when such an instance restarts.
//!
//! A failing seed is printed; `CLARO_SIM_SEED=N cargo test --test sim replay`
//! runs exactly that seed again (`CLARO_SIM_MUTATION=ack-before-persist` or
//! `answer-before-apply` replays it with a mutation).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use claro::consensus::{
    self, Core, CoreConfig, CoreError, CrashHook, CrashPoint, Mutation, Output, SnapshotFile,
};
use claro::state::{self, jobs as jobdb, Command, StateMachine};
use claro::work::jobs::{AttemptEnd, JobSpec, JobState, Outcome};
use claro::work::scheduler::{self, Candidate};
use raft::eraftpb::{ConfChangeType, Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TICK_UNITS: u64 = 10;
const RUN_UNITS: u64 = 4000;
const SETTLE_UNITS_MAX: u64 = 6000;
/// Chance, per mille, that a crash point of a Ready cycle crashes its
/// instance (while fewer than a minority are down).
const CRASH_POINT_PER_MILLE: u32 = 2;
/// How long a crashed instance stays down, in units.
const DOWN_UNITS_MIN: u64 = 50;
const DOWN_UNITS_MAX: u64 = 800;

struct InFlight {
    at: u64,
    seq: u64,
    msg: Message,
    /// For a MsgSnapshot: the state file's bytes and descriptor, carried along.
    snapshot: Option<(Vec<u8>, SnapshotFile)>,
}

struct SimNode {
    id: u64,
    dir: PathBuf,
    core: Option<Core>,
    tick_phase: u64,
    down_until: u64,
    last_applied: u64,
    /// Contexts of the proposals this incarnation made and has not answered:
    /// an `Output::Applied` carrying one is the answer to its client.
    waiting: HashSet<Vec<u8>>,
    /// Reads this incarnation asked a read index for: context -> the highest
    /// index answered to any proposer when the read began.
    reads: HashMap<Vec<u8>, u64>,
    /// The highest (term, index) this incarnation acknowledged as appended,
    /// with the term of its entry at that index (0: not known, the instance
    /// crashed in the cycle that sent it), and the highest (term,
    /// candidate) of a vote it granted: promises of durable state, checked
    /// exactly when it restarts.
    appended_ack: (u64, u64, u64),
    vote_ack: (u64, u64),
    /// Log writes of the last pump not yet handed back as synced: as in
    /// production, where the raft thread syncs without the core's lock,
    /// messages and proposals reach the core meanwhile, and the ticket is
    /// handed back (`Core::synced`) before the next tick and pump.
    unsynced: Option<claro::consensus::SyncTicket>,
}

/// Decides, from the seed, whether a crash point crashes its instance; one
/// for all the cores of a simulation, so the draws follow the seed.
struct CrashDice {
    rng: StdRng,
    /// Off while a minority is already down, and once the network is healed.
    allowed: bool,
}

impl CrashDice {
    fn hook(dice: &Arc<Mutex<CrashDice>>) -> CrashHook {
        let dice = Arc::clone(dice);
        Box::new(move |_point| {
            let mut d = dice.lock().expect("dice");
            d.allowed && d.rng.gen_range(0..1000) < CRASH_POINT_PER_MILLE
        })
    }
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now: u64,
    seq: u64,
    nodes: Vec<SimNode>,
    queue: Vec<InFlight>,
    cut: HashSet<(u64, u64)>,
    loss_percent: u32,
    /// index -> (term, digest) of the entry every replica must apply there.
    log: BTreeMap<u64, (u64, u64)>,
    /// applied index -> state digest every replica must have there.
    states: HashMap<u64, String>,
    leaders: HashMap<u64, u64>,
    /// index -> (term, digest) of every proposal answered to its proposer.
    answered: BTreeMap<u64, (u64, u64)>,
    proposals: u64,
    /// Reads given a read index (and checked).
    served_reads: u64,
    snapshots: u64,
    crashes: u64,
    /// Crashes inside a Ready cycle, by point (`Sent`, `Persisted`, `Applied`).
    point_crashes: [u64; 3],
    dice: Arc<Mutex<CrashDice>>,
    /// Checking the checker: a deliberate fault every core runs with.
    mutation: Option<Mutation>,
    /// The network was healed: no more faults, the run must converge.
    healed: bool,
    /// A member's data directory was wiped (at most once: losing the data of
    /// a majority is beyond what any replication can survive).
    wiped: bool,
    /// `CLARO_SIM_TRACE=1`: print every delivered message.
    trace: bool,
    /// Jobs: submissions awaiting their answer (context -> job id), those
    /// answered, and the final state each replica was seen to give a job.
    job_submits: HashMap<Vec<u8>, Vec<String>>,
    acked_jobs: BTreeSet<String>,
    finals: HashMap<(usize, String), JobState>,
    jobs_finished: u64,
    /// Successful ends reported: (job, attempt, instance).
    job_reports: HashSet<(String, u32, String)>,
    /// Voters removed for good (`remove_voter`) while learners could step in.
    removals: u64,
    /// Most voters a replica may count: `VOTERS_MAX`, or every instance
    /// for a cluster made by a version without the limit (`all_voters`).
    voters_cap: usize,
    _tmp: tempfile::TempDir,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn core_config(id: u64) -> CoreConfig {
    let election = 10 + 3 * id as usize;
    CoreConfig {
        id,
        heartbeat_ticks: 2,
        election_ticks: election,
        election_ticks_max: election + 1,
        witness: false,
        witnesses: HashSet::new(),
        durable: false,
        log_keep_entries: 16,
        msg_bytes_max: 64 * 1024,
        voters_max: consensus::VOTERS_MAX,
        voter_rank: (1..=SEVEN as u64).collect(),
    }
}

/// The most instances a run has: two more than the most voters, so that
/// non-voting members and promotions are exercised.
const SEVEN: usize = 7;

/// The applied index in `dir`'s state.db as another reader sees it now.
fn applied_on_disk(dir: &Path) -> u64 {
    StateMachine::open(&consensus::state_db(dir), state::Sync::Off)
        .expect("open state.db")
        .applied_index()
}

/// A restarted instance must hold exactly what it acknowledged before its
/// crash: the entries of its append responses (up to the index, with the
/// same term at that index, unless it moved on to a later term) and whom
/// it voted for (in the vote's term, unless it moved on). Raft counts
/// those acknowledgments towards commits and elections, so a promise
/// broken here can lose a committed entry or elect two leaders in a term.
fn check_promises(seed: u64, node: &mut SimNode, core: &Core) {
    let (term, last) = (core.term(), core.last_index());
    let (ack_term, ack_index, entry_term) = node.appended_ack;
    let held = term > ack_term
        || (term == ack_term
            && last >= ack_index
            && (entry_term == 0 || core.log_term(ack_index).is_none_or(|t| t == entry_term)));
    assert!(
        held,
        "seed {seed}: node {} acknowledged entries up to index {ack_index} (term {entry_term} there) in term {ack_term} but restarted with its log ending at index {last} in term {term}, term {:?} at that index: an acknowledgment was sent before its entries were durable",
        node.id,
        core.log_term(ack_index)
    );
    let (vote_term, candidate) = node.vote_ack;
    assert!(
        term > vote_term || (term == vote_term && core.vote() == candidate),
        "seed {seed}: node {} granted a vote to {candidate} in term {vote_term} but restarted in term {term} having voted for {}: a vote was sent before it was durable",
        node.id,
        core.vote()
    );
    node.appended_ack = (0, 0, 0);
    node.vote_ack = (0, 0);
}

impl Sim {
    fn new(seed: u64, mutation: Option<Mutation>) -> Sim {
        Sim::with_count(seed, mutation, None)
    }

    /// A run of `count` instances (else 3 or 5, drawn from the seed).
    fn with_count(seed: u64, mutation: Option<Mutation>, count: Option<usize>) -> Sim {
        Sim::build(seed, mutation, count, false)
    }

    /// `all_voters`: the cluster starts with every instance a voter, as a
    /// version without the limit made it (else one voter, the others
    /// joining as learners).
    fn build(seed: u64, mutation: Option<Mutation>, count: Option<usize>, all_voters: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let drawn = if rng.gen_bool(0.5) { 3 } else { 5 };
        let count = count.unwrap_or(drawn);
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes = (1..=count as u64)
            .map(|id| SimNode {
                id,
                dir: tmp.path().join(format!("n{id}")),
                core: None,
                tick_phase: rng.gen_range(0..TICK_UNITS),
                down_until: 0,
                last_applied: 0,
                waiting: HashSet::new(),
                reads: HashMap::new(),
                appended_ack: (0, 0, 0),
                vote_ack: (0, 0),
                unsynced: None,
            })
            .collect();
        let dice = CrashDice {
            rng: StdRng::seed_from_u64(rng.gen()),
            allowed: true,
        };
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            seq: 0,
            nodes,
            queue: Vec::new(),
            cut: HashSet::new(),
            loss_percent: 0,
            log: BTreeMap::new(),
            states: HashMap::new(),
            leaders: HashMap::new(),
            answered: BTreeMap::new(),
            proposals: 0,
            served_reads: 0,
            snapshots: 0,
            crashes: 0,
            point_crashes: [0; 3],
            dice: Arc::new(Mutex::new(dice)),
            mutation,
            healed: false,
            wiped: false,
            trace: std::env::var("CLARO_SIM_TRACE").is_ok(),
            job_submits: HashMap::new(),
            acked_jobs: BTreeSet::new(),
            finals: HashMap::new(),
            jobs_finished: 0,
            job_reports: HashSet::new(),
            removals: 0,
            voters_cap: consensus::VOTERS_MAX,
            _tmp: tmp,
        };
        let cluster_id = format!("sim-{seed}");
        if all_voters {
            let ids: Vec<u64> = sim.nodes.iter().map(|n| n.id).collect();
            sim.voters_cap = sim.voters_cap.max(ids.len());
            for n in &sim.nodes {
                consensus::bootstrap_voters(&n.dir, &ids, &cluster_id, false).expect("bootstrap");
            }
        } else {
            consensus::bootstrap(&sim.nodes[0].dir, 1, &cluster_id, false).expect("bootstrap");
        }
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let hook = CrashDice::hook(&self.dice);
        let node = &mut self.nodes[i];
        let mut core = Core::open(&node.dir, core_config(node.id), &logger()).expect("open core");
        check_promises(self.seed, node, &core);
        core.inject_faults(Some(hook), self.mutation);
        node.last_applied = core.applied_index();
        node.core = Some(core);
    }

    fn run(&mut self) {
        while self.now < RUN_UNITS {
            self.chaos();
            self.step();
        }
        self.heal();
        let deadline = self.now + SETTLE_UNITS_MAX;
        while self.now < deadline && !self.converged() {
            if self.now.is_multiple_of(50) {
                self.add_member();
            }
            if self.now.is_multiple_of(5) {
                self.schedule_jobs();
                for i in 0..self.nodes.len() {
                    self.work_on(i);
                }
            }
            self.step();
        }
        assert!(
            self.converged(),
            "{}",
            self.describe("replicas did not converge")
        );
        assert!(self.proposals > 0, "no proposal was committed");
        let l = self.leader_index().expect("converged under a leader");
        let commit = self.nodes[l].core.as_ref().expect("up").commit_index();
        if let Some((&index, _)) = self.answered.last_key_value() {
            assert!(
                index <= commit,
                "seed {}: the proposal answered at index {index} was lost: the healed cluster's commit index is {commit}",
                self.seed
            );
        }
    }

    /// Random faults, all drawn from the seed.
    fn chaos(&mut self) {
        let r: u32 = self.rng.gen_range(0..1000);
        match r {
            0..=2 => self.crash_one(),
            3..=5 => self.partition_one(),
            6..=9 => self.cut.clear(),
            10..=11 => self.loss_percent = self.rng.gen_range(0..30),
            12..=14 => self.loss_percent = 0,
            15..=40 => self.propose_one(),
            41..=43 => self.add_member(),
            44..=55 => self.read_one(),
            56..=65 => self.wipe_one(),
            66..=80 => self.submit_job(),
            81..=100 => self.schedule_jobs(),
            101..=140 => self.work_one(),
            141..=145 => self.release_down(),
            146..=147 => self.remove_voter(),
            _ => {}
        }
    }

    /// A voter lost for good: the leader removes one (not itself) while
    /// the cluster has its most voters and a learner could take its place;
    /// it comes back later as a learner (`add_member`).
    fn remove_voter(&mut self) {
        let Some(l) = self.leader_index() else { return };
        let core = self.nodes[l].core.as_ref().expect("leader is up");
        let cs = core.conf_state();
        if cs.voters.len() < consensus::VOTERS_MAX || cs.learners.is_empty() {
            return;
        }
        let me = core.id();
        let others: Vec<u64> = cs.voters.iter().copied().filter(|v| *v != me).collect();
        let id = others[self.rng.gen_range(0..others.len())];
        let core = self.nodes[l].core.as_mut().expect("leader is up");
        if core
            .propose_conf_change(ConfChangeType::RemoveNode, id)
            .is_ok()
        {
            self.removals += 1;
        }
        self.pump(l);
    }

    fn crash_one(&mut self) {
        let i = self.rng.gen_range(0..self.nodes.len());
        self.crash(i);
    }

    /// Drops instance `i`'s core (only its database files survive, with what
    /// was committed) and what was on its way to it; what it sent stays in
    /// flight.
    fn crash(&mut self, i: usize) {
        let down_units = self.rng.gen_range(DOWN_UNITS_MIN..DOWN_UNITS_MAX);
        let node = &mut self.nodes[i];
        if node.core.take().is_none() {
            return;
        }
        node.unsynced = None;
        node.down_until = self.now + down_units;
        node.waiting.clear();
        node.reads.clear();
        self.crashes += 1;
        let id = node.id;
        let (dropped, kept): (Vec<InFlight>, Vec<InFlight>) =
            self.queue.drain(..).partition(|m| m.msg.to == id);
        self.queue = kept;
        for m in dropped {
            self.report_snapshot(m.msg.from, id, &m, false);
        }
    }

    /// Crash points may fire while fewer than a minority are down, and not
    /// once the network is healed (the run must then converge).
    fn allow_crash_points(&mut self, allowed: bool) {
        let down = self.nodes.iter().filter(|n| n.core.is_none()).count();
        let minority = (self.nodes.len() - 1) / 2;
        self.dice.lock().expect("dice").allowed = allowed && down < minority;
    }

    /// A crash that loses the data directory (a disk replaced): the instance
    /// restarts empty; the leader learns it lost what it acknowledged and
    /// sends it the database.
    fn wipe_one(&mut self) {
        // A healthy cluster loses one member's disk: every instance is up
        // and counts at least three voters, so the others hold every
        // committed entry and elect without it. (A wiped member of a
        // two-voter configuration is a lost majority: it waits for ever.)
        let healthy = self.nodes.iter().all(|n| {
            n.core
                .as_ref()
                .is_some_and(|c| c.conf_state().voters.len() >= 3)
        });
        if self.wiped || !healthy {
            return;
        }
        let i = self.rng.gen_range(0..self.nodes.len());
        self.crash(i);
        self.wiped = true;
        let node = &mut self.nodes[i];
        std::fs::remove_dir_all(&node.dir).expect("wipe a data directory");
        node.last_applied = 0;
        // What it acknowledged went with the disk: the re-admission, not
        // the restarted log, must make up for it.
        node.appended_ack = (0, 0, 0);
        node.vote_ack = (0, 0);
        self.finals.retain(|(n, _), _| *n != i);
    }

    fn partition_one(&mut self) {
        let i = self.rng.gen_range(0..self.nodes.len()) as u64 + 1;
        for j in 1..=self.nodes.len() as u64 {
            if j != i {
                self.cut.insert((i, j));
                self.cut.insert((j, i));
            }
        }
    }

    fn heal(&mut self) {
        self.healed = true;
        self.cut.clear();
        self.loss_percent = 0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.start(i);
            }
        }
        for _ in 0..self.nodes.len() {
            self.add_member();
        }
    }

    fn leader_index(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.core.as_ref().is_some_and(|c| c.is_leader()))
    }

    fn propose_one(&mut self) {
        let Some(i) = self.leader_index() else { return };
        let key = format!("k{}", self.rng.gen_range(0..16));
        let len = self.rng.gen_range(1..64);
        let value: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
        let ctx = self.rng.gen::<u64>().to_be_bytes().to_vec();
        // One in eight is a digest checkpoint, taken wherever it falls in
        // an applied batch: every replica's must match `states`.
        let cmd = if self.rng.gen_range(0..8) == 0 {
            Command::Checkpoint
        } else {
            Command::Put { key, value }
        };
        let node = &mut self.nodes[i];
        let core = node.core.as_mut().expect("leader is up");
        if core.propose(ctx.clone(), &cmd).is_ok() {
            node.waiting.insert(ctx);
        }
        self.pump(i);
    }

    /// A client's read on a random instance: it asks for a read index.
    fn read_one(&mut self) {
        let i = self.rng.gen_range(0..self.nodes.len());
        let ctx = self.rng.gen::<u64>().to_be_bytes().to_vec();
        let acked = self.answered.last_key_value().map_or(0, |(i, _)| *i);
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return;
        };
        core.read_index(ctx.clone());
        node.reads.insert(ctx, acked);
        self.pump(i);
    }

    /// Asks the leader to add the first configured instance that is not yet a
    /// member, as a learner (it is promoted by the leader once caught up).
    fn add_member(&mut self) {
        let Some(i) = self.leader_index() else { return };
        let core = self.nodes[i].core.as_ref().expect("leader is up");
        let cs = core.conf_state();
        let missing = (1..=self.nodes.len() as u64)
            .find(|id| !cs.voters.contains(id) && !cs.learners.contains(id));
        if let Some(id) = missing {
            let core = self.nodes[i].core.as_mut().expect("leader is up");
            let _ = core.propose_conf_change(ConfChangeType::AddLearnerNode, id);
            self.pump(i);
        }
    }

    fn step(&mut self) {
        self.now += 1;
        self.restart_due();
        self.deliver_due();
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_some() && self.now % TICK_UNITS == self.nodes[i].tick_phase {
                self.pump_ticked(i, true);
            }
        }
        self.check_leaders();
    }

    fn restart_due(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() && self.nodes[i].down_until <= self.now {
                self.start(i);
            }
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut rest = Vec::with_capacity(self.queue.len());
        for m in self.queue.drain(..) {
            if m.at <= now {
                due.push(m);
            } else {
                rest.push(m);
            }
        }
        self.queue = rest;
        due.sort_by_key(|m| (m.at, m.seq));
        for m in due {
            self.deliver(m);
        }
    }

    fn deliver(&mut self, m: InFlight) {
        let (from, to) = (m.msg.from, m.msg.to);
        let j = (to - 1) as usize;
        if self.nodes[j].core.is_none() {
            self.report_snapshot(from, to, &m, false);
            return;
        }
        if let Some((bytes, meta)) = &m.snapshot {
            let path = consensus::incoming_dir(&self.nodes[j].dir).join(&meta.file_name);
            std::fs::write(&path, bytes).expect("write incoming snapshot");
            let (size, sha) = consensus::file_digest(&path).expect("digest");
            assert_eq!(
                (size, sha.as_str()),
                (meta.size_bytes, meta.sha256.as_str()),
                "snapshot corrupted"
            );
        }
        if m.snapshot.is_some() {
            self.snapshots += 1;
        }
        if self.trace {
            eprintln!(
                "{} {}->{} {:?} idx {} term {} logterm {} rej {} hint {} n_ent {}",
                self.now,
                from,
                to,
                m.msg.get_msg_type(),
                m.msg.index,
                m.msg.term,
                m.msg.log_term,
                m.msg.reject,
                m.msg.reject_hint,
                m.msg.entries.len()
            );
        }
        let core = self.nodes[j].core.as_mut().expect("up");
        let r = core.step(m.msg.clone());
        if let (true, Err(e)) = (self.trace, r) {
            eprintln!("step error: {e}");
        }
        self.pump(j);
        self.report_snapshot(from, to, &m, true);
    }

    fn report_snapshot(&mut self, from: u64, to: u64, m: &InFlight, ok: bool) {
        if m.snapshot.is_none() {
            return;
        }
        if let Some(core) = self.nodes[(from - 1) as usize].core.as_mut() {
            core.report_snapshot(to, ok);
        }
        self.pump((from - 1) as usize);
    }

    /// Runs instance `i`'s Ready cycles and carries out what they return; a
    /// crash point that fires drops the instance right there.
    fn pump(&mut self, i: usize) {
        self.pump_ticked(i, false);
    }

    /// One raft-thread cycle of node `i`, as production runs it: the last
    /// pump's log writes handed back as synced (the file is whole: a crash
    /// here is a process's), then a tick if due, then the Ready cycles,
    /// whose writes wait unsynced until the next pump.
    fn pump_ticked(&mut self, i: usize, tick: bool) {
        if self.nodes[i].core.is_none() {
            return;
        }
        self.allow_crash_points(!self.healed);
        let node = &mut self.nodes[i];
        let core = node.core.as_mut().expect("up");
        let (waiting, dir, unsynced) = (&node.waiting, &node.dir, &mut node.unsynced);
        let mut out = Vec::new();
        let mut answers = Vec::new();
        let mut sink = |o: Output| {
            // A proposer is answered the moment its entry's Applied is handed
            // out: look at state.db then, through a connection of our own.
            if let Output::Applied { index, context, .. } = &o {
                if waiting.contains(context) {
                    answers.push((*index, context.clone(), applied_on_disk(dir)));
                }
            }
            out.push(o);
        };
        let handed = match unsynced.take() {
            Some(ticket) => ticket
                .sync()
                .map_err(|e| CoreError::Snapshot(e.to_string()))
                .and_then(|()| core.synced(&ticket, &mut sink)),
            None => Ok(()),
        };
        let result = handed.and_then(|()| {
            if tick {
                core.tick();
            }
            core.pump_async(&mut sink).map(|t| *unsynced = t)
        });
        match result {
            Ok(()) => {}
            Err(CoreError::Crashed(point)) => {
                let slot = match point {
                    CrashPoint::Sent => 0,
                    CrashPoint::Persisted => 1,
                    CrashPoint::Applied => 2,
                };
                self.point_crashes[slot] += 1;
                self.crash(i);
            }
            Err(e) => panic!("seed {}: node {} pump: {e}", self.seed, i + 1),
        }
        for (index, context, on_disk) in answers {
            self.check_answer(i, index, &context, on_disk, &out);
        }
        for o in out {
            self.handle_output(i, o);
        }
        self.check_state(i);
    }

    /// A proposal answered to its proposer must already be applied in the
    /// proposer's state.db; the entry is remembered, to be never lost.
    fn check_answer(&mut self, i: usize, index: u64, context: &[u8], on_disk: u64, out: &[Output]) {
        assert!(
            on_disk >= index,
            "seed {}: node {} answered the proposal at index {index} while its state.db had applied only up to {on_disk}: a proposal was acknowledged before it was applied",
            self.seed,
            i + 1
        );
        self.nodes[i].waiting.remove(context);
        if let Some(ids) = self.job_submits.remove(context) {
            self.acked_jobs.extend(ids);
        }
        let (term, digest) = out
            .iter()
            .find_map(|o| match o {
                Output::Applied {
                    index: x,
                    term,
                    digest,
                    ..
                } if *x == index => Some((*term, *digest)),
                _ => None,
            })
            .expect("the answer's Applied");
        self.answered.insert(index, (term, digest));
    }

    fn handle_output(&mut self, i: usize, o: Output) {
        match o {
            Output::Send(msg) => {
                self.note_promise(i, &msg);
                self.send(msg, None)
            }
            Output::SendSnapshot { msg, file, meta } => match std::fs::read(&file) {
                Ok(bytes) => self.send(msg, Some((bytes, meta))),
                Err(_) => {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.report_snapshot(msg.to, false);
                    }
                }
            },
            Output::Applied {
                index,
                term,
                digest,
                ..
            } => self.check_applied(i, index, term, digest),
            Output::Removed => {}
            Output::ReadReady { context, index } => self.check_read(i, &context, index),
            // Made at once here: the copy's index is whatever was applied now
            // (a core that crashed meanwhile never gets it).
            Output::MakeSnapshot(job) => {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.offer_snapshot(job.run());
                }
            }
        }
    }

    /// Remembers what an acknowledgment promises: an append response that the
    /// entries up to its index are durable in its term, a granted vote that
    /// the vote's term is.
    fn note_promise(&mut self, i: usize, msg: &Message) {
        let node = &mut self.nodes[i];
        match msg.get_msg_type() {
            MessageType::MsgAppendResponse if !msg.reject => {
                let at = node
                    .core
                    .as_ref()
                    .and_then(|c| c.log_term(msg.index))
                    .unwrap_or(0);
                let ack = (msg.term, msg.index, at);
                if (ack.0, ack.1) > (node.appended_ack.0, node.appended_ack.1) {
                    node.appended_ack = ack;
                }
            }
            MessageType::MsgRequestVoteResponse if !msg.reject => {
                node.vote_ack = node.vote_ack.max((msg.term, msg.to));
            }
            _ => {}
        }
    }

    fn send(&mut self, msg: Message, snapshot: Option<(Vec<u8>, SnapshotFile)>) {
        let lost = self.cut.contains(&(msg.from, msg.to))
            || self.rng.gen_range(0..100) < self.loss_percent;
        if lost {
            if snapshot.is_some() {
                let from = msg.from;
                if let Some(core) = self.nodes[(from - 1) as usize].core.as_mut() {
                    core.report_snapshot(msg.to, false);
                }
            }
            return;
        }
        // Delay of 1..=15 units: messages overtake each other (reordering).
        let at = self.now + self.rng.gen_range(1..=15);
        self.seq += 1;
        self.queue.push(InFlight {
            at,
            seq: self.seq,
            msg,
            snapshot,
        });
    }

    /// A read served once `index` is applied must see every write answered
    /// before the read began: its index may not be below theirs.
    fn check_read(&mut self, i: usize, context: &[u8], index: u64) {
        let Some(acked) = self.nodes[i].reads.remove(context) else {
            return;
        };
        assert!(
            index >= acked,
            "seed {}: node {} was given read index {index} although a write was acknowledged at {acked} before the read began: a stale read",
            self.seed,
            i + 1
        );
        self.served_reads += 1;
    }

    fn check_applied(&mut self, i: usize, index: u64, term: u64, digest: u64) {
        let node = &mut self.nodes[i];
        assert!(
            index > node.last_applied,
            "seed {}: node {} applied index {index} after {}",
            self.seed,
            node.id,
            node.last_applied
        );
        node.last_applied = index;
        if let Some(&(t, d)) = self.answered.get(&index) {
            assert!(
                (t, d) == (term, digest),
                "seed {}: the proposal answered at index {index} (term {t}) was lost: node {} applied another entry there (term {term})",
                self.seed,
                i + 1
            );
        }
        match self.log.get(&index) {
            Some(&(t, d)) => assert!(
                (t, d) == (term, digest),
                "seed {}: node {} applied a different entry at {index}: term {term} vs {t}",
                self.seed,
                i + 1
            ),
            None => {
                self.log.insert(index, (term, digest));
                if digest != consensus::fnv1a(&[]) {
                    self.proposals += 1;
                }
            }
        }
    }

    fn check_state(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let applied = core.applied_index();
        let digest = core.state().digest().expect("digest");
        let checkpoints = core.state().checkpoints();
        self.nodes[i].last_applied = self.nodes[i].last_applied.max(applied);
        let seed = self.seed;
        let expected = self.states.entry(applied).or_insert_with(|| digest.clone());
        assert!(
            *expected == digest,
            "seed {seed}: node {} state differs at applied index {applied}",
            i + 1
        );
        self.check_jobs(i);
        for cp in checkpoints {
            let expected = self.states.entry(cp.index).or_insert(cp.digest.clone());
            assert!(
                *expected == cp.digest,
                "seed {seed}: node {} checkpoint digest differs at index {}",
                i + 1,
                cp.index
            );
        }
    }

    fn check_leaders(&mut self) {
        for n in &self.nodes {
            let Some(core) = n.core.as_ref() else {
                continue;
            };
            assert!(
                core.conf_state().voters.len() <= self.voters_cap,
                "seed {}: node {} counts {} voters, more than {}",
                self.seed,
                n.id,
                core.conf_state().voters.len(),
                self.voters_cap
            );
            if !core.is_leader() {
                continue;
            }
            let prev = *self.leaders.entry(core.term()).or_insert(n.id);
            assert!(
                prev == n.id,
                "seed {}: two leaders in term {}: {prev} and {}",
                self.seed,
                core.term(),
                n.id
            );
        }
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader_index() else {
            return false;
        };
        let leader = self.nodes[l].core.as_ref().expect("up");
        let cs = leader.conf_state();
        let voters = self.nodes.len().min(consensus::VOTERS_MAX);
        let all_voters =
            cs.voters.len() == voters && cs.voters.len() + cs.learners.len() == self.nodes.len();
        let commit = leader.commit_index();
        // Until the leader commits in its own term, its commit index may lag
        // entries that earlier leaders acknowledged (and it holds).
        all_voters
            && self.jobs_done(leader)
            && leader.committed_in_term()
            && self.nodes.iter().all(|n| {
                n.core.as_ref().is_some_and(|c| {
                    c.applied_index() == commit
                        && c.state().digest().ok() == leader.state().digest().ok()
                })
            })
    }

    fn describe(&self, what: &str) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => format!(
                    "n{} term {} leader {:?} commit {} applied {} first {} voters {:?} learners {:?} prs [{}]",
                    n.id,
                    c.term(),
                    c.leader_id(),
                    c.commit_index(),
                    c.applied_index(),
                    c.state().applied_index(),
                    c.conf_state().voters,
                    c.conf_state().learners,
                    if c.is_leader() { c.progress_report() } else { String::new() }
                ),
                None => format!("n{} down", n.id),
            })
            .collect();
        format!("seed {}: {what}; {}", self.seed, nodes.join("; "))
    }
}

#[derive(Default, Debug)]
struct Totals {
    proposals: u64,
    answered: u64,
    reads: u64,
    snapshots: u64,
    crashes: u64,
    /// Crashes inside a Ready cycle, by point (`Sent`, `Persisted`, `Applied`).
    point_crashes: [u64; 3],
    terms: u64,
    wipes: u64,
    /// Job submissions answered, and final job states seen on replicas.
    jobs_acked: u64,
    jobs_final: u64,
    removals: u64,
}

impl Totals {
    fn add(&mut self, t: &Totals) {
        self.proposals += t.proposals;
        self.answered += t.answered;
        self.reads += t.reads;
        self.wipes += t.wipes;
        self.snapshots += t.snapshots;
        self.crashes += t.crashes;
        for (sum, n) in self.point_crashes.iter_mut().zip(t.point_crashes) {
            *sum += n;
        }
        self.terms += t.terms;
        self.jobs_acked += t.jobs_acked;
        self.jobs_final += t.jobs_final;
        self.removals += t.removals;
    }
}

fn run_seed(seed: u64, mutation: Option<Mutation>) -> Totals {
    run_seed_of(seed, mutation, None)
}

fn run_seed_of(seed: u64, mutation: Option<Mutation>, count: Option<usize>) -> Totals {
    run_seed_with(seed, mutation, count, false)
}

fn run_seed_with(
    seed: u64,
    mutation: Option<Mutation>,
    count: Option<usize>,
    all_voters: bool,
) -> Totals {
    let mut sim = Sim::build(seed, mutation, count, all_voters);
    sim.run();
    if sim.trace {
        eprintln!("{}", sim.describe("end"));
    }
    Totals {
        proposals: sim.proposals,
        answered: sim.answered.len() as u64,
        reads: sim.served_reads,
        snapshots: sim.snapshots,
        crashes: sim.crashes,
        point_crashes: sim.point_crashes,
        terms: sim.leaders.len() as u64,
        wipes: sim.wiped as u64,
        jobs_acked: sim.acked_jobs.len() as u64,
        jobs_final: sim.jobs_finished,
        removals: sim.removals,
    }
}

/// Runs seeds `range`, collecting failures so that every failing seed is named.
fn run_seeds(range: std::ops::Range<u64>) {
    run_seeds_of(range, None);
}

/// Runs seeds `range` with `count` instances (else 3 or 5 by the seed);
/// returns the totals once every seed passed and the faults happened.
fn run_seeds_of(range: std::ops::Range<u64>, count: Option<usize>) -> Totals {
    run_seeds_with(range, count, false)
}

/// `run_seeds_of`, the cluster starting with every instance a voter when
/// `all_voters` (`Sim::build`).
fn run_seeds_with(range: std::ops::Range<u64>, count: Option<usize>, all_voters: bool) -> Totals {
    let mut failed = Vec::new();
    let mut totals = Totals::default();
    let seeds = range.end - range.start;
    for seed in range {
        match std::panic::catch_unwind(|| run_seed_with(seed, None, count, all_voters)) {
            Ok(t) => totals.add(&t),
            Err(_) => {
                eprintln!("sim seed {seed} FAILED; replay: CLARO_SIM_SEED={seed} cargo test --test sim replay -- --nocapture");
                failed.push(seed);
            }
        }
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    // The faults must really have happened, or the seeds prove nothing.
    eprintln!("{seeds} seeds: {totals:?}");
    assert!(totals.crashes >= seeds, "too few crashes: {totals:?}");
    assert!(totals.jobs_acked >= seeds, "too few jobs: {totals:?}");
    assert!(
        totals.point_crashes.iter().all(|n| *n > 0),
        "a crash point never fired: {totals:?}"
    );
    assert!(
        totals.snapshots >= seeds,
        "too few database transfers: {totals:?}"
    );
    assert!(totals.terms >= 2 * seeds, "too few elections: {totals:?}");
    // Seven instances are rarely all up at once, which a wipe waits for:
    // that run asks for wipes of its own (`seven_instances_...`).
    if count.is_none() {
        assert!(totals.wipes >= seeds / 3, "too few wipes: {totals:?}");
    }
    assert!(
        totals.proposals >= 20 * seeds && totals.answered >= 10 * seeds,
        "too few commits or answers: {totals:?}"
    );
    assert!(
        totals.reads >= 5 * seeds,
        "too few reads served: {totals:?}"
    );
    totals
}

/// Seeds tried with a mutation before concluding the checks miss it.
const MUTANT_SEEDS: u64 = 40;

/// Checking the checker: with a deliberate fault in the core, some seed must
/// fail, and the first that does must fail on a guarantee the fault breaks
/// (its message contains one of `names`).
fn expect_caught(mutation: Mutation, names: &[&str]) {
    for seed in 0..MUTANT_SEEDS {
        let Err(panic) = std::panic::catch_unwind(|| run_seed(seed, Some(mutation))) else {
            continue;
        };
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(
            names.iter().any(|name| msg.contains(name)),
            "seed {seed} with {mutation:?} failed, but not on the broken guarantee: {msg}"
        );
        eprintln!("{mutation:?} caught by seed {seed}: {msg}");
        return;
    }
    panic!("no seed of 0..{MUTANT_SEEDS} notices {mutation:?}");
}

fn mutation_from_env() -> Option<Mutation> {
    match std::env::var("CLARO_SIM_MUTATION").ok()?.as_str() {
        "ack-before-persist" => Some(Mutation::AckBeforePersist),
        "answer-before-apply" => Some(Mutation::AnswerBeforeApply),
        "read-without-quorum" => Some(Mutation::ReadWithoutQuorum),
        "forget-vote" => Some(Mutation::ForgetVote),
        other => panic!(
            "CLARO_SIM_MUTATION={other:?}: expected ack-before-persist, answer-before-apply, read-without-quorum or forget-vote"
        ),
    }
}

#[test]
fn seeds_000_to_049() {
    run_seeds(0..50);
}

#[test]
fn seeds_050_to_099() {
    run_seeds(50..100);
}

#[test]
fn seeds_100_to_149() {
    run_seeds(100..150);
}

#[test]
fn seeds_150_to_199() {
    run_seeds(150..200);
}

/// Seven instances: at most five voters at any time on any replica, the
/// other two non-voting members that hold every committed entry; a voter
/// removed for good is replaced by a caught-up learner, and the healed
/// cluster has five voters again (`converged`). Replay one seed with
/// `CLARO_SIM_SEED=N CLARO_SIM_COUNT=7 cargo test --test sim replay`.
#[test]
fn seven_instances_five_voters_seeds_000_to_029() {
    let totals = run_seeds_of(0..30, Some(SEVEN));
    assert!(totals.removals >= 5, "too few voters removed: {totals:?}");
    assert!(totals.wipes >= 1, "no member lost its data: {totals:?}");
}

/// Seven instances in a cluster made with seven voters (by a version
/// without the limit, or promoted by one during a rolling upgrade): the
/// coordinator makes the last in the configuration's order non-voting
/// members, one at a time, handing its own role on first when it is one of
/// them, through crashes, partitions and lost messages; the healed cluster
/// has five voters and two non-voting members holding every entry
/// (`converged`), every acknowledged job ended once. Replay one seed with
/// `CLARO_SIM_SEED=N CLARO_SIM_COUNT=7 CLARO_SIM_ALL_VOTERS=1 cargo test
/// --test sim replay`.
#[test]
fn seven_voters_become_five_seeds_000_to_009() {
    let totals = run_seeds_with(0..10, Some(SEVEN), true);
    assert!(totals.removals >= 2, "too few voters removed: {totals:?}");
}

/// Replays one seed (`CLARO_SIM_SEED`, default 0) with its panic message.
#[test]
fn replay() {
    let seed = std::env::var("CLARO_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let count = std::env::var("CLARO_SIM_COUNT")
        .ok()
        .and_then(|s| s.parse().ok());
    let all_voters = std::env::var("CLARO_SIM_ALL_VOTERS").is_ok_and(|v| v == "1");
    let totals = run_seed_with(seed, mutation_from_env(), count, all_voters);
    eprintln!("seed {seed}: {totals:?}");
}

/// A follower that acknowledges entries before they are durable is caught.
#[test]
fn mutation_ack_before_persist_is_caught() {
    // Votes are acknowledgments too: the mutation sends them early as well.
    expect_caught(
        Mutation::AckBeforePersist,
        &[
            "an acknowledgment was sent before its entries were durable",
            "a vote was sent before it was durable",
        ],
    );
}

/// An instance that keeps its term but forgets whom it voted for is
/// caught: the vote promise is exact, not only its term.
#[test]
fn mutation_forget_vote_is_caught() {
    expect_caught(
        Mutation::ForgetVote,
        &["a vote was sent before it was durable"],
    );
}

/// A proposer answered before its entry is applied is caught.
#[test]
fn mutation_answer_before_apply_is_caught() {
    expect_caught(
        Mutation::AnswerBeforeApply,
        &["a proposal was acknowledged before it was applied"],
    );
}

/// A read served without the coordinator confirming it still leads is caught.
#[test]
fn mutation_read_without_quorum_is_caught() {
    expect_caught(Mutation::ReadWithoutQuorum, &["a stale read"]);
}

/// The same seed gives the same history: the replay promise holds.
#[test]
fn same_seed_same_history() {
    let mut a = Sim::new(7, None);
    a.run();
    let mut b = Sim::new(7, None);
    b.run();
    assert_eq!(a.log, b.log);
    assert_eq!(a.leaders, b.leaders);
}

/// A long run for soak testing, not part of `cargo test`:
/// `CLARO_SIM_SEEDS=200..20000 cargo test --release --test sim soak -- --ignored`.
#[test]
#[ignore]
fn soak() {
    let spec = std::env::var("CLARO_SIM_SEEDS").unwrap_or_else(|_| "200..2200".into());
    let (a, b) = spec.split_once("..").expect("CLARO_SIM_SEEDS is FROM..TO");
    run_seeds(a.parse().expect("FROM")..b.parse().expect("TO"));
}

/// Slots of every simulated instance.
const SIM_SLOTS: u32 = 2;

/// Jobs in the simulation: submissions (single, batched, and either one
/// placed in its own entry from the leader's applied view), the
/// coordinator's placements (from
/// `scheduler::place`, without waiting for the previous ones to apply, so
/// that the apply-time guards are exercised), workers that report from their
/// own, possibly stale, replica, and releases of crashed instances. Checked:
/// no replica ever shows an instance over its slots, a job once final stays
/// so with the same state on every replica, every acknowledged submission
/// exists once and ends.
impl Sim {
    fn name(&self, i: usize) -> String {
        format!("n{}", self.nodes[i].id)
    }

    /// A submission through the leader, as the product makes them: one job
    /// (`JobSubmit`), a batch (`JobsSubmit`, `submit --many`), or either
    /// placed in its own entry (`Placed`, from the leader's applied view,
    /// which may be behind its own earlier placements: the apply-time
    /// guard keeps every instance within its slots).
    fn submit_job(&mut self) {
        let Some(l) = self.leader_index() else { return };
        let count = if self.rng.gen_bool(0.3) {
            self.rng.gen_range(2..=6)
        } else {
            1
        };
        let jobs: Vec<(String, JobSpec)> = (0..count)
            .map(|_| {
                let id = claro::work::jobs::new_job_id(self.now, self.rng.gen());
                let mut spec = JobSpec::script("1");
                spec.priority = self.rng.gen_range(-2..=2);
                spec.max_attempts = 3;
                spec.timeout_ms = 1000;
                (id, spec)
            })
            .collect();
        let ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
        let submission = if count == 1 {
            let (id, spec) = jobs.into_iter().next().expect("one job");
            Command::JobSubmit {
                id,
                spec,
                at_ms: self.now,
            }
        } else {
            Command::JobsSubmit {
                jobs,
                at_ms: self.now,
            }
        };
        let cmd = if self.rng.gen_bool(0.5) {
            self.placed(l, submission)
        } else {
            submission
        };
        let ctx = self.rng.gen::<u64>().to_be_bytes().to_vec();
        let node = &mut self.nodes[l];
        if node
            .core
            .as_mut()
            .expect("leader is up")
            .propose(ctx.clone(), &cmd)
            .is_ok()
        {
            node.waiting.insert(ctx.clone());
            self.job_submits.insert(ctx, ids);
        }
        self.pump(l);
    }

    /// The instances that are up, with their active attempts as leader
    /// `l`'s replica counts them.
    fn candidates(&self, l: usize) -> Vec<Candidate> {
        let core = self.nodes[l].core.as_ref().expect("leader is up");
        let active = jobdb::active_counts(core.state().conn()).expect("active");
        (0..self.nodes.len())
            .filter(|&j| self.nodes[j].core.is_some())
            .map(|j| self.name(j))
            .map(|n| Candidate {
                slots: SIM_SLOTS,
                active: active.get(&n).copied().unwrap_or(0),
                name: n,
                last_placed: 0,
            })
            .collect()
    }

    /// `submission` with placements of its jobs on the instances that are
    /// up, from the leader's applied view (`Command::Placed`); the
    /// submission alone when nothing fits.
    fn placed(&mut self, l: usize, submission: Command) -> Command {
        let mut candidates = self.candidates(l);
        let queued: Vec<scheduler::Queued> = submission
            .submitted_jobs()
            .iter()
            .map(|(id, spec)| scheduler::Queued {
                id: id.to_string(),
                attempt: 1,
                priority: spec.priority,
                not_before_ms: 0,
            })
            .collect();
        let assignments = scheduler::place(&queued, &mut candidates, self.now, 16);
        if assignments.is_empty() {
            return submission;
        }
        Command::Placed {
            submission: Box::new(submission),
            assignments,
            at_ms: self.now,
        }
    }

    /// The leader places queued jobs on the instances that are up.
    fn schedule_jobs(&mut self) {
        let Some(l) = self.leader_index() else { return };
        let core = self.nodes[l].core.as_ref().expect("leader is up");
        let queued = jobdb::queued(core.state().conn(), 64).expect("queued");
        let mut candidates = self.candidates(l);
        let batch = scheduler::place(&queued, &mut candidates, self.now, 16);
        if batch.is_empty() {
            return;
        }
        let cmd = Command::JobAssign {
            assignments: batch,
            at_ms: self.now,
        };
        let ctx = self.rng.gen::<u64>().to_be_bytes().to_vec();
        let _ = self.nodes[l].core.as_mut().expect("up").propose(ctx, &cmd);
        self.pump(l);
    }

    fn work_one(&mut self) {
        let i = self.rng.gen_range(0..self.nodes.len());
        self.work_on(i);
    }

    /// Instance `i` ends one or more attempts its own replica says it
    /// holds, and reports them through the leader (a stale report is fenced
    /// off there): one end (`JobFinished`), or a batch (`JobsFinished`, as
    /// the product's workers report), which the leader may send with
    /// placements of queued jobs in the slots its current ends free
    /// (`Placed`, as `node::work::jobs::place_after_ends` does).
    fn work_on(&mut self, i: usize) {
        let name = self.name(i);
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let mine = jobdb::active_on(core.state().conn(), &name).expect("active_on");
        if mine.is_empty() {
            return;
        }
        let Some(l) = self.leader_index() else { return };
        let count = self.rng.gen_range(1..=mine.len());
        let mut ends = Vec::new();
        for job in &mine[..count] {
            let ok = self.rng.gen_bool(0.8);
            if ok {
                self.job_reports
                    .insert((job.id.clone(), job.attempt, name.clone()));
            }
            let outcome = Outcome {
                ok,
                result: ok.then(|| "1".into()),
                error: (!ok).then(|| "failed in the simulation".into()),
                log: String::new(),
                profile: Vec::new(),
            };
            ends.push(AttemptEnd {
                id: job.id.clone(),
                attempt: job.attempt,
                outcome,
            });
        }
        let cmd = if count == 1 && self.rng.gen_bool(0.3) {
            let end = ends.pop().expect("one end");
            Command::JobFinished {
                id: end.id,
                instance: name,
                attempt: end.attempt,
                at_ms: self.now,
                outcome: end.outcome,
            }
        } else {
            let report = Command::JobsFinished {
                instance: name.clone(),
                at_ms: self.now,
                ends,
            };
            if self.rng.gen_bool(0.5) {
                self.placed_after_ends(l, report)
            } else {
                report
            }
        };
        let ctx = self.rng.gen::<u64>().to_be_bytes().to_vec();
        let _ = self.nodes[l].core.as_mut().expect("up").propose(ctx, &cmd);
        self.pump(l);
    }

    /// An end report with placements of queued jobs, from leader `l`'s
    /// applied view with the slots of the report's current ends counted
    /// free; the report alone when nothing fits.
    fn placed_after_ends(&mut self, l: usize, report: Command) -> Command {
        let Command::JobsFinished { instance, ends, .. } = &report else {
            unreachable!("an end report")
        };
        let core = self.nodes[l].core.as_ref().expect("leader is up");
        let conn = core.state().conn();
        let freed = jobdb::current_ends(conn, instance, ends).expect("current ends");
        let queued = jobdb::queued(conn, 64).expect("queued");
        let mut candidates = self.candidates(l);
        for c in candidates.iter_mut().filter(|c| c.name == *instance) {
            assert!(
                freed <= c.active,
                "{instance}: {freed} ends of {}",
                c.active
            );
            c.active -= freed;
        }
        let assignments = scheduler::place(&queued, &mut candidates, self.now, 16);
        if assignments.is_empty() {
            return report;
        }
        let placed = Command::Placed {
            submission: Box::new(report),
            assignments,
            at_ms: self.now,
        };
        placed.validate().expect("a valid placed report");
        placed
    }

    /// The leader releases the attempts of instances that are down.
    fn release_down(&mut self) {
        let Some(l) = self.leader_index() else { return };
        let down: Vec<String> = (0..self.nodes.len())
            .filter(|&j| self.nodes[j].core.is_none())
            .map(|j| self.name(j))
            .collect();
        let core = self.nodes[l].core.as_ref().expect("up");
        let mut attempts = Vec::new();
        for n in &down {
            let jobs = jobdb::active_on(core.state().conn(), n).expect("active_on");
            attempts.extend(jobs.into_iter().map(|j| (j.id, j.attempt)));
        }
        if attempts.is_empty() {
            return;
        }
        let cmd = Command::JobRelease {
            attempts,
            reason: "down in the simulation".into(),
            at_ms: self.now,
        };
        let ctx = self.rng.gen::<u64>().to_be_bytes().to_vec();
        let _ = self.nodes[l].core.as_mut().expect("up").propose(ctx, &cmd);
        self.pump(l);
    }

    /// Every acknowledged submission exists in the leader's state, and no
    /// job is left unfinished.
    fn jobs_done(&self, leader: &Core) -> bool {
        let conn = leader.state().conn();
        let counts = jobdb::counts(conn).expect("counts");
        let unfinished = counts.iter().any(|(state, _kind, n)| {
            *n > 0 && JobState::parse(state).is_some_and(|s| !s.is_final())
        });
        !unfinished
            && self
                .acked_jobs
                .iter()
                .all(|id| jobdb::job(conn, id).expect("job").is_some())
    }

    fn check_jobs(&mut self, i: usize) {
        let seed = self.seed;
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let conn = core.state().conn();
        for (instance, n) in jobdb::active_counts(conn).expect("active counts") {
            assert!(
                n <= SIM_SLOTS,
                "seed {seed}: node {} shows {instance} holding {n} attempts, over its {SIM_SLOTS} slots",
                i + 1
            );
        }
        if !self.now.is_multiple_of(100) {
            return;
        }
        let all = jobdb::list(conn, &jobdb::JobFilter::default(), 100_000).expect("list");
        for j in all {
            let key = (i, j.id.clone());
            match (self.finals.get(&key), j.state.is_final()) {
                (Some(seen), _) => assert!(
                    *seen == j.state,
                    "seed {seed}: node {} shows job {} {:?} after {:?}: a final state changed",
                    i + 1,
                    j.id,
                    j.state,
                    seen
                ),
                (None, true) => {
                    let by = (
                        j.id.clone(),
                        j.attempt,
                        j.instance.clone().unwrap_or_default(),
                    );
                    assert!(
                        j.state != JobState::Succeeded || self.job_reports.contains(&by),
                        "seed {seed}: node {} shows job {} succeeded in attempt {} on {:?}, which never reported it: a stale report counted",
                        i + 1,
                        j.id,
                        j.attempt,
                        j.instance
                    );
                    self.finals.insert(key, j.state);
                    self.jobs_finished += 1;
                }
                (None, false) => {}
            }
        }
    }
}
