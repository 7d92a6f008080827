//! Repeated warnings are counted, not repeated.
//!
//! A warning caused by a peer's or a stranger's behaviour (a refused
//! connection, a bad frame, a dropped message) can repeat several times a
//! second for as long as that behaviour lasts. Per (site, who) the first one
//! is logged; later ones are counted, and at most one per
//! [`WINDOW_MS`] is logged, carrying `suppressed=N`: how many were not
//! logged since the previous line. The count is reported with the next
//! occurrence after the window (nothing is logged for a key that fell
//! silent).
//!
//! [`Throttle`] is the pure part (the caller passes the time); [`admit`] and
//! the [`throttled_warn!`](crate::throttled_warn) macro are the process-wide
//! shell used at the call sites.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

/// Once a key's line was logged, the next is logged no sooner than this.
pub const WINDOW_MS: u64 = 60_000;
/// Keys remembered at most: a flood of distinct strangers cannot grow
/// memory; the least recently seen key is forgotten first (its count is
/// lost, and its next occurrence is logged as a first one).
pub const KEYS_COUNT_MAX: usize = 1024;

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` occurrences were not logged since the last line.
    Log { suppressed: u64 },
    /// Count it, log nothing.
    Suppress,
}

#[derive(Debug)]
struct Entry {
    logged_at_ms: u64,
    suppressed: u64,
    /// Recency for eviction: a counter, so that ties cannot happen.
    seen_seq: u64,
}

/// Rate limiter of log lines keyed by (site, who).
#[derive(Debug)]
pub struct Throttle {
    window_ms: u64,
    keys_max: usize,
    seq: u64,
    entries: HashMap<(&'static str, String), Entry>,
}

impl Throttle {
    pub fn new(window_ms: u64, keys_max: usize) -> Throttle {
        Throttle {
            window_ms,
            keys_max: keys_max.max(1),
            seq: 0,
            entries: HashMap::new(),
        }
    }

    /// One occurrence at `site` caused by `who`, at `now_ms` (any monotonic
    /// clock; a clock that goes back only delays the next line).
    pub fn check(&mut self, site: &'static str, who: &str, now_ms: u64) -> Verdict {
        self.seq += 1;
        let key = (site, who.to_owned());
        if let Some(e) = self.entries.get_mut(&key) {
            e.seen_seq = self.seq;
            if now_ms.saturating_sub(e.logged_at_ms) < self.window_ms {
                e.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = std::mem::take(&mut e.suppressed);
            e.logged_at_ms = now_ms;
            return Verdict::Log { suppressed };
        }
        if self.entries.len() >= self.keys_max {
            self.evict_oldest();
        }
        let entry = Entry {
            logged_at_ms: now_ms,
            suppressed: 0,
            seen_seq: self.seq,
        };
        self.entries.insert(key, entry);
        Verdict::Log { suppressed: 0 }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A linear scan: only a new key on a full table pays it, and the table
    /// is small.
    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.seen_seq)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.entries.remove(&k);
        }
    }
}

static GLOBAL: LazyLock<Mutex<Throttle>> =
    LazyLock::new(|| Mutex::new(Throttle::new(WINDOW_MS, KEYS_COUNT_MAX)));
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The process-wide throttle on the monotonic clock: `Some(suppressed)` when
/// this occurrence is to be logged, `None` when it is only counted.
pub fn admit(site: &'static str, who: &dyn Display) -> Option<u64> {
    let now_ms = STARTED.elapsed().as_millis() as u64;
    // A panic elsewhere while holding the lock must not silence warnings.
    let mut throttle = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
    match throttle.check(site, &who.to_string(), now_ms) {
        Verdict::Log { suppressed } => Some(suppressed),
        Verdict::Suppress => None,
    }
}

/// `tracing::warn!` through the process-wide throttle, keyed by the site
/// (a string literal naming the warning) and `who` (the peer, the remote
/// address): `throttled_warn!("peer refused", remote.ip(), %remote, "peer
/// refused: {reason}")`. A line logged after others were counted carries
/// `suppressed=N`.
#[macro_export]
macro_rules! throttled_warn {
    ($site:literal, $who:expr, $($rest:tt)+) => {
        match $crate::throttle::admit($site, &$who) {
            Some(0) => ::tracing::warn!($($rest)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($rest)+),
            None => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG0: Verdict = Verdict::Log { suppressed: 0 };

    #[test]
    fn the_first_is_logged_then_one_a_window_with_the_count() {
        let mut t = Throttle::new(WINDOW_MS, KEYS_COUNT_MAX);
        assert_eq!(t.check("peer refused", "10.0.0.9", 0), LOG0);
        // A stranger retrying every 300 ms for a minute: counted only.
        let mut now = 0;
        for _ in 0..199 {
            now += 300;
            assert_eq!(t.check("peer refused", "10.0.0.9", now), Verdict::Suppress);
        }
        assert_eq!(now, 59_700);
        assert_eq!(
            t.check("peer refused", "10.0.0.9", 60_000),
            Verdict::Log { suppressed: 199 }
        );
        // The count starts again from the line just logged.
        assert_eq!(
            t.check("peer refused", "10.0.0.9", 60_300),
            Verdict::Suppress
        );
        assert_eq!(
            t.check("peer refused", "10.0.0.9", 120_000),
            Verdict::Log { suppressed: 1 }
        );
        // Quiet for longer than a window: logged at once, nothing counted.
        assert_eq!(
            t.check("peer refused", "10.0.0.9", 500_000),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn sites_and_peers_are_throttled_apart() {
        let mut t = Throttle::new(1_000, 16);
        assert_eq!(t.check("peer refused", "a", 0), LOG0);
        assert_eq!(t.check("peer refused", "b", 1), LOG0);
        assert_eq!(t.check("bad request", "a", 2), LOG0);
        assert_eq!(t.check("peer refused", "a", 3), Verdict::Suppress);
        assert_eq!(t.check("bad request", "a", 4), Verdict::Suppress);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn keys_are_bounded_and_the_least_recently_seen_goes_first() {
        let mut t = Throttle::new(WINDOW_MS, 4);
        for who in ["a", "b", "c", "d"] {
            assert_eq!(t.check("s", who, 0), LOG0);
        }
        // "a" keeps repeating, so "b" is now the least recently seen.
        assert_eq!(t.check("s", "a", 1), Verdict::Suppress);
        assert_eq!(t.check("s", "e", 2), LOG0);
        assert_eq!(t.len(), 4);
        assert_eq!(t.check("s", "a", 3), Verdict::Suppress, "a was evicted");
        assert_eq!(t.check("s", "b", 4), LOG0, "b was kept");
        // A flood of new keys never grows the table.
        for i in 0..10_000 {
            t.check("s", &format!("stranger{i}"), 5);
        }
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_clock_that_goes_back_only_delays_the_next_line() {
        let mut t = Throttle::new(1_000, 16);
        assert_eq!(t.check("s", "a", 5_000), LOG0);
        assert_eq!(t.check("s", "a", 10), Verdict::Suppress);
        assert_eq!(t.check("s", "a", 6_000), Verdict::Log { suppressed: 1 });
    }

    #[test]
    fn the_process_wide_throttle_counts_by_site_and_who() {
        // A site of this test's own: other tests share the global throttle.
        let who = "throttle-test-peer";
        assert_eq!(admit("throttle test", &who), Some(0));
        assert_eq!(admit("throttle test", &who), None);
        assert_eq!(admit("throttle test", &"another peer"), Some(0));
    }
}
