//! Unit tests of the transition table at the top of `transition.rs` (CONTRACT.md section 4).
//!
//! Every row is driven from `start` through `apply` and checked on the new state, the exact
//! effects and the history record; a property test then runs random event sequences and
//! checks the invariants after each one.

use serde_json::{json, Value};
use uuid::Uuid;

use super::transition::{backoff_ms, BACKOFF_MAX_MS, BACKOFF_START_MS};
use super::{
    apply, command_id, resume, start, Effect, Event, Pending, Phase, Record, ReplyOutcome,
    SagaState, Status, StepAction, StepStatus, Transition, TransitionError,
};
use crate::domain::{SagaDefinition, StepDefinition};

use StepAction::{Compensate, Execute};
use StepStatus as St;

// ---------------------------------------------------------------- helpers

const MAX_ATTEMPTS: u32 = 3;

fn saga_id() -> Uuid {
    Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210)
}

/// Distinct per step, so a time-out armed with the wrong step's value shows.
fn timeout_of(step: usize) -> u64 {
    100 + 10 * step as u64
}

fn def_with(steps: &[(&str, bool)], max_attempts: u32) -> SagaDefinition {
    SagaDefinition {
        name: "trip".into(),
        version: 7,
        deadline_ms: None,
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, (name, compensate))| StepDefinition {
                compensate: *compensate,
                timeout_ms: timeout_of(i),
                max_attempts,
                ..StepDefinition::new(*name, format!("q-{name}"))
            })
            .collect(),
    }
}

fn def(steps: &[(&str, bool)]) -> SagaDefinition {
    def_with(steps, MAX_ATTEMPTS)
}

fn abc() -> SagaDefinition {
    def(&[("a", true), ("b", true), ("c", true)])
}

fn exec_id(d: &SagaDefinition, step: usize) -> String {
    command_id(&saga_id(), &d.steps[step].name, Execute)
}

fn comp_id(d: &SagaDefinition, step: usize) -> String {
    command_id(&saga_id(), &d.steps[step].name, Compensate)
}

fn id_of(d: &SagaDefinition, step: usize, action: StepAction) -> String {
    command_id(&saga_id(), &d.steps[step].name, action)
}

fn done(command_id: &str, output: Value) -> Event {
    Event::Reply {
        command_id: command_id.to_string(),
        outcome: ReplyOutcome::Done { output },
    }
}

fn error(command_id: &str, why: &str) -> Event {
    Event::Reply {
        command_id: command_id.to_string(),
        outcome: ReplyOutcome::Error {
            error: Some(why.to_string()),
            retryable: false,
        },
    }
}

/// An `error` reply with `"retryable": true`.
fn retryable(command_id: &str, why: &str) -> Event {
    Event::Reply {
        command_id: command_id.to_string(),
        outcome: ReplyOutcome::Error {
            error: Some(why.to_string()),
            retryable: true,
        },
    }
}

fn timer(command_id: &str, generation: i64) -> Event {
    Event::TimerFired {
        command_id: command_id.to_string(),
        generation,
    }
}

/// An operator's skip naming step `k`.
fn skip(d: &SagaDefinition, k: usize) -> Event {
    Event::Skip {
        step: d.steps[k].name.clone(),
    }
}

/// The timer generation `state` has armed for `command_id` (0 when it is not pending).
fn generation_of(state: &SagaState, command_id: &str) -> i64 {
    state.pending_command(command_id).map_or(0, |p| p.timer)
}

/// The timer `state` has armed for `command_id` (its current generation) going off.
fn fire(state: &SagaState, command_id: &str) -> Event {
    timer(command_id, generation_of(state, command_id))
}

/// The two effects of sending `action` of `step` with timer generation `generation`: the
/// command, then its time-out.
fn sends(
    d: &SagaDefinition,
    step: usize,
    action: StepAction,
    attempt: u32,
    generation: i64,
) -> Vec<Effect> {
    let command_id = id_of(d, step, action);
    vec![
        Effect::Send {
            step,
            action,
            command_id: command_id.clone(),
            attempt,
            generation,
        },
        Effect::ArmTimer {
            command_id,
            attempt,
            generation,
            after_ms: timeout_of(step),
        },
    ]
}

/// One pending command.
fn one(
    d: &SagaDefinition,
    step: usize,
    action: StepAction,
    attempt: u32,
    phase: Phase,
    timer: i64,
) -> Pending {
    Pending {
        step,
        action,
        command_id: id_of(d, step, action),
        attempt,
        phase,
        timer,
    }
}

/// The pending set of a saga waiting on one command.
fn pending(
    d: &SagaDefinition,
    step: usize,
    action: StepAction,
    attempt: u32,
    phase: Phase,
    timer: i64,
) -> Vec<Pending> {
    vec![one(d, step, action, attempt, phase, timer)]
}

/// The pending set right after a send of one command, armed with generation `timer`.
fn waits(
    d: &SagaDefinition,
    step: usize,
    action: StepAction,
    attempt: u32,
    timer: i64,
) -> Vec<Pending> {
    pending(d, step, action, attempt, Phase::AwaitingReply, timer)
}

fn rec(event: &str, step: &str, detail: Option<&str>) -> Record {
    Record {
        event: event.to_string(),
        step: Some(step.to_string()),
        detail: detail.map(str::to_string),
    }
}

/// The steps of the pending commands, in order.
fn steps_pending(s: &SagaState) -> Vec<usize> {
    s.pending.iter().map(|p| p.step).collect()
}

fn statuses(s: &SagaState) -> Vec<StepStatus> {
    s.steps.iter().map(|r| r.status).collect()
}

/// Applies an event that must be accepted; every accepted event bumps the version by one.
fn ok(state: &SagaState, d: &SagaDefinition, event: &Event) -> Transition {
    match apply(state, d, event) {
        Ok(t) => {
            assert_eq!(
                t.state.version,
                state.version + 1,
                "version after {event:?}"
            );
            t
        }
        Err(e) => panic!("{event:?} refused on a {} saga: {e}", state.status.as_str()),
    }
}

/// Applies an event that must be refused; the state stays as it was.
fn refused(state: &SagaState, d: &SagaDefinition, event: &Event) -> TransitionError {
    let before = state.clone();
    match apply(state, d, event) {
        Ok(t) => panic!("{event:?} accepted: {:?}", t.record),
        Err(e) => {
            assert_eq!(*state, before);
            e
        }
    }
}

fn is_stale(e: &TransitionError) -> bool {
    matches!(e, TransitionError::Stale(_))
}

fn started(d: &SagaDefinition) -> SagaState {
    start(d, saga_id(), json!({"order": 42}), "").state
}

/// A running saga whose steps before `k` answered `done` (output `{"n": i}`); step `k` is pending.
fn running_at(d: &SagaDefinition, k: usize) -> SagaState {
    (0..k).fold(started(d), |s, i| {
        ok(&s, d, &done(&exec_id(d, i), json!({ "n": i }))).state
    })
}

/// Answers the pending compensate `error` (with back-off re-sends) until the saga is failed.
fn exhaust_compensation(mut s: SagaState, d: &SagaDefinition) -> SagaState {
    while s.status == Status::Compensating {
        let Some(p) = s.pending.first().cloned() else {
            panic!("compensating without a pending command");
        };
        s = ok(&s, d, &error(&p.command_id, "no")).state;
        if s.status == Status::Compensating {
            s = ok(&s, d, &fire(&s, &p.command_id)).state;
        }
    }
    s
}

/// `abc` failed on `c`, then `b`'s compensate answered `error` three times: failed, `a` left.
fn failed_abc() -> (SagaDefinition, SagaState) {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no seats")).state;
    let s = exhaust_compensation(s, &d);
    assert_eq!(s.status, Status::Failed);
    (d, s)
}

fn completed(d: &SagaDefinition) -> SagaState {
    let last = d.steps.len() - 1;
    ok(&running_at(d, last), d, &done(&exec_id(d, last), json!({}))).state
}

fn compensated(d: &SagaDefinition) -> SagaState {
    ok(&started(d), d, &error(&exec_id(d, 0), "no")).state
}

// ---------------------------------------------------------------- start and forward

#[test]
fn start_stores_version_one_and_sends_step_one_with_its_timeout() {
    let d = abc();
    let t = start(&d, saga_id(), json!({"order": 42}), "");
    let s = &t.state;
    assert_eq!(s.saga_id, saga_id());
    assert_eq!(s.saga, "trip");
    assert_eq!(s.definition_version, 7);
    assert_eq!(s.payload, json!({"order": 42}));
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.version, 1);
    assert!(s.results.is_empty());
    assert_eq!(statuses(s), [St::Executing, St::NotStarted, St::NotStarted]);
    assert_eq!(s.steps[0].attempts, 1);
    assert_eq!(s.steps[0].compensate_attempts, 0);
    assert_eq!(s.pending, waits(&d, 0, Execute, 1, s.version));
    assert!(s.to_compensate.is_empty());
    assert_eq!(t.effects, sends(&d, 0, Execute, 1, t.state.version));
    assert_eq!(t.record, rec("started", "a", None));
}

#[test]
fn done_on_a_middle_step_sends_the_next_step_and_keeps_its_output() {
    let d = abc();
    let t = ok(
        &started(&d),
        &d,
        &done(&exec_id(&d, 0), json!({"seat": "12A"})),
    );
    let s = &t.state;
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.version, 2);
    assert_eq!(statuses(s), [St::Done, St::Executing, St::NotStarted]);
    assert_eq!(s.steps[1].attempts, 1);
    assert_eq!(
        Value::Object(s.results.clone()),
        json!({"a": {"seat": "12A"}})
    );
    assert_eq!(s.pending, waits(&d, 1, Execute, 1, s.version));
    assert_eq!(t.effects, sends(&d, 1, Execute, 1, t.state.version));
    assert_eq!(t.record, rec("step_done", "a", None));
}

#[test]
fn results_accumulate_the_output_of_every_done_step() {
    let d = abc();
    let t = ok(&running_at(&d, 1), &d, &done(&exec_id(&d, 1), json!(["x"])));
    assert_eq!(
        Value::Object(t.state.results.clone()),
        json!({"a": {"n": 0}, "b": ["x"]})
    );
    assert_eq!(t.state.version, 3);
    assert_eq!(t.state.pending, waits(&d, 2, Execute, 1, t.state.version));
    assert_eq!(t.effects, sends(&d, 2, Execute, 1, t.state.version));
}

#[test]
fn done_on_the_last_step_completes_and_announces() {
    let d = abc();
    let t = ok(
        &running_at(&d, 2),
        &d,
        &done(&exec_id(&d, 2), json!({"ok": true})),
    );
    let s = &t.state;
    assert_eq!(s.status, Status::Completed);
    assert_eq!(s.version, 4);
    assert_eq!(statuses(s), [St::Done, St::Done, St::Done]);
    assert_eq!(
        Value::Object(s.results.clone()),
        json!({"a": {"n": 0}, "b": {"n": 1}, "c": {"ok": true}})
    );
    assert!(s.pending.is_empty());
    assert!(s.to_compensate.is_empty());
    assert_eq!(t.effects, [Effect::Announce(Status::Completed)]);
    assert_eq!(t.record, rec("completed", "c", None));
}

#[test]
fn a_single_step_saga_completes_on_its_first_done() {
    let d = def(&[("only", true)]);
    let t = ok(&started(&d), &d, &done(&exec_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Completed);
    assert_eq!(t.state.version, 2);
    assert_eq!(t.effects, [Effect::Announce(Status::Completed)]);
    assert_eq!(t.record, rec("completed", "only", None));
}

// ---------------------------------------------------------------- execute answered error

#[test]
fn error_on_step_three_compensates_two_then_one() {
    let d = abc();
    let t = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no seats"));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(s.version, 4);
    assert_eq!(statuses(s), [St::Done, St::Compensating, St::Failed]);
    assert_eq!(s.steps[2].error.as_deref(), Some("no seats"));
    assert_eq!(s.steps[1].compensate_attempts, 1);
    assert_eq!(s.pending, waits(&d, 1, Compensate, 1, s.version));
    assert_eq!(s.to_compensate, [0]);
    assert_eq!(t.effects, sends(&d, 1, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("step_failed", "c", Some("no seats")));

    let t = ok(s, &d, &done(&comp_id(&d, 1), json!({})));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(s.version, 5);
    assert_eq!(statuses(s), [St::Compensating, St::Compensated, St::Failed]);
    assert_eq!(s.pending, waits(&d, 0, Compensate, 1, s.version));
    assert!(s.to_compensate.is_empty());
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("step_compensated", "b", None));

    let t = ok(s, &d, &done(&comp_id(&d, 0), json!({})));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensated);
    assert_eq!(s.version, 6);
    assert_eq!(statuses(s), [St::Compensated, St::Compensated, St::Failed]);
    assert!(s.pending.is_empty());
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
    assert_eq!(t.record, rec("compensated", "a", None));
}

#[test]
fn error_on_step_one_is_compensated_at_once_without_sending_a_compensate() {
    let d = abc();
    let t = ok(&started(&d), &d, &error(&exec_id(&d, 0), "card declined"));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensated);
    assert_eq!(s.version, 2);
    assert_eq!(statuses(s), [St::Failed, St::NotStarted, St::NotStarted]);
    assert_eq!(s.steps[0].compensate_attempts, 0);
    assert!(s.pending.is_empty());
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
    assert_eq!(
        t.record,
        rec("step_failed_compensated", "a", Some("card declined"))
    );
}

#[test]
fn an_error_without_a_reason_is_recorded_without_detail() {
    let d = abc();
    let event = Event::Reply {
        command_id: exec_id(&d, 0),
        outcome: ReplyOutcome::Error {
            error: None,
            retryable: false,
        },
    };
    let t = ok(&started(&d), &d, &event);
    assert_eq!(t.state.steps[0].error, None);
    assert_eq!(t.record, rec("step_failed_compensated", "a", None));
}

#[test]
fn steps_without_compensate_are_skipped_in_compensation() {
    let d = def(&[("a", true), ("b", false), ("c", true), ("d", true)]);
    let t = ok(&running_at(&d, 3), &d, &error(&exec_id(&d, 3), "no"));
    assert_eq!(
        t.state.pending,
        waits(&d, 2, Compensate, 1, t.state.version)
    );
    assert_eq!(t.state.to_compensate, [0]);
    assert_eq!(t.effects, sends(&d, 2, Compensate, 1, t.state.version));

    let t = ok(&t.state, &d, &done(&comp_id(&d, 2), json!({})));
    assert_eq!(
        t.state.pending,
        waits(&d, 0, Compensate, 1, t.state.version)
    );
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("step_compensated", "c", None));

    let t = ok(&t.state, &d, &done(&comp_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(
        statuses(&t.state),
        [St::Compensated, St::Done, St::Compensated, St::Failed]
    );
    assert_eq!(t.state.steps[1].compensate_attempts, 0);
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
}

#[test]
fn an_error_with_no_compensable_step_before_it_is_compensated_at_once() {
    let d = def(&[("a", false), ("b", false), ("c", true)]);
    let t = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no"));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(statuses(&t.state), [St::Done, St::Done, St::Failed]);
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
    assert_eq!(t.record, rec("step_failed_compensated", "c", Some("no")));
}

// ---------------------------------------------------------------- execute timed out

#[test]
fn a_time_out_resends_the_same_execute_command_with_the_next_attempt() {
    let d = abc();
    let s = running_at(&d, 1);
    let t = ok(&s, &d, &fire(&s, &exec_id(&d, 1)));
    assert_eq!(t.state.status, Status::Running);
    assert_eq!(t.state.steps[1].attempts, 2);
    assert_eq!(t.state.steps[1].status, St::Executing);
    assert_eq!(t.state.pending, waits(&d, 1, Execute, 2, t.state.version));
    assert_eq!(t.effects, sends(&d, 1, Execute, 2, t.state.version));
    assert_eq!(t.record, rec("step_resent", "b", None));

    let t = ok(&t.state, &d, &fire(&t.state, &exec_id(&d, 1)));
    assert_eq!(t.state.steps[1].attempts, 3);
    assert_eq!(t.state.pending, waits(&d, 1, Execute, 3, t.state.version));
    assert_eq!(t.effects, sends(&d, 1, Execute, 3, t.state.version));
    assert_eq!(t.state.version, s.version + 2);
}

#[test]
fn a_reply_to_a_resent_execute_is_accepted_as_usual() {
    let d = abc();
    let s = ok(&started(&d), &d, &fire(&started(&d), &exec_id(&d, 0))).state;
    let t = ok(&s, &d, &done(&exec_id(&d, 0), json!({"late": 1})));
    assert_eq!(t.state.pending, waits(&d, 1, Execute, 1, t.state.version));
    assert_eq!(t.effects, sends(&d, 1, Execute, 1, t.state.version));
    assert_eq!(t.state.steps[0].attempts, 2);
}

#[test]
fn after_max_attempts_the_timed_out_step_is_compensated_before_earlier_ones() {
    let d = abc();
    let mut s = running_at(&d, 2);
    for _ in 1..MAX_ATTEMPTS {
        s = ok(&s, &d, &fire(&s, &exec_id(&d, 2))).state;
    }
    let t = ok(&s, &d, &fire(&s, &exec_id(&d, 2)));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(s.steps[2].attempts, MAX_ATTEMPTS);
    assert_eq!(statuses(s), [St::Done, St::Done, St::Compensating]);
    assert_eq!(s.pending, waits(&d, 2, Compensate, 1, s.version));
    assert_eq!(s.to_compensate, [1, 0]);
    assert_eq!(t.effects, sends(&d, 2, Compensate, 1, t.state.version));
    assert_eq!(
        t.record,
        rec("step_timed_out", "c", Some("no reply after 3 attempts"))
    );

    let t = ok(s, &d, &done(&comp_id(&d, 2), json!({})));
    assert_eq!(t.effects, sends(&d, 1, Compensate, 1, t.state.version));
    assert_eq!(t.state.to_compensate, [0]);
    let t = ok(&t.state, &d, &done(&comp_id(&d, 1), json!({})));
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(statuses(&t.state), [St::Compensated; 3]);
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
}

#[test]
fn a_timed_out_step_without_compensate_is_skipped_but_earlier_ones_are_not() {
    let d = def_with(&[("a", true), ("b", false)], 1);
    let t = ok(
        &running_at(&d, 1),
        &d,
        &fire(&running_at(&d, 1), &exec_id(&d, 1)),
    );
    assert_eq!(statuses(&t.state), [St::Compensating, St::TimedOut]);
    assert_eq!(
        t.state.pending,
        waits(&d, 0, Compensate, 1, t.state.version)
    );
    assert!(t.state.to_compensate.is_empty());
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(
        t.record,
        rec("step_timed_out", "b", Some("no reply after 1 attempts"))
    );
}

#[test]
fn a_timed_out_first_step_without_compensate_is_compensated_at_once() {
    let d = def_with(&[("a", false), ("b", true)], 1);
    let t = ok(&started(&d), &d, &fire(&started(&d), &exec_id(&d, 0)));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(statuses(&t.state), [St::TimedOut, St::NotStarted]);
    assert!(t.state.pending.is_empty());
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
}

// ---------------------------------------------------------------- compensate answered error or unanswered

#[test]
fn backoff_doubles_from_one_second_and_is_capped_at_sixty() {
    assert_eq!(BACKOFF_START_MS, 1_000);
    assert_eq!(BACKOFF_MAX_MS, 60_000);
    let first: Vec<u64> = (1..=8).map(backoff_ms).collect();
    assert_eq!(
        first,
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(backoff_ms(0), 1_000);
    assert_eq!(backoff_ms(17), 60_000);
    assert_eq!(backoff_ms(64), 60_000);
    assert_eq!(backoff_ms(u32::MAX), 60_000);
}

#[test]
fn a_compensate_answered_error_backs_off_then_resends_with_the_next_attempt() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let t = ok(&s, &d, &error(&comp_id(&d, 1), "locked"));
    let b = &t.state;
    assert_eq!(b.status, Status::Compensating);
    assert_eq!(b.steps[1].status, St::Compensating);
    assert_eq!(b.steps[1].error.as_deref(), Some("locked"));
    assert_eq!(b.steps[1].compensate_attempts, 1);
    assert_eq!(
        b.pending,
        pending(&d, 1, Compensate, 1, Phase::BackingOff, b.version)
    );
    assert_eq!(b.to_compensate, [0]);
    let backoff = Effect::ArmTimer {
        command_id: comp_id(&d, 1),
        attempt: 1,
        generation: b.version,
        after_ms: 1_000,
    };
    assert_eq!(t.effects, [backoff]);
    assert_eq!(t.record, rec("compensation_error", "b", Some("locked")));

    let t = ok(b, &d, &fire(b, &comp_id(&d, 1)));
    assert_eq!(
        t.state.pending,
        waits(&d, 1, Compensate, 2, t.state.version)
    );
    assert_eq!(t.state.steps[1].compensate_attempts, 2);
    assert_eq!(t.effects, sends(&d, 1, Compensate, 2, t.state.version));
    assert_eq!(t.record, rec("compensation_resent", "b", None));

    let t = ok(&t.state, &d, &error(&comp_id(&d, 1), "locked"));
    let backoff = Effect::ArmTimer {
        command_id: comp_id(&d, 1),
        attempt: 2,
        generation: t.state.version,
        after_ms: 2_000,
    };
    assert_eq!(t.effects, [backoff]);
}

#[test]
fn each_compensate_error_doubles_the_backoff_up_to_the_cap() {
    let d = def_with(&[("a", true), ("b", true)], 10);
    let mut s = ok(&running_at(&d, 1), &d, &error(&exec_id(&d, 1), "no")).state;
    let mut delays = Vec::new();
    for attempt in 1..10 {
        let t = ok(&s, &d, &error(&comp_id(&d, 0), "again"));
        match t.effects.as_slice() {
            [Effect::ArmTimer {
                command_id,
                attempt: a,
                generation,
                after_ms,
            }] => {
                assert_eq!((command_id, *a), (&comp_id(&d, 0), attempt));
                assert_eq!(*generation, t.state.version);
                delays.push(*after_ms);
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
        let t = ok(&t.state, &d, &fire(&t.state, &comp_id(&d, 0)));
        assert_eq!(
            t.effects,
            sends(&d, 0, Compensate, attempt + 1, t.state.version)
        );
        s = t.state;
    }
    assert_eq!(
        delays,
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
    );
    let t = ok(&s, &d, &error(&comp_id(&d, 0), "again"));
    assert_eq!(t.state.status, Status::Failed);
    assert_eq!(
        t.state.pending,
        pending(&d, 0, Compensate, 10, Phase::Parked, t.state.version - 1)
    );
}

#[test]
fn a_compensate_that_keeps_failing_fails_the_saga_after_max_attempts() {
    let d = abc();
    let mut s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    for _ in 1..MAX_ATTEMPTS {
        s = ok(&s, &d, &error(&comp_id(&d, 1), "locked")).state;
        s = ok(&s, &d, &fire(&s, &comp_id(&d, 1))).state;
    }
    let t = ok(&s, &d, &error(&comp_id(&d, 1), "still locked"));
    let f = &t.state;
    assert_eq!(f.status, Status::Failed);
    assert_eq!(statuses(f), [St::Done, St::CompensationFailed, St::Failed]);
    assert_eq!(f.steps[1].compensate_attempts, MAX_ATTEMPTS);
    assert_eq!(f.steps[1].error.as_deref(), Some("still locked"));
    assert_eq!(
        f.pending,
        pending(
            &d,
            1,
            Compensate,
            MAX_ATTEMPTS,
            Phase::Parked,
            f.version - 1
        )
    );
    assert_eq!(f.to_compensate, [0], "the rest waits for the operator");
    assert_eq!(t.effects, [Effect::Announce(Status::Failed)]);
    assert_eq!(
        t.record,
        rec("compensation_failed", "b", Some("still locked"))
    );
}

#[test]
fn an_unanswered_compensate_is_resent_after_its_timeout_then_fails() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let t = ok(&s, &d, &fire(&s, &comp_id(&d, 1)));
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(
        t.state.pending,
        waits(&d, 1, Compensate, 2, t.state.version)
    );
    assert_eq!(t.effects, sends(&d, 1, Compensate, 2, t.state.version));
    assert_eq!(t.record, rec("compensation_resent", "b", None));

    let t = ok(&t.state, &d, &fire(&t.state, &comp_id(&d, 1)));
    assert_eq!(t.effects, sends(&d, 1, Compensate, 3, t.state.version));

    let t = ok(&t.state, &d, &fire(&t.state, &comp_id(&d, 1)));
    assert_eq!(t.state.status, Status::Failed);
    assert_eq!(t.state.steps[1].status, St::CompensationFailed);
    assert_eq!(
        t.state.pending,
        pending(&d, 1, Compensate, 3, Phase::Parked, t.state.version - 1)
    );
    assert_eq!(t.state.to_compensate, [0]);
    assert_eq!(t.effects, [Effect::Announce(Status::Failed)]);
    assert_eq!(
        t.record,
        rec(
            "compensation_timed_out",
            "b",
            Some("no reply after 3 attempts")
        )
    );
}

#[test]
fn a_compensate_with_one_attempt_fails_on_its_first_error_without_backoff() {
    let d = def_with(&[("a", true), ("b", true)], 1);
    let s = ok(&running_at(&d, 1), &d, &error(&exec_id(&d, 1), "no")).state;
    let t = ok(&s, &d, &error(&comp_id(&d, 0), "locked"));
    assert_eq!(t.state.status, Status::Failed);
    assert_eq!(t.effects, [Effect::Announce(Status::Failed)]);
}

// ---------------------------------------------------------------- operator retry

#[test]
fn retry_of_a_failed_saga_resends_the_same_compensate_with_attempt_one() {
    let (d, f) = failed_abc();
    let t = ok(&f, &d, &Event::Retry);
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(s.steps[1].status, St::Compensating);
    assert_eq!(s.steps[1].compensate_attempts, MAX_ATTEMPTS + 1);
    assert_eq!(s.pending, waits(&d, 1, Compensate, 1, s.version));
    assert_eq!(s.to_compensate, [0]);
    assert_eq!(t.effects, sends(&d, 1, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("retried", "b", None));
}

#[test]
fn a_retried_compensation_continues_with_the_remaining_steps() {
    let (d, f) = failed_abc();
    let s = ok(&f, &d, &Event::Retry).state;
    let t = ok(&s, &d, &done(&comp_id(&d, 1), json!({})));
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
}

#[test]
fn a_retried_compensation_gets_max_attempts_again_before_failing_again() {
    let (d, f) = failed_abc();
    let s = ok(&f, &d, &Event::Retry).state;
    let again = exhaust_compensation(s.clone(), &d);
    assert_eq!(again.status, Status::Failed);
    assert_eq!(again.version, s.version + 2 * i64::from(MAX_ATTEMPTS) - 1);
    assert_eq!(again.steps[1].compensate_attempts, 2 * MAX_ATTEMPTS);
}

#[test]
fn retry_when_not_failed_is_not_allowed() {
    let d = abc();
    let running = started(&d);
    let compensating = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    for s in [&running, &compensating] {
        let e = refused(s, &d, &Event::Retry);
        assert!(matches!(e, TransitionError::NotAllowed(_)), "{e:?}");
    }
    assert_eq!(
        refused(&completed(&d), &d, &Event::Retry),
        TransitionError::Finished("completed")
    );
    assert_eq!(
        refused(&compensated(&d), &d, &Event::Retry),
        TransitionError::Finished("compensated")
    );
}

// ---------------------------------------------------------------- operator abort

#[test]
fn abort_compensates_the_pending_step_first_then_earlier_done_ones() {
    let d = abc();
    let t = ok(&running_at(&d, 2), &d, &Event::Abort);
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(s.version, 4);
    assert_eq!(statuses(s), [St::Done, St::Done, St::Compensating]);
    assert_eq!(s.pending, waits(&d, 2, Compensate, 1, s.version));
    assert_eq!(s.to_compensate, [1, 0]);
    assert_eq!(t.effects, sends(&d, 2, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("aborted", "c", None));

    let t = ok(s, &d, &done(&comp_id(&d, 2), json!({})));
    assert_eq!(t.effects, sends(&d, 1, Compensate, 1, t.state.version));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 1), json!({})));
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    let t = ok(&t.state, &d, &done(&comp_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
}

#[test]
fn abort_of_a_pending_step_without_compensate_starts_with_the_earlier_ones() {
    let d = def(&[("a", true), ("b", false)]);
    let t = ok(&running_at(&d, 1), &d, &Event::Abort);
    assert_eq!(statuses(&t.state), [St::Compensating, St::Aborted]);
    assert_eq!(
        t.state.pending,
        waits(&d, 0, Compensate, 1, t.state.version)
    );
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("aborted", "b", None));
}

#[test]
fn abort_at_step_one_without_compensate_is_compensated_immediately() {
    let d = def(&[("a", false), ("b", true)]);
    let t = ok(&started(&d), &d, &Event::Abort);
    assert_eq!(t.state.status, Status::Compensated);
    assert_eq!(t.state.version, 2);
    assert_eq!(statuses(&t.state), [St::Aborted, St::NotStarted]);
    assert!(t.state.pending.is_empty());
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
    assert_eq!(t.record, rec("aborted_compensated", "a", None));
}

#[test]
fn abort_at_step_one_with_compensate_sends_its_compensate() {
    let d = abc();
    let t = ok(&started(&d), &d, &Event::Abort);
    assert_eq!(t.state.status, Status::Compensating);
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
}

#[test]
fn abort_when_not_running_is_not_allowed() {
    let d = abc();
    let compensating = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let (_, failed) = failed_abc();
    for s in [&compensating, &failed] {
        let e = refused(s, &d, &Event::Abort);
        assert!(matches!(e, TransitionError::NotAllowed(_)), "{e:?}");
    }
    assert_eq!(
        refused(&completed(&d), &d, &Event::Abort),
        TransitionError::Finished("completed")
    );
    assert_eq!(
        refused(&compensated(&d), &d, &Event::Abort),
        TransitionError::Finished("compensated")
    );
}

// ---------------------------------------------------------------- stale and late messages

#[test]
fn a_duplicate_done_reply_is_stale_and_changes_nothing() {
    let d = abc();
    let reply = done(&exec_id(&d, 0), json!({}));
    let s = ok(&started(&d), &d, &reply).state;
    assert!(is_stale(&refused(&s, &d, &reply)));
}

#[test]
fn a_duplicate_error_reply_is_stale_once_compensation_started() {
    let d = abc();
    let reply = error(&exec_id(&d, 2), "no");
    let s = ok(&running_at(&d, 2), &d, &reply).state;
    assert!(is_stale(&refused(&s, &d, &reply)));
}

#[test]
fn a_reply_with_an_unknown_command_id_is_stale() {
    let d = abc();
    let s = running_at(&d, 1);
    let (later, not_yet) = (exec_id(&d, 2), comp_id(&d, 1));
    let current = generation_of(&s, &exec_id(&d, 1));
    assert_eq!(current, s.version);
    for id in ["nope", "", later.as_str(), not_yet.as_str()] {
        assert!(is_stale(&refused(&s, &d, &done(id, json!({})))));
        assert!(is_stale(&refused(&s, &d, &error(id, "x"))));
        assert!(is_stale(&refused(&s, &d, &timer(id, current))));
    }
    let other_saga = command_id(&Uuid::from_u128(9), "b", Execute);
    assert!(is_stale(&refused(&s, &d, &done(&other_saga, json!({})))));
}

#[test]
fn a_timer_of_an_old_generation_or_an_old_command_is_stale() {
    let d = abc();
    let first = started(&d);
    assert_eq!(
        generation_of(&first, &exec_id(&d, 0)),
        1,
        "armed by the start, at version 1"
    );
    let s = ok(&first, &d, &fire(&first, &exec_id(&d, 0))).state;
    assert_eq!(
        generation_of(&s, &exec_id(&d, 0)),
        2,
        "the re-send armed a new generation"
    );
    assert!(is_stale(&refused(&s, &d, &timer(&exec_id(&d, 0), 1))));
    assert!(is_stale(&refused(&s, &d, &timer(&exec_id(&d, 0), 3))));
    let s = ok(&s, &d, &done(&exec_id(&d, 0), json!({}))).state;
    assert!(is_stale(&refused(&s, &d, &timer(&exec_id(&d, 0), 2))));
}

#[test]
fn a_time_out_armed_before_resume_does_not_count_for_the_fresh_send() {
    // max_attempts = 1: with timers keyed by attempt, the old wake (attempt 1) would time
    // the fresh send (attempt 1 again) out at once.
    let d = def_with(&[("a", true), ("b", true)], 1);
    let s = running_at(&d, 1);
    let old = fire(&s, &exec_id(&d, 1));
    let resumed = ok(&s, &d, &Event::Resume).state;
    let attempts: Vec<u32> = resumed.pending.iter().map(|p| p.attempt).collect();
    assert_eq!(attempts, [1]);
    assert!(is_stale(&refused(&resumed, &d, &old)));
    let t = ok(&resumed, &d, &fire(&resumed, &exec_id(&d, 1)));
    assert_eq!(t.state.status, Status::Compensating);
}

#[test]
fn the_time_out_of_a_compensate_cannot_cut_its_back_off_short() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let timeout = fire(&s, &comp_id(&d, 1));
    let backing_off = ok(&s, &d, &error(&comp_id(&d, 1), "locked")).state;
    assert!(is_stale(&refused(&backing_off, &d, &timeout)));
    let t = ok(&backing_off, &d, &fire(&backing_off, &comp_id(&d, 1)));
    assert_eq!(t.effects, sends(&d, 1, Compensate, 2, t.state.version));
}

#[test]
fn a_late_execute_reply_after_compensation_started_is_stale() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &Event::Abort).state;
    assert!(is_stale(&refused(
        &s,
        &d,
        &done(&exec_id(&d, 2), json!({}))
    )));
    // Neither the execute's own last generation nor the one now armed for the compensate.
    for generation in [s.version - 1, s.version] {
        assert!(is_stale(&refused(
            &s,
            &d,
            &timer(&exec_id(&d, 2), generation)
        )));
    }
}

#[test]
fn every_event_on_a_completed_or_compensated_saga_is_finished() {
    let d = abc();
    for (s, name) in [
        (completed(&d), "completed"),
        (compensated(&d), "compensated"),
    ] {
        let mut events = vec![Event::Abort, Event::Retry];
        for step in 0..3 {
            for action in [Execute, Compensate] {
                let id = id_of(&d, step, action);
                events.push(done(&id, json!({})));
                events.push(error(&id, "late"));
                events.push(timer(&id, s.version));
            }
        }
        events.push(done("nope", json!({})));
        for event in &events {
            assert_eq!(
                refused(&s, &d, event),
                TransitionError::Finished(name),
                "{event:?}"
            );
        }
    }
}

#[test]
fn a_late_error_or_timer_on_a_failed_saga_is_stale() {
    let (d, f) = failed_abc();
    assert!(is_stale(&refused(&f, &d, &error(&comp_id(&d, 1), "late"))));
    for generation in 1..=f.version {
        assert!(is_stale(&refused(
            &f,
            &d,
            &timer(&comp_id(&d, 1), generation)
        )));
    }
}

#[test]
fn a_late_done_on_a_failed_saga_continues_compensation() {
    let (d, f) = failed_abc();
    let t = ok(&f, &d, &done(&comp_id(&d, 1), json!({})));
    let s = &t.state;
    assert_eq!(s.status, Status::Compensating);
    assert_eq!(statuses(s), [St::Compensating, St::Compensated, St::Failed]);
    assert_eq!(s.pending, waits(&d, 0, Compensate, 1, s.version));
    assert!(s.to_compensate.is_empty());
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    assert_eq!(t.record, rec("step_compensated", "b", None));
}

#[test]
fn a_late_done_for_the_last_compensation_of_a_failed_saga_compensates_it() {
    let d = abc();
    let s = ok(&running_at(&d, 1), &d, &error(&exec_id(&d, 1), "no")).state;
    let f = exhaust_compensation(s, &d);
    assert_eq!(f.status, Status::Failed);
    let t = ok(&f, &d, &done(&comp_id(&d, 0), json!({})));
    assert_eq!(t.state.status, Status::Compensated);
    assert!(t.state.pending.is_empty());
    assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
    assert_eq!(t.record, rec("compensated", "a", None));
}

#[test]
fn a_done_for_a_compensate_that_is_backing_off_is_accepted() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let s = ok(&s, &d, &error(&comp_id(&d, 1), "locked")).state;
    let t = ok(&s, &d, &done(&comp_id(&d, 1), json!({})));
    assert_eq!(t.state.steps[1].status, St::Compensated);
    assert_eq!(t.effects, sends(&d, 0, Compensate, 1, t.state.version));
    // The back-off timer that is still armed now names a command no longer pending.
    assert!(is_stale(&refused(
        &t.state,
        &d,
        &timer(&comp_id(&d, 1), generation_of(&s, &comp_id(&d, 1)))
    )));
}

#[test]
fn a_duplicate_compensate_error_while_backing_off_is_stale() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let reply = error(&comp_id(&d, 1), "locked");
    let s = ok(&s, &d, &reply).state;
    assert!(is_stale(&refused(&s, &d, &reply)));
}

// ---------------------------------------------------------------- resume after a restart

#[test]
fn resume_resends_the_pending_execute_with_the_same_id_and_attempt() {
    let d = abc();
    assert_eq!(resume(&started(&d), &d), sends(&d, 0, Execute, 1, 1));
    let s = ok(
        &running_at(&d, 1),
        &d,
        &fire(&running_at(&d, 1), &exec_id(&d, 1)),
    )
    .state;
    assert_eq!(resume(&s, &d), sends(&d, 1, Execute, 2, s.version));
}

#[test]
fn resume_of_a_compensating_saga_resends_its_compensate() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    assert_eq!(resume(&s, &d), sends(&d, 1, Compensate, 1, s.version));
    let s = ok(&s, &d, &fire(&s, &comp_id(&d, 1))).state;
    assert_eq!(resume(&s, &d), sends(&d, 1, Compensate, 2, s.version));
}

#[test]
fn resume_while_backing_off_only_rearms_the_backoff_timer() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    let s = ok(&s, &d, &error(&comp_id(&d, 1), "locked")).state;
    let s = ok(&s, &d, &fire(&s, &comp_id(&d, 1))).state;
    let s = ok(&s, &d, &error(&comp_id(&d, 1), "locked")).state;
    let rearm = Effect::ArmTimer {
        command_id: comp_id(&d, 1),
        attempt: 2,
        generation: s.version,
        after_ms: 2_000,
    };
    assert_eq!(resume(&s, &d), [rearm]);
}

#[test]
fn resume_of_a_failed_or_finished_saga_sends_nothing() {
    let (d, f) = failed_abc();
    assert!(resume(&f, &d).is_empty());
    assert!(resume(&completed(&d), &d).is_empty());
    assert!(resume(&compensated(&d), &d).is_empty());
}

// ---------------------------------------------------------------- command ids

#[test]
fn command_ids_are_stable_across_resends_and_differ_between_execute_and_compensate() {
    let d = abc();
    let id = saga_id();
    assert_eq!(command_id(&id, "a", Execute), command_id(&id, "a", Execute));
    assert_ne!(
        command_id(&id, "a", Execute),
        command_id(&id, "a", Compensate)
    );
    assert_ne!(command_id(&id, "a", Execute), command_id(&id, "b", Execute));
    let other = Uuid::from_u128(1);
    assert_ne!(
        command_id(&id, "a", Execute),
        command_id(&other, "a", Execute)
    );

    let sent_ids = |effects: &[Effect]| -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { command_id, .. } => Some(command_id.clone()),
                _ => None,
            })
            .collect()
    };
    let t0 = start(&d, saga_id(), json!({}), "");
    let t1 = ok(&t0.state, &d, &fire(&t0.state, &exec_id(&d, 0)));
    let t2 = ok(&t1.state, &d, &fire(&t1.state, &exec_id(&d, 0)));
    let t3 = ok(&t2.state, &d, &fire(&t2.state, &exec_id(&d, 0)));
    assert_eq!(sent_ids(&t0.effects), [exec_id(&d, 0)]);
    assert_eq!(sent_ids(&t1.effects), [exec_id(&d, 0)]);
    assert_eq!(sent_ids(&t2.effects), [exec_id(&d, 0)]);
    assert_eq!(sent_ids(&t3.effects), [comp_id(&d, 0)]);
    assert_ne!(exec_id(&d, 0), comp_id(&d, 0));
    assert_eq!(sent_ids(&resume(&t3.state, &d)), [comp_id(&d, 0)]);
}

// ---------------------------------------------------------------- corrupt snapshots

#[test]
fn a_snapshot_that_does_not_fit_its_definition_is_corrupt() {
    let d = abc();
    let mut short = started(&d);
    short.steps.pop();
    let e = refused(&short, &d, &done(&exec_id(&d, 0), json!({})));
    assert!(matches!(e, TransitionError::Corrupt(_)), "{e:?}");

    let mut far = started(&d);
    if let Some(p) = far.pending.first_mut() {
        p.step = 9;
    }
    let e = refused(&far, &d, &Event::Abort);
    assert!(matches!(e, TransitionError::Corrupt(_)), "{e:?}");
    assert!(resume(&far, &d).is_empty());
}

#[test]
fn a_snapshot_with_an_out_of_range_step_to_compensate_is_corrupt() {
    let d = abc();
    let mut s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    s.to_compensate = vec![9];
    let e = refused(&s, &d, &done(&comp_id(&d, 1), json!({})));
    assert!(matches!(e, TransitionError::Corrupt(_)), "{e:?}");
}

// ---------------------------------------------------------------- property test

/// splitmix64: small, deterministic, good enough to pick events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_def(rng: &mut Rng) -> SagaDefinition {
    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
    let n = 1 + rng.below(NAMES.len() as u64) as usize;
    let steps: Vec<(&str, bool)> = NAMES[..n]
        .iter()
        .map(|name| (*name, rng.below(4) != 0))
        .collect();
    let mut d = def_with(&steps, 1);
    for step in &mut d.steps {
        step.max_attempts = 1 + rng.below(3) as u32;
    }
    d
}

fn random_event(rng: &mut Rng, s: &SagaState, d: &SagaDefinition, last: &Event) -> Event {
    let id = s
        .pending
        .first()
        .map_or("none".to_string(), |p| p.command_id.clone());
    let generation = generation_of(s, &id);
    match rng.below(100) {
        0..=29 => done(&id, json!({ "n": rng.below(5) })),
        30..=44 => error(&id, "boom"),
        45..=69 => timer(&id, generation),
        70..=74 => timer(&id, generation - 1 - rng.below(2) as i64),
        75..=79 => {
            let step = rng.below(d.steps.len() as u64) as usize;
            let action = if rng.below(2) == 0 {
                Execute
            } else {
                Compensate
            };
            done(&id_of(d, step, action), json!({}))
        }
        80..=84 => Event::Abort,
        85..=90 => Event::Retry,
        91..=93 => Event::Skip {
            step: match (rng.below(4), s.pending.first()) {
                (0, _) | (_, None) => d.steps[rng.below(d.steps.len() as u64) as usize]
                    .name
                    .clone(),
                (_, Some(p)) => d.steps[p.step].name.clone(),
            },
        },
        94..=95 => Event::Resume,
        _ => last.clone(),
    }
}

/// What the test remembers across a sequence: which steps may have run, the last compensated.
struct Model {
    ran: Vec<bool>,
    last_compensated: Option<usize>,
}

/// Consistency of one state on its own.
fn check_shape(s: &SagaState, d: &SagaDefinition) {
    assert_eq!(s.steps.len(), d.steps.len());
    let p = s.pending.first();
    match s.status {
        Status::Running => {
            let Some(p) = p else {
                panic!("running without pending")
            };
            assert_eq!((p.action, p.phase), (Execute, Phase::AwaitingReply));
            assert!(s.to_compensate.is_empty());
            assert!(s.steps[..p.step].iter().all(|r| r.status == St::Done));
            assert!(s.steps[p.step + 1..]
                .iter()
                .all(|r| r.status == St::NotStarted));
            assert_eq!(s.steps[p.step].status, St::Executing);
            // The record counts every send; the pending attempt restarts at 1 on an operator's resume.
            assert!(s.steps[p.step].attempts >= p.attempt);
        }
        Status::Compensating | Status::Failed => {
            let Some(p) = p else {
                panic!("{:?} without pending", s.status)
            };
            assert_eq!(p.action, Compensate);
            if s.status == Status::Failed {
                assert_eq!(p.phase, Phase::Parked);
                assert_eq!(s.steps[p.step].status, St::CompensationFailed);
            } else {
                assert_ne!(p.phase, Phase::Parked);
                assert_eq!(s.steps[p.step].status, St::Compensating);
            }
            assert!(s.to_compensate.windows(2).all(|w| w[0] > w[1]));
            assert!(s
                .to_compensate
                .iter()
                .all(|&i| i < p.step && d.steps[i].compensate));
        }
        Status::Paused => panic!("no step of these definitions pauses"),
        Status::Completed | Status::Compensated => {
            assert_eq!(p, None);
            assert!(s.to_compensate.is_empty());
        }
    }
    if let Some(p) = p {
        assert_eq!(p.command_id, id_of(d, p.step, p.action));
        assert!(p.attempt >= 1 && p.attempt <= d.steps[p.step].max_attempts);
    }
}

/// Checks one accepted transition against the state before it, and updates the model.
fn check_transition(b: &SagaState, d: &SagaDefinition, e: &Event, t: &Transition, m: &mut Model) {
    let a = &t.state;
    assert_eq!(a.version, b.version + 1);
    assert!(!t.record.event.is_empty());
    check_shape(a, d);

    // Which step may have run, as of this transition.
    if let Some(bp) = b.pending.first().filter(|p| p.action == Execute) {
        let answered_done = matches!(
            e,
            Event::Reply {
                outcome: ReplyOutcome::Done { .. },
                ..
            }
        );
        let gave_up =
            a.status != Status::Running && matches!(e, Event::TimerFired { .. } | Event::Abort);
        if answered_done || gave_up {
            m.ran[bp.step] = true;
        }
    }

    let mut effects = t.effects.iter().peekable();
    let mut sent = 0;
    while let Some(effect) = effects.next() {
        match effect {
            Effect::Send {
                step,
                action,
                command_id,
                attempt,
                generation,
            } => {
                sent += 1;
                let Some(ap) = a.pending.first() else {
                    panic!("send without pending")
                };
                assert_eq!((ap.step, ap.action, ap.attempt), (*step, *action, *attempt));
                assert_eq!(*command_id, id_of(d, *step, *action));
                assert_eq!(*generation, a.version);
                assert_eq!(ap.timer, a.version);
                let timer = Effect::ArmTimer {
                    command_id: command_id.clone(),
                    attempt: *attempt,
                    generation: *generation,
                    after_ms: d.steps[*step].timeout_ms,
                };
                assert_eq!(effects.next(), Some(&timer), "a send arms its time-out");
                let resent = b
                    .pending
                    .iter()
                    .any(|bp| bp.step == *step && bp.action == *action);
                if *action == Compensate && !resent {
                    assert!(m.ran[*step], "compensate of step {step} that never ran");
                    assert!(d.steps[*step].compensate);
                    assert!(m.last_compensated.is_none_or(|l| *step < l), "order");
                    m.last_compensated = Some(*step);
                }
            }
            Effect::ArmTimer {
                command_id,
                attempt,
                generation,
                after_ms,
            } => {
                let Some(ap) = a.pending.first() else {
                    panic!("timer without pending")
                };
                assert_eq!(ap.phase, Phase::BackingOff);
                assert_eq!((command_id, *attempt), (&ap.command_id, ap.attempt));
                assert_eq!(*after_ms, backoff_ms(*attempt));
                assert_eq!((*generation, ap.timer), (a.version, a.version));
            }
            Effect::ArmDeadline { .. } => panic!("only the start arms the deadline"),
            Effect::Announce(status) => {
                assert_eq!(*status, a.status);
                assert!(effects.peek().is_none(), "announce comes last");
            }
        }
    }
    assert!(sent <= 1);
    let announced = t.effects.iter().any(|e| matches!(e, Effect::Announce(_)));
    let ends = a.status != b.status
        && matches!(
            a.status,
            Status::Completed | Status::Compensated | Status::Failed
        );
    assert_eq!(announced, ends);

    if a.status == Status::Compensated {
        for (i, r) in a.steps.iter().enumerate() {
            let should = m.ran[i] && d.steps[i].compensate;
            assert_eq!(r.status == St::Compensated, should, "step {i}: {r:?}");
        }
    }
    if a.status == Status::Completed {
        assert!(a.steps.iter().all(|r| r.status == St::Done));
        assert_eq!(a.results.len(), d.steps.len());
    }
}

/// Events the saga must accept: the pending command's reply, its current timer, and the
/// operator actions in the status they are meant for.
fn must_accept(s: &SagaState, d: &SagaDefinition, e: &Event) -> bool {
    let Some(p) = s.pending.first() else {
        return false;
    };
    match e {
        Event::Reply {
            command_id,
            outcome,
        } => {
            // An error while backing off is left open: it repeats the answer being backed off from.
            *command_id == p.command_id
                && match outcome {
                    ReplyOutcome::Done { .. } => true,
                    ReplyOutcome::Error { .. } => p.phase == Phase::AwaitingReply,
                }
        }
        Event::TimerFired {
            command_id,
            generation,
        } => *command_id == p.command_id && *generation == p.timer && p.phase != Phase::Parked,
        Event::Abort => s.status == Status::Running,
        Event::Retry => s.status == Status::Failed,
        Event::Skip { step } => p.action == Compensate && *step == d.steps[p.step].name,
        Event::Resume => matches!(s.status, Status::Running | Status::Compensating),
        Event::Deadline => false,
    }
}

/// Events the saga must refuse: anything once finished, replies and timers that are not for
/// the pending command's current attempt, late errors on a failed saga, misplaced operator actions.
fn must_refuse(s: &SagaState, d: &SagaDefinition, e: &Event) -> bool {
    let Some(p) = s.pending.first().filter(|_| !s.status.is_terminal()) else {
        return true;
    };
    match e {
        Event::Reply {
            command_id,
            outcome,
        } => {
            *command_id != p.command_id
                || (s.status == Status::Failed && matches!(outcome, ReplyOutcome::Error { .. }))
        }
        Event::TimerFired {
            command_id,
            generation,
        } => *command_id != p.command_id || *generation != p.timer || p.phase == Phase::Parked,
        Event::Abort => s.status != Status::Running,
        Event::Retry => s.status != Status::Failed,
        Event::Skip { step } => p.action != Compensate || *step != d.steps[p.step].name,
        Event::Resume => !matches!(s.status, Status::Running | Status::Compensating),
        Event::Deadline => false,
    }
}

#[test]
fn random_event_sequences_keep_the_invariants() {
    let mut rng = Rng(0x5A6A);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3_000 {
        let d = random_def(&mut rng);
        let first = start(&d, saga_id(), json!({}), "");
        let mut s = first.state;
        assert_eq!(s.version, 1);
        check_shape(&s, &d);
        let mut m = Model {
            ran: vec![false; d.steps.len()],
            last_compensated: None,
        };
        let mut last = Event::Abort;
        let mut after_end = 0;
        for _ in 0..80 {
            let event = random_event(&mut rng, &s, &d, &last);
            let before = s.clone();
            match apply(&s, &d, &event) {
                Ok(t) => {
                    assert!(!must_refuse(&before, &d, &event), "{event:?} accepted");
                    check_transition(&before, &d, &event, &t, &mut m);
                    seen.insert(t.record.event.clone());
                    s = t.state;
                }
                Err(e) => {
                    assert_eq!(s, before);
                    assert!(!must_accept(&s, &d, &event), "{event:?} refused: {e}");
                    match e {
                        TransitionError::Finished(name) => {
                            assert!(s.status.is_terminal());
                            assert_eq!(name, s.status.as_str());
                        }
                        TransitionError::Corrupt(why) => panic!("corrupt: {why}"),
                        _ => assert!(!s.status.is_terminal()),
                    }
                }
            }
            last = event;
            if s.status.is_terminal() {
                after_end += 1;
                if after_end > 5 {
                    break;
                }
            }
        }
    }
    // The sequences reached every row of the table.
    for event in [
        "step_done",
        "completed",
        "step_failed",
        "step_failed_compensated",
        "step_resent",
        "step_timed_out",
        "aborted",
        "aborted_compensated",
        "step_compensated",
        "compensated",
        "compensation_error",
        "compensation_resent",
        "compensation_failed",
        "compensation_timed_out",
        "retried",
    ] {
        assert!(seen.contains(event), "never reached {event}");
    }
}

#[test]
fn skip_of_a_failed_compensation_marks_it_done_and_moves_to_the_next_one() {
    let (d, f) = failed_abc();
    let [p] = f.pending.as_slice() else {
        panic!(
            "a failed saga keeps its one pending compensate: {:?}",
            f.pending
        );
    };
    let p = p.clone();
    let t = ok(&f, &d, &skip(&d, p.step));
    assert_eq!(t.state.steps[p.step].status, St::Compensated);
    assert_eq!(t.record.event, "compensation_skipped");
    match t.state.pending.as_slice() {
        [next] => {
            assert!(
                next.step < p.step,
                "the next compensation is an earlier step"
            );
            assert_eq!(t.state.status, Status::Compensating);
            assert_eq!(
                t.effects,
                sends(&d, next.step, Compensate, 1, t.state.version)
            );
        }
        [] => {
            assert_eq!(t.state.status, Status::Compensated);
            assert_eq!(t.effects, [Effect::Announce(Status::Compensated)]);
        }
        more => panic!("one compensation at a time: {more:?}"),
    }
}

#[test]
fn skip_is_refused_when_no_compensation_is_pending() {
    let d = abc();
    let e = refused(&running_at(&d, 1), &d, &skip(&d, 1));
    assert!(matches!(e, TransitionError::NotAllowed(_)), "{e:?}");
    assert!(matches!(
        refused(&completed(&d), &d, &skip(&d, 1)),
        TransitionError::Finished(_)
    ));
}

#[test]
fn a_repeated_skip_does_not_skip_the_next_compensation_too() {
    // Double click: both requests name step b; after the first, c's... b is skipped and a's
    // compensation is pending, so the second names a step that is no longer pending.
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    assert_eq!(steps_pending(&s), [1]);
    let once = ok(&s, &d, &skip(&d, 1)).state;
    assert_eq!(steps_pending(&once), [0]);
    let e = refused(&once, &d, &skip(&d, 1));
    assert!(matches!(e, TransitionError::NotAllowed(_)), "{e:?}");
    assert_eq!(once.steps[0].status, St::Compensating, "a is still undone");
}

#[test]
fn a_skip_naming_another_step_than_the_pending_one_is_refused() {
    let d = abc();
    let s = ok(&running_at(&d, 2), &d, &error(&exec_id(&d, 2), "no")).state;
    for name in ["a", "c", "nope", ""] {
        let e = refused(&s, &d, &Event::Skip { step: name.into() });
        assert!(matches!(e, TransitionError::NotAllowed(_)), "{name}: {e:?}");
    }
}

#[test]
fn resume_resends_the_pending_command_now_with_attempt_one() {
    let d = abc();
    let s = running_at(&d, 1);
    let s = ok(&s, &d, &fire(&s, &exec_id(&d, 1))).state; // attempt 2 in flight
    let t = ok(&s, &d, &Event::Resume);
    assert_eq!(t.state.pending, waits(&d, 1, Execute, 1, t.state.version));
    assert_eq!(t.effects, sends(&d, 1, Execute, 1, t.state.version));
    assert_eq!(t.record.event, "resumed");
    assert_eq!(t.state.version, s.version + 1);
}

#[test]
fn resume_is_refused_for_a_failed_saga() {
    let (d, f) = failed_abc();
    assert!(matches!(
        refused(&f, &d, &Event::Resume),
        TransitionError::NotAllowed(_)
    ));
}

#[test]
fn command_ids_carry_a_digest_of_the_saga_secret_that_differs_per_step_action() {
    let d = abc();
    let t = start(&d, saga_id(), json!({}), "s3cr3t");
    let s = &t.state;
    let first = s
        .pending
        .first()
        .map(|p| p.command_id.clone())
        .unwrap_or_default();
    assert!(
        first.starts_with(&format!("{}/", exec_id(&d, 0))),
        "{first}"
    );
    assert!(!first.contains("s3cr3t"), "the secret itself is never sent");
    let ids: std::collections::BTreeSet<String> = (0..3)
        .flat_map(|k| [Execute, Compensate].map(|a| s.command_id(&d.steps[k].name, a)))
        .collect();
    assert_eq!(ids.len(), 6, "each step action has its own tag");
    // Another step's id, built from the first one's tag, is not the pending command.
    let s = ok(s, &d, &done(&first, json!({}))).state;
    let tag = first.rsplit('/').next().unwrap_or_default();
    let guess = format!("{}/{tag}", exec_id(&d, 1));
    assert!(is_stale(&refused(&s, &d, &done(&guess, json!({})))));
    assert!(is_stale(&refused(
        &s,
        &d,
        &done(&exec_id(&d, 1), json!({}))
    )));
    let real = s.command_id("b", Execute);
    let ids: Vec<&str> = s.pending.iter().map(|p| p.command_id.as_str()).collect();
    assert_eq!(ids, [real.as_str()]);
}

mod groups;
mod pause;
mod random;
