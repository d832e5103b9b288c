//! The README's Python participant (examples/python/participant.py) against the service:
//! run when `$SAGA_TEST_PYTHON` (default: target/venv/bin/python if it exists, else
//! `python3`) imports pika and psycopg, skipped with a message otherwise
//! (`bash scripts/python-venv.sh` makes target/venv; `make test` runs it).

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// The Python interpreter to use, if it has pika and psycopg.
fn python() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let python = std::env::var("SAGA_TEST_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    });
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pika, psycopg"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

#[actix_web::test]
async fn the_python_participant_completes_a_saga_and_refuses_a_charge_that_is_then_compensated() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: the Python participant's test needs pika and psycopg: run \
             `bash scripts/python-venv.sh` and set SAGA_TEST_PYTHON=target/venv/bin/python"
        );
        return;
    };
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    // The participant's own database, next to the test's.
    let py_db = format!("{}_py", app.names.db);
    let admin = admin_client().await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{py_db}\""))
        .await
        .expect("create the participant's database");
    let py_url = with_database(&admin_url(), &py_db);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let mut child = tokio::process::Command::new(&python)
        .arg(format!("{manifest}/examples/python/participant.py"))
        .env("SAGA_PARTICIPANT_QUEUE", app.names.queue(1))
        .env("SAGA_PARTICIPANT_DATABASE_URL", &py_url)
        .env("SAGA_AMQP_URL", amqp_url())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3 examples/python/participant.py");

    let charged = app.start_saga(json!({"amount": 40})).await;
    let declined = app.start_saga(json!({"amount": 5000})).await;
    let completed = app
        .wait_status(charged, "completed", Duration::from_secs(30))
        .await;
    let refused = wait_until(Duration::from_secs(30), || async {
        matches!(
            app.status(declined).await.as_str(),
            "compensated" | "failed"
        )
    })
    .await;
    let py = pg_connect(&py_url)
        .await
        .expect("the participant's database");
    let count = |id: uuid::Uuid, sql: &'static str| {
        let py = &py;
        async move {
            py.query_one(sql, &[&id.to_string()])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    let payments = count(charged, "SELECT count(*) FROM payments WHERE saga_id = $1").await;
    let inbox = count(
        charged,
        "SELECT count(*) FROM saga_inbox WHERE saga_id = $1 AND status = 'done'",
    )
    .await;
    let declined_payments =
        count(declined, "SELECT count(*) FROM payments WHERE saga_id = $1").await;
    let _ = child.kill().await;
    drop(py);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{py_db}\" WITH (FORCE)"))
        .await;
    assert!(
        completed,
        "the saga did not complete: {}",
        app.status(charged).await
    );
    assert!(refused, "the declined saga: {}", app.status(declined).await);
    assert_eq!(payments, 1, "the charge is written once");
    assert_eq!(inbox, 1, "one inbox row, done");
    assert_eq!(declined_payments, 0);
}
