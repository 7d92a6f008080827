//! Graceful stop: hand the coordinator role to the most up-to-date peer, leave
//! the membership, and record when and which servers remained, so that a later
//! start knows whether its database is the newest.

use std::sync::Arc;
use std::time::Duration;

use super::{now_ms, Phase, Shared, PEER_CALL_MS, PROPOSAL_WAIT_MS};
use crate::proto::{Request, Response, StopRecord};

/// How long a stopping coordinator waits for its successor to take over.
const HANDOVER_WAIT_MS: u64 = 3_000;
/// How long a stopping instance keeps trying to leave the membership.
const LEAVE_WAIT_MS: u64 = PROPOSAL_WAIT_MS;

/// SIGINT and SIGTERM start a graceful stop; a second one exits at once.
pub fn install_signal_handlers(shared: Arc<Shared>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if shared
                .stopping
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                tracing::warn!("second signal {sig}: exiting now");
                std::process::exit(130);
            }
            tracing::info!("signal {sig}: stopping gracefully");
            let _ = shared.stop_tx.try_send(());
        }
    });
}

pub async fn graceful_stop(shared: &Shared, drain: impl std::future::Future<Output = ()>) {
    let was = shared.phase();
    shared.set_phase(Phase::Stopping);
    if matches!(was, Phase::Discovering | Phase::Waiting { .. }) || shared.core().is_none() {
        return;
    }
    drain.await;
    hand_over(shared).await;
    let others: Vec<String> = voters(shared)
        .into_iter()
        .filter(|n| *n != shared.me.name)
        .collect();
    let member = shared.core().as_ref().is_some_and(|c| c.is_member());
    let (left, remaining) = if !member {
        // Not (or no longer) a member, e.g. stopped while rejoining: it must
        // rejoin next time, never run on this database alone.
        (true, others)
    } else if others.is_empty() {
        // The last voter keeps its membership: it holds the newest database
        // and starts alone next time.
        (false, vec![])
    } else {
        match leave(shared).await {
            Ok(Leaving::Left(remaining)) => (true, remaining),
            // The others left first (all stopped at once): this one is the
            // last, and keeps its membership as above.
            Ok(Leaving::Last) => (false, vec![]),
            Err(e) => {
                tracing::warn!("could not leave the membership ({e}); stopping as a member");
                // The voters as this instance last knew them, not as they
                // were when the stop began (some may have left since).
                let now: Vec<String> = voters(shared)
                    .into_iter()
                    .filter(|n| *n != shared.me.name)
                    .collect();
                (false, now)
            }
        }
    };
    // Nothing is applied after this: the record's applied index is the one
    // state.db keeps, which `start-order` reads (leaving commits one more
    // entry, which this instance usually applies after the coordinator
    // answered). Dropping the core also closes both databases.
    let core = shared.core().take();
    let rec = StopRecord {
        stopped_at_ms: now_ms(),
        left,
        remaining,
        applied_index: core.as_ref().map_or(0, |c| c.applied_index()),
        cluster_id: core
            .as_ref()
            .and_then(|c| c.state().cluster_id().map(str::to_string)),
    };
    drop(core);
    tracing::info!(left = rec.left, remaining = ?rec.remaining, applied_index = rec.applied_index, "stop recorded");
    crate::data_dir::write_record(&shared.dir, &rec);
}

fn voters(shared: &Shared) -> Vec<String> {
    let guard = shared.core();
    let Some(core) = guard.as_ref() else {
        return vec![];
    };
    core.conf_state()
        .voters
        .iter()
        .filter_map(|id| shared.name_of(*id).map(str::to_string))
        .collect()
}

/// A coordinator hands its role to the most up-to-date voter first.
async fn hand_over(shared: &Shared) {
    let target = {
        let mut guard = shared.core();
        let Some(core) = guard.as_mut() else { return };
        if !core.is_leader() {
            return;
        }
        let Some(to) = core.best_successor() else {
            return;
        };
        core.transfer_leader(to);
        to
    };
    shared.wake();
    let name = shared.name_of(target).unwrap_or("?").to_string();
    let deadline = std::time::Instant::now() + Duration::from_millis(HANDOVER_WAIT_MS);
    while std::time::Instant::now() < deadline {
        if shared
            .core()
            .as_ref()
            .is_some_and(|c| !c.is_leader() && c.leader_id().is_some())
        {
            tracing::info!("coordinator role handed to {name}");
            return;
        }
        async_std::task::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!("{name} did not take the coordinator role within {HANDOVER_WAIT_MS} ms");
}

/// Whether no other voter has been heard from lately (the live view).
fn no_voter_heard(shared: &Shared) -> bool {
    let now = crate::clock::now_ms();
    let view = shared.view();
    voters(shared)
        .iter()
        .filter(|v| **v != shared.me.name)
        .all(|v| view.age_ms(v, now).is_none_or(|a| a > HEARD_RECENTLY_MS))
}

/// "Heard lately", for a stopping instance looking for anyone left.
const HEARD_RECENTLY_MS: u64 = 1_000;

/// How a stopping member's leave ended.
enum Leaving {
    /// The coordinator removed it; the voters that remain.
    Left(Vec<String>),
    /// Every other voter left first: it is the last member.
    Last,
}

/// Asks the coordinator to remove this instance. The voters are looked at
/// again each round: when every other one has left (all stopped at once)
/// this one is the last and stays a member. When it holds the coordinator
/// role itself (a stopping server handed it over), the others leave
/// through it; if some are still members after `HANDOVER_WAIT_MS` (they are
/// not stopping), it hands the role on and leaves through the new one.
async fn leave(shared: &Shared) -> Result<Leaving, String> {
    let deadline = std::time::Instant::now() + Duration::from_millis(LEAVE_WAIT_MS);
    let req = Request::Leave {
        name: shared.me.name.clone(),
    };
    let mut last = String::from("no coordinator");
    let mut leading_since: Option<std::time::Instant> = None;
    while std::time::Instant::now() < deadline {
        // A witness votes but holds no jobs and never takes the role: with
        // only witnesses left beside it, this server is the last one.
        let witness = |v: &str| {
            shared
                .cfg
                .server(v)
                .is_some_and(|s| s.role == crate::config::Role::Witness)
        };
        if voters(shared)
            .iter()
            .all(|v| *v == shared.me.name || witness(v))
        {
            return Ok(Leaving::Last);
        }
        match shared.leader_name() {
            Some(leader) if leader != shared.me.name => {
                leading_since = None;
                match shared
                    .peers
                    .call(shared, &leader, &req, PEER_CALL_MS + PROPOSAL_WAIT_MS)
                    .await
                {
                    Ok(Response::Left { remaining }) => return Ok(Leaving::Left(remaining)),
                    Ok(other) => last = format!("{other:?}"),
                    // The coordinator is gone, and no other voter is heard
                    // either (all stopped at once; it may have removed this
                    // one before it went): nobody is left to ask.
                    Err(e) if no_voter_heard(shared) => {
                        return Err(format!("{e}; no other server is reachable"))
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            Some(_) => {
                let since = *leading_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= Duration::from_millis(HANDOVER_WAIT_MS) {
                    hand_over(shared).await;
                    leading_since = None;
                }
                last = "this instance was handed the coordinator role".into();
            }
            // No coordinator, and no voter heard (a non-voting member
            // stopping with, or after, every voter): nobody to ask.
            None if no_voter_heard(shared) => {
                return Err("no coordinator, and no voter is reachable".into())
            }
            None => {}
        }
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}
