//! The saga state machine: state + event -> new state + effects. No I/O, no clock.

pub mod event;
pub mod state;
pub mod transition;

#[cfg(test)]
mod tests;

pub use event::{Effect, Event, Record, ReplyOutcome, Transition, TransitionError, DEADLINE_TIMER};
pub use state::{
    command_id, Pending, Phase, SagaState, Status, StepAction, StepRecord, StepStatus,
};
pub use transition::{apply, past_pivot, resume, start};
