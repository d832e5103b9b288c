//! Findings of the hostile review, each shown against the real PostgreSQL and RabbitMQ:
//! timers with generations, sends that only count once confirmed, rehydration re-sends that
//! never overtake what followed them, the lifecycle outbox, twin instance ids, definition
//! versions learnt on demand, and the fence that waits for a take-over in flight.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

fn event_time(view: &Value, event: &str) -> Option<DateTime<Utc>> {
    view["history"]
        .as_array()?
        .iter()
        .rev()
        .find(|h| h["event"] == event)
        .and_then(|h| h["at"].as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn events(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["event"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn a_timer_armed_before_resume_does_not_time_out_the_fresh_send() {
    // One attempt, 4 s time-out; the actor passivates, so the registry holds the old wake.
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 4_000, 1)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| {
        s.passivate_after = Some(Duration::from_millis(200));
    })
    .await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 2, script).await;
    let id = app.start_saga(json!({})).await;
    let sent = wait_until(Duration::from_secs(10), || async {
        participants.for_saga(id).iter().any(|c| c.step() == "s2")
    })
    .await;
    assert!(sent, "s2 sent");
    let passive = wait_until(Duration::from_secs(5), || async {
        app.metric("saga_live_actors").await == Some(0.0)
    })
    .await;
    assert!(passive, "the saga actor passivated");
    // Let half of the first send's time-out pass (time passing, not synchronisation): its
    // wake, held by the registry, would go off 2 s into the fresh send's 4 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/resume")))
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 202);
    let finished = app
        .wait_status(id, "compensated", Duration::from_secs(15))
        .await;
    let view = app.saga_view(&id.to_string()).await;
    assert!(finished, "{view}");
    let resumed = event_time(&view, "resumed").expect("resumed row");
    let timed_out = event_time(&view, "step_timed_out").expect("timed out row");
    let waited = (timed_out - resumed).num_milliseconds();
    assert!(
        waited >= 3_500,
        "the fresh send got {waited} ms of its 4,000 ms time-out: an old timer fired for it"
    );
}

#[actix_web::test]
async fn a_send_the_broker_refuses_is_not_an_attempt() {
    // One attempt of 500 ms: were a refused send counted, the step would time out at once.
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 500, 1)]);
    create_database(&names).await;
    let refuse = RefusePublishes::on(&names.queue(2)).await;
    let app = start_app(names, true).await;
    let participants = Participants::start(&app.names, 2, always_done()).await;
    let id = app.start_saga(json!({})).await;
    let moved = wait_until(Duration::from_secs(4), || async {
        app.status(id).await != "running"
    })
    .await;
    assert!(
        !moved,
        "the saga left running while its command was refused"
    );
    let view = app.saga_view(&id.to_string()).await;
    assert!(
        !events(&view).iter().any(|e| e == "step_timed_out"),
        "{view}"
    );
    refuse.lift().await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await,
        "once the broker takes the command the saga goes on"
    );
    let s2 = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.step() == "s2")
        .count();
    assert!(s2 >= 1);
}

#[actix_web::test]
async fn a_rehydrated_resend_never_arrives_after_the_compensate_that_followed_it() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 30_000, 3)]);
    create_database(&names).await;
    let first = start_app(names.clone(), false).await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&names, 2, script).await;
    let id = first.start_saga(json!({})).await;
    let sent = wait_until(Duration::from_secs(10), || async {
        participants.for_saga(id).iter().any(|c| c.step() == "s2")
    })
    .await;
    assert!(sent, "s2 sent");
    first.stop().await;
    // The broker refuses commands for s2 while the next instance rehydrates and re-sends.
    let refuse = RefusePublishes::on(&names.queue(2)).await;
    let second = start_app(names, true).await;
    let r = second
        .http
        .post(second.url(&format!("/sagas/{id}/abort")))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 202);
    refuse.lift().await;
    assert!(
        second
            .wait_status(id, "compensated", Duration::from_secs(20))
            .await
    );
    // Whatever re-sends were pending, none lands after the compensate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s2: Vec<String> = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.step() == "s2")
        .map(|c| c.action().to_string())
        .collect();
    let first_compensate = s2.iter().position(|a| a == "compensate");
    let last_execute = s2.iter().rposition(|a| a == "execute");
    assert!(
        matches!((first_compensate, last_execute), (Some(c), Some(e)) if e < c),
        "s2 received {s2:?}"
    );
}

#[actix_web::test]
async fn a_lifecycle_event_left_in_the_outbox_is_published_and_removed() {
    let app = spawn_app(None).await;
    let observer = EventObserver::start(app.saga()).await;
    // As after a kill -9 between the commit that wrote it and its publish.
    let saga_id = Uuid::new_v4();
    let body = json!({"saga_id": saga_id, "saga": app.saga(), "status": "completed",
                      "version": 4, "at": "2026-12-01T00:00:00Z"});
    let db = db(&app.names).await;
    db.execute(
        "INSERT INTO saga_outbox (saga_id, routing_key, body) VALUES ($1, $2, $3)",
        &[&saga_id, &format!("{}.completed", app.saga()), &body],
    )
    .await
    .expect("outbox row");
    let seen = wait_until(Duration::from_secs(10), || async {
        observer
            .all()
            .iter()
            .any(|e| e["saga_id"] == json!(saga_id))
    })
    .await;
    assert!(seen, "the relay published it");
    let empty = wait_until(Duration::from_secs(5), || async {
        db.query_one("SELECT count(*) FROM saga_outbox", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    })
    .await;
    assert!(empty, "and deleted it once confirmed");
}

#[actix_web::test]
async fn a_finished_saga_is_announced_from_the_outbox_it_wrote_in_its_last_transition() {
    let app = spawn_app(None).await;
    let observer = EventObserver::start(app.saga()).await;
    let _participants = Participants::start(&app.names, 3, always_done()).await;
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(10))
            .await
    );
    let seen = wait_until(Duration::from_secs(10), || async {
        observer.all().iter().any(|e| e["saga_id"] == json!(id))
    })
    .await;
    assert!(seen);
    let event = observer
        .all()
        .into_iter()
        .find(|e| e["saga_id"] == json!(id))
        .unwrap_or_default();
    assert_eq!(event["status"], "completed");
    assert_eq!(event["version"], 4);
    let db = db(&app.names).await;
    let left = wait_until(Duration::from_secs(5), || async {
        db.query_one("SELECT count(*) FROM saga_outbox", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    })
    .await;
    assert!(left, "nothing left in the outbox");
}

#[actix_web::test]
async fn a_twin_instance_id_takes_nothing_until_the_live_one_is_gone() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    let live = start_app_with(names.clone(), false, |s| {
        s.cluster.instance_id = "twin".into();
    })
    .await;
    let epochs = || async {
        db(&names)
            .await
            .query_one(
                "SELECT coalesce(sum(epoch), 0)::bigint, count(*) FILTER (WHERE owner = 'twin')
                   FROM saga_partitions",
                &[],
            )
            .await
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            .expect("partitions")
    };
    let before = epochs().await;
    assert_eq!(before.1, 64);
    let twin = launch_app_with(names.clone(), true, |s| {
        s.cluster.instance_id = "twin".into();
    });
    let refused = wait_until(Duration::from_secs(15), || async {
        match twin.http.get(twin.url("/readiness")).send().await {
            Ok(r) if r.status() == 500 => r
                .json::<Value>()
                .await
                .is_ok_and(|b| b["status"] == "instance id in use"),
            _ => false,
        }
    })
    .await;
    assert!(refused, "the twin says why it is not ready");
    // Three renewal rounds later the live one still holds everything, under the same epochs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(epochs().await, before, "the twin took nothing");
    let _participants = Participants::start(&names, 3, always_done()).await;
    let id = live.start_saga(json!({})).await;
    assert!(
        live.wait_status(id, "completed", Duration::from_secs(10))
            .await
    );
    live.stop().await;
    let took_over = wait_until(Duration::from_secs(15), || async {
        matches!(twin.http.get(twin.url("/readiness")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(took_over, "the twin is ready once the live one left");
    let id = twin.start_saga(json!({})).await;
    assert!(
        twin.wait_status(id, "completed", Duration::from_secs(10))
            .await
    );
}

#[actix_web::test]
async fn a_definition_version_stored_by_another_instance_is_loaded_on_demand() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 30_000, 3)]);
    create_database(&names).await;
    let a = start_app_with(names.clone(), false, |s| {
        s.cluster.instance_id = "a".into();
    })
    .await;
    // A second instance with a new version of the same saga type.
    let mut newer = names.clone();
    newer.defs_path = std::env::temp_dir().join(format!("{}-v2.toml", names.prefix));
    write_definitions(&newer, &[steps(&names, 2, 20_000, 2)]);
    let b = start_app_with(newer, true, |s| {
        s.cluster.instance_id = "b".into();
    })
    .await;
    let balanced = wait_until(Duration::from_secs(20), || async {
        lease_holders(&names).await.len() == 2
    })
    .await;
    assert!(balanced, "both hold partitions");
    let _participants = Participants::start(&names, 2, always_done()).await;
    // Started on b (version 2), owned by a, which started before version 2 existed.
    let id = id_held_by(&names, "a").await;
    let r = b.start(json!({"saga_id": id, "saga": b.saga()})).await;
    assert_eq!(r.status(), 200);
    assert!(
        a.wait_status(id, "completed", Duration::from_secs(20))
            .await,
        "a drives a saga of a version it did not know"
    );
    let version: i32 = db(&names)
        .await
        .query_one("SELECT definition_version FROM sagas WHERE id = $1", &[&id])
        .await
        .map(|r| r.get(0))
        .expect("saga row");
    assert_eq!(version, 2);
    a.stop().await;
}

#[actix_web::test]
async fn a_participant_cannot_answer_a_command_it_was_not_sent() {
    let app = spawn_app(None).await;
    // s1 answers; s2 never does; s1's participant then forges s2's `done`.
    let script: Script = Arc::new(|c: &Received| match c.step() {
        "s1" => Answer::Done(json!({})),
        _ => Answer::Silent,
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let sent = wait_until(Duration::from_secs(10), || async {
        participants.for_saga(id).iter().any(|c| c.step() == "s2")
    })
    .await;
    assert!(sent, "s2 sent");
    let s1_id = participants.for_saga(id)[0].command_id().to_string();
    // What s1's participant can know: the saga id, its own command id, the step names.
    let guesses = [format!("{id}/s2/execute"), s1_id.replace("/s1/", "/s2/")];
    assert_ne!(guesses[1], s1_id);
    for guess in &guesses {
        let forged = json!({"command_id": guess, "saga_id": id, "status": "done"});
        assert!(
            publish_raw(
                &participants.channel,
                &app.names.reply_queue,
                forged.to_string().as_bytes(),
                None
            )
            .await
        );
    }
    let ignored = wait_until(Duration::from_secs(10), || async {
        app.metric("saga_replies_total{outcome=\"ignored\"}").await >= Some(2.0)
    })
    .await;
    assert!(ignored, "both forged replies were ignored");
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["version"], 2, "s2 is still pending: {view}");
    assert_eq!(view["status"], "running");
}

#[actix_web::test]
async fn a_command_to_a_deleted_queue_is_not_dropped_the_queue_is_declared_again() {
    let app = spawn_app(None).await;
    let script: Script = Arc::new(|c: &Received| match c.step() {
        "s1" => Answer::Done(json!({})),
        _ => Answer::Silent,
    });
    let participants = Participants::start(&app.names, 1, script).await;
    // s2's queue disappears (deleted by an operator, or by a participant's own clean-up).
    let queue = app.names.queue(2);
    {
        let conn = lapin::Connection::connect(&amqp_url(), Default::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_delete(queue.as_str().into(), Default::default())
            .await
            .expect("delete the queue");
        let _ = conn.close(200, "bye".into()).await;
    }
    let id = app.start_saga(json!({})).await;
    let waiting = wait_until(Duration::from_secs(10), || async {
        queue_depth(&queue).await == 1
    })
    .await;
    assert!(waiting, "s2's command waits in the queue declared again");
    assert_eq!(app.status(id).await, "running");
    participants.close().await;
}
