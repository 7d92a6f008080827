//! `claro backup`'s server side: a consistent copy of this replica's
//! state.db, taken once a read index confirms it holds every write
//! acknowledged before the request, streamed to the client after a
//! `Response::Backup` header, then removed.
//!
//! Online: the copy is SQLite's backup of one read snapshot, made on a
//! blocking thread while the raft loop goes on applying. Bounded: at most
//! `BACKUPS_AT_ONCE_MAX` copies exist at a time, and a client that stops
//! reading for `STALL_MS` loses its stream (and the copy is removed).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::backup::{BackupHeader, FORMAT};
use crate::proto::{Response, REQUEST_BYTES_MAX};
use crate::transport::write_frame;

/// Backups being made or sent by this instance at once, at most: each
/// holds a copy of the database on its disk.
const BACKUPS_AT_ONCE_MAX: usize = 2;
/// A client that takes no bytes for this long loses its stream.
const STALL_MS: u64 = 30_000;
/// Free space a copy leaves on the data directory's disk, at least.
const COPY_MARGIN_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes per read of the copy and write to the stream.
const CHUNK_BYTES: usize = 1024 * 1024;

static BACKUPS: AtomicUsize = AtomicUsize::new(0);

/// Answers a `Request::Backup` on its stream.
pub(super) async fn send(shared: &Arc<Shared>, mut send: quinn::SendStream) {
    if BACKUPS.fetch_add(1, Ordering::SeqCst) >= BACKUPS_AT_ONCE_MAX {
        BACKUPS.fetch_sub(1, Ordering::SeqCst);
        let message = format!(
            "{} is making {BACKUPS_AT_ONCE_MAX} backups already (BACKUPS_AT_ONCE_MAX): try again when one ends",
            shared.me.name
        );
        return answer(send, Response::Unavailable { message }).await;
    }
    let made = copy(shared).await;
    let result = match made {
        Err(resp) => {
            answer(send, resp).await;
            Ok(0)
        }
        Ok((path, header)) => {
            let sent = stream(&mut send, &path, &header).await;
            let _ = std::fs::remove_file(&path);
            sent
        }
    };
    BACKUPS.fetch_sub(1, Ordering::SeqCst);
    match result {
        Ok(0) => {}
        Ok(bytes) => tracing::info!(bytes, "backup sent"),
        Err(e) => crate::throttled_warn!("backup failed", "a client", "backup not sent: {e}"),
    }
}

async fn answer(mut send: quinn::SendStream, resp: Response) {
    let _ = write_frame(&mut send, &resp, REQUEST_BYTES_MAX).await;
    let _ = send.finish();
}

/// The copy and its header, or the answer that says why there is none
/// (`Unavailable` where another instance may do better).
async fn copy(shared: &Arc<Shared>) -> Result<(std::path::PathBuf, BackupHeader), Response> {
    if let Err(message) = super::confirm_read(shared).await {
        return Err(Response::Unavailable { message });
    }
    // The copy needs the database's size free beside it: a backup must
    // never fill the disk the replica writes to.
    let db_bytes =
        std::fs::metadata(crate::consensus::state_db(&shared.dir)).map_or(0, |m| m.len());
    let need = db_bytes + db_bytes / 10 + COPY_MARGIN_BYTES;
    if let Some((free, _)) = super::filesystem_bytes(&shared.dir) {
        if free < need {
            let message = format!(
                "{} has {free} bytes free beside its database, and a copy needs {need}: ask another server (--server) or free space",
                shared.me.name
            );
            return Err(Response::Unavailable { message });
        }
    }
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let name = format!("backup-{}", SEQ.fetch_add(1, Ordering::Relaxed));
    let dir = shared.dir.clone();
    let made =
        async_std::task::spawn_blocking(move || crate::consensus::backup_copy(&dir, &name)).await;
    let (path, copy) = made.map_err(|message| {
        tracing::warn!("backup copy failed: {message}");
        Response::Unavailable {
            message: format!("{} could not copy its database: {message}", shared.me.name),
        }
    })?;
    let header = BackupHeader {
        format: FORMAT,
        cluster_id: copy.cluster_id,
        applied_index: copy.index,
        applied_term: copy.term,
        created_ms: crate::clock::now_ms(),
        server: shared.me.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        size_bytes: copy.size_bytes,
        sha256: copy.sha256,
    };
    Ok((path, header))
}

/// The header, then the copy's bytes; returns how many were sent.
async fn stream(
    send: &mut quinn::SendStream,
    path: &std::path::Path,
    header: &BackupHeader,
) -> Result<u64, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let stall = Duration::from_millis(STALL_MS);
    let first = Response::Backup(header.clone());
    let head = write_frame(send, &first, REQUEST_BYTES_MAX);
    async_std::future::timeout(stall, head)
        .await
        .map_err(|_| format!("the client took nothing for {STALL_MS} ms"))?
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut sent = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        async_std::future::timeout(stall, send.write_all(&buf[..n]))
            .await
            .map_err(|_| format!("the client took nothing for {STALL_MS} ms"))?
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    if sent != header.size_bytes {
        let size = header.size_bytes;
        return Err(format!(
            "the copy changed while it was sent ({sent} of {size} bytes)"
        ));
    }
    send.finish().map_err(|e| e.to_string())?;
    Ok(sent)
}
