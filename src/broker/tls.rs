//! `amqps://`: the TLS settings of RabbitMQ connections, and the one way to open them.

use std::path::Path;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};

use crate::store::tls::{read_pem_file, TlsError};

/// Roots trusted for `amqps://` besides the system's: the PEM file of `SAGA_AMQP_CA_FILE`.
#[derive(Debug, Clone, Default)]
pub struct AmqpTls {
    ca_pem: Option<String>,
}

impl AmqpTls {
    /// Reads and checks the CA file (at least one valid PEM certificate); `None`: system roots only.
    pub fn from_ca_file(path: Option<&Path>) -> Result<Self, TlsError> {
        let Some(path) = path else {
            return Ok(AmqpTls::default());
        };
        Ok(AmqpTls {
            ca_pem: Some(read_pem_file(path)?),
        })
    }

    /// The PEM text of the CA file, if one was given.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    fn owned_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.clone(),
        }
    }
}

/// Opens a connection to `url` (`amqp://` plain, `amqps://` with TLS and `tls`'s roots).
pub async fn connect(
    url: &str,
    properties: ConnectionProperties,
    tls: &AmqpTls,
) -> Result<Connection, lapin::Error> {
    DefaultConnectionBuilder::new()?
        .with_uri_str(url.to_string())
        .with_properties(properties)
        .with_tls_config(tls.owned_config())
        .connect()
        .await
}
