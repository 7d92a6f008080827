//! The server shell of one instance, in three parts, and the composition
//! root that builds them (`serve`):
//!
//! - `cluster`: the cluster's own plumbing (connections, requests, Raft,
//!   gossip, startup, stop, rejoin, snapshots, damage, integrity, disk
//!   space). It imports neither of the others.
//! - `work`: the coordinator's job and hotfolder loops, the worker, the
//!   script host, external processes. It reaches the cluster only through
//!   its handle (`Shared`, `propose`, `read_setting`).
//! - `web`: HTTP, the API, events, the dashboard, metrics. It reaches the
//!   cluster only through its handle (`Shared`, `respond`, `read`,
//!   `confirm_read`, `own_view`), and the work not at all.
//!
//! What the cluster must tell the others (something was applied; the
//! instance is stopping) it learns here as hooks, so that no import runs
//! back up. Nothing here decides anything: it only wires the parts.

mod cluster;
mod web;
mod work;

use std::sync::Arc;

pub use cluster::ServeOptions;

/// The parsers of what reaches an instance from outside, with the checks
/// that follow them: HTTP bodies and queries (each returns what its handler
/// then proposes or asks for, or the HTTP error), a script worker's frames
/// and the names a hotfolder scan finds. Public so that tests/fuzz.rs can
/// feed them hostile input without a running instance.
pub mod inputs {
    pub use super::web::{
        hotfolder_definition, job_query, script_addition, setting_write, submission, token_request,
        transfer_target, JOBS_PAGE_MAX,
    };
    pub use super::work::sandbox::{read_order_frame, read_worker_frame};
    pub use super::work::scan;
}

/// What `benches/hotfolders.rs` times in process: the look for local
/// writers of files about to be taken, and a job folder's listing.
pub mod measured {
    pub use super::work::job_folder::list as job_folder_listing;
    pub use super::work::writers::{identity, open_for_writing};
}

/// Why `serve` did not run.
#[derive(Debug)]
pub enum ServeError {
    /// The setup is wrong and nothing started (the CLI's exit 2): the HTTP
    /// port is taken, plain HTTP asked for off loopback, or jobs cannot run
    /// as `[jobs] run_as` says.
    Setup(String),
    /// The instance could not start or stopped on an error (exit 1).
    Failed(String),
}

/// The body of a script worker process (`claro` started with
/// `SCRIPT_WORKER_ARG`, by an instance, never by a person): runs scripts
/// for its instance over stdin and stdout. Its exit status.
pub fn script_worker() -> i32 {
    work::sandbox::worker_main()
}

/// The first argument that makes `claro` a script worker.
pub const SCRIPT_WORKER_ARG: &str = work::sandbox::WORKER_ARG;

/// The warning, when this instance's jobs run as root: it runs as root and
/// `[jobs] run_as` does not name another user (or names root). A witness
/// runs no jobs.
fn jobs_as_root(
    account: Option<&work::account::Account>,
    role: crate::config::Role,
) -> Option<String> {
    if role == crate::config::Role::Witness {
        return None;
    }
    match account {
        Some(a) if a.uid == 0 => Some(format!(
            "jobs run as root: [jobs] run_as = {:?} is root, so every job's commands and script workers have the machine's every right (docs/SECURITY.md)",
            a.name
        )),
        Some(_) => None,
        // SAFETY: geteuid has no preconditions.
        None if unsafe { libc::geteuid() } == 0 => Some(JOBS_AS_ROOT_NOTE.to_string()),
        None => None,
    }
}

/// The status note (and warning) of an instance that runs as root with no
/// `[jobs] run_as`.
pub use web::OPEN_LOOPBACK_NOTE;

pub const JOBS_AS_ROOT_NOTE: &str = "jobs run as root: this instance runs as root and so do its jobs' commands and script workers; set [jobs] run_as to a user of their own, or run claro as one (docs/SECURITY.md)";

/// Runs one instance until it is stopped.
pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    async_std::task::block_on(serve_async(opts))
}

async fn serve_async(opts: ServeOptions) -> Result<(), ServeError> {
    let me = opts
        .config
        .server(&opts.name)
        .ok_or_else(|| ServeError::Setup(format!("no server named `{}` in the config", opts.name)))?
        .clone();
    let account =
        work::account::for_jobs(&opts.config).map_err(|e| ServeError::Setup(e.to_string()))?;
    let http = web::listen(&opts.config, &me)
        .await
        .map_err(ServeError::Setup)?;
    let (shared, wake_rx, stop_rx) = cluster::prepare(opts).map_err(ServeError::Failed)?;
    if let Some(note) = jobs_as_root(account.as_ref(), me.role) {
        tracing::warn!("{note}");
        shared.set_setup_note(note);
    }
    let work = Arc::new(work::Work::new(shared.clone(), account));
    let web = Arc::new(web::Web::new(shared.clone()));
    // Before the raft loop starts (`cluster::start`): no apply goes unheard.
    let heard = work.clone();
    shared.on_applied(Box::new(move || heard.applied()));
    let placer = work.clone();
    shared.on_propose(Box::new(move |c| work::with_placements(&placer, c)));
    let running = work.clone();
    shared.on_live(Box::new(move |id, after| work::live(&running, id, after)));
    let heard = web.clone();
    shared.on_applied(Box::new(move || heard.applied()));
    cluster::start(&shared, wake_rx);
    work::start(&work);
    if let Some(listener) = http {
        async_std::task::spawn(web::serve(web, listener));
    }
    let _ = stop_rx.recv().await;
    cluster::stop(&shared, work::drain(work)).await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    #[test]
    fn jobs_as_root_are_noted_unless_another_user_runs_them() {
        let user = |uid| work::account::Account {
            name: "u".into(),
            uid,
            gid: uid,
            groups: vec![uid],
            home: "/".into(),
        };
        let note = jobs_as_root(Some(&user(0)), Role::Server).unwrap();
        assert!(note.starts_with("jobs run as root: [jobs] run_as = \"u\" is root"));
        assert_eq!(jobs_as_root(Some(&user(65534)), Role::Server), None);
        assert_eq!(jobs_as_root(Some(&user(0)), Role::Witness), None);
        assert_eq!(jobs_as_root(None, Role::Witness), None);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let expected = root.then(|| JOBS_AS_ROOT_NOTE.to_string());
        assert_eq!(jobs_as_root(None, Role::Server), expected);
    }
}
