//! The same command_id, delivered again or concurrently, runs once; every delivery gets the
//! same reply.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_twice_runs_once_and_both_get_the_same_reply() {
    let rig = Rig::start().await;
    let cmd = rig.command(&saga_id(), "charge", "execute", "ok");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    rig.wait_replies(&cmd, 1).await;
    rig.send(&cmd).await;
    let replies = rig.wait_replies(&cmd, 2).await;
    assert_eq!(
        replies[0].body, replies[1].body,
        "the recorded outcome, output included"
    );
    assert_eq!(rig.runs(), 1);
    assert_eq!(rig.effects(id).await, 1);
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_twice_concurrently_runs_once() {
    let rig = Rig::start().await;
    // The handler holds its transaction 500 ms: the second delivery (prefetch 4) arrives
    // while the first is still running, waits on the inbox row, then reads its outcome.
    let cmd = rig.command(&saga_id(), "charge", "execute", "slow");
    let id = cmd["command_id"].as_str().unwrap();
    rig.send(&cmd).await;
    rig.send(&cmd).await;
    let replies = rig.wait_replies(&cmd, 2).await;
    assert_eq!(replies[0].body["status"], "done");
    assert_eq!(replies[0].body, replies[1].body);
    assert_eq!(rig.runs(), 1);
    assert_eq!(rig.effects(id).await, 1);
    assert_eq!(rig.inbox_rows(id).await, 1);
    rig.finish().await;
}
