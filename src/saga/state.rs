//! The saga's state: what is snapshotted to `sagas.state` on every transition.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Where a saga is in its life (CONTRACT.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Executing steps forward.
    Running,
    /// Undoing earlier steps, last first.
    Compensating,
    /// Every step done. Terminal.
    Completed,
    /// Every needed compensation done. Terminal.
    Compensated,
    /// A compensation ran out of attempts; waits for an operator's retry.
    Failed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Running,
        Status::Compensating,
        Status::Completed,
        Status::Compensated,
        Status::Failed,
    ];

    /// Completed and compensated sagas never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }

    /// The name used in the API, the tables and routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::Failed => "failed",
        }
    }

    /// Parses the name given by [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The two actions a participant is asked to perform for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Run the step's local transaction.
    Execute,
    /// Undo it.
    Compensate,
}

impl StepAction {
    /// `execute` or `compensate`, as sent in the command's `type` and `action`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepAction::Execute => "execute",
            StepAction::Compensate => "compensate",
        }
    }
}

/// What the pending command is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sent; a time-out is armed.
    AwaitingReply,
    /// A compensate was answered `error`; a back-off timer will re-send it.
    BackingOff,
    /// The saga is `failed`: nothing is armed until an operator retries.
    Parked,
}

/// The one command a saga is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Index of the step in the definition.
    pub step: usize,
    /// Execute or compensate.
    pub action: StepAction,
    /// The same on every re-send of this step action.
    pub command_id: String,
    /// Sends so far, counting the current one (1-based).
    pub attempt: u32,
    /// What is armed for it.
    pub phase: Phase,
}

/// What happened to one step, for compensation decisions and for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not sent yet.
    NotStarted,
    /// Execute sent, no answer yet.
    Executing,
    /// Answered `done`.
    Done,
    /// Answered `error`: its local transaction did not happen.
    Failed,
    /// Never answered within its attempts: it may have run.
    TimedOut,
    /// Was pending when the saga was aborted: it may have run.
    Aborted,
    /// Compensate sent, no `done` yet.
    Compensating,
    /// Compensate answered `done`.
    Compensated,
    /// Compensate ran out of attempts.
    CompensationFailed,
}

/// Per-step record kept in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Where the step is.
    pub status: StepStatus,
    /// Execute sends so far.
    pub attempts: u32,
    /// Compensate sends so far.
    #[serde(default)]
    pub compensate_attempts: u32,
    /// The last error a participant gave for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The full state of one saga: rewritten to `sagas.state` on every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    /// The saga's UUID.
    pub saga_id: Uuid,
    /// The saga type.
    pub saga: String,
    /// The definition version it started with and finishes on.
    pub definition_version: i32,
    /// The start payload (`{}` when none).
    pub payload: Value,
    /// Lifecycle status.
    pub status: Status,
    /// Transitions so far; equals the number of history rows.
    pub version: i64,
    /// Each done step's `output`, by step name.
    pub results: Map<String, Value>,
    /// One record per step of the definition.
    pub steps: Vec<StepRecord>,
    /// The command being waited on, if any.
    pub pending: Option<Pending>,
    /// Steps still to compensate after the pending one, in order (last step first).
    pub to_compensate: Vec<usize>,
    /// A random secret of this saga, part of every `command_id` it sends: a participant can
    /// only name (answer) commands it was sent, never guess another step's. Empty for sagas
    /// started before it existed (their ids stay as they were).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// Generation of the armed timer: the version of the transition that armed it. A timer
    /// of another generation is stale (a re-send or an operator action armed a newer one).
    #[serde(default)]
    pub timer: i64,
    /// When the saga started (milliseconds since the epoch), set by the I/O layer; for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// W3C `traceparent` of the request that started it, set by the I/O layer; carried as
    /// an AMQP header on every command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl SagaState {
    /// The `command_id` of one step action of this saga: the same on every re-send. Its
    /// last part is a digest of the saga's secret with the step and action, so a participant
    /// that was sent one id can neither learn the secret nor derive another step's id.
    pub fn command_id(&self, step_name: &str, action: StepAction) -> String {
        use sha2::{Digest, Sha256};
        let id = command_id(&self.saga_id, step_name, action);
        if self.nonce.is_empty() {
            return id;
        }
        let digest = Sha256::new()
            .chain_update(self.nonce.as_bytes())
            .chain_update(b"/")
            .chain_update(id.as_bytes())
            .finalize();
        format!("{id}/{}", hex::encode(&digest[..12]))
    }

    /// Name of the step the saga is at, if it is at one.
    pub fn current_step(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.step)
    }
}

/// The readable part of a step action's id (see [`SagaState::command_id`], which adds the
/// saga's secret).
pub fn command_id(saga_id: &Uuid, step_name: &str, action: StepAction) -> String {
    format!("{saga_id}/{step_name}/{}", action.as_str())
}
