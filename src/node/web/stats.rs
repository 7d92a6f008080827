//! The history behind the dashboard's charts (`GET /api/v1/stats`) and
//! the job duration histogram of `/metrics`: every `STATS_INTERVAL_MS` this
//! instance samples its replica (queue depth, running jobs, jobs ended,
//! load per server) into a ring of `STATS_SAMPLES_MAX` samples (one hour).
//!
//! The samples are read from the replicated database, so every instance
//! draws the same curves up to its sampling instants; the history itself is
//! kept in memory since the instance started (a restarted one starts empty).
//! Jobs are counted by their end time `STATS_LAG_MS` behind now, so that a
//! job whose end is applied a little after the time it carries is counted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::Web;
use crate::clock::now_ms;
use crate::histogram::Histogram;
use crate::state::jobs as db;

pub const STATS_INTERVAL_MS: u64 = 10_000;
pub const STATS_SAMPLES_MAX: usize = 360;
const STATS_LAG_MS: u64 = 5_000;
/// Run times read per sample at most (for the histogram).
const DURATIONS_PER_SAMPLE_MAX: u32 = 100_000;
/// Upper bounds of the job duration histogram's buckets.
pub const DURATION_BUCKETS_MS: [u64; 12] = [
    10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// A server's share of the work, from the replicated state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Load {
    pub running: u32,
    pub slots: u32,
    pub mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at: String,
    pub at_ms: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub jobs_per_s: f64,
    pub servers: BTreeMap<String, Load>,
}

pub struct Stats {
    pub samples: VecDeque<Sample>,
    /// Run times of the jobs that ended since this instance started.
    pub durations: Histogram,
    /// Jobs that ended since this instance started, as the sampler saw
    /// them: succeeded, failed, cancelled.
    pub finished: [u64; 3],
    /// End of the window the last sample counted (`0`: none yet).
    counted_to_ms: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            samples: VecDeque::new(),
            durations: Histogram::new(&DURATION_BUCKETS_MS),
            finished: [0; 3],
            counted_to_ms: 0,
        }
    }
}

impl Stats {
    fn push(&mut self, sample: Sample) {
        if self.samples.len() == STATS_SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }
}

/// Every server of the config with its running jobs, slots and mode.
pub fn load(web: &Web) -> BTreeMap<String, Load> {
    let guard = web.cluster.core();
    let (active, modes) = guard.as_ref().map_or_else(Default::default, |core| {
        let conn = core.state().conn();
        (
            db::active_counts(conn).unwrap_or_default(),
            db::modes(conn).unwrap_or_default(),
        )
    });
    web.cluster
        .cfg
        .servers
        .iter()
        .map(|s| {
            let load = Load {
                running: active.get(&s.name).copied().unwrap_or(0),
                slots: s.slots,
                mode: modes
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_else(|| "active".into()),
            };
            (s.name.clone(), load)
        })
        .collect()
}

/// Samples every `STATS_INTERVAL_MS` until the process ends.
pub async fn sample_loop(web: Arc<Web>) {
    loop {
        sample_once(&web);
        async_std::task::sleep(Duration::from_millis(STATS_INTERVAL_MS)).await;
    }
}

fn sample_once(web: &Web) {
    let now = now_ms();
    let to_ms = now.saturating_sub(STATS_LAG_MS);
    let from_ms = {
        let stats = web.stats.lock().expect("stats lock");
        if stats.counted_to_ms == 0 {
            to_ms.saturating_sub(STATS_INTERVAL_MS)
        } else {
            stats.counted_to_ms
        }
    };
    let read = {
        let guard = web.cluster.core();
        let Some(core) = guard.as_ref() else { return };
        let conn = core.state().conn();
        let queued = db::queued_count(conn);
        let ended = db::finished_between(conn, from_ms, to_ms, DURATIONS_PER_SAMPLE_MAX);
        match (queued, ended) {
            (Ok(q), Ok(e)) => (q, e),
            (Err(e), _) | (_, Err(e)) => {
                return tracing::warn!("stats: reading the jobs failed: {e}");
            }
        }
    };
    let (queued, (ended, durations)) = read;
    let servers = load(web);
    let running = servers.values().map(|l| u64::from(l.running)).sum();
    let window_s = (to_ms - from_ms).max(1) as f64 / 1000.0;
    let total = ended.succeeded + ended.failed + ended.cancelled;
    let sample = Sample {
        at: crate::contract::rfc3339(now),
        at_ms: now,
        queued,
        running,
        succeeded: ended.succeeded,
        failed: ended.failed,
        cancelled: ended.cancelled,
        jobs_per_s: (total as f64 / window_s * 100.0).round() / 100.0,
        servers,
    };
    let mut stats = web.stats.lock().expect("stats lock");
    for ms in durations {
        stats.durations.observe(ms);
    }
    for (n, more) in stats
        .finished
        .iter_mut()
        .zip([ended.succeeded, ended.failed, ended.cancelled])
    {
        *n += more;
    }
    stats.counted_to_ms = to_ms;
    stats.push(sample);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_one_hour() {
        let mut stats = Stats::default();
        for i in 0..STATS_SAMPLES_MAX as u64 + 5 {
            stats.push(Sample {
                at: String::new(),
                at_ms: i,
                queued: 0,
                running: 0,
                succeeded: 0,
                failed: 0,
                cancelled: 0,
                jobs_per_s: 0.0,
                servers: BTreeMap::new(),
            });
        }
        assert_eq!(stats.samples.len(), STATS_SAMPLES_MAX);
        assert_eq!(stats.samples.front().unwrap().at_ms, 5);
    }
}
