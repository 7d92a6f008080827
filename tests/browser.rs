//! The dashboard in a real browser: headless Chromium from Debian's package,
//! driven by Playwright's Python package (`tests/browser/dashboard.py`),
//! against three real instances on 127.0.121.1-3 (HTTP port 7901) that
//! require a login. The script logs in, sees the three servers, submits jobs
//! from the form and watches them end without reloading, cancels a long
//! one from its page, pauses and resumes a hotfolder, reads an error's
//! reason, checks that markup in results, logs and file names stays text,
//! sees a viewer without the buttons it may not use, and rides out a restart
//! of the instance it talks to ("reconnecting", then a new login). It saves
//! a screenshot of every page under `target/screenshots/`.
//!
//! Skipped, saying why, only where python3, Playwright or
//! /usr/bin/chromium is missing (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{addr, Cluster, TEST_TIMING};

const NET: u8 = 121;
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser script, bounded (its own waits are shorter).
const BROWSER_RUN_S_MAX: u64 = 150;
/// How long the instance the page uses stays down when the script asks
/// for a restart (the page must notice).
const RESTART_DOWN_MS: u64 = 1500;
/// The hotfolder's action: upper-cases text files, and fails files whose
/// name says they are broken (or carries markup) with a reason.
const PROOF_SCRIPT: &str = r#"if FILE.name.starts_with("bad") || FILE.name.contains("<") {
    throw "cannot read " + FILE.name + ": not a PDF (no %PDF header)";
}
let t = file_read(FILE.input);
file_write(FILE.output_dir + "/" + FILE.name, t.to_upper());
"#;

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    let probe = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output();
    match probe {
        Err(e) => Some(format!("python3 cannot run: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "Playwright for Python is missing (python3 -m pip install playwright): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

fn token(c: &Cluster, name: &str, role: &str) -> String {
    let out = c.cli(&["token", "add", name, "--role", role, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// Runs `cmd` to its end or `limit`, then kills it, calling `tick` between
/// looks; (success, output).
fn run_bounded(cmd: &mut Command, limit: Duration, mut tick: impl FnMut()) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.txt");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start python3");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tick();
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    if status.is_none() {
        text += &format!("\n(killed after {} s)", limit.as_secs());
    }
    (status.is_some_and(|s| s.success()), text)
}

#[test]
fn the_dashboard_works_in_headless_chromium() {
    if let Some(why) = missing_tools() {
        common::skip("the_dashboard_works_in_headless_chromium", "browser", &why);
        return;
    }
    let started = Instant::now();
    let timing = format!(
        "{TEST_TIMING}hotfolder_poll_ms = 200\n\n[hotfolder.proofs]\nscript = \"proof.rhai\"\nstable_ms = 300\nmax_attempts = 1\n"
    );
    let mut c = Cluster::three_running_prepared(NET, &timing, 4, |c| {
        std::fs::write(c.conf.with_file_name("proof.rhai"), PROOF_SCRIPT).unwrap();
        let text = std::fs::read_to_string(&c.conf).unwrap();
        std::fs::write(&c.conf, format!("http_login = true\n{text}")).unwrap();
    });
    let inbox = c.dir.path().join("shared/proofs/in");
    c.wait(10, "the hotfolder's in/ folder", || inbox.is_dir());
    let admin = token(&c, "browser-admin", "admin");
    let viewer = token(&c, "browser-viewer", "viewer");
    let shots: PathBuf = [env!("CARGO_MANIFEST_DIR"), "target", "screenshots"]
        .iter()
        .collect();
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    // A follower's instance: the dashboard works through any of them.
    let url = format!("http://{}:7901/", addr(NET, 1));
    let control = c.dir.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("CLARO_URL", &url)
        .env("CLARO_TOKEN", &admin)
        .env("CLARO_VIEWER_TOKEN", &viewer)
        .env("CLARO_HOTFOLDER_IN", &inbox)
        .env("CLARO_SCREENSHOTS", &shots)
        .env("CLARO_CHROMIUM", CHROMIUM)
        .env("CLARO_CONTROL", &control);
    let (ok, output) = run_bounded(&mut cmd, Duration::from_secs(BROWSER_RUN_S_MAX), || {
        if std::fs::remove_file(control.join("restart")).is_ok() {
            c.terminate("srv2");
            std::thread::sleep(Duration::from_millis(RESTART_DOWN_MS));
            c.start("srv2");
            std::fs::write(control.join("restarted"), "srv2").unwrap();
        }
        if std::fs::remove_file(control.join("stop")).is_ok() {
            c.terminate("srv3");
        }
    });
    println!("{output}");
    assert!(
        ok,
        "the browser script failed:\n{output}\n--- srv2's log (the instance the browser used):\n{}",
        c.log("srv2")
    );
    c.assert_nobody_crashed();
    println!(
        "browser test: {:.1} s in all, screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
