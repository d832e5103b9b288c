//! Messages between the HTTP layer, the consumer, the registry and saga actors.

use actix::prelude::*;
use uuid::Uuid;

use crate::saga::{Effect, Event, SagaState, TransitionError};
use crate::store::StoreError;

/// What applying an event to a saga came to.
#[derive(Debug)]
pub enum Applied {
    /// A transition was committed.
    Transitioned,
    /// The event changes nothing (duplicate, stale, finished saga, or not allowed).
    Ignored(TransitionError),
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// No saga has this id.
    #[error("unknown saga {0}")]
    UnknownSaga(Uuid),
    /// The store failed (a conflict, or corrupt data); the event was not applied.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The saga's actor stopped before answering; the event was not applied.
    #[error("saga actor stopped")]
    ActorGone,
    /// The saga's partition is held by another instance (or by none right now).
    #[error("partition {0} is not held by this instance")]
    NotOwner(u32),
    /// `If-Match` named another version than the saga's: nothing was done.
    #[error("the saga is at version {current}, not the one given in If-Match")]
    Precondition {
        /// The saga's version now.
        current: i64,
    },
}

/// Tells the registry that this instance no longer holds these partitions: their actors
/// stop without writing anything, their timers are dropped.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ReleasePartitions(pub Vec<u32>);

/// Tells a saga actor to stop at once because its partition changed hands.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relinquish;

/// The conditions an operator action is taken under (CONTRACT.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionGuard {
    /// `If-Match`: the saga must be at this version, else nothing happens (412).
    pub if_version: Option<i64>,
    /// The transition must be committed before this instant, or never: the caller is told
    /// 503 when it is not, and the database refuses the write once it is past.
    pub deadline: chrono::DateTime<chrono::Utc>,
}

/// Applies an event to one saga (with an operator's note and the cause's `traceparent`
/// for the history row): the saga actor commits the transition, then acts on it.
#[derive(Message)]
#[rtype(result = "Result<Applied, DeliverError>")]
pub struct ApplyEvent {
    /// The event.
    pub event: Event,
    /// Who asked and why (operator actions), recorded in the history row.
    pub note: Option<String>,
    /// The `traceparent` of the cause, recorded in the history row.
    pub trace: Option<String>,
    /// Set for operator actions.
    pub guard: Option<ActionGuard>,
}

impl ApplyEvent {
    /// An event with no note, trace or guard (timers).
    pub fn new(event: Event) -> Self {
        ApplyEvent {
            event,
            note: None,
            trace: None,
            guard: None,
        }
    }
}

/// Asks the registry to route an event to a saga, loading the saga if it is not in memory.
#[derive(Message)]
#[rtype(result = "Result<Applied, DeliverError>")]
pub struct DeliverEvent {
    /// The saga.
    pub saga_id: Uuid,
    /// The event.
    pub event: Event,
    /// Who asked and why (operator actions), recorded in the history row.
    pub note: Option<String>,
    /// The `traceparent` of the reply, recorded in the history row.
    pub trace: Option<String>,
    /// Set for operator actions: `If-Match` and the commit deadline.
    pub guard: Option<ActionGuard>,
}

impl DeliverEvent {
    /// An event for a saga, with no note, trace or guard.
    pub fn new(saga_id: Uuid, event: Event) -> Self {
        DeliverEvent {
            saga_id,
            event,
            note: None,
            trace: None,
            guard: None,
        }
    }

    /// The same, as the message a saga actor takes.
    pub fn to_apply(&self) -> ApplyEvent {
        ApplyEvent {
            event: self.event.clone(),
            note: self.note.clone(),
            trace: self.trace.clone(),
            guard: self.guard,
        }
    }
}

/// Asks the registry to spawn the actor of a saga whose start was just committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SpawnSaga {
    /// Its state at version 1.
    pub state: SagaState,
    /// The effects of the start transition.
    pub effects: Vec<Effect>,
}

/// Asks the registry to spawn actors for sagas loaded from their snapshots, resuming each.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RehydrateSagas(pub Vec<SagaState>);

/// Tells the registry a saga actor finished its saga and stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetireSaga {
    /// The saga.
    pub saga_id: Uuid,
    /// The actor that stopped (an older one may stop after a newer was spawned).
    pub addr: Addr<crate::actors::SagaActor>,
}

/// Tells the registry an idle saga actor stopped to free memory; the registry keeps its timers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivated {
    /// The saga.
    pub saga_id: Uuid,
    /// The actor that stopped.
    pub addr: Addr<crate::actors::SagaActor>,
    /// Its armed timers.
    pub timers: Vec<crate::actors::saga_actor::ArmedTimer>,
}

/// Tells the registry a saga actor stopped after a failed commit: reload and resume it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartSaga {
    /// The saga.
    pub saga_id: Uuid,
    /// The actor that stopped.
    pub addr: Addr<crate::actors::SagaActor>,
}

/// Asks the registry to make sure an unfinished saga is driven (after an ambiguous start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnsureLive(pub Uuid);

/// Asks a live saga actor to re-send its pending command and re-arm its timer (after a crash).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResumeSaga;

/// Tells the registry a saga actor panicked: restart it from its snapshot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SagaCrashed {
    /// The saga.
    pub saga_id: Uuid,
}

/// Asks the registry how many saga actors are live.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountLive;

/// Test hook: makes a saga actor panic, to show one saga's crash does not touch others.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Test hook: routes [`Crash`] to a saga's actor.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CrashSaga(pub Uuid);
