//! `claro cert revoke` and `claro cert revoked`: the cluster's deny list of
//! certificates, as the operator drives it. A revocation is a replicated
//! write (`Command::CertRevoke`); every instance refuses the certificate at
//! its next handshake and closes the connections that use it.

use std::path::Path;

use crate::cli::client::{call, failure_of, ClientArgs};
use crate::cli::exit::Failure;
use crate::cli::output;
use crate::config::Config;
use crate::proto::{new_request_id, Request, Response};
use crate::state::revoked::Revoked;
use crate::state::Command;
use crate::tls::revocation::{fingerprint_hex, parse_fingerprint, Fingerprint, REVOKED_COUNT_MAX};
use crate::tls::{self, CLIENT_NAME};

/// `claro cert revoke NAME|FINGERPRINT` or `--replaced`.
pub fn revoke(
    config: &Config,
    client: &ClientArgs,
    target: Option<&str>,
    replaced: bool,
) -> Result<(), Failure> {
    let wanted = wanted(config, target, replaced)?;
    refuse_own(config, &wanted)?;
    let known = list_all(config, client)?;
    let fresh: Vec<&(Fingerprint, String)> = wanted
        .iter()
        .filter(|(fp, _)| !known.iter().any(|r| r.fingerprint == fingerprint_hex(fp)))
        .collect();
    if known.len() + fresh.len() > REVOKED_COUNT_MAX {
        return Err(Failure::usage(format!(
            "the cluster keeps at most {REVOKED_COUNT_MAX} revoked certificates; it has {}",
            known.len()
        )));
    }
    for (fp, name) in &fresh {
        let command = Command::CertRevoke {
            fingerprint: fingerprint_hex(fp),
            name: name.clone(),
            at_ms: crate::clock::now_ms(),
        };
        crate::cli::jobs::write(config, client, command, new_request_id())?;
    }
    if replaced {
        tls::clear_replaced(&config.tls_dir).map_err(|e| Failure::failed(e.to_string()))?;
    }
    report(client, &wanted, &fresh)
}

fn report(
    client: &ClientArgs,
    wanted: &[(Fingerprint, String)],
    fresh: &[&(Fingerprint, String)],
) -> Result<(), Failure> {
    let rows: Vec<(&str, String, bool)> = wanted
        .iter()
        .map(|(fp, name)| {
            let already = !fresh.iter().any(|f| f.0 == *fp);
            (name.as_str(), fingerprint_hex(fp), already)
        })
        .collect();
    if client.json {
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, fp, already)| {
                serde_json::json!({"name": name, "fingerprint": fp, "already_revoked": already})
            })
            .collect();
        return output::emit(&output::json_line(&values));
    }
    let mut out = String::new();
    for (name, fp, already) in &rows {
        let how = if *already {
            "already revoked"
        } else {
            "revoked"
        };
        out.push_str(&format!("{name} {fp}: {how}\n"));
    }
    output::emit(&out)
}

/// The certificates to revoke: one named (a server of the config or
/// `client`, read from the tls folder) or given by fingerprint, or those
/// `claro cert rotate` replaced.
fn wanted(
    config: &Config,
    target: Option<&str>,
    replaced: bool,
) -> Result<Vec<(Fingerprint, String)>, Failure> {
    match (target, replaced) {
        (Some(t), false) => Ok(vec![resolve(config, t)?]),
        (None, true) => {
            let list = tls::read_replaced(&config.tls_dir).map_err(|e| Failure::usage(e.to_string()))?;
            if list.is_empty() {
                return Err(Failure::usage(format!(
                    "no replaced certificates are noted in {} (`claro cert rotate` notes them)",
                    config.tls_dir.display()
                )));
            }
            Ok(list)
        }
        _ => Err(Failure::usage(
            "name a certificate (a server of the config, `client`, or a SHA-256 fingerprint) or give --replaced, not both",
        )),
    }
}

fn resolve(config: &Config, target: &str) -> Result<(Fingerprint, String), Failure> {
    if let Ok(fp) = parse_fingerprint(target) {
        return Ok((fp, "fingerprint".to_string()));
    }
    if target != CLIENT_NAME && config.server(target).is_none() {
        return Err(Failure::usage(format!(
            "`{target}` is neither a server of {}, `{CLIENT_NAME}`, nor a SHA-256 fingerprint",
            config.path.display()
        )));
    }
    let path = tls::cert_file(&config.tls_dir, target);
    Ok((file_fingerprint(&path)?, target.to_string()))
}

fn file_fingerprint(path: &Path) -> Result<Fingerprint, Failure> {
    let facts = tls::file_facts(path).map_err(|e| Failure::usage(e.to_string()))?;
    parse_fingerprint(&facts.fingerprint).map_err(Failure::failed)
}

/// Revoking the certificate this CLI presents would lock the operator out
/// of the cluster: rotate first, then revoke the replaced one.
fn refuse_own(config: &Config, wanted: &[(Fingerprint, String)]) -> Result<(), Failure> {
    let own = file_fingerprint(&tls::cert_file(&config.tls_dir, CLIENT_NAME))?;
    if wanted.iter().any(|(fp, _)| *fp == own) {
        return Err(Failure::usage(format!(
            "{} is the certificate this command presents: revoking it would lock you out; run `claro cert rotate`, restart the servers with their new files, then `claro cert revoke --replaced`",
            fingerprint_hex(&own)
        )));
    }
    Ok(())
}

fn list_all(config: &Config, client: &ClientArgs) -> Result<Vec<Revoked>, Failure> {
    match call(config, client, &Request::Revoked)?.1 {
        Response::Revoked { revoked } => Ok(revoked),
        other => Err(failure_of(other)),
    }
}

/// `claro cert revoked`: the cluster's revoked certificates, oldest first.
pub fn list(config: &Config, client: &ClientArgs) -> Result<(), Failure> {
    let revoked = list_all(config, client)?;
    if client.json {
        return output::emit(&output::json_line(&revoked));
    }
    let mut out = format!("{:<64} {:<24} REVOKED\n", "FINGERPRINT", "NAME");
    for r in &revoked {
        let at = crate::contract::rfc3339(r.revoked_ms);
        out.push_str(&format!("{:<64} {:<24} {at}\n", r.fingerprint, r.name));
    }
    output::emit(&out)
}
