//! One hotfolder job's working folder on the share (`.claro/work/ID/`) and
//! where each thing in it lives, in either of two layouts:
//!
//! - **flat** (from protocol level `version::LEVEL_FLAT_WORK_AREA`): the
//!   claimed input directly in `ID/` under its own name; claro's own files
//!   beside it under names starting with `.claro-` (a name that is never
//!   taken from `in/`, `work::hotfolder::RESERVED_PREFIX`); each attempt's
//!   outputs in `ID/.claro-out-N/`. Two folders per file: on a network
//!   share every `mkdir` and `rmdir` is a round trip, and on a local disk
//!   inode allocation was a tenth of a file's cost.
//! - **nested** (every earlier version): `ID/in/NAME`, `ID/N/out/`,
//!   `ID/N/fields.json`, `ID/ticket/NAME` and the markers without the
//!   prefix: four folders. Still read, so that a job claimed that way
//!   (before or during a rolling upgrade) is published whole.
//!
//! Which layout a folder has is read from its listing once
//! (`WorkArea::open`): any entry of claro's prefixed names makes it flat
//! (a flat one holds its claim time from before the claim's rename on);
//! `in/`, `ticket/`, an attempt's numbered folder or an unprefixed marker
//! makes it nested (what a crash in the middle of removing one may leave).

use std::path::{Path, PathBuf};

use crate::work::hotfolder::RESERVED_PREFIX;

/// Marker names, as written in the nested layout (the flat one prefixes them).
pub const CLAIMED_AT: &str = "claimed-at";
pub const COMPANIONS_TAKEN: &str = "companions-taken";
pub const TICKET_STAGED: &str = "ticket-staged";
pub const TICKET_MADE: &str = "result-ticket";

/// Entries of a working folder looked at to tell its layout, at most (a
/// job folder's own entries are inside it: a handful are expected).
const ENTRIES_LOOKED_MAX: usize = 1_000;

/// Whether a working folder holding `names` is nested (`Some(true)`),
/// flat (`Some(false)`), or says nothing (`None`: not made, or empty).
fn layout_of(names: &[String]) -> Option<bool> {
    if names.iter().any(|n| n.starts_with(RESERVED_PREFIX)) {
        return Some(false);
    }
    let nested_marks = [
        "in",
        "ticket",
        CLAIMED_AT,
        COMPANIONS_TAKEN,
        TICKET_STAGED,
        TICKET_MADE,
    ];
    let nested = names.iter().any(|n| {
        nested_marks.contains(&n.as_str())
            || (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    nested.then_some(true)
}

/// A job's working folder, with its layout.
#[derive(Debug, Clone)]
pub struct WorkArea {
    pub root: PathBuf,
    nested: bool,
}

impl WorkArea {
    /// The working folder at `root` as it is on the share: nested when it
    /// was made so; flat when it is flat or not made yet and `flat` says
    /// new ones are (the cluster's level).
    pub fn open(root: PathBuf, flat: bool) -> WorkArea {
        let names: Vec<String> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .take(ENTRIES_LOOKED_MAX)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let nested = match layout_of(&names) {
            Some(nested) => nested,
            None => !flat,
        };
        WorkArea { root, nested }
    }

    pub fn is_flat(&self) -> bool {
        !self.nested
    }

    /// The folder holding the claimed input.
    pub fn claimed_dir(&self) -> PathBuf {
        match self.nested {
            true => self.root.join("in"),
            false => self.root.clone(),
        }
    }

    /// The claimed input (a file or a job folder), by its base name.
    pub fn claimed(&self, base_name: &str) -> PathBuf {
        self.claimed_dir().join(base_name)
    }

    /// Whether `name`, an entry of `claimed_dir`, is the claimed input (not
    /// one of claro's own files beside it in the flat layout).
    pub fn is_input(&self, name: &str) -> bool {
        self.nested || !name.starts_with(RESERVED_PREFIX)
    }

    /// Attempt `attempt`'s staging folder, for its outputs.
    pub fn staging(&self, attempt: u32) -> PathBuf {
        match self.nested {
            true => self.root.join(attempt.to_string()).join("out"),
            false => self.root.join(format!("{RESERVED_PREFIX}out-{attempt}")),
        }
    }

    /// Where attempt `attempt`'s ticket fields (`ticket_set`) are kept.
    pub fn fields(&self, attempt: u32) -> PathBuf {
        match self.nested {
            true => self.root.join(attempt.to_string()).join("fields.json"),
            false => self
                .root
                .join(format!("{RESERVED_PREFIX}fields-{attempt}.json")),
        }
    }

    /// Where the claim keeps a sidecar ticket named `base_name`.
    pub fn sidecar(&self, base_name: &str) -> PathBuf {
        match self.nested {
            true => self.root.join("ticket").join(base_name),
            false => self
                .root
                .join(format!("{RESERVED_PREFIX}ticket-{base_name}")),
        }
    }

    /// One of claro's marker files (`CLAIMED_AT`, ...).
    pub fn marker(&self, name: &str) -> PathBuf {
        match self.nested {
            true => self.root.join(name),
            false => self.root.join(format!("{RESERVED_PREFIX}{name}")),
        }
    }
}

/// The folder of `path`, made if missing (with its parents).
pub fn make_parent(path: &Path) -> Result<(), String> {
    let dir = path.parent().expect("a path in a folder");
    std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_area_keeps_everything_in_two_folders_and_a_nested_one_is_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ID");
        let flat = WorkArea::open(root.clone(), true);
        assert!(flat.is_flat());
        assert_eq!(flat.claimed("a.pdf"), root.join("a.pdf"));
        assert_eq!(flat.staging(2).parent().unwrap(), root);
        assert_eq!(flat.fields(2).parent().unwrap(), root);
        assert_eq!(flat.sidecar("a.pdf.json").parent().unwrap(), root);
        assert!(!flat.is_input(".claro-claimed-at") && flat.is_input("a.pdf"));
        // A folder made nested is read nested whatever the level says.
        std::fs::create_dir_all(root.join("in")).unwrap();
        let nested = WorkArea::open(root.clone(), true);
        assert!(!nested.is_flat());
        assert_eq!(nested.claimed("a.pdf"), root.join("in/a.pdf"));
        assert_eq!(nested.staging(2), root.join("2/out"));
        // A flat one whose input is a folder named `in` stays flat.
        std::fs::write(flat.marker(CLAIMED_AT), "1").unwrap();
        assert!(WorkArea::open(root.clone(), false).is_flat());
        // Not made yet: as the level says.
        let other = tmp.path().join("OTHER");
        assert!(!WorkArea::open(other.clone(), false).is_flat());
        assert!(WorkArea::open(other.clone(), true).is_flat());
        // What a crash while removing a nested one may leave, or a nested
        // one holding only a sidecar ticket: still nested.
        for left in ["1", "ticket", "ticket-staged", "companions-taken"] {
            let dir = tmp.path().join(format!("left-{left}"));
            std::fs::create_dir_all(dir.join(left)).unwrap();
            assert!(!WorkArea::open(dir, true).is_flat(), "{left}");
        }
    }
}
