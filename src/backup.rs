//! The backup file of `claro backup` and `claro restore`: one file that
//! says what it holds and proves it is whole.
//!
//! Layout: `MAGIC`, the header's length (4 bytes, big-endian), the header
//! (CBOR: cluster id, applied index and term, time, the server that made
//! it, claro's version, and the database's size and SHA-256), then the
//! database (`state.db` as a consistent SQLite copy) to the end of the file.
//! A file whose magic, header, size or checksum is off is refused with the
//! reason, before anything is written.
//!
//! Only the replicated state is in it (settings, jobs, scripts, hotfolder
//! definitions, tokens' hashes, revoked certificates); the Raft log is not,
//! and neither is anything outside the data directory (the config, TLS
//! material, the shared folders).

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The first bytes of every backup file; the digit is the format's version.
pub const MAGIC: &[u8; 12] = b"CLAROBACKUP1";
/// The header's size limit: it holds a few short strings and numbers.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Each text of the header (cluster id, server, version), at most.
pub const HEADER_TEXT_BYTES_MAX: usize = 256;
/// The format version written in the header.
pub const FORMAT: u32 = 1;

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format: u32,
    /// The id of the cluster the database belongs to.
    pub cluster_id: String,
    /// The Raft index the database is at: every write acknowledged before
    /// the backup was asked for is in it.
    pub applied_index: u64,
    pub applied_term: u64,
    /// When the copy was made (ms since the Unix epoch, the server's clock).
    pub created_ms: u64,
    /// The server whose replica was copied.
    pub server: String,
    /// claro's version on that server.
    pub version: String,
    /// The database's size and SHA-256 (lowercase hex).
    pub size_bytes: u64,
    pub sha256: String,
}

impl BackupHeader {
    /// Checks what the header says on its own, before the body is read.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this claro reads format {FORMAT})",
                self.format
            ));
        }
        let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&self.sha256) {
            return Err("the header's checksum is not a SHA-256".into());
        }
        if self.cluster_id.is_empty() || self.applied_index == 0 {
            return Err("the header names no cluster or index".into());
        }
        let long = [&self.cluster_id, &self.server, &self.version, &self.sha256]
            .iter()
            .any(|s| s.len() > HEADER_TEXT_BYTES_MAX);
        if long {
            return Err(format!(
                "a text of the header is over {HEADER_TEXT_BYTES_MAX} bytes (HEADER_TEXT_BYTES_MAX)"
            ));
        }
        if self.size_bytes > crate::state::DATABASE_BYTES_MAX {
            return Err(format!(
                "the header announces {} bytes, over the database limit of {} (DATABASE_BYTES_MAX)",
                self.size_bytes,
                crate::state::DATABASE_BYTES_MAX
            ));
        }
        Ok(())
    }
}

/// Writes the magic and the header; the database's bytes follow.
pub fn write_header(out: &mut impl Write, header: &BackupHeader) -> std::io::Result<()> {
    let mut body = Vec::new();
    ciborium::into_writer(header, &mut body).map_err(std::io::Error::other)?;
    assert!(body.len() <= HEADER_BYTES_MAX, "a backup header is small");
    out.write_all(MAGIC)?;
    out.write_all(&(body.len() as u32).to_be_bytes())?;
    out.write_all(&body)
}

/// Reads and checks the magic and the header; the reader is left at the
/// database's first byte.
pub fn read_header(input: &mut impl Read) -> Result<BackupHeader, String> {
    let mut magic = [0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| "not a claro backup (too short)".to_string())?;
    if &magic != MAGIC {
        return Err("not a claro backup (its first bytes are not CLAROBACKUP1)".into());
    }
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|_| "the header is cut off".to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > HEADER_BYTES_MAX {
        return Err(format!(
            "the header's length {len} is over {HEADER_BYTES_MAX} bytes (HEADER_BYTES_MAX)"
        ));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .map_err(|_| "the header is cut off".to_string())?;
    let header: BackupHeader =
        ciborium::from_reader(&body[..]).map_err(|e| format!("the header is unreadable: {e}"))?;
    header.check()?;
    Ok(header)
}

/// Copies the database of the backup at `path` to `dest` (created, or
/// truncated), checking its size and SHA-256 on the way; returns the
/// header. Without `dest`, only checks. A file that fails is named with
/// the reason; `dest` is then removed.
pub fn extract(path: &Path, dest: Option<&Path>) -> Result<BackupHeader, String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| at(e.to_string()))?;
    let header = read_header(&mut f).map_err(at)?;
    let mut out = match dest {
        Some(d) => Some(std::fs::File::create(d).map_err(|e| format!("{}: {e}", d.display()))?),
        None => None,
    };
    let copied = copy_checked(&mut f, out.as_mut(), &header).map_err(at);
    let synced = match (&copied, out) {
        (Ok(()), Some(o)) => o.sync_all().map_err(|e| e.to_string()),
        _ => Ok(()),
    };
    if copied.is_err() || synced.is_err() {
        if let Some(d) = dest {
            let _ = std::fs::remove_file(d);
        }
    }
    copied?;
    synced?;
    Ok(header)
}

/// Reads the rest of `input` (into `out` too, when given) and compares its
/// size and SHA-256 with the header's.
fn copy_checked(
    input: &mut impl Read,
    mut out: Option<&mut std::fs::File>,
    header: &BackupHeader,
) -> Result<(), String> {
    let mut check = Check::new(header);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n])?;
        if let Some(o) = out.as_mut() {
            o.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
    }
    check.finish()
}

/// The database's bytes as they come, checked against the header's size
/// and SHA-256: for a file read back and for a backup being received.
pub struct Check {
    hash: Sha256,
    size_bytes: u64,
    want_bytes: u64,
    want_sha256: String,
}

impl Check {
    pub fn new(header: &BackupHeader) -> Check {
        Check {
            hash: Sha256::default(),
            size_bytes: 0,
            want_bytes: header.size_bytes,
            want_sha256: header.sha256.clone(),
        }
    }

    /// The next bytes; an error as soon as there are more than announced.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.size_bytes += bytes.len() as u64;
        if self.size_bytes > self.want_bytes {
            return Err(format!(
                "the database is longer than the {} bytes its header says",
                self.want_bytes
            ));
        }
        self.hash.update(bytes);
        Ok(())
    }

    /// All came: the size and the SHA-256 must be the header's.
    pub fn finish(self) -> Result<(), String> {
        if self.size_bytes != self.want_bytes {
            return Err(format!(
                "the database is cut off: {} of {} bytes",
                self.size_bytes, self.want_bytes
            ));
        }
        let sha = self.hash.finish();
        if sha != self.want_sha256 {
            return Err(format!(
                "the database is damaged: its SHA-256 is {sha}, the header says {}",
                self.want_sha256
            ));
        }
        Ok(())
    }
}

/// A running SHA-256, in the lowercase hex the header keeps.
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> String {
        crate::state::hex(self.0.finish().as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(db: &[u8]) -> BackupHeader {
        let mut h = Sha256::default();
        h.update(db);
        BackupHeader {
            format: FORMAT,
            cluster_id: "c0ffee".into(),
            applied_index: 42,
            applied_term: 3,
            created_ms: 1_700_000_000_000,
            server: "srv1".into(),
            version: "0.1.0".into(),
            size_bytes: db.len() as u64,
            sha256: h.finish(),
        }
    }

    fn file_of(header: &BackupHeader, db: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.claro");
        let mut f = std::fs::File::create(&path).unwrap();
        write_header(&mut f, header).unwrap();
        f.write_all(db).unwrap();
        (dir, path)
    }

    #[test]
    fn a_whole_file_extracts_to_its_database() {
        let db = b"SQLite format 3\0 and the rest".repeat(1000);
        let header = header_for(&db);
        let (dir, path) = file_of(&header, &db);
        let dest = dir.path().join("state.db");
        assert_eq!(extract(&path, Some(&dest)).unwrap(), header);
        assert_eq!(std::fs::read(&dest).unwrap(), db);
    }

    #[test]
    fn a_damaged_cut_or_foreign_file_is_refused_and_nothing_stays() {
        let db = b"0123456789".repeat(100);
        let header = header_for(&db);
        let mut flipped = db.clone();
        flipped[500] ^= 1;
        let (dir, path) = file_of(&header, &flipped);
        let dest = dir.path().join("state.db");
        let e = extract(&path, Some(&dest)).unwrap_err();
        assert!(e.contains("damaged") && e.contains("b.claro"), "{e}");
        assert!(!dest.exists(), "a refused file leaves no database");
        let (_d, cut) = file_of(&header, &db[..700]);
        assert!(extract(&cut, None)
            .unwrap_err()
            .contains("cut off: 700 of 1000"));
        let (_d, long) = file_of(&header, &[&db[..], b"x"].concat());
        assert!(extract(&long, None).unwrap_err().contains("longer"));
        std::fs::write(&path, b"SQLite format 3\0....").unwrap();
        assert!(extract(&path, None)
            .unwrap_err()
            .contains("not a claro backup"));
        let mut newer = header.clone();
        newer.format = 2;
        let (_d, future) = file_of(&newer, &db);
        assert!(extract(&future, None).unwrap_err().contains("format 2"));
    }

    #[test]
    fn a_hostile_header_length_is_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = read_header(&mut &bytes[..]).unwrap_err();
        assert!(e.contains("HEADER_BYTES_MAX"), "{e}");
    }
}
