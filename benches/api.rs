//! The HTTP API as a user meets it, each figure beside the CLI's for the
//! same query: `cargo bench --bench api` (release build, the product's
//! timings, loopback).
//!
//! - `GET /api/v1/jobs?limit=50` at SCALE_JOBS stored jobs on a one-server
//!   cluster (its jobs submitted in batches through the real log while the
//!   server is in maintenance, so they stay queued), a fresh connection per
//!   request as `curl` makes, p50/p99; and `claro jobs --limit 50 --json`,
//!   the whole process, p50/p99.
//! - `GET /api/v1/status` requests per second on one instance of three,
//!   CLIENTS keep-alive connections for RATE_S seconds; and `claro status
//!   --json` processes per second, CLIENTS at a time, for RATE_S seconds.
//! - `GET /metrics` at the same million jobs (jobs by state and kind, the
//!   queue depth), p50/p99.
//! - Event delay on three instances: a job submitted through srv1, from the
//!   POST's answer (the job committed and applied there) to its `job` event
//!   on srv2's stream, p50/p99.
//!
//! - After a kill -9 of the coordinator: each read a dashboard makes,
//!   through a survivor, and the time until a submission is accepted.
//!
//! Every loop is bounded in count and time.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/conn.rs"]
mod conn;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::Command;
use claro::work::jobs::{new_job_id, JobSpec};
use common::Cluster;

const SCALE_JOBS: usize = 1_000_000;
const BATCH: usize = 4096;
const LIST_COUNT: usize = 200;
const CLI_COUNT: usize = 30;
const METRICS_COUNT: usize = 50;
const CLIENTS: usize = 8;
const RATE_S: u64 = 5;
const EVENT_COUNT: usize = 100;
const TIME_MAX_S: u64 = 900;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One request on `s`, keep-alive; returns the status and body.
fn exchange(s: &mut TcpStream, host: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(s)
}

fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_string());
            }
        }
    }
}

fn connect(host: &str) -> TcpStream {
    let s = TcpStream::connect((host, 7901)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn fill(c: &Cluster) {
    let out = c.cli(&["node", "maintenance", "srv1"]);
    assert!(out.status.success(), "{out:?}");
    let conn = conn::Conn::open(c, "srv1");
    let started = Instant::now();
    let base_ms = claro::clock::now_ms() - 86_400_000;
    for b in 0..SCALE_JOBS.div_ceil(BATCH) {
        assert!(
            started.elapsed() < Duration::from_secs(TIME_MAX_S),
            "filling took too long"
        );
        let jobs = (0..BATCH)
            .map(|i| {
                let n = (b * BATCH + i) as u64;
                (new_job_id(base_ms + n, n as u32), JobSpec::script("1"))
            })
            .collect();
        let command = Command::JobsSubmit {
            jobs,
            at_ms: base_ms,
        };
        let req = Request::propose(command, Some(claro::proto::new_request_id()));
        match async_std::task::block_on(conn.ask(&req, 60_000)) {
            Ok(Response::Proposed { .. }) => {}
            other => panic!("batch {b}: {other:?}"),
        }
    }
    println!(
        "filled {} jobs in {:.1} s",
        SCALE_JOBS.div_ceil(BATCH) * BATCH,
        started.elapsed().as_secs_f64()
    );
}

/// Times `count` GETs of `path`, a fresh connection each, as `curl` makes
/// them; each answer must be 200 and contain `expect`. Sorted, in ms.
fn timed_gets(host: &str, path: &str, count: usize, expect: &str) -> Vec<f64> {
    let mut ms = Vec::new();
    for _ in 0..count {
        let t = Instant::now();
        let (status, body) = exchange(&mut connect(host), host, "GET", path, "");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(expect), "{body}");
    }
    ms.sort_by(f64::total_cmp);
    ms
}

fn list_figures(c: &Cluster, host: &str) {
    let http_ms = timed_gets(host, "/api/v1/jobs?limit=50", LIST_COUNT, "\"jobs\"");
    let mut cli_ms = Vec::new();
    for _ in 0..CLI_COUNT {
        let t = Instant::now();
        let out = c.cli(&["jobs", "--limit", "50", "--json"]);
        cli_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "{out:?}");
    }
    cli_ms.sort_by(f64::total_cmp);
    let metrics_ms = timed_gets(
        host,
        "/metrics",
        METRICS_COUNT,
        "claro_jobs{state=\"queued\"",
    );
    println!(
        "/metrics at {SCALE_JOBS} jobs: p50 {:.2} ms p99 {:.2} ms ({METRICS_COUNT} scrapes)",
        percentile(&metrics_ms, 0.5),
        percentile(&metrics_ms, 0.99)
    );
    println!(
        "jobs --limit 50 at {SCALE_JOBS} jobs: HTTP p50 {:.2} ms p99 {:.2} ms ({LIST_COUNT} requests, a connection each); CLI p50 {:.1} ms p99 {:.1} ms ({CLI_COUNT} runs)",
        percentile(&http_ms, 0.5),
        percentile(&http_ms, 0.99),
        percentile(&cli_ms, 0.5),
        percentile(&cli_ms, 0.99)
    );
}

fn status_rates(c: &Cluster, host: &str) {
    let until = Instant::now() + Duration::from_secs(RATE_S);
    let http: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(move || {
                    let mut s = connect(host);
                    let mut n = 0;
                    while Instant::now() < until {
                        let (status, _) = exchange(&mut s, host, "GET", "/api/v1/status", "");
                        assert_eq!(status, 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let until = Instant::now() + Duration::from_secs(RATE_S);
    let cli: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < until {
                        assert!(c.cli(&["status", "--json"]).status.success());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    println!(
        "status on one instance, {CLIENTS} clients for {RATE_S} s: HTTP {:.0} requests/s (keep-alive); CLI {:.1} runs/s",
        http as f64 / RATE_S as f64,
        cli as f64 / RATE_S as f64
    );
}

fn event_delay(hosts: &[String]) {
    let mut events = connect(&hosts[1]);
    let req = format!("GET /api/v1/events HTTP/1.1\r\nHost: {}\r\n\r\n", hosts[1]);
    events.write_all(req.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 65536];
    let mut submit = connect(&hosts[0]);
    let mut delays = Vec::new();
    let started = Instant::now();
    for _ in 0..EVENT_COUNT {
        assert!(started.elapsed() < Duration::from_secs(TIME_MAX_S));
        let (status, body) = exchange(
            &mut submit,
            &hosts[0],
            "POST",
            "/api/v1/jobs",
            r#"{"script":"1"}"#,
        );
        let answered = Instant::now();
        assert_eq!(status, 201, "{body}");
        let job: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = job["id"].as_str().unwrap().to_string();
        while !seen.contains(&format!("\"id\":\"{id}\"")) {
            let n = events.read(&mut buf).unwrap();
            assert!(n > 0);
            seen += &String::from_utf8_lossy(&buf[..n]);
        }
        delays.push(answered.elapsed().as_secs_f64() * 1000.0);
        seen.clear();
        std::thread::sleep(Duration::from_millis(20));
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "event delay, POST answered on srv1 to the job's event on srv2's stream: p50 {:.1} ms p99 {:.1} ms ({EVENT_COUNT} jobs)",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99)
    );
}

/// Kills the coordinator with SIGKILL and times, through a survivor, each
/// read a dashboard makes, then a submission until it is accepted (a 503
/// while no coordinator is elected is retried after 100 ms, as the
/// dashboard's form lets a user do).
fn after_coordinator_kill(c: &mut Cluster, hosts: &[String]) {
    let mut s = connect(&hosts[1]);
    let (_, body) = exchange(&mut s, &hosts[1], "GET", "/api/v1/status", "");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let coordinator = status["coordinator"].as_str().unwrap().to_string();
    let index: usize = coordinator.trim_start_matches("srv").parse().unwrap();
    let via = &hosts[index % 3]; // a survivor
    c.kill9(&coordinator);
    let killed = Instant::now();
    let mut line = format!("after kill -9 of the coordinator ({coordinator}), through a survivor:");
    for path in [
        "/api/v1/status",
        "/api/v1/servers",
        "/api/v1/jobs?limit=50",
        "/api/v1/hotfolders",
        "/metrics",
    ] {
        let t = Instant::now();
        let (code, body) = exchange(&mut connect(via), via, "GET", path, "");
        assert!(code == 200 || code == 503, "{path}: {code} {body}");
        let took = t.elapsed().as_secs_f64() * 1000.0;
        line += &format!(" {path} {code} in {took:.1} ms;");
    }
    loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no submission accepted"
        );
        let (code, _) = exchange(
            &mut connect(via),
            via,
            "POST",
            "/api/v1/jobs",
            r#"{"script":"1"}"#,
        );
        if code == 201 {
            break;
        }
        assert_eq!(code, 503);
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = killed.elapsed().as_secs_f64() * 1000.0;
    println!("{line} a submission accepted {took:.0} ms after the kill");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let date = std::process::Command::new("date").arg("-u").output();
    let date = date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("claro HTTP API benchmark, {}", date.unwrap_or_default());
    let mut c3 = Cluster::three_running_with_slots(126, "", 4);
    std::thread::sleep(Duration::from_secs(2));
    let hosts: Vec<String> = (0..3).map(|i| common::addr(126, i)).collect();
    event_delay(&hosts);
    status_rates(&c3, &hosts[1]);
    after_coordinator_kill(&mut c3, &hosts);
    drop(c3);
    let mut c1 = Cluster::with_timing(125, &[("srv1", "server")], "");
    c1.start_alone("srv1");
    fill(&c1);
    std::thread::sleep(Duration::from_secs(2));
    list_figures(&c1, &common::addr(125, 0));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
}
