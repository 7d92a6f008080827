//! From process start to a running member: TLS identity, the endpoint, and
//! the discovery loop that asks `membership::decide` what to do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::channel::Receiver;

use super::peers::{PeerError, Peers};
use super::{now_ms, raft_id, Phase, ServeOptions, Shared};
use crate::cluster::membership::{self, AdoptAnswer, Situation, Startup};
use crate::config::Role;
use crate::consensus;
use crate::data_dir::LocalFacts;
use crate::proto::{LocalInfo, Request, Response};
use crate::transport::Endpoint;

/// Time between two rounds of discovery while waiting.
const DISCOVERY_ROUND_MS: u64 = 300;
/// Time one discovery probe waits for an answer.
const PROBE_MS: u64 = 500;

/// Everything up to a bound endpoint; nothing is decided yet.
/// The shared state, the raft loop's wake-up channel and the stop channel.
pub(crate) type Prepared = (Arc<Shared>, Receiver<()>, Receiver<()>);

pub fn prepare(opts: ServeOptions) -> Result<Prepared, String> {
    let cfg = opts.config;
    let me = cfg
        .server(&opts.name)
        .ok_or_else(|| format!("no server named `{}` in the config", opts.name))?
        .clone();
    // The material was checked (and, for the quickstart, made) by
    // `cert::for_serve` before anything started.
    let identity = crate::tls::load_identity(&cfg.tls_dir, &me.name).map_err(|e| e.to_string())?;
    let certificates = certificate_facts(&identity);
    let dir = cfg.server_dir(&me.name);
    let revocation = super::revocation::Revocation::at_rest(&dir);
    let endpoint = Endpoint::bind_server(me.address, &identity, &revocation.deny)
        .map_err(|e| format!("cannot listen on {}: {e}", me.address))?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    crate::data_dir::make_private(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Nothing opens a damaged directory: it is set aside first.
    let damage = super::damage::check_at_start(&dir)?;
    // Held for the process's life (`claro restore` checks it).
    match crate::data_dir::lock(&dir) {
        Ok(Some(file)) => std::mem::forget(file),
        Ok(None) => {
            return Err(format!(
                "{}: another process holds it (claro serve, or claro restore)",
                dir.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{}: {e}",
                dir.join(crate::data_dir::LOCK_FILE).display()
            ))
        }
    }
    // The directory's identity exists before anything else is written to it.
    let incarnation = super::rejoin::ensure_incarnation(&dir)?;
    let id = raft_id(&me.name);
    let names: HashMap<u64, String> = cfg
        .servers
        .iter()
        .map(|s| (raft_id(&s.name), s.name.clone()))
        .collect();
    assert_eq!(
        names.len(),
        cfg.servers.len(),
        "raft ids of server names collide"
    );
    let cfg_timeout_ms = cfg.timing.node_timeout_ms;
    let (wake, wake_rx) = async_std::channel::bounded(1);
    let (stop_tx, stop_rx) = async_std::channel::bounded(4);
    let facts = crate::data_dir::read_facts(&dir, id);
    let last_stop = crate::data_dir::read_record(&dir);
    tracing::info!(name = %me.name, address = %me.address, data = %dir.display(), "claro {} starting", env!("CARGO_PKG_VERSION"));
    let space = super::space::Space::new(&dir);
    let shared = Shared {
        cfg,
        me,
        id,
        names,
        dir,
        endpoint,
        started_at_ms: now_ms(),
        force_bootstrap: opts.force_bootstrap,
        wake_rx: wake_rx.clone(),
        start_claimed: AtomicBool::new(false),
        core: Mutex::new(None),
        phase: Mutex::new(Phase::Discovering),
        wake,
        stop_tx,
        stopping: AtomicBool::new(false),
        peers: Peers::default(),
        waiters: Mutex::new(HashMap::new()),
        read_waiters: Mutex::new(HashMap::new()),
        read_parked: Mutex::new(Vec::new()),
        proposal_seq: AtomicU64::new(0),
        last_stop: Mutex::new(last_stop),
        facts: Mutex::new(facts),
        other_clusters: Mutex::new(HashMap::new()),
        view: Mutex::new(crate::cluster::view::ClusterView::new(cfg_timeout_ms)),
        space,
        damage: super::damage::Damage::new(damage),
        rejoin: super::rejoin::Rejoin::new(incarnation),
        applied_hooks: Default::default(),
        job_waits: Default::default(),
        propose_hook: Default::default(),
        live_hook: Default::default(),
        snapshot_receiving: Default::default(),
        revocation,
        certificates,
        setup_note: Default::default(),
    };
    Ok((Arc::new(shared), wake_rx, stop_rx))
}

/// The facts of this instance's certificate and the CA's; one that cannot
/// be read is left out (the handshake checks the certificates themselves).
fn certificate_facts(id: &crate::tls::Identity) -> Vec<(&'static str, crate::tls::CertFacts)> {
    [("server", &id.chain[0]), ("ca", &id.ca)]
        .into_iter()
        .filter_map(|(which, der)| match crate::tls::facts(der) {
            Ok(f) => Some((which, f)),
            Err(e) => {
                tracing::warn!("cannot read the {which} certificate's expiry: {e}");
                None
            }
        })
        .collect()
}

impl Shared {
    pub fn facts(&self) -> LocalFacts {
        self.facts.lock().expect("facts lock").clone()
    }
}

/// Discovers, decides, and starts the core; returns once it runs (or, for a
/// joiner, once the coordinator accepted it).
pub async fn run(shared: Arc<Shared>, wake_rx: Receiver<()>) {
    let window_ms = shared.cfg.timing.discovery_ms;
    // The first cluster a peer was seen holding in this run.
    let mut seen_cluster: Option<String> = None;
    loop {
        // Stopping, or a bootstrapper's `Adopt` request started it already.
        if shared.phase() == Phase::Stopping || shared.start_claimed() {
            return;
        }
        let (peers, refusals) = probe_all(&shared).await;
        if seen_cluster.is_none() {
            seen_cluster = peers.iter().find(|p| p.initialized).and_then(|p| {
                Some(format!(
                    "{} held cluster {}",
                    p.name,
                    p.cluster_id.as_ref()?
                ))
            });
        }
        let window_over = now_ms() >= shared.started_at_ms + window_ms;
        let decision = decide(
            &shared,
            &peers,
            &refusals,
            window_over,
            seen_cluster.as_deref(),
        );
        let started = match decision {
            Startup::Wait {
                reason,
                start_first,
            } => {
                let waiting = Phase::Waiting {
                    reason,
                    start_first,
                };
                if !shared.wait_unless_started(waiting) {
                    return;
                }
                async_std::task::sleep(Duration::from_millis(DISCOVERY_ROUND_MS)).await;
                continue;
            }
            _ if !shared.claim_start() => return,
            Startup::Join { leader } => start_joining(&shared, wake_rx.clone(), &leader)
                .await
                .map(|()| true),
            Startup::Bootstrap { voters } => bootstrap(&shared, wake_rx.clone(), voters).await,
            other => start_member(&shared, wake_rx.clone(), other).map(|()| true),
        };
        match started {
            Ok(true) => return,
            Ok(false) => {
                async_std::task::sleep(Duration::from_millis(DISCOVERY_ROUND_MS)).await;
            }
            Err(e) => {
                tracing::error!("cannot start: {e}");
                let _ = shared.stop_tx.try_send(());
                return;
            }
        }
    }
}

/// A member runs on its own database whatever others say; but an instance
/// that would start or join a cluster waits while any peer refuses it (a
/// different config, version or cluster is an operator's mistake to fix, not
/// a reason to form a second cluster).
fn decide(
    shared: &Shared,
    peers: &[LocalInfo],
    refusals: &[String],
    window_over: bool,
    seen_cluster: Option<&str>,
) -> Startup {
    match decide_alone(shared, peers, window_over, seen_cluster) {
        Startup::Run => Startup::Run,
        // A directory set aside as damaged held a cluster's data: starting
        // a new cluster would look like that data was gone.
        Startup::Bootstrap { .. } if shared.damage_note().is_some() => Startup::Wait {
            reason: super::damage::bootstrap_refusal(&shared.dir),
            start_first: Vec::new(),
        },
        _ if !refusals.is_empty() => Startup::Wait {
            reason: refusals.join("; "),
            start_first: Vec::new(),
        },
        other => other,
    }
}

fn decide_alone(
    shared: &Shared,
    peers: &[LocalInfo],
    window_over: bool,
    seen_cluster: Option<&str>,
) -> Startup {
    let facts = shared.facts();
    let last_stop = shared.last_stop.lock().expect("stop record lock").clone();
    let witnesses: Vec<String> = shared
        .cfg
        .servers
        .iter()
        .filter(|s| s.role == Role::Witness)
        .map(|s| s.name.clone())
        .collect();
    let voting: Vec<String> = shared
        .cfg
        .servers
        .iter()
        .filter(|s| s.vote)
        .map(|s| s.name.clone())
        .collect();
    let s = Situation {
        me: &shared.me.name,
        witness: shared.me.role == Role::Witness,
        started_at_ms: shared.started_at_ms,
        initialized: facts.initialized && facts.member,
        last_stop: last_stop.as_ref(),
        force_bootstrap: shared.force_bootstrap,
        window_over,
        peers,
        witnesses: &witnesses,
        voting: &voting,
        seen_cluster,
    };
    // A database whose conf state no longer names this instance is treated
    // like one that left: it rejoins, or waits for those that remained.
    if facts.initialized && !facts.member {
        let remaining = last_stop
            .as_ref()
            .map(|r| r.remaining.clone())
            .unwrap_or_default();
        let rec = crate::proto::StopRecord {
            stopped_at_ms: 0,
            left: true,
            remaining,
            applied_index: facts.applied_index,
            cluster_id: facts.cluster_id.clone(),
        };
        let s = Situation {
            initialized: true,
            last_stop: Some(&rec),
            ..s
        };
        return membership::decide(&s);
    }
    membership::decide(&s)
}

/// Asks every other configured server about itself, all at once.
async fn probe_all(shared: &Arc<Shared>) -> (Vec<LocalInfo>, Vec<String>) {
    let answers = super::peers::ask_others(shared, &Request::Info, PROBE_MS).await;
    let mut infos = Vec::new();
    let mut refusals = Vec::new();
    for answer in answers {
        match answer {
            Ok(Response::Info(i)) => infos.push(i),
            Ok(_) | Err(PeerError::Unreachable(_)) => {}
            Err(PeerError::Refused(r)) => refusals.push(r),
        }
    }
    (infos, refusals)
}

fn start_member(shared: &Arc<Shared>, wake_rx: Receiver<()>, how: Startup) -> Result<(), String> {
    match how {
        // `bootstrap()` recorded the new cluster before it came here.
        Startup::Bootstrap { .. } => {}
        Startup::Adopt {
            ref cluster_id,
            ref voters,
        } => take_initial_state(shared, cluster_id, voters)?,
        Startup::ForceBootstrap => {
            tracing::warn!("!!! --force-bootstrap: starting a one-server cluster on this instance's database, which may be OLDER than what other servers hold; their newer changes will be refused by this cluster !!!");
            let old = shared.facts().cluster_id.unwrap_or_default();
            let cluster_id = format!("{:032x}", rand::random::<u128>());
            tracing::warn!(%cluster_id, forked_from = %old, "the forced cluster gets a new id");
            consensus::rebootstrap(&shared.dir, shared.id, &cluster_id, true)
                .map_err(|e| e.to_string())?;
            *shared.last_stop.lock().expect("stop record lock") = None;
            crate::data_dir::clear_record(&shared.dir);
        }
        Startup::Run => tracing::info!("starting on the local database"),
        other => unreachable!("not a member start: {other:?}"),
    }
    run_member(shared, wake_rx)
}

/// Records a forming cluster's initial state durably, and shows it (what
/// this instance answers probes with says it holds that cluster from now on).
fn take_initial_state(shared: &Shared, cluster_id: &str, voters: &[String]) -> Result<(), String> {
    tracing::info!(%cluster_id, voters = %voters.join(","), "a cluster is being formed with this instance among its first voters: taking its initial state");
    consensus::bootstrap_voters(&shared.dir, &ids(voters), cluster_id, true)
        .map_err(|e| e.to_string())?;
    let mut facts = shared.facts.lock().expect("facts lock");
    facts.initialized = true;
    facts.member = true;
    facts.applied_index = 1;
    facts.cluster_id = Some(cluster_id.to_string());
    facts.voters = voters.to_vec();
    Ok(())
}

/// Opens the core on the recorded state and runs it.
fn run_member(shared: &Arc<Shared>, wake_rx: Receiver<()>) -> Result<(), String> {
    shared.open_core()?;
    {
        let mut guard = shared.core();
        let core = guard.as_mut().expect("opened");
        // The only voter need not wait for an election timeout.
        if core.conf_state().voters == [shared.id] {
            core.campaign().map_err(|e| e.to_string())?;
        }
    }
    shared.set_phase(Phase::Running);
    super::spawn_raft_loop(shared.clone(), wake_rx);
    Ok(())
}

/// Time the bootstrapper waits for each fresh peer to take the new cluster's
/// initial state (two fsyncs, which take seconds on a loaded disk: a
/// silent majority makes it look again, `membership::bootstrap_outcome`).
const ADOPT_CALL_MS: u64 = 5_000;

/// Creates a new cluster with `voters`: first every other voter is asked to
/// take the same initial state (each records it durably before it answers),
/// then this instance records it and campaigns. Whatever moment the
/// bootstrapper dies at, the voters that answered hold the cluster and elect
/// among themselves, and the others adopt it when they see it; one that
/// never heard of it cannot form a second cluster with a majority of the
/// voters, which are all in this one.
async fn bootstrap(
    shared: &Arc<Shared>,
    wake_rx: Receiver<()>,
    voters: Vec<String>,
) -> Result<bool, String> {
    let cluster_id = format!("{:032x}", rand::random::<u128>());
    let req = Request::Adopt {
        cluster_id: cluster_id.clone(),
        voters: voters.clone(),
    };
    let asks: Vec<_> = voters
        .iter()
        .filter(|v| **v != shared.me.name)
        .map(|v| {
            let (shared, name, req) = (shared.clone(), v.clone(), req.clone());
            async_std::task::spawn(async move {
                let r = shared.peers.call(&shared, &name, &req, ADOPT_CALL_MS).await;
                let answer = match r {
                    Ok(Response::Ok { .. }) => AdoptAnswer::Adopted,
                    Ok(_) | Err(PeerError::Refused(_)) => AdoptAnswer::Refused,
                    Err(PeerError::Unreachable(_)) => AdoptAnswer::Silent,
                };
                (name, answer)
            })
        })
        .collect();
    let mut adopted = vec![shared.me.name.clone()];
    let mut answers = Vec::new();
    for ask in asks {
        let (name, answer) = ask.await;
        if answer == AdoptAnswer::Adopted {
            adopted.push(name);
        }
        answers.push(answer);
    }
    if let Err(why) = membership::bootstrap_outcome(&voters, &answers) {
        tracing::info!(%cluster_id, "the new cluster is not formed ({why}): looking again");
        shared.release_start();
        return Ok(false);
    }
    consensus::bootstrap_voters(&shared.dir, &ids(&voters), &cluster_id, true)
        .map_err(|e| e.to_string())?;
    tracing::info!(%cluster_id, voters = %voters.join(","), holding = %adopted.join(","), "no running cluster found: starting a new one as its coordinator");
    start_member(shared, wake_rx, Startup::Bootstrap { voters })?;
    async_std::task::spawn(campaign_first(shared.clone()));
    Ok(true)
}

/// A bootstrapper asks this fresh instance to take its new cluster's initial
/// state. Refused once this instance started anything itself.
pub fn adopt(shared: &Arc<Shared>, cluster_id: String, voters: Vec<String>) -> Response {
    let fresh =
        membership::accepts_adopt(&shared.me.name, &voters, shared.facts().initialized, false);
    // The claim is taken only by a fresh voter, and atomically: a start of
    // its own that raced this request wins, and this is refused.
    let accepted = fresh.and_then(|()| {
        shared
            .claim_start()
            .then_some(())
            .ok_or("this instance has started already")
    });
    if let Err(why) = accepted {
        return Response::Error {
            message: why.into(),
        };
    }
    if let Err(e) = take_initial_state(shared, &cluster_id, &voters) {
        tracing::error!("cannot adopt the new cluster: {e}");
        let _ = shared.stop_tx.try_send(());
        return Response::Error { message: e };
    }
    // The answer goes once the state is durable; the core opens after it.
    let shared = shared.clone();
    async_std::task::spawn(async move {
        if let Err(e) = run_member(&shared, shared.wake_rx.clone()) {
            tracing::error!("cannot start on the adopted cluster: {e}");
            let _ = shared.stop_tx.try_send(());
        }
    });
    Response::Ok {
        message: "adopted".into(),
    }
}

/// Time the bootstrapper keeps asking for the first election.
const FIRST_CAMPAIGN_MS: u64 = 10_000;
/// Time between two of its campaigns while its peers adopt the cluster.
const FIRST_CAMPAIGN_EVERY_MS: u64 = 100;

/// The first-started instance becomes coordinator: it campaigns as soon as
/// its peers have adopted the new cluster, rather than at a random election
/// timeout that an adopter's might beat. Pre-vote keeps the retries from
/// raising the term.
async fn campaign_first(shared: Arc<Shared>) {
    let deadline = std::time::Instant::now() + Duration::from_millis(FIRST_CAMPAIGN_MS);
    while std::time::Instant::now() < deadline {
        async_std::task::sleep(Duration::from_millis(FIRST_CAMPAIGN_EVERY_MS)).await;
        {
            let mut guard = shared.core();
            let Some(core) = guard.as_mut() else { return };
            if core.leader_id().is_some() {
                return;
            }
            let _ = core.campaign();
        }
        shared.wake();
    }
}

/// Raft ids of configured server names.
fn ids(names: &[String]) -> Vec<u64> {
    names.iter().map(|n| raft_id(n)).collect()
}

/// Opens the core (empty, or on an older database) and asks the coordinator
/// to add this instance; the coordinator then sends it the database.
async fn start_joining(
    shared: &Arc<Shared>,
    wake_rx: Receiver<()>,
    leader: &str,
) -> Result<(), String> {
    shared.set_phase(Phase::Joining);
    if shared.core().is_none() {
        shared.open_core()?;
        super::spawn_raft_loop(shared.clone(), wake_rx);
    }
    super::rejoin::ask_to_join(shared, leader).await;
    Ok(())
}
