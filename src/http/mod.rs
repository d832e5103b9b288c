//! The only module that imports actix_web: routes of CONTRACT.md section 5.

mod auth;
mod body;
pub mod errors;
mod health;
mod sagas;
mod start;
mod timeline;
mod ui;

use actix_web::web;

pub use errors::ApiError;

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/start", web::post().to(start::start))
        .route("/sagas", web::get().to(sagas::list))
        // Before `/sagas/{id}`: routes are matched in the order they are registered.
        .route("/sagas/counts", web::get().to(sagas::counts))
        .route("/sagas/{id}", web::get().to(sagas::get))
        .route("/sagas/{id}/{action}", web::post().to(sagas::act))
        .route("/liveness", web::get().to(health::liveness))
        .route("/readiness", web::get().to(health::readiness))
        .route("/metrics", web::get().to(health::metrics))
        .configure(ui::routes)
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// Hands a saga to the instance holding its partition, through that partition's queue.
async fn hand_over(
    core: &crate::app_state::Core,
    saga_id: uuid::Uuid,
    op: crate::broker::wire::ControlOp,
    note: Option<String>,
) -> Result<(), ApiError> {
    let partition = core.env.ownership.partition(&saga_id);
    let body = serde_json::to_vec(&crate::broker::wire::Control { saga_id, op, note })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    core.env
        .broker
        .send_control(partition, &body)
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "saga {saga_id} belongs to partition {partition}, held by another instance, \
                 which could not be told ({e}); repeat the request"
            ))
        })
}

/// The parts that exist once start-up reached PostgreSQL, or 503.
fn core(state: &crate::app_state::AppState) -> Result<&crate::app_state::Core, ApiError> {
    if state.drain.is_draining() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    state
        .core
        .get()
        .filter(|_| state.is_rehydrated())
        .ok_or_else(|| {
            ApiError::Unavailable("starting: waiting for PostgreSQL and RabbitMQ".into())
        })
}
