//! The cluster's pure rules: who starts how and in which order, who sees
//! whom, and whether the replicas agree. No I/O, no clock: the server shell
//! (`node::cluster`) gathers the facts, asks these rules and carries out
//! their answers.
//!
//! - `membership`: what a starting instance does (run, bootstrap, join,
//!   wait), start order, compatibility, re-admission, which of two clusters
//!   under one config yields;
//! - `view`: the live view of every server (the failure detector) and the
//!   status view built from it;
//! - `integrity`: the verdict on a replica's digests against its peers';
//! - `alerts`: what needs an operator now (status and dashboard).

pub mod alerts;
pub mod integrity;
pub mod membership;
pub mod view;
