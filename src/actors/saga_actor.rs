//! One actor per saga: applies events through the pure state machine, commits the
//! snapshot, and only then publishes what follows and answers (so the reply can be acked).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::{
    Applied, ApplyEvent, Crash, DeliverError, Passivated, Relinquish, RestartSaga, ResumeSaga,
    RetireSaga, SagaCrashed,
};
use super::{Env, Registry};
use crate::broker::wire::{CommandBody, LifecycleEvent};
use crate::domain::SagaDefinition;
use crate::saga::{self, Effect, Event, SagaState, Status, StepAction, DEADLINE_TIMER};
use crate::store::{SnapshotWrite, StoreError};

/// The actor of one saga.
pub struct SagaActor {
    state: SagaState,
    def: Arc<SagaDefinition>,
    env: Arc<Env>,
    registry: Addr<Registry>,
    initial: Vec<Effect>,
    /// The armed timers by command id (and the deadline's, [`DEADLINE_TIMER`]): arming
    /// one for the same command replaces it. What each will deliver, and when, is handed
    /// to the registry on passivation.
    timers: HashMap<String, (SpawnHandle, ArmedTimer)>,
    /// Publishes not yet confirmed: the actor does not passivate while there are any.
    publishing: u32,
    /// Last time an event was applied or the actor started.
    last_activity: Instant,
    /// Stopping to free memory, not because the saga finished.
    passivating: bool,
    /// When each pending command was last published (for the step latency histogram).
    sent_at: HashMap<String, Instant>,
    _guard: CrashGuard,
}

/// A timer an actor armed: what it delivers and when.
#[derive(Debug, Clone)]
pub struct ArmedTimer {
    /// When it is due.
    pub due: Instant,
    /// The command it is for.
    pub command_id: String,
    /// Its generation (`Pending::timer` when it was armed; 0 for the deadline).
    pub generation: i64,
}

/// How long from now until a saga's deadline (`after_start_ms` after its start): zero when
/// it is past; `None` for a saga without a recorded start (started before deadlines existed).
pub fn deadline_delay(state: &SagaState, after_start_ms: u64) -> Option<Duration> {
    let started = state.started_at_ms?;
    let due = started.saturating_add(i64::try_from(after_start_ms).unwrap_or(i64::MAX));
    let left = due
        .saturating_sub(chrono::Utc::now().timestamp_millis())
        .max(0);
    Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

/// One command to publish, and the time-out to arm once the broker confirmed it.
struct Outgoing {
    step: usize,
    action: StepAction,
    command_id: String,
    attempt: u32,
    /// The timer generation of the transition that asked for the send.
    generation: i64,
    /// Arm this time-out (ms) once confirmed.
    then_arm: Option<u64>,
}

/// The queue and body of a command, as the participant receives it.
pub fn encode_command(
    state: &SagaState,
    def: &SagaDefinition,
    step: usize,
    action: StepAction,
    command_id: &str,
    attempt: u32,
) -> Option<(String, Vec<u8>)> {
    let def_step = def.steps.get(step)?;
    let body = CommandBody {
        command_id,
        saga_id: state.saga_id,
        saga: &state.saga,
        step: &def_step.name,
        action: action.as_str(),
        attempt,
        payload: &state.payload,
        results: &state.results,
    };
    let bytes = serde_json::to_vec(&body).ok()?;
    Some((def_step.queue.clone(), bytes))
}

/// Tells the registry when the actor is dropped by a panic, so it restarts from the snapshot.
struct CrashGuard {
    saga_id: uuid::Uuid,
    registry: Addr<Registry>,
}

impl Drop for CrashGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.registry.do_send(SagaCrashed {
                saga_id: self.saga_id,
            });
        }
    }
}

impl SagaActor {
    /// An actor for `state` that carries out `initial` effects once started.
    pub fn new(
        state: SagaState,
        def: Arc<SagaDefinition>,
        env: Arc<Env>,
        registry: Addr<Registry>,
        initial: Vec<Effect>,
    ) -> Self {
        let _guard = CrashGuard {
            saga_id: state.saga_id,
            registry: registry.clone(),
        };
        SagaActor {
            state,
            def,
            env,
            registry,
            initial,
            timers: HashMap::new(),
            publishing: 0,
            last_activity: Instant::now(),
            passivating: false,
            sent_at: HashMap::new(),
            _guard,
        }
    }

    fn step_name(&self, step: usize) -> &str {
        self.def
            .steps
            .get(step)
            .map(|s| s.name.as_str())
            .unwrap_or("?")
    }

    /// Carries out the effects of a committed transition (or of a resumption). A time-out
    /// that follows a send is armed only once the broker confirmed that send: a send the
    /// broker never took is not an attempt, so a broker outage cannot use attempts up.
    fn perform(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        let arm_after_confirm: HashMap<String, u64> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::ArmTimer {
                    command_id,
                    after_ms,
                    ..
                } => Some((command_id.clone(), *after_ms)),
                _ => None,
            })
            .filter(|(id, _)| {
                effects
                    .iter()
                    .any(|e| matches!(e, Effect::Send { command_id, .. } if command_id == id))
            })
            .collect();
        for effect in effects {
            match effect {
                Effect::Send {
                    step,
                    action,
                    command_id,
                    attempt,
                    generation,
                } => {
                    let then_arm = arm_after_confirm.get(&command_id).copied();
                    let send = Outgoing {
                        step,
                        action,
                        command_id,
                        attempt,
                        generation,
                        then_arm,
                    };
                    self.send_command(send, 0, ctx)
                }
                Effect::ArmTimer {
                    command_id,
                    after_ms,
                    generation,
                    ..
                } => {
                    if !arm_after_confirm.contains_key(&command_id) {
                        self.arm(command_id, generation, after_ms, ctx);
                    }
                }
                Effect::ArmDeadline { after_start_ms } => {
                    if let Some(delay) = deadline_delay(&self.state, after_start_ms) {
                        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                        self.arm(DEADLINE_TIMER.to_string(), 0, ms, ctx);
                    }
                }
                Effect::Announce(status) => self.announce(status),
            }
        }
    }

    /// Arms the timer of one command (or the deadline), replacing the one armed before.
    fn arm(&mut self, command_id: String, generation: i64, after_ms: u64, ctx: &mut Context<Self>) {
        if let Some((old, _)) = self.timers.remove(&command_id) {
            ctx.cancel_future(old);
        }
        let armed = ArmedTimer {
            due: Instant::now() + Duration::from_millis(after_ms),
            command_id: command_id.clone(),
            generation,
        };
        let key = command_id.clone();
        let handle = ctx.run_later(Duration::from_millis(after_ms), move |act, ctx| {
            act.timers.remove(&command_id);
            // Not idle: a passivation check in the same poll must not stop the actor (and
            // drop this event) before the event is handled.
            act.last_activity = Instant::now();
            ctx.notify(ApplyEvent::new(Event::timer(&command_id, generation)));
        });
        self.timers.insert(key, (handle, armed));
    }

    /// Cancels the timers of commands no longer pending (the deadline's stays while the
    /// saga runs or is paused).
    fn drop_stale_timers(&mut self, ctx: &mut Context<Self>) {
        let state = &self.state;
        let stale: Vec<String> = self
            .timers
            .keys()
            .filter(|id| {
                if id.as_str() == DEADLINE_TIMER {
                    !matches!(state.status, Status::Running | Status::Paused)
                } else {
                    state.pending_command(id).is_none()
                }
            })
            .cloned()
            .collect();
        for id in stale {
            if let Some((handle, _)) = self.timers.remove(&id) {
                ctx.cancel_future(handle);
            }
            self.sent_at.remove(&id);
        }
    }

    /// Whether `command_id` is still the pending command under the same timer generation.
    fn still_pending(&self, command_id: &str, generation: i64) -> bool {
        self.state
            .pending_command(command_id)
            .is_some_and(|p| p.timer == generation)
    }

    /// Publishes the pending command; on failure retries with back-off while it is still
    /// pending (checked before every retry, so a retry never overtakes what followed it).
    /// Once confirmed, arms its time-out.
    fn send_command(&mut self, send: Outgoing, retry: u32, ctx: &mut Context<Self>) {
        if !self.still_pending(&send.command_id, send.generation) {
            return;
        }
        // Past the local expiry of the partition's lease another instance may drive the
        // saga: publish nothing for it (its new owner re-sends the same command).
        if !self.env.ownership.owns(&self.state.saga_id) {
            log::warn!(
                "saga={} step={} not sending {}: the lease of its partition is not held",
                self.state.saga_id,
                self.step_name(send.step),
                send.action.as_str()
            );
            ctx.notify(Relinquish);
            return;
        }
        let Some((queue, bytes)) = encode_command(
            &self.state,
            &self.def,
            send.step,
            send.action,
            &send.command_id,
            send.attempt,
        ) else {
            return;
        };
        let broker = self.env.broker.clone();
        let kind = if send.attempt > 1 || retry > 0 {
            "resend"
        } else {
            "first"
        };
        self.env
            .metrics
            .commands
            .with_label_values(&[send.action.as_str(), kind])
            .inc();
        let cid = send.command_id.clone();
        let action = send.action;
        let trace = self.state.traceparent.clone();
        let partition = self.env.ownership.reply_partition(&self.state.saga_id);
        self.publishing += 1;
        self.sent_at.insert(send.command_id.clone(), Instant::now());
        let metrics = self.env.metrics.clone();
        let fut = async move {
            let started = Instant::now();
            let sent = broker
                .send_command(
                    &queue,
                    &cid,
                    action.as_str(),
                    &bytes,
                    trace.as_deref(),
                    partition,
                )
                .await;
            if sent.is_ok() {
                metrics.commands_confirmed.inc();
                metrics
                    .confirm_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            sent
        };
        // The publish runs on its own task so that an actor stopping (its saga finished by
        // the reply to this very command) does not cut the confirm short.
        let (done, confirmed) = tokio::sync::oneshot::channel();
        actix::spawn(async move {
            let _ = done.send(fut.await);
        });
        let fut = async move {
            confirmed
                .await
                .unwrap_or(Err(crate::broker::BrokerError::NotConnected))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.publishing -= 1;
            let still_pending = act.still_pending(&send.command_id, send.generation);
            match res {
                Ok(()) => {
                    if let (Some(after_ms), true) = (send.then_arm, still_pending) {
                        act.arm(send.command_id, send.generation, after_ms, ctx);
                    }
                }
                Err(e) => {
                    log::warn!(
                        "saga={} step={} publish of {} failed: {e}; {}",
                        act.state.saga_id,
                        act.step_name(send.step),
                        send.action.as_str(),
                        if still_pending {
                            "retrying (not counted as an attempt)"
                        } else {
                            "no longer pending"
                        }
                    );
                    if still_pending {
                        let delay = Duration::from_millis((200u64 << retry.min(5)).min(5_000));
                        // Counted as in flight so the actor does not passivate between retries.
                        act.publishing += 1;
                        ctx.run_later(delay, move |act, ctx| {
                            act.publishing -= 1;
                            act.send_command(send, retry + 1, ctx);
                        });
                    }
                }
            }
        }));
    }

    /// Stops the actor when it has waited long enough with nothing in flight; the registry
    /// keeps its timer and reloads it from its snapshot on the next event.
    fn passivate_if_idle(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if self.publishing > 0
            || self.last_activity.elapsed() < after
            || self.state.status.is_terminal()
        {
            return;
        }
        self.passivating = true;
        self.registry.do_send(Passivated {
            saga_id: self.state.saga_id,
            addr: ctx.address(),
            timers: self.timers.drain().map(|(_, (_, armed))| armed).collect(),
        });
        ctx.stop();
    }

    /// Counts what a committed transition did beyond its event (pauses, retries by reason).
    fn count(&self, cause: &Event, event: &str, next: &SagaState) {
        let metrics = &self.env.metrics;
        if next.status == Status::Paused && self.state.status != Status::Paused {
            metrics
                .sagas_paused
                .with_label_values(&[next.saga.as_str()])
                .inc();
        }
        // A re-send that ends a back-off was counted with the error that started it.
        let timed_out = |id: &str| {
            self.state
                .pending_command(id)
                .is_some_and(|p| p.phase == crate::saga::Phase::AwaitingReply)
        };
        let reason = match (cause, event) {
            (Event::TimerFired { command_id, .. }, "step_resent" | "compensation_resent")
                if timed_out(command_id) =>
            {
                "timeout"
            }
            (_, "step_retry") => "retryable_error",
            (_, "compensation_error") => "compensate_error",
            _ => return,
        };
        metrics.retries.with_label_values(&[reason]).inc();
    }

    /// Counts a status the saga reached and wakes the outbox relay, which publishes the
    /// lifecycle event the snapshot's transaction wrote (at least once, whatever happens now).
    fn announce(&self, status: Status) {
        self.env
            .metrics
            .sagas_finished
            .with_label_values(&[self.state.saga.as_str(), status.as_str()])
            .inc();
        if let Some(started) = self.state.started_at_ms {
            let secs = (chrono::Utc::now().timestamp_millis() - started).max(0) as f64 / 1000.0;
            self.env
                .metrics
                .saga_seconds
                .with_label_values(&[self.state.saga.as_str()])
                .observe(secs);
        }
        self.env.outbox.notify_one();
    }
}

/// The outbox row of a transition that announces a status: routing key and body.
fn lifecycle_event(state: &SagaState, effects: &[Effect]) -> Option<(String, serde_json::Value)> {
    let status = effects.iter().find_map(|e| match e {
        Effect::Announce(s) => Some(*s),
        _ => None,
    })?;
    let event = LifecycleEvent {
        saga_id: state.saga_id,
        saga: state.saga.clone(),
        status: status.as_str().to_string(),
        version: state.version,
        at: chrono::Utc::now().to_rfc3339(),
    };
    let body = serde_json::to_value(&event).ok()?;
    Some((format!("{}.{}", state.saga, status.as_str()), body))
}

/// Commits a snapshot, retrying with back-off while the database is unreachable; an
/// operator's write (with a deadline) stops retrying at its deadline, which the database
/// also enforces, so it cannot commit after the caller was told it failed.
async fn save_durably(env: Arc<Env>, write: Arc<SnapshotWrite>) -> Result<(), StoreError> {
    let mut delay = Duration::from_millis(100);
    let mut retried = false;
    loop {
        if write.deadline.is_some_and(|d| chrono::Utc::now() >= d) {
            return Err(StoreError::DeadlinePassed);
        }
        let started = Instant::now();
        let write_result = env.writer.save(write.clone()).await;
        match write_result {
            Ok(()) => {
                env.metrics
                    .snapshot_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            // A commit whose answer was lost on a transient error may have happened: the
            // retry then finds the row at our version already. That is success, not a conflict.
            Err(StoreError::Conflict(id)) if retried => {
                match crate::store::queries::load_version(env.writer.pool(), id).await {
                    // Our own commit only if the row holds our very snapshot: with several
                    // instances, another owner may have committed a different one at this version.
                    Ok(Some((v, state)))
                        if v == write.version
                            && write.state.to_value().ok().as_ref() == Some(&state) =>
                    {
                        return Ok(())
                    }
                    _ => return Err(StoreError::Conflict(id)),
                }
            }
            Err(e) if e.is_transient() => {
                retried = true;
                log::warn!(
                    "saga={} step={} snapshot v{} not committed ({e}); retrying in {delay:?}",
                    write.id,
                    write.step.as_deref().unwrap_or("-"),
                    write.version
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Actor for SagaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.env.metrics.live_actors.inc();
        let effects = std::mem::take(&mut self.initial);
        self.perform(effects, ctx);
        if let Some(after) = self.env.passivate_after {
            ctx.run_interval(after, move |act, ctx| act.passivate_if_idle(after, ctx));
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.env.metrics.live_actors.dec();
        if self.passivating {
            return;
        }
        self.registry.do_send(RetireSaga {
            saga_id: self.state.saga_id,
            addr: ctx.address(),
        });
    }
}

impl Handler<ApplyEvent> for SagaActor {
    type Result = AtomicResponse<Self, Result<Applied, DeliverError>>;

    fn handle(&mut self, msg: ApplyEvent, ctx: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        let ApplyEvent {
            event,
            note,
            trace,
            guard,
        } = msg;
        if let Some(expected) = guard.and_then(|g| g.if_version) {
            if expected != self.state.version {
                return AtomicResponse::new(Box::pin(fut::ready(Err(
                    DeliverError::Precondition {
                        current: self.state.version,
                    },
                ))));
            }
        }
        let mut transition = match saga::apply(&self.state, &self.def, &event) {
            Ok(t) => t,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Ok(Applied::Ignored(e))))),
        };
        if let Some(note) = note {
            transition.record.detail = Some(note);
        }
        let step = transition
            .state
            .current_step()
            .map(|i| self.step_name(i).to_string());
        // Written under this instance's lease on the saga's partition, or not at all.
        let Some(fence) = self.env.ownership.fence(&self.state.saga_id) else {
            let partition = self.env.ownership.partition(&self.state.saga_id);
            // No longer ours: stop as on a hand-over (the registry forgets it too).
            ctx.notify(Relinquish);
            return AtomicResponse::new(Box::pin(fut::ready(Err(DeliverError::NotOwner(
                partition,
            )))));
        };
        let mut write =
            match SnapshotWrite::new(&transition.state, step, transition.record.clone(), fence) {
                Ok(w) => w,
                Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e.into())))),
            };
        write.traceparent = trace;
        write.deadline = guard.map(|g| g.deadline);
        write.announce = lifecycle_event(&transition.state, &transition.effects);
        let env = self.env.clone();
        let fut = save_durably(env, Arc::new(write))
            .into_actor(self)
            .map(move |res, act, ctx| {
                match res {
                    Ok(()) => {
                        let t = transition;
                        act.env
                            .metrics
                            .transitions
                            .with_label_values(&[t.record.event.as_str()])
                            .inc();
                        log::debug!(
                            "saga={} step={} {} -> {} v{}",
                            act.state.saga_id,
                            t.record.step.as_deref().unwrap_or("-"),
                            t.record.event,
                            t.state.status.as_str(),
                            t.state.version
                        );
                        if t.record.event.starts_with("aborted") {
                            act.env
                                .metrics
                                .sagas_aborted
                                .with_label_values(&[t.state.saga.as_str()])
                                .inc();
                        }
                        if let Event::Reply { command_id, .. } = &event {
                            if let Some(sent) = act.sent_at.remove(command_id) {
                                act.env
                                    .metrics
                                    .step_seconds
                                    .with_label_values(&[t.state.saga.as_str()])
                                    .observe(sent.elapsed().as_secs_f64());
                            }
                        }
                        act.count(&event, &t.record.event, &t.state);
                        act.state = t.state;
                        act.drop_stale_timers(ctx);
                        act.perform(t.effects, ctx);
                        if act.state.status.is_terminal() {
                            ctx.stop();
                        }
                        Ok(Applied::Transitioned)
                    }
                    Err(e) => {
                        log::error!(
                            "saga={} step=- transition not committed: {e}; reloading from snapshot",
                            act.state.saga_id
                        );
                        // The snapshot moved under us (or the write is refused): the registry
                        // reloads it from its snapshot and resumes it (re-send, re-arm).
                        act.passivating = true;
                        act.registry.do_send(RestartSaga {
                            saga_id: act.state.saga_id,
                            addr: ctx.address(),
                        });
                        ctx.stop();
                        Err(e.into())
                    }
                }
            });
        AtomicResponse::new(Box::pin(fut))
    }
}

impl Handler<ResumeSaga> for SagaActor {
    type Result = ();

    fn handle(&mut self, _msg: ResumeSaga, ctx: &mut Self::Context) {
        let effects = saga::resume(&self.state, &self.def);
        self.perform(effects, ctx);
    }
}

impl Handler<Relinquish> for SagaActor {
    type Result = ();

    fn handle(&mut self, _msg: Relinquish, ctx: &mut Self::Context) {
        // The registry already forgot this saga; its new owner resumes it from the snapshot.
        self.passivating = true;
        for (_, (handle, _)) in self.timers.drain() {
            ctx.cancel_future(handle);
        }
        ctx.stop();
    }
}

impl Handler<Crash> for SagaActor {
    type Result = ();

    fn handle(&mut self, _msg: Crash, _ctx: &mut Self::Context) {
        panic!(
            "saga={} step=- crash requested by a test",
            self.state.saga_id
        );
    }
}

impl Drop for SagaActor {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.env.metrics.live_actors.dec();
    }
}
