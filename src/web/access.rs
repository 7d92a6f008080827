//! Who may do what over HTTP: API tokens and their roles, dashboard
//! sessions with their CSRF tokens, and the limit on failed logins. Pure:
//! time comes in as arguments, randomness as bytes; the HTTP shell
//! (`node::web`) stores, looks up and answers.
//!
//! A token is shown once, when it is made (`claro token add`); the cluster
//! keeps only its SHA-256 (replicated, `state::tokens`), so a copy of the
//! database does not give access.

use std::collections::HashMap;
use std::net::IpAddr;

/// Prefix of every token: recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "claro_";
/// Token names: like server names.
pub const TOKEN_NAME_BYTES_MAX: usize = 64;
/// Tokens a cluster keeps.
pub const TOKENS_MAX: usize = 1_000;
/// Failed logins (wrong or unknown token) per client address per minute.
pub const FAILED_LOGINS_PER_MINUTE_MAX: u32 = 10;
/// Addresses remembered by the login limiter.
pub const LIMITED_ADDRESSES_MAX: usize = 10_000;
/// Dashboard sessions one instance keeps, and how long one lasts.
pub const SESSIONS_MAX: usize = 10_000;
pub const SESSION_MS: u64 = 12 * 3600 * 1000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also submits, cancels, retries, pauses and resumes hotfolders.
    Operator,
    /// Also changes servers, scripts, hotfolder definitions, settings and tokens.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
    /// Whether this role may do what needs `need`.
    pub fn may(self, need: Role) -> bool {
        self >= need
    }
}

/// The role a request to the HTTP API takes, from its method and its path
/// under `/api/v1/` (`parts`): viewers read (tokens are an admin's),
/// operators run work, admins change the cluster. With `submit_role`, the
/// one place where the API's roles are decided (docs/SECURITY.md).
pub fn route_role(method: &str, parts: &[&str]) -> Role {
    let read = method == "GET";
    let first = parts.first().copied();
    let admin_area = matches!(
        first,
        Some("servers" | "coordinator" | "settings" | "tokens")
    ) || (first == Some("scripts") && !read)
        || (first == Some("hotfolders") && parts.len() <= 2 && !read);
    if admin_area && (!read || first == Some("tokens")) {
        return Role::Admin;
    }
    if read {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The role a job submission takes. Running code is an admin's power:
/// code sent with the request (an inline script, a command) needs an admin;
/// a stored script, which an admin put in the cluster, may be run with
/// arguments by an operator. Code that runs from there (`run`, `submit`,
/// `kv_set` inside the script) is the admin's code, so the host functions
/// need no check of their own.
pub fn submit_role(code_in_request: bool) -> Role {
    if code_in_request {
        Role::Admin
    } else {
        Role::Operator
    }
}

/// Whether a request's `Host` header names this instance: one of `names`
/// (its configured host, its address, its server name, `localhost` on a
/// loopback address, and the config's `http_hosts`), with this instance's
/// port or none. Anything else is refused (421): a page served from another
/// name whose DNS now points here (DNS rebinding) is not this instance's.
pub fn host_allowed(host: Option<&str>, names: &[String], port: u16) -> Result<(), String> {
    let host = host.ok_or("the request has no Host header")?;
    let (name, host_port) = split_host_port(host);
    let port_ok = host_port.is_none_or(|p| p == port.to_string());
    let name_ok = names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if port_ok && name_ok {
        return Ok(());
    }
    Err(format!(
        "Host {host:?} does not name this instance (it answers to {} on port {port}; add a name to http_hosts in ClaroServers.conf)",
        names.join(", ")
    ))
}

/// Whether an `Origin` header is this instance's own dashboard: a scheme,
/// then a host that `host_allowed` accepts. Browsers set it on every
/// cross-site request and scripts cannot change it, so a state-changing
/// request with a foreign origin is refused whatever else it carries.
pub fn origin_allowed(origin: &str, names: &[String], port: u16) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let (name, origin_port) = split_host_port(rest);
    let origin_port = match origin_port {
        Some(p) => p.parse::<u16>().ok(),
        None => Some(default_port),
    };
    origin_port == Some(port) && names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// `host[:port]` or `[v6]:port` into the name (brackets kept off) and port.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, tail)) => (v6, tail.strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port)),
        _ => (host, None),
    }
}

/// A new token from 32 random bytes: `claro_` and 64 hex digits.
pub fn new_token(random: [u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}", hex(&random))
}

/// What the cluster stores of a token.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// A token's form, checked before it is hashed and looked up.
pub fn check_token_form(token: &str) -> Result<(), &'static str> {
    let digits = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or("not a claro token")?;
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not a claro token");
    }
    Ok(())
}

pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= TOKEN_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?}: 1 to {TOKEN_NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts failed logins per client address in fixed one-minute windows.
#[derive(Default)]
pub struct LoginLimiter {
    /// address -> (window start, failures in it)
    failures: HashMap<IpAddr, (u64, u32)>,
}

impl LoginLimiter {
    /// Whether `from` may try to log in at `now_ms`.
    pub fn allows(&self, from: IpAddr, now_ms: u64) -> bool {
        match self.failures.get(&from) {
            Some(&(start, count)) if now_ms < start + 60_000 => {
                count < FAILED_LOGINS_PER_MINUTE_MAX
            }
            _ => true,
        }
    }

    pub fn failed(&mut self, from: IpAddr, now_ms: u64) {
        if self.failures.len() >= LIMITED_ADDRESSES_MAX {
            self.failures
                .retain(|_, &mut (start, _)| now_ms < start + 60_000);
        }
        if self.failures.len() >= LIMITED_ADDRESSES_MAX {
            return; // full of fresh entries: the new address is not limited
        }
        let entry = self.failures.entry(from).or_insert((now_ms, 0));
        if now_ms >= entry.0 + 60_000 {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
    }

    /// Takes back one failure counted by `failed` (a token that turned out
    /// to be known once the replica caught up).
    pub fn refund(&mut self, from: IpAddr) {
        if let Some(entry) = self.failures.get_mut(&from) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

/// One dashboard login: the token's name and role, until when, and the
/// CSRF token every state-changing request must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The SHA-256 of the token it logged in with: a session lasts only as
    /// long as its token (revoking the token ends it).
    pub token_hash: String,
    pub role: Role,
    pub csrf: String,
    pub expires_ms: u64,
}

/// The sessions of one instance (a restarted instance asks to log in again).
#[derive(Default)]
pub struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// A new session; returns its id (the cookie's value).
    pub fn open(
        &mut self,
        token_hash: &str,
        role: Role,
        random: [[u8; 32]; 2],
        now_ms: u64,
    ) -> String {
        if self.by_id.len() >= SESSIONS_MAX {
            self.by_id.retain(|_, s| s.expires_ms > now_ms);
        }
        if self.by_id.len() >= SESSIONS_MAX {
            // Still full: the session closest to its end goes.
            let oldest = self
                .by_id
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.by_id.remove(&k);
            }
        }
        let id = hex(&random[0]);
        let session = Session {
            token_hash: token_hash.to_string(),
            role,
            csrf: hex(&random[1]),
            expires_ms: now_ms + SESSION_MS,
        };
        self.by_id.insert(id.clone(), session);
        assert!(self.by_id.len() <= SESSIONS_MAX);
        id
    }

    pub fn get(&self, id: &str, now_ms: u64) -> Option<&Session> {
        self.by_id.get(id).filter(|s| s.expires_ms > now_ms)
    }

    pub fn close(&mut self, id: &str) {
        self.by_id.remove(id);
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Admin.may(Role::Operator));
        assert!(Role::Operator.may(Role::Viewer));
        assert!(!Role::Viewer.may(Role::Operator));
        assert!(!Role::Operator.may(Role::Admin));
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn tokens_have_one_form_and_only_their_hash_is_kept() {
        let t = new_token([7; 32]);
        assert!(check_token_form(&t).is_ok());
        assert_eq!(token_hash(&t).len(), 64);
        assert_ne!(token_hash(&t), token_hash(&new_token([8; 32])));
        for bad in ["", "claro_", "claro_xyz", &t[1..], &format!("{t}0")] {
            assert!(check_token_form(bad).is_err(), "{bad}");
        }
        assert!(check_token_name("ci-bot.1").is_ok());
        assert!(check_token_name("a b").is_err() && check_token_name("").is_err());
    }

    #[test]
    fn failed_logins_are_limited_per_address_per_minute() {
        let mut l = LoginLimiter::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..FAILED_LOGINS_PER_MINUTE_MAX {
            assert!(l.allows(a, 1000));
            l.failed(a, 1000);
        }
        assert!(!l.allows(a, 1000));
        l.refund(a); // one turned out to be a known token
        assert!(l.allows(a, 1000));
        l.failed(a, 1000);
        assert!(!l.allows(a, 1000));
        assert!(l.allows(b, 1000), "another address is not limited");
        assert!(l.allows(a, 61_000), "a new minute");
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let mut s = Sessions::default();
        let id = s.open("ops", Role::Operator, [[1; 32], [2; 32]], 0);
        assert_eq!(s.get(&id, 10).unwrap().role, Role::Operator);
        assert!(s.get(&id, SESSION_MS).is_none());
        s.close(&id);
        assert!(s.get(&id, 10).is_none());
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }

    #[test]
    fn only_this_instances_names_pass_as_host() {
        let names: Vec<String> = ["127.0.0.1", "localhost", "srv1", "claro.example.com"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for ok in [
            "127.0.0.1:7901",
            "127.0.0.1",
            "localhost:7901",
            "LOCALHOST:7901",
            "srv1:7901",
            "claro.example.com",
        ] {
            assert!(host_allowed(Some(ok), &names, 7901).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:7901",
            "evil.example",
            "127.0.0.1:8080",
            "127.0.0.1.evil.example:7901",
            "",
            "[::1]:7901",
        ] {
            let e = host_allowed(Some(bad), &names, 7901).unwrap_err();
            assert!(e.contains("http_hosts"), "{bad}: {e}");
        }
        assert!(host_allowed(None, &names, 7901).is_err());
        let v6 = vec!["::1".to_string()];
        assert!(host_allowed(Some("[::1]:7901"), &v6, 7901).is_ok());
    }

    #[test]
    fn only_this_instances_own_pages_pass_as_origin() {
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        assert!(origin_allowed("http://127.0.0.1:7901", &names, 7901));
        assert!(origin_allowed("https://localhost:7901", &names, 7901));
        assert!(origin_allowed("https://localhost", &names, 443));
        for bad in [
            "http://evil.example:7901",
            "http://127.0.0.1:8000",
            "http://127.0.0.1",
            "null",
            "file://",
            "http://127.0.0.1:7901.evil",
        ] {
            assert!(!origin_allowed(bad, &names, 7901), "{bad}");
        }
    }

    #[test]
    fn code_in_a_request_takes_an_admin() {
        assert_eq!(submit_role(true), Role::Admin);
        assert_eq!(submit_role(false), Role::Operator);
        assert!(!Role::Operator.may(submit_role(true)));
        assert!(Role::Operator.may(submit_role(false)));
        assert!(!Role::Viewer.may(submit_role(false)));
    }
}
