//! A compensate that overtakes its execute fences it; a compensate after its execute runs.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensate_before_its_execute_is_done_and_the_execute_is_refused_unrun() {
    let rig = Rig::start().await;
    let saga = saga_id();
    let compensate = rig.command(&saga, "charge", "compensate", "ok");
    rig.send(&compensate).await;
    let c = rig.wait_replies(&compensate, 1).await;
    assert_eq!(c[0].body["status"], "done");
    assert_eq!(rig.runs(), 0, "nothing to undo: the handler is not called");

    let execute = rig.command(&saga, "charge", "execute", "ok");
    rig.send(&execute).await;
    let e = rig.wait_replies(&execute, 1).await;
    assert_eq!(e[0].body["status"], "error");
    assert!(e[0].body.get("retryable").is_none());
    assert_eq!(rig.runs(), 0, "the fenced execute does not run");
    let id = execute["command_id"].as_str().unwrap();
    assert_eq!(rig.effects(id).await, 0);
    // Its answer is recorded: a re-send gets the same error.
    rig.send(&execute).await;
    let again = rig.wait_replies(&execute, 2).await;
    assert_eq!(again[1].body, again[0].body);
    // Another step of the same saga is not fenced.
    let other = rig.command(&saga, "ship", "execute", "ok");
    rig.send(&other).await;
    assert_eq!(rig.wait_replies(&other, 1).await[0].body["status"], "done");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensate_after_its_execute_runs_the_handler() {
    let rig = Rig::start().await;
    let saga = saga_id();
    let execute = rig.command(&saga, "charge", "execute", "ok");
    rig.send(&execute).await;
    assert_eq!(
        rig.wait_replies(&execute, 1).await[0].body["status"],
        "done"
    );
    let compensate = rig.command(&saga, "charge", "compensate", "ok");
    rig.send(&compensate).await;
    assert_eq!(
        rig.wait_replies(&compensate, 1).await[0].body["status"],
        "done"
    );
    assert_eq!(rig.runs(), 2);
    let id = compensate["command_id"].as_str().unwrap();
    assert_eq!(rig.effects(id).await, 1);
    rig.finish().await;
}
