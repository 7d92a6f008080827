//! Who may do what over HTTP: API tokens and their roles, dashboard
//! sessions with their CSRF tokens, and the limit on failed logins. Pure:
//! time comes in as arguments, randomness as bytes; the HTTP shell
//! (`node::http`) stores, looks up and answers.
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
}
