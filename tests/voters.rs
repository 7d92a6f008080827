//! A cluster larger than its voters, with real processes: seven servers,
//! at most five voters, the other two non-voting members that hold the
//! database, run jobs and answer reads; a voter that leaves is replaced by
//! a non-voter, a voter killed -9 keeps its place (127.0.189.x).

mod common;

use common::Cluster;

const VOTING: [&str; 3] = ["coordinator", "follower", "witness"];

/// (voters, non-voters) as `via` reports them.
fn members(c: &Cluster, via: &str) -> (Vec<String>, Vec<String>) {
    let Some(v) = c.status(via) else {
        return (Vec::new(), Vec::new());
    };
    let of = |pick: &dyn Fn(&str) -> bool| -> Vec<String> {
        v.servers
            .iter()
            .filter(|s| pick(&s.state))
            .map(|s| s.name.clone())
            .collect()
    };
    (of(&|s| VOTING.contains(&s)), of(&|s| s == "non-voter"))
}

#[test]
fn seven_servers_have_five_voters_and_two_non_voting_members_in_service() {
    let mut c = Cluster::running_prepared(189, 7, common::TEST_TIMING, 2, |_| {});
    let (voters, others) = members(&c, "srv1");
    assert_eq!(
        (voters.len(), others.len()),
        (5, 2),
        "{voters:?} {others:?}"
    );

    // A non-voter takes writes (forwarded) and answers default reads.
    let nv = others[0].clone();
    let index = c.set(&nv, "through-a-non-voter", b"yes".to_vec()).unwrap();
    assert!(index > 0);
    assert_eq!(c.get(&nv, "through-a-non-voter"), Some(b"yes".to_vec()));
    assert_eq!(
        c.get(&others[1], "through-a-non-voter"),
        Some(b"yes".to_vec())
    );

    // Non-voters run jobs: placement goes round all seven.
    let mut ran_on = std::collections::BTreeSet::new();
    for _ in 0..21 {
        let out = c.cli(&["submit", "--wait", "--json", "--inline", "6 * 7"]);
        assert!(out.status.success(), "{out:?}");
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(job["state"], "succeeded", "{job}");
        ran_on.insert(job["instance"].as_str().unwrap().to_string());
    }
    assert!(
        others.iter().any(|n| ran_on.contains(n)),
        "no job ran on a non-voter: {ran_on:?}"
    );

    // A voter killed -9 keeps its place: five voters go on with four up.
    let coordinator = c.status("srv1").unwrap().coordinator.unwrap();
    let victim = voters.iter().find(|n| **n != coordinator).unwrap().clone();
    c.kill9(&victim);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (after_kill, nv_after_kill) = members(&c, &coordinator);
    assert!(!after_kill.contains(&victim), "{after_kill:?}");
    assert_eq!(nv_after_kill, others, "a crash promotes nobody");
    c.start(&victim);
    c.wait(30, "the killed voter back as a voter", || {
        members(&c, &coordinator).0.contains(&victim)
    });

    // A voter that leaves (graceful stop) is replaced by a non-voter.
    let leaving = voters
        .iter()
        .find(|n| **n != coordinator && **n != victim)
        .unwrap()
        .clone();
    c.stop(&leaving);
    c.wait(30, "a non-voter promoted in its place", || {
        let (v, o) = members(&c, &coordinator);
        v.len() == 5 && o.len() == 1 && !v.contains(&leaving)
    });
    let (v, _) = members(&c, &coordinator);
    assert!(others.iter().any(|n| v.contains(n)), "{v:?}");
    // Back, it joins as the non-voter now.
    c.start(&leaving);
    c.wait(30, "the returning server a non-voter", || {
        let (v, o) = members(&c, &coordinator);
        v.len() == 5 && o.contains(&leaving)
    });
    c.assert_nobody_crashed();
}
