//! Operator actions are guarded (CONTRACT.md section 5): `skip` names its step, `If-Match`
//! holds an action to the version the operator saw, and an action that cannot be committed
//! within 5 s answers 503 and never takes effect later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// A three-step saga where s3 fails and s2's compensation keeps failing (one attempt): it
/// ends `failed` with s2's compensate pending, s1's still to come.
async fn failed_on_s2(app: &TestApp) -> uuid::Uuid {
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "failed", Duration::from_secs(15)).await,
        "saga failed on s2's compensation"
    );
    id
}

fn failing_script() -> Script {
    Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s3", "execute") => Answer::Error("no".into()),
        ("s2", "compensate") => Answer::Error("locked".into()),
        _ => Answer::Done(json!({})),
    })
}

async fn three_steps_one_attempt() -> TestApp {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 5_000, 1)]);
    create_database(&names).await;
    start_app(names, true).await
}

#[actix_web::test]
async fn a_double_clicked_skip_skips_one_compensation_and_the_next_is_still_run() {
    let app = three_steps_one_attempt().await;
    let participants = Participants::start(&app.names, 3, failing_script()).await;
    let id = failed_on_s2(&app).await;
    let skip = || {
        app.http
            .post(app.url(&format!("/sagas/{id}/skip")))
            .json(&json!({"step": "s2", "by": "alice"}))
            .send()
    };
    // Both clicks at once, as a double click sends them.
    let (a, b) = futures_util::join!(skip(), skip());
    let mut codes = [a.expect("first").status(), b.expect("second").status()];
    codes.sort();
    assert_eq!(codes, [202, 409], "one skip is taken, the other refused");
    assert!(
        app.wait_status(id, "compensated", Duration::from_secs(10))
            .await
    );
    let s1_undone = participants
        .for_saga(id)
        .iter()
        .any(|c| c.step() == "s1" && c.action() == "compensate");
    assert!(s1_undone, "s1 was done, so it is compensated, not skipped");
    let view = app.saga_view(&id.to_string()).await;
    let skipped: Vec<_> = view["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["event"] == "compensation_skipped")
        .map(|h| h["step"].clone())
        .collect();
    assert_eq!(skipped, vec![json!("s2")]);
}

#[actix_web::test]
async fn skip_without_a_step_is_400_and_naming_another_step_is_409() {
    let app = three_steps_one_attempt().await;
    let _participants = Participants::start(&app.names, 3, failing_script()).await;
    let id = failed_on_s2(&app).await;
    let url = app.url(&format!("/sagas/{id}/skip"));
    let r = app.http.post(&url).send().await.expect("skip");
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .post(&url)
        .json(&json!({"by": "bob"}))
        .send()
        .await
        .expect("skip");
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .post(&url)
        .json(&json!({"step": "s1"}))
        .send()
        .await
        .expect("skip");
    assert_eq!(r.status(), 409, "s1 is not the pending compensation");
    assert_eq!(app.status(id).await, "failed", "nothing happened");
}

#[actix_web::test]
async fn an_action_with_a_stale_if_match_is_412_and_does_nothing() {
    let app = three_steps_one_attempt().await;
    let _participants = Participants::start(&app.names, 3, failing_script()).await;
    let id = failed_on_s2(&app).await;
    let r = app
        .http
        .get(app.url(&format!("/sagas/{id}")))
        .send()
        .await
        .expect("get");
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("GET /sagas/{id} sends an ETag");
    let version = app.saga_view(&id.to_string()).await["version"].clone();
    assert_eq!(etag, format!("\"{version}\""));
    let stale = format!("\"{}\"", version.as_i64().unwrap_or(0) - 1);
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/retry")))
        .header("if-match", stale)
        .send()
        .await
        .expect("retry");
    assert_eq!(r.status(), 412);
    assert_eq!(app.saga_view(&id.to_string()).await["version"], version);
    // The current ETag is taken; repeating the same request then meets the moved saga.
    let send = || {
        app.http
            .post(app.url(&format!("/sagas/{id}/retry")))
            .header("if-match", etag.clone())
            .send()
    };
    assert_eq!(send().await.expect("retry").status(), 202);
    assert_eq!(send().await.expect("retry again").status(), 412);
}

#[actix_web::test]
async fn an_action_while_postgres_is_unreachable_is_503_within_5_s_and_never_applied_later() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    let participants = Participants::start(&app.names, 2, Arc::new(|_| Answer::Silent)).await;
    let id = app.start_saga(json!({})).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !participants.for_saga(id).is_empty()
        })
        .await
    );
    // Cut this app (only) off its database: no new connections, existing ones ended.
    let admin = admin_client().await;
    let db = app.names.db.clone();
    let cut = format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false");
    admin.batch_execute(&cut).await.expect("limit");
    let _restore = RestoreConnections(db.clone());
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .expect("terminate");
    let asked = Instant::now();
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/abort")))
        .json(&json!({"by": "carol"}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("abort answered");
    let took = asked.elapsed();
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // Database back: the action must not happen behind the caller's back.
    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await
        .expect("unlimit");
    let reachable = wait_until(Duration::from_secs(30), || async {
        matches!(app.http.get(app.url("/readiness")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(reachable, "ready again");
    // Long enough for a retried commit to land, were it still being retried.
    let aborted = wait_until(Duration::from_secs(8), || async {
        app.status(id).await != "running"
    })
    .await;
    assert!(!aborted, "the refused abort took effect later");
    let view = app.saga_view(&id.to_string()).await;
    let events: Vec<_> = view["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["event"].clone())
        .collect();
    assert!(!events.contains(&json!("aborted")), "{events:?}");
}

/// Lifts a CONNECTION LIMIT 0 whatever the test did.
struct RestoreConnections(String);

impl Drop for RestoreConnections {
    fn drop(&mut self) {
        let sql = format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true", self.0);
        let _ = std::process::Command::new("psql")
            .args([admin_url().as_str(), "-c", sql.as_str()])
            .output();
    }
}
