//! Multi-process tests: real `claro serve` processes on loopback addresses,
//! each on port 7900, talking QUIC with mutual TLS, Raft and SQLite for real.
//! Each test takes its own triple 127.0.N.1-3 so tests can run at once.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{copy_dir, Cluster, BIN};

const SETTLE_S: u64 = 30;

fn three(net: u8) -> Cluster {
    Cluster::new(
        net,
        &[("srv1", "server"), ("srv2", "server"), ("srv3", "server")],
    )
}

/// Three instances started in order: srv1 coordinates, srv2 and srv3 joined.

#[test]
fn first_started_is_coordinator_and_late_joiners_receive_its_database() {
    // The triple the product documents: 127.0.0.1-3, port 7900.
    let mut c = three(0);
    c.start_alone("srv1");
    c.set("srv1", "greeting", b"hello".to_vec()).unwrap();
    c.start("srv2");
    c.start("srv3");
    c.wait(SETTLE_S, "all three synchronized", || {
        c.settled("srv3", "srv1", &["srv1", "srv2", "srv3"])
    });
    // The joiners received the coordinator's database (not a replay of its log).
    assert!(
        c.log("srv2")
            .contains("installed the coordinator's database"),
        "{}",
        c.log("srv2")
    );
    assert_eq!(c.get("srv3", "greeting").as_deref(), Some(&b"hello"[..]));
    // Any instance gives the same view.
    let views: Vec<_> = ["srv1", "srv2", "srv3"]
        .iter()
        .map(|s| c.status(s).unwrap())
        .collect();
    for v in &views {
        assert_eq!(v.coordinator.as_deref(), Some("srv1"));
        assert_eq!(v.cluster_id, views[0].cluster_id);
        assert_eq!(
            v.servers
                .iter()
                .map(|s| s.state.as_str())
                .collect::<Vec<_>>(),
            ["coordinator", "follower", "follower"]
        );
    }
    // A write through a follower is forwarded to the coordinator and replicated.
    c.set("srv2", "via-follower", b"yes".to_vec()).unwrap();
    c.wait(10, "replicas to agree", || {
        let d: Vec<_> = ["srv1", "srv2", "srv3"]
            .iter()
            .map(|s| c.digest(s))
            .collect();
        d.iter().all(|x| x.is_some() && *x == d[0])
    });
}

#[test]
fn kill_9_of_the_coordinator_elects_another_that_keeps_committing() {
    let mut c = Cluster::three_running(12);
    c.set("srv2", "before", b"1".to_vec()).unwrap();
    c.kill9("srv1");
    let mut new_coordinator = String::new();
    c.wait(SETTLE_S, "a new coordinator", || {
        match c.status("srv2").and_then(|v| v.coordinator) {
            Some(n) if n != "srv1" => {
                new_coordinator = n;
                true
            }
            _ => false,
        }
    });
    c.set("srv3", "after", b"2".to_vec()).unwrap();
    assert_eq!(c.get("srv2", "before").as_deref(), Some(&b"1"[..]));
    // Down once silent for node_timeout_ms (3 s).
    c.wait(10, "srv1 shown down", || {
        c.status("srv3").is_some_and(|v| {
            let srv1 = v.servers.iter().find(|s| s.name == "srv1").unwrap();
            (srv1.state.as_str(), srv1.connected) == ("down", false)
        })
    });
    // The crashed instance is still a voter and is recognised when it returns.
    c.start("srv1");
    c.wait(SETTLE_S, "srv1 back and synchronized", || {
        c.settled("srv2", &new_coordinator, &["srv1", "srv2", "srv3"])
    });
    assert_eq!(c.get("srv1", "after").as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_late_joiner_receives_a_50_mb_database_intact() {
    let mut c = Cluster::two(13);
    c.fill_megabytes("srv1", 50);
    c.start("srv2");
    c.wait(120, "srv2 synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2"])
    });
    c.wait(10, "identical replicas", || {
        let (a, b) = (c.digest("srv1"), c.digest("srv2"));
        a.is_some() && a == b
    });
    let sent = c.log_line("srv1", "database sent");
    let size: u64 = common::log_field(&sent, "size_bytes");
    assert!(
        size > 50_000_000,
        "the database sent was only {size} bytes: {sent}"
    );
}

#[test]
fn an_interrupted_database_transfer_resumes() {
    let mut c = Cluster::two(22);
    c.fill_megabytes("srv1", 12);
    // srv2's first transfer is cut after 5 MB; the retry resumes from there.
    let cut = [("CLARO_FAILPOINT_SNAPSHOT_CUT_BYTES", "5000000")];
    c.start_env("srv2", &[], &cut);
    c.wait(60, "srv2 synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2"])
    });
    c.log_line("srv2", "transfer cut after");
    let resumed = c.log_line("srv2", "resuming an interrupted database transfer");
    let offset: u64 = common::log_field(&resumed, "offset");
    assert!(offset >= 5_000_000, "resumed from {offset}");
    // The completed transfer carried only what the cut one had not.
    let sent = c.log_line("srv1", "database sent");
    let (sent_bytes, size): (u64, u64) = (
        common::log_field(&sent, "sent_bytes"),
        common::log_field(&sent, "size_bytes"),
    );
    assert_eq!(sent_bytes, size - offset, "{sent}");
    c.wait(10, "identical replicas", || {
        let (a, b) = (c.digest("srv1"), c.digest("srv2"));
        a.is_some() && a == b
    });
}

#[test]
fn stop_order_and_start_order() {
    let mut c = Cluster::three_running(14);
    c.set("srv1", "v", b"1".to_vec()).unwrap();
    c.stop("srv3");
    c.set("srv1", "v", b"2".to_vec()).unwrap();
    // Stopping the coordinator hands the role over first.
    c.stop("srv1");
    c.wait(SETTLE_S, "srv2 to coordinate alone", || {
        c.settled("srv2", "srv2", &["srv2"])
    });
    c.set("srv2", "v", b"3".to_vec()).unwrap();
    c.stop("srv2");

    // All down: start-order reads the data directories.
    let out = c.cli(&["start-order", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = order["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["srv2", "srv1", "srv3"]);

    // srv3 left first: it waits for the servers that hold newer state.
    c.start("srv3");
    c.wait(SETTLE_S, "srv3 to say whom to start first", || {
        c.log("srv3").contains("srv1, srv2 hold newer state")
    });
    let v = c.status("srv3").unwrap();
    assert_eq!(v.coordinator, None);
    let srv3 = v.servers.iter().find(|s| s.name == "srv3").unwrap();
    assert_eq!(srv3.state, "waiting");
    let note = srv3.note.clone().unwrap_or_default();
    assert!(
        note.contains("srv1, srv2 hold newer state"),
        "status note: {note}"
    );
    let human = c.cli(&["status", "--server", "srv3"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("start them first"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.status("srv3").unwrap().coordinator.is_none(),
        "srv3 must not coordinate on its older database"
    );

    // srv2 stopped last and holds the newest database: it starts alone.
    c.start("srv2");
    c.wait(SETTLE_S, "srv2 coordinator, srv3 rejoined", || {
        c.settled("srv2", "srv2", &["srv2", "srv3"])
    });
    c.start("srv1");
    c.wait(SETTLE_S, "all synchronized", || {
        c.settled("srv1", "srv2", &["srv1", "srv2", "srv3"])
    });
    for s in ["srv1", "srv2", "srv3"] {
        assert_eq!(
            c.get(s, "v").as_deref(),
            Some(&b"3"[..]),
            "{s} lost the newest value"
        );
    }
}

#[test]
fn force_bootstrap_overrides_waiting() {
    let mut c = Cluster::new(15, &[("srv1", "server"), ("srv2", "server")]);
    c.start_alone("srv1");
    c.start("srv2");
    c.wait(SETTLE_S, "both synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2"])
    });
    c.set("srv1", "k", b"old".to_vec()).unwrap();
    c.terminate("srv2");
    c.terminate("srv1");
    c.start_with("srv2", &["--force-bootstrap"]);
    c.wait(SETTLE_S, "srv2 to coordinate on its own database", || {
        c.settled("srv2", "srv2", &["srv2"])
    });
    assert!(c.log("srv2").contains("--force-bootstrap"));
    assert!(
        c.log("srv1").contains("signal"),
        "SIGTERM was not a graceful stop"
    );
    assert_eq!(c.get("srv2", "k").as_deref(), Some(&b"old"[..]));
}

/// An impostor instance: the cluster's config, but TLS material doctored by `doctor`.
fn start_impostor(c: &Cluster, doctor: impl Fn(&std::path::Path)) -> std::process::Child {
    let evil = c.dir.path().join("evil");
    copy_dir(&c.dir.path().join("conf"), &evil.join("conf"));
    std::fs::create_dir_all(evil.join("shared")).unwrap();
    doctor(&evil.join("conf").join("tls"));
    let log = std::fs::File::create(c.dir.path().join("logs").join("impostor.log")).unwrap();
    Command::new(BIN)
        .arg("--config")
        .arg(evil.join("conf").join("ClaroServers.conf"))
        .args(["serve", "--name", "srv3"])
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn assert_refused(c: &Cluster, mut impostor: std::process::Child, what: &str) {
    std::thread::sleep(Duration::from_secs(4));
    let v = c.status("srv1").unwrap();
    let srv3 = v.servers.iter().find(|s| s.name == "srv3").unwrap();
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert!(
        !srv3.connected && srv3.state == "down",
        "{what}: impostor accepted: {srv3:?}"
    );
    assert!(
        c.log("srv1").contains(what),
        "srv1 did not log the refusal `{what}`:\n{}",
        c.log("srv1")
    );
}

#[test]
fn a_certificate_from_another_ca_or_of_another_server_is_refused() {
    let mut c = three(16);
    c.start_alone("srv1");

    // Material from another cluster's CA, for the right name.
    let (other, other_ca) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(other.path())
        .arg("--ca-dir")
        .arg(other_ca.path())
        .args(["--server", "srv3=127.0.16.3", "--cluster", "other"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let impostor = start_impostor(&c, |tls| {
        for f in ["ca.crt", "srv3.crt", "srv3.key"] {
            std::fs::copy(other.path().join("tls").join(f), tls.join(f)).unwrap();
        }
    });
    assert_refused(&c, impostor, "connection refused during handshake");

    // srv2's valid certificate, used to speak as srv3.
    let impostor = start_impostor(&c, |tls| {
        std::fs::copy(tls.join("srv2.crt"), tls.join("srv3.crt")).unwrap();
        std::fs::copy(tls.join("srv2.key"), tls.join("srv3.key")).unwrap();
    });
    assert_refused(&c, impostor, "does not belong to `srv3`");
}

#[test]
fn two_servers_and_a_witness_survive_the_crash_of_either_server() {
    let mut c = Cluster::new(
        17,
        &[("srv1", "server"), ("srv2", "server"), ("wit", "witness")],
    );
    c.start("wit");
    c.start_alone("srv1");
    c.start("srv2");
    c.wait(SETTLE_S, "all synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "wit"])
    });
    let v = c.status("wit").unwrap();
    assert_eq!(
        v.servers.iter().find(|s| s.name == "wit").unwrap().state,
        "witness"
    );
    c.kill9("srv1");
    c.wait(SETTLE_S, "srv2 to take over", || {
        c.status("srv2").and_then(|v| v.coordinator).as_deref() == Some("srv2")
    });
    c.set("wit", "after-srv1", b"x".to_vec()).unwrap();
    c.start("srv1");
    c.wait(SETTLE_S, "srv1 back", || {
        c.settled("srv2", "srv2", &["srv1", "srv2", "wit"])
    });
    c.kill9("srv2");
    c.wait(SETTLE_S, "srv1 to take over", || {
        c.status("srv1").and_then(|v| v.coordinator).as_deref() == Some("srv1")
    });
    c.set("srv1", "after-srv2", b"y".to_vec()).unwrap();
    // The witness never coordinates.
    let out = c.cli(&["coordinator", "transfer", "wit", "--server", "srv1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manual_coordinator_transfer() {
    let c = Cluster::three_running(18);
    let out = c.cli(&["coordinator", "transfer", "srv3", "--server", "srv2"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.all_logs()
    );
    c.wait(10, "srv3 to coordinate", || {
        c.status("srv1").and_then(|v| v.coordinator).as_deref() == Some("srv3")
    });
    let out = c.cli(&["status", "--json", "--server", "srv1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["coordinator"], "srv3");
    for key in ["cluster_id", "term", "commit_index", "servers"] {
        assert!(v.get(key).is_some(), "status --json lacks {key}");
    }
    for key in [
        "name",
        "address",
        "role",
        "state",
        "connected",
        "synchronized",
        "applied_index",
    ] {
        assert!(
            v["servers"][0].get(key).is_some(),
            "status --json servers lack {key}"
        );
    }
}

#[test]
fn instances_started_at_the_same_moment_form_one_cluster() {
    let mut c = three(19);
    c.start("srv1");
    c.start("srv2");
    c.start("srv3");
    // The first-started fresh instance (ties broken by name) bootstraps; the
    // others join it: one cluster, never two.
    c.wait(SETTLE_S, "one cluster of three", || {
        let Some(v) = c.status("srv3") else {
            return false;
        };
        let Some(coord) = v.coordinator.clone() else {
            return false;
        };
        c.settled("srv3", &coord, &["srv1", "srv2", "srv3"])
    });
    let ids: Vec<_> = ["srv1", "srv2", "srv3"]
        .iter()
        .map(|s| c.status(s).unwrap().cluster_id)
        .collect();
    assert!(
        ids[0].is_some() && ids.iter().all(|i| *i == ids[0]),
        "{ids:?}"
    );
    let bootstrapped = ["srv1", "srv2", "srv3"]
        .iter()
        .filter(|s| c.log(s).contains("starting a new one as its coordinator"))
        .count();
    assert_eq!(bootstrapped, 1, "{}", c.all_logs());
}

#[test]
fn an_instance_with_a_different_config_is_refused_naming_the_difference() {
    let mut c = three(20);
    c.start_alone("srv1");
    // srv2's copy of the config lists srv3 at another address.
    let conf = c.moved_config("evil", "127.0.20.3", "127.0.20.9");
    let log = std::fs::File::create(c.dir.path().join("logs").join("srv2.log")).unwrap();
    let mut other = Command::new(BIN)
        .arg("--config")
        .arg(&conf)
        .args(["serve", "--name", "srv2"])
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.wait(SETTLE_S, "both sides to name the difference", || {
        c.log("srv1").contains("127.0.20.9") && c.log("srv2").contains("127.0.20.9")
    });
    std::thread::sleep(Duration::from_millis(2500));
    let v = c.status("srv1").unwrap();
    let _ = other.kill();
    let _ = other.wait();
    let srv2 = v.servers.iter().find(|s| s.name == "srv2").unwrap();
    assert_eq!(
        srv2.state, "down",
        "a refused instance must not join: {srv2:?}"
    );
    assert!(
        !c.log("srv2").contains("starting a new one"),
        "a refused instance must not start its own cluster"
    );
}

#[test]
fn malformed_and_oversized_frames_close_only_their_stream() {
    let mut c = Cluster::new(21, &[("srv1", "server")]);
    c.start_alone("srv1");
    let cfg = c.config();
    let addr = cfg.server("srv1").unwrap().address;
    let ep = claro::cli::client::endpoint(&cfg, addr).unwrap();
    async_std::task::block_on(async {
        let conn = ep.connect(addr, "srv1", 2000).await.unwrap();
        // A length prefix of 4 GiB: refused before anything is allocated.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let _ = send.finish();
        let mut buf = [0u8; 16];
        assert!(
            !matches!(recv.read(&mut buf).await, Ok(Some(n)) if n > 0),
            "oversized frame answered"
        );
        // A frame whose body is not CBOR.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
            .await
            .unwrap();
        let _ = send.finish();
        assert!(
            !matches!(recv.read(&mut buf).await, Ok(Some(n)) if n > 0),
            "garbage answered"
        );
        // A peer-only request from a client.
        let r = claro::cli::client::request(
            &conn,
            &claro::proto::Request::Join {
                name: "srv1".into(),
            },
            2000,
        )
        .await
        .unwrap();
        assert!(matches!(r, claro::proto::Response::Error { .. }), "{r:?}");
        // The same connection still works.
        let r = claro::cli::client::request(&conn, &claro::proto::Request::Status, 2000)
            .await
            .unwrap();
        assert!(matches!(r, claro::proto::Response::Status(_)), "{r:?}");
    });
    assert!(
        c.log("srv1").contains("bad request closed its stream"),
        "{}",
        c.log("srv1")
    );
    c.set("srv1", "still", b"fine".to_vec()).unwrap();
}

/// Every replica reports the same digest at the same applied index.
fn replicas_agree(c: &Cluster, names: &[&str]) -> bool {
    let d: Vec<_> = names.iter().map(|s| c.digest(s)).collect();
    d.iter().all(|x| x.is_some() && *x == d[0])
}

/// The note `name`'s status line carries, as `via` reports it.
fn status_note(c: &Cluster, via: &str, name: &str) -> Option<String> {
    let v = c.status(via)?;
    v.servers.into_iter().find(|s| s.name == name)?.note
}

#[test]
fn a_member_wiped_after_kill_9_rejoins_with_the_clusters_data() {
    let mut c = Cluster::three_running(60);
    c.set("srv1", "before-wipe", b"1".to_vec()).unwrap();
    // Enough data that receiving the database takes a moment: the
    // readmission is visible in status while it lasts.
    c.fill_megabytes("srv1", 8);
    c.wait(2 * SETTLE_S, "srv3 synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    c.kill9("srv3");
    std::fs::remove_dir_all(c.data_dir("srv3")).unwrap();
    c.set("srv2", "while-down", b"2".to_vec()).unwrap();
    // The database transfer starts 2 s late (a failpoint), so that the
    // readmission lasts long enough to be seen in status through gossip
    // (else a race, which a fast handshake loses: it once did).
    let cut = [("CLARO_FAILPOINT_SNAPSHOT_DELAY_MS", "2000")];
    c.start_env("srv3", &[], &cut);
    let mut notes = Vec::new();
    c.wait(60, "srv3 re-added and back as a synchronized voter", || {
        if let Some(n) = status_note(&c, "srv1", "srv3") {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        c.log("srv1").contains("srv3 re-added as a learner")
            && c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    c.assert_nobody_crashed();
    assert_eq!(c.get("srv3", "before-wipe").as_deref(), Some(&b"1"[..]));
    assert_eq!(c.get("srv3", "while-down").as_deref(), Some(&b"2"[..]));
    c.wait(10, "identical replicas", || {
        replicas_agree(&c, &["srv1", "srv2", "srv3"])
    });
    let readmitted = c.log_line("srv1", "readmitting srv3");
    assert!(readmitted.contains("new data directory"), "{readmitted}");
    // Status shows the rejoin in either words: the coordinator's (a new
    // data directory) or, when srv3's own report comes first, srv3's (its
    // log ends before what it had acknowledged): both are true of a wiped
    // directory, and which one gossip carries first is a race.
    assert!(
        notes
            .iter()
            .any(|n| n.contains("new data directory") || n.contains("rejoining")),
        "status never showed the rejoin: {notes:?}"
    );
    let v = c.status("srv2").unwrap();
    let srv3 = v.servers.iter().find(|s| s.name == "srv3").unwrap();
    assert_eq!(srv3.state, "follower", "{srv3:?}");
    // It is a member for good: a write after the rejoin reaches it too.
    c.set("srv1", "after", b"3".to_vec()).unwrap();
    c.wait(10, "srv3 to apply a later write", || {
        c.get("srv3", "after").as_deref() == Some(&b"3"[..])
    });
    c.assert_nobody_crashed();
}

#[test]
fn a_member_restored_from_an_older_copy_never_serves_stale_data() {
    let mut c = Cluster::three_running(61);
    c.set("srv1", "k", b"old".to_vec()).unwrap();
    c.wait(SETTLE_S, "srv3 synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    // A copy of srv3's data directory, taken while it is down (as a backup).
    c.kill9("srv3");
    let backup = c.dir.path().join("srv3-backup");
    copy_dir(&c.data_dir("srv3"), &backup);
    c.start("srv3");
    c.wait(SETTLE_S, "srv3 back", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    // srv3 acknowledges more, then its directory is put back to the copy.
    c.set("srv1", "k", b"new".to_vec()).unwrap();
    for i in 0..20 {
        c.set("srv2", &format!("later{i}"), vec![i]).unwrap();
    }
    c.wait(SETTLE_S, "srv3 to apply everything", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    c.kill9("srv3");
    std::fs::remove_dir_all(c.data_dir("srv3")).unwrap();
    copy_dir(&backup, &c.data_dir("srv3"));
    c.start("srv3");
    // Every read through srv3 is current or refused, never the old value,
    // until the coordinator has re-added it and it is a synchronized voter.
    let mut refusals = Vec::new();
    let mut current = || match c.call(
        "srv3",
        claro::proto::Request::Get {
            key: "k".into(),
            stale: false,
        },
    ) {
        Ok(claro::proto::Response::Value { value: Some(v), .. }) => {
            assert_eq!(&v[..], b"new", "srv3 served a stale value");
            true
        }
        Ok(
            claro::proto::Response::Error { message }
            | claro::proto::Response::Unavailable { message },
        ) => {
            if !refusals.contains(&message) {
                refusals.push(message);
            }
            false
        }
        _ => false,
    };
    c.wait(90, "srv3 re-added, synchronized and current", || {
        current()
            && c.log("srv1").contains("srv3 re-added as a learner")
            && c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    // Refused reads say why (seen in the test's output with --nocapture).
    eprintln!("reads refused through srv3 meanwhile: {refusals:?}");
    c.assert_nobody_crashed();
    let readmitted = c.log_line("srv1", "readmitting srv3");
    assert!(readmitted.contains("older than it was"), "{readmitted}");
    c.log_line("srv3", "no longer holds");
    c.wait(10, "identical replicas", || {
        replicas_agree(&c, &["srv1", "srv2", "srv3"])
    });
    assert_eq!(c.get("srv3", "later19").as_deref(), Some(&[19u8][..]));
    c.assert_nobody_crashed();
}

/// A peer (a server's certificate, after a valid `Hello`) may not set an
/// instance's log filter or take its database as a backup: those are an
/// operator's, through the CLI's client certificate (127.0.191.x).
#[test]
fn a_peer_may_not_set_the_log_filter_or_take_a_backup() {
    let mut c = Cluster::new(191, &[("srv1", "server"), ("srv2", "server")]);
    c.start_alone("srv1");
    let cfg = c.config();
    let srv1 = cfg.server("srv1").unwrap().address;
    let srv2 = cfg.server("srv2").unwrap().address;
    let id = claro::tls::load_identity(&cfg.tls_dir, "srv2").unwrap();
    let deny = claro::tls::DenyList::default();
    let ep = claro::transport::Endpoint::bind_server(srv2, &id, &deny).unwrap();
    let hello = claro::proto::Hello {
        name: "srv2".into(),
        protocol_version: claro::proto::PROTOCOL_VERSION,
        software_version: env!("CARGO_PKG_VERSION").into(),
        cluster: cfg.cluster.clone(),
        membership_hash: cfg.membership_hash(),
        membership_text: cfg.membership_text(),
        cluster_id: None,
        incarnation: Some("0123456789abcdef0123456789abcdef".into()),
        protocol_version_min: Some(claro::proto::PROTOCOL_VERSION_MIN),
        protocol_level: None,
    };
    async_std::task::block_on(async {
        let conn = ep.connect(srv1, "srv1", 2000).await.unwrap();
        let r = claro::cli::client::request(&conn, &claro::proto::Request::Hello(hello), 2000)
            .await
            .unwrap();
        assert!(matches!(r, claro::proto::Response::Hello(_)), "{r:?}");
        let set = claro::proto::Request::LogLevel {
            filter: "trace".into(),
        };
        let r = claro::cli::client::request(&conn, &set, 2000)
            .await
            .unwrap();
        assert!(
            matches!(&r, claro::proto::Response::Error { message } if message.contains("operator")),
            "{r:?}"
        );
        let r = claro::cli::client::request(&conn, &claro::proto::Request::Backup, 2000)
            .await
            .unwrap();
        assert!(
            matches!(&r, claro::proto::Response::Error { message } if message.contains("CLI only")),
            "{r:?}"
        );
    });
    assert!(!c.log("srv1").contains("log filter changed"));
    c.set("srv1", "still", b"fine".to_vec()).unwrap();
    c.assert_nobody_crashed();
}
