//! `GET /definitions`, `GET /definitions/{name}`, `PUT /definitions/{name}`: saga
//! definitions stored in PostgreSQL, read and written over HTTP (CONTRACT.md section 2).
//!
//! Reads answer from PostgreSQL, so every instance answers the same right after a `PUT`.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::read_limited;
use super::{core, ApiError};
use crate::app_state::AppState;
use crate::domain::SagaDefinition;
use crate::store;

/// A definition as the API shows it: the JSON `PUT` takes, plus its `version`.
fn shown(def: &SagaDefinition) -> Value {
    let mut body = def.canonical_json();
    if let Value::Object(map) = &mut body {
        map.insert("version".into(), json!(def.version));
    }
    body
}

/// The latest version of every saga type.
#[utoipa::path(
    get,
    path = "/definitions",
    tag = "definitions",
    operation_id = "list_definitions",
    responses(
        (status = 200, description = "The latest version of each saga type, by name", body = super::definition_schemas::DefinitionList),
        (status = 503, description = "PostgreSQL is unreachable, or the service is starting or stopping", body = super::schemas::ErrorBody),
    )
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let core = core(&state)?;
    let client = core
        .env
        .writer
        .pool()
        .get()
        .await
        .map_err(store::StoreError::from)?;
    let defs = store::latest_all(&**client).await?;
    let defs: Vec<Value> = defs.iter().map(shown).collect();
    Ok(HttpResponse::Ok().json(json!({ "definitions": defs })))
}

/// The query of `GET /definitions/{name}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// An older version than the latest (the latest when left out).
    #[param(value_type = Option<i32>, minimum = 1)]
    version: Option<String>,
}

impl VersionQuery {
    fn parse(query: &str) -> Result<Option<i32>, ApiError> {
        let q: VersionQuery = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
        q.version
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i32>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "version must be an integer, not `{}`",
                        v.chars().take(50).collect::<String>()
                    ))
                })
            })
            .transpose()
    }
}

/// One saga type's definition: the latest version, or the one `version` names.
#[utoipa::path(
    get,
    path = "/definitions/{name}",
    tag = "definitions",
    operation_id = "get_definition",
    params(("name" = String, Path, description = "The saga type"), VersionQuery),
    responses(
        (status = 200, description = "The definition at that version", body = super::definition_schemas::StoredDefinition),
        (status = 400, description = "`version` is not an integer", body = super::schemas::ErrorBody),
        (status = 404, description = "No such saga type, or no such version of it", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL is unreachable, or the service is starting or stopping", body = super::schemas::ErrorBody),
    )
)]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let version = VersionQuery::parse(req.query_string())?;
    let name = path.into_inner();
    let core = core(&state)?;
    let client = core
        .env
        .writer
        .pool()
        .get()
        .await
        .map_err(store::StoreError::from)?;
    let def = store::load_definition(&**client, &name, version)
        .await?
        .ok_or_else(|| {
            let name: String = name.chars().take(100).collect();
            ApiError::NotFound(match version {
                Some(v) => format!("no version {v} of saga type `{name}`"),
                None => format!("no saga type `{name}`"),
            })
        })?;
    Ok(HttpResponse::Ok().json(shown(&def)))
}

/// Stores one saga type's definition: a new version when its content changed.
///
/// Sagas already started finish on the version they started with; every `POST /start`
/// on any instance after this answered runs the version it names.
#[utoipa::path(
    put,
    path = "/definitions/{name}",
    tag = "definitions",
    operation_id = "put_definition",
    params(("name" = String, Path, description = "The saga type: 1-100 letters, digits, `_` or `-`")),
    request_body(
        description = "One saga's definition: the keys of the TOML file, `steps` an array",
        content((super::definition_schemas::DefinitionBody = "application/json")),
    ),
    responses(
        (status = 200, description = "Stored: its version now (the latest's when the content is unchanged)", body = super::definition_schemas::DefinitionStored),
        (status = 400, description = "Bad JSON, an unknown key, a `name` other than the path's, or a rule of the definitions broken (no steps, two steps of one name, a step without a queue, a pivot in a group, a group split by another step...): the reason is given", body = super::schemas::ErrorBody),
        (status = 401, description = "`SAGA_ADMIN_TOKEN` is set and the bearer token is missing or wrong", body = super::schemas::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::schemas::ErrorBody),
        (status = 503, description = "PostgreSQL is unreachable, or the service is starting or stopping: nothing was stored", body = super::schemas::ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn put(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::auth::require_admin(&req, &state)?;
    let body = read_limited(&req, body).await?;
    let def = parse_definition(&path, &body)?;
    let core = core(&state)?;
    let stored = store::put_definition(core.env.writer.pool(), &def).await?;
    log::info!(
        "definition {} stored over HTTP: version {}",
        stored.name,
        stored.version
    );
    let answer = json!({ "name": stored.name, "version": stored.version });
    // This instance's next start runs it at once; the others hear of it by notification
    // (and their start's insert refuses an outdated version meanwhile).
    core.env.catalog.install(Arc::new(stored));
    Ok(HttpResponse::Ok().json(answer))
}

/// Decodes and validates a `PUT` body for the saga type `name`, as the file's rules say.
fn parse_definition(name: &str, body: &[u8]) -> Result<SagaDefinition, ApiError> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON: {e}")))?;
    let Value::Object(map) = &mut value else {
        return Err(ApiError::BadRequest(
            "body must be a JSON object: one saga's definition".into(),
        ));
    };
    match map.get("name") {
        None | Some(Value::Null) => {
            map.insert("name".into(), Value::String(name.into()));
        }
        Some(Value::String(given)) if given == name => {}
        Some(Value::String(given)) => {
            return Err(ApiError::BadRequest(format!(
                "the body names saga type `{}` but the path `{}`",
                given.chars().take(100).collect::<String>(),
                name.chars().take(100).collect::<String>()
            )))
        }
        Some(_) => return Err(ApiError::BadRequest("field `name` must be a string".into())),
    }
    // What GET answers can be put back as it is; versions are assigned here.
    map.remove("version");
    if crate::domain::contains_nul(&value) {
        return Err(ApiError::BadRequest(
            "the definition holds a NUL character (U+0000)".into(),
        ));
    }
    let def: SagaDefinition = serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("invalid definition: {e}")))?;
    def.validate().map_err(ApiError::BadRequest)?;
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str, body: &str) -> String {
        match parse_definition(name, body.as_bytes()) {
            Err(ApiError::BadRequest(reason)) => reason,
            other => panic!("{body}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn the_name_comes_from_the_path_and_a_version_given_is_ignored() {
        let def = parse_definition(
            "trip",
            br#"{"version": 7, "steps": [{"name": "a", "queue": "qa"}]}"#,
        )
        .unwrap();
        assert_eq!(def.name, "trip");
        assert_eq!(def.version, 0);
        assert_eq!(def.steps[0].timeout_ms, 30_000);
    }

    #[test]
    fn a_body_naming_another_saga_is_refused() {
        let reason = refused(
            "trip",
            r#"{"name": "other", "steps": [{"name": "a", "queue": "q"}]}"#,
        );
        assert!(
            reason.contains("`other`") && reason.contains("`trip`"),
            "{reason}"
        );
    }

    #[test]
    fn unknown_keys_bad_json_and_broken_rules_are_refused_with_the_reason() {
        let unknown = refused(
            "t",
            r#"{"steps": [{"name": "a", "queue": "q", "timeout": 5}]}"#,
        );
        assert!(unknown.contains("unknown field `timeout`"), "{unknown}");
        assert!(refused("t", "{not json").starts_with("bad JSON"));
        assert!(refused("t", "[]").contains("JSON object"));
        assert!(refused("t", r#"{"steps": []}"#).contains("has no steps"));
        let nul = refused("t", r#"{"steps": [{"name": "a", "queue": "q\u0000"}]}"#);
        assert!(nul.contains("NUL"), "{nul}");
    }
}
