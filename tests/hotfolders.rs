//! Hotfolders with real processes sharing one folder: every dropped file
//! processed once through a kill -9, nothing taken before it is complete,
//! rsync's temporary names ignored, and the README's quickstart example.
//! Bad input on the share: a full or read-only file system, a file of
//! several GB, `in/` removed, files deleted or replaced while waiting.
//! An input changed while its action ran is never a success. Real
//! processes on 127.0.113.x-127.0.118.x and 127.0.162.x, port 7900.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fill, Cluster, Tmpfs, BIN, TEST_TIMING};

/// A script action that copies the file upper-cased, keeping its name.
const UPPER: &str = "let t = file_read(FILE.input);\nfile_write(FILE.output_dir + \"/\" + FILE.name, t.to_upper());\n";

/// A three-server cluster whose config declares hotfolder `hf` with the
/// `UPPER` action (seeded when the cluster bootstraps).
fn cluster_with_hotfolder(net: u8, stable_ms: u64) -> (Cluster, PathBuf) {
    let timing = format!(
        "{TEST_TIMING}hotfolder_poll_ms = 200\n\n[hotfolder.hf]\nscript = \"upper.rhai\"\nstable_ms = {stable_ms}\nmax_attempts = 5\n"
    );
    let c = Cluster::three_running_prepared(net, &timing, 4, |c| {
        std::fs::write(c.conf.with_file_name("upper.rhai"), UPPER).unwrap();
    });
    let hf = c.conf.parent().unwrap().join("../shared/hf");
    c.wait(10, "the hotfolder's folders", || hf.join("in").is_dir());
    (c, hf)
}

/// Every file under `dir` (relative paths), recursively, but the result
/// tickets (`tickets`).
fn files(dir: &Path) -> Vec<String> {
    let mut all = every_file(dir);
    all.retain(|f| !f.ends_with(".result.json"));
    all
}

/// The result tickets under `dir`, parsed.
fn tickets(dir: &Path) -> Vec<serde_json::Value> {
    every_file(dir)
        .iter()
        .filter(|f| f.ends_with(".result.json"))
        .map(|f| serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap())
        .collect()
}

fn every_file(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

fn hotfolder_list(c: &Cluster) -> serde_json::Value {
    let out = c.cli(&["hotfolder", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_thousand_files_through_a_kill_9_are_each_processed_once() {
    let (mut c, hf) = cluster_with_hotfolder(113, 300);
    let count = 1000;
    let mut names = HashSet::new();
    for i in 0..count {
        // Names users make: spaces, Unicode, a leading dash, subfolders.
        let name = match i % 4 {
            0 => format!("file {i}.txt"),
            1 => format!("-{i}.txt"),
            2 => format!("ünï{i}.txt"),
            _ => format!("sub/{i}.txt"),
        };
        let path = hf.join("in").join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("content {i}")).unwrap();
        names.insert(name);
    }
    let out = hf.join("out");
    c.wait(60, "a third of the files processed", || {
        files(&out).len() >= count / 3
    });
    c.kill9("srv2");
    c.wait(120, "every file published", || {
        files(&hf.join("done")).len() == count && files(&out).len() == count
    });
    let outputs: HashSet<String> = files(&out).into_iter().collect();
    assert_eq!(
        outputs, names,
        "each output once, under its own name (no `(1)` twins)"
    );
    let done: HashSet<String> = files(&hf.join("done")).into_iter().collect();
    assert_eq!(done, names);
    // One result ticket per file, each of a job of its own, succeeded.
    let tickets = tickets(&out);
    assert_eq!(tickets.len(), count);
    let jobs: HashSet<&str> = tickets.iter().filter_map(|t| t["job"].as_str()).collect();
    assert_eq!(jobs.len(), count, "a ticket per job");
    let inputs: HashSet<String> = tickets
        .iter()
        .map(|t| t["input"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inputs, names);
    assert!(tickets.iter().all(|t| t["outcome"] == "succeeded"));
    assert!(files(&hf.join("in")).is_empty());
    assert!(
        files(&hf.join("error")).is_empty(),
        "{:?}",
        files(&hf.join("error"))
    );
    for name in names.iter().take(20) {
        let i: String = name.chars().filter(char::is_ascii_digit).collect();
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        assert_eq!(text, format!("CONTENT {i}"), "{name}");
    }
    c.wait(10, "the working area emptied", || {
        files(&hf.join(".claro")).is_empty()
    });
    // The jobs: one succeeded job per file, none twice.
    let list = c.cli(&["jobs", "--hotfolder", "hf", "--limit", "1000", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), count);
    let inputs: HashSet<&str> = jobs.iter().map(|j| j["input"].as_str().unwrap()).collect();
    assert_eq!(inputs.len(), count);
    assert!(jobs
        .iter()
        .all(|j| j["state"] == "succeeded" && j["kind"] == "hotfolder"));
    let listed = hotfolder_list(&c);
    assert_eq!(listed[0]["name"], "hf");
    assert_eq!(listed[0]["done_last_hour"], count as u64);
    assert_eq!(listed[0]["waiting"], 0);
    c.assert_nobody_crashed();
}

#[test]
fn a_file_written_slowly_or_under_a_temporary_name_is_taken_only_when_complete() {
    let (mut c, hf) = cluster_with_hotfolder(114, 1500);
    let inbox = hf.join("in");
    // rsync: the data arrives under a hidden temporary name, then one rename.
    let tmp = inbox.join(".report.txt.Ab12Cd");
    std::fs::write(&tmp, "rsync part 1 ").unwrap();
    // A slow copy: the file grows for 10 s, a piece every 400 ms.
    let slow = inbox.join("slow.txt");
    let started = Instant::now();
    let mut expected = String::new();
    let mut piece = 0;
    while started.elapsed() < Duration::from_secs(10) {
        use std::io::Write;
        let text = format!("piece {piece} ");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slow)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        expected.push_str(&text);
        piece += 1;
        if piece == 5 {
            let mut t = std::fs::OpenOptions::new().append(true).open(&tmp).unwrap();
            t.write_all(b"part 2").unwrap();
            std::fs::rename(&tmp, inbox.join("report.txt")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !hf.join("out/slow.txt").exists(),
            "taken while still being written"
        );
    }
    c.wait(30, "both files processed", || {
        hf.join("out/slow.txt").exists() && hf.join("out/report.txt").exists()
    });
    assert_eq!(
        std::fs::read_to_string(hf.join("out/slow.txt")).unwrap(),
        expected.to_uppercase()
    );
    assert_eq!(
        std::fs::read_to_string(hf.join("out/report.txt")).unwrap(),
        "RSYNC PART 1 PART 2"
    );
    let list = c.cli(&["jobs", "--hotfolder", "hf", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut inputs: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["input"].as_str().unwrap())
        .collect();
    inputs.sort();
    assert_eq!(
        inputs,
        ["report.txt", "slow.txt"],
        "one job each, the temporary name never"
    );
    c.assert_nobody_crashed();
}

#[test]
fn failures_go_to_error_with_the_reason_and_bad_definitions_are_refused() {
    let (mut c, hf) = cluster_with_hotfolder(115, 300);
    let root = hf.parent().unwrap().to_path_buf();
    // A command that fails, and one that hangs past its timeout.
    let out = c.cli(&[
        "hotfolder",
        "add",
        "fails",
        "--command",
        "sh -c 'echo no ink >&2; exit 3' sh {input}",
        "--stable-ms",
        "200",
        "--max-attempts",
        "2",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = c.cli(&[
        "hotfolder",
        "add",
        "hangs",
        "--command",
        "sleep 60",
        "--stable-ms",
        "200",
        "--max-attempts",
        "1",
        "--timeout-s",
        "1",
    ]);
    assert!(out.status.success(), "{out:?}");
    for bad in [
        vec!["hotfolder", "add", "fails", "--command", "true"],
        vec![
            "hotfolder",
            "add",
            "x",
            "--command",
            "cp {inptu} {output_dir}",
        ],
        vec!["hotfolder", "add", "../up", "--command", "true"],
        vec!["hotfolder", "add", "x", "--command", "a 'b"],
        vec!["hotfolder", "add", "x"],
        vec![
            "hotfolder",
            "add",
            "x",
            "--command",
            "true",
            "--stable-ms",
            "5",
        ],
        vec![
            "hotfolder",
            "add",
            "x",
            "--command",
            "true",
            "--include",
            "[",
        ],
    ] {
        let out = c.cli(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
    assert!(c.cli(&["hotfolder", "pause", "nothere"]).status.code() == Some(1));
    c.wait(10, "the new hotfolders' folders", || {
        root.join("hangs/in").is_dir()
    });
    std::fs::write(root.join("fails/in/a b.pdf"), "x").unwrap();
    std::fs::write(root.join("hangs/in/big.tif"), "y").unwrap();
    std::fs::write(root.join("fails/in/empty.pdf"), "").unwrap();
    c.wait(60, "both failures published", || {
        root.join("fails/error/a b.pdf.error.txt").exists()
            && root.join("fails/error/empty.pdf").exists()
            && root.join("hangs/error/big.tif.error.txt").exists()
    });
    let reason = std::fs::read_to_string(root.join("fails/error/a b.pdf.error.txt")).unwrap();
    assert!(
        reason.contains("attempt 2 on") && reason.contains("exit status: 3"),
        "{reason}"
    );
    assert!(
        reason.contains("no ink"),
        "the log is kept with the reason: {reason}"
    );
    let reason = std::fs::read_to_string(root.join("hangs/error/big.tif.error.txt")).unwrap();
    assert!(reason.contains("timed out after 1000 ms"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(root.join("fails/error/a b.pdf")).unwrap(),
        "x"
    );
    // A paused hotfolder takes nothing; resumed, it does.
    cli_ok(&c, &["hotfolder", "pause", "hf"]);
    std::fs::write(hf.join("in/later.txt"), "later").unwrap();
    // The held file counts as waiting, the same through every instance.
    let row_via = |server: &str| {
        let out = c.cli(&["hotfolder", "list", "--json", "--server", server]);
        assert!(out.status.success(), "{out:?}");
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "hf");
        row.unwrap().clone()
    };
    c.wait(10, "the paused file counted as waiting", || {
        row_via("srv1")["waiting"] == 1
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(hf.join("in/later.txt").exists());
    for server in ["srv1", "srv2", "srv3"] {
        let row = row_via(server);
        assert_eq!(
            (&row["paused"], &row["waiting"]),
            (&true.into(), &1.into()),
            "{server}"
        );
    }
    cli_ok(&c, &["hotfolder", "resume", "hf"]);
    c.wait(20, "the paused file taken after resume", || {
        hf.join("out/later.txt").exists()
    });
    c.wait(10, "nothing waiting once it went through", || {
        row_via("srv2")["waiting"] == 0
    });
    c.assert_nobody_crashed();
}

/// The README's first command: the repository's quickstart config (moved to
/// a test address) with its example hotfolder: a text file dropped into
/// hotfolders/example/in/ comes out upper-cased in out/.
#[test]
fn the_quickstart_example_hotfolder_works() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for folder in ["conf", "examples", "hotfolders/example/in"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    let conf = std::fs::read_to_string(repo.join("conf/ClaroServers.conf")).unwrap();
    assert!(conf.contains("address = \"127.0.0.1\""));
    let conf = conf.replace("address = \"127.0.0.1\"", "address = \"127.0.116.1\"");
    std::fs::write(root.join("conf/ClaroServers.conf"), conf).unwrap();
    std::fs::copy(
        repo.join("examples/uppercase.rhai"),
        root.join("examples/uppercase.rhai"),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let mut server = std::process::Command::new(BIN)
        .arg("serve")
        .current_dir(root)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(
        root.join("hotfolders/example/in/hello.txt"),
        "hello, claro\n",
    )
    .unwrap();
    let output = root.join("hotfolders/example/out/hello.upper.txt");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !output.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&output);
    let _ = server.kill();
    let _ = server.wait();
    let log = std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
    assert_eq!(text.ok().as_deref(), Some("HELLO, CLARO\n"), "{log}");
    assert!(root.join("hotfolders/example/done/hello.txt").exists());
}

fn hotfolder_jobs(c: &Cluster, name: &str) -> Vec<serde_json::Value> {
    let out = c.cli(&["jobs", "--hotfolder", name, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    jobs.as_array().unwrap().clone()
}

/// Runs the CLI and asserts it succeeded, showing its output if not.
fn cli_ok(c: &Cluster, args: &[&str]) {
    let out = c.cli(args);
    assert!(out.status.success(), "claro {args:?}: {out:?}");
}

fn add_hotfolder(c: &Cluster, name: &str, template: &str, extra: &[&str]) {
    let mut args = vec!["hotfolder", "add", name, "--command", template];
    args.extend_from_slice(extra);
    let out = c.cli(&args);
    assert!(out.status.success(), "{out:?}");
}

/// A share that fills up, then turns read-only (a tmpfs mounted on the
/// hotfolder's folder, as root; skipped with a printed reason elsewhere).
/// Jobs fail with the reason, the file stays where it was until it can be
/// moved to `error/`, and a retry once the share is usable processes it.
#[test]
fn a_full_or_read_only_share_fails_jobs_with_the_reason_and_loses_nothing() {
    let (mut c, hf) = cluster_with_hotfolder(117, 300);
    let root = hf.parent().unwrap().join("small");
    let share = match Tmpfs::mount(&root, "2m") {
        Ok(t) => t,
        Err(why) => {
            common::skip(
                "a_full_or_read_only_share_fails_jobs_with_the_reason_and_loses_nothing",
                "tmpfs",
                &format!("cannot mount a small file system: {why}"),
            );
            return;
        }
    };
    let copy = "cp {input} {output_dir}";
    add_hotfolder(
        &c,
        "small",
        copy,
        &["--stable-ms", "200", "--max-attempts", "2"],
    );
    c.wait(10, "the hotfolder's folders", || root.join("in").is_dir());
    // Full: the attempt fails saying so; the file is kept.
    cli_ok(&c, &["hotfolder", "pause", "small"]);
    std::fs::write(root.join("in/a.pdf"), "a").unwrap();
    let filler = fill(&root);
    cli_ok(&c, &["hotfolder", "resume", "small"]);
    let a = failed_job(&c, "a.pdf", "No space left on device");
    assert!(
        files(&root).iter().any(|f| f.ends_with("a.pdf")),
        "{:?}",
        files(&root)
    );
    std::fs::remove_file(filler).unwrap();
    c.wait(
        60,
        "the full disk's failure published once there is room",
        || root.join("error/a.pdf.error.txt").exists(),
    );
    let reason = std::fs::read_to_string(root.join("error/a.pdf.error.txt")).unwrap();
    assert!(reason.contains("No space left on device"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(root.join("error/a.pdf")).unwrap(),
        "a"
    );
    // Read-only: the claim fails, the file stays in in/.
    cli_ok(&c, &["hotfolder", "pause", "small"]);
    std::fs::write(root.join("in/b.pdf"), "b").unwrap();
    share.read_only(true).unwrap();
    cli_ok(&c, &["hotfolder", "resume", "small"]);
    let b = failed_job(&c, "b.pdf", "Read-only file system");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(root.join("in/b.pdf")).unwrap(), "b");
    share.read_only(false).unwrap();
    c.wait(
        60,
        "the failure published once the share is writable",
        || root.join("error/b.pdf.error.txt").exists() && !root.join("in/b.pdf").exists(),
    );
    // Retried, both are processed.
    for id in [&a, &b] {
        let out = c.cli(&["retry", id]);
        assert!(out.status.success(), "{out:?}");
    }
    c.wait(60, "the retried files processed", || {
        ["done/a.pdf", "out/a.pdf", "done/b.pdf", "out/b.pdf"]
            .iter()
            .all(|f| root.join(f).exists())
    });
    assert!(files(&root.join("error")).is_empty());
    // An action that fills the share itself: its partial outputs go, so
    // that the reason can be written beside the file.
    let filling = "sh -c 'head -c 8000000 /dev/zero > \"$0/big\"' {output_dir}";
    let out = c.cli(&["hotfolder", "set", "small", "--command", filling]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(root.join("in/c.pdf"), "c").unwrap();
    c.wait(60, "the filling action's failure published", || {
        root.join("error/c.pdf.error.txt").exists()
    });
    let reason = std::fs::read_to_string(root.join("error/c.pdf.error.txt")).unwrap();
    assert!(reason.contains("No space left on device"), "{reason}");
    c.wait(10, "the working area emptied", || {
        files(&root.join(".claro")).is_empty()
    });
    c.assert_nobody_crashed();
}

/// Waits for the job of `input` to fail; its error or log says `why`.
/// Returns its id.
fn failed_job(c: &Cluster, input: &str, why: &str) -> String {
    let mut id = String::new();
    c.wait(60, "the job failed", || {
        let jobs = hotfolder_jobs(c, "small");
        let job = jobs
            .iter()
            .find(|j| j["input"] == input && j["state"] == "failed");
        if let Some(j) = job {
            id = j["id"].as_str().unwrap().to_string();
        }
        job.is_some()
    });
    let out = c.cli(&["job", &id, "--log", "--json"]);
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = format!("{} {}", job["error"], job["log"]);
    assert!(text.contains(why), "{job}");
    id
}

/// Peak resident memory of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A 5 GiB file (sparse) goes through without claro reading it; an `in/`
/// removed is made again; a file deleted while waiting makes no job, and
/// one replaced while waiting is taken once, as it is at the end.
#[test]
fn a_huge_file_a_vanished_in_folder_and_files_changed_while_waiting() {
    let (mut c, hf) = cluster_with_hotfolder(118, 300);
    let root = hf.parent().unwrap().join("big");
    let size = "sh -c 'wc -c < \"$0\" > \"$1/size.txt\"' {input} {output_dir}";
    add_hotfolder(&c, "big", size, &["--stable-ms", "1500"]);
    c.wait(10, "the hotfolder's folders", || root.join("in").is_dir());
    let huge_bytes: u64 = 5 << 30;
    std::fs::create_dir_all(root.join("in/sub")).unwrap();
    let f = std::fs::File::create(root.join("in/sub/huge.tif")).unwrap();
    f.set_len(huge_bytes).unwrap();
    drop(f);
    // Deleted while waiting; replaced while waiting (same size, a new file).
    std::fs::write(root.join("in/gone.pdf"), "gone").unwrap();
    std::fs::write(root.join("in/w.pdf"), "old").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    std::fs::remove_file(root.join("in/gone.pdf")).unwrap();
    std::fs::write(root.join("in/.w.pdf.tmp"), "new").unwrap();
    std::fs::rename(root.join("in/.w.pdf.tmp"), root.join("in/w.pdf")).unwrap();
    c.wait(60, "the huge file and the replaced one processed", || {
        root.join("done/sub/huge.tif").exists() && root.join("done/w.pdf").exists()
    });
    let counted = std::fs::read_to_string(root.join("out/sub/size.txt")).unwrap();
    assert_eq!(counted.trim(), huge_bytes.to_string());
    assert_eq!(
        std::fs::metadata(root.join("done/sub/huge.tif"))
            .unwrap()
            .len(),
        huge_bytes
    );
    assert_eq!(
        std::fs::read_to_string(root.join("done/w.pdf")).unwrap(),
        "new"
    );
    let jobs = hotfolder_jobs(&c, "big");
    let mut inputs: Vec<&str> = jobs.iter().map(|j| j["input"].as_str().unwrap()).collect();
    inputs.sort();
    assert_eq!(
        inputs,
        ["sub/huge.tif", "w.pdf"],
        "one job each, none for gone.pdf"
    );
    for name in c.names.clone() {
        let pid = c.pid(&name).unwrap();
        let kib = peak_rss_kib(pid);
        assert!(
            kib < 256 * 1024,
            "{name} peaked at {kib} KiB: was the file read?"
        );
    }
    // `in/` removed: made again, and files dropped into it are taken.
    std::fs::remove_dir_all(root.join("in")).unwrap();
    c.wait(10, "in/ made again", || root.join("in").is_dir());
    std::fs::write(root.join("in/after.pdf"), "after").unwrap();
    c.wait(30, "a file in the new in/ processed", || {
        root.join("done/after.pdf").exists()
    });
    c.assert_nobody_crashed();
}

/// Once a reproduction: a writer that went on after the file was taken
/// (it paused longer than `stable_ms`) changed the input under its action,
/// and the job said `succeeded` with an output of part of the file. Now the
/// input is checked after the action: the attempt fails naming the change,
/// nothing reaches `out/`, and the whole file waits in `error/` with the
/// reason (127.0.162.x).
#[test]
fn an_input_changed_while_processing_is_never_a_success() {
    let (mut c, hf) = cluster_with_hotfolder(162, 300);
    let root = hf.parent().unwrap().to_path_buf();
    // The action stands in for the late writer: it copies the input, then
    // the input grows.
    add_hotfolder(
        &c,
        "grows",
        "sh -c 'cp \"$CLARO_INPUT\" \"$CLARO_OUTPUT_DIR/\"; echo more >> \"$CLARO_INPUT\"'",
        &["--stable-ms", "200", "--max-attempts", "1"],
    );
    // `hotfolder add` says "drop files into" once that folder exists.
    let dir = root.join("grows");
    assert!(dir.join("in").is_dir(), "in/ exists when add returns");
    std::fs::write(dir.join("in/part.pdf"), b"the first part\n").unwrap();
    let mut job = serde_json::Value::Null;
    c.wait(60, "the job to end", || {
        job = hotfolder_jobs(&c, "grows")
            .into_iter()
            .find(|j| j["input"] == "part.pdf")
            .unwrap_or_default();
        job["state"] == "failed" || job["state"] == "succeeded"
    });
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("input changed while processing"),
        "{job}"
    );
    c.wait(30, "the input in error/ with its reason", || {
        dir.join("error/part.pdf.error.txt").is_file()
    });
    let reason = std::fs::read_to_string(dir.join("error/part.pdf.error.txt")).unwrap();
    assert!(
        reason.contains("input changed while processing"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("error/part.pdf")).unwrap(),
        "the first part\nmore\n"
    );
    assert!(files(&dir.join("out")).is_empty(), "no output of a part");
    c.assert_nobody_crashed();
}

/// Once reproductions: a writer that paused longer than `stable_ms` had its
/// file taken mid-write. Now a file a local process holds open for writing
/// is not taken until it closes it (then the whole file is processed once);
/// and a writer that opens the file anew for each piece, whose next piece
/// came while the part taken was processed, ends with both parts in
/// `error/` with the reason, never a success of a part (127.0.164.x).
#[test]
fn a_file_still_being_written_is_never_processed_in_part() {
    let (mut c, hf) = cluster_with_hotfolder(164, 300);
    let root = hf.parent().unwrap().to_path_buf();
    let copy = "cp \"$CLARO_INPUT\" \"$CLARO_OUTPUT_DIR/\"";
    add_hotfolder(
        &c,
        "held",
        &format!("sh -c '{copy}'"),
        &["--stable-ms", "200"],
    );
    let held = root.join("held");
    // The writer holds the file open, silent for far longer than stable_ms.
    let path = held.join("in/held.pdf");
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>>'{}'; echo first >&3; echo ready; read line; echo second >&3",
            path.display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    let out = writer.stdout.as_mut().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready).unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(path.is_file(), "taken while its writer held it open");
    assert!(hotfolder_jobs(&c, "held").is_empty());
    drop(writer.stdin.take());
    writer.wait().unwrap();
    c.wait(30, "the whole file processed", || {
        held.join("done/held.pdf").is_file()
    });
    assert_eq!(
        std::fs::read_to_string(held.join("out/held.pdf")).unwrap(),
        "first\nsecond\n"
    );

    // The writer that reopens: its next piece comes while the action (2 s)
    // still runs on the part taken.
    add_hotfolder(
        &c,
        "pieces",
        &format!("sh -c 'sleep 2; {copy}'"),
        &["--stable-ms", "300", "--max-attempts", "1"],
    );
    let pieces = root.join("pieces");
    let path = pieces.join("in/big slow.pdf");
    for piece in 0..3 {
        append_line(&path, &format!("piece {piece}"));
        std::thread::sleep(Duration::from_millis(if piece == 0 { 1_200 } else { 200 }));
    }
    c.wait(60, "every part ended", || {
        let jobs = hotfolder_jobs(&c, "pieces");
        let ended = jobs
            .iter()
            .all(|j| j["state"] == "failed" || j["state"] == "succeeded");
        let originals = |d: &str| {
            let all = files(&pieces.join(d));
            all.iter().filter(|n| !n.ends_with(".error.txt")).count()
        };
        let published = originals("error") + originals("done");
        !path.exists() && !jobs.is_empty() && ended && published >= jobs.len()
    });
    let jobs = hotfolder_jobs(&c, "pieces");
    assert!(jobs.iter().all(|j| j["state"] == "failed"), "{jobs:?}");
    assert!(files(&pieces.join("out")).is_empty(), "no output of a part");
    let kept: String = files(&pieces.join("error"))
        .iter()
        .filter(|n| !n.ends_with(".error.txt"))
        .map(|n| std::fs::read_to_string(pieces.join("error").join(n)).unwrap())
        .collect();
    assert_eq!(
        kept.lines().count(),
        3,
        "every piece kept in error/: {kept}"
    );

    // A fast action: the first piece is processed and published before
    // the writer's next one comes. That next piece is never a success of
    // its own: it fails naming the earlier one.
    add_hotfolder(
        &c,
        "fast",
        &format!("sh -c '{copy}'"),
        &["--stable-ms", "300"],
    );
    let fast = root.join("fast");
    let path = fast.join("in/scan.pdf");
    let append = |text: &str| append_line(&path, text);
    append("piece 0");
    c.wait(30, "the first piece published", || {
        fast.join("done/scan.pdf").is_file()
    });
    append("piece 1");
    c.wait(30, "the next piece in error/", || {
        fast.join("error/scan.pdf.error.txt").is_file()
    });
    let reason = std::fs::read_to_string(fast.join("error/scan.pdf.error.txt")).unwrap();
    assert!(
        reason.contains("after an earlier file of that name was processed (done/scan.pdf)"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_to_string(fast.join("error/scan.pdf")).unwrap(),
        "piece 1\n"
    );

    // The issue's writer: it reopens the file for each piece and pauses
    // longer than the stability time (800 ms against 500), and the action
    // is fast. The part taken is held (two stability times after its last
    // write) and fails when the next piece comes: never a success of a
    // part. Whatever the timing, each file ends whole in out/ or in error/.
    add_hotfolder(
        &c,
        "paused",
        &format!("sh -c '{copy}'"),
        &["--stable-ms", "500"],
    );
    let paused = root.join("paused");
    let mut parted = 0;
    for round in 0..2 {
        let name = format!("scan{round}.pdf");
        let path = paused.join("in").join(&name);
        for piece in 0..2 {
            append_line(&path, &format!("piece {piece}"));
            if piece == 0 {
                std::thread::sleep(Duration::from_millis(800));
            }
        }
        c.wait(30, "both pieces ended", || {
            let jobs = hotfolder_jobs(&c, "paused");
            let mine: Vec<_> = jobs
                .iter()
                .filter(|j| j["input"] == name.as_str())
                .collect();
            !path.exists()
                && !mine.is_empty()
                && mine
                    .iter()
                    .all(|j| j["state"] == "failed" || j["state"] == "succeeded")
                && (paused.join("done").join(&name).is_file()
                    || paused
                        .join("error")
                        .join(format!("{name}.error.txt"))
                        .is_file())
        });
        match std::fs::read_to_string(paused.join("out").join(&name)) {
            Ok(whole) => assert_eq!(whole, "piece 0\npiece 1\n", "only a whole file succeeds"),
            Err(_) => {
                parted += 1;
                let reason =
                    std::fs::read_to_string(paused.join("error").join(format!("{name}.error.txt")))
                        .unwrap();
                assert!(reason.contains("its writer was still at work"), "{reason}");
            }
        }
    }
    assert!(
        parted > 0,
        "no part was taken mid-write: the case was not tried"
    );

    // An action that fails on the file is not tried again unless the
    // hotfolder says so (`--retries`).
    add_hotfolder(&c, "once", "sh -c 'echo no ink >&2; exit 3'", &[]);
    add_hotfolder(
        &c,
        "twice",
        "sh -c 'echo no ink >&2; exit 3'",
        &["--retries", "1"],
    );
    for name in ["once", "twice"] {
        std::fs::write(root.join(name).join("in/a.pdf"), b"a").unwrap();
    }
    for (name, attempts) in [("once", 1), ("twice", 2)] {
        let dir = root.join(name);
        c.wait(60, "the failed file in error/", || {
            dir.join("error/a.pdf.result.json").is_file()
        });
        let ticket = &tickets(&dir.join("error"))[0];
        assert_eq!(ticket["outcome"], "failed", "{ticket}");
        assert_eq!(ticket["attempts"], attempts, "{name}: {ticket}");
        assert!(
            ticket["error"].as_str().unwrap().contains("no ink"),
            "{ticket}"
        );
    }
    c.assert_nobody_crashed();
}

/// Waits until `hotfolder`'s job for `input` is final; returns it.
fn final_job(c: &Cluster, hotfolder: &str, input: &str) -> serde_json::Value {
    let mut job = serde_json::Value::Null;
    c.wait(
        60,
        &format!("the job of {hotfolder}/{input} to end"),
        || {
            job = hotfolder_jobs(c, hotfolder)
                .into_iter()
                .find(|j| j["input"] == input)
                .unwrap_or_default();
            job["state"] == "failed" || job["state"] == "succeeded"
        },
    );
    job
}

/// Job folders and tickets, as a prepress shop drops them (127.0.167.x):
/// a folder `Job 4711/` with two PDFs and its `ticket.xml` is one job whose
/// script sees the files and the ticket and sets a field of the result
/// ticket; a file with a JSON ticket beside it gives the ticket's values to
/// a command as an argument and in the environment, and both go to `done/`
/// together; the `marker` trigger waits for `NAME.ready`; a malformed
/// ticket fails its job with the reason, both files in `error/`.
#[test]
fn job_folders_and_tickets_go_in_and_result_tickets_come_out() {
    let (mut c, hf) = cluster_with_hotfolder(167, 300);
    let root = hf.parent().unwrap().to_path_buf();
    let script = c.conf.with_file_name("impose.rhai");
    std::fs::write(
        &script,
        "let text = \"customer=\" + TICKET[\"customer.name\"] + \" id=\" + TICKET[\"id\"] + \"\\n\";\n\
         for f in FILE.files { text += f + \"\\n\"; }\n\
         file_write(FILE.output_dir + \"/\" + FILE.name + \".txt\", text);\n\
         ticket_set(\"sheets\", FILE.files.len() * 2);\n",
    )
    .unwrap();
    let script_arg = script.to_string_lossy().into_owned();
    let quick = ["--stable-ms", "300"];
    let args = [
        &quick[..],
        &["--folders", "--trigger", "ticket", "--script", &script_arg],
    ]
    .concat();
    cli_ok(&c, &[&["hotfolder", "add", "jobs"], &args[..]].concat());
    let jobs = root.join("jobs");
    let folder = jobs.join("in/Job 4711");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("cover.pdf"), "cover").unwrap();
    std::fs::write(folder.join("inner.pdf"), "inner").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        hotfolder_jobs(&c, "jobs").is_empty(),
        "no ticket yet: not taken"
    );
    std::fs::write(
        folder.join("ticket.xml"),
        "<job id=\"4711\"><customer><name>Ink &amp; Co</name></customer></job>",
    )
    .unwrap();
    let job = final_job(&c, "jobs", "Job 4711");
    assert_eq!(job["state"], "succeeded", "{job}");
    c.wait(30, "the folder published", || {
        jobs.join("done/Job 4711").is_dir()
    });
    assert_eq!(
        hotfolder_jobs(&c, "jobs").len(),
        1,
        "one job for the folder"
    );
    let listing = std::fs::read_to_string(jobs.join("out/Job 4711.txt")).unwrap();
    assert!(
        listing.starts_with("customer=Ink & Co id=4711\n"),
        "{listing}"
    );
    for f in ["cover.pdf", "inner.pdf", "ticket.xml"] {
        assert!(listing.contains(&format!("Job 4711/{f}\n")), "{listing}");
        assert!(jobs.join("done/Job 4711").join(f).is_file(), "{f} in done/");
    }
    let ticket: serde_json::Value =
        serde_json::from_slice(&std::fs::read(jobs.join("out/Job 4711.result.json")).unwrap())
            .unwrap();
    assert_eq!(ticket["fields"]["sheets"], "6", "{ticket}");
    assert_eq!(ticket["outcome"], "succeeded");
    assert_eq!(ticket["outputs"], serde_json::json!(["Job 4711.txt"]));
    // A job folder of thousands of files is one job too (made under an
    // ignored name, then renamed into in/).
    let making = jobs.join("in/.making");
    std::fs::create_dir_all(making.join("pages")).unwrap();
    for i in 0..3_000 {
        std::fs::write(making.join(format!("pages/{i:04}.pdf")), "p").unwrap();
    }
    std::fs::write(
        making.join("ticket.json"),
        r#"{"customer": {"name": "Big"}, "id": 9}"#,
    )
    .unwrap();
    std::fs::rename(&making, jobs.join("in/Job big")).unwrap();
    assert_eq!(final_job(&c, "jobs", "Job big")["state"], "succeeded");
    c.wait(60, "the big folder published", || {
        jobs.join("done/Job big/pages/2999.pdf").is_file()
    });
    let listing = std::fs::read_to_string(jobs.join("out/Job big.txt")).unwrap();
    assert_eq!(listing.lines().count(), 1 + 3_001, "every file listed");
    assert!(
        listing.starts_with("customer=Big id=9\n"),
        "{}",
        &listing[..40]
    );

    // A ticket beside a file, for a command: an argument and the environment.
    let template = "sh -c 'printf \"%s copies for %s\" \"$1\" \"$CLARO_TICKET_CUSTOMER_NAME\" > \"$CLARO_OUTPUT_DIR/$CLARO_NAME.txt\"' sh {ticket.copies}";
    add_hotfolder(&c, "tagged", template, &quick);
    let tagged = root.join("tagged");
    std::fs::write(
        tagged.join("in/a.pdf.json"),
        r#"{"customer": {"name": "Ink; $(touch pwned)"}, "copies": 500}"#,
    )
    .unwrap();
    std::fs::write(tagged.join("in/a.pdf"), "pdf").unwrap();
    std::fs::write(tagged.join("in/bad.pdf.json"), "{\"copies\": ").unwrap();
    std::fs::write(tagged.join("in/bad.pdf"), "pdf").unwrap();
    assert_eq!(final_job(&c, "tagged", "a.pdf")["state"], "succeeded");
    c.wait(30, "a.pdf published", || {
        tagged.join("done/a.pdf.json").is_file()
    });
    let text = std::fs::read_to_string(tagged.join("out/a.pdf.txt")).unwrap();
    assert_eq!(text, "500 copies for Ink; $(touch pwned)");
    assert!(tagged.join("done/a.pdf").is_file());
    assert!(!root.join("pwned").exists() && !tagged.join("out/pwned").exists());
    let bad = final_job(&c, "tagged", "bad.pdf");
    let why = bad["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("the ticket bad.pdf.json") && why.contains("line 1"),
        "{bad}"
    );
    c.wait(30, "bad.pdf in error/", || {
        tagged.join("error/bad.pdf.error.txt").is_file()
    });
    assert!(tagged.join("error/bad.pdf").is_file() && tagged.join("error/bad.pdf.json").is_file());
    assert_eq!(hotfolder_jobs(&c, "tagged").len(), 2, "tickets are no jobs");

    // The marker trigger.
    add_hotfolder(
        &c,
        "marked",
        "cp {input} {output_dir}",
        &[&quick[..], &["--trigger", "marker"]].concat(),
    );
    let marked = root.join("marked");
    std::fs::write(marked.join("in/b.pdf"), "b").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        hotfolder_jobs(&c, "marked").is_empty(),
        "no marker yet: not taken"
    );
    let listed = hotfolder_list(&c);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "marked")
        .unwrap();
    assert_eq!(
        (row["trigger"].as_str(), row["waiting"].as_u64()),
        (Some("marker"), Some(1)),
        "{row}"
    );
    std::fs::write(marked.join("in/b.pdf.ready"), "").unwrap();
    assert_eq!(final_job(&c, "marked", "b.pdf")["state"], "succeeded");
    c.wait(30, "b.pdf published", || {
        marked.join("done/b.pdf").is_file()
    });
    assert!(
        !marked.join("in/b.pdf.ready").exists(),
        "the marker is removed"
    );
    assert_eq!(
        std::fs::read_to_string(marked.join("out/b.pdf")).unwrap(),
        "b"
    );
    c.assert_nobody_crashed();
}

/// Folders under `dir`, recursively, `dir` not counted.
fn folders_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + folders_under(&e.path()))
        .sum()
}

/// Once every server speaks the flat working folder's protocol level, a
/// running file job has two folders in the working area (its own, and its
/// attempt's outputs), with the claimed input under its own name; and
/// nothing is left there after publication (127.0.190.x).
#[test]
fn a_running_file_job_makes_two_folders_in_the_working_area() {
    let (c, hf) = cluster_with_hotfolder(190, 300);
    let root = hf.parent().unwrap().to_path_buf();
    let newest = claro::version::PROTOCOL_VERSION;
    c.wait(30, "the newest protocol level", || {
        c.status("srv1").is_some_and(|v| v.protocol_level == newest)
    });
    let copy = "cp \"$CLARO_INPUT\" \"$CLARO_OUTPUT_DIR/\"";
    add_hotfolder(
        &c,
        "slow",
        &format!("sh -c 'sleep 3; {copy}'"),
        &["--stable-ms", "200"],
    );
    std::fs::write(root.join("slow/in/a b.pdf"), "pdf").unwrap();
    let work = root.join("slow/.claro/work");
    let job_dir = || {
        std::fs::read_dir(&work)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("a b.pdf").is_file())
    };
    c.wait(20, "the file claimed", || job_dir().is_some());
    let dir = job_dir().unwrap();
    c.wait(10, "the attempt's staging folder", || {
        folders_under(&dir) == 1
    });
    assert_eq!(1 + folders_under(&dir), 2, "{dir:?}");
    let own: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "a b.pdf")
        .collect();
    assert!(own.iter().all(|n| n.starts_with(".claro-")), "{own:?}");
    c.wait(30, "published", || root.join("slow/done/a b.pdf").is_file());
    assert_eq!(
        std::fs::read_to_string(root.join("slow/out/a b.pdf")).unwrap(),
        "pdf"
    );
    c.wait(10, "the working area emptied", || folders_under(&work) == 0);
}

/// Opens `path` anew, appends `text` and a newline, closes it: a writer
/// that reopens the file for each piece (`>>`).
fn append_line(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{text}").unwrap();
}
