//! TLS to PostgreSQL: one rustls connector that checks what libpq's `sslmode` says.
//!
//! `prefer` and `require` encrypt without checking the certificate; `verify-ca` checks its
//! chain against the roots but not its host name; `verify-full` checks both. A failed check
//! fails the TLS handshake, so that server is never used.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::SslMode;

/// Where the roots that `verify-ca` and `verify-full` trust come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's trusted certificates.
    System,
    /// The certificates of one PEM file (`sslrootcert`).
    File(PathBuf),
}

/// Why a TLS set-up could not be built (a configuration error).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file cannot be read.
    #[error("certificate file `{path}` cannot be read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file holds no valid PEM certificate.
    #[error("certificate file `{0}` holds no valid PEM certificate")]
    NoCertificate(PathBuf),
    /// No system root certificate could be loaded.
    #[error("no system root certificates found ({0}); give sslrootcert=<file>")]
    NoSystemRoots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The connector of every PostgreSQL connection; cheap to clone.
#[derive(Clone)]
pub struct PgConnector(MakeRustlsConnect);

impl fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgConnector")
    }
}

impl PgConnector {
    /// The connector for `mode`; roots are loaded only for `verify-ca` and `verify-full`.
    pub fn new(mode: SslMode, roots: &Roots) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(load_roots(roots)?),
                    provider,
                )
                .build()?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                    .with_no_client_auth()
            }
            SslMode::VerifyFull => builder
                .with_root_certificates(load_roots(roots)?)
                .with_no_client_auth(),
        };
        Ok(PgConnector(MakeRustlsConnect::new(config)))
    }

    /// The tokio-postgres connector.
    pub fn make_tls_connect(&self) -> MakeRustlsConnect {
        self.0.clone()
    }
}

/// The text of a PEM file of certificates: at least one, each of them valid.
pub fn read_pem_file(path: &Path) -> Result<String, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    pem_certificates(path, &pem)?;
    Ok(pem)
}

fn pem_certificates(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate(path.to_path_buf()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = pem_certificates(path, &read_pem_file(path)?)?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::NoCertificate(path.clone()));
            }
        }
        Roots::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded.errors.first().map_or_else(
                    || "the system store is empty".to_string(),
                    ToString::to_string,
                );
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: encryption without authentication, as libpq does; the handshake's
/// signatures are still checked, against the certificate the server sent.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// `verify-ca`: the full WebPKI check except the host name. rustls checks the chain (and
/// validity dates) before the name, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
