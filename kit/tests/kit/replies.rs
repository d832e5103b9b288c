//! Replies go to `reply_to` with the command id as `correlation_id`, persistent; a command
//! is acked only once its reply was confirmed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_goes_to_reply_to_with_the_command_id_as_correlation_id() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "ok");
    let id = cmd["command_id"].as_str().unwrap();
    // A reply queue of its own, not the rig's.
    let elsewhere = format!("{}.elsewhere", rig.queue);
    declare(&rig.channel, &elsewhere).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    collect(&conn, &elsewhere, got.clone()).await;
    rig.send_to(&cmd, &elsewhere).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !got.lock().unwrap().is_empty()
        })
        .await
    );
    let reply = got.lock().unwrap()[0].clone();
    assert_eq!(reply.correlation_id.as_deref(), Some(id));
    assert_eq!(reply.delivery_mode, Some(2));
    assert_eq!(reply.body["command_id"], id);
    assert_eq!(reply.body["saga_id"], cmd["saga_id"]);
    assert!(
        rig.replies_for(id).is_empty(),
        "nothing on the rig's reply queue"
    );
    let _ = rig
        .channel
        .queue_delete(elsewhere.as_str().into(), Default::default())
        .await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_reply_cannot_be_published_is_not_acked_and_is_redelivered() {
    let mut rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "ok");
    let id = cmd["command_id"].as_str().unwrap();
    // reply_to names a queue that does not exist (yet): the mandatory reply is returned.
    let missing = format!("{}.missing", rig.queue);
    rig.send_to(&cmd, &missing).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            rig.inbox_status(id).await.as_deref() == Some("done")
        })
        .await
    );
    // Unacked, so stopping the participant puts it back on the command queue.
    rig.stop_participant().await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            queue_ready(&rig.channel, &rig.queue).await == 1
        })
        .await,
        "the command was acked although its reply was never confirmed"
    );
    // Once the reply queue exists, the redelivered command is answered from the inbox.
    declare(&rig.channel, &missing).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    collect(&conn, &missing, got.clone()).await;
    rig.start_participant(4);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !got.lock().unwrap().is_empty()
        })
        .await
    );
    assert_eq!(got.lock().unwrap()[0].body["status"], "done");
    assert_eq!(rig.runs(), 1, "answered from the inbox, not run again");
    assert_eq!(rig.effects(id).await, 1);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            queue_ready(&rig.channel, &rig.queue).await == 0
        })
        .await
    );
    let _ = rig
        .channel
        .queue_delete(missing.as_str().into(), Default::default())
        .await;
    rig.finish().await;
}

/// Messages ready (not delivered, not unacked) on a queue.
async fn queue_ready(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(u32::MAX)
}
