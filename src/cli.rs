//! The `claro` command line: argument parsing, the client side of requests,
//! and output (human or `--json`). Exit status: 0 done, 1 failed (nothing
//! reachable, the cluster refused), 2 bad usage or bad input.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::ClientArgs;
use crate::config::Config;
pub use crate::exit::{Failure, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::proto::LIST_COUNT_MAX;
use crate::state::VALUE_BYTES_MAX;

#[derive(Parser, Debug)]
#[command(
    name = "claro",
    version,
    about = "A cluster of identical servers sharing file and script work"
)]
pub struct Cli {
    /// The cluster's config file.
    #[arg(
        long,
        global = true,
        env = "CLARO_CONFIG",
        default_value = "conf/ClaroServers.conf"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run this machine's instance.
    Serve {
        /// Which [[server]] of the config this is (default: the one whose address is local).
        #[arg(long)]
        name: Option<String>,
        /// Start a one-server cluster on this instance's database even though
        /// servers that stopped later hold newer state.
        #[arg(long)]
        force_bootstrap: bool,
    },
    /// Write a config skeleton and the cluster's TLS material.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Where the CA's certificate and private key go: a folder kept on
        /// this machine, never copied to servers (default: beside DIR,
        /// named DIR-ca, e.g. conf-ca/).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// NAME=ADDRESS, once per server.
        #[arg(long = "server", required = true, value_parser = parse_server_arg)]
        servers: Vec<(String, String)>,
        #[arg(long, default_value = "claro")]
        cluster: String,
        #[arg(long, default_value = "../hotfolders")]
        shared_root: String,
        #[arg(long, default_value = "../data")]
        data_dir: String,
        #[arg(long, default_value_t = crate::config::PORT_DEFAULT)]
        port: u16,
        /// Overwrite existing config and TLS material.
        #[arg(long)]
        force: bool,
    },
    /// The cluster's state, as the coordinator sees it.
    Status(ClientArgs),
    /// Which server holds the newest database, and the order to start them in.
    StartOrder {
        /// A folder holding servers' data directories (`DIR/NAME/`), read
        /// for servers that do not answer; repeatable. The config's data_dir
        /// is always read.
        #[arg(long = "data-dir")]
        data_dirs: Vec<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop an instance gracefully (default: this machine's) and wait until
    /// it has exited.
    Stop {
        name: Option<String>,
        /// Return once the stop is under way, without waiting for the exit.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Coordinator role.
    Coordinator {
        #[command(subcommand)]
        action: CoordinatorAction,
    },
    /// Replicated settings.
    Settings {
        #[command(subcommand)]
        action: SettingsAction,
    },
    /// Certificates, signed with the CA's key (run where the CA folder is).
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Submit a job: a script (a file or inline) or a command; prints its id.
    Submit(SubmitArgs),
    /// Submit a script and wait for it, printing its log and result.
    Run {
        file: PathBuf,
        #[command(flatten)]
        job: JobOptions,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, newest first.
    Jobs {
        /// queued, assigned, running, succeeded, failed or cancelled.
        #[arg(long, value_parser = parse_state)]
        state: Option<crate::jobs::JobState>,
        /// script, command or hotfolder.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<crate::jobs::JobKind>,
        /// Jobs of this server's current or last attempt.
        #[arg(long)]
        instance: Option<String>,
        /// The files of this hotfolder.
        #[arg(long, value_parser = parse_hotfolder_name)]
        hotfolder: Option<String>,
        /// Jobs in this page (1..=1000).
        #[arg(long, default_value_t = crate::proto::JOBS_COUNT_DEFAULT)]
        limit: u32,
        /// Jobs older than this id (the cursor of the previous page).
        #[arg(long)]
        before: Option<String>,
        /// As for `settings get`.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One job: its state, result and error (`--log`: its captured log).
    Job {
        id: String,
        #[arg(long)]
        log: bool,
        /// Where a script's time went: per host function and remote call,
        /// calls and time (preparing, waiting, receiving), slowest first.
        #[arg(long)]
        profile: bool,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job that has not ended (a running attempt is stopped).
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a failed or cancelled job again, as a new attempt.
    Retry {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait for a job's end; exit 0 only if it succeeded.
    Wait {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A server's mode for jobs.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Named, versioned scripts kept in the cluster (`submit --stored NAME`).
    Script {
        #[command(subcommand)]
        action: ScriptAction,
    },
    /// Folders under shared_root whose files become jobs.
    Hotfolder {
        #[command(subcommand)]
        action: HotfolderAction,
    },
    /// API tokens for the HTTP API and the dashboard.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Make a token NAME with a role; it is printed once (only its hash is kept).
    Add {
        name: String,
        /// viewer (reads), operator (also submits, cancels, retries, pauses)
        /// or admin (also servers, scripts, settings, tokens).
        #[arg(long)]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The tokens: names, roles, when made.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke NAME: requests with it are refused from then on.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum HotfolderAction {
    /// Define NAME (its folders are made under shared_root/NAME/).
    Add(HotfolderDef),
    /// Change NAME: the options given replace those it had.
    Set(HotfolderDef),
    /// Forget NAME (its folders and files stay where they are).
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop taking new files from NAME (jobs already made go on).
    Pause {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Resume {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every hotfolder: files waiting, in progress, done and failed in the
    /// last hour, paused or not.
    List {
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `hotfolder add` and `set` take.
#[derive(clap::Args, Debug, Clone)]
pub struct HotfolderOptions {
    /// The action: an argv template split like a shell would (no shell
    /// runs), with {input}, {output_dir}, {name}, {stem}, {ext}.
    #[arg(long, conflicts_with = "script")]
    pub command: Option<String>,
    /// The action: a script file; it sees FILE (#{input, output_dir, name,
    /// stem, ext, relative}) and may write only in FILE.output_dir.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Time a file's size and modification time must stay unchanged.
    #[arg(long)]
    pub stable_ms: Option<u64>,
    /// Names taken (glob; default: all not ignored). Repeat for more.
    #[arg(long)]
    pub include: Vec<String>,
    /// Names ignored (glob), instead of the default list.
    #[arg(long)]
    pub ignore: Vec<String>,
    /// What becomes of the original after success: move (to done/) or delete.
    #[arg(long)]
    pub on_success: Option<String>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Longest time of one attempt, in seconds.
    #[arg(long)]
    pub timeout_s: Option<u64>,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
}

/// A hotfolder's name and options (`hotfolder add` and `set`).
#[derive(clap::Args, Debug)]
pub struct HotfolderDef {
    pub name: String,
    #[command(flatten)]
    pub options: HotfolderOptions,
    #[command(flatten)]
    pub client: ClientArgs,
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
    #[arg(long, default_value_t = crate::jobs::ATTEMPTS_DEFAULT)]
    pub max_attempts: u32,
    /// Longest time one attempt may run: 500ms, 30s, 10m, 2h (a bare
    /// number is seconds).
    #[arg(long, value_parser = parse_duration_ms, default_value = "1h")]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
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

fn parse_state(s: &str) -> Result<crate::jobs::JobState, String> {
    crate::jobs::JobState::parse(s).ok_or_else(|| {
        format!(
            "`{s}` is not a job state (queued, assigned, running, succeeded, failed, cancelled)"
        )
    })
}

fn parse_hotfolder_name(s: &str) -> Result<String, String> {
    crate::hotfolder::check_name(s).map(|()| s.to_string())
}

fn parse_kind(s: &str) -> Result<crate::jobs::JobKind, String> {
    crate::jobs::JobKind::parse(s)
        .ok_or_else(|| format!("`{s}` is not a job kind (script, command, hotfolder)"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
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

#[derive(Subcommand, Debug)]
pub enum CertAction {
    /// Sign a key and certificate for NAME, a server of the config (e.g.
    /// one added later), into the config's tls folder.
    Add {
        name: String,
        /// The CA folder (default: beside the config's folder, named
        /// after it with `-ca`, e.g. conf-ca/).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Replace NAME's existing certificate and key.
        #[arg(long)]
        force: bool,
    },
    /// New keys and certificates for every server and the client, signed
    /// by the same CA.
    Rotate {
        /// The CA folder (default: as for `cert add`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CoordinatorAction {
    /// Hand the coordinator role to NAME (Raft leadership transfer).
    Transfer {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum SettingsAction {
    /// Set KEY to VALUE, to the contents of --file F, or to stdin (`-`).
    Set {
        key: String,
        /// The value; `-` reads it from stdin.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file (bytes as they are).
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print KEY's value (exit 1 when there is no such setting).
    Get {
        key: String,
        /// Read the asked instance's replica as it is, without confirming
        /// with the coordinator; the answer says how old it is.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List settings in key order, one page at a time.
    List {
        /// As for `get`.
        #[arg(long)]
        stale: bool,
        /// Settings in this page (1..=10000).
        #[arg(long, default_value_t = crate::proto::LIST_COUNT_DEFAULT)]
        limit: u32,
        /// Start after this key (the `next_after` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_server_arg(s: &str) -> Result<(String, String), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=ADDRESS"))?;
    if name.is_empty() || addr.is_empty() {
        return Err(format!("`{s}` is not NAME=ADDRESS"));
    }
    Ok((name.to_string(), addr.to_string()))
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    crate::logging::init();
    match run(cli) {
        Ok(()) => EXIT_OK,
        Err(f) if f.is_quiet() => f.status,
        Err(f) => {
            crate::output::note(&format!("claro: {}\n", f.message));
            f.status
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Init {
            dir,
            ca_dir,
            servers,
            cluster,
            shared_root,
            data_dir,
            port,
            force,
        } => crate::init::run(
            &dir,
            ca_dir.as_deref(),
            &cluster,
            &servers,
            &shared_root,
            &data_dir,
            port,
            force,
        ),
        Command::Serve {
            name,
            force_bootstrap,
        } => {
            let config = Config::load(&cli.config)?;
            let name = config.local_server(name.as_deref())?.name.clone();
            crate::cert::for_serve(&config, &name)?;
            let opts = crate::node::ServeOptions {
                config,
                name,
                force_bootstrap,
            };
            crate::node::serve(opts).map_err(Failure::failed)
        }
        Command::Status(args) => crate::client::status(&Config::load(&cli.config)?, &args),
        Command::StartOrder { data_dirs, client } => {
            crate::client::start_order(&Config::load(&cli.config)?, &data_dirs, &client)
        }
        Command::Stop {
            name,
            no_wait,
            client,
        } => {
            let config = Config::load(&cli.config)?;
            let name = match name {
                Some(n) if config.server(&n).is_none() => {
                    return Err(Failure::usage(format!(
                        "no server named `{n}` in {}",
                        cli.config.display()
                    )))
                }
                Some(n) => n,
                None => config.local_server(None)?.name.clone(),
            };
            crate::client::stop(&config, &client, &name, !no_wait)
        }
        Command::Coordinator {
            action: CoordinatorAction::Transfer { name, client },
        } => {
            let config = Config::load(&cli.config)?;
            if config.server(&name).is_none() {
                return Err(Failure::usage(format!(
                    "no server named `{name}` in {}",
                    cli.config.display()
                )));
            }
            crate::client::transfer(&config, &client, &name)
        }
        Command::Settings { action } => settings(&cli.config, action),
        Command::Cert { action } => cert(&cli.config, action),
        other => jobs(&cli.config, other),
    }
}

/// The job commands.
fn jobs(path: &std::path::Path, command: Command) -> Result<(), Failure> {
    use crate::job_client as jc;
    let config = Config::load(path)?;
    match command {
        Command::Submit(a) => {
            let wait = if a.wait {
                jc::Wait::Result
            } else {
                jc::Wait::No
            };
            let client = ClientArgs {
                server: a.client.server.clone(),
                json: a.client.json,
            };
            jc::submit(&config, &client, submit_spec(a)?, wait)
        }
        Command::Run { file, job, client } => {
            let spec = job_spec(crate::jobs::JobKind::Script, read_script(&file)?, &job);
            jc::submit(&config, &client, spec, jc::Wait::LogAndResult)
        }
        Command::Jobs {
            state,
            kind,
            instance,
            hotfolder,
            limit,
            before,
            stale,
            client,
        } => {
            let filter = crate::state::jobs::JobFilter {
                state,
                kind,
                instance,
                before,
                hotfolder,
            };
            jc::list(&config, &client, filter, limit, stale)
        }
        Command::Job {
            id,
            log,
            profile,
            stale,
            client,
        } => jc::show(&config, &client, &id, jc::Detail { log, profile }, stale),
        Command::Cancel { id, client } => jc::cancel_or_retry(&config, &client, &id, false),
        Command::Retry { id, client } => jc::cancel_or_retry(&config, &client, &id, true),
        Command::Wait { id, client } => jc::wait_for(&config, &client, &id, false),
        Command::Node { action } => node(&config, action),
        Command::Script { action } => script_command(&config, action),
        Command::Hotfolder { action } => crate::hotfolder_client::command(&config, action),
        Command::Token { action } => crate::token_client::command(&config, action),
        other => unreachable!("not a job command: {other:?}"),
    }
}

fn script_command(config: &Config, action: ScriptAction) -> Result<(), Failure> {
    use crate::job_client as jc;
    match action {
        ScriptAction::Add { name, file, client } => {
            crate::jobs::check_script_name(&name).map_err(Failure::usage)?;
            let code = read_script(&file)?;
            crate::script::check(&code)
                .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            jc::script_add(config, &client, &name, code)
        }
        ScriptAction::List { stale, client } => jc::script_list(config, &client, stale),
        ScriptAction::Show {
            name,
            version,
            stale,
            client,
        } => jc::script_show(config, &client, &name, version, stale),
        ScriptAction::Rm { name, client } => jc::script_rm(config, &client, &name),
    }
}

fn node(config: &Config, action: NodeAction) -> Result<(), Failure> {
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
    crate::job_client::node_mode(config, &client, &name, mode, drain)
}

fn job_spec(kind: crate::jobs::JobKind, script: String, o: &JobOptions) -> crate::jobs::JobSpec {
    crate::jobs::JobSpec {
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
fn submit_spec(a: SubmitArgs) -> Result<crate::jobs::JobSpec, Failure> {
    use crate::jobs::JobKind;
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
        crate::script::check(&spec.script).map_err(|e| Failure::usage(e.to_string()))?;
    }
    Ok(spec)
}

/// A script file's text, refused (exit 2) over `SCRIPT_BYTES_MAX` or not UTF-8.
pub(crate) fn read_script(file: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read as _;
    let max = crate::jobs::SCRIPT_BYTES_MAX;
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

fn cert(path: &std::path::Path, action: CertAction) -> Result<(), Failure> {
    let config = Config::load(path)?;
    match action {
        CertAction::Add {
            name,
            ca_dir,
            force,
        } => crate::cert::add(&config, ca_dir.as_deref(), &name, force),
        CertAction::Rotate { ca_dir } => crate::cert::rotate(&config, ca_dir.as_deref()),
    }
}

fn settings(path: &std::path::Path, action: SettingsAction) -> Result<(), Failure> {
    let config = Config::load(path)?;
    match action {
        SettingsAction::Set {
            key,
            value,
            file,
            client,
        } => {
            let source = match (&value, &file) {
                (Some(v), None) if v == "-" => ValueSource::Stdin,
                (Some(v), None) => ValueSource::Arg(v.clone()),
                (None, Some(f)) => ValueSource::File(f.clone()),
                _ => {
                    return Err(Failure::usage(
                        "give exactly one of VALUE, --file F, or - (stdin)",
                    ))
                }
            };
            let value = read_value(source)?;
            crate::client::settings_set(&config, &client, key, value)
        }
        SettingsAction::Get { key, stale, client } => {
            crate::client::settings_get(&config, &client, &key, stale)
        }
        SettingsAction::List {
            stale,
            limit,
            after,
            client,
        } => {
            if limit == 0 || limit > LIST_COUNT_MAX {
                return Err(Failure::usage(format!(
                    "--limit must be 1..={LIST_COUNT_MAX}, not {limit}"
                )));
            }
            crate::client::settings_list(&config, &client, after, limit, stale)
        }
    }
}

/// Where `settings set` takes its value from.
enum ValueSource {
    Arg(String),
    File(PathBuf),
    Stdin,
}

/// The value's bytes, refused (nothing sent) above `VALUE_BYTES_MAX`. A file
/// or stdin is read no further than one byte past the limit.
fn read_value(source: ValueSource) -> Result<Vec<u8>, Failure> {
    let (what, read) = match source {
        ValueSource::Arg(v) => ("VALUE".to_string(), Ok(v.into_bytes())),
        ValueSource::File(path) => (
            path.display().to_string(),
            std::fs::File::open(&path).and_then(read_bounded),
        ),
        ValueSource::Stdin => ("stdin".to_string(), read_bounded(std::io::stdin().lock())),
    };
    let value =
        read.map_err(|e| Failure::usage(format!("cannot read the value from {what}: {e}")))?;
    if value.len() > VALUE_BYTES_MAX {
        return Err(Failure::usage(format!(
            "the value from {what} is larger than the limit of {VALUE_BYTES_MAX} bytes (VALUE_BYTES_MAX); nothing was sent"
        )));
    }
    Ok(value)
}

fn read_bounded(r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut value = Vec::new();
    r.take(VALUE_BYTES_MAX as u64 + 1).read_to_end(&mut value)?;
    Ok(value)
}
