//! TLS to PostgreSQL (CONTRACT.md section 1): `sslmode` and `sslrootcert` as libpq means them,
//! against the local server (`ssl = on` with Debian's snakeoil certificate, CN and SAN
//! `localhost`). A refused certificate is an unreachable server: never ready, and the log says
//! it was the certificate.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::certs::TestCa;
use crate::helpers::*;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// `url` with more query parameters.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Whether the server has TLS on; prints why a test is skipped when it has not.
async fn server_has_tls(test: &str) -> bool {
    let client = pg_connect(&admin_url())
        .await
        .expect("connect to PostgreSQL");
    let row = client.query_one("SHOW ssl", &[]).await.expect("SHOW ssl");
    let on = row.get::<_, String>(0) == "on";
    if !on {
        eprintln!("SKIPPED {test}: the PostgreSQL server has ssl = off");
    }
    on
}

/// Whether the server's certificate is the snakeoil one the `verify-*` tests trust.
async fn server_uses_snakeoil(test: &str) -> bool {
    let client = pg_connect(&admin_url())
        .await
        .expect("connect to PostgreSQL");
    let file: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("SHOW ssl_cert_file")
        .get(0);
    let usable = file == SNAKEOIL && std::fs::File::open(SNAKEOIL).is_ok();
    if !usable {
        eprintln!("SKIPPED {test}: the server's certificate is {file}, not a readable {SNAKEOIL}");
    }
    usable
}

/// A fresh test's names, definitions and database.
async fn prepare() -> Names {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 30_000, 3)]);
    create_database(&names).await;
    names
}

/// Starts an in-process app on `db_url` and waits until it is ready.
async fn ready_app(names: Names, db_url: &str) -> TestApp {
    let database = saga_service::config::parse_database_url(db_url).expect("valid URL");
    start_app_with(names, true, |s| s.database = database).await
}

/// (TLS, plain) connections of the app's pool, asked through the pool itself, and
/// PostgreSQL's own count of encrypted and plain sessions on the test's database.
async fn tls_of(app: &TestApp) -> (bool, (i64, i64)) {
    let pooled = app.state.pool.get().await.expect("a pooled connection");
    let own: bool = pooled
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl of the pool's connection")
        .get(0);
    let admin = pg_connect(&admin_url()).await.expect("admin connection");
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.datname = $1",
            &[&app.names.db],
        )
        .await
        .expect("pg_stat_ssl of the test database");
    (own, (row.get(0), row.get(1)))
}

#[actix_web::test]
async fn with_sslmode_require_the_service_is_ready_completes_a_saga_and_every_connection_is_encrypted(
) {
    if !server_has_tls("sslmode=require").await {
        return;
    }
    let names = prepare().await;
    let url = with_params(&names.db_url(), "sslmode=require");
    let app = ready_app(names, &url).await;
    let participants = Participants::start(&app.names, 2, always_done()).await;
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let (own, (encrypted, plain)) = tls_of(&app).await;
    assert!(own, "the pool's connection is not encrypted");
    assert!(encrypted >= 1, "no encrypted session on the test database");
    assert_eq!(plain, 0, "plain sessions on the test database");
    participants.close().await;
}

#[actix_web::test]
async fn with_sslmode_disable_the_service_is_ready_over_plain_connections() {
    let names = prepare().await;
    let url = with_params(&names.db_url(), "sslmode=disable");
    let app = ready_app(names, &url).await;
    let (own, (encrypted, _plain)) = tls_of(&app).await;
    assert!(!own, "sslmode=disable gave an encrypted connection");
    assert_eq!(encrypted, 0, "encrypted sessions on the test database");
}

#[actix_web::test]
async fn verify_ca_with_the_servers_own_certificate_as_root_is_ready() {
    if !server_has_tls("verify-ca").await || !server_uses_snakeoil("verify-ca").await {
        return;
    }
    let names = prepare().await;
    // The certificate names `localhost`, the URL 127.0.0.1: verify-ca ignores the name.
    let url = with_params(
        &names.db_url(),
        &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
    );
    let app = ready_app(names, &url).await;
    assert!(tls_of(&app).await.0, "not encrypted");
}

#[actix_web::test]
async fn verify_full_with_the_servers_certificate_is_ready_under_the_name_it_was_issued_for() {
    if !server_has_tls("verify-full").await || !server_uses_snakeoil("verify-full").await {
        return;
    }
    let names = prepare().await;
    let url = with_params(
        &names.db_url().replacen("127.0.0.1", "localhost", 1),
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    );
    let app = ready_app(names, &url).await;
    assert!(tls_of(&app).await.0, "not encrypted");
}

/// The real binary on `db_url`, its log in a file; killed on drop.
struct RefusedChild {
    child: Child,
    log: std::path::PathBuf,
    address: String,
}

impl RefusedChild {
    fn start(names: &Names, db_url: &str) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}-tls.log", names.prefix));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_saga-service"))
            .arg("serve")
            .env("SAGA_DATABASE_URL", db_url)
            .env("SAGA_AMQP_URL", amqp_url())
            .env("SAGA_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("SAGA_DEFINITIONS", &names.defs_path)
            .env("SAGA_REPLY_QUEUE", &names.reply_queue)
            .env("SAGA_HTTP_WORKERS", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn saga-service");
        RefusedChild {
            child,
            log,
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Asserts it is alive but never ready for `quiet`, and that its log names the
    /// certificate (and `expect`) within 10 s; returns the log.
    async fn assert_refused(&self, quiet: Duration, expect: &str) -> String {
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{}{path}", self.address)).send();
        let alive = wait_until(Duration::from_secs(30), || async {
            matches!(get("/liveness").await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(alive, "the service did not answer /liveness");
        let until = Instant::now() + quiet;
        while Instant::now() < until {
            let status = get("/readiness").await.expect("GET /readiness").status();
            assert_eq!(status, 500, "ready although the certificate is refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logged = wait_until(Duration::from_secs(10), || async {
            let log = self.log();
            log.contains("certificate") && log.contains(expect)
        })
        .await;
        let log = self.log();
        assert!(
            logged,
            "no log line names the certificate ({expect}):\n{log}"
        );
        log
    }
}

impl Drop for RefusedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[actix_web::test]
async fn verify_full_against_a_ca_that_did_not_sign_the_server_is_never_ready_and_says_why() {
    if !server_has_tls("verify-full, foreign CA").await {
        return;
    }
    let names = prepare().await;
    let ca = TestCa::new("foreign-ca");
    let url = with_params(
        &names.db_url(),
        &format!("sslmode=verify-full&sslrootcert={}", ca.path().display()),
    );
    let child = RefusedChild::start(&names, &url);
    let log = child
        .assert_refused(Duration::from_secs(3), "UnknownIssuer")
        .await;
    assert!(log.contains("migrations failed"), "{log}");
    drop(child);
    drop_resources(&names).await;
}

#[actix_web::test]
async fn verify_full_with_the_servers_certificate_refuses_a_host_it_was_not_issued_for() {
    if !server_has_tls("verify-full, wrong name").await
        || !server_uses_snakeoil("verify-full, wrong name").await
    {
        return;
    }
    let names = prepare().await;
    // The snakeoil certificate is for `localhost`; 127.0.0.1 is not among its names.
    let url = with_params(
        &names.db_url().replacen("localhost", "127.0.0.1", 1),
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    );
    let child = RefusedChild::start(&names, &url);
    child
        .assert_refused(Duration::from_secs(3), "not valid for name")
        .await;
    drop(child);
    drop_resources(&names).await;
}
