//! The processes jobs start, through a real server. They end with their
//! job: a timed-out command, a cancelled one, a script's timed-out `run`
//! and a background child are gone, the whole process group, when the job
//! ends (127.0.140.x). A hotfolder's file name never reaches a shell as
//! code: such a template is refused unless knowingly allowed, and the
//! action gets the values in its environment (127.0.141.x). With `[jobs]
//! run_as`, every process a job starts runs as that user: commands,
//! hotfolder actions, `run` children and script workers (127.0.150.x).

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

/// `id -u NAME` and `id -G NAME`: the uid and groups a process of `name` has.
fn ids_of(name: &str) -> (String, String) {
    let id = |flag: &str| {
        let out = std::process::Command::new("id")
            .args([flag, name])
            .output()
            .unwrap();
        assert!(out.status.success(), "id {flag} {name}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    (id("-u"), id("-G"))
}

/// A job's log, once it has ended.
fn log_of(c: &Cluster, id: &str) -> String {
    c.wait(30, "the job to end", || {
        ["succeeded", "failed"].contains(&state(c, id).as_str())
    });
    let out = c.cli(&["job", id, "--log", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    v["log"].as_str().unwrap_or("").trim().to_string()
}

/// The children of `parent` that are script workers.
fn script_workers_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"));
        let worker = cmdline
            .split(|b| *b == 0)
            .any(|a| a == claro::node::SCRIPT_WORKER_ARG.as_bytes());
        if worker && ppid.map(str::trim) == Some(&parent.to_string()) {
            found.push(pid);
        }
    }
    found
}

/// The four uids (real, effective, saved, filesystem) of process `pid`.
fn uids_of(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// What `claro serve` does with `config`: its exit status (`None`: it was
/// still running after 30 s, and was killed) and what it wrote.
fn serve_once(config: &std::path::Path) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(config)
        .args(["serve", "--name", "srv1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

/// A config beside `c`'s whose `[jobs]` table says `run_as = VALUE`.
fn config_with_run_as(c: &Cluster, file: &str, value: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let path = c.conf.with_file_name(file);
    std::fs::write(&path, format!("{text}\n[jobs]\nrun_as = {value}\n")).unwrap();
    path
}

#[test]
fn jobs_run_as_the_run_as_user() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let timing = format!("{}hotfolder_poll_ms = 200\n", common::TEST_TIMING);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root can switch users: serve must refuse run_as, not ignore it.
        let c = Cluster::with_timing(150, &[("srv1", "server")], &timing);
        let conf = config_with_run_as(&c, "RunAs.conf", "\"nobody\"");
        let (code, err) = serve_once(&conf);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("RunAs.conf:") && err.contains("jobs.run_as") && err.contains("not root"),
            "{err}"
        );
        // The rest (jobs as `nobody`) needs root; .ci/run names `root`
        // unavailable where it does not run as root.
        common::skip(
            "jobs_run_as_the_run_as_user",
            "root",
            "only root can switch users: only the refusal of run_as was checked",
        );
        return;
    }
    let (nobody_uid, nobody_groups) = ids_of("nobody");
    let mut c = Cluster::running_prepared(150, 1, &timing, 2, |c| {
        // The user must reach the shared root (the test's folder is 0700).
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(c.dir.path(), open).unwrap();
    });

    // As root without run_as, the status says that jobs run as root.
    let status = c.status("srv1").expect("status");
    let note = status.servers[0].note.clone();
    assert_eq!(note.as_deref(), Some(claro::node::JOBS_AS_ROOT_NOTE));

    // Unknown user: refused, naming the key, the file and the reason.
    let conf = config_with_run_as(&c, "Unknown.conf", "\"no-such-user-claro\"");
    let (code, err) = serve_once(&conf);
    assert_eq!(code, Some(2), "{err}");
    for part in [
        "Unknown.conf:",
        "jobs.run_as",
        "no user `no-such-user-claro`",
    ] {
        assert!(err.contains(part), "no {part} in {err}");
    }

    // Restarted with run_as = "nobody".
    c.kill9("srv1");
    let text = std::fs::read_to_string(&c.conf).unwrap();
    std::fs::write(&c.conf, format!("{text}\n[jobs]\nrun_as = \"nobody\"\n")).unwrap();
    c.start_alone("srv1");
    let status = c.status("srv1").expect("status");
    assert_eq!(status.servers[0].note, None);

    // A command job: nobody's uid and groups, and none of root's.
    for (flag, want) in [("-u", &nobody_uid), ("-G", &nobody_groups)] {
        let out = c.cli(&["submit", "--command", "--", "id", flag]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(&log_of(&c, &id), want, "id {flag}");
    }

    // A script: its `run` child is nobody, its file functions (done by the
    // instance) still work, and its worker process is nobody.
    let code = "let out = run([\"id\", \"-u\"]).output;\nout.trim();\nfile_write(\"run_as/a.txt\", \"hi\");\nout + \"|\" + file_read(\"run_as/a.txt\")";
    let out = c.cli(&["submit", "--wait", "--inline", code]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(text, format!("{nobody_uid}|hi"), "{out:?}");
    let serve = c.pid("srv1").unwrap();
    let workers = script_workers_of(serve);
    assert!(!workers.is_empty(), "no script worker under {serve}");
    for pid in workers {
        assert_eq!(uids_of(pid), vec![nobody_uid.clone(); 4], "worker {pid}");
    }

    // A hotfolder action writes its outputs as nobody, into its staging folder.
    let action = "sh -c 'id -u > \"$CLARO_OUTPUT_DIR/uid.txt\"'";
    let out = c.cli(&[
        "hotfolder",
        "add",
        "who",
        "--command",
        action,
        "--stable-ms",
        "200",
    ]);
    assert!(out.status.success(), "{out:?}");
    let root = c.conf.parent().unwrap().join("../shared");
    c.wait(10, "the hotfolder's folders", || {
        root.join("who/in").is_dir()
    });
    std::fs::write(root.join("who/in/a.txt"), "x").unwrap();
    let made = root.join("who/out/uid.txt");
    c.wait(30, "the action's output", || made.exists());
    assert_eq!(std::fs::read_to_string(&made).unwrap().trim(), nobody_uid);
    c.assert_nobody_crashed();
}
