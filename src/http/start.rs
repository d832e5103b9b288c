//! `POST /start`: store the saga, then let its actor send step 1.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::body::{parse_form, read_limited};
use super::{core, hand_over, ApiError};
use crate::actors::messages::SpawnSaga;
use crate::app_state::AppState;
use crate::broker::wire::Control;
use crate::domain::SagaId;
use crate::saga;
use crate::store::InsertOutcome;

/// A decoded start request.
#[derive(Debug)]
struct StartRequest {
    saga_id: SagaId,
    saga: String,
    payload: Value,
}

fn field_str(v: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::BadRequest(format!(
            "field `{name}` must be a string"
        ))),
    }
}

fn from_json(body: &[u8]) -> Result<StartRequest, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    let saga_id = field_str(&v, "saga_id")?
        .ok_or_else(|| ApiError::BadRequest("missing field `saga_id`".into()))?;
    let payload = match v.get("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "field `payload` must be a JSON object".into(),
            ))
        }
    };
    build(&saga_id, field_str(&v, "saga")?, payload)
}

fn from_form(body: &[u8]) -> Result<StartRequest, ApiError> {
    let fields = parse_form(body)?;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let saga_id =
        get("saga_id").ok_or_else(|| ApiError::BadRequest("missing field `saga_id`".into()))?;
    let payload = match get("payload").filter(|p| !p.trim().is_empty()) {
        None => Value::Object(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(p @ Value::Object(_)) => p,
            Ok(_) => {
                return Err(ApiError::BadRequest(
                    "field `payload` must be a JSON object".into(),
                ))
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "field `payload` is not JSON: {e}"
                )))
            }
        },
    };
    build(&saga_id, get("saga"), payload)
}

fn build(saga_id: &str, saga: Option<String>, payload: Value) -> Result<StartRequest, ApiError> {
    if crate::domain::contains_nul(&payload) {
        return Err(ApiError::BadRequest(
            "payload holds a NUL character (U+0000)".into(),
        ));
    }
    let saga_id = SagaId::parse_uuid(saga_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let saga = saga
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    Ok(StartRequest {
        saga_id,
        saga,
        payload,
    })
}

fn decode(req: &HttpRequest, body: &[u8]) -> Result<StartRequest, ApiError> {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/json" => from_json(body),
        "application/x-www-form-urlencoded" => from_form(body),
        // No content type: take it as JSON if it looks like JSON, else as a form.
        "" if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => from_json(body),
        "" => from_form(body),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content type `{}` is neither application/json nor application/x-www-form-urlencoded",
            other.chars().take(100).collect::<String>()
        ))),
    }
}

/// Stores a new saga and starts it; idempotent for a repeat with the same type and payload.
///
/// The body is JSON or a form; one without a content type is taken as JSON if it starts
/// with `{`, else as a form. Never needs the admin token.
#[utoipa::path(
    post,
    path = "/start",
    tag = "sagas",
    operation_id = "start_saga",
    request_body(
        description = "The saga to start",
        content(
            (super::schemas::StartJson = "application/json"),
            (super::schemas::StartForm = "application/x-www-form-urlencoded"),
        ),
    ),
    responses(
        (status = 200, description = "Started, or a repeat with the same type and payload (nothing new is started)", body = super::schemas::Started),
        (status = 400, description = "Malformed UUID, missing field, bad JSON, payload not an object, invalid UTF-8 in a form field, unknown saga type", body = super::schemas::ErrorBody),
        (status = 409, description = "This `saga_id` was already started with another saga type or payload", body = super::schemas::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::schemas::ErrorBody),
        (status = 415, description = "A content type other than JSON or a form", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL or RabbitMQ is unreachable, or the service is starting or stopping; nothing was stored", body = super::schemas::ErrorBody),
    )
)]
pub async fn start(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload).await?;
    let request = decode(&req, &body)?;
    let core = core(&state)?;
    let pool = core.env.writer.pool();
    let mut def = latest_definition(core, &request.saga).await?;
    if !core.env.broker.is_ready() {
        return Err(ApiError::Unavailable("broker not ready".into()));
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // The caller's trace (W3C trace context), or a new one: every command carries it.
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::domain::trace::parse_traceparent)
        .unwrap_or_else(crate::domain::trace::new_traceparent);
    let code = request.saga_id.code();
    let mut tries = 0;
    // `None`: stored now; `Some`: the id was taken already.
    let (transition, existing) = loop {
        let mut transition = saga::start(
            &def,
            request.saga_id.0,
            request.payload.clone(),
            &nonce[..16],
        );
        transition.state.started_at_ms = Some(chrono::Utc::now().timestamp_millis());
        transition.state.traceparent = Some(traceparent.clone());
        match core
            .env
            .writer
            .insert_started(&transition.state, &transition.record)
            .await?
        {
            InsertOutcome::Inserted => break (transition, None),
            InsertOutcome::Exists(existing) => break (transition, Some(existing)),
            InsertOutcome::Outdated => {}
        }
        // A newer version was stored (a PUT whose notification has not reached this
        // instance yet): start on the latest one instead.
        tries += 1;
        if tries >= MAX_OUTDATED_TRIES {
            return Err(ApiError::Unavailable(format!(
                "the definition of `{}` keeps changing; repeat the request",
                def.name
            )));
        }
        def = core
            .env
            .catalog
            .fetch_latest(pool, &def.name)
            .await?
            .ok_or_else(|| unknown_type(&request.saga))?;
    };
    match existing {
        None => {
            let started = state
                .metrics
                .sagas_started
                .with_label_values(&[def.name.as_str()]);
            if started.get() == 0 {
                // The type's first start here (it may have been stored after start-up, by
                // another instance): its other series start at 0 too.
                state.metrics.prime_saga(&def.name);
            }
            started.inc();
            state
                .metrics
                .transitions
                .with_label_values(&["started"])
                .inc();
            if core.env.ownership.owns(&request.saga_id.0) {
                core.registry.do_send(SpawnSaga {
                    state: transition.state,
                    effects: transition.effects,
                });
            } else {
                // Stored; the instance holding its partition sends step 1 once told. A lost
                // hand-over is caught by that owner's sweep of sagas that never advanced.
                hand_over(core, Control::wake(request.saga_id.0)).await?;
            }
            Ok(HttpResponse::Ok().json(json!({
                "saga_id": request.saga_id, "code": code, "status": "running"
            })))
        }
        Some(existing) => {
            if existing.saga != def.name || existing.payload != transition.state.payload {
                return Err(ApiError::Conflict(format!(
                    "saga_id {} was already started with another saga type or payload",
                    request.saga_id
                )));
            }
            // A repeat after an answer that was lost: make sure the saga is being driven.
            if crate::saga::Status::parse(&existing.status).is_some_and(|s| !s.is_terminal()) {
                if core.env.ownership.owns(&request.saga_id.0) {
                    core.registry
                        .do_send(crate::actors::messages::EnsureLive(request.saga_id.0));
                } else {
                    hand_over(core, Control::wake(request.saga_id.0)).await?;
                }
            }
            Ok(HttpResponse::Ok().json(json!({
                "saga_id": request.saga_id, "code": code, "status": existing.status
            })))
        }
    }
}

/// Starts refused as outdated in a row before `POST /start` gives up with 503: each one
/// means a new version was stored while this start was being prepared.
const MAX_OUTDATED_TRIES: u32 = 5;

fn unknown_type(saga: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unknown saga type `{}`",
        saga.chars().take(100).collect::<String>()
    ))
}

/// The latest version of a saga type: as this instance knows it, or as PostgreSQL does
/// for a type stored (over HTTP) elsewhere that this instance has not heard of yet.
async fn latest_definition(
    core: &crate::app_state::Core,
    saga: &str,
) -> Result<std::sync::Arc<crate::domain::SagaDefinition>, ApiError> {
    if let Some(def) = core.env.catalog.current(saga) {
        return Ok(def);
    }
    core.env
        .catalog
        .fetch_latest(core.env.writer.pool(), saga)
        .await?
        .ok_or_else(|| unknown_type(saga))
}
