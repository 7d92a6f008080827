//! The client side of jobs: `claro submit`, `run`, `jobs`, `job`, `cancel`,
//! `retry`, `wait` and `node maintenance|activate|drain`. Any instance
//! answers; writes carry a request id (a submission's is its job id, so a
//! retried submission makes one job).

use std::time::{Duration, Instant};

use crate::client::{call, failure_of, print_staleness, ClientArgs};
use crate::config::Config;
use crate::exit::Failure;
use crate::jobs::{Job, JobSpec};
use crate::output::{self, JobJson};
use crate::proto::{Request, Response};
use crate::state::{jobs::JobFilter, Command};

/// First and longest pause between two looks at a job being waited for.
const WAIT_POLL_MS_FIRST: u64 = 5;
const WAIT_POLL_MS_MAX: u64 = 250;

/// What `submit` waits for and prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Result,
    LogAndResult,
}

fn new_id() -> String {
    crate::jobs::new_job_id(crate::node::now_ms(), rand::random())
}

/// Proposes `command` (checked first: bad input sends nothing).
pub(crate) fn write(
    config: &Config,
    args: &ClientArgs,
    command: Command,
    request_id: String,
) -> Result<u64, Failure> {
    command.validate().map_err(Failure::usage)?;
    match call(config, args, &Request::propose(command, Some(request_id)))?.1 {
        Response::Proposed { index } => Ok(index),
        other => Err(failure_of(other)),
    }
}

/// `claro submit`: prints the new job's id (`--json`: the job); with
/// `wait`, waits for its end and prints its result.
pub fn submit(
    config: &Config,
    args: &ClientArgs,
    spec: JobSpec,
    wait: Wait,
) -> Result<(), Failure> {
    let id = new_id();
    let command = Command::JobSubmit {
        id: id.clone(),
        spec,
        at_ms: crate::node::now_ms(),
    };
    write(config, args, command, id.clone())?;
    match wait {
        Wait::No => {}
        Wait::Result => return wait_for(config, args, &id, false),
        Wait::LogAndResult => return wait_for(config, args, &id, true),
    }
    if args.json {
        let job = fetch(config, args, &id)?;
        return output::emit(&output::json_line(&JobJson::new(&job, false)));
    }
    output::emit(&format!("{id}\n"))
}

/// The job `id` (a default read: it includes every acknowledged write).
fn fetch(config: &Config, args: &ClientArgs, id: &str) -> Result<Job, Failure> {
    crate::jobs::check_job_id(id).map_err(Failure::usage)?;
    let req = Request::Job {
        id: id.to_string(),
        stale: false,
    };
    match call(config, args, &req)?.1 {
        Response::Job { job: Some(job), .. } => Ok(*job),
        Response::Job { job: None, .. } => Err(Failure::failed(format!("no job `{id}`"))),
        other => Err(failure_of(other)),
    }
}

/// `claro wait ID` (and `submit --wait`, `run`): waits for the job's end,
/// prints it, and fails (exit 1) unless it succeeded. `with_log`: the log
/// is printed too (text mode).
pub fn wait_for(
    config: &Config,
    args: &ClientArgs,
    id: &str,
    with_log: bool,
) -> Result<(), Failure> {
    let mut pause = WAIT_POLL_MS_FIRST;
    let job = loop {
        let job = fetch(config, args, id)?;
        if job.state.is_final() {
            break job;
        }
        std::thread::sleep(Duration::from_millis(pause));
        pause = (pause * 2).min(WAIT_POLL_MS_MAX);
    };
    print_end(&job, args.json, with_log)
}

fn print_end(job: &Job, json: bool, with_log: bool) -> Result<(), Failure> {
    if json {
        output::emit(&output::json_line(&JobJson::new(job, with_log)))?;
    } else {
        if with_log && !job.log.is_empty() {
            output::emit(&job.log)?;
        }
        if let Some(r) = job.result.as_deref().filter(|r| !r.is_empty()) {
            output::emit(&format!("{}\n", output::escape_text(r)))?;
        }
    }
    match job.state {
        crate::jobs::JobState::Succeeded => Ok(()),
        state => Err(Failure::failed(format!(
            "job {} {}: {}",
            job.id,
            state.as_str(),
            job.error.as_deref().unwrap_or("no reason given")
        ))),
    }
}

/// `claro job ID`.
/// What `claro job` shows besides the job's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detail {
    pub log: bool,
    pub profile: bool,
}

pub fn show(
    config: &Config,
    args: &ClientArgs,
    id: &str,
    detail: Detail,
    stale: bool,
) -> Result<(), Failure> {
    crate::jobs::check_job_id(id).map_err(Failure::usage)?;
    let req = Request::Job {
        id: id.to_string(),
        stale,
    };
    match call(config, args, &req)?.1 {
        Response::Job {
            job: Some(job),
            stale,
        } => {
            print_staleness(stale.as_ref());
            if args.json {
                let mut j = JobJson::new(&job, detail.log);
                if detail.profile {
                    j = j.with_profile(&job);
                }
                return output::emit(&output::json_line(&j));
            }
            let mut text = output::job_text(&job, detail.log);
            if detail.profile {
                text.push_str(&output::profile_text(&job.profile));
            }
            output::emit(&text)
        }
        Response::Job { job: None, .. } => Err(Failure::failed(format!("no job `{id}`"))),
        other => Err(failure_of(other)),
    }
}

/// `claro jobs`: one page, newest first; the cursor of the next page goes
/// to stderr (text) or `next_before` (JSON).
pub fn list(
    config: &Config,
    args: &ClientArgs,
    filter: JobFilter,
    limit: u32,
    stale: bool,
) -> Result<(), Failure> {
    let req = Request::Jobs {
        filter,
        limit,
        stale,
    };
    match call(config, args, &req)?.1 {
        Response::Jobs {
            jobs,
            next_before,
            stale,
        } => {
            print_staleness(stale.as_ref());
            if args.json {
                let items: Vec<JobJson> = jobs.iter().map(|j| JobJson::new(j, false)).collect();
                return output::emit(&output::json_line(&items));
            }
            output::emit(&output::jobs_text(&jobs))?;
            if let Some(next) = next_before {
                output::note(&format!("more: claro jobs --before {next}\n"));
            }
            Ok(())
        }
        other => Err(failure_of(other)),
    }
}

/// `claro cancel ID` / `claro retry ID`: the job must exist.
pub fn cancel_or_retry(
    config: &Config,
    args: &ClientArgs,
    id: &str,
    retry: bool,
) -> Result<(), Failure> {
    let before = fetch(config, args, id)?;
    let at_ms = crate::node::now_ms();
    let command = if retry {
        Command::JobRetry {
            id: id.into(),
            at_ms,
        }
    } else {
        Command::JobCancel {
            id: id.into(),
            at_ms,
        }
    };
    write(config, args, command, crate::proto::new_request_id())?;
    let after = fetch(config, args, id)?;
    let (verb, changed) = if retry {
        ("retried", after.attempt > before.attempt)
    } else {
        ("cancelled", after.state == crate::jobs::JobState::Cancelled)
    };
    if args.json {
        return output::emit(&output::json_line(&JobJson::new(&after, false)));
    }
    if changed {
        return output::emit(&format!("{id} {verb}\n"));
    }
    Err(Failure::failed(format!(
        "job {id} is {}: not {verb}",
        after.state.as_str()
    )))
}

/// `claro node maintenance|activate|drain NAME`. `drain` also waits until
/// NAME runs nothing, at most `wait_ms`.
pub fn node_mode(
    config: &Config,
    args: &ClientArgs,
    name: &str,
    mode: &str,
    drain_wait_ms: Option<u64>,
) -> Result<(), Failure> {
    let command = Command::NodeMode {
        name: name.into(),
        mode: mode.into(),
    };
    write(config, args, command, crate::proto::new_request_id())?;
    let Some(wait_ms) = drain_wait_ms else {
        return output::emit(&format!("{name}: {mode}\n"));
    };
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let filter = |state| JobFilter {
            state: Some(state),
            instance: Some(name.into()),
            ..JobFilter::default()
        };
        let mut active = 0;
        for state in [
            crate::jobs::JobState::Assigned,
            crate::jobs::JobState::Running,
        ] {
            let req = Request::Jobs {
                filter: filter(state),
                limit: 1,
                stale: false,
            };
            match call(config, args, &req)?.1 {
                Response::Jobs { jobs, .. } => active += jobs.len(),
                other => return Err(failure_of(other)),
            }
        }
        if active == 0 {
            return output::emit(&format!("{name}: drained (maintenance, runs nothing)\n"));
        }
        if Instant::now() >= deadline {
            return Err(Failure::failed(format!(
                "{name} is in maintenance but still runs jobs after {wait_ms} ms"
            )));
        }
        std::thread::sleep(Duration::from_millis(WAIT_POLL_MS_MAX));
    }
}

/// `claro script add NAME FILE`: prints `NAME version N`.
pub fn script_add(
    config: &Config,
    args: &ClientArgs,
    name: &str,
    code: String,
) -> Result<(), Failure> {
    let command = Command::ScriptAdd {
        name: name.into(),
        code,
        at_ms: crate::node::now_ms(),
    };
    write(config, args, command, crate::proto::new_request_id())?;
    let stored = fetch_script(config, args, name, None)?;
    if args.json {
        return output::emit(&output::json_line(&output::ScriptJson::new(&stored, false)));
    }
    output::emit(&format!("{name} version {}\n", stored.version))
}

fn fetch_script(
    config: &Config,
    args: &ClientArgs,
    name: &str,
    version: Option<u32>,
) -> Result<crate::jobs::StoredScript, Failure> {
    crate::jobs::check_script_name(name).map_err(Failure::usage)?;
    let req = Request::Script {
        name: name.into(),
        version,
        stale: false,
    };
    match call(config, args, &req)?.1 {
        Response::Script { script: Some(s) } => Ok(s),
        Response::Script { script: None } => {
            Err(Failure::failed(format!("no stored script `{name}`")))
        }
        other => Err(failure_of(other)),
    }
}

/// `claro script show NAME [--version N]`: the code as stored.
pub fn script_show(
    config: &Config,
    args: &ClientArgs,
    name: &str,
    version: Option<u32>,
    stale: bool,
) -> Result<(), Failure> {
    crate::jobs::check_script_name(name).map_err(Failure::usage)?;
    let req = Request::Script {
        name: name.into(),
        version,
        stale,
    };
    let stored = match call(config, args, &req)?.1 {
        Response::Script { script: Some(s) } => s,
        Response::Script { script: None } => {
            return Err(Failure::failed(format!("no stored script `{name}`")))
        }
        other => return Err(failure_of(other)),
    };
    if args.json {
        return output::emit(&output::json_line(&output::ScriptJson::new(&stored, true)));
    }
    let mut code = stored.code;
    if !code.ends_with('\n') {
        code.push('\n');
    }
    output::emit(&code)
}

/// `claro script list`: `NAME VERSION BYTES ADDED` lines.
pub fn script_list(config: &Config, args: &ClientArgs, stale: bool) -> Result<(), Failure> {
    match call(config, args, &Request::Scripts { stale })?.1 {
        Response::Scripts { scripts } if args.json => {
            let items: Vec<output::ScriptJson> = scripts
                .iter()
                .map(|s| output::ScriptJson::new(s, false))
                .collect();
            output::emit(&output::json_line(&items))
        }
        Response::Scripts { scripts } => {
            let mut out = String::from("NAME  VERSION  SIZE  ADDED\n");
            for s in scripts {
                out.push_str(&format!(
                    "{}  {}  {}  {}\n",
                    s.name,
                    s.version,
                    s.code,
                    output::rfc3339(s.added_ms)
                ));
            }
            output::emit(&out)
        }
        other => Err(failure_of(other)),
    }
}

/// `claro script rm NAME`.
pub fn script_rm(config: &Config, args: &ClientArgs, name: &str) -> Result<(), Failure> {
    fetch_script(config, args, name, None)?;
    let command = Command::ScriptRemove { name: name.into() };
    write(config, args, command, crate::proto::new_request_id())?;
    output::emit(&format!("{name} removed\n"))
}
