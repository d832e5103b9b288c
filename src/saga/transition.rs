//! The transition table of CONTRACT.md section 4, as one pure function.
//!
//! ```text
//! (none)        --start-->            running       [send execute 1, arm time-out]
//! running       --done(k<n)-->        running       [send execute k+1, arm]
//! running       --done(n)-->          completed     [announce]
//! running       --error(k)-->         compensating  [send compensate of the last done compensable step] | compensated
//! running       --timer(k, a<max)-->  running       [re-send execute k (a+1), arm]
//! running       --timer(k, max)-->    compensating  [compensate k itself first, then earlier ones]
//! running       --abort-->            compensating  [compensate the pending step, then earlier ones]
//! compensating  --done-->             compensating  [next compensate] | compensated [announce]
//! compensating  --error(a<max)-->     compensating  [arm back-off 1 s, doubling to 60 s]
//! compensating  --timer(backoff)-->   compensating  [re-send compensate (a+1), arm]
//! compensating  --timer(a<max)-->     compensating  [re-send compensate (a+1), arm]
//! compensating  --error|timer(max)--> failed        [announce]
//! failed        --retry-->            compensating  [re-send the failed compensate (attempt 1), arm]
//! failed        --done-->             compensating/compensated (a late done still counts)
//! compensating|failed --skip(k)-->   next compensate | compensated (pending compensate k marked done unrun;
//!                                    a skip naming another step is refused)
//! running|compensating --resume-->  re-send the pending command now, attempts reset to 1
//! completed, compensated: absorb everything (Finished)
//! ```
//! Time comes in as `TimerFired` events; nothing here reads a clock or does I/O.
//! Every timer carries a generation: the version of the transition that armed it, kept in
//! `SagaState::timer`. A timer of another generation is stale, so neither a time-out of an
//! earlier send (after `resume`/`retry` restarted at attempt 1) nor the time-out of the send
//! a back-off follows can fire for the current command.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::event::{Effect, Event, Record, ReplyOutcome, Transition, TransitionError};
use super::state::{Pending, Phase, SagaState, Status, StepAction, StepRecord, StepStatus};
use crate::domain::SagaDefinition;

/// First back-off after a compensate answered `error`.
pub const BACKOFF_START_MS: u64 = 1_000;
/// Back-off ceiling.
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// Back-off before re-sending a compensate that was answered `error` on `attempt`.
pub fn backoff_ms(attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(16);
    (BACKOFF_START_MS << shift).min(BACKOFF_MAX_MS)
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
        pending: None,
        to_compensate: Vec::new(),
        nonce: nonce.to_string(),
        timer: 0,
        started_at_ms: None,
        traceparent: None,
    };
    let mut effects = Vec::new();
    send(&mut state, def, 0, StepAction::Execute, 1, &mut effects);
    Transition {
        state,
        effects,
        record: record("started", Some(&def.steps[0].name), None),
    }
}

/// The effects that resume a saga loaded from its snapshot (after a restart or a crash):
/// re-send its pending command with the same `command_id` and re-arm its timer.
pub fn resume(state: &SagaState, def: &SagaDefinition) -> Vec<Effect> {
    let Some(p) = &state.pending else {
        return Vec::new();
    };
    let Some(step) = def.steps.get(p.step) else {
        return Vec::new();
    };
    match p.phase {
        Phase::Parked => Vec::new(),
        Phase::BackingOff => vec![Effect::ArmTimer {
            command_id: p.command_id.clone(),
            attempt: p.attempt,
            after_ms: backoff_ms(p.attempt),
        }],
        Phase::AwaitingReply => vec![
            Effect::Send {
                step: p.step,
                action: p.action,
                command_id: p.command_id.clone(),
                attempt: p.attempt,
            },
            Effect::ArmTimer {
                command_id: p.command_id.clone(),
                attempt: p.attempt,
                after_ms: step.timeout_ms,
            },
        ],
    }
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
    if state.steps.len() != def.steps.len() {
        return Err(TransitionError::Corrupt(format!(
            "{} step records for {} steps",
            state.steps.len(),
            def.steps.len()
        )));
    }
    if let Some(p) = &state.pending {
        if p.step >= def.steps.len() {
            return Err(TransitionError::Corrupt(format!("pending step {}", p.step)));
        }
    }
    if let Some(bad) = state.to_compensate.iter().find(|&&i| i >= def.steps.len()) {
        return Err(TransitionError::Corrupt(format!(
            "step {bad} to compensate"
        )));
    }
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
                // A repeated error while backing off, or a late one for a compensation already
                // given up on, says nothing new.
                return Err(TransitionError::Stale(format!(
                    "repeated error for {command_id}"
                )));
            }
            match (p.action, outcome) {
                (StepAction::Execute, ReplyOutcome::Done { output }) => {
                    on_execute_done(&mut next, def, p, output.clone(), &mut effects)
                }
                (StepAction::Execute, ReplyOutcome::Error { error }) => {
                    on_execute_error(&mut next, def, p, error.clone(), &mut effects)
                }
                (StepAction::Compensate, ReplyOutcome::Done { .. }) => {
                    on_compensate_done(&mut next, def, p, &mut effects)
                }
                (StepAction::Compensate, ReplyOutcome::Error { error }) => {
                    on_compensate_error(&mut next, def, p, error.clone(), &mut effects)
                }
            }
        }
        Event::TimerFired {
            command_id,
            generation,
        } => {
            let p = pending_for(state, command_id)?;
            if state.timer != *generation || p.phase == Phase::Parked {
                return Err(TransitionError::Stale(format!(
                    "timer of generation {generation} for {command_id}"
                )));
            }
            on_timer(&mut next, def, p, &mut effects)
        }
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

fn pending_for<'a>(state: &'a SagaState, command_id: &str) -> Result<&'a Pending, TransitionError> {
    match &state.pending {
        Some(p) if p.command_id == command_id => Ok(p),
        _ => Err(TransitionError::Stale(
            command_id.chars().take(200).collect(),
        )),
    }
}

fn record(event: &str, step: Option<&str>, detail: Option<String>) -> Record {
    Record {
        event: event.to_string(),
        step: step.map(str::to_string),
        detail,
    }
}

/// Makes `step`/`action` the pending command and emits its send and time-out.
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
    state.pending = Some(Pending {
        step,
        action,
        command_id: id.clone(),
        attempt,
        phase: Phase::AwaitingReply,
    });
    effects.push(Effect::Send {
        step,
        action,
        command_id: id.clone(),
        attempt,
    });
    state.timer = state.version;
    effects.push(Effect::ArmTimer {
        command_id: id,
        attempt,
        after_ms: sd.timeout_ms,
    });
}

fn finish(state: &mut SagaState, status: Status, effects: &mut Vec<Effect>) {
    state.status = status;
    state.pending = None;
    state.to_compensate.clear();
    effects.push(Effect::Announce(status));
}

/// Starts (or continues) compensating with the next step in `to_compensate`.
fn compensate_next(state: &mut SagaState, def: &SagaDefinition, effects: &mut Vec<Effect>) {
    if state.to_compensate.is_empty() {
        finish(state, Status::Compensated, effects);
        return;
    }
    let step = state.to_compensate.remove(0);
    send(state, def, step, StepAction::Compensate, 1, effects);
}

/// The steps before `before` that ran and ask for compensation, last first.
fn done_compensable_before(state: &SagaState, def: &SagaDefinition, before: usize) -> Vec<usize> {
    (0..before)
        .rev()
        .filter(|&i| state.steps[i].status == StepStatus::Done && def.steps[i].compensate)
        .collect()
}

/// Enters `compensating` after step `k` may have run (`include_k`) or surely did not.
fn begin_compensation(
    state: &mut SagaState,
    def: &SagaDefinition,
    k: usize,
    include_k: bool,
    effects: &mut Vec<Effect>,
) {
    state.status = Status::Compensating;
    state.pending = None;
    let mut list = Vec::new();
    if include_k && def.steps[k].compensate {
        list.push(k);
    }
    list.extend(done_compensable_before(state, def, k));
    state.to_compensate = list;
    compensate_next(state, def, effects);
}

fn on_execute_done(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    output: Value,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    let name = def.steps[k].name.as_str();
    next.steps[k].status = StepStatus::Done;
    next.results.insert(name.to_string(), output);
    if next.status == Status::Running && k + 1 < def.steps.len() {
        send(next, def, k + 1, StepAction::Execute, 1, effects);
        record("step_done", Some(name), None)
    } else {
        finish(next, Status::Completed, effects);
        record("completed", Some(name), None)
    }
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
    begin_compensation(next, def, k, false, effects);
    let event = if next.status == Status::Compensated {
        "step_failed_compensated"
    } else {
        "step_failed"
    };
    record(event, Some(&def.steps[k].name), error)
}

fn on_compensate_done(
    next: &mut SagaState,
    def: &SagaDefinition,
    p: &Pending,
    effects: &mut Vec<Effect>,
) -> Record {
    let k = p.step;
    next.steps[k].status = StepStatus::Compensated;
    next.status = Status::Compensating;
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
    let name = def.steps[k].name.as_str();
    next.steps[k].error = error.clone();
    if p.attempt >= def.steps[k].max_attempts {
        return fail(next, def, k, effects, "compensation_failed", error);
    }
    if let Some(pending) = next.pending.as_mut() {
        pending.phase = Phase::BackingOff;
    }
    // A new generation: the time-out armed with the send is void, so it cannot cut the
    // back-off short.
    next.timer = next.version;
    effects.push(Effect::ArmTimer {
        command_id: p.command_id.clone(),
        attempt: p.attempt,
        after_ms: backoff_ms(p.attempt),
    });
    record("compensation_error", Some(name), error)
}

fn fail(
    next: &mut SagaState,
    def: &SagaDefinition,
    k: usize,
    effects: &mut Vec<Effect>,
    event: &str,
    detail: Option<String>,
) -> Record {
    next.status = Status::Failed;
    next.steps[k].status = StepStatus::CompensationFailed;
    if let Some(pending) = next.pending.as_mut() {
        pending.phase = Phase::Parked;
    }
    effects.push(Effect::Announce(Status::Failed));
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
    match (p.action, resend) {
        (StepAction::Execute, true) => {
            send(next, def, k, p.action, p.attempt + 1, effects);
            record("step_resent", Some(&sd.name), None)
        }
        (StepAction::Execute, false) => {
            next.steps[k].status = StepStatus::TimedOut;
            begin_compensation(next, def, k, true, effects);
            record(
                "step_timed_out",
                Some(&sd.name),
                Some(format!("no reply after {} attempts", p.attempt)),
            )
        }
        (StepAction::Compensate, true) => {
            send(next, def, k, p.action, p.attempt + 1, effects);
            record("compensation_resent", Some(&sd.name), None)
        }
        (StepAction::Compensate, false) => fail(
            next,
            def,
            k,
            effects,
            "compensation_timed_out",
            Some(format!("no reply after {} attempts", p.attempt)),
        ),
    }
}

fn on_abort(
    next: &mut SagaState,
    def: &SagaDefinition,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    if next.status != Status::Running {
        return Err(TransitionError::NotAllowed(format!(
            "only a running saga can be aborted; this one is {}",
            next.status.as_str()
        )));
    }
    let Some(k) = next.current_step() else {
        return Err(TransitionError::Corrupt(
            "running without a pending step".into(),
        ));
    };
    next.steps[k].status = StepStatus::Aborted;
    begin_compensation(next, def, k, true, effects);
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
    let Some(p) = next.pending.clone() else {
        return Err(TransitionError::Corrupt(
            "failed without a pending compensation".into(),
        ));
    };
    next.status = Status::Compensating;
    send(next, def, p.step, StepAction::Compensate, 1, effects);
    Ok(record("retried", Some(&def.steps[p.step].name), None))
}

fn on_skip(
    next: &mut SagaState,
    def: &SagaDefinition,
    step: &str,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    let pending = next.pending.clone();
    let Some(p) = pending.filter(|p| p.action == StepAction::Compensate) else {
        return Err(TransitionError::NotAllowed(format!(
            "only a pending compensation can be skipped; this saga is {}",
            next.status.as_str()
        )));
    };
    let pending_name = def.steps[p.step].name.as_str();
    if pending_name != step {
        return Err(TransitionError::NotAllowed(format!(
            "the pending compensation is step `{pending_name}`, not `{}`: nothing skipped",
            step.chars().take(100).collect::<String>()
        )));
    }
    next.steps[p.step].status = StepStatus::Compensated;
    next.status = Status::Compensating;
    compensate_next(next, def, effects);
    Ok(record(
        "compensation_skipped",
        Some(&def.steps[p.step].name),
        None,
    ))
}

fn on_resume(
    next: &mut SagaState,
    def: &SagaDefinition,
    effects: &mut Vec<Effect>,
) -> Result<Record, TransitionError> {
    let pending = next.pending.clone();
    let Some(p) = pending.filter(|_| matches!(next.status, Status::Running | Status::Compensating))
    else {
        return Err(TransitionError::NotAllowed(format!(
            "only a running or compensating saga can be resumed (a failed one is retried); this one is {}",
            next.status.as_str()
        )));
    };
    send(next, def, p.step, p.action, 1, effects);
    Ok(record("resumed", Some(&def.steps[p.step].name), None))
}
