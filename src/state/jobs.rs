//! The jobs tables of `state.db`: applying the job commands (every
//! transition checked against the job's current attempt, so that a stale
//! report changes nothing), and the queries that the scheduler, the workers
//! and the CLI make. Deterministic: times come from the commands.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::work::jobs::{
    backoff_ms, bounded_text, Job, JobSpec, JobState, Outcome, ProfileRow, RESULT_BYTES_MAX,
};
use crate::work::scheduler::{Assignment, Queued};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, spec BLOB NOT NULL, priority INTEGER NOT NULL,
  state TEXT NOT NULL, instance TEXT, attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
  created_ms INTEGER NOT NULL, assigned_ms INTEGER, started_ms INTEGER, finished_ms INTEGER,
  not_before_ms INTEGER NOT NULL, result TEXT, error TEXT, log TEXT NOT NULL, profile BLOB,
  hotfolder TEXT, input TEXT, published INTEGER, releases INTEGER);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (priority DESC, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (instance) WHERE state IN ('assigned', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_by_kind ON jobs (kind, id);
CREATE INDEX IF NOT EXISTS jobs_by_instance ON jobs (instance, id);
CREATE INDEX IF NOT EXISTS jobs_final ON jobs (finished_ms)
  WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE TABLE IF NOT EXISTS job_attempts (
  job TEXT NOT NULL, attempt INTEGER NOT NULL, instance TEXT, assigned_ms INTEGER,
  started_ms INTEGER, ended_ms INTEGER NOT NULL, outcome TEXT NOT NULL, error TEXT,
  PRIMARY KEY (job, attempt)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS job_attempts_purge AFTER DELETE ON jobs BEGIN
  DELETE FROM job_attempts WHERE job = old.id;
END;
CREATE TABLE IF NOT EXISTS purged_hotfolder_jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS node_modes (name TEXT PRIMARY KEY, mode TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scripts (name TEXT NOT NULL, version INTEGER NOT NULL, code TEXT NOT NULL,
  added_ms INTEGER NOT NULL, PRIMARY KEY (name, version));
";

pub(super) const COLUMNS: &str =
    "id, spec, state, instance, attempt, created_ms, assigned_ms, started_ms, \
     finished_ms, not_before_ms, result, error, log, profile";

pub fn submit(tx: &Transaction<'_>, id: &str, spec: &JobSpec, at_ms: u64) -> rusqlite::Result<()> {
    let mut bytes = Vec::new();
    ciborium::into_writer(spec, &mut bytes).expect("a job spec encodes");
    // The same id twice (which the request id already prevents) keeps the first.
    tx.prepare_cached(
        "INSERT INTO jobs (id, kind, spec, priority, state, instance, attempt, max_attempts,
           created_ms, not_before_ms, log, hotfolder, input, published)
         VALUES (?1, ?2, ?3, ?4, 'queued', NULL, 1, ?5, ?6, ?6, '', ?7, ?8, ?9)
         ON CONFLICT(id) DO NOTHING",
    )?
    .execute(params![
        id,
        spec.kind.as_str(),
        bytes,
        spec.priority,
        spec.max_attempts,
        at_ms,
        spec.file.as_ref().map(|f| &f.hotfolder),
        spec.file.as_ref().map(|f| &f.input),
        spec.file.as_ref().map(|_| 0),
    ])?;
    Ok(())
}

/// Applies placements; one whose attempt is no longer queued, or whose
/// instance already holds `slots` active attempts (a coordinator that
/// placed from an out-of-date view), is skipped: it stays queued.
pub fn assign(tx: &Transaction<'_>, batch: &[Assignment], at_ms: u64) -> rusqlite::Result<()> {
    let mut active = tx.prepare_cached(
        "SELECT count(*) FROM jobs WHERE instance = ?1 AND state IN ('assigned', 'running')",
    )?;
    let mut place = tx.prepare_cached(
        "UPDATE jobs SET state = 'assigned', instance = ?2, assigned_ms = ?4, started_ms = NULL
         WHERE id = ?1 AND attempt = ?3 AND state = 'queued'",
    )?;
    let mut held: HashMap<&str, u32> = HashMap::new();
    for a in batch {
        let count = match held.get(a.instance.as_str()) {
            Some(n) => *n,
            None => active.query_row(params![a.instance], |r| r.get(0))?,
        };
        if count >= a.slots {
            held.insert(&a.instance, count);
            continue;
        }
        let placed = place.execute(params![a.id, a.instance, a.attempt, at_ms])? as u32;
        held.insert(&a.instance, count + placed);
    }
    Ok(())
}

pub fn started(
    tx: &Transaction<'_>,
    id: &str,
    instance: &str,
    attempt: u32,
    at_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE jobs SET state = 'running', started_ms = ?4
         WHERE id = ?1 AND instance = ?2 AND attempt = ?3 AND state = 'assigned'",
    )?
    .execute(params![id, instance, attempt, at_ms])?;
    Ok(())
}

/// The current attempt, its instance and the attempts allowed, of an
/// active job; `None` when the job is not active.
fn active_attempt(
    tx: &Transaction<'_>,
    id: &str,
) -> rusqlite::Result<Option<(u32, Option<String>, u32)>> {
    tx.prepare_cached(
        "SELECT attempt, instance, max_attempts FROM jobs
         WHERE id = ?1 AND state IN ('assigned', 'running')",
    )?
    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .optional()
}

pub fn finished(
    tx: &Transaction<'_>,
    id: &str,
    instance: &str,
    attempt: u32,
    at_ms: u64,
    outcome: &Outcome,
) -> rusqlite::Result<()> {
    let Some((current, on, max)) = active_attempt(tx, id)? else {
        return Ok(());
    };
    if current != attempt || on.as_deref() != Some(instance) {
        return Ok(()); // a stale report: fenced off
    }
    // The attempt ran, whether it ended well or not: a run shorter than the
    // worker's `running` report threshold starts when it was assigned.
    tx.prepare_cached(
        "UPDATE jobs SET profile = ?2, started_ms = coalesce(started_ms, assigned_ms) WHERE id = ?1",
    )?
    .execute(params![id, profile_bytes(&outcome.profile)])?;
    if outcome.ok {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'succeeded', finished_ms = ?2, result = ?3, error = NULL,
               log = ?4
             WHERE id = ?1",
        )?
        .execute(params![id, at_ms, outcome.result, outcome.log])?;
        return Ok(());
    }
    let error = outcome.error.clone().unwrap_or_else(|| "failed".into());
    let error = format!("attempt {attempt} on {instance}: {error}");
    end_attempt(
        tx,
        id,
        attempt,
        max,
        at_ms,
        &error,
        Some(&outcome.log),
        true,
    )
}

/// Ends an active attempt that did not succeed: the job goes back to the
/// queue as the next attempt, or fails once its attempts are used up.
#[allow(clippy::too_many_arguments)]
fn end_attempt(
    tx: &Transaction<'_>,
    id: &str,
    attempt: u32,
    max: u32,
    at_ms: u64,
    error: &str,
    log: Option<&str>,
    back_off: bool,
) -> rusqlite::Result<()> {
    let error = bounded_text(error, RESULT_BYTES_MAX);
    let outcome = if back_off { "failed" } else { "released" };
    record_attempt(tx, id, outcome, &error, at_ms)?;
    // A release (the instance stopped or was lost) is not the job's
    // failure: it does not use up an attempt, up to RELEASES_MAX of them (a
    // job that takes its instance down each time must end somewhere).
    let releases: u32 = tx
        .prepare_cached("SELECT coalesce(releases, 0) FROM jobs WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))?;
    let releases = releases + u32::from(!back_off);
    tx.prepare_cached("UPDATE jobs SET releases = ?2 WHERE id = ?1")?
        .execute(params![id, releases])?;
    let failures = attempt.saturating_sub(releases);
    let error = if releases >= RELEASES_MAX {
        format!("{error} (released {releases} times: the job is given up)")
    } else {
        error
    };
    if failures >= max || releases >= RELEASES_MAX {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'failed', finished_ms = ?2, error = ?3, log = coalesce(?4, log)
             WHERE id = ?1",
        )?
        .execute(params![id, at_ms, error, log])?;
        return Ok(());
    }
    let next = attempt + 1;
    // A release waits too, a little more each time: an instance that hands
    // attempts back as it stops gossips that it is stopping only a moment
    // later, and meanwhile took the same job back again and again (the
    // fault campaign saw 20 releases in 100 ms fail a job).
    let not_before = if back_off {
        at_ms + backoff_ms(next)
    } else {
        at_ms + crate::work::jobs::release_backoff_ms(releases)
    };
    tx.prepare_cached(
        "UPDATE jobs SET state = 'queued', attempt = ?2, instance = NULL, assigned_ms = NULL,
           started_ms = NULL, not_before_ms = ?3, error = ?4, log = coalesce(?5, log)
         WHERE id = ?1",
    )?
    .execute(params![id, next, not_before, error, log])?;
    Ok(())
}

/// Releases of one job at most: past them it fails rather than being
/// tried on instance after instance (a job that crashes its instance).
pub const RELEASES_MAX: u32 = 20;

/// Releases attempts (their instance stopped, or was lost): each that is
/// still current goes back to the queue at once, not counted against its
/// `max_attempts`; the job fails only after `RELEASES_MAX` of them.
pub fn release(
    tx: &Transaction<'_>,
    attempts: &[(String, u32)],
    reason: &str,
    at_ms: u64,
) -> rusqlite::Result<()> {
    for (id, attempt) in attempts {
        let Some((current, _, max)) = active_attempt(tx, id)? else {
            continue;
        };
        if current == *attempt {
            let why = format!("attempt {attempt} released: {reason}");
            end_attempt(tx, id, *attempt, max, at_ms, &why, None, false)?;
        }
    }
    Ok(())
}

pub fn cancel(tx: &Transaction<'_>, id: &str, at_ms: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE jobs SET state = 'cancelled', finished_ms = ?2
         WHERE id = ?1 AND state IN ('queued', 'assigned', 'running')",
    )?
    .execute(params![id, at_ms])?;
    Ok(())
}

/// Keeps the job's current attempt in its history as ended with `outcome`
/// (a second record of the same attempt is ignored), and drops the oldest,
/// so that with the attempt after it at most `ATTEMPTS_KEPT` are shown.
fn record_attempt(
    tx: &Transaction<'_>,
    id: &str,
    outcome: &str,
    error: &str,
    at_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO job_attempts
           (job, attempt, instance, assigned_ms, started_ms, ended_ms, outcome, error)
         SELECT id, attempt, instance, assigned_ms, started_ms, ?2, ?3, ?4 FROM jobs WHERE id = ?1
         ON CONFLICT (job, attempt) DO NOTHING",
    )?
    .execute(params![id, at_ms, outcome, error])?;
    tx.prepare_cached(
        "DELETE FROM job_attempts WHERE job = ?1
           AND attempt + ?2 <= (SELECT attempt + 1 FROM jobs WHERE id = ?1)",
    )?
    .execute(params![id, crate::work::jobs::ATTEMPTS_KEPT])?;
    Ok(())
}

/// A failed or cancelled job runs again as a new attempt (granted beyond
/// its max attempts if need be); the attempt that ended stays in its history.
pub fn retry(tx: &Transaction<'_>, id: &str, at_ms: u64) -> rusqlite::Result<()> {
    let ended: Option<(String, Option<String>, Option<u64>)> = tx
        .prepare_cached(
            "SELECT state, error, finished_ms FROM jobs
             WHERE id = ?1 AND state IN ('failed', 'cancelled')",
        )?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((state, error, finished_ms)) = ended else {
        return Ok(());
    };
    let error = error.unwrap_or_default();
    record_attempt(tx, id, &state, &error, finished_ms.unwrap_or(at_ms))?;
    // From level 9 a retry clears the job's error: the new attempt has none
    // yet (level 8 kept the last attempt's until the new one ended).
    let clears_error = super::protocol_level(tx)? >= 9;
    tx.prepare_cached(
        "UPDATE jobs SET state = 'queued', attempt = attempt + 1,
           max_attempts = max(max_attempts, attempt + 1 - coalesce(releases, 0)),
           instance = NULL, assigned_ms = NULL,
           started_ms = NULL, finished_ms = NULL, not_before_ms = ?2, result = NULL,
           error = CASE WHEN ?3 THEN NULL ELSE error END,
           published = CASE WHEN published IS NULL THEN NULL ELSE 0 END
         WHERE id = ?1 AND state IN ('failed', 'cancelled')",
    )?
    .execute(params![id, at_ms, clears_error])?;
    Ok(())
}

/// Jobs read at most to count those that ended since a time: the count
/// is for an alert, and its cost stays bounded however busy the cluster.
pub const ENDED_COUNTED_MAX: u64 = 100_000;

/// Jobs that ended at or after `since_ms`, as (failed, all), counting at
/// most `ENDED_COUNTED_MAX` of them.
pub fn ended_since(conn: &Connection, since_ms: u64) -> rusqlite::Result<(u64, u64)> {
    let mut stmt = conn.prepare_cached(
        "SELECT state = 'failed', count(*) FROM (SELECT state FROM jobs INDEXED BY jobs_final
           WHERE finished_ms >= ?1 AND state IN ('succeeded', 'failed', 'cancelled') LIMIT ?2)
         GROUP BY state = 'failed'",
    )?;
    let mut rows = stmt.query(params![since_ms, ENDED_COUNTED_MAX])?;
    let (mut failed, mut all) = (0, 0);
    while let Some(r) = rows.next()? {
        let (is_failed, n): (bool, u64) = (r.get(0)?, r.get(1)?);
        all += n;
        if is_failed {
            failed += n;
        }
    }
    Ok((failed, all))
}

/// Purged hotfolder jobs remembered (the newest): a working folder whose
/// job is neither known nor among them is left alone, never cleaned up on
/// the word of a replica that may not have seen the job yet. A folder that
/// outlives this many purges stays (and is logged), which loses nothing.
pub const PURGED_IDS_KEPT: u64 = 100_000;

/// Notes the hotfolder jobs among those `doomed` selects (a subquery of
/// job ids about to be deleted, with `?1` as its parameter) as purged, and
/// forgets the oldest beyond `PURGED_IDS_KEPT`.
fn note_purged(tx: &Transaction<'_>, doomed: &str, param: u64) -> rusqlite::Result<()> {
    let sql = format!(
        "INSERT OR IGNORE INTO purged_hotfolder_jobs (id)
         SELECT id FROM jobs WHERE published IS NOT NULL AND id IN ({doomed})"
    );
    tx.prepare_cached(&sql)?.execute(params![param])?;
    tx.prepare_cached(
        "DELETE FROM purged_hotfolder_jobs WHERE seq <= (SELECT max(seq) FROM purged_hotfolder_jobs) - ?1",
    )?
    .execute(params![PURGED_IDS_KEPT])?;
    Ok(())
}

/// Whether a purge recorded hotfolder job `id` (within `PURGED_IDS_KEPT`).
pub fn purged(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM purged_hotfolder_jobs WHERE id = ?1")?
        .query_row(params![id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Deletes finished jobs that ended before `finished_before_ms`, and the
/// oldest finished ones beyond `keep_count`: at most `batch_max` in all,
/// those that ended first going first.
pub fn purge(
    tx: &Transaction<'_>,
    finished_before_ms: u64,
    keep_count: u64,
    batch_max: u32,
) -> rusqlite::Result<()> {
    // The same selections note and delete: hotfolder jobs are remembered
    // as purged (`hotfolders::settled`).
    let expired = format!(
        "SELECT id FROM jobs INDEXED BY jobs_final
           WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_ms < ?1
             AND coalesce(published, 1) = 1
           ORDER BY finished_ms LIMIT {batch_max}"
    );
    note_purged(tx, &expired, finished_before_ms)?;
    let old = tx
        .prepare_cached(&format!("DELETE FROM jobs WHERE id IN ({expired})"))?
        .execute(params![finished_before_ms])? as u32;
    let budget = batch_max.saturating_sub(old);
    let excess = finished_count(tx)?.saturating_sub(keep_count);
    let count = excess.min(u64::from(budget));
    if count > 0 {
        let oldest = "SELECT id FROM jobs INDEXED BY jobs_final
               WHERE state IN ('succeeded', 'failed', 'cancelled') AND coalesce(published, 1) = 1
               ORDER BY finished_ms LIMIT ?1";
        note_purged(tx, oldest, count)?;
        tx.prepare_cached(&format!("DELETE FROM jobs WHERE id IN ({oldest})"))?
            .execute(params![count])?;
    }
    Ok(())
}

/// Finished jobs stored.
pub fn finished_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM jobs INDEXED BY jobs_final WHERE state IN ('succeeded', 'failed', 'cancelled')",
    )?
    .query_row([], |r| r.get(0))
}

/// When the longest-finished job ended, if any job is finished.
pub fn oldest_finished_ms(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached(
        "SELECT finished_ms FROM jobs INDEXED BY jobs_final
         WHERE state IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_ms LIMIT 1",
    )?
    .query_row([], |r| r.get(0))
    .optional()
}

pub fn set_mode(tx: &Transaction<'_>, name: &str, mode: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO node_modes (name, mode) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET mode = excluded.mode",
    )?
    .execute(params![name, mode])?;
    Ok(())
}

/// A stored script's new version: one more than its latest (1 for a new name).
pub fn add_script(
    tx: &Transaction<'_>,
    name: &str,
    code: &str,
    at_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO scripts (name, version, code, added_ms)
         SELECT ?1, coalesce(max(version), 0) + 1, ?2, ?3 FROM scripts WHERE name = ?1",
    )?
    .execute(params![name, code, at_ms])?;
    Ok(())
}

pub fn remove_script(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM scripts WHERE name = ?1")?
        .execute(params![name])?;
    Ok(())
}

/// A stored script's version (the latest when `version` is `None`).
pub fn script(
    conn: &Connection,
    name: &str,
    version: Option<u32>,
) -> rusqlite::Result<Option<crate::work::jobs::StoredScript>> {
    conn.prepare_cached(
        "SELECT name, version, code, added_ms FROM scripts
         WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
    )?
    .query_row(params![name, version], |r| {
        Ok(crate::work::jobs::StoredScript {
            name: r.get(0)?,
            version: r.get(1)?,
            code: r.get(2)?,
            added_ms: r.get(3)?,
        })
    })
    .optional()
}

/// The latest version of every stored script, by name (code left empty).
pub fn scripts(
    conn: &Connection,
    limit: u32,
) -> rusqlite::Result<Vec<crate::work::jobs::StoredScript>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, max(version), length(code), max(added_ms) FROM scripts
         GROUP BY name ORDER BY name LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit], |r| {
        let bytes: i64 = r.get(2)?;
        Ok(crate::work::jobs::StoredScript {
            name: r.get(0)?,
            version: r.get(1)?,
            code: format!("{bytes} bytes"),
            added_ms: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// `present` when the jobs table has `column`, else `absent`.
fn column_or(
    conn: &Connection,
    column: &str,
    present: &'static str,
    absent: &'static str,
) -> rusqlite::Result<&'static str> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('jobs') WHERE name = ?1",
        params![column],
        |r| r.get(0),
    )?;
    Ok(if has { present } else { absent })
}

/// Brings a jobs table made by an older version up to this schema, then
/// makes the indexes of the added columns.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (column, kind) in [
        ("profile", "BLOB"),
        ("hotfolder", "TEXT"),
        ("input", "TEXT"),
        ("published", "INTEGER"),
        ("releases", "INTEGER"),
    ] {
        let has: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('jobs') WHERE name = ?1",
            params![column],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {kind}"))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS jobs_by_hotfolder ON jobs (hotfolder, id) WHERE hotfolder IS NOT NULL;
         CREATE INDEX IF NOT EXISTS jobs_hotfolder_final ON jobs (hotfolder, finished_ms) WHERE hotfolder IS NOT NULL;
         CREATE INDEX IF NOT EXISTS jobs_unpublished ON jobs (hotfolder, input) WHERE published = 0;",
    )
}

fn profile_bytes(profile: &[ProfileRow]) -> Option<Vec<u8>> {
    if profile.is_empty() {
        return None;
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(profile, &mut bytes).expect("a profile encodes");
    Some(bytes)
}

/// A stored profile; one that does not decode (written by no version of
/// claro) reads as empty rather than hiding the job.
fn profile_of(bytes: Option<Vec<u8>>) -> Vec<ProfileRow> {
    bytes
        .and_then(|b| ciborium::from_reader(b.as_slice()).ok())
        .unwrap_or_default()
}

pub(super) fn job_of(r: &Row<'_>) -> rusqlite::Result<Job> {
    let spec: Vec<u8> = r.get(1)?;
    let spec: JobSpec = ciborium::from_reader(spec.as_slice()).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
    })?;
    let state: String = r.get(2)?;
    let state = JobState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("no job state `{state}`").into(),
        )
    })?;
    Ok(Job {
        id: r.get(0)?,
        spec,
        state,
        instance: r.get(3)?,
        attempt: r.get(4)?,
        created_ms: r.get(5)?,
        assigned_ms: r.get(6)?,
        started_ms: r.get(7)?,
        finished_ms: r.get(8)?,
        not_before_ms: r.get(9)?,
        result: r.get(10)?,
        error: r.get(11)?,
        log: r.get(12)?,
        profile: profile_of(r.get::<_, Option<Vec<u8>>>(13)?),
        attempts: Vec::new(),
    })
}

/// Job `id` without its earlier attempts (`job` adds them).
pub fn job_record(conn: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row(params![id], job_of)
        .optional()
}

pub fn job(conn: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    let Some(mut job) = job_record(conn, id)? else {
        return Ok(None);
    };
    job.attempts = attempts(conn, &job)?;
    Ok(Some(job))
}

/// The attempts of `job`, oldest first: those recorded as ended, then the
/// current one as the job stands, unless it is recorded or never placed.
fn attempts(conn: &Connection, job: &Job) -> rusqlite::Result<Vec<crate::work::jobs::Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, instance, assigned_ms, started_ms, ended_ms, outcome, error
         FROM job_attempts WHERE job = ?1 ORDER BY attempt",
    )?;
    let rows = stmt.query_map(params![job.id], |r| {
        Ok(crate::work::jobs::Attempt {
            attempt: r.get(0)?,
            instance: r.get(1)?,
            assigned_ms: r.get(2)?,
            started_ms: r.get(3)?,
            ended_ms: r.get(4)?,
            outcome: r.get(5)?,
            error: r.get(6)?,
        })
    })?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let recorded = out.last().is_some_and(|a| a.attempt == job.attempt);
    let placed = job.assigned_ms.is_some() || job.state.is_final();
    if !recorded && placed {
        out.push(crate::work::jobs::Attempt {
            attempt: job.attempt,
            instance: job.instance.clone(),
            assigned_ms: job.assigned_ms,
            started_ms: job.started_ms,
            ended_ms: job.finished_ms,
            outcome: job.state.as_str().into(),
            error: (job.state != JobState::Succeeded)
                .then(|| job.error.clone())
                .flatten(),
        });
    }
    Ok(out)
}

/// Which jobs `claro jobs` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<crate::work::jobs::JobKind>,
    pub instance: Option<String>,
    /// Only jobs older than this id (the next page).
    pub before: Option<String>,
    /// Only the files of this hotfolder.
    #[serde(default)]
    pub hotfolder: Option<String>,
}

/// Jobs matching `f`, newest first, at most `limit`. Only the conditions
/// given are in the query, so that SQLite walks the index of the filter
/// (`jobs_by_state`, `jobs_by_kind`, `jobs_by_instance`: each by id) and
/// stops after `limit` rows, whatever the number of jobs.
pub fn list(conn: &Connection, f: &JobFilter, limit: u32) -> rusqlite::Result<Vec<Job>> {
    let mut conditions = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |column: &str, value: Option<String>| {
        if let Some(v) = value {
            values.push(v.into());
            let op = if column == "id" { "<" } else { "=" };
            conditions.push(format!("{column} {op} ?{}", values.len()));
        }
    };
    add("state", f.state.map(|s| s.as_str().to_string()));
    add("kind", f.kind.map(|k| k.as_str().to_string()));
    add("instance", f.instance.clone());
    add("hotfolder", f.hotfolder.clone());
    add("id", f.before.clone());
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    values.push(i64::from(limit).into());
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs {filter} ORDER BY id DESC LIMIT ?{}",
        values.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), job_of)?;
    rows.collect()
}

/// Queued jobs, highest priority and oldest first, at most `limit`.
pub fn queued(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Queued>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, attempt, priority, not_before_ms FROM jobs INDEXED BY jobs_queued
         WHERE state = 'queued' ORDER BY priority DESC, id LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(Queued {
            id: r.get(0)?,
            attempt: r.get(1)?,
            priority: r.get(2)?,
            not_before_ms: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Attempts assigned or running, by instance.
pub fn active_counts(conn: &Connection) -> rusqlite::Result<HashMap<String, u32>> {
    let mut stmt = conn.prepare_cached(
        "SELECT instance, count(*) FROM jobs WHERE state IN ('assigned', 'running') GROUP BY instance",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?;
    rows.collect()
}

/// The active attempts of `instance`.
pub fn active_on(conn: &Connection, instance: &str) -> rusqlite::Result<Vec<ActiveAttempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, attempt, state FROM jobs WHERE instance = ?1 AND state IN ('assigned', 'running')",
    )?;
    let rows = stmt.query_map(params![instance], |r| {
        let state: String = r.get(2)?;
        Ok(ActiveAttempt {
            id: r.get(0)?,
            attempt: r.get(1)?,
            running: state == JobState::Running.as_str(),
        })
    })?;
    rows.collect()
}

/// An active attempt (assigned or running) as the worker loop looks at
/// it after every applied entry: without the job's spec, which is read
/// (`job_record`) only for an attempt it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveAttempt {
    pub id: String,
    pub attempt: u32,
    /// Running already (else assigned).
    pub running: bool,
}

/// The current attempt and state of job `id`.
pub fn attempt_of(
    conn: &Connection,
    id: &str,
) -> rusqlite::Result<Option<(u32, JobState, Option<String>)>> {
    conn.prepare_cached("SELECT attempt, state, instance FROM jobs WHERE id = ?1")?
        .query_row(params![id], |r| {
            let state: String = r.get(1)?;
            Ok((
                r.get(0)?,
                JobState::parse(&state).unwrap_or(JobState::Failed),
                r.get(2)?,
            ))
        })
        .optional()
}

/// How many of `ends`, reported by `instance`, are attempts it holds now:
/// each frees one of its slots when the report applies (a stale end, fenced
/// off, frees none). Bounded by the report's size.
pub fn current_ends(
    conn: &Connection,
    instance: &str,
    ends: &[crate::work::jobs::AttemptEnd],
) -> rusqlite::Result<u32> {
    let mut count = 0;
    // A report that names an attempt twice frees its slot once.
    let mut seen = std::collections::HashSet::new();
    for end in ends.iter().filter(|e| seen.insert((&e.id, e.attempt))) {
        if let Some((attempt, state, holder)) = attempt_of(conn, &end.id)? {
            let active = matches!(state, JobState::Assigned | JobState::Running);
            count +=
                u32::from(active && attempt == end.attempt && holder.as_deref() == Some(instance));
        }
    }
    Ok(count)
}

/// Jobs waiting in the queue (from the counts the state connection keeps).
pub fn queued_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT coalesce(sum(n), 0) FROM temp.job_counts WHERE state = 'queued'")?
        .query_row([], |r| r.get(0))
}

/// Jobs that ended with `finished_ms` in `(from_ms, to_ms]` (through the
/// `jobs_final` index): how many succeeded, failed and were cancelled, and
/// the run time of each that ran (at most `durations_max` of them).
pub fn finished_between(
    conn: &Connection,
    from_ms: u64,
    to_ms: u64,
    durations_max: u32,
) -> rusqlite::Result<(FinishedCounts, Vec<u64>)> {
    let mut counts = FinishedCounts::default();
    let mut stmt = conn.prepare_cached(
        "SELECT state, count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
           AND finished_ms > ?1 AND finished_ms <= ?2 GROUP BY state",
    )?;
    let mut rows = stmt.query(params![from_ms, to_ms])?;
    while let Some(r) = rows.next()? {
        let n: u64 = r.get(1)?;
        match r.get::<_, String>(0)?.as_str() {
            "succeeded" => counts.succeeded = n,
            "failed" => counts.failed = n,
            _ => counts.cancelled = n,
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT finished_ms - started_ms FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled')
           AND finished_ms > ?1 AND finished_ms <= ?2 AND started_ms IS NOT NULL
           AND finished_ms >= started_ms LIMIT ?3",
    )?;
    let durations = stmt
        .query_map(params![from_ms, to_ms, durations_max], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<u64>>>()?;
    Ok((counts, durations))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FinishedCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// Servers in maintenance (they get no new jobs).
pub fn modes(conn: &Connection) -> rusqlite::Result<HashMap<String, String>> {
    let mut stmt = conn.prepare_cached("SELECT name, mode FROM node_modes")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Jobs kept, by state and kind, ordered by both: read from the counts
/// the state connection keeps (`job_counts`), not by a scan of the jobs.
pub fn counts(conn: &Connection) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, kind, n FROM temp.job_counts WHERE n > 0 ORDER BY state, kind",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Adds every job row and node mode to a state digest, in id order.
/// Adds the first `columns` values of every row of `stmt` to a digest.
fn digest_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    columns: usize,
    field: &mut dyn FnMut(&[u8]),
) -> rusqlite::Result<()> {
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        for i in 0..columns {
            match row.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(n) => field(&n.to_be_bytes()),
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => field(t),
                other => field(format!("{other:?}").as_bytes()),
            }
        }
    }
    Ok(())
}

pub fn digest(conn: &Connection, field: &mut dyn FnMut(&[u8])) -> rusqlite::Result<()> {
    // Readable by the at-rest check before `migrate` (read-only): a column
    // an older version did not have counts as its default. `releases` is
    // folded into the last field so that a database written before it had
    // the same digest as then (an upgrade is not taken for damage).
    let published = column_or(conn, "published", "coalesce(published, -1)", "-1")?;
    let releases = column_or(conn, "releases", "coalesce(releases, 0)", "0")?;
    let sql = format!(
        "SELECT id, spec, state, coalesce(instance, ''), attempt, max_attempts, created_ms,
           coalesce(assigned_ms, -1), coalesce(started_ms, -1), coalesce(finished_ms, -1),
           not_before_ms, coalesce(result, ''), coalesce(error, ''), log, coalesce(profile, x''),
           {published} + 1000 * {releases}
         FROM jobs ORDER BY id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    digest_rows(&mut stmt, 16, field)?;
    let mut stmt = conn.prepare_cached(
        "SELECT job, attempt, coalesce(instance, ''), coalesce(assigned_ms, -1),
           coalesce(started_ms, -1), ended_ms, outcome, coalesce(error, '')
         FROM job_attempts ORDER BY job, attempt",
    )?;
    digest_rows(&mut stmt, 8, field)?;
    let mut stmt = conn.prepare_cached("SELECT name, mode FROM node_modes ORDER BY name")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (name, mode): (String, String) = (row.get(0)?, row.get(1)?);
        field(name.as_bytes());
        field(mode.as_bytes());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name, version, code, added_ms FROM scripts ORDER BY name, version",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (name, version, code, at): (String, i64, String, i64) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        field(name.as_bytes());
        field(&version.to_be_bytes());
        field(code.as_bytes());
        field(&at.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::state::{Change, Command, StateMachine, Sync};
    use crate::work::jobs::{JobKind, JobSpec, JobState, Outcome};
    use crate::work::scheduler::Assignment;

    fn spec(max_attempts: u32) -> JobSpec {
        JobSpec {
            kind: JobKind::Script,
            script: "40 + 2".into(),
            stored: None,
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            priority: 0,
            max_attempts,
            timeout_ms: 1000,
            call: None,
            depth: 0,
            file: None,
        }
    }

    struct Db {
        _dir: tempfile::TempDir,
        sm: StateMachine,
        index: u64,
    }

    impl Db {
        fn new() -> Db {
            let dir = tempfile::tempdir().unwrap();
            let sm = StateMachine::open(&dir.path().join("state.db"), Sync::Off).unwrap();
            Db {
                _dir: dir,
                sm,
                index: 0,
            }
        }
        /// Submits a script job allowed `max_attempts`, at 1 ms.
        fn submit(&mut self, id: &str, max_attempts: u32) {
            self.apply(Command::JobSubmit {
                id: id.into(),
                spec: spec(max_attempts),
                at_ms: 1,
            });
        }
        fn apply(&mut self, cmd: Command) {
            self.index += 1;
            self.sm
                .apply(&[(self.index, 1, Change::Command(&cmd))])
                .unwrap();
        }
        /// The counts by state and kind, counted from the table itself.
        fn counted(&self) -> Vec<(String, String, u64)> {
            let mut stmt = self
                .sm
                .conn()
                .prepare("SELECT state, kind, count(*) FROM jobs GROUP BY state, kind")
                .unwrap();
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
            rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
        }
        fn state(&self, id: &str) -> (JobState, u32, Option<String>) {
            let j = super::job(self.sm.conn(), id).unwrap().unwrap();
            (j.state, j.attempt, j.instance)
        }
    }

    const ID: &str = "00000000000100000001";

    fn assign(instance: &str, attempt: u32) -> Command {
        Command::JobAssign {
            assignments: vec![Assignment {
                id: ID.into(),
                attempt,
                instance: instance.into(),
                slots: 4,
            }],
            at_ms: 10,
        }
    }

    fn finish(instance: &str, attempt: u32, ok: bool) -> Command {
        Command::JobFinished {
            id: ID.into(),
            instance: instance.into(),
            attempt,
            at_ms: 20,
            outcome: Outcome {
                ok,
                result: Some("42".into()),
                error: (!ok).then(|| "boom".into()),
                log: "a line\n".into(),
                profile: Vec::new(),
            },
        }
    }

    /// What the worker loop looks at after every applied entry: the
    /// active attempts of one instance, whether running, without specs;
    /// the whole job read only for one it starts.
    #[test]
    fn active_attempts_name_the_attempt_and_whether_it_runs() {
        let mut db = Db::new();
        db.submit(ID, 2);
        let conn = |db: &Db| super::active_on(db.sm.conn(), "srv2").unwrap();
        assert!(conn(&db).is_empty(), "queued is not active");
        db.apply(assign("srv2", 1));
        let active = conn(&db);
        assert_eq!(
            active,
            vec![super::ActiveAttempt {
                id: ID.into(),
                attempt: 1,
                running: false
            }]
        );
        assert!(super::active_on(db.sm.conn(), "srv3").unwrap().is_empty());
        db.apply(Command::JobStarted {
            id: ID.into(),
            instance: "srv2".into(),
            attempt: 1,
            at_ms: 11,
        });
        assert!(conn(&db)[0].running);
        let record = super::job_record(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!((record.attempt, record.state), (1, JobState::Running));
        assert_eq!(record.spec, spec(2));
        db.apply(finish("srv2", 1, true));
        assert!(conn(&db).is_empty(), "an ended attempt is not active");
    }

    #[test]
    fn a_job_runs_its_life_and_stale_reports_change_nothing() {
        let mut db = Db::new();
        db.submit(ID, 2);
        assert_eq!(db.state(ID), (JobState::Queued, 1, None));
        db.apply(assign("srv2", 1));
        assert_eq!(db.state(ID).0, JobState::Assigned);
        // A second placement of the same attempt is ignored.
        db.apply(assign("srv3", 1));
        assert_eq!(db.state(ID).2.as_deref(), Some("srv2"));
        // srv3's report is not for the current attempt's instance.
        db.apply(finish("srv3", 1, true));
        assert_eq!(db.state(ID).0, JobState::Assigned);
        // The attempt fails: attempt 2 is queued, after a backoff.
        db.apply(finish("srv2", 1, false));
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Queued, 2));
        assert_eq!(j.not_before_ms, 20 + crate::work::jobs::backoff_ms(2));
        assert!(j.error.unwrap().contains("attempt 1 on srv2: boom"));
        // A late report of attempt 1 is fenced off.
        db.apply(finish("srv2", 1, true));
        assert_eq!(db.state(ID).0, JobState::Queued);
        db.apply(assign("srv1", 2));
        db.apply(Command::JobStarted {
            id: ID.into(),
            instance: "srv1".into(),
            attempt: 2,
            at_ms: 30,
        });
        assert_eq!(db.state(ID).0, JobState::Running);
        db.apply(finish("srv1", 2, true));
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.result.as_deref(), Some("42"));
        assert_eq!(j.instance.as_deref(), Some("srv1"));
        assert_eq!(j.error, None);
        // A cancel of a finished job changes nothing.
        db.apply(Command::JobCancel {
            id: ID.into(),
            at_ms: 40,
        });
        assert_eq!(db.state(ID).0, JobState::Succeeded);
    }

    #[test]
    fn a_failed_or_succeeded_run_keeps_when_it_started_and_counts_follow_every_change() {
        let mut db = Db::new();
        db.submit(ID, 1);
        assert_eq!(super::counts(db.sm.conn()).unwrap(), db.counted());
        db.apply(assign("srv2", 1));
        // No `running` report (a short run): it started when it was assigned.
        db.apply(finish("srv2", 1, false));
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!((j.started_ms, j.finished_ms), (Some(10), Some(20)));
        assert_eq!(super::counts(db.sm.conn()).unwrap(), db.counted());
        db.apply(Command::JobRetry {
            id: ID.into(),
            at_ms: 30,
        });
        assert_eq!(
            super::job(db.sm.conn(), ID).unwrap().unwrap().started_ms,
            None
        );
        db.apply(assign("srv1", 2));
        db.apply(finish("srv1", 2, true));
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!((j.state, j.started_ms), (JobState::Succeeded, Some(10)));
        let counts = super::counts(db.sm.conn()).unwrap();
        assert_eq!(counts, vec![("succeeded".into(), "script".into(), 1)]);
        assert_eq!(counts, db.counted());
        assert!(crate::state::job_counts::agree(db.sm.conn()).unwrap());
        assert_eq!(super::queued_count(db.sm.conn()).unwrap(), 0);
    }

    #[test]
    fn a_retried_attempt_cancelled_before_it_ran_does_not_show_the_last_ones_error() {
        // Level 8 (a cluster with an instance of protocol 8): as protocol 8
        // applied it, the last attempt's error stays.
        let mut db = Db::new();
        db.submit(ID, 1);
        db.apply(assign("srv2", 1));
        db.apply(finish("srv2", 1, false));
        db.apply(Command::JobRetry {
            id: ID.into(),
            at_ms: 30,
        });
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert!(j.error.is_some(), "level 8 keeps it");
        // Level 9: cleared.
        let mut db = Db::new();
        db.apply(Command::SetLevel { level: 9 });
        db.apply(Command::SetLevel { level: 8 });
        assert_eq!(db.sm.protocol_level(), 9, "a level never falls");
        db.submit(ID, 1);
        db.apply(assign("srv2", 1));
        db.apply(finish("srv2", 1, false));
        let failed = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert!(failed.error.is_some());
        db.apply(Command::JobRetry {
            id: ID.into(),
            at_ms: 30,
        });
        db.apply(Command::JobCancel {
            id: ID.into(),
            at_ms: 40,
        });
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!((j.state, j.error.as_deref()), (JobState::Cancelled, None));
        assert_eq!(j.attempts[0].error, failed.error, "attempt 1 keeps its own");
    }

    #[test]
    fn every_attempt_is_kept_with_its_server_times_and_reason_up_to_a_bound() {
        let mut db = Db::new();
        db.submit(ID, 3);
        let attempts = |db: &Db| super::job(db.sm.conn(), ID).unwrap().unwrap().attempts;
        assert!(attempts(&db).is_empty(), "never placed: no attempt yet");
        db.apply(assign("srv2", 1));
        assert_eq!(attempts(&db)[0].outcome, "assigned");
        db.apply(finish("srv2", 1, false));
        db.apply(assign("srv3", 2));
        db.apply(Command::JobRelease {
            attempts: vec![(ID.into(), 2)],
            reason: "srv3 lost".into(),
            at_ms: 50,
        });
        db.apply(assign("srv1", 3));
        db.apply(finish("srv1", 3, true));
        let list = attempts(&db);
        let seen: Vec<_> = list
            .iter()
            .map(|a| (a.attempt, a.instance.as_deref(), a.outcome.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, Some("srv2"), "failed"),
                (2, Some("srv3"), "released"),
                (3, Some("srv1"), "succeeded")
            ]
        );
        assert!(list[0].error.as_deref().unwrap().contains("boom"));
        assert_eq!((list[0].started_ms, list[0].ended_ms), (Some(10), Some(20)));
        assert_eq!((list[1].started_ms, list[1].ended_ms), (None, Some(50)));
        assert!(list[1].error.as_deref().unwrap().contains("srv3 lost"));
        assert_eq!(list[2].error, None);
        // Cancelled and retried by hand again and again: the newest are kept.
        let other = "00000000000100000002";
        db.submit(other, 1);
        let cancel = |at_ms| Command::JobCancel {
            id: other.into(),
            at_ms,
        };
        for at_ms in 100..100 + u64::from(crate::work::jobs::ATTEMPTS_KEPT) + 5 {
            db.apply(cancel(at_ms));
            db.apply(Command::JobRetry {
                id: other.into(),
                at_ms,
            });
        }
        db.apply(cancel(500));
        let list = super::job(db.sm.conn(), other).unwrap().unwrap().attempts;
        assert_eq!(list.len() as u32, crate::work::jobs::ATTEMPTS_KEPT);
        assert!(list
            .iter()
            .all(|a| a.outcome == "cancelled" && a.instance.is_none()));
        assert_eq!(
            list.last().unwrap().attempt,
            crate::work::jobs::ATTEMPTS_KEPT + 6
        );
        // A purge takes the jobs' attempts with them.
        db.apply(Command::JobPurge {
            finished_before_ms: 1_000,
            keep_count: 0,
            batch_max: 10,
        });
        let left: u64 = db
            .sm
            .conn()
            .query_row("SELECT count(*) FROM job_attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// A release (the instance stopped or was lost) is not the job's
    /// failure: it does not use up an attempt; the job's own failure does;
    /// `RELEASES_MAX` releases give it up.
    #[test]
    fn a_released_attempt_is_queued_again_without_using_up_an_attempt() {
        let mut db = Db::new();
        db.submit(ID, 1);
        let release = |attempt| Command::JobRelease {
            attempts: vec![(ID.into(), attempt)],
            reason: "srv2 lost".into(),
            at_ms: 50,
        };
        db.apply(assign("srv2", 1));
        db.apply(release(1));
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempt, j.not_before_ms),
            (JobState::Queued, 2, 50)
        );
        assert_eq!(super::active_counts(db.sm.conn()).unwrap().len(), 0);
        db.apply(assign("srv3", 2));
        assert_eq!(super::active_counts(db.sm.conn()).unwrap()["srv3"], 1);
        db.apply(release(1)); // stale: attempt 2 is current
        assert_eq!(db.state(ID).0, JobState::Assigned);
        db.apply(release(2));
        assert_eq!(db.state(ID), (JobState::Queued, 3, None));
        // Its own failure uses up its one attempt.
        db.apply(assign("srv3", 3));
        db.apply(finish("srv3", 3, false));
        assert_eq!(db.state(ID).0, JobState::Failed);
        // A retry grants one more attempt.
        db.apply(Command::JobRetry {
            id: ID.into(),
            at_ms: 60,
        });
        assert_eq!(db.state(ID), (JobState::Queued, 4, None));
        let q = super::queued(db.sm.conn(), 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].attempt, 4);
        // Two releases so far; the job is given up at the RELEASES_MAXth.
        let last = 4 + super::RELEASES_MAX - 3;
        for attempt in 4..=last {
            assert_eq!(db.state(ID).0, JobState::Queued, "attempt {attempt}");
            db.apply(assign("srv2", attempt));
            db.apply(release(attempt));
        }
        let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
        let error = j.error.unwrap();
        assert!(
            error.contains("srv2 lost") && error.contains("released 20 times"),
            "{error}"
        );
    }

    /// Once a reproduction (the fault campaign, seed 11): a stopping
    /// instance handed a job back, was given it again at once, and so 20
    /// times in 100 ms, and the job failed. The first release queues the job
    /// at once; each later one waits longer, so `RELEASES_MAX` releases take
    /// more than a minute.
    #[test]
    fn releases_back_off_so_a_burst_cannot_give_a_job_up() {
        let mut db = Db::new();
        db.submit(ID, 3);
        let mut waited_ms = 0;
        for attempt in 1..super::RELEASES_MAX {
            let at_ms = 1_000 + waited_ms;
            db.apply(assign("srv2", attempt));
            db.apply(Command::JobRelease {
                attempts: vec![(ID.into(), attempt)],
                reason: "srv2 does not run it (restarted or stopping)".into(),
                at_ms,
            });
            let j = super::job(db.sm.conn(), ID).unwrap().unwrap();
            assert_eq!(j.state, JobState::Queued);
            if attempt == 1 {
                assert_eq!(
                    j.not_before_ms, at_ms,
                    "the first release runs it again at once"
                );
            }
            waited_ms += j.not_before_ms - at_ms;
        }
        assert!(
            waited_ms > 60_000,
            "{RELEASES_MAX} releases in {waited_ms} ms",
            RELEASES_MAX = super::RELEASES_MAX
        );
    }

    #[test]
    fn jobs_are_listed_newest_first_by_filter_and_are_part_of_the_digest() {
        let mut db = Db::new();
        let before = db.sm.digest().unwrap();
        for i in 1..=5u64 {
            let mut s = spec(1);
            if i % 2 == 0 {
                s.kind = JobKind::Command;
                s.script.clear();
                s.args = vec!["true".into()];
            }
            db.apply(Command::JobSubmit {
                id: crate::work::jobs::new_job_id(i, 0),
                spec: s,
                at_ms: i,
            });
        }
        assert_ne!(db.sm.digest().unwrap(), before);
        let all = super::list(db.sm.conn(), &super::JobFilter::default(), 3).unwrap();
        let ids: Vec<u64> = all.iter().map(|j| j.created_ms).collect();
        assert_eq!(ids, [5, 4, 3]);
        let f = super::JobFilter {
            kind: Some(JobKind::Command),
            before: Some(all[0].id.clone()),
            ..Default::default()
        };
        let cmds = super::list(db.sm.conn(), &f, 10).unwrap();
        assert_eq!(
            cmds.iter().map(|j| j.created_ms).collect::<Vec<_>>(),
            [4, 2]
        );
    }

    impl Db {
        /// Queues each of `ids` as a one-attempt script job.
        fn submit_all(&mut self, ids: &[&str]) {
            for id in ids {
                self.apply(Command::JobSubmit {
                    id: id.to_string(),
                    spec: spec(1),
                    at_ms: 1,
                });
            }
        }
    }

    /// A first attempt's placement on srv2, which has one slot.
    fn one_slot_on_srv2(id: &str) -> Assignment {
        Assignment {
            id: id.into(),
            attempt: 1,
            instance: "srv2".into(),
            slots: 1,
        }
    }

    #[test]
    fn a_placement_over_the_instance_s_slots_is_skipped() {
        let mut db = Db::new();
        let ids = ["00000000000100000001", "00000000000100000002"];
        db.submit_all(&ids);
        let place = one_slot_on_srv2;
        db.apply(Command::JobAssign {
            assignments: vec![place(ids[0]), place(ids[1])],
            at_ms: 5,
        });
        assert_eq!(db.state(ids[0]).0, JobState::Assigned);
        assert_eq!(db.state(ids[1]), (JobState::Queued, 1, None));
    }

    /// A submission placed in its own entry (`Command::Placed`): the jobs
    /// are queued and placed at once, each placement within its instance's
    /// slots (the one over them stays queued for a round); placements of
    /// jobs the submission does not make are refused before proposing.
    #[test]
    fn a_placed_submission_queues_and_places_in_one_entry_within_slots() {
        let mut db = Db::new();
        let ids = ["00000000000100000001", "00000000000100000002"];
        let place = |id: &str| Assignment {
            id: id.into(),
            attempt: 1,
            instance: "srv2".into(),
            slots: 1,
        };
        let jobs = ids.iter().map(|id| (id.to_string(), spec(1))).collect();
        let placed = Command::Placed {
            submission: Box::new(Command::JobsSubmit { jobs, at_ms: 1 }),
            assignments: vec![place(ids[0]), place(ids[1])],
            at_ms: 2,
        };
        placed.validate().unwrap();
        db.apply(placed);
        assert_eq!(
            db.state(ids[0]),
            (JobState::Assigned, 1, Some("srv2".into()))
        );
        assert_eq!(db.state(ids[1]), (JobState::Queued, 1, None));

        let foreign = Command::Placed {
            submission: Box::new(Command::JobSubmit {
                id: "00000000000100000003".into(),
                spec: spec(1),
                at_ms: 3,
            }),
            assignments: vec![place(ids[1])],
            at_ms: 3,
        };
        assert!(foreign.validate().is_err());
        let not_a_submission = Command::Placed {
            submission: Box::new(Command::JobCancel {
                id: ids[1].into(),
                at_ms: 3,
            }),
            assignments: Vec::new(),
            at_ms: 3,
        };
        assert!(not_a_submission.validate().is_err());
        assert_eq!(db.counted().len(), 2, "{:?}", db.counted());
    }

    /// An end report with placements (`Command::Placed` around
    /// `JobsFinished`): the slot it frees takes the next queued job in the
    /// same entry; a stale end frees nothing, so its placement over the
    /// slots is skipped; the leader counts only current ends as freeing.
    #[test]
    fn an_end_report_places_the_next_job_in_the_slot_it_frees() {
        let mut db = Db::new();
        let ids = [
            "00000000000100000001",
            "00000000000100000002",
            "00000000000100000003",
        ];
        db.submit_all(&ids);
        let place = one_slot_on_srv2;
        db.apply(Command::JobAssign {
            assignments: vec![place(ids[0])],
            at_ms: 2,
        });
        let end = |id: &str, attempt: u32| crate::work::jobs::AttemptEnd {
            id: id.into(),
            attempt,
            outcome: Outcome {
                ok: true,
                result: None,
                error: None,
                log: String::new(),
                profile: Vec::new(),
            },
        };
        let report = |ends| Command::JobsFinished {
            instance: "srv2".into(),
            at_ms: 3,
            ends,
        };
        let conn = db.sm.conn();
        assert_eq!(
            super::current_ends(conn, "srv2", &[end(ids[0], 1)]).unwrap(),
            1
        );
        assert_eq!(
            super::current_ends(conn, "srv2", &[end(ids[0], 2)]).unwrap(),
            0
        );
        assert_eq!(
            super::current_ends(conn, "srv3", &[end(ids[0], 1)]).unwrap(),
            0
        );
        let twice = [end(ids[0], 1), end(ids[0], 1)];
        assert_eq!(super::current_ends(conn, "srv2", &twice).unwrap(), 1);

        // A stale end (attempt 2 was never placed) with a placement: the
        // slot is still held, the placement is skipped.
        let stale = Command::Placed {
            submission: Box::new(report(vec![end(ids[0], 2)])),
            assignments: vec![place(ids[1])],
            at_ms: 3,
        };
        stale.validate().unwrap();
        db.apply(stale);
        assert_eq!(db.state(ids[0]).0, JobState::Assigned);
        assert_eq!(db.state(ids[1]), (JobState::Queued, 1, None));

        let placed = Command::Placed {
            submission: Box::new(report(vec![end(ids[0], 1)])),
            assignments: vec![place(ids[1]), place(ids[2])],
            at_ms: 4,
        };
        placed.validate().unwrap();
        db.apply(placed);
        assert_eq!(db.state(ids[0]).0, JobState::Succeeded);
        assert_eq!(
            db.state(ids[1]),
            (JobState::Assigned, 1, Some("srv2".into()))
        );
        assert_eq!(db.state(ids[2]), (JobState::Queued, 1, None));
        let zero = Command::Placed {
            submission: Box::new(report(vec![end(ids[1], 1)])),
            assignments: vec![Assignment {
                attempt: 0,
                ..place(ids[2])
            }],
            at_ms: 5,
        };
        assert!(zero.validate().is_err());
    }

    /// A database written before `releases` (or `published`) existed has
    /// the digest it had then, and the at-rest check, which runs read-only
    /// before `migrate`, can take it: an upgrade is not taken for damage.
    #[test]
    fn a_database_from_before_a_column_keeps_its_digest() {
        let mut db = Db::new();
        db.submit(ID, 1);
        let digest = |conn: &rusqlite::Connection| {
            let mut bytes = Vec::new();
            super::digest(conn, &mut |b| bytes.extend_from_slice(b)).unwrap();
            bytes
        };
        let now = digest(db.sm.conn());
        for column in ["releases", "published"] {
            let drop = format!(
                "DROP INDEX IF EXISTS jobs_unpublished; ALTER TABLE jobs DROP COLUMN {column}"
            );
            db.sm.conn().execute_batch(&drop).unwrap();
            assert_eq!(digest(db.sm.conn()), now, "without {column}");
        }
    }

    #[test]
    fn finished_jobs_are_purged_by_age_and_count_in_bounded_batches() {
        let mut db = Db::new();
        let ids: Vec<String> = (1..=6u64)
            .map(|i| crate::work::jobs::new_job_id(i, 0))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            db.apply(Command::JobSubmit {
                id: id.clone(),
                spec: spec(1),
                at_ms: 1,
            });
            if i < 5 {
                db.apply(Command::JobCancel {
                    id: id.clone(),
                    at_ms: 100 + i as u64,
                });
            }
        }
        // Ended before 102: two; at most one per batch.
        db.apply(Command::JobPurge {
            finished_before_ms: 102,
            keep_count: 100,
            batch_max: 1,
        });
        assert!(super::job(db.sm.conn(), &ids[0]).unwrap().is_none());
        assert!(super::job(db.sm.conn(), &ids[1]).unwrap().is_some());
        // Keep two finished: the oldest go; the queued one stays.
        db.apply(Command::JobPurge {
            finished_before_ms: 0,
            keep_count: 2,
            batch_max: 100,
        });
        let left: Vec<String> = super::list(db.sm.conn(), &super::JobFilter::default(), 10)
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(left, [ids[5].clone(), ids[4].clone(), ids[3].clone()]);
        assert_eq!(super::finished_count(db.sm.conn()).unwrap(), 2);
        assert_eq!(super::oldest_finished_ms(db.sm.conn()).unwrap(), Some(103));
    }

    #[test]
    fn unpublished_jobs_are_paged_oldest_first_and_purge_keeps_them() {
        let mut db = Db::new();
        let ids: Vec<String> = (1..=5u64)
            .map(|i| crate::work::jobs::new_job_id(i, 0))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let mut spec = spec(1);
            spec.kind = crate::work::jobs::JobKind::Hotfolder;
            spec.file = Some(crate::work::jobs::FileInput {
                hotfolder: "hf".into(),
                input: format!("f{i}"),
                bytes: 1,
                modified_ms: 1,
                inode: 0,
                delete_on_success: false,
                ..Default::default()
            });
            db.apply(Command::JobSubmit {
                id: id.clone(),
                spec,
                at_ms: 1,
            });
            // Ended in reverse order: the last submitted is the oldest.
            db.apply(Command::JobCancel {
                id: id.clone(),
                at_ms: 100 - i as u64,
            });
        }
        let page = |db: &Db, after: Option<&(u64, String)>| -> Vec<String> {
            crate::state::hotfolders::unpublished(db.sm.conn(), after, 2)
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect()
        };
        assert_eq!(page(&db, None), [ids[4].clone(), ids[3].clone()]);
        // Paging on: the first two (say, on a share refusing writes) do not
        // hide the rest.
        assert_eq!(
            page(&db, Some(&(97, ids[3].clone()))),
            [ids[2].clone(), ids[1].clone()]
        );
        assert_eq!(page(&db, Some(&(99, ids[1].clone()))), [ids[0].clone()]);
        db.apply(Command::JobPurge {
            finished_before_ms: 1000,
            keep_count: 0,
            batch_max: 100,
        });
        assert_eq!(
            page(&db, None).len(),
            2,
            "unpublished jobs are never purged"
        );
        db.apply(Command::JobsPublished {
            ids: vec![ids[4].clone()],
        });
        assert_eq!(page(&db, None), [ids[3].clone(), ids[2].clone()]);
        // A replica that never heard of a job does not take it for purged
        // (it may lag behind its submission); a purged one is recorded.
        use crate::state::hotfolders::settled;
        let unknown = crate::work::jobs::new_job_id(9, 9);
        assert_eq!(settled(db.sm.conn(), &unknown).unwrap(), None);
        assert_eq!(
            settled(db.sm.conn(), &ids[3]).unwrap(),
            None,
            "not published"
        );
        assert!(matches!(
            settled(db.sm.conn(), &ids[4]).unwrap(),
            Some(Some(_))
        ));
        db.apply(Command::JobPurge {
            finished_before_ms: 1000,
            keep_count: 0,
            batch_max: 100,
        });
        assert_eq!(
            settled(db.sm.conn(), &ids[4]).unwrap(),
            Some(None),
            "purged"
        );
        assert_eq!(settled(db.sm.conn(), &unknown).unwrap(), None);
    }
}
