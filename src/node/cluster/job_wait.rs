//! A job read held until the job ends (`Request::Job` with `wait_ms`):
//! `claro wait`, `submit --wait` and `run` learn of a job's end when this
//! replica applies it, not at their next poll, and make one call where
//! they made several (each a new connection and handshake).
//!
//! The hold only decides *when* to answer: the answer is the ordinary
//! read that follows it (by default through the read index, so it holds
//! every write acknowledged before it). Bounded: a hold lasts at most
//! `JOB_WAIT_MS_MAX` (below the CLI's hedge time, so a held call is never
//! sent to a second instance as if this one were slow), at most
//! `JOB_WAITS_MAX` are held at once (the next is answered at once, and its
//! client polls as it would with an older server), and a held read looks
//! at its job at most once per `CHECK_MS_MIN`, woken by applied entries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Shared;
use crate::proto::JOB_WAIT_MS_MAX;

/// Reads held at once, at most, per instance.
pub(crate) const JOB_WAITS_MAX: usize = 64;
/// Shortest time between two looks at a held read's job: a busy replica
/// applies entries thousands of times a second.
const CHECK_MS_MIN: u64 = 2;

/// The count of held reads (`Shared::job_waits`).
#[derive(Default)]
pub(crate) struct JobWaits {
    held: AtomicUsize,
    /// Notified after every cycle that applied something.
    applied: event_listener::Event,
}

impl JobWaits {
    /// After a cycle that applied entries: held reads look again.
    pub(crate) fn applied(&self) {
        self.applied.notify(usize::MAX);
    }
}

/// Returns when job `id` has ended on this replica, after `wait_ms`
/// (at most `JOB_WAIT_MS_MAX`), or at once when `JOB_WAITS_MAX` reads are
/// held already.
pub(crate) async fn until_ended(shared: &Shared, id: &str, wait_ms: u64) {
    let waits = &shared.job_waits;
    let held = waits.held.fetch_add(1, Ordering::AcqRel);
    let _release = Release(&waits.held);
    if held >= JOB_WAITS_MAX || wait_ms == 0 {
        return;
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms.min(JOB_WAIT_MS_MAX));
    let gap = Duration::from_millis(CHECK_MS_MIN);
    loop {
        // Listening before looking: an entry applied between the look and
        // the wait still wakes it.
        let listener = waits.applied.listen();
        let looked = Instant::now();
        if ended_here(shared, id) || looked >= deadline {
            return;
        }
        let _ = async_std::future::timeout(deadline - looked, listener).await;
        let next = (looked + gap).min(deadline);
        let now = Instant::now();
        if now < next {
            async_std::task::sleep(next - now).await;
        }
    }
}

/// Whether this replica holds job `id` in a final state.
fn ended_here(shared: &Shared, id: &str) -> bool {
    let guard = shared.core();
    let Some(core) = guard.as_ref() else {
        return false;
    };
    matches!(
        crate::state::jobs::attempt_of(core.state().conn(), id),
        Ok(Some((_, state, _))) if state.is_final()
    )
}

/// Gives a held read's place back however the hold ends (its task may be
/// dropped with its connection).
struct Release<'a>(&'a AtomicUsize);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "held reads count underflow");
    }
}
