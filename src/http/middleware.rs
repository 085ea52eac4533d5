//! Middleware: request id + request log + JSON errors (outermost), panic catching, CORS.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
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

/// Assigns the request id, runs the request inside a span carrying it, turns middleware errors
/// into the JSON error shape, echoes the id and logs one line per request.
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
    let http_req = req.request().clone();

    let span = tracing::info_span!("http_request", request_id = %id);
    let result = next.call(req).instrument(span).await;
    let mut res = match result {
        Ok(res) => res.map_into_boxed_body(),
        Err(err) => {
            // Errors raised by inner middleware (e.g. CORS) get the same JSON shape.
            let status = err.as_response_error().status_code();
            let api = ApiError::from_status(status, err.to_string());
            ServiceResponse::new(http_req, api.error_response())
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    if settings.http_log {
        let status = res.status().as_u16();
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
    Ok(res)
}

/// Turns a panic in a handler into a JSON 500 and an error log line. actix-web does not catch
/// panics: without this the worker thread's task would unwind.
pub async fn catch_panic(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let http_req = req.request().clone();
    let request_id = req.extensions().get::<RequestId>().cloned();
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
                request_id = request_id.as_ref().map(|r| r.0.as_str()).unwrap_or(""),
                method = %http_req.method(),
                path = %http_req.path(),
                panic = %message,
                "handler panicked"
            );
            let api = ApiError::from_status(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "handler panicked",
            );
            Ok(ServiceResponse::new(http_req, api.error_response()))
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
