//! The client side of jobs: `claro submit`, `run`, `jobs`, `job`, `cancel`,
//! `retry`, `wait` and `node maintenance|activate|drain`. Any instance
//! answers; writes carry a request id (a submission's is its job id, so a
//! retried submission makes one job).

use std::time::{Duration, Instant};

use crate::cli::client::{call, failure_of, print_staleness, ClientArgs};
use crate::cli::exit::Failure;
use crate::cli::output::{self, JobJson};
use crate::config::Config;
use crate::proto::JOB_WAIT_MS_MAX;
use crate::proto::{Request, Response};
use crate::state::{jobs::JobFilter, Command};
use crate::work::jobs::{Job, JobSpec};
use clap::Subcommand;
use std::path::PathBuf;

/// First and longest pause between two looks at a job being waited for.
const WAIT_POLL_MS_FIRST: u64 = 5;
const WAIT_POLL_MS_MAX: u64 = 250;
/// How long the server holds a job read while `run` follows the job's log
/// (the log is asked for between two holds).
const WAIT_HOLD_MS_FOLLOWING: u64 = 400;

/// What `submit` waits for and prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Result,
    LogAndResult,
}

pub(crate) fn new_id() -> String {
    crate::work::jobs::new_job_id(crate::clock::now_ms(), rand::random())
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
        at_ms: crate::clock::now_ms(),
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
    fetch_held(config, args, id, 0)
}

/// The job, asked to answer once it has ended or after `wait_ms`.
fn fetch_held(config: &Config, args: &ClientArgs, id: &str, wait_ms: u64) -> Result<Job, Failure> {
    crate::work::jobs::check_job_id(id).map_err(Failure::usage)?;
    let req = Request::Job {
        id: id.to_string(),
        stale: false,
        wait_ms,
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
    // The log as it comes: on stdout for `run`, on stderr for the others.
    let mut follow = crate::cli::follow::Follow::new(args.json, with_log);
    let job = loop {
        // Held by the server until the job ends (shorter while a log is
        // followed, which is asked for between the holds).
        let hold_ms = if with_log && !args.json {
            WAIT_HOLD_MS_FOLLOWING
        } else {
            JOB_WAIT_MS_MAX
        };
        let asked = std::time::Instant::now();
        let job = fetch_held(config, args, id, hold_ms)?;
        let answered_in = asked.elapsed();
        if job.state.is_final() {
            break job;
        }
        if job.state == crate::work::jobs::JobState::Running {
            follow.poll(config, args, id);
        }
        // Answered before the hold ended and not final: a server that does
        // not hold reads (a build before held reads), or one that holds as
        // many as it may. Poll it, backing off, as before.
        if answered_in < Duration::from_millis(hold_ms / 2) {
            std::thread::sleep(Duration::from_millis(pause));
            pause = (pause * 2).min(WAIT_POLL_MS_MAX);
        }
    };
    let rest = follow.rest_of(&job).to_string();
    print_end(&job, args.json, with_log.then_some(rest.as_str()))
}

/// The end of a job waited for; `log`: the part of its log to print first
/// (text mode).
fn print_end(job: &Job, json: bool, log: Option<&str>) -> Result<(), Failure> {
    if json {
        output::emit(&output::json_line(&JobJson::new(job, log.is_some())))?;
    } else {
        if let Some(log) = log.filter(|l| !l.is_empty()) {
            output::emit(&output::escape_log(log))?;
        }
        if let Some(r) = job.result.as_deref().filter(|r| !r.is_empty()) {
            output::emit(&format!("{}\n", output::escape_text(r)))?;
        }
    }
    match job.state {
        crate::work::jobs::JobState::Succeeded => Ok(()),
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
    crate::work::jobs::check_job_id(id).map_err(Failure::usage)?;
    let req = Request::Job {
        id: id.to_string(),
        stale,
        wait_ms: 0,
    };
    match call(config, args, &req)?.1 {
        Response::Job {
            job: Some(mut job),
            stale,
        } => {
            print_staleness(stale.as_ref());
            let live = live_view(config, args, &job);
            if args.json {
                let mut j = JobJson::new(&job, detail.log);
                if let Some(live) = &live {
                    j = j.with_live(live);
                }
                if detail.profile {
                    j = j.with_profile(&job);
                }
                return output::emit(&output::json_line(&j));
            }
            if let Some(live) = live {
                job.log = live.log;
                if let Some(p) = live.progress {
                    eprintln!("progress {p}%");
                }
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

/// A running job's log so far and progress, from the instance running it;
/// `None` for a job that does not run (its log is stored with its end).
fn live_view(config: &Config, args: &ClientArgs, job: &Job) -> Option<crate::proto::LiveView> {
    if job.state != crate::work::jobs::JobState::Running
        && job.state != crate::work::jobs::JobState::Assigned
    {
        return None;
    }
    let req = Request::Live {
        id: job.id.clone(),
        after_bytes: 0,
        forwarded: false,
    };
    match call(config, args, &req) {
        Ok((_, Response::Live(view))) => view,
        _ => None,
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
    let at_ms = crate::clock::now_ms();
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
        (
            "cancelled",
            after.state == crate::work::jobs::JobState::Cancelled,
        )
    };
    // Unchanged is a failure, in both modes, and failures print nothing
    // on stdout (docs/CLI.md's rule for every command).
    if !changed {
        return Err(Failure::failed(format!(
            "job {id} is {}: not {verb}",
            after.state.as_str()
        )));
    }
    match args.json {
        true => output::emit(&output::json_line(&JobJson::new(&after, false))),
        false => output::emit(&format!("{id} {verb}\n")),
    }
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
        let value = serde_json::json!({"name": name, "mode": mode});
        return output::changed(args.json, &format!("{name}: {mode}"), value);
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
            crate::work::jobs::JobState::Assigned,
            crate::work::jobs::JobState::Running,
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
            let value = serde_json::json!({"name": name, "mode": mode, "drained": true});
            let text = format!("{name}: drained (maintenance, runs nothing)");
            return output::changed(args.json, &text, value);
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
        at_ms: crate::clock::now_ms(),
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
) -> Result<crate::work::jobs::StoredScript, Failure> {
    crate::work::jobs::check_script_name(name).map_err(Failure::usage)?;
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
    crate::work::jobs::check_script_name(name).map_err(Failure::usage)?;
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
            let rows: Vec<[String; 4]> = scripts
                .iter()
                .map(|s| {
                    let added = output::rfc3339(s.added_ms);
                    [
                        output::escape_text(&s.name),
                        s.version.to_string(),
                        s.code.clone(),
                        added,
                    ]
                })
                .collect();
            output::emit(&output::table(["NAME", "VERSION", "SIZE", "ADDED"], &rows))
        }
        other => Err(failure_of(other)),
    }
}

/// `claro script rm NAME`.
pub fn script_rm(config: &Config, args: &ClientArgs, name: &str) -> Result<(), Failure> {
    fetch_script(config, args, name, None)?;
    let command = Command::ScriptRemove { name: name.into() };
    write(config, args, command, crate::proto::new_request_id())?;
    let value = serde_json::json!({"removed": name});
    output::changed(args.json, &format!("{name}: removed"), value)
}

#[derive(Subcommand, Debug)]
pub enum ScriptAction {
    /// Store FILE as NAME's next version (checked first: a script that does
    /// not compile is refused with its line).
    Add {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every stored script: name, latest version, size, when added.
    List {
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A stored script's code (its latest version, or --version N).
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove every version of NAME.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// NAME gets no new jobs; those it runs finish.
    Maintenance {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// NAME gets jobs again.
    Activate {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Maintenance, then wait until NAME runs nothing.
    Drain {
        name: String,
        /// Longest wait, in milliseconds.
        #[arg(long, default_value_t = 600_000)]
        wait_ms: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What every job may set.
#[derive(clap::Args, Debug)]
pub struct JobOptions {
    /// An argument (the script's ARGS), repeatable.
    #[arg(long = "arg")]
    pub args: Vec<String>,
    /// -100 (last) ..= 100 (first).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    #[arg(long, default_value_t = crate::work::jobs::ATTEMPTS_DEFAULT)]
    pub max_attempts: u32,
    /// Longest time one attempt may run: 500ms, 30s, 10m, 2h (a bare
    /// number is seconds).
    #[arg(long, value_parser = parse_duration_ms, default_value = "1h")]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Many jobs in one entry, all or none: one JSON object a line
    /// ({script | stored | command, args, priority, max_attempts,
    /// timeout_s, cwd, env}) from FILE, or stdin with `-`; prints one id a
    /// line, in order.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["script", "inline", "stored", "command", "wait"])]
    pub many: Option<String>,
    /// A script file.
    #[arg(long, conflicts_with_all = ["inline", "command"])]
    pub script: Option<PathBuf>,
    /// A script given here.
    #[arg(long, conflicts_with = "command")]
    pub inline: Option<String>,
    /// A stored script (`claro script add`), its latest version.
    #[arg(long, conflicts_with_all = ["script", "inline", "command"])]
    pub stored: Option<String>,
    /// A command: its argv follows `--` (no shell).
    #[arg(long)]
    pub command: bool,
    /// The command's working directory, under shared_root.
    #[arg(long)]
    pub cwd: Option<String>,
    /// K=V added to the command's environment, repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Wait for the job's end and print its result; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub job: JobOptions,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(last = true)]
    pub argv: Vec<String>,
}

pub fn parse_state(s: &str) -> Result<crate::work::jobs::JobState, String> {
    crate::work::jobs::JobState::parse(s).ok_or_else(|| {
        format!(
            "`{s}` is not a job state (queued, assigned, running, succeeded, failed, cancelled)"
        )
    })
}

pub fn parse_hotfolder_name(s: &str) -> Result<String, String> {
    crate::work::hotfolder::check_name(s).map(|()| s.to_string())
}

pub fn parse_kind(s: &str) -> Result<crate::work::jobs::JobKind, String> {
    crate::work::jobs::JobKind::parse(s)
        .ok_or_else(|| format!("`{s}` is not a job kind (script, command, hotfolder)"))
}

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not K=V")),
    }
}

/// `500ms`, `30s`, `10m`, `2h`, or a bare number of seconds, in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let (digits, unit_ms) = if let Some(d) = s.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = s.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = s.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = s.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (s, 1000)
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("`{s}` is not a duration such as 500ms, 30s, 10m or 2h"))
}

pub fn script_command(config: &Config, action: ScriptAction) -> Result<(), Failure> {
    match action {
        ScriptAction::Add { name, file, client } => {
            crate::work::jobs::check_script_name(&name).map_err(Failure::usage)?;
            let code = read_script(&file)?;
            crate::work::script::check(&code)
                .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            script_add(config, &client, &name, code)
        }
        ScriptAction::List { stale, client } => script_list(config, &client, stale),
        ScriptAction::Show {
            name,
            version,
            stale,
            client,
        } => script_show(config, &client, &name, version, stale),
        ScriptAction::Rm { name, client } => script_rm(config, &client, &name),
    }
}

pub fn node(config: &Config, action: NodeAction) -> Result<(), Failure> {
    let (name, mode, drain, client) = match action {
        NodeAction::Maintenance { name, client } => (name, "maintenance", None, client),
        NodeAction::Activate { name, client } => (name, "active", None, client),
        NodeAction::Drain {
            name,
            wait_ms,
            client,
        } => (name, "maintenance", Some(wait_ms), client),
    };
    if config.server(&name).is_none() {
        return Err(Failure::usage(format!(
            "no server named `{name}` in the config"
        )));
    }
    crate::cli::jobs::node_mode(config, &client, &name, mode, drain)
}

pub fn job_spec(
    kind: crate::work::jobs::JobKind,
    script: String,
    o: &JobOptions,
) -> crate::work::jobs::JobSpec {
    crate::work::jobs::JobSpec {
        kind,
        script,
        stored: None,
        args: o.args.clone(),
        cwd: None,
        env: Vec::new(),
        priority: o.priority,
        max_attempts: o.max_attempts,
        timeout_ms: o.timeout,
        call: None,
        depth: 0,
        file: None,
    }
}

/// The job `claro submit` describes, checked (bad input: exit 2, nothing sent).
pub fn submit_spec(a: SubmitArgs) -> Result<crate::work::jobs::JobSpec, Failure> {
    use crate::work::jobs::JobKind;
    let mut spec = match (&a.script, &a.inline, a.command) {
        (None, None, false) if a.stored.is_some() => {
            let mut spec = job_spec(JobKind::Script, String::new(), &a.job);
            spec.stored = a.stored.clone();
            spec
        }
        (Some(file), None, false) => job_spec(JobKind::Script, read_script(file)?, &a.job),
        (None, Some(code), false) => job_spec(JobKind::Script, code.clone(), &a.job),
        (None, None, true) if !a.job.args.is_empty() => {
            return Err(Failure::usage(
                "a command takes its arguments after `--`, not --arg",
            ))
        }
        (None, None, true) => {
            let mut spec = job_spec(JobKind::Command, String::new(), &a.job);
            spec.args = a.argv.clone();
            spec
        }
        _ => {
            return Err(Failure::usage(
                "give exactly one of --script FILE, --inline CODE, --stored NAME, or --command -- ARGV...",
            ))
        }
    };
    if spec.kind == JobKind::Script && !a.argv.is_empty() {
        return Err(Failure::usage(
            "arguments after `--` are for --command; a script takes --arg",
        ));
    }
    spec.cwd = a.cwd;
    spec.env = a.env;
    spec.validate().map_err(Failure::usage)?;
    if spec.kind == JobKind::Script && spec.stored.is_none() {
        crate::work::script::check(&spec.script).map_err(|e| Failure::usage(e.to_string()))?;
    }
    Ok(spec)
}

/// A script file's text, refused (exit 2) over `SCRIPT_BYTES_MAX` or not UTF-8.
pub fn read_script(file: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read as _;
    let max = crate::work::jobs::SCRIPT_BYTES_MAX;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
    if bytes.len() > max {
        return Err(Failure::usage(format!(
            "{} is larger than the script limit of {max} bytes",
            file.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{} is not UTF-8 text", file.display())))
}
