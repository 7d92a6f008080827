//! Hotfolders on the work storage: the coordinator's loop (scan `in/`,
//! submit each stable file once, publish the files of final jobs) and the
//! assigned instance's side (claim the file, run the action into a staging
//! folder). The decisions (stability, patterns, templates, free names) are
//! in `crate::work::hotfolder`; this module does the file system work.
//!
//! A file's way: `in/REL` → (claim: one rename) `.claro/work/ID/NAME` →
//! the action writes into `.claro/work/ID/.claro-out-ATTEMPT/` (the flat
//! working folder; `work_area` has the nested one of earlier versions,
//! still read) → the attempt's end
//! is committed → (publish, by the coordinator, recorded by a committed
//! `JobsPublished`) outputs to `out/DIR(REL)/`, the original to
//! `done/REL` (or deleted), or to `error/REL` with `REL.error.txt` after
//! the last failed attempt. Publishing is idempotent: a publisher that
//! dies midway leaves what is left where the next one finds it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::account::Account;
use super::process::Capture;
use super::script_host::{run_job_script, FileContext};
use super::work_area::{WorkArea, CLAIMED_AT, COMPANIONS_TAKEN, TICKET_MADE, TICKET_STAGED};
use super::Work;
use crate::clock::now_ms;
use crate::node::cluster::Phase;
use crate::node::cluster::{confirm_read, propose};
use crate::proto::Response;
use crate::state::{hotfolders as db, Command, JOB_BATCH_COUNT_MAX};
use crate::work::hotfolder::{
    expand, free_name, next_scan_ms, units, FileValues, Hotfolder, Patterns, Seen, Stability, Unit,
    OUTPUTS_MAX, RESERVED_PREFIX, SCAN_FILES_MAX, WORK_DIR,
};
use crate::work::jobs::{FileInput, Job, JobKind, JobSpec, JobState, Outcome};

/// Final jobs published per round, at most.
const PUBLISH_BATCH_MAX: u32 = 1024;
/// Bytes of jobs in one submission entry, about (one job more may pass it).
const SUBMIT_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Longest wait between two publish rounds (they also follow each apply).
const PUBLISH_POLL_MS: u64 = 50;

/// The folders of one hotfolder.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(shared_root: &Path, name: &str) -> Layout {
        Layout {
            root: shared_root.join(name),
        }
    }
    pub fn dir(&self, which: &str) -> PathBuf {
        self.root.join(which)
    }
    pub(super) fn work(&self, id: &str) -> PathBuf {
        self.root.join(WORK_DIR).join("work").join(id)
    }
    /// Job `id`'s working folder in the layout it has, or, when not made
    /// yet, flat if `flat` (the cluster's level allows it).
    pub(super) fn area(&self, id: &str, flat: bool) -> WorkArea {
        WorkArea::open(self.work(id), flat)
    }
    /// Makes the folders that are missing.
    pub fn create(&self) -> std::io::Result<()> {
        for d in ["in", "out", "done", "error", WORK_DIR] {
            std::fs::create_dir_all(self.dir(d))?;
        }
        Ok(())
    }
}

fn base_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

// ---------------------------------------------------------------------------
// The coordinator's loop

/// Scans and publishes while this instance coordinates.
pub async fn hotfolder_loop(work: Arc<Work>) {
    let mut scanner = Scanner::default();
    let mut publisher = Publisher::default();
    let mut next_scan = 0;
    loop {
        async_std::task::sleep(Duration::from_millis(PUBLISH_POLL_MS)).await;
        if work.cluster.phase() == Phase::Stopping {
            return;
        }
        if !super::jobs::may_coordinate(&work) {
            scanner = Scanner::default();
            publisher = Publisher::default();
            continue;
        }
        publish_round(&work, &mut publisher).await;
        if now_ms() >= next_scan {
            seed(&work).await;
            let started_ms = now_ms();
            let due_ms = scan_round(&work, &mut scanner).await;
            let (now, poll_ms) = (now_ms(), work.cluster.cfg.timing.hotfolder_poll_ms);
            next_scan = next_scan_ms(now, poll_ms, due_ms, now - started_ms);
        }
    }
}

/// Creates the hotfolders of `ClaroServers.conf` in a cluster that has not
/// had them yet (once per cluster: see `state::hotfolders::seed`).
async fn seed(work: &Work) {
    if read(work, db::seeded).unwrap_or(true) {
        return;
    }
    let command = Command::HotfoldersSeed {
        defs: work.cluster.cfg.hotfolders.clone(),
    };
    if let Response::Error { message } | Response::Unavailable { message } =
        propose(&work.cluster, command, None, false).await
    {
        tracing::warn!("creating the hotfolders of the config failed: {message}");
    }
}

/// The coordinator's memory between scans: how long each file has been
/// unchanged, per hotfolder. A new coordinator starts afresh (it waits the
/// stability time again), which delays files and never takes one early.
#[derive(Default)]
struct Scanner {
    stability: HashMap<String, Stability>,
}

/// Scans every hotfolder once, submits the stable files of those running
/// and records what waits in each `in/` without a job; returns when the
/// next waiting file becomes stable.
async fn scan_round(work: &Work, scanner: &mut Scanner) -> Option<u64> {
    let defs = match read(work, db::list) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("reading the hotfolders failed: {e}");
            return None;
        }
    };
    // A hotfolder whose scan fails keeps the count recorded before.
    let mut waiting: HashMap<String, u64> = read(work, db::files_waiting)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut due_ms: Option<u64> = None;
    scanner
        .stability
        .retain(|name, _| defs.iter().any(|d| d.name == *name && !d.paused));
    for def in &defs {
        let Some(seen) = scan_logged(work, def).await else {
            continue;
        };
        let now = now_ms();
        let stability = scanner.stability.entry(def.name.clone()).or_default();
        let stable = if def.paused {
            Vec::new()
        } else {
            stability.observe(now, def.stable_ms, &seen)
        };
        let stable: HashSet<&str> = stable.iter().map(|s| s.path.as_str()).collect();
        let all = units(def.trigger, &seen, &stable);
        if let Ok(owned) = read(work, |c| db::owned_inputs(c, &def.name)) {
            let unowned = all.iter().filter(|(u, _)| !owned.contains(&u.main.path));
            waiting.insert(def.name.clone(), unowned.count() as u64);
        }
        if def.paused {
            continue;
        }
        let ready = all.into_iter().filter_map(|(u, ready)| ready.then_some(u));
        let ready = not_owned(work, def, ready.collect());
        let held = held_by_writers(work, def, &ready).await;
        stability.restart(&held, now);
        if let Some(due) = stability.due_ms(now, def.stable_ms) {
            due_ms = Some(due_ms.map_or(due, |d| d.min(due)));
        }
        let ready: Vec<Unit> = ready
            .into_iter()
            .filter(|u| !held.contains(&u.main.path))
            .collect();
        if !ready.is_empty() {
            submit_ready(work, def, ready).await;
        }
    }
    waiting.retain(|name, _| defs.iter().any(|d| d.name == *name));
    record_files_waiting(work, waiting).await;
    due_ms
}

/// `scan` on a blocking thread; a failure is logged (throttled).
async fn scan_logged(work: &Work, def: &Hotfolder) -> Option<Vec<Seen>> {
    let root = work.cluster.cfg.shared_root.clone();
    let d = def.clone();
    match async_std::task::spawn_blocking(move || scan(&root, &d)).await {
        Ok(seen) => Some(seen),
        Err(e) => {
            crate::throttled_warn!(
                "hotfolder-scan",
                &def.name,
                "scanning hotfolder {}: {e}",
                def.name
            );
            None
        }
    }
}

/// Commits the files waiting per hotfolder when they differ from what the
/// cluster holds (at most one entry per scan, none while nothing changes),
/// so that every instance shows the same `waiting`.
async fn record_files_waiting(work: &Work, waiting: HashMap<String, u64>) {
    let mut counts: Vec<(String, u64)> = waiting.into_iter().filter(|(_, n)| *n > 0).collect();
    counts.sort();
    if read(work, db::files_waiting).is_ok_and(|held| held == counts) {
        return;
    }
    let command = Command::HotfolderFilesWaiting { counts };
    if let Response::Error { message } | Response::Unavailable { message } =
        propose(&work.cluster, command, None, false).await
    {
        crate::throttled_warn!(
            "hotfolder-waiting",
            "all",
            "recording the files waiting failed: {message}"
        );
    }
}

/// Lists `in/` (subfolders too), skipping what the patterns ignore; makes
/// the hotfolder's folders first.
pub fn scan(shared_root: &Path, def: &Hotfolder) -> Result<Vec<Seen>, String> {
    let layout = Layout::new(shared_root, &def.name);
    layout
        .create()
        .map_err(|e| format!("creating its folders in {}: {e}", layout.root.display()))?;
    let patterns = Patterns::new(&def.include, &def.ignore)?;
    let mut out = Vec::new();
    let mut dirs = vec![(layout.dir("in"), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A subfolder removed during the scan; `in/` itself is made again next round.
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            if out.len() >= SCAN_FILES_MAX {
                return Ok(out);
            }
            let Some(name) = utf8_name(def, &rel, &entry.file_name()) else {
                continue;
            };
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && def.folders && rel.is_empty() {
                if patterns.enters(&name) {
                    folder_entries(def, &entry.path(), &path, &mut out);
                }
                continue;
            }
            if meta.is_dir() {
                if patterns.enters(&name) {
                    dirs.push((entry.path(), path));
                }
                continue;
            }
            if !meta.is_file()
                || !patterns.takes(&name)
                || crate::work::jobs::check_relative(&path).is_err()
            {
                continue;
            }
            out.push(Seen {
                path,
                bytes: meta.len(),
                modified_ms: crate::work::jobs::modified_ms(&meta),
                inode: std::os::unix::fs::MetadataExt::ino(&meta),
                folder: false,
            });
        }
    }
    Ok(out)
}

/// A job folder of the scan (`in/REL`), and its own ticket as an entry of
/// its own (`REL/ticket.json`), which the trigger looks for. A folder past
/// its limits is logged and not taken.
fn folder_entries(def: &Hotfolder, dir: &Path, rel: &str, out: &mut Vec<Seen>) {
    if crate::work::jobs::check_relative(rel).is_err() {
        return;
    }
    let listing = match super::job_folder::list(dir) {
        Ok(l) => l,
        Err(e) => {
            crate::throttled_warn!(
                "hotfolder-folder",
                &def.name,
                "hotfolder {}: the job folder in/{rel} is not taken: {e}",
                def.name
            );
            return;
        }
    };
    for inner in crate::work::ticket::FOLDER_TICKETS {
        if let Ok(meta) = std::fs::symlink_metadata(dir.join(inner)) {
            out.push(Seen {
                path: format!("{rel}/{inner}"),
                bytes: meta.len(),
                modified_ms: crate::work::jobs::modified_ms(&meta),
                inode: std::os::unix::fs::MetadataExt::ino(&meta),
                folder: false,
            });
        }
    }
    out.push(Seen {
        path: rel.to_string(),
        bytes: listing.bytes,
        modified_ms: listing.modified_ms,
        inode: listing.print,
        folder: true,
    });
}

/// The name of an entry of `in/REL` as text, or `None` (logged) when it is
/// not UTF-8. A job names its file as text: such a name would become
/// another file's, which the claim never finds, and the file would be taken
/// again after every failed job.
fn utf8_name(def: &Hotfolder, rel: &str, name: &std::ffi::OsStr) -> Option<String> {
    if let Some(text) = name.to_str() {
        return Some(text.to_owned());
    }
    let lossy = Path::new(rel).join(name).to_string_lossy().into_owned();
    crate::throttled_warn!(
        "hotfolder-name",
        &def.name,
        "hotfolder {}: in/{lossy} is not taken: its name is not UTF-8; rename it",
        def.name
    );
    None
}

/// The ready units no job owns yet (a ready file stays ready until it
/// goes; its job owns it meanwhile).
fn not_owned(work: &Work, def: &Hotfolder, ready: Vec<Unit>) -> Vec<Unit> {
    if ready.is_empty() {
        return ready;
    }
    match read(work, |c| db::owned_inputs(c, &def.name)) {
        Ok(owned) => ready
            .into_iter()
            .filter(|u| !owned.contains(&u.main.path))
            .collect(),
        Err(e) => {
            tracing::error!("reading the jobs of hotfolder {} failed: {e}", def.name);
            Vec::new()
        }
    }
}

/// Of the stable files, those a process on this machine still holds open
/// for writing (`writers`): they wait `stable_ms` again.
async fn held_by_writers(work: &Work, def: &Hotfolder, ready: &[Unit]) -> Vec<String> {
    if ready.is_empty() {
        return Vec::new();
    }
    let in_dir = Layout::new(&work.cluster.cfg.shared_root, &def.name).dir("in");
    let units: Vec<(String, Vec<String>)> = ready
        .iter()
        .map(|u| (u.main.path.clone(), u.ticket.iter().cloned().collect()))
        .collect();
    let name = def.name.clone();
    async_std::task::spawn_blocking(move || {
        let ids: Vec<Vec<(u64, u64)>> = units
            .iter()
            .map(|(main, tickets)| {
                let main_path = in_dir.join(main);
                let mut ids = if main_path.is_dir() {
                    super::job_folder::identities(&main_path)
                } else {
                    super::writers::identity(&main_path).into_iter().collect()
                };
                ids.extend(tickets.iter().filter_map(|t| super::writers::identity(&in_dir.join(t))));
                ids
            })
            .collect();
        let wanted = ids.iter().flatten().copied().collect();
        let open = super::writers::open_for_writing(&wanted);
        let mut held = Vec::new();
        for ((path, _), ids) in units.into_iter().zip(ids) {
            if let Some(w) = ids.iter().find_map(|id| open.get(id)) {
                tracing::debug!(hotfolder = %name, pid = w.pid, command = %w.command, "in/{path} is stable but still open for writing: it waits until its writer closes it");
                held.push(path);
            }
        }
        held
    })
    .await
}

async fn submit_ready(work: &Work, def: &Hotfolder, fresh: Vec<Unit>) {
    for batch in batches(def, &fresh) {
        let count = batch.len();
        let command = Command::JobsSubmit {
            jobs: batch,
            at_ms: now_ms(),
        };
        match propose(&work.cluster, command, None, false).await {
            Response::Proposed { .. } => {
                tracing::debug!(hotfolder = %def.name, count, "files submitted")
            }
            Response::Error { message } | Response::Unavailable { message } => {
                crate::throttled_warn!(
                    "hotfolder-submit",
                    &def.name,
                    "submitting files of {}: {message}",
                    def.name
                );
                return;
            }
            _ => return,
        }
    }
}

/// The jobs of `files` in entries of at most `JOB_BATCH_COUNT_MAX` jobs
/// and about `SUBMIT_BATCH_BYTES_MAX` bytes: each job carries the action,
/// and a script can be large. A file whose job breaks a limit is logged
/// and left in `in/`.
fn batches(def: &Hotfolder, files: &[Unit]) -> Vec<Vec<(String, JobSpec)>> {
    let mut out: Vec<Vec<(String, JobSpec)>> = Vec::new();
    let mut bytes = usize::MAX;
    for u in files {
        let s = &u.main;
        let spec = file_job(def, u);
        if let Err(e) = spec.validate() {
            crate::throttled_warn!(
                "hotfolder-file",
                &def.name,
                "hotfolder {}: in/{} is not taken: {e}",
                def.name,
                s.path
            );
            continue;
        }
        let size =
            spec.script.len() + spec.args.iter().map(String::len).sum::<usize>() + s.path.len();
        let full = out.last().is_none_or(|b| b.len() >= JOB_BATCH_COUNT_MAX);
        if full || bytes.saturating_add(size) > SUBMIT_BATCH_BYTES_MAX {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        let id = crate::work::jobs::new_job_id(now_ms(), rand::random());
        out.last_mut().expect("a batch").push((id, spec));
    }
    out
}

/// The job of one stable file, with the hotfolder's action as it is now.
pub fn file_job(def: &Hotfolder, unit: &Unit) -> JobSpec {
    let seen = &unit.main;
    let mut spec = JobSpec::script("");
    spec.kind = JobKind::Hotfolder;
    match &def.action {
        crate::work::hotfolder::Action::Command { argv } => spec.args = argv.clone(),
        crate::work::hotfolder::Action::Script { code } => spec.script = code.clone(),
    }
    spec.priority = def.priority;
    spec.max_attempts = def.max_attempts;
    spec.timeout_ms = def.timeout_ms;
    spec.file = Some(FileInput {
        hotfolder: def.name.clone(),
        input: seen.path.clone(),
        bytes: seen.bytes,
        modified_ms: seen.modified_ms,
        inode: seen.inode,
        delete_on_success: def.on_success == crate::work::hotfolder::OnSuccess::Delete,
        folder: seen.folder,
        ticket: unit.ticket.clone(),
        marker: unit.marker.clone(),
    });
    spec
}

fn read<T>(
    work: &Work,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T, String> {
    let guard = work.cluster.core();
    let core = guard.as_ref().ok_or("this instance holds no database")?;
    f(core.state().conn()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Publishing

/// The publisher's memory: where its paging stands, and when to try again
/// the jobs whose publication failed (backing off, so that a share that
/// refuses writes is not hammered every round).
#[derive(Default)]
struct Publisher {
    cursor: Option<(u64, String)>,
    next_sweep_ms: u64,
    /// job id -> (next try at, in ms; failures so far)
    failing: HashMap<String, (u64, u32)>,
}

/// How often the working areas are swept of what stale attempts left.
const SWEEP_MS: u64 = 10_000;
/// Job folders one sweep looks at, per hotfolder.
const SWEEP_FOLDERS_MAX: usize = 10_000;

/// Backoff after a failed publication: doubling from 100 ms to 30 s.
const PUBLISH_RETRY_MS_MIN: u64 = 100;
const PUBLISH_RETRY_MS_MAX: u64 = 30_000;
/// Failing jobs remembered; beyond it the memory starts again (the jobs
/// are then tried at once, which is safe).
const PUBLISH_FAILING_MAX: usize = 100_000;

impl Publisher {
    /// The next page of final unpublished jobs, less those backing off.
    fn page(&mut self, work: &Work) -> Result<Vec<Job>, String> {
        let jobs = read(work, |c| {
            db::unpublished(c, self.cursor.as_ref(), PUBLISH_BATCH_MAX)
        })?;
        self.cursor = match jobs.last() {
            Some(j) if jobs.len() == PUBLISH_BATCH_MAX as usize => {
                Some((j.finished_ms.unwrap_or(0), j.id.clone()))
            }
            _ => None,
        };
        let now = now_ms();
        Ok(jobs
            .into_iter()
            .filter(|j| self.failing.get(&j.id).is_none_or(|&(at, _)| at <= now))
            .collect())
    }

    fn failed(&mut self, id: &str) {
        if self.failing.len() >= PUBLISH_FAILING_MAX {
            self.failing.clear();
        }
        let entry = self.failing.entry(id.to_string()).or_insert((0, 0));
        let backoff_ms = PUBLISH_RETRY_MS_MIN << entry.1.min(16);
        *entry = (now_ms() + backoff_ms.min(PUBLISH_RETRY_MS_MAX), entry.1 + 1);
    }
}

/// Publishes the files of final jobs and records it.
async fn publish_round(work: &Work, publisher: &mut Publisher) {
    if now_ms() >= publisher.next_sweep_ms {
        publisher.next_sweep_ms = now_ms() + SWEEP_MS;
        sweep_round(work).await;
    }
    let jobs = match publisher.page(work) {
        Ok(j) => j,
        Err(e) => return tracing::error!("reading unpublished hotfolder jobs failed: {e}"),
    };
    if jobs.is_empty() {
        return;
    }
    let root = work.cluster.cfg.shared_root.clone();
    let results: Vec<(String, Result<(), String>)> = async_std::task::spawn_blocking(move || {
        jobs.iter()
            .map(|job| (job.id.clone(), publish(&root, job)))
            .collect()
    })
    .await;
    let mut done = Vec::new();
    for (id, result) in results {
        match result {
            Ok(()) => {
                publisher.failing.remove(&id);
                done.push(id);
            }
            Err(e) => {
                crate::throttled_warn!(
                    "hotfolder-publish",
                    &id,
                    "publishing the files of job {id}: {e}"
                );
                publisher.failed(&id);
            }
        }
    }
    if done.is_empty() {
        return;
    }
    let command = Command::JobsPublished { ids: done };
    if let Response::Error { message } | Response::Unavailable { message } =
        propose(&work.cluster, command, None, false).await
    {
        // Published again next round: every step finds what is left.
        tracing::warn!("recording published files failed: {message}");
    }
}

/// Sweeps the working area of every hotfolder: see `sweep`. Only on a
/// replica confirmed current by a read index taken after the folders were
/// listed: every job whose folder was listed is then known here, so a
/// coordinator that was frozen while the others went on never cleans up or
/// publishes on the word of its lagging replica.
async fn sweep_round(work: &Work) {
    let Ok(defs) = read(work, db::list) else {
        return;
    };
    for def in defs {
        let root = work.cluster.cfg.shared_root.clone();
        let name = def.name.clone();
        let ids = async_std::task::spawn_blocking(move || work_ids(&root, &name)).await;
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = confirm_read(&work.cluster).await {
            return tracing::info!("working areas not swept this round: {e}");
        }
        let mut settled = Vec::new();
        for id in ids {
            match read(work, |c| db::settled(c, &id)) {
                Ok(Some(job)) => settled.push((id, job)),
                Ok(None) => {}
                Err(e) => return tracing::error!("reading job {id} failed: {e}"),
            }
        }
        let root = work.cluster.cfg.shared_root.clone();
        async_std::task::spawn_blocking(move || {
            for (id, job) in settled {
                if let Err(e) = sweep(&root, &def.name, &id, job.as_ref()) {
                    tracing::warn!("sweeping the working folder of job {id}: {e}");
                }
            }
        })
        .await;
    }
}

/// The job ids that have a folder in `name`'s working area.
pub(super) fn work_ids(shared_root: &Path, name: &str) -> Vec<String> {
    Layout::new(shared_root, name).work_ids()
}

impl Layout {
    /// The job ids that have a folder in this hotfolder's working area, at
    /// most `SWEEP_FOLDERS_MAX`.
    fn work_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join(WORK_DIR).join("work")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .take(SWEEP_FOLDERS_MAX)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| crate::work::jobs::check_job_id(id).is_ok())
            .collect()
    }
}

/// A job's working folder that outlived its publication: an attempt
/// released while its instance was cut off goes on, and may claim the file
/// again (from `error/`) or write outputs after the job was published.
/// Publishing again puts the original back where the job's end put it and
/// removes the rest; for a job no longer known (purged), an original found
/// there goes to `error/` saying so. Never called for a job whose
/// attempts may still run (not yet published).
pub(super) fn sweep(
    shared_root: &Path,
    name: &str,
    id: &str,
    job: Option<&Job>,
) -> Result<(), String> {
    if let Some(job) = job {
        return publish(shared_root, job);
    }
    let layout = Layout::new(shared_root, name);
    let area = layout.area(id, true);
    for entry in std::fs::read_dir(area.claimed_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = entry.file_name().to_string_lossy().into_owned();
        if !area.is_input(&file) {
            continue;
        }
        let to = layout.dir("error");
        let reason = format!("found in the working folder of job {id}, which is no longer known\n");
        let free = free_name(&file, &mut |n| to.join(n).exists()).ok_or("no free name")?;
        write_atomic(&to.join(format!("{free}.error.txt")), reason.as_bytes())?;
        move_no_replace(&entry.path(), &to, &free, &mut Steps::unlimited())?;
    }
    match std::fs::remove_dir_all(layout.work(id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Moves a final job's files where they belong. Safe to run again after a
/// crash at any point: each step moves what is still where it was.
pub fn publish(shared_root: &Path, job: &Job) -> Result<(), String> {
    publish_steps(shared_root, job, &mut Steps::unlimited())
}

/// A budget of file system changes: the crash-at-every-step test stops a
/// publication after each number of them and then publishes again.
pub struct Steps {
    left: u64,
}

impl Steps {
    pub fn unlimited() -> Steps {
        Steps { left: u64::MAX }
    }
    #[cfg(test)]
    pub fn crash_after(count: u64) -> Steps {
        Steps { left: count }
    }
    fn take(&mut self) -> Result<(), String> {
        if self.left == 0 {
            return Err("crashed (test)".into());
        }
        self.left -= 1;
        Ok(())
    }
}

pub fn publish_steps(shared_root: &Path, job: &Job, steps: &mut Steps) -> Result<(), String> {
    let file = job.spec.file.as_ref().ok_or("not a hotfolder job")?;
    let layout = Layout::new(shared_root, &file.hotfolder);
    // In `in/` still when it was never claimed; another file dropped
    // later under the same name is not this job's.
    let area = layout.area(&job.id, true);
    let claimed = area.claimed(base_name(&file.input));
    let waiting = layout.dir("in").join(&file.input);
    let original = if claimed.symlink_metadata().is_ok() {
        Some(claimed)
    } else {
        matches!(same_input(&waiting, file), Some(Ok(()))).then_some(waiting)
    };
    if job.state == JobState::Succeeded {
        publish_success((&layout, &area), job, file, original, steps)?;
    } else if let Some(original) = original {
        // Never claimed (cancelled while queued, given up): its ticket and
        // marker are still in `in/` and go with it.
        if original.starts_with(layout.dir("in")) {
            super::tickets::claim(&area, (&layout.dir("in"), false), file)?;
        }
        publish_failure((&layout, &area), job, file, &original, steps)?;
    }
    steps.take()?;
    match std::fs::remove_dir_all(layout.work(&job.id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing its working folder: {e}"))
        }
        _ => Ok(()),
    }
}

/// Outputs into `out/`, then the original to `done/` (or deleted).
fn publish_success(
    (layout, area): (&Layout, &WorkArea),
    job: &Job,
    file: &FileInput,
    original: Option<PathBuf>,
    steps: &mut Steps,
) -> Result<(), String> {
    let staging = area.staging(job.attempt);
    let out_dir = layout.dir("out").join(parent_of(&file.input));
    if staging.is_dir() {
        stage_ticket(area, job, file, &staging, steps)?;
        publish_outputs(&staging, &out_dir, &ticket_name(file), steps)?;
    }
    let Some(original) = original.filter(|p| p.starts_with(&area.root)) else {
        return Ok(());
    };
    let to = layout.dir("done").join(parent_of(&file.input));
    // The ticket before the original: the original's place says whether
    // this is still to do, so a crash between the two loses nothing.
    if let Some(ticket) = super::tickets::claimed_sidecar(area, file) {
        if file.delete_on_success {
            steps.take()?;
            std::fs::remove_file(&ticket).map_err(|e| format!("deleting the ticket: {e}"))?;
        } else {
            // Under its name in `in/` (the working folder may prefix it).
            let name = base_name(file.ticket.as_deref().unwrap_or_default());
            move_no_replace(&ticket, &to, name, steps)?;
        }
    }
    if file.delete_on_success {
        steps.take()?;
        let gone = if file.folder {
            std::fs::remove_dir_all(&original)
        } else {
            std::fs::remove_file(&original)
        };
        return gone.map_err(|e| format!("deleting the original: {e}"));
    }
    move_no_replace(&original, &to, base_name(&file.input), steps)
}

/// The original to `error/`, with `NAME.error.txt` beside it.
fn publish_failure(
    (layout, area): (&Layout, &WorkArea),
    job: &Job,
    file: &FileInput,
    original: &Path,
    steps: &mut Steps,
) -> Result<(), String> {
    let to = layout.dir("error").join(parent_of(&file.input));
    std::fs::create_dir_all(&to).map_err(|e| e.to_string())?;
    // A publisher that died after linking the original into error/ chose
    // its name already.
    let linked = linked_in(original, &to)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let name = match linked {
        Some(n) => n,
        None => free_name(base_name(&file.input), &mut |n| to.join(n).exists())
            .ok_or("no free name in error/")?,
    };
    // The reason first: a crash between the two leaves the original in the
    // working area, and the next publisher writes the same file again.
    let reason = format!(
        "{}\njob {} ({}, attempt {}/{})\n\nlog:\n{}",
        job.error.as_deref().unwrap_or(job.state.as_str()),
        job.id,
        job.state.as_str(),
        job.attempt,
        job.spec.max_attempts,
        job.log
    );
    steps.take()?;
    write_atomic(&to.join(format!("{name}.error.txt")), reason.as_bytes())?;
    let fields = super::tickets::read_fields(&area.fields(job.attempt));
    let ticket = result_ticket(job, file, &[], &fields);
    write_atomic(&to.join(format!("{name}.result.json")), &ticket)?;
    // The job's own ticket beside the original, under the original's name.
    if let Some(t) = super::tickets::claimed_sidecar(area, file) {
        let suffix = file.ticket.as_deref().unwrap_or_default();
        let suffix = &suffix[file.input.len().min(suffix.len())..];
        move_no_replace(&t, &to, &format!("{name}{suffix}"), steps)?;
    }
    move_no_replace(original, &to, &name, steps)
}

/// Files a result ticket lists, at most (an action may write many).
const TICKET_OUTPUTS_MAX: usize = 10_000;

/// A published job's result ticket (`NAME.result.json`, beside its
/// outputs in `out/` or beside the original in `error/`): what a
/// downstream system reads instead of parsing the job list.
fn result_ticket(
    job: &Job,
    file: &FileInput,
    outputs: &[String],
    fields: &crate::work::ticket::Fields,
) -> Vec<u8> {
    let at = |ms: Option<u64>| ms.map(crate::contract::rfc3339);
    let ticket = serde_json::json!({
        "job": job.id,
        "hotfolder": file.hotfolder,
        "input": file.input,
        "outcome": job.state.as_str(),
        "attempts": job.attempt,
        "instance": job.instance,
        "started_at": at(job.started_ms),
        "finished_at": at(job.finished_ms),
        "outputs": outputs,
        "error": job.error,
        "fields": fields,
    });
    let mut bytes = serde_json::to_vec_pretty(&ticket).expect("a ticket encodes");
    bytes.push(b'\n');
    bytes
}

/// Puts the result ticket among the staged outputs, once (a marker in the
/// working folder says it is there or already published with them), so
/// that it is published with them, under a free name, crash-safely.
///
/// The ticket is one file per job: made once in the working folder (a
/// hard link, which never replaces) and linked into the staging folder. A
/// second publisher that passed the marker check before the first wrote it
/// (a frozen coordinator woke beside its successor) links that same file,
/// which publication then finds already in `out/` (`link_free`), where a
/// ticket of its own making was published again as `NAME (1).result.json`.
fn stage_ticket(
    area: &WorkArea,
    job: &Job,
    file: &FileInput,
    staging: &Path,
    steps: &mut Steps,
) -> Result<(), String> {
    let marker = area.marker(TICKET_STAGED);
    if marker.exists() {
        return Ok(());
    }
    let name = ticket_name(file);
    let made = area.marker(TICKET_MADE);
    if !made.exists() {
        // Not the ticket itself (a crash before the marker leaves it staged).
        let outputs: Vec<String> = staged_files(staging)
            .into_iter()
            .filter(|f| *f != name && !f.ends_with(".claro-tmp"))
            .collect();
        let fields = super::tickets::read_fields(&area.fields(job.attempt));
        steps.take()?;
        make_once(&made, &result_ticket(job, file, &outputs, &fields))?;
    }
    let staged = staging.join(&name);
    if !same_file(&made, &staged) {
        steps.take()?;
        // An output of the action under the ticket's name gives way to it.
        let _ = std::fs::remove_file(&staged);
        match std::fs::hard_link(&made, &staged) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // Gone under us: another publisher finished this job and
            // removed its working folder (a coordinator that woke beside
            // its successor). The next round finds it published.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let gone = if made.exists() {
                    staging
                } else {
                    made.as_path()
                };
                return Err(format!(
                    "{} is gone (another publisher?): {e}",
                    gone.display()
                ));
            }
            // No hard links on this share: a copy of it, whole.
            Err(_) => {
                let bytes = std::fs::read(&made).map_err(|e| format!("{}: {e}", made.display()))?;
                write_atomic(&staged, &bytes)?;
            }
            Ok(()) => {}
        }
    }
    write_atomic(&marker, b"")
}

/// Writes `bytes` as `path` unless `path` exists: written whole under a
/// name of this writer's own, then hard-linked, which fails rather than
/// replace what another writer made meanwhile (that one is kept).
///
/// A share without hard links (some SMB and FUSE mounts) gets a rename
/// when `path` is still missing: two writers racing there may then both
/// write, each a whole file.
fn make_once(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("{:016x}.claro-tmp", rand::random::<u64>()));
    let written = std::fs::write(&tmp, bytes);
    let done = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) if !path.exists() => std::fs::rename(&tmp, path),
        other => other,
    });
    let _ = std::fs::remove_file(&tmp);
    done.map_err(|e| format!("{}: {e}", path.display()))
}

/// The files under `staging`, relative, sorted; at most `TICKET_OUTPUTS_MAX`.
fn staged_files(staging: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![staging.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else if let Ok(rel) = path.strip_prefix(staging) {
                out.push(rel.to_string_lossy().into_owned());
            }
            if out.len() == TICKET_OUTPUTS_MAX {
                out.sort();
                return out;
            }
        }
    }
    out.sort();
    out
}

/// The result ticket's name beside the outputs.
fn ticket_name(file: &FileInput) -> String {
    format!("{}.result.json", base_name(&file.input))
}

/// The staged outputs into `out_dir`, the result ticket (`ticket`, at the
/// staging folder's top) last, so that whoever watches for tickets finds
/// the outputs there. The ticket goes by `link_free`, which knows it once
/// published by its file: it has a second name in the working folder
/// (`TICKET_MADE`), so `move_no_replace` would list `out_dir` to look
/// for a third, for every job.
fn publish_outputs(
    staging: &Path,
    out_dir: &Path,
    ticket: &str,
    steps: &mut Steps,
) -> Result<(), String> {
    move_tree(staging, out_dir, Some(ticket), steps)?;
    let staged = staging.join(ticket);
    if staged.symlink_metadata().is_err() {
        return Ok(());
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    link_free(&staged, out_dir, ticket, steps)
}

/// Moves every file under `from` into `to` (same relative paths), each
/// under a free name: outputs never overwrite one another. `skip`, at
/// `from`'s top, is left.
fn move_tree(from: &Path, to: &Path, skip: Option<&str>, steps: &mut Steps) -> Result<(), String> {
    let mut count = 0;
    let mut dirs = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = dirs.pop() {
        let entries = std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if src == from && skip == Some(name.as_str()) {
                continue;
            }
            if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
                dirs.push((entry.path(), dst.join(&name)));
                continue;
            }
            count += 1;
            if count > OUTPUTS_MAX {
                return Err(format!("more than {OUTPUTS_MAX} outputs"));
            }
            move_no_replace(&entry.path(), &dst, &name, steps)?;
        }
    }
    Ok(())
}

/// Moves `from` into folder `dir` as `name`, or `name (N)` when taken.
/// A hard link is made first, which fails rather than replacing a file
/// that appeared meanwhile, then `from` is removed; where links are not
/// supported, a rename. A publisher that died between the link and the
/// removal left `from` with a second name in `dir`: that one counts.
fn move_no_replace(from: &Path, dir: &Path, name: &str, steps: &mut Steps) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if linked_in(from, dir).is_some() {
        steps.take()?;
        return std::fs::remove_file(from).map_err(|e| format!("{}: {e}", from.display()));
    }
    link_free(from, dir, name, steps)
}

/// Links `from` into `dir` under `name` or the first free `name (N)`, then
/// removes `from`; where links are not supported, a rename.
fn link_free(from: &Path, dir: &Path, name: &str, steps: &mut Steps) -> Result<(), String> {
    for _ in 0..crate::work::hotfolder::FREE_NAME_TRIES_MAX {
        // A name that holds `from` already is not taken but done: another
        // publisher (a coordinator that froze mid-round and woke beside its
        // successor) linked it a moment ago. Taking the next free name
        // instead published the same file twice (`NAME (1)`; the fault
        // campaign saw a result ticket so).
        let ours = |p: &Path| same_file(from, p);
        let free = free_name(name, &mut |n| {
            let p = dir.join(n);
            p.exists() && !ours(&p)
        })
        .ok_or("no free name")?;
        let to = dir.join(&free);
        if ours(&to) {
            steps.take()?;
            return std::fs::remove_file(from).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(format!("{}: {e}", from.display())),
            });
        }
        steps.take()?;
        match std::fs::hard_link(from, &to) {
            Ok(()) => {
                steps.take()?;
                return std::fs::remove_file(from).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(format!("{}: {e}", from.display())),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {
                return std::fs::rename(from, &to)
                    .map_err(|e| format!("moving {} to {}: {e}", from.display(), to.display()))
            }
        }
    }
    Err(format!("no free name for {name} in {}", dir.display()))
}

/// Whether `a` and `b` are one file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Another name of the file `from` in `dir`, when `from` has more than one.
fn linked_in(from: &Path, dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(from).ok()?;
    if meta.nlink() < 2 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            *p != from
                && std::fs::metadata(p)
                    .is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
        })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("claro-tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The assigned instance's side

/// Runs one attempt of a hotfolder job: claims the file (or finds it
/// claimed by an earlier attempt), runs the action into a fresh staging
/// folder. Nothing is published here: that waits for the commit.
pub fn process(work: Arc<Work>, job: Job, cancel: Arc<AtomicBool>, log: Arc<Capture>) -> Outcome {
    // Absolute: the action runs in its staging folder, not here.
    let root = match work.cluster.cfg.shared_root.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            return Outcome::failed(
                format!(
                    "shared_root {}: {e}",
                    work.cluster.cfg.shared_root.display()
                ),
                String::new(),
            )
        }
    };
    let Some(file) = job.spec.file.clone() else {
        return Outcome::failed("a hotfolder job without its file".into(), String::new());
    };
    let layout = Layout::new(&root, &file.hotfolder);
    // The coordinator's scan looked at this machine's writers a moment ago:
    // only another server pays for a look of its own (a walk of /proc).
    let waited = if work.cluster.is_leader() {
        Ok(())
    } else {
        wait_for_writer(&layout, &file, &cancel)
    };
    if let Err(e) = waited {
        return Outcome::failed(e, String::new());
    }
    // A new working folder is flat once every server reads that layout.
    let flat = read(&work, crate::state::protocol_level)
        .is_ok_and(|level| level >= crate::version::LEVEL_FLAT_WORK_AREA);
    let area = layout.area(&job.id, flat);
    let claimed = match claim(&layout, &area, &file) {
        Ok(p) => p,
        Err(e) => return Outcome::failed(e, String::new()),
    };
    let claimed_ms = std::fs::read_to_string(area.marker(CLAIMED_AT))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(now_ms);
    // A hotfolder removed meanwhile holds nothing back.
    let stable_ms = read(&work, |c| db::get(c, &file.hotfolder))
        .ok()
        .flatten()
        .map(|d| d.stable_ms);
    let hold_until_ms = stable_ms.map_or(0, |ms| {
        crate::work::hotfolder::publish_hold_until_ms(&file, ms, claimed_ms)
    });
    let held = cancel.clone();
    // Failed, not left in `in/`: it goes to `error/` beside the part before.
    let file_key = (file.hotfolder.clone(), file.input.clone());
    // The other jobs of the same input: a look at the replica, not at
    // every working folder of the share.
    let cluster = work.clone();
    let owners = move || {
        read(&cluster, |c| {
            db::owners_of(c, &file_key.0, &file_key.1, OWNERS_LOOKED_MAX)
        })
        .unwrap_or_default()
    };
    if let Err(e) = not_a_continuation(&layout, (&job.id, &file), &claimed, &owners()) {
        return Outcome::failed(e, String::new());
    }
    let staging = area.staging(job.attempt);
    let _ = std::fs::remove_dir_all(&staging);
    if let Err(e) = make_staging(&staging, work.account.as_ref()) {
        return Outcome::failed(e, String::new());
    }
    let fields = match super::tickets::read(&area, &claimed, &file) {
        Ok(f) => f,
        Err(e) => return Outcome::failed(e, String::new()),
    };
    let mut profile = Vec::new();
    let ended = if job.spec.script.is_empty() {
        run_command(&work, &job, (&claimed, &staging), &fields, (&cancel, &log))
    } else {
        let profiler = Arc::new(crate::work::script::Profiler::default());
        let paths = (root.as_path(), &area, claimed.as_path(), staging.as_path());
        let set = Arc::new(std::sync::Mutex::new(crate::work::ticket::Fields::new()));
        let ended = run_script(work, &job, paths, cancel, (&log, &profiler), (fields, &set));
        profile = profiler.rows();
        let set = set.lock().expect("fields lock");
        let kept = area.fields(job.attempt);
        ended.and_then(|()| super::tickets::write_fields(&kept, &set))
    };
    // Checked after the action, before anything is published.
    let ended = ended
        .and_then(|()| unchanged(&claimed, &file))
        .and_then(|()| {
            hold_outputs(
                &layout,
                (&job.id, &file),
                (claimed_ms, hold_until_ms),
                &held,
            )
        })
        .and_then(|()| not_reappeared(&layout, (&job.id, &file), claimed_ms, &owners()));
    let mut outcome = match ended {
        Ok(()) => Outcome {
            ok: true,
            result: Some(format!(
                "{} output(s) of {}",
                count_files(&staging),
                file.input
            )),
            error: None,
            log: log.take(),
            profile: Vec::new(),
        },
        Err(e) => {
            // A failed attempt's outputs are never published: they go at
            // once, so that on a full share the reason can still be written.
            let _ = std::fs::remove_dir_all(&staging);
            Outcome::failed(e, log.take())
        }
    };
    outcome.profile = profile;
    outcome
}

/// The claimed input is still the file the job took (size, time, inode):
/// a writer still at work (it paused longer than `stable_ms`, or kept the
/// file open) changes it under the action, whose outputs would then be of a
/// part of it. Such an attempt fails, and its outputs go.
fn unchanged(claimed: &Path, file: &FileInput) -> Result<(), String> {
    match same_input(claimed, file) {
        Some(Ok(())) => Ok(()),
        None => Err(format!("the claimed input {} is gone", claimed.display())),
        Some(Err(now)) => Err(format!(
            "input changed while processing: {} changed after it was taken ({now}), so a writer was still at work and the outputs were dropped; write files under a temporary or ignored name and rename them when complete",
            file.input
        )),
    }
}

/// Longest wait for a writer on this server to close the input.
const WRITER_WAIT_MS: u64 = 60_000;
/// Step of that wait.
const WRITER_POLL_MS: u64 = 250;

/// Waits while a process on this server holds the input in `in/` open for
/// writing (the coordinator, which found it stable, sees only its own
/// machine's writers), at most `WRITER_WAIT_MS`; the claim then checks it
/// is still the file found stable (else it gets a job of its own). A
/// writer that keeps it open longer fails the attempt, naming it.
fn wait_for_writer(layout: &Layout, file: &FileInput, cancel: &AtomicBool) -> Result<(), String> {
    let source = layout.dir("in").join(&file.input);
    let deadline = std::time::Instant::now() + Duration::from_millis(WRITER_WAIT_MS);
    loop {
        // A job folder's files, or the file: none when claimed already, or
        // gone (the claim says which).
        let ids: std::collections::HashSet<(u64, u64)> = if file.folder {
            super::job_folder::identities(&source).into_iter().collect()
        } else {
            super::writers::identity(&source).into_iter().collect()
        };
        let open = super::writers::open_for_writing(&ids);
        let Some(w) = open.into_values().next() else {
            return Ok(());
        };
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("cancelled while its writer still held it".into());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "in/{} was still open for writing by process {} ({}) on this server after {WRITER_WAIT_MS} ms",
                file.input, w.pid, w.command
            ));
        }
        std::thread::sleep(Duration::from_millis(WRITER_POLL_MS));
    }
}

/// Step of the hold of a finished attempt's outputs.
const HOLD_POLL_MS: u64 = 100;

/// Holds a finished attempt's outputs until `publish_hold_until_ms` (two
/// stability times after the input's last write, for a plain stable
/// file), looking every `HOLD_POLL_MS` for the writer's next piece in
/// `in/`, which ends the attempt at once (`not_reappeared`). The slot stays
/// taken meanwhile: only a file claimed within that time of its last write
/// waits, so files that sat stable in `in/` (a backlog) wait for nothing.
fn hold_outputs(
    layout: &Layout,
    (id, file): (&str, &FileInput),
    (claimed_ms, until): (u64, u64),
    cancel: &AtomicBool,
) -> Result<(), String> {
    loop {
        let now = now_ms();
        if now >= until {
            return Ok(());
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("cancelled while its outputs were held".into());
        }
        std::thread::sleep(Duration::from_millis((until - now).min(HOLD_POLL_MS)));
        not_reappeared(layout, (id, file), claimed_ms, &[])?;
    }
}

/// A file made under the input's name in `in/` within this long after the
/// claim is the same writer's next piece, not a new drop.
const REAPPEAR_WINDOW_MS: u64 = 10_000;

/// No new file took the input's name in `in/` right after the claim: a
/// writer that opens the file anew for each piece (`>>`) and paused longer
/// than `stable_ms` makes one there, and the part taken is then a fragment.
/// Such an attempt fails naming both, and its outputs go. A file dropped
/// under the same name later than `REAPPEAR_WINDOW_MS` is a new drop.
fn not_reappeared(
    layout: &Layout,
    (id, file): (&str, &FileInput),
    claimed_ms: u64,
    owners: &[String],
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // The next piece may already be another job's (taken while this
    // action ran): it was made within the window after this claim.
    for (other, meta) in other_claims(layout, id, &file.input, owners) {
        let made = made_ms(&meta);
        if made + 1_000 >= claimed_ms && made <= claimed_ms + REAPPEAR_WINDOW_MS {
            return Err(format!(
                "input changed while processing: a new in/{} was made {} ms after {} bytes of it were taken and went to job {other}, so {PART_MARKER} (it opens the file anew for each piece) and the outputs of the part taken were dropped; write files under a temporary or ignored name and rename them when complete",
                file.input,
                made.saturating_sub(claimed_ms),
                file.bytes
            ));
        }
    }
    let Ok(meta) = std::fs::metadata(layout.dir("in").join(&file.input)) else {
        return Ok(());
    };
    if file.inode != 0 && meta.ino() == file.inode {
        return Ok(()); // the claim's rename did not happen: nothing new
    }
    let made_ms = made_ms(&meta);
    if made_ms + 1_000 < claimed_ms || made_ms > claimed_ms + REAPPEAR_WINDOW_MS {
        return Ok(());
    }
    Err(format!(
        "input changed while processing: a new in/{} appeared {} ms after {} bytes of it were taken, so {PART_MARKER} (it opens the file anew for each piece) and the outputs of the part taken were dropped; write files under a temporary or ignored name and rename them when complete",
        file.input,
        made_ms.saturating_sub(claimed_ms),
        file.bytes
    ))
}

/// When a file was made: its birth time where the file system keeps one,
/// else its modification time.
fn made_ms(meta: &std::fs::Metadata) -> u64 {
    meta.created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(
            || crate::work::jobs::modified_ms(meta),
            |d| d.as_millis() as u64,
        )
}

/// What a reason in `error/` says of a part taken from a writer still at
/// work; a file made under that name soon after is the rest of it.
const PART_MARKER: &str = "its writer was still at work";

/// The input is not the rest of a file whose earlier part failed as taken
/// while its writer was still at work (`not_reappeared`): a file made under
/// the same name within `REAPPEAR_WINDOW_MS` of such a failure being
/// written to `error/`. Processed alone it would be a truncated success;
/// it fails instead and joins the other part in `error/`.
fn not_a_continuation(
    layout: &Layout,
    (id, file): (&str, &FileInput),
    claimed: &Path,
    owners: &[String],
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(claimed) else {
        return Ok(());
    };
    let made = made_ms(&meta);
    // An earlier part still in another job's hands: its claim (the rename,
    // which sets its change time) came within the window before this file
    // was made.
    for (other, m) in other_claims(layout, id, &file.input, owners) {
        let taken_ms = (m.ctime().max(0) as u64) * 1000 + m.ctime_nsec().max(0) as u64 / 1_000_000;
        if taken_ms <= made + 1_000 && made <= taken_ms + REAPPEAR_WINDOW_MS {
            return Err(format!(
                "input changed while processing: in/{} was made {} ms after job {other} took an earlier part of it, so {PART_MARKER}; neither part is processed; write files under a temporary or ignored name and rename them when complete",
                file.input,
                made.saturating_sub(taken_ms)
            ));
        }
    }
    if let Some(e) = earlier_part_in(layout, "error", &file.input, made) {
        return Err(e);
    }
    // A marker or ticket is the writer's "complete": a file under the same
    // name after it is a new drop, not the rest of the one published.
    if file.marker.is_some() || file.ticket.is_some() {
        return Ok(());
    }
    match earlier_part_in(layout, "done", &file.input, made) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// An earlier part of `input` in `error/` (failed as taken from a writer
/// still at work, within `REAPPEAR_WINDOW_MS` before this file was made)
/// or in `done/` (processed and published within that window before it:
/// the writer's next piece came after its first part's action had ended).
/// The message says which.
fn earlier_part_in(layout: &Layout, folder: &str, input: &str, made: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = layout.dir(folder).join(parent_of(input));
    let name = base_name(input);
    // The names publication gives (`free_name`: NAME, then `STEM (1).EXT`
    // up): looked up one by one, never a listing of the whole folder.
    let names = std::iter::once(name.to_string()).chain(
        (1..crate::work::hotfolder::FREE_NAME_TRIES_MAX)
            .map(|i| crate::work::hotfolder::numbered(name, i)),
    );
    for (i, n) in names.enumerate().take(ERROR_ENTRIES_LOOKED_MAX) {
        let path = match folder {
            "done" => dir.join(&n),
            _ => dir.join(format!("{n}.error.txt")),
        };
        let Ok(m) = std::fs::metadata(&path) else {
            if i == 0 {
                continue;
            }
            break;
        };
        if folder == "done" {
            // Its publication linked it there: that set its change time.
            let published =
                (m.ctime().max(0) as u64) * 1000 + m.ctime_nsec().max(0) as u64 / 1_000_000;
            if published <= made && made <= published + REAPPEAR_WINDOW_MS {
                return Some(format!(
                    "input changed while processing: in/{input} was made {} ms after an earlier file of that name was processed (done/{n}), so {PART_MARKER} (it opens the file anew for each piece, and paused longer than the stability time); this part was not processed, and the earlier output may be of a part; write files under a temporary or ignored name and rename them when complete, or use the marker trigger",
                    made - published
                ));
            }
            continue;
        }
        let written = crate::work::jobs::modified_ms(&m);
        if written + REAPPEAR_WINDOW_MS < made {
            continue;
        }
        let reason = std::fs::read_to_string(&path).unwrap_or_default();
        if reason
            .lines()
            .next()
            .is_some_and(|l| l.contains(PART_MARKER))
        {
            return Some(format!(
                "input changed while processing: in/{input} was made while an earlier part of it failed as taken when {PART_MARKER} (error/{n}.error.txt); this part was not processed either; write files under a temporary or ignored name and rename them when complete"
            ));
        }
    }
    None
}

/// The files of the same input name that other jobs of this hotfolder
/// (`owners`, from `owners_of`) hold claimed now, with their metadata.
fn other_claims(
    layout: &Layout,
    id: &str,
    input: &str,
    owners: &[String],
) -> Vec<(String, std::fs::Metadata)> {
    owners
        .iter()
        .filter(|other| *other != id)
        .filter_map(|other| {
            let meta =
                std::fs::metadata(layout.area(other, true).claimed(base_name(input))).ok()?;
            Some((other.clone(), meta))
        })
        .collect()
}

/// Names looked at in `error/` or `done/` for an earlier part, at most.
const ERROR_ENTRIES_LOOKED_MAX: usize = 10_000;
/// Other jobs of one input looked at for a claimed earlier part, at most.
const OWNERS_LOOKED_MAX: u32 = 100;

/// The attempt's staging folder, new and empty; owned by the `run_as`
/// user, when there is one, since the action writes its outputs there.
fn make_staging(staging: &Path, user: Option<&Account>) -> Result<(), String> {
    std::fs::create_dir_all(staging)
        .map_err(|e| format!("making the staging folder {}: {e}", staging.display()))?;
    let Some(user) = user else { return Ok(()) };
    std::os::unix::fs::chown(staging, Some(user.uid), Some(user.gid)).map_err(|e| {
        format!(
            "giving the staging folder {} to user {} (run_as): {e}",
            staging.display(),
            user.name
        )
    })
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The file, moved from `in/` into this job's working area by one rename
/// (only one instance can win it); found there on a retry; taken back from
/// `error/` when a failed job is retried.
pub(super) fn claim(layout: &Layout, area: &WorkArea, file: &FileInput) -> Result<PathBuf, String> {
    let input = file.input.as_str();
    let claimed = area.claimed(base_name(input));
    let from_in = layout.dir("in").join(input);
    let from_error = layout.dir("error").join(input);
    if claimed.symlink_metadata().is_ok() {
        // Its ticket and marker were taken with it unless a crash came in
        // between; once taken, a ticket or marker of that name in `in/` is
        // a newer drop's and stays.
        if !area.marker(COMPANIONS_TAKEN).exists() {
            super::tickets::claim(area, (&layout.dir("in"), false), file)?;
            let _ = write_atomic(&area.marker(COMPANIONS_TAKEN), b"");
        }
        return Ok(claimed);
    }
    super::work_area::make_parent(&claimed)?;
    let source = if from_in.symlink_metadata().is_ok() {
        from_in
    } else {
        from_error.clone()
    };
    // Only this job's file: one dropped later under the same name is
    // another file, and gets a job of its own once this one is published.
    if let Some(Err(now)) = same_input(&source, file) {
        return Err(format!(
            "in/{input} was replaced or changed after it was taken ({now}): the new one gets its own job"
        ));
    }
    // In a flat working folder claro's own files have such names.
    if area.is_flat() && !area.is_input(base_name(input)) {
        return Err(format!(
            "in/{input}: names starting with {RESERVED_PREFIX} are claro's own in a job's working folder; rename it"
        ));
    }
    // When it was taken, for the checks after the action: kept with the
    // claim, so that a later attempt measures from the same time, and only
    // the first claimer's (one that loses the rename must not move it).
    // Written first: a flat working folder is known by it (`WorkArea::open`).
    make_once(&area.marker(CLAIMED_AT), now_ms().to_string().as_bytes())?;
    match std::fs::rename(&source, &claimed) {
        Ok(()) => {
            if source == from_error {
                for note in ["error.txt", "result.json"] {
                    let _ =
                        std::fs::remove_file(layout.dir("error").join(format!("{input}.{note}")));
                }
            }
            let again = source == from_error;
            let from = layout.dir(if again { "error" } else { "in" });
            super::tickets::claim(area, (&from, again), file)?;
            let _ = write_atomic(&area.marker(COMPANIONS_TAKEN), b"");
            Ok(claimed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "the file in/{input} is gone (deleted or moved before it was processed)"
        )),
        Err(e) => Err(format!("claiming in/{input}: {e}")),
    }
}

/// Whether `path` is still the input the job took (same size, time and
/// inode; for a job folder, the same listing): `None` when it is not
/// there, `Err` with what it is now when it differs.
fn same_input(path: &Path, file: &FileInput) -> Option<Result<(), String>> {
    if file.folder {
        let listing = super::job_folder::list(path).ok()?;
        if file.is_folder(listing.bytes, listing.modified_ms, listing.print) {
            return Some(Ok(()));
        }
        return Some(Err(format!(
            "{} files, {} bytes, was {} bytes",
            listing.files.len(),
            listing.bytes,
            file.bytes
        )));
    }
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() && file.is(&meta) {
        return Some(Ok(()));
    }
    Some(Err(format!("now {} bytes, was {}", meta.len(), file.bytes)))
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// A script action: it sees `FILE` with paths relative to `shared_root`
/// (as its file functions take them) and may write only in its staging
/// folder.
fn run_script(
    work: Arc<Work>,
    job: &Job,
    (root, area, claimed, staging): (&Path, &WorkArea, &Path, &Path),
    cancel: Arc<AtomicBool>,
    sinks: (&Arc<Capture>, &Arc<crate::work::script::Profiler>),
    (ticket, set): (
        crate::work::ticket::Fields,
        &Arc<std::sync::Mutex<crate::work::ticket::Fields>>,
    ),
) -> Result<(), String> {
    let rel = |p: &Path| {
        p.strip_prefix(root)
            .map_or_else(|_| path_text(p), path_text)
    };
    let values = FileValues::new(&rel(claimed), &rel(staging));
    let file = job
        .spec
        .file
        .as_ref()
        .expect("a hotfolder job has its file");
    // A job folder's files, as paths the file functions take.
    let files: Vec<String> = if file.folder {
        let listing = super::job_folder::list(claimed)?;
        listing
            .files
            .iter()
            .map(|f| format!("{}/{f}", values.input))
            .collect()
    } else {
        vec![values.input.clone()]
    };
    let ticket_path = super::tickets::claimed(area, claimed, file).map(|p| rel(&p));
    let value = serde_json::json!({
        "input": values.input, "output_dir": values.output_dir, "name": values.name,
        "stem": values.stem, "ext": values.ext, "relative": file.input,
        "folder": file.folder, "files": files, "ticket": ticket_path,
        // Taken out again by the engine as the constant `TICKET`.
        "TICKET": ticket,
    });
    let file = FileContext {
        value,
        output_dir: staging.to_path_buf(),
        work_folder: area.root.clone(),
        fields: set.clone(),
    };
    run_job_script(work, job, cancel, sinks, Some(file))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A command action: the template's placeholders and the ticket's
/// `{ticket.KEY}` substituted per argument, the same values in the
/// environment (`CLARO_*`, `CLARO_TICKET_*`), run in the staging folder.
fn run_command(
    work: &Work,
    job: &Job,
    (claimed, staging): (&Path, &Path),
    fields: &crate::work::ticket::Fields,
    (cancel, log): (&AtomicBool, &Arc<Capture>),
) -> Result<(), String> {
    let values = FileValues::new(&path_text(claimed), &path_text(staging));
    let argv = expand(&job.spec.args, &values)
        .iter()
        .map(|a| crate::work::ticket::expand(a, fields))
        .collect::<Result<Vec<String>, String>>()?;
    // The values as environment variables too: the safe way for a
    // shell to see them (`sh -c 'echo "$CLARO_NAME"'`).
    let mut env = values.env();
    env.extend(crate::work::ticket::env(fields));
    let at = (staging, work.account.as_ref());
    let status = super::process::run(&argv, at, &env, job.spec.timeout_ms, cancel, log)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the action {}", log.ended_with(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static NESTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The layout new working folders get here: flat, unless a test runs
    /// its case again in the nested one of earlier versions
    /// (`in_both_layouts`), which is still published whole.
    fn flat() -> bool {
        !NESTED.with(|n| n.get())
    }

    fn in_both_layouts(case: impl Fn()) {
        case();
        NESTED.with(|n| n.set(true));
        case();
        NESTED.with(|n| n.set(false));
    }

    fn job(state: JobState, delete: bool) -> Job {
        let mut spec = JobSpec::script("1");
        spec.kind = JobKind::Hotfolder;
        spec.file = Some(FileInput {
            hotfolder: "hf".into(),
            input: "sub/a b.pdf".into(),
            bytes: 3,
            modified_ms: 0,
            inode: 0,
            delete_on_success: delete,
            ..Default::default()
        });
        Job {
            id: "01a2093a8452b12da5d1".into(),
            spec,
            state,
            instance: Some("srv1".into()),
            attempt: 2,
            created_ms: 0,
            assigned_ms: None,
            started_ms: None,
            finished_ms: Some(1),
            not_before_ms: 0,
            result: None,
            error: Some("attempt 2 on srv1: no ink".into()),
            log: "a line".into(),
            profile: Vec::new(),
            attempts: Vec::new(),
        }
    }

    /// A claimed file and three staged outputs (one in a subfolder); an
    /// older `out/sub/x.pdf` that must not be overwritten.
    fn prepare(root: &Path, j: &Job) {
        let layout = Layout::new(root, "hf");
        layout.create().unwrap();
        std::fs::create_dir_all(layout.dir("in/sub")).unwrap();
        std::fs::write(layout.dir("in/sub/a b.pdf"), "pdf").unwrap();
        let file = taken(&layout.dir("in"), "sub/a b.pdf");
        let claimed = claim(&layout, &layout.area(&j.id, flat()), &file).unwrap();
        let again = claim(&layout, &layout.area(&j.id, flat()), &file).unwrap();
        assert_eq!(again, claimed, "a retry finds its claim");
        let staging = layout.area(&j.id, flat()).staging(j.attempt);
        std::fs::create_dir_all(staging.join("deep")).unwrap();
        for (name, text) in [("x.pdf", "x"), ("y.pdf", "y"), ("deep/z.pdf", "z")] {
            std::fs::write(staging.join(name), text).unwrap();
        }
        std::fs::create_dir_all(layout.dir("out/sub")).unwrap();
        std::fs::write(layout.dir("out/sub/x.pdf"), "older").unwrap();
    }

    fn contents(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else {
                    let path = e.path();
                    let rel = path
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.push((rel, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// Crashes a publication after every possible number of steps, then
    /// publishes again (twice): the outcome is always the same, every
    /// output once and whole, the original in exactly one place.
    #[test]
    fn a_publication_crashed_at_any_step_and_run_again_publishes_everything_once() {
        in_both_layouts(
            a_publication_crashed_at_any_step_and_run_again_publishes_everything_once_in_one_layout,
        );
    }

    fn a_publication_crashed_at_any_step_and_run_again_publishes_everything_once_in_one_layout() {
        let cases = [
            (JobState::Succeeded, false),
            (JobState::Succeeded, true),
            (JobState::Failed, false),
            (JobState::Cancelled, false),
        ];
        for (state, delete) in cases {
            let j = job(state, delete);
            let mut expected = None;
            for crash_after in 0..40 {
                let dir = tempfile::tempdir().unwrap();
                prepare(dir.path(), &j);
                let crashed = publish_steps(dir.path(), &j, &mut Steps::crash_after(crash_after));
                publish(dir.path(), &j).unwrap();
                publish(dir.path(), &j).unwrap();
                let seen = contents(&dir.path().join("hf"));
                match &expected {
                    None => expected = Some(seen),
                    Some(e) => assert_eq!(&seen, e, "{state:?} crash after {crash_after}"),
                }
                if crashed.is_ok() {
                    break;
                }
            }
            let seen = expected.unwrap();
            let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
            if state == JobState::Succeeded {
                let mut want = vec![
                    "out/sub/a b.pdf.result.json",
                    "out/sub/deep/z.pdf",
                    "out/sub/x (1).pdf",
                    "out/sub/x.pdf",
                    "out/sub/y.pdf",
                ];
                if !delete {
                    want.insert(0, "done/sub/a b.pdf");
                }
                assert_eq!(names, want, "{seen:?}");
                assert!(seen.contains(&("out/sub/x.pdf".into(), "older".into())));
                assert!(seen.contains(&("out/sub/x (1).pdf".into(), "x".into())));
                let ticket = seen
                    .iter()
                    .find(|(n, _)| n.ends_with(".result.json"))
                    .unwrap();
                let ticket: serde_json::Value = serde_json::from_str(&ticket.1).unwrap();
                assert_eq!(ticket["outcome"], "succeeded", "{ticket}");
                assert_eq!(ticket["input"], "sub/a b.pdf");
                let outputs = serde_json::json!(["deep/z.pdf", "x.pdf", "y.pdf"]);
                assert_eq!(ticket["outputs"], outputs, "{ticket}");
            } else {
                let want = [
                    "error/sub/a b.pdf",
                    "error/sub/a b.pdf.error.txt",
                    "error/sub/a b.pdf.result.json",
                    "out/sub/x.pdf",
                ];
                assert_eq!(names, want, "{seen:?}");
                assert!(seen[1].1.contains("no ink") && seen[1].1.contains("a line"));
                let ticket: serde_json::Value = serde_json::from_str(&seen[2].1).unwrap();
                assert_eq!(ticket["outcome"], state.as_str(), "{ticket}");
                assert_eq!(ticket["outputs"], serde_json::json!([]));
                assert!(ticket["error"].as_str().unwrap().contains("no ink"));
            }
        }
    }

    /// A job folder with a sidecar ticket, claimed (the marker goes), its
    /// ticket read, a field kept, one output staged.
    fn prepare_folder(root: &Path, j: &Job) -> FileInput {
        let layout = Layout::new(root, "hf");
        layout.create().unwrap();
        let folder = layout.dir("in/Job 4711");
        std::fs::create_dir_all(folder.join("parts")).unwrap();
        std::fs::write(folder.join("cover.pdf"), "cover").unwrap();
        std::fs::write(folder.join("parts/inner.pdf"), "inner").unwrap();
        std::fs::write(layout.dir("in/Job 4711.json"), r#"{"copies": 500}"#).unwrap();
        std::fs::write(layout.dir("in/Job 4711.ready"), "").unwrap();
        let listing = super::super::job_folder::list(&folder).unwrap();
        let file = FileInput {
            hotfolder: "hf".into(),
            input: "Job 4711".into(),
            bytes: listing.bytes,
            modified_ms: listing.modified_ms,
            inode: listing.print,
            delete_on_success: j.spec.file.as_ref().unwrap().delete_on_success,
            folder: true,
            ticket: Some("Job 4711.json".into()),
            marker: Some("Job 4711.ready".into()),
        };
        let claimed = claim(&layout, &layout.area(&j.id, flat()), &file).unwrap();
        assert_eq!(
            claim(&layout, &layout.area(&j.id, flat()), &file).unwrap(),
            claimed
        );
        assert!(!layout.dir("in/Job 4711.ready").exists(), "the marker goes");
        unchanged(&claimed, &file).unwrap();
        let fields =
            super::super::tickets::read(&layout.area(&j.id, flat()), &claimed, &file).unwrap();
        assert_eq!(fields["copies"], "500");
        let staging = layout.area(&j.id, flat()).staging(j.attempt);
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("imposed.pdf"), "imposed").unwrap();
        let mut set = crate::work::ticket::Fields::new();
        set.insert("sheets".into(), "250".into());
        let kept = layout.area(&j.id, flat()).fields(j.attempt);
        super::super::tickets::write_fields(&kept, &set).unwrap();
        file
    }

    /// A job folder and its ticket are published crash-safely like a file:
    /// after success the folder and its ticket in `done/`, the output and a
    /// result ticket with the script's fields in `out/`; after a failure
    /// both in `error/` beside the reason.
    #[test]
    fn a_job_folder_with_its_ticket_is_published_once_at_any_crash() {
        in_both_layouts(a_job_folder_with_its_ticket_is_published_once_at_any_crash_in_one_layout);
    }

    fn a_job_folder_with_its_ticket_is_published_once_at_any_crash_in_one_layout() {
        for (state, delete) in [
            (JobState::Succeeded, false),
            (JobState::Succeeded, true),
            (JobState::Failed, false),
        ] {
            let mut expected = None;
            for crash_after in 0..40 {
                let dir = tempfile::tempdir().unwrap();
                let mut j = job(state, delete);
                let file = prepare_folder(dir.path(), &j);
                j.spec.file = Some(file);
                let crashed = publish_steps(dir.path(), &j, &mut Steps::crash_after(crash_after));
                publish(dir.path(), &j).unwrap();
                publish(dir.path(), &j).unwrap();
                let seen = contents(&dir.path().join("hf"));
                match &expected {
                    None => expected = Some(seen),
                    Some(e) => assert_eq!(&seen, e, "{state:?} crash after {crash_after}"),
                }
                if crashed.is_ok() {
                    break;
                }
            }
            let seen = expected.unwrap();
            let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
            let ticket = |name: &str| -> serde_json::Value {
                serde_json::from_str(&seen.iter().find(|(n, _)| n == name).unwrap().1).unwrap()
            };
            match (state, delete) {
                (JobState::Succeeded, false) => {
                    let want = [
                        "done/Job 4711.json",
                        "done/Job 4711/cover.pdf",
                        "done/Job 4711/parts/inner.pdf",
                        "out/Job 4711.result.json",
                        "out/imposed.pdf",
                    ];
                    assert_eq!(names, want);
                    let t = ticket("out/Job 4711.result.json");
                    assert_eq!(t["fields"]["sheets"], "250", "{t}");
                    assert_eq!(t["outputs"], serde_json::json!(["imposed.pdf"]));
                }
                (JobState::Succeeded, true) => {
                    assert_eq!(names, ["out/Job 4711.result.json", "out/imposed.pdf"]);
                }
                _ => {
                    let want = [
                        "error/Job 4711.error.txt",
                        "error/Job 4711.json",
                        "error/Job 4711.result.json",
                        "error/Job 4711/cover.pdf",
                        "error/Job 4711/parts/inner.pdf",
                    ];
                    assert_eq!(names, want);
                    assert_eq!(
                        ticket("error/Job 4711.result.json")["fields"]["sheets"],
                        "250"
                    );
                }
            }
            assert!(!dir_has_work(&seen), "{seen:?}");
        }
    }

    fn dir_has_work(seen: &[(String, String)]) -> bool {
        seen.iter().any(|(n, _)| n.starts_with(WORK_DIR))
    }

    /// A failed job folder retried takes the folder and its ticket back
    /// from `error/`.
    #[test]
    fn a_failed_job_folder_retried_comes_back_with_its_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = job(JobState::Failed, false);
        let file = prepare_folder(dir.path(), &j);
        j.spec.file = Some(file.clone());
        publish(dir.path(), &j).unwrap();
        let layout = Layout::new(dir.path(), "hf");
        let again = "01a2093a8452b12da5d2";
        let claimed = claim(&layout, &layout.area(again, flat()), &file).unwrap();
        assert!(claimed.join("cover.pdf").is_file());
        let fields =
            super::super::tickets::read(&layout.area(again, flat()), &claimed, &file).unwrap();
        assert_eq!(fields["copies"], "500");
        assert!(!layout.dir("error/Job 4711.error.txt").exists());
    }

    /// The look for a writer's earlier part reads the claims of the jobs
    /// the replica names for the same input, never every working folder:
    /// listing them all made each file's checks cost as much as the files
    /// waiting, so 10,000 files dropped at once took minutes instead of
    /// seconds (found by `cargo bench --bench hotfolders`).
    #[test]
    fn the_look_for_an_earlier_part_reads_only_the_input_s_owners() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "hf");
        layout.create().unwrap();
        let other = "01a2093a8452b12da5d2";
        let area = layout.area(other, flat());
        super::super::work_area::make_parent(&area.claimed("a.pdf")).unwrap();
        std::fs::write(area.marker(CLAIMED_AT), "1").unwrap();
        std::fs::write(area.claimed("a.pdf"), "part").unwrap();
        let me = "01a2093a8452b12da5d1";
        assert!(other_claims(&layout, me, "a.pdf", &[]).is_empty());
        let found = other_claims(&layout, me, "a.pdf", &[other.into(), me.into()]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, other);
    }

    /// Two publishers of one job (a frozen coordinator woke beside its
    /// successor): the second finds the file already under its name in
    /// `out/` and does not publish it again as `NAME (1)`.
    #[test]
    fn a_second_publisher_does_not_publish_a_file_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (staged, out) = (dir.path().join("staged"), dir.path().join("out"));
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("a.pdf"), "someone else's").unwrap();
        std::fs::write(staged.join("t.json"), "ticket").unwrap();
        // The first publisher linked it after this one looked for a link
        // (`linked_in`), and has not removed it yet.
        std::fs::hard_link(staged.join("t.json"), out.join("t.json")).unwrap();
        link_free(
            &staged.join("t.json"),
            &out,
            "t.json",
            &mut Steps::unlimited(),
        )
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.pdf", "t.json"]);
        assert!(!staged.join("t.json").exists());
        // A file of another's under the name: the next free name, as before.
        std::fs::write(staged.join("a.pdf"), "mine").unwrap();
        move_no_replace(
            &staged.join("a.pdf"),
            &out,
            "a.pdf",
            &mut Steps::unlimited(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("a (1).pdf")).unwrap(),
            "mine"
        );
    }

    /// Found in review: a second publisher that passed the staged-ticket
    /// check before the first wrote its marker, and went on after the
    /// first had published, made a ticket of its own, which was published
    /// again as `NAME (1).result.json`.
    #[test]
    fn a_second_publisher_that_stalled_at_the_ticket_publishes_no_second_ticket() {
        let j = job(JobState::Succeeded, false);
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &j);
        let file = j.spec.file.as_ref().unwrap();
        let layout = Layout::new(dir.path(), &file.hotfolder);
        let area = layout.area(&j.id, flat());
        let staging = area.staging(j.attempt);
        let out_dir = layout.dir("out").join(parent_of(&file.input));
        let publisher = || {
            stage_ticket(&area, &j, file, &staging, &mut Steps::unlimited()).unwrap();
            let name = ticket_name(file);
            publish_outputs(&staging, &out_dir, &name, &mut Steps::unlimited()).unwrap();
        };
        // The first publisher stages the ticket and publishes the outputs.
        publisher();
        // The second looked for the marker before it was written.
        std::fs::remove_file(area.marker(TICKET_STAGED)).unwrap();
        publisher();
        let tickets: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("a b"))
            .collect();
        assert_eq!(tickets, ["a b.pdf.result.json"]);
    }

    /// A job that ends without its file ever being claimed (cancelled while
    /// queued) takes its ticket and marker to `error/` with the file, and
    /// never over a file already there (found in review: they stayed in
    /// `in/`, and a ticket replaced a failed file of its name).
    #[test]
    fn an_unclaimed_failed_file_takes_its_ticket_along_and_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "hf");
        layout.create().unwrap();
        std::fs::write(layout.dir("in/a.pdf"), "pdf").unwrap();
        std::fs::write(layout.dir("in/a.pdf.json"), r#"{"n": 1}"#).unwrap();
        std::fs::write(layout.dir("in/a.pdf.ready"), "").unwrap();
        std::fs::write(layout.dir("error/a.pdf.json"), "an earlier failed file").unwrap();
        let mut file = taken(&layout.dir("in"), "a.pdf");
        file.ticket = Some("a.pdf.json".into());
        file.marker = Some("a.pdf.ready".into());
        let mut j = job(JobState::Cancelled, false);
        j.spec.file = Some(file);
        publish(dir.path(), &j).unwrap();
        let left: Vec<_> = std::fs::read_dir(layout.dir("in")).unwrap().collect();
        assert!(left.is_empty(), "nothing left in in/");
        let error = layout.dir("error");
        assert_eq!(std::fs::read_to_string(error.join("a.pdf")).unwrap(), "pdf");
        assert_eq!(
            std::fs::read_to_string(error.join("a.pdf.json")).unwrap(),
            "an earlier failed file"
        );
        assert_eq!(
            std::fs::read_to_string(error.join("a.pdf (1).json")).unwrap(),
            r#"{"n": 1}"#
        );
        assert!(error.join("a.pdf.error.txt").is_file());
    }

    #[test]
    fn submissions_are_cut_by_count_and_by_bytes() {
        let seen = |i: usize| {
            Unit::of(Seen {
                path: format!("f{i}.pdf"),
                bytes: 1,
                modified_ms: 0,
                inode: i as u64,
                folder: false,
            })
        };
        let small = Hotfolder::new(
            "hf",
            crate::work::hotfolder::Action::Script { code: "1".into() },
        );
        let files: Vec<Unit> = (0..JOB_BATCH_COUNT_MAX + 10).map(seen).collect();
        let sizes: Vec<usize> = batches(&small, &files).iter().map(Vec::len).collect();
        assert_eq!(sizes, [JOB_BATCH_COUNT_MAX, 10]);
        // A 200 KB script: five jobs to an entry, not 4,096 (an 800 MB entry).
        let code = format!("let a = \"{}\";", "x".repeat(200_000));
        let big = Hotfolder::new("hf", crate::work::hotfolder::Action::Script { code });
        let files: Vec<Unit> = (0..12).map(seen).collect();
        let sizes: Vec<usize> = batches(&big, &files).iter().map(Vec::len).collect();
        assert_eq!(sizes, [5, 5, 2]);
    }

    /// The file at `dir/rel` as a scan takes it.
    fn taken(dir: &Path, rel: &str) -> FileInput {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.join(rel)).unwrap();
        FileInput {
            hotfolder: "hf".into(),
            input: rel.into(),
            bytes: meta.len(),
            modified_ms: crate::work::jobs::modified_ms(&meta),
            inode: meta.ino(),
            delete_on_success: false,
            ..Default::default()
        }
    }

    #[test]
    fn a_file_gone_before_its_claim_fails_the_attempt_and_a_retry_takes_it_back_from_error() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "hf");
        layout.create().unwrap();
        std::fs::write(layout.dir("in/gone.pdf"), "p").unwrap();
        let gone = taken(&layout.dir("in"), "gone.pdf");
        std::fs::remove_file(layout.dir("in/gone.pdf")).unwrap();
        let area = layout.area("01a2093a8452b12da5d1", flat());
        let e = claim(&layout, &area, &gone).unwrap_err();
        assert!(e.contains("in/gone.pdf is gone"), "{e}");
        std::fs::write(layout.dir("error/again.pdf"), "p").unwrap();
        std::fs::write(layout.dir("error/again.pdf.error.txt"), "why").unwrap();
        std::fs::write(layout.dir("error/again.pdf.result.json"), "{}").unwrap();
        let again = taken(&layout.dir("error"), "again.pdf");
        let claimed = claim(&layout, &area, &again).unwrap();
        assert_eq!(std::fs::read_to_string(claimed).unwrap(), "p");
        assert!(!layout.dir("error/again.pdf.error.txt").exists());
        assert!(
            !layout.dir("error/again.pdf.result.json").exists(),
            "a stale ticket"
        );
        assert!(area.marker(CLAIMED_AT).is_file());
    }

    /// A file a process on this server holds open for writing is claimed
    /// only once the writer closed it; a cancel ends the wait.
    #[test]
    fn a_claim_waits_for_a_local_writer_to_close_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "hf");
        layout.create().unwrap();
        let path = layout.dir("in/held.pdf");
        std::fs::write(&path, "p").unwrap();
        let held = taken(&layout.dir("in"), "held.pdf");
        let script = format!("exec 3>>'{}'; sleep 1", path.display());
        let started = std::time::Instant::now();
        let mut writer = std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let cancel = AtomicBool::new(true);
        let e = wait_for_writer(&layout, &held, &cancel).unwrap_err();
        assert!(e.contains("cancelled"), "{e}");
        cancel.store(false, std::sync::atomic::Ordering::Relaxed);
        wait_for_writer(&layout, &held, &cancel).unwrap();
        // The writer holds it for a second (a lower bound: never flaky).
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "taken while held"
        );
        writer.wait().unwrap();
    }

    #[test]
    fn a_file_replaced_after_it_was_taken_is_left_for_a_job_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let layout = Layout::new(root, "hf");
        layout.create().unwrap();
        std::fs::write(layout.dir("in/a.pdf"), "old").unwrap();
        let old = taken(&layout.dir("in"), "a.pdf");
        // Replaced by a new file of another size: neither claimed nor, once
        // the old job failed, moved to error/.
        std::fs::write(layout.dir("in/.a.pdf.part"), "newer").unwrap();
        std::fs::rename(layout.dir("in/.a.pdf.part"), layout.dir("in/a.pdf")).unwrap();
        let area = layout.area("01a2093a8452b12da5d1", flat());
        let e = claim(&layout, &area, &old).unwrap_err();
        assert!(e.contains("replaced or changed after it was taken"), "{e}");
        let mut j = job(JobState::Failed, false);
        j.spec.file = Some(old);
        publish(root, &j).unwrap();
        assert_eq!(
            std::fs::read_to_string(layout.dir("in/a.pdf")).unwrap(),
            "newer"
        );
        assert!(!layout.dir("error/a.pdf").exists());
    }
}
