//! A real multi-process cluster for tests: `claro serve` processes on
//! 127.0.N.1, 127.0.N.2, ... (each test its own N), all on port 7900, with a
//! config and TLS material made by `claro init` in a temporary folder. The
//! client side uses the library's client, over real QUIC.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claro::cli::client::ClientArgs;
use claro::config::Config;
use claro::proto::{Request, Response, StatusView};

pub const BIN: &str = env!("CARGO_BIN_EXE_claro");

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub net: u8,
    pub names: Vec<String>,
    procs: HashMap<String, Child>,
}

pub fn addr(net: u8, i: usize) -> String {
    format!("127.0.{net}.{}", i + 1)
}

impl Cluster {
    /// `servers`: (name, role) in order; server i listens on 127.0.net.(i+1):7900.
    pub fn new(net: u8, servers: &[(&str, &str)]) -> Cluster {
        Cluster::with_timing(net, servers, TEST_TIMING)
    }

    /// `timing`: the `[timing]` table's lines ("" for the product's defaults).
    pub fn with_timing(net: u8, servers: &[(&str, &str)], timing: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_dir = dir.path().join("conf");
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        let mut init = Command::new(BIN);
        init.args(["init", "--dir"])
            .arg(&conf_dir)
            .args(["--cluster", &format!("test{net}")]);
        init.args(["--shared-root", "../shared", "--data-dir", "../data"]);
        for (i, (name, _)) in servers.iter().enumerate() {
            init.arg("--server").arg(format!("{name}={}", addr(net, i)));
        }
        let out = init.output().expect("run claro init");
        assert!(
            out.status.success(),
            "claro init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = conf_dir.join("ClaroServers.conf");
        std::fs::write(&conf, config_text(net, servers, timing)).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let names = servers.iter().map(|(n, _)| n.to_string()).collect();
        Cluster {
            dir,
            conf,
            net,
            names,
            procs: HashMap::new(),
        }
    }

    pub fn config(&self) -> Config {
        Config::load(&self.conf).expect("test config loads")
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("data").join(name)
    }

    pub fn start(&mut self, name: &str) {
        self.start_with(name, &[]);
    }

    pub fn start_with(&mut self, name: &str, extra: &[&str]) {
        self.start_env(name, extra, &[]);
    }

    pub fn start_env(&mut self, name: &str, extra: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.conf)
            .args(["serve", "--name", name])
            .args(extra)
            .env("RUST_LOG", "info,raft=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn claro serve");
        self.procs.insert(name.to_string(), child);
    }

    /// SIGTERM (a graceful stop), then waits for the process to exit.
    pub fn terminate(&mut self, name: &str) {
        let mut child = self.procs.remove(name).expect("running");
        // The shell's builtin kill: no procps needed.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", child.id())])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "{name} ignored SIGTERM: {}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            child.wait().unwrap().success(),
            "{name} failed to stop: {}",
            self.log(name)
        );
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(|c| c.id())
    }

    /// Whether `name`'s process is still running (false once it exited).
    pub fn running(&mut self, name: &str) -> bool {
        self.procs
            .get_mut(name)
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Panics when any server's log shows a panic or any started process exited.
    pub fn assert_nobody_crashed(&mut self) {
        let names = self.names.clone();
        for n in &names {
            assert!(
                !self.log(n).contains("panicked"),
                "{n} panicked:\n{}",
                self.log(n)
            );
            if self.procs.contains_key(n) {
                assert!(self.running(n), "{n} exited:\n{}", self.log(n));
            }
        }
    }

    pub fn kill9(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `claro stop NAME` through the CLI, then waits for the process to exit.
    pub fn stop(&mut self, name: &str) {
        let out = self.cli(&["stop", name, "--server", name]);
        assert!(
            out.status.success(),
            "claro stop {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = self.procs.remove(name).expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{name} exited with {status}: {}",
                    self.log(name)
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not stop: {}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CLI started with this cluster's config, stdout and stderr piped,
    /// for a test that acts while it runs.
    pub fn cli_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.conf)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run claro")
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run claro")
    }

    pub fn call(&self, via: &str, req: Request) -> Result<Response, String> {
        let args = ClientArgs {
            server: Some(via.to_string()),
            json: false,
        };
        claro::cli::client::call(&self.config(), &args, &req)
            .map(|(_, r)| r)
            .map_err(|f| f.message)
    }

    pub fn status(&self, via: &str) -> Option<StatusView> {
        match self.call(via, Request::Status) {
            Ok(Response::Status(v)) => Some(v),
            _ => None,
        }
    }

    pub fn set(&self, via: &str, key: &str, value: Vec<u8>) -> Result<u64, String> {
        let command = claro::state::Command::Put {
            key: key.into(),
            value,
        };
        match self.call(
            via,
            Request::propose(command, Some(claro::proto::new_request_id())),
        )? {
            Response::Proposed { index } => Ok(index),
            other => Err(format!("{other:?}")),
        }
    }

    pub fn get(&self, via: &str, key: &str) -> Option<Vec<u8>> {
        let req = Request::Get {
            key: key.into(),
            stale: false,
        };
        match self.call(via, req) {
            Ok(Response::Value { value, .. }) => value.map(|v| v.into_vec()),
            _ => None,
        }
    }

    /// One job, read through `via` (`None`: unknown, or no answer).
    pub fn job(&self, via: &str, id: &str) -> Option<claro::work::jobs::Job> {
        let req = Request::Job {
            id: id.into(),
            stale: false,
            wait_ms: 0,
        };
        match self.call(via, req) {
            Ok(Response::Job { job, .. }) => job.map(|j| *j),
            _ => None,
        }
    }

    pub fn digest(&self, via: &str) -> Option<(u64, String)> {
        match self.call(via, Request::Digest) {
            Ok(Response::Digest {
                applied_index,
                digest,
            }) => Some((applied_index, digest)),
            _ => None,
        }
    }

    /// Waits until `cond` holds, at most `secs`; panics with `what` and the logs.
    pub fn wait(&self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {secs} s waiting for {what}\n{}",
            self.all_logs()
        );
    }

    pub fn all_logs(&self) -> String {
        self.names
            .iter()
            .map(|n| format!("--- {n} ---\n{}", tail(&self.log(n), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// True when `via` reports `coordinator` as coordinator and every name in
    /// `members` as a connected, synchronized voter (not still joining).
    pub fn settled(&self, via: &str, coordinator: &str, members: &[&str]) -> bool {
        let Some(v) = self.status(via) else {
            return false;
        };
        let voter =
            |state: &str| matches!(state, "coordinator" | "follower" | "witness" | "non-voter");
        v.coordinator.as_deref() == Some(coordinator)
            && members.iter().all(|m| {
                v.servers
                    .iter()
                    .any(|s| s.name == *m && s.connected && s.synchronized && voter(&s.state))
            })
    }
}

impl Cluster {
    /// The first line of `name`'s log containing `needle`; panics with the log.
    pub fn log_line(&self, name: &str, needle: &str) -> String {
        let log = self.log(name);
        match log.lines().find(|l| l.contains(needle)) {
            Some(l) => l.to_string(),
            None => panic!("{name} logged no `{needle}`:\n{log}"),
        }
    }

    /// Writes `count` incompressible, distinct 1 MiB settings through `via`.
    pub fn fill_megabytes(&self, via: &str, count: u32) {
        for i in 0..count {
            let value: Vec<u8> = (0..1024 * 1024u32)
                .map(|j| {
                    (j.wrapping_mul(2654435761)
                        .wrapping_add(i.wrapping_mul(7919))
                        >> 13) as u8
                })
                .collect();
            self.set(via, &format!("blob{i:04}"), value)
                .expect("write a megabyte");
        }
    }

    /// srv1, srv2, srv3 on 127.0.`net`.1-3, srv1 started first (the
    /// coordinator), all three synchronized voters.
    pub fn three_running(net: u8) -> Cluster {
        Cluster::three_running_with_timing(net, TEST_TIMING)
    }

    /// As [`Cluster::three_running`], with `timing` ("" for the product's).
    pub fn three_running_with_timing(net: u8, timing: &str) -> Cluster {
        Cluster::three_running_with_slots(net, timing, 4)
    }

    /// As [`Cluster::three_running_with_timing`], each server with `slots`.
    pub fn three_running_with_slots(net: u8, timing: &str, slots: u32) -> Cluster {
        Cluster::three_running_prepared(net, timing, slots, |_| {})
    }

    /// As [`Cluster::three_running_with_slots`], after `prepare` wrote what
    /// the config refers to (a hotfolder's script, say).
    pub fn three_running_prepared(
        net: u8,
        timing: &str,
        slots: u32,
        prepare: impl FnOnce(&Cluster),
    ) -> Cluster {
        Cluster::running_prepared(net, 3, timing, slots, prepare)
    }

    /// `count` servers srv1.. with `slots` each, `prepare` run on the
    /// config's folder before the start, all synchronized.
    pub fn running_prepared(
        net: u8,
        count: usize,
        timing: &str,
        slots: u32,
        prepare: impl FnOnce(&Cluster),
    ) -> Cluster {
        let names: Vec<String> = (1..=count).map(|i| format!("srv{i}")).collect();
        let servers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "server")).collect();
        let mut c = Cluster::with_timing(net, &servers, timing);
        let text = std::fs::read_to_string(&c.conf).unwrap();
        std::fs::write(
            &c.conf,
            text.replace("slots = 4\n", &format!("slots = {slots}\n")),
        )
        .unwrap();
        prepare(&c);
        c.start_alone("srv1");
        for name in &names[1..] {
            c.start(name);
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        c.wait(30, "all synchronized", || c.settled("srv1", "srv1", &all));
        c
    }

    /// A copy of this cluster's conf/ in `folder` (under the test's
    /// directory, beside a `shared/` of its own) whose config moves the
    /// server at `from` to `to`; returns the copied config's path.
    pub fn moved_config(&self, folder: &str, from: &str, to: &str) -> PathBuf {
        let root = self.dir.path().join(folder);
        copy_dir(&self.dir.path().join("conf"), &root.join("conf"));
        std::fs::create_dir_all(root.join("shared")).unwrap();
        let conf = root.join("conf").join("ClaroServers.conf");
        let text = std::fs::read_to_string(&conf).unwrap().replace(from, to);
        std::fs::write(&conf, text).unwrap();
        conf
    }

    /// srv1 and srv2 of a two-server config, srv1 coordinating.
    pub fn two(net: u8) -> Cluster {
        let mut c = Cluster::new(net, &[("srv1", "server"), ("srv2", "server")]);
        c.start_alone("srv1");
        c
    }

    /// Starts `name` and waits until it coordinates a cluster of its own.
    pub fn start_alone(&mut self, name: &str) {
        self.start(name);
        self.wait(30, &format!("{name} to coordinate"), || {
            self.settled(name, name, &[name])
        });
    }
}

/// The value of `key=value` in a log line (quotes trimmed).
pub fn log_field<T: std::str::FromStr>(line: &str, key: &str) -> T {
    let raw = line
        .split(&format!("{key}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next());
    let raw = raw
        .unwrap_or_else(|| panic!("no {key}= in: {line}"))
        .trim_matches('"');
    raw.parse()
        .unwrap_or_else(|_| panic!("{key}={raw} does not parse"))
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in self.procs.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The status note every server of a test shows when nothing else is
/// wrong: tests run as root without `[jobs] run_as` on CI, and then jobs
/// run as root.
/// A test (or a part of one) that cannot run on this machine: `need` names
/// what is missing (`browser`, `openapi`, `tmpfs`, `netns`, `iptables`).
///
/// Said where `cargo test` shows it: written to the process's stderr
/// itself, which the test harness does not capture (its `eprintln!`
/// capture would hide the line behind an "ok"). Under CI (`CI` set to
/// `true` or `1`) a skip fails the test instead, unless `.ci/run` found
/// `need` impossible on this machine and listed it in
/// `CLARO_CI_UNAVAILABLE`: there, what can run must run.
pub fn skip(test: &str, need: &str, why: &str) {
    use std::io::Write as _;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let excused = std::env::var("CLARO_CI_UNAVAILABLE")
        .unwrap_or_default()
        .split_whitespace()
        .any(|n| n == need);
    if ci && !excused {
        panic!(
            "{test} cannot run here ({need}: {why}), and .ci/run did not find `{need}` impossible on this machine (CLARO_CI_UNAVAILABLE)"
        );
    }
    let line = format!("\nSKIPPED {test} ({need}): {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn setup_note() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root.then(|| claro::node::JOBS_AS_ROOT_NOTE.to_string())
}

/// Tests keep the default election timeout's slack for loaded CI machines,
/// and a short discovery window so that they do not wait long.
pub const TEST_TIMING: &str =
    "election_ms = 1000\ndiscovery_ms = 1000\ncheckpoint_ms = 500\ndrain_ms = 1000\n";

pub fn config_text(net: u8, servers: &[(&str, &str)], timing: &str) -> String {
    let mut s = format!(
        "cluster = \"test{net}\"\nport = 7900\nshared_root = \"../shared\"\ndata_dir = \"../data\"\n\n[timing]\n{timing}"
    );
    for (i, (name, role)) in servers.iter().enumerate() {
        s += &format!(
            "\n[[server]]\nname = \"{name}\"\naddress = \"{}\"\nslots = 4\nrole = \"{role}\"\n",
            addr(net, i)
        );
    }
    s
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A tmpfs mounted on a folder (as root), unmounted when dropped (also
/// when the test fails); lazily, since an instance may still hold files
/// open on it.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Makes the file system read-only (`true`) or writable again.
    pub fn read_only(&self, on: bool) -> Result<(), String> {
        let opts = if on { "remount,ro" } else { "remount,rw" };
        mount(&["-o", opts], &self.dir)
    }
}

fn mount(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = std::process::Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Writes a filler file in `dir` until its file system is full (down to
/// the last byte); returns its path.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0xA5u8; 64 * 1024];
    for chunk in [&block[..], &block[..1]] {
        loop {
            match f.write_all(chunk) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filler: {e}"),
            }
        }
    }
    let _ = f.flush();
    path
}
