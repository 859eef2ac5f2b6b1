//! RFC 9457 problem documents: every error the API answers, with a stable `type` per kind of
//! problem, the HTTP status, a sentence saying what to fix, and, for rejected events, one entry
//! per bad event and field.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Where the problem types live (a name, not a page that must resolve).
pub const TYPE_BASE: &str = "https://meterflow.dev/problems/";

/// One bad event of an ingest request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    /// Position in the batch; `None` for a single event (or the whole body).
    pub event: Option<usize>,
    /// The field at fault (`time`, `data.tokens`, `subject`), when one is.
    pub field: Option<String>,
    /// The reason code (the DLQ's codes, plus `forbidden_subject`).
    pub reason: String,
    /// What is wrong.
    pub detail: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `TYPE_BASE` + a stable code.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, stable summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened and what to do about it.
    pub detail: String,
    /// The bad events of an ingest request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<EventError>,
    /// Seconds after which a retry may succeed (also sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after_s: Option<u64>,
}

impl Problem {
    /// A problem of kind `code` with `status`, `title` and `detail`.
    pub fn new(status: StatusCode, code: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("{TYPE_BASE}{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_s: None,
        }
    }

    /// 400: the request is wrong; `detail` says how.
    pub fn bad_request(code: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    /// 401: no key, or not a valid one.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
    }

    /// 403: the key does not reach this customer.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404: no such thing.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }

    /// 503 with `Retry-After`: a dependency is unavailable or slow; retrying later is right.
    pub fn unavailable(detail: impl Into<String>, retry_after_s: u64) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail);
        p.retry_after_s = Some(retry_after_s);
        p
    }

    /// 500: a fault of the server (logged with the detail).
    pub fn internal(detail: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %detail, "API request failed");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail.to_string())
    }

    /// With these event errors.
    pub fn with_errors(mut self, errors: Vec<EventError>) -> Problem {
        self.errors = errors;
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"meterflow\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_names_its_type_status_and_each_bad_event() {
        let p = Problem::bad_request("invalid_events", "2 of 3 events are invalid; nothing was published").with_errors(
            vec![EventError {
                event: Some(1),
                field: Some("time".into()),
                reason: "invalid_time".into(),
                detail: "not RFC 3339".into(),
            }],
        );
        let json: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "https://meterflow.dev/problems/invalid_events");
        assert_eq!(json["status"], 400);
        assert_eq!(json["errors"][0]["event"], 1);
        assert_eq!(json["errors"][0]["field"], "time");
    }

    #[test]
    fn a_503_carries_retry_after() {
        let r = Problem::unavailable("broker down", 2).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
