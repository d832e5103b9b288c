//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{definitions, health, sagas, start, ApiError};

/// The document: every route of [`super::routes`], its parameters, bodies and answers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "saga-service",
        description = "A saga orchestrator: sagas are started over HTTP, their steps run by \
            participants over RabbitMQ, every transition snapshotted to PostgreSQL. Errors are \
            JSON `{\"error\": \"...\"}`; an unknown route answers 404."
    ),
    paths(
        start::start,
        sagas::list,
        sagas::counts,
        sagas::get,
        sagas::act,
        definitions::list,
        definitions::get,
        definitions::put,
        health::liveness,
        health::readiness,
        health::metrics,
        document,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "sagas", description = "Start sagas and look at them"),
        (name = "operator", description = "Operator actions on one saga"),
        (name = "definitions", description = "Saga definitions, stored with a version"),
        (name = "health", description = "Probes and metrics"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Declares the `admin_token` security scheme the operator actions name.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "`Authorization: Bearer <SAGA_ADMIN_TOKEN>`: required by the operator actions \
                 and `PUT /definitions/{name}` when the service runs with `SAGA_ADMIN_TOKEN` set (401 otherwise), ignored \
                 when it is unset. `POST /start` never needs it.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("admin_token", SecurityScheme::Http(scheme));
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi_document",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
pub async fn document() -> Result<HttpResponse, ApiError> {
    let body = ApiDoc::openapi()
        .to_json()
        .map_err(|e| ApiError::Internal(format!("OpenAPI document: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
