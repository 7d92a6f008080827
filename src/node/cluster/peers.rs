//! Connections to the other instances: one outgoing QUIC connection per peer
//! (opened with a `Hello` exchange that checks identity and compatibility),
//! request/response calls over it, and a queue plus sender task per peer for
//! outbound Raft messages, batched into frames on one unidirectional stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::channel::{Receiver, Sender, TrySendError};
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::{Shared, PEER_CALL_MS, PEER_QUEUE_COUNT_MAX};
use crate::cluster::membership;
use crate::proto::{
    RaftBatch, Request, Response, RAFT_BATCH_BYTES_MAX, RAFT_BATCH_COUNT_MAX, REQUEST_BYTES_MAX,
};
use crate::transport::{exchange, write_frame};

/// Why a peer could not be used.
#[derive(Debug, Clone)]
pub enum PeerError {
    /// It answered and refused us (different config, cluster or version).
    Refused(String),
    Unreachable(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Refused(r) | PeerError::Unreachable(r) => f.write_str(r),
        }
    }
}

#[derive(Default)]
pub struct Peers {
    conns: Mutex<HashMap<String, quinn::Connection>>,
    /// Serializes connection attempts per peer.
    connecting: Mutex<HashMap<String, Arc<async_std::sync::Mutex<()>>>>,
    queues: Mutex<HashMap<u64, Sender<Message>>>,
}

impl Peers {
    /// Queues a Raft message for its peer; drops it when the queue is full
    /// (raft retransmits) so that a stalled peer cannot grow memory.
    pub fn send(&self, shared: &Arc<Shared>, msg: Message) {
        let to = msg.to;
        let Some(name) = shared.name_of(to).map(str::to_string) else {
            crate::throttled_warn!(
                "raft message for an unknown id",
                to,
                to,
                "raft message for an id not in the config dropped"
            );
            return;
        };
        let tx = {
            let mut queues = self.queues.lock().expect("queues lock");
            queues
                .entry(to)
                .or_insert_with(|| {
                    let (tx, rx) = async_std::channel::bounded(PEER_QUEUE_COUNT_MAX);
                    async_std::task::spawn(sender_task(shared.clone(), to, name, rx));
                    tx
                })
                .clone()
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
            tracing::debug!(to, "peer queue full, raft message dropped");
        }
    }

    fn cached(&self, name: &str) -> Option<quinn::Connection> {
        let conns = self.conns.lock().expect("conns lock");
        conns
            .get(name)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    pub fn forget(&self, name: &str) {
        self.conns.lock().expect("conns lock").remove(name);
    }

    /// Closes the connection to `name` (its streams fail at once, and the
    /// next use opens a new one).
    /// Forgets every connection for which `closed` says it closed it.
    pub fn close_where(&self, closed: impl Fn(&quinn::Connection) -> bool) {
        self.conns
            .lock()
            .expect("conns lock")
            .retain(|_, conn| !closed(conn));
    }

    pub fn close(&self, name: &str) {
        if let Some(c) = self.conns.lock().expect("conns lock").remove(name) {
            c.close(0u32.into(), b"peer restarted");
        }
    }

    /// The connection to `name`, opened (and greeted) if need be.
    pub async fn conn(&self, shared: &Shared, name: &str) -> Result<quinn::Connection, PeerError> {
        if let Some(c) = self.cached(name) {
            return Ok(c);
        }
        // Names may come from peers' answers: only configured ones get a gate.
        if shared.cfg.server(name).is_none() {
            return Err(PeerError::Unreachable(format!("{name} is not configured")));
        }
        let gate = self
            .connecting
            .lock()
            .expect("connecting lock")
            .entry(name.to_string())
            .or_default()
            .clone();
        let _held = gate.lock().await;
        if let Some(c) = self.cached(name) {
            return Ok(c);
        }
        let conn = open(shared, name).await?;
        self.conns
            .lock()
            .expect("conns lock")
            .insert(name.to_string(), conn.clone());
        Ok(conn)
    }

    /// One request to a peer and its response, within `timeout_ms`.
    pub async fn call(
        &self,
        shared: &Shared,
        name: &str,
        req: &Request,
        timeout_ms: u64,
    ) -> Result<Response, PeerError> {
        let conn = self.conn(shared, name).await?;
        let r = exchange(&conn, req, REQUEST_BYTES_MAX, timeout_ms)
            .await
            .map_err(PeerError::Unreachable);
        if r.is_err() {
            self.forget(name);
        }
        r
    }
}

/// Sends `req` to every other configured server at once; the answers come in
/// config order.
pub async fn ask_others(
    shared: &Arc<Shared>,
    req: &Request,
    timeout_ms: u64,
) -> Vec<Result<Response, PeerError>> {
    let tasks: Vec<_> = shared
        .cfg
        .servers
        .iter()
        .filter(|s| s.name != shared.me.name)
        .map(|s| {
            let (shared, name, req) = (shared.clone(), s.name.clone(), req.clone());
            async_std::task::spawn(async move {
                shared.peers.call(&shared, &name, &req, timeout_ms).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for t in tasks {
        answers.push(t.await);
    }
    answers
}

/// Connects to a peer and exchanges `Hello`s; refuses a peer whose answer
/// shows a different cluster, config or version.
async fn open(shared: &Shared, name: &str) -> Result<quinn::Connection, PeerError> {
    let server = shared
        .cfg
        .server(name)
        .ok_or_else(|| PeerError::Unreachable(format!("{name} is not configured")))?;
    let conn = shared
        .endpoint
        .connect(server.resolve().await, name, PEER_CALL_MS)
        .await
        .map_err(|e| PeerError::Unreachable(e.to_string()))?;
    let mine = shared.hello();
    match exchange(
        &conn,
        &Request::Hello(mine.clone()),
        REQUEST_BYTES_MAX,
        PEER_CALL_MS,
    )
    .await
    {
        Ok(Response::Hello(theirs)) => {
            if let Some(id) = &theirs.cluster_id {
                shared.note_cluster_of(name, id);
            }
            if let Err(reason) = membership::compatible(&mine, &theirs) {
                conn.close(2u32.into(), b"incompatible");
                return Err(PeerError::Refused(format!(
                    "{name} is incompatible: {reason}"
                )));
            }
            shared.rejoin.saw_hello(&theirs);
            Ok(conn)
        }
        Ok(Response::Refused { reason, cluster_id }) => {
            if let Some(id) = &cluster_id {
                shared.note_cluster_of(name, id);
            }
            Err(PeerError::Refused(format!(
                "{name} refused this instance: {reason}"
            )))
        }
        Ok(other) => Err(PeerError::Unreachable(format!(
            "{name} answered Hello with {other:?}"
        ))),
        Err(e) => Err(PeerError::Unreachable(e)),
    }
}

/// Carries one peer's outbound Raft messages: waits for the first, takes what
/// else is queued (up to a batch), writes one frame. On failure the peer is
/// reported unreachable to raft and the queue is emptied (raft resends).
async fn sender_task(shared: Arc<Shared>, to: u64, name: String, rx: Receiver<Message>) {
    let mut backoff_ms = 100;
    while let Ok(first) = rx.recv().await {
        match stream_to(&shared, &name, first, &rx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(peer = %name, "raft stream failed: {e}");
                shared.peers.forget(&name);
                if let Some(core) = shared.core().as_mut() {
                    core.report_unreachable(to);
                }
                while rx.try_recv().is_ok() {}
                async_std::task::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(2_000);
            }
        }
    }
}

/// Writes batches to one stream until it fails (Err) or the queue closes (Ok).
async fn stream_to(
    shared: &Shared,
    name: &str,
    first: Message,
    rx: &Receiver<Message>,
) -> Result<(), String> {
    let conn = shared
        .peers
        .conn(shared, name)
        .await
        .map_err(|e| e.to_string())?;
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    let mut pending = Some(first);
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Ok(m) => m,
                Err(_) => return Ok(()),
            },
        };
        let mut messages = vec![serde_bytes::ByteBuf::from(
            first.write_to_bytes().map_err(|e| e.to_string())?,
        )];
        let mut size_bytes = messages[0].len();
        while messages.len() < RAFT_BATCH_COUNT_MAX && size_bytes < RAFT_BATCH_BYTES_MAX / 2 {
            let Ok(m) = rx.try_recv() else { break };
            let bytes = m.write_to_bytes().map_err(|e| e.to_string())?;
            size_bytes += bytes.len();
            messages.push(serde_bytes::ByteBuf::from(bytes));
        }
        write_frame(&mut send, &RaftBatch { messages }, RAFT_BATCH_BYTES_MAX)
            .await
            .map_err(|e| e.to_string())?;
    }
}
