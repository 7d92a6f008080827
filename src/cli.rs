//! The `claro` command line: argument parsing, the client side of requests,
//! and output (human or `--json`). Exit status: 0 done, 1 failed (nothing
//! reachable, the cluster refused), 2 bad usage or bad input.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::ClientArgs;
use crate::config::Config;
pub use crate::exit::{Failure, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::proto::Request;

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
    /// Stop an instance gracefully (default: this machine's).
    Stop {
        name: Option<String>,
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
    Set {
        key: String,
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Get {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    List(ClientArgs),
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
        Err(f) => {
            eprintln!("claro: {}", f.message);
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
        Command::Stop { name, client } => {
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
            crate::client::simple(&config, &client, Request::Stop { name })
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
            crate::client::simple(&config, &client, Request::Transfer { name })
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
        SettingsAction::Set { key, value, client } => {
            let command = crate::state::Command::Put {
                key,
                value: value.into_bytes(),
            };
            command.validate().map_err(Failure::usage)?;
            let req = Request::propose(command, Some(crate::proto::new_request_id()));
            crate::client::simple(&config, &client, req)
        }
        SettingsAction::Get { key, client } => {
            crate::client::simple(&config, &client, Request::Get { key })
        }
        SettingsAction::List(client) => crate::client::simple(&config, &client, Request::List),
    }
}
