//! Where queued jobs go: the coordinator's placement rule, pure.
//!
//! The rule of the seeds (the server with the fewest running engines gets
//! the next one): queued jobs are taken by priority (highest first), then
//! age (oldest first); each goes to the eligible instance with the lowest
//! load, (assigned + running) / slots, never over its slots; ties go to the
//! server named first. Instances in maintenance, witnesses, joining or down
//! ones are not eligible: the caller leaves them out.

/// An instance that may take jobs, and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub slots: u32,
    /// Attempts assigned to it or running on it.
    pub active: u32,
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
    for job in order {
        if out.len() == batch_max {
            break;
        }
        let Some(best) = least_loaded(candidates) else {
            break; // every slot is taken
        };
        let c = &mut candidates[best];
        c.active += 1;
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

/// The candidate with a free slot and the lowest load, first by name on ties.
fn least_loaded(candidates: &[Candidate]) -> Option<usize> {
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
                mine < theirs || (mine == theirs && c.name < o.name)
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
        assert_eq!(
            names(&a),
            // Loads before each: srv1 2/4, srv2 0/2, srv3 2/8; equal
            // loads go to the first name.
            [
                ("j0", "srv2"),
                ("j1", "srv3"),
                ("j2", "srv3"),
                ("j3", "srv1"),
                ("j4", "srv2"),
                ("j5", "srv3"),
            ]
        );
        // srv2 is full (2 of 2): nothing more goes there.
        assert_eq!(c[1].active, 2);
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
