//! The check of a data directory before its core is opened: SQLite's
//! `quick_check` on `raft.db` and `state.db` (bounded in time), and
//! `state.db`'s meta readable. A damaged directory is never served: the
//! shell (`node::damage`) moves it aside and starts empty, to be re-admitted
//! and sent the database.
//!
//! A flipped byte inside a value leaves the b-tree well formed (SQLite keeps
//! no page checksums): it is found here only when nothing was applied since
//! the last digest checkpoint (`StateMachine::verify_at_rest`), otherwise at
//! the next checkpoint, by comparison with the other replicas (`integrity`).
//! A `-wal` file removed while the database was not checkpointed leaves a
//! consistent older database: the re-admission of an older copy covers that.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest time `quick_check` may take on one file; a larger database is
/// checked for that long only (its verdict is `Intact` with `partial` set).
pub const CHECK_MS_MAX: u64 = 5_000;
/// Problems `quick_check` reports before it stops.
const CHECK_ERRORS_MAX: u32 = 10;

/// What the check of a file or a data directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong was found; `partial`: the time bound cut the check short.
    Intact { partial: bool },
    /// `file` is damaged; `what` says how (SQLite's words).
    Damaged { file: PathBuf, what: String },
}

impl Verdict {
    pub fn is_damaged(&self) -> bool {
        matches!(self, Verdict::Damaged { .. })
    }
}

/// Checks both databases of `dir` (those that exist: a fresh directory has
/// none). `raft.db` first: either being damaged condemns the directory.
pub fn check_dir(dir: &Path, wait_ms: u64) -> Verdict {
    let mut partial = false;
    for file in [super::raft_db(dir), super::state_db(dir)] {
        if !file.exists() {
            continue;
        }
        match check_file(&file, wait_ms) {
            Verdict::Intact { partial: p } => partial |= p,
            damaged => return damaged,
        }
    }
    if super::state_db(dir).exists() {
        let state_db = super::state_db(dir);
        if let Err(e) = crate::state::StateMachine::read_meta_only(&state_db) {
            return damaged(&state_db, format!("its meta is unreadable: {e}"));
        }
        match crate::state::StateMachine::verify_at_rest(&state_db) {
            Ok(None) => {}
            Ok(Some(differs)) => return damaged(&state_db, differs),
            Err(e) => return damaged(&state_db, format!("its digest cannot be taken: {e}")),
        }
    }
    Verdict::Intact { partial }
}

/// `PRAGMA quick_check` on one SQLite file, for at most `wait_ms`.
pub fn check_file(path: &Path, wait_ms: u64) -> Verdict {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match rusqlite::Connection::open_with_flags(path, flags) {
        Ok(c) => c,
        Err(e) => return damaged(path, format!("it cannot be opened: {e}")),
    };
    // The check stops itself once `wait_ms` is over: SQLite asks the
    // progress handler every 1,000 steps. (An interrupt from a watchdog
    // thread was lost when it came before the check's statement started,
    // and the check then ran unbounded.)
    let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
    conn.progress_handler(1000, Some(move || std::time::Instant::now() >= deadline));
    let found = quick_check(&conn);
    conn.progress_handler(1000, None::<fn() -> bool>);
    let interrupted = |e: &rusqlite::Error| {
        e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
    };
    match found {
        Err(e) if interrupted(&e) => Verdict::Intact { partial: true },
        Ok(problems) if problems.is_empty() => Verdict::Intact { partial: false },
        Ok(problems) => damaged(path, format!("quick_check: {}", problems.join("; "))),
        Err(e) => damaged(path, format!("quick_check failed: {e}")),
    }
}

/// The problems `quick_check` lists (none when it answers "ok").
fn quick_check(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA quick_check({CHECK_ERRORS_MAX})"))?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let lines = rows.collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(lines.into_iter().filter(|l| l != "ok").collect())
}

fn damaged(file: &Path, what: String) -> Verdict {
    Verdict::Damaged {
        file: file.to_path_buf(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Change, Command, StateMachine, Sync};

    /// A state.db with `n` settings, checkpointed into the main file.
    fn filled_db(dir: &Path, n: usize) -> PathBuf {
        let path = dir.join("state.db");
        let mut sm = StateMachine::open(&path, Sync::Normal).unwrap();
        let cmds: Vec<Command> = (0..n)
            .map(|i| Command::Put {
                key: format!("key-{i:06}"),
                value: vec![b'v'; 300],
            })
            .collect();
        let batch: Vec<_> = (1..)
            .zip(&cmds)
            .map(|(i, c)| (i, 1, Change::Command(c)))
            .collect();
        sm.apply(&batch).unwrap();
        drop(sm);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        path
    }

    #[test]
    fn a_good_file_is_intact() {
        let tmp = tempfile::tempdir().unwrap();
        filled_db(tmp.path(), 200);
        assert_eq!(
            check_dir(tmp.path(), CHECK_MS_MAX),
            Verdict::Intact { partial: false }
        );
    }

    #[test]
    fn an_empty_directory_is_intact() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!check_dir(tmp.path(), CHECK_MS_MAX).is_damaged());
    }

    #[test]
    fn a_truncated_file_is_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let path = filled_db(tmp.path(), 200);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        let v = check_dir(tmp.path(), CHECK_MS_MAX);
        assert!(v.is_damaged(), "{v:?}");
        let Verdict::Damaged { file, .. } = v else {
            unreachable!()
        };
        assert_eq!(file, path);
    }

    #[test]
    fn flipped_bytes_in_the_middle_are_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let path = filled_db(tmp.path(), 200);
        let mut bytes = std::fs::read(&path).unwrap();
        // The start of the middle page: its b-tree page header and cell
        // pointers, which quick_check reads.
        let page = 4096;
        let at = (bytes.len() / 2) / page * page;
        for b in &mut bytes[at..at + 16] {
            *b = !*b;
        }
        std::fs::write(&path, &bytes).unwrap();
        let v = check_dir(tmp.path(), CHECK_MS_MAX);
        assert!(v.is_damaged(), "{v:?}");
    }

    #[test]
    fn garbage_instead_of_a_database_is_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("raft.db"), vec![0x5a; 8192]).unwrap();
        let v = check_dir(tmp.path(), CHECK_MS_MAX);
        assert!(v.is_damaged(), "{v:?}");
    }

    #[test]
    fn the_time_bound_cuts_a_check_short_without_calling_it_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        // About 30 MB: its check takes far longer than 1 ms.
        filled_db(tmp.path(), 100_000);
        assert_eq!(
            check_file(&tmp.path().join("state.db"), 1),
            Verdict::Intact { partial: true }
        );
    }
}
