//! The work's pure rules: what a job is, where it goes, when a hotfolder's
//! file is ready and what its action runs, and the sandboxed script engine.
//! No disk, no network, no clock: the server shell (`node::work`) feeds
//! them and carries out what they decide.
//!
//! - `jobs`: the job model, its limits and submission checks;
//! - `scheduler`: the coordinator's placement rule;
//! - `hotfolder`: definitions, patterns, stability, action templates;
//! - `submission`: a job as a client writes it in JSON (`submit --many`,
//!   the HTTP API's body);
//! - `ticket`: job tickets in (sidecar JSON or XML) and the fields a
//!   script sets for the result ticket;
//! - `script`: the Script Execution Engine (Rhai with every limit), which
//!   reaches its instance only through the `Host` it is given.

pub mod hotfolder;
pub mod jobs;
pub mod scheduler;
pub mod script;
pub mod submission;
pub mod ticket;
