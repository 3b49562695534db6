//! Errors on the wire: RFC 7807 `application/problem+json` with a stable `type`. This is the only
//! place that maps error kinds to HTTP statuses; internal details go to the log, never the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Classify, ErrorKind};
use crate::policy::ViolationKind;
use crate::service::ServiceError;
use crate::store::StorageFault;

/// Prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:ca-server:problem:";

/// What the middleware learns about a request's outcome (for metrics), carried in response
/// extensions.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Environment concerned, when known.
    pub env: Option<String>,
    /// Problem slug for failures; `None` on success.
    pub problem: Option<&'static str>,
}

/// An API error: status, stable slug, and a detail safe to show the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl ApiError {
    /// A problem with an explicit status and slug.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            slug,
            detail: detail.into(),
        }
    }

    /// The request needs a client certificate and came without one.
    pub fn client_certificate_required() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "client-certificate-required",
            "this endpoint requires a client certificate issued by this CA (mutual TLS)",
        )
    }

    /// No route matched.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint")
    }

    /// The route exists, not with this method (axum adds the `Allow` header).
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this endpoint does not accept this method",
        )
    }

    /// The stable slug.
    pub fn slug(&self) -> &'static str {
        self.slug
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The client-safe detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let kind = e.kind();
        let status = status_of(kind);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed inside the CA");
            return ApiError::new(
                status,
                "internal",
                "internal error; the CA operator can find details in its log",
            );
        }
        if kind == ErrorKind::Unavailable {
            // The request was fine and may be sent again; the operator has to free space or
            // repair the disk. Which one is worth telling; where and how stays in the log.
            tracing::error!(error = %e, "request failed: the CA's storage is unavailable");
            let what = match &e {
                ServiceError::Store(s) => s.storage_fault().map(StorageFault::describe),
                _ => None,
            };
            return ApiError::new(
                status,
                "storage-unavailable",
                format!("{}; retry later", what.unwrap_or("storage unavailable")),
            );
        }
        let slug = match &e {
            ServiceError::Csr(_) => "bad-csr",
            ServiceError::Policy(v) if v.violation == ViolationKind::Denied => "policy-denied",
            ServiceError::Token(_) => "invalid-token",
            ServiceError::Unauthenticated(_) => "unauthenticated",
            ServiceError::Forbidden(_) => "forbidden",
            _ => kind.as_str(),
        };
        ApiError::new(status, slug, e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "request body exceeds the size limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send JSON with Content-Type: application/json",
            ),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed-json", r.body_text()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "request body exceeds the size limit",
            ),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "bad-request", r.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("{PROBLEM_TYPE_PREFIX}{}", self.slug),
            title: self.status.canonical_reason().unwrap_or("error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp.extensions_mut().insert(Outcome {
            env: None,
            problem: Some(self.slug),
        });
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::CsrError;
    use crate::store::StoreError;

    #[test]
    fn kinds_map_to_statuses_and_internal_details_stay_inside() {
        let e: ApiError = ServiceError::Csr(CsrError::BadSignature).into();
        assert_eq!((e.status(), e.slug()), (StatusCode::BAD_REQUEST, "bad-csr"));
        let e: ApiError = ServiceError::Token("enrollment token x was already used".into()).into();
        assert_eq!(
            (e.status(), e.slug()),
            (StatusCode::UNAUTHORIZED, "invalid-token")
        );
        let e: ApiError = ServiceError::Forbidden("no".into()).into();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let e: ApiError =
            ServiceError::Store(StoreError::Corrupt("secret table detail".into())).into();
        assert_eq!(
            (e.status(), e.slug()),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        assert!(!e.detail.contains("secret table detail"));
    }

    #[test]
    fn storage_faults_are_503_storage_unavailable_and_name_only_the_fault() {
        let full = StoreError::Storage {
            fault: StorageFault::Full,
            detail: "/var/lib/ca/ca.db-wal: database or disk is full".into(),
        };
        let e: ApiError = ServiceError::Store(full).into();
        assert_eq!(
            (e.status(), e.slug()),
            (StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable")
        );
        assert_eq!(e.detail(), "database write failed: disk full; retry later");
        let io = StoreError::Storage {
            fault: StorageFault::Io,
            detail: "disk I/O error".into(),
        };
        let e: ApiError = ServiceError::Store(io).into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.detail(), "database I/O error; retry later");
    }
}
