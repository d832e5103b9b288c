//! Retention (CONTRACT.md section 4): completed and compensated sagas idle longer than
//! `SAGA_RETENTION` are deleted with their history and quarantined replies; failed and
//! unfinished ones are kept, however old.

use std::time::Duration;

use clap::Parser;
use saga_service::config::{Cli, Command};
use saga_service::domain::Retention;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// `mode` in the payload: `ok` completes, `undo` compensates, `stuck` fails (its
/// compensation is refused), `hold` keeps running (s1 never answers).
fn script() -> Script {
    std::sync::Arc::new(|c: &Received| {
        match (c.body["payload"]["mode"].as_str(), c.step(), c.action()) {
            (Some("hold"), "s1", "execute") => Answer::Silent,
            (Some("undo" | "stuck"), "s2", "execute") => Answer::Error("refused".into()),
            (Some("stuck"), "s1", "compensate") => Answer::Error("locked".into()),
            _ => Answer::Done(json!({})),
        }
    })
}

/// Waits until `GET /sagas/{id}` shows `status`; returns that answer.
async fn view_once(app: &TestApp, id: Uuid, status: &str) -> Value {
    let seen = std::cell::RefCell::new(Value::Null);
    let reached = wait_until(Duration::from_secs(15), || async {
        let view = app.saga_view(&id.to_string()).await;
        let there = view["status"] == json!(status);
        *seen.borrow_mut() = view;
        there
    })
    .await;
    let seen = seen.into_inner();
    assert!(reached, "{id} never became {status}: {seen}");
    seen
}

async fn get_status(app: &TestApp, id: Uuid) -> u16 {
    let r = app.http.get(app.url(&format!("/sagas/{id}"))).send().await;
    r.map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn rows(db: &tokio_postgres::Client, table: &str, id: Uuid) -> i64 {
    let sql = match table {
        "saga_events" => "SELECT count(*) FROM saga_events WHERE saga_id = $1",
        _ => "SELECT count(*) FROM saga_quarantine WHERE saga_id = $1",
    };
    db.query_one(sql, &[&id]).await.expect("count").get(0)
}

#[actix_web::test]
async fn finished_sagas_go_with_their_history_after_the_retention_and_failed_or_running_ones_stay()
{
    let names = Names::new();
    // Time-outs far beyond the test: the `hold` saga must stay running throughout.
    write_definitions(&names, &[steps(&names, 2, 600_000, 1)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| {
        s.retention = Retention::after(Duration::from_secs(2))
    })
    .await;
    let db = db(&app.names).await;
    // Started with no participant listening, so each waits at s1 while it gets a
    // quarantined reply of its own; then the participants take the queued commands.
    let mut ids = Vec::new();
    for mode in ["ok", "undo", "stuck", "hold"] {
        let id = app.start_saga(json!({ "mode": mode })).await;
        db.execute(
            "INSERT INTO saga_quarantine (saga_id, reason, body) VALUES ($1, 'test', '{}')",
            &[&id],
        )
        .await
        .expect("quarantine a reply");
        ids.push(id);
    }
    let [done, undone, failed, running] = [ids[0], ids[1], ids[2], ids[3]];
    let _participants = Participants::start(&app.names, 2, script()).await;
    let mut events = 0;
    for (id, status) in [(done, "completed"), (undone, "compensated")] {
        events += view_once(&app, id, status).await["history_total"]
            .as_i64()
            .expect("history_total");
    }
    view_once(&app, failed, "failed").await;
    // Make the kept ones far older than the retention: age is not what keeps them.
    db.execute(
        "UPDATE sagas SET created_at = now() - interval '40 days', updated_at = now() - interval '40 days'
          WHERE id = ANY($1)",
        &[&vec![failed, running]],
    )
    .await
    .expect("age the failed and running sagas");
    let kept_events = [
        rows(&db, "saga_events", failed).await,
        rows(&db, "saga_events", running).await,
    ];

    let gone = wait_until(Duration::from_secs(15), || async {
        get_status(&app, done).await == 404 && get_status(&app, undone).await == 404
    })
    .await;
    assert!(gone, "the completed and the compensated saga are deleted");
    for id in [done, undone] {
        assert_eq!(rows(&db, "saga_events", id).await, 0, "history of {id}");
        assert_eq!(
            rows(&db, "saga_quarantine", id).await,
            0,
            "quarantine of {id}"
        );
    }
    // One more saga, finished after the ages were set back: once it is gone, a sweep has
    // run since, over the failed and the running saga too.
    let sentinel = app.start_saga(json!({ "mode": "ok" })).await;
    events += view_once(&app, sentinel, "completed").await["history_total"]
        .as_i64()
        .expect("history_total");
    let swept = wait_until(Duration::from_secs(15), || async {
        get_status(&app, sentinel).await == 404
    })
    .await;
    assert!(swept, "a later sweep ran");
    for (id, status, n) in [
        (failed, "failed", kept_events[0]),
        (running, "running", kept_events[1]),
    ] {
        let view = app.saga_view(&id.to_string()).await;
        assert_eq!(view["status"], json!(status));
        assert_eq!(
            rows(&db, "saga_events", id).await,
            n,
            "history of {id} kept"
        );
        assert_eq!(
            rows(&db, "saga_quarantine", id).await,
            1,
            "quarantine of {id} kept"
        );
    }
    let deleted = |table: &str| format!("saga_retention_deleted_total{{table=\"{table}\"}}");
    assert_eq!(app.metric(&deleted("sagas")).await, Some(3.0));
    assert_eq!(
        app.metric(&deleted("saga_events")).await,
        Some(events as f64)
    );
    assert_eq!(app.metric(&deleted("saga_quarantine")).await, Some(2.0));
    // The gauges count the unfinished and failed sagas only.
    let gauge = |status: &str| format!("saga_sagas{{status=\"{status}\"}}");
    assert!(app.metric(&gauge("failed")).await.is_some());
    assert_eq!(app.metric(&gauge("completed")).await, None);
}

#[test]
fn saga_retention_takes_zero_or_a_whole_number_of_seconds_minutes_hours_or_days() {
    let parse = |v: &str| {
        let flag = format!("--retention={v}");
        let cli = Cli::try_parse_from(["saga-service", "serve", flag.as_str()])
            .map_err(|e| e.to_string())?;
        match cli.command {
            Some(Command::Serve(args)) => args.settings().map_err(|e| e.0),
            _ => Err("not serve".into()),
        }
        .map(|s| s.retention.keep().map(|d| d.as_secs()))
    };
    assert_eq!(parse("0"), Ok(None));
    assert_eq!(parse("90s"), Ok(Some(90)));
    assert_eq!(parse("15m"), Ok(Some(15 * 60)));
    assert_eq!(parse("2h"), Ok(Some(2 * 3600)));
    assert_eq!(parse("30d"), Ok(Some(30 * 86_400)));
    for bad in ["", "30", "1.5h", "-1d", "2w", "0d", "d", "1e3s"] {
        let e = parse(bad).expect_err(bad);
        assert!(
            e.contains("SAGA_RETENTION") && e.contains(&format!("`{bad}`")),
            "{bad}: {e}"
        );
    }
}
