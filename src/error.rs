//! The one error shape of the HTTP API: `{"error":{"code":"...","message":"..."}}`, plus its
//! mapping to gRPC status codes.

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

/// Characters of a caller's value an error message echoes (see [`echo`]).
pub const ECHO_MAX_CHARS: usize = 64;

/// Characters of an error message at most: a safety net for messages that embed caller input
/// we cannot clip on its own (a parser's error text).
pub const MESSAGE_MAX_CHARS: usize = 512;

/// A caller's value as an error message may echo it: at most [`ECHO_MAX_CHARS`] characters,
/// then `…(N bytes)` with the full length. A 200 KB id must not come back in a 200 KB error.
pub fn echo(value: &str) -> Cow<'_, str> {
    clip(value, ECHO_MAX_CHARS)
}

/// `value` cut to `max_chars` characters plus `…(N bytes)`, or as is when it is short enough.
pub fn clip(value: &str, max_chars: usize) -> Cow<'_, str> {
    match value.char_indices().nth(max_chars) {
        None => Cow::Borrowed(value),
        Some((end, _)) => Cow::Owned(format!("{}…({} bytes)", &value[..end], value.len())),
    }
}

/// An error answered to an HTTP (or gRPC) caller. The message is meant for the caller; internal
/// details are logged, never returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds for a `Retry-After` header (load shedding).
    retry_after: Option<u64>,
}

/// The error body every route answers (`{"error":{"code","message","field"?}}`); the type
/// that is serialized is the one the OpenAPI document describes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `failed_precondition`, `unprocessable`, `payload_too_large`,
    /// `too_many_requests`, `unavailable`, `internal`, ...
    #[schema(example = "not_found")]
    pub code: String,
    /// For people; never internal details.
    pub message: String,
    /// The invalid field (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match clip(&message, MESSAGE_MAX_CHARS) {
            Cow::Borrowed(_) => message,
            Cow::Owned(clipped) => clipped,
        };
        Self {
            status,
            code,
            message,
            field: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: missing or invalid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 409 `failed_precondition` (gRPC `FAILED_PRECONDITION`): the request is fine, but the
    /// state of something it depends on refuses it, and retrying will not help until that
    /// state changes (a Slack workspace without a token, an archived channel).
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "failed_precondition", message)
    }

    /// 422: well-formed, but `field` is invalid.
    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{}: {}", echo(&field), message.into());
        Self {
            field: Some(echo(&field).into_owned()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
        }
    }

    /// 408: the request (its body) did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 413: the request body is over the limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// Adds a `Retry-After` header (seconds) to the response.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 429: slow down.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
    }

    /// 503: a dependency is down or the service is overloaded / shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: logs `detail` (with the error chain) and answers a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// 500 without logging (the caller has logged the cause already).
    pub fn internal_quiet() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// An error for a status produced outside our handlers (extractors, middleware). 5xx
    /// messages are replaced by a generic one.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            return Self::internal(message.into());
        }
        Self::new(status, code, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code (`not_found`, ...).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The `Retry-After` seconds, if the response carries one.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// The caller-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        };
        // Serializing three strings cannot fail; keep a valid body even if it somehow did.
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"internal server error"}}"#.to_owned()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds));
        }
        response
            .content_type("application/json")
            .body(self.to_json())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        use tonic::Code;
        let code = match e.status {
            // 409 is two codes; the error code tells them apart.
            StatusCode::CONFLICT if e.code == "failed_precondition" => Code::FailedPrecondition,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::AlreadyExists,
            StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            s if s.is_client_error() => Code::InvalidArgument,
            _ => Code::Internal,
        };
        tonic::Status::new(code, e.message)
    }
}

/// JSON body limits and errors for `web::Json` extractors.
pub fn json_config() -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default()
        .limit(1 << 20)
        .error_handler(|err, _req: &HttpRequest| {
            let status = err.status_code();
            let api = if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::from_status(status, "request body is too large")
            } else if matches!(err, actix_web::error::JsonPayloadError::ContentType) {
                ApiError::from_status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected Content-Type: application/json",
                )
            } else {
                ApiError::bad_request(format!("invalid JSON body: {err}"))
            };
            api.into()
        })
}

/// Errors for `web::Path` extractors.
pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default()
        .error_handler(|err, _req| ApiError::not_found(format!("invalid path: {err}")).into())
}

/// Errors for `web::Query` extractors.
pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::bad_request(format!("invalid query: {err}")).into())
}

/// The default service: JSON 404 for every unknown path.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        echo(req.path())
    ))
    .error_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let e = ApiError::not_found("no such thing");
        assert_eq!(
            e.to_json(),
            r#"{"error":{"code":"not_found","message":"no such thing"}}"#
        );
        let e = ApiError::unprocessable("name", "too long");
        assert_eq!(
            e.to_json(),
            r#"{"error":{"code":"unprocessable","message":"name: too long","field":"name"}}"#
        );
    }

    #[test]
    fn internal_hides_details() {
        let e = ApiError::internal("db password is hunter2");
        assert!(!e.to_json().contains("hunter2"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn echo_clips_long_values() {
        assert_eq!(echo("short"), "short");
        let exact = "x".repeat(ECHO_MAX_CHARS);
        assert_eq!(echo(&exact), exact.as_str());
        let long = "é".repeat(100_000);
        let clipped = echo(&long);
        assert_eq!(
            clipped,
            format!("{}…(200000 bytes)", "é".repeat(ECHO_MAX_CHARS))
        );
        let e = ApiError::bad_request("y".repeat(10_000));
        assert!(e.message().chars().count() < MESSAGE_MAX_CHARS + 20);
        assert!(e.message().ends_with("…(10000 bytes)"), "{}", e.message());
    }

    #[test]
    fn grpc_codes() {
        let s: tonic::Status = ApiError::failed_precondition("x").into();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            ApiError::failed_precondition("x").status(),
            StatusCode::CONFLICT
        );
        let s: tonic::Status = ApiError::conflict("x").into();
        assert_eq!(s.code(), tonic::Code::AlreadyExists);
        let s: tonic::Status = ApiError::unauthorized("x").into();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let s: tonic::Status = ApiError::too_many_requests("x").into();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let s: tonic::Status = ApiError::internal("x").into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), "internal server error");
    }
}
