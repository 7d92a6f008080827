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
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// One `[[server]]` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConf {
    pub name: String,
    /// The configured IP with either the cluster port or the explicit port of
    /// an `IP:PORT` address.
    pub address: SocketAddr,
    /// Parallel jobs, 1..=[`SLOTS_MAX`].
    pub slots: u32,
    pub role: Role,
}

/// The `[timing]` table, all in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub tick_ms: u64,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub node_timeout_ms: u64,
    pub discovery_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { tick_ms: 20, heartbeat_ms: 100, election_ms: 1000, node_timeout_ms: 3000, discovery_ms: 2000 }
    }
}

/// A validated `ClaroServers.conf`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, as given.
    pub path: PathBuf,
    pub cluster: String,
    pub port: u16,
    /// Resolved against the config's folder; exists and is a directory.
    pub shared_root: PathBuf,
    /// Resolved against the config's folder; need not exist yet.
    pub data_dir: PathBuf,
    /// Resolved against the config's folder.
    pub tls_dir: PathBuf,
    pub timing: Timing,
    pub servers: Vec<ServerConf>,
}

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
    shared_root: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    tls_dir: Option<Spanned<String>>,
    timing: Option<Spanned<RawTiming>>,
    #[serde(default)]
    server: Vec<Spanned<RawServer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    tick_ms: Option<Spanned<i64>>,
    heartbeat_ms: Option<Spanned<i64>>,
    election_ms: Option<Spanned<i64>>,
    node_timeout_ms: Option<Spanned<i64>>,
    discovery_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    slots: Option<Spanned<i64>>,
    role: Option<Spanned<String>>,
}

/// The text being parsed and its file name: everything needed to build errors.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn err(&self, span: Option<Range<usize>>, key: Option<&str>, message: impl Into<String>) -> ConfigError {
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

    fn required<'v, T>(&self, value: &'v Option<Spanned<T>>, key: &str) -> Result<&'v Spanned<T>, ConfigError> {
        value.as_ref().ok_or_else(|| self.err(None, Some(key), "missing (required)"))
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

impl Config {
    /// Reads and parses the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError { path: path.to_path_buf(), line: None, key: None, message };
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
        let shared_root = shared_root(&src, &folder, &raw.shared_root)?;
        let data_dir = resolve(&src, &folder, src.required(&raw.data_dir, "data_dir")?, "data_dir")?;
        let tls_dir = match &raw.tls_dir {
            Some(v) => resolve(&src, &folder, v, "tls_dir")?,
            None => folder.join(TLS_DIR_DEFAULT),
        };
        let timing = timing(&src, raw.timing.as_ref())?;
        let servers = servers(&src, &raw.server, port)?;
        Ok(Config { path: path.to_path_buf(), cluster, port, shared_root, data_dir, tls_dir, timing, servers })
    }

    /// The `[[server]]` named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerConf> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// This instance's `[[server]]`: the one named, or else the only one whose
    /// IP is an address of this machine.
    pub fn local_server(&self, name: Option<&str>) -> Result<&ServerConf, ConfigError> {
        match name {
            Some(name) => self.server(name).ok_or_else(|| {
                let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
                self.error("server", format!("no server named `{name}`; configured: {}", names.join(", ")))
            }),
            None => self.pick_local(is_local_ip),
        }
    }

    /// [`Config::local_server`] without a name, with the "is this IP mine"
    /// test passed in so that tests need not depend on the machine.
    fn pick_local(&self, is_local: impl Fn(IpAddr) -> bool) -> Result<&ServerConf, ConfigError> {
        let local: Vec<&ServerConf> = self.servers.iter().filter(|s| is_local(s.address.ip())).collect();
        match local.as_slice() {
            [one] => Ok(one),
            [] => {
                let all: Vec<String> = self.servers.iter().map(|s| format!("{} {}", s.name, s.address.ip())).collect();
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
        ConfigError { path: self.path.clone(), line: None, key: Some(key.to_owned()), message }
    }

    /// The part of the config all members must agree on, one item per line so
    /// that two of them can be diffed to name the difference. Servers are
    /// sorted by name so the order of `[[server]]` tables does not matter.
    pub fn membership_text(&self) -> String {
        let mut servers: Vec<&ServerConf> = self.servers.iter().collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut text = format!("cluster {}\nport {}\n", self.cluster, self.port);
        for s in servers {
            text.push_str(&format!("server {} address={} role={}\n", s.name, s.address, s.role));
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
        src.err(Some(offset..offset), key.as_deref(), format!("TOML syntax: {}", e.message()))
    })?;
    RawConfig::deserialize(toml::de::Deserializer::from(table.clone())).map_err(|e| {
        let key = e.span().and_then(|s| key_path(table.get_ref(), s.start)).map(|k| k.join("."));
        src.err(e.span(), key.as_deref(), e.message())
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
    let header = text[..start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
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
    let Some(value) = raw else { return Ok(PORT_DEFAULT) };
    match u16::try_from(*value.get_ref()) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(src.at(value, "port", format!("port {} out of range 1..=65535", value.get_ref()))),
    }
}

/// `value` resolved against the config's folder (absolute paths stay as they are).
fn resolve(src: &Source<'_>, folder: &Path, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
    if value.get_ref().is_empty() {
        return Err(src.at(value, key, "empty path"));
    }
    Ok(folder.join(value.get_ref()))
}

fn shared_root(src: &Source<'_>, folder: &Path, raw: &Option<Spanned<String>>) -> Result<PathBuf, ConfigError> {
    let value = src.required(raw, "shared_root")?;
    let path = resolve(src, folder, value, "shared_root")?;
    // Checked here rather than at first use: a server started on an unmounted
    // share would otherwise run, see empty hotfolders, and look healthy.
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(src.at(value, "shared_root", format!("{} is not a directory", path.display()))),
        Err(e) => Err(src.at(value, "shared_root", format!("shared root {} is not usable: {e}", path.display()))),
    }
}

// ---------------------------------------------------------------------------
// [timing]

fn timing(src: &Source<'_>, raw: Option<&Spanned<RawTiming>>) -> Result<Timing, ConfigError> {
    let d = Timing::default();
    let Some(raw) = raw else { return Ok(d) };
    let raw = raw.get_ref();
    let t = Timing {
        tick_ms: timing_value(src, &raw.tick_ms, "tick_ms", d.tick_ms)?,
        heartbeat_ms: timing_value(src, &raw.heartbeat_ms, "heartbeat_ms", d.heartbeat_ms)?,
        election_ms: timing_value(src, &raw.election_ms, "election_ms", d.election_ms)?,
        node_timeout_ms: timing_value(src, &raw.node_timeout_ms, "node_timeout_ms", d.node_timeout_ms)?,
        discovery_ms: timing_value(src, &raw.discovery_ms, "discovery_ms", d.discovery_ms)?,
    };
    // The driver acts only on ticks, so a heartbeat shorter than a tick cannot be kept.
    if t.tick_ms > t.heartbeat_ms {
        let message = format!("tick_ms ({}) must not exceed heartbeat_ms ({})", t.tick_ms, t.heartbeat_ms);
        return Err(timing_blame(src, (&raw.tick_ms, "tick_ms"), (&raw.heartbeat_ms, "heartbeat_ms"), message));
    }
    // Followers must miss at least two heartbeats before they call an election,
    // or one delayed packet changes the coordinator.
    if t.election_ms < 2 * t.heartbeat_ms {
        let message =
            format!("election_ms ({}) must be at least twice heartbeat_ms ({})", t.election_ms, t.heartbeat_ms);
        return Err(timing_blame(src, (&raw.heartbeat_ms, "heartbeat_ms"), (&raw.election_ms, "election_ms"), message));
    }
    // A node timeout within one heartbeat would declare healthy peers down.
    if t.node_timeout_ms <= t.heartbeat_ms {
        let message =
            format!("node_timeout_ms ({}) must exceed heartbeat_ms ({})", t.node_timeout_ms, t.heartbeat_ms);
        return Err(timing_blame(
            src,
            (&raw.heartbeat_ms, "heartbeat_ms"),
            (&raw.node_timeout_ms, "node_timeout_ms"),
            message,
        ));
    }
    Ok(t)
}

fn timing_value(src: &Source<'_>, raw: &Option<Spanned<i64>>, key: &str, default: u64) -> Result<u64, ConfigError> {
    let Some(value) = raw else { return Ok(default) };
    match u64::try_from(*value.get_ref()) {
        Ok(ms) if (1..=TIMING_MAX_MS).contains(&ms) => Ok(ms),
        _ => Err(src.at(value, &format!("timing.{key}"), format!("{} out of range 1..={TIMING_MAX_MS}", value.get_ref()))),
    }
}

/// An error about two timing keys, at the line of the second if it is in the
/// file, else of the first (at least one is: the defaults are consistent).
fn timing_blame(
    src: &Source<'_>,
    first: (&Option<Spanned<i64>>, &str),
    second: (&Option<Spanned<i64>>, &str),
    message: String,
) -> ConfigError {
    let (value, key) = if second.0.is_some() { second } else { first };
    let span = value.as_ref().map(Spanned::span);
    src.err(span, Some(&format!("timing.{key}")), message)
}

// ---------------------------------------------------------------------------
// [[server]]

fn servers(src: &Source<'_>, raw: &[Spanned<RawServer>], port: u16) -> Result<Vec<ServerConf>, ConfigError> {
    if raw.is_empty() {
        return Err(src.err(None, Some("server"), "no [[server]] table: at least one is required"));
    }
    if raw.len() > SERVERS_MAX {
        let message = format!("{} [[server]] tables, at most {SERVERS_MAX} allowed", raw.len());
        return Err(src.err(Some(raw[SERVERS_MAX].span()), Some("server"), message));
    }
    let mut servers = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    for entry in raw {
        let server = server(src, entry, port)?;
        let r = entry.get_ref();
        let name_line = r.name.as_ref().map_or(0, |n| line_of(src.text, n.span().start));
        if let Some(first) = names.insert(server.name.clone(), name_line) {
            let message = format!("duplicate server name `{}` (first at line {first})", server.name);
            return Err(src.err(r.name.as_ref().map(Spanned::span), Some("server.name"), message));
        }
        if let Some(first) = addresses.insert(server.address, server.name.clone()) {
            let message = format!("duplicate server address {} (also server `{first}`)", server.address);
            return Err(src.err(r.address.as_ref().map(Spanned::span), Some("server.address"), message));
        }
        servers.push(server);
    }
    if servers.iter().all(|s| s.role == Role::Witness) {
        // Witnesses never coordinate, so such a cluster could never elect one.
        let span = raw[0].get_ref().role.as_ref().map_or(raw[0].span(), Spanned::span);
        return Err(src.err(Some(span), Some("server.role"), "every server is a witness: at least one needs role \"server\""));
    }
    Ok(servers)
}

fn server(src: &Source<'_>, entry: &Spanned<RawServer>, port: u16) -> Result<ServerConf, ConfigError> {
    let r = entry.get_ref();
    // A missing key is not in the file: point at the [[server]] table instead.
    let missing = |key: &str| src.err(Some(entry.span()), Some(key), "missing (required)");
    let name = r.name.as_ref().ok_or_else(|| missing("server.name"))?;
    check_server_name(name.get_ref()).map_err(|m| src.at(name, "server.name", m))?;
    let address = r.address.as_ref().ok_or_else(|| missing("server.address"))?;
    let address_value = parse_address(address.get_ref(), port).map_err(|m| src.at(address, "server.address", m))?;
    let slots = match &r.slots {
        None => SLOTS_DEFAULT,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=SLOTS_MAX).contains(&n) => n,
            _ => return Err(src.at(v, "server.slots", format!("{} out of range 1..={SLOTS_MAX}", v.get_ref()))),
        },
    };
    let role = match &r.role {
        None => Role::Server,
        Some(v) => match v.get_ref().as_str() {
            "server" => Role::Server,
            "witness" => Role::Witness,
            other => {
                return Err(src.at(v, "server.role", format!("unknown role {other:?}: \"server\" or \"witness\"")));
            }
        },
    };
    Ok(ServerConf { name: name.get_ref().clone(), address: address_value, slots, role })
}

/// Server names become DNS names in TLS certificates (RFC 1123 labels), so
/// they are held to that: lowercase letters, digits, inner hyphens.
fn check_server_name(name: &str) -> Result<(), String> {
    let rule = format!(
        "1 to {SERVER_NAME_MAX_CHARS} characters among a-z 0-9 -, starting with a letter, not ending with -"
    );
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts = name.starts_with(|c: char| c.is_ascii_lowercase());
    if name.len() > SERVER_NAME_MAX_CHARS || !ok_chars || !starts || name.ends_with('-') {
        return Err(format!("bad server name {name:?}: {rule}"));
    }
    if name == RESERVED_SERVER_NAME {
        return Err(format!("server name {name:?} is reserved for the command-line client's certificate"));
    }
    Ok(())
}

/// `IP` (with the cluster port) or `IP:PORT` (`[v6]:PORT` for IPv6).
fn parse_address(text: &str, port: u16) -> Result<SocketAddr, String> {
    let address = match (text.parse::<IpAddr>(), text.parse::<SocketAddr>()) {
        (Ok(ip), _) => SocketAddr::new(ip, port),
        (_, Ok(address)) => address,
        _ => {
            // Names are refused because every server must resolve them alike
            // and certificates are checked against the configured address.
            return Err(format!(
                "not an IP address: {text:?} (write IP or IP:PORT; hostnames are not accepted)"
            ));
        }
    };
    if address.port() == 0 {
        return Err(format!("port 0 in {text:?}: the port must be 1..=65535"));
    }
    if address.ip().is_unspecified() || address.ip().is_multicast() {
        return Err(format!("{text:?} is not an address other servers can reach"));
    }
    Ok(address)
}

// ---------------------------------------------------------------------------

/// A commented config skeleton (for `claro init`). `servers` are
/// (name, address) pairs, written as given; the result parses with
/// [`Config::parse`] when the shared root exists and the pairs are valid.
pub fn render(cluster: &str, port: u16, shared_root: &str, data_dir: &str, servers: &[(String, String)]) -> String {
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
# Cluster CA and certificates, written by `claro init`.
# tls_dir = \"{TLS_DIR_DEFAULT}\"

# Timing, in milliseconds (the defaults are shown).
[timing]
tick_ms = {tick}
heartbeat_ms = {heartbeat}
election_ms = {election}
node_timeout_ms = {node_timeout}
discovery_ms = {discovery}

# One [[server]] per instance. name: a-z 0-9 - (a DNS name in its certificate);
# address: IP or IP:PORT; slots: parallel jobs (1..={SLOTS_MAX});
# role: \"server\" or \"witness\" (votes and holds the database, runs no jobs).
",
        c = quote(cluster),
        s = quote(shared_root),
        dd = quote(data_dir),
        tick = d.tick_ms,
        heartbeat = d.heartbeat_ms,
        election = d.election_ms,
        node_timeout = d.node_timeout_ms,
        discovery = d.discovery_ms,
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
}
