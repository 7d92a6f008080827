//! The cluster's protocol level, for rolling upgrades: instances of
//! neighbouring protocols work together (`membership::compatible`), and
//! what a newer protocol changes is used only from the entry that raises
//! the level (`Command::SetLevel`). The coordinator proposes that entry
//! once every server of the config says, in its gossip, that it speaks the
//! newer protocol (`membership::level_to_raise` decides).

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
/// Every server of the config counts, not only the voters: a learner about
/// to be promoted, or a server stopped for the upgrade (it left the
/// voters), must speak the new protocol too, or it could not come back
/// (levels never fall). A server not up now holds the level where it is.
fn level_due(shared: &Shared) -> Option<u32> {
    let current = shared
        .with_replica(|core| core.is_leader().then(|| core.state().protocol_level()))
        .flatten()?;
    let now = now_ms();
    let view = shared.view();
    let versions: Vec<Option<u32>> = shared
        .cfg
        .servers
        .iter()
        .map(|s| match s.name == shared.me.name {
            true => Some(crate::proto::protocol_version()),
            false => view
                .info(&s.name)
                .filter(|_| view.is_up(&s.name, now))
                .map(|i| i.protocol_version),
        })
        .collect();
    membership::level_to_raise(current, &versions)
}
