//! The cluster's PKI and the rustls configurations built on it.
//!
//! `claro init` makes one private CA per cluster (rcgen) and signs with it a
//! certificate per server (names: the server's config name, which is what
//! connections verify, and its configured host: an IP address or a DNS name)
//! and one for the CLI (name: [`CLIENT_NAME`]). Every connection is mutual TLS
//! against that CA only: the system trust store is never consulted, so nobody
//! without a certificate from this cluster's CA can join or drive it.
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
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::Host;

/// Name (CN and DNS SAN) of the CLI's certificate; no server may use it.
pub const CLIENT_NAME: &str = "client";
/// Base name of the CA's files (`ca.crt`, `ca.key`); no server may use it.
const CA_NAME: &str = "ca";

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

/// Writes `dir/ca.crt`, `dir/ca.key`, `dir/<name>.crt` + `.key` for every
/// server and `dir/client.crt` + `client.key` (PEM). Server certificates cover
/// DNS:<name> and the configured host (IP:<ip> or DNS:<host name>); the
/// client's DNS:client. Refuses, naming the first
/// existing file, when any of them exists and `!force`. Key files are 0600.
pub fn generate(
    dir: &Path,
    cluster: &str,
    servers: &[(String, Host)],
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    check_server_names(servers)?;
    if !force {
        refuse_existing(dir, servers)?;
    }
    fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let ca_key = new_key_pair()?;
    let ca_params = ca_params(cluster);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| TlsError(format!("cannot make the CA certificate: {e}")))?;
    let mut written = write_pair(dir, CA_NAME, &ca_cert.pem(), &ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    for (name, host) in servers {
        let key = new_key_pair()?;
        let cert = leaf_params(cluster, name, Some(host))?
            .signed_by(&key, &issuer)
            .map_err(|e| TlsError(format!("cannot sign the certificate of {name}: {e}")))?;
        written.extend(write_pair(dir, name, &cert.pem(), &key)?);
    }
    let key = new_key_pair()?;
    let cert = leaf_params(cluster, CLIENT_NAME, None)?
        .signed_by(&key, &issuer)
        .map_err(|e| TlsError(format!("cannot sign the client certificate: {e}")))?;
    written.extend(write_pair(dir, CLIENT_NAME, &cert.pem(), &key)?);
    Ok(written)
}

/// Makes everything when `dir/ca.crt` is missing; otherwise signs, with the
/// existing CA (`dir/ca.key` needed), the certificate of every server whose
/// `.crt` is missing (a stray `.key` without its `.crt` is replaced).
/// Returns whether anything was written.
pub fn ensure(dir: &Path, cluster: &str, servers: &[(String, Host)]) -> Result<bool, TlsError> {
    if !cert_path(dir, CA_NAME).exists() {
        generate(dir, cluster, servers, false)?;
        return Ok(true);
    }
    let missing: Vec<_> = servers
        .iter()
        .filter(|(name, _)| !cert_path(dir, name).exists())
        .collect();
    if missing.is_empty() || !key_path(dir, CA_NAME).exists() {
        return Ok(false);
    }
    check_server_names(servers)?;
    let (ca_der, issuer) = load_issuer(dir, cluster)?;
    for (name, host) in missing {
        sign_server_with(dir, cluster, &ca_der, &issuer, name, host)?;
    }
    Ok(true)
}

/// Signs and writes one server's certificate, after checking that it really
/// chains to `ca.crt` (it does not when `ca.crt` was made for another cluster
/// name, since the issuer name is rebuilt from `cluster`).
fn sign_server_with(
    dir: &Path,
    cluster: &str,
    ca_der: &CertificateDer<'static>,
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    host: &Host,
) -> Result<(), TlsError> {
    let key = new_key_pair()?;
    let cert = leaf_params(cluster, name, Some(host))?
        .signed_by(&key, issuer)
        .map_err(|e| TlsError(format!("cannot sign the certificate of {name}: {e}")))?;
    if let Err(e) = check_chain(ca_der, cert.der()) {
        let ca = cert_path(dir, CA_NAME);
        let why = format!("cannot sign for server {name} with this CA ({e}); was it made for cluster \"{cluster}\"?");
        return Err(file_error(&ca, why));
    }
    write_pair(dir, name, &cert.pem(), &key)?;
    Ok(())
}

/// Rebuilds the CA issuer from `ca.key` and the CA's parameters: rcgen 0.14
/// cannot parse an existing certificate without the x509-parser feature, and
/// the parameters (subject, key usages) are fully determined by `cluster`.
fn load_issuer(
    dir: &Path,
    cluster: &str,
) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), TlsError> {
    let ca_path = cert_path(dir, CA_NAME);
    let ca_der = read_certs(&ca_path)?.swap_remove(0);
    let ca_key_path = key_path(dir, CA_NAME);
    let pem = fs::read_to_string(&ca_key_path).map_err(|e| file_error(&ca_key_path, e))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| file_error(&ca_key_path, e))?;
    Ok((ca_der, Issuer::new(ca_params(cluster), key)))
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

fn refuse_existing(dir: &Path, servers: &[(String, Host)]) -> Result<(), TlsError> {
    let names = [CA_NAME, CLIENT_NAME]
        .into_iter()
        .chain(servers.iter().map(|(name, _)| name.as_str()));
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

/// CA parameters, a pure function of the cluster name (see `load_issuer`).
/// Path length 0: the CA signs end-entity certificates only. Validity is
/// rcgen's default (1975-4096): the CA is private to the cluster, and
/// replacing it is done by `claro init --force`, not by expiry.
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
pub fn server_config(id: &Identity, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(root_store(id)?, provider())
        .build()
        .map_err(|e| TlsError(format!("cannot build the client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(format!("TLS 1.3 unavailable: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError(format!("unusable certificate or key: {e}")))?;
    config.alpn_protocols = alpns.iter().map(|alpn| alpn.to_vec()).collect();
    Ok(config)
}

/// TLS 1.3 only; the server is verified against the cluster CA only (rustls
/// checks its name against the one given to connect); presents `id`.
pub fn client_config(id: &Identity, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(format!("TLS 1.3 unavailable: {e}")))?
        .with_root_certificates(root_store(id)?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError(format!("unusable certificate or key: {e}")))?;
    config.alpn_protocols = vec![alpn.to_vec()];
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

    #[test]
    fn server_certificates_name_the_configured_host() {
        let dir = tempfile::tempdir().unwrap();
        let list = vec![
            ("srv1".to_string(), Host::Name("srv1.example.com".into())),
            ("srv2".to_string(), Host::Ip("192.0.2.7".parse().unwrap())),
            ("srv3".to_string(), Host::Name("srv3".into())),
        ];
        generate(dir.path(), "test", &list, false).unwrap();
        let cert = |who: &str| load_identity(dir.path(), who).unwrap().chain.swap_remove(0);
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
        // The missing-material path (`serve` on one machine) does the same.
        fs::remove_file(dir.path().join("srv1.crt")).unwrap();
        assert!(ensure(dir.path(), "test", &list).unwrap());
        assert!(cert_is_for(&cert("srv1"), "srv1.example.com"));
    }

    #[test]
    fn generate_writes_every_file_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let written = generate(&tls, "test", &servers(&["srv1", "srv2"]), false).unwrap();
        assert_eq!(written.len(), 8);
        for file in ["ca", "srv1", "srv2", "client"] {
            assert!(written.contains(&tls.join(format!("{file}.crt"))));
            assert!(written.contains(&tls.join(format!("{file}.key"))));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(tls.join("srv1.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!tls.join("srv1.tmp").exists());
    }

    #[test]
    fn generate_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let list = servers(&["srv1"]);
        generate(dir.path(), "test", &list, false).unwrap();
        let before = fs::read(dir.path().join("ca.crt")).unwrap();
        let err = generate(dir.path(), "test", &list, false).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
        generate(dir.path(), "test", &list, true).unwrap();
        assert_ne!(before, fs::read(dir.path().join("ca.crt")).unwrap());
    }

    #[test]
    fn bad_server_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [&["client"][..], &["ca"], &["a/b"], &["srv1", "srv1"]] {
            let err = generate(dir.path(), "test", &servers(bad), false).unwrap_err();
            assert!(err.to_string().contains("server name"), "{err}");
        }
        assert!(!dir.path().join("ca.crt").exists());
    }

    #[test]
    fn load_identity_and_names() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "test", &servers(&["srv1", "srv2"]), false).unwrap();
        let id = load_identity(dir.path(), "srv1").unwrap();
        assert_eq!(id.chain.len(), 1);
        assert!(cert_is_for(&id.chain[0], "srv1"));
        assert!(!cert_is_for(&id.chain[0], "srv2"));
        assert!(!cert_is_for(&id.chain[0], CLIENT_NAME));
        let client = load_identity(dir.path(), CLIENT_NAME).unwrap();
        assert!(cert_is_for(&client.chain[0], CLIENT_NAME));
        assert!(!cert_is_for(&client.chain[0], "srv1"));
        server_config(&id, &[b"x"]).unwrap();
        client_config(&id.clone(), b"x").unwrap();
    }

    #[test]
    fn load_identity_names_the_missing_or_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_identity(dir.path(), "srv1").unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        generate(dir.path(), "test", &servers(&["srv1"]), false).unwrap();
        let err = load_identity(dir.path(), "srv9").unwrap_err();
        assert!(err.to_string().contains("srv9.crt"), "{err}");
        // A certificate from another CA is reported as such.
        let other = tempfile::tempdir().unwrap();
        generate(other.path(), "test", &servers(&["srv1"]), false).unwrap();
        fs::copy(other.path().join("srv1.crt"), dir.path().join("srv1.crt")).unwrap();
        let err = load_identity(dir.path(), "srv1").unwrap_err();
        assert!(err.to_string().contains("not signed by"), "{err}");
    }

    #[test]
    fn ensure_generates_then_adds_missing_servers() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure(dir.path(), "test", &servers(&["srv1"])).unwrap());
        assert!(!ensure(dir.path(), "test", &servers(&["srv1"])).unwrap());
        let ca_before = fs::read(dir.path().join("ca.crt")).unwrap();
        assert!(ensure(dir.path(), "test", &servers(&["srv1", "srv2"])).unwrap());
        assert_eq!(ca_before, fs::read(dir.path().join("ca.crt")).unwrap());
        let srv2 = load_identity(dir.path(), "srv2").unwrap();
        assert!(cert_is_for(&srv2.chain[0], "srv2"));
        // Made for another cluster name: refused, naming ca.crt.
        let err = ensure(dir.path(), "other", &servers(&["srv1", "srv2", "srv3"])).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(!dir.path().join("srv3.crt").exists());
    }

    #[test]
    fn ensure_without_ca_key_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "test", &servers(&["srv1"]), false).unwrap();
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert!(!ensure(dir.path(), "test", &servers(&["srv1", "srv2"])).unwrap());
        assert!(!dir.path().join("srv2.crt").exists());
    }
}
