//! `claro settings set|get|list`: the arguments, where a value is read
//! from (an argument, a file, stdin; refused above `VALUE_BYTES_MAX` before
//! anything is sent), and the requests (`cli::client`).

use std::path::PathBuf;

use clap::Subcommand;

use crate::cli::client::ClientArgs;
use crate::cli::exit::Failure;
use crate::config::Config;
use crate::proto::LIST_COUNT_MAX;
use crate::state::VALUE_BYTES_MAX;

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

pub fn command(path: &std::path::Path, action: SettingsAction) -> Result<(), Failure> {
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
            crate::cli::client::settings_set(&config, &client, key, value)
        }
        SettingsAction::Get { key, stale, client } => {
            // The same limit `settings set` names: no such key can exist.
            let max = crate::state::KEY_BYTES_MAX;
            if key.is_empty() || key.len() > max {
                return Err(Failure::usage(format!(
                    "key must be 1..={max} bytes, not {}",
                    key.len()
                )));
            }
            crate::cli::client::settings_get(&config, &client, &key, stale)
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
            crate::cli::client::settings_list(&config, &client, after, limit, stale)
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
