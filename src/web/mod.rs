//! The web side's pure rules: roles, tokens, sessions, CSRF tokens and the
//! failed-login limit (`access`). The HTTP shell (`node::web`) stores, looks
//! up and answers; nothing here does I/O.

pub mod access;
