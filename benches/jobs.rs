//! Jobs on a three-instance loopback cluster with the product's timings:
//! `cargo bench --bench jobs`.
//!
//! - Single-job latency: one no-op script job at a time on an idle
//!   cluster, from submission to `succeeded` as a client sees it (it asks
//!   for the job over its connection until it reads the end), p50/p99.
//! - Throughput: JOBS no-op script jobs submitted by CLIENTS concurrent
//!   producers spread over the three instances, from the first submission to
//!   the moment every job is `succeeded`; every state change committed to a
//!   majority and fsynced.
//! - Batched: the same number of jobs in submissions of BATCH jobs each
//!   (one entry per submission, as `claro submit --many` makes), from
//!   BATCH_CLIENTS producers; Celery's `group` of the same size beside it.
//! - Failover of work: kill -9 of an instance running long jobs, to all of
//!   them running again elsewhere.
//!
//! Every loop is bounded in count and time.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/conn.rs"]
mod conn;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use claro::proto::{Request, Response};
use claro::state::jobs::JobFilter;
use claro::state::Command;
use claro::work::jobs::{new_job_id, JobSpec, JobState};
use common::Cluster;
use conn::Conn;

const LATENCY_COUNT: usize = 300;
const JOBS: usize = 20_000;
const CLIENTS: usize = 64;
const THROUGHPUT_TIME_MAX_S: u64 = 120;
/// Jobs per submission in the batched figure.
const BATCH: usize = 100;
/// Concurrent producers of batches.
const BATCH_CLIENTS: usize = 8;
const REQUEST_MS: u64 = 10_000;
/// Redis of the Celery comparison listens here (on 127.0.0.1).
const CELERY_REDIS_PORT: u16 = 6390;
/// Slots per instance (`CLARO_BENCH_SLOTS` to change): no-op scripts use
/// little CPU, so a server for light scripts is configured with many.
const SLOTS: u32 = 16;

/// What the benchmark asks of an instance.
trait Jobs {
    async fn submit(&self, code: &str) -> Result<String, String>;
    /// The job's state, once it ended or after `wait_ms` at most (a held
    /// read, as `claro wait` makes).
    async fn state(&self, id: &str, wait_ms: u64) -> Option<JobState>;
    /// `count` jobs of `code` in one submission (one entry, all or none).
    async fn submit_many(&self, code: &str, count: usize) -> Result<usize, String>;
    async fn any_in(&self, state: JobState) -> bool;
}

impl Jobs for Conn {
    async fn submit(&self, code: &str) -> Result<String, String> {
        let id = new_job_id(claro::clock::now_ms(), rand::random());
        let mut spec = JobSpec::script(code);
        spec.timeout_ms = 60_000;
        let command = Command::JobSubmit {
            id: id.clone(),
            spec,
            at_ms: claro::clock::now_ms(),
        };
        match self
            .ask(&Request::propose(command, Some(id.clone())), REQUEST_MS)
            .await?
        {
            Response::Proposed { .. } => Ok(id),
            other => Err(format!("{other:?}")),
        }
    }

    async fn submit_many(&self, code: &str, count: usize) -> Result<usize, String> {
        let now_ms = claro::clock::now_ms();
        let jobs: Vec<(String, JobSpec)> = (0..count)
            .map(|_| {
                let mut spec = JobSpec::script(code);
                spec.timeout_ms = 60_000;
                (new_job_id(now_ms, rand::random()), spec)
            })
            .collect();
        let command = Command::JobsSubmit {
            jobs,
            at_ms: now_ms,
        };
        let request_id = claro::proto::new_request_id();
        match self
            .ask(&Request::propose(command, Some(request_id)), REQUEST_MS)
            .await?
        {
            Response::Proposed { .. } => Ok(count),
            other => Err(format!("{other:?}")),
        }
    }

    async fn state(&self, id: &str, wait_ms: u64) -> Option<JobState> {
        let req = Request::Job {
            id: id.into(),
            stale: false,
            wait_ms,
        };
        match self.ask(&req, REQUEST_MS).await {
            Ok(Response::Job { job, .. }) => job.map(|j| j.state),
            _ => None,
        }
    }

    /// Whether any job is in `state`.
    async fn any_in(&self, state: JobState) -> bool {
        let req = Request::Jobs {
            filter: JobFilter {
                state: Some(state),
                ..JobFilter::default()
            },
            limit: 1,
            stale: false,
        };
        matches!(self.ask(&req, REQUEST_MS).await, Ok(Response::Jobs { jobs, .. }) if !jobs.is_empty())
    }
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

fn latency(c: &Cluster) -> (f64, f64) {
    let conn = Conn::open(c, "srv1");
    let mut us = Vec::with_capacity(LATENCY_COUNT);
    async_std::task::block_on(async {
        for _ in 0..LATENCY_COUNT {
            let t = Instant::now();
            let id = conn.submit("1").await.expect("submit");
            let deadline = Instant::now() + Duration::from_secs(10);
            // Waited for as the CLI waits: a read held until the job ends.
            while conn.state(&id, claro::proto::JOB_WAIT_MS_MAX).await != Some(JobState::Succeeded)
            {
                assert!(Instant::now() < deadline, "job {id} did not succeed");
            }
            us.push(t.elapsed().as_micros() as u64);
        }
    });
    us.sort_unstable();
    (percentile_ms(&us, 0.5), percentile_ms(&us, 0.99))
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

/// Jobs per second from the first submission to the last success, how
/// many were acknowledged, and when the last was: JOBS jobs submitted
/// `batch` at a time (one entry a submission; `submit_many` beyond one)
/// by `producers` concurrent producers spread over the instances.
fn produce(c: &Cluster, producers: usize, batch: usize) -> (f64, usize, f64) {
    let conns: Vec<Conn> = c.names.iter().map(|n| Conn::open(c, n)).collect();
    let acked = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_TIME_MAX_S);
    let started = Instant::now();
    let per_producer = JOBS / batch / producers;
    let tasks: Vec<_> = (0..producers)
        .map(|k| {
            let (conn, acked) = (&conns[k % conns.len()], &acked);
            async move {
                for _ in 0..per_producer {
                    if Instant::now() > deadline {
                        return;
                    }
                    let sent = match batch {
                        1 => conn.submit("1").await.map(|_| 1),
                        n => conn.submit_many("1", n).await,
                    };
                    if let Ok(n) = sent {
                        acked.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        })
        .collect();
    async_std::task::block_on(join_all(tasks));
    let submitted_s = started.elapsed().as_secs_f64();
    drained(&conns[0], deadline);
    let n = acked.into_inner();
    (n as f64 / started.elapsed().as_secs_f64(), n, submitted_s)
}

/// Waits until no job is queued, assigned or running, or `deadline`.
fn drained(conn: &Conn, deadline: Instant) {
    async_std::task::block_on(async {
        loop {
            let mut busy = false;
            for s in [JobState::Queued, JobState::Assigned, JobState::Running] {
                busy |= conn.any_in(s).await;
            }
            if !busy || Instant::now() > deadline {
                return;
            }
            async_std::task::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// Where a job's time goes, from the stored times of the last `count` jobs:
/// placement to the end of its run (`finished_ms` is taken by the instance
/// when the run ended, before its report is committed), and on each
/// instance the gap from one job's end to the next placement there (the
/// end's commit, the coordinator's next round and the placement's commit).
fn timeline(c: &Cluster, count: u32) {
    let conn = Conn::open(c, "srv1");
    let req = Request::Jobs {
        filter: JobFilter::default(),
        limit: count,
        stale: false,
    };
    let Ok(Response::Jobs { mut jobs, .. }) = async_std::task::block_on(conn.ask(&req, REQUEST_MS))
    else {
        return;
    };
    let mut run: Vec<u64> = jobs
        .iter()
        .filter_map(|j| Some(j.finished_ms? - j.assigned_ms?))
        .collect();
    run.sort_unstable();
    jobs.sort_by_key(|j| j.assigned_ms);
    let mut gaps = Vec::new();
    let mut last_end: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for j in &jobs {
        let (Some(inst), Some(a), Some(f)) = (&j.instance, j.assigned_ms, j.finished_ms) else {
            continue;
        };
        let ends = last_end.entry(inst.clone()).or_default();
        if let Some(pos) = ends.iter().position(|e| *e <= a) {
            gaps.push(a - ends.remove(pos));
        }
        ends.push(f);
    }
    gaps.sort_unstable();
    let med = |v: &[u64]| v.get(v.len() / 2).copied().unwrap_or(0);
    println!(
        "where the time goes (last {count} jobs, medians): placement to end of run {} ms; end of a run to the next placement on that instance {} ms",
        med(&run),
        med(&gaps)
    );
}

/// Jobs stored for the listing figures (`CLARO_BENCH_ONLY=scale`).
const SCALE_JOBS: u64 = 1_000_000;
/// Jobs per applied batch while filling the database.
const SCALE_BATCH: u64 = 10_000;

/// `claro jobs --limit 50` at a million stored jobs, at the database the
/// answer is read from: the same queries (`state::jobs::list`) on a
/// state.db holding SCALE_JOBS jobs in every state, newest first, with each
/// filter. (The request's round trip adds what the latency figure shows.)
fn scale() {
    use claro::state::{Change, StateMachine, Sync};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = StateMachine::open(&dir.path().join("state.db"), Sync::Normal).expect("open");
    let started = Instant::now();
    let mut index = 0;
    for b in 0..SCALE_JOBS / SCALE_BATCH {
        let cmds: Vec<Command> = (0..SCALE_BATCH)
            .map(|i| {
                let n = b * SCALE_BATCH + i;
                Command::JobSubmit {
                    id: new_job_id(1_700_000_000_000 + n, n as u32),
                    spec: JobSpec::script("1"),
                    at_ms: 1_700_000_000_000 + n,
                }
            })
            .collect();
        let batch: Vec<_> = cmds
            .iter()
            .map(|c| {
                index += 1;
                (index, 1, Change::Command(c))
            })
            .collect();
        sm.apply(&batch).expect("apply");
    }
    println!(
        "filled {SCALE_JOBS} jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let filters = [
        ("no filter", JobFilter::default()),
        (
            "--state queued",
            JobFilter {
                state: Some(JobState::Queued),
                ..JobFilter::default()
            },
        ),
        (
            "--state failed (none)",
            JobFilter {
                state: Some(JobState::Failed),
                ..JobFilter::default()
            },
        ),
        (
            "--kind script",
            JobFilter {
                kind: Some(claro::work::jobs::JobKind::Script),
                ..JobFilter::default()
            },
        ),
        (
            "--instance srv2 (none)",
            JobFilter {
                instance: Some("srv2".into()),
                ..JobFilter::default()
            },
        ),
    ];
    for (what, f) in filters {
        let mut us = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let jobs = claro::state::jobs::list(sm.conn(), &f, 51).expect("list");
            us.push(t.elapsed().as_micros() as u64);
            assert!(jobs.len() <= 51);
        }
        us.sort_unstable();
        println!(
            "claro jobs --limit 50, {what}: p50 {:.2} ms, max {:.2} ms",
            percentile_ms(&us, 0.5),
            percentile_ms(&us, 1.0)
        );
    }
    let bytes = std::fs::metadata(dir.path().join("state.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("state.db with {SCALE_JOBS} jobs: {} MB", bytes / 1_000_000);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var("CLARO_BENCH_ONLY").as_deref() == Ok("scale") {
        return scale();
    }
    if std::env::var("CLARO_BENCH_ONLY").as_deref() == Ok("grow") {
        return grow();
    }
    let date = std::process::Command::new("date").arg("-u").output();
    let date = date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    println!("claro jobs benchmark, {}", date.unwrap_or_default());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the start: {}", load.trim());
    let slots: u32 = std::env::var("CLARO_BENCH_SLOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SLOTS);
    println!("three instances, {slots} slots each, the product's timings");
    let c = Cluster::three_running_with_slots(54, "", slots);
    std::thread::sleep(Duration::from_secs(3));
    let (p50, p99) = latency(&c);
    println!("single no-op script job, submit to succeeded: p50 {p50:.2} ms, p99 {p99:.2} ms ({LATENCY_COUNT} jobs, one at a time)");
    let (per_s, n, submit_s) = produce(&c, CLIENTS, 1);
    timeline(&c, 1000);
    println!("throughput: {per_s:.0} jobs/s ({n} no-op script jobs from {CLIENTS} concurrent producers; all submitted after {submit_s:.2} s)");
    let (per_s, n, _) = produce(&c, BATCH_CLIENTS, BATCH);
    println!("batched: {per_s:.0} jobs/s ({n} no-op script jobs in submissions of {BATCH} from {BATCH_CLIENTS} concurrent producers)");
    drop(c);
    // `CLARO_BENCH_ONLY=claro`: no peer (instance binaries compared in
    // turns, the peer measured once beside them).
    if std::env::var("CLARO_BENCH_ONLY").as_deref() != Ok("claro") {
        for appendfsync in ["no", "always"] {
            celery(appendfsync);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
}

/// Celery 5 with a Redis broker on 127.0.0.1:CELERY_REDIS_PORT, measured
/// the same way (benches/support/celery/bench.py), if set up
/// (benches/support/celery/setup.sh).
fn celery(appendfsync: &str) {
    let ready = std::process::Command::new("python3")
        .args(["-c", "import celery, redis"])
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
    if !ready {
        println!("celery: not set up (run benches/support/celery/setup.sh)");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/support/celery/bench.py"
    );
    let out = std::process::Command::new("python3")
        .args([script, appendfsync, &JOBS.to_string(), &CLIENTS.to_string()])
        .arg(CELERY_REDIS_PORT.to_string())
        .args([BATCH.to_string(), BATCH_CLIENTS.to_string()])
        .output()
        .expect("run the celery benchmark");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        println!(
            "celery ({appendfsync}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Cluster sizes of `CLARO_BENCH_ONLY=grow`.
const GROW_SIZES: [usize; 4] = [3, 5, 9, 15];
/// Sequential commits measured per size.
const GROW_COMMITS: usize = 500;
/// How long idle CPU is measured, per size.
const GROW_IDLE_S: u64 = 10;
/// Longest wait for every instance of a size to be in service.
const GROW_START_S: u64 = 180;

/// `CLARO_BENCH_ONLY=grow`: the cost as the cluster grows, on one machine
/// (every instance shares its CPUs, so the figures are of a shared
/// machine): commit latency, single-job latency, job throughput and idle
/// CPU with 3, 5, 9 and 15 instances (at most 5 voters; the rest
/// non-voting members), the product's timings.
fn grow() {
    let slots: u32 = std::env::var("CLARO_BENCH_SLOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SLOTS);
    println!("claro as the cluster grows, {slots} slots each, the product's timings");
    println!("| instances | voters | commit p50 / p99 | job p50 / p99 | jobs/s (64 producers) | idle CPU, all instances |");
    println!("|---|---|---|---|---|---|");
    for n in GROW_SIZES {
        let mut c = grown(n, slots);
        std::thread::sleep(Duration::from_secs(3));
        let voters = c.status("srv1").map_or(0, |v| {
            v.servers
                .iter()
                .filter(|s| s.state == "coordinator" || s.state == "follower")
                .count()
        });
        let idle = idle_cpu_percent(&mut c);
        let (c50, c99) = commits(&c);
        let (j50, j99) = latency(&c);
        let (per_s, _, _) = produce(&c, CLIENTS, 1);
        println!("| {n} | {voters} | {c50:.2} / {c99:.2} ms | {j50:.2} / {j99:.2} ms | {per_s:.0} | {idle:.1} % of one CPU |");
    }
}

/// `n` instances srv1.. started one after another, all in service.
fn grown(n: usize, slots: u32) -> Cluster {
    let names: Vec<String> = (1..=n).map(|i| format!("srv{i}")).collect();
    let servers: Vec<(&str, &str)> = names.iter().map(|s| (s.as_str(), "server")).collect();
    let mut c = Cluster::with_timing(54, &servers, "");
    let text = std::fs::read_to_string(&c.conf).unwrap();
    std::fs::write(
        &c.conf,
        text.replace("slots = 4\n", &format!("slots = {slots}\n")),
    )
    .unwrap();
    c.start_alone("srv1");
    for name in &names[1..] {
        c.start(name);
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    c.wait(GROW_START_S, "every instance in service", || {
        c.settled("srv1", "srv1", &all)
    });
    c
}

/// CPU time all instances used over `GROW_IDLE_S` of idleness, as a
/// percentage of one CPU.
fn idle_cpu_percent(c: &mut Cluster) -> f64 {
    let pids: Vec<u32> = c.names.clone().iter().filter_map(|n| c.pid(n)).collect();
    let ticks = |pid: &u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime is the
        // 12th, stime the 13th.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
    };
    let before: u64 = pids.iter().map(ticks).sum();
    std::thread::sleep(Duration::from_secs(GROW_IDLE_S));
    let after: u64 = pids.iter().map(ticks).sum();
    // Clock ticks are 100 a second on Linux.
    (after - before) as f64 / GROW_IDLE_S as f64
}

/// Sequential settings writes through the coordinator: p50, p99 in ms.
fn commits(c: &Cluster) -> (f64, f64) {
    let conn = Conn::open(c, "srv1");
    let mut us = Vec::with_capacity(GROW_COMMITS);
    async_std::task::block_on(async {
        for i in 0..GROW_COMMITS {
            let command = Command::Put {
                key: format!("grow-{i}"),
                value: vec![7u8; 100],
            };
            let req = Request::propose(command, Some(claro::proto::new_request_id()));
            let t = Instant::now();
            let r = conn.ask(&req, REQUEST_MS).await;
            assert!(matches!(r, Ok(Response::Proposed { .. })), "{r:?}");
            us.push(t.elapsed().as_micros() as u64);
        }
    });
    us.sort_unstable();
    (percentile_ms(&us, 0.5), percentile_ms(&us, 0.99))
}
