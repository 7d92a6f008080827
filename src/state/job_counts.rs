//! Jobs by state and kind on this replica, kept as they change, so that
//! `/metrics` and the queue depth cost a lookup instead of a scan of a
//! million jobs under the core's lock.
//!
//! Like the job feed, these are temp triggers on the state connection: never
//! in the database file, the digest or a snapshot. The counts are taken once
//! when the connection opens (a start, an installed snapshot) and follow
//! every insert, delete and change of state or kind inside the apply's own
//! transaction, so a rolled-back apply rolls them back too.

pub(super) const SCHEMA_TEMP: &str = "
CREATE TEMP TABLE IF NOT EXISTS job_counts (
  state TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (state, kind));
DELETE FROM temp.job_counts;
INSERT INTO temp.job_counts (state, kind, n)
  SELECT state, kind, count(*) FROM main.jobs GROUP BY state, kind;
CREATE TEMP TRIGGER IF NOT EXISTS job_counts_insert AFTER INSERT ON main.jobs BEGIN
  INSERT INTO job_counts (state, kind, n) VALUES (new.state, new.kind, 1)
    ON CONFLICT (state, kind) DO UPDATE SET n = n + 1;
END;
CREATE TEMP TRIGGER IF NOT EXISTS job_counts_delete AFTER DELETE ON main.jobs BEGIN
  UPDATE job_counts SET n = n - 1 WHERE state = old.state AND kind = old.kind;
END;
CREATE TEMP TRIGGER IF NOT EXISTS job_counts_update AFTER UPDATE OF state, kind ON main.jobs
  WHEN old.state IS NOT new.state OR old.kind IS NOT new.kind BEGIN
  UPDATE job_counts SET n = n - 1 WHERE state = old.state AND kind = old.kind;
  INSERT INTO job_counts (state, kind, n) VALUES (new.state, new.kind, 1)
    ON CONFLICT (state, kind) DO UPDATE SET n = n + 1;
END;";

/// Whether the kept counts equal a count of the jobs themselves (a full
/// scan: for assertions in debug builds and tests).
pub fn agree(conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT NOT EXISTS (
           SELECT state, kind, n FROM temp.job_counts WHERE n != 0
           EXCEPT SELECT state, kind, count(*) FROM main.jobs GROUP BY state, kind)
         AND NOT EXISTS (
           SELECT state, kind, count(*) FROM main.jobs GROUP BY state, kind
           EXCEPT SELECT state, kind, n FROM temp.job_counts WHERE n != 0)",
        [],
        |r| r.get(0),
    )
}
