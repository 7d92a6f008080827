//! External processes that jobs start: a `command` job's argv, and `run`
//! inside a script. No shell; the output is captured into a bounded text;
//! a timeout or a cancel kills the process.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Step of the wait for a process to exit.
const POLL_MS: u64 = 10;

/// Captured text, bounded: what comes past the limit is left out, with a
/// note saying how much.
pub struct Capture {
    text: Mutex<String>,
    bytes_max: usize,
}

impl Capture {
    pub fn new(bytes_max: usize) -> Capture {
        Capture {
            text: Mutex::new(String::new()),
            bytes_max,
        }
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

    pub fn take(&self) -> String {
        crate::work::jobs::bounded_text(&self.text.lock().expect("capture lock"), self.bytes_max)
    }
}

/// How a process ended: its exit status, or why it did not.
pub type Ended = Result<std::process::ExitStatus, String>;

/// Runs `argv` in `cwd` with `env` added, until it exits, `timeout_ms`
/// passes or `cancel` is set; its stdout and stderr go to `out`, line by line.
pub fn run(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout_ms: u64,
    cancel: &AtomicBool,
    out: &Arc<Capture>,
) -> Ended {
    use std::process::{Command, Stdio};
    let Some(program) = argv.first() else {
        return Err("no command given".into());
    };
    let mut child = Command::new(program)
        .args(&argv[1..])
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{program}` in {}: {e}", cwd.display()))?;
    let readers = [
        copy_lines(child.stdout.take().map(|o| Box::new(o) as _), out),
        copy_lines(child.stderr.take().map(|o| Box::new(o) as _), out),
    ];
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(format!("waiting for `{program}` failed: {e}")),
        }
        let why = if cancel.load(Ordering::Relaxed) {
            "cancelled".to_string()
        } else if Instant::now() >= deadline {
            format!("`{program}` timed out after {timeout_ms} ms")
        } else {
            std::thread::sleep(Duration::from_millis(POLL_MS));
            continue;
        };
        let _ = child.kill();
        let _ = child.wait();
        break Err(why);
    };
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    ended
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

    fn go(argv: &[&str], timeout_ms: u64) -> (Ended, String) {
        let out = Arc::new(Capture::new(1024));
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let cancel = AtomicBool::new(false);
        let ended = run(&argv, Path::new("."), &[], timeout_ms, &cancel, &out);
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
    fn captured_output_is_bounded() {
        let (_, out) = go(&["sh", "-c", "yes | head -c 100000"], 10_000);
        assert!(out.len() < 1200, "{}", out.len());
    }
}
