//! Inputs of the state machine, and what each transition leaves behind.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::{Status, StepAction};

/// What a participant said.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyOutcome {
    /// `status: done`, with its optional `output`.
    Done {
        /// The step's output (`{}` when none was given).
        output: Value,
    },
    /// `status: error`, with its optional reason.
    Error {
        /// Why, as the participant said.
        error: Option<String>,
        /// `"retryable": true`: send the same command again after a back-off.
        retryable: bool,
    },
}

/// An input to [`super::transition::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A participant's reply to a command.
    Reply {
        /// The command it answers.
        command_id: String,
        /// Done or error.
        outcome: ReplyOutcome,
    },
    /// A timer armed by [`Effect::ArmTimer`] went off.
    TimerFired {
        /// The command it was armed for.
        command_id: String,
        /// The generation it was armed with ([`super::SagaState::timer`]); another is stale.
        generation: i64,
    },
    /// The saga's deadline (`deadline_ms` after its start) went off.
    Deadline,
    /// An operator asked a running or paused saga to compensate.
    Abort,
    /// An operator asked a failed saga to re-send its failed compensation.
    Retry,
    /// An operator marks the pending compensation of the named step done without running
    /// it, or counts the step a paused saga waits on done.
    Skip {
        /// The step the operator means: the action is refused unless it is the pending one,
        /// so a repeated click cannot skip the next step's compensation too.
        step: String,
    },
    /// An operator re-sends the pending commands now, with their attempts reset.
    Resume,
}

/// The name under which the actor and the registry arm a saga's deadline, beside its
/// commands' timers (a `command_id` always starts with the saga's UUID, so none is this).
pub const DEADLINE_TIMER: &str = "deadline";

impl Event {
    /// The event a timer delivers: a command's time-out or back-off, or the deadline.
    pub fn timer(command_id: &str, generation: i64) -> Event {
        if command_id == DEADLINE_TIMER {
            Event::Deadline
        } else {
            Event::TimerFired {
                command_id: command_id.to_string(),
                generation,
            }
        }
    }
}

/// Something the actor must do once the transition is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish the pending command (its body is built from the new state).
    Send {
        /// Step index.
        step: usize,
        /// Execute or compensate.
        action: StepAction,
        /// Its stable id.
        command_id: String,
        /// Which send this is (1-based).
        attempt: u32,
        /// The timer generation of its pending command (its send is void once it changed).
        generation: i64,
    },
    /// Arm a timer that delivers [`Event::TimerFired`] after `after_ms`, with the
    /// generation of its pending command ([`super::Pending::timer`]).
    ArmTimer {
        /// For which command.
        command_id: String,
        /// For which attempt (for logs and metrics).
        attempt: u32,
        /// The generation the timer delivers.
        generation: i64,
        /// Delay.
        after_ms: u64,
    },
    /// Arm the saga's deadline: [`Event::Deadline`] at its start plus `after_start_ms`
    /// (at once when that is past).
    ArmDeadline {
        /// `deadline_ms` of its definition.
        after_start_ms: u64,
    },
    /// Announce the saga's new status on the `saga.events` exchange.
    Announce(Status),
}

/// The history row a transition appends to `saga_events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What happened, e.g. `step_done`, `compensation_started`.
    pub event: String,
    /// The step it concerns, if any.
    pub step: Option<String>,
    /// A participant's error text or an operator's reason.
    pub detail: Option<String>,
}

/// The outcome of a successful transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The new state, `version` already increased by one.
    pub state: super::state::SagaState,
    /// What to do once it is committed, in order.
    pub effects: Vec<Effect>,
    /// The history row.
    pub record: Record,
}

/// Why an event does not apply. None of them changes the saga.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The saga is completed or compensated: late messages are ignored.
    #[error("saga is already {0}")]
    Finished(&'static str),
    /// A reply or timer for a command that is not (or no longer) pending: a duplicate or stale message.
    #[error("not the pending command: {0}")]
    Stale(String),
    /// An operator action that makes no sense in the saga's status.
    #[error("{0}")]
    NotAllowed(String),
    /// The snapshot does not fit its definition (a step index out of range).
    #[error("snapshot does not match its definition: {0}")]
    Corrupt(String),
}
