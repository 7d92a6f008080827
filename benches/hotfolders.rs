//! Hotfolders on a three-instance loopback cluster with the product's
//! timings (`hotfolder_poll_ms` 1 s): `cargo bench --bench hotfolders`.
//!
//! - Throughput: FILES small files dropped at once into a hotfolder whose
//!   action is a trivial in-process script (copy the text), from the first
//!   file written to the last original in `done/` (every job committed,
//!   every file published).
//! - Pickup latency: single files dropped one at a time into an idle
//!   hotfolder, from the moment the file became stable (written +
//!   `stable_ms`) to its job `running` or ended, read from the job's
//!   `started_at`; p50/p99. The aim is the poll interval plus 50 ms.
//! - The scan: one poll of an `in/` holding SCAN_FILES waiting files, timed
//!   in-process (readdir and stat of each, patterns, stability).
//!
//! - Job folders: FOLDERS folders of FOLDER_FILES small files each, each
//!   made under an ignored name and renamed into `in/` (as a writer
//!   should), into a hotfolder with `--folders` whose script copies every
//!   file of the folder; folders/s to the last folder in `done/`.
//! - The checks against files still being written, at CHECK_FILES files:
//!   one look in /proc for writers of all of them (what the coordinator's
//!   scan pays when that many files become stable at once), and the `stat`
//!   of each before the claim and after the action.
//!
//! Every loop is bounded in count and time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Cluster;

const FILES: usize = 10_000;
const LATENCY_COUNT: usize = 40;
const STABLE_MS: u64 = 300;
const SCAN_FILES: usize = 100_000;
const FOLDERS: usize = 500;
const FOLDER_FILES: usize = 10;
const CHECK_FILES: usize = 10_000;
const FOLDER_ACTION: &str = "for f in FILE.files {\n    let parts = f.split(\"/\");\n    file_write(FILE.output_dir + \"/\" + FILE.name + \"-\" + parts[parts.len() - 1], file_read(f));\n}\n";
const TIME_MAX_S: u64 = 300;
const ACTION: &str = "file_write(FILE.output_dir + \"/\" + FILE.name, file_read(FILE.input));\n";

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn job_started_ms(c: &Cluster, input: &str) -> Option<u64> {
    let out = c.cli(&["jobs", "--hotfolder", "hf", "--limit", "5", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = jobs.as_array()?.iter().find(|j| j["input"] == input)?;
    let at = job["started_at"].as_str().or(job["finished_at"].as_str())?;
    Some(rfc3339_ms(at))
}

/// Milliseconds since the epoch of `2026-11-23T16:25:59.634Z`.
fn rfc3339_ms(t: &str) -> u64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", t, "+%s%3N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn now_ms() -> u64 {
    claro::clock::now_ms()
}

fn throughput(hf: &Path) -> f64 {
    let started = Instant::now();
    for i in 0..FILES {
        std::fs::write(hf.join(format!("in/f{i}.txt")), format!("file {i}")).unwrap();
    }
    let written_s = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(TIME_MAX_S);
    while count(&hf.join("done")) < FILES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = started.elapsed().as_secs_f64();
    let done = count(&hf.join("done"));
    println!("throughput: {FILES} files dropped at once (written in {written_s:.2} s): {done} published in {s:.2} s, {:.0} files/s including the {STABLE_MS} ms stability wait and polling", done as f64 / s);
    let after_stable = s - (STABLE_MS as f64 / 1000.0);
    println!(
        "  excluding the stability wait: {:.0} files/s",
        done as f64 / after_stable
    );
    done as f64 / s
}

fn pickup(c: &Cluster, hf: &Path) {
    let mut lat = Vec::new();
    for i in 0..LATENCY_COUNT {
        let name = format!("one{i}.txt");
        std::fs::write(hf.join("in").join(&name), "x").unwrap();
        let stable_at = now_ms() + STABLE_MS;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !hf.join("done").join(&name).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(started) = job_started_ms(c, &name) {
            lat.push(started.saturating_sub(stable_at) as f64);
        }
        // Spread the drops over the poll phase.
        std::thread::sleep(Duration::from_millis(137));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "pickup latency (stable to running): p50 {:.0} ms, p99 {:.0} ms ({} files, one at a time; poll interval 1000 ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
}

fn folders_throughput(c: &Cluster, root: &Path) -> f64 {
    let script = c.conf.with_file_name("folder.rhai");
    std::fs::write(&script, FOLDER_ACTION).unwrap();
    let out = c.cli(&[
        "hotfolder",
        "add",
        "jf",
        "--folders",
        "--stable-ms",
        &STABLE_MS.to_string(),
        "--script",
        &script.to_string_lossy(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let jf = root.join("jf");
    let started = Instant::now();
    for i in 0..FOLDERS {
        let tmp = jf.join(format!("in/.making {i}"));
        std::fs::create_dir_all(&tmp).unwrap();
        for f in 0..FOLDER_FILES {
            std::fs::write(tmp.join(format!("p{f}.pdf")), format!("job {i} page {f}")).unwrap();
        }
        std::fs::rename(&tmp, jf.join(format!("in/Job {i}"))).unwrap();
    }
    let written_s = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(TIME_MAX_S);
    while count(&jf.join("done")) < FOLDERS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = started.elapsed().as_secs_f64();
    let done = count(&jf.join("done"));
    let outputs = count(&jf.join("out"));
    println!("job folders: {FOLDERS} folders of {FOLDER_FILES} files dropped at once (made in {written_s:.2} s): {done} published in {s:.2} s, {:.0} folders/s ({:.0} files/s; {outputs} entries in out/, with the result tickets)", done as f64 / s, (done * FOLDER_FILES) as f64 / s);
    done as f64 / s
}

/// The cost of the checks against files still being written, at
/// CHECK_FILES files, timed in process.
fn check_cost() {
    use claro::node::measured::{identity, open_for_writing};
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = (0..CHECK_FILES)
        .map(|i| dir.path().join(format!("f{i}.pdf")))
        .collect();
    for p in &paths {
        std::fs::write(p, "x").unwrap();
    }
    for round in 0..3 {
        let started = Instant::now();
        let ids: std::collections::HashSet<(u64, u64)> =
            paths.iter().filter_map(|p| identity(p)).collect();
        let stat_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let open = open_for_writing(&ids);
        let proc_ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "checks for writers at {CHECK_FILES} files (round {round}): stat of each {stat_ms:.1} ms, one look in /proc {proc_ms:.1} ms ({} open), so {:.1} us a file",
            open.len(),
            (stat_ms * 2.0 + proc_ms) * 1000.0 / CHECK_FILES as f64
        );
    }
}

fn scan_cost() {
    use claro::work::hotfolder::{Action, Hotfolder, Patterns, Seen, Stability};
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir_all(&inbox).unwrap();
    for i in 0..SCAN_FILES {
        std::fs::write(inbox.join(format!("waiting {i}.pdf")), "").unwrap();
    }
    let def = Hotfolder::new("hf", Action::Script { code: "1".into() });
    let patterns = Patterns::new(&def.include, &def.ignore).unwrap();
    let mut stability = Stability::default();
    for round in 0..3 {
        let started = Instant::now();
        let mut seen = Vec::with_capacity(SCAN_FILES);
        for e in std::fs::read_dir(&inbox).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().unwrap();
            if patterns.takes(&name) {
                let modified_ms = meta
                    .modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                seen.push(Seen {
                    path: name,
                    bytes: meta.len(),
                    modified_ms,
                    inode: std::os::unix::fs::MetadataExt::ino(&meta),
                    folder: false,
                });
            }
        }
        let ready = stability.observe(round * 1000, 500, &seen);
        println!(
            "scan of an in/ with {SCAN_FILES} waiting files (round {round}): {:.0} ms, {} ready",
            started.elapsed().as_secs_f64() * 1000.0,
            ready.len()
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let date = std::process::Command::new("date").arg("-u").output();
    println!(
        "claro hotfolder benchmark, {}",
        date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    println!(
        "load average at the start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if std::env::var("CLARO_BENCH_ONLY").as_deref() == Ok("scan") {
        check_cost();
        return scan_cost();
    }
    let timing = format!("\n[hotfolder.hf]\nscript = \"action.rhai\"\nstable_ms = {STABLE_MS}\n");
    // CLARO_BENCH_SERVERS=1: one instance alone (nothing replicated), to
    // see what one instance does with two CPUs of its own.
    let count: usize = std::env::var("CLARO_BENCH_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=3).contains(n))
        .unwrap_or(3);
    // CLARO_BENCH_SLOTS: slots per instance (default 16).
    let slots: u32 = std::env::var("CLARO_BENCH_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=256).contains(n))
        .unwrap_or(16);
    let c = Cluster::running_prepared(55, count, &timing, slots, |c| {
        std::fs::write(c.conf.with_file_name("action.rhai"), ACTION).unwrap();
    });
    let hf = c.conf.parent().unwrap().join("../shared/hf");
    c.wait(10, "the hotfolder", || hf.join("in").is_dir());
    println!(
        "{count} instance(s), {slots} slots each, the product's timings, action: a script copying the file"
    );
    pickup(&c, &hf);
    throughput(&hf);
    folders_throughput(&c, hf.parent().unwrap());
    drop(c);
    check_cost();
    scan_cost();
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
