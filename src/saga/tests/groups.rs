//! Parallel groups and retryable errors (CONTRACT.md section 4, "(new)").

use super::*;

/// `d` with the steps in `range` in one group.
pub(super) fn grouped(mut d: SagaDefinition, range: std::ops::Range<usize>) -> SagaDefinition {
    for step in &mut d.steps[range] {
        step.group = Some("g".into());
    }
    d
}

/// a, b, then c, d and e in a group; all compensable.
fn ab_cde() -> SagaDefinition {
    grouped(
        def(&[
            ("a", true),
            ("b", true),
            ("c", true),
            ("d", true),
            ("e", true),
        ]),
        2..5,
    )
}

#[test]
fn a_groups_steps_are_sent_together_and_the_saga_goes_on_only_when_all_are_done() {
    let d = grouped(
        def(&[("a", true), ("b", true), ("c", true), ("d", true)]),
        1..3,
    );
    let t = ok(&started(&d), &d, &done(&exec_id(&d, 0), json!({"n": 0})));
    let s = &t.state;
    let both = [sends(&d, 1, Execute, 1, 2), sends(&d, 2, Execute, 1, 2)].concat();
    assert_eq!(t.effects, both);
    assert_eq!(
        s.pending,
        [waits(&d, 1, Execute, 1, 2), waits(&d, 2, Execute, 1, 2)].concat()
    );
    assert_eq!(
        statuses(s),
        [St::Done, St::Executing, St::Executing, St::NotStarted]
    );

    let t = ok(s, &d, &done(&exec_id(&d, 2), json!({"c": 1})));
    assert_eq!(t.state.status, Status::Running);
    assert!(t.effects.is_empty(), "b is still pending: {:?}", t.effects);
    assert_eq!(t.state.pending, waits(&d, 1, Execute, 1, 2));
    assert_eq!(t.record, rec("step_done", "c", None));

    let t = ok(&t.state, &d, &done(&exec_id(&d, 1), json!({"b": 1})));
    assert_eq!(t.effects, sends(&d, 3, Execute, 1, 4));
    assert_eq!(t.state.pending, waits(&d, 3, Execute, 1, 4));
    assert_eq!(t.record, rec("step_done", "b", None));
    assert_eq!(
        Value::Object(t.state.results.clone()),
        json!({"a": {"n": 0}, "b": {"b": 1}, "c": {"c": 1}})
    );
}

#[test]
fn a_failing_group_step_compensates_the_groups_done_and_pending_steps_together_then_the_earlier_ones_last_first(
) {
    let d = ab_cde();
    let s = ok(&running_at(&d, 2), &d, &done(&exec_id(&d, 2), json!({}))).state;
    assert_eq!(s.version, 4);
    let t = ok(&s, &d, &error(&exec_id(&d, 3), "sold out"));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(
        statuses(s),
        [
            St::Done,
            St::Done,
            St::Compensating,
            St::Failed,
            St::Compensating
        ]
    );
    let together = [
        sends(&d, 2, Compensate, 1, 5),
        sends(&d, 4, Compensate, 1, 5),
    ]
    .concat();
    assert_eq!(t.effects, together, "one transition sends both compensates");
    assert_eq!(
        s.pending,
        [
            waits(&d, 2, Compensate, 1, 5),
            waits(&d, 4, Compensate, 1, 5)
        ]
        .concat()
    );
    assert_eq!(s.to_compensate, [1, 0]);
    assert_eq!(t.record, rec("step_failed", "d", Some("sold out")));

    let t = ok(s, &d, &done(&comp_id(&d, 4), json!({})));
    assert!(t.effects.is_empty(), "c's compensate is still pending");
    assert_eq!(t.state.pending, waits(&d, 2, Compensate, 1, 5));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 2), json!({})));
    assert_eq!(t.effects, sends(&d, 1, Compensate, 1, 7));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 1), json!({})));
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, 8));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(
        t.state.steps[3].status,
        St::Failed,
        "its transaction never happened"
    );
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
}

#[test]
fn a_late_done_of_a_group_step_already_being_compensated_is_stale() {
    let d = ab_cde();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 3), "no")).state;
    assert_eq!(steps_pending(&s), [2, 4]);
    for late in [
        done(&exec_id(&d, 4), json!({})),
        done(&exec_id(&d, 2), json!({})),
        error(&exec_id(&d, 4), "late"),
        timer(&exec_id(&d, 4), 3),
    ] {
        assert!(is_stale(&refused(&s, &d, &late)), "{late:?}");
    }
}

#[test]
fn abort_during_a_group_compensates_its_done_and_pending_steps_together() {
    let d = ab_cde();
    let s = ok(&running_at(&d, 2), &d, &done(&exec_id(&d, 2), json!({}))).state;
    let t = ok(&s, &d, &Event::Abort);
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(
        statuses(s),
        [
            St::Done,
            St::Done,
            St::Compensating,
            St::Compensating,
            St::Compensating
        ]
    );
    let all = [2, 3, 4].map(|k| sends(&d, k, Compensate, 1, 5)).concat();
    assert_eq!(t.effects, all);
    assert_eq!(steps_pending(s), [2, 3, 4]);
    assert_eq!(s.to_compensate, [1, 0]);
    assert_eq!(t.record, rec("aborted", "d", None));
    assert!(is_stale(&refused(s, &d, &done(&exec_id(&d, 3), json!({})))));
}

#[test]
fn a_retryable_error_resends_the_same_command_after_a_doubling_backoff_then_counts_as_an_error() {
    let mut d = def_with(&[("a", true), ("b", true)], 4);
    d.steps[1].retry_backoff_ms = 25_000;
    let mut s = running_at(&d, 1);
    let mut delays = Vec::new();
    for attempt in 1..4 {
        let t = ok(&s, &d, &retryable(&exec_id(&d, 1), "busy"));
        let v = t.state.version;
        match t.effects.as_slice() {
            [Effect::ArmTimer {
                command_id,
                attempt: a,
                generation,
                after_ms,
            }] => {
                assert_eq!((command_id, *a, *generation), (&exec_id(&d, 1), attempt, v));
                delays.push(*after_ms);
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
        assert_eq!(t.state.status, Status::Running);
        assert_eq!(t.state.steps[1].status, St::Executing);
        assert_eq!(t.state.steps[1].error.as_deref(), Some("busy"));
        assert_eq!(
            t.state.pending,
            pending(&d, 1, Execute, attempt, Phase::BackingOff, v)
        );
        assert_eq!(t.record, rec("step_retry", "b", Some("busy")));
        let t = ok(&t.state, &d, &fire(&t.state, &exec_id(&d, 1)));
        assert_eq!(t.effects, sends(&d, 1, Execute, attempt + 1, v + 1));
        assert_eq!(t.record, rec("step_resent", "b", None));
        s = t.state;
    }
    assert_eq!(delays, [25_000, 50_000, 60_000]);
    // The fourth send was the last: its retryable error is a plain one.
    let t = ok(&s, &d, &retryable(&exec_id(&d, 1), "busy"));
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(statuses(&t.state), [St::Compensating, St::Failed]);
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("step_failed", "b", Some("busy")));
}

#[test]
fn the_time_out_armed_before_a_retryable_error_is_stale() {
    let d = abc();
    let s = running_at(&d, 1);
    let time_out = fire(&s, &exec_id(&d, 1));
    let backing_off = ok(&s, &d, &retryable(&exec_id(&d, 1), "busy")).state;
    assert!(is_stale(&refused(&backing_off, &d, &time_out)));
    assert!(is_stale(&refused(
        &backing_off,
        &d,
        &retryable(&exec_id(&d, 1), "again")
    )));
    let t = ok(&backing_off, &d, &fire(&backing_off, &exec_id(&d, 1)));
    assert_eq!(t.effects, sends(&d, 1, Execute, 2, t.state.version));
}

#[test]
fn a_step_done_after_a_retryable_error_carries_no_error_and_its_compensate_neither() {
    let d = def_with(&[("a", true), ("b", true)], 4);
    let s = ok(&started(&d), &d, &retryable(&exec_id(&d, 0), "busy")).state;
    assert_eq!(s.steps[0].error.as_deref(), Some("busy"));
    let s = ok(&s, &d, &fire(&s, &exec_id(&d, 0))).state;
    let s = ok(&s, &d, &done(&exec_id(&d, 0), json!({}))).state;
    assert_eq!(s.steps[0].status, St::Done);
    assert_eq!(
        s.steps[0].error, None,
        "the retry's error is history, not the step's"
    );
    // b fails: a compensates, its first compensate answers error, the second done.
    let s = ok(&s, &d, &error(&exec_id(&d, 1), "no")).state;
    let s = ok(&s, &d, &error(&comp_id(&d, 0), "later")).state;
    assert_eq!(s.steps[0].error.as_deref(), Some("later"));
    let s = ok(&s, &d, &fire(&s, &comp_id(&d, 0))).state;
    let s = ok(&s, &d, &done(&comp_id(&d, 0), json!({}))).state;
    assert_eq!(s.status, Status::Compensated);
    assert_eq!(s.steps[0].status, St::Compensated);
    assert_eq!(s.steps[0].error, None);
    assert_eq!(
        s.steps[1].error.as_deref(),
        Some("no"),
        "a failed step keeps its error"
    );
}
