//! Certificates for the TLS tests (rcgen): a CA, and server certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority of a test, its PEM written to a file removed on drop.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    path: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        let path = std::env::temp_dir().join(format!("{name}-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, issuer.pem()).expect("write the CA file");
        TestCa { issuer, path }
    }

    /// The PEM file of the CA's certificate.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key.
    pub fn server_cert(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
