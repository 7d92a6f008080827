//! The replicated state's handle: writes (`propose`, membership changes)
//! and reads that see every acknowledged write (`read`, `confirm_read`).
//! The one way the work and the web change or read the cluster's state; the
//! request handlers use it too.
//!
//! A write is held through a coordinator change (forwarded to the
//! coordinator this instance knows, proposed here when that is this
//! instance, tried again under the same request id until `PROPOSAL_WAIT_MS`);
//! a voter cut off from the majority refuses at once, naming why
//! (`quorum_lost`).

use std::time::Duration;

use raft::eraftpb::ConfChangeType;

use super::{now_ms, raft_id, Shared, PROPOSAL_WAIT_MS};
use crate::proto::{Request, Response, Staleness};
use crate::state::Command;

/// Time between two looks for a coordinator while a write is held.
const HOLD_POLL_MS: u64 = 20;
/// Time between two checks, while a proposal waits to be applied, that this
/// instance is still the coordinator of the term it proposed in.
const LEADER_CHECK_MS: u64 = 50;
/// Time a read waits for its read index before asking again.
const READ_RETRY_MS: u64 = 300;
/// How long a request waits for the database of an instance that is
/// starting on one it holds (discovery, then the core opens).
const STARTING_WAIT_MS: u64 = 5_000;

/// Why this member knows no coordinator, from the live view. A voter counts
/// as reachable when heard from within an election timeout, not the longer
/// `node_timeout_ms`: Raft gives up on a silent coordinator after the former,
/// and the note must be true from the moment the state says `electing`.
pub(super) fn electing_note(shared: &Shared, core: &crate::consensus::Core) -> String {
    let others: Vec<&str> = core
        .conf_state()
        .voters
        .iter()
        .filter(|id| **id != shared.id)
        .filter_map(|id| shared.name_of(*id))
        .collect();
    let window_ms = shared.cfg.timing.election_ms;
    let reachable = shared
        .view()
        .heard_count(others.iter().copied(), window_ms, now_ms());
    crate::cluster::view::electing_note(others.len(), reachable)
}

/// Why no coordinator can confirm anything for this member now: it is a
/// voter that knows none and reaches too few voters for a quorum (cut off),
/// so waiting out `PROPOSAL_WAIT_MS` would only delay the same answer.
/// `None` during an election it can win, and for the first two election
/// timeouts after the start, while it has not heard its peers yet.
pub(super) fn quorum_lost(shared: &Shared) -> Option<String> {
    let grace_ms = 2 * shared.cfg.timing.election_ms;
    if now_ms().saturating_sub(shared.started_at_ms) < grace_ms {
        return None;
    }
    let guard = shared.core();
    let core = guard.as_ref()?;
    if core.leader_id().is_some() || !core.is_voter(shared.id) {
        return None;
    }
    let note = electing_note(shared, core);
    note.starts_with("no quorum").then_some(note)
}

/// Waits until `done` holds on the core, checking every 50 ms, for `wait_ms`.
pub(super) async fn wait_for(
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
pub(crate) async fn change_membership(
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

/// A write from a client or another instance. It is held through a
/// coordinator change: forwarded to the coordinator this instance knows, or
/// proposed here when that is this instance, and tried again (under the same
/// request id, so it is applied once) until `PROPOSAL_WAIT_MS` has passed.
pub(crate) async fn propose(
    shared: &Shared,
    command: Command,
    request_id: Option<String>,
    forwarded: bool,
) -> Response {
    // A write without the client's id gets one here: this instance's own
    // retries through a new coordinator must not apply it twice either.
    let command = match (command, request_id) {
        (c @ Command::Once { .. }, _) => c,
        (c, id) => Command::Once {
            request_id: id.unwrap_or_else(crate::proto::new_request_id),
            command: Box::new(c),
        },
    };
    if let Err(message) = command.validate() {
        return Response::Error { message };
    }
    if let Some(message) = shared.space_refusal() {
        return Response::Error { message };
    }
    if let Some(c) = shared.conflict().filter(|c| c.yields) {
        return Response::Error { message: c.note() };
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(PROPOSAL_WAIT_MS);
    let mut why = String::from("no coordinator is elected");
    let mut sent = false;
    while std::time::Instant::now() < deadline {
        if let Some(full) = shared.space_refusal() {
            return Response::Error {
                message: format!("{full}; this write may still be applied: a retry with the same request id is applied at most once"),
            };
        }
        if shared.is_leader() {
            if let Some(answer) = propose_here(shared, &command, deadline).await {
                return answer;
            }
            why = "the coordinator changed or was handing its role over".into();
            async_std::task::sleep(Duration::from_millis(HOLD_POLL_MS)).await;
            continue;
        }
        if forwarded {
            // The sender holds the write; it asks the coordinator it learns next.
            return Response::NotLeader {
                leader: shared.leader_name(),
            };
        }
        // Whether this try may reach a coordinator (and the write with it).
        sent |= shared.leader_name().is_some_and(|l| l != shared.me.name);
        match hold_or_forward(shared, &command, deadline).await {
            Ok(answer) => return answer,
            Err(reason) => why = reason,
        }
        if let Some(note) = quorum_lost(shared) {
            let outcome = if sent {
                "it may still be applied: a retry with the same request id is applied at most once"
            } else {
                "it was not sent to any coordinator"
            };
            return Response::Unavailable {
                message: format!("not applied: no coordinator ({note}); {outcome}"),
            };
        }
        async_std::task::sleep(Duration::from_millis(HOLD_POLL_MS)).await;
    }
    Response::Unavailable {
        message: format!(
            "not applied within {PROPOSAL_WAIT_MS} ms ({why}); it may still be applied: a retry with the same request id is applied at most once"
        ),
    }
}

/// Sends the write to the coordinator this instance knows. `Err`: try again
/// (no coordinator known, it is unreachable, or it no longer coordinates).
async fn hold_or_forward(
    shared: &Shared,
    command: &Command,
    deadline: std::time::Instant,
) -> Result<Response, String> {
    let Some(leader) = shared.leader_name().filter(|l| *l != shared.me.name) else {
        return Err("no coordinator is elected".into());
    };
    let left_ms = deadline
        .saturating_duration_since(std::time::Instant::now())
        .as_millis() as u64;
    let req = Request::Propose {
        command: command.clone(),
        request_id: None,
        forwarded: true,
    };
    // A write too large for a frame is refused at once with the limit, not
    // retried as if the coordinator were unreachable (every command is
    // validated against smaller limits first: this is the last guard).
    if let Err(e) = crate::transport::encode(&req, crate::proto::REQUEST_BYTES_MAX) {
        return Ok(Response::Error {
            message: format!(
                "the write cannot be forwarded to the coordinator: {e} (REQUEST_BYTES_MAX)"
            ),
        });
    }
    let forward = async {
        match shared
            .peers
            .call(shared, &leader, &req, left_ms.max(1))
            .await
        {
            Ok(Response::NotLeader { .. }) => Err(format!("{leader} no longer coordinates")),
            Ok(answer) => Ok(answer),
            Err(e) => Err(format!("coordinator {leader} unreachable: {e}")),
        }
    };
    // A coordinator that died leaves its connection open until QUIC's idle
    // timeout: stop waiting on it as soon as this instance knows it is gone.
    let replaced = async {
        loop {
            async_std::task::sleep(Duration::from_millis(HOLD_POLL_MS)).await;
            if shared.leader_name().as_deref() != Some(leader.as_str()) {
                return Err(format!("coordinator {leader} was replaced"));
            }
        }
    };
    futures_lite::future::or(forward, replaced).await
}

/// Proposes on this instance, the coordinator, and waits until the write is
/// applied here. `None`: the coordinator role was lost first (the caller
/// tries again through the next coordinator).
async fn propose_here(
    shared: &Shared,
    command: &Command,
    deadline: std::time::Instant,
) -> Option<Response> {
    // Outside the core's lock: the hook reads the applied state and the
    // live view, each under its own.
    let placed = shared.before_propose(command);
    let command = placed.as_ref().unwrap_or(command);
    let (ctx, applied) = shared.register_proposal();
    // One hold of the core's lock for the check and the proposal: the raft
    // loop holds it through each fsync, and every extra wait on it makes
    // the next batch smaller.
    let proposed = shared.core().as_mut().map(|c| {
        if let Some(index) = request_index(c, command) {
            return Err(Some(index));
        }
        let term = c.term();
        c.propose(ctx.clone(), command)
            .map(|()| term)
            .map_err(|_| None)
    });
    // The command was validated: raft refuses a proposal only while the
    // role is lost or handed over (it drops them during a transfer), which
    // the caller waits out.
    let term = match proposed {
        Some(Ok(term)) => term,
        Some(Err(Some(index))) => {
            shared.forget_proposal(&ctx);
            return Some(Response::Proposed { index });
        }
        _ => {
            shared.forget_proposal(&ctx);
            return None;
        }
    };
    shared.wake();
    while std::time::Instant::now() < deadline {
        let wait = Duration::from_millis(LEADER_CHECK_MS);
        // (A retry found applied above reports the first index; one racing
        // its original reports its own entry's, applied as a no-op.)
        if let Ok(Ok(index)) = async_std::future::timeout(wait, applied.recv()).await {
            return Some(Response::Proposed { index });
        }
        let still = shared
            .core()
            .as_ref()
            .is_some_and(|c| c.is_leader() && c.term() == term);
        if !still {
            shared.forget_proposal(&ctx);
            return None;
        }
    }
    shared.forget_proposal(&ctx);
    Some(Response::Unavailable {
        message: format!("not applied within {PROPOSAL_WAIT_MS} ms; it may still be applied: a retry with the same request id is applied at most once"),
    })
}

/// Where the write tagged with `command`'s request id was applied, if it was.
fn request_index(core: &crate::consensus::Core, command: &Command) -> Option<u64> {
    let Command::Once { request_id, .. } = command else {
        return None;
    };
    core.state().request_index(request_id).ok()?
}

/// Serves a read: by default only once this replica holds every write
/// acknowledged before the read began (ReadIndex); `stale` at once, saying
/// how old the replica is.
pub(crate) async fn read(
    shared: &Shared,
    stale: bool,
    serve: impl FnOnce(&crate::consensus::Core, Option<Staleness>) -> Response,
) -> Response {
    if !stale {
        if let Err(message) = confirm_read(shared).await {
            return Response::Unavailable { message };
        }
    }
    let staleness = stale.then(|| staleness(shared));
    if shared.with_replica(|_| ()).is_none() && shared.space_read_refusal().is_none() {
        if let Err(message) = core_opened(shared).await {
            return Response::Unavailable { message };
        }
    }
    // A core parked for lack of space still serves `--stale` reads.
    shared
        .with_replica(|core| serve(core, staleness))
        .unwrap_or_else(|| Response::Unavailable {
            message: no_database(shared),
        })
}

/// Waits, at most `STARTING_WAIT_MS`, while this instance starts on a
/// database it holds (right after a restart it first looks for its peers):
/// a request then waits a moment instead of being refused. `Err` says why
/// there is no database to read.
async fn core_opened(shared: &Shared) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_millis(STARTING_WAIT_MS);
    loop {
        if shared.with_replica(|_| ()).is_some() {
            return Ok(());
        }
        // Not while it waits for other servers to start: that may last.
        let opening = matches!(
            shared.phase(),
            super::Phase::Discovering | super::Phase::Joining | super::Phase::Running
        );
        let starting = shared.facts().initialized && opening;
        if !starting || std::time::Instant::now() >= deadline {
            return Err(no_database(shared));
        }
        async_std::task::sleep(Duration::from_millis(HOLD_POLL_MS)).await;
    }
}

/// Why this instance has no database to answer from, in its words.
pub(crate) fn no_database(shared: &Shared) -> String {
    let me = &shared.me.name;
    match (shared.facts().initialized, shared.phase()) {
        (true, super::Phase::Waiting { reason, .. }) => {
            format!("{me} is starting and holds a database, but waits before opening it: {reason}")
        }
        (true, _) => {
            format!("{me} is starting: its database did not open within {STARTING_WAIT_MS} ms")
        }
        (false, _) => format!("{me} holds no database yet: it joins the cluster and receives one"),
    }
}

/// Waits until the coordinator confirmed a read index and this replica
/// applied it. Asked again every `READ_RETRY_MS` (raft drops the request
/// while no coordinator is known), until `PROPOSAL_WAIT_MS`.
pub(crate) async fn confirm_read(shared: &Shared) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_millis(PROPOSAL_WAIT_MS);
    while std::time::Instant::now() < deadline {
        let (ctx, ready) = shared.register_read();
        // The core's lock is let go before any wait.
        let asked = shared
            .core()
            .as_mut()
            .map(|core| core.read_index(ctx.clone()));
        if asked.is_none() {
            shared.forget_read(&ctx);
            if let Some(refusal) = shared.space_read_refusal() {
                return Err(refusal);
            }
            core_opened(shared).await?;
            continue;
        }
        shared.wake();
        let wait = Duration::from_millis(READ_RETRY_MS);
        if let Ok(Ok(_index)) = async_std::future::timeout(wait, ready.recv()).await {
            return Ok(());
        }
        shared.forget_read(&ctx);
        if let Some(note) = quorum_lost(shared) {
            return Err(format!(
                "no coordinator ({note}), so this replica may miss acknowledged writes; `--stale` reads it as it is"
            ));
        }
    }
    Err(format!(
        "no coordinator confirmed the read within {PROPOSAL_WAIT_MS} ms, so this replica may miss acknowledged writes; `--stale` reads it as it is"
    ))
}

fn staleness(shared: &Shared) -> Staleness {
    let applied_index = shared.with_replica(|c| c.applied_index()).unwrap_or(0);
    let coordinator_heard_ago_ms = match shared.leader_name() {
        Some(l) if l == shared.me.name => Some(0),
        Some(l) => shared.view().age_ms(&l, now_ms()),
        None => None,
    };
    Staleness {
        answered_by: shared.me.name.clone(),
        applied_index,
        coordinator_heard_ago_ms,
    }
}
