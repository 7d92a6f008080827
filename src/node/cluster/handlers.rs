//! Inbound connections and the answers to requests.
//!
//! A peer connection must open with a `Hello` whose sender holds the
//! certificate of the server it names and whose config and cluster match ours;
//! then it may carry requests and Raft message streams, and every Raft message
//! on it must come from that server. A client connection carries requests
//! only, never the peer-only ones. A malformed or oversized frame closes its
//! stream; nothing else is affected.

use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, Message};

use super::replicated::{change_membership, electing_note, propose, read, wait_for};
use super::{now_ms, raft_id, Phase, Shared, PEER_CALL_MS};
use crate::cluster::membership;
use crate::proto::{
    LocalInfo, RaftBatch, Request, Response, StatusView, LIST_COUNT_DEFAULT, LIST_COUNT_MAX,
    LIST_PAGE_BYTES_MAX, RAFT_BATCH_BYTES_MAX, REQUEST_BYTES_MAX,
};
use crate::transport::{
    alpn_of, encode, peer_cert, read_frame, write_frame, ALPN_CLIENT, ALPN_PEER,
};

/// Time a newly connected peer has to send its `Hello`.
const HELLO_WAIT_MS: u64 = 5_000;
/// Time a request's frame may take to arrive once its stream is open.
const REQUEST_READ_MS: u64 = 10_000;
/// Time `claro status` waits for the coordinator's own view before it answers
/// from this instance's live view (its whole budget is 300 ms).
const STATUS_FORWARD_MS: u64 = 150;
/// Attempts of a manual coordinator transfer, one second each.
const TRANSFER_TRIES: u32 = 5;

pub async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.quinn.accept().await {
        let shared = shared.clone();
        async_std::task::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(shared, conn).await,
                Err(e) => {
                    crate::throttled_warn!("connection refused during handshake", remote.ip(), %remote, "connection refused during handshake: {e}")
                }
            }
        });
    }
}

/// Serves one accepted connection, tracked meanwhile so that a revocation
/// that names its certificate closes it.
async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection) {
    shared.revocation.track(&conn);
    // A revocation applied between the handshake and the tracking.
    if !shared.revocation.close_if_revoked(&conn) {
        match alpn_of(&conn).as_deref() {
            Some(ALPN_PEER) => serve_peer(shared.clone(), conn.clone()).await,
            Some(ALPN_CLIENT) => serve_requests(shared.clone(), conn.clone(), None).await,
            _ => conn.close(1u32.into(), b"unknown protocol"),
        }
    }
    shared.revocation.untrack(&conn);
}

async fn serve_peer(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let greeted =
        async_std::future::timeout(Duration::from_millis(HELLO_WAIT_MS), greet(&shared, &conn))
            .await;
    let name = match greeted {
        Ok(Ok(name)) => name,
        Ok(Err(reason)) => {
            crate::throttled_warn!("peer refused", remote.ip(), %remote, "peer refused: {reason}");
            async_std::task::sleep(Duration::from_millis(100)).await;
            conn.close(2u32.into(), b"refused");
            return;
        }
        Err(_) => {
            crate::throttled_warn!("no hello", remote.ip(), %remote, "peer sent no Hello within {HELLO_WAIT_MS} ms");
            conn.close(2u32.into(), b"no hello");
            return;
        }
    };
    shared.view().heard_from(&name, now_ms());
    let uni = async_std::task::spawn(raft_streams(shared.clone(), conn.clone(), name.clone()));
    serve_requests(shared, conn, Some(name)).await;
    drop(uni);
}

/// Reads the peer's `Hello`, checks it, answers with ours or a refusal.
async fn greet(shared: &Shared, conn: &quinn::Connection) -> Result<String, String> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let theirs = match read_frame::<Request>(&mut recv, REQUEST_BYTES_MAX).await {
        Ok(Some(Request::Hello(h))) => h,
        Ok(_) => return Err("the first request of a peer must be Hello".into()),
        Err(e) => return Err(format!("bad Hello: {e}")),
    };
    let verdict = check_peer(shared, conn, &theirs);
    // Only a server proven by its certificate tells which cluster it is in.
    let proven = peer_cert(conn).is_some_and(|c| crate::tls::cert_is_for(&c, &theirs.name));
    if let (Some(id), true) = (&theirs.cluster_id, proven) {
        shared.note_cluster_of(&theirs.name, id);
    }
    // A peer back with a new data directory is a new process: our
    // connection to its predecessor is dead, though QUIC only notices at its
    // idle timeout; Raft messages must reach the new one now.
    if verdict.is_ok() && shared.rejoin.saw_hello(&theirs) {
        shared.peers.close(&theirs.name);
    }
    let answer = match &verdict {
        Ok(()) => Response::Hello(shared.hello()),
        Err(reason) => Response::Refused {
            reason: reason.clone(),
            cluster_id: shared.cluster_id(),
        },
    };
    let _ = write_frame(&mut send, &answer, REQUEST_BYTES_MAX).await;
    let _ = send.finish();
    verdict.map(|()| theirs.name)
}

fn check_peer(
    shared: &Shared,
    conn: &quinn::Connection,
    theirs: &crate::proto::Hello,
) -> Result<(), String> {
    if shared.cfg.server(&theirs.name).is_none() {
        return Err(format!(
            "`{}` is not a server in this cluster's config",
            theirs.name
        ));
    }
    let cert = peer_cert(conn).ok_or("no client certificate")?;
    if !crate::tls::cert_is_for(&cert, &theirs.name) {
        return Err(format!(
            "its certificate does not belong to `{}`",
            theirs.name
        ));
    }
    if theirs.name == shared.me.name {
        return Err(format!("`{}` is this instance's own name", theirs.name));
    }
    membership::compatible(&shared.hello(), theirs)
}

/// Accepts the peer's unidirectional streams; each carries Raft batches.
async fn raft_streams(shared: Arc<Shared>, conn: quinn::Connection, name: String) {
    while let Ok(recv) = conn.accept_uni().await {
        async_std::task::spawn(raft_stream(shared.clone(), recv, name.clone()));
    }
}

async fn raft_stream(shared: Arc<Shared>, mut recv: quinn::RecvStream, name: String) {
    let from = raft_id(&name);
    loop {
        let batch = match read_frame::<RaftBatch>(&mut recv, RAFT_BATCH_BYTES_MAX).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                crate::throttled_warn!("raft stream closed", name, peer = %name, "raft stream closed: {e}");
                let _ = recv.stop(3u32.into());
                return;
            }
        };
        step_batch(&shared, from, &name, batch);
    }
}

fn step_batch(shared: &Shared, from: u64, name: &str, batch: RaftBatch) {
    shared.view().heard_from(name, now_ms());
    let mut guard = shared.core();
    let Some(core) = guard.as_mut() else { return };
    for bytes in batch.messages {
        let msg = match Message::parse_from_bytes(&bytes) {
            Ok(m) => m,
            Err(e) => {
                crate::throttled_warn!("undecodable raft message", name, peer = %name, "undecodable raft message dropped: {e}");
                continue;
            }
        };
        // A database only arrives through the verified transfer stream.
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            crate::throttled_warn!("stray snapshot message", name, peer = %name, "snapshot message outside a database transfer dropped");
            continue;
        }
        // A certificate of srv2 cannot speak for srv3.
        if msg.from != from || msg.to != shared.id {
            crate::throttled_warn!("forged raft message", name, peer = %name, from = msg.from, to = msg.to, "raft message with a forged sender or wrong receiver dropped");
            continue;
        }
        if let Err(e) = core.step(msg) {
            tracing::debug!(peer = %name, "raft refused a message: {e}");
        }
    }
    drop(guard);
    shared.wake();
}

/// Accepts bidirectional streams: one request and its response each.
async fn serve_requests(shared: Arc<Shared>, conn: quinn::Connection, peer: Option<String>) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        async_std::task::spawn(serve_request(shared.clone(), send, recv, peer.clone()));
    }
}

async fn serve_request(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: Option<String>,
) {
    let read = read_frame::<Request>(&mut recv, REQUEST_BYTES_MAX);
    let read = async_std::future::timeout(Duration::from_millis(REQUEST_READ_MS), read).await;
    let req = match read {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            crate::throttled_warn!("bad request", peer.as_deref().unwrap_or("a client"), peer = ?peer, "bad request closed its stream: {e}");
            let _ = recv.stop(3u32.into());
            return;
        }
        Err(_) => {
            crate::throttled_warn!("slow request", peer.as_deref().unwrap_or("a client"), peer = ?peer, "request not received within {REQUEST_READ_MS} ms: stream closed");
            let _ = recv.stop(3u32.into());
            return;
        }
    };
    let resp = match (&peer, req) {
        (None, r) if r.is_peer_only() => Response::Error {
            message: "this request is for instances only".into(),
        },
        (None, Request::Backup) => return super::backup::send(&shared, send).await,
        (Some(p), Request::Snapshot { meta, raft_message }) => {
            return super::snapshot::receive(&shared, p, meta, raft_message, send, recv).await;
        }
        (_, r) => {
            client_delay_failpoint(peer.as_deref()).await;
            respond(&shared, peer.as_deref(), r).await
        }
    };
    let frame = answer_frame(&resp, peer.as_deref());
    if let Err(e) = send.write_all(&frame).await {
        tracing::debug!(peer = ?peer, "answer not delivered: {e}");
    }
    let _ = send.finish();
}

/// Failpoint for the test that a slow server is not waited for:
/// `CLARO_FAILPOINT_CLIENT_DELAY_MS=N` answers every client's request (the
/// CLI's: reads and writes) N ms late, as a frozen or overloaded instance
/// would after the handshake.
async fn client_delay_failpoint(peer: Option<&str>) {
    if peer.is_some() {
        return;
    }
    let delay_ms = std::env::var("CLARO_FAILPOINT_CLIENT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay_ms {
        async_std::task::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
}

/// The frame of an answer. An answer too large for one frame is a bug of
/// whoever built it (every answer is bounded): it is logged, and the
/// requester gets an error naming the limit instead of a closed stream.
fn answer_frame(resp: &Response, peer: Option<&str>) -> Vec<u8> {
    match encode(resp, REQUEST_BYTES_MAX) {
        Ok(frame) => frame,
        Err(e) => {
            let message = format!("the answer cannot be sent: {e} (REQUEST_BYTES_MAX)");
            tracing::error!(peer = ?peer, "{message}");
            encode(&Response::Error { message }, REQUEST_BYTES_MAX)
                .expect("an error message fits a frame")
        }
    }
}

pub(crate) async fn respond(shared: &Arc<Shared>, peer: Option<&str>, req: Request) -> Response {
    match req {
        Request::Info => Response::Info(local_info(shared)),
        Request::Status => status(shared).await,
        Request::Join { name } if Some(name.as_str()) == peer => {
            super::rejoin::join(shared, &name).await
        }
        Request::Leave { name } if Some(name.as_str()) == peer => leave(shared, &name).await,
        Request::Join { .. } | Request::Leave { .. } => Response::Error {
            message: "an instance may only join or leave as itself".into(),
        },
        Request::Propose {
            command,
            request_id,
            forwarded,
        } => propose(shared, command, request_id, forwarded).await,
        Request::Get { key, stale } => read_setting(shared, &key, stale).await,
        Request::List(q) => list_settings(shared, q).await,
        Request::Job { id, stale, wait_ms } => read_job_held(shared, &id, stale, wait_ms).await,
        Request::Live {
            id,
            after_bytes,
            forwarded,
        } => super::live::respond(shared, &id, after_bytes, forwarded).await,
        Request::Script {
            name,
            version,
            stale,
        } => read_script(shared, &name, version, stale).await,
        Request::Scripts { stale } => list_scripts(shared, stale).await,
        Request::Hotfolders { stale } => list_hotfolders(shared, stale).await,
        Request::Tokens => list_tokens(shared).await,
        Request::Revoked => list_revoked(shared).await,
        Request::Jobs {
            filter,
            limit,
            stale,
        } => list_jobs(shared, filter, limit, stale).await,
        Request::Digest => digest(shared),
        Request::Stop { name } => stop(shared, &name).await,
        Request::Transfer { name } => transfer(shared, &name).await,
        Request::Gossip { info } if Some(info.name.as_str()) == peer => {
            shared.view().info_from(info, now_ms());
            Response::Info(local_info(shared))
        }
        Request::View => Response::Status(status_view(shared)),
        Request::Adopt { cluster_id, voters } => super::startup::adopt(shared, cluster_id, voters),
        Request::Hello(_) | Request::Snapshot { .. } | Request::Gossip { .. } => Response::Error {
            message: "unexpected request".into(),
        },
        Request::LogLevel { filter } if peer.is_none() => {
            match crate::logging::set_filter(&filter) {
                Ok(f) => {
                    tracing::info!(filter = %f, "log filter changed");
                    Response::Ok { message: f }
                }
                Err(message) => Response::Error { message },
            }
        }
        Request::LogLevel { .. } => Response::Error {
            message: "the log filter is set by an operator's CLI only".into(),
        },
        // Only a client's own stream carries the database (`serve_request`).
        Request::Backup => Response::Error {
            message: "a backup is streamed to the CLI only (`claro backup FILE`)".into(),
        },
    }
}

/// What this instance says about itself.
pub fn local_info(shared: &Shared) -> LocalInfo {
    // Before the core's lock: `conflict` takes it itself, and a slow disk
    // must not hold the lock the raft loop needs.
    let conflict = shared.conflict();
    let disk_free_percent = super::filesystem_bytes(&shared.dir)
        .filter(|(_, size)| *size > 0)
        .map(|(free, size)| (free.saturating_mul(100) / size).min(100) as u8);
    let phase = shared.phase();
    let guard = shared.core();
    let facts = shared.facts();
    let mut info = LocalInfo {
        name: shared.me.name.clone(),
        state: "waiting".into(),
        cluster_id: facts.cluster_id.clone(),
        started_at_ms: shared.started_at_ms,
        initialized: facts.initialized,
        // Until its core runs, an instance adopting a forming cluster shows
        // it (`membership::adoptable` lets others take the same one).
        is_member: !facts.voters.is_empty(),
        leader: None,
        term: 0,
        commit_index: u64::from(!facts.voters.is_empty()),
        applied_index: facts.applied_index,
        note: None,
        last_stop: shared.last_stop.lock().expect("stop record lock").clone(),
        voters: facts.voters.clone(),
        checkpoints: Vec::new(),
        protocol_version: crate::proto::protocol_version(),
        disk_free_percent,
    };
    if let Phase::Waiting { reason, .. } = &phase {
        info.note = Some(reason.clone());
    }
    if let Some(core) = guard.as_ref() {
        info.cluster_id = core.state().cluster_id().map(str::to_string);
        info.initialized = core.applied_index() > 0;
        info.is_member = core.is_member();
        info.leader = core
            .leader_id()
            .and_then(|id| shared.name_of(id))
            .map(str::to_string);
        info.term = core.term();
        info.commit_index = core.commit_index();
        info.applied_index = core.applied_index();
        info.checkpoints = core.state().checkpoints();
        info.voters = core
            .conf_state()
            .voters
            .iter()
            .filter_map(|id| shared.name_of(*id).map(str::to_string))
            .collect();
        info.state = state_name(shared, core, &phase).into();
        if info.state == "electing" {
            info.note = Some(electing_note(shared, core));
        }
        if info.note.is_none() {
            info.note = super::rejoin::note(shared, core, &phase);
        }
        if info.note.is_none() {
            info.note = shared.expiry_note();
        }
    } else {
        shared.describe_parked(&mut info);
    }
    if let Some(c) = conflict {
        info.note = Some(c.note());
    }
    if let Some(note) = shared.read_errors_note() {
        info.note = Some(note);
    }
    if let Some(note) = shared.space_note() {
        info.note = Some(note);
    }
    if let Some(note) = shared.damage_note() {
        info.state = "damaged".into();
        info.note = Some(note);
    }
    if info.note.is_none() {
        info.note = shared.setup_note();
    }
    info
}

fn state_name(shared: &Shared, core: &crate::consensus::Core, phase: &Phase) -> &'static str {
    match phase {
        Phase::Discovering | Phase::Waiting { .. } => "waiting",
        // Told to peers so that the coordinator places nothing here.
        Phase::Stopping => "stopping",
        _ if core.is_leader() => "coordinator",
        _ if core.is_non_voter() => "non-voter",
        _ if core.is_learner(shared.id) => "joining",
        _ if core.is_voter(shared.id) && core.leader_id().is_none() => "electing",
        _ if core.is_voter(shared.id) && shared.me.role == crate::config::Role::Witness => {
            "witness"
        }
        _ if core.is_voter(shared.id) => "follower",
        Phase::Joining => "joining",
        _ => "waiting",
    }
}

/// Sends `req` to the coordinator (when this instance is not it).
async fn forward_to_leader(shared: &Shared, req: &Request, timeout_ms: u64) -> Option<Response> {
    let leader = shared.leader_name()?;
    if leader == shared.me.name {
        return None;
    }
    match shared.peers.call(shared, &leader, req, timeout_ms).await {
        Ok(r) => Some(r),
        Err(e) => Some(Response::Error {
            message: format!("coordinator {leader} unreachable: {e}"),
        }),
    }
}

/// The coordinator's own view when it answers within `STATUS_FORWARD_MS`,
/// else this instance's live view: never waits on a server that is down.
async fn status(shared: &Arc<Shared>) -> Response {
    if !shared.is_leader() {
        let ask = forward_to_leader(shared, &Request::View, STATUS_FORWARD_MS);
        let answer =
            async_std::future::timeout(Duration::from_millis(STATUS_FORWARD_MS), ask).await;
        if let Ok(Some(Response::Status(view))) = answer {
            if view.from_coordinator {
                return Response::Status(view);
            }
        }
    }
    Response::Status(status_view(shared))
}

/// This instance's status view, from what it last heard (no waiting).
pub(crate) fn own_view(shared: &Shared) -> StatusView {
    let me = local_info(shared);
    let mut view = shared.view().status(&shared.cfg.servers, &me, now_ms());
    view.protocol_level = shared
        .with_replica(|core| core.state().protocol_level())
        .unwrap_or(0);
    view
}

/// `own_view` with its alerts: what `claro status` answers. Kept apart
/// from `own_view`, which the event hub reads after every burst of
/// entries: the alerts' reads are for those who ask.
fn status_view(shared: &Shared) -> StatusView {
    let mut view = own_view(shared);
    let facts = cached_alert_facts(shared);
    view.alerts = crate::cluster::alerts::evaluate(&view, &facts, &shared.cfg.alerts);
    view
}

/// How long the replica's alert facts are reused: status is asked often
/// (every dashboard, every follower's status through the coordinator), and
/// the facts' reads hold the core's lock.
const ALERT_FACTS_FRESH_MS: u64 = 2_000;

static ALERT_FACTS: std::sync::Mutex<Option<(u64, crate::cluster::alerts::Facts)>> =
    std::sync::Mutex::new(None);

fn cached_alert_facts(shared: &Shared) -> crate::cluster::alerts::Facts {
    let now = now_ms();
    if let Some((at, facts)) = ALERT_FACTS.lock().expect("alert facts lock").as_ref() {
        if now.saturating_sub(*at) < ALERT_FACTS_FRESH_MS {
            return facts.clone();
        }
    }
    let facts = shared
        .with_replica(|core| alert_facts(core.state().conn()))
        .unwrap_or_default();
    *ALERT_FACTS.lock().expect("alert facts lock") = Some((now, facts.clone()));
    facts
}

/// Window of the failing-jobs alert.
const JOBS_FAILING_WINDOW_MS: u64 = 15 * 60 * 1000;

/// What the alerts need from the replica: how long each hotfolder's oldest
/// file has waited, and the jobs that ended in the window. A read that
/// fails leaves its part out (the status still answers).
fn alert_facts(conn: &rusqlite::Connection) -> crate::cluster::alerts::Facts {
    let now = now_ms();
    let hotfolders = crate::state::hotfolders::list(conn).unwrap_or_default();
    let hotfolder_waits_s = hotfolders
        .iter()
        .filter_map(|h| {
            let c = crate::state::hotfolders::counts(conn, &h.name, now).ok()?;
            Some((h.name.clone(), c.waited_s(now)?))
        })
        .collect();
    let since = now.saturating_sub(JOBS_FAILING_WINDOW_MS);
    crate::cluster::alerts::Facts {
        hotfolder_waits_s,
        jobs_ended: crate::state::jobs::ended_since(conn, since).unwrap_or((0, 0)),
    }
}

async fn leave(shared: &Shared, name: &str) -> Response {
    if !shared.is_leader() {
        return Response::NotLeader {
            leader: shared.leader_name(),
        };
    }
    let id = raft_id(name);
    let r = change_membership(shared, ConfChangeType::RemoveNode, name, |c| {
        !c.is_learner(id) && !c.is_voter(id)
    })
    .await;
    if let Err(message) = r {
        return Response::Error { message };
    }
    let remaining = shared
        .core()
        .as_ref()
        .map(|c| {
            c.conf_state()
                .voters
                .iter()
                .filter_map(|v| shared.name_of(*v).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    tracing::info!(
        "{name} left the cluster; remaining: {}",
        remaining.join(", ")
    );
    Response::Left { remaining }
}

/// A database error on the read path: logged, and answered as an error.
fn read_failed(shared: &Shared, what: &str, e: rusqlite::Error) -> Response {
    tracing::error!("reading {what} from state.db failed: {e}");
    shared.read_error(&e.to_string());
    Response::Error {
        message: format!("reading {what} failed: {e}"),
    }
}

pub(crate) async fn read_setting(shared: &Shared, key: &str, stale: bool) -> Response {
    read(shared, stale, |core, stale| match core.state().get(key) {
        Ok(v) => {
            shared.read_succeeded();
            Response::Value {
                value: v.map(serde_bytes::ByteBuf::from),
                stale,
            }
        }
        Err(e) => read_failed(shared, "a setting", e),
    })
    .await
}

async fn read_job(shared: &Shared, id: &str, stale: bool) -> Response {
    if let Err(message) = crate::work::jobs::check_job_id(id) {
        return Response::Error { message };
    }
    read(shared, stale, |core, stale| {
        job_answer(shared, core, id, stale)
    })
    .await
}

/// A job read held until the job ends on this replica (`job_wait`), when
/// `wait_ms` asks for it. A default read confirms its read index *before*
/// the hold, not after: the answer holds every write acknowledged before
/// the request all the same (this replica only moves forward from that
/// index), and the job's end is told the moment it is applied here, not
/// one more round to the coordinator later.
async fn read_job_held(shared: &Shared, id: &str, stale: bool, wait_ms: u64) -> Response {
    // Checked before the hold: a bad id is refused at once.
    if wait_ms == 0 || crate::work::jobs::check_job_id(id).is_err() {
        return read_job(shared, id, stale).await;
    }
    if stale {
        super::job_wait::until_ended(shared, id, wait_ms).await;
        return read_job(shared, id, stale).await;
    }
    if let Err(message) = super::replicated::confirm_read(shared).await {
        return Response::Unavailable { message };
    }
    let floor_index = shared
        .with_replica(|c| c.applied_index())
        .unwrap_or(u64::MAX);
    super::job_wait::until_ended(shared, id, wait_ms).await;
    // A replica replaced meanwhile (a database received anew) may stand
    // below the confirmed index: then the read is confirmed again.
    let answer = shared.with_replica(|core| {
        (core.applied_index() >= floor_index).then(|| job_answer(shared, core, id, None))
    });
    match answer {
        Some(Some(answer)) => answer,
        _ => read_job(shared, id, false).await,
    }
}

fn job_answer(
    shared: &Shared,
    core: &crate::consensus::Core,
    id: &str,
    stale: Option<crate::proto::Staleness>,
) -> Response {
    match crate::state::jobs::job(core.state().conn(), id) {
        Ok(job) => {
            shared.read_succeeded();
            Response::Job {
                job: job.map(Box::new),
                stale,
            }
        }
        Err(e) => read_failed(shared, "a job", e),
    }
}

async fn read_script(shared: &Shared, name: &str, version: Option<u32>, stale: bool) -> Response {
    if let Err(message) = crate::work::jobs::check_script_name(name) {
        return Response::Error { message };
    }
    read(shared, stale, |core, _| {
        match crate::state::jobs::script(core.state().conn(), name, version) {
            Ok(script) => Response::Script { script },
            Err(e) => read_failed(shared, "a stored script", e),
        }
    })
    .await
}

/// Stored scripts listed at most (their names and versions, not their code).
const SCRIPTS_LIST_COUNT_MAX: u32 = 10_000;

async fn list_scripts(shared: &Shared, stale: bool) -> Response {
    read(shared, stale, |core, _| {
        match crate::state::jobs::scripts(core.state().conn(), SCRIPTS_LIST_COUNT_MAX) {
            Ok(scripts) => Response::Scripts { scripts },
            Err(e) => read_failed(shared, "stored scripts", e),
        }
    })
    .await
}

async fn list_tokens(shared: &Shared) -> Response {
    read(shared, false, |core, _| {
        match crate::state::tokens::list(core.state().conn()) {
            Ok(tokens) => Response::Tokens { tokens },
            Err(e) => read_failed(shared, "tokens", e),
        }
    })
    .await
}

async fn list_revoked(shared: &Shared) -> Response {
    read(shared, false, |core, _| {
        match crate::state::revoked::list(core.state().conn()) {
            Ok(revoked) => Response::Revoked { revoked },
            Err(e) => read_failed(shared, "revoked certificates", e),
        }
    })
    .await
}

async fn list_hotfolders(shared: &Shared, stale: bool) -> Response {
    use crate::state::hotfolders as hf;
    let hour_ago_ms = now_ms().saturating_sub(3_600_000);
    read(shared, stale, |core, stale| {
        let conn = core.state().conn();
        let all = hf::list(conn).and_then(|defs| {
            defs.into_iter()
                .map(|d| hf::counts(conn, &d.name, hour_ago_ms).map(|c| (d, c)))
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        match all {
            Ok(hotfolders) => Response::Hotfolders { hotfolders, stale },
            Err(e) => read_failed(shared, "hotfolders", e),
        }
    })
    .await
}

/// Bytes of job summaries in one page: well inside one frame.
const JOBS_PAGE_BYTES_MAX: usize = crate::proto::REQUEST_BYTES_MAX / 2;

/// A page of jobs, newest first, bounded in count and in bytes.
async fn list_jobs(
    shared: &Shared,
    filter: crate::state::jobs::JobFilter,
    limit: u32,
    stale: bool,
) -> Response {
    use crate::proto::JOBS_COUNT_MAX;
    if limit == 0 || limit > JOBS_COUNT_MAX {
        return Response::Error {
            message: format!("a jobs limit must be 1..={JOBS_COUNT_MAX}, not {limit}"),
        };
    }
    if let Some(before) = &filter.before {
        if let Err(message) = crate::work::jobs::check_job_id(before) {
            return Response::Error { message };
        }
    }
    read(shared, stale, |core, stale| match crate::state::jobs::list(
        core.state().conn(),
        &filter,
        limit + 1,
    ) {
        Ok(found) => {
            shared.read_succeeded();
            let (jobs, next_before) = jobs_page(found, limit as usize);
            Response::Jobs {
                jobs,
                next_before,
                stale,
            }
        }
        Err(e) => read_failed(shared, "jobs", e),
    })
    .await
}

/// The summaries of `found` (one more than `limit` was asked, to know
/// whether more follow) that fit a page, and the cursor of the next page.
fn jobs_page(
    found: Vec<crate::work::jobs::Job>,
    limit: usize,
) -> (Vec<crate::work::jobs::Job>, Option<String>) {
    let more = found.len() > limit;
    let mut jobs = Vec::new();
    let mut bytes = 0;
    for job in found.into_iter().take(limit) {
        let job = job.summary();
        let size = 512
            + job.result.as_ref().map_or(0, String::len)
            + job.error.as_ref().map_or(0, String::len);
        if bytes + size > JOBS_PAGE_BYTES_MAX {
            let next = jobs.last().map(|j: &crate::work::jobs::Job| j.id.clone());
            return (jobs, next);
        }
        bytes += size;
        jobs.push(job);
    }
    let next = more.then(|| jobs.last().map(|j| j.id.clone())).flatten();
    (jobs, next)
}

fn digest(shared: &Shared) -> Response {
    let guard = shared.core();
    let Some(core) = guard.as_ref() else {
        return Response::Unavailable {
            message: super::replicated::no_database(shared),
        };
    };
    match core.state().digest() {
        Ok(digest) => Response::Digest {
            applied_index: core.applied_index(),
            digest,
        },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// One page of settings (`Request::List`), bounded in count and in bytes so
/// that it fits one frame.
async fn list_settings(shared: &Shared, q: crate::proto::ListQuery) -> Response {
    let count = q.limit.unwrap_or(LIST_COUNT_DEFAULT);
    if count == 0 || count > LIST_COUNT_MAX {
        return Response::Error {
            message: format!("a list limit must be 1..={LIST_COUNT_MAX} settings, not {count}"),
        };
    }
    let after = q.after.as_deref();
    read(shared, q.stale, |core, stale| {
        match core
            .state()
            .list_page(after, count as usize, LIST_PAGE_BYTES_MAX)
        {
            Ok(page) => {
                shared.read_succeeded();
                Response::List {
                    next_after: page
                        .more
                        .then(|| page.items.last().map(|(k, _)| k.clone()))
                        .flatten(),
                    items: page
                        .items
                        .into_iter()
                        .map(|(k, v)| (k, serde_bytes::ByteBuf::from(v)))
                        .collect(),
                    stale,
                }
            }
            Err(e) => read_failed(shared, "the settings", e),
        }
    })
    .await
}

async fn stop(shared: &Shared, name: &str) -> Response {
    if name == shared.me.name {
        let _ = shared.stop_tx.try_send(());
        return Response::Ok {
            message: format!("{name} is stopping"),
        };
    }
    if shared.cfg.server(name).is_none() {
        return Response::Error {
            message: format!("no server named `{name}` in the config"),
        };
    }
    match shared
        .peers
        .call(
            shared,
            name,
            &Request::Stop { name: name.into() },
            PEER_CALL_MS,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => Response::Error {
            message: format!("{name} unreachable: {e}"),
        },
    }
}

async fn transfer(shared: &Shared, name: &str) -> Response {
    let Some(target) = shared.cfg.server(name) else {
        return Response::Error {
            message: format!("no server named `{name}` in the config"),
        };
    };
    if target.role == crate::config::Role::Witness {
        return Response::Error {
            message: format!("{name} is a witness: it never coordinates"),
        };
    }
    if !shared.is_leader() {
        let req = Request::Transfer { name: name.into() };
        return forward_to_leader(shared, &req, PEER_CALL_MS * 4)
            .await
            .unwrap_or(Response::Error {
                message: "no coordinator is elected".into(),
            });
    }
    if name == shared.me.name {
        return Response::Ok {
            message: format!("{name} is already the coordinator"),
        };
    }
    let id = raft_id(name);
    if !shared.core().as_ref().is_some_and(|c| c.is_voter(id)) {
        return Response::Error {
            message: format!("{name} is not a voting member"),
        };
    }
    // raft-rs abandons a transfer that does not complete within an election
    // timeout (say, its message was lost on a reconnect): ask again each second.
    let mut moved = false;
    for _ in 0..TRANSFER_TRIES {
        match shared.core().as_mut() {
            Some(c) if c.is_leader() => c.transfer_leader(id),
            _ => {}
        }
        shared.wake();
        if wait_for(shared, 1_000, |c| c.leader_id() == Some(id)).await {
            moved = true;
            break;
        }
    }
    if moved {
        tracing::info!(at_ms = now_ms(), "coordinator role handed to {name}");
        Response::Ok {
            message: format!("{name} is now the coordinator"),
        }
    } else {
        Response::Error {
            message: format!("{name} did not take the coordinator role within 5 s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frame: &[u8]) -> Response {
        ciborium::from_reader(&frame[4..]).unwrap()
    }

    #[test]
    fn an_answer_too_large_for_a_frame_becomes_an_error_naming_the_limit() {
        let small = Response::Value {
            value: Some(serde_bytes::ByteBuf::from(vec![7; 10])),
            stale: None,
        };
        assert!(matches!(
            decode(&answer_frame(&small, None)),
            Response::Value { .. }
        ));
        let huge = Response::Value {
            value: Some(serde_bytes::ByteBuf::from(vec![7; REQUEST_BYTES_MAX])),
            stale: None,
        };
        let frame = answer_frame(&huge, Some("srv2"));
        assert!(frame.len() < 1024);
        match decode(&frame) {
            Response::Error { message } => assert!(
                message.contains(&format!("limit of {REQUEST_BYTES_MAX} bytes"))
                    && message.contains("REQUEST_BYTES_MAX"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
