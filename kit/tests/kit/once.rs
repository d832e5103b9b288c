//! A command runs once, its effect and its inbox row committed in one transaction.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_once_and_its_effect_is_committed_with_its_inbox_row() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "ok");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    let replies = rig.wait_replies(&cmd, 1).await;
    assert_eq!(replies[0].body["status"], "done");
    assert_eq!(replies[0].body["service"], "payments");
    assert_eq!(rig.runs(), 1);
    assert_eq!(rig.effects(id).await, 1);
    assert_eq!(rig.inbox_status(id).await.as_deref(), Some("done"));
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_after_writing_leaves_no_effect_but_its_error_recorded() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "fail_after_write");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    let first = rig.wait_replies(&cmd, 1).await;
    assert_eq!(first[0].body["status"], "error");
    assert_eq!(first[0].body["error"], "refused after writing");
    assert!(first[0].body.get("retryable").is_none());
    assert_eq!(
        rig.effects(id).await,
        0,
        "the failed step's write is undone"
    );
    assert_eq!(rig.inbox_status(id).await.as_deref(), Some("error"));
    // The error is the command's outcome: a re-send gets it without running again.
    rig.send(&cmd).await;
    let both = rig.wait_replies(&cmd, 2).await;
    assert_eq!(both[1].body, both[0].body);
    assert_eq!(rig.runs(), 1);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_killed_mid_way_leaves_neither_effect_nor_inbox_row_and_runs_again() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "kill_once");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    // The first run's session is terminated after it wrote its effect: nothing of it is
    // committed, nothing is answered, and the command comes back and runs again.
    let replies = rig.wait_replies(&cmd, 1).await;
    assert_eq!(replies[0].body["status"], "done", "{:?}", replies[0].body);
    assert_eq!(rig.runs(), 2);
    assert_eq!(
        rig.effects(id).await,
        1,
        "only the second run's effect is committed"
    );
    assert_eq!(rig.inbox_rows(id).await, 1);
    rig.finish().await;
}
