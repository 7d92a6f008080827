//! A script's file functions (`file_read`, `file_write`, `file_list`,
//! `file_exists`, `file_remove`), carried out by the instance for the
//! script's worker.
//!
//! The instance may run as root and the jobs as `run_as`, who can make
//! links in the share; so no path is trusted between its check and its use.
//! Every operation walks from an open descriptor of `shared_root`, one
//! folder at a time, checks where each opened folder really is (by its
//! `/proc/self/fd` link), and acts on the last name relative to that folder
//! (`openat` with `O_NOFOLLOW`, `renameat`, `unlinkat`). A link swapped in
//! at any moment therefore leads nowhere the check did not see.
//!
//! Where a script may go (`Reach`): anywhere under `shared_root`, except a
//! hotfolder's working area (`NAME/.claro/`), which is claro's and its
//! running jobs'; a hotfolder action reads its own job's working folder and
//! writes only in its staging folder.
//!
//! What it must not do: follow a link out of `shared_root`, read a FIFO or
//! device (it would block or never end), or change a file that has another
//! name somewhere (a hard link may lead outside).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use crate::work::hotfolder::WORK_DIR;
use crate::work::script::FileOp;

/// Entries one `file_list` returns at most.
pub const LIST_ENTRIES_MAX: usize = 10_000;
/// Tries for a free temporary name beside a written file.
const TEMP_TRIES_MAX: u32 = 16;
/// Bytes of the written file's name kept in its temporary name.
const TEMP_BASE_BYTES_MAX: usize = 200;

/// Where one script's file functions may go.
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub root: &'a Path,
    /// Writes and removals only under this folder (a hotfolder action's
    /// staging folder); `None`: anywhere under `root` but working areas.
    pub write_under: Option<&'a Path>,
    /// The one folder inside a working area the script may read (a
    /// hotfolder action's own job folder: its claimed input and ticket).
    pub own_work: Option<&'a Path>,
}

/// The reach with every folder resolved.
struct Place {
    root: PathBuf,
    write_under: Option<PathBuf>,
    own_work: Option<PathBuf>,
}

fn resolved(path: &Path) -> Result<PathBuf, String> {
    path.canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl Place {
    fn of(reach: Reach<'_>) -> Result<Place, String> {
        let root = reach
            .root
            .canonicalize()
            .map_err(|e| format!("shared_root {}: {e}", reach.root.display()))?;
        Ok(Place {
            write_under: reach.write_under.map(resolved).transpose()?,
            own_work: reach.own_work.map(resolved).transpose()?,
            root,
        })
    }

    /// The folder inside a working area this operation may reach.
    fn allowed(&self, change: bool) -> Option<&Path> {
        match change {
            true => self.write_under.as_deref(),
            false => self.own_work.as_deref().or(self.write_under.as_deref()),
        }
    }

    /// Why the script may not reach `real` (a resolved place), or `None`.
    /// `on_the_way`: `real` is a folder on the way to the target, which
    /// may also be an ancestor of the allowed folder.
    fn refusal(&self, real: &Path, rel: &str, change: bool, on_the_way: bool) -> Option<String> {
        let Ok(inside) = real.strip_prefix(&self.root) else {
            return Some(format!("`{rel}` leads outside shared_root"));
        };
        let allowed = self.allowed(change);
        let fits =
            |folder: &Path| real.starts_with(folder) || (on_the_way && folder.starts_with(real));
        if let (true, Some(within)) = (change, &self.write_under) {
            if !fits(within) {
                return Some(format!(
                    "`{rel}` is outside this file's output folder (FILE.output_dir)"
                ));
            }
        }
        let reserved = inside.components().any(|c| match c {
            Component::Normal(name) => name
                .to_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(WORK_DIR)),
            _ => false,
        }) || self.is_work_dir_by_identity(inside);
        if reserved && !allowed.is_some_and(fits) {
            return Some(format!(
                "`{rel}` is in a hotfolder's working area ({WORK_DIR}/), which belongs to claro and the jobs running there"
            ));
        }
        None
    }

    /// Whether the second folder of `inside` (`NAME/X`, where a hotfolder's
    /// working area is `NAME/.claro`) is that working area under another
    /// name: an SMB share answers to a short name (`CLARO~1`) too, and the
    /// kernel then names the path so. Compared by device and inode.
    fn is_work_dir_by_identity(&self, inside: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let mut parts = inside.components();
        let (Some(Component::Normal(name)), Some(Component::Normal(x))) =
            (parts.next(), parts.next())
        else {
            return false;
        };
        let hotfolder = self.root.join(name);
        let (Ok(work), Ok(this)) = (
            std::fs::metadata(hotfolder.join(WORK_DIR)),
            std::fs::metadata(hotfolder.join(x)),
        ) else {
            return false;
        };
        (work.dev(), work.ino()) == (this.dev(), this.ino())
    }

    /// `rel`'s place before anything is opened: its text, and where the
    /// deepest part that exists leads (a dangling link does not resolve, so
    /// it is refused). Gives the clear error; the walk checks again.
    fn precheck(&self, rel: &str, change: bool) -> Result<(), String> {
        if !rel.is_empty() {
            crate::work::jobs::check_relative(rel)?;
        }
        let path = self.root.join(rel);
        let mut existing = path.as_path();
        while existing.symlink_metadata().is_err() {
            existing = existing.parent().unwrap_or(&self.root);
        }
        let real = existing
            .canonicalize()
            .map_err(|e| format!("`{rel}`: {e}"))?;
        let rest = path.strip_prefix(existing).unwrap_or(Path::new(""));
        match self.refusal(&real.join(rest), rel, change, false) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Opens the folder that holds `rel`'s last name, walking from the
    /// root and checking each folder's real place; `create` makes missing
    /// folders (only inside folders already checked).
    fn open_parent(
        &self,
        rel: &str,
        change: bool,
        create: bool,
    ) -> Result<(OwnedFd, CString), String> {
        self.precheck(rel, change)?;
        let mut parts: Vec<&std::ffi::OsStr> = Path::new(rel)
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let name = parts
            .pop()
            .ok_or_else(|| format!("`{rel}` names no file"))?;
        let mut dir = open_dir(libc::AT_FDCWD, &self.root)?;
        for part in parts {
            if create {
                // Made only where the walk may go: a link swapped in after
                // the precheck must not have a folder made through it.
                let at = real_place(&dir)?.join(part);
                if let Some(why) = self.refusal(&at, rel, change, true) {
                    return Err(why);
                }
                make_dir(&dir, part)?;
            }
            dir = open_dir(dir.as_raw_fd(), Path::new(part))?;
            if let Some(why) = self.refusal(&real_place(&dir)?, rel, change, true) {
                return Err(why);
            }
        }
        if let Some(why) = self.refusal(&real_place(&dir)?.join(name), rel, change, false) {
            return Err(why);
        }
        Ok((dir, c_name(name)?))
    }
}

fn c_name(name: &std::ffi::OsStr) -> Result<CString, String> {
    CString::new(name.as_bytes()).map_err(|_| "a path holds a NUL byte".to_string())
}

fn last_error() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Opens folder `path` relative to `at` (following links: where it really
/// is, is checked after).
fn open_dir(at: libc::c_int, path: &Path) -> Result<OwnedFd, String> {
    let c = c_name(path.as_os_str())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid C string; the descriptor returned is owned here.
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!("{}: {}", path.display(), last_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn make_dir(dir: &OwnedFd, name: &std::ffi::OsStr) -> Result<(), String> {
    let c = c_name(name)?;
    // SAFETY: a valid descriptor and C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o777) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::AlreadyExists => Ok(()),
        _ => Err(format!("{}: {e}", name.to_string_lossy())),
    }
}

/// Where an open descriptor really is.
fn real_place(fd: &OwnedFd) -> Result<PathBuf, String> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())
}

/// Opens `name` in `dir` without following a link in its last part.
fn open_at(dir: &OwnedFd, name: &CString, flags: libc::c_int) -> std::io::Result<File> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid descriptor and C string; the mode is read only with O_CREAT.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o666 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A file a script reads or changes is a regular file with one name: a
/// FIFO or device would block or never end, and a second hard link may be
/// a file outside `shared_root` (a link does not show where the other name
/// is), which no path check can see.
fn plain_file(file: &File, rel: &str) -> Result<std::fs::Metadata, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("`{rel}` is not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(format!(
            "`{rel}` has {} hard links: a file with more than one name may be one outside shared_root, so scripts may not read or change it",
            meta.nlink()
        ));
    }
    Ok(meta)
}

/// One file operation of a script, within `reach`.
pub fn file_op(reach: Reach<'_>, op: FileOp) -> Result<Value, String> {
    let place = Place::of(reach)?;
    match op {
        FileOp::Read(rel) => read(&place, &rel).map(Value::String),
        FileOp::Write {
            path,
            text,
            append: true,
        } => append(&place, &path, &text).map(|()| Value::Null),
        FileOp::Write {
            path,
            text,
            append: false,
        } => write(&place, &path, &text).map(|()| Value::Null),
        FileOp::List(rel) => list(&place, &rel),
        FileOp::Exists(rel) => exists(&place, &rel).map(Value::Bool),
        FileOp::Remove(rel) => remove(&place, &rel).map(Value::Bool),
    }
}

/// Whether the walk failed because a folder on the way is not there (or
/// is a file): then the name is not there either.
fn missing(walk_error: &str) -> bool {
    walk_error.contains("(os error 2)") || walk_error.contains("(os error 20)")
}

/// Whether the name is there (a link counts as itself, not followed).
fn exists(place: &Place, rel: &str) -> Result<bool, String> {
    if rel.is_empty() {
        place.precheck(rel, false)?;
        return Ok(true);
    }
    let (dir, name) = match place.open_parent(rel, false, false) {
        Ok(opened) => opened,
        Err(e) if e.contains("(os error 2)") || e.contains("(os error 20)") => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and C string; `stat` is written on success.
    let found = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Ok(found == 0)
}

fn read(place: &Place, rel: &str) -> Result<String, String> {
    let (dir, name) = place.open_parent(rel, false, false)?;
    // Non-blocking, so that opening a FIFO returns (and is then refused).
    let file =
        open_at(&dir, &name, libc::O_RDONLY | libc::O_NONBLOCK).map_err(|e| e.to_string())?;
    let bytes = plain_file(&file, rel)?.len();
    let max = crate::work::script::STRING_BYTES_MAX as u64;
    if bytes > max {
        return Err(format!("{bytes} bytes, the limit is {max}"));
    }
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    String::from_utf8(data).map_err(|_| "not UTF-8 text".into())
}

/// Appends to a file of one name, made if missing.
fn append(place: &Place, rel: &str, text: &str) -> Result<(), String> {
    let (dir, name) = place.open_parent(rel, true, true)?;
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NONBLOCK;
    let mut file = open_at(&dir, &name, flags).map_err(|e| format!("`{rel}`: {e}"))?;
    plain_file(&file, rel)?;
    file.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

/// Writes a new file through a temporary one (made new, never through a
/// link) renamed over the name, so that nobody (a hotfolder scan included)
/// sees half a file and another name's content never changes.
fn write(place: &Place, rel: &str, text: &str) -> Result<(), String> {
    let (dir, name) = place.open_parent(rel, true, true)?;
    // Bounded, so that a name near NAME_MAX still has a temporary one.
    let base: String = name
        .to_string_lossy()
        .chars()
        .scan(0, |bytes, c| {
            *bytes += c.len_utf8();
            (*bytes <= TEMP_BASE_BYTES_MAX).then_some(c)
        })
        .collect();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let (mut file, tmp) = (0..TEMP_TRIES_MAX)
        .find_map(|n| {
            let tmp =
                c_name(format!(".{base}.{}-{n}.claro-tmp", std::process::id()).as_ref()).ok()?;
            open_at(&dir, &tmp, flags).ok().map(|f| (f, tmp))
        })
        .ok_or_else(|| format!("`{rel}`: no free temporary name beside it"))?;
    let written = file.write_all(text.as_bytes()).map_err(|e| e.to_string());
    // SAFETY: valid descriptors and C strings.
    let renamed = written.and_then(|()| {
        match unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                tmp.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
            )
        } {
            0 => Ok(()),
            _ => Err(format!("`{rel}`: {}", last_error())),
        }
    });
    if renamed.is_err() {
        // SAFETY: as above.
        unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
    }
    renamed
}

/// Removes a file (a link is removed, not what it leads to); false when
/// there was none.
fn remove(place: &Place, rel: &str) -> Result<bool, String> {
    let (dir, name) = match place.open_parent(rel, true, false) {
        Ok(opened) => opened,
        Err(e) if missing(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: a valid descriptor and C string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::NotFound => Ok(false),
        _ => Err(format!("`{rel}`: {e}")),
    }
}

fn list(place: &Place, rel: &str) -> Result<Value, String> {
    let dir = match rel.is_empty() {
        true => {
            place.precheck(rel, false)?;
            open_dir(libc::AT_FDCWD, &place.root)?
        }
        false => {
            let (parent, name) = place.open_parent(rel, false, false)?;
            let name = std::ffi::OsStr::from_bytes(name.as_bytes());
            let dir = open_dir(parent.as_raw_fd(), Path::new(name))?;
            if let Some(why) = place.refusal(&real_place(&dir)?, rel, false, false) {
                return Err(why);
            }
            dir
        }
    };
    // Read through the checked descriptor, not the name.
    list_dir(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd()))).map_err(|e| e.to_string())
}

fn list_dir(dir: &Path) -> std::io::Result<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if out.len() == LIST_ENTRIES_MAX {
            break;
        }
        let entry = entry?;
        let meta = entry.metadata()?;
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        out.push(json!({
            "name": entry.file_name().to_string_lossy(),
            "dir": meta.is_dir(),
            "bytes": meta.len(),
            "modified_ms": modified_ms,
        }));
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anywhere(root: &Path) -> Reach<'_> {
        Reach {
            root,
            write_under: None,
            own_work: None,
        }
    }

    fn write(p: &str, append: bool) -> FileOp {
        FileOp::Write {
            path: p.into(),
            text: "hello".into(),
            append,
        }
    }

    #[test]
    fn files_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let op = |op| file_op(anywhere(&root), op);
        op(write("a/b.txt", false)).unwrap();
        assert_eq!(op(FileOp::Read("a/b.txt".into())).unwrap(), "hello");
        let listed = op(FileOp::List("a".into())).unwrap();
        assert_eq!(listed[0]["name"], "b.txt");
        assert_eq!(listed[0]["bytes"], 5);
        assert_eq!(op(FileOp::List("".into())).unwrap()[0]["name"], "a");
        for bad in ["../x", "/etc/passwd", "a/../../x"] {
            assert!(op(FileOp::Read(bad.into())).is_err(), "{bad}");
            assert!(op(write(bad, false)).is_err(), "{bad}");
        }
        std::os::unix::fs::symlink(dir.path(), root.join("out")).unwrap();
        let e = op(write("out/escaped.txt", false)).unwrap_err();
        assert!(e.contains("leads outside shared_root"), "{e}");
        assert!(!dir.path().join("escaped.txt").exists());
        // A dangling link to a place outside: an append would create it.
        let outside = dir.path().join("created-outside.txt");
        std::os::unix::fs::symlink(&outside, root.join("dangling.txt")).unwrap();
        assert!(op(write("dangling.txt", true)).is_err());
        assert!(!outside.exists());
        // A link that stays inside is followed.
        std::os::unix::fs::symlink(root.join("a"), root.join("also-a")).unwrap();
        assert_eq!(op(FileOp::Read("also-a/b.txt".into())).unwrap(), "hello");
        op(write("a/b.txt", true)).unwrap();
        assert_eq!(op(FileOp::Read("a/b.txt".into())).unwrap(), "hellohello");
        assert_eq!(op(FileOp::Remove("a/b.txt".into())).unwrap(), true);
        assert_eq!(op(FileOp::Remove("a/b.txt".into())).unwrap(), false);
        assert_eq!(op(FileOp::Remove("nowhere/b.txt".into())).unwrap(), false);
        assert_eq!(op(FileOp::Exists("a/b.txt".into())).unwrap(), false);
    }

    #[test]
    fn a_hard_link_to_a_file_outside_is_neither_read_nor_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "outside").unwrap();
        std::fs::hard_link(&secret, root.join("link.txt")).unwrap();
        let op = |op| file_op(anywhere(&root), op);
        let e = op(FileOp::Read("link.txt".into())).unwrap_err();
        assert!(e.contains("2 hard links"), "{e}");
        let e = op(write("link.txt", true)).unwrap_err();
        assert!(e.contains("hard links"), "{e}");
        // A whole write replaces the name inside the root only.
        op(write("link.txt", false)).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside");
        assert_eq!(op(FileOp::Read("link.txt".into())).unwrap(), "hello");
    }

    /// A job running as `run_as` may make links in the share; the instance
    /// (perhaps root) must never write through one. Before, a whole write
    /// went through `.NAME.claro-tmp`, and a link planted there was followed.
    #[test]
    fn a_link_planted_at_a_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let target = dir.path().join("target.txt");
        std::fs::write(&target, "untouched").unwrap();
        let mut planted = vec![".x.claro-tmp".to_string()];
        planted.extend(
            (0..TEMP_TRIES_MAX).map(|n| format!(".x.{}-{n}.claro-tmp", std::process::id())),
        );
        for name in &planted {
            std::os::unix::fs::symlink(&target, root.join(name)).unwrap();
        }
        let e = file_op(anywhere(&root), write("x", false)).unwrap_err();
        assert!(e.contains("no free temporary name"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        // With one planted name free again the write goes through a new file.
        std::fs::remove_file(root.join(&planted[3])).unwrap();
        file_op(anywhere(&root), write("x", false)).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(root.join("x")).unwrap(), "hello");
    }

    /// A working area reached under another name of the same folder (an
    /// SMB share's short name, `CLARO~1`) is known by device and inode; a
    /// long name still writes through a temporary one; `exists` does not
    /// follow a link.
    #[test]
    fn a_working_area_under_another_name_is_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("hf/.claro/work/2")).unwrap();
        std::fs::create_dir_all(root.join("hf/in")).unwrap();
        let place = Place::of(anywhere(root)).unwrap();
        assert!(place.is_work_dir_by_identity(Path::new("hf/.claro/work")));
        // Another name of the same folder, as an SMB short name is: a bind
        // mount (root only; said where it cannot be made).
        std::fs::create_dir_all(root.join("hf/CLARO~1")).unwrap();
        let bound = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(root.join("hf/.claro"))
            .arg(root.join("hf/CLARO~1"))
            .status()
            .is_ok_and(|s| s.success());
        if bound {
            let e = file_op(anywhere(root), FileOp::Read("hf/CLARO~1/work/2/x".into()));
            let planted = file_op(anywhere(root), write("hf/CLARO~1/work/2/planted", false));
            let _ = std::process::Command::new("umount")
                .arg(root.join("hf/CLARO~1"))
                .status();
            assert!(e.unwrap_err().contains("working area"));
            assert!(planted.unwrap_err().contains("working area"));
            assert!(!root.join("hf/.claro/work/2/planted").exists());
        } else {
            eprintln!("SKIPPED the bind-mounted alias of a working area: mount --bind needs root");
        }
        assert!(!place.is_work_dir_by_identity(Path::new("hf/in/x")));
        assert!(!place.is_work_dir_by_identity(Path::new("hf")));
        let long = "n".repeat(250);
        file_op(anywhere(root), write(&long, false)).unwrap();
        assert_eq!(std::fs::read_to_string(root.join(&long)).unwrap(), "hello");
        let exists = |p: &str| file_op(anywhere(root), FileOp::Exists(p.into())).unwrap();
        assert_eq!(exists(&long), true);
        assert_eq!(exists("no/such"), false);
        let outside = dir.path().parent().unwrap().to_path_buf();
        std::os::unix::fs::symlink(&outside, root.join("up")).unwrap();
        assert!(file_op(anywhere(root), FileOp::Exists("up/x".into())).is_err());
    }

    /// A FIFO would block the reading thread for ever: it is refused at once.
    #[test]
    fn a_fifo_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let fifo = c_name(root.join("pipe").as_os_str()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let r = root.clone();
        std::thread::spawn(move || {
            let read = file_op(anywhere(&r), FileOp::Read("pipe".into()));
            let append = file_op(anywhere(&r), write("pipe", true));
            let _ = tx.send((read, append));
        });
        let (read, append) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a FIFO blocked the file functions");
        assert!(read.unwrap_err().contains("not a regular file"));
        assert!(append.is_err());
    }

    /// Another job's working folder (its claimed input, claim time,
    /// staging) is claro's: no script reaches it, by name (in any case) or
    /// through a link; a hotfolder action reads its own job's folder and
    /// writes only in its staging folder.
    #[test]
    fn working_areas_are_out_of_a_scripts_reach() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let own = root.join("hf/.claro/work/1");
        let staging = own.join(".claro-out-1");
        let other = root.join("hf/.claro/work/2");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(other.join(".claro-out-1")).unwrap();
        std::fs::write(own.join("input.pdf"), "mine").unwrap();
        std::fs::write(other.join("input.pdf"), "theirs").unwrap();
        std::fs::write(root.join("hf/keep.txt"), "keep").unwrap();
        std::os::unix::fs::symlink(&other, root.join("hf/alias")).unwrap();
        let plain = |op| file_op(anywhere(root), op);
        for path in [
            "hf/.claro/work/2/input.pdf",
            "hf/.CLARO/work/2/input.pdf",
            "hf/alias/input.pdf",
            "hf/.claro/work/2/.claro-out-1/planted.pdf",
            "hf/.claro/work/2/.claro-claimed-at",
        ] {
            for op in [
                FileOp::Read(path.into()),
                write(path, false),
                write(path, true),
                FileOp::Remove(path.into()),
                FileOp::Exists(path.into()),
            ] {
                let e = plain(op).unwrap_err();
                assert!(e.contains("working area"), "{path}: {e}");
            }
        }
        assert!(plain(FileOp::List("hf/.claro/work".into())).is_err());
        assert!(!other.join(".claro-out-1/planted.pdf").exists());
        assert!(!other.join(".claro-claimed-at").exists());
        assert_eq!(
            std::fs::read_to_string(other.join("input.pdf")).unwrap(),
            "theirs"
        );
        // The hotfolder's other folders stay in reach.
        assert_eq!(plain(FileOp::Read("hf/keep.txt".into())).unwrap(), "keep");
        let action = Reach {
            root,
            write_under: Some(&staging),
            own_work: Some(&own),
        };
        let op = |op| file_op(action, op);
        assert_eq!(
            op(FileOp::Read("hf/.claro/work/1/input.pdf".into())).unwrap(),
            "mine"
        );
        op(write(
            "hf/.claro/work/1/.claro-out-1/deep/result.txt",
            false,
        ))
        .unwrap();
        assert!(staging.join("deep/result.txt").exists());
        for outside in [
            "hf/out/direct.txt",
            "hf/keep.txt",
            "other.txt",
            "hf/.claro/work/1/input.pdf",
        ] {
            let e = op(write(outside, false)).unwrap_err();
            assert!(e.contains("outside this file's output folder"), "{e}");
        }
        assert!(op(FileOp::Remove("hf/keep.txt".into())).is_err());
        assert!(op(FileOp::Read("hf/.claro/work/2/input.pdf".into())).is_err());
        assert_eq!(
            std::fs::read_to_string(root.join("hf/keep.txt")).unwrap(),
            "keep"
        );
        assert_eq!(op(FileOp::Read("hf/keep.txt".into())).unwrap(), "keep");
    }
}
