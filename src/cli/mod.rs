//! The `claro` command line: argument parsing, the client side of requests,
//! and output (human or `--json`). Exit status: 0 done, 1 failed (nothing
//! reachable, the cluster refused), 2 bad usage or bad input.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod backup;
pub mod batch;
pub mod cert;
pub mod client;
pub mod exit;
pub mod follow;
pub mod hotfolder;
pub mod init;
pub mod jobs;
pub mod output;
pub mod revocation;
pub mod settings;
pub mod token;

use self::cert::CertAction;
use self::client::ClientArgs;
pub use self::exit::{Failure, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use self::hotfolder::HotfolderAction;
use self::jobs::{
    parse_hotfolder_name, parse_kind, parse_state, JobOptions, NodeAction, ScriptAction, SubmitArgs,
};
use self::settings::SettingsAction;
use self::token::TokenAction;
use crate::config::Config;

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
        /// How log lines are written to stderr (the journal under systemd).
        #[arg(long, value_enum, default_value = "text", env = "CLARO_LOG_FORMAT")]
        log_format: crate::logging::Format,
    },
    /// Change the log filter of running instances (every server of the
    /// config, or `--server`'s), without a restart: `info`, `debug`,
    /// `info,claro::node::work=debug` (RUST_LOG's syntax). It lasts until
    /// the instance restarts.
    LogLevel {
        filter: String,
        #[command(flatten)]
        client: ClientArgs,
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
    /// Print the shell's completion script for claro: `claro completions
    /// bash > /etc/bash_completion.d/claro`.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (claro.1 and one per command, e.g.
    /// claro-submit.1) into DIR: `claro man-pages /usr/share/man/man1`.
    ManPages { dir: PathBuf },
    /// The config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
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
    /// Write a consistent copy of the replicated database to FILE, made
    /// online by one instance (this machine's first) at a read index: every
    /// write acknowledged before the command is in it.
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write this machine's server's data directory from a backup, as a new
    /// one-server cluster (a new cluster id); then `serve` starts it and
    /// the other servers join it with empty data directories.
    Restore {
        file: PathBuf,
        /// Which [[server]] of the config gets the data (default: the one
        /// whose address is local).
        #[arg(long)]
        name: Option<String>,
        /// Restore over a data directory that holds data (moved aside to
        /// DIR.before-restore-SECONDS, never deleted).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        state: Option<crate::work::jobs::JobState>,
        /// script, command or hotfolder.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<crate::work::jobs::JobKind>,
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
pub enum CoordinatorAction {
    /// Hand the coordinator role to NAME (Raft leadership transfer).
    Transfer {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A usage error as the one `claro: ` line of docs/CLI.md: clap's message,
/// its possible values and usage kept, its blank lines and pointers to
/// `--help` dropped.
fn usage_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let line = parts.join(" ");
    format!("claro: {}", line.strip_prefix("error: ").unwrap_or(&line))
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
        // --help and --version: as clap writes them, on stdout.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return EXIT_OK;
        }
        Err(e) => {
            crate::cli::output::note(&format!("{}\n", usage_line(&e.render().to_string())));
            return EXIT_USAGE;
        }
    };
    match &cli.command {
        Command::Serve { log_format, .. } => crate::logging::init_with(*log_format),
        _ => crate::logging::init(),
    }
    match run(cli) {
        Ok(()) => EXIT_OK,
        Err(f) if f.is_quiet() => f.status,
        Err(f) => {
            crate::cli::output::note(&format!("claro: {}\n", f.message));
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
        } => crate::cli::init::run(
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
            log_format: _,
        } => {
            let config = Config::load(&cli.config)?;
            let name = config.local_server(name.as_deref())?.name.clone();
            crate::cli::cert::for_serve(&config, &name)?;
            let opts = crate::node::ServeOptions {
                config,
                name,
                force_bootstrap,
            };
            crate::node::serve(opts).map_err(|e| match e {
                crate::node::ServeError::Setup(m) => Failure::usage(m),
                crate::node::ServeError::Failed(m) => Failure::failed(m),
            })
        }
        Command::Config {
            action: ConfigAction::Check { json },
        } => config_check(&cli.config, json),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "claro", &mut script);
            output::emit(&String::from_utf8_lossy(&script))
        }
        Command::ManPages { dir } => man_pages(&dir),
        Command::Status(args) => crate::cli::client::status(&Config::load(&cli.config)?, &args),
        Command::StartOrder { data_dirs, client } => {
            crate::cli::client::start_order(&Config::load(&cli.config)?, &data_dirs, &client)
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
            crate::cli::client::stop(&config, &client, &name, !no_wait)
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
            crate::cli::client::transfer(&config, &client, &name)
        }
        Command::Backup {
            file,
            force,
            client,
        } => crate::cli::backup::backup(&Config::load(&cli.config)?, &client, &file, force),
        Command::Restore {
            file,
            name,
            force,
            json,
        } => crate::cli::backup::restore(
            &Config::load(&cli.config)?,
            name.as_deref(),
            &file,
            force,
            json,
        ),
        Command::LogLevel { filter, client } => {
            crate::cli::client::log_level(&Config::load(&cli.config)?, &client, &filter)
        }
        Command::Settings { action } => settings::command(&cli.config, action),
        Command::Cert { action } => cert::command(&cli.config, action),
        other => jobs(&cli.config, other),
    }
}

/// What `claro config` does.
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Check the config (`--config`, default conf/ClaroServers.conf) as
    /// `serve` reads it, without starting anything: exit 0 with a summary,
    /// or 2 naming file:line and the key at fault.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `claro man-pages DIR`: a page for claro and for every command and
/// subcommand, named as man expects (`claro-hotfolder-add.1`).
fn man_pages(dir: &std::path::Path) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(Failure::usage(format!("{} is not a folder", dir.display())));
    }
    let command = <Cli as clap::CommandFactory>::command();
    let written = write_pages(&command, "claro", dir)
        .map_err(|e| Failure::failed(format!("{}: {e}", dir.display())))?;
    output::emit(&format!(
        "wrote {written} manual pages in {}\n",
        dir.display()
    ))
}

fn write_pages(
    command: &clap::Command,
    name: &str,
    dir: &std::path::Path,
) -> std::io::Result<usize> {
    // clap names a command with a `&'static str` (without its `string`
    // feature): the few dozen names of this one-shot command are leaked.
    let full: &'static str = Box::leak(name.to_string().into_boxed_str());
    let page = command.clone().name(full);
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page).render(&mut bytes)?;
    std::fs::write(dir.join(format!("{name}.1")), bytes)?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}

/// `claro config check`.
fn config_check(path: &std::path::Path, json: bool) -> Result<(), Failure> {
    let config = Config::load(path)?;
    let text = format!(
        "{}: ok (cluster {}, {} server(s), {} hotfolder(s))",
        path.display(),
        config.cluster,
        config.servers.len(),
        config.hotfolders.len()
    );
    let value = serde_json::json!({
        "file": path.display().to_string(),
        "cluster": config.cluster,
        "servers": config.servers.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "hotfolders": config.hotfolders.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
    });
    output::changed(json, &text, value)
}

/// The job commands.
fn jobs(path: &std::path::Path, command: Command) -> Result<(), Failure> {
    use crate::cli::jobs as jc;
    let config = Config::load(path)?;
    match command {
        Command::Submit(a) if a.many.is_some() => {
            let from = a.many.as_deref().expect("--many");
            crate::cli::batch::submit_many(&config, &a.client, from)
        }
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
            jc::submit(&config, &client, jc::submit_spec(a)?, wait)
        }
        Command::Run { file, job, client } => {
            let spec = jc::job_spec(
                crate::work::jobs::JobKind::Script,
                jc::read_script(&file)?,
                &job,
            );
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
            // Refused here as a usage error (exit 2), before any request.
            let max = crate::proto::JOBS_COUNT_MAX;
            if limit == 0 || limit > max {
                return Err(Failure::usage(format!(
                    "--limit must be 1..={max}, not {limit}"
                )));
            }
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
        Command::Node { action } => jc::node(&config, action),
        Command::Script { action } => jc::script_command(&config, action),
        Command::Hotfolder { action } => crate::cli::hotfolder::command(&config, action),
        Command::Token { action } => crate::cli::token::command(&config, action),
        other => unreachable!("not a job command: {other:?}"),
    }
}
