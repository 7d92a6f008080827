//! The revoked certificates of `state.db`: SHA-256 fingerprints that every
//! instance refuses at the handshake (`tls::revocation`), replicated so that
//! one `claro cert revoke` reaches every server, including one that joins
//! later or comes back from an old copy (it receives the list with the log or
//! the snapshot).

use std::path::Path;

use rusqlite::{params, Connection, Transaction};

use crate::tls::revocation::{fingerprint_hex, parse_fingerprint, Fingerprint, REVOKED_COUNT_MAX};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revoked_certificates (fingerprint TEXT PRIMARY KEY,
  name TEXT NOT NULL, revoked_ms INTEGER NOT NULL);
";

/// Longest name recorded with a revocation (a server name, `client`, or
/// what the operator wrote).
pub const REVOKED_NAME_BYTES_MAX: usize = 256;

/// One revoked certificate as `claro cert revoked` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    /// Lowercase hex SHA-256 of the certificate.
    pub fingerprint: String,
    /// Whose certificate it was, as the operator named it.
    pub name: String,
    pub revoked_ms: u64,
}

/// Checks a revocation before it is proposed.
pub fn check(fingerprint: &str, name: &str) -> Result<(), String> {
    let canonical = parse_fingerprint(fingerprint)
        .map(|fp| fingerprint_hex(&fp) == fingerprint)
        .unwrap_or(false);
    if !canonical {
        return Err(format!(
            "`{fingerprint}` is not a fingerprint as stored (64 lowercase hex digits)"
        ));
    }
    if name.len() > REVOKED_NAME_BYTES_MAX {
        return Err(format!(
            "the name of a revoked certificate is at most {REVOKED_NAME_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

/// Adds a revocation; one already there keeps its first name and time.
/// Past `REVOKED_COUNT_MAX` nothing is added (the client checks first and
/// says so; a deterministic no-op keeps replicas equal).
pub fn add(
    tx: &Transaction<'_>,
    fingerprint: &str,
    name: &str,
    at_ms: u64,
) -> rusqlite::Result<()> {
    if count(tx)? >= REVOKED_COUNT_MAX {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO revoked_certificates (fingerprint, name, revoked_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![fingerprint, name, at_ms as i64])?;
    Ok(())
}

pub fn count(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached("SELECT count(*) FROM revoked_certificates")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|n| n as usize)
}

/// At most `REVOKED_COUNT_MAX`, even from a file that holds more (made
/// elsewhere, or edited): the live list asserts its limit.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Revoked>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, name, revoked_ms FROM revoked_certificates
         ORDER BY revoked_ms, fingerprint LIMIT ?1",
    )?;
    let rows = stmt.query_map([REVOKED_COUNT_MAX as i64], |r| {
        Ok(Revoked {
            fingerprint: r.get(0)?,
            name: r.get(1)?,
            revoked_ms: r.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
}

/// The fingerprints, for the live deny list.
pub fn fingerprints(conn: &Connection) -> rusqlite::Result<Vec<Fingerprint>> {
    let listed = list(conn)?;
    Ok(listed
        .iter()
        .filter_map(|r| parse_fingerprint(&r.fingerprint).ok())
        .collect())
}

/// The fingerprints in a database at rest, read before the instance opens
/// it, so that its endpoint refuses revoked peers from its first handshake.
/// A missing file, or one without the table yet, has none.
pub fn fingerprints_at_rest(path: &Path) -> Result<Vec<Fingerprint>, String> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'revoked_certificates'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| e.to_string())?
        > 0;
    if !has_table {
        return Ok(Vec::new());
    }
    fingerprints(&conn).map_err(|e| e.to_string())
}

pub fn digest(conn: &Connection, field: &mut dyn FnMut(&[u8])) -> rusqlite::Result<()> {
    for r in list(conn)? {
        field(r.fingerprint.as_bytes());
        field(r.name.as_bytes());
        field(&r.revoked_ms.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::revocation::fingerprint;

    /// A database holding more revocations than the limit (made elsewhere,
    /// or edited) gives the live list no more than it allows: the instance
    /// that receives it does not stop on the list's assertion.
    #[test]
    fn a_file_with_too_many_revocations_is_read_up_to_the_limit() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut insert = conn
            .prepare("INSERT INTO revoked_certificates VALUES (?1, 'x', ?2)")
            .unwrap();
        for i in 0..=REVOKED_COUNT_MAX as u64 {
            let fp = fingerprint_hex(&fingerprint(&i.to_be_bytes()));
            insert.execute(rusqlite::params![fp, i as i64]).unwrap();
        }
        let listed = fingerprints(&conn).unwrap();
        assert_eq!(listed.len(), REVOKED_COUNT_MAX);
        crate::tls::DenyList::default().replace(listed);
    }
}
