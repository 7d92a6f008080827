//! Job folders on disk: what a folder dropped into a hotfolder's `in/`
//! holds (its files, its fingerprint for the stability and unchanged
//! checks), bounded by `FOLDER_ENTRIES_MAX` and `FOLDER_DEPTH_MAX`. The
//! rules (what is stable, what is a unit) are in `work::hotfolder`; this
//! only looks at the disk. Symbolic links inside are listed as entries,
//! never followed.

use std::path::{Path, PathBuf};

use crate::work::hotfolder::{folder_print, FOLDER_DEPTH_MAX, FOLDER_ENTRIES_MAX};

/// A job folder as listed: its files (paths relative to it, `/`-separated,
/// sorted), their total size, the latest modification below it, and its
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<String>,
    pub bytes: u64,
    pub modified_ms: u64,
    pub print: u64,
}

/// Lists the folder `dir`; an error names a limit broken or what could
/// not be read.
pub fn list(dir: &Path) -> Result<Listing, String> {
    let mut entries: Vec<(String, u64, u64)> = Vec::new();
    let mut files = Vec::new();
    let (mut bytes, mut modified_ms) = (0u64, 0u64);
    let mut dirs: Vec<(PathBuf, String, usize)> = vec![(dir.to_path_buf(), String::new(), 0)];
    while let Some((path, rel, depth)) = dirs.pop() {
        let read = std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in read {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let here = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            let mtime = crate::work::jobs::modified_ms(&meta);
            if entries.len() >= FOLDER_ENTRIES_MAX {
                return Err(format!(
                    "it has more than {FOLDER_ENTRIES_MAX} entries (FOLDER_ENTRIES_MAX)"
                ));
            }
            if meta.is_dir() {
                if depth + 1 > FOLDER_DEPTH_MAX {
                    return Err(format!(
                        "it is nested deeper than {FOLDER_DEPTH_MAX} folders (FOLDER_DEPTH_MAX)"
                    ));
                }
                entries.push((format!("{here}/"), 0, 0));
                dirs.push((entry.path(), here, depth + 1));
                continue;
            }
            bytes = bytes.saturating_add(meta.len());
            modified_ms = modified_ms.max(mtime);
            entries.push((here.clone(), meta.len(), mtime));
            files.push(here);
        }
    }
    files.sort();
    Ok(Listing {
        files,
        bytes,
        modified_ms,
        print: folder_print(&mut entries),
    })
}

/// The identities (device, inode) of the regular files in the folder, for
/// the look for writers that still hold one open; at most
/// `FOLDER_ENTRIES_MAX`.
pub fn identities(dir: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), 0)];
    while let Some((path, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < FOLDER_DEPTH_MAX {
                dirs.push((entry.path(), depth + 1));
            } else if meta.is_file() {
                out.push((meta.dev(), meta.ino()));
            }
            if out.len() >= FOLDER_ENTRIES_MAX {
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adding, renaming, growing or touching anything inside changes the
    /// print; moving the folder itself does not.
    #[test]
    fn a_folder_s_print_follows_its_contents_not_its_place() {
        let t = tempfile::tempdir().unwrap();
        let job = t.path().join("Job 4711");
        std::fs::create_dir_all(job.join("parts")).unwrap();
        std::fs::write(job.join("cover.pdf"), "cover").unwrap();
        std::fs::write(job.join("parts/inner.pdf"), "inner").unwrap();
        let first = list(&job).unwrap();
        assert_eq!(first.files, vec!["cover.pdf", "parts/inner.pdf"]);
        assert_eq!(first.bytes, 10);
        let moved = t.path().join("elsewhere");
        std::fs::rename(&job, &moved).unwrap();
        assert_eq!(list(&moved).unwrap(), first, "a move keeps the print");
        std::fs::write(moved.join("parts/more.pdf"), "").unwrap();
        let added = list(&moved).unwrap();
        assert_ne!(added.print, first.print);
        std::fs::rename(
            moved.join("parts/more.pdf"),
            moved.join("parts/renamed.pdf"),
        )
        .unwrap();
        let renamed = list(&moved).unwrap();
        assert_ne!(renamed.print, added.print);
        std::fs::create_dir(moved.join("empty")).unwrap();
        assert_ne!(list(&moved).unwrap().print, renamed.print);
    }

    #[test]
    fn a_folder_past_its_limits_is_refused_naming_the_limit() {
        let t = tempfile::tempdir().unwrap();
        let mut deep = t.path().to_path_buf();
        for i in 0..=FOLDER_DEPTH_MAX {
            deep = deep.join(i.to_string());
        }
        std::fs::create_dir_all(&deep).unwrap();
        let e = list(t.path()).unwrap_err();
        assert!(e.contains("FOLDER_DEPTH_MAX"), "{e}");
    }
}
