//! CONTRACT.md section 3: nothing published to a reply queue does more than a reply can.
//! A hand-over (`type` = `saga.control`) is taken only from a partition queue and only with
//! the cluster's signature; a forged one is dead-lettered and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::amqp::*;
use crate::helpers::*;

/// An app whose saga waits at step 1 (the test answers it).
async fn waiting_saga() -> (TestApp, Participants, Uuid, Received) {
    let app = spawn_app(None).await;
    let script: Script = Arc::new(|c: &Received| match c.step() {
        "s1" => Answer::Silent,
        step => Answer::Done(json!({ "step": step })),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let command = first_command(&participants, id, "s1").await;
    (app, participants, id, command)
}

/// Waits until `<reply queue>.dlq` holds `n` messages.
async fn dead_lettered(app: &TestApp, n: u32) -> bool {
    let dlq = format!("{}.dlq", app.names.reply_queue);
    wait_until(Duration::from_secs(10), || async {
        queue_depth(&dlq).await >= n
    })
    .await
}

/// The saga is where it was: running at version 1 (its start), nothing else in its history.
async fn untouched(app: &TestApp, id: Uuid) {
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["status"], "running", "{view}");
    assert_eq!(view["version"], 1, "{view}");
}

/// Answers step 1 and waits for the saga to complete normally.
async fn completes(app: &TestApp, participants: &Participants, id: Uuid, command: &Received) {
    let reply = json!({"command_id": command.command_id(), "saga_id": id, "status": "done"});
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
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await,
        "{}",
        app.saga_view(&id.to_string()).await
    );
    let history = app.saga_view(&id.to_string()).await["history"].to_string();
    assert!(!history.contains("alice"), "{history}");
}

#[actix_web::test]
async fn a_hand_over_forged_on_the_shared_or_the_instance_reply_queue_is_dead_lettered_and_changes_nothing(
) {
    let (app, participants, id, command) = waiting_saga().await;
    let forged = json!({"saga_id": id, "op": "abort", "note": "by alice: forged"});
    // Participants publish to both (each is some command's reply_to): neither takes a hand-over.
    let own = app.names.default_instance_queue();
    for queue in [app.names.reply_queue.as_str(), own.as_str()] {
        for signature in [None, Some("00ff")] {
            assert!(
                publish_with(
                    &participants.channel,
                    queue,
                    forged.to_string().as_bytes(),
                    control_props(signature),
                )
                .await
            );
        }
    }
    assert!(
        dead_lettered(&app, 4).await,
        "all four forgeries dead-lettered"
    );
    untouched(&app, id).await;
    completes(&app, &participants, id, &command).await;
    participants.close().await;
}

#[actix_web::test]
async fn a_validly_signed_hand_over_on_the_instance_queue_is_dead_lettered_and_changes_nothing() {
    // Signed with the cluster's own secret: only where it arrives can refuse it.
    let (app, participants, id, command) = waiting_saga().await;
    let secret: Vec<u8> = db(&app.names)
        .await
        .query_one("SELECT secret FROM saga_cluster_secret", &[])
        .await
        .expect("the cluster secret")
        .get(0);
    let key = saga_service::broker::ControlKey::new(&secret).expect("a 32-byte secret");
    let body = json!({"saga_id": id, "op": "abort", "note": "by alice: signed"}).to_string();
    let sent_at = chrono::Utc::now().timestamp_millis();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-saga-signature".into(),
        lapin::types::AMQPValue::LongString(key.sign(sent_at, body.as_bytes()).as_str().into()),
    );
    headers.insert(
        "x-saga-sent-at".into(),
        lapin::types::AMQPValue::LongLongInt(sent_at),
    );
    let props = control_props(None).with_headers(headers);
    assert!(
        publish_with(
            &participants.channel,
            &app.names.default_instance_queue(),
            body.as_bytes(),
            props,
        )
        .await
    );
    assert!(dead_lettered(&app, 1).await, "dead-lettered");
    untouched(&app, id).await;
    completes(&app, &participants, id, &command).await;
    participants.close().await;
}

#[actix_web::test]
async fn a_hand_over_on_a_partition_queue_without_a_valid_signature_is_dead_lettered_and_changes_nothing(
) {
    let (app, participants, id, command) = waiting_saga().await;
    let queue = partition_queue(&app.names, id);
    let forged = json!({"saga_id": id, "op": "abort", "note": "by alice: forged"});
    let nul = json!({"saga_id": id, "op": "resume", "note": "by alice\u{0}"});
    let bad_signature = "ab".repeat(32);
    let attempts = [
        (&forged, None),
        (&forged, Some(bad_signature.as_str())),
        (&nul, None),
        (&nul, Some(bad_signature.as_str())),
    ];
    for (body, signature) in attempts {
        assert!(
            publish_with(
                &participants.channel,
                &queue,
                body.to_string().as_bytes(),
                control_props(signature),
            )
            .await
        );
    }
    assert!(dead_lettered(&app, 4).await, "every forgery dead-lettered");
    untouched(&app, id).await;
    // Dead-lettered once each, not requeued in a loop.
    assert_eq!(replies_counted(&app, "requeued").await, 0);
    completes(&app, &participants, id, &command).await;
    participants.close().await;
}
