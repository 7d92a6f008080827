//! Repeated warnings are counted, not repeated: a refused stranger that
//! keeps knocking is logged once (then once a minute with a count, which the
//! unit tests of `throttle` check on an injected clock). Real processes on
//! 127.0.89.x, port 7900.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, BIN};

/// How long the stranger keeps knocking after its first refusal: its
/// discovery probes srv1 every 300 ms and srv1's gossip tries it every
/// 250 ms, so about 15 refusals each way.
const KNOCKING_MS: u64 = 4_500;

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_refused_stranger_is_logged_once_not_at_every_attempt() {
    let mut c = Cluster::new(
        89,
        &[("srv1", "server"), ("srv2", "server"), ("srv3", "server")],
    );
    c.start_alone("srv1");
    // srv2's copy of the config lists srv3 elsewhere: the two refuse each
    // other at every contact.
    let conf = c.moved_config("stranger", "127.0.89.3", "127.0.89.9");
    let log = std::fs::File::create(c.log_path("srv2")).unwrap();
    let mut other = Command::new(BIN)
        .arg("--config")
        .arg(&conf)
        .args(["serve", "--name", "srv2"])
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.wait(30, "both sides to refuse the other", || {
        c.log("srv1").contains("peer refused") && c.log("srv2").contains("peer refused")
    });
    std::thread::sleep(Duration::from_millis(KNOCKING_MS));
    let (srv1, srv2) = (c.log("srv1"), c.log("srv2"));
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(lines_with(&srv1, "peer refused"), 1, "{srv1}");
    assert_eq!(lines_with(&srv2, "peer refused"), 1, "{srv2}");
    // The refused side still says why it waits (once, not per attempt).
    assert!(srv2.contains("127.0.89.9"), "{srv2}");
    // srv1 kept serving meanwhile.
    c.set("srv1", "k", b"v".to_vec()).unwrap();
}
