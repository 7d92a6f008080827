//! The processes jobs start, through a real server. They end with their
//! job: a timed-out command, a cancelled one, a script's timed-out `run`
//! and a background child are gone, the whole process group, when the job
//! ends (127.0.140.x). A hotfolder's file name never reaches a shell as
//! code: such a template is refused unless knowingly allowed, and the
//! action gets the values in its environment (127.0.141.x).

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

/// One cluster at a time: the timings measured here are not a contest
/// for the CPU between the tests of this file.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn state(c: &Cluster, id: &str) -> String {
    let out = c.cli(&["job", id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_jobs_processes_end_with_the_job() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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

#[test]
fn file_names_reach_a_shell_only_as_data() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let timing = format!("{}hotfolder_poll_ms = 200\n", common::TEST_TIMING);
    let c = Cluster::running_prepared(141, 1, &timing, 2, |_| {});
    let root = c.conf.parent().unwrap().join("../shared");

    // The unsafe form is refused, naming the placeholder and the safe forms.
    let unsafe_form = "sh -c 'echo {name} > {output_dir}/name.txt'";
    let out = c.cli(&["hotfolder", "add", "bad", "--command", unsafe_form]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    for part in [
        "`{name}`",
        "as code",
        "sh -c 'echo \"$1\"' sh {name}",
        "CLARO_NAME",
    ] {
        assert!(stderr.contains(part), "no {part} in {stderr}");
    }
    // Knowingly allowed: accepted, with a warning.
    let out = c.cli(&[
        "hotfolder",
        "add",
        "risky",
        "--command",
        unsafe_form,
        "--allow-shell",
        "--stable-ms",
        "200",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "{out:?}"
    );
    // A new template given to `set` is checked again.
    let out = c.cli(&["hotfolder", "set", "risky", "--command", unsafe_form]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The safe forms: the value as an argument, or from the environment.
    let by_env =
        "sh -c 'printf %s \"$CLARO_NAME|$CLARO_STEM|$CLARO_EXT\" > \"$CLARO_OUTPUT_DIR/name.txt\"'";
    let by_arg = "sh -c 'printf %s \"$1\" > name.txt' sh {name}";
    for (name, template) in [("env", by_env), ("arg", by_arg)] {
        let out = c.cli(&[
            "hotfolder",
            "add",
            name,
            "--command",
            template,
            "--stable-ms",
            "200",
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    c.wait(10, "the hotfolders' folders", || {
        ["env", "arg", "risky"]
            .iter()
            .all(|n| root.join(n).join("in").is_dir())
    });
    let evil = "$(touch pwned).txt";
    for name in ["env", "arg", "risky"] {
        std::fs::write(root.join(name).join("in").join(evil), "x").unwrap();
    }
    let env_out = root.join("env/out/name.txt");
    let arg_out = root.join("arg/out/name.txt");
    let risky_out = root.join("risky/out/name.txt");
    c.wait(30, "the outputs", || {
        env_out.exists() && arg_out.exists() && risky_out.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&env_out).unwrap(),
        "$(touch pwned).txt|$(touch pwned)|txt"
    );
    assert_eq!(std::fs::read_to_string(&arg_out).unwrap(), evil);
    // What the allowed template does with that name: it runs `touch` (in
    // its output folder, so `pwned` is published).
    let pwned: Vec<_> = walk(&root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "pwned"))
        .collect();
    assert_eq!(pwned, [root.join("risky/out/pwned")]);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
