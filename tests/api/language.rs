//! The saga language of CONTRACT.md sections 2 and 4, end to end: parallel groups,
//! retryable errors, pause, pivot steps and deadlines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use saga_service::domain::{OnError, SagaDefinition};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

/// Starts an app on a definition of `n` steps that `shape` adjusts.
async fn app_with(n: usize, shape: impl FnOnce(&mut SagaDefinition)) -> TestApp {
    let names = Names::new();
    let mut def = steps(&names, n, 30_000, 3);
    shape(&mut def);
    write_definitions(&names, &[def]);
    create_database(&names).await;
    start_app(names, true).await
}

fn attempt(c: &Received) -> u64 {
    c.body["attempt"].as_u64().unwrap_or(0)
}

/// The `(action, step)` of each command the saga's participants received, in order.
fn sent(p: &Participants, id: Uuid) -> Vec<(String, String)> {
    p.for_saga(id)
        .iter()
        .map(|c| (c.action().to_string(), c.step().to_string()))
        .collect()
}

fn position(log: &[(String, String)], action: &str, step: &str) -> Option<usize> {
    log.iter().position(|(a, s)| a == action && s == step)
}

/// History events of a saga, oldest first.
async fn events(app: &TestApp, id: Uuid) -> Vec<String> {
    app.saga_view(&id.to_string()).await["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["event"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn act(app: &TestApp, id: Uuid, action: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/{action}")))
        .json(&body)
        .send()
        .await
        .expect("operator action");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[actix_web::test]
async fn a_group_sends_its_steps_together_and_goes_on_once_all_are_done() {
    // s2 and s3 form a group; s2's first send goes unanswered (time-out 800 ms), so s3 can
    // only have been sent before s2 was done if the group was sent together.
    let app = app_with(4, |d| {
        d.steps[1].group = Some("book".into());
        d.steps[2].group = Some("book".into());
        d.steps[1].timeout_ms = 800;
    })
    .await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") if attempt(c) == 1 => Answer::Silent,
        _ => Answer::Done(json!({ "from": c.step() })),
    });
    let participants = Participants::start(&app.names, 4, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "completed", WAIT).await);
    let log = sent(&participants, id);
    let s3 = position(&log, "execute", "s3").expect("s3 sent");
    let s2_again = participants
        .for_saga(id)
        .iter()
        .position(|c| c.step() == "s2" && attempt(c) == 2)
        .expect("s2 re-sent after its time-out");
    let s4 = position(&log, "execute", "s4").expect("s4 sent");
    assert!(s3 < s2_again, "s3 went out while s2 was pending: {log:?}");
    assert!(s2_again < s4, "s4 waited for the whole group: {log:?}");
    let s4_cmd = participants
        .for_saga(id)
        .into_iter()
        .find(|c| c.step() == "s4")
        .expect("s4");
    assert_eq!(s4_cmd.body["results"]["s2"], json!({"from": "s2"}));
    assert_eq!(s4_cmd.body["results"]["s3"], json!({"from": "s3"}));
    assert_eq!(
        participants.distinct_ids(id, "s2", "execute").len(),
        1,
        "one command_id for s2's two sends"
    );
}

#[actix_web::test]
async fn a_failing_group_step_compensates_its_pending_sibling_with_it_then_the_earlier_steps() {
    let app = app_with(3, |d| {
        d.steps[1].group = Some("book".into());
        d.steps[2].group = Some("book".into());
    })
    .await;
    // s2 never answers its execute (it may have run); s3 fails (it did not run).
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Silent,
        ("s3", "execute") => Answer::Error("no rooms".into()),
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "compensated", WAIT).await);
    let compensated: Vec<String> = sent(&participants, id)
        .into_iter()
        .filter(|(a, _)| a == "compensate")
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        compensated,
        ["s2", "s1"],
        "the pending group step first (s3 failed, so it is not compensated), then s1"
    );
    // A late done for s2's execute changes nothing.
    let s2 = participants
        .for_saga(id)
        .into_iter()
        .find(|c| c.step() == "s2" && c.action() == "execute")
        .expect("s2 execute");
    let before = app.saga_view(&id.to_string()).await["version"].clone();
    let reply = json!({"command_id": s2.command_id(), "saga_id": id, "status": "done"});
    assert!(
        publish_reply(
            &participants.channel,
            s2.reply_to.as_deref().unwrap_or("responses"),
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    let moved = wait_until(Duration::from_secs(1), || async {
        app.saga_view(&id.to_string()).await["version"] != before
    })
    .await;
    assert!(!moved, "a late done of a compensated group step is ignored");
    assert_eq!(app.status(id).await, "compensated");
}

#[actix_web::test]
async fn a_retryable_error_resends_the_same_command_after_its_back_off_and_the_saga_goes_on() {
    let app = app_with(2, |d| d.steps[0].retry_backoff_ms = 400).await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), attempt(c)) {
        ("s1", 1) => Answer::Retryable("gateway 503".into()),
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 2, script).await;
    let started = Instant::now();
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "completed", WAIT).await);
    let s1: Vec<Received> = participants
        .for_saga(id)
        .into_iter()
        .filter(|c| c.step() == "s1")
        .collect();
    assert_eq!(s1.iter().map(attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(participants.distinct_ids(id, "s1", "execute").len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(participants
        .for_saga(id)
        .iter()
        .all(|c| c.action() == "execute"));
    let history = events(&app, id).await;
    assert!(history.contains(&"step_retry".to_string()), "{history:?}");
    assert_eq!(
        app.metric("saga_retries_total{reason=\"retryable_error\"}")
            .await,
        Some(1.0)
    );
}

#[actix_web::test]
async fn retryable_errors_past_max_attempts_count_as_a_plain_error() {
    let app = app_with(2, |d| {
        d.steps[1].retry_backoff_ms = 100;
        d.steps[1].max_attempts = 3;
    })
    .await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Retryable("still down".into()),
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 2, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "compensated", WAIT).await);
    let s2: Vec<u64> = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.step() == "s2")
        .map(attempt)
        .collect();
    assert_eq!(s2, [1, 2, 3], "sent max_attempts times, then an error");
    let compensated: Vec<(String, String)> = sent(&participants, id)
        .into_iter()
        .filter(|(a, _)| a == "compensate")
        .collect();
    assert_eq!(
        compensated,
        [("compensate".to_string(), "s1".to_string())],
        "s2 failed (not compensated); s1 is"
    );
}

/// A definition whose s2 pauses on failure; s2 fails while `fail` is set.
async fn pausing() -> (TestApp, Participants, Arc<AtomicBool>) {
    let app = app_with(3, |d| d.steps[1].on_error = OnError::Pause).await;
    let fail = Arc::new(AtomicBool::new(true));
    let flag = fail.clone();
    let script: Script = Arc::new(move |c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") if flag.load(Ordering::SeqCst) => Answer::Error("card expired".into()),
        _ => Answer::Done(json!({ "from": c.step() })),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    (app, participants, fail)
}

#[actix_web::test]
async fn a_pausing_step_pauses_the_saga_and_resume_resends_it_with_the_same_command_id() {
    let (app, participants, fail) = pausing().await;
    let observer = EventObserver::start(app.saga()).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "paused", WAIT).await);
    let announced = wait_until(WAIT, || async {
        observer
            .all()
            .iter()
            .any(|e| e["saga_id"] == json!(id) && e["status"] == "paused")
    })
    .await;
    assert!(announced, "paused is announced on saga.events");
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["step"], "s2");
    assert!(
        participants
            .for_saga(id)
            .iter()
            .all(|c| c.action() == "execute"),
        "nothing is compensated"
    );
    assert_eq!(
        app.metric(&format!("saga_paused_total{{saga=\"{}\"}}", app.saga()))
            .await,
        Some(1.0)
    );
    fail.store(false, Ordering::SeqCst);
    let (status, body) = act(&app, id, "resume", json!({"by": "ops"})).await;
    assert_eq!(status, 202, "{body}");
    assert!(app.wait_status(id, "completed", WAIT).await);
    let s2: Vec<Received> = participants
        .for_saga(id)
        .into_iter()
        .filter(|c| c.step() == "s2")
        .collect();
    assert_eq!(s2.len(), 2);
    assert_eq!(s2[1].command_id(), s2[0].command_id());
    assert_eq!(attempt(&s2[1]), 1, "attempts reset");
}

#[actix_web::test]
async fn skip_counts_the_paused_step_done_and_abort_compensates_without_it() {
    let (app, participants, _fail) = pausing().await;
    let skipped = app.start_saga(json!({})).await;
    let aborted = app.start_saga(json!({})).await;
    assert!(app.wait_status(skipped, "paused", WAIT).await);
    assert!(app.wait_status(aborted, "paused", WAIT).await);

    let (status, body) = act(&app, skipped, "skip", json!({"step": "s1"})).await;
    assert_eq!(status, 409, "skip names the paused step or nothing: {body}");
    let (status, body) = act(&app, skipped, "skip", json!({"step": "s2"})).await;
    assert_eq!(status, 202, "{body}");
    assert!(app.wait_status(skipped, "completed", WAIT).await);
    let s3 = participants
        .for_saga(skipped)
        .into_iter()
        .find(|c| c.step() == "s3")
        .expect("s3 ran after the skip");
    assert_eq!(s3.body["results"]["s2"], json!({}));

    let (status, body) = act(&app, aborted, "abort", json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert!(app.wait_status(aborted, "compensated", WAIT).await);
    let compensated: Vec<String> = sent(&participants, aborted)
        .into_iter()
        .filter(|(a, _)| a == "compensate")
        .map(|(_, s)| s)
        .collect();
    assert_eq!(compensated, ["s1"], "s2 failed, so only s1 is undone");
}

#[actix_web::test]
async fn past_a_pivot_a_failure_pauses_and_abort_is_refused_naming_the_pivot() {
    let app = app_with(3, |d| d.steps[1].pivot = true).await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s3", "execute") => Answer::Error("carrier down".into()),
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "paused", WAIT).await);
    let (status, body) = act(&app, id, "abort", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("s2"),
        "names the pivot: {body}"
    );
    assert_eq!(app.status(id).await, "paused");
    let (status, body) = act(&app, id, "skip", json!({"step": "s3"})).await;
    assert_eq!(status, 202, "{body}");
    assert!(app.wait_status(id, "completed", WAIT).await);
    assert!(
        participants
            .for_saga(id)
            .iter()
            .all(|c| c.action() == "execute"),
        "nothing is ever compensated past a pivot"
    );
}

#[actix_web::test]
async fn a_deadline_aborts_a_running_saga_and_a_restart_keeps_it() {
    let names = Names::new();
    let mut def = steps(&names, 3, 30_000, 3);
    def.deadline_ms = Some(2_500);
    write_definitions(&names, &[def]);
    create_database(&names).await;
    let app = start_app(names.clone(), false).await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let started = Instant::now();
    let id = app.start_saga(json!({})).await;
    let at_s2 = wait_until(WAIT, || async {
        participants.for_saga(id).iter().any(|c| c.step() == "s2")
    })
    .await;
    assert!(at_s2);
    // The instance that armed the deadline goes away; the next one re-arms it from the snapshot.
    app.stop().await;
    let app = start_app(names, true).await;
    assert!(app.wait_status(id, "compensated", WAIT).await);
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "not before the deadline"
    );
    let history = events(&app, id).await;
    assert!(history.contains(&"deadline".to_string()), "{history:?}");
    let compensated: Vec<String> = sent(&participants, id)
        .into_iter()
        .filter(|(a, _)| a == "compensate")
        .map(|(_, s)| s)
        .collect();
    assert_eq!(compensated, ["s2", "s1"], "the pending step may have run");
}

#[actix_web::test]
async fn a_deadline_past_the_pivot_pauses_instead() {
    let app = app_with(3, |d| {
        d.deadline_ms = Some(1_000);
        d.steps[1].pivot = true;
    })
    .await;
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s3", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "paused", WAIT).await);
    let history = events(&app, id).await;
    assert_eq!(history.last().map(String::as_str), Some("deadline"));
    assert!(participants
        .for_saga(id)
        .iter()
        .all(|c| c.action() == "execute"));
}
