//! The one HTTP client of the operator commands: JSON in, JSON out, every failure mapped
//! to an exit code.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::{OperatorArgs, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::config::redact_url;

/// Why a call of the API did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad usage found before anything was sent (a malformed id, a missing file, a bad URL).
    #[error("{0}")]
    Usage(String),
    /// The service answered 4xx: its `error`.
    #[error("{error} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The `error` of its body (or the body itself).
        error: String,
    },
    /// The service answered 5xx (503 while PostgreSQL or RabbitMQ is down).
    #[error("the service cannot serve now: {error} (HTTP {status})")]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The `error` of its body (or the body itself).
        error: String,
    },
    /// No answer: connection refused, a name that does not resolve, a time-out.
    #[error("cannot reach the service at {url}: {cause}")]
    Unreachable {
        /// The URL, its password hidden.
        url: String,
        /// What failed.
        cause: String,
    },
    /// A success whose body is not the JSON expected.
    #[error("unexpected answer from the service: {0}")]
    BadAnswer(String),
}

impl ClientError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Refused { .. } | ClientError::BadAnswer(_) => EXIT_REFUSED,
            ClientError::Unavailable { .. } | ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
        }
    }
}

/// A client of one service's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `--url`, `--token` and `--timeout-s`; a malformed URL is bad usage.
    pub fn new(args: &OperatorArgs) -> Result<Self, ClientError> {
        let shown = redact_url(&args.url);
        let base = Url::parse(&args.url)
            .ok()
            .filter(|u| !u.cannot_be_a_base())
            .ok_or_else(|| ClientError::Usage(format!("invalid SAGA_URL `{shown}`")))?;
        // reqwest is built without a TLS stack (the service serves plain HTTP): say so
        // now rather than fail at the first request as if the service were down.
        if base.scheme() != "http" {
            return Err(ClientError::Usage(format!(
                "invalid SAGA_URL `{shown}`: only http:// URLs are supported"
            )));
        }
        let timeout = Duration::from_secs(args.timeout_s.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(ApiClient {
            base,
            token: args.token.clone().filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The URL of a path given as segments (each percent-encoded), with a query.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// `GET` a path; the answer's JSON.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        self.call(Method::GET, self.url(segments, query), None)
            .await
    }

    /// `POST` JSON to a path; the answer's JSON.
    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, self.url(segments, &[]), Some(body))
            .await
    }

    /// `PUT` JSON to a path; the answer's JSON.
    pub async fn put(&self, segments: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.call(Method::PUT, self.url(segments, &[]), Some(body))
            .await
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: redact_url(self.base.as_str()),
            cause: crate::logging::error_chain(&e.without_url()),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer(e.to_string()));
        }
        let error = error_of(status, &text);
        if status.is_server_error() {
            Err(ClientError::Unavailable {
                status: status.as_u16(),
                error,
            })
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                error,
            })
        }
    }
}

/// The `error` of an error body, else the body (clipped), else the status's reason.
fn error_of(status: StatusCode, text: &str) -> String {
    let from_json = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
    match from_json {
        Some(e) => e,
        None if !text.trim().is_empty() => text.trim().chars().take(300).collect(),
        None => status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> OperatorArgs {
        OperatorArgs {
            url: url.into(),
            token: Some("secret".into()),
            json: false,
            timeout_s: 1,
        }
    }

    #[test]
    fn segments_are_percent_encoded_under_the_base_path() {
        let c = ApiClient::new(&args("http://h:3000/api/")).unwrap();
        let url = c.url(&["sagas", "a/b c"], &[("status", "failed".into())]);
        assert_eq!(
            url.as_str(),
            "http://h:3000/api/sagas/a%2Fb%20c?status=failed"
        );
        let c = ApiClient::new(&args("http://h:3000")).unwrap();
        assert_eq!(
            c.url(&["definitions"], &[]).as_str(),
            "http://h:3000/definitions"
        );
    }

    #[test]
    fn a_malformed_url_is_bad_usage_with_its_password_hidden() {
        for bad in ["nope", "ftp://h/", "https://h/", "http://u:pw@[::1"] {
            let e = ApiClient::new(&args(bad)).unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE, "{bad}");
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
    }

    #[test]
    fn an_error_body_gives_its_error_field_or_its_text() {
        assert_eq!(
            error_of(StatusCode::CONFLICT, r#"{"error":"finished"}"#),
            "finished"
        );
        assert_eq!(error_of(StatusCode::NOT_FOUND, "plain"), "plain");
        assert_eq!(error_of(StatusCode::NOT_FOUND, ""), "Not Found");
    }
}
