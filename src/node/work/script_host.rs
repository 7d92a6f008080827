//! What a running script reaches through this instance (`script::Host`),
//! answering the calls of its worker process (`sandbox`):
//! its log, the cluster's settings, read-only SQL on the local replica,
//! files under `shared_root`, external commands, child jobs and remote
//! calls. Every method runs on the script's blocking thread and is bounded
//! in time by the script's deadline and cancel.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::process::Capture;
use super::Work;
use crate::clock::now_ms;
use crate::node::cluster::propose;
use crate::proto::Response;
use crate::state::{jobs as db, Command};
use crate::work::jobs::{Job, JobKind, JobSpec, JobState};
use crate::work::script::{CallTarget, Called, FileOp, Split};

/// Rows one `sql` call may return.
pub const SQL_ROWS_MAX: usize = 10_000;
/// Longest time one `sql` query may run.
pub const SQL_MS_MAX: u64 = 10_000;
/// Output of `run` kept for the script.
pub const RUN_OUTPUT_BYTES_MAX: usize = 1024 * 1024;
/// Longest pause between two looks at a called job.
const CALL_POLL_MS: u64 = 20;

pub struct ScriptHost {
    pub log: Arc<Capture>,
    pub work: Arc<Work>,
    /// The job running the script: its children are one deeper and share
    /// its priority.
    pub job: Job,
    /// Where the script may write and remove files (a hotfolder action: its
    /// staging folder); `None`: anywhere under `shared_root` but a
    /// hotfolder's working area.
    pub write_under: Option<PathBuf>,
    /// The job's own folder in a working area, which it may read (a
    /// hotfolder action: its claimed input and ticket).
    pub own_work: Option<PathBuf>,
    /// The result ticket's fields a hotfolder script sets (`ticket_set`);
    /// `None` for other scripts.
    pub fields: Option<Arc<std::sync::Mutex<crate::work::ticket::Fields>>>,
}

impl crate::work::script::Host for ScriptHost {
    fn log(&self, line: &str) {
        self.log.push(line);
    }

    fn progress(&self, percent: u8) {
        self.log.set_progress(percent);
        self.log.push(&format!("[progress {percent}%]"));
    }

    fn ticket_set(&self, key: &str, value: &str) -> Result<(), String> {
        let fields = self
            .fields
            .as_ref()
            .ok_or("ticket_set is for hotfolder scripts: only they have a result ticket")?;
        crate::work::ticket::set(&mut fields.lock().expect("fields lock"), key, value)
    }

    fn kv_get(&self, key: &str) -> Result<Option<String>, String> {
        let read = crate::node::cluster::read_setting(&self.work.cluster, key, false);
        match async_std::task::block_on(read) {
            Response::Value { value, .. } => {
                Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
            }
            Response::Error { message } | Response::Unavailable { message } => Err(message),
            other => Err(format!("{other:?}")),
        }
    }

    fn kv_set(&self, key: &str, value: &str) -> Result<(), String> {
        let command = Command::Put {
            key: key.to_string(),
            value: value.as_bytes().to_vec(),
        };
        self.commit(command)
    }

    fn sql(&self, query: &str, params: &[Value]) -> Result<Vec<Value>, String> {
        let path = {
            let guard = self.work.cluster.core();
            let core = guard.as_ref().ok_or("this instance holds no database")?;
            core.state().path().to_path_buf()
        };
        read_only_query(&path, query, params, SQL_MS_MAX).map_err(|e| e.to_string())
    }

    fn file(&self, op: FileOp) -> Result<Value, String> {
        let reach = super::shared_files::Reach {
            root: &self.work.cluster.cfg.shared_root,
            write_under: self.write_under.as_deref(),
            own_work: self.own_work.as_deref(),
        };
        super::shared_files::file_op(reach, op)
    }

    fn run(&self, argv: &[String], timeout_ms: u64, cancel: &AtomicBool) -> Result<Value, String> {
        let out = Arc::new(Capture::new(RUN_OUTPUT_BYTES_MAX));
        let root = &self.work.cluster.cfg.shared_root;
        let user = self.work.account.as_ref();
        let status = super::process::run(argv, (root, user), &[], timeout_ms, cancel, &out)?;
        Ok(json!({ "status": status.code().unwrap_or(-1), "output": out.take() }))
    }

    fn submit(&self, spec: Value) -> Result<String, String> {
        let spec = child_spec(&spec, &self.job)?;
        self.submit_spec(spec)
    }

    fn submit_many(&self, specs: Vec<Value>) -> Result<Vec<String>, String> {
        use crate::work::submission::BATCH_COUNT_MAX;
        if specs.is_empty() || specs.len() > BATCH_COUNT_MAX {
            return Err(format!(
                "submit takes a list of 1 to {BATCH_COUNT_MAX} jobs"
            ));
        }
        let jobs = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let spec = child_spec(s, &self.job).map_err(|e| format!("job {i}: {e}"))?;
                Ok((
                    crate::work::jobs::new_job_id(now_ms(), rand::random()),
                    spec,
                ))
            })
            .collect::<Result<Vec<(String, JobSpec)>, String>>()?;
        let ids = jobs.iter().map(|(id, _)| id.clone()).collect();
        self.commit(Command::JobsSubmit {
            jobs,
            at_ms: now_ms(),
        })?;
        Ok(ids)
    }

    fn call(
        &self,
        target: CallTarget,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<Called, String> {
        let started = Instant::now();
        let left_ms = deadline.saturating_duration_since(started).as_millis() as u64;
        if left_ms == 0 {
            return Err("no time left before the script's timeout".into());
        }
        let mut spec = JobSpec::script("");
        spec.stored = Some(target.script.clone());
        spec.call = Some(target.function.clone());
        spec.args = target.args.iter().map(Value::to_string).collect();
        spec.depth = self.job.spec.depth + 1;
        spec.priority = self.job.spec.priority;
        // Run once: an error there is this script's error at once, and the
        // caller (itself a job with attempts) decides what to do.
        spec.max_attempts = 1;
        spec.timeout_ms = left_ms;
        let id = self.submit_spec(spec)?;
        let submitted = Instant::now();
        let child = self.wait_final(&id, deadline, cancel)?;
        let waited = Instant::now();
        let value = match child.state {
            JobState::Succeeded => serde_json::from_str(child.result.as_deref().unwrap_or("null"))
                .map_err(|e| format!("the call's value is not JSON: {e}")),
            _ => Err(format!(
                "{} (job {id})",
                child.error.unwrap_or_else(|| child.state.as_str().into())
            )),
        };
        let split = Split {
            prepare_us: (submitted - started).as_micros() as u64,
            wait_us: (waited - submitted).as_micros() as u64,
            receive_us: waited.elapsed().as_micros() as u64,
        };
        Ok(Called { value, split })
    }
}

/// A hotfolder script's file: `FILE` as the script sees it, and the one
/// folder it may write in.
pub struct FileContext {
    pub value: Value,
    pub output_dir: PathBuf,
    /// The job's folder in the working area (`FILE.input` is in it).
    pub work_folder: PathBuf,
    /// Where `ticket_set` puts the result ticket's fields.
    pub fields: Arc<std::sync::Mutex<crate::work::ticket::Fields>>,
}

/// Runs `job`'s script on this (blocking) thread: its log and profile go
/// to `log` and `profiler`. The name in messages is the stored script's,
/// the hotfolder's, or `script`.
pub fn run_job_script(
    work: Arc<Work>,
    job: &Job,
    cancel: Arc<AtomicBool>,
    (log, profiler): (&Arc<Capture>, &Arc<crate::work::script::Profiler>),
    file: Option<FileContext>,
) -> Result<String, crate::work::script::Failure> {
    let hotfolder = job.spec.file.as_ref().map(|f| f.hotfolder.as_str());
    let name = job.spec.stored.as_deref().or(hotfolder).unwrap_or("script");
    let (value, write_under, own_work, fields) = match file {
        Some(f) => (
            Some(f.value),
            Some(f.output_dir),
            Some(f.work_folder),
            Some(f.fields),
        ),
        None => (None, None, None, None),
    };
    let program = crate::work::script::Program {
        name,
        code: &job.spec.script,
        args: &job.spec.args,
        call: job.spec.call.as_deref(),
        file: value,
    };
    let host = Arc::new(ScriptHost {
        log: log.clone(),
        work: work.clone(),
        job: job.clone(),
        write_under,
        own_work,
        fields,
    });
    // In a worker process of this instance: a script that breaks its limits
    // ends its worker, never this instance.
    super::sandbox::run(
        &work.scripts,
        &program,
        job.spec.timeout_ms,
        cancel,
        host,
        profiler,
    )
}

impl ScriptHost {
    fn commit(&self, command: Command) -> Result<(), String> {
        command.validate()?;
        match async_std::task::block_on(propose(&self.work.cluster, command, None, false)) {
            Response::Proposed { .. } => Ok(()),
            Response::Error { message } | Response::Unavailable { message } => Err(message),
            other => Err(format!("{other:?}")),
        }
    }

    fn submit_spec(&self, spec: JobSpec) -> Result<String, String> {
        let id = crate::work::jobs::new_job_id(now_ms(), rand::random());
        let command = Command::JobSubmit {
            id: id.clone(),
            spec,
            at_ms: now_ms(),
        };
        self.commit(command)?;
        Ok(id)
    }

    /// Waits until job `id` is final in this replica. A cancel or the
    /// deadline cancels the job too (it must not run on for nobody).
    fn wait_final(&self, id: &str, deadline: Instant, cancel: &AtomicBool) -> Result<Job, String> {
        loop {
            let seen = {
                let guard = self.work.cluster.core();
                let core = guard.as_ref().ok_or("this instance holds no database")?;
                db::job(core.state().conn(), id).map_err(|e| e.to_string())?
            };
            if let Some(job) = seen.filter(|j| j.state.is_final()) {
                return Ok(job);
            }
            let stopped = cancel.load(std::sync::atomic::Ordering::Relaxed);
            if stopped || Instant::now() >= deadline {
                let _ = self.commit(Command::JobCancel {
                    id: id.to_string(),
                    at_ms: now_ms(),
                });
                return Err(format!("job {id} did not end before the script's timeout"));
            }
            self.work.wait_applied(Duration::from_millis(CALL_POLL_MS));
        }
    }
}

/// A child job from the map a script gave `submit`: exactly one of
/// `script` (its text), `stored` (a stored script's name) or `command`
/// (an argv); optional `args`, `priority`, `max_attempts`, `timeout_ms`,
/// `cwd`. Anything else is refused by name.
fn child_spec(given: &Value, parent: &Job) -> Result<JobSpec, String> {
    let map = given.as_object().ok_or("submit takes a map")?;
    let text = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be a string, not {other}")),
        }
    };
    let number = |key: &str| -> Result<Option<i64>, String> {
        match map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or(format!("`{key}` must be a number, not {v}")),
        }
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match map.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()),
            Some(other) => Err(format!("`{key}` must be an array, not {other}")),
        }
    };
    const KEYS: [&str; 8] = [
        "script",
        "stored",
        "command",
        "args",
        "priority",
        "max_attempts",
        "timeout_ms",
        "cwd",
    ];
    if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}` (known: {})", KEYS.join(", ")));
    }
    let mut spec = JobSpec::script(&text("script")?.unwrap_or_default());
    spec.stored = text("stored")?;
    spec.args = strings("args")?;
    if map.contains_key("command") {
        spec.kind = JobKind::Command;
        spec.args = strings("command")?;
    }
    let chosen = ["script", "stored", "command"]
        .iter()
        .filter(|k| map.contains_key(**k))
        .count();
    if chosen != 1 {
        return Err("give exactly one of `script`, `stored` or `command`".into());
    }
    spec.cwd = text("cwd")?;
    spec.priority = number("priority")?.map_or(parent.spec.priority, |p| {
        p.clamp(i32::MIN as i64, i32::MAX as i64) as i32
    });
    if let Some(n) = number("max_attempts")? {
        spec.max_attempts = n.clamp(0, u32::MAX as i64) as u32;
    }
    if let Some(n) = number("timeout_ms")? {
        spec.timeout_ms = n.max(0) as u64;
    }
    spec.depth = parent.spec.depth + 1;
    spec.validate()?;
    Ok(spec)
}

/// Runs `query` on a read-only connection of its own to the replica's
/// database file: writes, `ATTACH` and queries past `ms_max` are refused.
pub fn read_only_query(
    path: &Path,
    query: &str,
    params: &[Value],
    ms_max: u64,
) -> rusqlite::Result<Vec<Value>> {
    use rusqlite::{limits::Limit, types::ValueRef, OpenFlags};
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.busy_timeout(Duration::from_millis(ms_max))?;
    let deadline = Instant::now() + Duration::from_millis(ms_max);
    conn.progress_handler(1000, Some(move || Instant::now() >= deadline));
    let mut stmt = conn.prepare(query)?;
    if !stmt.readonly() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("only queries that read are allowed".into()),
        ));
    }
    let names: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let values: Vec<rusqlite::types::Value> = params.iter().map(sql_value).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() == SQL_ROWS_MAX {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "more than {SQL_ROWS_MAX} rows: add a LIMIT"
            )));
        }
        let mut object = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let value = match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => json!(n),
                ValueRef::Real(x) => json!(x),
                ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                ValueRef::Blob(b) => {
                    json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
                }
            };
            object.insert(name.clone(), value);
        }
        out.push(Value::Object(object));
    }
    Ok(out)
}

fn sql_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match v {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Sql::Real(n.as_f64().unwrap_or(0.0)), Sql::Integer),
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_reads_and_refuses_writes_and_attach() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, NULL);",
        )
        .unwrap();
        let rows = read_only_query(
            &path,
            "SELECT a, b FROM t WHERE a >= ?1 ORDER BY a",
            &[json!(1)],
            1000,
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![json!({"a": 1, "b": "x"}), json!({"a": 2, "b": null})]
        );
        for bad in [
            "DELETE FROM t",
            "INSERT INTO t VALUES (3, 'y')",
            "ATTACH 'other.db' AS o",
            "DROP TABLE t",
        ] {
            assert!(read_only_query(&path, bad, &[], 1000).is_err(), "{bad}");
        }
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        assert!(read_only_query(&path, endless, &[], 200).is_err());
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
    }
}
