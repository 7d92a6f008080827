//! A rolling upgrade with real processes (127.0.187.x): srv1 speaks the
//! previous protocol (the test-only switch `CLARO_FAILPOINT_PROTOCOL_VERSION`),
//! the cluster works at that level and does what it means (a hotfolder
//! job's working folder nested, as the previous protocol makes it); srv1
//! is upgraded under load of jobs and hotfolder files, with no job and no
//! file lost and submissions answered throughout; the level then rises,
//! the new meaning applies (flat working folders), and an instance of the
//! old protocol can no longer join.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::Command;
use claro::work::jobs::{new_job_id, Job, JobSpec, JobState};
use common::{Cluster, TEST_TIMING};

const NET: u8 = 187;
/// The protocol before this build's: what a rolling upgrade starts from.
const OLD: u32 = claro::version::PROTOCOL_VERSION - 1;
const NAMES: [&str; 3] = ["srv1", "srv2", "srv3"];

/// As the CLI submits (the job id is the request id), through `via`.
fn submit_with(config: &claro::config::Config, via: &str, spec: JobSpec) -> Result<String, String> {
    let id = new_job_id(claro::clock::now_ms(), rand::random());
    let command = Command::JobSubmit {
        id: id.clone(),
        spec,
        at_ms: claro::clock::now_ms(),
    };
    let args = claro::cli::client::ClientArgs {
        server: Some(via.to_string()),
        json: false,
    };
    let req = Request::propose(command, Some(id.clone()));
    match claro::cli::client::call(config, &args, &req)
        .map_err(|f| f.message)?
        .1
    {
        Response::Proposed { .. } => Ok(id),
        other => Err(format!("{other:?}")),
    }
}

fn job(c: &Cluster, via: &str, id: &str) -> Option<Job> {
    c.job(via, id)
}

fn level(c: &Cluster, via: &str) -> u32 {
    c.status(via).map_or(0, |v| v.protocol_level)
}

/// Drops `name` into the slow hotfolder and tells whether its running
/// job's working folder is flat (`true`) or nested, then waits for it to be
/// published.
fn running_layout_is_flat(c: &Cluster, shared: &Path, name: &str) -> bool {
    std::fs::write(shared.join("slow/in").join(name), "pdf").unwrap();
    let work = shared.join("slow/.claro/work");
    let find = || {
        std::fs::read_dir(&work).ok()?.flatten().find_map(|e| {
            let dir = e.path();
            match (
                dir.join(name).is_file(),
                dir.join("in").join(name).is_file(),
            ) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            }
        })
    };
    c.wait(30, "the slow file claimed", || find().is_some());
    let flat = find().unwrap();
    c.wait(30, "the slow file published", || {
        shared.join("slow/done").join(name).is_file()
    });
    flat
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn cli_ok(c: &Cluster, args: &[&str]) {
    let out = c.cli(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
}

fn identical_replicas(c: &Cluster) {
    c.wait(30, "identical replicas", || {
        let d: Vec<_> = NAMES.iter().map(|n| c.digest(n)).collect();
        d[0].is_some() && d.iter().all(|x| *x == d[0])
    });
}

#[test]
fn a_rolling_upgrade_under_load_raises_the_level_and_loses_no_job() {
    let names: Vec<(&str, &str)> = NAMES.iter().map(|n| (*n, "server")).collect();
    let mut c = Cluster::with_timing(NET, &names, TEST_TIMING);
    let old = OLD.to_string();
    c.start_env("srv1", &[], &[("CLARO_FAILPOINT_PROTOCOL_VERSION", &old)]);
    c.wait(30, "srv1 to coordinate", || {
        c.settled("srv1", "srv1", &["srv1"])
    });
    c.start("srv2");
    c.start("srv3");
    c.wait(30, "all three", || c.settled("srv2", "srv1", &NAMES));
    let shared: PathBuf = c.conf.parent().unwrap().join("../shared");
    cli_ok(
        &c,
        &[
            "hotfolder",
            "add",
            "hf",
            "--command",
            "true",
            "--stable-ms",
            "200",
        ],
    );
    let slow = [
        "hotfolder",
        "add",
        "slow",
        "--command",
        "sleep 2",
        "--stable-ms",
        "200",
    ];
    cli_ok(&c, &slow);
    c.wait(10, "the hotfolders' folders", || {
        shared.join("hf/in").is_dir() && shared.join("slow/in").is_dir()
    });

    // Mixed: the level stays at the old protocol, and a hotfolder job's
    // working folder is made as the old protocol makes it (nested).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(level(&c, "srv3"), OLD);
    let versions: Vec<Option<u32>> = c
        .status("srv2")
        .unwrap()
        .servers
        .iter()
        .map(|s| s.protocol_version)
        .collect();
    let newest = Some(claro::version::PROTOCOL_VERSION);
    assert_eq!(versions, [Some(OLD), newest, newest]);
    assert!(!running_layout_is_flat(&c, &shared, "before.pdf"));
    identical_replicas(&c);

    // The upgrade, under load: srv1 stops gracefully and comes back
    // speaking the new protocol while jobs are submitted and files dropped.
    let stop = AtomicBool::new(false);
    let config = c.config();
    let (ids, failed, dropped) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let (mut ids, mut failed, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..2_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let via = ["srv2", "srv3"][i % 2];
                match submit_with(&config, via, JobSpec::script(&format!("{i}"))) {
                    Ok(id) => ids.push(id),
                    Err(e) => failed.push(e),
                }
                if i % 4 == 0 {
                    let name = format!("f{i}.txt");
                    std::fs::write(shared.join("hf/in").join(&name), "x").unwrap();
                    dropped.push(name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ids, failed, dropped)
        });
        std::thread::sleep(Duration::from_secs(1));
        c.terminate("srv1");
        c.start("srv1");
        // Back: a voter again, holding what was committed when it started.
        // (Not "every server synchronized": under a steady load some
        // server's gossiped applied index always trails the newest commit.)
        let target = c.status("srv2").map_or(0, |v| v.commit_index);
        c.wait(60, "srv1 back as a caught-up voter", || {
            c.status("srv1").is_some_and(|v| {
                v.servers.iter().any(|s| {
                    s.name == "srv1"
                        && s.connected
                        && (s.state == "follower" || s.state == "coordinator")
                        && s.applied_index >= target
                })
            })
        });
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    assert!(ids.len() > 20, "the load ran: {}", ids.len());
    // Submissions are answered through the upgrade: a coordinator handed
    // on gracefully costs no failed call (a few are allowed for a slow
    // machine, not a stalled cluster).
    assert!(
        failed.len() * 20 <= ids.len() + failed.len(),
        "{} of {} submissions failed: {failed:?}",
        failed.len(),
        ids.len() + failed.len()
    );
    c.wait(60, "every acknowledged job to succeed", || {
        ids.iter()
            .all(|id| job(&c, "srv2", id).is_some_and(|j| j.state == JobState::Succeeded))
    });
    // Every file dropped, claimed in either layout, published once.
    c.wait(60, "every dropped file published", || {
        names_in(&shared.join("hf/done")).len() == dropped.len()
    });
    let mut want = dropped.clone();
    want.sort();
    assert_eq!(names_in(&shared.join("hf/done")), want);
    assert!(names_in(&shared.join("hf/in")).is_empty());
    assert!(names_in(&shared.join("hf/error")).is_empty());
    c.wait(10, "the working area emptied", || {
        names_in(&shared.join("hf/.claro/work")).is_empty()
    });

    // All speak the new protocol: the level rises, and a new file job's
    // working folder is flat.
    let newest = claro::version::PROTOCOL_VERSION;
    c.wait(30, "the level to rise to the newest", || {
        level(&c, "srv3") == newest
    });
    assert!(running_layout_is_flat(&c, &shared, "after.pdf"));
    identical_replicas(&c);

    // An instance of the old protocol cannot join a cluster at that level.
    c.terminate("srv3");
    c.start_env("srv3", &[], &[("CLARO_FAILPOINT_PROTOCOL_VERSION", &old)]);
    c.wait(30, "srv3 refused for the level", || {
        c.all_logs().contains(&format!("at level {newest}"))
    });
    c.assert_nobody_crashed();
}
