//! `SAGA_DATABASE_URL`'s TLS parameters, parsed as libpq does.

use std::path::PathBuf;

use tokio_postgres::config::SslMode as PgSslMode;

use super::{parse_database_url, SslMode};

/// A PEM file with one self-signed certificate, removed on drop.
struct PemFile(PathBuf);

impl PemFile {
    fn new(contents: Option<&str>) -> Self {
        let path = std::env::temp_dir().join(format!("saga-ca-{}.pem", uuid::Uuid::new_v4()));
        let pem = match contents {
            Some(text) => text.to_string(),
            None => rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("generate a certificate")
                .cert
                .pem(),
        };
        std::fs::write(&path, pem).expect("write the PEM file");
        PemFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for PemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn sslmode_defaults_to_prefer_as_in_libpq() {
    let db = parse_database_url("postgres://u:p@127.0.0.1/db").unwrap();
    assert_eq!(db.ssl_mode, SslMode::Prefer);
    assert_eq!(db.config.get_ssl_mode(), PgSslMode::Prefer);
    assert_eq!(db.root_cert, None);
}

#[test]
fn each_sslmode_is_parsed_and_the_verifying_ones_require_tls() {
    let ca = PemFile::new(None);
    for (mode, want, pg) in [
        ("disable", SslMode::Disable, PgSslMode::Disable),
        ("prefer", SslMode::Prefer, PgSslMode::Prefer),
        ("require", SslMode::Require, PgSslMode::Require),
        ("verify-ca", SslMode::VerifyCa, PgSslMode::Require),
        ("verify-full", SslMode::VerifyFull, PgSslMode::Require),
    ] {
        let root = if mode.starts_with("verify") {
            format!("&sslrootcert={}", ca.path())
        } else {
            String::new()
        };
        let db = parse_database_url(&format!("postgres://h/db?sslmode={mode}{root}")).unwrap();
        assert_eq!(db.ssl_mode, want, "{mode}");
        assert_eq!(db.config.get_ssl_mode(), pg, "{mode}");
    }
}

#[test]
fn tls_parameters_are_taken_out_and_the_others_kept() {
    let ca = PemFile::new(None);
    let encoded = ca.path().replace('/', "%2F");
    let url = format!(
        "postgresql://u:p%40ss@h:6543/db?application_name=saga&sslrootcert={encoded}&sslmode=verify-full&connect_timeout=7"
    );
    let db = parse_database_url(&url).unwrap();
    assert_eq!(db.ssl_mode, SslMode::VerifyFull);
    assert_eq!(db.root_cert.as_deref(), Some(ca.0.as_path()));
    assert_eq!(db.config.get_application_name(), Some("saga"));
    assert_eq!(db.config.get_password(), Some(&b"p@ss"[..]));
    assert_eq!(db.config.get_ports(), &[6543]);
    assert_eq!(
        db.config.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(7))
    );
}

#[test]
fn the_key_value_form_takes_the_same_parameters() {
    let ca = PemFile::new(None);
    let db = parse_database_url(&format!(
        "host=127.0.0.1 user=u password='a b' sslmode=verify-ca sslrootcert={} dbname=d",
        ca.path()
    ))
    .unwrap();
    assert_eq!(db.ssl_mode, SslMode::VerifyCa);
    assert_eq!(db.config.get_dbname(), Some("d"));
    assert_eq!(db.config.get_password(), Some(&b"a b"[..]));
}

#[test]
fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
    let ca = PemFile::new(None);
    let url = format!("postgres://h/db?sslmode=require&sslrootcert={}", ca.path());
    assert_eq!(
        parse_database_url(&url).unwrap().ssl_mode,
        SslMode::VerifyCa
    );
}

#[test]
fn sslrootcert_system_means_verify_full_and_allows_nothing_weaker() {
    let db = parse_database_url("postgres://h/db?sslrootcert=system");
    // A machine without system roots refuses it as a bad value instead; either names it.
    match db {
        Ok(db) => assert_eq!(db.ssl_mode, SslMode::VerifyFull),
        Err(e) => assert!(e.0.contains("system root"), "{e}"),
    }
    let e = parse_database_url("postgres://h/db?sslmode=require&sslrootcert=system").unwrap_err();
    assert!(e.0.contains("verify-full"), "{e}");
}

#[test]
fn an_unknown_sslmode_is_a_bad_value_named_without_the_password() {
    let e = parse_database_url("postgres://u:s3cret@h/db?sslmode=verify-all").unwrap_err();
    assert!(e.0.contains("SAGA_DATABASE_URL"), "{e}");
    assert!(e.0.contains("sslmode `verify-all`"), "{e}");
    assert!(!e.0.contains("s3cret"), "{e}");
    assert!(e.0.contains("u:***@h"), "{e}");
}

#[test]
fn an_unreadable_or_empty_root_file_is_a_bad_value_naming_it() {
    let e = parse_database_url("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
        .unwrap_err();
    assert!(e.0.contains("/nonexistent/ca.pem"), "{e}");
    // Also where it would not be used.
    let e = parse_database_url("postgres://h/db?sslmode=prefer&sslrootcert=/nonexistent/ca.pem")
        .unwrap_err();
    assert!(e.0.contains("/nonexistent/ca.pem"), "{e}");
    let junk = PemFile::new(Some("not a certificate\n"));
    let e = parse_database_url(&format!(
        "postgres://h/db?sslmode=verify-full&sslrootcert={}",
        junk.path()
    ))
    .unwrap_err();
    assert!(e.0.contains("no valid PEM certificate"), "{e}");
    assert!(e.0.contains(junk.path()), "{e}");
}

#[test]
fn an_unparsable_url_is_named_without_its_password() {
    let e = parse_database_url("postgres://u:s3cret@h:notaport/db").unwrap_err();
    assert!(e.0.contains("SAGA_DATABASE_URL"), "{e}");
    assert!(!e.0.contains("s3cret"), "{e}");
}
