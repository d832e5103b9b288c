//! Shapes of the bodies the handlers build with `json!`, for the OpenAPI document only.
//!
//! The handlers answer with `json!` objects; these types describe those objects so
//! that `/openapi.json` has a schema for them. `tests/api/openapi.rs` checks every
//! answer it provokes against the documented schema, so a drift between a handler
//! and its type here fails the test.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every error: `{"error": "..."}`. A 500 never shows internals.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": "no saga 3f1c62c8-59a1-4c3e-9e55-5d6b3bd2d1a4"}))]
pub struct ErrorBody {
    /// What was wrong, for a person to read.
    pub error: String,
}

/// `GET /sagas/counts`: sagas per status, every status listed.
#[derive(Serialize, ToSchema)]
pub struct CountsBody {
    /// Status to number of sagas.
    #[schema(value_type = Object)]
    pub counts: std::collections::BTreeMap<String, i64>,
    /// All sagas.
    pub total: i64,
}

/// `POST /start` as JSON.
#[derive(Serialize, ToSchema)]
pub struct StartJson {
    /// The saga's id, chosen by the caller; a repeat with the same type and payload is idempotent.
    pub saga_id: Uuid,
    /// Saga type (a name from the definitions); `default` when absent, null or empty.
    #[schema(default = "default")]
    pub saga: Option<String>,
    /// Start payload, given to every step; `{}` when absent or null.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /start` as a form (`application/x-www-form-urlencoded`).
#[derive(Serialize, ToSchema)]
pub struct StartForm {
    /// The saga's id (a UUID).
    #[schema(format = Uuid)]
    pub saga_id: String,
    /// Saga type; `default` when absent or empty.
    #[schema(default = "default", nullable = false)]
    pub saga: Option<String>,
    /// Start payload as JSON text of an object, e.g. `{"order":42}`; `{}` when absent.
    #[schema(nullable = false)]
    pub payload: Option<String>,
}

/// Answer of `POST /start`.
#[derive(Serialize, ToSchema)]
pub struct Started {
    /// The saga's id.
    pub saga_id: Uuid,
    /// Base62 form (alphabet `0-9A-Za-z`) of the id's 128-bit value; `GET /sagas/{code}` finds it.
    #[schema(example = "5QFTNIubMf4y0c2hWv16hN")]
    pub code: String,
    /// `running` for a new saga; a repeat answers the stored saga's status.
    pub status: crate::saga::Status,
}

/// One page of `GET /sagas`, newest first.
#[derive(Serialize, ToSchema)]
pub struct SagaPage {
    /// At most `limit` sagas.
    pub sagas: Vec<crate::store::SagaRow>,
    /// Cursor of the next page, to pass as `after`; null on the last page.
    pub next: Option<String>,
}

/// The operator actions of `POST /sagas/{id}/{action}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    /// A `running` or `paused` saga starts compensating, the pending steps first (409 past a pivot).
    Abort,
    /// A `failed` saga re-sends its failed compensate command (same `command_id`).
    Retry,
    /// The pending compensation of a `compensating` or `failed` saga is marked done without running it; a `paused` saga counts the paused step done.
    Skip,
    /// The pending commands of a `running`, `compensating` or `paused` saga are re-sent now, their attempts reset.
    Resume,
}

/// Answer of an accepted operator action.
#[derive(Serialize, ToSchema)]
pub struct ActionAccepted {
    /// The saga's id.
    pub saga_id: Uuid,
    /// Its base62 code.
    pub code: String,
    /// The action taken.
    pub accepted: OperatorAction,
}

/// Answer of `GET /liveness`.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    /// Always `up`.
    #[schema(example = "up", pattern = "^up$")]
    pub status: String,
    /// The build's version.
    pub build: String,
    /// Host name.
    pub host: String,
    /// `KUBERNETES_PODNAME`, where set.
    #[schema(nullable = false)]
    pub pod: Option<String>,
    /// `KUBERNETES_NAMESPACE_POD_IP`, where set.
    #[serde(rename = "podIP")]
    #[schema(nullable = false)]
    pub pod_ip: Option<String>,
    /// `KUBERNETES_NODENAME`, where set.
    #[schema(nullable = false)]
    pub node: Option<String>,
    /// `KUBERNETES_NAMESPACE`, where set.
    #[schema(nullable = false)]
    pub namespace: Option<String>,
}

/// What `GET /readiness` says.
#[derive(Serialize, ToSchema)]
pub enum ReadinessStatus {
    /// Ready: PostgreSQL answered within 1 s, the broker is connected, start-up is done.
    #[serde(rename = "ok")]
    Ok,
    /// PostgreSQL did not answer within 1 s.
    #[serde(rename = "db not ready")]
    DbNotReady,
    /// No open broker connection.
    #[serde(rename = "broker not ready")]
    BrokerNotReady,
    /// Migrations, definitions or rehydration are not done yet.
    #[serde(rename = "starting")]
    Starting,
    /// SIGTERM was received.
    #[serde(rename = "shutting down")]
    ShuttingDown,
}

/// Answer of `GET /readiness`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` with 200; otherwise why not, with 500.
    pub status: ReadinessStatus,
}
