//! Disk full, handled like etcd's space alarm: the instance stays up, answers
//! status and reads, refuses writes with "no space left on <data dir>", and
//! resumes by itself once space is back.
//!
//! - Which errors mean "no space" ([`core_error_is_full`], [`io_is_full`],
//!   [`sqlite_is_full`], [`text_is_full`]): pure.
//! - [`SpaceAlarm`]: the alarm's state, its retry schedule and its bounded
//!   log (the first error, then at most one line a minute): pure, driven by
//!   the caller's `now_ms`.
//! - The shell (`impl Shared` below): a Ready cycle that failed for lack of
//!   space leaves raft-rs's `RawNode` in a state it must not be driven from
//!   (its Ready was not handled completely), so the core is *parked*: taken
//!   out of service as if the process had crashed there, and kept only to
//!   answer status and `--stale` reads from its state.db, which holds
//!   committed transactions only. Every `SPACE_RETRY_MS` the raft loop probes
//!   the data directory; once a probe write succeeds, the core is opened
//!   again from its files (`Core::open`, the same recovery as after a crash)
//!   and the alarm clears. Raft redoes the failed step itself: the
//!   coordinator sends the entries again, a proposer asks again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{now_ms, Shared};
use crate::config::Role;
use crate::consensus::{Core, CoreError};
use crate::proto::LocalInfo;

/// Time between two attempts to resume after a write failed for lack of space.
pub const SPACE_RETRY_MS: u64 = 1_000;
/// Least time between two log lines about a full disk (the first is logged
/// at once; the ones in between are counted in the next line).
pub const SPACE_LOG_EVERY_MS: u64 = 60_000;
/// What a probe writes and fsyncs before writes resume: the headroom a Ready
/// cycle's SQLite transactions need.
pub const SPACE_PROBE_BYTES: usize = 1024 * 1024;
/// The probe's file in the data directory (removed whatever happens).
const PROBE_FILE: &str = "space-probe.tmp";

/// An I/O error that says the file system (or the user's quota) is full.
pub fn io_is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// SQLite's SQLITE_FULL: a write found no space (SQLite maps ENOSPC to it).
pub fn sqlite_is_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// The same errors once made into text (by the paths that report strings):
/// SQLite's message for SQLITE_FULL, the OS's for ENOSPC and EDQUOT.
pub fn text_is_full(text: &str) -> bool {
    const MARKS: [&str; 3] = [
        "database or disk is full",
        "No space left on device",
        "Disk quota exceeded",
    ];
    MARKS.iter().any(|m| text.contains(m))
}

/// A failed Ready cycle that ran out of space (not a broken invariant).
pub fn core_error_is_full(e: &CoreError) -> bool {
    match e {
        CoreError::Db(e) => sqlite_is_full(e),
        CoreError::Crashed(_) => false,
        other => text_is_full(&other.to_string()),
    }
}

/// The space alarm of one data directory: raised by a write that found no
/// space, cleared by a retry that succeeded.
#[derive(Debug)]
pub struct SpaceAlarm {
    path: String,
    raised: Option<Raised>,
    last_log_ms: Option<u64>,
    /// Failures since the last line logged.
    unlogged: u64,
}

#[derive(Debug)]
struct Raised {
    since_ms: u64,
    next_try_ms: u64,
    /// Its first line was logged: its end is logged too.
    announced: bool,
}

impl SpaceAlarm {
    /// `path`: the data directory, as messages name it.
    pub fn new(path: &Path) -> SpaceAlarm {
        SpaceAlarm {
            path: path.display().to_string(),
            raised: None,
            last_log_ms: None,
            unlogged: 0,
        }
    }

    #[cfg(test)]
    fn is_raised(&self) -> bool {
        self.raised.is_some()
    }

    /// A write failed for lack of space (`cause`: the error). Returns the
    /// line to log as an error, when one is due.
    pub fn raise(&mut self, now_ms: u64, cause: &str) -> Option<String> {
        if self.raised.is_some() {
            return self.retry_failed(now_ms, cause);
        }
        let line = format!(
            "no space left on {}: writes refused until space is freed ({cause})",
            self.path
        );
        let line = self.limited(now_ms, line);
        self.raised = Some(Raised {
            since_ms: now_ms,
            next_try_ms: now_ms + SPACE_RETRY_MS,
            announced: line.is_some(),
        });
        line
    }

    /// Time for the next attempt to resume.
    pub fn retry_due(&self, now_ms: u64) -> bool {
        self.raised
            .as_ref()
            .is_some_and(|r| now_ms >= r.next_try_ms)
    }

    /// An attempt to resume failed; the next is due in `SPACE_RETRY_MS`.
    /// Returns the line to log, when one is due.
    pub fn retry_failed(&mut self, now_ms: u64, cause: &str) -> Option<String> {
        let r = self.raised.as_mut()?;
        r.next_try_ms = now_ms + SPACE_RETRY_MS;
        let secs = now_ms.saturating_sub(r.since_ms) / 1000;
        let line = format!(
            "still no space left on {} after {secs} s: writes refused ({cause})",
            self.path
        );
        self.limited(now_ms, line)
    }

    /// Space is back. Returns the line to log when the alarm's start was
    /// logged (so a flapping alarm logs at most two lines a minute).
    pub fn clear(&mut self, now_ms: u64) -> Option<String> {
        let r = self.raised.take()?;
        let secs = now_ms.saturating_sub(r.since_ms) as f64 / 1000.0;
        r.announced.then(|| {
            format!(
                "space is back on {}: writes resumed after {secs:.1} s",
                self.path
            )
        })
    }

    /// What `claro status` says while the alarm is raised.
    pub fn note(&self) -> Option<String> {
        self.raised
            .as_ref()
            .map(|_| format!("no space left on {}: writes refused", self.path))
    }

    /// The answer to a write (or a join) while the alarm is raised.
    pub fn refusal(&self) -> Option<String> {
        self.raised.as_ref().map(|_| {
            format!(
                "no space left on {}: writes are refused until space is freed there",
                self.path
            )
        })
    }

    /// The answer to a default read while the core is parked: the replica
    /// no longer follows the coordinator, so it may miss acknowledged writes.
    pub fn read_refusal(&self) -> Option<String> {
        self.raised.as_ref().map(|_| {
            format!(
                "no space left on {}: this replica cannot follow the coordinator until space is freed, so it may miss acknowledged writes; `--stale` reads it as it is",
                self.path
            )
        })
    }

    /// `line` if a line is due (the first, or a minute after the last one),
    /// with the count of the ones left out since.
    fn limited(&mut self, now_ms: u64, line: String) -> Option<String> {
        let due = self
            .last_log_ms
            .is_none_or(|t| now_ms >= t + SPACE_LOG_EVERY_MS);
        if !due {
            self.unlogged += 1;
            return None;
        }
        self.last_log_ms = Some(now_ms);
        match std::mem::take(&mut self.unlogged) {
            0 => Some(line),
            n => Some(format!("{line} ({n} more since the last such line)")),
        }
    }
}

/// Writes and fsyncs `SPACE_PROBE_BYTES` in `dir`; the file is removed
/// whether or not that worked.
pub fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; SPACE_PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// The instance's space alarm and the core it parked.
pub(crate) struct Space {
    alarm: Mutex<SpaceAlarm>,
    /// Locked after the core's lock, never before it.
    parked: Mutex<Option<Core>>,
}

impl Space {
    /// `dir`: the data directory (named in messages by its canonical path).
    pub fn new(dir: &Path) -> Space {
        let shown: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Space {
            alarm: Mutex::new(SpaceAlarm::new(&shown)),
            parked: Mutex::new(None),
        }
    }

    fn alarm(&self) -> MutexGuard<'_, SpaceAlarm> {
        self.alarm.lock().expect("space alarm lock")
    }

    fn parked(&self) -> MutexGuard<'_, Option<Core>> {
        self.parked.lock().expect("parked core lock")
    }
}

impl Shared {
    /// A write found no space (`cause`: the error): writes are refused until
    /// a retry succeeds.
    pub fn space_full(&self, cause: &str) {
        if let Some(line) = self.space.alarm().raise(now_ms(), cause) {
            tracing::error!("{line}");
        }
    }

    /// The message for a failed write to `what` in the data directory; a
    /// full disk raises the alarm.
    pub fn write_failed(&self, what: &Path, e: std::io::Error) -> String {
        let message = format!("{}: {e}", what.display());
        if io_is_full(&e) {
            self.space_full(&message);
        }
        message
    }

    /// Why writes (and joins) are refused now, if they are.
    pub fn space_refusal(&self) -> Option<String> {
        self.space.alarm().refusal()
    }

    /// The note `claro status` shows while the alarm is raised.
    pub fn space_note(&self) -> Option<String> {
        self.space.alarm().note()
    }

    /// Why a default read is refused now: the core is parked.
    pub fn space_read_refusal(&self) -> Option<String> {
        if self.space.parked().is_none() {
            return None;
        }
        self.space.alarm().read_refusal()
    }

    /// `f` on the running core, else on the parked one (its state.db holds
    /// only committed transactions: fit for status and `--stale` reads).
    pub fn with_replica<R>(&self, f: impl FnOnce(&Core) -> R) -> Option<R> {
        let guard = self.core();
        if let Some(core) = guard.as_ref() {
            return Some(f(core));
        }
        self.space.parked().as_ref().map(f)
    }

    /// Describes a parked core in `info`: its membership and indexes, and
    /// no coordinator (it follows none while parked, and never leads).
    pub fn describe_parked(&self, info: &mut LocalInfo) {
        let parked = self.space.parked();
        let Some(core) = parked.as_ref() else { return };
        info.cluster_id = core.state().cluster_id().map(str::to_string);
        info.initialized = core.applied_index() > 0;
        info.is_member = core.is_member();
        info.leader = None;
        info.term = core.term();
        info.commit_index = core.commit_index();
        info.applied_index = core.applied_index();
        let state = match () {
            _ if core.is_non_voter() => "non-voter",
            _ if core.is_learner(self.id) => "joining",
            _ if !core.is_voter(self.id) => "waiting",
            _ if self.me.role == Role::Witness => "witness",
            _ => "follower",
        };
        info.state = state.into();
    }

    /// Takes the core out of service after its Ready cycle failed for lack
    /// of space. `slot` is the core's place, locked by the caller since the
    /// failure: nobody has driven the core since.
    pub(super) fn park_core(&self, slot: &mut Option<Core>, e: &CoreError) {
        *self.space.parked() = slot.take();
        self.space_full(&e.to_string());
    }

    /// The raft loop's turn: when a retry is due, probes the data directory
    /// and, if space is back, reopens a parked core and clears the alarm.
    pub(super) fn space_retry(&self) {
        if !self.space.alarm().retry_due(now_ms()) {
            return;
        }
        let resumed = probe(&self.dir)
            .map_err(|e| format!("{}: {e}", self.dir.join(PROBE_FILE).display()))
            .and_then(|()| self.unpark());
        let mut alarm = self.space.alarm();
        match resumed {
            Ok(()) => {
                if let Some(line) = alarm.clear(now_ms()) {
                    tracing::info!("{line}");
                }
            }
            Err(cause) => {
                if let Some(line) = alarm.retry_failed(now_ms(), &cause) {
                    tracing::warn!("{line}");
                }
            }
        }
        drop(alarm);
        self.wake();
    }

    /// Opens the core again from its files, as after a crash, in place of
    /// the parked one.
    fn unpark(&self) -> Result<(), String> {
        if self.space.parked().is_none() {
            return Ok(());
        }
        let logger = crate::logging::raft_logger(&self.me.name);
        let mut core =
            Core::open(&self.dir, self.core_config(), &logger).map_err(|e| e.to_string())?;
        // The only voter need not wait for an election timeout.
        if core.conf_state().voters == [self.id] {
            core.campaign().map_err(|e| e.to_string())?;
        }
        let mut guard = self.core();
        *self.space.parked() = None;
        *guard = Some(core);
        tracing::info!("the consensus core is open again on its files");
        Ok(())
    }
}

/// (free to this user, total) bytes of the file system holding `path`.
pub(crate) fn filesystem_bytes(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is valid; statvfs only writes into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    Some((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm() -> SpaceAlarm {
        SpaceAlarm::new(Path::new("/data/srv1"))
    }

    #[test]
    fn enospc_and_quota_and_sqlite_full_are_disk_full_and_others_are_not() {
        assert!(io_is_full(&std::io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(io_is_full(&std::io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!io_is_full(&std::io::Error::from_raw_os_error(13))); // EACCES
        assert!(!io_is_full(&std::io::Error::from_raw_os_error(5))); // EIO
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let ioerr = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        );
        assert!(sqlite_is_full(&full));
        assert!(!sqlite_is_full(&ioerr));
        assert!(core_error_is_full(&CoreError::Db(full)));
        assert!(!core_error_is_full(&CoreError::Db(ioerr)));
        let os = std::io::Error::from_raw_os_error(28).to_string();
        assert!(core_error_is_full(&CoreError::Snapshot(format!(
            "install snapshot: {os}"
        ))));
        assert!(!core_error_is_full(&CoreError::Snapshot(
            "checksum mismatch".into()
        )));
        assert!(!core_error_is_full(&CoreError::Crashed(
            crate::consensus::CrashPoint::Sent
        )));
    }

    /// A real SQLite database that may not grow (`max_page_count`) fails a
    /// write with the error a full disk gives.
    #[test]
    fn a_real_sqlite_write_without_room_is_classified_as_disk_full() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(tmp.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB); PRAGMA max_page_count = 3;")
            .unwrap();
        let err = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap_err();
        assert!(sqlite_is_full(&err), "{err:?}");
        assert!(text_is_full(&err.to_string()), "{err}");
    }

    #[test]
    fn the_first_error_is_logged_then_at_most_one_line_a_minute_with_a_count() {
        let mut a = alarm();
        let first = a.raise(1_000, "database or disk is full").unwrap();
        assert!(first.contains("no space left on /data/srv1"), "{first}");
        assert!(a.is_raised());
        assert_eq!(a.raise(2_000, "again"), None);
        assert_eq!(a.retry_failed(3_000, "probe"), None);
        assert_eq!(a.retry_failed(60_999, "probe"), None);
        let later = a.retry_failed(61_000, "probe").unwrap();
        assert!(later.contains("3 more since the last such line"), "{later}");
        assert!(later.contains("after 60 s"), "{later}");
        assert_eq!(a.retry_failed(62_000, "probe"), None);
    }

    #[test]
    fn retries_are_due_every_retry_interval_while_raised() {
        let mut a = alarm();
        assert!(!a.retry_due(0), "nothing to retry before a failure");
        a.raise(10_000, "full");
        assert!(!a.retry_due(10_000 + SPACE_RETRY_MS - 1));
        assert!(a.retry_due(10_000 + SPACE_RETRY_MS));
        a.retry_failed(11_500, "full");
        assert!(!a.retry_due(11_500 + SPACE_RETRY_MS - 1));
        assert!(a.retry_due(11_500 + SPACE_RETRY_MS));
        a.clear(13_000);
        assert!(!a.retry_due(100_000), "nothing to retry once cleared");
    }

    #[test]
    fn the_note_and_refusals_name_the_path_only_while_raised() {
        let mut a = alarm();
        assert_eq!(
            (a.note(), a.refusal(), a.read_refusal()),
            (None, None, None)
        );
        a.raise(0, "full");
        assert_eq!(
            a.note().unwrap(),
            "no space left on /data/srv1: writes refused"
        );
        assert!(a
            .refusal()
            .unwrap()
            .starts_with("no space left on /data/srv1"));
        assert!(a.read_refusal().unwrap().contains("--stale"));
        let line = a.clear(2_500).unwrap();
        assert!(line.contains("resumed after 2.5 s"), "{line}");
        assert_eq!((a.note(), a.refusal()), (None, None));
        assert_eq!(a.clear(3_000), None, "cleared twice");
    }

    #[test]
    fn a_flapping_alarm_logs_at_most_its_first_start_and_end_a_minute() {
        let mut a = alarm();
        assert!(a.raise(0, "full").is_some());
        assert!(a.clear(1_000).is_some());
        // Full again within the minute: counted, and its end is not logged.
        assert_eq!(a.raise(2_000, "full"), None);
        assert!(a.is_raised(), "a silent alarm is still raised");
        assert_eq!(a.clear(3_000), None);
        let line = a.raise(60_000, "full").unwrap();
        assert!(line.contains("1 more since"), "{line}");
        assert!(a.clear(61_000).is_some());
    }

    #[test]
    fn a_probe_leaves_no_file_behind() {
        let tmp = tempfile::tempdir().unwrap();
        probe(tmp.path()).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let err = probe(&tmp.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
