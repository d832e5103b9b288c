use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn abort_of_a_running_saga_compensates_the_pending_step_then_earlier_ones() {
    let app = spawn_app(None).await;
    let script: Script = std::sync::Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s3", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let at_s3 = wait_until(Duration::from_secs(10), || async {
        app.saga_view(&id.to_string()).await["step"] == json!("s3")
    })
    .await;
    assert!(at_s3);
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/abort")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        app.wait_status(id, "compensated", Duration::from_secs(10))
            .await
    );
    let order: Vec<String> = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.action() == "compensate")
        .map(|c| c.step().to_string())
        .collect();
    assert_eq!(order, ["s3", "s2", "s1"]);
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/abort")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "abort of a finished saga");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
}

#[actix_web::test]
async fn abort_and_retry_of_unknown_sagas_are_404_and_retry_of_a_running_one_is_409() {
    let app = spawn_app(None).await;
    let r = app
        .http
        .post(app.url(&format!("/sagas/{}/abort", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .http
        .post(app.url(&format!("/sagas/{}/retry", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let id = app.start_saga(json!({})).await; // no participants: stays running at s1
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = app
        .http
        .post(app.url("/sagas/not-an-id/abort"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[actix_web::test]
async fn skip_marks_a_failed_compensation_done_and_records_who_and_why() {
    let names = Names::new();
    let mut def = steps(&names, 2, 5_000, 1);
    def.steps[0].max_attempts = 1;
    write_definitions(&names, &[def]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    let script: Script = std::sync::Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Error("no".into()),
        ("s1", "compensate") => Answer::Error("locked".into()),
        _ => Answer::Done(json!({})),
    });
    let _participants = Participants::start(&app.names, 2, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(app.wait_status(id, "failed", Duration::from_secs(10)).await);
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/skip")))
        .json(&json!({"step": "s1", "by": "alice", "reason": "refunded by hand"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        app.wait_status(id, "compensated", Duration::from_secs(5))
            .await
    );
    let view = app.saga_view(&id.to_string()).await;
    let last = view["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], json!("compensation_skipped"));
    assert_eq!(last["detail"], json!("by alice: refunded by hand"));
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/skip")))
        .json(&json!({"step": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "nothing left to skip");
}

#[actix_web::test]
async fn resume_resends_the_pending_command_now_and_the_saga_completes() {
    let app = spawn_app(None).await; // 30 s time-outs: only resume can re-send in time
    let sends = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sends.clone();
    let script: Script = std::sync::Arc::new(move |c: &Received| {
        if c.step() == "s2" && counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Answer::Silent
        } else {
            Answer::Done(json!({}))
        }
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            !participants.distinct_ids(id, "s2", "execute").is_empty()
        })
        .await
    );
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/resume")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(5))
            .await
    );
    let s2: Vec<Received> = participants
        .for_saga(id)
        .into_iter()
        .filter(|c| c.step() == "s2")
        .collect();
    assert_eq!(s2.len(), 2);
    assert_eq!(s2[1].body["attempt"], json!(1), "attempts reset");
    assert_eq!(s2[0].command_id(), s2[1].command_id());
    let r = app
        .http
        .post(app.url(&format!("/sagas/{id}/resume")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[actix_web::test]
async fn with_an_admin_token_operator_actions_need_it_and_start_does_not() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| s.admin_token = Some("s3cret".into())).await;
    let id = app.start_saga(json!({})).await; // no token needed
    let url = app.url(&format!("/sagas/{id}/abort"));
    let r = app.http.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].is_string());
    let r = app
        .http
        .post(&url)
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .post(&url)
        .header("authorization", "Bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
