//! External processes that jobs start: a `command` job's argv, and `run`
//! inside a script. No shell; the output is captured into a bounded text.
//!
//! Every process starts in a process group of its own, and the group ends
//! with the job: a timeout or a cancel kills the whole group (SIGKILL), and
//! so does a normal exit of the process (a background child does not
//! outlive its job). `run` returns once the group is gone, so a slot is free
//! only when its processes are. A process that leaves its group (`setsid`,
//! `setpgid`) is beyond this reach.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::account::Account;

/// Step of the wait for a process to exit.
const POLL_MS: u64 = 10;
/// Longest wait, after the group was killed, for its processes to be gone
/// and its output pipes closed.
const GROUP_EXIT_WAIT_MS: u64 = 5_000;

/// Characters of a failed process's last line quoted in its job's error.
const REASON_CHARS_MAX: usize = 200;

/// Captured text, bounded: what comes past the limit is left out, with a
/// note saying how much.
pub struct Capture {
    text: Mutex<String>,
    bytes_max: usize,
    /// The last progress reported, in percent; `NO_PROGRESS` until one is.
    progress: std::sync::atomic::AtomicU8,
}

/// `Capture::progress` before any is reported.
const NO_PROGRESS: u8 = u8::MAX;

impl Capture {
    pub fn new(bytes_max: usize) -> Capture {
        Capture {
            text: Mutex::new(String::new()),
            bytes_max,
            progress: std::sync::atomic::AtomicU8::new(NO_PROGRESS),
        }
    }

    /// Notes a progress report (0..=100), for those following the run.
    pub fn set_progress(&self, percent: u8) {
        let p = percent.min(100);
        self.progress.store(p, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn progress(&self) -> Option<u8> {
        let p = self.progress.load(std::sync::atomic::Ordering::Relaxed);
        (p != NO_PROGRESS).then_some(p)
    }

    /// The text captured from byte `after` on (at most `bytes_max`, cut on
    /// a line's end where one is in reach), and the byte to ask from next:
    /// a follower asks again from where it got to.
    pub fn since(&self, after: u64, bytes_max: usize) -> (String, u64) {
        let t = self.text.lock().expect("capture lock");
        let total = t.len() as u64;
        let mut start = (after.min(total)) as usize;
        while !t.is_char_boundary(start) {
            start -= 1;
        }
        let rest = &t[start..];
        if rest.len() <= bytes_max {
            return (rest.to_string(), total);
        }
        let mut end = bytes_max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let end = rest[..end].rfind('\n').map_or(end, |i| i + 1);
        (rest[..end].to_string(), (start + end) as u64)
    }

    pub fn push(&self, line: &str) {
        let mut t = self.text.lock().expect("capture lock");
        // Twice the limit is kept, so that the cut (and its note) is made
        // once, at the end, on a character boundary.
        if t.len() < self.bytes_max * 2 {
            t.push_str(line);
            t.push('\n');
        }
    }

    /// The last line that is not blank, cut to `chars_max` characters: the
    /// likeliest reason a failed process gave, for its job's error.
    pub fn last_line(&self, chars_max: usize) -> Option<String> {
        let t = self.text.lock().expect("capture lock");
        let line = t.lines().rev().find(|l| !l.trim().is_empty())?;
        Some(line.trim().chars().take(chars_max).collect())
    }

    /// `ended with STATUS`, and the last line the process printed, if any.
    pub fn ended_with(&self, status: std::process::ExitStatus) -> String {
        match self.last_line(REASON_CHARS_MAX) {
            Some(line) => format!("ended with {status}: {line}"),
            None => format!("ended with {status}"),
        }
    }

    pub fn take(&self) -> String {
        crate::work::jobs::bounded_text(&self.text.lock().expect("capture lock"), self.bytes_max)
    }
}

/// How a process ended: its exit status, or why it did not.
pub type Ended = Result<std::process::ExitStatus, String>;

/// Runs `argv` in `cwd` with `env` added, in a process group of its own,
/// as `user` when given (`[jobs] run_as`), until it exits, `timeout_ms`
/// passes or `cancel` is set; its stdout and stderr go to `out`, line by
/// line. Whichever way it ends, the whole group is killed and gone (or the
/// error says it is not) before this returns.
pub fn run(
    argv: &[String],
    (cwd, user): (&Path, Option<&Account>),
    env: &[(String, String)],
    timeout_ms: u64,
    cancel: &AtomicBool,
    out: &Arc<Capture>,
) -> Ended {
    use std::process::{Command, Stdio};
    let Some(program) = argv.first() else {
        return Err("no command given".into());
    };
    let cannot = |e: std::io::Error| match user {
        Some(u) => format!(
            "cannot start `{program}` in {} as user {}: {e}",
            cwd.display(),
            u.name
        ),
        None => format!("cannot start `{program}` in {}: {e}", cwd.display()),
    };
    let mut command = Command::new(program);
    match user {
        Some(u) => u.apply(&mut command, Some(cwd)).map_err(cannot)?,
        None => {
            command.current_dir(cwd);
        }
    }
    // One pipe for stdout and stderr, as `2>&1` would: the log keeps the
    // order the process wrote its lines in (two pipes read by two threads
    // could put an error before the output printed ahead of it).
    let (from, to) = std::io::pipe().map_err(cannot)?;
    let to_err = to.try_clone().map_err(cannot)?;
    let child = command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(to)
        .stderr(to_err)
        .process_group(0)
        .spawn();
    // The command holds our copies of the pipe's write end: dropped, so the
    // reader sees the end once the process's own copies are closed.
    drop(command);
    let mut child = child.map_err(cannot)?;
    // The leader's pid is its group's id.
    let pgid = child.id() as libc::pid_t;
    let readers = [copy_lines(Some(Box::new(from) as _), out)];
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let why = loop {
        // The leader is only looked at, not reaped: until it is, its pid
        // (the group's id) cannot be given to another process, so the kill
        // below reaches this group and no other.
        match exited(pgid) {
            Ok(true) => break None,
            Ok(false) => {}
            Err(e) => break Some(format!("waiting for `{program}` failed: {e}")),
        }
        if cancel.load(Ordering::Relaxed) {
            break Some(format!(
                "cancelled; the process group of `{program}` was killed"
            ));
        }
        if Instant::now() >= deadline {
            break Some(format!(
                "`{program}` timed out after {timeout_ms} ms; its process group was killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    kill_group(pgid);
    let status = child.wait();
    let gone_by = Instant::now() + Duration::from_millis(GROUP_EXIT_WAIT_MS);
    let mut left = Vec::new();
    if !group_gone(pgid, gone_by) {
        left.push(format!(
            "processes of its group ({pgid}) were still there {GROUP_EXIT_WAIT_MS} ms after SIGKILL"
        ));
    }
    // Once the group is dead nothing writes to the pipes: the readers end
    // at EOF, unless a process that left the group still holds them.
    let mut readers: Vec<_> = readers.into_iter().flatten().collect();
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    if readers.iter().any(|r| !r.is_finished()) {
        left.push(format!(
            "its output was still open {GROUP_EXIT_WAIT_MS} ms after its group was killed \
             (a process that left the group holds it; its output is no longer read)"
        ));
    }
    for r in readers.drain(..).filter(|r| r.is_finished()) {
        let _ = r.join();
    }
    let ended = match (why, status) {
        (Some(why), _) => Err(why),
        (None, Ok(status)) => Ok(status),
        (None, Err(e)) => Err(format!("waiting for `{program}` failed: {e}")),
    };
    if left.is_empty() {
        return ended;
    }
    let left = format!("`{program}`: {}", left.join("; "));
    tracing::warn!("{left}");
    // Its outputs cannot be trusted while something of it may still run.
    Err(match ended {
        Ok(status) => format!("{left} (it ended with {status})"),
        Err(why) => format!("{why}; {left}"),
    })
}

/// Whether the child `pid` has exited, without reaping it.
fn exited(pid: libc::pid_t) -> std::io::Result<bool> {
    // SAFETY: a zeroed siginfo_t is valid; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: plain system call on our own child, `info` outlives it.
    if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // With WNOHANG, si_pid stays 0 while the child runs.
    // SAFETY: waitid filled `info` (or left it zeroed).
    Ok(unsafe { info.si_pid() } != 0)
}

/// SIGKILL to every process of the group `pgid`.
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: plain system call; `pgid` is a group this module started,
    // whose leader is not reaped yet.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
}

/// Waits until no process of group `pgid` is left (zombies whose parent
/// does not reap them do not count), or `until`; whether it is gone.
fn group_gone(pgid: libc::pid_t, until: Instant) -> bool {
    loop {
        // Members that are this process's own children (when it is the
        // reaper of orphans, as PID 1 in a container) are reaped here.
        // SAFETY: plain system call; no status is read.
        while unsafe { libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: signal 0 only checks that the group exists.
        let none = unsafe { libc::kill(-pgid, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if none || only_zombies(pgid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// Whether every process left in group `pgid` is a zombie (dead, waiting
/// for a parent that may never reap it: not every init does).
#[cfg(target_os = "linux")]
fn only_zombies(pgid: libc::pid_t) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in dir.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // gone meanwhile
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold anything.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<libc::pid_t>().ok());
        if group == Some(pgid) && state != Some("Z") {
            return false;
        }
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn only_zombies(_pgid: libc::pid_t) -> bool {
    false
}

type Source = Box<dyn std::io::Read + Send>;

/// Copies a child's output into `out` on a thread of its own.
fn copy_lines(from: Option<Source>, out: &Arc<Capture>) -> Option<std::thread::JoinHandle<()>> {
    use std::io::BufRead;
    let from = from?;
    let out = out.clone();
    Some(std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(from);
        let mut line = Vec::new();
        // Bytes, not `lines()`: output that is not UTF-8 is kept (lossily)
        // rather than ending the capture.
        while let Ok(n) = reader.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            out.push(text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_process_is_quoted_by_its_last_line() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(3 << 8);
        let log = Capture::new(1024);
        assert_eq!(log.ended_with(status), "ended with exit status: 3");
        log.push("reading page 1");
        log.push("no ink in the printer");
        log.push("   ");
        assert_eq!(
            log.ended_with(status),
            "ended with exit status: 3: no ink in the printer"
        );
        log.push(&"x".repeat(1000));
        assert_eq!(
            log.last_line(REASON_CHARS_MAX).unwrap().len(),
            REASON_CHARS_MAX
        );
    }

    fn go(argv: &[&str], timeout_ms: u64) -> (Ended, String) {
        let out = Arc::new(Capture::new(1024));
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let cancel = AtomicBool::new(false);
        let ended = run(
            &argv,
            (Path::new("."), None),
            &[],
            timeout_ms,
            &cancel,
            &out,
        );
        (ended, out.take())
    }

    #[test]
    fn a_process_is_captured_timed_out_and_named_when_missing() {
        let (ended, out) = go(&["sh", "-c", "echo one; echo two >&2; exit 3"], 10_000);
        assert_eq!(ended.unwrap().code(), Some(3));
        assert!(out.contains("one\n") && out.contains("two\n"), "{out}");
        let started = Instant::now();
        let (ended, _) = go(&["sleep", "30"], 100);
        assert!(ended.unwrap_err().contains("timed out after 100 ms"));
        assert!(started.elapsed() < Duration::from_secs(10));
        let (ended, _) = go(&["/no/such/program"], 1000);
        assert!(ended
            .unwrap_err()
            .contains("cannot start `/no/such/program`"));
    }

    #[test]
    fn output_and_errors_keep_the_order_they_were_written_in() {
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo out$i; echo err$i >&2; done";
        let (ended, out) = go(&["sh", "-c", script], 10_000);
        assert!(ended.unwrap().success());
        let want: String = (1..=10).map(|i| format!("out{i}\nerr{i}\n")).collect();
        assert_eq!(out, want);
    }

    /// Processes whose command line holds `marker` as one argument (a
    /// zombie's command line is empty: only live processes count).
    fn alive_with(marker: &str) -> Vec<String> {
        with(marker).into_iter().map(|(_, line)| line).collect()
    }

    fn pids_with(marker: &str) -> Vec<libc::pid_t> {
        with(marker).into_iter().map(|(pid, _)| pid).collect()
    }

    fn with(marker: &str) -> Vec<(libc::pid_t, String)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()) {
                found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            }
        }
        found
    }

    #[test]
    fn a_timeout_kills_the_whole_group_at_once() {
        let started = Instant::now();
        let (ended, _) = go(&["sh", "-c", "sleep 20.0131; true"], 300);
        let took = started.elapsed();
        let why = ended.unwrap_err();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            why.contains("timed out after 300 ms") && why.contains("process group was killed"),
            "{why}"
        );
        assert_eq!(alive_with("20.0131"), Vec::<String>::new());
    }

    #[test]
    fn a_cancel_kills_the_whole_group_at_once() {
        let out = Arc::new(Capture::new(1024));
        let argv: Vec<String> = ["sh", "-c", "sleep 20.0132; true"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let cancel = AtomicBool::new(false);
        let started = Instant::now();
        let ended = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                cancel.store(true, Ordering::Relaxed);
            });
            run(&argv, (Path::new("."), None), &[], 60_000, &cancel, &out)
        });
        let took = started.elapsed();
        let why = ended.unwrap_err();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(why.contains("cancelled"), "{why}");
        assert_eq!(alive_with("20.0132"), Vec::<String>::new());
    }

    #[test]
    fn a_background_child_does_not_outlive_its_job() {
        let started = Instant::now();
        let (ended, out) = go(&["sh", "-c", "sleep 30.0133 & echo hi"], 60_000);
        let took = started.elapsed();
        assert!(ended.unwrap().success());
        assert_eq!(out, "hi\n");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(alive_with("30.0133"), Vec::<String>::new());
    }

    #[test]
    fn a_process_that_left_its_group_is_reported_not_waited_for() {
        // `setsid` puts the sleep in a session of its own, out of reach;
        // it keeps the output pipe open.
        let escape = "setsid sh -c 'echo escaped; exec sleep 30.0134'";
        let started = Instant::now();
        let (ended, out) = go(&["sh", "-c", escape], 1000);
        let took = started.elapsed();
        for pid in pids_with("30.0134") {
            // SAFETY: a plain signal to the test's own stray process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert_eq!(out, "escaped\n");
        let why = ended.unwrap_err();
        assert!(
            why.contains("timed out after 1000 ms") && why.contains("output was still open"),
            "{why}"
        );
        let limit = Duration::from_millis(1000 + GROUP_EXIT_WAIT_MS);
        assert!(took >= limit && took < limit * 2, "took {took:?}");
    }

    #[test]
    fn captured_output_is_bounded() {
        let (_, out) = go(&["sh", "-c", "yes | head -c 100000"], 10_000);
        assert!(out.len() < 1200, "{}", out.len());
    }
}
