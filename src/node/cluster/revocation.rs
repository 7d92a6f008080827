//! Revoked certificates in practice: the live deny list the endpoint's
//! verifiers read at every handshake, kept in step with the replicated one
//! (`state::revoked`), and the open connections it closes when a
//! certificate in use is revoked (a handshake check alone would leave a
//! revoked peer's connection of yesterday open).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::consensus::Core;
use crate::tls::DenyList;
use crate::transport::peer_cert;

/// QUIC close code of a connection whose certificate was revoked.
const REVOKED_CLOSE_CODE: u32 = 3;

#[derive(Default)]
pub struct Revocation {
    pub deny: DenyList,
    /// The state machine's `revoked_version` the list was last read at.
    version_seen: AtomicU64,
    /// Connections this instance accepted, by quinn's stable id, while
    /// they are served.
    incoming: Mutex<HashMap<usize, quinn::Connection>>,
}

impl Revocation {
    /// The list as the data directory holds it, before anything opens it:
    /// the endpoint refuses revoked peers from its first handshake.
    pub fn at_rest(dir: &Path) -> Revocation {
        let r = Revocation::default();
        let db = crate::consensus::state_db(dir);
        match crate::state::revoked::fingerprints_at_rest(&db) {
            Ok(list) => r.deny.replace(list),
            // The damage check that follows deals with an unreadable file.
            Err(e) => tracing::warn!(
                "cannot read the revoked certificates of {}: {e}",
                db.display()
            ),
        }
        r
    }

    /// Reads the replicated list again when it may have changed; returns
    /// true when it did.
    pub fn refresh(&self, core: &Core) -> bool {
        let version = core.state().revoked_version();
        if self.version_seen.swap(version, Ordering::SeqCst) == version {
            return false;
        }
        match crate::state::revoked::fingerprints(core.state().conn()) {
            Ok(list) => {
                self.deny.replace(list);
                true
            }
            Err(e) => {
                // Read again at the next cycle.
                self.version_seen.store(0, Ordering::SeqCst);
                tracing::warn!("cannot read the revoked certificates: {e}");
                false
            }
        }
    }

    pub fn track(&self, conn: &quinn::Connection) {
        let mut incoming = self.incoming.lock().expect("incoming lock");
        incoming.insert(conn.stable_id(), conn.clone());
    }

    pub fn untrack(&self, conn: &quinn::Connection) {
        let mut incoming = self.incoming.lock().expect("incoming lock");
        incoming.remove(&conn.stable_id());
    }

    /// Closes `conn` when its peer's certificate is revoked; true if so.
    pub fn close_if_revoked(&self, conn: &quinn::Connection) -> bool {
        let revoked = peer_cert(conn).is_some_and(|c| self.deny.denies(&c));
        if revoked {
            conn.close(REVOKED_CLOSE_CODE.into(), b"certificate revoked");
        }
        revoked
    }

    /// Closes every accepted connection whose certificate is revoked.
    pub fn close_revoked_incoming(&self) {
        let incoming: Vec<quinn::Connection> = {
            let map = self.incoming.lock().expect("incoming lock");
            map.values().cloned().collect()
        };
        for conn in &incoming {
            if self.close_if_revoked(conn) {
                tracing::warn!(remote = %conn.remote_address(), "closed a connection: its certificate was revoked");
            }
        }
    }
}
