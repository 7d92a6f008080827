//! claro's cluster benchmark, side by side with a 3-member etcd cluster in the
//! same run. `cargo bench --bench cluster` (needs Debian's `etcd-server` for
//! the etcd half; without it only claro is measured).
//!
//! Measured on real processes over loopback, product defaults unless said:
//! commit latency (sequential proposals through the client port, p50/p99),
//! committed proposals per second under concurrent load, database transfer
//! MB/s to a late joiner, idle resident memory per instance, and failover as
//! a user sees it: from kill -9 of the coordinator to the first successful
//! `claro settings set` (the release binary, run with the CLI's own defaults)
//! through a survivor, and the same with `etcdctl put` for etcd. Every loop is
//! bounded in count and time.
//!
//! `CLARO_BENCH_ONLY=failover cargo bench --bench cluster` measures only the
//! failover, FAILOVER_ONLY_RUNS times for each system, each on a fresh cluster.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/conn.rs"]
mod conn;
#[path = "etcd.rs"]
mod etcd;
#[path = "support/failover.rs"]
mod failover;

use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::Command;
use common::Cluster;
use conn::Conn;
use failover::Failover;

const LATENCY_COUNT: usize = 2000;
const VALUE_BYTES: usize = 100;
const LOAD_CLIENTS: usize = 64;
const LOAD_COUNT: usize = 20_000;
const LOAD_TIME_MAX_S: u64 = 20;
const SNAPSHOT_MB: u32 = 200;
/// Idle time of a fresh cluster before its coordinator is killed, so the
/// failover starts from a settled cluster as in a shop.
const FAILOVER_IDLE_S: u64 = 3;
/// Failovers per system with `CLARO_BENCH_ONLY=failover`.
const FAILOVER_ONLY_RUNS: usize = 5;
/// Selects a part of the benchmark (only `failover` is known).
const ONLY_ENV: &str = "CLARO_BENCH_ONLY";

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

/// Writes through a persistent connection.
trait Put {
    async fn put(&self, key: String, timeout_ms: u64) -> Result<u64, String>;
}

impl Put for Conn {
    async fn put(&self, key: String, timeout_ms: u64) -> Result<u64, String> {
        let command = Command::Put {
            key,
            value: vec![7u8; VALUE_BYTES],
        };
        let req = Request::propose(command, Some(claro::proto::new_request_id()));
        match self.ask(&req, timeout_ms).await? {
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
    failover: Failover,
    rss_mb: Vec<f64>,
}

fn claro_three() -> ClaroFigures {
    let mut c = Cluster::three_running_with_timing(50, "");
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
    let failover = claro_failover(&mut c);
    ClaroFigures {
        p50_ms: percentile(&lat_us, 0.5),
        p99_ms: percentile(&lat_us, 0.99),
        per_s,
        term_changed,
        failover,
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

/// `claro settings set KEY 1 --server SERVER`, the release binary with the
/// CLI's own defaults.
fn claro_set(conf: &std::path::Path, key: &str, server: &str) -> std::process::Command {
    let mut cli = std::process::Command::new(common::BIN);
    cli.arg("--config").arg(conf);
    cli.args(["settings", "set", key, "1", "--server", server]);
    cli
}

/// kill -9 of the coordinator, then `claro settings set` through a survivor,
/// as a user types it, until one call succeeds.
fn claro_failover(c: &mut Cluster) -> Failover {
    let (coord, _) = coordinator(c, "srv2").expect("a coordinator before the kill");
    let survivors: Vec<String> = c.names.iter().filter(|n| **n != coord).cloned().collect();
    let survivor = survivors[0].clone();
    let conf = c.conf.clone();
    let healthy = failover::healthy_call_ms(claro_set(&conf, "healthy", &survivor));
    let killed_at = std::time::SystemTime::now();
    let killed = Instant::now();
    c.kill9(&coord);
    let result = failover::until_success(killed, |i| {
        claro_set(&conf, &format!("failover{i}"), &survivor)
    });
    let mut failover = result.unwrap_or_else(|e| panic!("claro failover: {e}"));
    // The write that succeeded is there.
    let key = format!("failover{}", failover.calls.len() - 1);
    assert_eq!(c.get(&survivor, &key), Some(b"1".to_vec()), "{key}");
    failover.healthy_call_ms = Some(healthy.expect("claro before the kill"));
    failover.timeline = election_timeline(c, &survivors, killed_at);
    failover
}

/// When raft-rs on a survivor started the election and when one became
/// leader, in ms after the kill, from the logs' own timestamps.
fn election_timeline(
    c: &Cluster,
    survivors: &[String],
    killed_at: std::time::SystemTime,
) -> Vec<(String, u64)> {
    let kill_us = killed_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64;
    let logs: Vec<(String, String)> = survivors.iter().map(|n| (n.clone(), c.log(n))).collect();
    let mut events = Vec::new();
    for needle in ["starting a new election", "became leader at term"] {
        let first = logs
            .iter()
            .flat_map(|(name, log)| {
                log.lines()
                    .filter(|l| l.contains(needle))
                    .filter_map(move |l| log_time_us(l).map(|t| (t - kill_us, name)))
            })
            .filter(|(after_us, _)| *after_us >= 0)
            .min();
        if let Some((after_us, name)) = first {
            events.push((format!("{name}: {needle}"), after_us as u64 / 1000));
        }
    }
    events
}

/// The timestamp that opens a log line (`2026-11-23T14:13:34.123456Z`), in
/// µs since 1970 (UTC).
fn log_time_us(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // The fraction as µs, whatever its number of digits.
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let micros: i64 = digits.parse().ok()?;
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + sec;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A fresh three-server cluster with the product's default timings, idle
/// for FAILOVER_IDLE_S, then its failover.
fn claro_failover_fresh() -> Failover {
    let mut c = Cluster::three_running_with_timing(50, "");
    std::thread::sleep(Duration::from_secs(FAILOVER_IDLE_S));
    claro_failover(&mut c)
}

/// kill -9 of etcd's leader, then `etcdctl put` through a survivor until one
/// call succeeds.
fn etcd_failover(cluster: &mut etcd::EtcdCluster) -> Result<Failover, String> {
    if !std::path::Path::new(etcd::ETCDCTL_BIN).exists() {
        return Err(format!(
            "{} missing: apt-get install etcd-client",
            etcd::ETCDCTL_BIN
        ));
    }
    let leader = cluster.leader()?;
    let url = cluster.client_url(cluster.survivor(leader)?);
    let healthy = failover::healthy_call_ms(etcd::etcdctl_put(&url, "bench/healthy", "1"))?;
    let killed = Instant::now();
    cluster.kill9(leader);
    let mut failover = failover::until_success(killed, |i| {
        etcd::etcdctl_put(&url, &format!("bench/failover/{i}"), "1")
    })?;
    failover.healthy_call_ms = Some(healthy);
    Ok(failover)
}

fn etcd_failover_fresh() -> Result<Failover, String> {
    let mut cluster = etcd::EtcdCluster::start(52)?;
    std::thread::sleep(Duration::from_secs(FAILOVER_IDLE_S));
    etcd_failover(&mut cluster)
}

/// `CLARO_BENCH_ONLY=failover`: claro and etcd in turn, FAILOVER_ONLY_RUNS
/// times each, every run on fresh clusters.
fn failover_only() {
    let mut rows = Vec::new();
    for run in 1..=FAILOVER_ONLY_RUNS {
        let ours = claro_failover_fresh();
        print!("{}", ours.describe(&format!("run {run}, claro")));
        let theirs = etcd_failover_fresh();
        match &theirs {
            Ok(f) => print!("{}", f.describe(&format!("run {run}, etcd"))),
            Err(e) => println!("run {run}, etcd not measured: {e}"),
        }
        rows.push((ours, theirs.ok()));
    }
    println!("\n| run | claro | etcd 3.4 |\n|---|---|---|");
    for (run, (ours, theirs)) in rows.iter().enumerate() {
        let theirs = theirs.as_ref().map_or("-".into(), failover_cell);
        println!("| {} | {} | {theirs} |", run + 1, failover_cell(ours));
    }
    println!("\nload average at the end: {}", load_average());
}

/// "total ms (calls, last call ms)".
fn failover_cell(f: &Failover) -> String {
    format!(
        "{} ms ({} call{}, last {} ms)",
        f.total_ms,
        f.calls.len(),
        if f.calls.len() == 1 { "" } else { "s" },
        f.last_call_ms()
    )
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
    // Other work on the machine shows in every figure: say how much there was.
    println!("load average at the start: {}", load_average());
    match std::env::var(ONLY_ENV).as_deref() {
        Err(_) => {}
        Ok("failover") => return failover_only(),
        Ok("commit") => return commit_only(),
        Ok(other) => panic!("{ONLY_ENV}={other}: the parts known are `failover` and `commit`"),
    }
    let claro = claro_three();
    let snap_mb_s = claro_snapshot();
    let etcd = etcd_figures();
    print!("{}", claro.failover.describe("claro failover"));
    if let Some(f) = etcd.as_ref().and_then(|e| e.failover.as_ref()) {
        print!("{}", f.describe("etcd failover"));
    }
    print_table(&claro, snap_mb_s, etcd.as_ref());
    println!("\nload average at the end: {}", load_average());
}

/// `CLARO_BENCH_ONLY=commit`: claro's commit latency and throughput alone
/// (a quick check of the write path; no etcd, no database transfer).
fn commit_only() {
    let c = claro_three();
    println!(
        "commit latency p50 {:.3} ms, p99 {:.3} ms; {:.0} committed proposals/s with {LOAD_CLIENTS} concurrent; coordinator changed during the load: {}",
        c.p50_ms, c.p99_ms, c.per_s, c.term_changed
    );
    println!("load average at the end: {}", load_average());
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_table(claro: &ClaroFigures, snap_mb_s: f64, etcd: Option<&EtcdFigures>) {
    println!("\n| figure | claro | etcd 3.4 | claro / etcd |\n|---|---|---|---|");
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
        etcd.map(|e| e.p50_ms),
        "ms",
    );
    row(
        "commit latency p99",
        claro.p99_ms,
        etcd.map(|e| e.p99_ms),
        "ms",
    );
    let etcd_failover = etcd.and_then(|e| e.failover.as_ref());
    println!(
        "| kill -9 coordinator to first successful CLI write | {} | {} | {} |",
        failover_cell(&claro.failover),
        etcd_failover.map_or("-".into(), failover_cell),
        etcd_failover.map_or("-".into(), |f| format!(
            "{:.2}",
            claro.failover.total_ms as f64 / f.total_ms as f64
        ))
    );
    let rss = claro.rss_mb.iter().cloned().fold(0.0, f64::max);
    row(
        "idle RSS per instance (max)",
        rss,
        etcd.map(|e| e.rss_mb),
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

struct EtcdFigures {
    p50_ms: f64,
    p99_ms: f64,
    /// None when etcdctl is missing or no put succeeded (said on stderr).
    failover: Option<Failover>,
    /// Max idle RSS of the members.
    rss_mb: f64,
}

/// None without etcd.
fn etcd_figures() -> Option<EtcdFigures> {
    let mut cluster = match etcd::EtcdCluster::start(52) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcd not measured: {e}");
            return None;
        }
    };
    std::thread::sleep(Duration::from_secs(3));
    let rss_mb = (0..3)
        .filter_map(|i| cluster.rss_bytes(i))
        .map(|b| b as f64 / 1048576.0)
        .fold(0.0, f64::max);
    let mut lat = etcd::sequential_put_latencies_us(&cluster, LATENCY_COUNT, VALUE_BYTES).ok()?;
    lat.sort_unstable();
    let failover = etcd_failover(&mut cluster)
        .inspect_err(|e| eprintln!("etcd failover not measured: {e}"))
        .ok();
    Some(EtcdFigures {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        failover,
        rss_mb,
    })
}
