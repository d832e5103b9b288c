//! The transition table of CONTRACT.md section 4, as one pure function.
//!
//! A saga runs in *stages*: one step, or a group (consecutive steps with the same `group`),
//! whose commands are pending together. `k` is a step, `S` the stage it is in.
//!
//! ```text
//! (none)        --start-->               running       [send execute of stage 1, arm time-outs; arm deadline]
//! running       --done(k), S pending-->  running       [wait for the rest of S]
//! running       --done(k), S done-->     running       [send execute of the next stage] | completed [announce]
//! running       --retryable(k, a<max)--> running       [back off retry_backoff_ms, doubling to 60 s]
//! running       --timer(k, a<max)-->     running       [re-send execute k (a+1), arm]
//! running       --error(k) | timer(k, max)-->
//!                   paused (k pauses: on_error = pause, or past a pivot) [announce]
//!                 | compensating (compensate S's steps that may have run together, then the
//!                   earlier done compensable steps, last first) | compensated [announce]
//! running       --deadline-->            compensating (as abort) | paused (past a pivot)
//! running|paused --abort-->              compensating (as a failure of the current stage); 409 past a pivot
//! paused        --resume-->              running       [re-send the paused commands, attempts reset]
//! paused        --skip(k paused)-->      running       [k done with output {}; go on when S is done]
//! paused        --done(k)-->             as running    (a late done still counts)
//! compensating  --done-->                compensating  [next compensate when none pending] | compensated [announce]
//! compensating  --error(a<max)-->        compensating  [back off 1 s, doubling to 60 s]
//! compensating  --timer(a<max)-->        compensating  [re-send compensate (a+1), arm]
//! compensating  --error|timer(max)-->    failed        [announce]
//! failed        --retry-->               compensating  [re-send the failed compensates (attempt 1), arm]
//! failed        --done-->                compensating/compensated (a late done still counts)
//! compensating|failed --skip(k)-->       pending compensate k marked done unrun (another step: refused)
//! running|compensating --resume-->       re-send the pending commands now, attempts reset to 1
//! completed, compensated: absorb everything (Finished)
//! ```
//! Time comes in as `TimerFired` and `Deadline` events; nothing here reads a clock or does I/O.
//! Every pending command's timer carries a generation: the version of the transition that
//! armed it, kept in `Pending::timer`. A timer of another generation is stale, so neither a
//! time-out of an earlier send (after `resume`/`retry` restarted at attempt 1) nor the
//! time-out of the send a back-off follows can fire for the current command. A step is
//! compensated at most once, only if it is compensable and never once a pivot is done.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::event::{Effect, Event, Record, ReplyOutcome, Transition, TransitionError};
use super::state::{Pending, Phase, SagaState, Status, StepAction, StepRecord, StepStatus};
use crate::domain::{OnError, SagaDefinition};

/// First back-off after a compensate answered `error`.
pub const BACKOFF_START_MS: u64 = 1_000;
/// Back-off ceiling (compensates and retryable errors alike).
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// Back-off before re-sending a compensate that was answered `error` on `attempt`.
pub fn backoff_ms(attempt: u32) -> u64 {
    doubling(BACKOFF_START_MS, attempt)
}

/// `first`, doubled for each attempt after the first, at most [`BACKOFF_MAX_MS`].
fn doubling(first: u64, attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(16);
    first.saturating_mul(1 << shift).min(BACKOFF_MAX_MS)
}

/// The back-off a pending command in [`Phase::BackingOff`] waits before its re-send.
fn backoff_of(def: &SagaDefinition, p: &Pending) -> u64 {
    match p.action {
        StepAction::Compensate => backoff_ms(p.attempt),
        StepAction::Execute => doubling(def.steps[p.step].retry_backoff_ms, p.attempt),
    }
}

/// Starts a saga: the state stored by `POST /start` and the effects that follow it. `nonce`
/// is the saga's random secret (from the I/O layer), part of every `command_id`.
pub fn start(def: &SagaDefinition, saga_id: Uuid, payload: Value, nonce: &str) -> Transition {
    let steps = def
        .steps
        .iter()
        .map(|_| StepRecord {
            status: StepStatus::NotStarted,
            attempts: 0,
            compensate_attempts: 0,
            error: None,
        })
        .collect();
    let mut state = SagaState {
        saga_id,
        saga: def.name.clone(),
        definition_version: def.version,
        payload,
        status: Status::Running,
        version: 1,
        results: Map::new(),
        steps,
        pending: Vec::new(),
        to_compensate: Vec::new(),
        nonce: nonce.to_string(),
        timer: 0,
        deadline_passed: false,
        started_at_ms: None,
        traceparent: None,
    };
    let mut effects = Vec::new();
    send_stage(&mut state, def, 0, &mut effects);
    if let Some(after_start_ms) = def.deadline_ms {
        effects.push(Effect::ArmDeadline { after_start_ms });
    }
    Transition {
        state,
        effects,
        record: record("started", Some(&def.steps[0].name), None),
    }
}

/// The effects that resume a saga loaded from its snapshot (after a restart or a crash):
/// re-send its pending commands with the same `command_id`s and re-arm their timers and
/// its deadline.
pub fn resume(state: &SagaState, def: &SagaDefinition) -> Vec<Effect> {
    let mut effects = Vec::new();
    if state.status.is_terminal() {
        return effects;
    }
    for p in &state.pending {
        let Some(step) = def.steps.get(p.step) else {
            continue;
        };
        match p.phase {
            Phase::Parked => {}
            Phase::BackingOff => effects.push(Effect::ArmTimer {
                command_id: p.command_id.clone(),
                attempt: p.attempt,
                generation: p.timer,
                after_ms: backoff_of(def, p),
            }),
            Phase::AwaitingReply => {
                effects.push(Effect::Send {
                    step: p.step,
                    action: p.action,
                    command_id: p.command_id.clone(),
                    attempt: p.attempt,
                    generation: p.timer,
                });
                effects.push(Effect::ArmTimer {
                    command_id: p.command_id.clone(),
                    attempt: p.attempt,
                    generation: p.timer,
                    after_ms: step.timeout_ms,
                });
            }
        }
    }
    // A paused saga's deadline is armed too: when it passes, it is noted, so that an
    // operator's later resume is not overruled by it (as when the saga stayed in memory).
    let waits = matches!(state.status, Status::Running | Status::Paused);
    if let (true, false, Some(after_start_ms)) = (waits, state.deadline_passed, def.deadline_ms) {
        effects.push(Effect::ArmDeadline { after_start_ms });
    }
    effects
}

/// Applies one event. `Ok` is a transition to snapshot; `Err` changes nothing.
pub fn apply(
    state: &SagaState,
    def: &SagaDefinition,
    event: &Event,
) -> Result<Transition, TransitionError> {
    if state.status.is_terminal() {
        return Err(TransitionError::Finished(state.status.as_str()));
    }
    check_fits(state, def)?;
    let mut next = state.clone();
    next.version += 1;
    let mut effects = Vec::new();
    let record = match event {
        Event::Reply {
            command_id,
            outcome,
        } => {
            let p = pending_for(state, command_id)?;
            if p.phase != Phase::AwaitingReply && matches!(outcome, ReplyOutcome::Error { .. }) {
                // A repeated error while backing off, or a late one for a command already
                // given up on, says nothing new.
                return Err(TransitionError::Stale(format!(
                    "repeated error for {command_id}"
                )));
            }
            match (p.action, outcome) {
                (StepAction::Execute, ReplyOutcome::Done { output }) => {
                    on_execute_done(&mut next, def, p, output.clone(), &mut effects)
                }
                (StepAction::Execute, ReplyOutcome::Error { error, retryable })
                    if *retryable && p.attempt < def.steps[p.step].max_attempts =>
                {
                    on_retryable_error(&mut next, def, p, error.clone(), &mut effects)
                }
                (StepAction::Execute, ReplyOutcome::Error { error, .. }) => {
                    on_execute_error(&mut next, def, p, error.clone(), &mut effects)
                }
                (StepAction::Compensate, ReplyOutcome::Done { .. }) => {
                    on_compensate_done(&mut next, def, p, &mut effects)
                }
                (StepAction::Compensate, ReplyOutcome::Error { error, .. }) => {
                    on_compensate_error(&mut next, def, p, error.clone(), &mut effects)
                }
            }
        }
        Event::TimerFired {
            command_id,
            generation,
        } => {
            let p = pending_for(state, command_id)?;
            if p.timer != *generation || p.phase == Phase::Parked {
                return Err(TransitionError::Stale(format!(
                    "timer of generation {generation} for {command_id}"
                )));
            }
            on_timer(&mut next, def, p, &mut effects)
        }
        Event::Deadline => on_deadline(&mut next, def, &mut effects)?,
        Event::Abort => on_abort(&mut next, def, &mut effects)?,
        Event::Retry => on_retry(&mut next, def, &mut effects)?,
        Event::Skip { step } => on_skip(&mut next, def, step, &mut effects)?,
        Event::Resume => on_resume(&mut next, def, &mut effects)?,
    };
    Ok(Transition {
        state: next,
        effects,
        record,
    })
}

/// Refuses a snapshot that does not fit its definition (indices out of range).
fn check_fits(state: &SagaState, def: &SagaDefinition) -> Result<(), TransitionError> {
    let n = def.steps.len();
    if state.steps.len() != n {
        return Err(TransitionError::Corrupt(format!(
            "{} step records for {n} steps",
            state.steps.len()
        )));
    }
    if let Some(p) = state.pending.iter().find(|p| p.step >= n) {
        return Err(TransitionError::Corrupt(format!("pending step {}", p.step)));
    }
    if let Some(bad) = state.to_compensate.iter().find(|&&i| i >= n) {
        return Err(TransitionError::Corrupt(format!(
            "step {bad} to compensate"
        )));
    }
    Ok(())
}

fn pending_for<'a>(state: &'a SagaState, command_id: &str) -> Result<&'a Pending, TransitionError> {
    state
        .pending_command(command_id)
        .ok_or_else(|| TransitionError::Stale(command_id.chars().take(200).collect()))
}

fn record(event: &str, step: Option<&str>, detail: Option<String>) -> Record {
    Record {
        event: event.to_string(),
        step: step.map(str::to_string),
        detail,
    }
}

/// The done pivot step, if the saga is past one: from then on it only goes forward.
pub fn past_pivot(state: &SagaState, def: &SagaDefinition) -> Option<usize> {
    def.steps
        .iter()
        .zip(&state.steps)
        .position(|(d, s)| d.pivot && s.status == StepStatus::Done)
}

fn remove_pending(state: &mut SagaState, step: usize) {
    state.pending.retain(|p| p.step != step);
}

/// Makes `step`/`action` a pending command (replacing the step's earlier one) and emits its
/// send and time-out, armed with this transition's generation.
fn send(
    state: &mut SagaState,
    def: &SagaDefinition,
    step: usize,
    action: StepAction,
    attempt: u32,
    effects: &mut Vec<Effect>,
) {
    let sd = &def.steps[step];
    let id = state.command_id(&sd.name, action);
    let rec = &mut state.steps[step];
    match action {
        StepAction::Execute => {
            rec.status = StepStatus::Executing;
            rec.attempts += 1;
        }
        StepAction::Compensate => {
            rec.status = StepStatus::Compensating;
            rec.compensate_attempts += 1;
        }
    }
    let generation = state.version;
    remove_pending(state, step);
    let at = state.pending.partition_point(|p| p.step < step);
    state.pending.insert(
        at,
        Pending {
            step,
            action,
            command_id: id.clone(),
            attempt,
            phase: Phase::AwaitingReply,
            timer: generation,
        },
    );
    effects.push(Effect::Send {
        step,
        action,
        command_id: id.clone(),
        attempt,
        generation,
    });
    effects.push(Effect::ArmTimer {
        command_id: id,
        attempt,
        generation,
        after_ms: sd.timeout_ms,
    });
}

/// Sends the execute of every step of the stage that starts at `first`.
fn send_stage(
    state: &mut SagaState,
    def: &SagaDefinition,
    first: usize,
    effects: &mut Vec<Effect>,
) {
    for k in def.stage(first) {
        send(state, def, k, StepAction::Execute, 1, effects);
    }
}

/// Arms a back-off for a pending command answered `error`, with a new generation: the
/// time-out armed with its send is void, so it cannot cut the back-off short.
fn back_off(next: &mut SagaState, def: &SagaDefinition, p: &Pending, effects: &mut Vec<Effect>) {
    let generation = next.version;
    let mut armed = p.clone();
    armed.phase = Phase::BackingOff;
    armed.timer = generation;
    effects.push(Effect::ArmTimer {
        command_id: p.command_id.clone(),
        attempt: p.attempt,
        generation,
        after_ms: backoff_of(def, &armed),
    });
    if let Some(q) = next.pending.iter_mut().find(|q| q.step == p.step) {
        *q = armed;
    }
}

fn finish(state: &mut SagaState, status: Status, effects: &mut Vec<Effect>) {
    state.status = status;
    state.pending.clear();
    state.to_compensate.clear();
    effects.push(Effect::Announce(status));
}

/// Once no compensate is pending: the next step to compensate, or `compensated`.
fn compensate_next(state: &mut SagaState, def: &SagaDefinition, effects: &mut Vec<Effect>) {
    if !state.pending.is_empty() {
        return;
    }
    if state.to_compensate.is_empty() {
        finish(state, Status::Compensated, effects);
        return;
    }
    let step = state.to_compensate.remove(0);
    send(state, def, step, StepAction::Compensate, 1, effects);
}

/// `failed` while a compensate waits for an operator's retry, else `compensating`.
fn compensation_status(state: &SagaState) -> Status {
    if state.pending.iter().any(|p| p.phase == Phase::Parked) {
        Status::Failed
    } else {
        Status::Compensating
    }
}

/// Enters `compensating` because the stage of step `k` failed (or was aborted). The stage's
/// compensable steps that may have run (done, or still pending: their execute may have run)
/// get their compensate together; then the earlier done compensable steps, last first. Any
/// execute still pending is dropped (a late answer to it is stale).
fn begin_compensation(
    state: &mut SagaState,
    def: &SagaDefinition,
    k: usize,
    effects: &mut Vec<Effect>,
) {
    let stage = def.stage(k);
    for p in std::mem::take(&mut state.pending) {
        if p.action == StepAction::Execute && state.steps[p.step].status == StepStatus::Executing {
            state.steps[p.step].status = StepStatus::Aborted;
        }
    }
    state.status = Status::Compensating;
    let may_have_run = |s: StepStatus| {
        matches!(
            s,
            StepStatus::Done | StepStatus::TimedOut | StepStatus::Aborted | StepStatus::Executing
        )
    };
    let together: Vec<usize> = stage
        .clone()
        .filter(|&i| def.steps[i].compensate && may_have_run(state.steps[i].status))
        .collect();
    state.to_compensate = (0..stage.start)
        .rev()
        .filter(|&i| state.steps[i].status == StepStatus::Done && def.steps[i].compensate)
        .collect();
    for i in together {
        send(state, def, i, StepAction::Compensate, 1, effects);
    }
    compensate_next(state, def, effects);
}

/// Step `k` failed for good (its error, or no reply within its attempts). It pauses the saga
/// when it asks to or when the saga is past a pivot; otherwise the saga compensates.
fn on_step_failure(
    next: &mut SagaState,
    def: &SagaDefinition,
    k: usize,
    event: &str,
    detail: Option<String>,
    effects: &mut Vec<Effect>,
) -> Record {
    let name = def.steps[k].name.as_str();
    if past_pivot(next, def).is_some() || def.steps[k].on_error == OnError::Pause {
        pause_on(next, &[k], effects);
        return record("paused", Some(name), detail);
    }
    begin_compensation(next, def, k, effects);
    let event = if next.status == Status::Compensated {
        format!("{event}_compensated")
    } else {
        event.to_string()
    };
    record(&event, Some(name), detail)
}

/// Parks the pending executes of `steps` and makes the saga `paused` (announced once).
fn pause_on(next: &mut SagaState, steps: &[usize], effects: &mut Vec<Effect>) {
    for p in next.pending.iter_mut().filter(|p| steps.contains(&p.step)) {
        p.phase = Phase::Parked;
    }
    if next.status != Status::Paused {
        next.status = Status::Paused;
        effects.push(Effect::Announce(Status::Paused));
    }
}

/// After an execute left the pending set: `running` again when nothing is paused, and the
/// next stage (or `completed`) once the whole stage is done.
fn go_on(
    next: &mut SagaState,
    def: &SagaDefinition,
    k: usize,
    event: &str,
    effects: &mut Vec<Effect>,
) -> Record {
    let name = def.steps[k].name.as_str();
    if next.status == Status::Paused && !next.pending.iter().any(|p| p.phase == Phase::Parked) {
        next.status = Status::Running;
    }
    if !next.pending.is_empty() {
        return record(event, Some(name), None);
    }
    let after = def.stage(k).end;
    if after < def.steps.len() {
        send_stage(next, def, after, effects);
        record(event, Some(name), None)
    } else {
        finish(next, Status::Completed, effects);
        record("completed", Some(name), None)
    }
}

fn on_execute_done(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    output: Value,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    next.steps[k].status = StepStatus::Done;
    // An earlier attempt's retryable error is history (its `step_retry` record), not the
    // step's state.
    next.steps[k].error = None;
    next.results.insert(def.steps[k].name.clone(), output);
    remove_pending(next, k);
    go_on(next, def, k, "step_done", effects)
}

fn on_retryable_error(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    error: Option<String>,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    next.steps[k].error = error.clone();
    back_off(next, def, p, effects);
    record("step_retry", Some(&def.steps[k].name), error)
}

fn on_execute_error(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    error: Option<String>,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    next.steps[k].status = StepStatus::Failed;
    next.steps[k].error = error.clone();
    on_step_failure(next, def, k, "step_failed", error, effects)
}

fn on_compensate_done(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    next.steps[k].status = StepStatus::Compensated;
    // As for a done step: a failed compensate attempt before this one is history.
    next.steps[k].error = None;
    remove_pending(next, k);
    next.status = compensation_status(next);
    compensate_next(next, def, effects);
    let event = if next.status == Status::Compensated {
        "compensated"
    } else {
        "step_compensated"
    };
    record(event, Some(&def.steps[k].name), None)
}

fn on_compensate_error(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    error: Option<String>,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    next.steps[k].error = error.clone();
    if p.attempt >= def.steps[k].max_attempts {
        return fail(next, def, k, effects, "compensation_failed", error);
    }
    back_off(next, def, p, effects);
    record("compensation_error", Some(&def.steps[k].name), error)
}

/// A compensate ran out of attempts: it waits for an operator, the saga is `failed`.
fn fail(
    next: &mut SagaState,
    def: &SagaDefinition,
    k: usize,
    effects: &mut Vec<Effect>,
    event: &str,
    detail: Option<String>,
) -> Record {
    next.steps[k].status = StepStatus::CompensationFailed;
    if let Some(q) = next.pending.iter_mut().find(|q| q.step == k) {
        q.phase = Phase::Parked;
    }
    if next.status != Status::Failed {
        next.status = Status::Failed;
        effects.push(Effect::Announce(Status::Failed));
    }
    record(event, Some(&def.steps[k].name), detail)
}

fn on_timer(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    let sd = &def.steps[k];
    let resend = p.phase == Phase::BackingOff || p.attempt < sd.max_attempts;
    let no_reply = || Some(format!("no reply after {} attempts", p.attempt));
    match (p.action, resend) {
        (StepAction::Execute, true) => {
            send(next, def, k, p.action, p.attempt + 1, effects);
            record("step_resent", Some(&sd.name), None)
        }
        (StepAction::Execute, false) => {
            next.steps[k].status = StepStatus::TimedOut;
            on_step_failure(next, def, k, "step_timed_out", no_reply(), effects)
        }
        (StepAction::Compensate, true) => {
            send(next, def, k, p.action, p.attempt + 1, effects);
            record("compensation_resent", Some(&sd.name), None)
        }
        (StepAction::Compensate, false) => {
            fail(next, def, k, effects, "compensation_timed_out", no_reply())
        }
    }
}

fn on_deadline(
    next: &mut SagaState,
    def: &SagaDefinition,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    if next.deadline_passed || def.deadline_ms.is_none() {
        return Err(TransitionError::Stale(
            "the deadline already passed, or the saga has none".into(),
        ));
    }
    let at = next.current_step().map(|k| def.steps[k].name.clone());
    next.deadline_passed = true;
    match next.status {
        Status::Running => {}
        // An operator is on it already: the deadline is noted (so a later resume is not
        // undone by it) and changes nothing else.
        Status::Paused => {
            return Ok(record(
                "deadline",
                at.as_deref(),
                Some("passed while paused: nothing done".into()),
            ))
        }
        other => {
            return Err(TransitionError::NotAllowed(format!(
                "the deadline only stops a running saga; this one is {}",
                other.as_str()
            )))
        }
    }
    if let Some(pivot) = past_pivot(next, def) {
        let waiting: Vec<usize> = next.pending.iter().map(|p| p.step).collect();
        pause_on(next, &waiting, effects);
        return Ok(record(
            "deadline",
            at.as_deref(),
            Some(format!(
                "paused: past the pivot step `{}`",
                def.steps[pivot].name
            )),
        ));
    }
    let Some(k) = next.current_step() else {
        return Err(TransitionError::Corrupt(
            "running without a pending step".into(),
        ));
    };
    begin_compensation(next, def, k, effects);
    Ok(record("deadline", at.as_deref(), Some("aborted".into())))
}

fn on_abort(
    next: &mut SagaState,
    def: &SagaDefinition,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    if !matches!(next.status, Status::Running | Status::Paused) {
        return Err(TransitionError::NotAllowed(format!(
            "only a running or paused saga can be aborted; this one is {}",
            next.status.as_str()
        )));
    }
    if let Some(pivot) = past_pivot(next, def) {
        return Err(TransitionError::NotAllowed(format!(
            "the saga is past its pivot step `{}`: it only goes forward (resume or skip instead)",
            def.steps[pivot].name
        )));
    }
    let Some(k) = next.current_step() else {
        return Err(TransitionError::Corrupt(format!(
            "{} without a pending step",
            next.status.as_str()
        )));
    };
    begin_compensation(next, def, k, effects);
    let event = if next.status == Status::Compensated {
        "aborted_compensated"
    } else {
        "aborted"
    };
    Ok(record(event, Some(&def.steps[k].name), None))
}

fn on_retry(
    next: &mut SagaState,
    def: &SagaDefinition,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    if next.status != Status::Failed {
        return Err(TransitionError::NotAllowed(format!(
            "only a failed saga can be retried; this one is {}",
            next.status.as_str()
        )));
    }
    let parked: Vec<usize> = next
        .pending
        .iter()
        .filter(|p| p.phase == Phase::Parked && p.action == StepAction::Compensate)
        .map(|p| p.step)
        .collect();
    let Some(&first) = parked.first() else {
        return Err(TransitionError::Corrupt(
            "failed without a pending compensation".into(),
        ));
    };
    next.status = Status::Compensating;
    for k in parked {
        send(next, def, k, StepAction::Compensate, 1, effects);
    }
    Ok(record("retried", Some(&def.steps[first].name), None))
}

fn on_skip(
    next: &mut SagaState,
    def: &SagaDefinition,
    step: &str,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    let named = next
        .pending
        .iter()
        .find(|p| def.steps[p.step].name == step)
        .cloned();
    match named {
        Some(p) if p.action == StepAction::Compensate => {
            next.steps[p.step].status = StepStatus::Compensated;
            remove_pending(next, p.step);
            next.status = compensation_status(next);
            compensate_next(next, def, effects);
            Ok(record(
                "compensation_skipped",
                Some(&def.steps[p.step].name),
                None,
            ))
        }
        Some(p) if p.phase == Phase::Parked && next.status == Status::Paused => {
            let name = def.steps[p.step].name.clone();
            next.steps[p.step].status = StepStatus::Done;
            next.steps[p.step].error = None;
            next.results.insert(name, Value::Object(Map::new()));
            remove_pending(next, p.step);
            Ok(go_on(next, def, p.step, "step_skipped", effects))
        }
        _ => {
            let what: Vec<&str> = next
                .pending
                .iter()
                .filter(|p| p.action == StepAction::Compensate || p.phase == Phase::Parked)
                .map(|p| def.steps[p.step].name.as_str())
                .collect();
            let shown = step.chars().take(100).collect::<String>();
            Err(TransitionError::NotAllowed(if what.is_empty() {
                format!(
                    "only a pending compensation or a paused step can be skipped; this saga is {}",
                    next.status.as_str()
                )
            } else {
                format!(
                    "the pending compensation or paused step is `{}`, not `{shown}`: nothing skipped",
                    what.join("`, `")
                )
            }))
        }
    }
}

fn on_resume(
    next: &mut SagaState,
    def: &SagaDefinition,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    let resumable = matches!(
        next.status,
        Status::Running | Status::Compensating | Status::Paused
    );
    let Some(first) = next.current_step().filter(|_| resumable) else {
        return Err(TransitionError::NotAllowed(format!(
            "only a running, compensating or paused saga can be resumed (a failed one is retried); this one is {}",
            next.status.as_str()
        )));
    };
    if next.status == Status::Paused {
        next.status = Status::Running;
    }
    for p in next.pending.clone() {
        send(next, def, p.step, p.action, 1, effects);
    }
    Ok(record("resumed", Some(&def.steps[first].name), None))
}
