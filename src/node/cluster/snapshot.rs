//! Streaming the coordinator's database to a peer that is too far behind (a
//! late joiner, or one that was down while the log was compacted).
//!
//! The file is a consistent copy of state.db made by the core. It travels raw
//! on one QUIC stream after a `Snapshot` request; the receiver keeps what it got
//! in `incoming/<file>.part`, so a transfer cut by a reconnect resumes where it
//! stopped. Only a file whose size and SHA-256 match is handed to raft.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::{raft_id, Shared};
use crate::consensus::{self, SnapshotFile};
use crate::proto::{Request, Response, REQUEST_BYTES_MAX, SNAPSHOT_BYTES_MAX};
use crate::transport::{read_frame, write_frame};

/// A transfer that receives nothing for this long is dropped (raft retries;
/// the bytes already received are kept for the resume).
const STALL_MS: u64 = 30_000;
/// Bytes per write or read of the file.
const CHUNK_BYTES: usize = 1024 * 1024;

pub async fn send(shared: Arc<Shared>, msg: Message, file: PathBuf, meta: SnapshotFile) {
    let to = msg.to;
    let name = shared.name_of(to).unwrap_or("?").to_string();
    let started = std::time::Instant::now();
    let ok = match transfer(&shared, &name, &msg, &file, &meta).await {
        Ok(sent_bytes) => {
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            tracing::info!(
                peer = %name,
                size_bytes = meta.size_bytes,
                sent_bytes,
                mb_per_s = format!("{:.0}", sent_bytes as f64 / secs / 1e6),
                "database sent"
            );
            true
        }
        Err(e) => {
            crate::throttled_warn!("database transfer failed", name, peer = %name, "database transfer failed (raft retries): {e}");
            false
        }
    };
    if let Some(core) = shared.core().as_mut() {
        core.report_snapshot(to, ok);
    }
    shared.wake();
}

async fn transfer(
    shared: &Shared,
    name: &str,
    msg: &Message,
    file: &Path,
    meta: &SnapshotFile,
) -> Result<u64, String> {
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let conn = shared
        .peers
        .conn(shared, name)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let raft_message = serde_bytes::ByteBuf::from(msg.write_to_bytes().map_err(|e| e.to_string())?);
    let req = Request::Snapshot {
        meta: meta.clone(),
        raft_message,
    };
    write_frame(&mut send, &req, REQUEST_BYTES_MAX)
        .await
        .map_err(|e| e.to_string())?;
    let offset = match read_frame::<Response>(&mut recv, REQUEST_BYTES_MAX).await {
        Ok(Some(Response::Resume { offset })) if offset <= meta.size_bytes => offset,
        Ok(Some(Response::Error { message })) => return Err(message),
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut sent_bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        send.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
        sent_bytes += n as u64;
    }
    assert_eq!(
        offset + sent_bytes,
        meta.size_bytes,
        "snapshot file changed while sent"
    );
    send.finish().map_err(|e| e.to_string())?;
    match read_frame::<Response>(&mut recv, REQUEST_BYTES_MAX).await {
        Ok(Some(Response::Ok { .. })) => Ok(sent_bytes),
        Ok(Some(Response::Error { message })) => Err(message),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

pub async fn receive(
    shared: &Shared,
    peer: &str,
    meta: SnapshotFile,
    raft_message: serde_bytes::ByteBuf,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // One transfer at a time: a second stream of the same database (the
    // sender's retry while the first still runs) appended to the same
    // partial file, and the one that finished first installed a database
    // with the other's bytes in it ("disk image is malformed": the
    // instance stopped). Found by the fault campaign (a wiped server).
    let result = match Receiving::start(shared) {
        Some(_receiving) => receive_file(shared, &meta, &mut send, &mut recv)
            .await
            .and_then(|()| step_snapshot(shared, peer, &meta, &raft_message)),
        None => Err("another database transfer to this instance is under way".into()),
    };
    let resp = match result {
        Ok(()) => Response::Ok {
            message: "received and verified".into(),
        },
        Err(message) => {
            crate::throttled_warn!(
                "database refused",
                peer,
                peer,
                "database from {peer} refused: {message}"
            );
            Response::Error { message }
        }
    };
    let _ = write_frame(&mut send, &resp, REQUEST_BYTES_MAX).await;
    let _ = send.finish();
}

/// A database transfer under way into this instance; the next may start
/// when it is dropped.
struct Receiving<'a> {
    flag: &'a std::sync::atomic::AtomicBool,
}

impl<'a> Receiving<'a> {
    fn start(shared: &'a Shared) -> Option<Receiving<'a>> {
        let flag = &shared.snapshot_receiving;
        let free = !flag.swap(true, std::sync::atomic::Ordering::AcqRel);
        free.then_some(Receiving { flag })
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.flag.store(false, std::sync::atomic::Ordering::Release);
    }
}

async fn receive_file(
    shared: &Shared,
    meta: &SnapshotFile,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    if !consensus::valid_snapshot_name(&meta.file_name) || meta.size_bytes > SNAPSHOT_BYTES_MAX {
        return Err(format!(
            "bad snapshot descriptor: {} ({} bytes)",
            meta.file_name, meta.size_bytes
        ));
    }
    // Failpoint for the test that a rejoin shows in `status`:
    // `CLARO_FAILPOINT_SNAPSHOT_DELAY_MS=N` starts every transfer N ms late.
    if let Some(ms) = std::env::var("CLARO_FAILPOINT_SNAPSHOT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        async_std::task::sleep(Duration::from_millis(ms.min(STALL_MS / 2))).await;
    }
    let incoming = consensus::incoming_dir(&shared.dir);
    std::fs::create_dir_all(&incoming).map_err(|e| shared.write_failed(&incoming, e))?;
    let part = incoming.join(format!("{}.part", meta.file_name));
    remove_other_parts(&incoming, &part);
    // A partial file resumes only the same database: its checksum is kept
    // beside it (a file of the same name made again could differ).
    let of = incoming.join(format!("{}.part-of", meta.file_name));
    let same = std::fs::read_to_string(&of).is_ok_and(|sha| sha == meta.sha256);
    let held = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let offset = if same && held <= meta.size_bytes {
        held
    } else {
        0
    };
    if offset == 0 {
        std::fs::write(&of, &meta.sha256).map_err(|e| shared.write_failed(&of, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| shared.write_failed(&part, e))?;
    f.set_len(offset)
        .map_err(|e| shared.write_failed(&part, e))?;
    if offset > 0 {
        tracing::info!(offset, "resuming an interrupted database transfer");
    }
    write_frame(send, &Response::Resume { offset }, REQUEST_BYTES_MAX)
        .await
        .map_err(|e| e.to_string())?;
    // The checksum is computed as the bytes arrive (after the bytes a resumed
    // transfer already held), so the file is not read a second time.
    let mut digest = digest_prefix(&part, offset)?;
    let mut got = offset;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let cut = failpoint_cut_bytes();
    let stalled = || format!("no data for {STALL_MS} ms");
    while let Some(n) =
        async_std::future::timeout(Duration::from_millis(STALL_MS), recv.read(&mut buf))
            .await
            .map_err(|_| stalled())?
            .map_err(|e| e.to_string())?
    {
        if cut.is_some_and(|c| got >= c) {
            return Err(format!("transfer cut after {got} bytes (failpoint)"));
        }
        got += n as u64;
        if got > meta.size_bytes {
            let _ = std::fs::remove_file(&part);
            return Err(format!("more bytes than the announced {}", meta.size_bytes));
        }
        f.write_all(&buf[..n])
            .map_err(|e| shared.write_failed(&part, e))?;
        digest.update(&buf[..n]);
    }
    f.sync_all().map_err(|e| shared.write_failed(&part, e))?;
    let sha = crate::state::hex(digest.finish().as_ref());
    if got != meta.size_bytes || sha != meta.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "checksum mismatch: got {got} bytes {sha}, expected {} bytes {}",
            meta.size_bytes, meta.sha256
        ));
    }
    // The bytes that arrived are the sender's; the file must be them too,
    // and a database: a damaged one is refused here (raft sends it again),
    // never installed (which would stop this instance).
    // On a blocking thread: a big database takes a while to check.
    let checked = part.clone();
    let verdict = async_std::task::spawn_blocking(move || crate::state::check_file(&checked)).await;
    if let Err(e) = verdict {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "the database received is damaged ({e}); it is sent again"
        ));
    }
    let _ = std::fs::remove_file(&of);
    std::fs::rename(&part, incoming.join(&meta.file_name))
        .map_err(|e| shared.write_failed(&part, e))?;
    crate::state::sync_dir(&incoming).map_err(|e| shared.write_failed(&incoming, e))?;
    Ok(())
}

/// Failpoint for the test that transfers resume: with
/// `CLARO_FAILPOINT_SNAPSHOT_CUT_BYTES=N`, the first transfer this process
/// receives stops after about N bytes, as a dropped connection would.
fn failpoint_cut_bytes() -> Option<u64> {
    static USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let n = std::env::var("CLARO_FAILPOINT_SNAPSHOT_CUT_BYTES")
        .ok()?
        .parse()
        .ok()?;
    (!USED.swap(true, std::sync::atomic::Ordering::SeqCst)).then_some(n)
}

/// A SHA-256 context over the first `len` bytes of `path`.
fn digest_prefix(path: &Path, len: u64) -> Result<ring::digest::Context, String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut f = std::fs::File::open(path)
        .map_err(|e| e.to_string())?
        .take(len);
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(ctx);
        }
        ctx.update(&buf[..n]);
    }
}

/// Removes partial files of other transfers; a verified file waiting for raft
/// to install it is left alone (the core removes installed ones).
fn remove_other_parts(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let keep_of = keep.with_extension("part-of");
    for e in entries.flatten() {
        let partial = e
            .path()
            .extension()
            .is_some_and(|x| x == "part" || x == "part-of");
        if partial && e.path() != keep && e.path() != keep_of {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn step_snapshot(
    shared: &Shared,
    peer: &str,
    meta: &SnapshotFile,
    bytes: &[u8],
) -> Result<(), String> {
    let msg = Message::parse_from_bytes(bytes).map_err(|e| e.to_string())?;
    if msg.get_msg_type() != MessageType::MsgSnapshot
        || msg.from != raft_id(peer)
        || msg.to != shared.id
    {
        return Err("the message with the database is not a snapshot from its sender".into());
    }
    // Raft must install exactly the file that was just verified.
    if SnapshotFile::decode(msg.get_snapshot().get_data()).as_ref() != Ok(meta) {
        return Err("the snapshot message names another file than the one sent".into());
    }
    let mut guard = shared.core();
    let core = guard.as_mut().ok_or("not running")?;
    core.step(msg).map_err(|e| e.to_string())?;
    drop(guard);
    shared.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_snapshot_file_names_are_accepted() {
        assert!(crate::consensus::valid_snapshot_name("snap-12-3.db"));
        for bad in [
            "../state.db",
            "snap-1.db",
            "snap-a-1.db",
            "snap-1-2.db/..",
            "snap--1.db",
            "x/snap-1-2.db",
            "snap-1-2-3.db",
        ] {
            assert!(!crate::consensus::valid_snapshot_name(bad), "{bad}");
        }
    }
}
