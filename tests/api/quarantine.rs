use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_bad_reply_for_a_known_saga_is_dead_lettered_and_shown_on_the_saga() {
    let app = spawn_app(None).await;
    let id = app.start_saga(json!({})).await; // no participants: waits at s1
    let participants = Participants::start(&app.names, 0, always_done()).await;
    let body = json!({"saga_id": id, "status": "maybe", "command_id": "x"}).to_string();
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            body.as_bytes(),
            None
        )
        .await
    );
    let dlq = format!("{}.dlq", app.names.reply_queue);
    let shown = wait_until(Duration::from_secs(10), || async {
        app.saga_view(&id.to_string()).await["quarantined"]
            .as_array()
            .is_some_and(|q| !q.is_empty())
    })
    .await;
    assert!(shown, "the bad reply is recorded against the saga");
    let view = app.saga_view(&id.to_string()).await;
    let q = &view["quarantined"][0];
    assert!(q["reason"].as_str().unwrap_or("").contains("maybe"), "{q}");
    assert_eq!(q["body"], json!(body));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            queue_depth(&dlq).await == 1
        })
        .await
    );
    let dead = drain_queue(&dlq).await;
    assert!(dead[0].1.contains("x-saga-error"), "{}", dead[0].1);
    assert_eq!(view["status"], json!("running"), "the saga is untouched");
    assert_eq!(view["version"], json!(1));
}
