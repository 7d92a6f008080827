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
    }
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
