//! CONTRACT.md section 7: a consumer the broker closes or cancels (a queue deleted, a
//! channel closed) is declared and consumed again within 5 s.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::amqp::*;
use crate::helpers::*;

/// Step 1 stays silent (the test answers it), the others answer `done`.
fn step1_silent() -> Script {
    Arc::new(|c: &Received| match c.step() {
        "s1" => Answer::Silent,
        step => Answer::Done(json!({ "step": step })),
    })
}

/// Answers step 1 of a saga on `queue` as its participant would, and waits for the end.
async fn answer_step1_on(app: &TestApp, participants: &Participants, id: Uuid, queue: &str) {
    let command = first_command(participants, id, "s1").await;
    let reply = json!({"command_id": command.command_id(), "saga_id": id, "status": "done"});
    assert!(
        publish_raw(
            &participants.channel,
            queue,
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await,
        "the saga completed: {}",
        app.saga_view(&id.to_string()).await
    );
}

#[actix_web::test]
async fn a_deleted_partition_queue_is_declared_and_consumed_again_within_five_seconds() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, step1_silent()).await;
    let id = app.start_saga(json!({})).await;
    first_command(&participants, id, "s1").await;
    let queue = partition_queue(&app.names, id);
    delete_queue(&queue).await;
    assert!(
        all_consumed(std::slice::from_ref(&queue), Duration::from_secs(5)).await,
        "the deleted partition queue is declared and consumed again within 5 s"
    );
    answer_step1_on(&app, &participants, id, &queue).await;
    participants.close().await;
}

#[actix_web::test]
async fn a_partition_channel_closed_by_a_channel_error_is_reopened_and_every_queue_consumed_again()
{
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, step1_silent()).await;
    let id = app.start_saga(json!({})).await;
    first_command(&participants, id, "s1").await;
    let queue = partition_queue(&app.names, id);
    // Every partition consumer shares one channel: a 406 on it ends them all.
    let before = provoke_channel_error(&queue).await;
    let moved = wait_until(Duration::from_secs(5), || async {
        consumer_channel(&queue)
            .await
            .is_some_and(|pid| pid != before)
    })
    .await;
    assert!(moved, "the partition's queue is consumed on a new channel");
    let every: Vec<String> = (0..64)
        .map(|p| format!("{}.p{p}", app.names.reply_queue))
        .collect();
    assert!(
        all_consumed(&every, Duration::from_secs(5)).await,
        "every partition queue is consumed again"
    );
    answer_step1_on(&app, &participants, id, &queue).await;
    participants.close().await;
}

#[actix_web::test]
async fn the_instance_queue_deleted_is_declared_and_consumed_again_within_five_seconds() {
    let app = spawn_app(None).await;
    let own = app.names.default_instance_queue();
    assert!(
        all_consumed(std::slice::from_ref(&own), Duration::from_secs(5)).await,
        "the app consumes its own queue"
    );
    delete_queue(&own).await;
    assert!(
        all_consumed(std::slice::from_ref(&own), Duration::from_secs(5)).await,
        "the deleted instance queue is declared and consumed again within 5 s"
    );
    // A reply delivered through the queue consumed again is applied.
    let participants = Participants::start(&app.names, 3, step1_silent()).await;
    let id = app.start_saga(json!({})).await;
    first_command(&participants, id, "s1").await;
    answer_step1_on(&app, &participants, id, &own).await;
    participants.close().await;
}

#[actix_web::test]
async fn a_reply_left_in_the_queue_of_an_instance_gone_reaches_the_owner_after_the_lease() {
    // An instance that ran once under another name (a pod renamed by a deploy) and is gone:
    // participants may still answer commands it sent to its queue, which nobody reads.
    let app = spawn_app(None).await;
    let gone = launch_app_with(app.names.clone(), false, |s| {
        s.cluster.instance_id = "solo".into();
        s.cluster.lease = Duration::from_millis(2_000);
    });
    let ghost = format!("{}.i.solo", app.names.reply_queue);
    assert!(
        all_consumed(std::slice::from_ref(&ghost), Duration::from_secs(15)).await,
        "the other instance declared its queue"
    );
    gone.stop().await;
    let conn = connect().await;
    let unread = wait_until(Duration::from_secs(10), || async {
        consumers_of(&conn, &ghost).await == Some(0)
    })
    .await;
    assert!(unread, "the instance gone no longer consumes its queue");
    let participants = Participants::start(&app.names, 3, step1_silent()).await;
    let id = app.start_saga(json!({})).await;
    first_command(&participants, id, "s1").await;
    // Completed within the 15 s answer_step1_on waits, under the step's 30 s time-out: the
    // reply was moved to the shared reply queue by the broker once its TTL (that instance's
    // lease) passed, not answered again after a re-send.
    answer_step1_on(&app, &participants, id, &ghost).await;
    participants.close().await;
}

#[actix_web::test]
async fn the_shared_reply_queue_deleted_or_its_channel_closed_is_consumed_again_within_five_seconds(
) {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let queue = app.names.reply_queue.clone();
    delete_queue(&queue).await;
    assert!(
        all_consumed(std::slice::from_ref(&queue), Duration::from_secs(5)).await,
        "the deleted reply queue is declared and consumed again within 5 s"
    );
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await
    );
    let before = provoke_channel_error(&queue).await;
    let moved = wait_until(Duration::from_secs(5), || async {
        consumer_channel(&queue)
            .await
            .is_some_and(|pid| pid != before)
    })
    .await;
    assert!(moved, "the reply queue is consumed on a new channel");
    // The instance queue shared that channel: it is consumed again too.
    let own = app.names.default_instance_queue();
    assert!(
        all_consumed(std::slice::from_ref(&own), Duration::from_secs(5)).await,
        "the instance queue is consumed again after its channel closed"
    );
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(15))
            .await
    );
    participants.close().await;
}
