//! Shapes of the definition bodies (`/definitions`), for the OpenAPI document only: the
//! handlers read and write [`crate::domain::SagaDefinition`]'s JSON, which these describe.

use serde::Serialize;
use utoipa::ToSchema;

/// What a step's failure does: compensate the earlier steps, or wait for an operator.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorBody {
    /// Compensate the earlier steps (the default).
    Compensate,
    /// Wait for an operator (`paused`).
    Pause,
}

/// One step, as in the TOML file's `[[sagas.steps]]`. Keys at their default may be left out
/// (and are left out of what `GET` answers, except `compensate`, `timeout_ms` and
/// `max_attempts`); an unknown key is refused.
#[derive(Serialize, ToSchema)]
pub struct StepBody {
    /// Unique within the saga.
    pub name: String,
    /// The participant's command queue (declared when first used).
    pub queue: String,
    /// Whether a later failure sends this step a `compensate` command.
    #[schema(default = true, nullable = false)]
    pub compensate: Option<bool>,
    /// No reply by then: the command is re-sent.
    #[schema(default = 30000, minimum = 1, nullable = false)]
    pub timeout_ms: Option<u64>,
    /// Sends before the step counts as failed.
    #[schema(default = 3, minimum = 1, nullable = false)]
    pub max_attempts: Option<u32>,
    /// Consecutive steps with the same group run in parallel.
    #[schema(nullable = false)]
    pub group: Option<String>,
    /// What a failure of this step does to the saga.
    #[schema(nullable = false)]
    pub on_error: Option<OnErrorBody>,
    /// Once done, the saga never compensates; may not be in a group.
    #[schema(default = false, nullable = false)]
    pub pivot: Option<bool>,
    /// First back-off after a retryable error, doubling, at most 60 s.
    #[schema(default = 1000, minimum = 1, nullable = false)]
    pub retry_backoff_ms: Option<u64>,
}

/// Body of `PUT /definitions/{name}`: one saga's definition, the keys of the TOML file.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"steps": [
    {"name": "flight", "queue": "flights"},
    {"name": "hotel", "queue": "hotels", "timeout_ms": 10000}
]}))]
pub struct DefinitionBody {
    /// The saga type; the path's name when left out (400 when it differs).
    #[schema(nullable = false, pattern = "^[A-Za-z0-9_-]{1,100}$")]
    pub name: Option<String>,
    /// A saga still running this long after its start is aborted (or paused past its pivot).
    #[schema(minimum = 1, nullable = false)]
    pub deadline_ms: Option<u64>,
    /// The steps, in execution order (at least one).
    pub steps: Vec<StepBody>,
    /// Ignored (the service assigns versions), so that what `GET` answers can be put back.
    #[schema(nullable = false)]
    pub version: Option<i32>,
}

/// A stored definition: the body `PUT` takes, with its name and version.
#[derive(Serialize, ToSchema)]
pub struct StoredDefinition {
    /// The saga type.
    pub name: String,
    /// The stored version (a name's versions count up from 1).
    #[schema(minimum = 1)]
    pub version: i32,
    /// A saga still running this long after its start is aborted (or paused past its pivot).
    #[schema(minimum = 1, nullable = false)]
    pub deadline_ms: Option<u64>,
    /// The steps, in execution order.
    pub steps: Vec<StepBody>,
}

/// Answer of `GET /definitions`.
#[derive(Serialize, ToSchema)]
pub struct DefinitionList {
    /// The latest version of each saga type, by name.
    pub definitions: Vec<StoredDefinition>,
}

/// Answer of `PUT /definitions/{name}`.
#[derive(Serialize, ToSchema)]
pub struct DefinitionStored {
    /// The saga type.
    pub name: String,
    /// Its version now: a new one when the content changed, else the latest's.
    #[schema(minimum = 1)]
    pub version: i32,
}
