//! `claro submit --many FILE|-`: many jobs in one entry, all or none. The
//! lines are read and checked before anything is sent (a bad line: exit
//! 2, naming it, nothing submitted); the entry carries one request id, so
//! a retry through another server never submits the batch twice.

use std::io::Read as _;

use crate::cli::client::ClientArgs;
use crate::cli::exit::Failure;
use crate::cli::output;
use crate::config::Config;
use crate::state::Command;
use crate::work::submission::{parse_lines, BATCH_BYTES_MAX};

/// Submits the jobs of `from` (a file, or `-` for stdin); prints their ids,
/// one a line in the lines' order (`--json`: an array of them).
pub fn submit_many(config: &Config, client: &ClientArgs, from: &str) -> Result<(), Failure> {
    let text = read_text(from)?;
    let specs = parse_lines(&text).map_err(|e| Failure::usage(format!("{from}: {e}")))?;
    let jobs: Vec<(String, crate::work::jobs::JobSpec)> = specs
        .into_iter()
        .map(|spec| (crate::cli::jobs::new_id(), spec))
        .collect();
    let ids: Vec<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    let command = Command::JobsSubmit {
        jobs,
        at_ms: crate::clock::now_ms(),
    };
    crate::cli::jobs::write(config, client, command, crate::proto::new_request_id())?;
    if client.json {
        return output::emit(&output::json_line(&ids));
    }
    output::emit(&ids.iter().map(|id| format!("{id}\n")).collect::<String>())
}

/// The text of `from`, at most `BATCH_BYTES_MAX` bytes (more: exit 2).
fn read_text(from: &str) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    let limit = BATCH_BYTES_MAX as u64 + 1;
    let read = if from == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(from).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| Failure::usage(format!("cannot read {from}: {e}")))?;
    if bytes.len() > BATCH_BYTES_MAX {
        return Err(Failure::usage(format!(
            "{from} is over the limit of {BATCH_BYTES_MAX} bytes for one batch"
        )));
    }
    String::from_utf8(bytes).map_err(|_| Failure::usage(format!("{from} is not UTF-8 text")))
}
