//! A rolling upgrade with real processes (127.0.187.x): srv1 speaks the
//! previous protocol (the test-only switch `CLARO_FAILPOINT_PROTOCOL_VERSION`),
//! the cluster works at that level and applies commands as it does; srv1
//! is upgraded under load with no job lost; the level then rises, the new
//! meaning applies on every replica alike, and an instance of the old
//! protocol can no longer join.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::Command;
use claro::work::jobs::{new_job_id, Job, JobSpec, JobState};
use common::{Cluster, TEST_TIMING};

const NET: u8 = 187;
const OLD: &str = "8";
const NAMES: [&str; 3] = ["srv1", "srv2", "srv3"];

fn submit(c: &Cluster, via: &str, spec: JobSpec) -> Result<String, String> {
    submit_with(&c.config(), via, spec)
}

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

/// A job that fails once, retried while no server takes jobs, then
/// cancelled: the error the job shows afterwards.
fn error_after_retry_and_cancel(c: &Cluster) -> Option<String> {
    let mut spec = JobSpec::script("throw \"no paper\"");
    spec.max_attempts = 1;
    let id = submit(c, "srv2", spec).expect("submit");
    c.wait(30, "the job to fail", || {
        job(c, "srv2", &id).is_some_and(|j| j.state == JobState::Failed)
    });
    for n in NAMES {
        let out = c.cli(&["node", "maintenance", n]);
        assert!(out.status.success(), "{out:?}");
    }
    for verb in ["retry", "cancel"] {
        let out = c.cli(&[verb, &id]);
        assert!(out.status.success(), "{verb}: {out:?}");
    }
    for n in NAMES {
        let out = c.cli(&["node", "activate", n]);
        assert!(out.status.success(), "{out:?}");
    }
    let j = job(c, "srv3", &id).expect("the job");
    assert_eq!((j.state, j.attempt), (JobState::Cancelled, 2));
    j.error
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
    c.start_env("srv1", &[], &[("CLARO_FAILPOINT_PROTOCOL_VERSION", OLD)]);
    c.wait(30, "srv1 to coordinate", || {
        c.settled("srv1", "srv1", &["srv1"])
    });
    c.start("srv2");
    c.start("srv3");
    c.wait(30, "all three", || c.settled("srv2", "srv1", &NAMES));

    // Mixed: the level stays at the old protocol, and a retry keeps the
    // last attempt's error, as the old protocol applied it, everywhere.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(level(&c, "srv3"), 8);
    let versions: Vec<Option<u32>> = c
        .status("srv2")
        .unwrap()
        .servers
        .iter()
        .map(|s| s.protocol_version)
        .collect();
    let newest = Some(claro::version::PROTOCOL_VERSION);
    assert_eq!(versions, [Some(8), newest, newest]);
    let kept = error_after_retry_and_cancel(&c);
    assert!(
        kept.as_deref().is_some_and(|e| e.contains("no paper")),
        "{kept:?}"
    );
    identical_replicas(&c);

    // The upgrade, under load: srv1 stops gracefully and comes back
    // speaking the new protocol while jobs keep being submitted.
    let stop = AtomicBool::new(false);
    let config = c.config();
    let ids = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut ids = Vec::new();
            for i in 0..2_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let via = ["srv2", "srv3"][i % 2];
                if let Ok(id) = submit_with(&config, via, JobSpec::script(&format!("{i}"))) {
                    ids.push(id);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ids
        });
        std::thread::sleep(Duration::from_secs(1));
        c.terminate("srv1");
        c.start("srv1");
        c.wait(30, "srv1 back", || {
            c.status("srv1")
                .is_some_and(|v| v.servers.iter().all(|s| s.synchronized))
        });
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    assert!(ids.len() > 20, "the load ran: {}", ids.len());
    c.wait(60, "every acknowledged job to succeed", || {
        ids.iter()
            .all(|id| job(&c, "srv2", id).is_some_and(|j| j.state == JobState::Succeeded))
    });

    // All speak the new protocol: the level rises, and a retry now clears
    // the error, on every replica alike.
    let newest = claro::version::PROTOCOL_VERSION;
    c.wait(30, "the level to rise to the newest", || {
        level(&c, "srv3") == newest
    });
    let cleared = error_after_retry_and_cancel(&c);
    assert_eq!(cleared, None);
    identical_replicas(&c);

    // An instance of the old protocol cannot join a cluster at that level.
    c.terminate("srv3");
    c.start_env("srv3", &[], &[("CLARO_FAILPOINT_PROTOCOL_VERSION", OLD)]);
    c.wait(30, "srv3 refused for the level", || {
        c.all_logs().contains(&format!("at level {newest}"))
    });
    c.assert_nobody_crashed();
}
