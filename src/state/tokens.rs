//! The tokens table of `state.db`: API tokens by name, with their role and
//! the SHA-256 of the token (never the token itself), replicated like any
//! setting so that every instance checks the same tokens.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::web::access::Role;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (name TEXT PRIMARY KEY, role TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
";

/// One token as `claro token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
}

/// Adds a token; a name or hash already present changes nothing (the
/// client checks first and says so).
pub fn add(
    tx: &Transaction<'_>,
    name: &str,
    role: Role,
    hash: &str,
    at_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO tokens (name, role, hash, created_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![name, role.as_str(), hash, at_ms as i64])?;
    Ok(())
}

pub fn remove(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM tokens WHERE name = ?1")?
        .execute(params![name])?;
    Ok(())
}

/// The name and role of the token whose hash is `hash`.
pub fn by_hash(conn: &Connection, hash: &str) -> rusqlite::Result<Option<(String, Role)>> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT name, role FROM tokens WHERE hash = ?1")?
        .query_row(params![hash], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(name, role)| (name, Role::parse(&role).unwrap_or(Role::Viewer))))
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<TokenInfo>> {
    let mut stmt =
        conn.prepare_cached("SELECT name, role, created_ms FROM tokens ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenInfo {
            name: r.get(0)?,
            role: Role::parse(&r.get::<_, String>(1)?).unwrap_or(Role::Viewer),
            created_ms: r.get::<_, i64>(2)? as u64,
        })
    })?;
    rows.collect()
}

pub fn digest(conn: &Connection, field: &mut dyn FnMut(&[u8])) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("SELECT name, role, hash FROM tokens ORDER BY name")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        for i in 0..3 {
            field(row.get::<_, String>(i)?.as_bytes());
        }
    }
    Ok(())
}
