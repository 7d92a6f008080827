//! Pure decisions about membership: what a starting instance does (run,
//! bootstrap, join, wait), and in which order servers should be started.
//!
//! Inputs are what the instance knows (its own data, the replies of the peers
//! it could reach); outputs are decisions. No I/O, no clock: the shell
//! (`node`) gathers the facts and carries the decision out.

use crate::proto::{Hello, LocalInfo, StopRecord};

/// Whether two instances may work together; the error names the difference.
/// Both must speak the same protocol, belong to the same named cluster, have
/// the same membership in their config, and (once they have one) the same
/// cluster id. The error names both servers instead of saying "this" and
/// "that": the refused instance logs the refuser's words, and they must read
/// true on both sides.
pub fn compatible(mine: &Hello, theirs: &Hello) -> Result<(), String> {
    let (me, they) = (&mine.name, &theirs.name);
    if let Some(why) = protocols_apart(mine, theirs).or_else(|| protocols_apart(theirs, mine)) {
        return Err(why);
    }
    if mine.cluster != theirs.cluster {
        return Err(format!(
            "{they}'s cluster name is `{}`, {me}'s is `{}`",
            theirs.cluster, mine.cluster
        ));
    }
    if mine.membership_hash != theirs.membership_hash {
        return Err(format!(
            "the [[server]] lists of their configs differ: {}",
            config_difference(mine, theirs)
        ));
    }
    if let (Some(a), Some(b)) = (&mine.cluster_id, &theirs.cluster_id) {
        if a != b {
            return Err(format!(
                "{they} belongs to cluster id {b}, {me} to {a}: they were started as two separate clusters"
            ));
        }
    }
    Ok(())
}

/// Why `b` cannot work beside `a`, as `a` sees it: `b` speaks a protocol
/// older than the oldest `a` works beside, or older than the level of the
/// cluster whose database `a` holds (that level's commands would mean
/// something else to it). An instance that names no oldest protocol (one
/// before levels) works beside its own version only.
fn protocols_apart(a: &Hello, b: &Hello) -> Option<String> {
    let oldest = a.protocol_version_min.unwrap_or(a.protocol_version);
    let level = a.protocol_level.unwrap_or(0);
    let floor = oldest.max(level);
    (b.protocol_version < floor).then(|| {
        let why = match level > oldest {
            true => format!("the cluster {} holds is at level {level}", a.name),
            false => format!("{} works beside protocol {oldest} and newer", a.name),
        };
        format!(
            "{} speaks protocol version {} (claro {}), {} speaks {} (claro {}): {why}",
            b.name,
            b.protocol_version,
            b.software_version,
            a.name,
            a.protocol_version,
            a.software_version
        )
    })
}

/// The protocol level a cluster may rise to: the oldest protocol its
/// voters speak (`None` for one not heard or from before levels: nothing
/// rises until every voter has said), when that is above `current`.
pub fn level_to_raise(current: u32, voter_versions: &[Option<u32>]) -> Option<u32> {
    let oldest = voter_versions
        .iter()
        .map(|v| v.filter(|v| *v > 0))
        .collect::<Option<Vec<u32>>>()?
        .into_iter()
        .min()?;
    (oldest > current).then_some(oldest)
}

/// Lines present in one membership text and not the other, by server.
fn config_difference(mine: &Hello, theirs: &Hello) -> String {
    let only = |a: &str, b: &str| -> String {
        let lines: Vec<&str> = a.lines().filter(|l| !b.lines().any(|t| t == *l)).collect();
        lines.join("; ")
    };
    format!(
        "only in {}'s [{}], only in {}'s [{}]",
        mine.name,
        only(&mine.membership_text, &theirs.membership_text),
        theirs.name,
        only(&theirs.membership_text, &mine.membership_text)
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Start raft on the local database (a member that crashed or stopped last).
    Run,
    /// Create a new cluster whose initial voters are this instance and every
    /// fresh server it sees (sorted names): like etcd's initial cluster, so
    /// that the bootstrapper's death leaves the others able to elect among
    /// themselves, and a bootstrapper that returns alone cannot outvote them.
    Bootstrap { voters: Vec<String> },
    /// Take the same initial state as `cluster_id`'s creator: a fresh
    /// instance named among the initial voters of a cluster that has not yet
    /// committed anything beyond its creation (its first election is under
    /// way). The initial state is identical on every voter by construction.
    Adopt {
        cluster_id: String,
        voters: Vec<String>,
    },
    /// Start again as a one-voter cluster on the local (older) database: only
    /// when the operator forces it.
    ForceBootstrap,
    /// Ask the coordinator `leader` to add this instance.
    Join { leader: String },
    /// Not yet: say why (and, when known, which servers to start first).
    Wait {
        reason: String,
        start_first: Vec<String>,
    },
}

/// What a starting instance knows.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub me: &'a str,
    pub witness: bool,
    pub started_at_ms: u64,
    /// Holds a member's database (bootstrapped or received one).
    pub initialized: bool,
    pub last_stop: Option<&'a StopRecord>,
    pub force_bootstrap: bool,
    /// The discovery window has passed since this instance started.
    pub window_over: bool,
    /// Replies from the peers it could reach.
    pub peers: &'a [LocalInfo],
    /// Names of the configured witnesses.
    pub witnesses: &'a [String],
    /// Names of the servers that may vote (`vote`, default true), in the
    /// config's order; empty: every server may, in name order. A cluster is
    /// bootstrapped by one of them with at most `VOTERS_MAX` of them.
    pub voting: &'a [String],
    /// A cluster a peer held at some point of this run's discovery (who
    /// and which): a fresh instance that saw one never bootstraps another
    /// in this run, even when its servers are all down since.
    pub seen_cluster: Option<&'a str>,
}

pub fn decide(s: &Situation<'_>) -> Startup {
    let left = s.last_stop.is_some_and(|r| r.left);
    if s.initialized && !left {
        return Startup::Run;
    }
    if let Some(leader) = live_leader(s.peers) {
        return Startup::Join { leader };
    }
    if s.initialized {
        return after_leaving(s);
    }
    fresh(s)
}

/// A coordinator some reachable peer knows and that is itself a member.
fn live_leader(peers: &[LocalInfo]) -> Option<String> {
    peers
        .iter()
        .filter(|p| p.is_member && p.cluster_id.is_some())
        .find_map(|p| p.leader.clone())
}

/// This instance left the cluster; the servers that remained hold newer state.
fn after_leaving(s: &Situation<'_>) -> Startup {
    if s.witness {
        return Startup::Wait {
            reason: "a witness never starts a cluster, not even with --force-bootstrap: start a server first".into(),
            start_first: s.last_stop.map(|r| r.remaining.clone()).unwrap_or_default(),
        };
    }
    if s.force_bootstrap {
        return Startup::ForceBootstrap;
    }
    let remaining = s.last_stop.map(|r| r.remaining.clone()).unwrap_or_default();
    let reason = if remaining.is_empty() {
        "this instance left the cluster; waiting for a running coordinator to rejoin".to_string()
    } else {
        format!(
            "this instance left the cluster and {} hold newer state: start {} first (or pass --force-bootstrap to start on this older database)",
            remaining.join(", "),
            if remaining.len() == 1 { "it" } else { "them" }
        )
    };
    Startup::Wait {
        reason,
        start_first: remaining,
    }
}

/// A fresh instance: join a cluster if one exists, else the first-started
/// fresh instance (ties broken by name) bootstraps, once the window is over.
fn fresh(s: &Situation<'_>) -> Startup {
    if let Some(adopt) = adoptable(s) {
        return adopt;
    }
    if let Some(p) = s.peers.iter().find(|p| p.initialized) {
        return Startup::Wait {
            reason: format!(
                "{} holds a cluster's database but no coordinator is elected yet",
                p.name
            ),
            start_first: Vec::new(),
        };
    }
    if !s.window_over {
        return Startup::Wait {
            reason: "looking for a running cluster".into(),
            start_first: Vec::new(),
        };
    }
    if s.witness {
        return Startup::Wait {
            reason: "a witness never starts a cluster: waiting for a server to start one".into(),
            start_first: Vec::new(),
        };
    }
    if let Some(seen) = s.seen_cluster {
        return Startup::Wait {
            reason: format!(
                "{seen}: waiting for its servers to come back rather than starting another cluster"
            ),
            start_first: Vec::new(),
        };
    }
    let may_vote = |name: &str| s.voting.is_empty() || s.voting.iter().any(|v| v == name);
    if !may_vote(s.me) {
        return Startup::Wait {
            reason: "a server with vote = false never starts a cluster: waiting for one that may vote to start it".into(),
            start_first: Vec::new(),
        };
    }
    let me = (s.started_at_ms, s.me);
    let first = s
        .peers
        .iter()
        .filter(|p| !s.witnesses.contains(&p.name) && may_vote(&p.name))
        .map(|p| (p.started_at_ms, p.name.as_str()))
        .chain(std::iter::once(me))
        .min()
        .expect("at least this instance");
    if first == me {
        let fresh: Vec<&str> = s
            .peers
            .iter()
            .filter(|p| !p.initialized && p.cluster_id.is_none() && may_vote(&p.name))
            .map(|p| p.name.as_str())
            .collect();
        Startup::Bootstrap {
            voters: initial_voters(s.me, &fresh, s.voting),
        }
    } else {
        Startup::Wait {
            reason: format!("{} started first and starts the cluster", first.1),
            start_first: Vec::new(),
        }
    }
}

/// The first voters of a new cluster: this instance and the fresh peers
/// that may vote, the first `VOTERS_MAX` in the config's order (`voting`;
/// empty: name order), this instance always among them. The others join
/// once it coordinates, as non-voting members.
fn initial_voters(me: &str, fresh: &[&str], voting: &[String]) -> Vec<String> {
    let rank = |name: &str| voting.iter().position(|v| v == name).unwrap_or(usize::MAX);
    let mut others: Vec<&str> = fresh.iter().copied().filter(|n| *n != me).collect();
    others.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    others.truncate(crate::consensus::VOTERS_MAX - 1);
    let mut voters: Vec<String> = others.into_iter().map(str::to_string).collect();
    voters.push(me.to_string());
    voters.sort();
    voters
}

/// A cluster being formed that names this instance among its initial voters:
/// it holds nothing beyond its creation (commit index at most 1, so no
/// coordinator has committed in it) and knows no coordinator. Adopting a
/// cluster that has moved on is never needed: one with a coordinator is
/// joined through it, which is also what a member that lost its data needs.
fn adoptable(s: &Situation<'_>) -> Option<Startup> {
    let p = s.peers.iter().find(|p| {
        p.initialized
            && p.is_member
            && p.leader.is_none()
            && p.commit_index <= 1
            && p.voters.iter().any(|v| v == s.me)
    })?;
    Some(Startup::Adopt {
        cluster_id: p.cluster_id.clone()?,
        voters: p.voters.clone(),
    })
}

/// Whether a starting instance takes the initial state a bootstrapper
/// offers (`Request::Adopt`): only a fresh instance named among the initial
/// voters that has not started anything itself (`started`: it claimed a
/// start, a bootstrap or a join, of its own). Else why not.
pub fn accepts_adopt(
    me: &str,
    voters: &[String],
    initialized: bool,
    started: bool,
) -> Result<(), &'static str> {
    if !voters.iter().any(|v| v == me) || initialized {
        return Err("this instance is not a fresh voter of that cluster");
    }
    if started {
        return Err("this instance has started already");
    }
    Ok(())
}

/// What one initial voter answered a bootstrapper's `Adopt` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptAnswer {
    /// It holds the new cluster's initial state, durably.
    Adopted,
    /// It started something else (its own bootstrap, a join, another
    /// cluster's state): the bootstrapper's view was out of date.
    Refused,
    /// No answer in time (down, or too slow).
    Silent,
}

/// Whether a bootstrapper records the cluster it offered, once the other
/// initial voters answered: only when none refused (a refusal means another
/// start is under way, which discovery will show) and a majority of the
/// voters hold it (itself and those that adopted), so that the cluster it
/// records can elect. Else why it looks again instead.
pub fn bootstrap_outcome(voters: &[String], answers: &[AdoptAnswer]) -> Result<(), String> {
    if answers.contains(&AdoptAnswer::Refused) {
        return Err("an initial voter has started otherwise meanwhile".into());
    }
    let holding = 1 + answers
        .iter()
        .filter(|a| **a == AdoptAnswer::Adopted)
        .count();
    if holding <= voters.len() / 2 {
        return Err(format!(
            "only {holding} of the {} initial voters took the new cluster",
            voters.len()
        ));
    }
    Ok(())
}

/// Two clusters under one config, as one of their members sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other cluster's id and the servers seen in it.
    pub other_cluster: String,
    pub other_servers: Vec<String>,
    /// This side's servers (this instance and the peers seen in its cluster).
    pub mine: Vec<String>,
    /// This side stops taking writes: the other has more servers (or as
    /// many and the smaller cluster id, so that exactly one side yields).
    pub yields: bool,
}

/// The largest other cluster seen under this config, if any, and whether
/// this side yields to it. `others`: (server, its cluster id) of peers that
/// refused this instance for belonging to another cluster.
pub fn conflict(
    my_cluster: &str,
    mine: &[String],
    others: &[(String, String)],
) -> Option<Conflict> {
    let mut by_cluster: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (server, id) in others.iter().filter(|(_, id)| id != my_cluster) {
        by_cluster.entry(id).or_default().push(server.clone());
    }
    let (id, mut servers) = by_cluster
        .into_iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))?;
    servers.sort();
    let yields = servers.len() > mine.len() || (servers.len() == mine.len() && id < my_cluster);
    Some(Conflict {
        other_cluster: id.to_string(),
        other_servers: servers,
        mine: mine.to_vec(),
        yields,
    })
}

impl Conflict {
    /// What `claro status` says on this side, and what to do.
    pub fn note(&self) -> String {
        let others = self.other_servers.join(", ");
        let mine = self.mine.join(", ");
        if self.yields {
            format!("conflict: {others} run another cluster ({}) under this config; this side ({mine}) takes no writes. To join them: stop {mine}, move their data directories away and start them again (see `claro start-order`)", self.other_cluster)
        } else {
            format!("conflict: {others} run another cluster ({}) under this config and take no writes; to bring them in: stop them, move their data directories away and start them again", self.other_cluster)
        }
    }
}

/// What the coordinator knows of one configured server, to decide whether it
/// must be re-added because it lost its data.
#[derive(Debug, Clone, Default)]
pub struct MemberFacts<'a> {
    /// A voter or learner in the applied membership.
    pub member: bool,
    /// The incarnation the replicated state recorded when it joined.
    pub recorded: Option<&'a str>,
    /// The incarnation its latest `Hello` carried (None: not heard, or a peer
    /// that predates incarnations).
    pub presented: Option<&'a str>,
    /// It reported holding entries only up to `.1` after acknowledging `.0`.
    pub lost: Option<(u64, u64)>,
    /// Voters once it is removed, and how many of them the coordinator heard
    /// from recently (itself included).
    pub voters_after: usize,
    pub live_voters_after: usize,
    /// Its log matches the coordinator's up to the commit index.
    pub caught_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readmission {
    /// Nothing to do.
    Keep,
    /// Record this incarnation for it (first time known; or it cannot be
    /// re-added now and catches up as it is).
    Record(String),
    /// Remove it under its old identity and add it again as a learner that
    /// receives the database (it is promoted once caught up).
    Readd { incarnation: String, reason: String },
}

/// Whether a member that lost its data must be re-added. A member is re-added
/// when it comes back with another data directory (a new incarnation) or
/// reports holding less than it acknowledged (an older copy) — but only when
/// the voters left without it can still decide: otherwise removing it would
/// stop the cluster, and it catches up as a voter instead (the coordinator
/// sends it what it misses either way).
pub fn readmission(f: &MemberFacts<'_>) -> Readmission {
    let Some(presented) = f.presented else {
        return Readmission::Keep;
    };
    if !f.member {
        return Readmission::Keep; // a normal join records it
    }
    let reason = match (f.recorded, f.lost) {
        (Some(r), _) if r != presented => format!(
            "it returned with a new data directory (incarnation {}, was {})",
            short(presented),
            short(r)
        ),
        (_, Some((acknowledged, holds))) => format!(
            "its log ends at index {holds} but it had acknowledged {acknowledged}: its data directory is older than it was (restored from a copy?)"
        ),
        (None, None) => return Readmission::Record(presented.to_string()),
        (Some(_), None) => return Readmission::Keep,
    };
    if f.live_voters_after < f.voters_after / 2 + 1 {
        // Not now; once it has caught up as it is, it is healthy.
        return match f.caught_up && f.recorded != Some(presented) {
            true => Readmission::Record(presented.to_string()),
            false => Readmission::Keep,
        };
    }
    Readmission::Readd {
        incarnation: presented.to_string(),
        reason,
    }
}

/// The first 8 characters of an id, enough to tell two apart in a message.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// What start-order knows of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub name: String,
    /// Its database's applied index, if known.
    pub applied_index: Option<u64>,
    pub last_stop: Option<StopRecord>,
    /// Currently running as a member of a cluster with a coordinator.
    pub running_member: bool,
}

/// The order to start servers in: the one holding the newest database first.
/// Running members come first (they are the cluster); then servers that did
/// not leave (they stopped last or crashed as members), newest database first;
/// then servers that left, latest stop first; unknown ones last, by name.
pub fn start_order(facts: &[ServerFacts]) -> Vec<String> {
    let mut ranked: Vec<(u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, &str)> = facts
        .iter()
        .map(|f| {
            let left = f.last_stop.as_ref().is_some_and(|r| r.left);
            let stopped = f.last_stop.as_ref().map_or(0, |r| r.stopped_at_ms);
            let class = match (f.running_member, f.applied_index.is_some(), left) {
                (true, _, _) => 0,
                (false, true, false) => 1,
                (false, true, true) => 2,
                (false, false, _) => 3,
            };
            let applied = f.applied_index.unwrap_or(0);
            (
                class,
                std::cmp::Reverse(applied),
                std::cmp::Reverse(stopped),
                f.name.as_str(),
            )
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .map(|(_, _, _, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, started: u64) -> LocalInfo {
        LocalInfo {
            name: name.into(),
            state: "waiting".into(),
            cluster_id: None,
            started_at_ms: started,
            initialized: false,
            is_member: false,
            leader: None,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            note: None,
            last_stop: None,
            voters: Vec::new(),
            checkpoints: Vec::new(),
            protocol_version: 9,
            disk_free_percent: None,
        }
    }

    fn situation<'a>(
        me: &'a str,
        peers: &'a [LocalInfo],
        witnesses: &'a [String],
    ) -> Situation<'a> {
        Situation {
            me,
            witness: false,
            started_at_ms: 100,
            initialized: false,
            last_stop: None,
            force_bootstrap: false,
            window_over: true,
            peers,
            witnesses,
            voting: &[],
            seen_cluster: None,
        }
    }

    #[test]
    fn seven_fresh_servers_start_with_five_voters_and_one_that_may_not_vote_never_starts() {
        let names = ["srv1", "srv2", "srv3", "srv4", "srv5", "srv6", "srv7"];
        let peers: Vec<LocalInfo> = names[1..].iter().map(|n| info(n, 200)).collect();
        let voting: Vec<String> = ["srv1", "srv3", "srv4", "srv5", "srv6", "srv7"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = Situation {
            voting: &voting,
            ..situation("srv1", &peers, &[])
        };
        // srv2 may not vote; the first five that may, in the config's order.
        match decide(&s) {
            Startup::Bootstrap { voters } => {
                assert_eq!(voters, ["srv1", "srv3", "srv4", "srv5", "srv6"])
            }
            other => panic!("{other:?}"),
        }
        // The one that may not vote never starts a cluster, even first.
        let s = Situation {
            voting: &voting,
            started_at_ms: 1,
            ..situation("srv2", &peers, &[])
        };
        assert!(
            matches!(decide(&s), Startup::Wait { reason, .. } if reason.contains("vote = false"))
        );
    }

    fn hello(name: &str) -> Hello {
        Hello {
            name: name.into(),
            protocol_version: 1,
            software_version: "0.1.0".into(),
            cluster: "shop".into(),
            membership_hash: "h1".into(),
            membership_text: "cluster shop\nserver srv1 127.0.0.1:7900 server".into(),
            cluster_id: Some("c1".into()),
            incarnation: None,
            protocol_version_min: None,
            protocol_level: None,
        }
    }

    /// A rolling upgrade: each instance names the oldest protocol it works
    /// beside; one older than that, or than its cluster's level, is refused.
    #[test]
    fn protocols_within_range_and_level_work_together() {
        let v = |name: &str, version: u32, min: Option<u32>, level: Option<u32>| Hello {
            protocol_version: version,
            protocol_version_min: min,
            protocol_level: level,
            ..hello(name)
        };
        // 9 (works beside 8) and 8: together while the cluster is at 8.
        assert!(compatible(
            &v("srv1", 9, Some(8), Some(8)),
            &v("srv2", 8, Some(8), Some(8))
        )
        .is_ok());
        assert!(compatible(
            &v("srv2", 8, Some(8), Some(8)),
            &v("srv1", 9, Some(8), Some(8))
        )
        .is_ok());
        // Once the cluster is at 9, an instance of 8 may not join it.
        let e = compatible(
            &v("srv1", 9, Some(8), Some(9)),
            &v("srv3", 8, Some(8), None),
        )
        .unwrap_err();
        assert!(
            e.contains("srv3 speaks protocol version 8") && e.contains("at level 9"),
            "{e}"
        );
        // Too old for the range: 10 works beside 9 and newer.
        let e =
            compatible(&v("srv1", 10, Some(9), None), &v("srv2", 8, Some(8), None)).unwrap_err();
        assert!(e.contains("srv1 works beside protocol 9 and newer"), "{e}");
        // One from before levels (no oldest named) takes its own version only.
        assert!(compatible(&v("srv1", 9, Some(8), None), &v("srv2", 8, None, None)).is_ok());
        assert!(compatible(&v("srv1", 9, Some(8), None), &v("srv2", 10, None, None)).is_err());
    }

    #[test]
    fn the_level_rises_to_the_oldest_protocol_every_voter_speaks() {
        assert_eq!(level_to_raise(8, &[Some(9), Some(9), Some(9)]), Some(9));
        assert_eq!(level_to_raise(8, &[Some(9), Some(8), Some(9)]), None);
        assert_eq!(
            level_to_raise(8, &[Some(9), None, Some(9)]),
            None,
            "one not heard"
        );
        assert_eq!(
            level_to_raise(8, &[Some(9), Some(0), Some(9)]),
            None,
            "one before levels"
        );
        assert_eq!(level_to_raise(9, &[Some(9), Some(9)]), None);
        assert_eq!(level_to_raise(9, &[Some(10), Some(11)]), Some(10));
        assert_eq!(level_to_raise(8, &[]), None);
    }

    #[test]
    fn compatibility_names_the_difference() {
        let a = hello("srv1");
        assert!(compatible(&a, &hello("srv2")).is_ok());
        let b = Hello {
            protocol_version: 2,
            ..hello("srv2")
        };
        let e = compatible(&a, &b).unwrap_err();
        assert!(
            e.starts_with("srv1 speaks protocol version 1") && e.contains("srv2 speaks 2"),
            "{e}"
        );
        let b = Hello {
            cluster: "other".into(),
            ..hello("srv2")
        };
        assert!(compatible(&a, &b).unwrap_err().contains("`other`"));
        let b = Hello {
            membership_hash: "h2".into(),
            membership_text: "cluster shop\nserver srv1 127.0.0.9:7900 server".into(),
            ..hello("srv2")
        };
        let e = compatible(&a, &b).unwrap_err();
        assert!(
            e.contains("only in srv1's [server srv1 127.0.0.1:7900 server]")
                && e.contains("only in srv2's [server srv1 127.0.0.9:7900 server]"),
            "{e}"
        );
        // The refused side logs the refuser's words: both named, no "here".
        let e = compatible(&b, &a).unwrap_err();
        assert!(e.contains("only in srv2's [server srv1 127.0.0.9"), "{e}");
        let b = Hello {
            cluster_id: Some("c2".into()),
            ..hello("srv2")
        };
        let e = compatible(&a, &b).unwrap_err();
        assert!(
            e.starts_with("srv2 belongs to cluster id c2, srv1 to c1"),
            "{e}"
        );
        let b = Hello {
            cluster_id: None,
            ..hello("srv2")
        };
        assert!(
            compatible(&a, &b).is_ok(),
            "a fresh instance has no cluster id yet"
        );
    }

    #[test]
    fn lone_fresh_instance_bootstraps_after_the_window() {
        let s = situation("srv1", &[], &[]);
        assert_eq!(decide(&s), bootstrap(&["srv1"]));
        let s = Situation {
            window_over: false,
            ..s
        };
        assert!(matches!(decide(&s), Startup::Wait { .. }));
    }

    #[test]
    fn a_fresh_instance_that_saw_a_cluster_never_bootstraps_another() {
        let s = Situation {
            seen_cluster: Some("srv3 held cluster c1"),
            ..situation("srv1", &[], &[])
        };
        let Startup::Wait { reason, .. } = decide(&s) else {
            panic!("{:?}", decide(&s));
        };
        assert!(
            reason.starts_with("srv3 held cluster c1: waiting"),
            "{reason}"
        );
    }

    #[test]
    fn simultaneous_fresh_instances_agree_on_one_bootstrapper() {
        // Both see each other with the same start time: the name decides,
        // and exactly one of them bootstraps.
        let a = [info("srv2", 100)];
        let b = [info("srv1", 100)];
        let d1 = decide(&situation("srv1", &a, &[]));
        let d2 = decide(&situation("srv2", &b, &[]));
        assert_eq!(d1, bootstrap(&["srv1", "srv2"]));
        assert!(matches!(d2, Startup::Wait { .. }));
    }

    #[test]
    fn earlier_started_instance_wins() {
        let peers = [info("srv1", 200)];
        assert_eq!(
            decide(&situation("srv9", &peers, &[])),
            bootstrap(&["srv1", "srv9"])
        );
    }

    #[test]
    fn witnesses_never_bootstrap() {
        let w = vec!["wit".to_string()];
        let peers = [info("wit", 1)];
        // A witness votes from the start, but never bootstraps.
        assert_eq!(
            decide(&situation("srv1", &peers, &w)),
            bootstrap(&["srv1", "wit"])
        );
        let s = Situation {
            witness: true,
            ..situation("wit", &[], &w)
        };
        assert!(matches!(decide(&s), Startup::Wait { .. }));
    }

    fn bootstrap(voters: &[&str]) -> Startup {
        Startup::Bootstrap {
            voters: voters.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn forming(name: &str, voters: &[&str], commit: u64) -> LocalInfo {
        let mut p = info(name, 1);
        p.is_member = true;
        p.initialized = true;
        p.cluster_id = Some("c".into());
        p.commit_index = commit;
        p.applied_index = commit;
        p.voters = voters.iter().map(|v| v.to_string()).collect();
        p
    }

    #[test]
    fn the_initial_voters_are_every_fresh_server_in_sight() {
        // srv3 already holds a cluster: it is not a fresh server.
        let peers = [info("srv2", 300), forming("srv3", &["srv3"], 5)];
        let s = situation("srv1", &peers[..1], &[]);
        assert_eq!(decide(&s), bootstrap(&["srv1", "srv2"]));
        let s = situation("srv1", &peers, &[]);
        assert!(matches!(decide(&s), Startup::Wait { .. }));
    }

    #[test]
    fn a_named_voter_adopts_a_cluster_still_forming() {
        let peers = [forming("srv1", &["srv1", "srv2", "srv3"], 1)];
        let s = Situation {
            window_over: false,
            ..situation("srv2", &peers, &[])
        };
        assert_eq!(
            decide(&s),
            Startup::Adopt {
                cluster_id: "c".into(),
                voters: vec!["srv1".into(), "srv2".into(), "srv3".into()],
            }
        );
        // Not named: it waits for a coordinator to join through.
        let s = situation("srv4", &peers, &[]);
        assert!(matches!(decide(&s), Startup::Wait { .. }));
        // A cluster that committed beyond its creation is joined, not adopted.
        let peers = [forming("srv1", &["srv1", "srv2"], 7)];
        let s = situation("srv2", &peers, &[]);
        assert!(matches!(decide(&s), Startup::Wait { .. }));
    }

    #[test]
    fn the_side_with_fewer_servers_yields() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let others = vec![
            ("srv2".to_string(), "b".to_string()),
            ("srv3".to_string(), "b".to_string()),
        ];
        let c = conflict("a", &names(&["srv1"]), &others).unwrap();
        assert!(c.yields);
        assert_eq!(c.other_servers, names(&["srv2", "srv3"]));
        assert!(
            c.note().contains("this side (srv1) takes no writes"),
            "{}",
            c.note()
        );
        let c = conflict(
            "b",
            &names(&["srv2", "srv3"]),
            &[("srv1".into(), "a".into())],
        )
        .unwrap();
        assert!(!c.yields);
        // As many servers: exactly one side yields, by cluster id.
        let one = conflict("a", &names(&["srv1"]), &[("srv2".into(), "b".into())]).unwrap();
        let two = conflict("b", &names(&["srv2"]), &[("srv1".into(), "a".into())]).unwrap();
        assert!(one.yields != two.yields);
        assert_eq!(conflict("a", &names(&["srv1"]), &[]), None);
    }

    #[test]
    fn a_running_cluster_is_joined() {
        let mut p = info("srv1", 1);
        p.is_member = true;
        p.initialized = true;
        p.cluster_id = Some("c".into());
        p.leader = Some("srv1".into());
        let peers = [p];
        let s = Situation {
            window_over: false,
            ..situation("srv2", &peers, &[])
        };
        assert_eq!(
            decide(&s),
            Startup::Join {
                leader: "srv1".into()
            }
        );
    }

    #[test]
    fn an_instance_that_left_waits_for_the_newer_ones() {
        let rec = StopRecord {
            stopped_at_ms: 5,
            left: true,
            remaining: vec!["srv1".into(), "srv2".into()],
            applied_index: 9,
            cluster_id: Some("c".into()),
        };
        let s = Situation {
            initialized: true,
            last_stop: Some(&rec),
            ..situation("srv3", &[], &[])
        };
        match decide(&s) {
            Startup::Wait {
                reason,
                start_first,
            } => {
                assert_eq!(start_first, vec!["srv1", "srv2"]);
                assert!(reason.contains("srv1, srv2 hold newer state"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let forced = Situation {
            force_bootstrap: true,
            ..s
        };
        assert_eq!(decide(&forced), Startup::ForceBootstrap);
    }

    #[test]
    fn a_witness_never_forces_a_cluster() {
        let rec = StopRecord {
            stopped_at_ms: 5,
            left: true,
            remaining: vec!["srv1".into()],
            applied_index: 9,
            cluster_id: None,
        };
        let s = Situation {
            witness: true,
            initialized: true,
            force_bootstrap: true,
            last_stop: Some(&rec),
            ..situation("wit", &[], &[])
        };
        assert!(matches!(decide(&s), Startup::Wait { .. }));
    }

    #[test]
    fn a_member_that_crashed_or_stopped_last_runs() {
        let rec = StopRecord {
            stopped_at_ms: 5,
            left: false,
            remaining: vec![],
            applied_index: 9,
            cluster_id: None,
        };
        let s = Situation {
            initialized: true,
            last_stop: Some(&rec),
            ..situation("srv1", &[], &[])
        };
        assert_eq!(decide(&s), Startup::Run);
    }

    #[test]
    fn fresh_instance_never_bootstraps_beside_an_existing_database() {
        let mut p = info("srv1", 1);
        p.initialized = true;
        let peers = [p];
        assert!(matches!(
            decide(&situation("srv2", &peers, &[])),
            Startup::Wait { .. }
        ));
    }

    #[test]
    fn start_order_puts_the_newest_database_first() {
        let stop = |at, left| {
            Some(StopRecord {
                stopped_at_ms: at,
                left,
                remaining: vec![],
                applied_index: 0,
                cluster_id: None,
            })
        };
        let facts = vec![
            ServerFacts {
                name: "srv3".into(),
                applied_index: Some(10),
                last_stop: stop(1, true),
                running_member: false,
            },
            ServerFacts {
                name: "srv1".into(),
                applied_index: Some(30),
                last_stop: stop(3, false),
                running_member: false,
            },
            ServerFacts {
                name: "srv2".into(),
                applied_index: Some(20),
                last_stop: stop(2, true),
                running_member: false,
            },
            ServerFacts {
                name: "srv4".into(),
                applied_index: None,
                last_stop: None,
                running_member: false,
            },
        ];
        assert_eq!(start_order(&facts), vec!["srv1", "srv2", "srv3", "srv4"]);
    }

    fn member<'a>(recorded: Option<&'a str>, presented: Option<&'a str>) -> MemberFacts<'a> {
        MemberFacts {
            member: true,
            recorded,
            presented,
            lost: None,
            voters_after: 2,
            live_voters_after: 2,
            caught_up: false,
        }
    }

    #[test]
    fn a_member_with_a_new_data_directory_is_readded() {
        let f = member(Some("aaaaaaaa1111"), Some("bbbbbbbb2222"));
        match readmission(&f) {
            Readmission::Readd {
                incarnation,
                reason,
            } => {
                assert_eq!(incarnation, "bbbbbbbb2222");
                assert!(reason.contains("new data directory"), "{reason}");
                assert!(
                    reason.contains("bbbbbbbb,") && reason.contains("aaaaaaaa)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The same directory as recorded: nothing to do.
        assert_eq!(
            readmission(&member(Some("a"), Some("a"))),
            Readmission::Keep
        );
    }

    #[test]
    fn a_member_that_holds_less_than_it_acknowledged_is_readded() {
        let f = MemberFacts {
            lost: Some((40, 12)),
            ..member(Some("a"), Some("a"))
        };
        match readmission(&f) {
            Readmission::Readd { reason, .. } => {
                assert!(reason.contains("ends at index 12"), "{reason}");
                assert!(reason.contains("acknowledged 40"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_first_known_incarnation_is_recorded_and_unknown_ones_change_nothing() {
        assert_eq!(
            readmission(&member(None, Some("a"))),
            Readmission::Record("a".into())
        );
        assert_eq!(readmission(&member(Some("a"), None)), Readmission::Keep);
        let outsider = MemberFacts {
            member: false,
            ..member(Some("a"), Some("b"))
        };
        assert_eq!(readmission(&outsider), Readmission::Keep);
    }

    #[test]
    fn a_member_is_not_removed_when_the_rest_could_not_decide_without_it() {
        // Three voters, one other down: removing the wiped one would leave
        // one live voter of two. It catches up as a voter instead, and its
        // new directory is recorded once it has.
        let f = MemberFacts {
            live_voters_after: 1,
            ..member(Some("a"), Some("b"))
        };
        assert_eq!(readmission(&f), Readmission::Keep);
        let f = MemberFacts {
            caught_up: true,
            ..f
        };
        assert_eq!(readmission(&f), Readmission::Record("b".into()));
        let f = MemberFacts {
            lost: Some((9, 2)),
            ..member(Some("b"), Some("b"))
        };
        let f = MemberFacts {
            live_voters_after: 1,
            caught_up: true,
            ..f
        };
        assert_eq!(readmission(&f), Readmission::Keep);
        // Two voters: the coordinator alone decides once the other is out.
        let f = MemberFacts {
            voters_after: 1,
            live_voters_after: 1,
            ..member(Some("a"), Some("b"))
        };
        assert!(matches!(readmission(&f), Readmission::Readd { .. }));
    }
}
