//! `GET /sagas`, `GET /sagas/{id}`, and the operator actions.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::body::read_limited;
use super::{core, hand_over, ApiError};
use crate::actors::messages::{ActionGuard, Applied, DeliverError, DeliverEvent};
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
        (status = 200, description = "The saga, its state and one page of its history, oldest first (`history_more` says whether older rows exist)", body = super::timeline::SagaPage,
            headers(("ETag" = String, description = "`\"<version>\"`: give it as `If-Match` to an operator action"))),
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
    let etag = format!("\"{}\"", view.row.version);
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::ETAG, etag))
        .json(super::timeline::SagaPage::new(view, def.as_deref())))
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

/// Who asks for an operator action and why: `{"by": "...", "reason": "..."}` (both optional);
/// `skip` also names its step: `{"step": "..."}` (required).
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct OperatorNote {
    /// Who asks (recorded as `by <who>` in the history row's `detail`).
    by: Option<String>,
    /// Why (recorded in the history row's `detail`).
    reason: Option<String>,
    /// `skip` only, required: the step whose pending compensation (or pause) is skipped.
    step: Option<String>,
}

/// A NUL-free, bounded copy of an operator's text.
fn clip(s: String) -> String {
    s.chars().filter(|c| *c != '\0').take(500).collect()
}

impl OperatorNote {
    fn from_body(body: &[u8]) -> Result<OperatorNote, ApiError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(OperatorNote::default());
        }
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON: {e}")))
    }

    /// The history row's `detail`.
    fn detail(&self) -> Option<String> {
        match (self.by.clone().map(clip), self.reason.clone().map(clip)) {
            (None, None) => None,
            (Some(by), None) => Some(format!("by {by}")),
            (None, Some(why)) => Some(why),
            (Some(by), Some(why)) => Some(format!("by {by}: {why}")),
        }
    }
}

/// `If-Match: "<version>"` (a weak tag or `*` too); None when absent or `*`.
fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(value) = req.headers().get(actix_web::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| {
            ApiError::BadRequest("If-Match must be the ETag of GET /sagas/{id}, e.g. \"7\"".into())
        })
}

/// The longest any step of the definitions in force may wait: its time-out times its attempts.
fn longest_wait_s(state: &AppState) -> u64 {
    let Some(core) = state.core.get() else {
        return 90;
    };
    core.env
        .catalog
        .current_all()
        .iter()
        .flat_map(|d| d.steps.iter())
        .map(|s| s.timeout_ms.saturating_mul(u64::from(s.max_attempts)) / 1000)
        .max()
        .unwrap_or(90)
        .max(1)
}

/// The transition of an operator action must pass its check against the database's clock
/// before this; the answer waits up to [`ANSWER_WITHIN`], so a commit that passed the check
/// just in time (its fsync, clock skew) is seen and answered 202, not 503.
const ACTION_DEADLINE: std::time::Duration = std::time::Duration::from_millis(3_500);

/// The answer (202 or 503) always comes within this, under the contract's 5 s.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_millis(4_800);

async fn operator(
    req: &HttpRequest,
    raw_id: &str,
    action: &str,
    body: &[u8],
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    super::auth::require_admin(req, state)?;
    let id = parse_id(raw_id)?;
    let note = OperatorNote::from_body(body)?;
    let event = match action {
        "abort" => Event::Abort,
        "retry" => Event::Retry,
        "resume" => Event::Resume,
        _ => Event::Skip {
            step: note
                .step
                .clone()
                .filter(|s| !s.is_empty())
                .map(clip)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "skip needs the step it skips: {\"step\": \"<name>\"}".into(),
                    )
                })?,
        },
    };
    let guard = ActionGuard {
        if_version: if_match(req)?,
        deadline: chrono::Utc::now()
            + chrono::Duration::from_std(ACTION_DEADLINE).unwrap_or_default(),
    };
    let core = core(state)?;
    let act = act_on(core, id, event, note.detail(), guard, action);
    // The deadline is also written into the transition, so a commit cannot land after this.
    match tokio::time::timeout(ANSWER_WITHIN, act).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::Unavailable(
            "the action could not be committed in time (database unreachable?); nothing was done"
                .into(),
        )),
    }
}

async fn act_on(
    core: &crate::app_state::Core,
    id: SagaId,
    event: Event,
    note: Option<String>,
    guard: ActionGuard,
    action: &str,
) -> Result<HttpResponse, ApiError> {
    let answer = core
        .registry
        .send(DeliverEvent {
            saga_id: id.0,
            event: event.clone(),
            note: note.clone(),
            trace: None,
            guard: Some(guard),
        })
        .await
        .map_err(|e| ApiError::Internal(format!("registry unreachable: {e}")))?;
    match answer {
        Ok(Applied::Transitioned) => Ok(accepted(id, action)),
        Ok(Applied::Ignored(e)) => Err(ApiError::Conflict(e.to_string())),
        Err(DeliverError::UnknownSaga(_)) => Err(ApiError::NotFound(format!("no saga {id}"))),
        Err(DeliverError::Precondition { current }) => Err(precondition(current)),
        Err(DeliverError::Store(e)) => Err(e.into()),
        Err(DeliverError::ActorGone) => Err(ApiError::Unavailable(
            "saga is restarting; try again".into(),
        )),
        Err(DeliverError::NotOwner(partition)) => {
            forward_action(core, id, event, note, guard, action, partition).await
        }
    }
}

fn accepted(id: SagaId, action: &str) -> HttpResponse {
    HttpResponse::Accepted().json(json!({
        "saga_id": id, "code": id.code(), "accepted": action
    }))
}

fn precondition(current: i64) -> ApiError {
    ApiError::PreconditionFailed(format!(
        "the saga has moved on: it is at version {current} (ETag \"{current}\"); nothing was done"
    ))
}

/// The history events an action's transition writes.
fn events_of(event: &Event) -> &'static [&'static str] {
    match event {
        Event::Abort => &["aborted", "aborted_compensated"],
        Event::Retry => &["retried"],
        Event::Skip { .. } => &["compensation_skipped", "step_skipped"],
        _ => &["resumed"],
    }
}

/// An action on a saga another instance drives: checked against its snapshot here (409 or
/// 412 if it does not apply there), handed to the owner to apply at that very version before
/// the deadline, and answered 202 once its history row is written (503 if not in time).
async fn forward_action(
    core: &crate::app_state::Core,
    id: SagaId,
    event: Event,
    note: Option<String>,
    guard: ActionGuard,
    action: &str,
    partition: u32,
) -> Result<HttpResponse, ApiError> {
    let pool = core.env.writer.pool();
    let state = queries::load(pool, id.0)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga {id}")))?;
    if guard.if_version.is_some_and(|v| v != state.version) {
        return Err(precondition(state.version));
    }
    let def = core
        .env
        .catalog
        .fetch(pool, &state.saga, state.definition_version)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("saga {id}: its definition is not stored")))?;
    crate::saga::apply(&state, &def, &event).map_err(|e| ApiError::Conflict(e.to_string()))?;
    let op = match event {
        Event::Abort => ControlOp::Abort,
        Event::Retry => ControlOp::Retry,
        Event::Skip { .. } => ControlOp::Skip,
        _ => ControlOp::Resume,
    };
    let control = crate::broker::wire::Control {
        saga_id: id.0,
        op,
        note,
        step: match &event {
            Event::Skip { step } => Some(step.clone()),
            _ => None,
        },
        // Held to a version only when the caller asked (If-Match): otherwise the owner takes
        // it at whatever version the saga is at, as this instance would.
        if_version: guard.if_version,
        deadline: Some(guard.deadline),
    };
    hand_over(core, control).await?;
    // Committed once a history row after the checked version is this action's. Watched past
    // the deadline by a margin, so a commit that passed the database's check just in time is
    // answered 202 (the HTTP answer still comes within `ANSWER_WITHIN`).
    let watch_until = guard.deadline + chrono::Duration::milliseconds(1_200);
    loop {
        let written = queries::event_after(pool, id.0, state.version, events_of(&event)).await?;
        if written {
            return Ok(HttpResponse::Accepted().json(json!({
                "saga_id": id, "code": id.code(), "accepted": action,
                "handed_to_partition": partition
            })));
        }
        if guard.if_version.is_some()
            && queries::event_at(pool, id.0, state.version + 1)
                .await?
                .is_some()
        {
            // Something else moved the saga first; the owner refused the action.
            return Err(precondition(state.version + 1));
        }
        if chrono::Utc::now() > watch_until {
            return Err(ApiError::Unavailable(format!(
                "the instance driving saga {id} did not commit the action in time; nothing was done"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `POST /sagas/{id}/{action}`: abort (a running or paused saga compensates), retry (a failed
/// saga re-sends its failed compensation), skip (the pending compensation is marked done
/// without running it, or the paused step counts done), resume (the pending commands are
/// re-sent now, their attempts reset).
#[utoipa::path(
    post,
    path = "/sagas/{id}/{action}",
    tag = "operator",
    operation_id = "act_on_saga",
    summary = "An operator action: abort, retry, skip or resume",
    description = "`abort`: a `running` or `paused` saga starts compensating, the steps whose \
        commands are pending first (409 naming the pivot once a pivot step is done). `retry`: a \
        `failed` saga re-sends its failed compensate commands (same `command_id`). `skip` (body \
        `{\"step\": name}`, required): the pending compensation of a `compensating` or `failed` \
        saga, which must be that step's, is marked done without running it; a `paused` saga \
        paused on that step counts it done with output `{}` and goes on. `resume`: the pending \
        commands of a `running`, `compensating` or `paused` saga are re-sent now, their attempts \
        reset. Any other state answers 409. With `If-Match: \"<version>\"` \
        (the `ETag` of `GET /sagas/{id}`) the action is taken only at that version (412 \
        otherwise). 202 means the transition is committed; when it cannot be committed within \
        5 s (PostgreSQL unreachable) the answer is 503 and the action never takes effect. \
        The optional `by` and `reason` are recorded in the history row's `detail`.",
    params(
        ("id" = String, Path, description = "The saga's UUID or its base62 `code`"),
        ("action" = super::schemas::OperatorAction, Path, description = "The action"),
    ),
    request_body(
        content = Option<OperatorNote>,
        content_type = "application/json",
        description = "Who asks and why (`by`, `reason`, optional); `skip` needs `step`. An empty body is fine for the other actions",
    ),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Accepted: the transition is committed", body = super::schemas::ActionAccepted),
        (status = 400, description = "`id` is neither a UUID nor a code, the body is not JSON, `skip` names no step, or `If-Match` is not a version", body = super::schemas::ErrorBody),
        (status = 401, description = "`SAGA_ADMIN_TOKEN` is set and the bearer token is missing or wrong", body = super::schemas::ErrorBody),
        (status = 404, description = "No such saga, or no such action", body = super::schemas::ErrorBody),
        (status = 409, description = "The saga's status does not allow this action (or `skip` names another step than the pending one, or `abort` comes after a pivot)", body = super::schemas::ErrorBody),
        (status = 412, description = "`If-Match` names a version the saga is no longer at: nothing was done", body = super::schemas::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL or RabbitMQ is unreachable, or the service is starting or stopping: nothing was done", body = super::schemas::ErrorBody),
    )
)]
pub async fn act(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, action) = path.into_inner();
    if !["abort", "retry", "skip", "resume"].contains(&action.as_str()) {
        return Err(ApiError::NotFound("no such route".into()));
    }
    let body = read_limited(&req, body).await?;
    operator(&req, &id, &action, &body, &state).await
}
