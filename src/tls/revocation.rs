//! Revoked certificates: the deny list every handshake checks.
//!
//! A certificate is named by its SHA-256 fingerprint (of its DER, as
//! `openssl x509 -fingerprint -sha256` prints it), not by its serial: a
//! fingerprint names one certificate whatever CA or tool made it, and the
//! operator can compute it from the file alone. The list itself is
//! replicated (`state::revoked`); this module holds the live copy and the
//! verifiers that consult it, so that a revoked peer or CLI is refused at
//! the handshake, on both sides of a connection.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A certificate's SHA-256 fingerprint.
pub type Fingerprint = [u8; 32];

/// Certificates revoked at most: far above any cluster's count of servers
/// and rotations, and keeps every handshake's lookup and the list's memory
/// bounded.
pub const REVOKED_COUNT_MAX: usize = 10_000;

/// The fingerprint of a certificate.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Lowercase hex, no separators: the form claro prints and stores.
pub fn fingerprint_hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a fingerprint as 64 hex digits, upper or lower case, with or
/// without the colons `openssl` puts between bytes.
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || format!("`{text}` is not a SHA-256 fingerprint (64 hex digits, colons allowed)");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut fp = [0u8; 32];
    for (i, byte) in fp.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(fp)
}

/// The live deny list: cheap to clone (clones share it), read at every
/// handshake, replaced whole when the replicated list changes.
#[derive(Clone, Default)]
pub struct DenyList(Arc<RwLock<HashSet<Fingerprint>>>);

impl fmt::Debug for DenyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DenyList({} revoked)", self.len())
    }
}

impl DenyList {
    pub fn replace(&self, fingerprints: impl IntoIterator<Item = Fingerprint>) {
        let set: HashSet<Fingerprint> = fingerprints.into_iter().collect();
        assert!(set.len() <= REVOKED_COUNT_MAX, "deny list over its limit");
        *self.0.write().expect("deny list lock") = set;
    }

    pub fn denies(&self, der: &[u8]) -> bool {
        self.0
            .read()
            .expect("deny list lock")
            .contains(&fingerprint(der))
    }

    pub fn len(&self) -> usize {
        self.0.read().expect("deny list lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn revoked() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Revoked)
}

/// The cluster's client verifier with the deny list in front of it.
#[derive(Debug)]
pub(super) struct DenyingClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub deny: DenyList,
}

impl ClientCertVerifier for DenyingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.deny.denies(end_entity) {
            return Err(revoked());
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The cluster's server verifier with the deny list in front of it: an
/// instance refuses a revoked peer when it connects, not only when it is
/// connected to.
#[derive(Debug)]
pub(super) struct DenyingServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub deny: DenyList,
}

impl ServerCertVerifier for DenyingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.deny.denies(end_entity) {
            return Err(revoked());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_as_openssl_and_claro_print_them() {
        let fp = fingerprint(b"some certificate");
        let hex = fingerprint_hex(&fp);
        assert_eq!(parse_fingerprint(&hex), Ok(fp));
        let openssl: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&openssl.join(":")), Ok(fp));
        for bad in [
            "",
            "xyz",
            &hex[..62],
            &format!("{hex}00"),
            &hex.replace('a', "g"),
        ] {
            if bad != hex {
                assert!(parse_fingerprint(bad).is_err(), "{bad} accepted");
            }
        }
    }

    #[test]
    fn the_deny_list_is_shared_by_its_clones_and_replaced_whole() {
        let deny = DenyList::default();
        let seen_by_verifier = deny.clone();
        assert!(!seen_by_verifier.denies(b"a"));
        deny.replace([fingerprint(b"a")]);
        assert!(seen_by_verifier.denies(b"a"));
        assert!(!seen_by_verifier.denies(b"b"));
        deny.replace([fingerprint(b"b")]);
        assert!(!seen_by_verifier.denies(b"a"));
        assert_eq!(seen_by_verifier.len(), 1);
    }
}
