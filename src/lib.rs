//! claro: a cluster of identical server instances sharing file and script work.
//! See docs/ARCHITECTURE.md for the map. Imports run downward only:
//!
//! - `cli`: the operator's side, the `claro` command (its only way into the
//!   server shell is `serve`);
//! - `node`: the server shell, one instance's async I/O, in three parts
//!   (`node::cluster`, `node::work`, `node::web`) composed by `node` itself;
//! - the pure rules, grouped by what they decide: `cluster` (membership,
//!   live view, integrity), `work` (jobs, scheduler, hotfolders, scripts),
//!   `web` (access);
//! - the foundations: `config`, `tls`, `transport`, `proto`, `consensus`,
//!   `state`, `data_dir`, `contract`, `clock`, `logging`, `throttle`,
//!   `histogram`.

pub mod cli;
pub mod node;

pub mod cluster;
pub mod web;
pub mod work;

pub mod backup;
pub mod clock;
pub mod config;
pub mod consensus;
pub mod contract;
pub mod data_dir;
pub mod fingerprint;
pub mod histogram;
pub mod logging;
pub mod proto;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod transport;
pub mod version;
