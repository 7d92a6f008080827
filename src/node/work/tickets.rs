//! Job tickets on disk: the ticket taken with a hotfolder file (moved into
//! the job's working folder at the claim, so that it travels with the file
//! and nobody else takes it), the marker removed then, and the fields a
//! script set (`ticket_set`), kept per attempt beside its staged outputs
//! for the result ticket. Paths come from the caller (`hotfolder::Layout`);
//! what a ticket means is in `work::ticket`.

use std::path::{Path, PathBuf};

use super::work_area::{make_parent, WorkArea};
use crate::work::jobs::FileInput;
use crate::work::ticket::{self, Fields};

/// The job's ticket where the claim put it: inside the claimed job folder
/// (`ticket.json`), or in the working folder (a sidecar, `WorkArea::sidecar`).
pub fn claimed(area: &WorkArea, claimed_input: &Path, file: &FileInput) -> Option<PathBuf> {
    let t = file.ticket.as_deref()?;
    if let Some(inner) = t.strip_prefix(&format!("{}/", file.input)) {
        return Some(claimed_input.join(inner));
    }
    Some(area.sidecar(base_name(t)))
}

/// The sidecar ticket the claim moved into the working folder, if the job
/// has one and it is still there (a ticket inside a job folder moves with
/// the folder).
pub fn claimed_sidecar(area: &WorkArea, file: &FileInput) -> Option<PathBuf> {
    let t = file.ticket.as_deref()?;
    if t.starts_with(&format!("{}/", file.input)) {
        return None;
    }
    let path = area.sidecar(base_name(t));
    path.exists().then_some(path)
}

/// Moves the sidecar ticket from `from_dir` (`in/`, or `error/` for a
/// failed job retried) into the working folder, and removes the marker;
/// again after a crash, each is done if it is still to do.
pub fn claim(
    area: &WorkArea,
    (from_dir, from_error): (&Path, bool),
    file: &FileInput,
) -> Result<(), String> {
    if let Some(m) = &file.marker {
        match std::fs::remove_file(from_dir.join(m)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing the marker {m}: {e}"))
            }
            _ => {}
        }
    }
    let Some(t) = file.ticket.as_deref() else {
        return Ok(());
    };
    if t.starts_with(&format!("{}/", file.input)) {
        return Ok(()); // inside the job folder: moved with it
    }
    let to = area.sidecar(base_name(t));
    if to.exists() {
        return Ok(());
    }
    make_parent(&to)?;
    // From error/, the ticket sits beside the original under its name.
    let source = if from_error {
        let suffix = &t[file.input.len().min(t.len())..];
        from_dir.join(format!("{}{suffix}", file.input))
    } else {
        from_dir.join(t)
    };
    match std::fs::rename(&source, &to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("claiming the ticket {t}: {e}"))
        }
        _ => Ok(()),
    }
}

/// The fields of the job's ticket (none without one). A ticket that is
/// gone, unreadable or malformed fails the attempt with the reason.
pub fn read(area: &WorkArea, claimed_input: &Path, file: &FileInput) -> Result<Fields, String> {
    let Some(path) = claimed(area, claimed_input, file) else {
        return Ok(Fields::new());
    };
    let name = file.ticket.as_deref().unwrap_or_default();
    let bytes = read_bounded(&path).map_err(|e| format!("the ticket {name}: {e}"))?;
    ticket::parse(name, &bytes)
}

/// A ticket's bytes: a regular file only, never followed through a
/// symbolic link (a link to `/dev/zero` or to a secret elsewhere), never
/// a FIFO or device (which would block or never end), read up to one
/// byte past `TICKET_BYTES_MAX` whatever its size says.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file (a link, folder, FIFO or device is not a ticket)".into());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    if !f
        .metadata()
        .map_err(|e| e.to_string())?
        .file_type()
        .is_file()
    {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    f.take(ticket::TICKET_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > ticket::TICKET_BYTES_MAX {
        return Err(format!(
            "over the limit of {} bytes (TICKET_BYTES_MAX)",
            ticket::TICKET_BYTES_MAX
        ));
    }
    Ok(bytes)
}

/// Keeps the fields a script set (nothing when it set none).
pub fn write_fields(path: &Path, fields: &Fields) -> Result<(), String> {
    if fields.is_empty() {
        return Ok(());
    }
    let bytes = serde_json::to_vec(fields).expect("fields encode");
    let tmp = path.with_extension("claro-tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("keeping the ticket fields in {}: {e}", path.display()))
}

/// The fields an attempt kept; none when it kept none (or they cannot be
/// read: the result ticket is written without them rather than never).
pub fn read_fields(path: &Path) -> Fields {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn base_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile job folder's `ticket.json` cannot make the instance read
    /// what it points to, hang on a FIFO, or read without end.
    #[test]
    fn a_ticket_is_a_regular_file_read_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"a": 1}"#).unwrap();
        assert_eq!(read_bounded(&good).unwrap(), br#"{"a": 1}"#);
        let secret = dir.path().join("secret.json");
        std::fs::write(&secret, r#"{"key": "hunter2"}"#).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(read_bounded(&link).unwrap_err().contains("regular file"));
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_bounded(&zero).is_err());
        let fifo = dir.path().join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_bounded(&fifo).unwrap_err().contains("regular file"));
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; ticket::TICKET_BYTES_MAX + 10]).unwrap();
        assert!(read_bounded(&big).unwrap_err().contains("TICKET_BYTES_MAX"));
    }
}
