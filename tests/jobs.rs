//! Jobs on a real three-server cluster (127.0.N.1-3, N = 103..108): spread by
//! load, re-run elsewhere when their instance is killed -9 or frozen past
//! `node_timeout_ms` (whose late report is then fenced off), handed back at
//! once by a graceful stop, and submitted exactly once through a coordinator
//! kill. Real `claro serve` processes; jobs submitted as the CLI does.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::jobs::JobFilter;
use claro::state::Command;
use claro::work::jobs::{new_job_id, Job, JobSpec, JobState};
use common::Cluster;

/// Longest wait for jobs to end in these tests.
const END_S: u64 = 60;

fn script(code: &str) -> JobSpec {
    let mut spec = JobSpec::script(code);
    spec.timeout_ms = 60_000;
    spec
}

/// Submits `spec` through `via` as the CLI does (the job id is the request
/// id); returns the id once the submission is acknowledged.
fn submit(c: &Cluster, via: &str, spec: JobSpec) -> Result<String, String> {
    let id = new_job_id(claro::clock::now_ms(), rand::random());
    let command = Command::JobSubmit {
        id: id.clone(),
        spec,
        at_ms: claro::clock::now_ms(),
    };
    match c.call(via, Request::propose(command, Some(id.clone())))? {
        Response::Proposed { .. } => Ok(id),
        other => Err(format!("{other:?}")),
    }
}

fn job(c: &Cluster, via: &str, id: &str) -> Option<Job> {
    c.job(via, id)
}

/// Every job, through `via` (pages of 1,000).
fn all_jobs(c: &Cluster, via: &str) -> Vec<Job> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let filter = JobFilter {
            before: before.clone(),
            ..JobFilter::default()
        };
        let req = Request::Jobs {
            filter,
            limit: 1000,
            stale: false,
        };
        match c.call(via, req) {
            Ok(Response::Jobs {
                jobs, next_before, ..
            }) => {
                out.extend(jobs);
                match next_before {
                    Some(n) => before = Some(n),
                    None => return out,
                }
            }
            other => panic!("listing jobs: {other:?}"),
        }
    }
}

fn wait_all_final(c: &Cluster, via: &str, count: usize) -> Vec<Job> {
    let deadline = Instant::now() + Duration::from_secs(END_S);
    loop {
        let jobs = all_jobs(c, via);
        if jobs.len() >= count && jobs.iter().all(|j| j.state.is_final()) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not end: {:?}\n{}",
            jobs.iter()
                .filter(|j| !j.state.is_final())
                .map(|j| (&j.id, j.state, &j.instance, j.attempt))
                .collect::<Vec<_>>(),
            c.all_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn by_instance(jobs: &[Job]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for j in jobs {
        *n.entry(j.instance.clone().unwrap_or_default()).or_default() += 1;
    }
    n
}

#[test]
fn a_thousand_script_jobs_spread_over_three_instances_by_load() {
    let c = Cluster::three_running(103);
    // Jobs that hold their slot a little, so that placement by load shows.
    let ids: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = ["srv1", "srv2", "srv3", "srv1"]
            .iter()
            .map(|via| {
                let c = &c;
                s.spawn(move || {
                    (0..250)
                        .map(|i| {
                            let code = format!("sleep_ms(5); {i}");
                            submit(c, via, script(&code)).expect("submit")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), 1000);
    let jobs = wait_all_final(&c, "srv2", 1000);
    assert_eq!(jobs.len(), 1000, "one job per acknowledged submission");
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
    let spread = by_instance(&jobs);
    for name in ["srv1", "srv2", "srv3"] {
        let n = spread.get(name).copied().unwrap_or(0);
        assert!(n >= 150, "{name} ran {n} of 1000: {spread:?}");
    }
    // The same answer through every instance.
    let one = &ids[500];
    let seen: Vec<Option<String>> = ["srv1", "srv2", "srv3"]
        .iter()
        .map(|v| job(&c, v, one).and_then(|j| j.result))
        .collect();
    assert!(
        seen.iter().all(|r| r == &seen[0] && r.is_some()),
        "{seen:?}"
    );
    // Nothing was cancelled or released: no log may say an attempt was
    // stopped (it said so once per succeeded job).
    for name in ["srv1", "srv2", "srv3"] {
        let log = c.log(name);
        let stopped = log.lines().find(|l| l.contains("no longer current here"));
        assert_eq!(stopped, None, "{name}");
    }
}

/// 300 jobs submitted one after another through the three instances (each
/// ends at once) spread evenly over them: at least 80 each, on an idle
/// machine and with both CPUs kept busy beside the cluster, where a
/// server whose gossip came late was once skipped and the ties went by
/// name (127.0.179.x).
#[test]
fn sequential_jobs_spread_evenly_idle_and_with_the_cpus_busy() {
    let c = Cluster::three_running(179);
    let spread = |c: &Cluster| {
        let before = all_jobs(c, "srv1").len();
        for i in 0..300 {
            let via = ["srv1", "srv2", "srv3"][i % 3];
            submit(c, via, script(&format!("{i}"))).expect("submit");
        }
        let jobs = wait_all_final(c, "srv1", before + 300);
        let new: Vec<Job> = jobs.into_iter().take(300).collect();
        by_instance(&new)
    };
    let idle = spread(&c);
    // Busy: as many spinning threads as CPUs, for at most two minutes.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let busy = std::thread::scope(|s| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..cpus {
            s.spawn(|| {
                let until = std::time::Instant::now() + Duration::from_secs(120);
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < until
                {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            });
        }
        let busy = spread(&c);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        busy
    });
    println!("300 sequential jobs: idle {idle:?}, CPUs busy {busy:?}");
    for (when, spread) in [("idle", &idle), ("busy", &busy)] {
        for name in ["srv1", "srv2", "srv3"] {
            let n = spread.get(name).copied().unwrap_or(0);
            assert!(n >= 80, "{when}: {name} ran {n} of 300: {spread:?}");
        }
    }
}

/// Submits six long jobs and waits until every one runs; returns their ids,
/// the instance that runs the most of them, and the ids of those it runs.
/// Six jobs of `code` running, each allowed one attempt: an attempt lost
/// with its instance is not a failure and must not use it up.
fn long_jobs_running(c: &Cluster, code: &str) -> (Vec<String>, String, Vec<String>) {
    let one_attempt = || {
        let mut spec = script(code);
        spec.max_attempts = 1;
        spec
    };
    let ids: Vec<String> = (0..6)
        .map(|_| submit(c, "srv1", one_attempt()).expect("submit"))
        .collect();
    c.wait(30, "the long jobs to run", || {
        ids.iter()
            .all(|id| job(c, "srv1", id).is_some_and(|j| j.state == JobState::Running))
    });
    let jobs: Vec<Job> = ids.iter().filter_map(|id| job(c, "srv1", id)).collect();
    let spread = by_instance(&jobs);
    let victim = ["srv2", "srv3"]
        .into_iter()
        .max_by_key(|n| spread.get(*n).copied().unwrap_or(0))
        .unwrap()
        .to_string();
    assert!(spread.get(&victim).copied().unwrap_or(0) > 0, "{spread:?}");
    let on_victim = jobs
        .iter()
        .filter(|j| j.instance.as_deref() == Some(victim.as_str()))
        .map(|j| j.id.clone())
        .collect();
    (ids, victim, on_victim)
}

#[test]
fn jobs_of_an_instance_killed_9_finish_elsewhere() {
    let mut c = Cluster::three_running(104);
    let (ids, victim, on_victim) = long_jobs_running(&c, "sleep_ms(2000); 7");
    let killed = Instant::now();
    c.kill9(&victim);
    for id in &on_victim {
        c.wait(
            END_S,
            "a job of the killed instance to run elsewhere",
            || {
                job(&c, "srv1", id).is_some_and(|j| {
                    j.state == JobState::Running && j.instance.as_deref() != Some(&victim)
                })
            },
        );
    }
    let rerun_ms = killed.elapsed().as_millis();
    let jobs = wait_all_final(&c, "srv1", ids.len());
    for j in jobs.iter().filter(|j| on_victim.contains(&j.id)) {
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert_ne!(j.instance.as_deref(), Some(victim.as_str()));
        assert_eq!(j.attempt, 2, "{j:?}");
    }
    let line = c.log_line("srv1", "releasing its");
    assert!(line.contains(&format!("{victim} was silent")), "{line}");
    eprintln!("kill -9 to re-run elsewhere: {rerun_ms} ms (node_timeout_ms 3000)");
    c.assert_nobody_crashed();
}

#[test]
fn a_frozen_instance_s_late_report_is_fenced_off() {
    let mut c = Cluster::three_running(105);
    let (ids, victim, on_victim) = long_jobs_running(&c, "sleep_ms(1500); \"first\"");
    let pid = c.pid(&victim).expect("running");
    signal(pid, "STOP");
    // Released after node_timeout_ms (3 s) and run elsewhere.
    for id in &on_victim {
        c.wait(END_S, "the frozen instance's job to run elsewhere", || {
            job(&c, "srv1", id)
                .is_some_and(|j| j.attempt == 2 && j.instance.as_deref() != Some(&victim))
        });
    }
    signal(pid, "CONT");
    let jobs = wait_all_final(&c, "srv1", ids.len());
    for j in jobs.iter().filter(|j| on_victim.contains(&j.id)) {
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(
            j.attempt, 2,
            "the late report of attempt 1 must not count: {j:?}"
        );
        assert_ne!(j.instance.as_deref(), Some(victim.as_str()));
    }
    c.wait(10, "the thawed instance to note its refused report", || {
        c.log(&victim).contains("no longer current")
    });
    c.assert_nobody_crashed();
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn a_graceful_stop_hands_jobs_back_at_once() {
    let mut c = Cluster::three_running(106);
    // Longer than the tests' drain_ms (1 s): they are handed back.
    let (_, victim, on_victim) = long_jobs_running(&c, "sleep_ms(20000); 1");
    let stopped = Instant::now();
    c.stop(&victim);
    for id in &on_victim {
        c.wait(10, "a handed-back job to run elsewhere", || {
            job(&c, "srv1", id).is_some_and(|j| j.attempt == 2 && j.state == JobState::Running)
        });
    }
    // Well before node_timeout_ms (3 s) after the stop's drain (1 s).
    let ms = stopped.elapsed().as_millis();
    assert!(ms < 3_900, "handed back after {ms} ms");
    let line = c.log_line(&victim, "handing back");
    assert!(line.contains("attempts before stopping"), "{line}");
    for id in &on_victim {
        let j = job(&c, "srv1", id).unwrap();
        assert!(j
            .error
            .unwrap_or_default()
            .contains(&format!("{victim} stopped")));
    }
}

#[test]
fn every_acknowledged_submission_through_a_coordinator_kill_ends_once() {
    let mut c = Cluster::three_running(107);
    let coordinator = c.pid("srv1").expect("running");
    let acked = std::thread::scope(|s| {
        let submitter = s.spawn(|| {
            let mut acked = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(6);
            let mut i = 0;
            while Instant::now() < deadline && i < 2_000 {
                i += 1;
                let via = ["srv2", "srv3"][i % 2];
                if let Ok(id) = submit(&c, via, script("1")) {
                    acked.push(id);
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(1500));
        signal(coordinator, "KILL");
        submitter.join().unwrap()
    });
    c.kill9("srv1"); // reaps it
    assert!(
        acked.len() > 50,
        "only {} submissions acknowledged",
        acked.len()
    );
    let jobs = wait_all_final(&c, "srv2", acked.len());
    let mut count: HashMap<&str, usize> = HashMap::new();
    for j in &jobs {
        *count.entry(j.id.as_str()).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(count.get(id.as_str()), Some(&1), "job {id} lost or doubled");
    }
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
}

#[test]
fn the_cli_submits_waits_cancels_and_refuses_bad_jobs() {
    let c = Cluster::three_running(108);
    let out = c.cli(&["submit", "--wait", "--inline", "log(\"hi\"); 6 * 7"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    let out = c.cli(&["submit", "--inline", "let = ;"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not compile"));
    let out = c.cli(&[
        "submit",
        "--wait",
        "--max-attempts",
        "1",
        "--timeout",
        "300ms",
        "--inline",
        "loop {}",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out after 300 ms"));
    let out = c.cli(&[
        "submit",
        "--wait",
        "--max-attempts",
        "1",
        "--inline",
        "let s = \"x\"; loop { s += s; }",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = c.cli(&["submit", "--inline", "loop { sleep_ms(10); }"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    c.wait(20, "the endless job to run", || {
        job(&c, "srv2", &id).is_some_and(|j| j.state == JobState::Running)
    });
    let out = c.cli(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    let out = c.cli(&["job", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "cancelled");
    for key in [
        "id",
        "kind",
        "state",
        "instance",
        "attempt",
        "max_attempts",
        "priority",
        "timeout_ms",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    ] {
        assert!(v.get(key).is_some(), "no `{key}` in {v}");
    }
    let out = c.cli(&["job", "0123"]);
    assert_eq!(out.status.code(), Some(2));
    // A script reads and writes the cluster's settings.
    let code = "kv_set(\"colour\", \"RED\"); kv_get(\"colour\") + kv_get(\"missing\")";
    let out = c.cli(&["submit", "--wait", "--inline", code]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "RED\n", "{out:?}");
    assert_eq!(c.get("srv3", "colour").as_deref(), Some(&b"RED"[..]));
    // Stored scripts: versioned, checked when added, run by name.
    let file = c.conf.with_file_name("double.rhai");
    std::fs::write(
        &file,
        "fn double(x) { x * 2 }\ndouble(ARGS[0].parse_int())\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = c.cli(&["script", "add", "double", file]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "double version 1\n");
    let out = c.cli(&["script", "add", "double", file]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "double version 2\n");
    let out = c.cli(&["submit", "--wait", "--stored", "double", "--arg", "21"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n", "{out:?}");
    let twice = c.conf.with_file_name("twice.rhai");
    std::fs::write(&twice, "fn f(a) { a }\nfn f(b) { b }\n").unwrap();
    let out = c.cli(&["script", "add", "twice", twice.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{out:?}"
    );
    let out = c.cli(&["script", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "double");
    assert_eq!(v[0]["version"], 2);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let out = c.cli(&["submit", "--command", "--", "/no/such/program"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = c.cli(&["wait", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start `/no/such/program`"));
}

#[test]
fn finished_jobs_beyond_the_configured_count_are_purged() {
    let timing = format!("{}\n[jobs]\nkeep_count = 5\n", common::TEST_TIMING);
    let mut c = Cluster::with_timing(109, &[("srv1", "server")], &timing);
    c.start_alone("srv1");
    let ids: Vec<String> = (0..12)
        .map(|_| submit(&c, "srv1", script("1")).expect("submit"))
        .collect();
    // The purge looks every 10 s.
    c.wait(40, "finished jobs beyond keep_count to be purged", || {
        all_jobs(&c, "srv1").len() == 5
    });
    // Those that ended last are kept (the unit test checks the order).
    let left = all_jobs(&c, "srv1");
    assert!(left
        .iter()
        .all(|j| j.state == JobState::Succeeded && ids.contains(&j.id)));
    c.assert_nobody_crashed();
}

/// The new coordinator places nothing on the one it replaced: a job
/// submitted the moment the coordinator is killed -9 runs at its first
/// attempt on a live instance, not after node_timeout_ms on the dead one.
#[test]
fn a_job_submitted_as_the_coordinator_dies_runs_at_once_elsewhere() {
    let mut c = Cluster::three_running(110);
    c.kill9("srv1");
    let id = submit(&c, "srv2", script("42")).expect("submit");
    let deadline = Instant::now() + Duration::from_secs(END_S);
    let done = loop {
        if let Some(j) = job(&c, "srv2", &id).filter(|j| j.state.is_final()) {
            break j;
        }
        assert!(Instant::now() < deadline, "the job did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        done.attempt, 1,
        "placed on the dead coordinator first: {done:?}"
    );
    assert_ne!(done.instance.as_deref(), Some("srv1"));
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `call_script` runs a stored script's function as a child job where the
/// coordinator places it and returns its value or its error (naming both
/// scripts and lines); the profile shows the call's waits; a script reaches
/// SQL on its replica, files under shared_root (and nothing outside), a
/// command, and child jobs.
#[test]
fn a_remote_call_returns_its_value_and_its_error_and_is_profiled() {
    let mut c = Cluster::three_running(111);
    let lib = c.conf.with_file_name("lib.rhai");
    let lib_code = "fn area(w, h) { #{ w: w, h: h, area: w * h } }\nfn fail(size) {\n  throw \"no paper for \" + size;\n}\n";
    std::fs::write(&lib, lib_code).unwrap();
    let out = c.cli(&["script", "add", "lib", lib.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let code = "let a = call_script(\"lib\", \"area\", 6, 7);\nlet b = call_script(\"lib\", \"area\", 2, 3);\na.area + b.area - 6";
    let out = c.cli(&["submit", "--json", "--inline", code]);
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = c.cli(&["wait", &id]);
    assert_eq!(stdout(&out), "42", "{out:?}");
    // The profile, through another instance: one row for the target,
    // called twice, its time split into preparing, waiting and receiving.
    let out = c.cli(&["job", &id, "--profile", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &v["profile"][0];
    assert_eq!(
        (row["name"].as_str(), row["calls"].as_u64()),
        (Some("call lib.area"), Some(2)),
        "{v}"
    );
    let part = |k: &str| row[k].as_u64().unwrap();
    assert!(part("prepare_us") > 0 && part("wait_us") > 0, "{v}");
    assert_eq!(
        part("total_us"),
        part("prepare_us") + part("wait_us") + part("receive_us")
    );
    let out = c.cli(&["job", &id, "--profile"]);
    assert!(
        stdout(&out).contains("call lib.area") && stdout(&out).contains("WAIT ms"),
        "{out:?}"
    );
    // The children are jobs of their own, spread by load like any other.
    let children: Vec<Job> = all_jobs(&c, "srv2")
        .into_iter()
        .filter(|j| j.spec.call.is_some())
        .collect();
    assert_eq!(children.len(), 2);
    assert!(children
        .iter()
        .all(|j| j.state == JobState::Succeeded && j.spec.depth == 1));
    // An error there is an error here, with both scripts' names and lines.
    let failing = "let x = 1;\ncall_script(\"lib\", \"fail\", \"A4\")";
    let out = c.cli(&[
        "submit",
        "--wait",
        "--max-attempts",
        "1",
        "--inline",
        failing,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("script: call_script(\"lib\", \"fail\")"),
        "{err}"
    );
    assert!(
        err.contains("lib: no paper for A4 (line 3, position 3)"),
        "{err}"
    );
    assert!(err.contains("(line 2, position 1)"), "{err}");
    c.assert_nobody_crashed();
}

#[test]
fn a_script_reaches_sql_files_commands_and_child_jobs_and_nothing_outside() {
    let mut c = Cluster::three_running(112);
    let code = "file_write(\"notes/a.txt\", \"hello\");\nfile_append(\"notes/a.txt\", \" world\");\nlet listed = file_list(\"notes\");\nlet rows = sql(\"SELECT count(*) AS n FROM jobs WHERE state IN (?1, ?2)\", [\"assigned\", \"running\"]);\nlet out = run([\"echo\", \"from\", \"echo\"]).output;\nout.trim();\nlet child = submit(#{ script: \"40 + 2\" });\nfile_read(\"notes/a.txt\") + \"|\" + listed[0].name + \"|\" + rows[0].n + \"|\" + out + \"|\" + child.len()";
    let out = c.cli(&["submit", "--wait", "--inline", code]);
    assert_eq!(stdout(&out), "hello world|a.txt|1|from echo|20", "{out:?}");
    let shared = c.conf.parent().unwrap().join("../shared/notes/a.txt");
    assert_eq!(std::fs::read_to_string(shared).unwrap(), "hello world");
    for (bad, why) in [
        ("file_read(\"../escape.txt\")", "must be a relative path"),
        (
            "file_write(\"/tmp/escape.txt\", \"x\")",
            "must be a relative path",
        ),
        ("sql(\"DELETE FROM jobs\")", "only queries that read"),
        ("run([\"/no/such/program\"])", "cannot start"),
        (
            "submit(#{ script: \"1\", colour: \"red\" })",
            "unknown key `colour`",
        ),
    ] {
        let out = c.cli(&["submit", "--wait", "--max-attempts", "1", "--inline", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{bad}: {out:?}"
        );
    }
    let count = all_jobs(&c, "srv1").len();
    assert_eq!(count, 7, "the script, its child and the five refused ones");
    c.assert_nobody_crashed();
}

/// Scripts run in worker processes under OS limits: scripts that grow a
/// map, an array or a string without end end with an error naming
/// `script_memory_mb`, promptly and without a job timeout's help; the
/// instance keeps serving and its memory stays small, and the next script
/// runs as usual. (Before, a map grew past the engine's length limit, which
/// measured only the new item, and a `push` loop ran for the whole job
/// timeout, slowed by the engine measuring the array after each push.)
#[test]
fn a_memory_hungry_script_ends_its_worker_not_its_instance() {
    let timing = format!("{}\n[jobs]\nscript_memory_mb = 128\n", common::TEST_TIMING);
    let mut c = Cluster::with_timing(133, &[("srv1", "server")], &timing);
    c.start_alone("srv1");
    let hungry = [
        "let m = #{}; let i = 0; loop { m[\"k\" + i] = \"v\" + i; i += 1; }",
        "let big = \"\"; big.pad(1000000, \"x\"); let m = #{}; let i = 0; loop { m[\"k\" + i] = big + i; i += 1; }",
        "let a = []; loop { a.push(1); }",
        "let s = \"x\"; loop { s += s; }",
        "let a = []; a.pad(100000000, 0); a.len()",
    ];
    let mut ids = Vec::new();
    for code in hungry {
        let mut spec = script(code);
        spec.max_attempts = 1;
        spec.timeout_ms = 600_000;
        ids.push(submit(&c, "srv1", spec).expect("submit"));
    }
    let started = Instant::now();
    c.wait(120, "the hungry scripts to fail", || {
        ids.iter()
            .all(|id| job(&c, "srv1", id).is_some_and(|j| j.state.is_final()))
    });
    for (id, code) in ids.iter().zip(hungry) {
        let j = job(&c, "srv1", id).unwrap();
        assert_eq!(j.state, JobState::Failed, "{code}: {j:?}");
        let error = j.error.unwrap_or_default();
        assert!(
            error.contains("script_memory_mb = 128 MiB"),
            "{code}: {error}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(110));
    let pid = c.pid("srv1").expect("srv1 runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kb < 200 * 1024, "the instance holds {rss_kb} kB");
    let id = submit(&c, "srv1", script("log(\"after\"); 6 * 7")).expect("submit");
    c.wait(20, "a script after them", || {
        job(&c, "srv1", &id).is_some_and(|j| j.state == JobState::Succeeded)
    });
    assert_eq!(job(&c, "srv1", &id).unwrap().result.as_deref(), Some("42"));
    // A script looping in its worker when the instance is killed -9: the
    // worker ends with its instance, not at the script's timeout.
    let mut spec = script("loop { sleep_ms(100); }");
    spec.timeout_ms = 600_000;
    let id = submit(&c, "srv1", spec).expect("submit");
    c.wait(20, "the loop to run", || {
        job(&c, "srv1", &id).is_some_and(|j| j.state == JobState::Running)
    });
    let workers = children_of(pid);
    assert!(!workers.is_empty(), "srv1 has worker processes");
    c.kill9("srv1");
    let killed = Instant::now();
    while workers
        .iter()
        .any(|w| std::path::Path::new(&format!("/proc/{w}")).exists())
    {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "a script worker outlived its instance"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent is the second field after the name, which ends with ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// On an idle cluster a job is placed in the entry that submits it (one
/// commit, not a submission and then a placement round), through any
/// instance: read from a replica's raft log (127.0.163.x).
#[test]
fn an_idle_cluster_places_a_job_in_the_entry_that_submits_it() {
    let mut c = Cluster::three_running(163);
    let all = ["srv1", "srv2", "srv3"];
    let mut ids = Vec::new();
    for i in 0..12 {
        let via = all[i % 3];
        ids.push(submit(&c, via, script("1")).expect("submit"));
        c.wait(END_S, "the job to end", || {
            job(&c, via, ids.last().unwrap()).is_some_and(|j| j.state == JobState::Succeeded)
        });
    }
    let log = c.data_dir("srv1").join("raft.db");
    let entries = submissions_in(&log);
    // The fast path is taken when the coordinator has applied all it
    // committed (a busy machine, running the other tests, sometimes has
    // an entry in flight: that job is placed by the next round). Without
    // it, none of the twelve is.
    let mut placed = 0;
    for id in &ids {
        let entry = entries
            .get(id)
            .unwrap_or_else(|| panic!("{id} not in the log"));
        if let Command::Placed { assignments, .. } = entry {
            assert_eq!(assignments.len(), 1, "{assignments:?}");
            assert!(all.contains(&assignments[0].instance.as_str()));
            placed += 1;
        }
    }
    assert!(placed >= 6, "only {placed} of 12 placed in their own entry");
    c.assert_nobody_crashed();
}

/// On a busy cluster the slot an ending job frees takes the next queued
/// job in the entry that records the end (one commit, not the end and then
/// a placement round): one slot per instance, a queue of short jobs, the
/// end reports read from a replica's raft log (127.0.196.x). Every job
/// ends once, and no instance ever ran two at a time (each job records
/// its start and end times).
#[test]
fn a_busy_cluster_places_the_next_job_in_the_entry_that_records_an_end() {
    let mut c = Cluster::three_running_with_slots(196, "", 1);
    let count = 30;
    // One batch: the queue is there before the first job ends.
    let jobs: Vec<(String, JobSpec)> = (0..count)
        .map(|_| {
            let id = new_job_id(claro::clock::now_ms(), rand::random());
            (id, script("sleep_ms(20); 1"))
        })
        .collect();
    let ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let batch = Command::JobsSubmit {
        jobs,
        at_ms: claro::clock::now_ms(),
    };
    let answer = c.call("srv2", Request::propose(batch, Some(ids[0].clone())));
    assert!(
        matches!(answer, Ok(Response::Proposed { .. })),
        "{answer:?}"
    );
    c.wait(END_S, "every job to end", || {
        ids.iter()
            .all(|id| job(&c, "srv1", id).is_some_and(|j| j.state == JobState::Succeeded))
    });
    let log = c.data_dir("srv1").join("raft.db");
    let placed: Vec<String> = placed_by_ends(&log);
    assert!(
        placed.len() >= 5,
        "only {} of {count} jobs placed by an end report: {placed:?}",
        placed.len()
    );
    assert!(placed.iter().all(|id| ids.contains(id)), "{placed:?}");
    // One slot each: an instance's runs never overlap.
    let jobs: Vec<Job> = ids.iter().map(|id| job(&c, "srv1", id).unwrap()).collect();
    for a in &jobs {
        for b in jobs
            .iter()
            .filter(|b| b.id != a.id && b.instance == a.instance)
        {
            let (a0, a1) = (a.assigned_ms.unwrap(), a.finished_ms.unwrap());
            let (b0, b1) = (b.assigned_ms.unwrap(), b.finished_ms.unwrap());
            assert!(
                a1 <= b0 || b1 <= a0,
                "{} and {} overlap on {:?}",
                a.id,
                b.id,
                a.instance
            );
        }
    }
    c.assert_nobody_crashed();
}

/// A job read with `wait_ms` (what `claro wait`, `submit --wait` and `run`
/// send) is held until the job ends on the instance asked: an answer
/// before that is never early (a job not yet ended is answered only when
/// the hold ran out), and a hold never outlasts `JOB_WAIT_MS_MAX`. Many at
/// once are bounded: past `JOB_WAITS_MAX` held reads the rest are answered
/// at once, and the instance keeps answering (127.0.197.x).
#[test]
fn a_held_job_read_answers_when_the_job_ends_and_holds_are_bounded() {
    use claro::proto::JOB_WAIT_MS_MAX;
    let mut c = Cluster::three_running(197);
    let held = |c: &Cluster, via: &str, id: &str, wait_ms: u64| {
        let asked = Instant::now();
        let req = Request::Job {
            id: id.into(),
            stale: false,
            wait_ms,
        };
        let answer = c.call(via, req);
        (answer, asked.elapsed())
    };
    for _ in 0..3 {
        let id = submit(&c, "srv1", script("sleep_ms(300); 1")).expect("submit");
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls <= 20, "job {id} never ended");
            // Ten times the hold asked for: it is capped.
            let (answer, took) = held(&c, "srv2", &id, JOB_WAIT_MS_MAX * 10);
            let Ok(Response::Job { job, .. }) = answer else {
                panic!("{answer:?}")
            };
            // Acknowledged before the read was asked: it is in the answer
            // (the read index is confirmed before the hold).
            assert!(job.is_some(), "a held read on srv2 missed job {id}");
            let state = job.map(|j| j.state);
            if state == Some(JobState::Succeeded) {
                break;
            }
            assert!(
                took >= Duration::from_millis(JOB_WAIT_MS_MAX),
                "answered {state:?} after {took:?}, before the job ended and before the hold ran out"
            );
            assert!(
                took < Duration::from_millis(JOB_WAIT_MS_MAX * 5),
                "{took:?}"
            );
        }
    }
    // A bad id is refused at once, held or not.
    let (answer, _) = held(&c, "srv3", "../nope", 500);
    assert!(matches!(answer, Ok(Response::Error { .. })), "{answer:?}");

    // Twice as many holds as an instance keeps, for jobs that do not
    // exist: every one is answered (no job), those past the limit at once.
    let count = 2 * 64;
    let fast = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..count {
            scope.spawn(|| {
                let id = new_job_id(claro::clock::now_ms(), rand::random());
                let (answer, took) = held(&c, "srv3", &id, JOB_WAIT_MS_MAX);
                assert!(
                    matches!(answer, Ok(Response::Job { job: None, .. })),
                    "{answer:?}"
                );
                if took < Duration::from_millis(JOB_WAIT_MS_MAX) {
                    fast.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let fast = fast.into_inner();
    assert!(
        fast >= count / 4,
        "only {fast} of {count} held reads answered at once past the limit"
    );
    assert!(c.status("srv3").is_some(), "srv3 stopped answering");
    c.assert_nobody_crashed();

    // Cut off from every other voter, a held read says so promptly; it
    // never answers from a replica that may miss acknowledged writes.
    let id = submit(&c, "srv1", script("sleep_ms(60000); 1")).expect("submit");
    c.kill9("srv1");
    c.kill9("srv2");
    let (answer, took) = held(&c, "srv3", &id, JOB_WAIT_MS_MAX);
    assert!(
        matches!(answer, Ok(Response::Unavailable { .. })),
        "{answer:?}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// `claro wait` holds its read on whichever instance answered first; the
/// coordinator is killed -9 while it waits (perhaps the very instance that
/// holds the read, perhaps the one whose read index the hold's answer
/// needs). The wait still ends with the job's result, exit 0, within a
/// bounded time (127.0.198.x).
#[test]
fn claro_wait_outlives_a_coordinator_killed_while_it_holds_a_read() {
    let mut c = Cluster::three_running(198);
    let coordinator = c
        .status("srv1")
        .and_then(|s| s.coordinator)
        .expect("a coordinator");
    let id = submit(&c, "srv1", script("sleep_ms(2500); 7")).expect("submit");
    let started = Instant::now();
    let waiter = c.cli_spawn(&["wait", &id]);
    std::thread::sleep(Duration::from_millis(1200));
    c.kill9(&coordinator);
    let out = waiter.wait_with_output().expect("claro wait ends");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "7\n");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "claro wait took {:?}",
        started.elapsed()
    );
    eprintln!(
        "claro wait across a coordinator kill -9: {:?} for a 2.5 s job",
        started.elapsed()
    );
    // The killed one back, then another killed: `submit --wait` through
    // the two left.
    c.start(&coordinator);
    c.wait(
        END_S,
        "the restarted server to be a synchronized voter",
        || {
            c.status(&coordinator)
                .is_some_and(|s| s.servers.iter().all(|v| v.synchronized))
        },
    );
    let now_coordinating = c.status(&coordinator).and_then(|s| s.coordinator);
    let follower = ["srv1", "srv2", "srv3"]
        .into_iter()
        .find(|n| Some(n.to_string()) != now_coordinating)
        .unwrap();
    c.kill9(follower);
    let started = Instant::now();
    let out = c.cli(&["submit", "--wait", "--inline", "sleep_ms(100); 8"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "8\n");
    eprintln!(
        "submit --wait of a 100 ms job with one of three servers killed: {:?}",
        started.elapsed()
    );
}

/// The jobs placed by end reports (`Placed` around `JobsFinished`) in a
/// replica's raft log.
fn placed_by_ends(raft_db: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for command in logged_writes(raft_db) {
        if let Command::Placed {
            submission,
            assignments,
            ..
        } = command
        {
            if matches!(*submission, Command::JobsFinished { .. }) {
                out.extend(assignments.into_iter().map(|a| a.id));
            }
        }
    }
    out
}

/// The submissions in a replica's raft log, by job id: the command that
/// made each job (a plain or a placed submission), request id unwrapped.
fn submissions_in(raft_db: &std::path::Path) -> HashMap<String, Command> {
    let mut out = HashMap::new();
    for command in logged_writes(raft_db) {
        if let Some(id) = command.submitted_ids() {
            out.insert(id.to_string(), command);
        }
    }
    out
}

/// The writes in a replica's raft log, in order, request ids unwrapped.
fn logged_writes(raft_db: &std::path::Path) -> Vec<Command> {
    use protobuf::Message as _;
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(raft_db, flags).expect("raft.db opens");
    let mut stmt = conn
        .prepare("SELECT entry FROM entries ORDER BY idx")
        .unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    let mut out = Vec::new();
    for bytes in rows {
        let entry = raft::eraftpb::Entry::parse_from_bytes(&bytes.unwrap()).unwrap();
        if let Ok(Command::Once { command, .. }) = Command::decode(&entry.data) {
            out.push(*command);
        }
    }
    out
}

/// Once a reproduction: a script that logged and reported progress showed
/// nothing until it ended. Now a running job's log and progress come live
/// from the instance running it, asked through any other; `claro wait`
/// streams the log to stderr and `claro run` to stdout while the job runs
/// (127.0.165.x).
#[test]
fn a_running_job_s_log_and_progress_are_followed_live_from_any_instance() {
    use std::io::BufRead as _;
    let mut c = Cluster::three_running(165);
    let code = "log(\"step 1\"); progress(40); sleep_ms(4000); log(\"step 2\"); 7";
    let id = submit(&c, "srv1", script(code)).expect("submit");
    c.wait(END_S, "the job to run", || {
        job(&c, "srv1", &id).is_some_and(|j| j.state == JobState::Running)
    });
    let on = job(&c, "srv1", &id).unwrap().instance.unwrap();
    let via = ["srv1", "srv2", "srv3"]
        .into_iter()
        .find(|n| *n != on)
        .unwrap();
    let live = |after_bytes| {
        let req = Request::Live {
            id: id.clone(),
            after_bytes,
            forwarded: false,
        };
        match c.call(via, req) {
            Ok(Response::Live(view)) => view,
            other => panic!("{other:?}"),
        }
    };
    let view = live(0).expect("the running job's view, through another instance");
    assert_eq!(view.instance, on);
    assert_eq!(view.progress, Some(40));
    assert!(view.log.starts_with("step 1\n"), "{view:?}");
    assert_eq!(live(view.next_bytes).map(|v| v.log), Some(String::new()));

    // `claro wait` shows the log on stderr while the job runs.
    let mut wait = c.cli_spawn(&["wait", &id]);
    let mut err = std::io::BufReader::new(wait.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("step 1") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "stderr ended");
    }
    assert_eq!(job(&c, "srv1", &id).unwrap().state, JobState::Running);
    let out = wait.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "7\n");

    // `claro run` prints the log on stdout as it comes, then the result.
    let file = c.dir.path().join("steps.rhai");
    std::fs::write(&file, code).unwrap();
    let started = Instant::now();
    let mut run = c.cli_spawn(&["run", file.to_str().unwrap()]);
    let mut out = std::io::BufReader::new(run.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first_at = started.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(run.wait().unwrap().success());
    let ended_at = started.elapsed();
    assert_eq!(first, "step 1\n");
    assert_eq!(rest, "[progress 40%]\nstep 2\n7\n");
    assert!(
        ended_at > first_at + Duration::from_secs(2),
        "the first line came {first_at:?} after the start, the end {ended_at:?}"
    );
    c.assert_nobody_crashed();
}
