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
