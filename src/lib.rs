//! claro: a cluster of identical server instances sharing file and script work.
//! See docs/ARCHITECTURE.md for the map.

pub mod cli;
pub mod consensus;
pub mod state;
