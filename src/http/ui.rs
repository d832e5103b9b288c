//! The saga browser at `/ui`: one HTML page, its script and its style sheet, embedded in
//! the binary (no build step, nothing fetched from elsewhere). The page reads the JSON API.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Only this origin's own script, styles and API; no framing. Data is shown as text.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Registers `/ui`, `/ui/sagas/{id}` and `/ui/definitions` (the same page; its script reads
/// the path) and the assets.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(page))
        .route("/ui/", web::get().to(page))
        .route("/ui/sagas/{id}", web::get().to(page))
        .route("/ui/definitions", web::get().to(page))
        .route("/ui/app.js", web::get().to(script))
        .route("/ui/app.css", web::get().to(style));
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        // Small files: revalidate each time, so a new binary's page is never mixed with old assets.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}
