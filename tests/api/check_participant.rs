//! `saga-service check-participant`: the stub passes every rule; participants that each
//! break one rule fail it, named on its line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::operator_cli::{saga_service, Run};

/// The five rule lines, by name.
const RULES: [&str; 5] = ["fresh", "repeat", "resend", "compensate", "replies"];

async fn check(queue: &str, timeout_ms: &str) -> Run {
    saga_service(&[
        "check-participant",
        "--queue",
        queue,
        "--amqp-url",
        &amqp_url(),
        "--timeout-ms",
        timeout_ms,
    ])
    .await
}

/// The line of one rule.
fn line<'a>(run: &'a Run, rule: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(rule))
        .unwrap_or_else(|| panic!("no line for {rule}: {}", run.stdout))
}

#[actix_web::test]
async fn the_stub_passes_every_rule() {
    let names = Names::new();
    let queue = names.queue(1);
    let mut stub = tokio::process::Command::new(env!("CARGO_BIN_EXE_saga-service"))
        .args(["stub", "--queue", &queue])
        .env("SAGA_AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the stub");
    let consuming = wait_until(Duration::from_secs(15), || async {
        matches!(queue_stats(&queue).await, Some((_, consumers)) if consumers > 0)
    })
    .await;
    assert!(consuming, "the stub did not start consuming {queue}");
    let run = check(&queue, "5000").await;
    // Its own pid: a plain kill of the child, never of a process group.
    let _ = stub.kill().await;
    drop_resources(&names).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for rule in RULES {
        assert!(line(&run, rule).contains(" pass"), "{}", run.stdout);
    }
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
}

/// Runs the check against a scripted participant on a fresh queue.
async fn check_scripted(script: Script, timeout_ms: &str) -> Run {
    let names = Names::new();
    let participants = Participants::start(&names, 1, script).await;
    let run = check(&names.queue(1), timeout_ms).await;
    participants.close().await;
    drop_resources(&names).await;
    run
}

#[actix_web::test]
async fn a_participant_that_runs_a_repeated_command_again_fails_the_repeat_rule() {
    let runs = Arc::new(AtomicUsize::new(0));
    let script: Script = Arc::new(move |_c: &Received| {
        Answer::Done(json!({ "run": runs.fetch_add(1, Ordering::SeqCst) }))
    });
    let run = check_scripted(script, "3000").await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(line(&run, "fresh").contains(" pass"), "{}", run.stdout);
    let repeat = line(&run, "repeat");
    assert!(
        repeat.contains("FAIL") && repeat.contains("ran again"),
        "{}",
        run.stdout
    );
    assert!(line(&run, "resend").contains("FAIL"), "{}", run.stdout);
}

#[actix_web::test]
async fn a_participant_that_runs_an_execute_after_its_compensate_fails_the_compensate_rule() {
    let script: Script = Arc::new(|c: &Received| Answer::Done(json!({ "step": c.step() })));
    let run = check_scripted(script, "3000").await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for rule in ["fresh", "repeat", "resend", "replies"] {
        assert!(line(&run, rule).contains(" pass"), "{}", run.stdout);
    }
    let compensate = line(&run, "compensate");
    assert!(
        compensate.contains("FAIL") && compensate.contains("answered done"),
        "{}",
        run.stdout
    );
}

#[actix_web::test]
async fn a_participant_that_never_answers_fails_the_fresh_rule_within_the_time_out() {
    let started = std::time::Instant::now();
    let run = check_scripted(Arc::new(|_c: &Received| Answer::Silent), "300").await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        line(&run, "fresh").contains("FAIL: no answer within 300 ms"),
        "{}",
        run.stdout
    );
    for rule in RULES {
        assert!(line(&run, rule).contains("FAIL"), "{}", run.stdout);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[actix_web::test]
async fn a_missing_queue_is_exit_1_an_unreachable_broker_exit_3_and_bad_usage_exit_2() {
    let missing = check(&format!("{}.nowhere", Names::new().prefix), "300").await;
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(missing.stderr.contains("no queue"), "{}", missing.stderr);
    let down = saga_service(&[
        "check-participant",
        "--queue",
        "q",
        "--amqp-url",
        &format!("amqp://guest:pw@127.0.0.1:{}/%2f", free_port()),
    ])
    .await;
    assert_eq!(down.code, Some(3), "{}", down.stderr);
    assert!(!down.stderr.contains(":pw@"), "{}", down.stderr);
    let usage = saga_service(&["check-participant"]).await;
    assert_eq!(usage.code, Some(2), "--queue is required: {}", usage.stderr);
    let zero = check("q", "0").await;
    assert_eq!(zero.code, Some(2), "{}", zero.stderr);
}
