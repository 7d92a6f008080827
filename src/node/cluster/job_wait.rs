//! A job read held until the job ends (`Request::Job` with `wait_ms`):
//! `claro wait`, `submit --wait` and `run` learn of a job's end when this
//! replica applies it, not at their next poll, and make one call where
//! they made several (each a new connection and handshake).
//!
//! The hold only decides *when* to answer: the answer is an ordinary read
//! (by default its read index is confirmed before the hold, so it holds
//! every write acknowledged before the request; `handlers::read_job_held`).
//! Bounded: a hold lasts at most `JOB_WAIT_MS_MAX` (below the CLI's hedge
//! time, so a held call is never sent to a second instance as if this one
//! were slow), and at most `JOB_WAITS_MAX` are held at once (the next is
//! answered at once, and its client polls as it would with an older
//! server).
//!
//! Cost on a busy replica: holds do not look at their jobs themselves
//! (each look would take the core's lock, thousands of times a second).
//! The raft thread, which holds that lock already after each cycle that
//! applied something, reads the jobs that ended in it from the job feed
//! (`state::job_events`) once, only while something is held, and wakes
//! the holds of those jobs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Shared;
use crate::proto::JOB_WAIT_MS_MAX;
use crate::work::jobs::JobState;

/// Reads held at once, at most, per instance.
pub(crate) const JOB_WAITS_MAX: usize = 64;
/// Feed entries read after one cycle, at most (the feed keeps 10,000; a
/// cycle that changed more jobs than this wakes every hold to look).
const EVENTS_PER_CYCLE_MAX: u32 = 4096;

/// The held reads of this instance (`Shared::job_waits`).
#[derive(Default)]
pub(crate) struct JobWaits {
    held: AtomicUsize,
    inner: Mutex<Held>,
    /// Notified when a held job ended (or may have).
    ended: event_listener::Event,
}

#[derive(Default)]
struct Held {
    /// Job id -> holds waiting for it.
    waiting: HashMap<String, usize>,
    /// Held jobs seen ending since they were held.
    ended: HashSet<String>,
    /// The last feed entry read.
    seen_seq: u64,
}

impl JobWaits {
    /// After a cycle that applied entries, under the core's lock: marks
    /// the held jobs that ended in it and wakes their holds. Nothing but
    /// the feed's last sequence is read while nothing is held.
    pub(crate) fn applied(&self, conn: &rusqlite::Connection) {
        use crate::state::job_events;
        let mut held = self.inner.lock().expect("job waits lock");
        let last = match job_events::last(conn) {
            Ok(last) => last,
            Err(_) => return self.wake_all(&mut held),
        };
        if held.waiting.is_empty() || last < held.seen_seq {
            // Nothing held, or the feed restarted (a snapshot was
            // installed): start from here; a restart wakes every hold.
            let restarted = last < held.seen_seq && !held.waiting.is_empty();
            held.seen_seq = last;
            if restarted {
                self.wake_all(&mut held);
            }
            return;
        }
        let events = match job_events::after(conn, held.seen_seq, EVENTS_PER_CYCLE_MAX) {
            Ok(events) => events,
            Err(_) => return self.wake_all(&mut held),
        };
        let complete = events.last().is_none_or(|e| e.seq >= last);
        held.seen_seq = last;
        if !complete {
            return self.wake_all(&mut held);
        }
        let mut woke = false;
        for e in events {
            let fin = JobState::parse(&e.state).is_some_and(JobState::is_final);
            if fin && held.waiting.contains_key(&e.id) {
                held.ended.insert(e.id);
                woke = true;
            }
        }
        if woke {
            self.ended.notify(usize::MAX);
        }
    }

    /// Marks every held job as possibly ended: each hold looks itself.
    fn wake_all(&self, held: &mut Held) {
        let ids: Vec<String> = held.waiting.keys().cloned().collect();
        held.ended.extend(ids);
        self.ended.notify(usize::MAX);
    }

    fn hold(&self, id: &str) {
        let mut held = self.inner.lock().expect("job waits lock");
        *held.waiting.entry(id.to_string()).or_default() += 1;
        debug_assert!(held.waiting.len() <= JOB_WAITS_MAX);
    }

    fn has_ended(&self, id: &str) -> bool {
        self.inner
            .lock()
            .expect("job waits lock")
            .ended
            .contains(id)
    }

    fn let_go(&self, id: &str) {
        let mut held = self.inner.lock().expect("job waits lock");
        let last = match held.waiting.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if last {
            held.waiting.remove(id);
            held.ended.remove(id);
        }
    }
}

/// Returns when job `id` has ended on this replica, after `wait_ms`
/// (at most `JOB_WAIT_MS_MAX`), or at once when `JOB_WAITS_MAX` reads are
/// held already.
pub(crate) async fn until_ended(shared: &Shared, id: &str, wait_ms: u64) {
    let waits = &shared.job_waits;
    let count = waits.held.fetch_add(1, Ordering::AcqRel);
    let _count = Release(&waits.held);
    if count >= JOB_WAITS_MAX || wait_ms == 0 {
        return;
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms.min(JOB_WAIT_MS_MAX));
    // Held before the first look, so that an end applied after the look is
    // marked for it.
    waits.hold(id);
    let _hold = LetGo(waits, id);
    if ended_here(shared, id) {
        return;
    }
    loop {
        let listener = waits.ended.listen();
        if waits.has_ended(id) && ended_here(shared, id) {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let _ = async_std::future::timeout(deadline - now, listener).await;
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

/// Forgets a held job however the hold ends.
struct LetGo<'a>(&'a JobWaits, &'a str);

impl Drop for LetGo<'_> {
    fn drop(&mut self) {
        self.0.let_go(self.1);
    }
}
