//! A member that lost its data comes back.
//!
//! Every data directory gets a random incarnation id when it is created (the
//! file `incarnation`, written atomically before anything else uses the
//! directory); instances send it in `Hello`, and the replicated state records
//! which incarnation each member joined with (`Command::SetIncarnation`).
//!
//! The coordinator re-admits a member — records the new incarnation and why,
//! removes the member under its old identity, adds it again as a learner that
//! receives the database; `Core::leader_duties` promotes it once caught up —
//! when `membership::readmission` says so: it came back with another data
//! directory (wiped, replaced disk), or it reported holding fewer entries than
//! it had acknowledged (a directory restored from an older copy, seen by
//! `consensus::guard`). This happens when it asks to join, and on a periodic
//! check. Until it holds the current database again such an instance serves
//! no default read (each waits for a read index applied here,
//! `replicated::confirm_read`) and says why in its status line (`note`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::ConfChangeType;

use super::replicated::{change_membership, propose};
use super::{raft_id, Phase, Shared, PEER_CALL_MS};
use crate::cluster::membership::{self, MemberFacts, Readmission};
use crate::consensus::{Core, LostData};
use crate::proto::{Hello, Request, Response};
use crate::state::Command;

/// The file in a data directory that holds its incarnation id.
pub const INCARNATION_FILE: &str = "incarnation";
/// Time between two checks of the members by the coordinator.
const WATCH_MS: u64 = 500;
/// Time a join request is retried after, while it is refused or unanswered.
const JOIN_RETRY_MS: u64 = 300;

/// This instance's incarnation, and what the coordinator side keeps.
pub(crate) struct Rejoin {
    pub incarnation: String,
    /// The incarnation each peer's latest `Hello` carried.
    presented: Mutex<HashMap<String, String>>,
    /// Members that reported lost data (by name), until re-admitted.
    lost: Mutex<HashMap<String, LostData>>,
    /// Members whose re-admission or record is under way.
    busy: Mutex<HashSet<String>>,
    /// What the coordinator answered this instance's join request.
    join_note: Mutex<Option<String>>,
}

impl Rejoin {
    pub fn new(incarnation: String) -> Rejoin {
        Rejoin {
            incarnation,
            presented: Mutex::default(),
            lost: Mutex::default(),
            busy: Mutex::default(),
            join_note: Mutex::default(),
        }
    }

    /// Remembers the incarnation a peer presented (peers that predate
    /// incarnations present none); true when it differs from the one it
    /// presented before (a new process on a new data directory).
    pub fn saw_hello(&self, h: &Hello) -> bool {
        let Some(inc) = &h.incarnation else {
            return false;
        };
        let mut map = self.presented.lock().expect("presented lock");
        map.insert(h.name.clone(), inc.clone())
            .is_some_and(|old| old != *inc)
    }

    fn presented(&self, name: &str) -> Option<String> {
        self.presented
            .lock()
            .expect("presented lock")
            .get(name)
            .cloned()
    }

    /// Marks `name` busy; false if it already was.
    fn start(&self, name: &str) -> bool {
        self.busy
            .lock()
            .expect("busy lock")
            .insert(name.to_string())
    }

    fn finish(&self, name: &str) {
        self.busy.lock().expect("busy lock").remove(name);
    }
}

/// The incarnation id of the data directory `dir`, made (and made durable)
/// when it has none. An unreadable id is an error naming the file.
pub fn ensure_incarnation(dir: &Path) -> Result<String, String> {
    let path = dir.join(INCARNATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
            return match valid {
                true => Ok(id.to_string()),
                false => Err(format!(
                    "{}: not an incarnation id (32 hexadecimal digits); remove the file to give this data directory a new identity (the coordinator then re-adds this server)",
                    path.display()
                )),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, id.as_bytes()).and_then(|()| f.sync_all())
        })
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| crate::state::sync_dir(dir));
    written.map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(incarnation = %id, "new data directory {}", dir.display());
    Ok(id)
}

/// The coordinator's answer to `name`'s request to join: add it as a
/// learner, or re-admit it if it lost its data, and record its incarnation.
pub async fn join(shared: &Shared, name: &str) -> Response {
    if let Some(message) = shared.space_refusal() {
        return Response::Error { message };
    }
    if !shared.is_leader() {
        return Response::NotLeader {
            leader: shared.leader_name(),
        };
    }
    if !shared.rejoin.start(name) {
        return Response::Error {
            message: format!("a membership change for {name} is under way"),
        };
    }
    let r = join_as_busy(shared, name).await;
    shared.rejoin.finish(name);
    match r {
        Ok(message) => Response::Ok { message },
        Err(message) => Response::Error { message },
    }
}

async fn join_as_busy(shared: &Shared, name: &str) -> Result<String, String> {
    let id = raft_id(name);
    let member = {
        let guard = shared.core();
        let core = guard.as_ref().ok_or("not running")?;
        core.is_voter(id) || core.is_learner(id)
    };
    if !member {
        change_membership(shared, ConfChangeType::AddLearnerNode, name, |c| {
            c.is_learner(id) || c.is_voter(id)
        })
        .await?;
        if let Some(inc) = shared.rejoin.presented(name) {
            record(shared, name, &inc, None).await?;
        }
        tracing::info!("{name} joins: it is sent the database, then promoted to voter");
        return Ok(format!(
            "{name} added as a learner: it receives the database, then becomes a voter"
        ));
    }
    match decide(shared, name) {
        Some(Readmission::Readd {
            incarnation,
            reason,
        }) => {
            readmit(shared, name, &incarnation, &reason).await?;
            Ok(format!("{name} rejoins: {reason}"))
        }
        Some(Readmission::Record(inc)) => {
            record(shared, name, &inc, None).await?;
            Ok(format!("{name} is a member"))
        }
        _ => Ok(format!("{name} is a member")),
    }
}

/// What `membership::readmission` says about `name` (None when this
/// instance is not the coordinator).
fn decide(shared: &Shared, name: &str) -> Option<Readmission> {
    let mut guard = shared.core();
    let core = guard.as_mut()?;
    if !core.is_leader() {
        return None;
    }
    collect_losses(shared, core);
    let id = raft_id(name);
    let presented = match name == shared.me.name {
        true => Some(shared.rejoin.incarnation.clone()),
        false => shared.rejoin.presented(name),
    };
    let recorded = core.state().incarnation(name).ok().flatten().map(|r| r.0);
    let lost = shared
        .rejoin
        .lost
        .lock()
        .expect("lost lock")
        .get(name)
        .copied();
    let others: Vec<u64> = core
        .conf_state()
        .voters
        .iter()
        .copied()
        .filter(|v| *v != id)
        .collect();
    let live = others
        .iter()
        .filter(|v| **v == shared.id || core.progress(**v).is_some_and(|(_, active)| active))
        .count();
    let commit = core.commit_index();
    let facts = MemberFacts {
        member: core.is_voter(id) || core.is_learner(id),
        recorded: recorded.as_deref(),
        presented: presented.as_deref(),
        lost: lost.map(|l| (l.acknowledged, l.holds)),
        voters_after: others.len(),
        live_voters_after: live,
        caught_up: id == shared.id || core.progress(id).is_some_and(|(m, _)| m >= commit),
    };
    let decision = membership::readmission(&facts);
    if decision == Readmission::Keep && facts.caught_up {
        shared.rejoin.lost.lock().expect("lost lock").remove(name);
    }
    Some(decision)
}

/// Moves the core's lost-data reports into the shell's table, by name.
fn collect_losses(shared: &Shared, core: &mut Core) {
    let reports = core.take_lost_members();
    let mut lost = shared.rejoin.lost.lock().expect("lost lock");
    for (id, l) in reports {
        if let Some(name) = shared.name_of(id) {
            lost.insert(name.to_string(), l);
        }
    }
}

/// Records the new incarnation (and why), removes the member, and adds it
/// again as a learner. In this order, a coordinator change half-way leaves a
/// member that catches up as it is, or a non-member that asks to join again.
async fn readmit(
    shared: &Shared,
    name: &str,
    incarnation: &str,
    reason: &str,
) -> Result<(), String> {
    tracing::warn!("readmitting {name}: {reason}; it is removed and added again as a learner that receives the database");
    record(shared, name, incarnation, Some(reason.to_string())).await?;
    let id = raft_id(name);
    change_membership(shared, ConfChangeType::RemoveNode, name, |c| {
        !c.is_learner(id) && !c.is_voter(id)
    })
    .await?;
    change_membership(shared, ConfChangeType::AddLearnerNode, name, |c| {
        c.is_learner(id) || c.is_voter(id)
    })
    .await?;
    shared.rejoin.lost.lock().expect("lost lock").remove(name);
    tracing::info!("{name} re-added as a learner: it is sent the database, then promoted to voter");
    Ok(())
}

async fn record(
    shared: &Shared,
    name: &str,
    incarnation: &str,
    reason: Option<String>,
) -> Result<(), String> {
    let command = Command::SetIncarnation {
        name: name.to_string(),
        incarnation: incarnation.to_string(),
        reason,
    };
    match propose(shared, command, None, false).await {
        Response::Proposed { .. } => Ok(()),
        Response::Error { message } | Response::Unavailable { message } => {
            Err(format!("recording {name}'s incarnation: {message}"))
        }
        other => Err(format!("recording {name}'s incarnation: {other:?}")),
    }
}

/// The periodic check, on the coordinator, of every configured server.
pub async fn watch(shared: Arc<Shared>) {
    loop {
        async_std::task::sleep(Duration::from_millis(WATCH_MS)).await;
        if shared.phase() == Phase::Stopping {
            return;
        }
        for s in &shared.cfg.servers {
            let Some(decision) = decide(&shared, &s.name) else {
                break; // not the coordinator
            };
            if decision == Readmission::Keep || !shared.rejoin.start(&s.name) {
                continue;
            }
            let (shared, name) = (shared.clone(), s.name.clone());
            async_std::task::spawn(async move {
                let r = match decision {
                    Readmission::Readd {
                        incarnation,
                        reason,
                    } if name != shared.me.name => {
                        readmit(&shared, &name, &incarnation, &reason).await
                    }
                    Readmission::Record(inc) => record(&shared, &name, &inc, None).await,
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    tracing::warn!("{name}: {e}");
                }
                shared.rejoin.finish(&name);
            });
        }
    }
}

/// Asks the coordinator (`leader`, or whoever it names) to add this
/// instance, until it answers yes or this instance stops. Its answer is kept
/// as this instance's status note while it joins.
pub async fn ask_to_join(shared: &Shared, leader: &str) {
    let mut leader = leader.to_string();
    let req = Request::Join {
        name: shared.me.name.clone(),
    };
    tracing::info!("joining the cluster through its coordinator {leader}");
    // Only the coordinator's answer counts: a local conf state may be stale.
    while shared.phase() != Phase::Stopping {
        match shared
            .peers
            .call(shared, &leader, &req, PEER_CALL_MS * 6)
            .await
        {
            Ok(Response::Ok { message }) => {
                tracing::info!("{message}");
                if shared.phase() == Phase::Joining {
                    *shared.rejoin.join_note.lock().expect("join note lock") = Some(message);
                }
                return;
            }
            Ok(Response::NotLeader { leader: Some(l) }) => leader = l,
            Ok(other) => tracing::warn!("join through {leader}: {other:?}"),
            Err(e) => tracing::warn!("join through {leader}: {e}"),
        }
        async_std::task::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
        if let Some(l) = shared.leader_name() {
            leader = l;
        }
    }
}

/// This instance was removed from the membership without asking (a
/// re-admission, perhaps interrupted): it asks to join again.
pub fn removed(shared: &Arc<Shared>) {
    if shared.phase() == Phase::Stopping {
        return;
    }
    let Some(leader) = shared.leader_name() else {
        return;
    };
    let shared = shared.clone();
    async_std::task::spawn(async move { ask_to_join(&shared, &leader).await });
}

/// This instance's status note while it lost data or rejoins.
pub fn note(shared: &Shared, core: &Core, phase: &Phase) -> Option<String> {
    if let Some(l) = core.own_loss() {
        return Some(format!(
            "its data directory is older than what it had acknowledged (its log ends at index {}, it had acknowledged {}): rejoining, it is sent what it lost",
            l.holds, l.acknowledged
        ));
    }
    let me = shared.id;
    let joining = (core.is_learner(me) && !core.is_non_voter())
        || (*phase == Phase::Joining && !core.is_voter(me) && !core.is_non_voter());
    if !joining {
        return None;
    }
    if let Ok(Some((_, Some(reason)))) = core.state().incarnation(&shared.me.name) {
        return Some(format!("rejoining: {reason}; receiving the database"));
    }
    shared
        .rejoin
        .join_note
        .lock()
        .expect("join note lock")
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_keeps_its_incarnation_and_a_new_one_gets_another() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ensure_incarnation(tmp.path()).unwrap();
        assert_eq!(ensure_incarnation(tmp.path()).unwrap(), a);
        assert!(!tmp.path().join("incarnation.tmp").exists());
        let other = tempfile::tempdir().unwrap();
        assert_ne!(ensure_incarnation(other.path()).unwrap(), a);
    }

    #[test]
    fn a_damaged_incarnation_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(INCARNATION_FILE), "not an id").unwrap();
        let e = ensure_incarnation(tmp.path()).unwrap_err();
        assert!(
            e.contains("incarnation") && e.contains("remove the file"),
            "{e}"
        );
    }

    #[test]
    fn a_hello_from_a_peer_without_incarnations_still_decodes() {
        #[derive(serde::Serialize)]
        struct OlderHello {
            name: String,
            protocol_version: u32,
            software_version: String,
            cluster: String,
            membership_hash: String,
            membership_text: String,
            cluster_id: Option<String>,
        }
        let old = OlderHello {
            name: "srv2".into(),
            protocol_version: crate::proto::PROTOCOL_VERSION,
            software_version: "0.1.0".into(),
            cluster: "shop".into(),
            membership_hash: "h".into(),
            membership_text: "t".into(),
            cluster_id: None,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).unwrap();
        let h: Hello = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!((h.name.as_str(), h.incarnation.as_deref()), ("srv2", None));
        let r = Rejoin::new("a".repeat(32));
        assert!(!r.saw_hello(&h), "no incarnation is no change");
        let with = |inc: &str| Hello {
            incarnation: Some(inc.into()),
            ..h.clone()
        };
        assert!(!r.saw_hello(&with("x")), "a first incarnation is no change");
        assert!(!r.saw_hello(&with("x")));
        assert!(r.saw_hello(&with("y")), "another one is");
    }
}
