//! `/liveness`, `/readiness`, `/metrics`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::app_state::AppState;

/// 200 while the process serves, with build and host facts.
#[utoipa::path(
    get,
    path = "/liveness",
    tag = "health",
    responses((status = 200, description = "The process serves", body = super::schemas::Liveness))
)]
pub async fn liveness() -> HttpResponse {
    let mut body = Map::new();
    body.insert("status".into(), json!("up"));
    body.insert("build".into(), json!(env!("CARGO_PKG_VERSION")));
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    body.insert("host".into(), json!(host));
    for (key, var) in [
        ("pod", "KUBERNETES_PODNAME"),
        ("podIP", "KUBERNETES_NAMESPACE_POD_IP"),
        ("node", "KUBERNETES_NODENAME"),
        ("namespace", "KUBERNETES_NAMESPACE"),
    ] {
        if let Ok(v) = std::env::var(var) {
            body.insert(key.into(), json!(v));
        }
    }
    HttpResponse::Ok().json(Value::Object(body))
}

fn not_ready(status: &str) -> HttpResponse {
    HttpResponse::InternalServerError().json(json!({ "status": status }))
}

/// 200 when PostgreSQL answers within 1 s, the broker is connected and start-up is done.
#[utoipa::path(
    get,
    path = "/readiness",
    tag = "health",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ok\"}`", body = super::schemas::Readiness),
        (status = 500, description = "Not ready, and why", body = super::schemas::Readiness),
    )
)]
pub async fn readiness(state: web::Data<AppState>) -> HttpResponse {
    let ping = tokio::time::timeout(Duration::from_secs(1), crate::store::ping(&state.pool)).await;
    if !matches!(ping, Ok(Ok(()))) {
        return not_ready("db not ready");
    }
    let Some(core) = state.core.get() else {
        return not_ready("broker not ready");
    };
    if !core.env.broker.is_ready() {
        return not_ready("broker not ready");
    }
    if core.env.ownership.is_twin() {
        return not_ready("instance id in use");
    }
    if !state.is_rehydrated() {
        return not_ready("starting");
    }
    if state.drain.is_draining() {
        return not_ready("shutting down");
    }
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
