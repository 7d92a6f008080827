//! claro: a cluster of identical server instances sharing file and script work.
//! See docs/ARCHITECTURE.md for the map.

pub mod access;
pub mod cert;
pub mod cli;
pub mod client;
pub mod config;
pub mod consensus;
pub mod exit;
pub mod histogram;
pub mod hotfolder;
pub mod hotfolder_client;
pub mod init;
pub mod integrity;
pub mod job_client;
pub mod jobs;
pub mod logging;
pub mod membership;
pub mod node;
pub mod output;
pub mod proto;
pub mod scheduler;
pub mod script;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod token_client;
pub mod transport;
pub mod view;
