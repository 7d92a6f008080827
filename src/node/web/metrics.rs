//! `/metrics` in Prometheus' text format, from this instance's replica
//! and its own counters. Names are `claro_*`; each carries its unit last.
//! Histograms count since this instance started: job run times (ms, of the
//! jobs the stats sampler saw end), log persist with fsync and state apply
//! (µs, of this instance's Ready cycles).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Web;

pub async fn render(web: &Web) -> String {
    let mut out = String::new();
    raft(web, &mut out);
    jobs(web, &mut out);
    servers(web, &mut out);
    http(web, &mut out);
    certificates(web, &mut out);
    disks(web, &mut out).await;
    build_and_process(&mut out);
    out
}

/// A look at a file system's free space that takes longer than this (a
/// share that hangs) is left out of the answer.
const STATVFS_WAIT_MS: u64 = 1_000;

/// What runs (`claro_build_info`) and what the process costs: the
/// `process_*` metrics of Prometheus' client libraries, read from
/// /proc/self (absent where it cannot be read).
fn build_and_process(out: &mut String) {
    metric(
        out,
        "claro_build_info",
        "gauge",
        "The version and peer protocol of this instance.",
    );
    let _ = writeln!(
        out,
        "claro_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::proto::PROTOCOL_VERSION
    );
    let page = 4096u64;
    if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", rss * page);
    }
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks
    // (100 a second on Linux), after the command name in parentheses.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
        metric(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
        );
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {:.2}",
            (user + system) as f64 / 100.0
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
}

/// When this instance's certificate and the CA's expire: an alert rule
/// compares them with `time()` (e.g. 30 days ahead, as `status` warns).
fn certificates(web: &Web, out: &mut String) {
    metric(
        out,
        "claro_certificate_expiry_timestamp_seconds",
        "gauge",
        "When a certificate this instance uses expires (server: its own; ca: the cluster CA's).",
    );
    for (which, facts) in &web.cluster.certificates {
        let _ = writeln!(
            out,
            "claro_certificate_expiry_timestamp_seconds{{certificate=\"{which}\"}} {}",
            facts.not_after_s
        );
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn raft(web: &Web, out: &mut String) {
    let guard = web.cluster.core();
    let Some(core) = guard.as_ref() else {
        metric(
            out,
            "claro_database_present",
            "gauge",
            "1 when this instance holds a database.",
        );
        let _ = writeln!(out, "claro_database_present 0");
        return;
    };
    metric(
        out,
        "claro_database_present",
        "gauge",
        "1 when this instance holds a database.",
    );
    let _ = writeln!(out, "claro_database_present 1");
    for (name, help, value) in [
        ("claro_raft_term", "Current Raft term.", core.term()),
        (
            "claro_raft_commit_index",
            "Highest committed log index.",
            core.commit_index(),
        ),
        (
            "claro_raft_applied_index",
            "Highest log index applied here.",
            core.applied_index(),
        ),
        (
            "claro_coordinator",
            "1 when this instance is the coordinator.",
            u64::from(core.is_leader()),
        ),
    ] {
        metric(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    metric(
        out,
        "claro_log_persist_us",
        "histogram",
        "Log appends with their fsync, per Ready cycle.",
    );
    core.latency
        .persist_us
        .render("claro_log_persist_us", "", out);
    metric(
        out,
        "claro_apply_us",
        "histogram",
        "Applying committed entries to state.db, per batch.",
    );
    core.latency.apply_us.render("claro_apply_us", "", out);
    let bytes = std::fs::metadata(web.cluster.dir.join("state.db")).map_or(0, |m| m.len());
    metric(out, "claro_database_bytes", "gauge", "Size of state.db.");
    let _ = writeln!(out, "claro_database_bytes {bytes}");
}

fn jobs(web: &Web, out: &mut String) {
    let guard = web.cluster.core();
    let Some(core) = guard.as_ref() else { return };
    let conn = core.state().conn();
    let counts = crate::state::jobs::counts(conn);
    metric(out, "claro_jobs", "gauge", "Jobs kept, by state and kind.");
    for (state, kind, n) in counts.unwrap_or_default() {
        let _ = writeln!(out, "claro_jobs{{state=\"{state}\",kind=\"{kind}\"}} {n}");
    }
    let queued = crate::state::jobs::queued_count(conn).unwrap_or(0);
    metric(
        out,
        "claro_queue_depth",
        "gauge",
        "Jobs waiting for a server.",
    );
    let _ = writeln!(out, "claro_queue_depth {queued}");
    let hour_ago_ms = crate::clock::now_ms().saturating_sub(3_600_000);
    let defs = crate::state::hotfolders::list(conn).unwrap_or_default();
    metric(
        out,
        "claro_hotfolder_waiting_files",
        "gauge",
        "Files of a hotfolder with a job not started yet.",
    );
    let now_ms = crate::clock::now_ms();
    let counts: Vec<_> = defs
        .iter()
        .filter_map(|d| {
            let c = crate::state::hotfolders::counts(conn, &d.name, hour_ago_ms).ok()?;
            Some((&d.name, c))
        })
        .collect();
    for (name, c) in &counts {
        let _ = writeln!(
            out,
            "claro_hotfolder_waiting_files{{hotfolder=\"{name}\"}} {}",
            c.waiting
        );
    }
    // What the stalled-hotfolder alert watches (packaging/claro-alerts.yml).
    metric(
        out,
        "claro_hotfolder_oldest_waiting_seconds",
        "gauge",
        "How long the oldest file of a hotfolder whose job has not started has waited for a server (0: none waits).",
    );
    for (name, c) in &counts {
        let age_s = c.waited_s(now_ms).unwrap_or(0);
        let _ = writeln!(
            out,
            "claro_hotfolder_oldest_waiting_seconds{{hotfolder=\"{name}\"}} {age_s}"
        );
    }
}

/// Free and total bytes of the file systems of the data directory and of
/// the shared root, for the disk-space alert.
async fn disks(web: &Web, out: &mut String) {
    let places = [
        ("data_dir", web.cluster.dir.clone()),
        ("shared_root", web.cluster.cfg.shared_root.clone()),
    ];
    metric(
        out,
        "claro_filesystem_free_bytes",
        "gauge",
        "Bytes free to this instance on the file system of its data directory or the shared root.",
    );
    metric(
        out,
        "claro_filesystem_size_bytes",
        "gauge",
        "Size of the file system of this instance's data directory or the shared root.",
    );
    for (what, path) in places {
        if let Some((free, size)) = filesystem_look(what, path).await {
            let _ = writeln!(out, "claro_filesystem_free_bytes{{path=\"{what}\"}} {free}");
            let _ = writeln!(out, "claro_filesystem_size_bytes{{path=\"{what}\"}} {size}");
        }
    }
}

/// Per place: the last answer of its look, and whether a look is under way.
type Looks = std::collections::HashMap<&'static str, (Option<(u64, u64)>, bool)>;
static LOOKS: std::sync::Mutex<Option<Looks>> = std::sync::Mutex::new(None);

/// A file system's (free, size), looked at on a blocking thread: at most
/// one look per place at a time, so a share that hangs holds one thread,
/// not one per scrape. A look that takes over `STATVFS_WAIT_MS` answers
/// the last value known (none at first).
async fn filesystem_look(what: &'static str, path: std::path::PathBuf) -> Option<(u64, u64)> {
    let start = {
        let mut guard = LOOKS.lock().expect("looks lock");
        let entry = guard
            .get_or_insert_with(Default::default)
            .entry(what)
            .or_default();
        let idle = !entry.1;
        entry.1 = true;
        idle
    };
    if start {
        let look = async_std::task::spawn_blocking(move || {
            let found = crate::node::cluster::filesystem_bytes(&path);
            let mut guard = LOOKS.lock().expect("looks lock");
            guard
                .get_or_insert_with(Default::default)
                .insert(what, (found, false));
        });
        let wait = std::time::Duration::from_millis(STATVFS_WAIT_MS);
        let _ = async_std::future::timeout(wait, look).await;
    }
    let guard = LOOKS.lock().expect("looks lock");
    guard
        .as_ref()
        .and_then(|l| l.get(what))
        .and_then(|(v, _)| *v)
}

fn http(web: &Web, out: &mut String) {
    metric(
        out,
        "claro_http_responses_total",
        "counter",
        "HTTP answers of this instance, by status class.",
    );
    for (i, n) in web.answered.iter().enumerate() {
        let _ = writeln!(
            out,
            "claro_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            n.load(Ordering::Relaxed)
        );
    }
}

fn servers(web: &Web, out: &mut String) {
    let load = super::stats::load(web);
    metric(
        out,
        "claro_server_running_jobs",
        "gauge",
        "Jobs assigned to or running on a server.",
    );
    for (name, l) in &load {
        let _ = writeln!(
            out,
            "claro_server_running_jobs{{server=\"{name}\"}} {}",
            l.running
        );
    }
    metric(
        out,
        "claro_server_slots",
        "gauge",
        "Jobs a server runs at once at most.",
    );
    for (name, l) in &load {
        let _ = writeln!(out, "claro_server_slots{{server=\"{name}\"}} {}", l.slots);
    }
    metric(
        out,
        "claro_server_maintenance",
        "gauge",
        "1 when a server takes no new jobs.",
    );
    for (name, l) in &load {
        let on = u8::from(l.mode == "maintenance");
        let _ = writeln!(out, "claro_server_maintenance{{server=\"{name}\"}} {on}");
    }
    let view = crate::node::cluster::own_view(&web.cluster);
    let peers = view
        .servers
        .iter()
        .filter(|s| s.name != web.cluster.me.name && s.connected)
        .count();
    metric(
        out,
        "claro_peers_connected",
        "gauge",
        "Other servers this instance hears from.",
    );
    let _ = writeln!(out, "claro_peers_connected {peers}");
    let changes = web.coordinator_changes.load(Ordering::Relaxed);
    metric(
        out,
        "claro_coordinator_changes_total",
        "counter",
        "Times this instance saw the coordinator change since it started.",
    );
    let _ = writeln!(out, "claro_coordinator_changes_total {changes}");
    let stats = web.stats.lock().expect("stats lock");
    metric(
        out,
        "claro_job_duration_ms",
        "histogram",
        "Run time of jobs that ended.",
    );
    stats.durations.render("claro_job_duration_ms", "", out);
    metric(
        out,
        "claro_jobs_finished_total",
        "counter",
        "Jobs that ended since this instance started, by outcome.",
    );
    for (outcome, n) in ["succeeded", "failed", "cancelled"]
        .iter()
        .zip(stats.finished)
    {
        let _ = writeln!(
            out,
            "claro_jobs_finished_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
}
