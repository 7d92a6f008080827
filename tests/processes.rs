//! Processes end with their job, through a real server: a timed-out
//! command, a cancelled one, a script's timed-out `run` and a background
//! child are gone, the whole process group, when the job ends
//! (127.0.140.x).

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

/// Live processes whose command line holds `marker` as one argument.
fn alive_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()) {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

fn state(c: &Cluster, id: &str) -> String {
    let out = c.cli(&["job", id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_jobs_processes_end_with_the_job() {
    let c = Cluster::running_prepared(140, 1, common::TEST_TIMING, 1, |_| {});

    // A timeout: `sh` and its `sleep` are killed together, at once.
    let started = Instant::now();
    let out = c.cli(&[
        "submit",
        "--wait",
        "--max-attempts",
        "1",
        "--timeout",
        "2s",
        "--command",
        "--",
        "sh",
        "-c",
        "sleep 20.0141; true",
    ]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("timed out after 2000 ms") && stderr.contains("process group was killed"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(alive_with("20.0141"), Vec::<String>::new());

    // A cancel: the processes are gone before the slot takes the next job.
    let out = c.cli(&[
        "submit",
        "--command",
        "--",
        "sh",
        "-c",
        "sleep 20.0142; true",
    ]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    c.wait(20, "the job's sleep to run", || {
        !alive_with("20.0142").is_empty()
    });
    let out = c.cli(&["submit", "--command", "--", "sh", "-c", "echo next"]);
    let next = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = c.cli(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    c.wait(5, "the next job to succeed", || {
        state(&c, &next) == "succeeded"
    });
    assert_eq!(alive_with("20.0142"), Vec::<String>::new());
    assert_eq!(state(&c, &id), "cancelled");

    // A script's `run` ends at its own timeout, with its whole group.
    let started = Instant::now();
    let code = "run([\"sh\", \"-c\", \"sleep 25.0144; true\"], 1000)";
    let out = c.cli(&["submit", "--wait", "--max-attempts", "1", "--inline", code]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("timed out after 1000 ms"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(alive_with("25.0144"), Vec::<String>::new());

    // A background child does not outlive its job.
    let started = Instant::now();
    let out = c.cli(&[
        "submit",
        "--wait",
        "--command",
        "--",
        "sh",
        "-c",
        "sleep 30.0143 & echo hi",
    ]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(alive_with("30.0143"), Vec::<String>::new());
}
