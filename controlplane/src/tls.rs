//! TLS with rustls (aws-lc-rs): the server side of `wss://` signalling and `https://` REST
//! from a PEM certificate chain and key, and the client side of `wss://` relays, verifying
//! the remote server against the system roots or a configured CA, or, only when asked
//! explicitly, not at all. Every config names its crypto provider, so no process-wide
//! default has to be installed.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built. The messages name the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read the certificate chain {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("could not read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    #[error("no trusted root certificate: {0}")]
    NoRoots(String),
}

/// The crypto provider every config uses (aws-lc-rs, as str0m's DTLS does).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// A server TLS acceptor from PEM files: the certificate chain (leaf first) and its key.
pub fn acceptor_from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Certificates {
        path: cert.display().to_string(),
        reason: e.to_string(),
    })?;
    let key_pem = std::fs::read(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    acceptor_from_pem(
        &cert_pem,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// A server TLS acceptor from PEM text; `cert_name` and `key_name` are used in errors.
pub fn acceptor_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert_pem, cert_name)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: key_name.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate in a PEM text, in order.
pub fn certificates(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates {
            path: name.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(name.to_owned()));
    }
    Ok(chain)
}

/// How the protocol client checks a `wss://` server's certificate.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// Trust only these CA certificates instead of the system roots (a private CA, or a
    /// self-signed server certificate itself).
    pub ca: Vec<CertificateDer<'static>>,
    /// Accept any certificate: for labs with self-signed certificates only. Off by default.
    pub insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_certificates", &self.ca.len())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ClientTls {
    /// Verification against the system roots (the default).
    pub fn system() -> Self {
        ClientTls::default()
    }

    /// Verification against the CA certificates in a PEM file.
    pub fn with_ca_file(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|e| TlsError::Certificates {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::with_ca_pem(&pem, &path.display().to_string())
    }

    /// Verification against the CA certificates in a PEM text.
    pub fn with_ca_pem(pem: &[u8], name: &str) -> Result<Self, TlsError> {
        Ok(ClientTls {
            ca: certificates(pem, name)?,
            insecure: false,
        })
    }

    /// No verification at all (an explicit opt-in for self-signed labs).
    pub fn insecure() -> Self {
        ClientTls {
            ca: Vec::new(),
            insecure: true,
        }
    }

    /// The rustls client configuration this describes.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
                .with_no_client_auth()
        } else {
            let roots = if self.ca.is_empty() {
                system_roots()?
            } else {
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(self.ca.iter().cloned());
                if added == 0 {
                    return Err(TlsError::NoRoots(
                        "none of the configured CA certificates could be parsed".into(),
                    ));
                }
                Arc::new(roots)
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Arc::new(config))
    }
}

/// The system's trusted roots, loaded once.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!(%error, "could not load a system root certificate");
            }
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(
                    "the system has no usable root certificates; configure a CA file \
                            (relay.tls_ca_file)"
                        .into(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsError::NoRoots)
}

/// Accepts any server certificate, still checking that the handshake is signed by it.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_with_its_name() {
        let e = acceptor_from_pem(b"nothing here", b"", "cert.pem", "key.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cert.pem"), "{e}");
        let e = ClientTls::with_ca_pem(b"", "ca.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }

    #[test]
    fn insecure_and_ca_configs_build() {
        assert!(ClientTls::insecure().client_config().is_ok());
        assert!(format!("{:?}", ClientTls::insecure()).contains("insecure: true"));
    }
}
