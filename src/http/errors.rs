//! API errors and their deliberate mapping to status codes; a 500 never leaks internals.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// An error answered by the HTTP API as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: bad UUID, missing field, bad JSON, unknown saga type.
    #[error("{0}")]
    BadRequest(String),
    /// The credentials are missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// No such saga or route.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the saga's state or an earlier start.
    #[error("{0}")]
    Conflict(String),
    /// Body over 64 KiB.
    #[error("{0}")]
    TooLarge(String),
    /// Content type neither JSON nor a form.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// PostgreSQL or RabbitMQ is unreachable, or the service is still starting.
    #[error("{0}")]
    Unavailable(String),
    /// `If-Match` names a version the saga is no longer at.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Anything else; the cause is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            log::error!("internal error: {cause}");
        }
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_string() }))
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_transient() {
            ApiError::Unavailable(format!("database unavailable: {e}"))
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}
