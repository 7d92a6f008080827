//! Failover as a user sees it, the same way for claro and etcd: right after
//! kill -9 of the coordinator (leader), the system's own command-line client
//! is run as a process, with its own defaults and no limit of ours, again and
//! again until one call exits 0. The figure is the time from the kill to that
//! exit. Lives outside `benches/*.rs` so that Cargo does not take it for a
//! bench target of its own.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The whole measurement from the kill, at most. Far above both clients' own
/// limits (claro's CLI gives up after 20 s, etcdctl after 5 s), so it never
/// cuts a call that would have ended by itself; a call still running at that
/// point is killed and the measurement fails.
const WAIT_MAX_S: u64 = 60;
/// Calls at most.
const CALLS_MAX: usize = 1_000;
/// Pause after a failed call, as a retrying script would make, so that quick
/// failures do not take the CPU that the election needs.
const RETRY_PAUSE_MS: u64 = 5;
/// Time between two looks at whether a running call has exited: the
/// resolution of the figures.
const POLL_MS: u64 = 1;
/// Characters kept of a failed call's error output.
const ERROR_CHARS_MAX: usize = 300;

/// One client call: how long it ran, and its error output if it failed.
pub struct Call {
    pub ms: u64,
    pub error: Option<String>,
}

pub struct Failover {
    /// From the kill to the exit of the first successful call.
    pub total_ms: u64,
    /// Every call, in order; the last one succeeded.
    pub calls: Vec<Call>,
    /// One call of the same kind on the healthy cluster before the kill.
    pub healthy_call_ms: Option<u64>,
    /// Events seen in the servers' logs: (what, ms after the kill).
    pub timeline: Vec<(String, u64)>,
}

impl Failover {
    pub fn last_call_ms(&self) -> u64 {
        self.calls.last().map_or(0, |c| c.ms)
    }

    /// One line per call, for the log of the run.
    pub fn describe(&self, who: &str) -> String {
        let mut out = format!(
            "{who}: {} ms from the kill, {} call(s)\n",
            self.total_ms,
            self.calls.len()
        );
        if let Some(ms) = self.healthy_call_ms {
            out += &format!("  before the kill, one call on the healthy cluster: {ms} ms\n");
        }
        for (what, ms) in &self.timeline {
            out += &format!("  {ms} ms after the kill: {what}\n");
        }
        for (i, c) in self.calls.iter().enumerate() {
            let outcome = c.error.as_deref().unwrap_or("ok");
            out += &format!("  call {}: {} ms, {outcome}\n", i + 1, c.ms);
        }
        out
    }
}

/// Runs `call(i)` for i = 0, 1, ... until one exits 0; `killed` is when the
/// coordinator was killed.
pub fn until_success(
    killed: Instant,
    mut call: impl FnMut(usize) -> Command,
) -> Result<Failover, String> {
    let deadline = killed + Duration::from_secs(WAIT_MAX_S);
    let mut calls = Vec::new();
    for i in 0..CALLS_MAX {
        let done = run(call(i), deadline)?;
        let ok = done.error.is_none();
        calls.push(done);
        if ok {
            let total_ms = killed.elapsed().as_millis() as u64;
            return Ok(Failover {
                total_ms,
                calls,
                healthy_call_ms: None,
                timeline: Vec::new(),
            });
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
    }
    let last = calls
        .last()
        .and_then(|c| c.error.clone())
        .unwrap_or_default();
    Err(format!(
        "no successful call within {WAIT_MAX_S} s and {CALLS_MAX} calls of the kill \
         ({} calls; last: {last})",
        calls.len()
    ))
}

/// One call on a healthy cluster (the client's own cost, for comparison);
/// its milliseconds if it succeeded.
pub fn healthy_call_ms(call: Command) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(WAIT_MAX_S);
    let done = run(call, deadline)?;
    match done.error {
        None => Ok(done.ms),
        Some(e) => Err(format!("a call on the healthy cluster failed: {e}")),
    }
}

/// Runs one call to its end (killed at `deadline`).
fn run(mut call: Command, deadline: Instant) -> Result<Call, String> {
    let started = Instant::now();
    let mut child = call
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the client: {e}"))?;
    let status = wait(&mut child, deadline)?;
    let ms = started.elapsed().as_millis() as u64;
    let error = (!status.success()).then(|| format!("{status}: {}", error_output(&mut child)));
    Ok(Call { ms, error })
}

/// How the call exited; a call still running at `deadline` is killed.
fn wait(child: &mut Child, deadline: Instant) -> Result<ExitStatus, String> {
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "a client call still ran {WAIT_MAX_S} s after the kill"
            ));
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// The last line of a finished call's error output, shortened.
fn error_output(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    let line = text.lines().rev().find(|l| !l.trim().is_empty());
    line.unwrap_or("(no error output)")
        .chars()
        .take(ERROR_CHARS_MAX)
        .collect()
}
