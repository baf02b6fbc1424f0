//! The node's certificate: loaded from PEM files, or a generated dev one.
//!
//! One certificate serves both transports (TLS for WebSocket over TCP, QUIC
//! for WebTransport). A node refuses to start on a certificate it cannot
//! read or that is outside its validity period, with a one-line reason.
//!
//! Without `CERT_FILE`/`KEY_FILE` the node makes a self-signed ECDSA P-256
//! certificate valid for 13 days (WebTransport's `serverCertificateHashes`
//! accepts at most 14), keeps it in `DEV_CERT_DIR` so a developer's page keeps
//! working across restarts, and renews it when less than a day is left.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use ring::digest::{digest, SHA256};
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key in it")]
    NoKey(PathBuf),
    #[error("{path}: not a valid X.509 certificate: {why}")]
    Unparsable { path: PathBuf, why: String },
    #[error("{path}: certificate expired on {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("{path}: certificate not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate the dev certificate: {0}")]
    Generate(String),
    #[error("cannot write the dev certificate to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded certificate chain and its key.
#[derive(Debug)]
pub struct Certificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: OffsetDateTime,
    pub source: PathBuf,
    /// True for the generated dev certificate.
    pub dev: bool,
}

/// The hashes a developer needs to trust a dev certificate.
#[derive(Debug, Clone)]
pub struct Fingerprints {
    /// SHA-256 of the leaf certificate (DER), for `serverCertificateHashes`.
    pub cert_sha256: [u8; 32],
    /// Base64 SHA-256 of the leaf's SubjectPublicKeyInfo, for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256_base64: String,
}

impl Fingerprints {
    pub fn cert_sha256_hex(&self) -> String {
        self.cert_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `new Uint8Array([..])` body for `serverCertificateHashes`.
    pub fn cert_sha256_js_bytes(&self) -> String {
        let bytes: Vec<String> = self.cert_sha256.iter().map(u8::to_string).collect();
        bytes.join(",")
    }
}

impl Certificate {
    /// Loads a PEM chain (leaf first) and key, and checks the leaf's dates.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Certificate, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_file)?;
        let key_pem = read(key_file)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Unparsable {
                path: cert_file.to_owned(),
                why: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert_file.to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoKey(key_file.to_owned()),
            e => TlsError::Unparsable {
                path: key_file.to_owned(),
                why: e.to_string(),
            },
        })?;
        let not_after = check_validity(&chain[0], cert_file, OffsetDateTime::now_utc())?;
        let cert = Certificate {
            chain,
            key,
            not_after,
            source: cert_file.to_owned(),
            dev: false,
        };
        cert.server_config()?; // the key must match the leaf
        Ok(cert)
    }

    /// Reuses the dev certificate in `dir` while it has a day left, or makes a new one.
    pub fn dev(dir: &Path) -> Result<Certificate, TlsError> {
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        if let Ok(cert) = Certificate::load(&cert_file, &key_file) {
            if cert.not_after - OffsetDateTime::now_utc() > Duration::days(1) {
                return Ok(Certificate { dev: true, ..cert });
            }
        }
        let (cert_pem, key_pem) = generate_dev_pem(OffsetDateTime::now_utc())?;
        let write = |path: &Path, data: &str| {
            std::fs::write(path, data).map_err(|source| TlsError::Write {
                path: path.to_owned(),
                source,
            })
        };
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write(&cert_file, &cert_pem)?;
        write(&key_file, &key_pem)?;
        let cert = Certificate::load(&cert_file, &key_file)?;
        Ok(Certificate { dev: true, ..cert })
    }

    pub fn fingerprints(&self) -> Fingerprints {
        let leaf = &self.chain[0];
        let cert_sha256 = digest(&SHA256, leaf).as_ref().try_into().expect("32 bytes");
        let spki = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.public_key().raw.to_vec())
            .unwrap_or_default();
        Fingerprints {
            cert_sha256,
            spki_sha256_base64: base64::engine::general_purpose::STANDARD
                .encode(digest(&SHA256, &spki)),
        }
    }

    /// The rustls config for TLS over TCP (WebSocket and `/health`).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The same certificate as a wtransport identity, for QUIC.
    pub fn wtransport_identity(&self) -> Result<wtransport::Identity, TlsError> {
        let chain = self
            .chain
            .iter()
            .map(|c| wtransport::tls::Certificate::from_der(c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Unparsable {
                path: self.source.clone(),
                why: e.to_string(),
            })?;
        let key = wtransport::tls::PrivateKey::from_der_pkcs8(self.key.secret_der().to_vec());
        Ok(wtransport::Identity::new(
            wtransport::tls::CertificateChain::new(chain),
            key,
        ))
    }
}

/// The certificate the TLS port serves, swapped on SIGHUP: handshakes
/// after the swap get the new one, connections already up keep theirs.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertStore {
    pub fn new(cert: &Certificate) -> Result<Arc<CertStore>, TlsError> {
        Ok(Arc::new(CertStore {
            current: RwLock::new(cert.certified_key()?),
        }))
    }

    pub fn replace(&self, cert: &Certificate) -> Result<(), TlsError> {
        let key = cert.certified_key()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// `config` serving this store's certificate instead of its own.
    pub fn serve_from(
        self: &Arc<Self>,
        config: &rustls::ServerConfig,
    ) -> Arc<rustls::ServerConfig> {
        let mut config = config.clone();
        config.cert_resolver = self.clone();
        Arc::new(config)
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Certificate {
    fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = provider
            .key_provider
            .load_private_key(self.key.clone_key())?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(
            self.chain.clone(),
            key,
        )))
    }

    /// Seconds from now until the leaf expires.
    pub fn seconds_left(&self) -> i64 {
        (self.not_after - OffsetDateTime::now_utc()).whole_seconds()
    }
}

/// How long before expiry the node starts warning.
pub const EXPIRY_WARNING: Duration = Duration::days(14);

/// Returns the leaf's notAfter, or why it cannot be used at `now`.
fn check_validity(
    leaf: &CertificateDer<'_>,
    path: &Path,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Unparsable {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    let validity = cert.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    if now < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: not_before.to_string(),
        });
    }
    if now > not_after {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: not_after.to_string(),
        });
    }
    Ok(not_after)
}

/// A self-signed ECDSA P-256 certificate for localhost, valid 13 days from
/// an hour before `now` (inside WebTransport's 14-day limit).
pub fn generate_dev_pem(now: OffsetDateTime) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "prscd dev certificate");
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(13) - Duration::hours(1);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("prscd-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn dev_certificate_is_short_lived_p256_and_reused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempdir("dev");
        let first = Certificate::dev(&dir).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&first.chain[0]).unwrap();
        let v = x509.validity();
        let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
        assert!(lifetime < 14 * 86_400, "lifetime {lifetime}s");
        assert_eq!(
            x509.public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string()),
            Some("1.2.840.10045.3.1.7".to_owned()),
            "secp256r1"
        );
        let again = Certificate::dev(&dir).unwrap();
        assert_eq!(first.chain, again.chain, "reused while valid");
        let fp = first.fingerprints();
        assert_eq!(fp.cert_sha256_hex().len(), 64);
        assert_eq!(fp.spki_sha256_base64.len(), 44);
        first.wtransport_identity().unwrap();
    }

    #[test]
    fn refuses_expired_not_yet_valid_and_unreadable() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempdir("bad");
        let write = |name: &str, when: OffsetDateTime| {
            let (c, k) = generate_dev_pem(when).unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), c).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), k).unwrap();
            (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            )
        };
        let now = OffsetDateTime::now_utc();
        let (c, k) = write("old", now - Duration::days(30));
        assert!(matches!(
            Certificate::load(&c, &k),
            Err(TlsError::Expired { .. })
        ));
        let (c, k) = write("future", now + Duration::days(3));
        assert!(matches!(
            Certificate::load(&c, &k),
            Err(TlsError::NotYetValid { .. })
        ));
        assert!(matches!(
            Certificate::load(&dir.join("missing.crt"), &k),
            Err(TlsError::Read { .. })
        ));
        let (good_c, _) = write("good", now);
        let (_, other_k) = write("other", now);
        assert!(matches!(
            Certificate::load(&good_c, &other_k),
            Err(TlsError::Rustls(_))
        ));
        std::fs::write(dir.join("empty.crt"), "").unwrap();
        assert!(matches!(
            Certificate::load(&dir.join("empty.crt"), &other_k),
            Err(TlsError::NoCertificate(_))
        ));
    }
}
