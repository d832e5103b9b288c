//! The registry: spawns, finds, passivates, restarts and retires saga actors.
//!
//! It holds one slot per unfinished saga: the address of its live actor, or `Passive`
//! for a saga whose actor was stopped to free memory (and whose timer the registry
//! then keeps). An event for a passive saga reloads it from its snapshot.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::StreamExt;
use uuid::Uuid;

use super::messages::{
    Applied, CountLive, Crash, CrashSaga, DeliverError, DeliverEvent, EnsureLive, Passivated,
    RehydrateSagas, ReleasePartitions, Relinquish, RestartSaga, ResumeSaga, RetireSaga,
    SagaCrashed, SpawnSaga,
};
use super::saga_actor::encode_command;
use super::{Env, SagaActor};
use crate::domain::SagaDefinition;
use crate::saga::{self, Effect, Event, Phase, SagaState, Status, TransitionError, DEADLINE_TIMER};
use crate::store::{queries, StoreError};

/// Where a saga's actor is.
enum Slot {
    /// In memory.
    Live(Addr<SagaActor>),
    /// Stopped to save memory (or rehydrated without an actor); reloaded from its snapshot
    /// on the next event.
    Passive {
        /// The timers the registry holds for it: (command id or [`DEADLINE_TIMER`], generation).
        wake: Held,
        /// Rehydrated, with pending commands whose re-send is not confirmed yet.
        resend: Vec<Unconfirmed>,
    },
}

/// Timers the registry holds for a passive saga.
type Held = Vec<(Box<str>, i64)>;

/// A rehydrated saga's re-send not confirmed yet, and the time-out to arm once it is.
struct Unconfirmed {
    command_id: Box<str>,
    generation: i64,
    after_ms: u64,
}

/// A timer of a passive saga.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Wake {
    due: Instant,
    saga_id: Uuid,
    generation: i64,
    command_id: Box<str>,
}

/// How a saga loaded from its snapshot is brought back.
enum Revive {
    /// It was being driven here a moment ago (passivated): nothing to re-send, its timers
    /// (of these generations) are held by the registry.
    Reactivate(Held),
    /// Unknown here, or its held timer does not fit its snapshot: re-send its pending
    /// command and re-arm its timer.
    Resume,
}

impl Revive {
    /// Reactivating is only right when the registry holds the timer the snapshot expects
    /// (the snapshot may have moved on under another owner, or the timer was never armed).
    fn checked(self, state: &SagaState, def: &SagaDefinition) -> Revive {
        let Revive::Reactivate(held) = self else {
            return Revive::Resume;
        };
        let holds = |id: &str, generation: i64| {
            held.iter()
                .any(|(h, g)| h.as_ref() == id && *g == generation)
        };
        let timers = state
            .pending
            .iter()
            .filter(|p| p.phase != Phase::Parked)
            .all(|p| holds(&p.command_id, p.timer));
        let needs_deadline = matches!(state.status, Status::Running | Status::Paused)
            && !state.deadline_passed
            && def.deadline_ms.is_some()
            && state.started_at_ms.is_some();
        if timers && (!needs_deadline || holds(DEADLINE_TIMER, 0)) {
            Revive::Reactivate(held)
        } else {
            Revive::Resume
        }
    }
}

/// Supervisor of every saga actor. Holds addresses and passive sagas' timers only.
pub struct Registry {
    env: Arc<Env>,
    sagas: HashMap<Uuid, Slot>,
    wakes: BinaryHeap<Reverse<Wake>>,
}

/// Re-sends of rehydrated sagas' pending commands in flight at once.
const RESEND_CONCURRENCY: usize = 256;

impl Registry {
    /// An empty registry.
    pub fn new(env: Arc<Env>) -> Self {
        Registry {
            env,
            sagas: HashMap::new(),
            wakes: BinaryHeap::new(),
        }
    }

    fn live(&self, id: &Uuid) -> Option<Addr<SagaActor>> {
        match self.sagas.get(id) {
            Some(Slot::Live(addr)) if addr.connected() => Some(addr.clone()),
            _ => None,
        }
    }

    /// Spawns the actor of `state` unless one is live; returns the live one.
    fn spawn(
        &mut self,
        state: SagaState,
        effects: Vec<Effect>,
        ctx: &mut Context<Self>,
    ) -> Option<Addr<SagaActor>> {
        if let Some(addr) = self.live(&state.saga_id) {
            return Some(addr);
        }
        // Its partition changed hands while it was being loaded or started: not ours to drive.
        if !self.env.ownership.owns(&state.saga_id) {
            return None;
        }
        let Some(def) = self.env.catalog.get(&state.saga, state.definition_version) else {
            log::error!(
                "saga={} step=- definition {} v{} is not stored; the saga cannot run",
                state.saga_id,
                state.saga,
                state.definition_version
            );
            return None;
        };
        let id = state.saga_id;
        let addr = SagaActor::new(state, def, self.env.clone(), ctx.address(), effects).start();
        self.sagas.insert(id, Slot::Live(addr.clone()));
        Some(addr)
    }

    fn revive(
        &mut self,
        state: SagaState,
        how: Revive,
        ctx: &mut Context<Self>,
    ) -> Option<Addr<SagaActor>> {
        let def = self
            .env
            .catalog
            .get(&state.saga, state.definition_version)?;
        let effects = match how.checked(&state, &def) {
            Revive::Reactivate(_) => Vec::new(),
            Revive::Resume => saga::resume(&state, &def),
        };
        self.spawn(state, effects, ctx)
    }

    /// Delivers the timers that are due; one that cannot be delivered (the database is
    /// unreachable, say) is tried again a second later rather than lost.
    fn wake_due(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while self.wakes.peek().is_some_and(|Reverse(w)| w.due <= now) {
            let Some(Reverse(w)) = self.wakes.pop() else {
                break;
            };
            let deliver = ctx.address().send(DeliverEvent {
                saga_id: w.saga_id,
                event: Event::timer(&w.command_id, w.generation),
                note: None,
                trace: None,
                guard: None,
            });
            ctx.spawn(deliver.into_actor(self).map(move |res, act, _ctx| {
                let failed = match res {
                    Ok(Ok(_))
                    | Ok(Err(DeliverError::UnknownSaga(_)))
                    | Ok(Err(DeliverError::NotOwner(_))) => false,
                    Ok(Err(_)) | Err(_) => true,
                };
                if failed {
                    act.wakes.push(Reverse(Wake {
                        due: Instant::now() + Duration::from_secs(1),
                        ..w
                    }));
                }
            }));
        }
    }

    fn load_and_apply(
        &mut self,
        msg: DeliverEvent,
        how: Revive,
    ) -> ResponseActFuture<Self, Result<Applied, DeliverError>> {
        let saga_id = msg.saga_id;
        let load = self.load_owned(saga_id);
        Box::pin(
            load.into_actor(self)
                .map(move |loaded, act, ctx| match loaded {
                    Err(StoreError::NotOwner(_)) => {
                        act.sagas.remove(&saga_id);
                        act.env.ownership.recheck();
                        Err(DeliverError::NotOwner(
                            act.env.ownership.partition(&saga_id),
                        ))
                    }
                    Err(e) => Err(e.into()),
                    Ok(None) => Err(DeliverError::UnknownSaga(saga_id)),
                    Ok(Some(state)) if state.status.is_terminal() => {
                        act.sagas.remove(&saga_id);
                        Ok(None)
                    }
                    Ok(Some(_)) if !act.env.ownership.owns(&saga_id) => Err(
                        DeliverError::NotOwner(act.env.ownership.partition(&saga_id)),
                    ),
                    Ok(Some(state)) => match act.revive(state, how, ctx) {
                        Some(addr) => Ok(Some(addr)),
                        None => Err(DeliverError::Store(StoreError::Corrupt(format!(
                            "saga {saga_id}: its definition is not stored"
                        )))),
                    },
                })
                .then(move |route, act, _ctx| {
                    let fut: ResponseActFuture<Self, Result<Applied, DeliverError>> = match route {
                        Ok(Some(addr)) => Box::pin(
                            async move {
                                match addr.send(msg.to_apply()).await {
                                    Ok(applied) => applied,
                                    Err(_) => Err(DeliverError::ActorGone),
                                }
                            }
                            .into_actor(act),
                        ),
                        Ok(None) => Box::pin(fut::ready(Ok(Applied::Ignored(
                            TransitionError::Finished("finished"),
                        )))),
                        Err(e) => Box::pin(fut::ready(Err(e))),
                    };
                    fut
                }),
        )
    }
}

impl Registry {
    /// Loads a saga's snapshot if this instance still holds its partition (in the database,
    /// not only in memory): a saga is only ever resumed by its owner.
    fn load_owned(
        &self,
        saga_id: Uuid,
    ) -> impl std::future::Future<Output = Result<Option<SagaState>, StoreError>> + 'static {
        let pool = self.env.writer.pool().clone();
        let fence = self.env.ownership.fence(&saga_id);
        let instance = self.env.ownership.instance().to_string();
        let catalog = self.env.catalog.clone();
        async move {
            let state = match fence {
                Some(fence) => queries::load_owned(&pool, saga_id, &instance, fence).await?,
                None => return Err(StoreError::NotOwner(saga_id)),
            };
            // A version stored by another instance after this one started: load it now.
            if let Some(s) = &state {
                catalog.fetch(&pool, &s.saga, s.definition_version).await?;
            }
            Ok(state)
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The registry is the one address everything else holds: give it a deep mailbox.
        ctx.set_mailbox_capacity(1 << 20);
        ctx.run_interval(Duration::from_millis(50), |act, ctx| act.wake_due(ctx));
    }
}

impl Handler<SpawnSaga> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SpawnSaga, ctx: &mut Self::Context) {
        self.spawn(msg.state, msg.effects, ctx);
    }
}

impl Handler<RehydrateSagas> for Registry {
    type Result = usize;

    /// Registers every unfinished saga as passive and re-sends its pending command at the
    /// broker's pace (a bounded number of publishes in flight). Its time-out is armed only
    /// once the broker confirmed the re-send (an unconfirmed send is not an attempt), and
    /// before every retry the re-send checks that it is still the saga's pending command: an
    /// event that reached the saga meanwhile revives it, and the revived actor sends itself.
    fn handle(&mut self, msg: RehydrateSagas, ctx: &mut Self::Context) -> usize {
        let mut resends = Vec::new();
        let now = Instant::now();
        let mut n = 0;
        for state in msg.0 {
            // Already here (an event reached it first), or no longer ours.
            if self.sagas.contains_key(&state.saga_id) || !self.env.ownership.owns(&state.saga_id) {
                continue;
            }
            let Some(def) = self.env.catalog.get(&state.saga, state.definition_version) else {
                log::error!(
                    "saga={} step=- definition {} v{} is not stored",
                    state.saga_id,
                    state.saga,
                    state.definition_version
                );
                continue;
            };
            let mut slot_wake: Held = Vec::new();
            let mut slot_resend = Vec::new();
            let mut sends = Vec::new();
            for effect in saga::resume(&state, &def) {
                match effect {
                    Effect::Send {
                        step,
                        action,
                        command_id,
                        attempt,
                        generation,
                    } => {
                        sends.extend(
                            encode_command(&state, &def, step, action, &command_id, attempt).map(
                                |(queue, body)| Resend {
                                    saga_id: state.saga_id,
                                    generation,
                                    queue,
                                    command_id,
                                    action,
                                    body,
                                    trace: state.traceparent.clone(),
                                },
                            ),
                        );
                    }
                    Effect::ArmTimer {
                        command_id,
                        after_ms,
                        generation,
                        ..
                    } => {
                        if sends.iter().any(|r: &Resend| r.command_id == command_id) {
                            slot_resend.push(Unconfirmed {
                                command_id: command_id.into(),
                                generation,
                                after_ms,
                            });
                        } else {
                            slot_wake.push((command_id.as_str().into(), generation));
                            self.wakes.push(Reverse(Wake {
                                due: now + Duration::from_millis(after_ms),
                                saga_id: state.saga_id,
                                generation,
                                command_id: command_id.into(),
                            }));
                        }
                    }
                    Effect::ArmDeadline { after_start_ms } => {
                        if let Some(delay) =
                            super::saga_actor::deadline_delay(&state, after_start_ms)
                        {
                            slot_wake.push((DEADLINE_TIMER.into(), 0));
                            self.wakes.push(Reverse(Wake {
                                due: now + delay,
                                saga_id: state.saga_id,
                                generation: 0,
                                command_id: DEADLINE_TIMER.into(),
                            }));
                        }
                    }
                    Effect::Announce(_) => {}
                }
            }
            resends.extend(sends);
            self.sagas.insert(
                state.saga_id,
                Slot::Passive {
                    wake: slot_wake,
                    resend: slot_resend,
                },
            );
            n += 1;
        }
        let env = self.env.clone();
        let registry = ctx.address();
        actix::spawn(async move {
            futures_util::stream::iter(resends)
                .for_each_concurrent(RESEND_CONCURRENCY, |r| {
                    resend_until_confirmed(env.clone(), registry.clone(), r)
                })
                .await;
        });
        n
    }
}

/// The pending command of a rehydrated saga, to send again.
struct Resend {
    saga_id: Uuid,
    generation: i64,
    queue: String,
    command_id: String,
    action: crate::saga::StepAction,
    body: Vec<u8>,
    trace: Option<String>,
}

/// Publishes a rehydrated saga's pending command until the broker confirms it, as long as
/// the registry says it is still that saga's unconfirmed re-send; then has its time-out armed.
async fn resend_until_confirmed(env: Arc<Env>, registry: Addr<Registry>, r: Resend) {
    let mut retry = 0u32;
    loop {
        let still = registry
            .send(MayResend {
                saga_id: r.saga_id,
                command_id: r.command_id.as_str().into(),
                generation: r.generation,
            })
            .await
            .unwrap_or(false);
        if !still {
            return;
        }
        env.metrics
            .commands
            .with_label_values(&[r.action.as_str(), "rehydrate"])
            .inc();
        let sent = env
            .broker
            .send_command(
                &r.queue,
                &r.command_id,
                r.action.as_str(),
                &r.body,
                r.trace.as_deref(),
                env.ownership.reply_partition(&r.saga_id),
            )
            .await;
        if sent.is_ok() {
            env.metrics.commands_confirmed.inc();
            registry.do_send(Resent {
                saga_id: r.saga_id,
                generation: r.generation,
                command_id: r.command_id.into(),
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis((200u64 << retry.min(5)).min(5_000))).await;
        retry += 1;
    }
}

/// Asks whether a rehydrated saga's re-send is still due (it is passive and unconfirmed).
#[derive(Message)]
#[rtype(result = "bool")]
struct MayResend {
    saga_id: Uuid,
    command_id: Box<str>,
    generation: i64,
}

impl Handler<MayResend> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: MayResend, _ctx: &mut Self::Context) -> bool {
        let due = match self.sagas.get(&msg.saga_id) {
            Some(Slot::Passive { resend, .. }) => resend
                .iter()
                .any(|u| u.command_id == msg.command_id && u.generation == msg.generation),
            _ => false,
        };
        due && self.env.ownership.owns(&msg.saga_id)
    }
}

/// Tells the registry the broker confirmed a rehydrated saga's re-send: arm its time-out.
#[derive(Message)]
#[rtype(result = "()")]
struct Resent {
    saga_id: Uuid,
    generation: i64,
    command_id: Box<str>,
}

impl Handler<Resent> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Resent, _ctx: &mut Self::Context) {
        let Some(Slot::Passive { wake, resend }) = self.sagas.get_mut(&msg.saga_id) else {
            return;
        };
        let Some(at) = resend
            .iter()
            .position(|u| u.command_id == msg.command_id && u.generation == msg.generation)
        else {
            return;
        };
        let confirmed = resend.swap_remove(at);
        wake.push((confirmed.command_id.clone(), confirmed.generation));
        self.wakes.push(Reverse(Wake {
            due: Instant::now() + Duration::from_millis(confirmed.after_ms),
            saga_id: msg.saga_id,
            generation: confirmed.generation,
            command_id: confirmed.command_id,
        }));
    }
}

impl Handler<DeliverEvent> for Registry {
    type Result = ResponseActFuture<Self, Result<Applied, DeliverError>>;

    fn handle(&mut self, msg: DeliverEvent, _ctx: &mut Self::Context) -> Self::Result {
        let saga_id = msg.saga_id;
        if !self.env.ownership.owns(&saga_id) {
            let partition = self.env.ownership.partition(&saga_id);
            return Box::pin(fut::ready(Err(DeliverError::NotOwner(partition))));
        }
        if let Some(addr) = self.live(&saga_id) {
            let fut = async move {
                match addr.send(msg.to_apply()).await {
                    Ok(applied) => Ok(applied),
                    Err(_) => Err(msg),
                }
            };
            return Box::pin(fut.into_actor(self).then(move |res, act, _ctx| {
                let fut: ResponseActFuture<Self, Result<Applied, DeliverError>> = match res {
                    Ok(applied) => Box::pin(fut::ready(applied)),
                    // The actor stopped (finished, passivated, reloading) before taking it: look again.
                    // Resume, not reactivate: it may have stopped after a failed commit, with
                    // its command unsent and its timer gone. A re-send is harmless.
                    Err(msg) => act.load_and_apply(msg, Revive::Resume),
                };
                fut
            }));
        }
        let how = match self.sagas.get(&saga_id) {
            Some(Slot::Passive { wake, resend }) if resend.is_empty() => {
                Revive::Reactivate(wake.clone())
            }
            _ => Revive::Resume,
        };
        self.load_and_apply(msg, how)
    }
}

impl Handler<Passivated> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Passivated, _ctx: &mut Self::Context) {
        if matches!(self.sagas.get(&msg.saga_id), Some(Slot::Live(a)) if *a == msg.addr) {
            self.sagas.insert(
                msg.saga_id,
                Slot::Passive {
                    wake: msg
                        .timers
                        .iter()
                        .map(|t| (t.command_id.as_str().into(), t.generation))
                        .collect(),
                    resend: Vec::new(),
                },
            );
        }
        for t in msg.timers {
            self.wakes.push(Reverse(Wake {
                due: t.due,
                saga_id: msg.saga_id,
                generation: t.generation,
                command_id: t.command_id.into(),
            }));
        }
    }
}

impl Handler<RetireSaga> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RetireSaga, _ctx: &mut Self::Context) {
        if matches!(self.sagas.get(&msg.saga_id), Some(Slot::Live(a)) if *a == msg.addr) {
            self.sagas.remove(&msg.saga_id);
        }
    }
}

impl Handler<SagaCrashed> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SagaCrashed, ctx: &mut Self::Context) {
        log::warn!("saga={} step=- reloading it from its snapshot", msg.saga_id);
        self.reload(msg.saga_id, true, ctx);
    }
}

impl Registry {
    /// Loads a saga from its snapshot and resumes it (re-send, re-arm) unless it is finished.
    /// When an actor is live by then, it is told to resume too only if `resume_live`: after a
    /// crash it was revived without re-sending; after a repeated start it was just spawned.
    fn reload(&mut self, saga_id: Uuid, resume_live: bool, ctx: &mut Context<Self>) {
        // Not logged here: every start handed over by another instance comes this way, and a
        // warning for each was all but every line of the log with two instances.
        let load = self.load_owned(saga_id);
        ctx.spawn(
            load.into_actor(self)
                .map(move |loaded, act, ctx| match loaded {
                    Err(StoreError::NotOwner(_)) => {
                        log::info!(
                            "saga={saga_id} step=- its partition changed hands; dropped here"
                        );
                        act.sagas.remove(&saga_id);
                        act.env.ownership.recheck();
                    }
                    Ok(Some(state)) if !state.status.is_terminal() => match act.live(&saga_id) {
                        Some(addr) if resume_live => addr.do_send(ResumeSaga),
                        Some(_) => {}
                        None => {
                            act.revive(state, Revive::Resume, ctx);
                        }
                    },
                    Ok(_) => {
                        act.sagas.remove(&saga_id);
                    }
                    Err(e) => {
                        log::error!("saga={saga_id} step=- reload failed: {e}; trying again");
                        ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                            act.reload(saga_id, resume_live, ctx)
                        });
                    }
                }),
        );
    }
}

impl Handler<RestartSaga> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RestartSaga, ctx: &mut Self::Context) {
        if matches!(self.sagas.get(&msg.saga_id), Some(Slot::Live(a)) if *a == msg.addr) {
            self.sagas.remove(&msg.saga_id);
        }
        ctx.notify(SagaCrashed {
            saga_id: msg.saga_id,
        });
    }
}

impl Handler<EnsureLive> for Registry {
    type Result = ();

    fn handle(&mut self, msg: EnsureLive, ctx: &mut Self::Context) {
        if !self.sagas.contains_key(&msg.0) && self.env.ownership.owns(&msg.0) {
            log::debug!("saga={} step=- loading it to drive it here", msg.0);
            self.reload(msg.0, false, ctx);
        }
    }
}

impl Handler<ReleasePartitions> for Registry {
    type Result = usize;

    /// Forgets every saga of the partitions (stopping live actors without a write) and
    /// their timers; returns how many sagas were forgotten.
    fn handle(&mut self, msg: ReleasePartitions, _ctx: &mut Self::Context) -> usize {
        let n = self.env.ownership.partitions();
        let gone: std::collections::HashSet<u32> = msg.0.into_iter().collect();
        let in_gone = |id: &Uuid| gone.contains(&crate::cluster::partition_of(id, n));
        let before = self.sagas.len();
        self.sagas.retain(|id, slot| {
            if !in_gone(id) {
                return true;
            }
            if let Slot::Live(addr) = slot {
                addr.do_send(Relinquish);
            }
            false
        });
        let wakes = std::mem::take(&mut self.wakes);
        self.wakes = wakes
            .into_iter()
            .filter(|Reverse(w)| !in_gone(&w.saga_id))
            .collect();
        before - self.sagas.len()
    }
}

impl Handler<CountLive> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: CountLive, _ctx: &mut Self::Context) -> usize {
        self.sagas
            .values()
            .filter(|s| matches!(s, Slot::Live(a) if a.connected()))
            .count()
    }
}

impl Handler<CrashSaga> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: CrashSaga, _ctx: &mut Self::Context) -> bool {
        match self.live(&msg.0) {
            Some(addr) => {
                addr.do_send(Crash);
                true
            }
            None => false,
        }
    }
}
