//! Damaged data directories, for real: a follower of a three-server cluster
//! is killed -9, its `state.db` damaged on disk (truncated to half; sixteen
//! bytes flipped in the middle, or inside a stored value), and started again;
//! or a value is changed under a running replica, found at the next digest
//! checkpoint. Real `claro serve`
//! processes on 127.0.N.x (N = 95..102). The only server of a cluster, damaged,
//! waits instead of starting a new, empty cluster. Checked: it does not crash, never
//! answers a default read with a wrong value, logs the damage naming the
//! file, keeps the damaged directory aside, shows `damaged` or `joining`
//! while it has no database, and ends with the cluster's data (the same
//! value reads back through it; digests equal at the same applied index).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use common::Cluster;

/// Settings written besides the one checked, so that state.db has pages to
/// damage (about 300 KiB).
const FILLER_COUNT: usize = 300;
/// Bytes of one filler value.
const FILLER_BYTES: usize = 1000;
/// Time for the damaged server to be re-admitted and synchronized.
const HEAL_S: u64 = 60;
/// Time for a digest checkpoint after the last write (the tests'
/// `checkpoint_ms` is 500, looked at every 250 ms).
const CHECKPOINT_WAIT_MS: u64 = 1_500;
/// SQLite's page size (the default, which state.db uses).
const PAGE_BYTES: usize = 4096;

/// What a default read through `via` answered: a value, or an error.
fn read(c: &Cluster, via: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
    let req = Request::Get {
        key: key.into(),
        stale: false,
    };
    match c.call(via, req)? {
        Response::Value { value, .. } => Ok(value.map(|v| v.into_vec())),
        other => Err(format!("{other:?}")),
    }
}

/// Moves what the WAL holds into state.db itself, as SQLite's automatic
/// checkpoint does in time, so that damage to the file hits the data.
fn checkpoint(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint state.db");
}

fn truncate_to_half(db: &Path) {
    let len = std::fs::metadata(db).expect("state.db").len();
    let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.set_len(len / 2).unwrap();
}

fn flip_16_bytes_in_the_middle(db: &Path) {
    let mut bytes = std::fs::read(db).expect("state.db");
    let at = bytes.len() / 2 / PAGE_BYTES * PAGE_BYTES;
    for b in &mut bytes[at..at + 16] {
        *b = !*b;
    }
    std::fs::write(db, &bytes).unwrap();
}

/// Changes sixteen bytes inside the stored filler values: the b-tree stays
/// well formed (SQLite keeps no page checksums), only the digest sees it.
fn flip_16_bytes_inside_a_value(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    let meta = |key: &str| -> u64 {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .expect(key)
    };
    assert_eq!(
        meta("checkpoint_index"),
        meta("applied_index"),
        "srv3 did not rest at a digest checkpoint"
    );
    drop(conn);
    let mut bytes = std::fs::read(db).expect("state.db");
    let filler = vec![b'f'; FILLER_BYTES];
    // Every copy: some are stale leftovers in free space (SQLite does not
    // zero what a page split moved), which no digest could see.
    let copies: Vec<usize> = bytes
        .windows(FILLER_BYTES)
        .enumerate()
        .filter(|(_, w)| *w == filler)
        .map(|(at, _)| at)
        .collect();
    assert!(!copies.is_empty(), "no filler value in state.db");
    for at in copies {
        for b in &mut bytes[at + 100..at + 116] {
            *b = b'g';
        }
    }
    std::fs::write(db, &bytes).unwrap();
    assert!(
        claro::consensus::check::check_file(db, 5_000)
            == claro::consensus::check::Verdict::Intact { partial: false },
        "quick_check alone must not see this damage"
    );
}

/// A default read through srv3 answers the value written, or an error.
fn watch_reads(c: &Cluster) {
    if let Ok(value) = read(c, "srv3", "colour") {
        assert_eq!(
            value.as_deref(),
            Some(&b"RED"[..]),
            "a wrong answer from srv3"
        );
    }
}

/// srv3's state and note, as srv3 reports them.
fn own_state(c: &Cluster) -> Option<(String, String)> {
    let v = c.status("srv3")?;
    let me = v.servers.into_iter().find(|s| s.name == "srv3")?;
    Some((me.state, me.note.unwrap_or_default()))
}

fn synchronized(c: &Cluster, name: &str) -> bool {
    c.status("srv1").is_some_and(|v| {
        v.servers
            .iter()
            .any(|s| s.name == name && s.synchronized && s.state == "follower")
    })
}

/// The whole case, with `damage` done to srv3's state.db while it is down.
fn a_damaged_follower_heals(net: u8, damage: fn(&Path)) {
    let mut c = Cluster::three_running(net);
    let filler = vec![b'f'; FILLER_BYTES];
    for i in 0..FILLER_COUNT {
        c.set("srv1", &format!("filler{i:04}"), filler.clone())
            .expect("write a filler");
    }
    c.set("srv1", "colour", b"RED".to_vec()).expect("write");
    c.wait(30, "srv3 to apply everything", || {
        c.digest("srv3") == c.digest("srv1")
    });
    // The coordinator commits a digest checkpoint every 500 ms (the tests'
    // `checkpoint_ms`) after a write: srv3 then rests at a checkpoint.
    std::thread::sleep(Duration::from_millis(CHECKPOINT_WAIT_MS));
    c.kill9("srv3");
    let db = c.data_dir("srv3").join("state.db");
    checkpoint(&db);
    damage(&db);
    // With srv2 down too, the coordinator cannot re-admit srv3 (that takes
    // a majority): srv3 stays without a database, and must say why.
    c.kill9("srv2");
    c.start("srv3");
    c.wait(30, "srv3 to show itself damaged", || {
        watch_reads(&c);
        own_state(&c).is_some_and(|(state, note)| {
            state == "damaged" && note.contains("state.db failed its check")
        })
    });
    c.start("srv2");
    let deadline = Instant::now() + Duration::from_secs(HEAL_S);
    while !(synchronized(&c, "srv3") && c.digest("srv3") == c.digest("srv1")) {
        assert!(
            Instant::now() < deadline,
            "srv3 never healed\n{}",
            c.all_logs()
        );
        watch_reads(&c);
        std::thread::sleep(Duration::from_millis(50));
    }
    c.assert_nobody_crashed();
    assert_eq!(
        read(&c, "srv3", "colour").unwrap().as_deref(),
        Some(&b"RED"[..])
    );
    let line = c.log_line("srv3", "is damaged");
    assert!(line.contains("state.db failed its check"), "{line}");
    assert!(line.contains("ERROR"), "{line}");
    let aside: Vec<String> = std::fs::read_dir(c.data_dir("srv3").parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("srv3.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged directory is kept aside once");
    let (state, note) = own_state(&c).expect("srv3 answers status");
    assert_eq!(state, "follower", "{note}");
}

#[test]
fn a_follower_whose_state_db_was_truncated_is_given_the_database_again() {
    a_damaged_follower_heals(95, truncate_to_half);
}

#[test]
fn a_follower_whose_state_db_has_flipped_bytes_is_given_the_database_again() {
    a_damaged_follower_heals(96, flip_16_bytes_in_the_middle);
}

#[test]
fn a_follower_with_a_value_changed_inside_state_db_is_given_the_database_again() {
    a_damaged_follower_heals(100, flip_16_bytes_inside_a_value);
}

/// A value changed under a running replica (here through SQLite, as a
/// stray program or a bad disk would) is found at the next digest
/// checkpoint: the `victim` sets its directory aside and receives the
/// database; the others, a majority that agree, keep theirs.
fn a_value_changed_under_a_running_replica_is_found(net: u8, victim: &str) {
    let mut c = Cluster::three_running(net);
    c.set("srv1", "colour", b"RED".to_vec()).expect("write");
    c.wait(30, "everyone to apply it", || {
        c.digest("srv3") == c.digest("srv1") && c.digest("srv2") == c.digest("srv1")
    });
    let conn = rusqlite::Connection::open(c.data_dir(victim).join("state.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "UPDATE settings SET value = x'424c5545' WHERE key = 'colour'",
        [],
    )
    .expect("change the victim's copy");
    drop(conn);
    // Another write makes a checkpoint due.
    c.set("srv2", "shape", b"round".to_vec()).expect("write");
    c.wait(HEAL_S, "the victim to find the damage", || {
        c.log(victim).contains("state digest at index")
    });
    let healthy = if victim == "srv1" { "srv2" } else { "srv1" };
    c.wait(HEAL_S, "the victim to hold the cluster's data", || {
        synchronized(&c, victim)
            && c.digest(victim) == c.digest(healthy)
            && read(&c, victim, "colour").is_ok_and(|v| v.as_deref() == Some(&b"RED"[..]))
    });
    let line = c.log_line(victim, "is damaged");
    assert!(
        line.contains("differs from the one 2 of the 3 voters hold"),
        "{line}"
    );
    c.assert_nobody_crashed();
    for name in ["srv1", "srv2", "srv3"].iter().filter(|n| **n != victim) {
        assert!(!c.log(name).contains("is damaged"), "{name} was condemned");
    }
}

#[test]
fn a_value_changed_under_a_running_follower_is_found_at_the_next_checkpoint() {
    a_value_changed_under_a_running_replica_is_found(101, "srv3");
}

#[test]
fn a_changed_coordinator_condemns_itself_not_the_majority() {
    a_value_changed_under_a_running_replica_is_found(102, "srv1");
}

/// A one-server cluster whose only data directory is damaged does not start
/// a new, empty cluster in its place: it waits, shown `damaged`, saying why.
#[test]
fn the_only_server_with_a_damaged_directory_waits_instead_of_starting_empty() {
    let mut c = Cluster::new(97, &[("srv1", "server")]);
    c.start_alone("srv1");
    c.set("srv1", "colour", b"RED".to_vec()).expect("write");
    c.kill9("srv1");
    let db = c.data_dir("srv1").join("state.db");
    checkpoint(&db);
    truncate_to_half(&db);
    c.start("srv1");
    c.wait(30, "srv1 to wait, shown damaged", || {
        c.status("srv1").is_some_and(|v| {
            v.servers
                .iter()
                .any(|s| s.name == "srv1" && s.state == "damaged")
        }) && c.log("srv1").contains("waits for a server of its cluster")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.log("srv1").matches("no running cluster found").count(),
        1,
        "srv1 started a new cluster on the empty directory:\n{}",
        c.log("srv1")
    );
    let refused = read(&c, "srv1", "colour");
    assert!(refused.is_err(), "{refused:?}");
    c.assert_nobody_crashed();
}

/// A SQLite error while a running follower applies an entry (here its
/// `settings` table dropped under it, as a damaged schema would be): it is
/// logged, the directory set aside, and the instance restarted in place on
/// an empty one; it is given the database and never answers a wrong value.
#[test]
fn a_follower_whose_apply_fails_sets_its_directory_aside_and_is_given_the_database() {
    let mut c = Cluster::three_running(98);
    c.set("srv1", "colour", b"RED".to_vec()).expect("write");
    c.wait(30, "srv3 to apply it", || {
        c.digest("srv3") == c.digest("srv1")
    });
    let pid = c.pid("srv3");
    let conn = rusqlite::Connection::open(c.data_dir("srv3").join("state.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("DROP TABLE settings")
        .expect("drop the table");
    drop(conn);
    c.set("srv1", "colour", b"BLUE".to_vec()).expect("write");
    let deadline = Instant::now() + Duration::from_secs(HEAL_S);
    while !(synchronized(&c, "srv3") && c.digest("srv3") == c.digest("srv1")) {
        assert!(
            Instant::now() < deadline,
            "srv3 never healed\n{}",
            c.all_logs()
        );
        if let Ok(value) = read(&c, "srv3", "colour") {
            assert_eq!(value.as_deref(), Some(&b"BLUE"[..]), "a wrong answer");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        read(&c, "srv3", "colour").unwrap().as_deref(),
        Some(&b"BLUE"[..])
    );
    let line = c.log_line("srv3", "a Ready cycle wrote to it");
    assert!(
        line.contains("ERROR") && line.contains("no such table"),
        "{line}"
    );
    c.log_line("srv3", "restarting in place");
    assert_eq!(c.pid("srv3"), pid, "restarted in place, not exited");
    c.assert_nobody_crashed();
    let aside = std::fs::read_dir(c.data_dir("srv3").parent().unwrap())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("srv3.damaged-")
        })
        .count();
    assert_eq!(aside, 1);
}

/// A SQLite error on the read path is logged as an error, answered as an
/// error, and shown in `claro status` (here the `settings` table of a
/// follower dropped under it, read with `--stale` so that nothing is
/// written to it).
#[test]
fn a_failed_read_is_logged_and_shown_in_status() {
    // No digest checkpoint during the test: the next one would find the
    // dropped table and set srv3's directory aside (the case above).
    let timing = "election_ms = 1000\ndiscovery_ms = 1000\ncheckpoint_ms = 600000\n";
    let c = Cluster::three_running_with_timing(99, timing);
    c.set("srv1", "colour", b"RED".to_vec()).expect("write");
    c.wait(30, "srv3 to apply it", || {
        c.digest("srv3") == c.digest("srv1")
    });
    let conn = rusqlite::Connection::open(c.data_dir("srv3").join("state.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("DROP TABLE settings")
        .expect("drop the table");
    drop(conn);
    let req = Request::Get {
        key: "colour".into(),
        stale: true,
    };
    for _ in 0..2 {
        let answer = c.call("srv3", req.clone());
        assert!(
            matches!(&answer, Ok(Response::Error { message }) if message.contains("no such table")),
            "{answer:?}"
        );
    }
    // The view of srv3 that status shows travels by gossip to the coordinator.
    c.wait(10, "the read errors in srv3's status note", || {
        own_state(&c).is_some_and(|(_, note)| {
            note.starts_with("2 reads from state.db failed") && note.contains("no such table")
        })
    });
    let line = c.log_line("srv3", "from state.db failed");
    assert!(line.contains("ERROR"), "{line}");
}
