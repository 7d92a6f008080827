//! A running job's log and progress, from the instance that runs it: any
//! instance asked forwards the question there, once (`forwarded`), so a
//! client or the dashboard follows a job from wherever it is connected,
//! without a Raft entry per log line. The work part answers for the runs
//! of this instance through the hook it set (`Shared::on_live`).

use std::sync::Arc;

use super::Shared;
use crate::proto::{Request, Response};
use crate::work::jobs::JobState;

/// Time a forwarded question may take: a follower asks again.
const LIVE_FORWARD_MS: u64 = 2_000;

pub(super) async fn respond(
    shared: &Arc<Shared>,
    id: &str,
    after_bytes: u64,
    forwarded: bool,
) -> Response {
    if let Err(message) = crate::work::jobs::check_job_id(id) {
        return Response::Error { message };
    }
    if let Some(view) = shared.live_here(id, after_bytes) {
        return Response::Live(Some(view));
    }
    if forwarded {
        return Response::Live(None);
    }
    let Some(instance) = running_on(shared, id).filter(|i| *i != shared.me.name) else {
        return Response::Live(None);
    };
    let req = Request::Live {
        id: id.to_string(),
        after_bytes,
        forwarded: true,
    };
    match shared
        .peers
        .call(shared, &instance, &req, LIVE_FORWARD_MS)
        .await
    {
        Ok(answer @ Response::Live(_)) => answer,
        _ => Response::Live(None),
    }
}

/// The instance the local replica says runs `id` now (it may lag: the
/// running instance answers for itself).
fn running_on(shared: &Shared, id: &str) -> Option<String> {
    let guard = shared.core();
    let core = guard.as_ref()?;
    let job = crate::state::jobs::job(core.state().conn(), id).ok()??;
    matches!(job.state, JobState::Assigned | JobState::Running)
        .then_some(job.instance)
        .flatten()
}
