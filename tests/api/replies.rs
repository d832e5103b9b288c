//! Replies of CONTRACT.md section 3: poison replies are dead-lettered with a reason;
//! duplicate, stale and late replies are acked and change nothing; `correlation_id`
//! stands in for a missing `command_id`.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// `saga_replies_total{outcome="<outcome>"}` of this app's `/metrics`.
async fn replies_counted(app: &TestApp, outcome: &str) -> u64 {
    let sample = format!("saga_replies_total{{outcome=\"{outcome}\"}}");
    app.metric(&sample).await.unwrap_or(0.0) as u64
}

/// Waits until the app has settled `n` replies with `outcome`.
async fn wait_replies(app: &TestApp, outcome: &str, n: u64) -> bool {
    wait_until(Duration::from_secs(10), || async {
        replies_counted(app, outcome).await >= n
    })
    .await
}

/// Takes every message of a queue: its body and its `x-saga-error` header as text.
///
/// (`drain_queue` renders headers with `Debug`, which shows a long string as its bytes.)
async fn dead_letters(queue: &str) -> Vec<(Vec<u8>, Option<String>)> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Ok(Some(msg)) = ch
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
    {
        let reason = msg.delivery.properties.headers().as_ref().and_then(|h| {
            h.inner().iter().find_map(|(k, v)| match v {
                AMQPValue::LongString(s) if k.as_str() == "x-saga-error" => Some(s.to_string()),
                _ => None,
            })
        });
        out.push((msg.delivery.data.clone(), reason));
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
    out
}

fn dlq(app: &TestApp) -> String {
    format!("{}.dlq", app.names.reply_queue)
}

/// The received command of `step`/`action` for a saga, once it has arrived.
async fn command_of(participants: &Participants, id: Uuid, step: &str) -> Received {
    let arrived = wait_until(Duration::from_secs(10), || async {
        participants
            .for_saga(id)
            .iter()
            .any(|c| c.step() == step && c.action() == "execute")
    })
    .await;
    assert!(arrived, "no {step} command for {id}");
    participants
        .for_saga(id)
        .into_iter()
        .find(|c| c.step() == step && c.action() == "execute")
        .unwrap()
}

async fn publish(
    participants: &Participants,
    app: &TestApp,
    body: &Value,
    correlation: Option<&str>,
) {
    let sent = publish_raw(
        &participants.channel,
        &app.names.reply_queue,
        body.to_string().as_bytes(),
        correlation,
    )
    .await;
    assert!(sent, "publish {body}");
}

#[actix_web::test]
async fn each_kind_of_poison_reply_is_dead_lettered_with_its_reason_and_sagas_still_complete() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let unknown = Uuid::new_v4();
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            b"this is not json".to_vec(),
            "not a valid reply",
        ),
        ("invalid UTF-8", vec![0xff, 0xfe, b'{', 0xc3], "not UTF-8"),
        ("empty body", Vec::new(), "empty body"),
        (
            "no status",
            json!({"saga_id": Uuid::new_v4(), "command_id": "c1"})
                .to_string()
                .into_bytes(),
            "status",
        ),
        (
            "JSON but not an object",
            b"[1, 2, 3]".to_vec(),
            "not a valid reply",
        ),
        (
            "no command_id nor correlation_id",
            json!({"saga_id": Uuid::new_v4(), "status": "done"})
                .to_string()
                .into_bytes(),
            "command_id",
        ),
        (
            "over 1 MiB",
            json!({"saga_id": unknown, "command_id": "c4", "status": "done",
                   "output": {"big": "x".repeat(1024 * 1024)}})
            .to_string()
            .into_bytes(),
            "over the limit",
        ),
        (
            "saga_id not a UUID",
            json!({"saga_id": "12345", "command_id": "c2", "status": "done"})
                .to_string()
                .into_bytes(),
            "not a UUID",
        ),
        (
            "unknown saga_id",
            json!({"saga_id": unknown, "command_id": "c3", "status": "done"})
                .to_string()
                .into_bytes(),
            "unknown saga_id",
        ),
    ];
    for (what, body, _) in &poison {
        let sent = publish_raw(&participants.channel, &app.names.reply_queue, body, None).await;
        assert!(sent, "publish {what}");
    }
    let all_there = wait_until(Duration::from_secs(10), || async {
        queue_depth(&dlq(&app)).await as usize >= poison.len()
    })
    .await;
    assert!(all_there, "every poison reply reaches {}", dlq(&app));
    let dead = dead_letters(&dlq(&app)).await;
    assert_eq!(dead.len(), poison.len());
    for (what, body, reason) in &poison {
        let Some((_, header)) = dead.iter().find(|(b, _)| b == body) else {
            panic!("{what}: not in the DLQ with its body unchanged");
        };
        let header = header.as_deref().unwrap_or_default();
        assert!(
            header.contains(reason),
            "{what}: x-saga-error `{header}` names `{reason}`"
        );
    }
    assert_eq!(queue_depth(&app.names.reply_queue).await, 0);

    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await,
        "the orchestrator still serves after the poison"
    );
    assert_eq!(
        queue_depth(&dlq(&app)).await,
        0,
        "good replies are not dead-lettered"
    );
    participants.close().await;
}

#[actix_web::test]
async fn duplicate_replies_change_nothing() {
    let app = spawn_app(None).await;
    // The script hands every command to a task that publishes a second, identical reply.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let script: Script = Arc::new(move |c: &Received| {
        let _ = tx.send(c.clone());
        Answer::Done(json!({ "step": c.step() }))
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let channel = participants.channel.clone();
    let duplicator = actix_web::rt::spawn(async move {
        while let Some(c) = rx.recv().await {
            let reply = json!({"command_id": c.command_id(), "saga_id": c.saga_id(),
                               "status": "done", "output": {"step": c.step()}});
            let to = c.reply_to.clone().unwrap_or_default();
            publish_raw(&channel, &to, reply.to_string().as_bytes(), None).await;
        }
    });
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    assert!(
        wait_replies(&app, "accepted", 3).await && wait_replies(&app, "ignored", 3).await,
        "three replies accepted, three duplicates ignored"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            queue_depth(&app.names.reply_queue).await == 0
        })
        .await
    );
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["version"], json!(4));
    assert_eq!(view["history"].as_array().map(Vec::len), Some(4));
    assert_eq!(view["status"], json!("completed"));
    for step in ["s1", "s2", "s3"] {
        let executes = participants
            .for_saga(id)
            .iter()
            .filter(|c| c.step() == step && c.action() == "execute")
            .count();
        assert_eq!(executes, 1, "{step} executed once");
    }
    assert_eq!(replies_counted(&app, "dead_lettered").await, 0);
    assert_eq!(queue_depth(&dlq(&app)).await, 0);
    duplicator.abort();
    participants.close().await;
}

#[actix_web::test]
async fn a_stale_reply_after_the_saga_moved_on_or_completed_changes_nothing() {
    let app = spawn_app(None).await;
    // s1 and s3 answer; s2 waits for the test to answer it.
    let script: Script = Arc::new(|c: &Received| match c.step() {
        "s2" => Answer::Silent,
        _ => Answer::Done(json!({ "step": c.step() })),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let s1 = command_of(&participants, id, "s1").await;
    let s2 = command_of(&participants, id, "s2").await;
    let at_s2 = wait_until(Duration::from_secs(10), || async {
        let v = app.saga_view(&id.to_string()).await;
        v["step"] == json!("s2") && v["version"] == json!(2)
    })
    .await;
    assert!(at_s2);

    let stale_s1 = json!({"command_id": s1.command_id(), "saga_id": id, "status": "done",
                          "output": {"late": true}});
    let stale_error = json!({"command_id": s1.command_id(), "saga_id": id, "status": "error",
                             "error": "late"});
    publish(&participants, &app, &stale_s1, None).await;
    publish(&participants, &app, &stale_error, None).await;
    assert!(
        wait_replies(&app, "ignored", 2).await,
        "stale replies are ignored"
    );
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["status"], json!("running"));
    assert_eq!(view["step"], json!("s2"));
    assert_eq!(view["version"], json!(2));

    let s2_done = json!({"command_id": s2.command_id(), "saga_id": id, "status": "done"});
    publish(&participants, &app, &s2_done, None).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let s3 = command_of(&participants, id, "s3").await;
    let s3_error = json!({"command_id": s3.command_id(), "saga_id": id, "status": "error"});
    for late in [&stale_s1, &stale_error, &s2_done, &s3_error] {
        publish(&participants, &app, late, None).await;
    }
    assert!(
        wait_replies(&app, "ignored", 6).await,
        "late replies are ignored"
    );
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["status"], json!("completed"));
    assert_eq!(view["version"], json!(4));
    assert_eq!(view["history"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        view["state"]["results"]["s1"],
        json!({"step": "s1"}),
        "the first output stays"
    );
    assert_eq!(queue_depth(&dlq(&app)).await, 0);
    participants.close().await;
}

#[actix_web::test]
async fn a_reply_whose_command_id_is_only_the_amqp_correlation_id_is_accepted() {
    let app = spawn_app(None).await;
    let participants =
        Participants::start(&app.names, 3, Arc::new(|_: &Received| Answer::Silent)).await;
    let id = app.start_saga(json!({})).await;
    for (i, step) in ["s1", "s2", "s3"].into_iter().enumerate() {
        let cmd = command_of(&participants, id, step).await;
        let reply = json!({"saga_id": id, "status": "done", "service": step,
                           "output": {"via": "correlation_id"}});
        publish(&participants, &app, &reply, Some(cmd.command_id())).await;
        let moved = wait_until(Duration::from_secs(10), || async {
            app.saga_view(&id.to_string()).await["version"] == json!(i + 2)
        })
        .await;
        assert!(moved, "the reply to {step} was accepted");
    }
    assert_eq!(app.status(id).await, "completed");
    assert_eq!(replies_counted(&app, "accepted").await, 3);
    assert_eq!(queue_depth(&dlq(&app)).await, 0);
    participants.close().await;
}

#[actix_web::test]
async fn replies_for_a_finished_saga_are_acked_and_not_dead_lettered() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let mut late: Vec<Value> = participants
        .for_saga(id)
        .iter()
        .map(|c| json!({"command_id": c.command_id(), "saga_id": id, "status": "done"}))
        .collect();
    late.push(json!({"command_id": "never-sent", "saga_id": id, "status": "done"}));
    late.push(json!({"command_id": "never-sent", "saga_id": id, "status": "error"}));
    for reply in &late {
        publish(&participants, &app, reply, None).await;
    }
    assert!(
        wait_replies(&app, "ignored", late.len() as u64).await,
        "every late reply is acked as ignored"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            queue_depth(&app.names.reply_queue).await == 0
        })
        .await,
        "the reply queue drains"
    );
    assert_eq!(queue_depth(&dlq(&app)).await, 0, "nothing dead-lettered");
    assert_eq!(replies_counted(&app, "dead_lettered").await, 0);
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["version"], json!(4));
    assert_eq!(view["quarantined"], json!([]));
    participants.close().await;
}

#[actix_web::test]
async fn a_reply_postgresql_cannot_store_is_settled_not_requeued_forever() {
    let app = spawn_app(None).await;
    let silent: Script = Arc::new(|_: &Received| Answer::Silent);
    let participants = Participants::start(&app.names, 3, silent).await;
    let done = app.start_saga(json!({})).await;
    let failed = app.start_saga(json!({})).await;
    let done_cmd = command_of(&participants, done, "s1").await;
    let failed_cmd = command_of(&participants, failed, "s1").await;
    // Valid JSON and a valid reply, but a jsonb or text column cannot hold U+0000.
    let bodies = [
        format!(
            r#"{{"command_id":"{}","saga_id":"{done}","status":"done","output":{{"a":"x\u0000y"}}}}"#,
            done_cmd.command_id()
        ),
        format!(
            r#"{{"command_id":"{}","saga_id":"{failed}","status":"error","error":"x\u0000y"}}"#,
            failed_cmd.command_id()
        ),
    ];
    for body in &bodies {
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            body.as_bytes(),
            None,
        )
        .await;
    }
    // Either outcome keeps the contract: dead-lettered as poison, or applied (sanitised).
    let settled = wait_until(Duration::from_secs(10), || async {
        let applied = app.saga_view(&done.to_string()).await["version"] != json!(1)
            && app.saga_view(&failed.to_string()).await["version"] != json!(1);
        applied || queue_depth(&dlq(&app)).await == 2
    })
    .await;
    assert!(
        settled,
        "replies neither applied nor dead-lettered; requeued {} times",
        replies_counted(&app, "requeued").await
    );
    participants.close().await;
}
