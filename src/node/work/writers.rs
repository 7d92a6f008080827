//! Which files a process on this machine holds open for writing, read from
//! Linux's /proc, so that a hotfolder never takes a file whose writer still
//! has it open (a writer that paused longer than `stable_ms`).
//!
//! Local only, and only the processes this instance may look into (all of
//! them as root; its own user's otherwise): a file written over a share
//! from another machine is guarded by its stability and by the checks
//! around the claim (the file must be the one found stable, and unchanged
//! after the action). The cost is one `stat` per open descriptor on the
//! machine, bounded by `PROC_FDS_SCANNED_MAX`, and paid only when a file
//! is about to be taken.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Open descriptors looked at per check, at most: past it the check ends
/// and says so (a file then relies on the other checks).
pub const PROC_FDS_SCANNED_MAX: usize = 200_000;

/// A process holding a file open for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), for the message.
    pub command: String,
}

/// Of `files` (device, inode), those a local process holds open for
/// writing, with one such process each. Empty when /proc cannot be read.
pub fn open_for_writing(files: &HashSet<(u64, u64)>) -> HashMap<(u64, u64), Writer> {
    let mut found = HashMap::new();
    if files.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id();
    let mut scanned = 0usize;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue; // an instance never writes into `in/`
        }
        scanned += writers_in(pid, files, &mut found);
        if scanned >= PROC_FDS_SCANNED_MAX || found.len() == files.len() {
            break;
        }
    }
    found
}

/// Adds `pid`'s descriptors open for writing on one of `files`; returns
/// how many descriptors it looked at.
fn writers_in(
    pid: u32,
    files: &HashSet<(u64, u64)>,
    found: &mut HashMap<(u64, u64), Writer>,
) -> usize {
    let dir = format!("/proc/{pid}/fd");
    let Ok(fds) = std::fs::read_dir(&dir) else {
        return 0; // gone, or not ours to look into
    };
    let mut count = 0;
    for fd in fds.flatten() {
        count += 1;
        // `metadata` follows the descriptor's link to the open file itself.
        let Ok(meta) = std::fs::metadata(fd.path()) else {
            continue;
        };
        let key = (meta.dev(), meta.ino());
        if !files.contains(&key) || found.contains_key(&key) {
            continue;
        }
        let info = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(fd.file_name());
        if std::fs::read_to_string(info).is_ok_and(|t| writes(&t)) {
            let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            found.insert(key, Writer { pid, command });
        }
    }
    count
}

/// Whether an fdinfo text's `flags:` (octal) open the file for writing.
fn writes(fdinfo: &str) -> bool {
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
    flags.is_some_and(|f| f & (libc::O_WRONLY | libc::O_RDWR) as u32 != 0)
}

/// The (device, inode) of `path`, if it exists.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file held open for writing by another process is found, with that
    /// process; once it closes the file, it is not; a file open only for
    /// reading never is.
    #[test]
    fn a_file_open_for_writing_by_another_process_is_found_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("written.pdf");
        let read = dir.path().join("read.pdf");
        std::fs::write(&read, b"x").unwrap();
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3>>'{}' 4<'{}'; echo ready; read line",
                written.display(),
                read.display()
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        let out = writer.stdout.as_mut().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready).unwrap();
        let files: HashSet<_> = [identity(&written).unwrap(), identity(&read).unwrap()].into();
        let found = open_for_writing(&files);
        let w = found.get(&identity(&written).unwrap()).expect("the writer");
        assert_eq!(w.pid, writer.id());
        assert_eq!(w.command, "sh");
        assert!(!found.contains_key(&identity(&read).unwrap()), "{found:?}");
        drop(writer.stdin.take());
        writer.wait().unwrap();
        assert!(open_for_writing(&files).is_empty());
    }

    #[test]
    fn fdinfo_flags_are_read_as_octal() {
        assert!(writes("pos:\t0\nflags:\t0100001\nmnt_id:\t1\n"));
        assert!(writes("flags:\t02\n"));
        assert!(!writes("pos:\t0\nflags:\t0100000\n"));
        assert!(!writes("nothing here"));
    }
}
