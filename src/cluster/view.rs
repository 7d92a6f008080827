//! The live cluster view: what this instance last heard from every configured
//! server, and the status view built from it without waiting on anyone.
//!
//! Pure: the shell tells it what arrived and when (`now_ms` from its clock);
//! it never reads a clock, opens a socket or touches a file. A server is
//! `down` once it has been silent for `node_timeout_ms` (the failure
//! detector); any traffic counts (Raft messages, the periodic exchange of
//! `LocalInfo`, answers to requests), but only a `LocalInfo` says what state
//! the server is in.

use std::collections::HashMap;

use crate::config::{Role, ServerConf};
use crate::proto::{LocalInfo, ServerStatus, StatusView};

/// What was last heard from one server.
#[derive(Debug, Clone, Default)]
struct Heard {
    /// Last traffic of any kind, ms since the epoch.
    at_ms: Option<u64>,
    /// Its last self-description and when it arrived.
    info: Option<(LocalInfo, u64)>,
}

#[derive(Debug, Clone)]
pub struct ClusterView {
    node_timeout_ms: u64,
    heard: HashMap<String, Heard>,
}

impl ClusterView {
    pub fn new(node_timeout_ms: u64) -> ClusterView {
        assert!(node_timeout_ms > 0, "node_timeout_ms must be positive");
        ClusterView {
            node_timeout_ms,
            heard: HashMap::new(),
        }
    }

    /// Any traffic from `name` (a Raft message, a connection, an answer).
    pub fn heard_from(&mut self, name: &str, now_ms: u64) {
        let h = self.heard.entry(name.to_string()).or_default();
        h.at_ms = Some(h.at_ms.map_or(now_ms, |t| t.max(now_ms)));
    }

    /// `info.name` described itself.
    pub fn info_from(&mut self, info: LocalInfo, now_ms: u64) {
        self.heard_from(&info.name, now_ms);
        let h = self.heard.get_mut(&info.name).expect("just heard");
        h.info = Some((info, now_ms));
    }

    /// Heard from within `node_timeout_ms`.
    pub fn is_up(&self, name: &str, now_ms: u64) -> bool {
        self.age_ms(name, now_ms)
            .is_some_and(|age| age < self.node_timeout_ms)
    }

    /// Milliseconds since `name` was last heard from, if ever.
    pub fn age_ms(&self, name: &str, now_ms: u64) -> Option<u64> {
        let at = self.heard.get(name)?.at_ms?;
        Some(now_ms.saturating_sub(at))
    }

    /// How many of `names` were heard from within `window_ms`.
    pub fn heard_count<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        window_ms: u64,
        now_ms: u64,
    ) -> usize {
        names
            .into_iter()
            .filter(|n| self.age_ms(n, now_ms).is_some_and(|age| age < window_ms))
            .count()
    }

    /// `name` last said it coordinates, in a term older than `me`'s, and has
    /// been silent for more than a third of `node_timeout_ms` (over a few
    /// exchanges): a coordinator that was replaced because it is gone. It
    /// reads `down` at once rather than as a second coordinator until the
    /// node timeout.
    fn superseded(&self, name: &str, me: &LocalInfo, now_ms: u64) -> bool {
        let claims = self
            .info(name)
            .is_some_and(|i| i.state == "coordinator" && i.term < me.term);
        let silent = self
            .age_ms(name, now_ms)
            .is_some_and(|age| age > self.node_timeout_ms / 3);
        claims && silent
    }

    /// The last self-description of `name`, whether or not it is still up.
    pub fn info(&self, name: &str) -> Option<&LocalInfo> {
        self.heard.get(name)?.info.as_ref().map(|(i, _)| i)
    }

    /// The status view as this instance sees it: `me` is its own fresh
    /// description, every other line comes from what it last heard.
    pub fn status(&self, servers: &[ServerConf], me: &LocalInfo, now_ms: u64) -> StatusView {
        let commit = self.known_commit(me, now_ms);
        let lines = servers
            .iter()
            .map(|s| match s.name == me.name {
                true => line(s, Some(me), true, Some(0), commit),
                false => {
                    let up = self.is_up(&s.name, now_ms) && !self.superseded(&s.name, me, now_ms);
                    line(
                        s,
                        self.info(&s.name),
                        up,
                        self.age_ms(&s.name, now_ms),
                        commit,
                    )
                }
            })
            .collect();
        StatusView {
            cluster_id: me.cluster_id.clone(),
            coordinator: me.leader.clone(),
            term: me.term,
            commit_index: commit,
            servers: lines,
            answered_by: me.name.clone(),
            from_coordinator: me.state == "coordinator",
            // The replica's, filled in by the shell that holds it.
            protocol_level: 0,
            alerts: Vec::new(),
        }
    }

    /// The highest commit index known from this instance or any server that
    /// is up: a follower's own commit index may lag the coordinator's.
    fn known_commit(&self, me: &LocalInfo, now_ms: u64) -> u64 {
        self.heard
            .iter()
            .filter(|(name, _)| self.is_up(name, now_ms))
            .filter_map(|(_, h)| h.info.as_ref())
            .filter(|(i, _)| i.cluster_id.is_some() && i.cluster_id == me.cluster_id)
            .map(|(i, _)| i.commit_index)
            .fold(me.commit_index, u64::max)
    }
}

/// One server's line. A server that is not up is `down`, whatever it said last.
fn line(
    s: &ServerConf,
    info: Option<&LocalInfo>,
    up: bool,
    heard_ago_ms: Option<u64>,
    commit: u64,
) -> ServerStatus {
    let role = match s.role {
        Role::Server => "server",
        Role::Witness => "witness",
    };
    let live = info.filter(|_| up);
    ServerStatus {
        name: s.name.clone(),
        address: s.configured_address(),
        role: role.into(),
        state: live.map_or("down".into(), |i| i.state.clone()),
        connected: up,
        synchronized: live.is_some_and(|i| i.is_member && commit > 0 && i.applied_index >= commit),
        applied_index: info.map_or(0, |i| i.applied_index),
        note: live.and_then(|i| i.note.clone()),
        heard_ago_ms,
        protocol_version: info.map(|i| i.protocol_version).filter(|v| *v > 0),
        disk_free_percent: live.and_then(|i| i.disk_free_percent),
    }
}

/// Why a member that knows no coordinator has none: it reaches too few
/// voters for a quorum, or an election is under way.
pub fn electing_note(other_voters: usize, reachable: usize) -> String {
    let voters = other_voters + 1;
    let have = reachable + 1;
    if have * 2 > voters {
        format!("election under way: reaches {reachable} of {other_voters} other voters")
    } else {
        format!("no quorum: reaches {reachable} of {other_voters} other voters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, n: u8) -> ServerConf {
        let address: std::net::SocketAddr = format!("127.0.0.{n}:7900").parse().unwrap();
        ServerConf {
            name: name.into(),
            host: crate::config::Host::Ip(address.ip()),
            port: 7900,
            address,
            slots: 1,
            role: Role::Server,
            vote: true,
        }
    }

    fn info(name: &str, state: &str, applied: u64, commit: u64) -> LocalInfo {
        LocalInfo {
            name: name.into(),
            state: state.into(),
            cluster_id: Some("c".into()),
            started_at_ms: 0,
            initialized: true,
            is_member: true,
            leader: Some("srv1".into()),
            term: 2,
            commit_index: commit,
            applied_index: applied,
            note: None,
            last_stop: None,
            voters: Vec::new(),
            checkpoints: Vec::new(),
            protocol_version: 9,
            disk_free_percent: None,
        }
    }

    fn servers() -> Vec<ServerConf> {
        vec![server("srv1", 1), server("srv2", 2), server("srv3", 3)]
    }

    #[test]
    fn a_silent_server_is_down_after_the_node_timeout_and_keeps_its_last_facts() {
        let mut v = ClusterView::new(3_000);
        v.info_from(info("srv2", "follower", 9, 9), 10_000);
        assert!(v.is_up("srv2", 12_999));
        assert!(!v.is_up("srv2", 13_000));
        let st = v.status(&servers(), &info("srv1", "coordinator", 9, 9), 13_500);
        let l = &st.servers[1];
        assert_eq!((l.state.as_str(), l.connected), ("down", false));
        assert!(!l.synchronized, "a down server is never synchronized");
        assert_eq!(l.applied_index, 9);
        assert_eq!(l.heard_ago_ms, Some(3_500));
        assert_eq!(st.servers[2].state, "down", "never heard");
        assert_eq!(st.servers[2].heard_ago_ms, None);
    }

    #[test]
    fn a_replaced_coordinator_that_went_silent_reads_down_before_the_timeout() {
        let mut v = ClusterView::new(3_000);
        let mut old = info("srv1", "coordinator", 9, 9);
        old.term = 2;
        v.info_from(old, 10_000);
        let mut me = info("srv2", "coordinator", 9, 9);
        me.term = 3;
        // Heard recently: still shown as it said.
        let st = v.status(&servers(), &me, 10_500);
        assert_eq!(st.servers[0].state, "coordinator");
        // Silent past a third of the timeout, and replaced: down.
        let st = v.status(&servers(), &me, 11_100);
        assert_eq!(
            (st.servers[0].state.as_str(), st.servers[0].connected),
            ("down", false)
        );
        // Same term (no newer coordinator known): only the timeout counts.
        me.term = 2;
        let st = v.status(&servers(), &me, 11_100);
        assert_eq!(st.servers[0].state, "coordinator");
    }

    #[test]
    fn raft_traffic_keeps_a_server_up_and_its_last_state_shows() {
        let mut v = ClusterView::new(3_000);
        v.info_from(info("srv2", "follower", 5, 5), 1_000);
        v.heard_from("srv2", 3_900);
        let st = v.status(&servers(), &info("srv1", "coordinator", 5, 5), 4_500);
        assert_eq!(st.servers[1].state, "follower");
        assert!(st.servers[1].synchronized);
        assert_eq!(st.servers[1].heard_ago_ms, Some(600));
    }

    #[test]
    fn synchronized_is_judged_against_the_highest_known_commit() {
        let mut v = ClusterView::new(3_000);
        v.info_from(info("srv1", "coordinator", 20, 20), 1_000);
        // srv3 answers: its own commit index lags the coordinator's.
        let st = v.status(&servers(), &info("srv3", "follower", 12, 12), 1_100);
        assert_eq!(st.commit_index, 20);
        assert!(st.servers[0].synchronized);
        assert!(!st.servers[2].synchronized);
        assert!(!st.from_coordinator);
    }

    #[test]
    fn heard_count_uses_its_own_window() {
        let mut v = ClusterView::new(3_000);
        v.heard_from("srv2", 1_000);
        v.heard_from("srv3", 1_700);
        assert_eq!(v.heard_count(["srv2", "srv3"], 500, 2_000), 1);
        assert_eq!(v.heard_count(["srv2", "srv3"], 3_000, 2_000), 2);
        assert_eq!(v.heard_count(["srv4"], 3_000, 2_000), 0);
    }

    #[test]
    fn electing_note_says_whether_a_quorum_is_reachable() {
        assert_eq!(
            electing_note(2, 0),
            "no quorum: reaches 0 of 2 other voters"
        );
        assert_eq!(
            electing_note(2, 1),
            "election under way: reaches 1 of 2 other voters"
        );
        assert_eq!(
            electing_note(3, 1),
            "no quorum: reaches 1 of 3 other voters"
        );
        assert_eq!(
            electing_note(0, 0),
            "election under way: reaches 0 of 0 other voters"
        );
    }
}
