//! `amqps://` (CONTRACT.md section 1) without a TLS-enabled broker: the local RabbitMQ has
//! no TLS listener, so the broker connection is made to a TLS listener of the test that
//! speaks no AMQP. With a CA that did not sign its certificate the connection fails on the
//! certificate; with the right one the TLS handshake succeeds and only AMQP fails.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use saga_service::broker::{AmqpTls, Broker, Topology};
use saga_service::config::QueueType;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::certs::TestCa;
use crate::helpers::wait_until;

/// A TLS listener on 127.0.0.1 that reports each handshake's outcome, reads what the client
/// sends first (the AMQP protocol header) and hangs up.
async fn tls_listener(ca: &TestCa) -> (u16, mpsc::UnboundedReceiver<Result<(), String>>) {
    let (cert, key) = ca.server_cert(&["127.0.0.1"]);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let (tx, rx) = mpsc::unbounded_channel();
    actix_web::rt::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let _ = tx.send(Ok(()));
                    let mut header = [0u8; 8];
                    let _ = tls.read_exact(&mut header).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        }
    });
    (port, rx)
}

fn broker(port: u16, ca_file: &std::path::Path) -> Broker {
    let tls = AmqpTls::from_ca_file(Some(ca_file)).expect("a valid CA file");
    Broker::new(
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f?connection_timeout=3000"),
        tls,
        Topology {
            reply_queue: "amqps-test.responses".into(),
            command_queues: BTreeSet::new(),
            queue_type: QueueType::Classic,
            partitions: 1,
            instance_queue: None,
            instance_queue_ttl_ms: 5_000,
        },
        saga_service::broker::ControlKey::new(&[7; 32]).expect("a 32-byte key"),
    )
}

/// The broker's connect error with its causes, or `None` if it took longer than 15 s.
async fn connect_error(broker: &Broker) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(15), broker.connect(1)).await {
        Ok(Ok(_)) => panic!("connected to a listener that speaks no AMQP"),
        Ok(Err(e)) => Some(saga_service::logging::error_chain(&e)),
        Err(_) => None,
    }
}

#[actix_web::test]
async fn amqps_with_a_ca_that_did_not_sign_the_broker_fails_on_the_certificate() {
    let server_ca = TestCa::new("amqp-server-ca");
    let other_ca = TestCa::new("amqp-other-ca");
    let (port, mut handshakes) = tls_listener(&server_ca).await;
    let error = connect_error(&broker(port, other_ca.path()))
        .await
        .expect("the connection attempt did not end within 15 s");
    assert!(error.contains("certificate"), "{error}");
    assert!(!error.contains("guest:guest"), "{error}");
    let refused = tokio::time::timeout(Duration::from_secs(5), handshakes.recv())
        .await
        .expect("the listener saw no handshake");
    assert!(matches!(refused, Some(Err(_))), "{refused:?}");
}

#[actix_web::test]
async fn amqps_with_the_right_ca_completes_the_tls_handshake_and_then_fails_on_amqp() {
    let server_ca = TestCa::new("amqp-server-ca");
    let (port, mut handshakes) = tls_listener(&server_ca).await;
    let broker = broker(port, server_ca.path());
    let error = connect_error(&broker).await;
    if let Some(error) = &error {
        assert!(!error.contains("certificate"), "{error}");
    }
    let shook = wait_until(Duration::from_secs(5), || {
        let ok = matches!(handshakes.try_recv(), Ok(Ok(())));
        async move { ok }
    })
    .await;
    assert!(
        shook,
        "no TLS handshake succeeded (connect error: {error:?})"
    );
    assert!(!broker.is_ready());
}
