//! What a data directory says without running a member on it: the facts
//! of its `state.db` (initialized, member, applied index, cluster id) and the
//! record of its last graceful stop (`stopped.json`). Written and read by the
//! server shell (`node::cluster`), read by `claro start-order` on the same
//! machine. Files only: no network, no decision.

use std::path::{Path, PathBuf};

use crate::proto::StopRecord;

/// What the data directory holds before the core is opened.
#[derive(Debug, Clone, Default)]
pub struct LocalFacts {
    pub initialized: bool,
    pub member: bool,
    pub applied_index: u64,
    pub cluster_id: Option<String>,
    /// The initial voters of a cluster being adopted (until the core runs).
    pub voters: Vec<String>,
}

pub fn read_facts(dir: &std::path::Path, id: u64) -> LocalFacts {
    let path = crate::consensus::state_db(dir);
    if !path.exists() {
        return LocalFacts::default();
    }
    match crate::state::StateMachine::open(&path, crate::state::Sync::Normal) {
        Ok(sm) => LocalFacts {
            initialized: sm.applied_index() > 0,
            member: sm.conf_state().voters.contains(&id) || sm.conf_state().learners.contains(&id),
            applied_index: sm.applied_index(),
            cluster_id: sm.cluster_id().map(str::to_string),
            voters: Vec::new(),
        },
        Err(_) => LocalFacts::default(),
    }
}

pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("stopped.json")
}

pub fn read_record(dir: &Path) -> Option<StopRecord> {
    let text = std::fs::read_to_string(record_path(dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("ignoring unreadable {}: {e}", record_path(dir).display());
            None
        }
    }
}

pub fn write_record(dir: &Path, rec: &StopRecord) {
    if let Err(e) = try_write_record(dir, rec) {
        tracing::error!("cannot write {}: {e}", record_path(dir).display());
    }
}

/// Writes the record through a temporary file that is renamed once whole;
/// if anything fails (a full disk, say), the temporary file is removed.
fn try_write_record(dir: &Path, rec: &StopRecord) -> std::io::Result<()> {
    let tmp = dir.join("stopped.json.tmp");
    let text = serde_json::to_string_pretty(rec).expect("record encodes");
    // Durable before the process exits: the record decides the next start.
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes()).and_then(|()| f.sync_all())
        })
        .and_then(|()| std::fs::rename(&tmp, record_path(dir)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.and_then(|()| crate::state::sync_dir(dir))
}

pub fn clear_record(dir: &Path) {
    let _ = std::fs::remove_file(record_path(dir));
}

/// Mode of a data directory: only the service's user may enter it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the databases in it (their `-wal` and `-shm` files take the
/// database's mode from SQLite).
pub const DB_MODE: u32 = 0o600;

/// Makes `dir` and the databases in it private to the service's user: they
/// hold every setting, script, job log and result, and the Raft log. Called
/// at every start (a directory made by an older version, or copied, is
/// tightened too) and once the databases exist.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    for name in ["raft.db", "state.db"] {
        for suffix in ["", "-wal", "-shm"] {
            let path = dir.join(format!("{name}{suffix}"));
            match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(DB_MODE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The file in a data directory that `serve` holds locked while it runs.
pub const LOCK_FILE: &str = "serve.lock";

/// Takes the lock of data directory `dir` (an exclusive `flock` on
/// `LOCK_FILE`, released when the file is closed or the process ends,
/// whatever way): `None` when another process holds it. `serve` holds it
/// for its life; `claro restore` takes it before touching the directory,
/// so it never writes under a running, frozen or starting server.
pub fn lock(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: flock on a descriptor this function owns.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if taken {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        true => Ok(None),
        false => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StopRecord {
        StopRecord {
            stopped_at_ms: 1,
            left: false,
            remaining: vec![],
            applied_index: 7,
            cluster_id: Some("c".into()),
        }
    }

    #[test]
    fn a_record_is_written_whole_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        try_write_record(tmp.path(), &record()).unwrap();
        assert_eq!(read_record(tmp.path()), Some(record()));
        assert!(!tmp.path().join("stopped.json.tmp").exists());
    }

    #[test]
    fn a_record_that_cannot_be_written_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory in the record's place: the rename fails, as a write
        // on a full disk would, after the temporary file was made.
        std::fs::create_dir_all(record_path(tmp.path()).join("x")).unwrap();
        assert!(try_write_record(tmp.path(), &record()).is_err());
        assert!(
            !tmp.path().join("stopped.json.tmp").exists(),
            "stopped.json.tmp left behind"
        );
    }

    #[test]
    fn a_data_directory_and_its_databases_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("state.db"), "x").unwrap();
        std::fs::write(dir.join("raft.db-wal"), "x").unwrap();
        make_private(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("state.db")), 0o600);
        assert_eq!(mode(&dir.join("raft.db-wal")), 0o600);
    }
}
