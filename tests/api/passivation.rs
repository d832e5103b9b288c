use std::sync::Arc;
use std::time::Duration;

use saga_service::actors::messages::CountLive;
use serde_json::json;

use crate::helpers::*;

/// An app whose idle saga actors are passivated after 200 ms.
async fn passivating_app(timeout_ms: u64) -> TestApp {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, timeout_ms, 3)]);
    create_database(&names).await;
    start_app_with(names, true, |s| {
        s.passivate_after = Some(Duration::from_millis(200))
    })
    .await
}

async fn live_actors(app: &TestApp) -> usize {
    let registry = app.state.core.get().expect("core").registry.clone();
    registry.send(CountLive).await.unwrap_or(usize::MAX)
}

#[actix_web::test]
async fn a_passivated_saga_keeps_its_time_out_and_resends_from_the_registry() {
    let app = passivating_app(1_500).await;
    // s1 answers only its second send: the first one is "lost".
    let script: Script = Arc::new(|c: &Received| {
        if c.step() == "s1" && c.body["attempt"] == json!(1) {
            Answer::Silent
        } else {
            Answer::Done(json!({}))
        }
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let passivated = wait_until(Duration::from_secs(5), || async {
        live_actors(&app).await == 0
    })
    .await;
    assert!(passivated, "the idle actor was passivated");
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(10))
            .await
    );
    let s1 = participants
        .for_saga(id)
        .into_iter()
        .filter(|c| c.step() == "s1")
        .count();
    assert_eq!(s1, 2, "the time-out re-sent s1 once");
    assert_eq!(participants.distinct_ids(id, "s1", "execute").len(), 1);
}

#[actix_web::test]
async fn a_reply_reactivates_a_passivated_saga_from_its_snapshot_without_resending() {
    let app = passivating_app(30_000).await;
    let script: Script = Arc::new(|c: &Received| {
        if c.step() == "s2" {
            Answer::Silent
        } else {
            Answer::Done(json!({ "from": c.step() }))
        }
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({"k": 1})).await;
    let at_s2 = wait_until(Duration::from_secs(5), || async {
        !participants.distinct_ids(id, "s2", "execute").is_empty()
    })
    .await;
    assert!(at_s2);
    let passivated = wait_until(Duration::from_secs(5), || async {
        live_actors(&app).await == 0
    })
    .await;
    assert!(passivated, "the idle actor was passivated");
    let s2 = participants
        .for_saga(id)
        .into_iter()
        .find(|c| c.step() == "s2")
        .expect("s2 command");
    // The late reply arrives now.
    let reply = json!({"command_id": s2.command_id(), "saga_id": id, "status": "done", "output": {"late": true}});
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(10))
            .await
    );
    assert_eq!(
        participants
            .for_saga(id)
            .iter()
            .filter(|c| c.step() == "s2")
            .count(),
        1,
        "reactivation re-sent nothing"
    );
    let s3 = participants
        .for_saga(id)
        .into_iter()
        .find(|c| c.step() == "s3")
        .expect("s3 command");
    assert_eq!(
        s3.body["results"],
        json!({"s1": {"from": "s1"}, "s2": {"late": true}}),
        "state survived passivation"
    );
    assert_eq!(s3.body["payload"], json!({"k": 1}));
}
