//! `ClaroServers.conf`: the cluster's configuration, identical on every server.
//!
//! Parsing happens in two steps. The TOML is first read into spanned raw
//! structs (every field optional, every value with its byte span), so that
//! each later check can name the file, the 1-based line and the dotted key of
//! what it rejects; then the raw values are validated into [`Config`].
//! This module only reads and checks; it never creates files or directories.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The cluster's UDP port when the config does not say.
pub const PORT_DEFAULT: u16 = 7900;
/// Parallel jobs per server when `slots` is not given.
pub const SLOTS_DEFAULT: u32 = 4;
/// Upper bound of `slots`: more would only hide a typo.
pub const SLOTS_MAX: u32 = 256;
/// Upper bound of the cluster name's length.
pub const CLUSTER_NAME_MAX_CHARS: usize = 64;
/// Server names are DNS labels in TLS certificates, which RFC 1035 caps at 63.
pub const SERVER_NAME_MAX_CHARS: usize = 63;
/// Upper bound of `[[server]]` entries; a Raft group this big is a mistake.
pub const SERVERS_MAX: usize = 64;
/// Upper bound of every timing value (ten minutes).
pub const TIMING_MAX_MS: u64 = 600_000;
/// A config file larger than this is refused before parsing.
pub const CONFIG_MAX_BYTES: u64 = 1024 * 1024;
/// `tls_dir` when the config does not say (relative to the config's folder).
pub const TLS_DIR_DEFAULT: &str = "tls";
/// The name of the CLI's client certificate, so no server may take it.
pub const RESERVED_SERVER_NAME: &str = "client";
/// Upper bound of a host name's length (RFC 1035: 253 characters written).
pub const HOST_NAME_MAX_CHARS: usize = 253;
/// Upper bound of one label of a host name (RFC 1035).
pub const HOST_LABEL_MAX_CHARS: usize = 63;
/// How long a host name lookup may take. The system resolver (getaddrinfo)
/// has no deadline of its own (glibc's default is 5 s per attempt, 2
/// attempts, per name server), so each lookup runs on a thread of its own and
/// is abandoned after this wait; the thread ends when the resolver gives up.
pub const RESOLVE_WAIT_MS: u64 = 2_000;

/// What a server does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Votes, runs jobs, may coordinate.
    Server,
    /// Votes and holds the database; never runs jobs, never coordinates.
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Witness => "witness",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a server is, as its `address` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lowercased (DNS is case-insensitive; the membership text
    /// must not depend on how it was typed).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl Host {
    /// Parses `IP`, `IP:PORT`, `[IPv6]:PORT`, `NAME` or `NAME:PORT`; without
    /// a port, `default_port`. Nothing is resolved.
    pub fn parse(text: &str, default_port: u16) -> Result<(Host, u16), String> {
        parse_address(text, default_port)
    }

    /// Every address of this host on `port`, within [`RESOLVE_WAIT_MS`]; an
    /// IP is itself. An error says why, naming the host.
    pub fn lookup(&self, port: u16) -> Result<Vec<SocketAddr>, String> {
        lookup_all(&[(self, port)]).swap_remove(0)
    }
}

/// One `[[server]]` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConf {
    pub name: String,
    /// The host as the config writes it (an IP or a DNS name). This, not
    /// the resolved address, is what members compare, so that servers with
    /// different DNS views still agree on the membership.
    pub host: Host,
    /// The explicit port of `HOST:PORT`, else the cluster port.
    pub port: u16,
    /// `host` resolved when the config was loaded (see [`ServerConf::resolve`]
    /// for connections made later). Of a name with both IPv4 and IPv6
    /// addresses, the first IPv4 one: a cluster's servers mostly share an
    /// IPv4 network, and one fixed rule makes every server pick alike.
    pub address: SocketAddr,
    /// Parallel jobs, 1..=[`SLOTS_MAX`].
    pub slots: u32,
    pub role: Role,
    /// May vote (`vote`, default true): promoted to voter when the cluster
    /// has fewer than `consensus::VOTERS_MAX`; else a non-voting member.
    pub vote: bool,
}

impl ServerConf {
    /// The address as configured, in one canonical form: `IP:PORT`,
    /// `[IPv6]:PORT` or `NAME:PORT`.
    pub fn configured_address(&self) -> String {
        configured(&self.host, self.port)
    }

    /// The address to connect to now. A name is looked up again (within
    /// [`RESOLVE_WAIT_MS`], on a blocking thread so the caller's executor
    /// is not held up), so a server whose DNS record changed is found at
    /// its new address without a restart. When the lookup fails the address
    /// found at load is used: a resolver that is briefly down must not cut
    /// a running cluster apart.
    pub async fn resolve(&self) -> SocketAddr {
        let Host::Name(name) = &self.host else {
            return self.address;
        };
        let (owned, port) = (name.clone(), self.port);
        let lookup = async_std::task::spawn_blocking(move || system_lookup(&owned, port));
        let wait = Duration::from_millis(RESOLVE_WAIT_MS);
        let found = match async_std::future::timeout(wait, lookup).await {
            Ok(result) => result.and_then(|all| prefer_ipv4(name, &all)),
            Err(_) => Err(too_slow(name)),
        };
        found.unwrap_or_else(|e| {
            crate::throttled_warn!("host lookup failed", self.name, server = %self.name, "{e}; using {} found at start", self.address);
            self.address
        })
    }
}

/// The `[timing]` table, all in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// The Raft clock's tick; the other Raft timings are whole ticks of it.
    pub tick_ms: u64,
    /// How often the coordinator tells followers it is alive.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from the coordinator for a random time
    /// between this and twice this starts an election (the failover time).
    pub election_ms: u64,
    /// Silence after which an instance counts as gone and its jobs are
    /// released to others (the job scheduler's failure detector).
    pub node_timeout_ms: u64,
    /// How long a fresh instance looks for a running cluster before the
    /// first-started one bootstraps a new one.
    pub discovery_ms: u64,
    /// How often the coordinator commits a digest checkpoint, at which the
    /// replicas compare their whole state (`integrity`).
    pub checkpoint_ms: u64,
    /// How long a stopping instance lets its running jobs finish before it
    /// hands them back to be run elsewhere.
    pub drain_ms: u64,
    /// How often the coordinator scans every hotfolder's `in/` (polling,
    /// because change notifications do not cross SMB or NFS shares).
    pub hotfolder_poll_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick_ms: 20,
            heartbeat_ms: 100,
            election_ms: 500,
            node_timeout_ms: 3000,
            discovery_ms: 2000,
            checkpoint_ms: 30_000,
            drain_ms: 10_000,
            hotfolder_poll_ms: 1000,
        }
    }
}

/// A validated `ClaroServers.conf`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, as given.
    pub path: PathBuf,
    pub cluster: String,
    pub port: u16,
    /// TCP port of the HTTP API, dashboard and metrics on every server's
    /// address (`http_port`, default 7901; 0: no HTTP).
    pub http_port: u16,
    /// `http_login = true`: the HTTP API asks loopback clients for a token
    /// too (by default they need none on a loopback address).
    pub http_login: bool,
    /// `https = true|false`: serve the HTTP API over TLS with the server's
    /// certificate. `None` (not given): HTTPS on any address but a loopback
    /// one. Plain HTTP is never served on a non-loopback address.
    pub https: Option<bool>,
    /// `http_hosts = ["claro.example.com"]`: more names the HTTP API answers
    /// to (a `Host` header of any other name is refused with 421), beside
    /// each server's configured host, address and name, and `localhost` on
    /// a loopback address. Lowercase; at most `HTTP_HOSTS_MAX`.
    pub http_hosts: Vec<String>,
    /// Resolved against the config's folder; exists and is a directory.
    pub shared_root: PathBuf,
    /// Resolved against the config's folder; need not exist yet.
    pub data_dir: PathBuf,
    /// Resolved against the config's folder.
    pub tls_dir: PathBuf,
    pub timing: Timing,
    /// `[jobs]`: how long finished jobs are kept.
    pub jobs: JobsConf,
    /// `[alerts]`: when status and the dashboard raise an alert.
    pub alerts: AlertsConf,
    pub servers: Vec<ServerConf>,
    /// `[hotfolder.NAME]` tables: created when a new cluster bootstraps
    /// (afterwards they are cluster settings, changed with `claro hotfolder`).
    pub hotfolders: Vec<crate::work::hotfolder::Hotfolder>,
}

/// The `[jobs]` table: finished jobs are kept for `keep_ms` after they end,
/// and at most `keep_count` of them (the oldest go first); the coordinator
/// purges the rest by committed commands, in bounded batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConf {
    pub keep_ms: u64,
    pub keep_count: u64,
    /// Address space of one script worker process (`script_memory_mb`): a
    /// script that needs more fails naming this limit, its instance unharmed.
    pub script_memory_mb: u64,
    /// CPU time one script may use (`script_cpu_s`), beside its wall-clock
    /// timeout: the worker process is stopped past it.
    pub script_cpu_s: u64,
    /// Files a script worker process may hold open (`script_files_max`); its
    /// host functions' files are opened by the instance, not the worker.
    pub script_files_max: u64,
    /// `run_as`: the user every process of a job runs as (commands,
    /// hotfolder actions, `run` children, script workers). Only written
    /// here: `serve` looks it up on its own machine, where it matters (a
    /// client's machine need not know the user).
    pub run_as: Option<RunAs>,
}

/// `[jobs] run_as` as written, and its line for the errors of the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: UserRef,
    /// 1-based.
    pub line: usize,
}

/// A user of the machine, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Name(String),
    Uid(u32),
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Name(name) => f.write_str(name),
            UserRef::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

/// Upper bound of a user name's length (Linux's `useradd` takes 32).
pub const USER_NAME_MAX_CHARS: usize = 32;

impl Default for JobsConf {
    fn default() -> Self {
        JobsConf {
            keep_ms: 7 * 24 * 3600 * 1000,
            keep_count: 1_000_000,
            script_memory_mb: 1024,
            script_cpu_s: 3600,
            script_files_max: 64,
            run_as: None,
        }
    }
}

/// Bounds of the script workers' limits: 64 MiB to 64 GiB of address space,
/// a second to a day of CPU time, 16 to 4,096 open files.
const SCRIPT_MEMORY_MB_RANGE: std::ops::RangeInclusive<u64> = 64..=65_536;
const SCRIPT_CPU_S_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;
const SCRIPT_FILES_RANGE: std::ops::RangeInclusive<u64> = 16..=4096;

/// `[alerts]`: when `claro status` and the dashboard raise an alert. The
/// defaults are those of packaging/claro-alerts.yml's Prometheus rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConf {
    /// A hotfolder file waiting this long for a server is stalled.
    pub hotfolder_stalled_s: u64,
    /// Of the jobs that ended in the last 15 minutes, this share failed.
    pub jobs_failing_percent: u64,
    /// A data directory's file system with less free than this.
    pub disk_free_percent_min: u64,
    /// A replica this many entries behind the commit index.
    pub replica_behind_entries: u64,
}

impl Default for AlertsConf {
    fn default() -> Self {
        AlertsConf {
            hotfolder_stalled_s: 900,
            jobs_failing_percent: 25,
            disk_free_percent_min: 10,
            replica_behind_entries: 1000,
        }
    }
}

const STALLED_S_RANGE: std::ops::RangeInclusive<u64> = 1..=604_800;
const PERCENT_RANGE: std::ops::RangeInclusive<u64> = 1..=99;
const BEHIND_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000_000;

/// Bounds of `[jobs]`: a minute to a year; one to a hundred million jobs.
const JOBS_KEEP_MS_RANGE: std::ops::RangeInclusive<u64> = 60_000..=365 * 24 * 3600 * 1000;
const JOBS_KEEP_COUNT_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000_000;

/// A bad config: the file, where in it (when the culprit is in the file), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// Dotted key, e.g. `server.address`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// Raw form: what serde reads. Every field is optional and spanned so that the
// validation below, not serde, decides the message and can point at the line.
// Numbers are i64 so that "-1" gets a range message rather than a type error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    http_port: Option<Spanned<i64>>,
    http_login: Option<bool>,
    https: Option<bool>,
    http_hosts: Option<Spanned<Vec<String>>>,
    shared_root: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    tls_dir: Option<Spanned<String>>,
    timing: Option<Spanned<RawTiming>>,
    jobs: Option<Spanned<RawJobs>>,
    alerts: Option<Spanned<RawAlerts>>,
    #[serde(default)]
    server: Vec<Spanned<RawServer>>,
    #[serde(default)]
    hotfolder: std::collections::BTreeMap<String, Spanned<RawHotfolder>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHotfolder {
    command: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
    include: Option<Vec<String>>,
    ignore: Option<Vec<String>>,
    stable_ms: Option<Spanned<i64>>,
    priority: Option<Spanned<i64>>,
    max_attempts: Option<Spanned<i64>>,
    retries: Option<Spanned<i64>>,
    timeout_s: Option<Spanned<i64>>,
    on_success: Option<Spanned<String>>,
    allow_shell: Option<bool>,
    trigger: Option<Spanned<String>>,
    folders: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    keep_ms: Option<Spanned<i64>>,
    keep_count: Option<Spanned<i64>>,
    script_memory_mb: Option<Spanned<i64>>,
    script_cpu_s: Option<Spanned<i64>>,
    script_files_max: Option<Spanned<i64>>,
    run_as: Option<Spanned<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    hotfolder_stalled_s: Option<Spanned<i64>>,
    jobs_failing_percent: Option<Spanned<i64>>,
    disk_free_percent_min: Option<Spanned<i64>>,
    replica_behind_entries: Option<Spanned<i64>>,
}

/// `run_as = "name"`, `run_as = "1001"` or `run_as = 1001`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawUser {
    Uid(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    tick_ms: Option<Spanned<i64>>,
    heartbeat_ms: Option<Spanned<i64>>,
    election_ms: Option<Spanned<i64>>,
    node_timeout_ms: Option<Spanned<i64>>,
    discovery_ms: Option<Spanned<i64>>,
    checkpoint_ms: Option<Spanned<i64>>,
    drain_ms: Option<Spanned<i64>>,
    hotfolder_poll_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    slots: Option<Spanned<i64>>,
    role: Option<Spanned<String>>,
    vote: Option<Spanned<bool>>,
}

/// The text being parsed and its file name: everything needed to build errors.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn err(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: span.map(|s| line_of(self.text, s.start)),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    fn at<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.err(Some(value.span()), Some(key), message)
    }

    fn required<'v, T>(
        &self,
        value: &'v Option<Spanned<T>>,
        key: &str,
    ) -> Result<&'v Spanned<T>, ConfigError> {
        value
            .as_ref()
            .ok_or_else(|| self.err(None, Some(key), "missing (required)"))
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Reads and parses the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_path_buf(),
            line: None,
            key: None,
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let mut text = String::new();
        // Read one byte past the limit to tell "exactly at the limit" from "over".
        file.take(CONFIG_MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if text.len() as u64 > CONFIG_MAX_BYTES {
            return Err(fail(format!("larger than {CONFIG_MAX_BYTES} bytes")));
        }
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` names the file in errors and is the
    /// base of relative paths (its folder; "." when it has none).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source { text, path };
        let raw = deserialize(&src)?;
        let folder = config_folder(path);
        let cluster = cluster_name(&src, &raw.cluster)?;
        let port = cluster_port(&src, &raw.port)?;
        let http_port = http_port(&src, &raw.http_port)?;
        let http_hosts = http_hosts(&src, &raw.http_hosts)?;
        let shared_root = shared_root(&src, &folder, &raw.shared_root)?;
        let data_dir = resolve(
            &src,
            &folder,
            src.required(&raw.data_dir, "data_dir")?,
            "data_dir",
        )?;
        let tls_dir = match &raw.tls_dir {
            Some(v) => resolve(&src, &folder, v, "tls_dir")?,
            None => folder.join(TLS_DIR_DEFAULT),
        };
        let timing = timing(&src, raw.timing.as_ref())?;
        let jobs = jobs_conf(&src, raw.jobs.as_ref())?;
        let alerts = alerts_conf(&src, raw.alerts.as_ref())?;
        let servers = servers(&src, &raw.server, port)?;
        let hotfolders = raw
            .hotfolder
            .iter()
            .map(|(name, h)| hotfolder_conf(&src, &folder, name, h))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            path: path.to_path_buf(),
            cluster,
            port,
            http_port,
            http_login: raw.http_login.unwrap_or(false),
            https: raw.https,
            http_hosts,
            shared_root,
            data_dir,
            tls_dir,
            timing,
            jobs,
            alerts,
            servers,
            hotfolders,
        })
    }

    /// The `[[server]]` named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerConf> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The `[[server]]` that `arg` (a client's `--server`) means: a server
    /// name; else an address (`IP`, `IP:PORT`, `NAME`, `NAME:PORT`, without
    /// a port the cluster port) that is a server's configured address or
    /// resolves to a server's resolved address. The error names `arg`.
    pub fn server_by_arg(&self, arg: &str) -> Result<&ServerConf, String> {
        if let Some(s) = self.server(arg) {
            return Ok(s);
        }
        // A mistyped name is the likely case: say which names there are.
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        let known = format!(
            "the servers of {}: {}",
            self.path.display(),
            names.join(", ")
        );
        let (host, port) = Host::parse(arg, self.port).map_err(|e| {
            format!("`{arg}` is neither a server name nor an address ({known}): {e}")
        })?;
        if let Some(s) = self
            .servers
            .iter()
            .find(|s| s.host == host && s.port == port)
        {
            return Ok(s);
        }
        let found = host
            .lookup(port)
            .map_err(|e| format!("`{arg}` is no server name ({known}) and no address: {e}"))?;
        self.servers
            .iter()
            .find(|s| found.contains(&s.address))
            .ok_or_else(|| {
                let found: Vec<String> = found.iter().map(SocketAddr::to_string).collect();
                format!("`{arg}` ({}) is no server; {known}", found.join(", "))
            })
    }

    /// This instance's `[[server]]`: the one named, or else the only one whose
    /// address (resolved, for a host name) is an address of this machine.
    pub fn local_server(&self, name: Option<&str>) -> Result<&ServerConf, ConfigError> {
        match name {
            Some(name) => self.server(name).ok_or_else(|| {
                let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
                self.error(
                    "server",
                    format!("no server named `{name}`; configured: {}", names.join(", ")),
                )
            }),
            None => self.pick_local(is_local_ip),
        }
    }

    /// [`Config::local_server`] without a name, with the "is this IP mine"
    /// test passed in so that tests need not depend on the machine.
    fn pick_local(&self, is_local: impl Fn(IpAddr) -> bool) -> Result<&ServerConf, ConfigError> {
        let local: Vec<&ServerConf> = self
            .servers
            .iter()
            .filter(|s| is_local(s.address.ip()))
            .collect();
        match local.as_slice() {
            [one] => Ok(one),
            [] => {
                let all: Vec<String> = self
                    .servers
                    .iter()
                    .map(|s| match &s.host {
                        Host::Ip(ip) => format!("{} {ip}", s.name),
                        Host::Name(name) => format!("{} {name} ({})", s.name, s.address.ip()),
                    })
                    .collect();
                let message = format!(
                    "no server in the config matches this machine's addresses ({}); pass --name",
                    all.join(", ")
                );
                Err(self.error("server", message))
            }
            several => {
                let names: Vec<&str> = several.iter().map(|s| s.name.as_str()).collect();
                let message = format!(
                    "several servers in the config have an address of this machine ({}); pass --name to pick one",
                    names.join(", ")
                );
                Err(self.error("server", message))
            }
        }
    }

    fn error(&self, key: &str, message: String) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            line: None,
            key: Some(key.to_owned()),
            message,
        }
    }

    /// The part of the config all members must agree on, one item per line so
    /// that two of them can be diffed to name the difference. Servers are
    /// sorted by name so the order of `[[server]]` tables does not matter.
    pub fn membership_text(&self) -> String {
        let mut servers: Vec<&ServerConf> = self.servers.iter().collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut text = format!("cluster {}\nport {}\n", self.cluster, self.port);
        for s in servers {
            text.push_str(&format!(
                "server {} address={} role={}{}\n",
                s.name,
                s.configured_address(),
                s.role,
                // Only when set: the texts (and hashes) of configs without
                // it are those of the versions before it.
                if s.vote { "" } else { " vote=false" }
            ));
        }
        text
    }

    /// Lowercase hex SHA-256 of [`Config::membership_text`].
    pub fn membership_hash(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.membership_text().as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The data directory of server `name`.
    pub fn server_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// True when a socket can be bound to `ip`, i.e. `ip` is an address of this machine.
fn is_local_ip(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The folder relative paths are resolved against.
fn config_folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

// ---------------------------------------------------------------------------
// Step 1: TOML to raw structs, with the line and key of any error.

fn deserialize(src: &Source<'_>) -> Result<RawConfig, ConfigError> {
    let table = DeTable::parse(src.text).map_err(|e| {
        let offset = e.span().map_or(src.text.len(), |s| s.start);
        let key = key_on_line(src.text, offset);
        src.err(
            Some(offset..offset),
            key.as_deref(),
            format!("TOML syntax: {}", e.message()),
        )
    })?;
    RawConfig::deserialize(toml::de::Deserializer::from(table.clone())).map_err(|e| {
        let key = e
            .span()
            .and_then(|s| key_path(table.get_ref(), s.start))
            .map(|k| k.join("."));
        // The raw integers are i64 only to give range errors; say what the user wrote.
        let message = e.message().replace("expected i64", "expected an integer");
        src.err(e.span(), key.as_deref(), message)
    })
}

/// The dotted key whose name or value covers byte `pos`, deepest first.
/// Elements of arrays of tables share their array's name (`server.address`).
fn key_path(table: &DeTable<'_>, pos: usize) -> Option<Vec<String>> {
    let covers = |s: Range<usize>| s.contains(&pos) || s.start == pos;
    for (key, value) in table.iter() {
        let inner = match value.get_ref() {
            DeValue::Table(t) => key_path(t, pos),
            DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
                DeValue::Table(t) => key_path(t, pos),
                _ => None,
            }),
            _ => None,
        };
        if let Some(mut inner) = inner {
            inner.insert(0, key.get_ref().to_string());
            return Some(inner);
        }
        if covers(key.span()) || covers(value.span()) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

/// For syntax errors, which leave no table to search: the key assigned on the
/// line of `offset` (a `key = ...` line), prefixed by the table header above it.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if key.is_empty() || !key.chars().all(bare) {
        return None;
    }
    let header = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    match header.and_then(header_name) {
        Some(table) => Some(format!("{table}.{key}")),
        None => Some(key.to_owned()),
    }
}

/// `timing` from `[timing]`, `server` from `[[server]] # comment`.
fn header_name(line: &str) -> Option<&str> {
    let name = line.trim_start_matches('[');
    let name = &name[..name.find(']')?];
    Some(name.trim())
}

// ---------------------------------------------------------------------------
// Step 2: validation of the top-level values.

fn cluster_name(src: &Source<'_>, raw: &Option<Spanned<String>>) -> Result<String, ConfigError> {
    let value = src.required(raw, "cluster")?;
    let name = value.get_ref();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    let chars = name.chars().count();
    if chars == 0 || chars > CLUSTER_NAME_MAX_CHARS || !name.chars().all(allowed) {
        let message = format!(
            "bad cluster name {name:?}: 1 to {CLUSTER_NAME_MAX_CHARS} characters among A-Z a-z 0-9 . _ -"
        );
        return Err(src.at(value, "cluster", message));
    }
    Ok(name.clone())
}

fn cluster_port(src: &Source<'_>, raw: &Option<Spanned<i64>>) -> Result<u16, ConfigError> {
    let Some(value) = raw else {
        return Ok(PORT_DEFAULT);
    };
    match u16::try_from(*value.get_ref()) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(src.at(
            value,
            "port",
            format!("port {} out of range 1..=65535", value.get_ref()),
        )),
    }
}

/// The HTTP port when the config does not say.
pub const HTTP_PORT_DEFAULT: u16 = 7901;

fn http_port(src: &Source<'_>, raw: &Option<Spanned<i64>>) -> Result<u16, ConfigError> {
    let Some(value) = raw else {
        return Ok(HTTP_PORT_DEFAULT);
    };
    u16::try_from(*value.get_ref()).map_err(|_| {
        let message = format!(
            "http_port {} out of range 0..=65535 (0: no HTTP)",
            value.get_ref()
        );
        src.at(value, "http_port", message)
    })
}

/// Names in `http_hosts`, at most.
pub const HTTP_HOSTS_MAX: usize = 32;

/// `http_hosts`: host names (letters, digits, '-', '.', 1..=253 bytes) or IP
/// addresses, lowercased; no ports (the HTTP port is `http_port`).
fn http_hosts(
    src: &Source<'_>,
    raw: &Option<Spanned<Vec<String>>>,
) -> Result<Vec<String>, ConfigError> {
    let Some(value) = raw else {
        return Ok(Vec::new());
    };
    if value.get_ref().len() > HTTP_HOSTS_MAX {
        let message = format!("at most {HTTP_HOSTS_MAX} names");
        return Err(src.at(value, "http_hosts", message));
    }
    let mut names = Vec::new();
    for name in value.get_ref() {
        let is_ip = name.parse::<IpAddr>().is_ok();
        let is_name = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !is_ip && !is_name {
            let message =
                format!("{name:?} is not a host name or an IP address (no port, no scheme)");
            return Err(src.at(value, "http_hosts", message));
        }
        names.push(name.to_ascii_lowercase());
    }
    Ok(names)
}

/// `value` resolved against the config's folder (absolute paths stay as they are).
fn resolve(
    src: &Source<'_>,
    folder: &Path,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    if value.get_ref().is_empty() {
        return Err(src.at(value, key, "empty path"));
    }
    Ok(folder.join(value.get_ref()))
}

fn shared_root(
    src: &Source<'_>,
    folder: &Path,
    raw: &Option<Spanned<String>>,
) -> Result<PathBuf, ConfigError> {
    let value = src.required(raw, "shared_root")?;
    let path = resolve(src, folder, value, "shared_root")?;
    // Checked here rather than at first use: a server started on an unmounted
    // share would otherwise run, see empty hotfolders, and look healthy.
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(src.at(
            value,
            "shared_root",
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(src.at(
            value,
            "shared_root",
            format!("shared root {} is not usable: {e}", path.display()),
        )),
    }
}

// ---------------------------------------------------------------------------
// [timing]

fn timing(src: &Source<'_>, raw: Option<&Spanned<RawTiming>>) -> Result<Timing, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Timing::default());
    };
    let raw = raw.get_ref();
    let d = Timing::default();
    let value = |key: &str, default: u64| timing_value(src, raw.field(key), key, default);
    let t = Timing {
        tick_ms: value("tick_ms", d.tick_ms)?,
        heartbeat_ms: value("heartbeat_ms", d.heartbeat_ms)?,
        election_ms: value("election_ms", d.election_ms)?,
        node_timeout_ms: value("node_timeout_ms", d.node_timeout_ms)?,
        discovery_ms: value("discovery_ms", d.discovery_ms)?,
        checkpoint_ms: value("checkpoint_ms", d.checkpoint_ms)?,
        drain_ms: value("drain_ms", d.drain_ms)?,
        hotfolder_poll_ms: value("hotfolder_poll_ms", d.hotfolder_poll_ms)?,
    };
    match timing_conflict(&t) {
        None => Ok(t),
        Some((subject, other, message)) => {
            // Point at the key the rule is about if it is written, else at the
            // other one (one of them is: the defaults are consistent).
            let key = if raw.field(subject).is_some() {
                subject
            } else {
                other
            };
            let span = raw.field(key).as_ref().map(Spanned::span);
            Err(src.err(span, Some(&format!("timing.{key}")), message))
        }
    }
}

impl RawTiming {
    fn field(&self, key: &str) -> &Option<Spanned<i64>> {
        match key {
            "tick_ms" => &self.tick_ms,
            "heartbeat_ms" => &self.heartbeat_ms,
            "election_ms" => &self.election_ms,
            "node_timeout_ms" => &self.node_timeout_ms,
            "discovery_ms" => &self.discovery_ms,
            "checkpoint_ms" => &self.checkpoint_ms,
            "drain_ms" => &self.drain_ms,
            "hotfolder_poll_ms" => &self.hotfolder_poll_ms,
            _ => unreachable!("no timing key {key}"),
        }
    }
}

/// The first rule between timing values that `t` breaks, as (the key the
/// rule is about, the key it is compared with, message).
fn timing_conflict(t: &Timing) -> Option<(&'static str, &'static str, String)> {
    // The driver acts only on ticks, so a heartbeat shorter than a tick cannot be kept.
    if t.tick_ms > t.heartbeat_ms {
        let message = format!(
            "tick_ms ({}) must not exceed heartbeat_ms ({})",
            t.tick_ms, t.heartbeat_ms
        );
        return Some(("tick_ms", "heartbeat_ms", message));
    }
    // Followers must miss at least two heartbeats before they call an
    // election, or one delayed packet changes the coordinator.
    if t.election_ms < 2 * t.heartbeat_ms {
        let message = format!(
            "election_ms ({}) must be at least twice heartbeat_ms ({})",
            t.election_ms, t.heartbeat_ms
        );
        return Some(("election_ms", "heartbeat_ms", message));
    }
    // A node timeout within one heartbeat would declare healthy peers down.
    if t.node_timeout_ms <= t.heartbeat_ms {
        let message = format!(
            "node_timeout_ms ({}) must exceed heartbeat_ms ({})",
            t.node_timeout_ms, t.heartbeat_ms
        );
        return Some(("node_timeout_ms", "heartbeat_ms", message));
    }
    None
}

/// One `[hotfolder.NAME]`: `command` (a template) or `script` (a file,
/// relative to the config's folder), and the options of `claro hotfolder add`.
fn hotfolder_conf(
    src: &Source<'_>,
    folder: &Path,
    name: &str,
    raw: &Spanned<RawHotfolder>,
) -> Result<crate::work::hotfolder::Hotfolder, ConfigError> {
    use crate::work::hotfolder::{split_template, Action, Hotfolder, OnSuccess, Trigger};
    let key = format!("hotfolder.{name}");
    let r = raw.get_ref();
    let whole = |message: String| src.err(Some(raw.span()), Some(&key), message);
    let action = match (&r.command, &r.script) {
        (Some(c), None) => Action::Command {
            argv: split_template(c.get_ref())
                .map_err(|m| src.at(c, &format!("{key}.command"), m))?,
        },
        (None, Some(file)) => {
            let path = resolve(src, folder, file, &format!("{key}.script"))?;
            let code = std::fs::read_to_string(&path).map_err(|e| {
                src.at(
                    file,
                    &format!("{key}.script"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Action::Script { code }
        }
        _ => return Err(whole("give exactly one of `command` or `script`".into())),
    };
    let mut h = Hotfolder::new(name, action);
    let number =
        |v: &Option<Spanned<i64>>, field: &str, default: i64| -> Result<i64, ConfigError> {
            Ok(v.as_ref().map_or(default, |v| *v.get_ref())).and_then(|n| {
                if field != "priority" && n < 0 {
                    Err(src.at(
                        v.as_ref().expect("given"),
                        &format!("{key}.{field}"),
                        format!("{n} is negative"),
                    ))
                } else {
                    Ok(n)
                }
            })
        };
    h.include = r.include.clone().unwrap_or_default();
    if let Some(ignore) = &r.ignore {
        h.ignore = ignore.clone();
    }
    h.stable_ms = number(&r.stable_ms, "stable_ms", h.stable_ms as i64)? as u64;
    h.priority = number(&r.priority, "priority", 0)?.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    h.max_attempts =
        number(&r.max_attempts, "max_attempts", h.max_attempts as i64)?.min(u32::MAX as i64) as u32;
    if let Some(retries) = &r.retries {
        if r.max_attempts.is_some() {
            return Err(src.at(
                retries,
                &format!("{key}.retries"),
                "give `retries` or `max_attempts`, not both",
            ));
        }
        let n = number(&r.retries, "retries", 0)?.min(u32::MAX as i64 - 1) as u32;
        h.max_attempts = n + 1;
    }
    h.timeout_ms = (number(&r.timeout_s, "timeout_s", (h.timeout_ms / 1000) as i64)? as u64)
        .saturating_mul(1000);
    if let Some(o) = &r.on_success {
        h.on_success = OnSuccess::parse(o.get_ref()).ok_or_else(|| {
            src.at(
                o,
                &format!("{key}.on_success"),
                "must be \"move\" or \"delete\"",
            )
        })?;
    }
    h.allow_shell = r.allow_shell.unwrap_or(false);
    if let Some(t) = &r.trigger {
        h.trigger = Trigger::parse(t.get_ref()).ok_or_else(|| {
            src.at(
                t,
                &format!("{key}.trigger"),
                "must be \"stable\", \"ticket\" or \"marker\"",
            )
        })?;
    }
    h.folders = r.folders.unwrap_or(false);
    h.validate().map_err(whole)?;
    Ok(h)
}

/// An optional whole number of a table, in `range`, else `default`; out of
/// range is an error naming `key` (`jobs.keep_ms`) and its line.
fn ranged(
    src: &Source<'_>,
    v: &Option<Spanned<i64>>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match u64::try_from(*v.get_ref()) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => {
            let (lo, hi) = (range.start(), range.end());
            Err(src.at(v, key, format!("{} out of range {lo}..={hi}", v.get_ref())))
        }
    }
}

fn alerts_conf(
    src: &Source<'_>,
    raw: Option<&Spanned<RawAlerts>>,
) -> Result<AlertsConf, ConfigError> {
    let d = AlertsConf::default();
    let Some(raw) = raw else { return Ok(d) };
    let raw = raw.get_ref();
    let value = |v: &Option<Spanned<i64>>, key: &str, range, default| {
        ranged(src, v, &format!("alerts.{key}"), range, default)
    };
    Ok(AlertsConf {
        hotfolder_stalled_s: value(
            &raw.hotfolder_stalled_s,
            "hotfolder_stalled_s",
            STALLED_S_RANGE,
            d.hotfolder_stalled_s,
        )?,
        jobs_failing_percent: value(
            &raw.jobs_failing_percent,
            "jobs_failing_percent",
            PERCENT_RANGE,
            d.jobs_failing_percent,
        )?,
        disk_free_percent_min: value(
            &raw.disk_free_percent_min,
            "disk_free_percent_min",
            PERCENT_RANGE,
            d.disk_free_percent_min,
        )?,
        replica_behind_entries: value(
            &raw.replica_behind_entries,
            "replica_behind_entries",
            BEHIND_RANGE,
            d.replica_behind_entries,
        )?,
    })
}

fn jobs_conf(src: &Source<'_>, raw: Option<&Spanned<RawJobs>>) -> Result<JobsConf, ConfigError> {
    let d = JobsConf::default();
    let Some(raw) = raw else { return Ok(d) };
    let raw = raw.get_ref();
    let value = |v: &Option<Spanned<i64>>, key: &str, range, default| {
        ranged(src, v, &format!("jobs.{key}"), range, default)
    };
    Ok(JobsConf {
        keep_ms: value(&raw.keep_ms, "keep_ms", JOBS_KEEP_MS_RANGE, d.keep_ms)?,
        keep_count: value(
            &raw.keep_count,
            "keep_count",
            JOBS_KEEP_COUNT_RANGE,
            d.keep_count,
        )?,
        script_memory_mb: value(
            &raw.script_memory_mb,
            "script_memory_mb",
            SCRIPT_MEMORY_MB_RANGE,
            d.script_memory_mb,
        )?,
        script_cpu_s: value(
            &raw.script_cpu_s,
            "script_cpu_s",
            SCRIPT_CPU_S_RANGE,
            d.script_cpu_s,
        )?,
        script_files_max: value(
            &raw.script_files_max,
            "script_files_max",
            SCRIPT_FILES_RANGE,
            d.script_files_max,
        )?,
        run_as: raw.run_as.as_ref().map(|v| run_as(src, v)).transpose()?,
    })
}

/// `[jobs] run_as`: a user name (the portable characters, not starting
/// with `-`) or a uid. Whether the user exists is for `serve` to say.
fn run_as(src: &Source<'_>, value: &Spanned<RawUser>) -> Result<RunAs, ConfigError> {
    let line = line_of(src.text, value.span().start);
    let bad = |message: String| src.at(value, "jobs.run_as", message);
    let user = match value.get_ref() {
        RawUser::Uid(n) => {
            UserRef::Uid(uid(*n).ok_or_else(|| bad(format!("uid {n} out of range")))?)
        }
        RawUser::Name(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            let n = text.parse::<i64>().unwrap_or(i64::MAX);
            UserRef::Uid(uid(n).ok_or_else(|| bad(format!("uid {text} out of range")))?)
        }
        RawUser::Name(name) => {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            let chars = name.chars().count();
            if chars == 0
                || chars > USER_NAME_MAX_CHARS
                || name.starts_with('-')
                || !name.chars().all(allowed)
            {
                return Err(bad(format!(
                    "bad user {name:?}: a user name (1 to {USER_NAME_MAX_CHARS} characters among A-Z a-z 0-9 . _ -, not starting with -) or a uid"
                )));
            }
            UserRef::Name(name.clone())
        }
    };
    Ok(RunAs { user, line })
}

/// A uid: 0 up to the largest one, `(uid_t)-1` meaning "no change" to the
/// system calls that take it.
fn uid(n: i64) -> Option<u32> {
    u32::try_from(n).ok().filter(|&u| u != u32::MAX)
}

fn timing_value(
    src: &Source<'_>,
    raw: &Option<Spanned<i64>>,
    key: &str,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(value) = raw else { return Ok(default) };
    match u64::try_from(*value.get_ref()) {
        Ok(ms) if (1..=TIMING_MAX_MS).contains(&ms) => Ok(ms),
        _ => {
            let message = format!("{} out of range 1..={TIMING_MAX_MS}", value.get_ref());
            Err(src.at(value, &format!("timing.{key}"), message))
        }
    }
}

// ---------------------------------------------------------------------------
// [[server]]

/// A valid `[[server]]` with where its name and address are written, for the
/// checks across servers. Its host is not resolved yet.
struct ParsedServer {
    name: String,
    host: Host,
    port: u16,
    slots: u32,
    role: Role,
    vote: bool,
    name_span: Range<usize>,
    address_span: Range<usize>,
}

impl ParsedServer {
    fn into_conf(self, address: SocketAddr) -> ServerConf {
        ServerConf {
            name: self.name,
            host: self.host,
            port: self.port,
            address,
            slots: self.slots,
            role: self.role,
            vote: self.vote,
        }
    }
}

fn servers(
    src: &Source<'_>,
    raw: &[Spanned<RawServer>],
    port: u16,
) -> Result<Vec<ServerConf>, ConfigError> {
    if raw.is_empty() {
        return Err(src.err(
            None,
            Some("server"),
            "no [[server]] table: at least one is required",
        ));
    }
    if raw.len() > SERVERS_MAX {
        let message = format!(
            "{} [[server]] tables, at most {SERVERS_MAX} allowed",
            raw.len()
        );
        return Err(src.err(Some(raw[SERVERS_MAX].span()), Some("server"), message));
    }
    let parsed = raw
        .iter()
        .map(|entry| server(src, entry, port))
        .collect::<Result<Vec<_>, _>>()?;
    // Everything that needs no resolver is checked before any lookup.
    check_names(src, &parsed)?;
    if parsed.iter().all(|p| p.role == Role::Witness) {
        // Witnesses never coordinate, so such a cluster could never elect one.
        let first = &raw[0];
        let span = first
            .get_ref()
            .role
            .as_ref()
            .map_or(first.span(), Spanned::span);
        let message = "every server is a witness: at least one needs role \"server\"";
        return Err(src.err(Some(span), Some("server.role"), message));
    }
    if !parsed.iter().any(|p| p.role == Role::Server && p.vote) {
        // Only such a server starts a cluster and coordinates.
        let span = raw[0].span();
        let message = "no server may vote: at least one with role \"server\" needs vote = true";
        return Err(src.err(Some(span), Some("server.vote"), message));
    }
    let hosts: Vec<(&Host, u16)> = parsed.iter().map(|p| (&p.host, p.port)).collect();
    let lookups = lookup_all(&hosts);
    let mut resolved = Vec::with_capacity(parsed.len());
    for (p, found) in parsed.into_iter().zip(lookups) {
        let address = found
            .and_then(|all| prefer_ipv4(&p.host.to_string(), &all))
            .map_err(|m| src.err(Some(p.address_span.clone()), Some("server.address"), m))?;
        resolved.push((p, address));
    }
    check_addresses(src, &resolved)?;
    Ok(resolved
        .into_iter()
        .map(|(p, address)| p.into_conf(address))
        .collect())
}

/// Names must be unique (the error points at the second of a pair), and a
/// host name must not be another server's name or the client's: it goes
/// into this server's certificate, which would then pass for theirs.
fn check_names(src: &Source<'_>, parsed: &[ParsedServer]) -> Result<(), ConfigError> {
    let mut names: HashMap<&str, &ParsedServer> = HashMap::new();
    for p in parsed {
        if let Some(first) = names.insert(&p.name, p) {
            let line = line_of(src.text, first.name_span.start);
            let message = format!("duplicate server name `{}` (first at line {line})", p.name);
            return Err(src.err(Some(p.name_span.clone()), Some("server.name"), message));
        }
    }
    for p in parsed {
        let Host::Name(host) = &p.host else { continue };
        let whose = if host == RESERVED_SERVER_NAME {
            "the command-line client's certificate".to_string()
        } else if host != &p.name && names.contains_key(host.as_str()) {
            format!("server `{host}`")
        } else {
            continue;
        };
        let message = format!(
            "host name `{host}` is the name of {whose}: server `{}`'s certificate names its host, so it would pass for {whose}; write the host's qualified name or its IP",
            p.name
        );
        return Err(src.err(
            Some(p.address_span.clone()),
            Some("server.address"),
            message,
        ));
    }
    Ok(())
}

/// Resolved addresses must be unique: two servers at one address could not
/// both listen there. The error points at the second of a pair.
fn check_addresses(
    src: &Source<'_>,
    resolved: &[(ParsedServer, SocketAddr)],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<SocketAddr, &ParsedServer> = HashMap::new();
    for (p, address) in resolved {
        let Some(first) = seen.insert(*address, p) else {
            continue;
        };
        let (mine, theirs) = (
            configured(&p.host, p.port),
            configured(&first.host, first.port),
        );
        let message = if mine == theirs {
            format!(
                "duplicate server address {mine} (also server `{}`)",
                first.name
            )
        } else {
            format!(
                "{mine} resolves to {address}, the address of server `{}` ({theirs})",
                first.name
            )
        };
        return Err(src.err(
            Some(p.address_span.clone()),
            Some("server.address"),
            message,
        ));
    }
    Ok(())
}

fn server(
    src: &Source<'_>,
    entry: &Spanned<RawServer>,
    port: u16,
) -> Result<ParsedServer, ConfigError> {
    let r = entry.get_ref();
    // A missing key is not in the file: point at the [[server]] table instead.
    let missing = |key: &str| src.err(Some(entry.span()), Some(key), "missing (required)");
    let name = r.name.as_ref().ok_or_else(|| missing("server.name"))?;
    check_server_name(name.get_ref()).map_err(|m| src.at(name, "server.name", m))?;
    let address = r
        .address
        .as_ref()
        .ok_or_else(|| missing("server.address"))?;
    let (host, port) =
        parse_address(address.get_ref(), port).map_err(|m| src.at(address, "server.address", m))?;
    let slots = match &r.slots {
        None => SLOTS_DEFAULT,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=SLOTS_MAX).contains(&n) => n,
            _ => {
                return Err(src.at(
                    v,
                    "server.slots",
                    format!("{} out of range 1..={SLOTS_MAX}", v.get_ref()),
                ))
            }
        },
    };
    let role = match &r.role {
        None => Role::Server,
        Some(v) => match v.get_ref().as_str() {
            "server" => Role::Server,
            "witness" => Role::Witness,
            other => {
                return Err(src.at(
                    v,
                    "server.role",
                    format!("unknown role {other:?}: \"server\" or \"witness\""),
                ));
            }
        },
    };
    // A witness is there to vote: one that may not is a mistake.
    let vote = match &r.vote {
        Some(v) if !*v.get_ref() && role == Role::Witness => {
            return Err(src.at(
                v,
                "server.vote",
                "a witness is there to vote: remove vote = false or make it role = \"server\""
                    .to_string(),
            ));
        }
        Some(v) => *v.get_ref(),
        None => true,
    };
    Ok(ParsedServer {
        name: name.get_ref().clone(),
        host,
        port,
        slots,
        role,
        vote,
        name_span: name.span(),
        address_span: address.span(),
    })
}

/// Server names become DNS names in TLS certificates (RFC 1123 labels), so
/// they are held to that: lowercase letters, digits, inner hyphens.
fn check_server_name(name: &str) -> Result<(), String> {
    let rule = format!(
        "1 to {SERVER_NAME_MAX_CHARS} characters among a-z 0-9 -, starting with a letter, not ending with -"
    );
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts = name.starts_with(|c: char| c.is_ascii_lowercase());
    if name.len() > SERVER_NAME_MAX_CHARS || !ok_chars || !starts || name.ends_with('-') {
        return Err(format!("bad server name {name:?}: {rule}"));
    }
    if name == RESERVED_SERVER_NAME {
        return Err(format!(
            "server name {name:?} is reserved for the command-line client's certificate"
        ));
    }
    Ok(())
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT`, `NAME` or `NAME:PORT` (without a port,
/// the cluster port). A name is only checked for form here; it is looked up
/// with the others in [`lookup_all`].
fn parse_address(text: &str, port: u16) -> Result<(Host, u16), String> {
    let (host, port) = match (text.parse::<IpAddr>(), text.parse::<SocketAddr>()) {
        (Ok(ip), _) => (Host::Ip(ip), port),
        (_, Ok(address)) => (Host::Ip(address.ip()), address.port()),
        _ => parse_name(text, port)?,
    };
    if port == 0 {
        return Err(format!("port 0 in {text:?}: the port must be 1..=65535"));
    }
    if let Host::Ip(ip) = host {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!(
                "{text:?} is not an address other servers can reach"
            ));
        }
    }
    Ok((host, port))
}

const ADDRESS_FORMS: &str = "write IP, IP:PORT, [IPv6]:PORT, NAME or NAME:PORT";

/// `NAME` or `NAME:PORT`, for text that is no IP address.
fn parse_name(text: &str, port: u16) -> Result<(Host, u16), String> {
    // Several colons or a bracket can only be a mistyped IPv6 address.
    if text.contains('[') || text.matches(':').count() > 1 {
        return Err(format!("not an IP address: {text:?} ({ADDRESS_FORMS})"));
    }
    let (name, port) = match text.split_once(':') {
        None => (text, port),
        Some((name, digits)) => match digits.parse::<u16>() {
            Ok(p) => (name, p),
            Err(_) => {
                return Err(format!(
                    "bad port {digits:?} in {text:?}: the port must be 1..=65535"
                ))
            }
        },
    };
    check_host_name(name).map_err(|why| {
        format!("not an IP address or host name: {text:?}: {why} ({ADDRESS_FORMS})")
    })?;
    Ok((Host::Name(name.to_ascii_lowercase()), port))
}

/// A host name as DNS and certificates take it (RFC 1123): dot-separated
/// labels of letters, digits and inner hyphens.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > HOST_NAME_MAX_CHARS {
        return Err(format!("longer than {HOST_NAME_MAX_CHARS} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label (a leading, trailing or double dot)".into());
        }
        if label.len() > HOST_LABEL_MAX_CHARS {
            return Err(format!(
                "label {label:?} longer than {HOST_LABEL_MAX_CHARS} characters"
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "label {label:?} has characters other than A-Z a-z 0-9 -"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with -"));
        }
    }
    // RFC 3696 §2: a top-level label is never all digits, so "300.0.0.1"
    // is a mistyped IP address, not a name to send to the resolver.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.chars().all(|c| c.is_ascii_digit()) {
        return Err("its last label is all digits (a mistyped IP address?)".into());
    }
    Ok(())
}

/// `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`: the canonical configured address.
fn configured(host: &Host, port: u16) -> String {
    match host {
        Host::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
        Host::Name(name) => format!("{name}:{port}"),
    }
}

// ---------------------------------------------------------------------------
// Host name lookups. The system resolver (`ToSocketAddrs`, i.e. getaddrinfo)
// reads /etc/hosts and DNS as every other program on the machine does.

/// The address to use of all those a name resolves to: the first IPv4 one,
/// else the first IPv6 one (see [`ServerConf::address`]).
fn prefer_ipv4(name: &str, all: &[SocketAddr]) -> Result<SocketAddr, String> {
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| format!("host name {name:?} resolves to no address"))
}

/// A lookup started on its own thread, or its result when none was needed.
enum Lookup {
    Done(Result<Vec<SocketAddr>, String>),
    Waiting(String, mpsc::Receiver<Result<Vec<SocketAddr>, String>>),
}

/// Every address of each host (an IP is itself). Names are looked up all at
/// once, each on a thread of its own, and waited for until one deadline
/// [`RESOLVE_WAIT_MS`] from now: the slowest lookup bounds the wait, not
/// the sum of them, and a resolver that never answers costs that wait once.
fn lookup_all(hosts: &[(&Host, u16)]) -> Vec<Result<Vec<SocketAddr>, String>> {
    let deadline = Instant::now() + Duration::from_millis(RESOLVE_WAIT_MS);
    let started: Vec<Lookup> = hosts
        .iter()
        .map(|(host, port)| match host {
            Host::Ip(ip) => Lookup::Done(Ok(vec![SocketAddr::new(*ip, *port)])),
            Host::Name(name) => start_lookup(name, *port),
        })
        .collect();
    started
        .into_iter()
        .map(|lookup| match lookup {
            Lookup::Done(result) => result,
            Lookup::Waiting(name, rx) => rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| Err(too_slow(&name))),
        })
        .collect()
}

fn start_lookup(name: &str, port: u16) -> Lookup {
    // Room for the one result, so a thread outliving its wait never blocks.
    let (tx, rx) = mpsc::sync_channel(1);
    let owned = name.to_owned();
    let spawned = std::thread::Builder::new()
        .name("claro-resolve".into())
        .spawn(move || {
            let _ = tx.send(system_lookup(&owned, port));
        });
    match spawned {
        Ok(_) => Lookup::Waiting(name.to_owned(), rx),
        Err(e) => Lookup::Done(Err(format!("cannot look up {name:?}: {e}"))),
    }
}

/// The system resolver's answer, unbounded in time: callers bound it.
fn system_lookup(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    (name, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| format!("cannot resolve host name {name:?}: {e}"))
}

fn too_slow(name: &str) -> String {
    format!("host name {name:?} did not resolve within {RESOLVE_WAIT_MS} ms")
}

// ---------------------------------------------------------------------------

/// A commented config skeleton (for `claro init`). `servers` are
/// (name, address) pairs, written as given; the result parses with
/// [`Config::parse`] when the shared root exists and the pairs are valid.
pub fn render(
    cluster: &str,
    port: u16,
    shared_root: &str,
    data_dir: &str,
    servers: &[(String, String)],
) -> String {
    let d = Timing::default();
    let mut out = format!(
        "# claro cluster configuration. Copy this file (and tls/) unchanged to every
# server of the cluster. Relative paths are relative to this file's folder.

# Name of the cluster: A-Z a-z 0-9 . _ - (at most {CLUSTER_NAME_MAX_CHARS}).
cluster = {c}
# UDP port of every server whose address does not name one.
port = {port}
# Shared storage every server sees: hotfolders and temporary data. Must exist.
shared_root = {s}
# Local data of each server (its databases), in <data_dir>/<server name>/.
data_dir = {dd}
# The CA certificate and each server's (and the CLI's) certificate and key,
# written by `claro init` and `claro cert add|rotate`; the CA's key is not here.
# A server needs ca.crt and its own NAME.crt and NAME.key.
# tls_dir = \"{TLS_DIR_DEFAULT}\"

# HTTP API, dashboard and /metrics: TCP port (0: none). Off a loopback
# address it is HTTPS (the server's certificate), and every request needs
# a token (`claro token add`); `http_login = true` asks for one on loopback
# too. `https = false` serves plain HTTP off loopback (behind a TLS proxy).
# http_hosts: further names a browser may use in its Host header.
# http_port = {http_port}
# http_login = false
# https = true
# http_hosts = [\"claro.example.com\"]

# Timing, in milliseconds (the defaults are shown).
[timing]
tick_ms = {tick}
heartbeat_ms = {heartbeat}
election_ms = {election}
node_timeout_ms = {node_timeout}
discovery_ms = {discovery}
checkpoint_ms = {checkpoint}
drain_ms = {drain}
hotfolder_poll_ms = {hotfolder_poll}

# Finished jobs are kept this long (milliseconds) and at most this many.
[jobs]
keep_ms = {keep_ms}
keep_count = {keep_count}
# The user every process of a job runs as (commands, hotfolder actions,
# `run` children, script workers), when `claro serve` runs as root: a name
# or a uid. It must exist on every server and may write where jobs write
# (docs/SECURITY.md). Without it, jobs run as the service's own user.
# run_as = \"claro\"
# Limits of one script's worker process: address space (MiB), CPU seconds,
# open files.
# script_memory_mb = {script_memory_mb}
# script_cpu_s = {script_cpu_s}
# script_files_max = {script_files_max}

# When `claro status` and the dashboard raise an alert (the defaults are
# those of the Prometheus rules in packaging/claro-alerts.yml).
# [alerts]
# hotfolder_stalled_s = {stalled_s}
# jobs_failing_percent = {failing_percent}
# disk_free_percent_min = {disk_free}
# replica_behind_entries = {behind}

# A hotfolder: files dropped into <shared_root>/NAME/in/ become jobs; the
# outputs go to out/, the originals to done/ (or error/, with the reason).
# [hotfolder.prepress]
# command = \"gs -q -o {{output_dir}}/{{stem}}.pdf -sDEVICE=pdfwrite {{input}}\"
# # or: script = \"prepress.rhai\"
# stable_ms = 2000       # unchanged this long before it is taken
# retries = 0            # a failed file goes to error/ at once
# timeout_s = 3600
# trigger = \"stable\"     # or \"ticket\" (NAME.json/NAME.xml beside it), \"marker\" (NAME.ready)
# folders = false        # true: a folder dropped into in/ is one job

# One [[server]] per instance. name: a-z 0-9 - (a DNS name in its certificate);
# address: IP, IP:PORT, [IPv6]:PORT, or a DNS name (NAME or NAME:PORT, looked up
# at start and again on every reconnect); slots: parallel jobs (1..={SLOTS_MAX});
# role: \"server\" or \"witness\" (votes and holds the database, runs no jobs);
# vote: true (default) or false, which keeps a server out of the (at most 5)
# voters: a non-voting member (`vote = false` under its [[server]]).
",
        c = quote(cluster),
        s = quote(shared_root),
        dd = quote(data_dir),
        tick = d.tick_ms,
        heartbeat = d.heartbeat_ms,
        election = d.election_ms,
        node_timeout = d.node_timeout_ms,
        discovery = d.discovery_ms,
        checkpoint = d.checkpoint_ms,
        drain = d.drain_ms,
        hotfolder_poll = d.hotfolder_poll_ms,
        keep_ms = JobsConf::default().keep_ms,
        keep_count = JobsConf::default().keep_count,
        http_port = HTTP_PORT_DEFAULT,
        script_memory_mb = JobsConf::default().script_memory_mb,
        script_cpu_s = JobsConf::default().script_cpu_s,
        script_files_max = JobsConf::default().script_files_max,
        stalled_s = AlertsConf::default().hotfolder_stalled_s,
        failing_percent = AlertsConf::default().jobs_failing_percent,
        disk_free = AlertsConf::default().disk_free_percent_min,
        behind = AlertsConf::default().replica_behind_entries,
    );
    for (name, address) in servers {
        out.push_str(&format!(
            "\n[[server]]\nname = {}\naddress = {}\nslots = {SLOTS_DEFAULT}\nrole = \"server\"\n",
            quote(name),
            quote(address)
        ));
    }
    out
}

/// A TOML string literal of `s`, escaped by the toml crate itself.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A folder holding the config file and a `shared` directory, the
    /// minimal valid layout.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("shared")).unwrap();
            Fixture { dir }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("ClaroServers.conf")
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            Config::parse(text, &self.path())
        }

        fn ok(&self, text: &str) -> Config {
            self.parse(text)
                .unwrap_or_else(|e| panic!("expected a valid config, got: {e}\n{text}"))
        }

        /// Parses `text`, expects an error at `line` about `key`, whose message
        /// contains `fragment`, and returns it.
        fn bad(
            &self,
            text: &str,
            line: Option<usize>,
            key: Option<&str>,
            fragment: &str,
        ) -> ConfigError {
            let e = match self.parse(text) {
                Ok(_) => panic!("expected an error for:\n{text}"),
                Err(e) => e,
            };
            assert_eq!(e.path, self.path(), "{e}");
            assert_eq!(e.line, line, "line of: {e}");
            assert_eq!(e.key.as_deref(), key, "key of: {e}");
            assert!(
                e.message.contains(fragment),
                "message of `{e}` lacks {fragment:?}"
            );
            e
        }
    }

    const HEAD: &str = "cluster = \"c1\"\nshared_root = \"shared\"\ndata_dir = \"data\"\n";

    fn with_servers(servers: &str) -> String {
        format!("{HEAD}{servers}")
    }

    const ONE: &str = "\n[[server]]\nname = \"srv1\"\naddress = \"127.0.0.1\"\n";

    fn minimal() -> String {
        with_servers(ONE)
    }

    // --- good configs -----------------------------------------------------

    #[test]
    fn a_hotfolder_shell_template_needs_allow_shell() {
        let f = Fixture::new();
        let table = "\n[hotfolder.hf]\ncommand = \"sh -c 'echo {name}'\"\n";
        let text = format!("{}{table}", minimal());
        let e = f.bad(&text, Some(9), Some("hotfolder.hf"), "as code");
        assert!(e.message.contains("allow_shell"), "{e}");
        let c = f.ok(&format!("{text}allow_shell = true\n"));
        assert!(c.hotfolders[0].allow_shell);
        let safe = "\n[hotfolder.hf]\ncommand = \"sh -c 'echo \\\"$CLARO_NAME\\\"'\"\n";
        let c = f.ok(&format!("{}{safe}", minimal()));
        assert!(!c.hotfolders[0].allow_shell);
    }

    /// A hotfolder tries a failed action once unless told (`retries`);
    /// `retries` and `max_attempts` together are refused, naming the line.
    #[test]
    fn a_hotfolder_s_retries_set_its_attempts() {
        let f = Fixture::new();
        let table = "\n[hotfolder.hf]\ncommand = \"convert {input} {output_dir}/{name}\"\n";
        let c = f.ok(&format!("{}{table}", minimal()));
        assert_eq!(c.hotfolders[0].max_attempts, 1);
        let c = f.ok(&format!("{}{table}retries = 2\n", minimal()));
        assert_eq!(c.hotfolders[0].max_attempts, 3);
        let both = format!("{}{table}retries = 2\nmax_attempts = 3\n", minimal());
        let e = f.bad(&both, Some(11), Some("hotfolder.hf.retries"), "not both");
        assert!(e.message.contains("max_attempts"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let f = Fixture::new();
        let c = f.ok(&minimal());
        assert_eq!(c.path, f.path());
        assert_eq!(c.cluster, "c1");
        assert_eq!(c.port, PORT_DEFAULT);
        assert_eq!(c.shared_root, f.dir.path().join("shared"));
        assert_eq!(c.data_dir, f.dir.path().join("data"));
        assert_eq!(c.tls_dir, f.dir.path().join("tls"));
        assert_eq!(c.timing, Timing::default());
        assert_eq!(
            c.timing,
            Timing {
                tick_ms: 20,
                heartbeat_ms: 100,
                election_ms: 500,
                node_timeout_ms: 3000,
                discovery_ms: 2000,
                checkpoint_ms: 30_000,
                drain_ms: 10_000,
                hotfolder_poll_ms: 1000,
            }
        );
        let expected = ServerConf {
            name: "srv1".into(),
            host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: 7900,
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7900),
            slots: 4,
            role: Role::Server,
            vote: true,
        };
        assert_eq!(c.servers, vec![expected]);
        assert_eq!(c.server_dir("srv1"), f.dir.path().join("data").join("srv1"));
    }

    #[test]
    fn full_config_reads_every_key() {
        let f = Fixture::new();
        let text = r#"
cluster = "Prod.Cluster_2-a"
port = 7911
shared_root = "shared"
data_dir = "/var/lib/claro"
tls_dir = "certs"

[timing]
tick_ms = 10
heartbeat_ms = 50
election_ms = 500
node_timeout_ms = 2000
discovery_ms = 1500

[[server]]
name = "a1"
address = "10.0.0.1"
slots = 256
role = "server"

[[server]]
name = "w-2"
address = "10.0.0.2:8000"
slots = 1
role = "witness"

[[server]]
name = "v6"
address = "[fd00::3]:7912"

[[server]]
name = "v6b"
address = "fd00::4"
"#;
        let c = f.ok(text);
        assert_eq!(c.cluster, "Prod.Cluster_2-a");
        assert_eq!(c.port, 7911);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/claro"));
        assert_eq!(c.tls_dir, f.dir.path().join("certs"));
        let t = Timing {
            tick_ms: 10,
            heartbeat_ms: 50,
            election_ms: 500,
            node_timeout_ms: 2000,
            discovery_ms: 1500,
            checkpoint_ms: 30_000,
            drain_ms: 10_000,
            hotfolder_poll_ms: 1000,
        };
        assert_eq!(c.timing, t);
        assert_eq!(c.servers.len(), 4);
        assert_eq!(c.servers[0].address, "10.0.0.1:7911".parse().unwrap());
        assert_eq!((c.servers[0].slots, c.servers[0].role), (256, Role::Server));
        assert_eq!(c.servers[1].address, "10.0.0.2:8000".parse().unwrap());
        assert_eq!((c.servers[1].slots, c.servers[1].role), (1, Role::Witness));
        assert_eq!(c.servers[2].address, "[fd00::3]:7912".parse().unwrap());
        let v6 = SocketAddr::new(IpAddr::V6("fd00::4".parse::<Ipv6Addr>().unwrap()), 7911);
        assert_eq!(c.servers[3].address, v6);
    }

    #[test]
    fn partial_timing_keeps_other_defaults() {
        let f = Fixture::new();
        let c = f.ok(&with_servers(&format!(
            "[timing]\ndiscovery_ms = 5000\n{ONE}"
        )));
        assert_eq!(
            c.timing,
            Timing {
                discovery_ms: 5000,
                ..Timing::default()
            }
        );
    }

    #[test]
    fn inline_server_array_is_accepted() {
        let f = Fixture::new();
        let c = f.ok(&format!(
            "{HEAD}server = [{{ name = \"a\", address = \"127.0.0.1\" }}]\n"
        ));
        assert_eq!(c.servers[0].name, "a");
    }

    #[test]
    fn absolute_shared_root_is_kept() {
        let f = Fixture::new();
        let abs = f.dir.path().join("shared");
        let text = format!(
            "cluster = \"c\"\nshared_root = {}\ndata_dir = \"d\"\n{ONE}",
            quote(abs.to_str().unwrap())
        );
        assert_eq!(f.ok(&text).shared_root, abs);
    }

    #[test]
    fn path_without_folder_resolves_against_dot() {
        let f = Fixture::new();
        let abs = f.dir.path().join("shared");
        let text = format!(
            "cluster = \"c\"\nshared_root = {}\ndata_dir = \"d\"\n{ONE}",
            quote(abs.to_str().unwrap())
        );
        let c = Config::parse(&text, Path::new("ClaroServers.conf")).unwrap();
        assert_eq!(c.data_dir, Path::new(".").join("d"));
        assert_eq!(c.tls_dir, Path::new(".").join("tls"));
        assert_eq!(c.path, PathBuf::from("ClaroServers.conf"));
    }

    #[test]
    fn same_ip_on_different_ports_is_two_servers() {
        let f = Fixture::new();
        let text = with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n[[server]]\nname = \"b\"\naddress = \"127.0.0.1:7901\"\n",
        );
        assert_eq!(f.ok(&text).servers.len(), 2);
    }

    #[test]
    fn repository_quickstart_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ClaroServers.conf");
        if !path.exists() {
            return; // not part of this checkout
        }
        let c = Config::load(&path).unwrap();
        assert_eq!(c.servers[0].address.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    // --- TOML level --------------------------------------------------------

    #[test]
    fn syntax_error_names_line() {
        let f = Fixture::new();
        let text = format!("{HEAD}[timing]\ntick_ms = 10\nheartbeat_ms = \"50\n{ONE}");
        let e = f.bad(&text, Some(6), Some("timing.heartbeat_ms"), "TOML syntax");
        assert!(
            e.to_string()
                .contains(":6: key `timing.heartbeat_ms`: TOML syntax"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_without_key() {
        let f = Fixture::new();
        f.bad(&format!("{HEAD}[[server]\n"), Some(4), None, "TOML syntax");
    }

    #[test]
    fn duplicate_key_names_line_and_key() {
        let f = Fixture::new();
        f.bad(
            &format!("{HEAD}cluster = \"again\"\n{ONE}"),
            Some(4),
            Some("cluster"),
            "duplicate",
        );
        let text = with_servers(&format!("[timing]\ntick_ms = 10\ntick_ms = 10\n{ONE}"));
        f.bad(&text, Some(6), Some("timing.tick_ms"), "duplicate");
    }

    #[test]
    fn unknown_top_level_key() {
        let f = Fixture::new();
        f.bad(
            &format!("{HEAD}colour = 3\n{ONE}"),
            Some(4),
            Some("colour"),
            "unknown field `colour`",
        );
    }

    #[test]
    fn unknown_timing_key() {
        let f = Fixture::new();
        let text = with_servers(&format!("[timing]\ntick_ms = 10\nheartbeat = 7\n{ONE}"));
        f.bad(
            &text,
            Some(6),
            Some("timing.heartbeat"),
            "unknown field `heartbeat`",
        );
    }

    #[test]
    fn unknown_server_key_in_second_server() {
        let f = Fixture::new();
        let text = with_servers(&format!(
            "{ONE}\n[[server]]\nname = \"b\"\naddress = \"127.0.0.2\"\nslot = 2\n"
        ));
        f.bad(&text, Some(12), Some("server.slot"), "unknown field `slot`");
    }

    #[test]
    fn unknown_key_in_inline_server() {
        let f = Fixture::new();
        let text = format!("{HEAD}server = [\n  {{ name = \"a\", address = \"127.0.0.1\" }},\n  {{ nme = \"b\" }},\n]\n");
        f.bad(&text, Some(6), Some("server.nme"), "unknown field `nme`");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let f = Fixture::new();
        f.bad(
            &format!("{HEAD}port = \"7900\"\n{ONE}"),
            Some(4),
            Some("port"),
            "invalid type: string \"7900\", expected an integer",
        );
        f.bad(
            "cluster = 5\nshared_root = \"shared\"\n",
            Some(1),
            Some("cluster"),
            "invalid type",
        );
        let text =
            with_servers("[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nslots = \"many\"\n");
        f.bad(&text, Some(7), Some("server.slots"), "invalid type");
        let text = with_servers(&format!("[timing]\ntick_ms = 1.5\n{ONE}"));
        f.bad(&text, Some(5), Some("timing.tick_ms"), "invalid type");
        f.bad(
            &format!("{HEAD}timing = 3\n{ONE}"),
            Some(4),
            Some("timing"),
            "invalid type",
        );
        f.bad(
            &format!("{HEAD}[server]\nname = \"a\"\n"),
            Some(4),
            Some("server"),
            "invalid type",
        );
    }

    // --- required keys -----------------------------------------------------

    #[test]
    fn missing_top_level_keys() {
        let f = Fixture::new();
        for key in ["cluster", "shared_root", "data_dir"] {
            let text: String = minimal()
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect();
            f.bad(&text, None, Some(key), "missing");
        }
    }

    #[test]
    fn missing_servers() {
        let f = Fixture::new();
        f.bad(HEAD, None, Some("server"), "at least one");
        f.bad(
            &format!("{HEAD}server = []\n"),
            None,
            Some("server"),
            "at least one",
        );
    }

    #[test]
    fn missing_server_name_or_address_points_at_the_table() {
        let f = Fixture::new();
        let text = with_servers(&format!("{ONE}\n[[server]]\naddress = \"127.0.0.2\"\n"));
        f.bad(&text, Some(9), Some("server.name"), "missing");
        let text = with_servers(&format!("{ONE}\n[[server]]\nname = \"b\"\n"));
        f.bad(&text, Some(9), Some("server.address"), "missing");
    }

    // --- servers -------------------------------------------------------------

    #[test]
    fn duplicate_name_points_at_the_second() {
        let f = Fixture::new();
        let text = with_servers(&format!(
            "{ONE}\n[[server]]\nname = \"srv1\"\naddress = \"127.0.0.2\"\n"
        ));
        f.bad(
            &text,
            Some(10),
            Some("server.name"),
            "duplicate server name `srv1` (first at line 6)",
        );
    }

    #[test]
    fn duplicate_address_points_at_the_second() {
        let f = Fixture::new();
        // 127.0.0.1 with the cluster port is the same address as 127.0.0.1:7900.
        let text = with_servers(&format!(
            "{ONE}\n[[server]]\nname = \"b\"\naddress = \"127.0.0.1:7900\"\n"
        ));
        f.bad(
            &text,
            Some(11),
            Some("server.address"),
            "duplicate server address 127.0.0.1:7900",
        );
    }

    #[test]
    fn bad_addresses() {
        let f = Fixture::new();
        let cases = [
            ("", "not an IP address or host name: \"\": empty"),
            ("127.0.0.1:", "bad port \"\""),
            ("127.0.0.1:70000", "bad port \"70000\""),
            ("srv1.example.com:x", "bad port \"x\""),
            ("300.0.0.1", "last label is all digits"),
            ("127.0.0.1:0", "port 0"),
            ("srv1.example.com:0", "port 0"),
            ("[::1", "not an IP address: \"[::1\""),
            ("fd00::1::2", "not an IP address"),
            ("-srv1.example.com", "starts or ends with -"),
            ("srv1..example.com", "an empty label"),
            ("srv1.example.com.", "an empty label"),
            ("srv_1.example.com", "characters other than"),
            ("srv1 .example.com", "characters other than"),
            ("0.0.0.0", "not an address other servers can reach"),
            ("::", "not an address other servers can reach"),
            ("224.0.0.1", "not an address other servers can reach"),
        ];
        for (address, fragment) in cases {
            let text = with_servers(&format!(
                "\n[[server]]\nname = \"a\"\naddress = {}\n",
                quote(address)
            ));
            f.bad(&text, Some(7), Some("server.address"), fragment);
        }
    }

    #[test]
    fn server_name_rules() {
        let f = Fixture::new();
        let longest = format!("a{}", "b".repeat(SERVER_NAME_MAX_CHARS - 1));
        for good in ["a", "srv-1", "x9", longest.as_str()] {
            f.ok(&with_servers(&format!(
                "[[server]]\nname = \"{good}\"\naddress = \"127.0.0.1\"\n"
            )));
        }
        let too_long = format!("{longest}c");
        for bad in [
            "",
            "Srv1",
            "1srv",
            "-srv",
            "srv-",
            "srv_1",
            "srv.1",
            "srv 1",
            "ßrv",
            too_long.as_str(),
        ] {
            let text = with_servers(&format!(
                "[[server]]\nname = \"{bad}\"\naddress = \"127.0.0.1\"\n"
            ));
            f.bad(&text, Some(5), Some("server.name"), "bad server name");
        }
        let text = with_servers("[[server]]\nname = \"client\"\naddress = \"127.0.0.1\"\n");
        f.bad(&text, Some(5), Some("server.name"), "reserved");
    }

    #[test]
    fn cluster_name_rules() {
        let f = Fixture::new();
        let longest = "c".repeat(CLUSTER_NAME_MAX_CHARS);
        let rest = "shared_root = \"shared\"\ndata_dir = \"data\"\n";
        for good in ["a", "A.b_c-9", longest.as_str()] {
            f.ok(&format!("cluster = \"{good}\"\n{rest}{ONE}"));
        }
        let too_long = format!("{longest}c");
        for bad in ["", "a b", "a/b", "é", too_long.as_str()] {
            f.bad(
                &format!("{rest}cluster = \"{bad}\"\n{ONE}"),
                Some(3),
                Some("cluster"),
                "bad cluster name",
            );
        }
    }

    #[test]
    fn vote_false_on_a_witness_or_on_every_server_is_refused() {
        let f = Fixture::new();
        let text =
            with_servers("[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nvote = false\n");
        f.bad(&text, Some(4), Some("server.vote"), "no server may vote");
        let text = with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n[[server]]\nname = \"w\"\naddress = \"127.0.0.2\"\nrole = \"witness\"\nvote = false\n",
        );
        f.bad(
            &text,
            Some(11),
            Some("server.vote"),
            "a witness is there to vote",
        );
        let text = with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n[[server]]\nname = \"b\"\naddress = \"127.0.0.2\"\nvote = false\n",
        );
        let c = f.ok(&text);
        assert!(c.servers[0].vote && !c.servers[1].vote);
        assert!(c
            .membership_text()
            .contains("server b address=127.0.0.2:7900 role=server vote=false\n"));
    }

    #[test]
    fn bad_role() {
        let f = Fixture::new();
        let text =
            with_servers("[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nrole = \"Witness\"\n");
        f.bad(
            &text,
            Some(7),
            Some("server.role"),
            "unknown role \"Witness\"",
        );
        let text = with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nrole = \"coordinator\"\n",
        );
        f.bad(&text, Some(7), Some("server.role"), "unknown role");
    }

    #[test]
    fn slots_range() {
        let f = Fixture::new();
        let text = |n: i64| {
            with_servers(&format!(
                "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nslots = {n}\n"
            ))
        };
        assert_eq!(f.ok(&text(1)).servers[0].slots, 1);
        assert_eq!(f.ok(&text(256)).servers[0].slots, 256);
        for n in [0, 257, -1, i64::MAX] {
            f.bad(
                &text(n),
                Some(7),
                Some("server.slots"),
                "out of range 1..=256",
            );
        }
    }

    #[test]
    fn only_witnesses_is_refused() {
        let f = Fixture::new();
        let text = with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nrole = \"witness\"\n\
             [[server]]\nname = \"b\"\naddress = \"127.0.0.2\"\nrole = \"witness\"\n",
        );
        f.bad(
            &text,
            Some(7),
            Some("server.role"),
            "at least one needs role \"server\"",
        );
    }

    #[test]
    fn too_many_servers() {
        let f = Fixture::new();
        let servers: String = (0..=SERVERS_MAX)
            .map(|i| {
                format!(
                    "[[server]]\nname = \"s{i}\"\naddress = \"10.0.{}.{}\"\n",
                    i / 200,
                    i % 200 + 1
                )
            })
            .collect();
        let line = 4 + 3 * SERVERS_MAX;
        f.bad(
            &with_servers(&servers),
            Some(line),
            Some("server"),
            "at most 64",
        );
    }

    // --- top-level values ----------------------------------------------------

    #[test]
    fn cluster_port_range() {
        let f = Fixture::new();
        assert_eq!(f.ok(&format!("{HEAD}port = 1\n{ONE}")).port, 1);
        assert_eq!(
            f.ok(&format!("{HEAD}port = 65535\n{ONE}")).servers[0]
                .address
                .port(),
            65535
        );
        for bad in [0, 65536, -7900] {
            f.bad(
                &format!("{HEAD}port = {bad}\n{ONE}"),
                Some(4),
                Some("port"),
                "out of range",
            );
        }
    }

    #[test]
    fn shared_root_must_exist() {
        let f = Fixture::new();
        let text = minimal().replace("\"shared\"", "\"nowhere\"");
        let e = f.bad(&text, Some(2), Some("shared_root"), "not usable");
        assert!(
            e.message
                .contains(&f.dir.path().join("nowhere").display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn shared_root_must_be_a_directory() {
        let f = Fixture::new();
        std::fs::write(f.dir.path().join("afile"), "x").unwrap();
        let text = minimal().replace("\"shared\"", "\"afile\"");
        let e = f.bad(&text, Some(2), Some("shared_root"), "is not a directory");
        assert!(
            e.message
                .contains(&f.dir.path().join("afile").display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn empty_paths_are_refused() {
        let f = Fixture::new();
        f.bad(
            &minimal().replace("\"shared\"", "\"\""),
            Some(2),
            Some("shared_root"),
            "empty path",
        );
        f.bad(
            &minimal().replace("\"data\"", "\"\""),
            Some(3),
            Some("data_dir"),
            "empty path",
        );
        f.bad(
            &format!("{HEAD}tls_dir = \"\"\n{ONE}"),
            Some(4),
            Some("tls_dir"),
            "empty path",
        );
    }

    // --- timing ----------------------------------------------------------------

    fn timing_text(body: &str) -> String {
        with_servers(&format!("[timing]\n{body}{ONE}"))
    }

    #[test]
    fn job_retention_is_read_and_bounded() {
        let f = Fixture::new();
        let c = f.ok(&format!(
            "{HEAD}\n[jobs]\nkeep_ms = 3600000\nkeep_count = 500\n{ONE}"
        ));
        assert_eq!(
            c.jobs,
            JobsConf {
                keep_ms: 3_600_000,
                keep_count: 500,
                ..JobsConf::default()
            }
        );
        assert_eq!(f.ok(&minimal()).jobs, JobsConf::default());
        let text = format!("{HEAD}\n[jobs]\nkeep_ms = 5\n{ONE}");
        f.bad(
            &text,
            Some(6),
            Some("jobs.keep_ms"),
            "out of range 60000..=",
        );
    }

    #[test]
    fn run_as_is_a_user_name_or_a_uid() {
        let f = Fixture::new();
        let run_as = |value: &str| {
            let text = format!("{HEAD}\n[jobs]\nrun_as = {value}\n{ONE}");
            f.ok(&text).jobs.run_as.map(|r| (r.user, r.line))
        };
        assert_eq!(f.ok(&minimal()).jobs.run_as, None);
        let nobody = UserRef::Name("nobody".into());
        assert_eq!(run_as("\"nobody\""), Some((nobody, 6)));
        assert_eq!(
            run_as("\"svc.claro_1\""),
            Some((UserRef::Name("svc.claro_1".into()), 6))
        );
        assert_eq!(run_as("65534"), Some((UserRef::Uid(65534), 6)));
        assert_eq!(run_as("\"1001\""), Some((UserRef::Uid(1001), 6)));
        assert_eq!(run_as("0"), Some((UserRef::Uid(0), 6)));
        for (value, fragment) in [
            ("\"\"", "bad user \"\""),
            ("\"-rf\"", "bad user \"-rf\""),
            ("\"a b\"", "bad user \"a b\""),
            ("\"../etc\"", "bad user"),
            (
                "\"abcdefghijklmnopqrstuvwxyz0123456\"",
                "1 to 32 characters",
            ),
            ("-1", "uid -1 out of range"),
            ("4294967295", "uid 4294967295 out of range"),
            ("\"99999999999\"", "uid 99999999999 out of range"),
        ] {
            let text = format!("{HEAD}\n[jobs]\nrun_as = {value}\n{ONE}");
            f.bad(&text, Some(6), Some("jobs.run_as"), fragment);
        }
        let text = format!("{HEAD}\n[jobs]\nrun_as = true\n{ONE}");
        let e = f.parse(&text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("jobs.run_as"), "{e}");
    }

    #[test]
    fn timing_values_are_bounded() {
        let f = Fixture::new();
        for key in [
            "tick_ms",
            "heartbeat_ms",
            "election_ms",
            "node_timeout_ms",
            "discovery_ms",
        ] {
            for bad in [0, -5, 600_001] {
                let text = timing_text(&format!("{key} = {bad}\n"));
                f.bad(
                    &text,
                    Some(5),
                    Some(&format!("timing.{key}")),
                    "out of range 1..=600000",
                );
            }
        }
        let c = f.ok(&timing_text(
            "discovery_ms = 600000\nnode_timeout_ms = 600000\nelection_ms = 600000\n",
        ));
        assert_eq!(c.timing.discovery_ms, TIMING_MAX_MS);
    }

    #[test]
    fn tick_must_not_exceed_heartbeat() {
        let f = Fixture::new();
        f.ok(&timing_text("tick_ms = 100\nheartbeat_ms = 100\n"));
        f.bad(
            &timing_text("heartbeat_ms = 100\ntick_ms = 101\n"),
            Some(6),
            Some("timing.tick_ms"),
            "tick_ms (101)",
        );
        // Only the heartbeat is written: blame it.
        f.bad(
            &timing_text("heartbeat_ms = 10\n"),
            Some(5),
            Some("timing.heartbeat_ms"),
            "must not exceed",
        );
    }

    #[test]
    fn election_must_be_twice_heartbeat() {
        let f = Fixture::new();
        f.ok(&timing_text("heartbeat_ms = 100\nelection_ms = 200\n"));
        let text = timing_text("heartbeat_ms = 100\nelection_ms = 199\n");
        f.bad(
            &text,
            Some(6),
            Some("timing.election_ms"),
            "at least twice heartbeat_ms",
        );
        let text = timing_text("election_ms = 100\nheartbeat_ms = 100\n");
        f.bad(&text, Some(5), Some("timing.election_ms"), "at least twice");
        // Default election (500 ms) against a written heartbeat.
        f.bad(
            &timing_text("heartbeat_ms = 600\n"),
            Some(5),
            Some("timing.heartbeat_ms"),
            "at least twice",
        );
    }

    #[test]
    fn node_timeout_must_exceed_heartbeat() {
        let f = Fixture::new();
        let text = timing_text("heartbeat_ms = 100\nnode_timeout_ms = 100\n");
        f.bad(
            &text,
            Some(6),
            Some("timing.node_timeout_ms"),
            "must exceed heartbeat_ms",
        );
        f.ok(&timing_text("heartbeat_ms = 100\nnode_timeout_ms = 101\n"));
    }

    // --- errors ----------------------------------------------------------------

    #[test]
    fn error_display_omits_missing_parts() {
        let mut e = ConfigError {
            path: PathBuf::from("conf/ClaroServers.conf"),
            line: Some(12),
            key: Some("server.address".into()),
            message: "not an IP address: \"foo\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "conf/ClaroServers.conf:12: key `server.address`: not an IP address: \"foo\""
        );
        e.line = None;
        assert_eq!(
            e.to_string(),
            "conf/ClaroServers.conf: key `server.address`: not an IP address: \"foo\""
        );
        e.key = None;
        assert_eq!(
            e.to_string(),
            "conf/ClaroServers.conf: not an IP address: \"foo\""
        );
        e.line = Some(3);
        assert_eq!(
            e.to_string(),
            "conf/ClaroServers.conf:3: not an IP address: \"foo\""
        );
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn bad_address_message_matches_the_documented_form() {
        let f = Fixture::new();
        let text = with_servers("[[server]]\nname = \"a\"\naddress = \"300.1.1.1\"\n");
        let e = f.parse(&text).unwrap_err();
        let expected = format!(
            "{}:6: key `server.address`: not an IP address or host name: \"300.1.1.1\"",
            f.path().display()
        );
        assert!(e.to_string().starts_with(&expected), "{e}");
    }

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of("", 0), 1);
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\n", 99), 2);
    }

    // --- load ------------------------------------------------------------------

    #[test]
    fn load_reads_the_file() {
        let f = Fixture::new();
        std::fs::write(f.path(), minimal()).unwrap();
        let c = Config::load(&f.path()).unwrap();
        assert_eq!(c.servers[0].name, "srv1");
    }

    #[test]
    fn load_missing_file() {
        let f = Fixture::new();
        let e = Config::load(&f.path()).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (None, None));
        assert!(e.message.contains("cannot open"), "{e}");
    }

    #[test]
    fn load_refuses_huge_file() {
        let f = Fixture::new();
        let padding = "#".repeat(CONFIG_MAX_BYTES as usize);
        std::fs::write(f.path(), format!("{}\n{padding}", minimal())).unwrap();
        let e = Config::load(&f.path()).unwrap_err();
        assert!(e.message.contains("larger than"), "{e}");
    }

    // --- lookups ---------------------------------------------------------------

    fn three(f: &Fixture) -> Config {
        f.ok(&with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n\
             [[server]]\nname = \"b\"\naddress = \"192.0.2.1\"\n\
             [[server]]\nname = \"c\"\naddress = \"192.0.2.2\"\nrole = \"witness\"\n",
        ))
    }

    #[test]
    fn server_by_name() {
        let f = Fixture::new();
        let c = three(&f);
        assert_eq!(
            c.server("b").unwrap().address,
            "192.0.2.1:7900".parse().unwrap()
        );
        assert!(c.server("d").is_none());
    }

    #[test]
    fn local_server_by_name() {
        let f = Fixture::new();
        let c = three(&f);
        assert_eq!(c.local_server(Some("c")).unwrap().name, "c");
        let e = c.local_server(Some("zz")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server"));
        assert!(
            e.message.contains("`zz`") && e.message.contains("a, b, c"),
            "{e}"
        );
    }

    #[test]
    fn local_server_by_address_on_this_machine() {
        let f = Fixture::new();
        assert!(is_local_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // Documentation ranges (RFC 5737), unless this machine happens to use one.
        let foreign = ["198.51.100.7", "203.0.113.7", "192.0.2.251"]
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap())
            .find(|ip| !is_local_ip(*ip))
            .expect("a documentation address that is not local");
        let text = with_servers(&format!(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n[[server]]\nname = \"b\"\naddress = \"{foreign}\"\n"
        ));
        assert_eq!(f.ok(&text).local_server(None).unwrap().name, "a");
    }

    #[test]
    fn local_server_none_matches() {
        let f = Fixture::new();
        let e = three(&f).pick_local(|_| false).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server"));
        assert!(
            e.message
                .contains("no server in the config matches this machine's addresses"),
            "{e}"
        );
        assert!(
            e.message.contains("a 127.0.0.1, b 192.0.2.1, c 192.0.2.2")
                && e.message.contains("--name"),
            "{e}"
        );
    }

    #[test]
    fn local_server_several_match() {
        let f = Fixture::new();
        let c = three(&f);
        let e = c
            .pick_local(|ip| ip != IpAddr::V4(Ipv4Addr::LOCALHOST))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server"));
        assert!(
            e.message.contains("(b, c)") && e.message.contains("--name"),
            "{e}"
        );
        let e = c.pick_local(|_| true).unwrap_err();
        assert!(e.message.contains("(a, b, c)"), "{e}");
    }

    #[test]
    fn local_server_several_on_loopback() {
        let f = Fixture::new();
        let c = f.ok(&with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n[[server]]\nname = \"b\"\naddress = \"127.0.0.1:7901\"\n",
        ));
        assert!(c.local_server(None).unwrap_err().message.contains("(a, b)"));
    }

    // --- membership ------------------------------------------------------------

    #[test]
    fn membership_text_is_canonical() {
        let f = Fixture::new();
        let c = three(&f);
        assert_eq!(
            c.membership_text(),
            "cluster c1\nport 7900\n\
             server a address=127.0.0.1:7900 role=server\n\
             server b address=192.0.2.1:7900 role=server\n\
             server c address=192.0.2.2:7900 role=witness\n"
        );
        let hash = c.membership_hash();
        assert_eq!(hash.len(), 64);
        assert!(
            hash.chars()
                .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)),
            "{hash}"
        );
    }

    #[test]
    fn membership_hash_known_value() {
        let f = Fixture::new();
        let c = f.ok(&minimal());
        // SHA-256 of the text below, computed independently (sha256sum).
        assert_eq!(
            c.membership_text(),
            "cluster c1\nport 7900\nserver srv1 address=127.0.0.1:7900 role=server\n"
        );
        assert_eq!(c.membership_hash(), MINIMAL_HASH);
    }

    const MINIMAL_HASH: &str = "5eda7e2c057a6dd1499b416fe591742144849111d1557f331b2d4439d6d3a3f5";

    #[test]
    fn membership_ignores_order_slots_timing_and_paths() {
        let f = Fixture::new();
        let a = three(&f).membership_hash();
        let other = Fixture::new();
        std::fs::create_dir(other.dir.path().join("elsewhere")).unwrap();
        let text = "cluster = \"c1\"\nshared_root = \"elsewhere\"\ndata_dir = \"/x\"\ntls_dir = \"t\"\n\
                    [timing]\nheartbeat_ms = 50\n\
                    [[server]]\nname = \"c\"\naddress = \"192.0.2.2:7900\"\nrole = \"witness\"\nslots = 9\n\
                    [[server]]\nname = \"b\"\naddress = \"192.0.2.1\"\n\
                    [[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\nslots = 1\n";
        assert_eq!(other.ok(text).membership_hash(), a);
    }

    #[test]
    fn membership_changes_with_each_part() {
        let f = Fixture::new();
        let base = three(&f);
        let mut variants = Vec::new();
        let mut c = base.clone();
        c.cluster = "c2".into();
        variants.push(c);
        let mut c = base.clone();
        c.port = 7901;
        variants.push(c);
        let mut c = base.clone();
        c.servers[1].port = 7901;
        variants.push(c);
        let mut c = base.clone();
        c.servers[1].host = Host::Name("b.example.com".into());
        variants.push(c);
        let mut c = base.clone();
        c.servers[2].role = Role::Server;
        variants.push(c);
        let mut c = base.clone();
        c.servers[0].name = "z".into();
        variants.push(c);
        let mut c = base.clone();
        c.servers.pop();
        variants.push(c);
        for v in variants {
            assert_ne!(
                v.membership_hash(),
                base.membership_hash(),
                "{}",
                v.membership_text()
            );
        }
    }

    // --- host names --------------------------------------------------------------
    // `localhost` resolves on every machine (here from /etc/hosts, to
    // 127.0.0.1 only); names under the reserved `.invalid` TLD (RFC 6761)
    // never resolve.

    fn one_server(address: &str) -> String {
        with_servers(&format!(
            "\n[[server]]\nname = \"srv1\"\naddress = {}\n",
            quote(address)
        ))
    }

    fn loopback_v4(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    #[test]
    fn host_name_is_kept_and_resolved_at_load() {
        let f = Fixture::new();
        let c = f.ok(&one_server("LocalHost"));
        let s = &c.servers[0];
        assert_eq!(s.host, Host::Name("localhost".into()));
        assert_eq!(s.port, PORT_DEFAULT);
        assert_eq!(s.address, loopback_v4(PORT_DEFAULT));
        assert_eq!(s.configured_address(), "localhost:7900");
    }

    #[test]
    fn host_name_with_port() {
        let f = Fixture::new();
        let c = f.ok(&one_server("localhost:7950"));
        let s = &c.servers[0];
        assert_eq!((&s.host, s.port), (&Host::Name("localhost".into()), 7950));
        assert_eq!(s.address, loopback_v4(7950));
        assert_eq!(s.configured_address(), "localhost:7950");
    }

    #[test]
    fn unresolvable_host_name_names_line_and_key_quickly() {
        let f = Fixture::new();
        let started = Instant::now();
        let e = f.bad(
            &one_server("nosuch.invalid"),
            Some(7),
            Some("server.address"),
            "cannot resolve host name \"nosuch.invalid\"",
        );
        let took = started.elapsed();
        println!("unresolvable name refused in {took:?}: {e}");
        assert!(
            took < Duration::from_millis(RESOLVE_WAIT_MS + 500),
            "{took:?}"
        );
    }

    #[test]
    fn several_unresolvable_names_are_looked_up_at_once() {
        let hosts: Vec<Host> = (0..8)
            .map(|i| Host::Name(format!("nosuch{i}.invalid")))
            .collect();
        let pairs: Vec<(&Host, u16)> = hosts.iter().map(|h| (h, 7900)).collect();
        let started = Instant::now();
        let results = lookup_all(&pairs);
        println!("8 unresolvable names in {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_millis(RESOLVE_WAIT_MS + 500));
        for (i, r) in results.iter().enumerate() {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains(&format!("\"nosuch{i}.invalid\"")), "{e}");
        }
    }

    #[test]
    fn host_names_are_checked_for_form() {
        let f = Fixture::new();
        let label = "a".repeat(HOST_LABEL_MAX_CHARS + 1);
        f.bad(
            &one_server(&format!("{label}.example.com")),
            Some(7),
            Some("server.address"),
            "longer than 63",
        );
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > HOST_NAME_MAX_CHARS);
        f.bad(
            &one_server(&long),
            Some(7),
            Some("server.address"),
            "longer than 253",
        );
    }

    #[test]
    fn host_name_must_not_be_another_servers_name() {
        let f = Fixture::new();
        // srv1's certificate would name `srv2` and pass for server srv2.
        let text = with_servers(
            "[[server]]\nname = \"srv1\"\naddress = \"srv2\"\n\
             [[server]]\nname = \"srv2\"\naddress = \"127.0.0.2\"\n",
        );
        f.bad(
            &text,
            Some(6),
            Some("server.address"),
            "host name `srv2` is the name of server `srv2`",
        );
        f.bad(
            &one_server("client"),
            Some(7),
            Some("server.address"),
            "the command-line client's certificate",
        );
        // Its own name is fine.
        let c = f.ok(&with_servers(
            "[[server]]\nname = \"localhost\"\naddress = \"localhost\"\n",
        ));
        assert_eq!(c.servers[0].address, loopback_v4(PORT_DEFAULT));
    }

    #[test]
    fn a_name_resolving_to_another_servers_address_is_refused() {
        let f = Fixture::new();
        let text = with_servers(&format!(
            "{ONE}\n[[server]]\nname = \"b\"\naddress = \"localhost\"\n"
        ));
        f.bad(
            &text,
            Some(11),
            Some("server.address"),
            "localhost:7900 resolves to 127.0.0.1:7900, the address of server `srv1` (127.0.0.1:7900)",
        );
    }

    #[test]
    fn membership_uses_the_configured_host_not_the_resolved_address() {
        let f = Fixture::new();
        let c = f.ok(&one_server("localhost"));
        assert_eq!(
            c.membership_text(),
            "cluster c1\nport 7900\nserver srv1 address=localhost:7900 role=server\n"
        );
        // A server whose DNS answers differently agrees all the same.
        let mut elsewhere = c.clone();
        elsewhere.servers[0].address = "192.0.2.9:7900".parse().unwrap();
        assert_eq!(elsewhere.membership_hash(), c.membership_hash());
        // However the name is typed, and with the port written out.
        let typed = f.ok(&one_server("LOCALHOST:7900"));
        assert_eq!(typed.membership_hash(), c.membership_hash());
        // The IP it resolves to is another configuration.
        assert_eq!(f.ok(&minimal()).membership_hash(), MINIMAL_HASH);
        assert_ne!(c.membership_hash(), MINIMAL_HASH);
    }

    #[test]
    fn local_server_by_host_name() {
        let f = Fixture::new();
        let text = with_servers(
            "[[server]]\nname = \"a\"\naddress = \"localhost\"\n\
             [[server]]\nname = \"b\"\naddress = \"192.0.2.1\"\n",
        );
        let c = f.ok(&text);
        let a = c.pick_local(|ip| ip == IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(a.unwrap().name, "a");
        let e = c.pick_local(|_| false).unwrap_err();
        assert!(
            e.message.contains("a localhost (127.0.0.1), b 192.0.2.1"),
            "{e}"
        );
    }

    #[test]
    fn prefer_ipv4_of_both_families() {
        let v4: SocketAddr = "192.0.2.1:7900".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:7900".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8::2]:7900".parse().unwrap();
        assert_eq!(prefer_ipv4("h", &[v6, v4]), Ok(v4));
        assert_eq!(prefer_ipv4("h", &[v6, v6b]), Ok(v6));
        let e = prefer_ipv4("h", &[]).unwrap_err();
        assert!(e.contains("\"h\" resolves to no address"), "{e}");
    }

    #[test]
    fn host_lookup_of_an_ip_and_a_name() {
        let ip = Host::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(ip.lookup(7), Ok(vec!["192.0.2.1:7".parse().unwrap()]));
        let name = Host::Name("localhost".into());
        assert!(name.lookup(7).unwrap().contains(&loopback_v4(7)));
        let e = Host::Name("nosuch.invalid".into()).lookup(7).unwrap_err();
        assert!(e.contains("\"nosuch.invalid\""), "{e}");
        assert_eq!(
            Host::parse("LocalHost:12", 7900),
            Ok((Host::Name("localhost".into()), 12))
        );
        assert_eq!(
            Host::parse("[::1]:12", 7900),
            Ok((Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 12))
        );
    }

    /// A connection resolves the name again: the address found at load is
    /// not what it uses when the name now says otherwise.
    #[async_std::test]
    async fn resolve_looks_the_name_up_again() {
        let stale: SocketAddr = "192.0.2.9:7900".parse().unwrap();
        let server = |host: Host| ServerConf {
            name: "srv1".into(),
            host,
            port: 7900,
            address: stale,
            slots: 1,
            role: Role::Server,
            vote: true,
        };
        let moved = server(Host::Name("localhost".into()));
        assert_eq!(moved.resolve().await, loopback_v4(7900));
        // A name that no longer resolves keeps the address from load.
        let gone = server(Host::Name("nosuch.invalid".into()));
        assert_eq!(gone.resolve().await, stale);
        // An IP is never looked up.
        let ip = ServerConf {
            address: "192.0.2.1:7900".parse().unwrap(),
            ..server(Host::Ip("192.0.2.1".parse().unwrap()))
        };
        assert_eq!(ip.resolve().await, ip.address);
    }

    #[test]
    fn server_by_arg_takes_names_addresses_and_host_names() {
        let f = Fixture::new();
        let c = f.ok(&with_servers(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1\"\n\
             [[server]]\nname = \"b\"\naddress = \"192.0.2.1:7901\"\n\
             [[server]]\nname = \"c\"\naddress = \"localhost:7902\"\n",
        ));
        let by = |arg: &str| c.server_by_arg(arg).map(|s| s.name.as_str());
        assert_eq!(by("b"), Ok("b"));
        assert_eq!(by("127.0.0.1"), Ok("a"));
        assert_eq!(by("127.0.0.1:7900"), Ok("a"));
        assert_eq!(by("192.0.2.1:7901"), Ok("b"));
        // A host name, by the configured text or by what it resolves to.
        assert_eq!(by("LOCALHOST:7902"), Ok("c"));
        assert_eq!(by("127.0.0.1:7902"), Ok("c"));
        assert_eq!(by("localhost"), Ok("a"));
        let e = by("192.0.2.1").unwrap_err();
        assert!(
            e.contains("`192.0.2.1` (192.0.2.1:7900) is no server; the servers of")
                && e.ends_with(": a, b, c"),
            "{e}"
        );
        // A mistyped name is told the names there are.
        let e = by("srv9").unwrap_err();
        assert!(
            e.starts_with("`srv9` is no server name (the servers of")
                && e.contains(": a, b, c) and no address: cannot resolve host name"),
            "{e}"
        );
        let e = by("no_such").unwrap_err();
        assert!(
            e.contains("`no_such` is neither a server name nor an address (the servers of")
                && e.contains(": a, b, c)"),
            "{e}"
        );
    }

    // --- render ----------------------------------------------------------------

    #[test]
    fn render_parses_back() {
        let f = Fixture::new();
        let servers = vec![
            ("srv1".to_string(), "10.0.0.1".to_string()),
            ("srv2".to_string(), "10.0.0.2:7901".to_string()),
            ("srv3".to_string(), "[fd00::3]:7902".to_string()),
        ];
        let text = render("prod", 7950, "shared", "data", &servers);
        assert!(
            text.lines().any(|l| l.starts_with('#')),
            "comments expected"
        );
        let c = f.ok(&text);
        assert_eq!((c.cluster.as_str(), c.port), ("prod", 7950));
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.tls_dir, f.dir.path().join(TLS_DIR_DEFAULT));
        let names: Vec<&str> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["srv1", "srv2", "srv3"]);
        assert_eq!(c.servers[0].address, "10.0.0.1:7950".parse().unwrap());
        assert_eq!(c.servers[1].address, "10.0.0.2:7901".parse().unwrap());
        assert!(c
            .servers
            .iter()
            .all(|s| s.slots == SLOTS_DEFAULT && s.role == Role::Server));
    }

    /// Every commented key of the skeleton is a valid line as written:
    /// uncommented all at once, the config still loads, with those values.
    #[test]
    fn the_skeletons_commented_keys_load_when_uncommented() {
        let f = Fixture::new();
        let servers = vec![("srv1".to_string(), "10.0.0.1".to_string())];
        let text = render("prod", 7900, "shared", "data", &servers);
        fn key(l: &str) -> Option<&str> {
            let rest = l.strip_prefix("# ")?;
            let (k, _) = rest.split_once(" = ")?;
            let table = rest.starts_with("[hotfolder.");
            (table || k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(rest)
        }
        let open: String = text
            .lines()
            .map(|l| match (key(l), l.strip_prefix("# [")) {
                (Some(rest), _) => format!("{rest}\n"),
                (None, Some(t)) => format!("[{t}\n"),
                (None, None) => format!("{l}\n"),
            })
            .collect();
        let uncommented = open.lines().filter(|l| !l.starts_with('#')).count()
            - text.lines().filter(|l| !l.starts_with('#')).count();
        assert!(uncommented >= 15, "{uncommented} lines:\n{open}");
        let c = f.ok(&open);
        assert_eq!(c.http_port, HTTP_PORT_DEFAULT);
        assert_eq!(
            c.jobs.script_memory_mb,
            JobsConf::default().script_memory_mb
        );
        assert_eq!(c.hotfolders.len(), 1, "{open}");
        assert_eq!(c.hotfolders[0].name, "prepress");
        assert_eq!(c.alerts, AlertsConf::default(), "{open}");
        assert!(
            open.contains("\n[alerts]\nhotfolder_stalled_s = "),
            "{open}"
        );
    }

    #[test]
    fn render_escapes_paths() {
        let f = Fixture::new();
        let odd = "sh \"a\\r\\ed\" ü";
        std::fs::create_dir(f.dir.path().join(odd)).unwrap();
        let text = render(
            "c",
            PORT_DEFAULT,
            odd,
            "C:\\data\\claro",
            &[("a".into(), "127.0.0.1".into())],
        );
        let c = f.ok(&text);
        assert_eq!(c.shared_root, f.dir.path().join(odd));
        assert_eq!(c.data_dir, f.dir.path().join("C:\\data\\claro"));
    }

    #[test]
    fn role_serde_is_lowercase() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct W {
            role: Role,
        }
        assert_eq!(
            toml::to_string(&W {
                role: Role::Witness
            })
            .unwrap()
            .trim(),
            "role = \"witness\""
        );
        let w: W = toml::from_str("role = \"server\"").unwrap();
        assert_eq!(w.role, Role::Server);
        assert_eq!(Role::Witness.to_string(), "witness");
    }
}
