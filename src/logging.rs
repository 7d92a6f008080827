//! Logs: `tracing` for claro itself, and a bridge that turns raft-rs's `slog`
//! records into `tracing` events, so one filter (`RUST_LOG`) governs both.

use slog::Drain;

/// Installs the global subscriber: `RUST_LOG` or `info`, to stderr. A log
/// line that cannot be written (stderr is a pipe whose reader has gone) is
/// dropped: the subscriber would otherwise report it with `eprintln!`,
/// which panics on the same broken pipe, in whatever thread was logging,
/// the one that takes SIGTERM among them (`serve 2>&1 | head` then never
/// stopped).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,raft=warn,quinn=warn,rustls=warn")
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
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
