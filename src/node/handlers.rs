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

use super::{now_ms, raft_id, Phase, Shared, PEER_CALL_MS, PROPOSAL_WAIT_MS};
use crate::membership;
use crate::proto::{
    LocalInfo, RaftBatch, Request, Response, ServerStatus, StatusView, RAFT_BATCH_BYTES_MAX,
    REQUEST_BYTES_MAX,
};
use crate::state::Command;
use crate::transport::{alpn_of, peer_cert, read_frame, write_frame, ALPN_CLIENT, ALPN_PEER};

/// Time a newly connected peer has to send its `Hello`.
const HELLO_WAIT_MS: u64 = 5_000;
/// Time a request's frame may take to arrive once its stream is open.
const REQUEST_READ_MS: u64 = 10_000;
/// Time the status view waits for each instance's answer.
const STATUS_PROBE_MS: u64 = 700;
/// Attempts of a manual coordinator transfer, one second each.
const TRANSFER_TRIES: u32 = 5;
/// Settings listed at most by one `List`.
const LIST_COUNT_MAX: usize = 10_000;

pub async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.quinn.accept().await {
        let shared = shared.clone();
        async_std::task::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(shared, conn).await,
                Err(e) => tracing::warn!(%remote, "connection refused during handshake: {e}"),
            }
        });
    }
}

async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection) {
    match alpn_of(&conn).as_deref() {
        Some(ALPN_PEER) => serve_peer(shared, conn).await,
        Some(ALPN_CLIENT) => serve_requests(shared, conn, None).await,
        _ => conn.close(1u32.into(), b"unknown protocol"),
    }
}

async fn serve_peer(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let greeted =
        async_std::future::timeout(Duration::from_millis(HELLO_WAIT_MS), greet(&shared, &conn))
            .await;
    let name = match greeted {
        Ok(Ok(name)) => name,
        Ok(Err(reason)) => {
            tracing::warn!(%remote, "peer refused: {reason}");
            async_std::task::sleep(Duration::from_millis(100)).await;
            conn.close(2u32.into(), b"refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "peer sent no Hello within {HELLO_WAIT_MS} ms");
            conn.close(2u32.into(), b"no hello");
            return;
        }
    };
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
                tracing::warn!(peer = %name, "raft stream closed: {e}");
                let _ = recv.stop(3u32.into());
                return;
            }
        };
        step_batch(&shared, from, &name, batch);
    }
}

fn step_batch(shared: &Shared, from: u64, name: &str, batch: RaftBatch) {
    let mut guard = shared.core();
    let Some(core) = guard.as_mut() else { return };
    for bytes in batch.messages {
        let msg = match Message::parse_from_bytes(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %name, "undecodable raft message dropped: {e}");
                continue;
            }
        };
        // A database only arrives through the verified transfer stream.
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            tracing::warn!(peer = %name, "snapshot message outside a database transfer dropped");
            continue;
        }
        // A certificate of srv2 cannot speak for srv3.
        if msg.from != from || msg.to != shared.id {
            tracing::warn!(peer = %name, from = msg.from, to = msg.to, "raft message with a forged sender or wrong receiver dropped");
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
            tracing::warn!(peer = ?peer, "bad request closed its stream: {e}");
            let _ = recv.stop(3u32.into());
            return;
        }
        Err(_) => {
            tracing::warn!(peer = ?peer, "request not received within {REQUEST_READ_MS} ms: stream closed");
            let _ = recv.stop(3u32.into());
            return;
        }
    };
    let resp = match (&peer, req) {
        (None, r) if r.is_peer_only() => Response::Error {
            message: "this request is for instances only".into(),
        },
        (Some(p), Request::Snapshot { meta, raft_message }) => {
            return super::snapshot::receive(&shared, p, meta, raft_message, send, recv).await;
        }
        (_, r) => respond(&shared, peer.as_deref(), r).await,
    };
    let _ = write_frame(&mut send, &resp, REQUEST_BYTES_MAX).await;
    let _ = send.finish();
}

async fn respond(shared: &Arc<Shared>, peer: Option<&str>, req: Request) -> Response {
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
        Request::Propose { command } => propose(shared, command).await,
        Request::Get { .. } | Request::List => match super::rejoin::read_refusal(shared).await {
            Some(message) => Response::Error { message },
            None => read(shared, req),
        },
        Request::Digest => digest(shared),
        Request::Stop { name } => stop(shared, &name).await,
        Request::Transfer { name } => transfer(shared, &name).await,
        Request::Hello(_) | Request::Snapshot { .. } => Response::Error {
            message: "unexpected request".into(),
        },
    }
}

fn read(shared: &Shared, req: Request) -> Response {
    match req {
        Request::Get { key } => read_setting(shared, &key),
        _ => list_settings(shared),
    }
}

/// What this instance says about itself.
pub fn local_info(shared: &Shared) -> LocalInfo {
    let phase = shared.phase();
    let guard = shared.core();
    let facts = shared.facts();
    let mut info = LocalInfo {
        name: shared.me.name.clone(),
        state: "waiting".into(),
        cluster_id: facts.cluster_id.clone(),
        started_at_ms: shared.started_at_ms,
        initialized: facts.initialized,
        is_member: false,
        leader: None,
        term: 0,
        commit_index: 0,
        applied_index: facts.applied_index,
        note: None,
        last_stop: shared.last_stop.lock().expect("stop record lock").clone(),
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
        info.state = state_name(shared, core, &phase).into();
        if info.note.is_none() {
            info.note = super::rejoin::note(shared, core, &phase);
        }
    }
    info
}

fn state_name(shared: &Shared, core: &crate::consensus::Core, phase: &Phase) -> &'static str {
    match phase {
        Phase::Discovering | Phase::Waiting { .. } => "waiting",
        _ if core.is_leader() => "coordinator",
        _ if core.is_learner(shared.id) => "joining",
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

async fn status(shared: &Arc<Shared>) -> Response {
    if !shared.is_leader() {
        if let Some(Response::Status(view)) =
            forward_to_leader(shared, &Request::Status, PEER_CALL_MS * 2).await
        {
            return Response::Status(view);
        }
    }
    Response::Status(gather_status(shared).await)
}

/// The status view from this instance: every configured server asked at once.
pub async fn gather_status(shared: &Arc<Shared>) -> StatusView {
    let me = local_info(shared);
    let answers = super::peers::ask_others(shared, &Request::Info, STATUS_PROBE_MS).await;
    let mut infos = vec![Some(me.clone())];
    infos.extend(answers.into_iter().map(|r| match r {
        Ok(Response::Info(i)) => Some(i),
        _ => None,
    }));
    let servers = shared
        .cfg
        .servers
        .iter()
        .map(|s| {
            let info = infos.iter().flatten().find(|i| i.name == s.name);
            server_status(s, info, me.commit_index)
        })
        .collect();
    StatusView {
        cluster_id: me.cluster_id.clone(),
        coordinator: me.leader.clone(),
        term: me.term,
        commit_index: me.commit_index,
        servers,
        answered_by: shared.me.name.clone(),
    }
}

fn server_status(
    s: &crate::config::ServerConf,
    info: Option<&LocalInfo>,
    commit: u64,
) -> ServerStatus {
    let role = match s.role {
        crate::config::Role::Server => "server",
        crate::config::Role::Witness => "witness",
    };
    ServerStatus {
        name: s.name.clone(),
        address: s.address.to_string(),
        role: role.into(),
        state: info.map_or("down".into(), |i| i.state.clone()),
        connected: info.is_some(),
        synchronized: info.is_some_and(|i| i.is_member && i.applied_index >= commit && commit > 0),
        applied_index: info.map_or(0, |i| i.applied_index),
        note: info.and_then(|i| i.note.clone()),
    }
}

/// Waits until `done` holds on the core, checking every 50 ms, for `wait_ms`.
async fn wait_for(
    shared: &Shared,
    wait_ms: u64,
    done: impl Fn(&crate::consensus::Core) -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
    while std::time::Instant::now() < deadline {
        if shared.core().as_ref().is_some_and(&done) {
            return true;
        }
        async_std::task::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A membership change proposed until it shows in the applied conf state
/// (raft-rs takes one change at a time, so it is retried while another is pending).
pub(super) async fn change_membership(
    shared: &Shared,
    kind: ConfChangeType,
    name: &str,
    done: impl Fn(&crate::consensus::Core) -> bool,
) -> Result<(), String> {
    let id = raft_id(name);
    let deadline = std::time::Instant::now() + Duration::from_millis(PROPOSAL_WAIT_MS);
    while std::time::Instant::now() < deadline {
        {
            let mut guard = shared.core();
            let core = guard.as_mut().ok_or("not running")?;
            if done(core) {
                return Ok(());
            }
            if !core.is_leader() {
                return Err("lost the coordinator role".into());
            }
            let _ = core.propose_conf_change(kind, id);
        }
        shared.wake();
        if wait_for(shared, 300, &done).await {
            return Ok(());
        }
    }
    Err(format!(
        "membership change for {name} not applied within {PROPOSAL_WAIT_MS} ms"
    ))
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

pub(super) async fn propose(shared: &Shared, command: Command) -> Response {
    if let Err(message) = command.validate() {
        return Response::Error { message };
    }
    if !shared.is_leader() {
        let req = Request::Propose { command };
        return forward_to_leader(shared, &req, PROPOSAL_WAIT_MS + PEER_CALL_MS)
            .await
            .unwrap_or(Response::Error {
                message: "no coordinator is elected".into(),
            });
    }
    let (ctx, applied) = shared.register_proposal();
    let r = shared
        .core()
        .as_mut()
        .map(|c| c.propose(ctx.clone(), &command));
    match r {
        Some(Ok(())) => {}
        Some(Err(message)) => {
            shared.forget_proposal(&ctx);
            return Response::Error { message };
        }
        None => {
            return Response::Error {
                message: "not running".into(),
            }
        }
    }
    shared.wake();
    match async_std::future::timeout(Duration::from_millis(PROPOSAL_WAIT_MS), applied.recv()).await
    {
        Ok(Ok(index)) => Response::Proposed { index },
        _ => {
            shared.forget_proposal(&ctx);
            Response::Error { message: format!("not applied within {PROPOSAL_WAIT_MS} ms (the coordinator may have changed); it may still be applied") }
        }
    }
}

fn read_setting(shared: &Shared, key: &str) -> Response {
    match shared.core().as_ref().map(|c| c.state().get(key)) {
        Some(Ok(v)) => Response::Value {
            value: v.map(serde_bytes::ByteBuf::from),
        },
        Some(Err(e)) => Response::Error {
            message: e.to_string(),
        },
        None => Response::Error {
            message: "this instance holds no database yet".into(),
        },
    }
}

fn digest(shared: &Shared) -> Response {
    let guard = shared.core();
    let Some(core) = guard.as_ref() else {
        return Response::Error {
            message: "this instance holds no database yet".into(),
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

fn list_settings(shared: &Shared) -> Response {
    match shared
        .core()
        .as_ref()
        .map(|c| c.state().list(LIST_COUNT_MAX))
    {
        Some(Ok(items)) => Response::List {
            items: items
                .into_iter()
                .map(|(k, v)| (k, serde_bytes::ByteBuf::from(v)))
                .collect(),
        },
        Some(Err(e)) => Response::Error {
            message: e.to_string(),
        },
        None => Response::Error {
            message: "this instance holds no database yet".into(),
        },
    }
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
