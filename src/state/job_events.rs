//! A feed of job state changes on this replica, for the HTTP event stream.
//!
//! Temp triggers (per connection, never in the database file, the digest or
//! a snapshot) record every inserted job and every change of a job's state
//! or instance in `temp.job_events`, inside the apply's own transaction, so
//! the feed holds exactly what was applied, in order, also for the changes
//! no command names one by one (a release of an instance's jobs, a purge).
//! The feed restarts at 1 whenever the connection is opened anew (a start,
//! an installed snapshot); readers see a lower last sequence and resync.

use rusqlite::{params, Connection};

/// Changes kept; older ones are trimmed after each apply.
pub const JOB_EVENTS_KEPT: u64 = 10_000;

pub(super) const SCHEMA_TEMP: &str = "
CREATE TEMP TABLE IF NOT EXISTS job_events (
  seq INTEGER PRIMARY KEY, id TEXT NOT NULL, state TEXT NOT NULL, instance TEXT);
CREATE TEMP TRIGGER IF NOT EXISTS job_events_insert AFTER INSERT ON main.jobs BEGIN
  INSERT INTO job_events (id, state, instance) VALUES (new.id, new.state, new.instance);
END;
CREATE TEMP TRIGGER IF NOT EXISTS job_events_update AFTER UPDATE OF state, instance ON main.jobs
  WHEN old.state IS NOT new.state OR old.instance IS NOT new.instance BEGIN
  INSERT INTO job_events (id, state, instance) VALUES (new.id, new.state, new.instance);
END;";

/// One change: the job's state and instance after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub seq: u64,
    pub id: String,
    pub state: String,
    pub instance: Option<String>,
}

/// The changes after `seq`, oldest first, at most `limit`.
pub fn after(conn: &Connection, seq: u64, limit: u32) -> rusqlite::Result<Vec<JobEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, state, instance FROM temp.job_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![seq, limit], |r| {
        Ok(JobEvent {
            seq: r.get(0)?,
            id: r.get(1)?,
            state: r.get(2)?,
            instance: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// The sequence of the last change recorded (0: none since the open).
pub fn last(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM temp.job_events")?
        .query_row([], |r| r.get(0))
}

/// Drops all but the newest `JOB_EVENTS_KEPT` changes.
pub(super) fn trim(conn: &Connection) -> rusqlite::Result<()> {
    let horizon = last(conn)?.saturating_sub(JOB_EVENTS_KEPT);
    if horizon > 0 {
        conn.prepare_cached("DELETE FROM temp.job_events WHERE seq <= ?1")?
            .execute(params![horizon])?;
    }
    Ok(())
}
