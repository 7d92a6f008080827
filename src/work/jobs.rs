//! The job model: what a job is, its states and limits, and the checks of a
//! submission. Pure: no I/O, no clock (times are passed in, carried by the
//! committed commands so that every replica applies the same ones).
//!
//! A job's life (every transition a Raft-committed `state::Command`):
//! `queued` → `assigned` (the coordinator placed attempt N on an instance)
//! → `running` (the instance reported it started; short jobs may skip this)
//! → `succeeded` | `failed`; or back to `queued` as attempt N+1 when the
//! attempt failed, timed out or its instance was lost, while attempts are
//! left; `cancelled` from any state that is not final.

use serde::{Deserialize, Serialize};

/// Bytes of a job id: 12 hex digits of milliseconds since the epoch and 8
/// random ones, so that ids sort by submission time.
pub const JOB_ID_BYTES: usize = 20;
/// Largest inline script.
pub const SCRIPT_BYTES_MAX: usize = 256 * 1024;
/// Arguments of a job (script arguments, or a command's argv).
pub const ARGS_COUNT_MAX: usize = 256;
/// Largest argument, environment value or working directory.
pub const ARG_BYTES_MAX: usize = 64 * 1024;
/// Environment variables of a command job.
pub const ENV_COUNT_MAX: usize = 64;
/// Largest submission as a whole: script, arguments, environment and
/// working directory together (it travels in one frame and one entry).
pub const SPEC_BYTES_MAX: usize = 512 * 1024;
/// Priorities run from -PRIORITY_MAX (last) to PRIORITY_MAX (first).
pub const PRIORITY_MAX: i32 = 100;
/// Most attempts a job may be given.
pub const ATTEMPTS_MAX: u32 = 100;
/// Longest time one attempt may run (a day).
pub const TIMEOUT_MS_MAX: u64 = 24 * 3600 * 1000;
/// Defaults of a submission.
pub const ATTEMPTS_DEFAULT: u32 = 3;
pub const TIMEOUT_MS_DEFAULT: u64 = 3600 * 1000;
/// Largest result and error text kept with a job.
pub const RESULT_BYTES_MAX: usize = 64 * 1024;
/// Largest captured log kept with a job (its first part, then a note).
pub const LOG_BYTES_MAX: usize = 64 * 1024;
/// Nesting of remote calls and child jobs (a call inside a called
/// function is one deeper).
pub const CALL_DEPTH_MAX: u32 = 8;
/// Longest function name of a remote call.
pub const FUNCTION_NAME_BYTES_MAX: usize = 128;
/// Rows of a job's profile (host functions and remote-call targets).
pub const PROFILE_ROWS_MAX: usize = 64;
/// Longest name of a profile row.
pub const PROFILE_NAME_BYTES_MAX: usize = 256;
/// Longest wait before a failed attempt is retried.
pub const BACKOFF_MS_MAX: u64 = 30_000;
/// Wait before the first retry; doubled for each further one.
pub const BACKOFF_MS_FIRST: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Script,
    Command,
    /// A file of a hotfolder: its action is a command template (`args`,
    /// placeholders substituted per file) or a script (`script`, which
    /// sees `FILE`), and `file` says which file.
    Hotfolder,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Script => "script",
            JobKind::Command => "command",
            JobKind::Hotfolder => "hotfolder",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "script" => Some(JobKind::Script),
            "command" => Some(JobKind::Command),
            "hotfolder" => Some(JobKind::Hotfolder),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// An attempt holds a slot of its instance.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Assigned | JobState::Running)
    }
}

/// What to run: a script's code and arguments, or a command's argv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    /// The script's code (`script` jobs), or empty with `stored`.
    #[serde(default)]
    pub script: String,
    /// A stored script to run (its latest version when the attempt starts)
    /// instead of `script`.
    #[serde(default)]
    pub stored: Option<String>,
    /// Script arguments (`ARGS` in the script), or the command's argv.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory of a command, relative to `shared_root`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment of a command, added to the instance's.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub priority: i32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    /// A remote call (`call_script(NAME, FN, args...)` in a script): the function
    /// of the stored script to run instead of its top level. Its `args` are
    /// then JSON values and its result is its return value as JSON.
    #[serde(default)]
    pub call: Option<String>,
    /// How deep in nested remote calls and child submissions this job is
    /// (0: submitted by a client), bounded by `CALL_DEPTH_MAX`.
    #[serde(default)]
    pub depth: u32,
    /// The file of a `hotfolder` job.
    #[serde(default)]
    pub file: Option<FileInput>,
}

/// Which file a `hotfolder` job processes, as the scan saw it when it was
/// stable, and what becomes of it after success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInput {
    pub hotfolder: String,
    /// Path under the hotfolder's `in/`, `/`-separated.
    pub input: String,
    pub bytes: u64,
    pub modified_ms: u64,
    /// The file's inode when it was taken (0: not known, from an older
    /// entry). With size and time, it tells the file from another one
    /// dropped later under the same name.
    #[serde(default)]
    pub inode: u64,
    /// The original is deleted after success (else moved to `done/`).
    pub delete_on_success: bool,
    /// A job folder (`input` is the folder; `bytes`, `modified_ms` and
    /// `inode` are its listing's, see `work::hotfolder::folder_print`).
    #[serde(default)]
    pub folder: bool,
    /// Its ticket when taken, relative to `in/`: `NAME.json` or `NAME.xml`
    /// beside it, or `NAME/ticket.json` (`.xml`) inside a job folder.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Its marker (`NAME.ready`, the `marker` trigger), removed at the claim.
    #[serde(default)]
    pub marker: Option<String>,
}

/// A file's modification time in ms since the epoch (0 when unknown).
pub fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl FileInput {
    /// The job folder this job took: the same listing (`print`), size and
    /// latest change.
    pub fn is_folder(&self, bytes: u64, modified_ms: u64, print: u64) -> bool {
        self.folder && (bytes, modified_ms, print) == (self.bytes, self.modified_ms, self.inode)
    }

    /// `meta` is the file this job took (same size, time and inode).
    pub fn is(&self, meta: &std::fs::Metadata) -> bool {
        debug_assert!(!self.folder, "a job folder is compared by its listing");
        use std::os::unix::fs::MetadataExt;
        meta.len() == self.bytes
            && modified_ms(meta) == self.modified_ms
            && (self.inode == 0 || meta.ino() == self.inode)
    }
}

impl JobSpec {
    /// A script job with the defaults of a submission.
    pub fn script(code: &str) -> JobSpec {
        JobSpec {
            kind: JobKind::Script,
            script: code.into(),
            stored: None,
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            priority: 0,
            max_attempts: ATTEMPTS_DEFAULT,
            timeout_ms: TIMEOUT_MS_DEFAULT,
            call: None,
            depth: 0,
            file: None,
        }
    }

    /// Checks every limit: a bad submission changes nothing.
    pub fn validate(&self) -> Result<(), String> {
        if self.script.len() > SCRIPT_BYTES_MAX {
            return Err(format!(
                "the script is {} bytes, the limit is {SCRIPT_BYTES_MAX}",
                self.script.len()
            ));
        }
        self.validate_call()?;
        if let Some(name) = &self.stored {
            check_script_name(name)?;
            if self.kind != JobKind::Script || !self.script.is_empty() {
                return Err("a stored script is named instead of a script's text".into());
            }
        }
        match self.kind {
            JobKind::Script if self.script.trim().is_empty() && self.stored.is_none() => {
                return Err("a script job needs a script".into())
            }
            JobKind::Command if self.args.is_empty() => {
                return Err("a command job needs a command (argv)".into())
            }
            JobKind::Command if !self.script.is_empty() => {
                return Err("a command job carries no script".into())
            }
            JobKind::Hotfolder if self.file.is_none() => {
                return Err("a hotfolder job names its file".into())
            }
            JobKind::Hotfolder if self.script.is_empty() == self.args.is_empty() => {
                return Err("a hotfolder job has a command template or a script".into())
            }
            _ => {}
        }
        self.validate_args()?;
        let total = self.script.len()
            + self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.cwd.as_ref().map_or(0, String::len);
        if total > SPEC_BYTES_MAX {
            return Err(format!(
                "the job is {total} bytes (script, arguments and environment), the limit is {SPEC_BYTES_MAX}"
            ));
        }
        self.validate_numbers()
    }

    fn validate_call(&self) -> Result<(), String> {
        if self.depth > CALL_DEPTH_MAX {
            return Err(format!(
                "calls and child jobs nested {} deep, the limit is {CALL_DEPTH_MAX}",
                self.depth
            ));
        }
        let Some(function) = &self.call else {
            return Ok(());
        };
        if self.stored.is_none() {
            return Err("a remote call names a stored script".into());
        }
        let ok = !function.is_empty()
            && function.len() <= FUNCTION_NAME_BYTES_MAX
            && function
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "`{function}` is not a function name (letters, digits and `_`, at most {FUNCTION_NAME_BYTES_MAX} bytes)"
            ));
        }
        Ok(())
    }

    fn validate_args(&self) -> Result<(), String> {
        if self.args.len() > ARGS_COUNT_MAX {
            return Err(format!(
                "{} arguments, the limit is {ARGS_COUNT_MAX}",
                self.args.len()
            ));
        }
        if self.env.len() > ENV_COUNT_MAX {
            return Err(format!(
                "{} environment variables, the limit is {ENV_COUNT_MAX}",
                self.env.len()
            ));
        }
        let texts = self
            .args
            .iter()
            .chain(self.cwd.iter())
            .chain(self.env.iter().flat_map(|(k, v)| [k, v]));
        if let Some(t) = texts.into_iter().find(|t| t.len() > ARG_BYTES_MAX) {
            return Err(format!(
                "an argument of {} bytes, the limit is {ARG_BYTES_MAX}",
                t.len()
            ));
        }
        if let Some(cwd) = &self.cwd {
            check_relative(cwd)?;
        }
        if let Some(f) = &self.file {
            check_relative(&f.input)?;
            for companion in f.ticket.iter().chain(&f.marker) {
                check_relative(companion)?;
                if companion.len() > ARG_BYTES_MAX {
                    return Err("a hotfolder job's ticket over its limits".into());
                }
            }
            if f.hotfolder.is_empty()
                || f.hotfolder.len() > ARG_BYTES_MAX
                || f.input.len() > ARG_BYTES_MAX
            {
                return Err("a hotfolder job's file over its limits".into());
            }
        }
        if let Some((k, _)) = self
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(format!("`{k}` is not an environment variable name"));
        }
        Ok(())
    }

    fn validate_numbers(&self) -> Result<(), String> {
        if self.priority.abs() > PRIORITY_MAX {
            return Err(format!(
                "priority {} is outside -{PRIORITY_MAX}..={PRIORITY_MAX}",
                self.priority
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > ATTEMPTS_MAX {
            return Err(format!(
                "max attempts {} is outside 1..={ATTEMPTS_MAX}",
                self.max_attempts
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > TIMEOUT_MS_MAX {
            return Err(format!(
                "timeout {} ms is outside 1..={TIMEOUT_MS_MAX} ms",
                self.timeout_ms
            ));
        }
        Ok(())
    }
}

/// A path that stays under the folder it is relative to: not absolute, no
/// `..`, no NUL.
pub fn check_relative(path: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    let escapes = p.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if escapes || path.contains('\0') {
        return Err(format!(
            "`{path}` must be a relative path that stays under shared_root"
        ));
    }
    Ok(())
}

/// A new job id for a submission at `now_ms`, `random` making it unique.
pub fn new_job_id(now_ms: u64, random: u32) -> String {
    format!("{:012x}{random:08x}", now_ms & 0xffff_ffff_ffff)
}

/// Whether `id` is shaped like a job id.
pub fn check_job_id(id: &str) -> Result<(), String> {
    let ok = id.len() == JOB_ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit());
    if ok && id.bytes().all(|b| !b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a job id ({JOB_ID_BYTES} lowercase hex digits)",
            id.escape_debug()
        ))
    }
}

/// How an attempt ended, as its instance reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// The script's return value or the command's exit status, as text.
    pub result: Option<String>,
    pub error: Option<String>,
    /// The captured log (bounded by `LOG_BYTES_MAX`).
    pub log: String,
    /// Where a script's time went (empty for commands).
    #[serde(default)]
    pub profile: Vec<ProfileRow>,
}

impl Outcome {
    /// An attempt that failed with `error` (cut to `RESULT_BYTES_MAX`),
    /// keeping the log it wrote.
    pub fn failed(error: String, log: String) -> Outcome {
        Outcome {
            ok: false,
            result: None,
            error: Some(bounded_text(&error, RESULT_BYTES_MAX)),
            log,
            profile: Vec::new(),
        }
    }
}

/// One line of a job's profile: a host function or a remote call's target
/// (`call lib.f`), how often it was called and where its time went. Calls
/// that wait on the cluster split their time into preparing (building and
/// committing the request), waiting (for the cluster to act) and receiving
/// (reading the answer); the rest count all of it as waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRow {
    pub name: String,
    pub calls: u64,
    pub total_us: u64,
    pub prepare_us: u64,
    pub wait_us: u64,
    pub receive_us: u64,
}

impl Outcome {
    pub fn validate(&self) -> Result<(), String> {
        let long = |t: &Option<String>| t.as_ref().is_some_and(|t| t.len() > RESULT_BYTES_MAX);
        if long(&self.result) || long(&self.error) || self.log.len() > LOG_BYTES_MAX {
            return Err("an outcome over its size limits".into());
        }
        let long_name = self
            .profile
            .iter()
            .any(|r| r.name.len() > PROFILE_NAME_BYTES_MAX);
        if self.profile.len() > PROFILE_ROWS_MAX || long_name {
            return Err("a profile over its size limits".into());
        }
        Ok(())
    }
}

/// A named, versioned script in the replicated database (`claro script`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredScript {
    pub name: String,
    pub version: u32,
    pub code: String,
    pub added_ms: u64,
}

/// Longest stored script name.
pub const SCRIPT_NAME_BYTES_MAX: usize = 128;

/// A stored script's name: 1..=128 of a-z A-Z 0-9 `-` `_` `.`.
pub fn check_script_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= SCRIPT_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a script name (1..={SCRIPT_NAME_BYTES_MAX} of a-z A-Z 0-9 - _ .)",
            name.escape_debug()
        ))
    }
}

/// One attempt's end in a batched report (`Command::JobsFinished`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptEnd {
    pub id: String,
    pub attempt: u32,
    pub outcome: Outcome,
}

impl AttemptEnd {
    /// Roughly the bytes it takes in an entry.
    pub fn size_bytes(&self) -> usize {
        let o = &self.outcome;
        64 + o.log.len()
            + o.result.as_ref().map_or(0, String::len)
            + o.error.as_ref().map_or(0, String::len)
            + o.profile.iter().map(|r| 48 + r.name.len()).sum::<usize>()
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with a note
/// saying how much was left out.
pub fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let note = format!("\n[... {} more bytes not kept]", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_string();
    out.push_str(&note);
    assert!(out.len() <= max);
    out
}

/// Time before attempt `next` (2, 3, ...) of a job that failed may start.
/// How long a job waits after its `releases`-th release before it may be
/// placed again: nothing after the first (its instance was lost: run it
/// elsewhere at once), then 100 ms doubling up to `RELEASE_BACKOFF_MS_MAX`,
/// so that `RELEASES_MAX` releases take minutes, never a burst.
pub fn release_backoff_ms(releases: u32) -> u64 {
    match releases {
        0 | 1 => 0,
        r => (BACKOFF_MS_FIRST << (r - 2).min(16)).min(RELEASE_BACKOFF_MS_MAX),
    }
}

/// The longest wait between two releases of a job.
pub const RELEASE_BACKOFF_MS_MAX: u64 = 5_000;

pub fn backoff_ms(next: u32) -> u64 {
    let doublings = next.saturating_sub(2).min(20);
    (BACKOFF_MS_FIRST << doublings).min(BACKOFF_MS_MAX)
}

impl Job {
    /// The job as a list shows it: without its script, arguments, log, and
    /// with result and error cut to `SUMMARY_TEXT_BYTES_MAX`.
    pub fn summary(mut self) -> Job {
        self.spec.script.clear();
        self.spec.args.clear();
        self.spec.env.clear();
        self.log.clear();
        self.result = self
            .result
            .map(|t| bounded_text(&t, SUMMARY_TEXT_BYTES_MAX));
        self.error = self.error.map(|t| bounded_text(&t, SUMMARY_TEXT_BYTES_MAX));
        self
    }
}

/// Result and error bytes a job list shows per job.
pub const SUMMARY_TEXT_BYTES_MAX: usize = 1024;

/// One job as stored and shown (`claro job ID --json` prints these fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// The instance of the current (or last) attempt.
    pub instance: Option<String>,
    pub attempt: u32,
    pub created_ms: u64,
    pub assigned_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// The current attempt may not start before this (retry backoff).
    pub not_before_ms: u64,
    pub result: Option<String>,
    pub error: Option<String>,
    pub log: String,
    /// The profile of the attempt that ended last (scripts).
    pub profile: Vec<ProfileRow>,
    /// Every attempt so far, oldest first (the newest `ATTEMPTS_KEPT`): the
    /// ended ones as recorded, the current one as the job stands. Only a
    /// single job's read fills it; lists leave it empty.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// Attempts of one job kept in its history; older ones are dropped (a job
/// retried by hand again and again).
pub const ATTEMPTS_KEPT: u32 = 32;

/// One attempt of a job: where it ran, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub instance: Option<String>,
    pub assigned_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// `failed`, `released` (its instance stopped or was lost), `cancelled`,
    /// `succeeded`, or the current state of the attempt under way.
    pub outcome: String,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_over_a_limit_is_refused_naming_it() {
        let mut deep = JobSpec::script("");
        deep.stored = Some("lib".into());
        deep.call = Some("f".into());
        deep.depth = CALL_DEPTH_MAX;
        assert!(deep.validate().is_ok());
        deep.depth = CALL_DEPTH_MAX + 1;
        assert!(deep.validate().unwrap_err().contains("nested 9 deep"));
        deep.depth = 0;
        deep.call = Some("f; g".into());
        assert!(deep.validate().unwrap_err().contains("not a function name"));
        deep.call = Some("f".into());
        deep.stored = None;
        deep.script = "1".into();
        assert!(deep
            .validate()
            .unwrap_err()
            .contains("names a stored script"));
        assert!(JobSpec::script("1 + 1").validate().is_ok());
        let e = JobSpec::script(&"x".repeat(SCRIPT_BYTES_MAX + 1))
            .validate()
            .unwrap_err();
        assert!(e.contains("limit is 262144"), "{e}");
        assert!(JobSpec::script(" ").validate().is_err());
        let mut s = JobSpec::script("1");
        s.priority = 101;
        assert!(s.validate().unwrap_err().contains("priority 101"));
        s.priority = 0;
        s.max_attempts = 0;
        assert!(s.validate().is_err());
        s.max_attempts = 1;
        s.cwd = Some("../etc".into());
        assert!(s
            .validate()
            .unwrap_err()
            .contains("stays under shared_root"));
        s.cwd = Some("/etc".into());
        assert!(s.validate().is_err());
        s.cwd = Some("in/sub".into());
        assert!(s.validate().is_ok());
        let mut c = JobSpec::script("");
        c.kind = JobKind::Command;
        assert!(c.validate().unwrap_err().contains("needs a command"));
        c.args = vec!["true".into()];
        assert!(c.validate().is_ok());
        c.env = vec![("A=B".into(), "x".into())];
        assert!(c.validate().is_err());
    }

    #[test]
    fn job_ids_sort_by_time_and_are_checked() {
        let a = new_job_id(1_700_000_000_000, 0xffff_ffff);
        let b = new_job_id(1_700_000_000_001, 0);
        assert!(a < b);
        assert_eq!(a.len(), JOB_ID_BYTES);
        assert!(check_job_id(&a).is_ok());
        assert!(check_job_id("../../etc/passwd").is_err());
        assert!(check_job_id(&a.to_uppercase()).is_err());
    }

    #[test]
    fn texts_are_bounded_on_a_character_boundary_with_a_note() {
        let t = "é".repeat(100);
        let b = bounded_text(&t, 80);
        assert!(b.len() <= 80);
        assert!(b.ends_with("[... 200 more bytes not kept]"), "{b}");
        assert_eq!(bounded_text("short", 80), "short");
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_limit() {
        assert_eq!(backoff_ms(2), 100);
        assert_eq!(backoff_ms(3), 200);
        assert_eq!(backoff_ms(50), BACKOFF_MS_MAX);
    }
}
