//! Logs: `tracing` for claro itself, and a bridge that turns raft-rs's `slog`
//! records into `tracing` events, so one filter (`RUST_LOG`) governs both.

use slog::Drain;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line of text per event (ANSI colours on a terminal).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `fields` (`message` among them).
    Json,
}

/// The longest filter `set_filter` takes, in bytes.
pub const FILTER_BYTES_MAX: usize = 1024;

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The installed filter, for `set_filter` (`claro log-level`).
static FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` or `info`, to stderr, as
/// text. See [`init_with`].
pub fn init() {
    init_with(Format::Text);
}

/// Installs the global subscriber in `format`: `RUST_LOG` or `info`, to
/// stderr (under systemd, the journal). The filter can be replaced while
/// the process runs (`set_filter`). A log line that cannot be written
/// (stderr is a pipe whose reader has gone) is dropped: the subscriber
/// would otherwise report it with `eprintln!`, which panics on the same
/// broken pipe, in whatever thread was logging, the one that takes SIGTERM
/// among them (`serve 2>&1 | head` then never stopped).
pub fn init_with(format: Format) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        Format::Text => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
        Format::Json => registry.with(fmt.json().with_ansi(false)).try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// The filter without `RUST_LOG`.
pub const DEFAULT_FILTER: &str = "info,raft=warn,quinn=warn,rustls=warn";

/// A log filter checked as `set_filter` takes it: at most
/// `FILTER_BYTES_MAX`, `RUST_LOG`'s syntax. The CLI checks with it too,
/// before it sends anything.
pub fn parse_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    if spec.len() > FILTER_BYTES_MAX {
        return Err(format!(
            "a log filter of {} bytes is over {FILTER_BYTES_MAX} (FILTER_BYTES_MAX)",
            spec.len()
        ));
    }
    tracing_subscriber::EnvFilter::try_new(spec)
        .map_err(|e| format!("`{spec}` is not a log filter: {e}"))
}

/// Replaces the log filter of this process (`RUST_LOG`'s syntax: `debug`,
/// `info,claro::node::work=debug`); returns it as now in force. Refused,
/// changing nothing, when it does not parse or is over `FILTER_BYTES_MAX`.
pub fn set_filter(spec: &str) -> Result<String, String> {
    let filter = parse_filter(spec)?;
    let handle = FILTER.get().ok_or("this process's logging is not set up")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(spec.to_string())
}

/// A slog logger for raft-rs whose records become tracing events (target `raft`).
pub fn raft_logger(name: &str) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("server" => name.to_string()))
}

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let msg = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}
