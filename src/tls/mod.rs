//! The cluster's PKI and the rustls configurations built on it.
//!
//! `claro init` makes one private CA per cluster (rcgen) and signs with it a
//! certificate per server (names: the server's config name, which is what
//! connections verify, and its configured host: an IP address or a DNS name)
//! and one for the CLI (name: [`CLIENT_NAME`]). Every connection is mutual TLS
//! against that CA only: the system trust store is never consulted, so nobody
//! without a certificate from this cluster's CA can join or drive it.
//!
//! The CA's private key lives in a folder of its own (the CA folder), never in
//! the tls folder that is copied to servers: a server needs only `ca.crt` and
//! its own certificate and key, and a stolen server folder cannot mint new
//! identities. Signing (`claro init`, `claro cert add|rotate`, the quickstart's
//! first `serve`) is the only thing that reads the CA folder.
//!
//! This module only reads and writes PEM files and builds configurations; it
//! opens no socket.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::Host;

pub mod revocation;
pub use revocation::DenyList;

/// Name (CN and DNS SAN) of the CLI's certificate; no server may use it.
pub const CLIENT_NAME: &str = "client";
/// Base name of the CA's files (`ca.crt`, `ca.key`); no server may use it.
const CA_NAME: &str = "ca";

/// End-entity certificates (servers', the CLI's) are valid this long:
/// renewing them (`claro cert renew`) is a chore of every other year, and a
/// lost one stops working on its own.
pub const LEAF_VALIDITY_DAYS: i64 = 730;
/// The CA is valid this long: replacing it means new certificates for
/// every server and client (`claro init --force`).
pub const CA_VALIDITY_DAYS: i64 = 7300;
/// Certificates are valid from this long before they are made, so that a
/// server whose clock is a little behind the signer's accepts them.
const BACKDATE_S: i64 = 3600;
/// Certificates that expire within this many days are warned about in
/// `status`, `/metrics` and the dashboard.
pub const EXPIRY_WARN_DAYS: u64 = 30;
/// Replaced certificates remembered for `claro cert revoke --replaced`.
const REPLACED_FILE: &str = "replaced.txt";
/// Lines of `replaced.txt` kept at most (the newest).
const REPLACED_COUNT_MAX: usize = 1000;

/// A certificate chain and its key, with the CA that everything is checked against.
pub struct Identity {
    /// The cluster CA: the only trust anchor, for both directions.
    pub ca: CertificateDer<'static>,
    /// End-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A TLS set-up failure; the message names the file (or item) concerned.
#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn file_error(path: &Path, what: impl fmt::Display) -> TlsError {
    TlsError(format!("{}: {what}", path.display()))
}

fn cert_path(dir: &Path, who: &str) -> PathBuf {
    dir.join(format!("{who}.crt"))
}

fn key_path(dir: &Path, who: &str) -> PathBuf {
    dir.join(format!("{who}.key"))
}

/// The ring provider, passed explicitly so that no process-wide default is
/// installed behind anyone's back.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// Generation
//
// Two folders: the CA folder (`ca.crt`, `ca.key`) stays on the machine that
// signs; the tls folder (`ca.crt`, `<server>.crt` + `.key`, `client.crt` +
// `.key`) is what servers and clients read. The CA's key is only ever
// written to the CA folder, so a copy of the tls folder cannot mint
// identities.

/// The cluster CA, loaded from the CA folder, ready to sign.
pub struct Ca {
    dir: PathBuf,
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Path of the CA's private key in a CA folder.
pub fn ca_key_path(ca_dir: &Path) -> PathBuf {
    key_path(ca_dir, CA_NAME)
}

/// Path of the CA certificate in a CA or tls folder.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    cert_path(dir, CA_NAME)
}

/// The files a server named `who` (or the CLI, [`CLIENT_NAME`]) reads from
/// the tls folder, in the order they are checked.
pub fn files_of(tls_dir: &Path, who: &str) -> [PathBuf; 3] {
    [
        cert_path(tls_dir, CA_NAME),
        cert_path(tls_dir, who),
        key_path(tls_dir, who),
    ]
}

/// The first of [`files_of`] that does not exist.
pub fn first_missing(tls_dir: &Path, who: &str) -> Option<PathBuf> {
    files_of(tls_dir, who).into_iter().find(|p| !p.exists())
}

/// Makes a new CA in `ca_dir` (`ca.crt`, `ca.key`) and signs with it every
/// server's certificate and the client's, written with `ca.crt` to
/// `tls_dir`. Server certificates cover DNS:<name> and the configured host
/// (IP:<ip> or DNS:<host name>); the client's DNS:client. Refuses, naming
/// the first existing file, when any of them exists and `!force`. Key files
/// are 0600. Returns the files written, the CA's first.
pub fn generate(
    tls_dir: &Path,
    ca_dir: &Path,
    cluster: &str,
    servers: &[(String, Host)],
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    check_server_names(servers)?;
    check_apart(tls_dir, ca_dir)?;
    if !force {
        refuse_existing(ca_dir, &[CA_NAME])?;
        let mut names = vec![CA_NAME, CLIENT_NAME];
        names.extend(servers.iter().map(|(name, _)| name.as_str()));
        refuse_existing(tls_dir, &names)?;
    }
    let (ca, mut written) = make_ca(ca_dir, cluster)?;
    // A new CA replaces the old one's certificate (with `force`) first, so
    // that `sign_all` finds the one it signs for.
    fs::create_dir_all(tls_dir).map_err(|e| file_error(tls_dir, e))?;
    let ca_cert = ca_cert_path(tls_dir);
    write_file(&ca_cert, ca.pem.as_bytes(), 0o644)?;
    written.push(ca_cert);
    written.extend(sign_all(&ca, tls_dir, cluster, servers)?);
    Ok(written)
}

/// Signs, with `ca`, a new key and certificate for every server of
/// `servers` and for the client, and installs `ca.crt` in `tls_dir`. Used
/// by `generate` and by `claro cert rotate`: existing files are replaced.
pub fn sign_all(
    ca: &Ca,
    tls_dir: &Path,
    cluster: &str,
    servers: &[(String, Host)],
) -> Result<Vec<PathBuf>, TlsError> {
    check_server_names(servers)?;
    let mut written = install_ca_cert(ca, tls_dir)?
        .into_iter()
        .collect::<Vec<_>>();
    for (name, host) in servers {
        written.extend(issue(ca, tls_dir, cluster, name, Some(host))?);
    }
    written.extend(issue(ca, tls_dir, cluster, CLIENT_NAME, None)?);
    Ok(written)
}

/// The one-machine set-up (`serve` of the quickstart): makes a CA in
/// `ca_dir` when neither folder has one, then signs whatever of `servers`
/// and the client is missing from `tls_dir` (a stray `.key` without its
/// `.crt`, or the reverse, is replaced). Returns the files written.
pub fn provision(
    tls_dir: &Path,
    ca_dir: &Path,
    cluster: &str,
    servers: &[(String, Host)],
) -> Result<Vec<PathBuf>, TlsError> {
    check_server_names(servers)?;
    check_apart(tls_dir, ca_dir)?;
    if !ca_cert_path(tls_dir).exists() && !ca_key_path(ca_dir).exists() {
        return generate(tls_dir, ca_dir, cluster, servers, false);
    }
    let ca = load_ca(ca_dir, cluster)?;
    let mut written: Vec<PathBuf> = install_ca_cert(&ca, tls_dir)?.into_iter().collect();
    let wanted = servers
        .iter()
        .map(|(name, host)| (name.as_str(), Some(host)))
        .chain([(CLIENT_NAME, None)]);
    for (who, host) in wanted {
        if !cert_path(tls_dir, who).exists() || !key_path(tls_dir, who).exists() {
            written.extend(issue(&ca, tls_dir, cluster, who, host)?);
        }
    }
    Ok(written)
}

/// Loads the CA of `ca_dir` for signing. A missing `ca.key` is named with
/// where it should come from; a key that does not match `ca.crt`, or a CA
/// made for another cluster name, is refused naming `ca.crt`.
pub fn load_ca(ca_dir: &Path, cluster: &str) -> Result<Ca, TlsError> {
    let key_file = ca_key_path(ca_dir);
    if !key_file.exists() {
        return Err(file_error(
            &key_file,
            "missing: signing needs the cluster CA's private key, which `claro init` \
             writes to its CA folder (--ca-dir); run this where that folder is",
        ));
    }
    let ca_path = ca_cert_path(ca_dir);
    let pem = fs::read_to_string(&ca_path).map_err(|e| file_error(&ca_path, e))?;
    let der = read_certs(&ca_path)?.swap_remove(0);
    let key_pem = fs::read_to_string(&key_file).map_err(|e| file_error(&key_file, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| file_error(&key_file, e))?;
    let ca = Ca {
        dir: ca_dir.to_path_buf(),
        der,
        pem,
        issuer: Issuer::new(ca_params(cluster), key),
    };
    // rcgen rebuilds the issuer from the key and the cluster name (see
    // `ca_params`): prove once, on a throwaway leaf, that it matches ca.crt.
    let probe = leaf_params(cluster, CLIENT_NAME, None)?
        .signed_by(&new_key_pair()?, &ca.issuer)
        .map_err(|e| TlsError(format!("cannot sign with {}: {e}", key_file.display())))?;
    if let Err(e) = check_chain(&ca.der, probe.der()) {
        let why = format!(
            "does not go with {} ({e}); was it made for cluster \"{cluster}\"?",
            key_file.display()
        );
        return Err(file_error(&ca_path, why));
    }
    Ok(ca)
}

/// Signs a new key and certificate for `who` (a server, with its configured
/// host, or the client, without) and writes them to `tls_dir`, replacing
/// what was there. Returns both paths.
pub fn issue(
    ca: &Ca,
    tls_dir: &Path,
    cluster: &str,
    who: &str,
    host: Option<&Host>,
) -> Result<Vec<PathBuf>, TlsError> {
    let key = new_key_pair()?;
    let pem = sign_leaf(ca, cluster, who, host, &key)?;
    fs::create_dir_all(tls_dir).map_err(|e| file_error(tls_dir, e))?;
    write_pair(tls_dir, who, &pem, &key)
}

/// A certificate for `who`'s `key`, valid `LEAF_VALIDITY_DAYS` from now.
fn sign_leaf(
    ca: &Ca,
    cluster: &str,
    who: &str,
    host: Option<&Host>,
    key: &KeyPair,
) -> Result<String, TlsError> {
    let mut params = leaf_params(cluster, who, host)?;
    set_validity(&mut params, LEAF_VALIDITY_DAYS);
    let cert = params
        .signed_by(key, &ca.issuer)
        .map_err(|e| TlsError(format!("cannot sign the certificate of {who}: {e}")))?;
    Ok(cert.pem())
}

/// Valid from a little before now for `days`, under a random serial (two
/// certificates of one key still differ, and tools that track serials can).
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(BACKDATE_S);
    params.not_after = now + time::Duration::days(days);
    let mut serial: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as DER integers want.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

/// Signs a new certificate for the key `who` already has in `tls_dir`,
/// valid `LEAF_VALIDITY_DAYS` from now; the key stays, so nothing else
/// needs to change where it is used. Returns the certificate's path.
pub fn renew(
    ca: &Ca,
    tls_dir: &Path,
    cluster: &str,
    who: &str,
    host: Option<&Host>,
) -> Result<PathBuf, TlsError> {
    let key_file = key_path(tls_dir, who);
    let key_pem = fs::read_to_string(&key_file).map_err(|e| file_error(&key_file, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| file_error(&key_file, e))?;
    let pem = sign_leaf(ca, cluster, who, host, &key)?;
    let cert_file = cert_path(tls_dir, who);
    write_file(&cert_file, pem.as_bytes(), 0o644)?;
    Ok(cert_file)
}

/// What `claro cert list` and the expiry warnings show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertFacts {
    /// SHA-256 of the DER, lowercase hex (what `claro cert revoke` takes).
    pub fingerprint: String,
    /// The serial number, hex.
    pub serial: String,
    /// Valid until, seconds since the Unix epoch.
    pub not_after_s: u64,
}

/// The facts of one DER certificate.
pub fn facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    Ok(CertFacts {
        fingerprint: revocation::fingerprint_hex(&revocation::fingerprint(der)),
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        not_after_s: u64::try_from(not_after).unwrap_or(0),
    })
}

/// The facts of the first certificate of a PEM file.
pub fn file_facts(path: &Path) -> Result<CertFacts, TlsError> {
    let der = read_certs(path)?.swap_remove(0);
    facts(&der).map_err(|e| file_error(path, e))
}

/// The certificate file of `who` (a server name, `client` or `ca`).
pub fn cert_file(tls_dir: &Path, who: &str) -> PathBuf {
    cert_path(tls_dir, who)
}

/// Whole days from `now_s` until `not_after_s` (negative once expired).
pub fn days_left(not_after_s: u64, now_s: u64) -> i64 {
    (not_after_s as i64 - now_s as i64).div_euclid(86_400)
}

/// What `status` says of certificates `(which, facts)` ("server" or
/// "ca") at `now_s`: the first to expire, when it does within
/// `EXPIRY_WARN_DAYS` or has.
pub fn expiry_note(certs: &[(&str, CertFacts)], now_s: u64) -> Option<String> {
    let (which, facts) = certs.iter().min_by_key(|(_, f)| f.not_after_s)?;
    let days = days_left(facts.not_after_s, now_s);
    let on = crate::contract::rfc3339(facts.not_after_s.saturating_mul(1000));
    let whose = match *which {
        "ca" => "the cluster CA's certificate",
        _ => "its certificate",
    };
    let fix = "`claro cert renew` where the CA folder is, then restart";
    match days {
        _ if facts.not_after_s < now_s => Some(format!("{whose} expired on {on}: {fix}")),
        d if d < EXPIRY_WARN_DAYS as i64 => {
            Some(format!("{whose} expires in {d} days, on {on}: {fix}"))
        }
        _ => None,
    }
}

/// Notes, before `files` are replaced, their certificates' fingerprints in
/// `tls_dir/replaced.txt`, for `claro cert revoke --replaced` once every
/// server runs its new one. Files that do not exist are skipped.
pub fn note_replaced(tls_dir: &Path, whos: &[&str]) -> Result<(), TlsError> {
    let mut lines = read_replaced(tls_dir)?
        .into_iter()
        .map(|(fp, who)| format!("{} {who}", revocation::fingerprint_hex(&fp)))
        .collect::<Vec<_>>();
    for who in whos {
        let path = cert_path(tls_dir, who);
        if path.exists() {
            let der = read_certs(&path)?.swap_remove(0);
            let fp = revocation::fingerprint(&der);
            lines.push(format!("{} {who}", revocation::fingerprint_hex(&fp)));
        }
    }
    let keep_from = lines.len().saturating_sub(REPLACED_COUNT_MAX);
    let text: String = lines[keep_from..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    write_file(&tls_dir.join(REPLACED_FILE), text.as_bytes(), 0o644)
}

/// The certificates `note_replaced` remembered: (fingerprint, whose).
pub fn read_replaced(tls_dir: &Path) -> Result<Vec<(revocation::Fingerprint, String)>, TlsError> {
    let path = tls_dir.join(REPLACED_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(&path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (fp, who) = line.split_once(' ').unwrap_or((line, ""));
        let fp = revocation::parse_fingerprint(fp)
            .map_err(|e| file_error(&path, format!("line {}: {e}", i + 1)))?;
        out.push((fp, who.trim().to_string()));
    }
    Ok(out)
}

/// Forgets the replaced certificates (they are revoked now).
pub fn clear_replaced(tls_dir: &Path) -> Result<(), TlsError> {
    let path = tls_dir.join(REPLACED_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_error(&path, e)),
        _ => Ok(()),
    }
}

/// Writes `tls_dir/ca.crt` when it is missing (returns its path); leaves an
/// identical one alone; refuses, naming it, one of another CA, since
/// everything signed now would be refused by the servers that trust it.
pub fn install_ca_cert(ca: &Ca, tls_dir: &Path) -> Result<Option<PathBuf>, TlsError> {
    let path = ca_cert_path(tls_dir);
    if path.exists() {
        let installed = read_certs(&path)?.swap_remove(0);
        if installed != ca.der {
            let why = format!(
                "is another CA's certificate than {}; refusing to sign for a CA the servers do not trust",
                ca_cert_path(&ca.dir).display()
            );
            return Err(file_error(&path, why));
        }
        return Ok(None);
    }
    fs::create_dir_all(tls_dir).map_err(|e| file_error(tls_dir, e))?;
    write_file(&path, ca.pem.as_bytes(), 0o644)?;
    Ok(Some(path))
}

/// A new CA in `ca_dir`: returns it and the files written.
fn make_ca(ca_dir: &Path, cluster: &str) -> Result<(Ca, Vec<PathBuf>), TlsError> {
    fs::create_dir_all(ca_dir).map_err(|e| file_error(ca_dir, e))?;
    restrict_dir(ca_dir)?;
    let key = new_key_pair()?;
    let mut params = ca_params(cluster);
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError(format!("cannot make the CA certificate: {e}")))?;
    let written = write_pair(ca_dir, CA_NAME, &cert.pem(), &key)?;
    let ca = Ca {
        dir: ca_dir.to_path_buf(),
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    };
    Ok((ca, written))
}

/// The CA folder is the operator's alone (0700): its key file is 0600
/// anyway, this also hides what it holds.
fn restrict_dir(dir: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| file_error(dir, e))?;
    }
    let _ = dir;
    Ok(())
}

/// The CA folder must not be the tls folder (nor inside it): that folder is
/// copied to every server, and the CA's key must not travel with it.
fn check_apart(tls_dir: &Path, ca_dir: &Path) -> Result<(), TlsError> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if absolute(ca_dir).starts_with(absolute(tls_dir)) {
        return Err(file_error(
            ca_dir,
            format!(
                "the CA folder must not be inside the TLS folder {} that is copied to servers",
                tls_dir.display()
            ),
        ));
    }
    Ok(())
}

/// Server names become file names and DNS names: they must be valid DNS
/// names, distinct, and must not collide with the CA's or the client's files.
fn check_server_names(servers: &[(String, Host)]) -> Result<(), TlsError> {
    for (i, (name, _)) in servers.iter().enumerate() {
        if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
            return Err(TlsError(format!(
                "server name \"{name}\" is not a valid DNS name"
            )));
        }
        if name == CA_NAME || name == CLIENT_NAME {
            return Err(TlsError(format!("server name \"{name}\" is reserved")));
        }
        if servers[..i].iter().any(|(other, _)| other == name) {
            return Err(TlsError(format!("server name \"{name}\" appears twice")));
        }
    }
    Ok(())
}

/// Refuses, naming it, the first `<who>.crt` or `<who>.key` in `dir`.
fn refuse_existing(dir: &Path, names: &[&str]) -> Result<(), TlsError> {
    for who in names {
        for path in [cert_path(dir, who), key_path(dir, who)] {
            if path.exists() {
                return Err(file_error(
                    &path,
                    "already exists; refusing to overwrite TLS material (use --force)",
                ));
            }
        }
    }
    Ok(())
}

/// ECDSA P-256: small, fast, and supported by every rustls provider.
fn new_key_pair() -> Result<KeyPair, TlsError> {
    KeyPair::generate().map_err(|e| TlsError(format!("cannot generate a key pair: {e}")))
}

/// CA parameters, a pure function of the cluster name (see `load_ca`).
/// Path length 0: the CA signs end-entity certificates only. Its validity
/// (`CA_VALIDITY_DAYS`) is set where it is made (`make_ca`): signing with
/// a rebuilt issuer needs only its name and key.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("claro {cluster} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A server certificate (with `host`) is used both to accept connections and
/// to open them to peers, so it gets both server and client auth; the CLI's
/// certificate (without `host`) only client auth. Connections verify the
/// config name (DNS:<name>); the host is there for tools that reach the
/// server by its address.
fn leaf_params(
    cluster: &str,
    name: &str,
    host: Option<&Host>,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, format!("claro {cluster}"));
    let dns = name
        .try_into()
        .map_err(|e| TlsError(format!("name \"{name}\" cannot be a certificate name: {e}")))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(host) = host {
        if *host != Host::Name(name.to_owned()) {
            params.subject_alt_names.push(host_san(host)?);
        }
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The subject alternative name of a configured host.
fn host_san(host: &Host) -> Result<SanType, TlsError> {
    match host {
        Host::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        Host::Name(name) => name
            .as_str()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|e| TlsError(format!("host \"{name}\" cannot be a certificate name: {e}"))),
    }
}

/// Writes `<who>.crt` and `<who>.key`; returns both paths.
fn write_pair(
    dir: &Path,
    who: &str,
    cert_pem: &str,
    key: &KeyPair,
) -> Result<Vec<PathBuf>, TlsError> {
    let cert = cert_path(dir, who);
    write_file(&cert, cert_pem.as_bytes(), 0o644)?;
    let key_file = key_path(dir, who);
    write_file(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(vec![cert, key_file])
}

/// Writes a temporary file with its final mode, then renames it into place,
/// so a key is never readable by others (not even while being written) and a
/// crash never leaves a half-written file under the real name.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        // A stale tmp file keeps its old mode: remove it so `mode` applies.
        let _ = fs::remove_file(&tmp);
        let mut file = options.open(&tmp).map_err(|e| file_error(&tmp, e))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| file_error(&tmp, e))?;
        write_and_sync(&mut file, &tmp, contents)?;
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        let mut file = options.open(&tmp).map_err(|e| file_error(&tmp, e))?;
        write_and_sync(&mut file, &tmp, contents)?;
    }
    fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

fn write_and_sync(file: &mut fs::File, path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, e))
}

// ---------------------------------------------------------------------------
// Loading and configurations

/// Loads `dir/ca.crt`, `dir/<who>.crt` and `dir/<who>.key` (`who` is a server
/// name or [`CLIENT_NAME`]) and checks that the certificate chains to the CA,
/// so that a mismatch is reported here, naming the file, rather than as an
/// anonymous handshake failure later.
pub fn load_identity(dir: &Path, who: &str) -> Result<Identity, TlsError> {
    let ca = read_certs(&cert_path(dir, CA_NAME))?.swap_remove(0);
    let chain_path = cert_path(dir, who);
    let chain = read_certs(&chain_path)?;
    let key_file = key_path(dir, who);
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| file_error(&key_file, e))?;
    check_chain(&ca, &chain[0]).map_err(|e| {
        file_error(
            &chain_path,
            format!("not signed by {}: {e}", dir.join("ca.crt").display()),
        )
    })?;
    Ok(Identity { ca, chain, key })
}

/// All certificates of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in this file"));
    }
    Ok(certs)
}

/// Checks the signature path from `leaf` to `ca`, ignoring the key usage:
/// which usage applies depends on the connection, and rustls checks it there.
fn check_chain(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| format!("bad CA: {e}"))?;
    let cert =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("bad certificate: {e}"))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn root_store(id: &Identity) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(id.ca.clone())
        .map_err(|e| TlsError(format!("the cluster CA certificate is unusable: {e}")))?;
    Ok(Arc::new(roots))
}

/// TLS 1.3 only (QUIC requires it), ring provider, client certificates
/// required and checked against the cluster CA, ALPN as given.
/// Client certificates in `deny` are refused.
pub fn server_config(
    id: &Identity,
    alpns: &[&[u8]],
    deny: &DenyList,
) -> Result<rustls::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(root_store(id)?, provider())
        .build()
        .map_err(|e| TlsError(format!("cannot build the client verifier: {e}")))?;
    let verifier = Arc::new(revocation::DenyingClientVerifier {
        inner,
        deny: deny.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(format!("TLS 1.3 unavailable: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError(format!("unusable certificate or key: {e}")))?;
    config.alpn_protocols = alpns.iter().map(|alpn| alpn.to_vec()).collect();
    // No resumption: a resumed session skips the certificate check, so a
    // certificate revoked since its first handshake would still get in.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// HTTPS for the HTTP API and dashboard: the server's own certificate
/// (signed by the cluster CA, for its name and configured host), no client
/// certificate (browsers log in with a token instead), TLS 1.2 and 1.3,
/// ALPN http/1.1.
pub fn https_config(id: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS unavailable: {e}")))?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError(format!("unusable certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS 1.3 only; the server is verified against the cluster CA only (rustls
/// checks its name against the one given to connect), and refused when its
/// certificate is in `deny`; presents `id`.
pub fn client_config(
    id: &Identity,
    alpn: &[u8],
    deny: &DenyList,
) -> Result<rustls::ClientConfig, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(root_store(id)?, provider())
        .build()
        .map_err(|e| TlsError(format!("cannot build the server verifier: {e}")))?;
    let verifier = Arc::new(revocation::DenyingServerVerifier {
        inner,
        deny: deny.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(format!("TLS 1.3 unavailable: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError(format!("unusable certificate or key: {e}")))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    // No resumption, as for servers (`server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// True when the end-entity certificate `der` is valid for DNS name `name`:
/// a peer that says it is "srv2" must hold srv2's certificate. The chain
/// itself was already verified by the TLS handshake.
pub fn cert_is_for(der: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
        return false;
    };
    let Ok(dns) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&dns).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    pub(crate) fn servers(names: &[&str]) -> Vec<(String, Host)> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1));
                (name.to_string(), Host::Ip(ip))
            })
            .collect()
    }

    /// A tls folder and a CA folder beside it, as `claro init` lays them out.
    struct Dirs {
        _root: tempfile::TempDir,
        tls: PathBuf,
        ca: PathBuf,
    }

    fn dirs() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let tls = root.path().join("conf").join("tls");
        let ca = root.path().join("conf-ca");
        Dirs {
            _root: root,
            tls,
            ca,
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn server_certificates_name_the_configured_host() {
        let d = dirs();
        let list = vec![
            ("srv1".to_string(), Host::Name("srv1.example.com".into())),
            ("srv2".to_string(), Host::Ip("192.0.2.7".parse().unwrap())),
            ("srv3".to_string(), Host::Name("srv3".into())),
        ];
        generate(&d.tls, &d.ca, "test", &list, false).unwrap();
        let cert = |who: &str| load_identity(&d.tls, who).unwrap().chain.swap_remove(0);
        // A DNS name goes in as a DNS name, not as an IP or not at all.
        let srv1 = cert("srv1");
        assert!(cert_is_for(&srv1, "srv1"));
        assert!(cert_is_for(&srv1, "srv1.example.com"));
        assert!(!cert_is_for(&srv1, "srv2"));
        // An IP goes in as an IP address name only.
        let srv2 = cert("srv2");
        assert!(cert_is_for(&srv2, "srv2"));
        assert!(cert_is_for(&srv2, "192.0.2.7"));
        assert!(!cert_is_for(&srv2, "srv1.example.com"));
        // A host name equal to the server's name is its one DNS name.
        assert!(cert_is_for(&cert("srv3"), "srv3"));
        // Signing one later (`claro cert add`) does the same.
        fs::remove_file(d.tls.join("srv1.crt")).unwrap();
        let ca = load_ca(&d.ca, "test").unwrap();
        issue(&ca, &d.tls, "test", "srv1", Some(&list[0].1)).unwrap();
        assert!(cert_is_for(&cert("srv1"), "srv1.example.com"));
    }

    #[test]
    fn generate_keeps_the_ca_key_out_of_the_tls_folder() {
        let d = dirs();
        let written = generate(&d.tls, &d.ca, "test", &servers(&["srv1", "srv2"]), false).unwrap();
        assert_eq!(written.len(), 9);
        assert_eq!(names_in(&d.ca), ["ca.crt", "ca.key"]);
        assert_eq!(
            names_in(&d.tls),
            [
                "ca.crt",
                "client.crt",
                "client.key",
                "srv1.crt",
                "srv1.key",
                "srv2.crt",
                "srv2.key"
            ]
        );
        assert_eq!(
            fs::read(d.ca.join("ca.crt")).unwrap(),
            fs::read(d.tls.join("ca.crt")).unwrap()
        );
        // No file of the tls folder holds the CA's key, under any name.
        let ca_key = fs::read_to_string(d.ca.join("ca.key")).unwrap();
        for name in names_in(&d.tls) {
            assert_ne!(
                fs::read_to_string(d.tls.join(&name)).unwrap(),
                ca_key,
                "{name}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&d.tls.join("srv1.key")), 0o600);
            assert_eq!(mode(&d.ca.join("ca.key")), 0o600);
            assert_eq!(mode(&d.ca), 0o700);
        }
        // Each server loads from the tls folder alone.
        for who in ["srv1", "srv2", CLIENT_NAME] {
            load_identity(&d.tls, who).unwrap();
        }
    }

    #[test]
    fn the_ca_folder_may_not_be_the_tls_folder() {
        let d = dirs();
        for ca in [d.tls.clone(), d.tls.join("ca")] {
            let err = generate(&d.tls, &ca, "test", &servers(&["srv1"]), false).unwrap_err();
            assert!(err.to_string().contains("must not be inside"), "{err}");
        }
        assert!(!d.tls.exists());
    }

    #[test]
    fn generate_refuses_to_overwrite_unless_forced() {
        let d = dirs();
        let list = servers(&["srv1"]);
        generate(&d.tls, &d.ca, "test", &list, false).unwrap();
        let before = fs::read(d.ca.join("ca.crt")).unwrap();
        let err = generate(&d.tls, &d.ca, "test", &list, false).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
        // A CA folder alone (tls folder gone) is refused as well.
        fs::remove_dir_all(&d.tls).unwrap();
        let err = generate(&d.tls, &d.ca, "test", &list, false).unwrap_err();
        assert!(err.to_string().contains("conf-ca"), "{err}");
        generate(&d.tls, &d.ca, "test", &list, true).unwrap();
        assert_ne!(before, fs::read(d.ca.join("ca.crt")).unwrap());
    }

    #[test]
    fn bad_server_names_are_refused() {
        let d = dirs();
        for bad in [&["client"][..], &["ca"], &["a/b"], &["srv1", "srv1"]] {
            let err = generate(&d.tls, &d.ca, "test", &servers(bad), false).unwrap_err();
            assert!(err.to_string().contains("server name"), "{err}");
        }
        assert!(!d.ca.exists() && !d.tls.exists());
    }

    #[test]
    fn load_identity_and_names() {
        let d = dirs();
        generate(&d.tls, &d.ca, "test", &servers(&["srv1", "srv2"]), false).unwrap();
        let id = load_identity(&d.tls, "srv1").unwrap();
        assert_eq!(id.chain.len(), 1);
        assert!(cert_is_for(&id.chain[0], "srv1"));
        assert!(!cert_is_for(&id.chain[0], "srv2"));
        assert!(!cert_is_for(&id.chain[0], CLIENT_NAME));
        let client = load_identity(&d.tls, CLIENT_NAME).unwrap();
        assert!(cert_is_for(&client.chain[0], CLIENT_NAME));
        assert!(!cert_is_for(&client.chain[0], "srv1"));
        server_config(&id, &[b"x"], &DenyList::default()).unwrap();
        client_config(&id.clone(), b"x", &DenyList::default()).unwrap();
    }

    #[test]
    fn load_identity_names_the_missing_or_foreign_file() {
        let d = dirs();
        let err = load_identity(&d.tls, "srv1").unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        generate(&d.tls, &d.ca, "test", &servers(&["srv1"]), false).unwrap();
        let err = load_identity(&d.tls, "srv9").unwrap_err();
        assert!(err.to_string().contains("srv9.crt"), "{err}");
        // A certificate from another CA is reported as such.
        let other = dirs();
        generate(&other.tls, &other.ca, "test", &servers(&["srv1"]), false).unwrap();
        fs::copy(other.tls.join("srv1.crt"), d.tls.join("srv1.crt")).unwrap();
        let err = load_identity(&d.tls, "srv1").unwrap_err();
        assert!(err.to_string().contains("not signed by"), "{err}");
    }

    #[test]
    fn first_missing_names_what_a_server_needs() {
        let d = dirs();
        assert_eq!(first_missing(&d.tls, "srv1"), Some(d.tls.join("ca.crt")));
        generate(&d.tls, &d.ca, "test", &servers(&["srv1", "srv2"]), false).unwrap();
        assert_eq!(first_missing(&d.tls, "srv1"), None);
        assert_eq!(first_missing(&d.tls, "srv3"), Some(d.tls.join("srv3.crt")));
        fs::remove_file(d.tls.join("srv2.key")).unwrap();
        assert_eq!(first_missing(&d.tls, "srv2"), Some(d.tls.join("srv2.key")));
        // Another server's files are not needed: srv1 runs without them.
        fs::remove_file(d.tls.join("srv2.crt")).unwrap();
        assert_eq!(first_missing(&d.tls, "srv1"), None);
    }

    #[test]
    fn provision_generates_then_adds_missing_servers() {
        let d = dirs();
        let written = provision(&d.tls, &d.ca, "test", &servers(&["srv1"])).unwrap();
        assert_eq!(written.len(), 7);
        assert!(!d.tls.join("ca.key").exists());
        assert!(provision(&d.tls, &d.ca, "test", &servers(&["srv1"]))
            .unwrap()
            .is_empty());
        let ca_before = fs::read(d.tls.join("ca.crt")).unwrap();
        let srv1_before = fs::read(d.tls.join("srv1.crt")).unwrap();
        let written = provision(&d.tls, &d.ca, "test", &servers(&["srv1", "srv2"])).unwrap();
        assert_eq!(written, [d.tls.join("srv2.crt"), d.tls.join("srv2.key")]);
        assert_eq!(ca_before, fs::read(d.tls.join("ca.crt")).unwrap());
        assert_eq!(srv1_before, fs::read(d.tls.join("srv1.crt")).unwrap());
        assert!(cert_is_for(
            &load_identity(&d.tls, "srv2").unwrap().chain[0],
            "srv2"
        ));
        // Made for another cluster name: refused, naming ca.crt.
        let err = provision(&d.tls, &d.ca, "other", &servers(&["srv1", "srv3"])).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(!d.tls.join("srv3.crt").exists());
    }

    #[test]
    fn signing_without_the_ca_key_is_refused_naming_it() {
        let d = dirs();
        generate(&d.tls, &d.ca, "test", &servers(&["srv1"]), false).unwrap();
        fs::remove_file(d.ca.join("ca.key")).unwrap();
        let err = load_ca(&d.ca, "test").unwrap_err();
        assert!(err.to_string().contains("conf-ca/ca.key"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        let err = provision(&d.tls, &d.ca, "test", &servers(&["srv1", "srv2"])).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
        assert!(!d.tls.join("srv2.crt").exists());
    }

    #[test]
    fn a_ca_key_that_does_not_go_with_its_certificate_is_refused() {
        let d = dirs();
        generate(&d.tls, &d.ca, "test", &servers(&["srv1"]), false).unwrap();
        let other = dirs();
        generate(&other.tls, &other.ca, "test", &servers(&["srv1"]), false).unwrap();
        fs::copy(other.ca.join("ca.key"), d.ca.join("ca.key")).unwrap();
        let err = load_ca(&d.ca, "test").unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(err.to_string().contains("does not go with"), "{err}");
    }

    #[test]
    fn a_tls_folder_of_another_ca_is_not_signed_into() {
        let d = dirs();
        generate(&d.tls, &d.ca, "test", &servers(&["srv1"]), false).unwrap();
        let other = dirs();
        generate(&other.tls, &other.ca, "test", &servers(&["srv1"]), false).unwrap();
        let ca = load_ca(&other.ca, "test").unwrap();
        let err = install_ca_cert(&ca, &d.tls).unwrap_err();
        assert!(err.to_string().contains("another CA"), "{err}");
        let err = sign_all(&ca, &d.tls, "test", &servers(&["srv1"])).unwrap_err();
        assert!(err.to_string().contains("tls/ca.crt"), "{err}");
        load_identity(&d.tls, "srv1").unwrap();
    }

    /// Rotation keeps the CA: old and new certificates both chain to it, so
    /// servers restarted one at a time with new ones still accept the rest.
    #[test]
    fn certificates_last_two_years_under_a_ca_of_twenty() {
        let d = dirs();
        let servers = servers(&["srv1"]);
        generate(&d.tls, &d.ca, "test", &servers, false).unwrap();
        let now_s = crate::clock::now_ms() / 1000;
        let leaf = file_facts(&cert_path(&d.tls, "srv1")).unwrap();
        let ca = file_facts(&cert_path(&d.tls, CA_NAME)).unwrap();
        let client = file_facts(&cert_path(&d.tls, CLIENT_NAME)).unwrap();
        // Whole days: the second the test reads the clock may fall on either side.
        let leaf_days = days_left(leaf.not_after_s, now_s);
        let ca_days = days_left(ca.not_after_s, now_s);
        assert!((LEAF_VALIDITY_DAYS - 1..=LEAF_VALIDITY_DAYS).contains(&leaf_days));
        assert!((CA_VALIDITY_DAYS - 1..=CA_VALIDITY_DAYS).contains(&ca_days));
        assert_ne!(leaf.serial, client.serial, "serials are random");
        assert_eq!(
            expiry_note(&[("server", leaf.clone()), ("ca", ca)], now_s),
            None
        );
    }

    #[test]
    fn renew_keeps_the_key_and_gives_a_new_certificate_that_chains() {
        let d = dirs();
        generate(&d.tls, &d.ca, "test", &servers(&["srv1"]), false).unwrap();
        let key = fs::read(key_path(&d.tls, "srv1")).unwrap();
        let before = file_facts(&cert_path(&d.tls, "srv1")).unwrap();
        let ca = load_ca(&d.ca, "test").unwrap();
        let host = Host::Ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        renew(&ca, &d.tls, "test", "srv1", Some(&host)).unwrap();
        assert_eq!(fs::read(key_path(&d.tls, "srv1")).unwrap(), key);
        let after = file_facts(&cert_path(&d.tls, "srv1")).unwrap();
        assert_ne!(after.fingerprint, before.fingerprint);
        load_identity(&d.tls, "srv1").unwrap();
        // A server without a key has nothing to renew: named, not made.
        let err = renew(&ca, &d.tls, "test", "srv9", Some(&host)).unwrap_err();
        assert!(err.to_string().contains("srv9.key"), "{err}");
    }

    #[test]
    fn expiry_is_noted_thirty_days_ahead_and_after() {
        let facts = |days: i64| CertFacts {
            fingerprint: String::new(),
            serial: String::new(),
            not_after_s: (1_000_000_000 + days * 86_400) as u64,
        };
        let now_s = 1_000_000_000;
        let note = |certs: &[(&str, CertFacts)]| expiry_note(certs, now_s);
        assert_eq!(note(&[("server", facts(31)), ("ca", facts(400))]), None);
        let soon = note(&[("server", facts(29)), ("ca", facts(400))]).unwrap();
        assert!(
            soon.starts_with("its certificate expires in 29 days"),
            "{soon}"
        );
        let ca = note(&[("server", facts(300)), ("ca", facts(3))]).unwrap();
        assert!(
            ca.starts_with("the cluster CA's certificate expires in 3"),
            "{ca}"
        );
        let gone = note(&[("server", facts(-2))]).unwrap();
        assert!(gone.starts_with("its certificate expired on"), "{gone}");
        assert_eq!(note(&[]), None);
    }

    #[test]
    fn rotate_notes_what_it_replaces_for_revocation() {
        let d = dirs();
        generate(&d.tls, &d.ca, "test", &servers(&["srv1"]), false).unwrap();
        let old = file_facts(&cert_path(&d.tls, CLIENT_NAME)).unwrap();
        note_replaced(&d.tls, &["srv1", CLIENT_NAME, "missing"]).unwrap();
        let noted = read_replaced(&d.tls).unwrap();
        assert_eq!(noted.len(), 2);
        assert_eq!(revocation::fingerprint_hex(&noted[1].0), old.fingerprint);
        assert_eq!(noted[1].1, CLIENT_NAME);
        fs::write(d.tls.join(REPLACED_FILE), "nonsense client\n").unwrap();
        let err = read_replaced(&d.tls).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        clear_replaced(&d.tls).unwrap();
        assert!(read_replaced(&d.tls).unwrap().is_empty());
    }

    #[test]
    fn sign_all_renews_every_certificate_under_the_same_ca() {
        let d = dirs();
        let list = servers(&["srv1", "srv2"]);
        generate(&d.tls, &d.ca, "test", &list, false).unwrap();
        let read = |who: &str| fs::read(d.tls.join(format!("{who}.crt"))).unwrap();
        let before: Vec<_> = ["ca", "srv1", "srv2", "client"].map(read).into();
        let old_srv1 = load_identity(&d.tls, "srv1").unwrap();
        let ca = load_ca(&d.ca, "test").unwrap();
        let written = sign_all(&ca, &d.tls, "test", &list).unwrap();
        assert_eq!(written.len(), 6);
        assert_eq!(read("ca"), before[0]);
        for (i, who) in ["srv1", "srv2", "client"].into_iter().enumerate() {
            assert_ne!(read(who), before[i + 1], "{who} not renewed");
            load_identity(&d.tls, who).unwrap();
        }
        let new_srv1 = load_identity(&d.tls, "srv1").unwrap();
        assert_ne!(old_srv1.key.secret_der(), new_srv1.key.secret_der());
        check_chain(&new_srv1.ca, &old_srv1.chain[0]).unwrap();
    }
}
