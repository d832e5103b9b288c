//! The registry: spawns, finds, restarts and retires saga actors.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use uuid::Uuid;

use super::messages::{
    Applied, ApplyEvent, CountLive, Crash, CrashSaga, DeliverError, DeliverEvent, RehydrateSagas,
    RetireSaga, SagaCrashed, SpawnSaga,
};
use super::{Env, SagaActor};
use crate::saga::{self, Effect, SagaState, TransitionError};
use crate::store::{queries, StoreError};

/// Supervisor of every live saga actor. Holds only addresses; the sagas hold their state.
pub struct Registry {
    env: Arc<Env>,
    sagas: HashMap<Uuid, Addr<SagaActor>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(env: Arc<Env>) -> Self {
        Registry {
            env,
            sagas: HashMap::new(),
        }
    }

    /// Spawns the actor of `state` unless one is live; returns the live one.
    fn spawn(
        &mut self,
        state: SagaState,
        effects: Vec<Effect>,
        ctx: &mut Context<Self>,
    ) -> Option<Addr<SagaActor>> {
        if let Some(addr) = self.sagas.get(&state.saga_id) {
            if addr.connected() {
                return Some(addr.clone());
            }
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
        self.sagas.insert(id, addr.clone());
        Some(addr)
    }

    /// Spawns the actor of a saga loaded from its snapshot, resuming its pending command.
    fn resume(&mut self, state: SagaState, ctx: &mut Context<Self>) -> Option<Addr<SagaActor>> {
        let def = self
            .env
            .catalog
            .get(&state.saga, state.definition_version)?;
        let effects = saga::resume(&state, &def);
        self.spawn(state, effects, ctx)
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The registry is the one address everything else holds: give it a deep mailbox.
        ctx.set_mailbox_capacity(1 << 20);
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

    fn handle(&mut self, msg: RehydrateSagas, ctx: &mut Self::Context) -> usize {
        let mut n = 0;
        for state in msg.0 {
            if self.resume(state, ctx).is_some() {
                n += 1;
            }
        }
        n
    }
}

enum Route {
    Live(Addr<SagaActor>),
    Unknown,
    Finished(&'static str),
    Failed(DeliverError),
}

impl Handler<DeliverEvent> for Registry {
    type Result = ResponseActFuture<Self, Result<Applied, DeliverError>>;

    fn handle(&mut self, msg: DeliverEvent, _ctx: &mut Self::Context) -> Self::Result {
        let DeliverEvent { saga_id, event } = msg;
        if let Some(addr) = self.sagas.get(&saga_id).filter(|a| a.connected()).cloned() {
            let fut = async move {
                addr.send(ApplyEvent(event.clone()))
                    .await
                    .map_err(|_| event)
            };
            return Box::pin(fut.into_actor(self).then(move |res, act, _ctx| {
                let fut: ResponseActFuture<Self, Result<Applied, DeliverError>> = match res {
                    Ok(applied) => Box::pin(fut::ready(applied)),
                    // The actor stopped (finished, reloaded, or crashed) before taking it: look again.
                    Err(event) => act.load_and_apply(saga_id, event),
                };
                fut
            }));
        }
        self.load_and_apply(saga_id, event)
    }
}

impl Registry {
    fn load_and_apply(
        &mut self,
        saga_id: Uuid,
        event: crate::saga::Event,
    ) -> ResponseActFuture<Self, Result<Applied, DeliverError>> {
        let pool = self.env.writer.pool().clone();
        let load = async move { queries::load(&pool, saga_id).await };
        Box::pin(
            load.into_actor(self)
                .map(move |loaded, act, ctx| {
                    let route = match loaded {
                        Err(e) => Route::Failed(e.into()),
                        Ok(None) => Route::Unknown,
                        Ok(Some(state)) if state.status.is_terminal() => {
                            Route::Finished(state.status.as_str())
                        }
                        Ok(Some(state)) => match act.resume(state, ctx) {
                            Some(addr) => Route::Live(addr),
                            None => Route::Failed(DeliverError::Store(StoreError::Corrupt(
                                format!("saga {saga_id}: its definition is not stored"),
                            ))),
                        },
                    };
                    (route, event)
                })
                .then(move |(route, event), act, _ctx| {
                    let fut: ResponseActFuture<Self, Result<Applied, DeliverError>> = match route {
                        Route::Live(addr) => Box::pin(
                            async move {
                                match addr.send(ApplyEvent(event)).await {
                                    Ok(applied) => applied,
                                    Err(_) => Err(DeliverError::ActorGone),
                                }
                            }
                            .into_actor(act),
                        ),
                        Route::Unknown => {
                            Box::pin(fut::ready(Err(DeliverError::UnknownSaga(saga_id))))
                        }
                        Route::Finished(status) => Box::pin(fut::ready(Ok(Applied::Ignored(
                            TransitionError::Finished(status),
                        )))),
                        Route::Failed(e) => Box::pin(fut::ready(Err(e))),
                    };
                    fut
                }),
        )
    }
}

impl Handler<RetireSaga> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RetireSaga, _ctx: &mut Self::Context) {
        if self.sagas.get(&msg.saga_id) == Some(&msg.addr) {
            self.sagas.remove(&msg.saga_id);
        }
    }
}

impl Handler<SagaCrashed> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SagaCrashed, ctx: &mut Self::Context) {
        let saga_id = msg.saga_id;
        log::error!("saga={saga_id} step=- actor panicked; restarting it from its snapshot");
        self.sagas.remove(&saga_id);
        let pool = self.env.writer.pool().clone();
        let load = async move { queries::load(&pool, saga_id).await };
        ctx.spawn(
            load.into_actor(self)
                .map(move |loaded, act, ctx| match loaded {
                    Ok(Some(state)) if !state.status.is_terminal() => {
                        act.resume(state, ctx);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log::error!(
                            "saga={saga_id} step=- restart after panic failed: {e}; trying again"
                        );
                        ctx.notify_later(
                            SagaCrashed { saga_id },
                            std::time::Duration::from_secs(1),
                        );
                    }
                }),
        );
    }
}

impl Handler<CountLive> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: CountLive, _ctx: &mut Self::Context) -> usize {
        self.sagas.len()
    }
}

impl Handler<CrashSaga> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: CrashSaga, _ctx: &mut Self::Context) -> bool {
        match self.sagas.get(&msg.0) {
            Some(addr) => {
                addr.do_send(Crash);
                true
            }
            None => false,
        }
    }
}
