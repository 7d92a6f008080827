//! Where queued jobs go: the coordinator's placement rule, pure.
//!
//! The rule of the seeds (the server with the fewest running engines gets
//! the next one): queued jobs are taken by priority (highest first), then
//! age (oldest first); each goes to the eligible instance with the lowest
//! load, (assigned + running) / slots, never over its slots. Among equally
//! loaded ones the job goes to the one placed on least recently (so jobs
//! that end before the next comes go round the servers in turn: by name,
//! the first server took them all), and among those never placed on, from
//! a place that the job's id picks (job ids are random).
//! Instances in maintenance, witnesses, joining or down ones are not
//! eligible: the caller leaves them out.

/// An instance that may take jobs, and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub slots: u32,
    /// Attempts assigned to it or running on it.
    pub active: u32,
    /// When it was last given a job, as a placement sequence number
    /// (higher is more recent; 0: not since the caller keeps count).
    /// `place` sets it for every job it places.
    pub last_placed: u64,
}

/// A queued job, as placement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: String,
    pub attempt: u32,
    pub priority: i32,
    /// Not before this time (retry backoff).
    pub not_before_ms: u64,
}

/// One placement: attempt `attempt` of job `id` on `instance`, which has
/// `slots` slots (applied only while it holds fewer active attempts).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub id: String,
    pub attempt: u32,
    pub instance: String,
    pub slots: u32,
}

/// Places `queued` (any order) on `candidates` (their `active` counts are
/// updated), at most `batch_max` placements, none before its `not_before_ms`.
pub fn place(
    queued: &[Queued],
    candidates: &mut [Candidate],
    now_ms: u64,
    batch_max: usize,
) -> Vec<Assignment> {
    let mut order: Vec<&Queued> = queued
        .iter()
        .filter(|q| q.not_before_ms <= now_ms)
        .collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    let mut out = Vec::new();
    let mut seq = candidates.iter().map(|c| c.last_placed).max().unwrap_or(0);
    for job in order {
        if out.len() == batch_max {
            break;
        }
        let Some(best) = least_loaded(candidates, tie_start(&job.id, candidates.len())) else {
            break; // every slot is taken
        };
        seq += 1;
        let c = &mut candidates[best];
        c.active += 1;
        c.last_placed = seq;
        assert!(c.active <= c.slots, "{} over its slots", c.name);
        out.push(Assignment {
            id: job.id.clone(),
            attempt: job.attempt,
            instance: c.name.clone(),
            slots: c.slots,
        });
    }
    out
}

/// Where a job's ties start among `count` candidates: from its id, the
/// same on every replica and for every retry of a placement.
fn tie_start(id: &str, count: usize) -> usize {
    (crate::fingerprint::fnv1a(id.as_bytes()) % count.max(1) as u64) as usize
}

/// The candidate with a free slot and the lowest load; among equals, the
/// one placed on least recently; among those, the first at or after
/// `start` (going round).
fn least_loaded(candidates: &[Candidate], start: usize) -> Option<usize> {
    let count = candidates.len();
    let turn = |i: usize| (i + count - start % count.max(1)) % count.max(1);
    let mut best: Option<usize> = None;
    for (i, c) in candidates.iter().enumerate() {
        if c.active >= c.slots {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                let o = &candidates[b];
                // active / slots < o.active / o.slots, without division.
                let (mine, theirs) = (
                    u64::from(c.active) * u64::from(o.slots),
                    u64::from(o.active) * u64::from(c.slots),
                );
                let earlier = (c.last_placed, turn(i)) < (o.last_placed, turn(b));
                mine < theirs || (mine == theirs && earlier)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, slots: u32, active: u32) -> Candidate {
        Candidate {
            name: name.into(),
            slots,
            active,
            last_placed: 0,
        }
    }

    fn job(id: &str, priority: i32) -> Queued {
        Queued {
            id: id.into(),
            attempt: 1,
            priority,
            not_before_ms: 0,
        }
    }

    fn names(a: &[Assignment]) -> Vec<(&str, &str)> {
        a.iter()
            .map(|a| (a.id.as_str(), a.instance.as_str()))
            .collect()
    }

    #[test]
    fn jobs_spread_over_the_least_loaded_by_slots() {
        let mut c = [cand("srv1", 4, 2), cand("srv2", 2, 0), cand("srv3", 8, 2)];
        let q: Vec<Queued> = (0..6).map(|i| job(&format!("j{i}"), 0)).collect();
        let a = place(&q, &mut c, 0, 100);
        // Loads before each: srv1 2/4, srv2 0/2, srv3 2/8: the lowest
        // first; then all three at one half, one job each, in the order
        // the jobs' ids pick.
        assert_eq!(
            names(&a)[..3],
            [("j0", "srv2"), ("j1", "srv3"), ("j2", "srv3")]
        );
        let actives: Vec<u32> = c.iter().map(|c| c.active).collect();
        assert_eq!(actives, [3, 2, 5]);
        // srv2 is full (2 of 2): nothing more goes there.
        assert_eq!(c[1].active, 2);
    }

    /// Jobs that end before the next comes (every server idle at each
    /// placement) go round the servers in turn, wherever the first went.
    #[test]
    fn idle_servers_take_jobs_in_turn() {
        let mut c = [cand("srv1", 4, 0), cand("srv2", 4, 0), cand("srv3", 4, 0)];
        let mut counts = std::collections::HashMap::new();
        for i in 0..300u64 {
            let id = format!("01a2{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let a = place(&[job(&id, 0)], &mut c, 0, 1);
            *counts.entry(a[0].instance.clone()).or_insert(0) += 1;
            c.iter_mut().for_each(|c| c.active = 0); // it ended
        }
        assert!(counts.values().all(|n| *n == 100), "{counts:?}");
        // Equal loads: the one placed on least recently, whatever the name.
        let mut c = [cand("srv1", 4, 1), cand("srv2", 4, 1), cand("srv3", 4, 2)];
        (c[0].last_placed, c[1].last_placed, c[2].last_placed) = (7, 5, 1);
        assert_eq!(place(&[job("x", 0)], &mut c, 0, 1)[0].instance, "srv2");
        assert_eq!(c[1].last_placed, 8);
    }

    /// Servers never placed on (a new coordinator's view): the job's id
    /// picks where ties start, so they spread, not all to the first name.
    #[test]
    fn ties_spread_over_the_servers() {
        let mut counts = std::collections::HashMap::new();
        for i in 0..300u64 {
            let mut c = [cand("srv1", 4, 0), cand("srv2", 4, 0), cand("srv3", 4, 0)];
            let id = format!("01a2{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let a = place(&[job(&id, 0)], &mut c, 0, 1);
            *counts.entry(a[0].instance.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(
            counts.values().all(|n| (70..=130).contains(n)),
            "{counts:?}"
        );
    }

    #[test]
    fn higher_priority_first_then_older() {
        let mut c = [cand("srv1", 2, 0)];
        let q = [job("b", 0), job("c", 5), job("a", 0)];
        let a = place(&q, &mut c, 0, 100);
        assert_eq!(names(&a), [("c", "srv1"), ("a", "srv1")]);
    }

    #[test]
    fn nothing_goes_over_slots_or_past_the_batch_or_before_its_time() {
        let mut c = [cand("srv1", 1, 1)];
        assert!(place(&[job("a", 0)], &mut c, 0, 100).is_empty());
        let mut c = [cand("srv1", 10, 0)];
        let q: Vec<Queued> = (0..5).map(|i| job(&format!("j{i}"), 0)).collect();
        assert_eq!(place(&q, &mut c, 0, 3).len(), 3);
        let mut later = job("x", 0);
        later.not_before_ms = 500;
        assert!(place(&[later.clone()], &mut c, 499, 3).is_empty());
        assert_eq!(place(&[later], &mut c, 500, 3).len(), 1);
    }

    #[test]
    fn no_candidates_places_nothing() {
        assert!(place(&[job("a", 0)], &mut [], 0, 10).is_empty());
    }
}
