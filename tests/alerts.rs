//! The alerting rules (packaging/claro-alerts.yml): valid for Prometheus,
//! firing as their unit tests say, and fed by metrics a real cluster
//! serves: a stalled hotfolder and a dead instance (127.0.184.x).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{addr, Cluster, TEST_TIMING};

const NET: u8 = 184;

/// `promtool ARGS` in packaging/, or `None` (said) where it is missing.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    match std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            common::skip(
                "the alert rules' promtool checks",
                "promtool",
                &format!("promtool cannot run: {e} (apt-get install prometheus)"),
            );
            None
        }
    }
}

#[test]
fn the_alert_rules_are_valid_and_fire_as_their_unit_tests_say() {
    for args in [
        &["check", "rules", "claro-alerts.yml"][..],
        &["test", "rules", "claro-alerts.test.yml"][..],
    ] {
        let Some(out) = promtool(args) else { return };
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `/metrics` of the instance at `host`, from loopback (no token).
fn metrics(host: &str) -> Option<String> {
    let mut s = TcpStream::connect((host, 7901)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The value of the sample `series` (name and labels as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `claro status --json` (asked of srv2) lists alert `name` about
/// `subject`.
fn alerted(c: &Cluster, name: &str, subject: &str) -> bool {
    let out = c.cli(&["status", "--json", "--server", "srv2"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["alerts"].as_array().is_some_and(|a| {
        a.iter()
            .any(|a| a["name"] == name && a["subject"] == subject)
    })
}

#[test]
fn a_stalled_hotfolder_and_a_dead_instance_show_in_what_the_alerts_watch() {
    // A stall threshold of seconds, not the default quarter of an hour.
    let mut c = Cluster::three_running_prepared(NET, TEST_TIMING, 1, |c| {
        let text = std::fs::read_to_string(&c.conf).unwrap();
        std::fs::write(
            &c.conf,
            format!("{text}\n[alerts]\nhotfolder_stalled_s = 2\n"),
        )
        .unwrap();
    });
    let host = addr(NET, 0);
    let out = c.cli(&[
        "hotfolder",
        "add",
        "slow",
        "--command",
        "sleep 20",
        "--stable-ms",
        "200",
    ]);
    assert!(out.status.success(), "{out:?}");
    let inbox = c.dir.path().join("shared/slow/in");
    c.wait(10, "the hotfolder's in/", || inbox.is_dir());
    // Five files on three slots: two wait for a server.
    for i in 0..5 {
        std::fs::write(inbox.join(format!("f{i}.pdf")), b"%PDF").unwrap();
    }
    let oldest = "claro_hotfolder_oldest_waiting_seconds{hotfolder=\"slow\"}";
    c.wait(30, "a file waiting for 3 s", || {
        metrics(&host).and_then(|m| sample(&m, oldest)) >= Some(3.0)
    });
    let m = metrics(&host).unwrap();
    assert_eq!(
        sample(&m, "claro_hotfolder_waiting_files{hotfolder=\"slow\"}"),
        Some(2.0),
        "{m}"
    );
    // The same condition in `claro status`, from any instance.
    assert!(alerted(&c, "ClaroHotfolderStalled", "slow"));
    // The disk alerts' inputs: both file systems, free below size.
    for path in ["data_dir", "shared_root"] {
        let free = sample(
            &m,
            &format!("claro_filesystem_free_bytes{{path=\"{path}\"}}"),
        );
        let size = sample(
            &m,
            &format!("claro_filesystem_size_bytes{{path=\"{path}\"}}"),
        );
        assert!(
            free.is_some() && free <= size && size > Some(0.0),
            "{path}: {m}"
        );
    }
    // A dead instance: its own /metrics is gone (Prometheus' `up` is 0),
    // and the others count one peer fewer.
    assert_eq!(sample(&m, "claro_peers_connected"), Some(2.0), "{m}");
    c.kill9("srv3");
    assert_eq!(
        metrics(&addr(NET, 2)),
        None,
        "a dead instance answers no scrape"
    );
    c.wait(30, "srv1 to count one peer fewer", || {
        metrics(&host).and_then(|m| sample(&m, "claro_peers_connected")) == Some(1.0)
    });
    c.wait(30, "status to alert that srv3 is down", || {
        alerted(&c, "ClaroInstanceDown", "srv3")
    });
    let text = String::from_utf8_lossy(&c.cli(&["status"]).stdout).to_string();
    assert!(
        text.contains("ALERT ClaroInstanceDown (critical): srv3 is down"),
        "{text}"
    );
    let coordinators: f64 = [0, 1]
        .iter()
        .filter_map(|i| metrics(&addr(NET, *i)).and_then(|m| sample(&m, "claro_coordinator")))
        .sum();
    assert_eq!(coordinators, 1.0, "one coordinator among those that answer");
}
