//! The work of one instance: the coordinator's job and hotfolder loops,
//! every instance's worker, the script host and external processes. Built
//! by the composition root (`node::serve`) on the cluster's handle
//! (`node::cluster`: `Shared`, `propose`, `read_setting`), which it reaches
//! only through `Work::cluster`; it imports nothing of the web.
//!
//! - `jobs`: the coordinator's placement, release and purge loop;
//! - `worker`: runs the attempts placed here and reports their ends;
//! - `hotfolder`: the coordinator's scan and publish loop, and the file
//!   work of an assigned attempt (claim, action, staging);
//! - `script_host`: what a running script reaches through its instance;
//! - `shared_files`: a script's file functions, confined to `shared_root`
//!   outside the hotfolders' working areas, safe against links swapped in;
//! - `process`: external processes of jobs, bounded and killable;
//! - `account`: the user they run as (`[jobs] run_as`);
//! - `writers`: which files a local process holds open for writing;
//! - `job_folder`: what a job folder holds (listing, fingerprint);
//! - `tickets`: job tickets on disk (the claimed ticket, the fields a
//!   script set).
//!
//! What it must not do: run an attempt the applied state does not assign to
//! this instance, or write the state other than through committed commands.

pub(crate) mod account;
mod hotfolder;
#[cfg(test)]
mod hotfolder_sim;
pub(crate) mod job_folder;
mod jobs;
mod process;
pub(crate) mod sandbox;
mod script_host;
mod shared_files;
mod tickets;
mod work_area;
mod worker;
pub(crate) mod writers;

// For `node::inputs`.
pub use hotfolder::scan;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::channel::{Receiver, Sender};

use super::cluster::Shared;

/// Ends waiting to be reported, at most (runs wait to hand theirs over).
const REPORT_QUEUE_COUNT_MAX: usize = 4096;

/// What the job loops share: their wake-ups and this instance's runs.
pub(crate) struct Work {
    /// The cluster this instance's work runs on: proposals, reads and the
    /// applied state, through its handle only.
    cluster: Arc<Shared>,
    assign_wake: (Sender<()>, Receiver<()>),
    worker_wake: (Sender<()>, Receiver<()>),
    /// When this instance became coordinator (0: it is not).
    leader_since_ms: AtomicU64,
    /// Per server, when this coordinator last placed a job on it (a
    /// placement sequence number): ties go to the least recent.
    last_placed: Mutex<std::collections::HashMap<String, u64>>,
    /// Attempts running here: job id -> the run.
    runs: Mutex<std::collections::HashMap<String, Arc<worker::Run>>>,
    /// The log and progress of each attempt running here, for those who
    /// follow it (`live`): job id -> (attempt, its capture).
    live: Mutex<std::collections::HashMap<String, (u32, Arc<process::Capture>)>>,
    /// Takes new attempts (false while draining for a stop).
    accepting: AtomicBool,
    /// Ends of attempts waiting to be reported (`worker::report_loop`).
    reports: (Sender<worker::Report>, Receiver<worker::Report>),
    /// Applied batches so far, for blocking waiters (`wait_applied`).
    applied_count: (Mutex<u64>, std::sync::Condvar),
    /// The worker processes scripts run in (`sandbox`).
    scripts: sandbox::Pool,
    /// The user every process of a job runs as (`[jobs] run_as`); `None`:
    /// the instance's own.
    account: Option<account::Account>,
}

impl Work {
    pub fn new(cluster: Arc<Shared>, account: Option<account::Account>) -> Work {
        // As many idle script workers as slots; a witness runs no jobs.
        let idle_max = match cluster.me.role {
            crate::config::Role::Server => cluster.me.slots as usize,
            crate::config::Role::Witness => 0,
        };
        let limits = sandbox::Limits::of(&cluster.cfg.jobs);
        let scripts = sandbox::Pool::new(limits, idle_max, account.clone());
        Work {
            scripts,
            account,
            cluster,
            assign_wake: async_std::channel::bounded(1),
            worker_wake: async_std::channel::bounded(1),
            leader_since_ms: AtomicU64::new(0),
            last_placed: Mutex::default(),
            runs: Mutex::default(),
            live: Mutex::default(),
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

/// The coordinator's hook on each write it proposes: a submission is
/// proposed with the placements of its jobs when slots are free, an end
/// report with placements of queued jobs in the slots it frees
/// (`jobs::with_placements`).
pub(crate) fn with_placements(
    work: &Work,
    command: &crate::state::Command,
) -> Option<crate::state::Command> {
    jobs::with_placements(work, command)
}

/// The log from byte `after_bytes` and the progress of job `id`'s attempt
/// running here, if one is.
pub(crate) fn live(work: &Work, id: &str, after_bytes: u64) -> Option<crate::proto::LiveView> {
    let (attempt, log) = work.live.lock().expect("live lock").get(id).cloned()?;
    let (text, next_bytes) = log.since(after_bytes, crate::proto::LIVE_LOG_BYTES_MAX);
    Some(crate::proto::LiveView {
        instance: work.cluster.me.name.clone(),
        attempt,
        progress: log.progress(),
        log: text,
        next_bytes,
    })
}

/// Starts the work's loops: placement (coordinator), hotfolders
/// (coordinator), the worker and its reports (every instance).
pub(crate) fn start(work: &Arc<Work>) {
    let pool = work.clone();
    async_std::task::spawn_blocking(move || pool.scripts.prestart());
    async_std::task::spawn(jobs::assign_loop(work.clone()));
    async_std::task::spawn(hotfolder::hotfolder_loop(work.clone()));
    async_std::task::spawn(worker::worker_loop(work.clone()));
    async_std::task::spawn(worker::report_loop(work.clone()));
}

/// A graceful stop's first step: no new attempts; running ones get
/// `drain_ms`; what is left is handed back (`worker::drain`).
pub(crate) async fn drain(work: Arc<Work>) {
    worker::drain(&work).await;
}
