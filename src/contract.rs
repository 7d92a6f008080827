//! The JSON objects claro answers with, wherever it is asked: `--json` of
//! the CLI (`cli::output`) and the HTTP API (`node::web`) print the same
//! ones, as docs/CLI.md documents them. Plain structs built from the job
//! model, never `proto`'s enums; times in RFC 3339. No I/O.

use serde::Serialize;

/// A job in JSON (`claro job ID --json`, `claro jobs --json`, `claro submit
/// --json`): times in RFC 3339 (UTC, milliseconds), `instance` the server of
/// the current or last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobJson {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub instance: Option<String>,
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i32,
    /// How long one attempt may run before it is stopped.
    pub timeout_ms: u64,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `hotfolder` jobs: the hotfolder and the file's path under its `in/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotfolder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Only with `--log` (while it runs: its log so far, live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// While it runs: the last progress its attempt reported, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Only with `--profile`: where a script's time went, slowest first
    /// (times in microseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<crate::work::jobs::ProfileRow>>,
    /// One job's attempts, oldest first (not in lists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptJson>,
}

/// One attempt of a job in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptJson {
    pub attempt: u32,
    pub instance: Option<String>,
    /// `failed`, `released`, `cancelled`, `succeeded`, or the state of the
    /// attempt under way (`assigned`, `running`).
    pub outcome: String,
    pub assigned_at: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub error: Option<String>,
}

impl AttemptJson {
    pub fn new(a: &crate::work::jobs::Attempt) -> AttemptJson {
        AttemptJson {
            attempt: a.attempt,
            instance: a.instance.clone(),
            outcome: a.outcome.clone(),
            assigned_at: a.assigned_ms.map(rfc3339),
            started_at: a.started_ms.map(rfc3339),
            ended_at: a.ended_ms.map(rfc3339),
            error: a.error.clone(),
        }
    }
}

impl JobJson {
    pub fn new(job: &crate::work::jobs::Job, with_log: bool) -> JobJson {
        JobJson {
            id: job.id.clone(),
            kind: job.spec.kind.as_str().into(),
            state: job.state.as_str().into(),
            instance: job.instance.clone(),
            attempt: job.attempt,
            max_attempts: job.spec.max_attempts.max(job.attempt),
            priority: job.spec.priority,
            timeout_ms: job.spec.timeout_ms,
            result: job.result.clone(),
            error: job.error.clone(),
            created_at: rfc3339(job.created_ms),
            started_at: job.started_ms.map(rfc3339),
            finished_at: job.finished_ms.map(rfc3339),
            hotfolder: job.spec.file.as_ref().map(|f| f.hotfolder.clone()),
            input: job.spec.file.as_ref().map(|f| f.input.clone()),
            log: with_log.then(|| job.log.clone()),
            progress: None,
            profile: None,
            attempts: job.attempts.iter().map(AttemptJson::new).collect(),
        }
    }

    /// A running job as its instance sees it: its progress, and its log so
    /// far where the log is asked for.
    pub fn with_live(mut self, live: &crate::proto::LiveView) -> JobJson {
        self.progress = live.progress;
        if self.log.is_some() {
            self.log = Some(live.log.clone());
        }
        self
    }

    pub fn with_profile(mut self, job: &crate::work::jobs::Job) -> JobJson {
        self.profile = Some(job.profile.clone());
        self
    }
}

/// A stored script in JSON (`claro script show|list|add --json`); `code`
/// only with `show`; `size` in `list` is a text such as `120 bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptJson {
    pub name: String,
    pub version: u32,
    pub added_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl ScriptJson {
    pub fn new(s: &crate::work::jobs::StoredScript, with_code: bool) -> ScriptJson {
        ScriptJson {
            name: s.name.clone(),
            version: s.version,
            added_at: rfc3339(s.added_ms),
            code: with_code.then(|| s.code.clone()),
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC, e.g.
/// `2026-11-23T16:05:09.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
