//! A damaged data directory is never served: it is moved aside (kept for the
//! operator, `<name>.damaged-<unix seconds>` beside it) and the instance
//! starts on an empty one, a new incarnation that the coordinator re-admits
//! and sends the database (`node::rejoin`).
//!
//! - At start, before anything opens the directory: `consensus::check`.
//! - While running, a SQLite error in a Ready cycle, or a state digest that
//!   a majority of the voters contradict (`integrity`): the core is dropped,
//!   the directory moved aside and the process restarted in place (`exec`),
//!   as after a crash but on an empty directory.
//!
//! The empty directory holds `damaged.note` until the instance is a voter
//! again, so that `claro status` shows it `damaged` with the reason, across
//! restarts too.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{now_ms, Shared};
use crate::consensus::check::{self, Verdict, CHECK_MS_MAX};
use crate::consensus::{Core, CoreError};

/// What the instance shows while it has no database after damage.
const NOTE_FILE: &str = "damaged.note";

/// Where a damaged `dir` is moved: `<dir>.damaged-<secs>` beside it, with
/// `-2`, `-3`... when that name is taken (`taken` says whether it is).
pub fn aside_path(dir: &Path, secs: u64, taken: impl Fn(&Path) -> bool) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let mut path = dir.with_file_name(format!("{name}.damaged-{secs}"));
    let mut n = 1;
    while taken(&path) {
        n += 1;
        path = dir.with_file_name(format!("{name}.damaged-{secs}-{n}"));
    }
    path
}

/// Checks `dir` before anything opens it: a damaged one is set aside and
/// replaced by an empty one. Returns the damage note, if there is one.
pub fn check_at_start(dir: &Path) -> Result<Option<String>, String> {
    match check::check_dir(dir, CHECK_MS_MAX) {
        Verdict::Intact { partial } => {
            if partial {
                tracing::warn!(
                    "the check of {} was cut short after {CHECK_MS_MAX} ms: only part of its databases was checked",
                    dir.display()
                );
            }
            Ok(read_note(dir))
        }
        Verdict::Damaged { file, what } => {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            set_aside(dir, &format!("{name} failed its check ({what})")).map(Some)
        }
    }
}

/// Moves `dir` aside and makes an empty one holding the note; returns the
/// note. Logged as an error naming both directories.
pub fn set_aside(dir: &Path, cause: &str) -> Result<String, String> {
    let aside = aside_path(dir, now_ms() / 1000, |p| p.exists());
    tracing::error!(
        "the data directory {} is damaged: {cause}; it is moved aside to {} (kept for the operator) and this instance starts on an empty one, to receive the database",
        dir.display(),
        aside.display()
    );
    let note = format!(
        "damaged: {cause}: moved aside to {}; receiving the database",
        aside.display()
    );
    let fail = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::rename(dir, &aside).map_err(fail)?;
    std::fs::create_dir_all(dir).map_err(fail)?;
    crate::data_dir::make_private(dir).map_err(fail)?;
    std::fs::write(dir.join(NOTE_FILE), &note).map_err(fail)?;
    crate::state::sync_dir(dir).map_err(fail)?;
    if let Some(parent) = dir.parent() {
        crate::state::sync_dir(parent).map_err(fail)?;
    }
    Ok(note)
}

/// Why an instance whose directory was set aside waits instead of starting
/// a new cluster when nobody answers.
pub fn bootstrap_refusal(dir: &Path) -> String {
    format!(
        "this instance's data directory was damaged and set aside: it waits for a server of its cluster to send it the database (start another one; or, to start a new empty cluster on purpose, remove {})",
        dir.join(NOTE_FILE).display()
    )
}

/// Replaces this process by a new run of the same command line (its
/// sockets and files close: they are opened close-on-exec); returns only
/// if that failed, with the note to show.
fn restart_in_place(note: String) -> String {
    use std::os::unix::process::CommandExt;
    tracing::warn!("restarting in place on the empty data directory");
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    format!("{note}; the restart in place failed ({err})")
}

fn read_note(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(NOTE_FILE)).ok()
}

/// A failed Ready cycle that means the data directory is damaged: any
/// SQLite error but a full disk (that one is the space alarm's, `space`).
/// A transient I/O error is treated as damage too: the cluster holds
/// everything the directory does, so setting it aside loses nothing.
pub fn core_error_is_damage(e: &CoreError) -> bool {
    matches!(e, CoreError::Db(e) if !super::space::sqlite_is_full(e))
}

/// What the reads that failed since the last one that succeeded said.
#[derive(Debug, Default)]
struct ReadErrors {
    count: u64,
    last: String,
}

/// The damage note of this instance, shown until it is a voter again, and
/// the read errors since the last successful read.
pub(crate) struct Damage {
    note: Mutex<Option<String>>,
    reads: Mutex<ReadErrors>,
}

impl Damage {
    pub fn new(note: Option<String>) -> Damage {
        Damage {
            note: Mutex::new(note),
            reads: Mutex::default(),
        }
    }
}

impl Shared {
    /// The note `claro status` shows while this instance is `damaged`.
    pub fn damage_note(&self) -> Option<String> {
        self.damage.note.lock().expect("damage lock").clone()
    }

    /// A read from state.db failed (`error`: SQLite's words): logged by the
    /// caller, counted here for `claro status` until a read succeeds.
    pub fn read_error(&self, error: &str) {
        let mut r = self.damage.reads.lock().expect("read errors lock");
        r.count += 1;
        r.last = error.to_string();
    }

    pub fn read_succeeded(&self) {
        let mut r = self.damage.reads.lock().expect("read errors lock");
        if r.count > 0 {
            *r = ReadErrors::default();
        }
    }

    /// The status note about failed reads, while the last read failed.
    pub fn read_errors_note(&self) -> Option<String> {
        let r = self.damage.reads.lock().expect("read errors lock");
        (r.count > 0).then(|| {
            format!(
                "{} reads from state.db failed since the last one that succeeded; the last: {}",
                r.count, r.last
            )
        })
    }

    /// A Ready cycle failed on a SQLite error (`e`). The core is dropped
    /// from `slot` (locked by the caller since the failure, so nobody drove
    /// it since), the data directory set aside, and the process restarted
    /// in place on the empty one, as after a crash. Should that fail, the
    /// instance stays up without a core: it serves nothing, shown `damaged`.
    pub(super) fn core_damaged(&self, slot: &mut Option<Core>, e: &CoreError) {
        let cause = format!("a database failed while a Ready cycle wrote to it ({e})");
        self.set_aside_and_restart(slot, &cause);
    }

    /// The replicas' digests say this one's state is damaged (`integrity`):
    /// the same as a failed Ready cycle, under the core's lock.
    pub(super) fn damaged_while_running(&self, cause: &str) {
        let mut slot = self.core();
        if slot.is_none() {
            return;
        }
        self.set_aside_and_restart(&mut slot, cause);
    }

    fn set_aside_and_restart(&self, slot: &mut Option<Core>, cause: &str) {
        drop(slot.take());
        let note = match set_aside(&self.dir, cause) {
            Ok(note) => restart_in_place(note),
            Err(why) => format!("damaged: {cause}; it could not be moved aside ({why})"),
        };
        tracing::error!("{note}: this instance serves nothing until it is restarted");
        *self.damage.note.lock().expect("damage lock") = Some(note);
    }

    /// This instance holds the cluster's database again.
    pub(super) fn damage_healed(&self) {
        let mut note = self.damage.note.lock().expect("damage lock");
        if note.take().is_some() {
            let _ = std::fs::remove_file(self.dir.join(NOTE_FILE));
            tracing::info!("the damaged data directory is replaced: this instance holds the cluster's database again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_error_in_a_ready_cycle_is_damage_and_others_are_not() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let missing = conn.execute("DELETE FROM settings", []).unwrap_err();
        assert!(core_error_is_damage(&CoreError::Db(missing)));
        let snapshot = CoreError::Snapshot("a transfer failed".into());
        assert!(!core_error_is_damage(&snapshot));
    }

    #[test]
    fn a_damaged_directory_goes_beside_itself_under_a_free_name() {
        let dir = Path::new("/data/srv2");
        assert_eq!(
            aside_path(dir, 1700, |_| false),
            Path::new("/data/srv2.damaged-1700")
        );
        let taken = |p: &Path| !p.ends_with("srv2.damaged-1700-3");
        assert_eq!(
            aside_path(dir, 1700, taken),
            Path::new("/data/srv2.damaged-1700-3")
        );
    }

    #[test]
    fn a_damaged_directory_is_moved_aside_and_replaced_by_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.db"), vec![0x5a; 8192]).unwrap();
        let note = check_at_start(&dir).unwrap().expect("damaged");
        assert!(
            note.starts_with("damaged: state.db failed its check"),
            "{note}"
        );
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("srv2.damaged-")),
            "{names:?}"
        );
        assert!(!dir.join("state.db").exists());
        // The note survives a restart until the instance is a voter again.
        assert_eq!(check_at_start(&dir).unwrap(), Some(note));
    }
}
