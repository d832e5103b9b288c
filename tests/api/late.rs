use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// The `saga_replies_total` counter for one outcome.
async fn replies(app: &TestApp, outcome: &str) -> u64 {
    let sample = format!("saga_replies_total{{outcome=\"{outcome}\"}}");
    app.metric(&sample).await.unwrap_or(0.0) as u64
}

#[actix_web::test]
async fn a_reply_delayed_past_the_time_out_counts_once_and_the_answer_to_the_resend_is_ignored() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 400, 3)]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    // s1's first send is answered only after its re-send went out (past the time-out).
    let held: Arc<Mutex<Option<Received>>> = Arc::new(Mutex::new(None));
    let keep = held.clone();
    let script: Script = Arc::new(move |c: &Received| {
        if c.step() == "s1" && c.body["attempt"] == json!(1) {
            if let Ok(mut h) = keep.lock() {
                *h = Some(c.clone());
            }
            return Answer::Silent;
        }
        if c.step() == "s1" {
            // The answer to the re-send is also held back, so the late one arrives first.
            return Answer::Silent;
        }
        Answer::Done(json!({}))
    });
    let participants = Participants::start(&app.names, 2, script).await;
    let id = app.start_saga(json!({})).await;
    let resent = wait_until(Duration::from_secs(5), || async {
        participants
            .for_saga(id)
            .iter()
            .filter(|c| c.step() == "s1")
            .count()
            == 2
    })
    .await;
    assert!(resent, "s1 was re-sent after its time-out");
    let first = held.lock().unwrap().clone().expect("first s1 command");
    let reply = |attempt: u64| json!({"command_id": first.command_id(), "saga_id": id, "status": "done", "output": {"attempt": attempt}});
    // The late answer to attempt 1 is the answer to the step: it is accepted.
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            reply(1).to_string().as_bytes(),
            None
        )
        .await
    );
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(5))
            .await
    );
    // The answer to attempt 2 then arrives: a duplicate, acked and ignored.
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            reply(2).to_string().as_bytes(),
            None
        )
        .await
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            replies(&app, "ignored").await >= 1
        })
        .await
    );
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(
        view["version"],
        json!(4),
        "started, re-sent, s1 done, s2 done (completed)"
    );
    assert_eq!(
        view["state"]["results"]["s1"],
        json!({"attempt": 1}),
        "the first answer stands"
    );
    assert_eq!(participants.distinct_ids(id, "s1", "execute").len(), 1);
}
