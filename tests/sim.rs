//! Deterministic simulation of a claro cluster's consensus core.
//!
//! Several instances' real `Core` (raft-rs driver, SQLite log store, SQLite state
//! machine) run in one process over a simulated network and clock. Everything
//! random comes from one seed: message delay, loss, reordering, partitions,
//! crashes (the `Core` is dropped; only its database files survive) and
//! restarts, at most one wipe per seed (a crash after which the instance's
//! data directory is gone: it restarts empty and must be sent the database),
//! and the client proposals. After every step the invariants of
//! BRIEF §5 that concern consensus are checked:
//!
//! - at most one coordinator (Raft leader) per term;
//! - no committed entry is lost or reordered: every replica applies, at each
//!   index, the same entry (term and content digest), in increasing order;
//! - replicas at the same applied index have identical state (digest of state.db);
//! - at the end, with the network healed, every replica converges.
//!
//! A failing seed is printed; `CLARO_SIM_SEED=N cargo test --test sim replay`
//! runs exactly that seed again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use claro::consensus::{self, Core, CoreConfig, Output, SnapshotFile};
use claro::state::Command;
use raft::eraftpb::{ConfChangeType, Message};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TICK_UNITS: u64 = 10;
const RUN_UNITS: u64 = 4000;
const SETTLE_UNITS_MAX: u64 = 6000;

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
    proposals: u64,
    snapshots: u64,
    crashes: u64,
    /// A member's data directory was wiped (at most once: losing the data of
    /// a majority is beyond what any replication can survive).
    wiped: bool,
    /// `CLARO_SIM_TRACE=1`: print every delivered message.
    trace: bool,
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
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = if rng.gen_bool(0.5) { 3 } else { 5 };
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes = (1..=count)
            .map(|id| SimNode {
                id,
                dir: tmp.path().join(format!("n{id}")),
                core: None,
                tick_phase: rng.gen_range(0..TICK_UNITS),
                down_until: 0,
                last_applied: 0,
            })
            .collect();
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
            proposals: 0,
            snapshots: 0,
            crashes: 0,
            wiped: false,
            trace: std::env::var("CLARO_SIM_TRACE").is_ok(),
            _tmp: tmp,
        };
        consensus::bootstrap(&sim.nodes[0].dir, 1, &format!("sim-{seed}"), false)
            .expect("bootstrap");
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let core = Core::open(&node.dir, core_config(node.id), &logger()).expect("open core");
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
            self.step();
        }
        assert!(
            self.converged(),
            "{}",
            self.describe("replicas did not converge")
        );
        assert!(self.proposals > 0, "no proposal was committed");
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
            56..=65 => self.wipe_one(),
            _ => {}
        }
    }

    fn crash_one(&mut self) {
        let i = self.rng.gen_range(0..self.nodes.len());
        self.crash(i);
    }

    fn crash(&mut self, i: usize) {
        let down_units = self.rng.gen_range(50..800);
        let node = &mut self.nodes[i];
        if node.core.take().is_some() {
            node.down_until = self.now + down_units;
            self.crashes += 1;
            let id = node.id;
            let (dropped, kept): (Vec<InFlight>, Vec<InFlight>) =
                self.queue.drain(..).partition(|m| m.msg.to == id);
            self.queue = kept;
            for m in dropped {
                self.report_snapshot(m.msg.from, id, &m, false);
            }
        }
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
        let core = self.nodes[i].core.as_mut().expect("leader is up");
        let _ = core.propose(ctx, &Command::Put { key, value });
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
                self.nodes[i].core.as_mut().expect("up").tick();
                self.pump(i);
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

    fn pump(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        core.pump(&mut |o| out.push(o))
            .unwrap_or_else(|e| panic!("seed {}: node {} pump: {e}", self.seed, i + 1));
        for o in out {
            self.handle_output(i, o);
        }
        self.check_state(i);
    }

    fn handle_output(&mut self, i: usize, o: Output) {
        match o {
            Output::Send(msg) => self.send(msg, None),
            Output::SendSnapshot { msg, file, meta } => match std::fs::read(&file) {
                Ok(bytes) => self.send(msg, Some((bytes, meta))),
                Err(_) => {
                    let to = msg.to;
                    self.nodes[i]
                        .core
                        .as_mut()
                        .expect("up")
                        .report_snapshot(to, false);
                }
            },
            Output::Applied {
                index,
                term,
                digest,
                ..
            } => self.check_applied(i, index, term, digest),
            Output::Removed => {}
            // Made at once here: the copy's index is whatever was applied now.
            Output::MakeSnapshot(job) => {
                let made = job.run();
                self.nodes[i]
                    .core
                    .as_mut()
                    .expect("up")
                    .offer_snapshot(made);
            }
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
        self.nodes[i].last_applied = self.nodes[i].last_applied.max(applied);
        let seed = self.seed;
        let expected = self.states.entry(applied).or_insert_with(|| digest.clone());
        assert!(
            *expected == digest,
            "seed {seed}: node {} state differs at applied index {applied}",
            i + 1
        );
    }

    fn check_leaders(&mut self) {
        for n in &self.nodes {
            let Some(core) = n.core.as_ref() else {
                continue;
            };
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
        let all_voters = leader.conf_state().voters.len() == self.nodes.len();
        let commit = leader.commit_index();
        all_voters
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
    snapshots: u64,
    crashes: u64,
    terms: u64,
    wipes: u64,
}

fn run_seed(seed: u64) -> Totals {
    let mut sim = Sim::new(seed);
    sim.run();
    if sim.trace {
        eprintln!("{}", sim.describe("end"));
    }
    Totals {
        proposals: sim.proposals,
        snapshots: sim.snapshots,
        crashes: sim.crashes,
        terms: sim.leaders.len() as u64,
        wipes: sim.wiped as u64,
    }
}

/// Runs seeds `range`, collecting failures so that every failing seed is named.
fn run_seeds(range: std::ops::Range<u64>) {
    let mut failed = Vec::new();
    let mut totals = Totals::default();
    let seeds = range.end - range.start;
    for seed in range {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        if let Ok(t) = &result {
            totals.proposals += t.proposals;
            totals.snapshots += t.snapshots;
            totals.crashes += t.crashes;
            totals.terms += t.terms;
            totals.wipes += t.wipes;
        }
        if result.is_err() {
            eprintln!("sim seed {seed} FAILED; replay: CLARO_SIM_SEED={seed} cargo test --test sim replay -- --nocapture");
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    // The faults must really have happened, or the seeds prove nothing.
    eprintln!("{seeds} seeds: {totals:?}");
    assert!(totals.crashes >= seeds, "too few crashes: {totals:?}");
    assert!(
        totals.snapshots >= seeds,
        "too few database transfers: {totals:?}"
    );
    assert!(totals.terms >= 2 * seeds, "too few elections: {totals:?}");
    assert!(totals.wipes >= seeds / 2, "too few wipes: {totals:?}");
    assert!(
        totals.proposals >= 20 * seeds,
        "too few commits: {totals:?}"
    );
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

/// Replays one seed (`CLARO_SIM_SEED`, default 0) with its panic message.
#[test]
fn replay() {
    let seed = std::env::var("CLARO_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let totals = run_seed(seed);
    eprintln!("seed {seed}: {totals:?}");
}

/// The same seed gives the same history: the replay promise holds.
#[test]
fn same_seed_same_history() {
    let mut a = Sim::new(7);
    a.run();
    let mut b = Sim::new(7);
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
