//! The Raft log, hard state and snapshot metadata in `raft.db` (SQLite).
//!
//! Implements `raft::Storage`. Writes happen only through [`LogStore::persist`],
//! [`LogStore::apply_snapshot`] and [`LogStore::compact`], each one SQLite
//! transaction, so one Ready cycle costs one fsync. The conf state is not stored
//! here: it belongs to the state machine (`state.db`), written in the same
//! transaction as the applied index, and is handed in by the driver.

use std::cell::{Cell, RefCell};
use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rusqlite::{params, Connection, OptionalExtension};

/// How the log database is synced. `Full` makes every write durable
/// (production): SQLite commits to its write-ahead log without waiting
/// (`synchronous = NORMAL`, which keeps the file whole after a crash), and
/// the log file is fsynced by [`LogStore::wal`]'s handle, which the driver
/// does outside the core's lock for appends, and `LogStore` itself does at
/// once for its rarer writes. `Off` leaves it to the OS (the simulation,
/// where a "crash" is a dropped struct and the file is still whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Full,
    Off,
}

pub struct LogStore {
    conn: Connection,
    sync: Sync,
    /// The write-ahead log file, opened at the first sync: fsyncing it makes
    /// every transaction committed before durable.
    wal: Option<std::sync::Arc<std::fs::File>>,
    path: std::path::PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into a snapshot: the log starts after it.
    snapshot_meta: SnapshotMetadata,
    last_index: u64,
    /// A snapshot prepared by the driver, handed out by `Storage::snapshot`.
    prepared: RefCell<Option<Snapshot>>,
    /// Set when raft asked for a snapshot we did not have ready.
    snapshot_wanted: Cell<bool>,
}

/// A failed sync of the log, as SQLite itself reports one (it did, with
/// `synchronous = FULL`): out of space is `SQLITE_FULL`, which parks the
/// core until space is back; any other failure `SQLITE_IOERR_FSYNC`.
pub fn sync_error(e: std::io::Error) -> rusqlite::Error {
    let code = match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => rusqlite::ffi::SQLITE_FULL,
        _ => rusqlite::ffi::SQLITE_IOERR_FSYNC,
    };
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        Some(format!("syncing the raft log: {e}")),
    )
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl LogStore {
    pub fn open(path: &Path, sync: Sync) -> rusqlite::Result<LogStore> {
        let conn = Connection::open(path)?;
        conn.set_prepared_statement_cache_capacity(crate::state::STATEMENTS_CACHED_MAX);
        conn.busy_timeout(std::time::Duration::from_millis(
            crate::state::DB_BUSY_MS_MAX,
        ))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let level = if sync == Sync::Full { "NORMAL" } else { "OFF" };
        conn.pragma_update(None, "synchronous", level)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )?;
        let hard_state: HardState = read_proto(&conn, "hard_state")?.unwrap_or_default();
        let snapshot_meta: SnapshotMetadata =
            read_proto(&conn, "snapshot_meta")?.unwrap_or_default();
        let last: Option<u64> = conn.query_row("SELECT MAX(idx) FROM entries", [], |r| r.get(0))?;
        let last_index = last.unwrap_or(snapshot_meta.index);
        let mut store = LogStore {
            conn,
            sync,
            wal: None,
            path: path.to_path_buf(),
            hard_state,
            conf_state: ConfState::default(),
            snapshot_meta,
            last_index,
            prepared: RefCell::new(None),
            snapshot_wanted: Cell::new(false),
        };
        // What an earlier connection wrote but did not sync (a core
        // reopened while the old one is still open: nothing checkpointed)
        // must not be taken for persisted: raft counts the whole log so.
        store.sync_now()?;
        Ok(store)
    }

    /// What makes the log's committed writes durable: its write-ahead log
    /// file, to fsync (`None` with `Sync::Off`). The file stays the same
    /// while the connection is open (SQLite rewrites it in place after a
    /// checkpoint, and removes it only when the last connection closes).
    pub fn wal(&mut self) -> std::io::Result<Option<std::sync::Arc<std::fs::File>>> {
        if self.sync == Sync::Off {
            return Ok(None);
        }
        if self.wal.is_none() {
            let mut name = self.path.file_name().unwrap_or_default().to_os_string();
            name.push("-wal");
            let file = std::fs::File::open(self.path.with_file_name(name))?;
            // The file's own name must be durable too, once.
            if let Some(dir) = self.path.parent() {
                crate::state::sync_dir(dir)?;
            }
            self.wal = Some(std::sync::Arc::new(file));
        }
        Ok(self.wal.clone())
    }

    /// Makes every committed write durable now.
    pub fn sync_now(&mut self) -> rusqlite::Result<()> {
        match self.wal().map_err(sync_error)? {
            Some(wal) => wal.sync_data().map_err(sync_error),
            None => Ok(()),
        }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The driver owns the conf state (it lives in state.db); raft reads it at start.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Entries applied to state.db are committed even if the hard state written
    /// with them is older; raft requires applied <= commit at start.
    pub fn raise_commit(&mut self, applied: u64) {
        assert!(applied <= self.last_index.max(self.snapshot_meta.index));
        if self.hard_state.commit < applied {
            self.hard_state.commit = applied;
        }
    }

    /// Appends `entries` (replacing any conflicting suffix) and the hard state,
    /// in one transaction, durable once the log is synced ([`LogStore::wal`]):
    /// the core sends no message that depends on them before.
    ///
    /// A hard state whose only change is the commit index is not worth an
    /// fsync: raft may restart with an older commit index (it relearns it, and
    /// `raise_commit` lifts it to the applied index). Such a change is kept in
    /// memory and written with the next transaction. Term and vote changes are
    /// always written at once: forgetting a vote could elect two leaders.
    /// Returns whether it wrote anything (a commit-index-only hard state
    /// is kept in memory: nothing to sync).
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> rusqlite::Result<bool> {
        let mut must_write = !entries.is_empty();
        if let Some(hs) = hs {
            must_write |= hs.term != self.hard_state.term || hs.vote != self.hard_state.vote;
            self.hard_state = hs.clone();
        }
        if !must_write {
            return Ok(false);
        }
        let hs = Some(self.hard_state.clone());
        let hs = hs.as_ref();
        let tx = crate::state::write_tx(&mut self.conn)?;
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.snapshot_meta.index,
                "append below the snapshot"
            );
            assert!(first.index <= self.last_index + 1, "gap in the log");
            tx.execute("DELETE FROM entries WHERE idx >= ?1", params![first.index])?;
            let mut insert =
                tx.prepare_cached("INSERT INTO entries (idx, term, entry) VALUES (?1, ?2, ?3)")?;
            for e in entries {
                let bytes = e.write_to_bytes().expect("entry encodes");
                insert.execute(params![e.index, e.term, bytes])?;
            }
        }
        if let Some(hs) = hs {
            write_proto(&tx, "hard_state", hs)?;
        }
        tx.commit()?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        Ok(true)
    }

    /// Resets the log to start after `meta` (a snapshot was installed).
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> rusqlite::Result<()> {
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let tx = crate::state::write_tx(&mut self.conn)?;
        tx.execute("DELETE FROM entries", [])?;
        write_proto(&tx, "snapshot_meta", meta)?;
        write_proto(&tx, "hard_state", &hs)?;
        tx.commit()?;
        // state.db already holds the snapshot: the log must not fall back
        // behind it.
        self.sync_now()?;
        self.hard_state = hs;
        self.snapshot_meta = meta.clone();
        self.last_index = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.prepared.replace(None);
        Ok(())
    }

    /// Drops entries up to and including `index` (already applied and captured by
    /// a durable state.db); keeps their last term for log matching.
    pub fn compact(&mut self, index: u64) -> rusqlite::Result<()> {
        if index <= self.snapshot_meta.index {
            return Ok(());
        }
        assert!(index <= self.last_index, "compact beyond the log");
        let term = self.term(index).expect("term of a compactable index");
        let mut meta = self.snapshot_meta.clone();
        meta.index = index;
        meta.term = term;
        let tx = crate::state::write_tx(&mut self.conn)?;
        tx.execute("DELETE FROM entries WHERE idx <= ?1", params![index])?;
        write_proto(&tx, "snapshot_meta", &meta)?;
        tx.commit()?;
        self.snapshot_meta = meta;
        Ok(())
    }

    /// Offers a snapshot to raft (made by the driver from state.db).
    pub fn offer_snapshot(&self, snap: Snapshot) {
        self.prepared.replace(Some(snap));
        self.snapshot_wanted.set(false);
    }

    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    pub fn first(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    pub fn last(&self) -> u64 {
        self.last_index
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index + 1, "entries beyond the log");
        let size_max = max_size.into().unwrap_or(u64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT entry FROM entries WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
            .map_err(store_err)?;
        let mut rows = stmt.query(params![low, high]).map_err(store_err)?;
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size_bytes = 0u64;
        while let Some(row) = rows.next().map_err(store_err)? {
            let bytes: Vec<u8> = row.get(0).map_err(store_err)?;
            size_bytes += bytes.len() as u64;
            // raft requires at least one entry even when it alone exceeds the limit.
            if !out.is_empty() && size_bytes > size_max {
                break;
            }
            out.push(Entry::parse_from_bytes(&bytes).map_err(store_err)?);
        }
        assert!(
            !out.is_empty() || low == high,
            "missing entries {low}..{high}"
        );
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT term FROM entries WHERE idx = ?1")
            .map_err(store_err)?;
        let term: Option<u64> = stmt
            .query_row(params![idx], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        term.ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if let Some(snap) = self.prepared.borrow().as_ref() {
            let meta = snap.get_metadata();
            // A snapshot older than the log's start would leave a gap, and one
            // taken before `to` was added is refused by `to` (not in its conf state).
            let cs = meta.get_conf_state();
            let names_to = cs.voters.contains(&to) || cs.learners.contains(&to);
            if meta.index >= request_index && meta.index >= self.snapshot_meta.index && names_to {
                return Ok(snap.clone());
            }
        }
        self.snapshot_wanted.set(true);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

fn read_proto<M: protobuf::Message>(conn: &Connection, key: &str) -> rusqlite::Result<Option<M>> {
    let bytes: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(bytes.map(|b| M::parse_from_bytes(&b).expect("stored protobuf decodes")))
}

fn write_proto<M: protobuf::Message>(conn: &Connection, key: &str, m: &M) -> rusqlite::Result<()> {
    let bytes = m.write_to_bytes().expect("protobuf encodes");
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, bytes],
    )?;
    Ok(())
}
