//! Random definitions with groups, pivots, pausing steps, retry back-offs and a deadline,
//! driven by random events (every pending command's replies and timers, stale ones, the
//! deadline and every operator action); the invariants of the transition table are checked
//! after every transition.

use std::collections::HashSet;

use super::*;
use crate::domain::OnError;
use crate::saga::past_pivot;

fn random_def(rng: &mut Rng) -> SagaDefinition {
    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
    let n = 1 + rng.below(NAMES.len() as u64) as usize;
    let steps: Vec<(&str, bool)> = NAMES[..n]
        .iter()
        .map(|name| (*name, rng.below(4) != 0))
        .collect();
    let mut d = def_with(&steps, 1);
    for step in &mut d.steps {
        step.max_attempts = 1 + rng.below(3) as u32;
        step.retry_backoff_ms = [100, 1_000, 40_000][rng.below(3) as usize];
        if rng.below(5) == 0 {
            step.on_error = OnError::Pause;
        }
    }
    let mut i = 0;
    while i < n {
        let size = 2 + rng.below(2) as usize;
        if rng.below(3) == 0 && i + size <= n {
            for step in &mut d.steps[i..i + size] {
                step.group = Some(format!("g{i}"));
            }
            i += size;
        } else {
            i += 1;
        }
    }
    if rng.below(3) == 0 {
        let k = rng.below(n as u64) as usize;
        if d.steps[k].group.is_none() {
            d.steps[k].pivot = true;
        }
    }
    if rng.below(2) == 0 {
        d.deadline_ms = Some(5_000);
    }
    d
}

fn reply(command_id: &str, rng: &mut Rng) -> Event {
    match rng.below(4) {
        0 | 1 => done(command_id, json!({ "n": rng.below(5) })),
        2 => error(command_id, "boom"),
        _ => retryable(command_id, "busy"),
    }
}

fn random_event(rng: &mut Rng, s: &SagaState, d: &SagaDefinition) -> Event {
    let any_step = |rng: &mut Rng| rng.below(d.steps.len() as u64) as usize;
    let p = match s.pending.len() {
        0 => None,
        n => Some(s.pending[rng.below(n as u64) as usize].clone()),
    };
    let id = p
        .as_ref()
        .map_or("none".to_string(), |p| p.command_id.clone());
    let generation = p.as_ref().map_or(0, |p| p.timer);
    match rng.below(100) {
        0..=39 => reply(&id, rng),
        40..=59 => timer(&id, generation),
        60..=64 => timer(&id, generation - 1 - rng.below(3) as i64),
        65..=69 => {
            let action = if rng.below(2) == 0 {
                Execute
            } else {
                Compensate
            };
            let k = any_step(rng);
            reply(&id_of(d, k, action), rng)
        }
        70..=75 => Event::Deadline,
        76..=81 => Event::Abort,
        82..=87 => Event::Retry,
        88..=93 => Event::Skip {
            step: match (&p, rng.below(3)) {
                (Some(p), 0 | 1) => d.steps[p.step].name.clone(),
                _ => d.steps[any_step(rng)].name.clone(),
            },
        },
        _ => Event::Resume,
    }
}

/// What the test remembers across a run.
struct Model {
    /// Steps that may have run: done, timed out, aborted, or executing when compensation began.
    ran: Vec<bool>,
    /// Steps that were sent a first compensate (not a re-send of a pending one).
    compensated: Vec<bool>,
}

/// Consistency of one state on its own.
fn check_shape(s: &SagaState, d: &SagaDefinition) {
    assert_eq!(s.steps.len(), d.steps.len());
    let steps: Vec<usize> = s.pending.iter().map(|p| p.step).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "pending {steps:?}");
    for p in &s.pending {
        assert_eq!(p.command_id, id_of(d, p.step, p.action));
        assert!(p.attempt >= 1 && p.attempt <= d.steps[p.step].max_attempts);
        assert!(
            p.timer >= 1 && p.timer <= s.version,
            "{p:?} at {}",
            s.version
        );
        let st = s.steps[p.step].status;
        match (p.action, p.phase) {
            // A deadline past the pivot parks commands that did not fail.
            (Execute, Phase::Parked) => assert!(
                matches!(st, St::Failed | St::TimedOut)
                    || (st == St::Executing && s.deadline_passed),
                "{p:?} of a step {st:?}"
            ),
            (Execute, _) => assert_eq!(st, St::Executing),
            (Compensate, Phase::Parked) => assert_eq!(st, St::CompensationFailed),
            (Compensate, _) => assert_eq!(st, St::Compensating),
        }
    }
    let parked = |action| {
        s.pending
            .iter()
            .any(|p| p.action == action && p.phase == Phase::Parked)
    };
    assert_eq!(s.status == Status::Paused, parked(Execute), "{s:?}");
    assert_eq!(s.status == Status::Failed, parked(Compensate), "{s:?}");
    match s.status {
        Status::Running | Status::Paused => {
            assert!(!s.pending.is_empty());
            assert!(s.pending.iter().all(|p| p.action == Execute));
            assert!(s.to_compensate.is_empty());
            let stage = d.stage(steps[0]);
            assert!(
                steps.iter().all(|k| stage.contains(k)),
                "{steps:?} in {stage:?}"
            );
            assert!(s.steps[..stage.start].iter().all(|r| r.status == St::Done));
            assert!(s.steps[stage.end..]
                .iter()
                .all(|r| r.status == St::NotStarted));
        }
        Status::Compensating | Status::Failed => {
            assert!(!s.pending.is_empty());
            assert!(s.pending.iter().all(|p| p.action == Compensate));
            assert!(s.to_compensate.windows(2).all(|w| w[0] > w[1]));
            assert!(s
                .to_compensate
                .iter()
                .all(|&i| i < steps[0] && d.steps[i].compensate));
        }
        Status::Completed | Status::Compensated => {
            assert!(s.pending.is_empty());
            assert!(s.to_compensate.is_empty());
        }
    }
}

/// Checks one accepted transition against the state before it, and updates the model.
fn check_transition(b: &SagaState, d: &SagaDefinition, t: &Transition, m: &mut Model) {
    let a = &t.state;
    assert_eq!(a.version, b.version + 1, "versions are consecutive");
    assert!(!t.record.event.is_empty());
    check_shape(a, d);

    let compensation_began = matches!(b.status, Status::Running | Status::Paused)
        && matches!(a.status, Status::Compensating | Status::Compensated);
    for (i, r) in a.steps.iter().enumerate() {
        let executing = b.steps[i].status == St::Executing;
        if matches!(r.status, St::Done | St::TimedOut | St::Aborted)
            || (compensation_began && executing)
        {
            m.ran[i] = true;
        }
        // An `error` answer to its command (the same id on every send, so a participant
        // that ran it would answer `done`) says it did not run, after a time-out too.
        if r.status == St::Failed {
            m.ran[i] = false;
        }
    }

    let mut effects = t.effects.iter().peekable();
    while let Some(effect) = effects.next() {
        match effect {
            Effect::Send {
                step,
                action,
                command_id,
                attempt,
                generation,
            } => {
                assert!(!a.status.is_terminal(), "a send once {:?}", a.status);
                assert_eq!(*generation, a.version);
                let ap = a.pending.iter().find(|p| p.step == *step);
                let want = one(d, *step, *action, *attempt, Phase::AwaitingReply, a.version);
                assert_eq!(ap, Some(&want), "a send leaves its command pending");
                let time_out = Effect::ArmTimer {
                    command_id: command_id.clone(),
                    attempt: *attempt,
                    generation: *generation,
                    after_ms: d.steps[*step].timeout_ms,
                };
                assert_eq!(effects.next(), Some(&time_out), "a send arms its time-out");
                if *action == Compensate {
                    assert!(past_pivot(b, d).is_none(), "compensate past the pivot");
                    assert!(d.steps[*step].compensate, "compensate of step {step}");
                    let resent = b
                        .pending
                        .iter()
                        .any(|p| p.step == *step && p.action == Compensate);
                    if !resent {
                        assert!(m.ran[*step], "compensate of step {step} that never ran");
                        assert!(!m.compensated[*step], "step {step} compensated twice");
                        m.compensated[*step] = true;
                    }
                }
            }
            Effect::ArmTimer {
                command_id,
                attempt,
                generation,
                after_ms,
            } => {
                let Some(ap) = a.pending_command(command_id) else {
                    panic!("a timer for {command_id}, not pending");
                };
                assert_eq!(ap.phase, Phase::BackingOff);
                assert_eq!((*attempt, *generation), (ap.attempt, a.version));
                assert_eq!(ap.timer, a.version);
                let first = match ap.action {
                    Compensate => BACKOFF_START_MS,
                    Execute => d.steps[ap.step].retry_backoff_ms,
                };
                let doubled = first.saturating_mul(1 << (attempt - 1)).min(BACKOFF_MAX_MS);
                assert_eq!(*after_ms, doubled);
            }
            Effect::ArmDeadline { .. } => panic!("only the start arms the deadline"),
            Effect::Announce(status) => {
                assert_eq!(*status, a.status);
                assert!(effects.peek().is_none(), "announce comes last");
            }
        }
    }
    let announced = t.effects.iter().any(|e| matches!(e, Effect::Announce(_)));
    let announces = a.status != b.status
        && matches!(
            a.status,
            Status::Completed | Status::Compensated | Status::Failed | Status::Paused
        );
    assert_eq!(announced, announces, "{:?} -> {:?}", b.status, a.status);

    if a.status == Status::Compensated {
        for (i, r) in a.steps.iter().enumerate() {
            if m.ran[i] && d.steps[i].compensate {
                assert_eq!(r.status, St::Compensated, "step {i} may have run");
            }
            if r.status == St::Compensated {
                assert!(m.ran[i] && d.steps[i].compensate, "step {i}");
            }
        }
    }
    if a.status == Status::Completed {
        assert!(a.steps.iter().all(|r| r.status == St::Done));
        assert_eq!(a.results.len(), d.steps.len());
    }
}

/// Events the saga must accept: a `done` for any pending command, and a pending command's
/// current timer unless it is parked.
fn must_accept(s: &SagaState, e: &Event) -> bool {
    if s.status.is_terminal() {
        return false;
    }
    match e {
        Event::Reply {
            command_id,
            outcome: ReplyOutcome::Done { .. },
        } => s.pending_command(command_id).is_some(),
        Event::TimerFired {
            command_id,
            generation,
        } => s
            .pending_command(command_id)
            .is_some_and(|p| p.timer == *generation && p.phase != Phase::Parked),
        _ => false,
    }
}

/// 4,000 runs, or `SAGA_RANDOM_RUNS` for a longer search.
fn runs() -> usize {
    std::env::var("SAGA_RANDOM_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000)
}

#[test]
fn random_groups_pauses_pivots_and_deadlines_keep_the_invariants() {
    let mut rng = Rng(0x6A6A_0001);
    let mut seen = HashSet::new();
    for _ in 0..runs() {
        let d = random_def(&mut rng);
        let first = start(&d, saga_id(), json!({}), "");
        let mut s = first.state;
        check_shape(&s, &d);
        let mut m = Model {
            ran: vec![false; d.steps.len()],
            compensated: vec![false; d.steps.len()],
        };
        let mut after_end = 0;
        for _ in 0..100 {
            let event = random_event(&mut rng, &s, &d);
            let before = s.clone();
            match apply(&s, &d, &event) {
                Ok(t) => {
                    let trace = format!("{d:?}\n{before:?}\n{event:?}\n{t:?}");
                    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check_transition(&before, &d, &t, &mut m)
                    }));
                    if checked.is_err() {
                        panic!("{trace}");
                    }
                    seen.insert(t.record.event.clone());
                    s = t.state;
                }
                Err(e) => {
                    assert_eq!(s, before);
                    assert!(!must_accept(&s, &event), "{event:?} refused: {e}");
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
            if s.status.is_terminal() {
                after_end += 1;
                if after_end > 3 {
                    break;
                }
            }
        }
    }
    for event in [
        "paused",
        "resumed",
        "step_retry",
        "step_skipped",
        "deadline",
        "aborted",
        "compensated",
        "completed",
        "compensation_failed",
        "retried",
    ] {
        assert!(seen.contains(event), "never reached {event}");
    }
}
