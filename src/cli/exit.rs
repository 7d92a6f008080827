//! Exit statuses of the `claro` command and the failure type that carries one.
//! Shared by the CLI, the client side of requests and `claro init`, so that
//! none of them imports another just for its error type.

use crate::config::ConfigError;

pub const EXIT_OK: i32 = 0;
/// Failed: nothing reachable, the cluster refused, a deadline passed.
pub const EXIT_FAILED: i32 = 1;
/// Bad usage or bad input: nothing was changed.
pub const EXIT_USAGE: i32 = 2;

/// A failure with its exit status.
#[derive(Debug)]
pub struct Failure {
    pub status: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_USAGE,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_FAILED,
            message: message.into(),
        }
    }
    /// The command ends now, successfully and silently: its stdout was
    /// closed by the reader (`claro ... | head`), so nobody reads on.
    pub fn quiet() -> Failure {
        Failure {
            status: EXIT_OK,
            message: String::new(),
        }
    }
    pub fn is_quiet(&self) -> bool {
        self.status == EXIT_OK && self.message.is_empty()
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::usage(e.to_string())
    }
}
