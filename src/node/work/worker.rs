//! Every instance's side of jobs: it watches the applied state for attempts
//! assigned to it, runs them (scripts in the Script Execution Engine,
//! commands as processes), and reports how they ended through the
//! coordinator. An attempt that is no longer current (cancelled, or
//! released while this instance was cut off) is stopped; its late report is
//! fenced off when applied. Attempts this instance holds but does not run
//! (it restarted) are handed back at once; so is everything left when it
//! stops.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::jobs::active_on;
use super::process::Capture;
use super::script_host::run_job_script;
use super::Work;
use crate::clock::now_ms;
use crate::node::cluster::propose;
use crate::node::cluster::Phase;
use crate::proto::Response;
use crate::state::{jobs as db, Command};
use crate::work::jobs::{
    bounded_text, AttemptEnd, Job, JobKind, JobState, Outcome, LOG_BYTES_MAX, RESULT_BYTES_MAX,
};

/// Longest time between two looks at the applied state.
const POLL_MS: u64 = 50;
/// A run that lasts longer than this is reported `running`; shorter ones go
/// straight from `assigned` to their end (one entry less per job).
const STARTED_REPORT_MS: u64 = 50;
/// Tries to report an outcome (each waits for a coordinator up to 10 s).
const REPORT_TRIES_MAX: u32 = 30;
/// Time for the coordinator to hear that this instance is stopping (more
/// than one gossip interval, `node::gossip`).
const GOSSIP_SETTLE_MS: u64 = 400;
/// Ends in one batched report, at most, and their bytes (one entry).
const REPORT_BATCH_COUNT_MAX: usize = 256;
const REPORT_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// One attempt running here.
pub(crate) struct Run {
    attempt: u32,
    cancel: Arc<AtomicBool>,
    /// The attempt ended here (its end report may still be on its way):
    /// no longer being current then is its own doing, not a stop.
    ended: AtomicBool,
    /// Its end is applied: the run can be forgotten.
    done: AtomicBool,
}

pub async fn worker_loop(work: Arc<Work>) {
    let wake = work.worker_wake.1.clone();
    let mut handed_back: HashSet<(String, u32)> = HashSet::new();
    loop {
        let _ = async_std::future::timeout(Duration::from_millis(POLL_MS), wake.recv()).await;
        let mine = active_on(&work, &work.cluster.me.name);
        stop_stale_runs(&work, &mine);
        // Only attempts still held here stay remembered: the set is bounded
        // by this instance's active attempts.
        handed_back
            .retain(|(id, attempt)| mine.iter().any(|j| j.id == *id && j.attempt == *attempt));
        let hand_back = start_new_runs(&work, mine);
        let fresh: Vec<(String, u32)> = hand_back
            .into_iter()
            .filter(|a| handed_back.insert(a.clone()))
            .collect();
        if !fresh.is_empty() {
            let reason = format!(
                "{} does not run it (restarted or stopping)",
                work.cluster.me.name
            );
            release(&work, fresh, reason).await;
        }
    }
}

/// Cancels runs whose attempt is no longer current here; forgets those
/// that ended and whose end is applied.
fn stop_stale_runs(work: &Work, mine: &[db::ActiveAttempt]) {
    let mut runs = work.runs.lock().expect("runs lock");
    runs.retain(|id, run| {
        let current = mine.iter().any(|j| j.id == *id && j.attempt == run.attempt);
        if current {
            return true;
        }
        let running = !run.ended.load(Ordering::Relaxed) && !run.done.load(Ordering::Relaxed);
        if running && !run.cancel.swap(true, Ordering::Relaxed) {
            tracing::info!(job = %id, attempt = run.attempt, "the attempt is no longer current here (cancelled or released): stopping it");
        }
        !run.done.load(Ordering::Relaxed)
    });
}

/// Starts the attempts assigned here that do not run yet; returns those to
/// hand back: `running` ones this instance does not run (it restarted), and
/// new ones while it drains.
fn start_new_runs(work: &Arc<Work>, mine: Vec<db::ActiveAttempt>) -> Vec<(String, u32)> {
    let accepting = work.accepting.load(Ordering::Relaxed);
    let new: Vec<db::ActiveAttempt> = {
        let runs = work.runs.lock().expect("runs lock");
        mine.into_iter()
            .filter(|a| runs.get(&a.id).is_none_or(|r| r.attempt != a.attempt))
            .collect()
    };
    let (hand_back, start): (Vec<db::ActiveAttempt>, Vec<db::ActiveAttempt>) =
        new.into_iter().partition(|a| a.running || !accepting);
    let hand_back = hand_back.into_iter().map(|a| (a.id, a.attempt)).collect();
    if start.is_empty() {
        return hand_back;
    }
    // Whole jobs only for the attempts started (the loop looks at every
    // active attempt after each applied entry); one still assigned to this
    // attempt, else the next look judges it again.
    let jobs: Vec<Job> = {
        let guard = work.cluster.core();
        let Some(core) = guard.as_ref() else {
            return hand_back;
        };
        start
            .iter()
            .filter_map(|a| db::job_record(core.state().conn(), &a.id).ok().flatten())
            .filter(|j| {
                let current = start.iter().any(|a| a.id == j.id && a.attempt == j.attempt);
                current && j.state == JobState::Assigned
            })
            .collect()
    };
    let mut runs = work.runs.lock().expect("runs lock");
    for job in jobs {
        let run = Arc::new(Run {
            attempt: job.attempt,
            cancel: Arc::new(AtomicBool::new(false)),
            ended: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        runs.insert(job.id.clone(), run.clone());
        async_std::task::spawn(execute(work.clone(), job, run));
    }
    hand_back
}

async fn release(work: &Work, attempts: Vec<(String, u32)>, reason: String) {
    let command = Command::JobRelease {
        attempts,
        reason,
        at_ms: now_ms(),
    };
    if let Response::Error { message } | Response::Unavailable { message } =
        propose(&work.cluster, command, None, false).await
    {
        tracing::warn!("handing back attempts failed: {message}");
    }
}

/// Runs one attempt and reports its end.
async fn execute(work: Arc<Work>, job: Job, run: Arc<Run>) {
    let (id, attempt) = (job.id.clone(), job.attempt);
    {
        let (work, run, id) = (work.clone(), run.clone(), id.clone());
        async_std::task::spawn(async move {
            async_std::task::sleep(Duration::from_millis(STARTED_REPORT_MS)).await;
            if !run.ended.load(Ordering::Relaxed) {
                let command = Command::JobStarted {
                    id,
                    instance: work.cluster.me.name.clone(),
                    attempt,
                    at_ms: now_ms(),
                };
                let _ = propose(&work.cluster, command, None, false).await;
            }
        });
    }
    let cancel = run.cancel.clone();
    // Followed live (`live`) while it runs; stored with the end.
    let log = Arc::new(Capture::new(LOG_BYTES_MAX));
    work.live
        .lock()
        .expect("live lock")
        .insert(id.clone(), (attempt, log.clone()));
    let outcome = match stored_code(&work, job) {
        Ok(job) => {
            let work = work.clone();
            async_std::task::spawn_blocking(move || run_job(work, job, cancel, log)).await
        }
        Err(why) => Outcome::failed(why, String::new()),
    };
    work.live.lock().expect("live lock").remove(&id);
    // A `running` report still on its way is fenced off by the end's (an
    // attempt that ended is no longer `assigned`).
    run.ended.store(true, Ordering::Relaxed);
    report(&work, &id, attempt, outcome).await;
    run.done.store(true, Ordering::Relaxed);
    work.applied(); // let the loop forget the run once its end is applied
}

/// One end waiting in the report queue, and who waits for its commit.
pub(crate) type Report = (AttemptEnd, async_std::channel::Sender<()>);

/// Hands an attempt's end to the report loop and waits until it is
/// applied (or given up).
async fn report(work: &Work, id: &str, attempt: u32, outcome: Outcome) {
    let end = AttemptEnd {
        id: id.to_string(),
        attempt,
        outcome,
    };
    let (done_tx, done_rx) = async_std::channel::bounded(1);
    if work.reports.0.send((end, done_tx)).await.is_ok() {
        let _ = done_rx.recv().await;
    }
}

/// Reports ends in batches: while one report is being committed, the ends
/// that arrive meanwhile gather into the next (one entry for many jobs).
pub async fn report_loop(work: Arc<Work>) {
    let queue = work.reports.1.clone();
    while let Ok(first) = queue.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].0.size_bytes();
        while batch.len() < REPORT_BATCH_COUNT_MAX && bytes < REPORT_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(r) => {
                    bytes += r.0.size_bytes();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let (ends, waiters): (Vec<AttemptEnd>, Vec<_>) = batch.into_iter().unzip();
        let index = commit_ends(&work, &ends).await;
        if let Some(index) = index {
            // Judged from this replica once it holds the report's entry (a
            // thawed instance's replica may still show its attempt as
            // current): on a task of its own, so reports never wait for it.
            let work = work.clone();
            async_std::task::spawn(async move {
                if applied_here(&work, index).await {
                    for e in &ends {
                        log_if_fenced(&work, &e.id, e.attempt);
                    }
                }
            });
        }
        for w in waiters {
            let _ = w.try_send(());
        }
    }
}

/// Proposes `ends` until applied, or until the tries run out (then the
/// coordinator releases the attempts when this instance is gone).
async fn commit_ends(work: &Work, ends: &[AttemptEnd]) -> Option<u64> {
    let command = Command::JobsFinished {
        instance: work.cluster.me.name.clone(),
        at_ms: now_ms(),
        ends: ends.to_vec(),
    };
    for _ in 0..REPORT_TRIES_MAX {
        match propose(&work.cluster, command.clone(), None, false).await {
            Response::Proposed { index } => return Some(index),
            Response::Error { message } | Response::Unavailable { message } => {
                tracing::warn!(
                    count = ends.len(),
                    "reporting the end of attempts failed, retrying: {message}"
                );
            }
            _ => {}
        }
        if work.cluster.phase() == Phase::Stopping && work.cluster.core().is_none() {
            return None;
        }
        async_std::task::sleep(Duration::from_millis(POLL_MS)).await;
    }
    tracing::error!(count = ends.len(), "the end of attempts could not be reported; the coordinator releases them when this instance is gone");
    None
}

/// Longest wait for this replica to apply a report's entry before its
/// attempts are judged current or fenced.
const FENCE_CHECK_WAIT_MS: u64 = 10_000;

/// Waits (bounded) until this replica has applied `index`.
async fn applied_here(work: &Work, index: u64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_millis(FENCE_CHECK_WAIT_MS);
    while std::time::Instant::now() < deadline {
        let applied = work.cluster.core().as_ref().map(|c| c.applied_index());
        if applied.is_some_and(|a| a >= index) {
            return true;
        }
        async_std::task::sleep(Duration::from_millis(POLL_MS)).await;
    }
    false
}

fn log_if_fenced(work: &Work, id: &str, attempt: u32) {
    let guard = work.cluster.core();
    let Some(core) = guard.as_ref() else { return };
    if let Ok(Some((current, state, instance))) = db::attempt_of(core.state().conn(), id) {
        // Still active and ours: this replica has not applied the end yet,
        // which says nothing. Moved on, or cancelled: the end was refused.
        let mine = current == attempt && instance.as_deref() == Some(work.cluster.me.name.as_str());
        if !mine || state == JobState::Cancelled {
            tracing::info!(job = %id, attempt, "the report was refused: the attempt is no longer current (cancelled or released)");
        }
    }
}

/// The job with the code of the stored script it names (its latest
/// version in this replica, which holds every version committed before the
/// attempt was placed).
fn stored_code(work: &Work, mut job: Job) -> Result<Job, String> {
    let Some(name) = job.spec.stored.clone() else {
        return Ok(job);
    };
    let guard = work.cluster.core();
    let core = guard.as_ref().ok_or("this instance holds no database")?;
    match db::script(core.state().conn(), &name, None) {
        Ok(Some(s)) => {
            job.spec.script = s.code;
            Ok(job)
        }
        Ok(None) => Err(format!("no stored script `{name}`")),
        Err(e) => Err(format!("reading stored script `{name}` failed: {e}")),
    }
}

/// Runs an attempt on this (blocking) thread.
fn run_job(work: Arc<Work>, job: Job, cancel: Arc<AtomicBool>, log: Arc<Capture>) -> Outcome {
    match job.spec.kind {
        JobKind::Script => run_script(work, job, cancel, log),
        JobKind::Command => run_command(&job, &work, &cancel, log),
        JobKind::Hotfolder => super::hotfolder::process(work, job, cancel, log),
    }
}

fn run_script(work: Arc<Work>, job: Job, cancel: Arc<AtomicBool>, log: Arc<Capture>) -> Outcome {
    let profiler = Arc::new(crate::work::script::Profiler::default());
    let result = run_job_script(work, &job, cancel, (&log, &profiler), None);
    let (ok, result, error) = match result {
        Ok(value) => (true, Some(bounded_text(&value, RESULT_BYTES_MAX)), None),
        Err(e) => (
            false,
            None,
            Some(bounded_text(&e.to_string(), RESULT_BYTES_MAX)),
        ),
    };
    Outcome {
        ok,
        result,
        error,
        log: log.take(),
        profile: profiler.rows(),
    }
}

/// Runs a command job's argv (no shell) under `shared_root`, as the
/// `run_as` user if any, capturing its output, until it exits, times out or
/// is cancelled (then it is killed).
fn run_command(job: &Job, work: &Work, cancel: &AtomicBool, log: Arc<Capture>) -> Outcome {
    let cwd = work
        .cluster
        .cfg
        .shared_root
        .join(job.spec.cwd.as_deref().unwrap_or("."));
    let ended = super::process::run(
        &job.spec.args,
        (&cwd, work.account.as_ref()),
        &job.spec.env,
        job.spec.timeout_ms,
        cancel,
        &log,
    );
    match ended {
        Ok(s) if s.success() => Outcome {
            ok: true,
            result: Some("exit status 0".into()),
            error: None,
            log: log.take(),
            profile: Vec::new(),
        },
        Ok(s) => Outcome::failed(format!("the command {}", log.ended_with(s)), log.take()),
        Err(why) => Outcome::failed(why, log.take()),
    }
}

/// A graceful stop: no new attempts; running ones get `drain_ms` to end;
/// what is left (and anything assigned meanwhile) is handed back at once.
pub async fn drain(work: &Work) {
    work.accepting.store(false, Ordering::Relaxed);
    if !active_on(work, &work.cluster.me.name).is_empty() {
        // The coordinator learns `stopping` by gossip: until then it might
        // place the handed-back attempts here again.
        async_std::task::sleep(Duration::from_millis(GOSSIP_SETTLE_MS)).await;
    }
    let drain_ms = work.cluster.cfg.timing.drain_ms;
    let deadline = std::time::Instant::now() + Duration::from_millis(drain_ms);
    loop {
        let running = work
            .runs
            .lock()
            .expect("runs lock")
            .values()
            .any(|r| !r.done.load(Ordering::Relaxed));
        if !running || std::time::Instant::now() >= deadline {
            break;
        }
        async_std::task::sleep(Duration::from_millis(POLL_MS)).await;
    }
    for run in work.runs.lock().expect("runs lock").values() {
        run.cancel.store(true, Ordering::Relaxed);
    }
    let left: Vec<(String, u32)> = active_on(work, &work.cluster.me.name)
        .into_iter()
        .map(|j| (j.id, j.attempt))
        .collect();
    if !left.is_empty() {
        tracing::info!("handing back {} attempts before stopping", left.len());
        release(work, left, format!("{} stopped", work.cluster.me.name)).await;
    }
}
