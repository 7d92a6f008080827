//! One config, one cluster: the start-and-kill race. srv1 starts, srv2 and
//! srv3 0.2 s later (as people start a rack); srv1 is killed -9 at several
//! moments right after it logs that it starts a new cluster, and started
//! again. Every round must end with one cluster: all three servers agree on
//! the cluster id and the coordinator, and writes through any of them apply.
//! Real processes on 127.0.46.1-3; rounds bounded in count and time.

mod common;

use std::time::Duration;

use common::Cluster;

const SETTLE_S: u64 = 40;
/// Delays after "starting a new one" before the kill, one round each.
const KILL_AFTER_MS: [u64; 4] = [0, 40, 100, 250];

fn one_cluster(c: &Cluster) -> bool {
    let views: Vec<_> = ["srv1", "srv2", "srv3"]
        .iter()
        .map(|s| c.status(s))
        .collect();
    let Some(Some(first)) = views.first() else {
        return false;
    };
    first.coordinator.is_some()
        && views.iter().all(|v| {
            v.as_ref().is_some_and(|v| {
                v.cluster_id == first.cluster_id
                    && v.coordinator == first.coordinator
                    && v.servers.iter().all(|s| s.synchronized)
            })
        })
}

#[test]
fn killing_the_bootstrapper_at_any_moment_never_yields_two_clusters() {
    for (round, delay_ms) in KILL_AFTER_MS.iter().enumerate() {
        let mut c = Cluster::new(
            46,
            &[("srv1", "server"), ("srv2", "server"), ("srv3", "server")],
        );
        c.start("srv1");
        std::thread::sleep(Duration::from_millis(200));
        c.start("srv2");
        c.start("srv3");
        c.wait(20, "srv1 to start a cluster", || {
            c.log("srv1").contains("starting a new one")
        });
        std::thread::sleep(Duration::from_millis(*delay_ms));
        c.kill9("srv1");
        c.start("srv1");
        c.wait(SETTLE_S, &format!("round {round}: one cluster"), || {
            one_cluster(&c)
        });
        for (i, via) in ["srv1", "srv2", "srv3"].iter().enumerate() {
            c.set(via, &format!("k{i}"), vec![round as u8])
                .unwrap_or_else(|e| panic!("round {round}: write via {via}: {e}"));
        }
        for via in ["srv1", "srv2", "srv3"] {
            assert_eq!(c.get(via, "k0"), Some(vec![round as u8]), "round {round}");
        }
        println!("round {round} (kill {delay_ms} ms after bootstrap): one cluster");
    }
}

/// A server that started a cluster alone, and two that later formed another
/// under the same config while it was down: the side with fewer servers
/// stops taking writes, and status says so on both sides.
#[test]
fn of_two_clusters_under_one_config_the_smaller_takes_no_writes() {
    let mut c = Cluster::new(
        47,
        &[("srv1", "server"), ("srv2", "server"), ("srv3", "server")],
    );
    c.start_alone("srv1");
    c.set("srv1", "k", b"alone".to_vec()).unwrap();
    c.kill9("srv1");
    c.start("srv2");
    c.start("srv3");
    c.wait(SETTLE_S, "srv2 and srv3 to form a cluster", || {
        c.status("srv2").is_some_and(|v| v.coordinator.is_some())
    });
    c.start("srv1");
    let note_of = |via: &str| {
        c.status(via).and_then(|v| {
            v.servers
                .iter()
                .find(|s| s.name == via)
                .and_then(|s| s.note.clone())
        })
    };
    c.wait(SETTLE_S, "srv1 to see the conflict", || {
        note_of("srv1").is_some_and(|n| n.contains("this side (srv1) takes no writes"))
    });
    let out = c.cli(&["settings", "set", "k", "split", "--server", "srv1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("srv2, srv3 run another cluster"), "{err}");
    c.wait(SETTLE_S, "srv2 to see the conflict", || {
        note_of("srv2").is_some_and(|n| n.contains("srv1 run another cluster"))
    });
    c.set("srv2", "k", b"together".to_vec()).unwrap();
}
