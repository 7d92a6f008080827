//! `claro backup FILE` and `claro restore FILE`: the operator's side of
//! disaster recovery (docs/OPERATIONS.md has the whole procedure).
//!
//! A backup is asked of one instance (this machine's first, then the others
//! in the config's order, or `--server`'s), which confirms a read index and
//! streams a consistent copy of its replica (`node::cluster::backup`). The
//! CLI writes `FILE.part`, checks size and SHA-256 against the header, and
//! renames it to FILE: a FILE that exists is always whole.
//!
//! A restore writes one server's data directory from a backup, as a new
//! one-server cluster with a new cluster id (the old cluster's servers,
//! which may hold newer data, then refuse it instead of mixing histories).
//! It never deletes: with `--force`, an existing data directory is moved
//! aside, not removed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backup::{write_header, BackupHeader, Check};
use crate::cli::client::{endpoint, targets, ClientArgs};
use crate::cli::exit::Failure;
use crate::cli::output;
use crate::config::Config;
use crate::proto::{Request, Response, REQUEST_BYTES_MAX};
use crate::transport::{read_frame, write_frame};

/// Time to reach one instance.
const CONNECT_MS: u64 = 1_500;
/// Time for this machine's own server to answer a restore's "do you run?":
/// one on this machine answers in milliseconds, and one frozen or starting
/// is caught by its data directory's lock instead.
const PROBE_MS: u64 = 500;
/// Time for the instance to confirm its read, copy its database and hash
/// the copy before its first byte comes: a database of tens of GiB takes
/// minutes. A server that dies meanwhile is noticed sooner, by QUIC's idle
/// timeout.
const HEADER_MS: u64 = 3_600_000;
/// A transfer that brings no byte for this long is given up.
const STALL_MS: u64 = 30_000;

/// `claro backup FILE`.
pub fn backup(config: &Config, args: &ClientArgs, file: &Path, force: bool) -> Result<(), Failure> {
    if file.exists() && !force {
        return Err(Failure::usage(format!(
            "{} exists; `--force` replaces it",
            file.display()
        )));
    }
    let mut targets = targets(config, args)?;
    // This machine's own server first: its copy needs no network hop.
    if let Ok(local) = config.local_server(None) {
        targets.sort_by_key(|(name, _)| *name != local.name);
    }
    let part = part_path(file);
    let ep = endpoint(config, targets[0].1)?;
    let fetched = async_std::task::block_on(fetch_any(&ep, &targets, &part));
    ep.quinn.close(0u32.into(), b"done");
    let header = fetched.inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })?;
    std::fs::rename(&part, file)
        .map_err(|e| Failure::failed(format!("{}: {e}", file.display())))?;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = crate::state::sync_dir(parent);
    }
    let text = format!(
        "backup of cluster {} at index {} from {}: {} ({} bytes of database)",
        header.cluster_id,
        header.applied_index,
        header.server,
        file.display(),
        header.size_bytes
    );
    let json = serde_json::json!({
        "file": file.display().to_string(),
        "cluster_id": header.cluster_id,
        "applied_index": header.applied_index,
        "server": header.server,
        "created": crate::contract::rfc3339(header.created_ms),
        "size_bytes": header.size_bytes,
        "sha256": header.sha256,
    });
    output::changed(args.json, &text, json)
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// Connects to every instance at once (one that is down costs nothing),
/// then asks them one at a time, in the order they connected (this
/// machine's own first when it is up), until one sends a whole backup into
/// `part`.
async fn fetch_any(
    ep: &crate::transport::Endpoint,
    targets: &[(String, SocketAddr)],
    part: &Path,
) -> Result<BackupHeader, Failure> {
    let (tx, connected) = async_std::channel::bounded(targets.len().max(1));
    for (name, addr) in targets {
        let (ep, name, addr, tx) = (ep.clone(), name.clone(), *addr, tx.clone());
        async_std::task::spawn(async move {
            let conn = ep.connect(addr, &name, CONNECT_MS).await;
            let _ = tx.send((name, conn)).await;
        });
    }
    drop(tx);
    let mut why = Vec::new();
    while let Ok((name, conn)) = connected.recv().await {
        let fetched = match conn {
            Ok(conn) => fetch(&conn, part).await,
            Err(e) => Err(Fetch::Next(e.to_string())),
        };
        match fetched {
            Ok(header) => return Ok(header),
            Err(Fetch::Bad(f)) => return Err(f),
            Err(Fetch::Next(e)) => why.push(format!("{name}: {e}")),
        }
    }
    Err(Failure::failed(format!(
        "no instance made the backup: {}",
        why.join("; ")
    )))
}

enum Fetch {
    /// Another instance may do better.
    Next(String),
    /// Nobody can (this machine's file cannot be written).
    Bad(Failure),
}

async fn fetch(conn: &quinn::Connection, part: &Path) -> Result<BackupHeader, Fetch> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Fetch::Next(e.to_string()))?;
    write_frame(&mut send, &Request::Backup, REQUEST_BYTES_MAX)
        .await
        .map_err(|e| Fetch::Next(e.to_string()))?;
    let _ = send.finish();
    let first = read_frame::<Response>(&mut recv, REQUEST_BYTES_MAX);
    let header = match async_std::future::timeout(Duration::from_millis(HEADER_MS), first).await {
        Err(_) => return Err(Fetch::Next(format!("no answer within {HEADER_MS} ms"))),
        Ok(Err(e)) => return Err(Fetch::Next(e.to_string())),
        Ok(Ok(Some(Response::Backup(h)))) => h,
        Ok(Ok(Some(Response::Unavailable { message } | Response::Error { message }))) => {
            return Err(Fetch::Next(message))
        }
        Ok(Ok(other)) => return Err(Fetch::Next(format!("unexpected answer: {other:?}"))),
    };
    header
        .check()
        .map_err(|e| Fetch::Next(format!("a bad header: {e}")))?;
    let mut out = std::fs::File::create(part)
        .map_err(|e| Fetch::Bad(Failure::failed(format!("{}: {e}", part.display()))))?;
    let bad = |e: std::io::Error| Fetch::Bad(Failure::failed(format!("{}: {e}", part.display())));
    write_header(&mut out, &header).map_err(bad)?;
    receive(&mut recv, &mut out, &header).await?;
    out.sync_all().map_err(bad)?;
    conn.close(0u32.into(), b"done");
    Ok(header)
}

/// The database's bytes into `out`, checked against the header.
async fn receive(
    recv: &mut quinn::RecvStream,
    out: &mut std::fs::File,
    header: &BackupHeader,
) -> Result<(), Fetch> {
    let mut check = Check::new(header);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let read = recv.read(&mut buf);
        let n = match async_std::future::timeout(Duration::from_millis(STALL_MS), read).await {
            Err(_) => return Err(Fetch::Next(format!("no byte for {STALL_MS} ms"))),
            Ok(Err(e)) => return Err(Fetch::Next(e.to_string())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(n))) => n,
        };
        check.update(&buf[..n]).map_err(Fetch::Next)?;
        out.write_all(&buf[..n])
            .map_err(|e| Fetch::Bad(Failure::failed(format!("writing the backup: {e}"))))?;
    }
    check
        .finish()
        .map_err(|e| Fetch::Next(format!("the transfer: {e}")))
}

/// `claro restore FILE`: this machine's server (or `--name`'s) gets a data
/// directory holding the backup's database as a new one-server cluster.
pub fn restore(
    config: &Config,
    name: Option<&str>,
    file: &Path,
    force: bool,
    json: bool,
) -> Result<(), Failure> {
    let server = config.local_server(name)?.clone();
    // A bad file is bad input: refused before anything is touched.
    let header = crate::backup::extract(file, None).map_err(Failure::usage)?;
    if let Some(why) = answers(config, &server.name, server.address) {
        return Err(Failure::failed(format!(
            "{} answers at {} ({why}): stop it before restoring its data directory",
            server.name, server.address
        )));
    }
    let dir = config.server_dir(&server.name);
    // A server that runs (frozen or starting too) holds its directory's lock.
    let _lock = match dir.is_dir() {
        true => match crate::data_dir::lock(&dir) {
            Ok(Some(held)) => Some(held),
            Ok(None) => {
                return Err(Failure::failed(format!(
                    "{}: {} runs on it (it holds {}): stop it before restoring",
                    dir.display(),
                    server.name,
                    crate::data_dir::LOCK_FILE
                )))
            }
            Err(e) => return Err(Failure::failed(format!("{}: {e}", dir.display()))),
        },
        false => None,
    };
    let holds_data = std::fs::read_dir(&dir).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name() != crate::data_dir::LOCK_FILE)
    });
    if holds_data && !force {
        return Err(Failure::failed(format!(
            "{} holds data already; `--force` moves it aside (never deletes it) and restores",
            dir.display()
        )));
    }
    let staging = sibling(&dir, "restoring");
    let cluster_id = format!("{:032x}", rand::random::<u128>());
    let staged = stage(&staging, file, &server.name, &cluster_id);
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let aside = match holds_data {
        // One atomic exchange: at every moment DIR is the old data or the
        // new, never missing; then the old one takes its name aside.
        true => {
            exchange(&staging, &dir).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&staging);
            })?;
            Some(move_aside_from(&staging, &dir)?)
        }
        false => {
            let _ = std::fs::remove_dir(&dir);
            std::fs::rename(&staging, &dir)
                .map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
            None
        }
    };
    if let Some(parent) = dir.parent() {
        let _ = crate::state::sync_dir(parent);
    }
    report(
        &server.name,
        &dir,
        &header,
        &cluster_id,
        aside.as_deref(),
        json,
    )
}

/// Builds the new data directory in `staging`: the database checked and
/// made the one voter's state of a new cluster.
fn stage(staging: &Path, file: &Path, name: &str, cluster_id: &str) -> Result<(), Failure> {
    // A staging folder left by a restore that did not finish may hold the
    // old data (it was swapped there): a restore never deletes data.
    if staging.symlink_metadata().is_ok() {
        return Err(Failure::failed(format!(
            "{} is left from a restore that did not finish and may hold the old data: move it away (or remove it once it is not needed), then restore again",
            staging.display()
        )));
    }
    let io = |e: std::io::Error| Failure::failed(format!("{}: {e}", staging.display()));
    std::fs::create_dir_all(staging).map_err(io)?;
    crate::data_dir::make_private(staging).map_err(io)?;
    let db = crate::consensus::state_db(staging);
    crate::backup::extract(file, Some(&db)).map_err(Failure::usage)?;
    crate::state::check_file(&db).map_err(|e| {
        Failure::usage(format!(
            "{}: the database in it is damaged: {e}",
            file.display()
        ))
    })?;
    crate::state::check_schema(&db).map_err(|e| {
        Failure::usage(format!(
            "{}: not a database claro wrote: {e}",
            file.display()
        ))
    })?;
    let id = crate::consensus::raft_id(name);
    crate::consensus::rebootstrap(staging, id, cluster_id, true)
        .map_err(|e| Failure::failed(format!("{}: {e}", staging.display())))?;
    crate::data_dir::make_private(staging).map_err(io)?;
    crate::state::sync_dir(staging).map_err(io)
}

/// `DIR.<what>` beside `dir`.
fn sibling(dir: &Path, what: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}"));
    dir.with_file_name(name)
}

/// Swaps two directories in one step (Linux's `renameat2` with
/// `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> Result<(), Failure> {
    rename2(a, b, libc::RENAME_EXCHANGE)
        .map_err(|e| Failure::failed(format!("swapping {} and {}: {e}", a.display(), b.display())))
}

/// Linux's `renameat2` of `from` to `to` with `flags`.
fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("a path with a NUL byte"))
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            flags,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Moves the old data directory, now at `from` (the swap put it there),
/// aside beside `dir`, under a name that says when and why and is not
/// taken (two restores in one second must not collide: the second one's
/// old data would stay at `from`, where a later restore's staging starts).
fn move_aside_from(from: &Path, dir: &Path) -> Result<PathBuf, Failure> {
    let secs = crate::clock::now_ms() / 1000;
    let mut last = None;
    for n in 1..=ASIDE_TRIES_MAX {
        let what = match n {
            1 => format!("before-restore-{secs}"),
            _ => format!("before-restore-{secs}-{n}"),
        };
        let aside = sibling(dir, &what);
        // Not over an empty folder there either, which a plain rename replaces.
        match rename2(from, &aside, libc::RENAME_NOREPLACE) {
            Ok(()) => return Ok(aside),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(Failure::failed(format!(
                    "moving the old {} aside to {}: {e}",
                    dir.display(),
                    aside.display()
                )))
            }
        }
    }
    Err(Failure::failed(format!(
        "moving the old {} aside: {ASIDE_TRIES_MAX} names taken ({last:?}); it is at {}",
        dir.display(),
        from.display()
    )))
}

/// Names tried for the old data directory kept aside.
const ASIDE_TRIES_MAX: u32 = 1000;

/// Why `name` is taken for running: it answered `Info` at its address.
fn answers(config: &Config, name: &str, addr: SocketAddr) -> Option<String> {
    let ep = endpoint(config, addr).ok()?;
    let asked = async_std::task::block_on(async {
        let conn = ep.connect(addr, name, PROBE_MS).await.ok()?;
        crate::cli::client::request(&conn, &Request::Info, PROBE_MS)
            .await
            .ok()
    });
    ep.quinn.close(0u32.into(), b"done");
    match asked? {
        Response::Info(info) => Some(format!("state {}", info.state)),
        other => Some(format!("{other:?}")),
    }
}

fn report(
    name: &str,
    dir: &Path,
    header: &BackupHeader,
    cluster_id: &str,
    aside: Option<&Path>,
    json: bool,
) -> Result<(), Failure> {
    let mut text = format!(
        "{name}: {} now holds the backup of cluster {} at index {} (made {} by {}), as the new cluster {cluster_id}\n",
        dir.display(),
        header.cluster_id,
        header.applied_index,
        crate::contract::rfc3339(header.created_ms),
        header.server,
    );
    if let Some(a) = aside {
        text.push_str(&format!(
            "the data directory it held is kept in {}\n",
            a.display()
        ));
    }
    text.push_str(&format!(
        "next: `claro serve --name {name}`, then start the other servers with empty data directories (docs/OPERATIONS.md)"
    ));
    let value = serde_json::json!({
        "server": name,
        "data_dir": dir.display().to_string(),
        "cluster_id": cluster_id,
        "from_cluster_id": header.cluster_id,
        "applied_index": header.applied_index,
        "moved_aside": aside.map(|a| a.display().to_string()),
    });
    output::changed(json, &text, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two restores within one second: the second one's old data takes a
    /// name of its own, and nothing kept aside before is touched. Before,
    /// the second rename failed and left the old data where the next
    /// restore's staging deleted it.
    #[test]
    fn old_data_kept_aside_never_collides() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("srv1");
        let mut kept = Vec::new();
        for round in 0..3 {
            let from = base.path().join("srv1.restoring");
            std::fs::create_dir(&from).unwrap();
            std::fs::write(from.join("raft.db"), format!("old {round}")).unwrap();
            kept.push(move_aside_from(&from, &dir).unwrap());
            assert!(!from.exists());
        }
        for (round, aside) in kept.iter().enumerate() {
            let text = std::fs::read_to_string(aside.join("raft.db")).unwrap();
            assert_eq!(text, format!("old {round}"), "{aside:?}");
        }
        // An empty folder under the next name is not replaced either.
        let from = base.path().join("srv1.restoring");
        std::fs::create_dir(&from).unwrap();
        let secs = crate::clock::now_ms() / 1000;
        for n in 4..=6 {
            let _ = std::fs::create_dir(sibling(&dir, &format!("before-restore-{secs}-{n}")));
        }
        let aside = move_aside_from(&from, &dir).unwrap();
        assert!(!kept.contains(&aside));
    }

    #[test]
    fn a_staging_folder_left_behind_is_not_deleted() {
        let base = tempfile::tempdir().unwrap();
        let staging = base.path().join("srv1.restoring");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("state.db"), "old data").unwrap();
        let e = stage(&staging, &base.path().join("none.backup"), "srv1", "c").unwrap_err();
        assert!(e.message.contains("did not finish"), "{}", e.message);
        assert!(staging.join("state.db").exists());
    }
}
