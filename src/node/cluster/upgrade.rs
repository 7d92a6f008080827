//! The cluster's protocol level, for rolling upgrades: instances of
//! neighbouring protocols work together (`membership::compatible`), and
//! what a newer protocol changes is used only from the entry that raises
//! the level (`Command::SetLevel`). The coordinator proposes that entry
//! once every voter says, in its gossip, that it speaks the newer protocol
//! (`membership::level_to_raise` decides).

use std::sync::Arc;
use std::time::Duration;

use super::{now_ms, Phase, Shared};
use crate::cluster::membership;
use crate::proto::Response;
use crate::state::Command;

/// Time between two looks at whether the level may rise.
const LEVEL_CHECK_MS: u64 = 2_000;

pub async fn watch(shared: Arc<Shared>) {
    loop {
        async_std::task::sleep(Duration::from_millis(LEVEL_CHECK_MS)).await;
        if shared.phase() == Phase::Stopping {
            return;
        }
        let Some(level) = level_due(&shared) else {
            continue;
        };
        tracing::info!(
            level,
            "every voter speaks protocol {level}: the cluster's level rises to it"
        );
        let command = Command::SetLevel { level };
        if let Response::Error { message } | Response::Unavailable { message } =
            super::propose(&shared, command, None, false).await
        {
            tracing::warn!(
                level,
                "raising the cluster's level failed (tried again): {message}"
            );
        }
    }
}

/// On the coordinator: the level the cluster may rise to now, if any.
fn level_due(shared: &Shared) -> Option<u32> {
    let (current, voters) = shared
        .with_replica(|core| {
            core.is_leader().then(|| {
                (
                    core.state().protocol_level(),
                    core.conf_state().voters.clone(),
                )
            })
        })
        .flatten()?;
    let now = now_ms();
    let view = shared.view();
    let versions: Vec<Option<u32>> = voters
        .iter()
        .map(|id| match shared.name_of(*id) {
            Some(n) if n == shared.me.name => Some(crate::proto::protocol_version()),
            Some(n) => view
                .info(n)
                .filter(|_| view.is_up(n, now))
                .map(|i| i.protocol_version),
            None => None,
        })
        .collect();
    membership::level_to_raise(current, &versions)
}
