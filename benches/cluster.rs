//! claro's cluster benchmark, side by side with a 3-member etcd cluster in the
//! same run. `cargo bench --bench cluster` (needs Debian's `etcd-server` for
//! the etcd half; without it only claro is measured).
//!
//! Measured on real processes over loopback, product defaults unless said:
//! commit latency (sequential proposals through the client port, p50/p99),
//! committed proposals per second under concurrent load, database transfer
//! MB/s to a late joiner, time from kill -9 of the coordinator to the next
//! commit, idle resident memory per instance. Every loop is bounded in count
//! and time.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "etcd.rs"]
mod etcd;

use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::Command;
use common::Cluster;

const LATENCY_COUNT: usize = 2000;
const VALUE_BYTES: usize = 100;
const LOAD_CLIENTS: usize = 64;
const LOAD_COUNT: usize = 20_000;
const LOAD_TIME_MAX_S: u64 = 20;
const SNAPSHOT_MB: u32 = 200;
const FAILOVER_WAIT_MAX_S: u64 = 30;
/// One write attempt during failover: short, so the measurement resolves to it.
const FAILOVER_ATTEMPT_MS: u64 = 50;

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A persistent client connection to one instance.
struct Conn {
    _ep: claro::transport::Endpoint,
    conn: quinn::Connection,
}

impl Conn {
    fn open(c: &Cluster, name: &str) -> Conn {
        let cfg = c.config();
        let server = cfg.server(name).expect("configured").clone();
        let ep = claro::client::endpoint(&cfg, server.address).expect("client endpoint");
        let conn =
            async_std::task::block_on(ep.connect(server.address, name, 2000)).expect("connect");
        Conn { _ep: ep, conn }
    }

    async fn put(&self, key: String, timeout_ms: u64) -> Result<u64, String> {
        let command = Command::Put {
            key,
            value: vec![7u8; VALUE_BYTES],
        };
        match claro::client::request(
            &self.conn,
            &Request::propose(command, Some(claro::proto::new_request_id())),
            timeout_ms,
        )
        .await?
        {
            Response::Proposed { index } => Ok(index),
            other => Err(format!("{other:?}")),
        }
    }
}

fn coordinator(c: &Cluster, via: &str) -> Option<(String, u64)> {
    c.status(via)
        .and_then(|v| v.coordinator.map(|n| (n, v.term)))
}

struct ClaroFigures {
    p50_ms: f64,
    p99_ms: f64,
    per_s: f64,
    term_changed: bool,
    failover_ms: u64,
    rss_mb: Vec<f64>,
}

fn claro_three() -> ClaroFigures {
    let servers = [("srv1", "server"), ("srv2", "server"), ("srv3", "server")];
    let mut c = Cluster::with_timing(50, &servers, "");
    c.start_alone("srv1");
    c.start("srv2");
    c.start("srv3");
    c.wait(30, "three", || {
        c.settled("srv1", "srv1", &["srv1", "srv2", "srv3"])
    });
    std::thread::sleep(Duration::from_secs(3));
    let rss_mb = ["srv1", "srv2", "srv3"]
        .iter()
        .filter_map(|n| c.pid(n).and_then(rss_mb))
        .collect();
    let leader = Conn::open(&c, "srv1");
    let mut lat_us = Vec::with_capacity(LATENCY_COUNT);
    async_std::task::block_on(async {
        for i in 0..LATENCY_COUNT {
            let t = Instant::now();
            leader
                .put(format!("lat{i}"), 5000)
                .await
                .expect("sequential put");
            lat_us.push(t.elapsed().as_micros() as u64);
        }
    });
    lat_us.sort_unstable();
    let (_, term_before) = coordinator(&c, "srv1").expect("coordinator");
    let per_s = load(&leader);
    let (who, term_after) = coordinator(&c, "srv1").expect("coordinator");
    let term_changed = who != "srv1" || term_after != term_before;
    let failover_ms = claro_failover(&mut c);
    ClaroFigures {
        p50_ms: percentile(&lat_us, 0.5),
        p99_ms: percentile(&lat_us, 0.99),
        per_s,
        term_changed,
        failover_ms,
        rss_mb,
    }
}

/// Committed proposals per second with LOAD_CLIENTS concurrent proposers.
fn load(conn: &Conn) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(LOAD_TIME_MAX_S);
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let per_client = LOAD_COUNT / LOAD_CLIENTS;
    let tasks: Vec<_> = (0..LOAD_CLIENTS)
        .map(|k| {
            let done = &done;
            async move {
                for i in 0..per_client {
                    if Instant::now() > deadline {
                        return;
                    }
                    if conn.put(format!("load{k}-{i}"), 5000).await.is_ok() {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
        .collect();
    async_std::task::block_on(join_all(tasks));
    done.into_inner() as f64 / started.elapsed().as_secs_f64()
}

async fn join_all<F: std::future::Future<Output = ()>>(futs: Vec<F>) {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// kill -9 of the coordinator, then proposals through the others until one commits.
fn claro_failover(c: &mut Cluster) -> u64 {
    let conns = [Conn::open(c, "srv2"), Conn::open(c, "srv3")];
    c.kill9("srv1");
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(FAILOVER_WAIT_MAX_S);
    async_std::task::block_on(async {
        let mut i = 0usize;
        while Instant::now() < deadline {
            if conns[i % 2]
                .put(format!("fo{i}"), FAILOVER_ATTEMPT_MS)
                .await
                .is_ok()
            {
                return killed.elapsed().as_millis() as u64;
            }
            i += 1;
        }
        panic!("no commit within {FAILOVER_WAIT_MAX_S} s of the kill");
    })
}

/// Database transfer to a late joiner: MB/s as logged by the sender, from
/// opening the stream to the receiver's answer that the file is whole
/// (received, fsynced, checksum verified).
fn claro_snapshot() -> f64 {
    let mut c = Cluster::with_timing(51, &[("srv1", "server"), ("srv2", "server")], "");
    c.start_alone("srv1");
    c.fill_megabytes("srv1", SNAPSHOT_MB);
    c.start("srv2");
    c.wait(120, "srv2 synchronized", || {
        c.settled("srv1", "srv1", &["srv1", "srv2"])
    });
    let line = c.log_line("srv1", "database sent");
    common::log_field(&line, "mb_per_s")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let date = std::process::Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("claro cluster benchmark, {}", date.unwrap_or_default());
    let claro = claro_three();
    let snap_mb_s = claro_snapshot();
    println!("\n| figure | claro | etcd 3.4 | claro / etcd |\n|---|---|---|---|");
    let etcd = etcd_figures();
    let row = |name: &str, ours: f64, theirs: Option<f64>, unit: &str| match theirs {
        Some(t) => println!(
            "| {name} | {ours:.3} {unit} | {t:.3} {unit} | {:.2} |",
            ours / t
        ),
        None => println!("| {name} | {ours:.3} {unit} | - | - |"),
    };
    row(
        "commit latency p50",
        claro.p50_ms,
        etcd.as_ref().map(|e| e.0),
        "ms",
    );
    row(
        "commit latency p99",
        claro.p99_ms,
        etcd.as_ref().map(|e| e.1),
        "ms",
    );
    row(
        "kill -9 coordinator to next commit",
        claro.failover_ms as f64,
        etcd.as_ref().map(|e| e.2),
        "ms",
    );
    let rss = claro.rss_mb.iter().cloned().fold(0.0, f64::max);
    row(
        "idle RSS per instance (max)",
        rss,
        etcd.as_ref().map(|e| e.3),
        "MB",
    );
    println!(
        "| committed proposals/s ({LOAD_CLIENTS} concurrent clients) | {:.0} | - | - |",
        claro.per_s
    );
    println!(
        "| coordinator changed during the load | {} | - | - |",
        claro.term_changed
    );
    println!(
        "| database transfer ({SNAPSHOT_MB} MB), sender's rate | {snap_mb_s:.0} MB/s | - | - |"
    );
}

/// (p50 ms, p99 ms, failover ms, max idle RSS MB), or None without etcd.
fn etcd_figures() -> Option<(f64, f64, f64, f64)> {
    let mut cluster = match etcd::EtcdCluster::start(52) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcd not measured: {e}");
            return None;
        }
    };
    std::thread::sleep(Duration::from_secs(3));
    let rss = (0..3)
        .filter_map(|i| cluster.rss_bytes(i))
        .map(|b| b as f64 / 1048576.0)
        .fold(0.0, f64::max);
    let mut lat = etcd::sequential_put_latencies_us(&cluster, LATENCY_COUNT, VALUE_BYTES).ok()?;
    lat.sort_unstable();
    let failover = etcd::failover_ms(&mut cluster).ok()? as f64;
    Some((percentile(&lat, 0.5), percentile(&lat, 0.99), failover, rss))
}
