//! Middleware: request id + request log + JSON errors (outermost), panic catching, CORS.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError};
use futures::FutureExt as _;
use tracing::Instrument as _;

use crate::config::CorsConfig;
use crate::error::ApiError;

/// The request id header (read from the caller, echoed on the response).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the current request, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller's id is kept only when it is short and plain (it ends up in logs and headers).
fn accept_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// Settings for [`request_context`].
#[derive(Debug, Clone, Copy)]
pub struct RequestLogSettings {
    /// Log one line per request.
    pub http_log: bool,
}

/// An error leaving the middleware stack: the JSON error plus the request id header. (Errors
/// are returned rather than turned into a `ServiceResponse` because building one needs the
/// `HttpRequest`, and holding a clone of it during routing is not allowed by actix-web.)
#[derive(Debug)]
struct TaggedError {
    api: ApiError,
    request_id: String,
}

impl std::fmt::Display for TaggedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.api.fmt(f)
    }
}

impl ResponseError for TaggedError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.api.status()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut res = self.api.error_response();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            res.headers_mut()
                .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
        }
        res
    }
}

fn is_json<B>(res: &actix_web::HttpResponse<B>) -> bool {
    res.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Assigns the request id, runs the request inside a span carrying it, gives every error
/// response the JSON error shape, echoes the id and logs one line per request.
pub async fn request_context(
    settings: RequestLogSettings,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(accept_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let path = req.path().to_owned();

    let span = tracing::info_span!("http_request", request_id = %id);
    let result = next.call(req).instrument(span).await;
    let result = match result {
        Ok(res) => {
            let status = res.status();
            let rerender = if is_json(res.response()) || status.as_u16() < 400 {
                None
            } else if let Some(err) = res.response().error() {
                // An error rendered by someone else's ResponseError (extractors, CORS, a
                // handler's own error type): re-render it in the JSON shape.
                Some(ApiError::from_status(status, err.to_string()))
            } else if matches!(
                res.response().body().size(),
                BodySize::None | BodySize::Sized(0)
            ) {
                // A bare status, e.g. actix's 405 for a known path with another method.
                Some(ApiError::from_status(
                    status,
                    status.canonical_reason().unwrap_or("error").to_lowercase(),
                ))
            } else {
                None
            };
            let mut res = match rerender {
                Some(api) => {
                    let (http_req, _) = res.into_parts();
                    ServiceResponse::new(http_req, api.error_response())
                }
                None => res.map_into_boxed_body(),
            };
            if let Ok(v) = HeaderValue::from_str(&id) {
                res.headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
            }
            Ok(res)
        }
        Err(err) => {
            let status = err.as_response_error().status_code();
            let api = match err.as_error::<ApiError>() {
                Some(api) => api.clone(),
                None => ApiError::from_status(status, err.to_string()),
            };
            Err(TaggedError {
                api,
                request_id: id.clone(),
            })
        }
    };
    if settings.http_log {
        let status = match &result {
            Ok(res) => res.status().as_u16(),
            Err(e) => e.api.status().as_u16(),
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "infragpt::http",
            method = %method,
            path = %path,
            status,
            latency_ms,
            request_id = %id,
            "request"
        );
    }
    result.map_err(Error::from)
}

/// Turns a panic in a handler into a JSON 500 and an error log line. actix-web does not catch
/// panics: without this the worker's task would unwind.
pub async fn catch_panic(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    match AssertUnwindSafe(async move { next.call(req).await })
        .catch_unwind()
        .await
    {
        Ok(result) => result.map(ServiceResponse::map_into_boxed_body),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(
                request_id = %request_id,
                method = %method,
                path = %path,
                panic = %message,
                "handler panicked"
            );
            Err(ApiError::internal_quiet().into())
        }
    }
}

/// CORS from configuration. With no origins listed, cross-origin browser calls are refused
/// (no CORS headers); non-browser clients are unaffected.
pub fn cors(config: &CorsConfig) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::ACCEPT,
            HeaderName::from_static(REQUEST_ID_HEADER),
        ])
        .expose_headers([HeaderName::from_static(REQUEST_ID_HEADER)])
        .max_age(3600)
        .block_on_origin_mismatch(false);
    for origin in &config.allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    // Configuration validation rejects `*` with credentials.
    if config.allow_credentials {
        cors = cors.supports_credentials();
    }
    cors
}
