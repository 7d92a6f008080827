//! Disaster recovery with real processes: `claro backup` under load, every
//! server wiped, `claro restore` onto one of them, and the cluster as of
//! the backup (docs/OPERATIONS.md's procedure, step by step).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Writes `load-N` settings through srv2 until told to stop (bounded in
/// count and time); returns each write's key and acknowledged index.
fn write_load(c: &Cluster, stop: Arc<AtomicBool>, count: &AtomicUsize) -> Vec<(String, u64)> {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..5_000 {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let key = format!("load-{i:05}");
        if let Ok(index) = c.set("srv2", &key, key.clone().into_bytes()) {
            acked.push((key, index));
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
    acked
}

#[test]
fn a_backup_under_load_restores_a_wiped_cluster_as_of_the_backup() {
    let mut c = Cluster::three_running(180);
    let file = c.dir.path().join("cluster.claro-backup");
    let file_s = file.to_str().unwrap().to_string();
    for i in 0..20 {
        c.set("srv1", &format!("before-{i}"), vec![b'x'; 1000])
            .unwrap();
    }
    let out = c.cli(&["submit", "--wait", "--json", "--inline", "6 * 7"]);
    let job = json_of(&out)["id"].as_str().unwrap().to_string();

    // The backup, taken while writes go on through another server, right
    // after the coordinator (the first server the CLI asks) was killed -9:
    // the next server makes it once a new coordinator confirms its read.
    c.kill9("srv1");
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = AtomicUsize::new(0);
    let (acked, meta) = std::thread::scope(|s| {
        let load = s.spawn(|| write_load(&c, stop.clone(), &acked_count));
        // Writes acknowledged before the backup too (after the election
        // the kill started), so that the load is on both sides of it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked_count.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let meta = json_of(&c.cli(&["backup", &file_s, "--json"]));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "backup took {took:?}");
        assert_ne!(meta["server"], "srv1", "{meta}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        (load.join().unwrap(), meta)
    });
    let index = meta["applied_index"].as_u64().unwrap();
    let old_cluster = meta["cluster_id"].as_str().unwrap().to_string();
    assert!(
        acked.iter().any(|(_, i)| *i <= index) && acked.iter().any(|(_, i)| *i > index),
        "the load ran on both sides of the backup (index {index}, {} writes)",
        acked.len()
    );
    // A file that exists is not replaced without --force.
    let again = c.cli(&["backup", &file_s]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");

    // A damaged copy is refused with the reason, and changes nothing.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0x55;
    let damaged = c.dir.path().join("damaged.claro-backup");
    std::fs::write(&damaged, &bytes).unwrap();

    // Disaster: every server gone with its data.
    for n in ["srv1", "srv2", "srv3"] {
        c.kill9(n);
        let _ = std::fs::remove_dir_all(c.data_dir(n));
    }
    let out = c.cli(&["restore", damaged.to_str().unwrap(), "--name", "srv1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("damaged") && err.contains("damaged.claro-backup"),
        "{err}"
    );
    assert!(
        !c.data_dir("srv1").exists(),
        "a refused restore writes nothing"
    );

    let restored = json_of(&c.cli(&["restore", &file_s, "--name", "srv1", "--json"]));
    let new_cluster = restored["cluster_id"].as_str().unwrap().to_string();
    assert_ne!(new_cluster, old_cluster, "a restore starts a new cluster");
    assert_eq!(restored["applied_index"].as_u64(), Some(index));
    // Once restored, a second restore needs --force, and keeps the data aside.
    let out = c.cli(&["restore", &file_s, "--name", "srv1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    c.start_alone("srv1");
    // The running server's directory is never restored over.
    let out = c.cli(&["restore", &file_s, "--name", "srv1", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("answers"));
    // Nor a frozen one's, which answers nothing: it holds its lock.
    let pid = c.pid("srv1").unwrap();
    let signal = |sig: &str| {
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -{sig} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("STOP");
    let out = c.cli(&["restore", &file_s, "--name", "srv1", "--force"]);
    signal("CONT");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runs on it"),
        "{out:?}"
    );
    c.start("srv2");
    c.start("srv3");
    c.wait(60, "the restored cluster with all three", || {
        c.settled("srv3", "srv1", &["srv1", "srv2", "srv3"])
    });
    assert_eq!(
        c.status("srv2").unwrap().cluster_id.as_deref(),
        Some(new_cluster.as_str())
    );

    // The state is the backup's: what was acknowledged up to its index is
    // there, what came after is not; the job is there, succeeded.
    for i in 0..20 {
        assert_eq!(
            c.get("srv3", &format!("before-{i}")),
            Some(vec![b'x'; 1000])
        );
    }
    for (key, i) in &acked {
        let got = c.get("srv2", key);
        match *i <= index {
            true => assert_eq!(got.as_deref(), Some(key.as_bytes()), "{key} at {i}"),
            false => assert_eq!(got, None, "{key} at {i} came after the backup at {index}"),
        }
    }
    let out = c.cli(&["job", &job, "--json", "--server", "srv3"]);
    assert_eq!(json_of(&out)["state"], "succeeded");
    // And the restored cluster takes new work.
    let out = c.cli(&["submit", "--wait", "--inline", "1 + 1"]);
    assert!(out.status.success(), "{out:?}");
    c.wait(20, "identical replicas", || {
        let d: Vec<_> = ["srv1", "srv2", "srv3"]
            .iter()
            .map(|n| c.digest(n))
            .collect();
        d[0].is_some() && d.iter().all(|x| *x == d[0])
    });
    c.assert_nobody_crashed();

    // A backup of an idle cluster stands at its last digest checkpoint
    // (one every 500 ms here): restored under a new cluster id, it must not
    // read as changed outside claro.
    std::thread::sleep(Duration::from_millis(1500));
    let idle = c.dir.path().join("idle.claro-backup");
    let idle_s = idle.to_str().unwrap().to_string();
    json_of(&c.cli(&["backup", &idle_s, "--json"]));

    // With --force over a stopped server's data: the old directory is
    // swapped out whole and kept aside, the new one holds the backup.
    c.kill9("srv1");
    let restored = json_of(&c.cli(&["restore", &idle_s, "--name", "srv1", "--force", "--json"]));
    let aside = std::path::PathBuf::from(restored["moved_aside"].as_str().expect("moved aside"));
    assert!(
        aside.join("state.db").is_file() && aside.join("raft.db").is_file(),
        "{aside:?}"
    );
    assert!(c.data_dir("srv1").join("state.db").is_file());
    assert_ne!(restored["cluster_id"], new_cluster.as_str());
    let leftovers: Vec<_> = std::fs::read_dir(c.data_dir("srv1").parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    c.kill9("srv2");
    c.kill9("srv3");
    c.start_alone("srv1");
    assert_eq!(c.get("srv1", "before-0"), Some(vec![b'x'; 1000]));
}
