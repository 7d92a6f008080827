//! A damaged data directory is never served: it is moved aside (kept for the
//! operator, `<name>.damaged-<unix seconds>` beside it) and the instance
//! starts on an empty one, a new incarnation that the coordinator re-admits
//! and sends the database (`node::rejoin`).
//!
//! - At start, before anything opens the directory: `consensus::check`.
//! - While running, a SQLite error in a Ready cycle: the core is parked
//!   (as for a full disk), the directory moved aside and the process
//!   restarted in place (`exec`), as after a crash but on an empty directory.
//!
//! The empty directory holds `damaged.note` until the instance is a voter
//! again, so that `claro status` shows it `damaged` with the reason, across
//! restarts too.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{now_ms, Shared};
use crate::consensus::check::{self, Verdict, CHECK_MS_MAX};

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

fn read_note(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(NOTE_FILE)).ok()
}

/// The damage note of this instance, shown until it is a voter again.
pub(crate) struct Damage {
    note: Mutex<Option<String>>,
}

impl Damage {
    pub fn new(note: Option<String>) -> Damage {
        Damage {
            note: Mutex::new(note),
        }
    }
}

impl Shared {
    /// The note `claro status` shows while this instance is `damaged`.
    pub fn damage_note(&self) -> Option<String> {
        self.damage.note.lock().expect("damage lock").clone()
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
