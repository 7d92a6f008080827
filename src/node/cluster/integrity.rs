//! The shell of `integrity`: the coordinator commits digest checkpoints, and
//! every replica compares its own with its peers' (reported by gossip). A
//! replica that a majority of the voters contradict is damaged: it logs an
//! error, stops serving, and sets its data directory aside to receive the
//! database again (`damage`), shown `damaged` in status meanwhile.

use std::sync::Arc;
use std::time::Duration;

use super::{now_ms, Phase, Shared};
use crate::cluster::integrity::{self, Verdict};
use crate::state::{Checkpoint, Command};

/// Time between two looks at the checkpoints (and at whether one is due).
const WATCH_MS: u64 = 250;

pub async fn watch(shared: Arc<Shared>) {
    let mut last_proposed_ms = now_ms();
    let mut last_split = None;
    loop {
        async_std::task::sleep(Duration::from_millis(WATCH_MS)).await;
        if shared.phase() == Phase::Stopping {
            return;
        }
        if propose_if_due(&shared, last_proposed_ms) {
            last_proposed_ms = now_ms();
        }
        judge(&shared, &mut last_split);
    }
}

/// On the coordinator, proposes a checkpoint when one is due; returns
/// whether it did. Nothing is proposed while writes are refused.
fn propose_if_due(shared: &Shared, last_proposed_ms: u64) -> bool {
    if shared.space_refusal().is_some() || shared.conflict().is_some_and(|c| c.yields) {
        return false;
    }
    let mut guard = shared.core();
    let Some(core) = guard.as_mut().filter(|c| c.is_leader()) else {
        return false;
    };
    let last_index = core.state().checkpoints().last().map_or(0, |c| c.index);
    let due = integrity::checkpoint_due(
        now_ms(),
        last_proposed_ms,
        shared.cfg.timing.checkpoint_ms,
        core.applied_index(),
        last_index,
    );
    if !due || core.propose(Vec::new(), &Command::Checkpoint).is_err() {
        return false;
    }
    drop(guard);
    shared.wake();
    true
}

/// Compares this replica's checkpoints with its peers' and acts on the
/// verdict. A split is logged once per index.
fn judge(shared: &Shared, last_split: &mut Option<u64>) {
    let Some((mine, voters, i_vote, cluster_id)) = own_facts(shared) else {
        return;
    };
    let reports = peer_reports(shared, cluster_id.as_deref());
    let borrowed: Vec<(&str, &[Checkpoint])> = reports
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    match integrity::verdict(&mine, &borrowed, &voters, i_vote) {
        Verdict::Differs {
            index,
            agreeing,
            voters,
        } => {
            let cause = format!(
                "its state digest at index {index} differs from the one {agreeing} of the {voters} voters hold"
            );
            shared.damaged_while_running(&cause);
        }
        Verdict::Split { index } if *last_split != Some(index) => {
            *last_split = Some(index);
            tracing::error!(
                "replicas disagree on the state digest at index {index} and no digest has a majority of the voters: see `claro status` on each server"
            );
        }
        _ => {}
    }
}

type OwnFacts = (Vec<Checkpoint>, Vec<String>, bool, Option<String>);

/// This replica's checkpoints, the voters' names, whether it votes, and its
/// cluster id; `None` without a core.
fn own_facts(shared: &Shared) -> Option<OwnFacts> {
    let guard = shared.core();
    let core = guard.as_ref()?;
    let voters = core
        .conf_state()
        .voters
        .iter()
        .filter_map(|id| shared.name_of(*id).map(str::to_string))
        .collect();
    Some((
        core.state().checkpoints(),
        voters,
        core.is_voter(shared.id),
        core.state().cluster_id().map(str::to_string),
    ))
}

/// The checkpoints the other servers of this cluster last reported.
fn peer_reports(shared: &Shared, cluster_id: Option<&str>) -> Vec<(String, Vec<Checkpoint>)> {
    let view = shared.view();
    shared
        .cfg
        .servers
        .iter()
        .filter(|s| s.name != shared.me.name)
        .filter_map(|s| view.info(&s.name))
        .filter(|info| info.cluster_id.as_deref() == cluster_id && !info.checkpoints.is_empty())
        .map(|info| (info.name.clone(), info.checkpoints.clone()))
        .collect()
}
