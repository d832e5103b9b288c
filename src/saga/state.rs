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
    /// A step with `on_error = "pause"` (or any step past a pivot) failed: waits for an
    /// operator's resume, skip or abort.
    Paused,
    /// Every step done. Terminal.
    Completed,
    /// Every needed compensation done. Terminal.
    Compensated,
    /// A compensation ran out of attempts; waits for an operator's retry.
    Failed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Compensating,
        Status::Paused,
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
            Status::Paused => "paused",
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sent; a time-out is armed.
    AwaitingReply,
    /// Answered `error` (a compensate, or a retryable one): a back-off timer will re-send it.
    BackingOff,
    /// Waiting for an operator: a compensate that ran out of attempts (`failed`), or an
    /// execute that failed on a pausing step (`paused`). Nothing is armed.
    Parked,
}

/// One command a saga is waiting on (a group has several at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Generation of its armed timer: the version of the transition that armed it. A timer
    /// of another generation is stale (a re-send or an operator action armed a newer one).
    /// 0 in snapshots written before pending commands had their own (then the saga's
    /// [`SagaState::timer`] holds it).
    #[serde(default)]
    pub timer: i64,
}

/// What happened to one step, for compensation decisions and for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The commands being waited on, in step order: one, or a group's.
    #[serde(default, deserialize_with = "pending_set")]
    pub pending: Vec<Pending>,
    /// Steps still to compensate after the pending ones, one at a time, in order (last first).
    pub to_compensate: Vec<usize>,
    /// A random secret of this saga, part of every `command_id` it sends: a participant can
    /// only name (answer) commands it was sent, never guess another step's. Empty for sagas
    /// started before it existed (their ids stay as they were).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// The timer generation of snapshots written before each pending command had its own
    /// ([`Pending::timer`]); read once, when such a snapshot is loaded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timer: i64,
    /// The saga's deadline went off (it fires once: an operator's resume after it is not
    /// undone by it again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deadline_passed: bool,
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

    /// The step the saga is at (the first of a group), if it is at one.
    pub fn current_step(&self) -> Option<usize> {
        self.pending.iter().map(|p| p.step).min()
    }

    /// The pending command with this id.
    pub fn pending_command(&self, command_id: &str) -> Option<&Pending> {
        self.pending.iter().find(|p| p.command_id == command_id)
    }

    /// Moves a snapshot written by an older release to the current shape: the saga-wide
    /// timer generation becomes its pending command's own.
    pub fn upgraded(mut self) -> Self {
        if self.timer != 0 {
            for p in &mut self.pending {
                if p.timer == 0 {
                    p.timer = self.timer;
                }
            }
            self.timer = 0;
        }
        self
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// `pending` as written now (a list) or by releases before groups (one command or null).
fn pending_set<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Pending>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Many(Vec<Pending>),
        One(Pending),
    }
    Ok(match Option::<Shape>::deserialize(d)? {
        None => Vec::new(),
        Some(Shape::One(p)) => vec![p],
        Some(Shape::Many(v)) => v,
    })
}

/// The readable part of a step action's id (see [`SagaState::command_id`], which adds the
/// saga's secret).
pub fn command_id(saga_id: &Uuid, step_name: &str, action: StepAction) -> String {
    format!("{saga_id}/{step_name}/{}", action.as_str())
}
