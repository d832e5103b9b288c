use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

#[actix_web::test]
async fn an_error_at_step_three_compensates_two_then_one_and_ends_compensated() {
    let app = spawn_app(None).await;
    let script: Script = std::sync::Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s3", "execute") => Answer::Error("no stock".into()),
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let events = EventObserver::start(app.saga()).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "compensated", WAIT).await);
    let seen: Vec<(String, String)> = participants
        .for_saga(id)
        .iter()
        .map(|c| (c.step().to_string(), c.action().to_string()))
        .collect();
    let expected = [
        ("s1", "execute"),
        ("s2", "execute"),
        ("s3", "execute"),
        ("s2", "compensate"),
        ("s1", "compensate"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(s, a)| (s.to_string(), a.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let comp = participants.for_saga(id);
    assert_eq!(comp[3].kind.as_deref(), Some("compensate"));
    assert_ne!(
        comp[3].command_id(),
        comp[1].command_id(),
        "compensate has its own command_id"
    );
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["version"], json!(6));
    let got = wait_until(Duration::from_secs(5), || async {
        !events.all().is_empty()
    })
    .await;
    assert!(got);
    assert_eq!(
        events.all()[0]["routing_key"],
        json!(format!("{}.compensated", app.saga()))
    );
}

#[actix_web::test]
async fn steps_with_compensate_false_are_not_compensated() {
    let app = {
        let names = Names::new();
        let mut def = steps(&names, 3, 30_000, 3);
        def.steps[0].compensate = false;
        write_definitions(&names, &[def]);
        create_database(&names).await;
        start_app(names, true).await
    };
    let script: Script = std::sync::Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s3", "execute") => Answer::Error("no".into()),
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "compensated", WAIT).await);
    let compensated: Vec<String> = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.action() == "compensate")
        .map(|c| c.step().to_string())
        .collect();
    assert_eq!(compensated, ["s2"]);
}

#[actix_web::test]
async fn a_step_that_never_answers_is_resent_max_attempts_times_with_one_command_id_then_compensated(
) {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 300, 3)]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    let script: Script = std::sync::Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "compensated", WAIT).await);
    let s2: Vec<Received> = participants
        .for_saga(id)
        .into_iter()
        .filter(|c| c.step() == "s2" && c.action() == "execute")
        .collect();
    assert_eq!(s2.len(), 3, "sent max_attempts times");
    let attempts: Vec<u64> = s2
        .iter()
        .map(|c| c.body["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(
        participants.distinct_ids(id, "s2", "execute").len(),
        1,
        "one command_id"
    );
    let order: Vec<String> = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.action() == "compensate")
        .map(|c| c.step().to_string())
        .collect();
    assert_eq!(
        order,
        ["s2", "s1"],
        "the timed-out step is compensated first, then its predecessors"
    );
    assert!(participants.for_saga(id).iter().all(|c| c.step() != "s3"));
}

#[actix_web::test]
async fn a_compensation_that_keeps_failing_ends_failed_and_retry_finishes_it() {
    let names = Names::new();
    let mut def = steps(&names, 2, 5_000, 2);
    def.steps[0].max_attempts = 2;
    write_definitions(&names, &[def]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = refuse.clone();
    let script: Script = std::sync::Arc::new(move |c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Error("no".into()),
        ("s1", "compensate") if flag.load(std::sync::atomic::Ordering::SeqCst) => {
            Answer::Error("locked".into())
        }
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 2, script).await;
    let events = EventObserver::start(app.saga()).await;
    let id = app.start_saga(json!({})).await;
    // Two sends of the compensate (1 s back-off between them), then failed.
    assert!(app.wait_status(id, "failed", WAIT).await);
    assert_eq!(participants.distinct_ids(id, "s1", "compensate").len(), 1);
    let sends = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.action() == "compensate")
        .count();
    assert_eq!(sends, 2);
    let announced = wait_until(Duration::from_secs(5), || async {
        events.all().iter().any(|e| e["status"] == json!("failed"))
    })
    .await;
    assert!(announced, "failed is announced");

    // Retry while refusing is still a conflict-free 202; let it succeed this time.
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(app.wait_status(id, "compensated", WAIT).await);
    assert_eq!(
        participants.distinct_ids(id, "s1", "compensate").len(),
        1,
        "retry re-sends the same command_id"
    );
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "retry of a compensated saga");
}
