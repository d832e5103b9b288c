//! The only module that imports actix_web: routes of CONTRACT.md section 5.

mod auth;
mod body;
pub mod definition_schemas;
mod definitions;
pub mod errors;
mod health;
pub mod openapi;
mod sagas;
pub mod schemas;
mod start;
mod timeline;
mod ui;
mod view_query;

use actix_web::web;

pub use errors::ApiError;

/// Declares the route table once: [`routes`] registers it and [`SERVED`] lists it, so the
/// list the OpenAPI test compares with `/openapi.json` is the table actually served.
macro_rules! route_table {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every route served, as `(method, path)` in the OpenAPI document's spelling.
        pub const SERVED: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// Registers every route; anything else answers 404 `{"error": "no such route"}`.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
            // The saga browser's static pages: not part of the API document.
            cfg.configure(ui::routes);
            cfg.default_service(web::to(not_found));
        }
    };
}

route_table! {
    post "/start" => start::start,
    get "/sagas" => sagas::list,
    // Before `/sagas/{id}`: routes are matched in the order they are registered.
    get "/sagas/counts" => sagas::counts,
    get "/sagas/{id}" => sagas::get,
    post "/sagas/{id}/{action}" => sagas::act,
    get "/definitions" => definitions::list,
    get "/definitions/{name}" => definitions::get,
    put "/definitions/{name}" => definitions::put,
    get "/liveness" => health::liveness,
    get "/readiness" => health::readiness,
    get "/metrics" => health::metrics,
    get "/openapi.json" => openapi::document,
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// Hands a saga to the instance holding its partition, through that partition's queue
/// (signed with the cluster's secret by the broker module). Fails (503) when the broker did
/// not confirm it into that queue, so that an action is never answered 202 and lost.
async fn hand_over(
    core: &crate::app_state::Core,
    mut control: crate::broker::wire::Control,
) -> Result<(), ApiError> {
    let saga_id = control.saga_id;
    // PostgreSQL stores no U+0000: a note holding one could never be recorded by the owner.
    control.note = control.note.map(|n| n.replace('\0', ""));
    let partition = core.env.ownership.partition(&saga_id);
    let body = serde_json::to_vec(&control).map_err(|e| ApiError::Internal(e.to_string()))?;
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
