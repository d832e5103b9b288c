//! `SAGA_DATABASE_URL`: a libpq connection string with libpq's TLS parameters.
//!
//! tokio-postgres knows `sslmode` only up to `require` and no `sslrootcert`, so both are
//! taken out of the string here and interpreted with libpq's meaning; the rest goes to
//! `tokio_postgres::Config`. The connector is built once, here, so that an unreadable root
//! file is a bad value (exit 2) rather than a connection that never succeeds.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::{redact_url, ConfigError};
use crate::store::tls::{read_pem_file, PgConnector, Roots};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it (its certificate unchecked), plain otherwise.
    Prefer,
    /// TLS, the certificate unchecked (with `sslrootcert` given: as `verify-ca`, as libpq).
    Require,
    /// TLS, the certificate's chain checked against the roots, not its host name.
    VerifyCa,
    /// TLS, the certificate's chain and host name checked.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "unknown sslmode `{other}` (disable, prefer, require, verify-ca or verify-full)"
            )),
        }
    }
}

/// PostgreSQL connection settings: where to connect and how to secure it.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// Host, port, user, password, database and the other libpq parameters.
    pub config: tokio_postgres::Config,
    /// The TLS mode in force (after libpq's rules for `require` with `sslrootcert`).
    pub ssl_mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for the system's roots (`None`: not given).
    pub root_cert: Option<PathBuf>,
    /// The TLS connector every connection uses (built once from the two above).
    pub connector: PgConnector,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio_postgres::Config's Debug already leaves the password out.
        f.debug_struct("DatabaseSettings")
            .field("config", &self.config)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

/// The TLS parameters taken out of a connection string, and what is left of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Parses `SAGA_DATABASE_URL` (URL or `key=value` form); the error names the value, its
/// password shown as `***`.
pub fn parse_database_url(url: &str) -> Result<DatabaseSettings, ConfigError> {
    let bad = |why: String| {
        ConfigError(format!(
            "invalid SAGA_DATABASE_URL `{}`: {why}",
            redact_url(url)
        ))
    };
    let params = split_tls_params(url).map_err(bad)?;
    let mut config = tokio_postgres::Config::from_str(&params.rest)
        .map_err(|e| bad(redact_url(&crate::logging::error_chain(&e))))?;
    let system_roots = params.sslrootcert.as_deref() == Some("system");
    let ssl_mode = match params.sslmode.as_deref() {
        Some(mode) => SslMode::from_str(mode).map_err(bad)?,
        // libpq: sslrootcert=system makes verify-full the default.
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system_roots && ssl_mode != SslMode::VerifyFull {
        return Err(bad(
            "sslrootcert=system needs sslmode=verify-full (as libpq)".to_string(),
        ));
    }
    // libpq: with a root certificate given, `require` checks the chain as `verify-ca` does.
    let ssl_mode = match (ssl_mode, &params.sslrootcert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let roots = match params.sslrootcert.as_deref() {
        None | Some("system") => Roots::System,
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    if let Roots::File(path) = &roots {
        // Checked under every mode, so that a typo shows at start-up, not at a later switch.
        read_pem_file(path).map_err(|e| bad(e.to_string()))?;
    }
    let connector = PgConnector::new(ssl_mode, &roots).map_err(|e| bad(e.to_string()))?;
    config.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(DatabaseSettings {
        config,
        ssl_mode,
        root_cert: params.sslrootcert.map(PathBuf::from),
        connector,
    })
}

/// Takes `sslmode` and `sslrootcert` out of a connection string.
fn split_tls_params(url: &str) -> Result<TlsParams, String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if is_url {
        split_url(url)
    } else {
        Ok(split_key_values(url))
    }
}

fn split_url(url: &str) -> Result<TlsParams, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(TlsParams {
            rest: url.to_string(),
            ..TlsParams::default()
        });
    };
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => params.sslmode = Some(percent_decode(value)?),
            "sslrootcert" => params.sslrootcert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    params.rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(params)
}

/// The `key=value` form; values of these two keys are taken as unquoted words.
fn split_key_values(s: &str) -> TlsParams {
    let mut params = TlsParams::default();
    let mut rest = String::with_capacity(s.len());
    for word in s.split_inclusive(char::is_whitespace) {
        let trimmed = word.trim_end();
        if let Some(v) = trimmed.strip_prefix("sslmode=") {
            params.sslmode = Some(v.to_string());
        } else if let Some(v) = trimmed.strip_prefix("sslrootcert=") {
            params.sslrootcert = Some(v.to_string());
        } else {
            rest.push_str(word);
        }
    }
    params.rest = rest;
    params
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8"))
}
