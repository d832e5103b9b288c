//! Replies and hand-overs passed on to another instance's partition queue: never confirmed
//! into a queue that is gone, never made to expire or be refused by the original properties.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::json;
use uuid::Uuid;

use crate::amqp::*;
use crate::helpers::*;

/// An app whose saga waits at step 1, its partition held by an instance that does not exist.
async fn saga_of_another_instance() -> (TestApp, Participants, Uuid, Received) {
    let app = spawn_app(None).await;
    let script: Script = Arc::new(|c: &Received| match c.step() {
        "s1" => Answer::Silent,
        step => Answer::Done(json!({ "step": step })),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let command = first_command(&participants, id, "s1").await;
    steal_partition(&app, id).await;
    (app, participants, id, command)
}

#[actix_web::test]
async fn a_reply_forwarded_to_a_deleted_partition_queue_is_kept_until_the_queue_is_back() {
    let (app, participants, id, command) = saga_of_another_instance().await;
    let queue = partition_queue(&app.names, id);
    delete_queue(&queue).await;
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
    let tried = wait_until(Duration::from_secs(10), || async {
        replies_counted(&app, "forwarded").await + replies_counted(&app, "forward_failed").await > 0
    })
    .await;
    assert!(tried, "the app tried to pass the reply on");
    // The owner declares its queue again (within 5 s, by the contract): the reply reaches it.
    declare_queue(&queue).await;
    let kept = wait_until(Duration::from_secs(5), || async {
        queue_depth(&queue).await == 1
    })
    .await;
    assert!(
        kept,
        "the reply was not confirmed into a queue that was gone"
    );
    give_back_partition(&app, id).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await
    );
    participants.close().await;
}

#[actix_web::test]
async fn a_reply_on_the_instance_queue_for_a_partition_now_held_elsewhere_is_passed_on_to_its_owner(
) {
    // The command named this instance's queue; the partition changed hands before the reply.
    let (app, participants, id, command) = saga_of_another_instance().await;
    let queue = partition_queue(&app.names, id);
    let reply = json!({"command_id": command.command_id(), "saga_id": id, "status": "done"});
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.default_instance_queue(),
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    let passed_on = wait_until(Duration::from_secs(10), || async {
        replies_counted(&app, "forwarded").await == 1 && queue_depth(&queue).await == 1
    })
    .await;
    assert!(passed_on, "the reply waits in the partition's queue");
    assert_eq!(
        app.status(id).await,
        "running",
        "not applied by a non-owner"
    );
    give_back_partition(&app, id).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await,
        "the owner applied it"
    );
    participants.close().await;
}

#[actix_web::test]
async fn an_operator_action_handed_to_a_deleted_partition_queue_answers_503_not_202() {
    let (app, participants, id, _) = saga_of_another_instance().await;
    delete_queue(&partition_queue(&app.names, id)).await;
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/abort")))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    assert_eq!(app.status(id).await, "running");
    participants.close().await;
}

#[actix_web::test]
async fn a_reply_with_an_expiration_forwarded_to_an_unread_partition_queue_does_not_expire() {
    let (app, participants, id, command) = saga_of_another_instance().await;
    let queue = partition_queue(&app.names, id);
    let reply = json!({"command_id": command.command_id(), "saga_id": id, "status": "done"});
    let props = BasicProperties::default()
        .with_correlation_id(ShortString::from(command.command_id()))
        .with_expiration(ShortString::from("1500"));
    assert!(
        publish_with(
            &participants.channel,
            &app.names.reply_queue,
            reply.to_string().as_bytes(),
            props
        )
        .await
    );
    let forwarded = wait_until(Duration::from_secs(10), || async {
        replies_counted(&app, "forwarded").await == 1
    })
    .await;
    assert!(
        forwarded,
        "the reply was passed on to the partition's queue"
    );
    // Nobody reads that queue for a while (its owner is busy, or taking over).
    let expired = wait_until(Duration::from_secs(3), || async {
        queue_depth(&queue).await == 0
    })
    .await;
    assert!(!expired, "the forwarded reply expired unread");
    give_back_partition(&app, id).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await,
        "the owner applied the reply"
    );
    participants.close().await;
}
