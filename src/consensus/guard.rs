//! Checks on Raft messages from peers before raft-rs sees them.
//!
//! raft-rs trusts its peers: several messages that no correct peer sends, or
//! that a correct leader sends to a peer that lost its data, make it panic
//! (`fatal!`). No message from a peer may crash an instance, so each one is
//! checked here first against the facts of our own log, and is stepped,
//! refused with a reason, or handled as a sign that a member lost data.
//!
//! The panics this guards against, in raft-rs 0.7:
//! - `RaftLog::commit_to`: "to_commit N is out of range [last_index M]", from a
//!   heartbeat whose commit is beyond our log (the leader counts entries we
//!   acknowledged and no longer hold: a wiped or restored data directory);
//! - `Raft::send`: "term should be set", answering a vote request of term 0
//!   (term 0 makes raft-rs treat a network message as a local one);
//! - `Raft::step_leader`: "stepped empty MsgProp", and the read-index paths
//!   that index `entries[0]`;
//! - `confchange::restore`: an inconsistent conf state in a snapshot.
//!
//! And two that are not panics but would be silently wrong: a leader takes an
//! acknowledgment of entries beyond its log at face value, and would count it
//! towards committing those entries once it writes them; and an instance
//! that holds no database (a wiped directory) or knows it lost entries grants
//! votes like any other, which could elect a leader lacking entries that were
//! committed with the acknowledgment it no longer holds (the simulation finds
//! such a lost entry when wiped members vote). It votes again once it holds
//! the cluster's data.
//!
//! (`RaftLog::maybe_append`'s "entry N conflict with committed entry M" is not
//! reachable from a message: raft-rs answers an append anchored below its
//! commit index before it looks at the entries.)
//!
//! Pure: facts in, a verdict out; `Core::step` gathers the facts and acts.

use std::collections::HashSet;

use raft::eraftpb::{ConfState, Message, MessageType};

/// Marks a `MsgAppendResponse` that a follower sends on its own when the
/// leader's heartbeat claims entries it does not hold: it lost data.
pub const LOST_DATA_CONTEXT: &[u8] = b"claro:lost-data";

/// What this instance knows when a message arrives.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub id: u64,
    pub term: u64,
    pub leader: bool,
    pub last_index: u64,
    pub committed: u64,
    /// The leader's matched index for the sender, if it tracks one.
    pub sender_matched: Option<u64>,
    /// We hold no database (a new or wiped data directory), or know we lost
    /// entries we had acknowledged: our vote could elect a leader that lacks
    /// entries committed with our help.
    pub unfit_to_vote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Step,
    /// Dropped: no correct peer sends it, and raft-rs would panic on it (or
    /// act on nonsense).
    Refuse(String),
    /// A heartbeat claims we hold entries up to `claimed` but our log ends at
    /// `holds`: step it without moving our commit index, and tell the leader.
    OwnDataLost {
        claimed: u64,
        holds: u64,
    },
    /// The sender, a follower, says it lost entries it had acknowledged up to
    /// `acknowledged`; its log ends at `holds`.
    PeerDataLost {
        acknowledged: u64,
        holds: u64,
    },
}

pub fn check(m: &Message, f: &Facts) -> Verdict {
    use MessageType::*;
    let kind = m.get_msg_type();
    if m.to != f.id {
        return refuse(format!("addressed to {}, not to this instance", m.to));
    }
    if m.term == 0 && !matches!(kind, MsgPropose | MsgReadIndex) {
        return refuse(format!("{kind:?} without a term"));
    }
    match kind {
        MsgPropose | MsgReadIndex if m.entries.is_empty() => {
            refuse(format!("{kind:?} without entries"))
        }
        MsgReadIndexResp if m.entries.len() != 1 => refuse("MsgReadIndexResp without one entry"),
        MsgAppend => check_append(m),
        MsgHeartbeat => check_heartbeat(m, f),
        MsgSnapshot => check_snapshot(m),
        MsgAppendResponse => check_append_response(m, f),
        MsgRequestVote | MsgRequestPreVote if f.unfit_to_vote => refuse(format!(
            "{kind:?}: this instance does not vote until it holds the cluster's data again"
        )),
        _ => Verdict::Step,
    }
}

fn refuse(reason: impl Into<String>) -> Verdict {
    Verdict::Refuse(reason.into())
}

/// Entries must follow the anchor one by one, with terms that never go down
/// and never pass the message's term (raft-rs indexes its unstable log by
/// position and would slice it wrongly).
fn check_append(m: &Message) -> Verdict {
    let mut prev_term = m.log_term;
    for (i, e) in m.entries.iter().enumerate() {
        if e.index != m.index + 1 + i as u64 {
            return refuse(format!(
                "append at {} carries entry {} at position {i}",
                m.index, e.index
            ));
        }
        if e.term < prev_term || e.term > m.term {
            return refuse(format!(
                "append carries entry {} of term {}",
                e.index, e.term
            ));
        }
        prev_term = e.term;
    }
    Verdict::Step
}

/// A correct leader's heartbeat commits at most what we acknowledged, and we
/// never drop acknowledged entries: a commit beyond our log means we lost them.
fn check_heartbeat(m: &Message, f: &Facts) -> Verdict {
    if m.term < f.term || m.commit <= f.last_index {
        return Verdict::Step;
    }
    Verdict::OwnDataLost {
        claimed: m.commit,
        holds: f.last_index,
    }
}

/// Only what our own storage can restore: claro makes simple membership
/// changes only, so no joint configuration, and no server twice.
fn check_snapshot(m: &Message) -> Verdict {
    let meta = m.get_snapshot().get_metadata();
    if meta.index == 0 || meta.term == 0 || meta.term > m.term {
        return refuse(format!(
            "snapshot at index {} term {} (message term {})",
            meta.index, meta.term, m.term
        ));
    }
    match conf_state_problem(meta.get_conf_state()) {
        Some(p) => refuse(format!("snapshot with {p}")),
        None => Verdict::Step,
    }
}

pub fn conf_state_problem(cs: &ConfState) -> Option<String> {
    if !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave {
        return Some("a joint configuration".into());
    }
    if cs.voters.is_empty() {
        return Some("no voters".into());
    }
    let mut seen = HashSet::new();
    let ids = cs.voters.iter().chain(cs.learners.iter());
    if let Some(id) = ids.clone().find(|id| **id == 0 || !seen.insert(**id)) {
        return Some(format!("server id {id} listed twice or invalid"));
    }
    None
}

/// A leader must not take acknowledgments of entries it does not have (raft-rs
/// would count them once it writes entries there); a follower's own "lost
/// data" report is handled here, not by raft-rs.
fn check_append_response(m: &Message, f: &Facts) -> Verdict {
    if !f.leader || m.term != f.term {
        return Verdict::Step; // raft-rs drops responses of other terms
    }
    if m.index > f.last_index || m.reject_hint > f.last_index {
        return refuse(format!(
            "append response for index {} (hint {}) beyond this log's {}",
            m.index, m.reject_hint, f.last_index
        ));
    }
    if m.reject && m.context.as_ref() == LOST_DATA_CONTEXT {
        let Some(matched) = f.sender_matched else {
            return refuse("a lost-data report from a server this leader does not track");
        };
        return Verdict::PeerDataLost {
            acknowledged: matched.max(m.index),
            holds: m.reject_hint,
        };
    }
    Verdict::Step
}

/// The response a follower sends on its own after [`Verdict::OwnDataLost`]: a
/// rejection that tells the leader where our log really ends. `f` holds our
/// facts after the heartbeat was stepped (its term may be newer).
pub fn lost_data_report(f: &Facts, to: u64, claimed: u64, holds_term: u64) -> Message {
    let mut r = Message::default();
    r.set_msg_type(MessageType::MsgAppendResponse);
    r.from = f.id;
    r.to = to;
    r.term = f.term;
    r.index = claimed;
    r.reject = true;
    r.reject_hint = f.last_index;
    r.log_term = holds_term;
    r.commit = f.committed;
    r.context = LOST_DATA_CONTEXT.to_vec().into();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn facts() -> Facts {
        Facts {
            id: 1,
            term: 3,
            leader: false,
            last_index: 10,
            committed: 8,
            sender_matched: None,
            unfit_to_vote: false,
        }
    }

    fn msg(kind: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 2;
        m.to = 1;
        m.term = term;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_heartbeat_committing_beyond_our_log_means_we_lost_data() {
        let mut m = msg(MessageType::MsgHeartbeat, 3);
        m.commit = 10;
        assert_eq!(check(&m, &facts()), Verdict::Step);
        m.commit = 25;
        assert_eq!(
            check(&m, &facts()),
            Verdict::OwnDataLost {
                claimed: 25,
                holds: 10
            }
        );
        // A stale leader's heartbeat is raft-rs's to ignore.
        m.term = 2;
        assert_eq!(check(&m, &facts()), Verdict::Step);
    }

    #[test]
    fn an_append_with_entries_out_of_order_is_refused() {
        let mut m = msg(MessageType::MsgAppend, 3);
        m.index = 6;
        m.log_term = 2;
        m.entries = vec![entry(7, 3), entry(9, 3)].into();
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
        m.entries = vec![entry(7, 3), entry(8, 2)].into();
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
        m.entries = vec![entry(7, 4)].into();
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
    }

    #[test]
    fn an_instance_without_its_data_does_not_vote() {
        let mut f = facts();
        let vote = msg(MessageType::MsgRequestVote, 4);
        let pre_vote = msg(MessageType::MsgRequestPreVote, 4);
        assert_eq!(check(&vote, &f), Verdict::Step);
        f.unfit_to_vote = true;
        assert!(matches!(check(&vote, &f), Verdict::Refuse(_)));
        assert!(matches!(check(&pre_vote, &f), Verdict::Refuse(_)));
        // It still follows a leader.
        assert_eq!(check(&msg(MessageType::MsgHeartbeat, 4), &f), Verdict::Step);
    }

    #[test]
    fn term_zero_and_empty_proposals_are_refused() {
        let m = msg(MessageType::MsgRequestVote, 0);
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
        let m = msg(MessageType::MsgPropose, 0);
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
        let m = msg(MessageType::MsgReadIndex, 0);
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
        let mut m = msg(MessageType::MsgHeartbeat, 3);
        m.to = 7;
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
    }

    #[test]
    fn a_leader_refuses_acknowledgments_beyond_its_log() {
        let mut f = facts();
        f.leader = true;
        f.sender_matched = Some(4);
        let mut m = msg(MessageType::MsgAppendResponse, 3);
        m.index = 10;
        assert_eq!(check(&m, &f), Verdict::Step);
        m.index = 11;
        assert!(matches!(check(&m, &f), Verdict::Refuse(_)));
    }

    #[test]
    fn a_leader_takes_a_lost_data_report_only_from_a_tracked_follower() {
        let mut f = facts();
        f.leader = true;
        f.sender_matched = Some(9);
        let follower = Facts {
            id: 2,
            term: 3,
            last_index: 2,
            committed: 2,
            ..Facts::default()
        };
        let m = lost_data_report(&follower, 1, 9, 1);
        assert_eq!((m.from, m.to), (2, 1));
        assert_eq!(
            check(&m, &f),
            Verdict::PeerDataLost {
                acknowledged: 9,
                holds: 2
            }
        );
        f.sender_matched = None;
        assert!(matches!(check(&m, &f), Verdict::Refuse(_)));
        // A follower's report reaching a follower is raft-rs's to ignore.
        f.leader = false;
        assert_eq!(check(&m, &f), Verdict::Step);
    }

    #[test]
    fn snapshots_with_impossible_metadata_are_refused() {
        let mut m = msg(MessageType::MsgSnapshot, 3);
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = 5;
        meta.term = 2;
        meta.mut_conf_state().voters = vec![1, 2];
        assert_eq!(check(&m, &facts()), Verdict::Step);
        m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![2];
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
        m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![];
        m.mut_snapshot().mut_metadata().index = 0;
        assert!(matches!(check(&m, &facts()), Verdict::Refuse(_)));
    }
}
