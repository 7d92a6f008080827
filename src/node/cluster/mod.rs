//! The cluster's own plumbing in one instance: it owns the consensus core
//! and carries out what the core and the membership decisions ask for, over
//! QUIC. The work (`node::work`) and the web (`node::web`) are built on it
//! and reach it only through the handle re-exported here: `Shared` (its
//! public fields and methods), `propose`, `read`, `confirm_read`,
//! `read_setting`, `respond` and `own_view`. It imports neither of them: what
//! they need to hear (something was applied; the instance is stopping) they
//! hand in as hooks (`Shared::on_applied`, `stop`'s drain).
//!
//! - `startup`: discovery, bootstrap, join, waiting (decided by `membership`);
//! - the raft loop (here): ticks, Ready cycles, dispatch of their outputs;
//! - `peers`: connections to the other instances, and outbound Raft messages;
//! - `handlers`: inbound connections and answers to peer and client requests;
//! - `replicated`: writes held through a coordinator change, linearizable reads;
//! - `gossip`: the periodic exchange that keeps the live view fresh;
//! - `snapshot`: streaming the database to a late joiner, resumably;
//! - `backup`: a consistent copy of the database streamed to `claro backup`;
//! - `rejoin`: incarnations and the re-admission of members that lost data;
//! - `integrity`: digest checkpoints and the verdict on this replica;
//! - `damage`: a damaged data directory set aside;
//! - `stop`: graceful stop (hand over the coordinator role, leave, record it);
//! - `upgrade`: the cluster's protocol level, raised once every voter
//!   speaks a newer protocol (rolling upgrades);
//! - `space`: disk full (the space alarm: writes refused, the core parked
//!   and reopened once space is back).
//!
//! What it must not do: decide anything Raft decides, touch state.db except
//! through the core, or import the work or the web.

mod backup;
mod damage;
mod gossip;
mod handlers;
mod integrity;
mod job_wait;
mod live;
mod peers;
mod rejoin;
mod replicated;
mod revocation;
mod snapshot;
mod space;
mod startup;
mod stop;
mod upgrade;

pub(crate) use handlers::{own_view, read_setting, respond};
pub(crate) use replicated::{confirm_read, propose, read};
pub(crate) use space::filesystem_bytes;

pub(crate) use crate::clock::now_ms;
pub(crate) use crate::consensus::raft_id;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_std::channel::{Receiver, Sender};

use crate::cluster::view::ClusterView;
use crate::config::{Config, Role, ServerConf};
use crate::consensus::{Core, CoreConfig, Output};
use crate::proto::{Hello, StopRecord};
use crate::state::Command;
use crate::transport::Endpoint;

/// Outbound Raft messages queued per peer before new ones are dropped (raft
/// retransmits; a stalled peer must not grow memory without bound).
const PEER_QUEUE_COUNT_MAX: usize = 4096;
/// How long a proposal waits to be applied before the client is told it failed.
const PROPOSAL_WAIT_MS: u64 = 10_000;
/// Timeout of one request to a peer.
const PEER_CALL_MS: u64 = 2_000;
/// Entries kept in the log behind the applied index.
const LOG_KEEP_ENTRIES: u64 = 10_000;
/// Largest append message raft builds.
const RAFT_MSG_BYTES_MAX: u64 = 1024 * 1024;

/// How `claro serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: Config,
    pub name: String,
    pub force_bootstrap: bool,
}

/// What the instance is doing, beside what Raft says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Discovering,
    Waiting {
        reason: String,
        start_first: Vec<String>,
    },
    Joining,
    Running,
    Stopping,
}

pub(crate) struct Shared {
    pub cfg: Config,
    pub me: ServerConf,
    pub id: u64,
    pub names: HashMap<u64, String>,
    pub dir: PathBuf,
    pub endpoint: Endpoint,
    pub started_at_ms: u64,
    pub force_bootstrap: bool,
    /// The raft loop's wake-up channel, for whichever path starts the core.
    wake_rx: Receiver<()>,
    /// Set by the one path that starts this instance as a member or joiner
    /// (the discovery loop, or a bootstrapper's `Adopt` request).
    start_claimed: AtomicBool,
    core: Mutex<Option<Core>>,
    phase: Mutex<Phase>,
    wake: Sender<()>,
    pub stop_tx: Sender<()>,
    pub stopping: AtomicBool,
    pub peers: peers::Peers,
    waiters: Mutex<HashMap<u64, Sender<u64>>>,
    /// Reads waiting for their read index, by tag, and reads whose index is
    /// known, waiting for it to be applied here.
    read_waiters: Mutex<HashMap<u64, Sender<u64>>>,
    read_parked: Mutex<Vec<(u64, Sender<u64>)>>,
    proposal_seq: AtomicU64,
    pub last_stop: Mutex<Option<StopRecord>>,
    facts: Mutex<crate::data_dir::LocalFacts>,
    /// What this instance last heard from every server (`claro status`).
    view: Mutex<ClusterView>,
    /// Servers seen in another cluster than this one: name -> (its cluster
    /// id, when seen). At most one entry per configured server.
    other_clusters: Mutex<HashMap<String, (String, u64)>>,
    /// The space alarm, and the core it parked (`space`).
    space: space::Space,
    /// Why this instance has no database after damage (`damage`).
    damage: damage::Damage,
    pub rejoin: rejoin::Rejoin,
    /// Called after every Ready cycle that applied something: the work wakes
    /// its loops, the web its event hub (`on_applied`).
    applied_hooks: std::sync::RwLock<Vec<AppliedHook>>,
    /// Job reads held until their job ends (`job_wait`).
    pub(crate) job_waits: job_wait::JobWaits,
    /// Turns a submission into a placed one as the coordinator proposes it
    /// (`on_propose`); set by the work.
    propose_hook: std::sync::OnceLock<ProposeHook>,
    /// Answers for the runs of this instance (`on_live`); set by the work.
    live_hook: std::sync::OnceLock<LiveHook>,
    /// A database transfer into this instance is under way (`snapshot`:
    /// one at a time).
    snapshot_receiving: AtomicBool,
    /// The certificates refused at every handshake (`revocation`).
    revocation: revocation::Revocation,
    /// This instance's own certificate and the CA's, as loaded at start:
    /// ("server" | "ca", facts), for the expiry warnings.
    pub certificates: Vec<(&'static str, crate::tls::CertFacts)>,
    /// What is wrong with how this instance is set up, though it runs
    /// (jobs run as root): its status note when nothing more pressing is.
    setup_note: std::sync::OnceLock<String>,
}

/// What a part built on the cluster runs when something was applied: short
/// and non-blocking (it runs on the raft thread, outside the core's lock).
pub(crate) type AppliedHook = Box<dyn Fn() + Send + Sync>;

/// What the coordinator runs on each write it is about to propose: it may
/// return a fuller command of the same effect (a submission with the
/// placements of its jobs). Short; it runs on the proposing task.
pub(crate) type ProposeHook = Box<dyn Fn(&Command) -> Option<Command> + Send + Sync>;

/// The log (from a byte) and progress of a job running on this instance;
/// `None` when it does not run here.
pub(crate) type LiveHook = Box<dyn Fn(&str, u64) -> Option<crate::proto::LiveView> + Send + Sync>;

impl Shared {
    /// Sets the hook that answers for the runs of this instance; by the
    /// composition root, once.
    pub fn on_live(&self, hook: LiveHook) {
        let _ = self.live_hook.set(hook);
    }

    fn live_here(&self, id: &str, after_bytes: u64) -> Option<crate::proto::LiveView> {
        self.live_hook.get().and_then(|hook| hook(id, after_bytes))
    }

    /// Sets the hook the coordinator runs on each write before proposing
    /// it; by the composition root, once, before the raft loop starts.
    pub fn on_propose(&self, hook: ProposeHook) {
        let _ = self.propose_hook.set(hook);
    }

    /// The command to propose for `command`: the hook's, or itself.
    pub(crate) fn before_propose(&self, command: &Command) -> Option<Command> {
        self.propose_hook.get().and_then(|hook| hook(command))
    }

    /// Adds a hook run after every cycle that applied something; set by the
    /// composition root (`node::serve`) before the raft loop starts.
    pub fn on_applied(&self, hook: AppliedHook) {
        self.applied_hooks.write().expect("hooks lock").push(hook);
    }

    /// Sets the note about how this instance is set up; by the
    /// composition root, once, as soon as the instance is built.
    pub fn set_setup_note(&self, note: String) {
        let _ = self.setup_note.set(note);
    }

    pub fn setup_note(&self) -> Option<String> {
        self.setup_note.get().cloned()
    }

    pub fn core(&self) -> MutexGuard<'_, Option<Core>> {
        self.core.lock().expect("core lock")
    }

    /// Claims the start of this instance; true for the first caller only.
    /// Under the phase lock, so that a discovery round that decided to wait
    /// cannot overwrite the phase of a start claimed meanwhile.
    pub fn claim_start(&self) -> bool {
        let _phase = self.phase.lock().expect("phase lock");
        !self.start_claimed.swap(true, Ordering::SeqCst)
    }

    /// Gives a claimed start back: a bootstrap that did not form its cluster
    /// (`membership::bootstrap_outcome`) looks again.
    pub fn release_start(&self) {
        let _phase = self.phase.lock().expect("phase lock");
        self.start_claimed.store(false, Ordering::SeqCst);
    }

    /// Sets a waiting phase unless the start was claimed meanwhile (false).
    pub fn wait_unless_started(&self, p: Phase) -> bool {
        let mut cur = self.phase.lock().expect("phase lock");
        if self.start_claimed.load(Ordering::SeqCst) {
            return false;
        }
        if *cur != p {
            log_phase(&p);
            *cur = p;
        }
        true
    }

    pub fn start_claimed(&self) -> bool {
        self.start_claimed.load(Ordering::SeqCst)
    }

    /// `name` (proven by its certificate) says it is in cluster `id`.
    pub fn note_cluster_of(&self, name: &str, id: &str) {
        let mine = self.cluster_id();
        let mut others = self.other_clusters.lock().expect("clusters lock");
        if mine.as_deref() == Some(id) || self.cfg.server(name).is_none() {
            others.remove(name);
            return;
        }
        others.insert(name.to_string(), (id.to_string(), now_ms()));
    }

    /// Another cluster under this config, seen within `node_timeout_ms`.
    pub fn conflict(&self) -> Option<crate::cluster::membership::Conflict> {
        let now = now_ms();
        let window_ms = self.cfg.timing.node_timeout_ms;
        let others: Vec<(String, String)> = self
            .other_clusters
            .lock()
            .expect("clusters lock")
            .iter()
            .filter(|(_, (_, at))| now.saturating_sub(*at) < window_ms)
            .map(|(n, (id, _))| (n.clone(), id.clone()))
            .collect();
        // Only then the cluster id: every write asks, and it takes the core's lock.
        if others.is_empty() {
            return None;
        }
        let mine_id = self.cluster_id()?;
        let view = self.view();
        let mut mine = vec![self.me.name.clone()];
        for s in &self.cfg.servers {
            let same = view
                .info(&s.name)
                .is_some_and(|i| i.cluster_id.as_deref() == Some(&mine_id));
            if s.name != self.me.name && same && view.is_up(&s.name, now) {
                mine.push(s.name.clone());
            }
        }
        mine.sort();
        crate::cluster::membership::conflict(&mine_id, &mine, &others)
    }

    pub fn view(&self) -> MutexGuard<'_, ClusterView> {
        self.view.lock().expect("view lock")
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().expect("phase lock").clone()
    }

    pub fn set_phase(&self, p: Phase) {
        let mut cur = self.phase.lock().expect("phase lock");
        if *cur != p {
            log_phase(&p);
            *cur = p;
        }
    }

    /// Asks the raft loop to run a Ready cycle now rather than at the next tick.
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    pub fn name_of(&self, id: u64) -> Option<&str> {
        self.names.get(&id).map(|s| s.as_str())
    }

    pub fn hello(&self) -> Hello {
        Hello {
            name: self.me.name.clone(),
            protocol_version: crate::proto::protocol_version(),
            software_version: env!("CARGO_PKG_VERSION").to_string(),
            cluster: self.cfg.cluster.clone(),
            membership_hash: self.cfg.membership_hash(),
            membership_text: self.cfg.membership_text(),
            cluster_id: self.cluster_id(),
            incarnation: Some(self.rejoin.incarnation.clone()),
            protocol_version_min: Some(crate::proto::PROTOCOL_VERSION_MIN),
            protocol_level: self.with_replica(|core| core.state().protocol_level()),
        }
    }

    pub fn cluster_id(&self) -> Option<String> {
        match self.core().as_ref() {
            Some(c) => c.state().cluster_id().map(str::to_string),
            None => self.facts().cluster_id,
        }
    }

    pub fn leader_name(&self) -> Option<String> {
        let id = self.core().as_ref().and_then(|c| c.leader_id())?;
        self.name_of(id).map(str::to_string)
    }

    pub fn is_leader(&self) -> bool {
        self.core().as_ref().is_some_and(|c| c.is_leader())
    }

    fn core_config(&self) -> CoreConfig {
        let t = &self.cfg.timing;
        let heartbeat_ticks = (t.heartbeat_ms / t.tick_ms).max(1) as usize;
        let election_ticks = ((t.election_ms / t.tick_ms) as usize).max(heartbeat_ticks + 1);
        let witnesses = self
            .cfg
            .servers
            .iter()
            .filter(|s| s.role == Role::Witness)
            .map(|s| raft_id(&s.name))
            .collect();
        CoreConfig {
            id: self.id,
            heartbeat_ticks,
            election_ticks,
            election_ticks_max: election_ticks * 2,
            witness: self.me.role == Role::Witness,
            witnesses,
            durable: true,
            log_keep_entries: LOG_KEEP_ENTRIES,
            msg_bytes_max: RAFT_MSG_BYTES_MAX,
            voters_max: crate::consensus::VOTERS_MAX,
            voter_rank: self
                .cfg
                .servers
                .iter()
                .filter(|s| s.vote)
                .map(|s| raft_id(&s.name))
                .collect(),
        }
    }

    /// Opens the core on this instance's data directory.
    pub fn open_core(&self) -> Result<(), String> {
        let logger = crate::logging::raft_logger(&self.me.name);
        let core = Core::open(&self.dir, self.core_config(), &logger).map_err(|e| e.to_string())?;
        // The databases exist now: they are made private as the directory is.
        if let Err(e) = crate::data_dir::make_private(&self.dir) {
            tracing::warn!("cannot make {} private: {e}", self.dir.display());
        }
        *self.core() = Some(core);
        Ok(())
    }

    /// A tag for a proposal, and the channel its applied index arrives on.
    pub fn register_proposal(&self) -> (Vec<u8>, Receiver<u64>) {
        self.register(&self.waiters)
    }

    /// A new tag (sequence number and this instance's id) and the channel
    /// its answer arrives on, registered in `waiters`.
    fn register(&self, waiters: &Mutex<HashMap<u64, Sender<u64>>>) -> (Vec<u8>, Receiver<u64>) {
        let seq = self.proposal_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = async_std::channel::bounded(1);
        waiters.lock().expect("waiters lock").insert(seq, tx);
        let mut ctx = seq.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.id.to_be_bytes());
        (ctx, rx)
    }

    pub fn forget_proposal(&self, ctx: &[u8]) {
        if let Some(seq) = proposal_seq(ctx) {
            self.waiters.lock().expect("waiters lock").remove(&seq);
        }
    }

    /// A tag for a read index request, and the channel that says when the
    /// read may be served (its index is applied here).
    pub fn register_read(&self) -> (Vec<u8>, Receiver<u64>) {
        self.register(&self.read_waiters)
    }

    pub fn forget_read(&self, ctx: &[u8]) {
        if let Some(seq) = proposal_seq(ctx) {
            self.read_waiters.lock().expect("reads lock").remove(&seq);
        }
    }

    /// The read `ctx` tags may be served once `index` is applied.
    fn read_ready(&self, ctx: &[u8], index: u64) {
        if ctx.len() != 16 || ctx[8..] != self.id.to_be_bytes() {
            return;
        }
        let Some(seq) = proposal_seq(ctx) else { return };
        if let Some(tx) = self.read_waiters.lock().expect("reads lock").remove(&seq) {
            self.read_parked
                .lock()
                .expect("parked lock")
                .push((index, tx));
        }
    }

    /// Lets the parked reads whose index is applied go.
    fn release_reads(&self, applied: u64) {
        let mut parked = self.read_parked.lock().expect("parked lock");
        parked.retain(|(index, tx)| {
            if *index > applied {
                return true;
            }
            let _ = tx.try_send(*index);
            false
        });
    }

    /// Answers the local proposal `ctx` tags, if it is one of ours.
    fn applied(&self, ctx: &[u8], index: u64) {
        if ctx.len() != 16 || ctx[8..] != self.id.to_be_bytes() {
            return;
        }
        let Some(seq) = proposal_seq(ctx) else { return };
        if let Some(tx) = self.waiters.lock().expect("waiters lock").remove(&seq) {
            let _ = tx.try_send(index);
        }
    }
}

fn log_phase(p: &Phase) {
    match p {
        Phase::Waiting {
            reason,
            start_first,
        } if !start_first.is_empty() => tracing::warn!("waiting: {reason}"),
        Phase::Waiting { reason, .. } => tracing::info!("waiting: {reason}"),
        _ => {}
    }
}

/// Proposal tags are 8 bytes plus this instance's id, so that a tag from
/// another instance's proposal (applied here too) never matches a local waiter.
fn proposal_seq(ctx: &[u8]) -> Option<u64> {
    let b: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Everything the cluster needs before its tasks start: the shared state,
/// the raft loop's wake-up channel and the stop channel.
pub(crate) fn prepare(opts: ServeOptions) -> Result<startup::Prepared, String> {
    startup::prepare(opts)
}

/// Starts the cluster's tasks: signals, inbound connections, discovery (and
/// then the raft loop), gossip, re-admissions and integrity checks.
pub(crate) fn start(shared: &Arc<Shared>, wake_rx: Receiver<()>) {
    stop::install_signal_handlers(shared.clone());
    async_std::task::spawn(handlers::accept_loop(shared.clone()));
    async_std::task::spawn(startup::run(shared.clone(), wake_rx));
    gossip::spawn(shared);
    async_std::task::spawn(rejoin::watch(shared.clone()));
    async_std::task::spawn(integrity::watch(shared.clone()));
    async_std::task::spawn(upgrade::watch(shared.clone()));
}

/// The graceful stop, once the stop channel fired: `drain` (the work's
/// hand-back of its attempts) runs before the coordinator role is handed
/// over and the membership left; the endpoint is closed last.
pub(crate) async fn stop(shared: &Arc<Shared>, drain: impl std::future::Future<Output = ()>) {
    shared.stopping.store(true, Ordering::SeqCst);
    stop::graceful_stop(shared, drain).await;
    shared.endpoint.quinn.close(0u32.into(), b"stopped");
    let _ = async_std::future::timeout(
        Duration::from_millis(500),
        shared.endpoint.quinn.wait_idle(),
    )
    .await;
}

/// Runs the raft loop on its own OS thread: its Ready cycles fsync, and a
/// blocking call on one of the async executor's few threads would stall the
/// network tasks that feed it.
pub(crate) fn spawn_raft_loop(shared: Arc<Shared>, wake: Receiver<()>) {
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let run =
                std::panic::AssertUnwindSafe(|| async_std::task::block_on(raft_loop(shared, wake)));
            // A broken invariant in the core must stop the process (to be
            // restarted and recover from its files), not leave it half alive
            // with a poisoned lock.
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("the consensus core panicked: exiting");
                std::process::exit(70);
            }
        })
        .expect("spawn the raft thread");
}

/// The one task that drives raft: a tick every `tick_ms`, and a Ready cycle
/// whenever something arrived. Proposals and messages that come in while a
/// cycle fsyncs are batched into the next one.
async fn raft_loop(shared: Arc<Shared>, wake: Receiver<()>) {
    let tick = Duration::from_millis(shared.cfg.timing.tick_ms);
    let mut next_tick = std::time::Instant::now() + tick;
    // Log writes a cycle left unsynced (it ran its rounds): the next one
    // syncs them first, without waiting for a wake.
    let mut carried = None;
    loop {
        let now = std::time::Instant::now();
        if now < next_tick && carried.is_none() {
            let _ = async_std::future::timeout(next_tick - now, wake.recv()).await;
        }
        let ticked = std::time::Instant::now() >= next_tick;
        if ticked {
            next_tick += tick;
            if next_tick < std::time::Instant::now() {
                next_tick = std::time::Instant::now() + tick;
            }
        }
        let outputs = match cycle(&shared, ticked, carried.take()) {
            Ok((o, left)) => {
                carried = left;
                o
            }
            Err(e) => {
                tracing::error!("consensus core failed, stopping: {e}");
                let _ = shared.stop_tx.try_send(());
                return;
            }
        };
        dispatch(&shared, outputs);
        shared.space_retry();
    }
}

/// One tick and the Ready cycles due, under the core's lock; then the
/// log's fsync without it (proposals, messages and reads go on meanwhile),
/// and what waited for it, under the lock again, for at most
/// `CYCLE_SYNCS_MAX` rounds; a ticket still open then is returned synced,
/// for the next cycle to hand back before it ticks. Raft messages are
/// queued to their peers the moment the core emits them; the other outputs
/// are returned, to be carried out once the lock is released. A cycle that
/// ran out of space parks the core (`space`) before the lock is released;
/// one that failed on another SQLite error sets the directory aside
/// (`damage`).
fn cycle(
    shared: &Arc<Shared>,
    ticked: bool,
    carried: Option<crate::consensus::SyncTicket>,
) -> Result<Cycled, String> {
    let mut out = Vec::new();
    let mut ticket = carried;
    for round in 0..CYCLE_SYNCS_MAX {
        ticket = cycle_locked(shared, ticked && round == 0, ticket.take(), &mut out)?;
        let Some(t) = &ticket else {
            return Ok((out, None));
        };
        // The only wait on the disk in a cycle, and nobody waits for the lock.
        if let Err(e) = t.sync() {
            let e = crate::consensus::CoreError::Db(crate::consensus::sync_error(e));
            core_failed(shared, &mut shared.core(), e)?;
            return Ok((out, None));
        }
    }
    Ok((out, ticket))
}

/// What a cycle gives back: the outputs to carry out, and a synced ticket
/// it did not hand back yet.
type Cycled = (Vec<Output>, Option<crate::consensus::SyncTicket>);

/// A core error of a cycle: out of space parks the core, damage sets the
/// directory aside (both keep the instance up); anything else stops it.
fn core_failed(
    shared: &Arc<Shared>,
    guard: &mut MutexGuard<'_, Option<Core>>,
    e: crate::consensus::CoreError,
) -> Result<(), String> {
    if space::core_error_is_full(&e) {
        shared.park_core(guard, &e);
        return Ok(());
    }
    if damage::core_error_is_damage(&e) {
        shared.core_damaged(guard, &e);
        return Ok(());
    }
    Err(e.to_string())
}

/// Rounds of write and sync one cycle runs before it looks at the clock
/// again (each round's acknowledgments may commit more).
const CYCLE_SYNCS_MAX: usize = 8;

/// Under the core's lock: hands back a synced ticket, then ticks (raft
/// must not campaign while writes are unsynced: it would count them
/// persisted), runs the Ready cycles due; returns the ticket of what they
/// wrote, to sync.
fn cycle_locked(
    shared: &Arc<Shared>,
    ticked: bool,
    synced: Option<crate::consensus::SyncTicket>,
    out: &mut Vec<Output>,
) -> Result<Option<crate::consensus::SyncTicket>, String> {
    let mut guard = shared.core();
    let Some(core) = guard.as_mut() else {
        return Ok(None);
    };
    let applied_before = core.applied_index();
    let mut sink = |o: Output| match o {
        Output::Send(msg) => shared.peers.send(shared, msg),
        Output::Applied { index, context, .. } => shared.applied(&context, index),
        Output::ReadReady { context, index } => shared.read_ready(&context, index),
        other => out.push(other),
    };
    let handed = match synced {
        Some(t) => core.synced(&t, &mut sink),
        None => Ok(()),
    };
    let pumped = handed.and_then(|()| {
        if ticked {
            core.tick();
        }
        core.pump_async(&mut sink)
    });
    let ticket = match pumped {
        Ok(ticket) => ticket,
        Err(e) => {
            core_failed(shared, &mut guard, e)?;
            return Ok(None);
        }
    };
    let member = core.is_member();
    // A non-voting member is in service as a voter is.
    let voter = core.is_voter(shared.id) || core.is_non_voter();
    let applied = core.applied_index();
    if applied > applied_before {
        // Under the lock it holds anyway: one look at the job feed for
        // every held job read (`job_wait`).
        shared.job_waits.applied(core.state().conn());
    }
    let revoked_changed = shared.revocation.refresh(core);
    drop(guard);
    if revoked_changed {
        shared.close_revoked();
    }
    if applied > applied_before {
        for hook in shared.applied_hooks.read().expect("hooks lock").iter() {
            hook();
        }
    }
    shared.release_reads(applied);
    shared.after_cycle(member, voter);
    Ok(ticket)
}

impl Shared {
    /// Closes every connection, accepted or opened, whose certificate is
    /// now revoked.
    fn close_revoked(&self) {
        self.revocation.close_revoked_incoming();
        self.peers
            .close_where(|conn| self.revocation.close_if_revoked(conn));
    }

    /// A note when this instance's certificate or the CA's expires soon.
    pub fn expiry_note(&self) -> Option<String> {
        crate::tls::expiry_note(&self.certificates, now_ms() / 1000)
    }

    /// Keeps the phase and the stop record in step with the membership.
    fn after_cycle(&self, member: bool, voter: bool) {
        if voter && self.phase() == Phase::Joining {
            tracing::info!("joined the cluster");
            self.set_phase(Phase::Running);
        }
        if voter {
            self.damage_healed();
        }
        if member {
            let mut rec = self.last_stop.lock().expect("stop record lock");
            if rec.as_ref().is_some_and(|r| r.left) {
                *rec = None;
                crate::data_dir::clear_record(&self.dir);
            }
        }
    }
}

fn dispatch(shared: &Arc<Shared>, outputs: Vec<Output>) {
    for o in outputs {
        match o {
            Output::Send(msg) => shared.peers.send(shared, msg),
            Output::SendSnapshot { msg, file, meta } => {
                async_std::task::spawn(snapshot::send(shared.clone(), msg, file, meta));
            }
            Output::Applied { index, context, .. } => shared.applied(&context, index),
            Output::Removed => {
                tracing::info!("this instance was removed from the membership");
                rejoin::removed(shared);
            }
            Output::ReadReady { context, index } => shared.read_ready(&context, index),
            Output::MakeSnapshot(job) => {
                async_std::task::spawn(make_snapshot(shared.clone(), job));
            }
        }
    }
}

/// Runs a database copy off the raft loop and hands it to the core. A copy
/// needs as much space as the database: none is tried while the space alarm
/// is raised (the core asks for no other while this one is pending).
async fn make_snapshot(shared: Arc<Shared>, job: crate::consensus::SnapshotJob) {
    while shared.space_refusal().is_some() {
        async_std::task::sleep(Duration::from_millis(space::SPACE_RETRY_MS)).await;
    }
    let made = async_std::task::spawn_blocking(move || job.run()).await;
    if let Err(e) = &made {
        if space::text_is_full(e) {
            shared.space_full(&format!("database copy for a snapshot: {e}"));
        }
    }
    if let Some(core) = shared.core().as_mut() {
        core.offer_snapshot(made);
    }
    shared.wake();
}
