use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

/// A participant that stays silent on `held` steps' executes while the flag is set.
fn holding(held: &'static [&'static str], flag: Arc<AtomicBool>) -> Script {
    Arc::new(move |c: &Received| {
        if c.action() == "execute" && held.contains(&c.step()) && flag.load(Ordering::SeqCst) {
            Answer::Silent
        } else {
            Answer::Done(json!({ "step": c.step() }))
        }
    })
}

/// Fresh names with a definitions file and a database, cleaned up on drop.
struct Fixture {
    names: Names,
}

impl Fixture {
    async fn new(defs: impl Fn(&Names) -> Vec<saga_service::domain::SagaDefinition>) -> Self {
        let names = Names::new();
        write_definitions(&names, &defs(&names));
        create_database(&names).await;
        Fixture { names }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let names = self.names.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_resources(&names));
            }
        })
        .join();
    }
}

#[actix_web::test]
async fn kill_9_with_100_sagas_in_flight_loses_none_and_runs_each_step_under_one_command_id() {
    let fx = Fixture::new(|n| vec![steps(n, 3, 30_000, 3)]).await;
    let http = reqwest::Client::new();
    let hold = Arc::new(AtomicBool::new(true));
    let participants = Participants::start(&fx.names, 3, holding(&["s2"], hold.clone())).await;
    let mut child = ChildApp::start(&fx.names, &http).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let id = Uuid::new_v4();
        let r = http
            .post(format!("{}/start", child.address))
            .json(&json!({"saga_id": id, "saga": fx.names.saga}))
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), 200);
        ids.push(id);
    }
    let all_at_s2 = wait_until(Duration::from_secs(30), || async {
        participants
            .received()
            .iter()
            .filter(|c| c.step() == "s2")
            .count()
            >= 100
    })
    .await;
    assert!(all_at_s2, "every saga reached s2");
    // Let replies flow and kill the orchestrator while they are being applied.
    hold.store(false, Ordering::SeqCst);
    child.kill();

    let child2 = ChildApp::start(&fx.names, &http).await;
    let db = db(&fx.names).await;
    let done = wait_until(Duration::from_secs(60), || async {
        let row = db
            .query_one("SELECT count(*) FROM sagas WHERE status = 'completed'", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        row == 100
    })
    .await;
    assert!(done, "all 100 sagas completed after the restart");
    for id in &ids {
        for step in ["s1", "s2", "s3"] {
            let n = participants.distinct_ids(*id, step, "execute").len();
            assert_eq!(n, 1, "saga {id} step {step} ran under {n} command_ids");
        }
        let version: i64 = db
            .query_one("SELECT version FROM sagas WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        let rows: i64 = db
            .query_one("SELECT count(*) FROM saga_events WHERE saga_id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, rows, "version equals the history rows");
    }
    drop(child2);
}

#[actix_web::test]
async fn a_saga_started_on_definition_v1_finishes_on_v1_after_the_file_changes_and_a_restart() {
    let fx = Fixture::new(|n| vec![steps(n, 2, 30_000, 3)]).await;
    let http = reqwest::Client::new();
    let hold = Arc::new(AtomicBool::new(true));
    let participants = Participants::start(&fx.names, 3, holding(&["s2"], hold.clone())).await;
    let mut child = ChildApp::start(&fx.names, &http).await;
    let old = Uuid::new_v4();
    let r = http
        .post(format!("{}/start", child.address))
        .json(&json!({"saga_id": old, "saga": fx.names.saga}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !participants.distinct_ids(old, "s2", "execute").is_empty()
        })
        .await
    );
    child.kill();

    // v2 adds a third step.
    write_definitions(&fx.names, &[steps(&fx.names, 3, 30_000, 3)]);
    // Released before the restart: the rehydrated saga's re-sent s2 must be answered.
    hold.store(false, Ordering::SeqCst);
    let child = ChildApp::start(&fx.names, &http).await;
    let new = Uuid::new_v4();
    let r = http
        .post(format!("{}/start", child.address))
        .json(&json!({"saga_id": new, "saga": fx.names.saga}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let db = db(&fx.names).await;
    let both = wait_until(Duration::from_secs(20), || async {
        db_status(&db, old).await.as_deref() == Some("completed")
            && db_status(&db, new).await.as_deref() == Some("completed")
    })
    .await;
    assert!(both, "both sagas completed");
    assert!(
        participants.for_saga(old).iter().all(|c| c.step() != "s3"),
        "the old saga ran on v1 (two steps)"
    );
    assert_eq!(
        participants.distinct_ids(new, "s3", "execute").len(),
        1,
        "the new saga ran on v2"
    );
    let view: serde_json::Value = http
        .get(format!("{}/sagas/{old}", child.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["definition_version"], json!(1));
    let view: serde_json::Value = http
        .get(format!("{}/sagas/{new}", child.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["definition_version"], json!(2));
}

#[actix_web::test]
async fn a_panicking_saga_actor_is_restarted_from_its_snapshot_and_others_carry_on() {
    // A long lease: on a loaded CI machine a lease that lapses locally reloads every saga
    // of its partition (re-sending b's command too), which is right but not what this test
    // is about: that one saga's panic leaves the others untouched.
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| {
        s.cluster.lease = Duration::from_secs(60);
    })
    .await;
    let hold = Arc::new(AtomicBool::new(true));
    let participants = Participants::start(&app.names, 3, holding(&["s2"], hold.clone())).await;
    let a = app.start_saga(json!({})).await;
    let b = app.start_saga(json!({})).await;
    let at_s2 = wait_until(Duration::from_secs(10), || async {
        !participants.distinct_ids(a, "s2", "execute").is_empty()
            && !participants.distinct_ids(b, "s2", "execute").is_empty()
    })
    .await;
    assert!(at_s2);
    // From now on the participant answers: only a re-sent s2 command can move either saga.
    hold.store(false, Ordering::SeqCst);
    let registry = app.state.core.get().expect("core").registry.clone();
    let crashed = registry
        .send(saga_service::actors::messages::CrashSaga(a))
        .await
        .expect("registry answers");
    assert!(crashed);
    // Restarted from its snapshot: the pending s2 command is sent again, same command_id.
    let resent = wait_until(Duration::from_secs(10), || async {
        participants
            .for_saga(a)
            .iter()
            .filter(|c| c.step() == "s2")
            .count()
            == 2
    })
    .await;
    assert!(resent, "the restarted actor re-sent its pending command");
    assert_eq!(participants.distinct_ids(a, "s2", "execute").len(), 1);
    assert!(
        app.wait_status(a, "completed", Duration::from_secs(10))
            .await
    );
    // b's actor was untouched: its held s2 is only re-sent after its 30 s time-out, so it is
    // still at s2, alive, and takes an abort.
    assert_eq!(app.status(b).await, "running");
    let r = app
        .http
        .post(app.url(&format!("/sagas/{b}/abort")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "the other saga's actor is alive and answers"
    );
    assert!(
        app.wait_status(b, "compensated", Duration::from_secs(10))
            .await
    );
}

#[actix_web::test]
async fn readiness_is_500_db_not_ready_once_the_database_is_gone() {
    let app = spawn_app(None).await;
    let r = app.http.get(app.url("/readiness")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let client = pg_connect(&admin_url()).await.unwrap();
    client
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", app.names.db))
        .await
        .unwrap();
    let r = app.http.get(app.url("/readiness")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, json!({"status": "db not ready"}));
    let r = app.http.get(app.url("/liveness")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[actix_web::test]
async fn an_unreachable_database_keeps_the_service_live_but_not_ready_and_start_is_503() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 30_000, 3)]);
    let mut settings = settings(&names);
    settings.database =
        saga_service::config::parse_database_url("postgres://postgres@127.0.0.1:1/nowhere")
            .unwrap();
    let app = saga_service::startup::Application::build(settings, false).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/liveness")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/readiness")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "db not ready"})
    );
    let r = http
        .post(format!("{base}/start"))
        .json(&json!({"saga_id": Uuid::new_v4(), "saga": names.saga}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    handle.stop(false).await;
    let _ = std::fs::remove_file(&names.defs_path);
}
