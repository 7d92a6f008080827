//! Do the replicas hold the same state? Pure decisions, no I/O.
//!
//! The coordinator commits a `Command::Checkpoint` every `checkpoint_ms`
//! (when something was applied since the last one, `checkpoint_due`); each
//! replica digests its state where it applies that entry, keeps its latest
//! few (`state::CHECKPOINTS_KEPT`) and reports them to its peers with its
//! `LocalInfo`. `verdict` compares a replica's own digests with its peers'.
//!
//! A replica condemns itself only when a majority of the voters agree on a
//! digest other than its own at the same index: a lone damaged replica, even
//! the coordinator, never makes the healthy majority set their data aside.
//! When no digest has a majority (replicas all differ), nobody acts; each
//! logs the disagreement.

use crate::state::Checkpoint;

/// What a replica's checkpoints say about its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No checkpoint reported by enough voters to decide.
    Unconfirmed,
    /// A majority of the voters hold this replica's digest at `index`.
    Agrees { index: u64 },
    /// `agreeing` of the `voters` hold another digest than this replica's at
    /// `index`, a majority: this replica's state is damaged.
    Differs {
        index: u64,
        agreeing: usize,
        voters: usize,
    },
    /// Voters differ at `index` but no digest has a majority.
    Split { index: u64 },
}

/// The verdict on `mine` (this replica's checkpoints, any order) given what
/// the other servers reported (`reports`: name and checkpoints). Only
/// voters' digests count; `i_vote` says whether this replica is one of
/// `voters`. The newest index that some other voter reported decides.
pub fn verdict(
    mine: &[Checkpoint],
    reports: &[(&str, &[Checkpoint])],
    voters: &[String],
    i_vote: bool,
) -> Verdict {
    let quorum = voters.len() / 2 + 1;
    let mut ordered: Vec<&Checkpoint> = mine.iter().collect();
    ordered.sort_by_key(|c| std::cmp::Reverse(c.index));
    for own in ordered {
        let digests: Vec<&str> = reports
            .iter()
            .filter(|(name, _)| voters.iter().any(|v| v == name))
            .filter_map(|(_, cps)| cps.iter().find(|c| c.index == own.index))
            .map(|c| c.digest.as_str())
            .collect();
        if digests.is_empty() {
            continue;
        }
        return at_index(own, &digests, quorum, voters.len(), i_vote);
    }
    Verdict::Unconfirmed
}

/// The verdict at one index where other voters reported `digests`.
fn at_index(
    own: &Checkpoint,
    digests: &[&str],
    quorum: usize,
    voters: usize,
    i_vote: bool,
) -> Verdict {
    let index = own.index;
    let same = digests.iter().filter(|d| **d == own.digest).count() + usize::from(i_vote);
    if same >= quorum {
        return Verdict::Agrees { index };
    }
    let top = digests
        .iter()
        .filter(|d| **d != own.digest)
        .map(|d| digests.iter().filter(|e| *e == d).count())
        .max()
        .unwrap_or(0);
    if top >= quorum {
        return Verdict::Differs {
            index,
            agreeing: top,
            voters,
        };
    }
    if same < digests.len() + usize::from(i_vote) {
        return Verdict::Split { index };
    }
    Verdict::Unconfirmed
}

/// Whether the coordinator commits a checkpoint now: `checkpoint_ms` passed
/// since the last one it proposed and something was applied after the last
/// checkpoint (an idle cluster is not digested again and again).
pub fn checkpoint_due(
    now_ms: u64,
    last_proposed_ms: u64,
    checkpoint_ms: u64,
    applied_index: u64,
    last_checkpoint_index: u64,
) -> bool {
    now_ms.saturating_sub(last_proposed_ms) >= checkpoint_ms
        && applied_index > last_checkpoint_index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(index: u64, digest: &str) -> Checkpoint {
        Checkpoint {
            index,
            digest: digest.into(),
        }
    }

    fn voters(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_replica_that_the_other_two_voters_contradict_differs() {
        let (a, b) = ([cp(10, "good")], [cp(10, "good")]);
        let reports: [(&str, &[Checkpoint]); 2] = [("srv1", &a), ("srv2", &b)];
        let v = verdict(
            &[cp(10, "bad")],
            &reports,
            &voters(&["srv1", "srv2", "srv3"]),
            true,
        );
        assert_eq!(
            v,
            Verdict::Differs {
                index: 10,
                agreeing: 2,
                voters: 3
            }
        );
    }

    #[test]
    fn a_lone_damaged_coordinator_cannot_condemn_the_majority() {
        // srv2's view: the coordinator srv1 differs, srv3 agrees with srv2.
        let (bad, good) = ([cp(10, "bad")], [cp(10, "good")]);
        let reports: [(&str, &[Checkpoint]); 2] = [("srv1", &bad), ("srv3", &good)];
        let v = verdict(
            &[cp(10, "good")],
            &reports,
            &voters(&["srv1", "srv2", "srv3"]),
            true,
        );
        assert_eq!(v, Verdict::Agrees { index: 10 });
        // And with srv3 unheard, srv1's word alone decides nothing.
        let reports: [(&str, &[Checkpoint]); 1] = [("srv1", &bad)];
        let v = verdict(
            &[cp(10, "good")],
            &reports,
            &voters(&["srv1", "srv2", "srv3"]),
            true,
        );
        assert_eq!(v, Verdict::Split { index: 10 });
    }

    #[test]
    fn only_a_common_index_is_compared_and_the_newest_decides() {
        let mine = [cp(10, "x"), cp(20, "y"), cp(30, "z")];
        let a = [cp(20, "y"), cp(30, "other")];
        let b = [cp(20, "y")];
        let reports: [(&str, &[Checkpoint]); 2] = [("srv1", &a), ("srv2", &b)];
        let v = verdict(&mine, &reports, &voters(&["srv1", "srv2", "srv3"]), true);
        // At 30 one voter differs, one is silent: no majority either way.
        assert_eq!(v, Verdict::Split { index: 30 });
        let none: [(&str, &[Checkpoint]); 0] = [];
        assert_eq!(
            verdict(&mine, &none, &voters(&["srv1"]), false),
            Verdict::Unconfirmed
        );
    }

    #[test]
    fn a_learner_is_judged_by_the_voters_and_non_voters_do_not_count() {
        let (a, b, c) = ([cp(5, "good")], [cp(5, "good")], [cp(5, "bad")]);
        let reports: [(&str, &[Checkpoint]); 3] = [("srv1", &a), ("srv2", &b), ("srv9", &c)];
        let v = verdict(&[cp(5, "bad")], &reports, &voters(&["srv1", "srv2"]), false);
        assert_eq!(
            v,
            Verdict::Differs {
                index: 5,
                agreeing: 2,
                voters: 2
            }
        );
    }

    #[test]
    fn a_checkpoint_is_due_after_its_interval_only_when_something_was_applied() {
        assert!(checkpoint_due(30_000, 0, 30_000, 7, 5));
        assert!(!checkpoint_due(29_999, 0, 30_000, 7, 5));
        assert!(!checkpoint_due(60_000, 0, 30_000, 5, 5));
    }
}
