//! Disk full, for real: one server's data directory on a small tmpfs (as
//! root; skipped with a printed reason where it cannot be mounted), filled by
//! a filler file until writes fail. Real `claro serve` processes on
//! 127.0.N.x (N = 90..94). Checked: the instance stays up, `claro status`
//! answers and says why, `--stale` reads answer, writes are refused naming the
//! data directory, and once the filler is deleted writes succeed again
//! without a restart, with no temporary file left behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claro::proto::StatusView;
use common::{fill, Cluster, Tmpfs};

/// Size of the file system the data directory lives on.
const TMPFS_SIZE: &str = "8m";
/// Bytes of one value written to fill the databases.
const VALUE_BYTES: usize = 256 * 1024;
/// Writes tried before the disk must have been found full.
const FILL_WRITES_MAX: usize = 100;
/// Time for a cluster to settle, and for an instance to resume.
const SETTLE_S: u64 = 30;

/// Mounts a tmpfs on `name`'s data directory, or says why not.
fn small_disk(c: &Cluster, name: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(&c.data_dir(name), TMPFS_SIZE) {
        Ok(t) => Some(t),
        Err(why) => {
            common::skip(
                "a disk-full test",
                "tmpfs",
                &format!("cannot mount a small file system: {why}"),
            );
            None
        }
    }
}

/// The process is running (not exited, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['R', 'S', 'D']))
        })
        .unwrap_or(false)
}

/// Temporary and partial files anywhere under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(leftovers(&p));
        } else {
            let name = e.file_name().to_string_lossy().to_string();
            if name.contains(".tmp") || name.ends_with(".part") {
                found.push(p);
            }
        }
    }
    found
}

fn value(i: usize) -> Vec<u8> {
    (0..VALUE_BYTES)
        .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i * 7919) >> 13) as u8)
        .collect()
}

/// Writes large values through `via` until one is refused for lack of
/// space; returns that error.
fn write_until_full(c: &Cluster, via: &str) -> String {
    for i in 0..FILL_WRITES_MAX {
        if let Err(e) = c.set(via, &format!("big{i}"), value(i)) {
            if e.contains("no space left on") {
                return e;
            }
        }
    }
    panic!(
        "{FILL_WRITES_MAX} writes of {VALUE_BYTES} bytes through {via} never ran out of space\n{}",
        c.all_logs()
    );
}

fn status_json(c: &Cluster, via: &str) -> StatusView {
    let out = c.cli(&["status", "--json", "--server", via]);
    assert!(
        out.status.success(),
        "status via {via}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn note_of(v: &StatusView, name: &str) -> Option<String> {
    v.servers
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.note.clone())
}

fn cli_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks a full instance `name` answers as it must: up, status with the
/// note, `--stale` reads, writes refused naming `path`.
fn check_full(c: &Cluster, name: &str, path: &str, key: &str, expect: &str) {
    let pid = c.pid(name).expect("started");
    assert!(alive(pid), "{name} stopped on a full disk\n{}", c.log(name));
    let note = note_of(&status_json(c, name), name).unwrap_or_default();
    assert_eq!(note, format!("no space left on {path}: writes refused"));
    let human = c.cli(&["status", "--server", name]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("no space left on"),
        "human status: {}",
        cli_text(&human)
    );
    let stale = c.cli(&["settings", "get", key, "--stale", "--server", name]);
    assert!(
        stale.status.success() && String::from_utf8_lossy(&stale.stdout).contains(expect),
        "stale read on a full disk: {}",
        cli_text(&stale)
    );
    let set = c.cli(&["settings", "set", "colour", "refused", "--server", name]);
    let said = String::from_utf8_lossy(&set.stderr);
    assert!(
        set.status.code() == Some(1) && said.contains(&format!("no space left on {path}")),
        "a write on a full disk: {}",
        cli_text(&set)
    );
}

/// Waits until a write through `via` succeeds again.
fn wait_writable(c: &Cluster, via: &str) -> Duration {
    let t = Instant::now();
    c.wait(SETTLE_S, &format!("writes through {via} to resume"), || {
        c.set(via, "colour", b"after".to_vec()).is_ok()
    });
    t.elapsed()
}

fn canonical(c: &Cluster, name: &str) -> String {
    std::fs::canonicalize(c.data_dir(name))
        .expect("data directory")
        .display()
        .to_string()
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn one_server_on_a_full_disk_stays_up_refuses_writes_and_resumes_when_space_is_back() {
    let mut c = Cluster::new(90, &[("srv1", "server")]);
    let Some(_disk) = small_disk(&c, "srv1") else {
        return;
    };
    c.start_alone("srv1");
    let path = canonical(&c, "srv1");
    c.set("srv1", "colour", b"before".to_vec())
        .expect("write before the disk is full");
    let filler = fill(&c.data_dir("srv1"));
    let refused = write_until_full(&c, "srv1");
    assert!(refused.contains(&path), "{refused}");
    check_full(&c, "srv1", &path, "colour", "before");
    // A default read cannot be confirmed while the core is parked: it says
    // so at once, naming the path and the way out.
    let read = c.cli(&["settings", "get", "colour", "--server", "srv1"]);
    let said = String::from_utf8_lossy(&read.stderr);
    assert!(
        said.contains(&format!("no space left on {path}")) && said.contains("--stale"),
        "default read on a full disk: {}",
        cli_text(&read)
    );
    std::thread::sleep(Duration::from_millis(2_500));
    let log = c.log("srv1");
    assert_eq!(
        count(&log, "writes refused until space is freed"),
        1,
        "the first error is logged once, retries are not:\n{log}"
    );
    assert_eq!(count(&log, "still no space left"), 0, "{log}");
    std::fs::remove_file(filler).unwrap();
    let took = wait_writable(&c, "srv1");
    eprintln!(
        "writes resumed {} ms after the filler was deleted",
        took.as_millis()
    );
    assert_eq!(c.get("srv1", "colour"), Some(b"after".to_vec()));
    assert_eq!(
        note_of(&status_json(&c, "srv1"), "srv1"),
        common::setup_note()
    );
    assert!(c.log("srv1").contains("space is back on"));
    assert!(alive(c.pid("srv1").unwrap()), "restarted meanwhile?");
    assert_eq!(leftovers(&c.data_dir("srv1")), Vec::<PathBuf>::new());
}

#[test]
fn a_coordinator_on_a_full_disk_stays_up_the_others_go_on_and_it_catches_up_when_space_is_back() {
    let mut c = Cluster::new(
        91,
        &[("srv1", "server"), ("srv2", "server"), ("srv3", "server")],
    );
    let Some(_disk) = small_disk(&c, "srv1") else {
        return;
    };
    c.start_alone("srv1");
    c.start("srv2");
    c.start("srv3");
    c.wait(SETTLE_S, "all three synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    let path = canonical(&c, "srv1");
    c.set("srv2", "colour", b"before".to_vec())
        .expect("write before the disk is full");
    c.wait(SETTLE_S, "srv1 to apply it", || {
        c.digest("srv1") == c.digest("srv2")
    });
    let filler = fill(&c.data_dir("srv1"));
    // srv1 coordinates: the first large write through it finds no space.
    let refused = write_until_full(&c, "srv1");
    assert!(refused.contains(&path), "{refused}");
    // The others elect a coordinator among themselves and take writes.
    c.wait(SETTLE_S, "writes through srv2 without srv1", || {
        c.set("srv2", "colour", b"during".to_vec()).is_ok()
    });
    check_full(&c, "srv1", &path, "colour", "before");
    c.wait(SETTLE_S, "srv2's status to show srv1's note", || {
        note_of(&status_json(&c, "srv2"), "srv1").is_some_and(|n| n.contains(&path))
    });
    std::fs::remove_file(filler).unwrap();
    let took = wait_writable(&c, "srv1");
    eprintln!(
        "writes through srv1 resumed {} ms after the filler was deleted",
        took.as_millis()
    );
    c.wait(SETTLE_S, "srv1 to hold what the others hold", || {
        let d = c.digest("srv1");
        d.is_some() && d == c.digest("srv2") && d == c.digest("srv3")
    });
    assert_eq!(c.get("srv1", "colour"), Some(b"after".to_vec()));
    assert!(alive(c.pid("srv1").unwrap()), "restarted meanwhile?");
    assert_eq!(leftovers(&c.data_dir("srv1")), Vec::<PathBuf>::new());
}

#[test]
fn an_instance_stopped_on_a_full_disk_exits_cleanly_and_starts_again_with_its_data() {
    let mut c = Cluster::new(92, &[("srv1", "server")]);
    let Some(_disk) = small_disk(&c, "srv1") else {
        return;
    };
    c.start_alone("srv1");
    c.set("srv1", "colour", b"kept".to_vec())
        .expect("write before the disk is full");
    let filler = fill(&c.data_dir("srv1"));
    write_until_full(&c, "srv1");
    // SIGTERM: a graceful stop, which exits with status 0.
    c.terminate("srv1");
    assert_eq!(leftovers(&c.data_dir("srv1")), Vec::<PathBuf>::new());
    std::fs::remove_file(filler).unwrap();
    c.start("srv1");
    c.wait(SETTLE_S, "srv1 to coordinate again", || {
        c.settled("srv1", "srv1", &["srv1"])
    });
    assert_eq!(c.get("srv1", "colour"), Some(b"kept".to_vec()));
}
