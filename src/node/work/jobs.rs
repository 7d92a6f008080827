//! The coordinator's side of jobs: it places queued jobs on the least-loaded
//! eligible instances (`scheduler::place`, many per proposal) and releases
//! the attempts of instances that went silent for `node_timeout_ms`. A new
//! coordinator continues from the committed state: nothing here is kept
//! between rounds but the time it became coordinator.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Work;
use crate::clock::now_ms;
use crate::config::Role;
use crate::node::cluster::propose;
use crate::node::cluster::Phase;
use crate::proto::Response;
use crate::state::{jobs as db, Command, JOB_BATCH_COUNT_MAX, JOB_PURGE_COUNT_MAX};
use crate::work::scheduler::{self, Candidate};

/// Longest time between two rounds when nothing wakes the loops.
const POLL_MS: u64 = 50;
/// Queued jobs looked at per round, at most; and beyond the free slots.
const QUEUED_SCAN_COUNT_MAX: usize = 4096;
const QUEUED_SCAN_MARGIN_COUNT: usize = 64;
/// Time between two looks at whether finished jobs are to be purged, and
/// the next one while a purge hit its batch limit.
const PURGE_CHECK_MS: u64 = 10_000;
const PURGE_AGAIN_MS: u64 = 200;
/// A server not heard for this long gets no new placement (four gossip
/// rounds, `node::gossip`).
const PLACE_HEARD_MS_MAX: u64 = 1_000;
/// Placements per proposal.
const ASSIGN_BATCH_COUNT_MAX: usize = 1024;

pub async fn assign_loop(work: Arc<Work>) {
    let wake = work.assign_wake.1.clone();
    let mut next_purge_ms = 0;
    loop {
        let _ = async_std::future::timeout(Duration::from_millis(POLL_MS), wake.recv()).await;
        if work.cluster.phase() == Phase::Stopping {
            return;
        }
        let leading = work.cluster.core().as_ref().is_some_and(|c| c.is_leader());
        let since = &work.leader_since_ms;
        if !leading {
            since.store(0, Ordering::Relaxed);
            continue;
        }
        if since.load(Ordering::Relaxed) == 0 {
            since.store(now_ms(), Ordering::Relaxed);
        }
        release_lost(&work).await;
        assign_round(&work).await;
        if now_ms() >= next_purge_ms {
            let more = purge(&work).await;
            next_purge_ms = now_ms() + if more { PURGE_AGAIN_MS } else { PURGE_CHECK_MS };
        }
    }
}

/// Purges finished jobs past the `[jobs]` limits, one bounded batch;
/// returns whether one was due (so more may be).
async fn purge(work: &Work) -> bool {
    let keep = work.cluster.cfg.jobs.clone();
    let cutoff = now_ms().saturating_sub(keep.keep_ms);
    let due = {
        let guard = work.cluster.core();
        let Some(core) = guard.as_ref() else {
            return false;
        };
        let conn = core.state().conn();
        let old = db::oldest_finished_ms(conn).map(|o| o.is_some_and(|ms| ms < cutoff));
        let many = db::finished_count(conn).map(|n| n > keep.keep_count);
        match (old, many) {
            (Ok(old), Ok(many)) => old || many,
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("reading finished jobs from state.db failed: {e}");
                false
            }
        }
    };
    if !due {
        return false;
    }
    let command = Command::JobPurge {
        finished_before_ms: cutoff,
        keep_count: keep.keep_count,
        batch_max: JOB_PURGE_COUNT_MAX as u32,
    };
    if let Err(e) = commit(work, command).await {
        crate::throttled_warn!("purge", "", "purging finished jobs failed: {e}");
    }
    true
}

/// Proposes one internal command and says whether it was applied.
async fn commit(work: &Work, command: Command) -> Result<(), String> {
    match propose(&work.cluster, command, None, false).await {
        Response::Proposed { .. } => Ok(()),
        Response::Error { message } | Response::Unavailable { message } => Err(message),
        other => Err(format!("{other:?}")),
    }
}

/// One batch of placements, if any job is queued and any slot is free.
async fn assign_round(work: &Work) {
    let Some(batch) = placements(work) else {
        return;
    };
    if batch.is_empty() {
        return;
    }
    let command = Command::JobAssign {
        assignments: batch,
        at_ms: now_ms(),
    };
    if let Err(e) = commit(work, command).await {
        crate::throttled_warn!("assign", "", "placing jobs failed: {e}");
    }
}

/// The placements of this round, from the committed state and the live view.
/// Whether this instance coordinates and its applied state holds all it
/// committed: decisions read from the applied state only then.
pub(super) fn may_coordinate(work: &Work) -> bool {
    work.cluster.core().as_ref().is_some_and(|c| {
        c.is_leader() && c.committed_in_term() && c.applied_index() >= c.commit_index()
    })
}

fn placements(work: &Work) -> Option<Vec<scheduler::Assignment>> {
    let guard = work.cluster.core();
    // Placement reads the applied state: only once it holds everything
    // committed (a new coordinator may still be applying its predecessor's).
    let core = guard.as_ref().filter(|c| {
        c.is_leader() && c.committed_in_term() && c.applied_index() >= c.commit_index()
    })?;
    let conn = core.state().conn();
    let read = || -> rusqlite::Result<_> { Ok((db::active_counts(conn)?, db::modes(conn)?)) };
    let (active, modes) = read()
        .map_err(|e| tracing::error!("reading the active jobs from state.db failed: {e}"))
        .ok()?;
    let members = in_service(core);
    drop(guard);
    let mut candidates = candidates(work, &members, &active, &modes);
    let free: u32 = candidates
        .iter()
        .map(|c| c.slots.saturating_sub(c.active))
        .sum();
    if free == 0 {
        return Some(Vec::new());
    }
    // Only as many queued jobs as there are free slots (and a margin for
    // those still in their retry backoff): the core's lock is held here.
    let scan = (free as usize + QUEUED_SCAN_MARGIN_COUNT).min(QUEUED_SCAN_COUNT_MAX);
    let queued = {
        let guard = work.cluster.core();
        let core = guard.as_ref()?;
        db::queued(core.state().conn(), scan)
            .map_err(|e| tracing::error!("reading the job queue from state.db failed: {e}"))
            .ok()?
    };
    let batch_max = ASSIGN_BATCH_COUNT_MAX.min(JOB_BATCH_COUNT_MAX);
    let placed = scheduler::place(&queued, &mut candidates, now_ms(), batch_max);
    remember_placed(work, &candidates);
    Some(placed)
}

/// Keeps when each candidate was last given a job (`Candidate::last_placed`)
/// for the next placement's ties. Coordinator-local: a new coordinator
/// starts without it, and its ties start where the jobs' ids pick.
fn remember_placed(work: &Work, candidates: &[Candidate]) {
    let mut last = work.last_placed.lock().expect("last placed lock");
    for c in candidates.iter().filter(|c| c.last_placed > 0) {
        last.insert(c.name.clone(), c.last_placed);
    }
}

/// A write as the coordinator proposes it, with placements in the same
/// entry where that saves a commit: a submission with placements of its
/// new jobs (`place_submission`), an end report with placements of queued
/// jobs in the slots it frees (`place_after_ends`). `None`: propose it as
/// it is. The counts read here may miss placements proposed and not yet
/// applied; the apply-time slot check of each placement keeps every
/// instance within its slots, and a job it leaves queued is placed by the
/// next round.
pub(super) fn with_placements(work: &Work, command: &Command) -> Option<Command> {
    // Every write reaches the coordinator under a request id.
    let Command::Once {
        request_id,
        command: inner,
    } = command
    else {
        return None;
    };
    // Only these carry placements: every other write skips the checks
    // below (one more hold of the core's lock each).
    let report = matches!(inner.as_ref(), Command::JobsFinished { .. });
    if !report && inner.submitted_jobs().is_empty() {
        return None;
    }
    // As for a round: only from a fully applied state, and once the loop
    // knows since when this instance coordinates (the window in which
    // servers must have been heard, `candidates`).
    if work.leader_since_ms.load(Ordering::Relaxed) == 0 || !may_coordinate(work) {
        return None;
    }
    let placed = match inner.as_ref() {
        Command::JobsFinished { instance, ends, .. } => {
            place_after_ends(work, inner, instance, ends)
        }
        _ => place_submission(work, inner),
    }?;
    let placed = Command::Once {
        request_id: request_id.clone(),
        command: Box::new(placed),
    };
    debug_assert!(placed.validate().is_ok(), "{placed:?}");
    Some(placed)
}

/// A submission with the placements of its new jobs, when slots are free
/// and no job is queued ahead of them (which keep their turn: priorities
/// are placed in order by the rounds).
fn place_submission(work: &Work, submission: &Command) -> Option<Command> {
    let jobs = submission.submitted_jobs();
    if jobs.is_empty() {
        return None;
    }
    let (active, modes, voters) = {
        let guard = work.cluster.core();
        let core = guard.as_ref().filter(|c| c.is_leader())?;
        let conn = core.state().conn();
        if db::queued_count(conn).ok()? > 0 {
            return None;
        }
        let counts = (db::active_counts(conn).ok()?, db::modes(conn).ok()?);
        (counts.0, counts.1, in_service(core))
    };
    let mut candidates = candidates(work, &voters, &active, &modes);
    let queued: Vec<scheduler::Queued> = jobs
        .iter()
        .map(|(id, spec)| scheduler::Queued {
            id: id.to_string(),
            attempt: 1,
            priority: spec.priority,
            not_before_ms: 0,
        })
        .collect();
    placed(work, submission, &queued, &mut candidates)
}

/// An end report with placements of queued jobs, counting the slots its
/// current ends free as free (they are, once the report applies, before
/// its placements do): a busy slot goes from one job to the next in one
/// commit, not two (the end's and a round's placement).
fn place_after_ends(
    work: &Work,
    report: &Command,
    instance: &str,
    ends: &[crate::work::jobs::AttemptEnd],
) -> Option<Command> {
    let (active, modes, members, queued) = {
        let guard = work.cluster.core();
        let core = guard.as_ref().filter(|c| c.is_leader())?;
        let conn = core.state().conn();
        if db::queued_count(conn).ok()? == 0 {
            return None;
        }
        let freed = db::current_ends(conn, instance, ends).ok()?;
        let mut active = db::active_counts(conn).ok()?;
        let held = active.entry(instance.to_string()).or_default();
        debug_assert!(
            freed <= *held,
            "{instance}: {freed} ends of {held} attempts"
        );
        *held = held.saturating_sub(freed);
        // The queue's head, as many as the report frees and a margin: the
        // other free slots are the rounds' (the core's lock is held here).
        let scan = (freed as usize + QUEUED_SCAN_MARGIN_COUNT).min(QUEUED_SCAN_COUNT_MAX);
        let queued = db::queued(conn, scan).ok()?;
        (active, db::modes(conn).ok()?, in_service(core), queued)
    };
    let mut candidates = candidates(work, &members, &active, &modes);
    placed(work, report, &queued, &mut candidates)
}

/// `command` with placements of `queued` on `candidates`; `None` when
/// nothing fits.
fn placed(
    work: &Work,
    command: &Command,
    queued: &[scheduler::Queued],
    candidates: &mut [Candidate],
) -> Option<Command> {
    let batch_max = ASSIGN_BATCH_COUNT_MAX.min(JOB_BATCH_COUNT_MAX);
    let assignments = scheduler::place(queued, candidates, now_ms(), batch_max);
    remember_placed(work, candidates);
    if assignments.is_empty() {
        return None;
    }
    Some(Command::Placed {
        submission: Box::new(command.clone()),
        assignments,
        at_ms: now_ms(),
    })
}

/// The members that may be in service: voters and learners (a learner
/// still joining says so in its state, which `candidates` checks).
fn in_service(core: &crate::consensus::Core) -> Vec<u64> {
    let cs = core.conf_state();
    cs.voters
        .iter()
        .chain(cs.learners.iter())
        .copied()
        .collect()
}

/// The instances that may take jobs now: servers (not witnesses), voters
/// and non-voting members (not joining), not in maintenance, up and not
/// stopping.
fn candidates(
    work: &Work,
    members: &[u64],
    active: &std::collections::HashMap<String, u32>,
    modes: &std::collections::HashMap<String, String>,
) -> Vec<Candidate> {
    let now = now_ms();
    let last_placed = work.last_placed.lock().expect("last placed lock").clone();
    let view = work.cluster.view();
    let me = &work.cluster.me.name;
    // How late this instance is with gossip itself: the freshest peer's
    // age. On a saturated machine every peer's gossip is handled late; a
    // server is silent only when it is that much later than the freshest.
    let own_lag_ms = work
        .cluster
        .cfg
        .servers
        .iter()
        .filter(|s| s.name != *me)
        .filter_map(|s| view.age_ms(&s.name, now))
        .min()
        .unwrap_or(0)
        .min(work.cluster.cfg.timing.node_timeout_ms);
    work.cluster
        .cfg
        .servers
        .iter()
        .filter(|s| s.role == Role::Server && members.contains(&crate::consensus::raft_id(&s.name)))
        .filter(|s| modes.get(&s.name).is_none_or(|m| m != "maintenance"))
        .filter(|s| {
            if s.name == work.cluster.me.name {
                return work.accepting.load(Ordering::Relaxed);
            }
            // Placement is stricter than the failure detector: a server not
            // heard for a few gossip rounds (a coordinator that just died)
            // gets nothing new, although its jobs are released only after
            // node_timeout_ms.
            // Nor one not heard since this instance became coordinator (the
            // coordinator it replaced, most likely dead): live ones answer
            // its first heartbeats within a round trip.
            let since = work.leader_since_ms.load(Ordering::Relaxed);
            let window = (PLACE_HEARD_MS_MAX + own_lag_ms).min(now.saturating_sub(since));
            let state = view.info(&s.name).map(|i| i.state.as_str());
            let recent = view.age_ms(&s.name, now).is_some_and(|a| a <= window);
            recent
                && view.is_up(&s.name, now)
                && matches!(state, Some("follower" | "coordinator" | "non-voter"))
        })
        .map(|s| Candidate {
            name: s.name.clone(),
            slots: s.slots,
            active: active.get(&s.name).copied().unwrap_or(0),
            last_placed: last_placed.get(&s.name).copied().unwrap_or(0),
        })
        .collect()
}

/// Releases the attempts of every instance silent for `node_timeout_ms`, once
/// this instance has been coordinator that long (its view is complete).
async fn release_lost(work: &Work) {
    let timeout_ms = work.cluster.cfg.timing.node_timeout_ms;
    let since = work.leader_since_ms.load(Ordering::Relaxed);
    let now = now_ms();
    if now < since + timeout_ms {
        return;
    }
    let lost: Vec<String> = {
        let view = work.cluster.view();
        work.cluster
            .cfg
            .servers
            .iter()
            .filter(|s| s.name != work.cluster.me.name && !view.is_up(&s.name, now))
            .map(|s| s.name.clone())
            .collect()
    };
    for name in lost {
        let attempts: Vec<(String, u32)> = active_on(work, &name)
            .into_iter()
            .map(|j| (j.id, j.attempt))
            .take(JOB_BATCH_COUNT_MAX)
            .collect();
        if attempts.is_empty() {
            continue;
        }
        let count = attempts.len();
        let reason = format!("{name} was silent for {timeout_ms} ms");
        tracing::warn!("{reason}: releasing its {count} attempts");
        let command = Command::JobRelease {
            attempts,
            reason,
            at_ms: now,
        };
        if let Err(e) = commit(work, command).await {
            crate::throttled_warn!("release", &name, "releasing the jobs of {name} failed: {e}");
        }
    }
}

/// The active attempts of `instance` in the local replica.
pub(super) fn active_on(work: &Work, instance: &str) -> Vec<db::ActiveAttempt> {
    let guard = work.cluster.core();
    let Some(core) = guard.as_ref() else {
        return Vec::new();
    };
    match db::active_on(core.state().conn(), instance) {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::error!("reading the jobs of {instance} from state.db failed: {e}");
            Vec::new()
        }
    }
}
