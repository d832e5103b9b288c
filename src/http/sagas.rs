//! `GET /sagas`, `GET /sagas/{id}`, and the operator actions.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::body::read_limited;
use super::{core, hand_over, ApiError};
use crate::actors::messages::{Applied, DeliverError, DeliverEvent};
use crate::app_state::AppState;
use crate::broker::wire::ControlOp;
use crate::domain::SagaId;
use crate::saga::{Event, Status};
use crate::store::{queries, Cursor, ListFilter};

fn parse_id(raw: &str) -> Result<SagaId, ApiError> {
    SagaId::parse_any(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// One saga with its steps and one page of its history and quarantined replies (the
/// latest 100 of each by default), by UUID or base62 code.
#[utoipa::path(
    get,
    path = "/sagas/{id}",
    tag = "sagas",
    operation_id = "get_saga",
    params(
        ("id" = String, Path, description = "The saga's UUID or its base62 `code`"),
        super::view_query::ViewQuery,
    ),
    responses(
        (status = 200, description = "The saga, its state and one page of its history, oldest first (`history_more` says whether older rows exist)", body = crate::store::SagaView),
        (status = 400, description = "`id` is neither a UUID nor a base62 code, or a page parameter is out of range", body = super::schemas::ErrorBody),
        (status = 404, description = "No such saga", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL is unreachable", body = super::schemas::ErrorBody),
    )
)]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let page = super::view_query::ViewQuery::parse(req.query_string())?;
    let view = queries::view(&state.pool, id.0, page)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga {id}")))?;
    let def = state.core.get().and_then(|c| {
        c.env
            .catalog
            .get(&view.row.saga, view.row.definition_version)
    });
    Ok(HttpResponse::Ok().json(super::timeline::SagaPage::new(view, def.as_deref())))
}

/// `GET /sagas/counts`: `{"counts": {<status>: n, ...}, "total": n}`, every status listed.
#[utoipa::path(
    get,
    path = "/sagas/counts",
    tag = "sagas",
    operation_id = "count_sagas",
    responses(
        (status = 200, description = "Sagas per status", body = super::schemas::CountsBody),
        (status = 503, description = "PostgreSQL is unreachable", body = super::schemas::ErrorBody),
    )
)]
pub async fn counts(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut counts: serde_json::Map<String, serde_json::Value> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(0)))
        .collect();
    let mut total = 0;
    for (status, n) in queries::count_by_status(&state.pool).await? {
        total += n;
        counts.insert(status, json!(n));
    }
    Ok(HttpResponse::Ok().json(json!({ "counts": counts, "total": total })))
}

/// The query of `GET /sagas`; every field is optional and an empty one counts as absent.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only sagas in this status.
    #[param(value_type = Option<crate::saga::Status>)]
    status: Option<String>,
    /// Only sagas of this type.
    saga: Option<String>,
    /// Page size.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// Only sagas created after this time (RFC 3339).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    created_after: Option<String>,
    /// Only sagas created before this time (RFC 3339).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    created_before: Option<String>,
    /// `true`: only unfinished sagas with no transition for longer than the longest
    /// legitimate wait (a step's `timeout_ms` x `max_attempts`, over every definition).
    #[param(value_type = Option<bool>)]
    stuck: Option<String>,
    /// Only unfinished sagas with no transition for this many seconds (overrides `stuck`).
    #[param(value_type = Option<u64>, maximum = 315360000)]
    stuck_s: Option<String>,
}

/// Newest first, filtered by status and type, keyset-paginated by `after`.
#[utoipa::path(
    get,
    path = "/sagas",
    tag = "sagas",
    operation_id = "list_sagas",
    params(ListQuery),
    responses(
        (status = 200, description = "One page, newest first; pass `next` as `after` for the next", body = super::schemas::SagaPage),
        (status = 400, description = "A malformed filter, limit or cursor", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL is unreachable", body = super::schemas::ErrorBody),
    )
)]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let q: ListQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    if [
        &q.status,
        &q.saga,
        &q.limit,
        &q.after,
        &q.created_after,
        &q.created_before,
        &q.stuck,
        &q.stuck_s,
    ]
    .iter()
    .any(|v| v.as_deref().is_some_and(|s| s.contains('\0')))
    {
        return Err(ApiError::BadRequest("query holds a NUL character".into()));
    }
    let status = match q.status.filter(|s| !s.is_empty()) {
        Some(s) => Some(
            Status::parse(&s)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown status `{}`",
                        s.chars().take(50).collect::<String>()
                    ))
                })?
                .as_str()
                .to_string(),
        ),
        None => None,
    };
    let limit = match q.limit.filter(|s| !s.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest("limit must be a whole number from 1 to 500".into())
            })?,
        None => 50,
    };
    let after = match q.after.filter(|s| !s.is_empty()) {
        Some(a) => Some(
            Cursor::decode(&a).ok_or_else(|| ApiError::BadRequest("bad `after` cursor".into()))?,
        ),
        None => None,
    };
    let time = |name: &str,
                v: Option<String>|
     -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        match v.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|_| ApiError::BadRequest(format!("{name} must be an RFC 3339 time"))),
        }
    };
    let created_after = time("created_after", q.created_after)?;
    let created_before = time("created_before", q.created_before)?;
    // Stuck: unfinished with no transition for `stuck_s` seconds, or (with `stuck=true`) for
    // the longest a step may legitimately wait: its time-out times its attempts.
    let stuck_for = match (q.stuck_s.filter(|s| !s.is_empty()), q.stuck.as_deref()) {
        (Some(s), _) => Some(
            s.parse::<u64>()
                .ok()
                .filter(|s| *s <= 10 * 365 * 24 * 3600)
                .ok_or_else(|| {
                    ApiError::BadRequest("stuck_s must be a whole number of seconds".into())
                })?,
        ),
        (None, Some("true" | "1")) => Some(longest_wait_s(&state)),
        (None, None | Some("" | "false" | "0")) => None,
        (None, Some(_)) => return Err(ApiError::BadRequest("stuck must be true or false".into())),
    };
    let idle_since = stuck_for.map(|s| chrono::Utc::now() - chrono::Duration::seconds(s as i64));
    let filter = ListFilter {
        status,
        saga: q.saga.filter(|s| !s.is_empty()),
        created_after,
        created_before,
        idle_since,
        limit,
        after,
    };
    let (rows, next) = queries::list(&state.pool, &filter).await?;
    Ok(HttpResponse::Ok().json(json!({ "sagas": rows, "next": next.map(|c| c.encode()) })))
}

/// Who asks for an operator action and why: `{"by": "...", "reason": "..."}` (both optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct OperatorNote {
    /// Who asks (recorded as `by <who>` in the history row's `detail`).
    by: Option<String>,
    /// Why (recorded in the history row's `detail`).
    reason: Option<String>,
}

impl OperatorNote {
    fn from_body(body: &[u8]) -> Result<Option<String>, ApiError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(None);
        }
        let n: OperatorNote = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("bad JSON: {e}")))?;
        let clip = |s: String| {
            s.chars()
                .filter(|c| *c != '\0')
                .take(500)
                .collect::<String>()
        };
        Ok(match (n.by.map(clip), n.reason.map(clip)) {
            (None, None) => None,
            (Some(by), None) => Some(format!("by {by}")),
            (None, Some(why)) => Some(why),
            (Some(by), Some(why)) => Some(format!("by {by}: {why}")),
        })
    }
}

/// The longest any step of the definitions in force may wait: its time-out times its attempts.
fn longest_wait_s(state: &AppState) -> u64 {
    let Some(core) = state.core.get() else {
        return 90;
    };
    core.env
        .catalog
        .current
        .values()
        .flat_map(|d| d.steps.iter())
        .map(|s| s.timeout_ms.saturating_mul(u64::from(s.max_attempts)) / 1000)
        .max()
        .unwrap_or(90)
        .max(1)
}

async fn operator(
    req: &HttpRequest,
    raw_id: &str,
    event: Event,
    body: &[u8],
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    super::auth::require_admin(req, state)?;
    let id = parse_id(raw_id)?;
    let note = OperatorNote::from_body(body)?;
    let core = core(state)?;
    let action = match event {
        Event::Abort => "abort",
        Event::Retry => "retry",
        Event::Skip => "skip",
        Event::Resume => "resume",
        _ => "action",
    };
    let answer = core
        .registry
        .send(DeliverEvent {
            saga_id: id.0,
            event: event.clone(),
            note: note.clone(),
            trace: None,
        })
        .await
        .map_err(|e| ApiError::Internal(format!("registry unreachable: {e}")))?;
    match answer {
        Ok(Applied::Transitioned) => Ok(HttpResponse::Accepted().json(json!({
            "saga_id": id, "code": id.code(), "accepted": action
        }))),
        Ok(Applied::Ignored(e)) => Err(ApiError::Conflict(e.to_string())),
        Err(DeliverError::UnknownSaga(_)) => Err(ApiError::NotFound(format!("no saga {id}"))),
        Err(DeliverError::Store(e)) => Err(e.into()),
        Err(DeliverError::ActorGone) => Err(ApiError::Unavailable(
            "saga is restarting; try again".into(),
        )),
        Err(DeliverError::NotOwner(partition)) => {
            forward_action(core, id, event, note, action, partition).await
        }
    }
}

/// An action on a saga another instance drives: checked against its snapshot here (409 if
/// it makes no sense there), then handed to the owner, which applies it (202).
async fn forward_action(
    core: &crate::app_state::Core,
    id: SagaId,
    event: Event,
    note: Option<String>,
    action: &str,
    partition: u32,
) -> Result<HttpResponse, ApiError> {
    let state = queries::load(core.env.writer.pool(), id.0)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga {id}")))?;
    let def = core
        .env
        .catalog
        .get(&state.saga, state.definition_version)
        .ok_or_else(|| ApiError::Internal(format!("saga {id}: its definition is not stored")))?;
    crate::saga::apply(&state, &def, &event).map_err(|e| ApiError::Conflict(e.to_string()))?;
    let op = match event {
        Event::Abort => ControlOp::Abort,
        Event::Retry => ControlOp::Retry,
        Event::Skip => ControlOp::Skip,
        _ => ControlOp::Resume,
    };
    hand_over(core, id.0, op, note).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "saga_id": id, "code": id.code(), "accepted": action, "handed_to_partition": partition
    })))
}

/// `POST /sagas/{id}/{action}`: abort (a running saga compensates), retry (a failed saga
/// re-sends its failed compensation), skip (the pending compensation is marked done without
/// running it), resume (the pending command is re-sent now, its attempts reset).
#[utoipa::path(
    post,
    path = "/sagas/{id}/{action}",
    tag = "operator",
    operation_id = "act_on_saga",
    summary = "An operator action: abort, retry, skip or resume",
    description = "`abort`: a `running` saga starts compensating, the step whose command is \
        pending first. `retry`: a `failed` saga re-sends its failed compensate command (same \
        `command_id`). `skip`: the pending compensation of a `compensating` or `failed` saga is \
        marked done without running it. `resume`: the pending command of a `running` or \
        `compensating` saga is re-sent now, its attempts reset. Any other state answers 409. \
        The optional JSON body is recorded in the history row's `detail`.",
    params(
        ("id" = String, Path, description = "The saga's UUID or its base62 `code`"),
        ("action" = super::schemas::OperatorAction, Path, description = "The action"),
    ),
    request_body(
        content = Option<OperatorNote>,
        content_type = "application/json",
        description = "Optional: who asks and why; an empty body is fine",
    ),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Accepted: the transition is committed", body = super::schemas::ActionAccepted),
        (status = 400, description = "`id` is neither a UUID nor a code, or the body is not JSON", body = super::schemas::ErrorBody),
        (status = 401, description = "`SAGA_ADMIN_TOKEN` is set and the bearer token is missing or wrong", body = super::schemas::ErrorBody),
        (status = 404, description = "No such saga, or no such action", body = super::schemas::ErrorBody),
        (status = 409, description = "The saga's status does not allow this action", body = super::schemas::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL or RabbitMQ is unreachable, or the service is starting or stopping", body = super::schemas::ErrorBody),
    )
)]
pub async fn act(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, action) = path.into_inner();
    let event = match action.as_str() {
        "abort" => Event::Abort,
        "retry" => Event::Retry,
        "skip" => Event::Skip,
        "resume" => Event::Resume,
        _ => return Err(ApiError::NotFound("no such route".into())),
    };
    let body = read_limited(&req, body).await?;
    operator(&req, &id, event, &body, &state).await
}
