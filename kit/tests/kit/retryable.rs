//! A retryable error is not recorded: its writes are undone and a re-send runs again.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_error_after_writing_leaves_neither_effect_nor_inbox_row() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "retry_after_write");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    let r = rig.wait_replies(&cmd, 1).await;
    assert_eq!(r[0].body["status"], "error");
    assert_eq!(r[0].body["retryable"], true);
    assert_eq!(rig.effects(id).await, 0);
    assert_eq!(rig.inbox_rows(id).await, 0);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_answered_retryable_runs_again_when_sent_again() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "retry_once");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    let first = rig.wait_replies(&cmd, 1).await;
    assert_eq!(first[0].body["retryable"], true);
    assert_eq!(rig.inbox_rows(id).await, 0);
    rig.send(&cmd).await;
    let second = rig.wait_replies(&cmd, 2).await;
    assert_eq!(second[1].body["status"], "done");
    assert!(second[1].body.get("retryable").is_none());
    assert_eq!(rig.runs(), 2);
    assert_eq!(rig.effects(id).await, 1);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_error_through_the_question_mark_fails_the_step_for_good_in_postgres_words() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "violate");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    let r = rig.wait_replies(&cmd, 1).await;
    assert_eq!(r[0].body["status"], "error");
    assert!(r[0].body.get("retryable").is_none(), "{}", r[0].body);
    let error = r[0].body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("division by zero") && error.contains("SQLSTATE 22012"),
        "PostgreSQL's message and code, not `db error`: {error}"
    );
    // Recorded, its write undone: a re-send gets the same answer without running.
    assert_eq!(rig.effects(id).await, 0);
    assert_eq!(rig.inbox_rows(id).await, 1);
    rig.send(&cmd).await;
    let again = rig.wait_replies(&cmd, 2).await;
    assert_eq!(again[1].body["error"], r[0].body["error"]);
    assert_eq!(rig.runs(), 1);
    rig.finish().await;
}
