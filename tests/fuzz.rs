//! Fuzzing on stable Rust: every decoder of what reaches an instance from
//! outside (network frames and messages, Raft messages, a script worker's
//! frames, the config, HTTP bodies and queries, hotfolder file names and
//! templates) is fed random bytes, truncations and bit flips of valid
//! encodings, valid encodings of random values, deep nesting and huge
//! declared lengths. Properties: no panic (errors are errors), no single
//! allocation over `ALLOC_BYTES_MAX` whatever a length prefix says, no case
//! using more than `CASE_CPU_MS_MAX` of CPU, and valid values round-trip.
//!
//! Each case runs from its own seed and prints it with its input when it
//! fails. `CLARO_FUZZ_SEED=N` replays that one case (with the failing
//! target's test name as the filter); `CLARO_FUZZ_S=N` runs every target for
//! N seconds instead of its small default count:
//!
//! ```sh
//! cargo test --test fuzz
//! CLARO_FUZZ_S=600 cargo test --release --test fuzz
//! CLARO_FUZZ_SEED=N cargo test --test fuzz TARGET -- --nocapture
//! ```

// The targets live in tests/fuzz/ (a folder of `tests/` holding no
// `main.rs` is no test target of its own).
#[path = "fuzz/config.rs"]
mod config;
#[path = "fuzz/frames.rs"]
mod frames;
#[path = "fuzz/harness.rs"]
mod harness;
#[path = "fuzz/hotfolder.rs"]
mod hotfolder;
#[path = "fuzz/http.rs"]
mod http;
