//! The periodic exchange that keeps the live view fresh: every
//! `GOSSIP_INTERVAL_MS_MAX` (or less) each instance sends every other configured server its
//! own `LocalInfo` and receives theirs. One task per peer, so a server that is
//! down (whose connection attempts wait for the handshake limit) delays no
//! one else, and `claro status` never waits on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{handlers::local_info, now_ms, Shared};
use crate::proto::{Request, Response};

/// Longest time between two exchanges with one peer. Shorter when
/// `node_timeout_ms` is short: a quarter of it, so that up to three lost
/// exchanges in a row do not mark a live server down.
const GOSSIP_INTERVAL_MS_MAX: u64 = 250;
/// Time one exchange may take.
const GOSSIP_CALL_MS: u64 = 1_000;

pub fn spawn(shared: &Arc<Shared>) {
    for s in &shared.cfg.servers {
        if s.name == shared.me.name {
            continue;
        }
        async_std::task::spawn(exchange_loop(shared.clone(), s.name.clone()));
    }
}

async fn exchange_loop(shared: Arc<Shared>, peer: String) {
    let interval_ms = (shared.cfg.timing.node_timeout_ms / 4).clamp(1, GOSSIP_INTERVAL_MS_MAX);
    while !shared.stopping.load(Ordering::SeqCst) {
        let req = Request::Gossip {
            info: local_info(&shared),
        };
        let answer = shared
            .peers
            .call(&shared, &peer, &req, GOSSIP_CALL_MS)
            .await;
        if let Ok(Response::Info(info)) = answer {
            if info.name == peer {
                shared.view().info_from(info, now_ms());
            }
        }
        async_std::task::sleep(Duration::from_millis(interval_ms)).await;
    }
}
