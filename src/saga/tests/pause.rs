//! Pause, pivot, deadline, restart and old snapshots (CONTRACT.md section 4, "(new)").

use super::groups::grouped;
use super::*;
use crate::domain::OnError;

/// `d` with `on_error = "pause"` on the given steps.
fn pausing(mut d: SagaDefinition, steps: &[usize]) -> SagaDefinition {
    for &k in steps {
        d.steps[k].on_error = OnError::Pause;
    }
    d
}

/// a, b (the pivot, not compensable), c; a deadline of 5 s.
fn pivoted() -> SagaDefinition {
    let mut d = def(&[("a", true), ("b", false), ("c", true)]);
    d.steps[1].pivot = true;
    d.deadline_ms = Some(5_000);
    d
}

#[test]
fn a_failing_pausing_step_pauses_the_saga_once_and_resume_resends_it_with_attempt_one() {
    let d = pausing(
        grouped(def(&[("a", true), ("b", true), ("c", true)]), 1..3),
        &[1, 2],
    );
    let s = running_at(&d, 1);
    let t = ok(&s, &d, &error(&exec_id(&d, 1), "full"));
    assert_eq!(t.state.status, Status::Paused);
    assert_eq!(statuses(&t.state), [St::Done, St::Failed, St::Executing]);
    assert_eq!(
        t.state.pending,
        vec![
            one(&d, 1, Execute, 1, Phase::Parked, 2),
            one(&d, 2, Execute, 1, Phase::AwaitingReply, 2)
        ]
    );
    assert_eq!(t.effects, [Effect::Announce(Status::Paused)]);
    assert_eq!(t.record, rec("paused", "b", Some("full")));
    assert!(is_stale(&refused(&t.state, &d, &timer(&exec_id(&d, 1), 2))));

    let t = ok(&t.state, &d, &error(&exec_id(&d, 2), "full too"));
    assert_eq!(t.state.status, Status::Paused);
    assert!(t.effects.is_empty(), "announced once: {:?}", t.effects);
    assert_eq!(t.record, rec("paused", "c", Some("full too")));

    let t = ok(&t.state, &d, &Event::Resume);
    let v = t.state.version;
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(
        t.effects,
        [sends(&d, 1, Execute, 1, v), sends(&d, 2, Execute, 1, v)].concat()
    );
    assert_eq!(
        t.state.pending,
        [waits(&d, 1, Execute, 1, v), waits(&d, 2, Execute, 1, v)].concat()
    );
    assert_eq!(statuses(&t.state), [St::Done, St::Executing, St::Executing]);
    assert_eq!(t.record, rec("resumed", "b", None));
}

#[test]
fn skip_of_a_paused_step_counts_it_done_with_an_empty_output_and_goes_on() {
    let d = pausing(abc(), &[1]);
    let s = ok(&running_at(&d, 1), &d, &error(&exec_id(&d, 1), "full")).state;
    let e = refused(&s, &d, &skip(&d, 2));
    assert!(matches!(e, TransitionError::NotAllowed(_)), "{e:?}");
    let t = ok(&s, &d, &skip(&d, 1));
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(statuses(&t.state), [St::Done, St::Done, St::Executing]);
    assert_eq!(t.state.steps[1].error, None);
    assert_eq!(
        Value::Object(t.state.results.clone()),
        json!({"a": {"n": 0}, "b": {}})
    );
    assert_eq!(t.effects, sends(&d, 2, Execute, 1, t.state.version));
    assert_eq!(t.record, rec("step_skipped", "b", None));
}

#[test]
fn abort_of_a_paused_saga_compensates_the_paused_step_only_when_it_timed_out() {
    let d = pausing(def_with(&[("a", true), ("b", true)], 1), &[1]);
    let answered = ok(&running_at(&d, 1), &d, &error(&exec_id(&d, 1), "no")).state;
    let t = ok(&answered, &d, &Event::Abort);
    assert_eq!(statuses(&t.state), [St::Compensating, St::Failed]);
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("aborted", "b", None));

    let s = running_at(&d, 1);
    let timed_out = ok(&s, &d, &fire(&s, &exec_id(&d, 1))).state;
    assert_eq!(timed_out.status, Status::Paused);
    assert_eq!(statuses(&timed_out), [St::Done, St::TimedOut]);
    let t = ok(&timed_out, &d, &Event::Abort);
    assert_eq!(statuses(&t.state), [St::Done, St::Compensating]);
    assert_eq!(t.effects, sends(&d, 1, Compensate, 1, t.state.version));
    assert_eq!(t.state.to_compensate, [0]);
}

#[test]
fn after_a_done_pivot_a_later_failure_pauses_whatever_its_on_error() {
    let d = pivoted();
    assert_eq!(d.steps[2].on_error, OnError::Compensate);
    let t = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no"));
    assert_eq!(t.state.status, Status::Paused);
    assert_eq!(statuses(&t.state), [St::Done, St::Done, St::Failed]);
    assert_eq!(
        t.state.pending,
        pending(&d, 2, Execute, 1, Phase::Parked, 3)
    );
    assert_eq!(t.effects, [Effect::Announce(Status::Paused)]);
    assert_eq!(t.record, rec("paused", "c", Some("no")));
}

#[test]
fn abort_past_a_done_pivot_is_refused_naming_the_pivot() {
    let d = pivoted();
    let running = running_at(&d, 2);
    let paused = ok(&running, &d, &error(&exec_id(&d, 2), "no")).state;
    for s in [&running, &paused] {
        match refused(s, &d, &Event::Abort) {
            TransitionError::NotAllowed(why) => assert!(why.contains("`b`"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // While the pivot itself is pending the saga can still be aborted.
    let t = ok(&running_at(&d, 1), &d, &Event::Abort);
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
}

#[test]
fn a_deadline_past_a_pivot_pauses_the_saga() {
    let d = pivoted();
    let t = ok(&running_at(&d, 2), &d, &Event::Deadline);
    assert_eq!(t.state.status, Status::Paused);
    assert!(t.state.deadline_passed);
    assert_eq!(
        t.state.pending,
        pending(&d, 2, Execute, 1, Phase::Parked, 3)
    );
    assert_eq!(t.effects, [Effect::Announce(Status::Paused)]);
    assert_eq!(
        t.record,
        rec("deadline", "c", Some("paused: past the pivot step `b`"))
    );
}

#[test]
fn a_deadline_before_the_pivot_aborts_the_saga() {
    let d = pivoted();
    let first = start(&d, saga_id(), json!({}), "");
    let armed = [
        sends(&d, 0, Execute, 1, 1),
        vec![Effect::ArmDeadline {
            after_start_ms: 5_000,
        }],
    ]
    .concat();
    assert_eq!(first.effects, armed);
    let t = ok(&running_at(&d, 1), &d, &Event::Deadline);
    assert_eq!(t.state.status, Status::Compensating);
    assert!(t.state.deadline_passed);
    assert_eq!(
        statuses(&t.state),
        [St::Compensating, St::Aborted, St::NotStarted]
    );
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("deadline", "b", Some("aborted")));
}

#[test]
fn the_deadline_fires_once() {
    let d = pivoted();
    let s = ok(&running_at(&d, 1), &d, &Event::Deadline).state;
    assert!(is_stale(&refused(&s, &d, &Event::Deadline)));
    // Past the pivot it paused the saga; an operator's resume is not undone by it again.
    let paused = ok(&running_at(&d, 2), &d, &Event::Deadline).state;
    let resumed = ok(&paused, &d, &Event::Resume).state;
    assert_eq!(resumed.status, Status::Running);
    assert!(is_stale(&refused(&resumed, &d, &Event::Deadline)));
}

#[test]
fn a_deadline_while_paused_only_notes_it() {
    let mut d = pausing(abc(), &[1]);
    d.deadline_ms = Some(5_000);
    let s = ok(&running_at(&d, 1), &d, &error(&exec_id(&d, 1), "full")).state;
    let t = ok(&s, &d, &Event::Deadline);
    assert_eq!(t.state.status, Status::Paused);
    assert!(t.state.deadline_passed);
    assert!(t.effects.is_empty(), "{:?}", t.effects);
    assert_eq!(t.state.pending, s.pending);
    assert_eq!(
        t.record,
        rec("deadline", "b", Some("passed while paused: nothing done"))
    );
    let resumed = ok(&t.state, &d, &Event::Resume).state;
    assert_eq!(resumed.status, Status::Running);
    assert_eq!(
        resume(&resumed, &d),
        sends(&d, 1, Execute, 1, resumed.version),
        "a restart does not arm a deadline that passed"
    );
}

#[test]
fn resume_after_a_restart_resends_awaiting_commands_rearms_back_offs_and_the_deadline_until_it_passed(
) {
    let mut d = grouped(def(&[("a", true), ("b", true), ("c", true)]), 1..3);
    d.deadline_ms = Some(9_000);
    d.steps[2].retry_backoff_ms = 500;
    let s = running_at(&d, 1);
    let s = ok(&s, &d, &retryable(&exec_id(&d, 2), "busy")).state;
    let back_off = Effect::ArmTimer {
        command_id: exec_id(&d, 2),
        attempt: 1,
        generation: 3,
        after_ms: 500,
    };
    let deadline = Effect::ArmDeadline {
        after_start_ms: 9_000,
    };
    assert_eq!(
        resume(&s, &d),
        [
            sends(&d, 1, Execute, 1, 2),
            vec![back_off.clone(), deadline.clone()]
        ]
        .concat()
    );
    // Paused: the parked command is not sent; the deadline is armed (when it passes while
    // paused it is only noted, as for a saga that stayed in memory, so that a restart
    // during the pause cannot make a later resume run without its deadline).
    let paused = pausing(d.clone(), &[1]);
    let p = ok(&s, &paused, &error(&exec_id(&d, 1), "full")).state;
    assert_eq!(resume(&p, &paused), [back_off, deadline]);
    // Compensating: the compensates, no deadline.
    let c = ok(&s, &d, &Event::Deadline).state;
    assert_eq!(
        resume(&c, &d),
        [
            sends(&d, 1, Compensate, 1, 4),
            sends(&d, 2, Compensate, 1, 4)
        ]
        .concat()
    );
}

#[test]
fn an_old_snapshot_with_one_pending_command_and_a_saga_wide_timer_is_upgraded() {
    let d = abc();
    let now = ok(&started(&d), &d, &fire(&started(&d), &exec_id(&d, 0))).state;
    let mut old = serde_json::to_value(&now).unwrap_or_default();
    assert!(
        old.get("timer").is_none(),
        "no saga-wide timer is written now"
    );
    old["pending"] = json!({
        "step": 0,
        "action": "execute",
        "command_id": exec_id(&d, 0),
        "attempt": 2,
        "phase": "awaiting_reply"
    });
    old["timer"] = json!(2);
    let loaded: SagaState = match serde_json::from_value(old.clone()) {
        Ok(s) => s,
        Err(e) => panic!("old snapshot refused: {e}"),
    };
    assert_eq!(
        loaded.pending,
        pending(&d, 0, Execute, 2, Phase::AwaitingReply, 0)
    );
    assert_eq!(loaded.timer, 2);
    let upgraded = loaded.upgraded();
    assert_eq!(upgraded, now);
    assert!(ok(&upgraded, &d, &timer(&exec_id(&d, 0), 2)).state.steps[0].attempts == 3);

    old["pending"] = Value::Null;
    old["timer"] = json!(0);
    let none: SagaState = match serde_json::from_value(old) {
        Ok(s) => s,
        Err(e) => panic!("old snapshot refused: {e}"),
    };
    assert!(none.pending.is_empty());
}
