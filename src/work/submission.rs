//! A job as a client writes it in JSON: one line of `claro submit --many`,
//! or one element of a `POST /api/v1/jobs` body. Checked here as a
//! submission is checked everywhere (limits, a script that compiles);
//! who may send what (a command, inline code) is decided by the caller
//! (`web::access` for HTTP; the CLI's certificate is admin). Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::work::jobs::{JobKind, JobSpec};

/// Jobs in one batch: one entry, all or none (the jobs one entry may
/// submit, `state::JOB_BATCH_COUNT_MAX`, which asserts they agree).
pub const BATCH_COUNT_MAX: usize = 4096;
/// Bytes of one batch's text (lines or JSON array), at most: its entry
/// must fit the cluster's frames with room to spare.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// One job: exactly one of `script` (code), `stored` (a stored script's
/// name) or `command` (an argv, no shell); the options of `claro submit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub script: Option<String>,
    pub stored: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Vec<String>,
    pub priority: Option<i32>,
    pub max_attempts: Option<u32>,
    pub timeout_s: Option<u64>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl JobRequest {
    /// Whether it sends code to run (an inline script or a command), which
    /// takes more than running a stored script.
    pub fn runs_code(&self) -> bool {
        self.script.is_some() || self.command.is_some()
    }

    /// Whether it asks for what only a command has (argv, cwd, env).
    pub fn is_command_like(&self) -> bool {
        self.command.is_some() || self.cwd.is_some() || !self.env.is_empty()
    }

    /// The job it asks for, checked.
    pub fn spec(self) -> Result<JobSpec, String> {
        let mut spec = match (self.script, self.stored, self.command) {
            (Some(code), None, None) => {
                crate::work::script::check(&code).map_err(|e| format!("script: {e}"))?;
                let mut spec = JobSpec::script(&code);
                spec.args = self.args;
                spec
            }
            (None, Some(name), None) => {
                let mut spec = JobSpec::script("");
                spec.stored = Some(name);
                spec.args = self.args;
                spec
            }
            (None, None, Some(argv)) if self.args.is_empty() => {
                let mut spec = JobSpec::script("");
                spec.kind = JobKind::Command;
                spec.args = argv;
                spec
            }
            (None, None, Some(_)) => {
                return Err("a command's arguments are its argv (`command`), not `args`".into())
            }
            _ => {
                return Err(
                    "give one of `script` (code), `stored` (a stored script's name) or `command` (an argv)"
                        .into(),
                )
            }
        };
        if spec.kind == JobKind::Script && (self.cwd.is_some() || !self.env.is_empty()) {
            return Err("`cwd` and `env` are a command's".into());
        }
        spec.priority = self.priority.unwrap_or(spec.priority);
        spec.max_attempts = self.max_attempts.unwrap_or(spec.max_attempts);
        spec.timeout_ms = self
            .timeout_s
            .map_or(spec.timeout_ms, |t| t.saturating_mul(1000));
        spec.cwd = self.cwd;
        spec.env = self.env.into_iter().collect();
        spec.validate()?;
        Ok(spec)
    }
}

/// The jobs of `claro submit --many`: one JSON object a line (blank lines
/// skipped); the first bad line is refused naming its number, and then
/// nothing is submitted.
pub fn parse_lines(text: &str) -> Result<Vec<JobSpec>, String> {
    if text.len() > BATCH_BYTES_MAX {
        return Err(format!(
            "{} bytes of jobs, over the limit of {BATCH_BYTES_MAX} for one batch",
            text.len()
        ));
    }
    let mut specs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if specs.len() == BATCH_COUNT_MAX {
            return Err(format!("more than {BATCH_COUNT_MAX} jobs in one batch"));
        }
        let request: JobRequest =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        specs.push(request.spec().map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    if specs.is_empty() {
        return Err("no jobs: give one JSON object a line".into());
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_jobs_in_order() {
        let text = r#"{"script": "40 + 2", "priority": 5}

{"stored": "proof", "args": ["a"], "timeout_s": 30}
{"command": ["echo", "hi"], "cwd": "jobs", "env": {"K": "V"}}
"#;
        let specs = parse_lines(text).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[0].script.as_str(), specs[0].priority), ("40 + 2", 5));
        assert_eq!(specs[1].stored.as_deref(), Some("proof"));
        assert_eq!(specs[1].timeout_ms, 30_000);
        assert_eq!(specs[2].kind, JobKind::Command);
        assert_eq!(specs[2].args, ["echo", "hi"]);
        assert_eq!(specs[2].env, [("K".to_string(), "V".to_string())]);
    }

    #[test]
    fn a_bad_line_is_named_and_nothing_passes() {
        for (text, want) in [
            (
                "{\"script\": \"1\"}\n{\"script\": \"let x = ;\"}",
                "line 2: script:",
            ),
            (
                "{\"script\": \"1\", \"bogus\": 1}",
                "line 1: unknown field `bogus`",
            ),
            (
                "{\"script\": \"1\", \"stored\": \"a\"}",
                "line 1: give one of",
            ),
            (
                "{\"command\": [\"a\"], \"args\": [\"b\"]}",
                "line 1: a command's arguments",
            ),
            (
                "{\"script\": \"1\", \"env\": {\"A\": \"b\"}}",
                "line 1: `cwd` and `env`",
            ),
            ("{\"script\": \"1\", \"max_attempts\": 0}", "line 1:"),
            ("[1]", "line 1:"),
            ("\n\n", "no jobs"),
        ] {
            let e = parse_lines(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        let many = "{\"script\": \"1\"}\n".repeat(BATCH_COUNT_MAX + 1);
        assert!(parse_lines(&many)
            .unwrap_err()
            .contains("more than 4096 jobs"));
        let big = format!(
            "{{\"script\": \"\\\"{}\\\"\"}}",
            "x".repeat(BATCH_BYTES_MAX)
        );
        assert!(parse_lines(&big).unwrap_err().contains("over the limit"));
    }
}
