//! The coordinator's side of jobs: it places queued jobs on the least-loaded
//! eligible instances (`scheduler::place`, many per proposal) and releases
//! the attempts of instances that went silent for `node_timeout_ms`. A new
//! coordinator continues from the committed state: nothing here is kept
//! between rounds but the time it became coordinator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::channel::{Receiver, Sender};

use super::handlers::propose;
use super::{now_ms, Phase, Shared};
use crate::config::Role;
use crate::proto::Response;
use crate::state::{jobs as db, Command, JOB_BATCH_COUNT_MAX, JOB_PURGE_COUNT_MAX};
use crate::work::jobs::Job;
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
/// Ends waiting to be reported, at most (runs wait to hand theirs over).
const REPORT_QUEUE_COUNT_MAX: usize = 4096;
/// A server not heard for this long gets no new placement (four gossip
/// rounds, `node::gossip`).
const PLACE_HEARD_MS_MAX: u64 = 1_000;
/// Placements per proposal.
const ASSIGN_BATCH_COUNT_MAX: usize = 1024;

/// What the job loops share: their wake-ups and this instance's runs.
pub(crate) struct JobsShell {
    assign_wake: (Sender<()>, Receiver<()>),
    pub(super) worker_wake: (Sender<()>, Receiver<()>),
    /// When this instance became coordinator (0: it is not).
    leader_since_ms: AtomicU64,
    /// Attempts running here: job id -> the run.
    pub(super) runs: Mutex<std::collections::HashMap<String, Arc<super::worker::Run>>>,
    /// Takes new attempts (false while draining for a stop).
    pub(super) accepting: AtomicBool,
    /// Ends of attempts waiting to be reported (`worker::report_loop`).
    pub(super) reports: (
        Sender<super::worker::Report>,
        Receiver<super::worker::Report>,
    ),
    /// Applied batches so far, for blocking waiters (`wait_applied`).
    applied_count: (Mutex<u64>, std::sync::Condvar),
}

impl JobsShell {
    pub fn new() -> JobsShell {
        JobsShell {
            assign_wake: async_std::channel::bounded(1),
            worker_wake: async_std::channel::bounded(1),
            leader_since_ms: AtomicU64::new(0),
            runs: Mutex::default(),
            accepting: AtomicBool::new(true),
            reports: async_std::channel::bounded(REPORT_QUEUE_COUNT_MAX),
            applied_count: (Mutex::new(0), std::sync::Condvar::new()),
        }
    }

    /// Something was applied: both loops look again.
    pub fn applied(&self) {
        let _ = self.assign_wake.0.try_send(());
        let _ = self.worker_wake.0.try_send(());
        *self.applied_count.0.lock().expect("applied lock") += 1;
        self.applied_count.1.notify_all();
    }

    /// Blocks this (non-async) thread until something more is applied, or
    /// for `most`: how a script's remote call waits for its child.
    pub fn wait_applied(&self, most: Duration) {
        let (count, changed) = &self.applied_count;
        let guard = count.lock().expect("applied lock");
        let seen = *guard;
        let _ = changed.wait_timeout_while(guard, most, |now| *now == seen);
    }
}

pub async fn assign_loop(shared: Arc<Shared>) {
    let wake = shared.jobs.assign_wake.1.clone();
    let mut next_purge_ms = 0;
    loop {
        let _ = async_std::future::timeout(Duration::from_millis(POLL_MS), wake.recv()).await;
        if shared.phase() == Phase::Stopping {
            return;
        }
        let leading = shared.core().as_ref().is_some_and(|c| c.is_leader());
        let since = &shared.jobs.leader_since_ms;
        if !leading {
            since.store(0, Ordering::Relaxed);
            continue;
        }
        if since.load(Ordering::Relaxed) == 0 {
            since.store(now_ms(), Ordering::Relaxed);
        }
        release_lost(&shared).await;
        assign_round(&shared).await;
        if now_ms() >= next_purge_ms {
            let more = purge(&shared).await;
            next_purge_ms = now_ms() + if more { PURGE_AGAIN_MS } else { PURGE_CHECK_MS };
        }
    }
}

/// Purges finished jobs past the `[jobs]` limits, one bounded batch;
/// returns whether one was due (so more may be).
async fn purge(shared: &Shared) -> bool {
    let keep = shared.cfg.jobs;
    let cutoff = now_ms().saturating_sub(keep.keep_ms);
    let due = {
        let guard = shared.core();
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
    if let Err(e) = commit(shared, command).await {
        crate::throttled_warn!("purge", "", "purging finished jobs failed: {e}");
    }
    true
}

/// Proposes one internal command and says whether it was applied.
async fn commit(shared: &Shared, command: Command) -> Result<(), String> {
    match propose(shared, command, None, false).await {
        Response::Proposed { .. } => Ok(()),
        Response::Error { message } => Err(message),
        other => Err(format!("{other:?}")),
    }
}

/// One batch of placements, if any job is queued and any slot is free.
async fn assign_round(shared: &Shared) {
    let Some(batch) = placements(shared) else {
        return;
    };
    if batch.is_empty() {
        return;
    }
    let command = Command::JobAssign {
        assignments: batch,
        at_ms: now_ms(),
    };
    if let Err(e) = commit(shared, command).await {
        crate::throttled_warn!("assign", "", "placing jobs failed: {e}");
    }
}

/// The placements of this round, from the committed state and the live view.
/// Whether this instance coordinates and its applied state holds all it
/// committed: decisions read from the applied state only then.
pub(super) fn may_coordinate(shared: &Shared) -> bool {
    shared.core().as_ref().is_some_and(|c| {
        c.is_leader() && c.committed_in_term() && c.applied_index() >= c.commit_index()
    })
}

fn placements(shared: &Shared) -> Option<Vec<scheduler::Assignment>> {
    let guard = shared.core();
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
    let voters = core.conf_state().voters.clone();
    drop(guard);
    let mut candidates = candidates(shared, &voters, &active, &modes);
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
        let guard = shared.core();
        let core = guard.as_ref()?;
        db::queued(core.state().conn(), scan)
            .map_err(|e| tracing::error!("reading the job queue from state.db failed: {e}"))
            .ok()?
    };
    let batch_max = ASSIGN_BATCH_COUNT_MAX.min(JOB_BATCH_COUNT_MAX);
    Some(scheduler::place(
        &queued,
        &mut candidates,
        now_ms(),
        batch_max,
    ))
}

/// The instances that may take jobs now: servers (not witnesses), voters
/// (not joining), not in maintenance, up and not stopping.
fn candidates(
    shared: &Shared,
    voters: &[u64],
    active: &std::collections::HashMap<String, u32>,
    modes: &std::collections::HashMap<String, String>,
) -> Vec<Candidate> {
    let now = now_ms();
    let view = shared.view();
    shared
        .cfg
        .servers
        .iter()
        .filter(|s| s.role == Role::Server && voters.contains(&super::raft_id(&s.name)))
        .filter(|s| modes.get(&s.name).is_none_or(|m| m != "maintenance"))
        .filter(|s| {
            if s.name == shared.me.name {
                return shared.jobs.accepting.load(Ordering::Relaxed);
            }
            // Placement is stricter than the failure detector: a server not
            // heard for a few gossip rounds (a coordinator that just died)
            // gets nothing new, although its jobs are released only after
            // node_timeout_ms.
            // Nor one not heard since this instance became coordinator (the
            // coordinator it replaced, most likely dead): live ones answer
            // its first heartbeats within a round trip.
            let since = shared.jobs.leader_since_ms.load(Ordering::Relaxed);
            let window = PLACE_HEARD_MS_MAX.min(now.saturating_sub(since));
            let state = view.info(&s.name).map(|i| i.state.as_str());
            let recent = view.age_ms(&s.name, now).is_some_and(|a| a <= window);
            recent && view.is_up(&s.name, now) && matches!(state, Some("follower" | "coordinator"))
        })
        .map(|s| Candidate {
            name: s.name.clone(),
            slots: s.slots,
            active: active.get(&s.name).copied().unwrap_or(0),
        })
        .collect()
}

/// Releases the attempts of every instance silent for `node_timeout_ms`, once
/// this instance has been coordinator that long (its view is complete).
async fn release_lost(shared: &Shared) {
    let timeout_ms = shared.cfg.timing.node_timeout_ms;
    let since = shared.jobs.leader_since_ms.load(Ordering::Relaxed);
    let now = now_ms();
    if now < since + timeout_ms {
        return;
    }
    let lost: Vec<String> = {
        let view = shared.view();
        shared
            .cfg
            .servers
            .iter()
            .filter(|s| s.name != shared.me.name && !view.is_up(&s.name, now))
            .map(|s| s.name.clone())
            .collect()
    };
    for name in lost {
        let attempts: Vec<(String, u32)> = active_on(shared, &name)
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
        if let Err(e) = commit(shared, command).await {
            crate::throttled_warn!("release", &name, "releasing the jobs of {name} failed: {e}");
        }
    }
}

/// The active attempts of `instance` in the local replica.
pub(super) fn active_on(shared: &Shared, instance: &str) -> Vec<Job> {
    let guard = shared.core();
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
