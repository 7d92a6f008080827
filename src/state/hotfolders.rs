//! The hotfolders table of `state.db` (definitions, a cluster setting) and
//! the queries of the hotfolder loop: which inputs jobs own, which final
//! jobs wait to be published, and the counts `claro hotfolder list` shows.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::work::hotfolder::Hotfolder;
use crate::work::jobs::Job;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hotfolders (name TEXT PRIMARY KEY, def BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS hotfolder_files (name TEXT PRIMARY KEY, waiting INTEGER NOT NULL);
";

fn encode(def: &Hotfolder) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(def, &mut bytes).expect("a hotfolder encodes");
    bytes
}

fn decode(bytes: &[u8]) -> rusqlite::Result<Hotfolder> {
    ciborium::from_reader(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// Adds or replaces a definition (all of it, its pause state included).
pub fn put(tx: &Transaction<'_>, def: &Hotfolder) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO hotfolders (name, def) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET def = excluded.def",
    )?
    .execute(params![def.name, encode(def)])?;
    Ok(())
}

pub fn remove(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM hotfolders WHERE name = ?1")?
        .execute(params![name])?;
    tx.prepare_cached("DELETE FROM hotfolder_files WHERE name = ?1")?
        .execute(params![name])?;
    Ok(())
}

/// Records, per hotfolder, the files the coordinator's last scan found in
/// `in/` that no job owns yet (still settling, or the hotfolder paused): all
/// of them at once, so a hotfolder left out has none. Names of hotfolders
/// that no longer exist are passed over.
pub fn set_files_waiting(tx: &Transaction<'_>, counts: &[(String, u64)]) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM hotfolder_files")?
        .execute([])?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO hotfolder_files (name, waiting)
         SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM hotfolders WHERE name = ?1)
         ON CONFLICT(name) DO UPDATE SET waiting = excluded.waiting",
    )?;
    for (name, n) in counts.iter().filter(|(_, n)| *n > 0) {
        stmt.execute(params![name, n])?;
    }
    Ok(())
}

/// The files waiting in `in/` without a job, as last recorded, by hotfolder
/// (only those with some), ordered by name.
pub fn files_waiting(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, waiting FROM hotfolder_files ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

pub fn set_paused(tx: &Transaction<'_>, name: &str, paused: bool) -> rusqlite::Result<()> {
    if let Some(mut def) = get(tx, name)? {
        def.paused = paused;
        put(tx, &def)?;
    }
    Ok(())
}

/// The definitions of `ClaroServers.conf`, once per cluster: the first
/// seed applies (adding those not defined yet), later ones change nothing,
/// so that a hotfolder removed by a user does not come back.
pub fn seed(tx: &Transaction<'_>, defs: &[Hotfolder]) -> rusqlite::Result<()> {
    let seeded = tx
        .prepare_cached("SELECT 1 FROM meta WHERE key = 'hotfolders_seeded'")?
        .exists([])?;
    if seeded {
        return Ok(());
    }
    for def in defs {
        if get(tx, &def.name)?.is_none() {
            put(tx, def)?;
        }
    }
    tx.prepare_cached("INSERT INTO meta (key, value) VALUES ('hotfolders_seeded', 1)")?
        .execute([])?;
    Ok(())
}

/// Whether the config's hotfolders were seeded into this cluster.
pub fn seeded(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM meta WHERE key = 'hotfolders_seeded'")?
        .exists([])
}

pub fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<Hotfolder>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT def FROM hotfolders WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?;
    bytes.map(|b| decode(&b)).transpose()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Hotfolder>> {
    let mut stmt = conn.prepare_cached("SELECT def FROM hotfolders ORDER BY name")?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|b| b.and_then(|b| decode(&b))).collect()
}

/// Inputs of `hotfolder` that a job owns: not yet final, or final and not
/// yet published (its file may still be in `in/`). A scan submits none of
/// these again.
pub fn owned_inputs(conn: &Connection, hotfolder: &str) -> rusqlite::Result<HashSet<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT input FROM jobs INDEXED BY jobs_unpublished WHERE hotfolder = ?1 AND published = 0",
    )?;
    let rows = stmt.query_map(params![hotfolder], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// The jobs that own `input` of `hotfolder` (as in `owned_inputs`), at
/// most `limit`: the claims a writer's next piece may meet.
pub fn owners_of(
    conn: &Connection,
    hotfolder: &str,
    input: &str,
    limit: u32,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM jobs INDEXED BY jobs_unpublished
         WHERE hotfolder = ?1 AND input = ?2 AND published = 0 LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![hotfolder, input, limit], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// Final hotfolder jobs whose files are not published yet, oldest first,
/// after the key `(finished_ms, id)` when given: the publisher pages
/// through them, so jobs it cannot publish (a read-only share) do not
/// starve the others.
pub fn unpublished(
    conn: &Connection,
    after: Option<&(u64, String)>,
    limit: u32,
) -> rusqlite::Result<Vec<Job>> {
    let sql = format!(
        "SELECT {} FROM jobs INDEXED BY jobs_unpublished
         WHERE published = 0 AND state IN ('succeeded', 'failed', 'cancelled')
           AND (finished_ms, id) > (?2, ?3)
         ORDER BY finished_ms, id LIMIT ?1",
        super::jobs::COLUMNS
    );
    let (finished_ms, id) = after.map_or((-1, ""), |(ms, id)| (*ms as i64, id.as_str()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![limit, finished_ms, id], super::jobs::job_of)?;
    rows.collect()
}

/// What the working area may do with job `id`'s folder: `None` while the
/// job is not published yet (its attempts own the folder) and while this
/// replica does not know the job (it may lag behind the job's submission),
/// `Some(None)` when the job was purged (recorded by the purge),
/// `Some(Some(job))` once published.
pub fn settled(conn: &Connection, id: &str) -> rusqlite::Result<Option<Option<Job>>> {
    let published: Option<Option<i64>> = conn
        .prepare_cached("SELECT published FROM jobs WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    match published {
        None if super::jobs::purged(conn, id)? => Ok(Some(None)),
        None => Ok(None),
        Some(Some(1)) => Ok(super::jobs::job(conn, id)?.map(Some)),
        Some(_) => Ok(None),
    }
}

/// Records that these jobs' files are published (only final ones: a job
/// retried meanwhile has its file to process again).
pub fn published(tx: &Transaction<'_>, ids: &[String]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE jobs SET published = 1
         WHERE id = ?1 AND published = 0 AND state IN ('succeeded', 'failed', 'cancelled')",
    )?;
    for id in ids {
        stmt.execute(params![id])?;
    }
    Ok(())
}

/// What `claro hotfolder list` shows of one hotfolder. `waiting` counts
/// the queued jobs and the files in `in/` that have no job yet (as of the
/// coordinator's last scan: settling, or held by a pause).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub waiting: u64,
    /// When the oldest of its jobs not started yet was submitted.
    pub oldest_waiting_ms: Option<u64>,
    pub in_progress: u64,
    pub done_last_hour: u64,
    pub failed_last_hour: u64,
}

impl Counts {
    /// How long the oldest waiting file has waited at `now_ms`, in seconds
    /// (`None`: none waits): what the stalled-hotfolder alert and metric read.
    pub fn waited_s(&self, now_ms: u64) -> Option<u64> {
        self.oldest_waiting_ms
            .map(|at| now_ms.saturating_sub(at) / 1000)
    }
}

pub fn counts(conn: &Connection, name: &str, since_ms: u64) -> rusqlite::Result<Counts> {
    let files_waiting = conn
        .prepare_cached("SELECT waiting FROM hotfolder_files WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let mut c = Counts {
        waiting: files_waiting,
        ..Counts::default()
    };
    let mut stmt = conn.prepare_cached(
        "SELECT state, count(*), min(created_ms) FROM jobs INDEXED BY jobs_unpublished
         WHERE hotfolder = ?1 AND published = 0 GROUP BY state",
    )?;
    let mut rows = stmt.query(params![name])?;
    while let Some(r) = rows.next()? {
        let (state, n): (String, u64) = (r.get(0)?, r.get(1)?);
        match state.as_str() {
            "queued" => {
                c.waiting += n;
                c.oldest_waiting_ms = r.get(2)?;
            }
            "assigned" | "running" => c.in_progress += n,
            // Final, its file still being moved.
            _ => c.in_progress += n,
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT state, count(*) FROM jobs INDEXED BY jobs_hotfolder_final
         WHERE hotfolder = ?1 AND finished_ms >= ?2 AND published = 1 GROUP BY state",
    )?;
    let mut rows = stmt.query(params![name, since_ms])?;
    while let Some(r) = rows.next()? {
        let (state, n): (String, u64) = (r.get(0)?, r.get(1)?);
        match state.as_str() {
            "succeeded" => c.done_last_hour += n,
            "failed" | "cancelled" => c.failed_last_hour += n,
            _ => {}
        }
    }
    Ok(c)
}

pub fn digest(conn: &Connection, field: &mut dyn FnMut(&[u8])) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("SELECT name, def FROM hotfolders ORDER BY name")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (name, def): (String, Vec<u8>) = (row.get(0)?, row.get(1)?);
        field(name.as_bytes());
        field(&def);
    }
    for (name, waiting) in files_waiting(conn)? {
        field(name.as_bytes());
        field(&waiting.to_be_bytes());
    }
    let mut stmt = conn.prepare_cached("SELECT seq, id FROM purged_hotfolder_jobs ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (seq, id): (i64, String) = (row.get(0)?, row.get(1)?);
        field(&seq.to_be_bytes());
        field(id.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::state::{Change, Command, StateMachine, Sync};
    use crate::work::hotfolder::{Action, Hotfolder};

    #[test]
    fn files_waiting_are_replaced_whole_counted_as_waiting_and_in_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(&dir.path().join("state.db"), Sync::Off).unwrap();
        let mut index = 0;
        let mut apply = |sm: &mut StateMachine, cmd: Command| {
            index += 1;
            sm.apply(&[(index, 1, Change::Command(&cmd))]).unwrap();
        };
        for name in ["a", "b"] {
            let def = Hotfolder::new(name, Action::Script { code: "1".into() });
            apply(&mut sm, Command::HotfolderPut { def });
        }
        let before = sm.digest().unwrap();
        let counts = vec![("a".into(), 3), ("b".into(), 0), ("gone".into(), 9)];
        apply(&mut sm, Command::HotfolderFilesWaiting { counts });
        // Zero and unknown hotfolders are not kept.
        assert_eq!(
            super::files_waiting(sm.conn()).unwrap(),
            vec![("a".into(), 3)]
        );
        assert_eq!(super::counts(sm.conn(), "a", 0).unwrap().waiting, 3);
        assert_ne!(sm.digest().unwrap(), before);
        let counts = vec![("b".into(), 2)];
        apply(&mut sm, Command::HotfolderFilesWaiting { counts });
        assert_eq!(super::counts(sm.conn(), "a", 0).unwrap().waiting, 0);
        apply(&mut sm, Command::HotfolderRemove { name: "b".into() });
        assert!(super::files_waiting(sm.conn()).unwrap().is_empty());
    }
}
