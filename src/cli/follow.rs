//! Following a running job from the CLI (`run`, `submit --wait`, `wait`):
//! its log lines as they come and its progress, asked of any instance
//! (`Request::Live`, forwarded to the one running it). `run` prints the log
//! to stdout, as it would at the end; `wait` and `submit --wait` keep
//! stdout for the result and show the log on stderr. Progress goes to
//! stderr: a bar on a terminal, a plain line per change otherwise. Nothing
//! of this with `--json`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::cli::client::{call, ClientArgs};
use crate::config::Config;
use crate::proto::{LiveView, Request, Response};
use crate::work::jobs::Job;

/// Time between two looks at a running job's log.
const FOLLOW_POLL_MS: u64 = 400;
/// Width of the progress bar, in characters.
const BAR_CHARS: usize = 30;

/// Where a follower got to.
pub struct Follow {
    /// Whether to follow at all (not with `--json`).
    on: bool,
    /// The log goes to stdout (`run`), else to stderr.
    log_to_stdout: bool,
    attempt: u32,
    printed_bytes: u64,
    progress: Option<u8>,
    /// A bar is drawn on stderr and not ended by a newline yet.
    bar_open: bool,
    next_at: Instant,
}

impl Follow {
    pub fn new(json: bool, log_to_stdout: bool) -> Follow {
        Follow {
            on: !json,
            log_to_stdout,
            attempt: 0,
            printed_bytes: 0,
            progress: None,
            bar_open: false,
            next_at: Instant::now(),
        }
    }

    /// Asks for what is new, if it is time to; a failed question is
    /// skipped (the wait itself reports what matters).
    pub fn poll(&mut self, config: &Config, args: &ClientArgs, id: &str) {
        if !self.on || Instant::now() < self.next_at {
            return;
        }
        self.next_at = Instant::now() + Duration::from_millis(FOLLOW_POLL_MS);
        let req = Request::Live {
            id: id.to_string(),
            after_bytes: self.printed_bytes,
            forwarded: false,
        };
        if let Ok((_, Response::Live(Some(view)))) = call(config, args, &req) {
            self.show(view);
        }
    }

    fn show(&mut self, view: LiveView) {
        if view.attempt != self.attempt {
            // A new attempt starts its log anew: what was asked from an
            // offset of the attempt before is asked again from its start.
            let asked_from = view.next_bytes.saturating_sub(view.log.len() as u64);
            self.attempt = view.attempt;
            self.printed_bytes = 0;
            if asked_from > 0 {
                self.next_at = Instant::now();
                return;
            }
        }
        if !view.log.is_empty() {
            self.close_bar();
            self.emit(&view.log);
        }
        self.printed_bytes = view.next_bytes;
        if view.progress != self.progress {
            self.progress = view.progress;
            if let Some(p) = view.progress {
                self.draw(p);
            }
        }
    }

    fn emit(&self, text: &str) {
        let text = crate::cli::output::escape_log(text);
        if self.log_to_stdout {
            let _ = std::io::stdout().write_all(text.as_bytes());
            let _ = std::io::stdout().flush();
        } else {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }

    fn draw(&mut self, percent: u8) {
        let mut err = std::io::stderr();
        if err.is_terminal() {
            let full = BAR_CHARS * percent as usize / 100;
            let bar = format!("{}{}", "#".repeat(full), " ".repeat(BAR_CHARS - full));
            let _ = write!(err, "\r[{bar}] {percent:>3}%");
            self.bar_open = true;
        } else {
            let _ = writeln!(err, "progress {percent}%");
        }
    }

    fn close_bar(&mut self) {
        if self.bar_open {
            let _ = writeln!(std::io::stderr());
            self.bar_open = false;
        }
    }

    /// The part of the ended job's stored log not printed yet (all of it
    /// unless the attempt followed is the one that ended).
    pub fn rest_of<'a>(&mut self, job: &'a Job) -> &'a str {
        self.close_bar();
        if !self.on || job.attempt != self.attempt {
            return &job.log;
        }
        let mut from = (self.printed_bytes as usize).min(job.log.len());
        while !job.log.is_char_boundary(from) {
            from -= 1;
        }
        &job.log[from..]
    }
}
