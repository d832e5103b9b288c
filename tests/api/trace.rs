//! W3C trace context: from `POST /start` onto every command, and from replies into the history.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Starts a saga with these extra headers and waits until it is completed.
async fn run_saga(app: &TestApp, header: Option<&str>) -> Uuid {
    let id = Uuid::new_v4();
    let mut request = app
        .http
        .post(app.url("/start"))
        .json(&json!({"saga_id": id, "saga": app.saga()}));
    if let Some(h) = header {
        request = request.header("traceparent", h);
    }
    assert_eq!(request.send().await.expect("start").status(), 200);
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await
    );
    id
}

#[actix_web::test]
async fn the_callers_traceparent_rides_every_command_and_replies_join_the_history() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let id = run_saga(&app, Some(CALLER)).await;
    let commands = participants.for_saga(id);
    assert_eq!(commands.len(), 3);
    for c in &commands {
        assert_eq!(c.traceparent.as_deref(), Some(CALLER), "{}", c.command_id());
    }
    let view = app.saga_view(&id.to_string()).await;
    let history = view["history"].as_array().expect("history").clone();
    assert_eq!(history[0]["traceparent"], CALLER, "the start row");
    let from_participant = child_traceparent(CALLER).expect("child");
    let replies: Vec<_> = history
        .iter()
        .filter(|h| h["event"] == "step_done" || h["event"] == "completed")
        .collect();
    assert_eq!(replies.len(), 3);
    for h in replies {
        assert_eq!(h["traceparent"], from_participant.as_str(), "{h}");
    }
    participants.close().await;
}

#[actix_web::test]
async fn without_a_valid_traceparent_a_new_trace_is_started() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let mut seen = Vec::new();
    for header in [None, Some("00-zz-not-a-trace"), Some(&CALLER[..40])] {
        let id = run_saga(&app, header).await;
        let commands = participants.for_saga(id);
        let tp = commands[0].traceparent.clone().expect("a traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len()),
            ("00", 32, 16),
            "{tp}"
        );
        assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(commands
            .iter()
            .all(|c| c.traceparent.as_deref() == Some(tp.as_str())));
        seen.push(tp);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "each saga has its own trace");
    participants.close().await;
}

#[actix_web::test]
async fn a_rehydrated_saga_resends_with_its_traceparent() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app(names.clone(), false).await;
    let participants = Participants::start(&names, 3, Arc::new(|_| Answer::Silent)).await;
    let id = Uuid::new_v4();
    let r = app
        .http
        .post(app.url("/start"))
        .header("traceparent", CALLER)
        .json(&json!({"saga_id": id, "saga": app.saga()}))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            participants.for_saga(id).len() == 1
        })
        .await
    );
    app.stop().await;
    let again = start_app(names, true).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            participants.for_saga(id).len() == 2
        })
        .await,
        "re-sent after the restart"
    );
    assert_eq!(
        participants.for_saga(id)[1].traceparent.as_deref(),
        Some(CALLER)
    );
    drop(again);
    participants.close().await;
}
