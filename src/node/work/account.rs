//! The user job processes run as (`[jobs] run_as`): looked up once when
//! the instance starts, switched to in every child a job starts, between
//! its fork and its exec.
//!
//! The lookup (`getpwnam_r`, `getgrouplist`) reads `/etc/passwd`,
//! `/etc/group` or a directory service, and may take locks and allocate:
//! it must never run in a child of a multi-threaded process. So the child
//! only makes system calls on values found here: `setgroups`, `setgid`,
//! then `setuid` (once the uid is dropped the groups can no longer be),
//! then `chdir` as the new user, so that a working folder it may not enter
//! stops the start rather than being entered with the server's rights.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Config, ConfigError, UserRef};

/// Supplementary groups of one user, at most (Linux's `NGROUPS_MAX`).
const GROUPS_MAX: usize = 65_536;
/// Buffer for one passwd entry, at most; it starts at 1 KiB and doubles.
const PASSWD_BUFFER_BYTES_MAX: usize = 1024 * 1024;

/// A user found on this machine, with everything its processes need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Its supplementary groups (its primary group among them).
    pub groups: Vec<libc::gid_t>,
    pub home: PathBuf,
}

/// The account of `[jobs] run_as`, when the config names one: the user
/// must exist and this process must be root (only root switches users).
/// The error is the config's: file, line, key and why.
pub(crate) fn for_jobs(cfg: &Config) -> Result<Option<Account>, ConfigError> {
    let Some(run_as) = &cfg.jobs.run_as else {
        return Ok(None);
    };
    let error = |message: String| ConfigError {
        path: cfg.path.clone(),
        line: Some(run_as.line),
        key: Some("jobs.run_as".into()),
        message,
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(error(format!(
            "claro serve runs as uid {euid}, not root, so it cannot run jobs as {}: start it as root, or remove run_as (its jobs then run as its own user)",
            run_as.user
        )));
    }
    let account = lookup(&run_as.user).map_err(error)?;
    Ok(Some(account))
}

/// `user` from the system's user database.
pub(crate) fn lookup(user: &UserRef) -> Result<Account, String> {
    let entry = passwd(user)?.ok_or_else(|| match user {
        UserRef::Name(name) => format!("no user `{name}` on this machine"),
        UserRef::Uid(uid) => format!("no user with uid {uid} on this machine"),
    })?;
    let groups = groups_of(&entry.name, entry.gid)?;
    Ok(Account { groups, ..entry })
}

/// The passwd entry of `user` (groups not filled in), `None` when there is none.
fn passwd(user: &UserRef) -> Result<Option<Account>, String> {
    let name = match user {
        UserRef::Name(n) => CString::new(n.as_str()).map_err(|e| e.to_string())?,
        UserRef::Uid(_) => CString::default(),
    };
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: an all-zero passwd is valid (null pointers, zero ids).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to a live local of the size given; the
        // strings the entry points at are in `buf`, read before it goes.
        let rc = unsafe {
            match user {
                UserRef::Name(_) => {
                    libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), size, &mut found)
                }
                UserRef::Uid(uid) => {
                    libc::getpwuid_r(*uid, &mut pwd, buf.as_mut_ptr(), size, &mut found)
                }
            }
        };
        if rc == libc::ERANGE && size < PASSWD_BUFFER_BYTES_MAX {
            size *= 2;
            continue;
        }
        if rc != 0 {
            let e = std::io::Error::from_raw_os_error(rc);
            return Err(format!("looking up user {user}: {e}"));
        }
        if found.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the entry's strings are NUL-terminated in `buf`.
        let (name, home) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
        return Ok(Some(Account {
            name: name.to_string_lossy().into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            groups: Vec::new(),
            home: PathBuf::from(std::ffi::OsStr::from_bytes(home.to_bytes())),
        }));
    }
}

/// Every group `name` belongs to, `gid` (its primary group) included.
fn groups_of(name: &str, gid: libc::gid_t) -> Result<Vec<libc::gid_t>, String> {
    let c_name = CString::new(name).map_err(|e| e.to_string())?;
    let mut count: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let asked = count;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at
        // most that many and sets `count` to how many there are.
        let rc =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        // Too small: `count` now says how many there are.
        if count <= asked || count as usize > GROUPS_MAX {
            return Err(format!("the groups of user `{name}` cannot be read"));
        }
    }
}

impl Account {
    /// Makes `cmd` start as this user, in `cwd` when given (entered as
    /// this user), with `HOME`, `USER` and `LOGNAME` saying who it is.
    pub fn apply(&self, cmd: &mut Command, cwd: Option<&Path>) -> std::io::Result<()> {
        let dir = match cwd {
            // Absolute: the child resolves it after the switch, and the
            // instance's own working folder need not be open to the user.
            Some(p) => Some(CString::new(
                std::path::absolute(p)?.as_os_str().as_bytes(),
            )?),
            None => None,
        };
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        cmd.env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        // SAFETY: the closure runs in the forked child and only makes
        // system calls (setgroups, setgid, setuid, chdir) on values made
        // here, in the parent: no allocation, no lock, nothing that is not
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(move || become_user(uid, gid, &groups, dir.as_deref()));
        }
        Ok(())
    }
}

/// In a forked child: drops to `uid`, `gid` and `groups`, then enters `dir`.
fn become_user(
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: &[libc::gid_t],
    dir: Option<&CStr>,
) -> std::io::Result<()> {
    let check = |rc: libc::c_int| match rc {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    };
    // SAFETY: plain system calls; `groups` and `dir` live in the closure
    // that calls this. Groups first, then the gid, then the uid: each
    // needs the privilege the next one gives up.
    unsafe {
        check(libc::setgroups(groups.len() as _, groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        if let Some(dir) = dir {
            check(libc::chdir(dir.as_ptr()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_by_uid_and_a_stranger_is_not() {
        let by_name = lookup(&UserRef::Name("root".into())).unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert!(by_name.groups.contains(&0), "{by_name:?}");
        assert_eq!(lookup(&UserRef::Uid(0)).unwrap(), by_name);
        let e = lookup(&UserRef::Name("no-such-user-claro".into())).unwrap_err();
        assert_eq!(e, "no user `no-such-user-claro` on this machine");
        let e = lookup(&UserRef::Uid(3_999_999_999)).unwrap_err();
        assert_eq!(e, "no user with uid 3999999999 on this machine");
    }
}
