//! Reading a webhook body: bounded, timed and verified while it streams.
//!
//! Every webhook route (Slack Events API, Clerk, GitHub) reads its body with [`read_verified`].
//! The route checks its signature headers first, so a request without a well-formed signature
//! is refused before a byte of its body is read; it then hands a [`BodyVerifier`] that sees
//! every chunk as it arrives (an incremental HMAC) and decides once the body is complete.
//!
//! What a sender without the secret can make us hold is bounded by one [`WebhookIntake`] per
//! process (`webhooks:` in the configuration), shared by every route:
//! - a `Content-Length` over the route's limit is answered 413 before reading;
//! - at most `max_unverified_uploads` bodies are read at once (one more: 503 + Retry-After);
//! - the bytes of bodies in memory are reserved from a shared budget of `max_unverified_bytes`
//!   before they are read (from `Content-Length`, else chunk by chunk) and given back when the
//!   request is answered, so large verified deliveries are bounded too; a request that cannot
//!   get its share before its deadline is answered 503 + Retry-After;
//! - the whole body (waiting for the budget included) must arrive within `body_timeout_ms`
//!   (else 408).
//!
//! The body is read into one buffer, sized from `Content-Length` up front (no doubling).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, web};
use futures::StreamExt as _;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::rate_limit::WebhookRateLimits;
use crate::config::WebhooksConfig;
use crate::error::ApiError;

/// Sees a webhook body chunk by chunk and decides on it once it is complete.
pub trait BodyVerifier {
    /// Why the body was rejected.
    type Error;
    /// The next chunk of the raw body.
    fn update(&mut self, chunk: &[u8]);
    /// The body is complete: accept it or say why not (compare in constant time).
    fn finish(self) -> Result<(), Self::Error>;
}

/// How every webhook route refuses a delivery, in the OpenAPI document.
#[derive(Debug, utoipa::IntoResponses)]
pub enum WebhookRefusals {
    /// The body or a header does not read
    #[response(status = 400)]
    BadRequest(crate::error::ErrorBody),
    /// Missing, stale or wrong signature (checked before the body is read)
    #[response(status = 401)]
    BadSignature(crate::error::ErrorBody),
    /// The body did not arrive within the deadline
    #[response(status = 408)]
    Timeout(crate::error::ErrorBody),
    /// The body is over the route's limit
    #[response(status = 413)]
    TooLarge(crate::error::ErrorBody),
    /// The event could not be stored
    #[response(status = 422)]
    NotStored(crate::error::ErrorBody),
    /// Not configured (fail closed), too many deliveries in flight, or the store is down: retry later
    #[response(status = 503)]
    Unavailable(crate::error::ErrorBody),
}

/// The limits and budgets of webhook body reading, shared by every webhook route of the
/// process (the HTTP shell registers one as app data; see [`WebhookIntake::for_request`]).
#[derive(Debug)]
pub struct WebhookIntake {
    body_timeout: Duration,
    budget: u32,
    bytes: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    rate_limits: WebhookRateLimits,
    uploads_in_flight: UploadsInFlight,
    shed: IntCounterVec,
}

/// `infragpt_webhook_uploads_in_flight`, read off the upload slots at each scrape.
#[derive(Debug, Clone)]
struct UploadsInFlight {
    uploads: Arc<Semaphore>,
    max: usize,
    gauge: IntGauge,
}

impl UploadsInFlight {
    fn now(&self) -> usize {
        self.max - self.uploads.available_permits()
    }
}

impl Collector for UploadsInFlight {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge
            .set(i64::try_from(self.now()).unwrap_or(i64::MAX));
        self.gauge.collect()
    }
}

/// What was shed and why, every reason from the start (a rate over one that never happened
/// is 0, not absent).
fn shed_counter() -> IntCounterVec {
    let shed = IntCounterVec::new(
        Opts::new(
            "infragpt_webhook_shed_total",
            "Webhook deliveries refused while their body was due: no upload slot (503), \
                 no room in the byte budget before the deadline (503), or the body late (408)",
        ),
        &["reason"],
    )
    .expect("a valid counter");
    for reason in [SHED_UPLOADS, SHED_BYTES, SHED_TIMEOUT] {
        shed.with_label_values(&[reason]);
    }
    shed
}

const SHED_UPLOADS: &str = "uploads";
const SHED_BYTES: &str = "bytes";
const SHED_TIMEOUT: &str = "timeout";

impl WebhookIntake {
    /// Limits from `webhooks:` (validated: budget within `u32`, at least one upload).
    pub fn new(config: &WebhooksConfig) -> Self {
        let budget = u32::try_from(config.max_unverified_bytes).unwrap_or(u32::MAX);
        let max_uploads = config.max_unverified_uploads as usize;
        let uploads = Arc::new(Semaphore::new(max_uploads));
        let gauge = IntGauge::new(
            "infragpt_webhook_uploads_in_flight",
            "Webhook bodies being read now (at most webhooks.max_unverified_uploads)",
        )
        .expect("a valid gauge");
        Self {
            body_timeout: config.body_timeout(),
            budget,
            bytes: Arc::new(Semaphore::new(budget as usize)),
            uploads: uploads.clone(),
            rate_limits: WebhookRateLimits::new(&config.rate_limits),
            uploads_in_flight: UploadsInFlight {
                uploads,
                max: max_uploads,
                gauge,
            },
            shed: shed_counter(),
        }
    }

    /// The intake's collectors, for the metrics registry: uploads in flight, deliveries
    /// shed, and the rate limits' refusals.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.uploads_in_flight.clone()),
            Box::new(self.shed.clone()),
            Box::new(self.rate_limits.metric()),
        ]
    }

    fn shed(&self, reason: &str) {
        self.shed.with_label_values(&[reason]).inc();
    }

    /// The per-source rate limits of the webhook routes (`webhooks.rate_limits`).
    pub fn rate_limits(&self) -> &WebhookRateLimits {
        &self.rate_limits
    }

    /// The intake the app registered, or a process-wide one with the default limits (routes
    /// mounted outside the HTTP shell, e.g. in tests).
    pub fn for_request(req: &HttpRequest) -> Arc<Self> {
        static FALLBACK: OnceLock<Arc<WebhookIntake>> = OnceLock::new();
        match req.app_data::<web::Data<WebhookIntake>>() {
            Some(data) => data.clone().into_inner(),
            None => FALLBACK
                .get_or_init(|| Arc::new(Self::new(&WebhooksConfig::default())))
                .clone(),
        }
    }

    /// Bytes of the budget not reserved now.
    pub fn available_bytes(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Upload slots free now.
    pub fn available_uploads(&self) -> usize {
        self.uploads.available_permits()
    }

    /// What a refused sender is told to wait (seconds): about as long as a body may take.
    fn retry_after_secs(&self) -> u64 {
        self.body_timeout.as_secs().max(1)
    }
}

/// Bytes reserved from the shared budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Reserves `n` more bytes, waiting until `deadline` at most. A body larger than the whole
    /// budget reserves all of it (so it is read alone) rather than never getting in.
    async fn grow(
        &mut self,
        intake: &WebhookIntake,
        n: usize,
        deadline: Instant,
    ) -> Result<(), Busy> {
        let room = (intake.budget as usize).saturating_sub(self.bytes());
        let want = u32::try_from(n.min(room)).unwrap_or(u32::MAX);
        if want == 0 {
            return Ok(());
        }
        let acquire = intake.bytes.clone().acquire_many_owned(want);
        let permit = match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => permit,
            // Timed out, or the semaphore was closed (never done): either way, not now.
            _ => return Err(Busy),
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }
}

struct Busy;

/// A complete, verified body and its share of the byte budget (held until this is dropped,
/// or until the [`Reservation`] from [`into_parts`](Self::into_parts) is).
#[derive(Debug)]
pub struct VerifiedBody {
    bytes: Vec<u8>,
    reservation: Reservation,
}

impl VerifiedBody {
    /// The raw body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The body and its reservation: keep the reservation until the request is answered.
    pub fn into_parts(self) -> (Vec<u8>, Reservation) {
        (self.bytes, self.reservation)
    }
}

/// Why a webhook body was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum BodyError<E> {
    /// `Content-Length`, or the bytes received, over the route's limit.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The route's limit.
        limit: usize,
    },
    /// The body did not arrive before the deadline.
    #[error("request body did not arrive within {0:?}")]
    Timeout(Duration),
    /// Too many bodies, or too many bytes, in flight.
    #[error("too many webhook bodies in flight")]
    Busy {
        /// Seconds to tell the sender to wait.
        retry_after: u64,
    },
    /// The connection failed while the body was read.
    #[error("reading the request body failed: {0}")]
    Payload(#[source] actix_web::error::PayloadError),
    /// The verifier rejected the body.
    #[error("the body's signature was rejected")]
    Rejected(E),
}

impl<E> BodyError<E> {
    /// The HTTP answer: 413, 408, 503 with Retry-After, 400, or what `rejected` makes of the
    /// verifier's error.
    pub fn into_api(self, rejected: impl FnOnce(E) -> ApiError) -> ApiError {
        match self {
            Self::Rejected(e) => rejected(e),
            Self::TooLarge { limit } => {
                ApiError::payload_too_large(format!("request body is larger than {limit} bytes"))
            }
            Self::Timeout(after) => ApiError::request_timeout(format!(
                "request body did not arrive within {} ms",
                after.as_millis()
            )),
            Self::Busy { retry_after } => {
                ApiError::unavailable("too many webhook deliveries in flight, retry later")
                    .with_retry_after(retry_after)
            }
            Self::Payload(e) => ApiError::bad_request(format!("reading the body failed: {e}")),
        }
    }
}

/// The declared `Content-Length` (absent or unreadable: `None`; actix has refused a malformed
/// one already).
fn content_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the body of `req` (at most `limit` bytes) under `intake`'s limits, feeding every
/// chunk to `verifier`, and returns it once `verifier` accepts it. Call it only after the
/// signature headers were checked.
pub async fn read_verified<V: BodyVerifier>(
    intake: &WebhookIntake,
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    mut verifier: V,
) -> Result<VerifiedBody, BodyError<V::Error>> {
    let declared = content_length(req);
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let busy = |reason| {
        intake.shed(reason);
        BodyError::Busy {
            retry_after: intake.retry_after_secs(),
        }
    };
    // No waiting for a slot: the slots bound the connections parked here.
    let upload = intake
        .uploads
        .clone()
        .try_acquire_owned()
        .map_err(|_| busy(SHED_UPLOADS))?;
    let deadline = Instant::now() + intake.body_timeout;
    let mut reservation = Reservation { permit: None };
    if let Some(n) = declared {
        reservation
            .grow(intake, n, deadline)
            .await
            .map_err(|Busy| busy(SHED_BYTES))?;
    }
    // One buffer of the declared size (reserved above, at most `limit`).
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(BodyError::Payload)?;
            if body.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            if declared.is_none() {
                reservation
                    .grow(intake, chunk.len(), deadline)
                    .await
                    .map_err(|Busy| busy(SHED_BYTES))?;
            }
            verifier.update(&chunk);
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(result) => result?,
        Err(_) => {
            intake.shed(SHED_TIMEOUT);
            return Err(BodyError::Timeout(intake.body_timeout));
        }
    }
    drop(upload);
    verifier.finish().map_err(BodyError::Rejected)?;
    Ok(VerifiedBody {
        bytes: body,
        reservation,
    })
}

#[cfg(test)]
mod tests {
    use actix_web::FromRequest as _;
    use actix_web::test::TestRequest;

    use super::*;

    /// Accepts every body.
    struct AnyBody;

    impl BodyVerifier for AnyBody {
        type Error = ();
        fn update(&mut self, _: &[u8]) {}
        fn finish(self) -> Result<(), ()> {
            Ok(())
        }
    }

    fn intake(uploads: u32, bytes: u64, timeout_ms: u64) -> WebhookIntake {
        WebhookIntake::new(&WebhooksConfig {
            body_timeout_ms: timeout_ms,
            max_unverified_bytes: bytes,
            max_unverified_uploads: uploads,
            ..WebhooksConfig::default()
        })
    }

    /// A request declaring `length` bytes whose body is `body`, or never arrives (`None`).
    async fn request(length: usize, body: Option<&'static [u8]>) -> (HttpRequest, web::Payload) {
        let (req, _) = TestRequest::post()
            .insert_header((CONTENT_LENGTH, length.to_string()))
            .to_http_parts();
        let mut payload: actix_web::dev::Payload = match body {
            Some(body) => web::Bytes::from_static(body).into(),
            None => actix_web::dev::Payload::Stream {
                payload: Box::pin(futures::stream::pending()),
            },
        };
        let payload = web::Payload::from_request(&req, &mut payload)
            .await
            .expect("a payload");
        (req, payload)
    }

    fn shed(intake: &WebhookIntake, reason: &str) -> u64 {
        intake.shed.with_label_values(&[reason]).get()
    }

    #[actix_rt::test]
    async fn a_body_is_read_and_its_slot_given_back() {
        let intake = intake(1, 1024, 1000);
        let (req, payload) = request(2, Some(b"{}")).await;
        let body = read_verified(&intake, &req, payload, 1024, AnyBody)
            .await
            .expect("read");
        assert_eq!(body.as_bytes(), b"{}");
        assert_eq!(intake.uploads_in_flight.now(), 0);
        assert_eq!(intake.available_uploads(), 1);
        // The bytes stay reserved until the request is answered.
        assert_eq!(intake.available_bytes(), 1022);
        drop(body);
        assert_eq!(intake.available_bytes(), 1024);
    }

    #[actix_rt::test]
    async fn no_free_slot_is_shed_at_once_and_counted() {
        let intake = intake(1, 1024, 1000);
        let held = intake
            .uploads
            .clone()
            .try_acquire_owned()
            .expect("the one slot");
        assert_eq!(intake.uploads_in_flight.now(), 1);
        let (req, payload) = request(2, Some(b"{}")).await;
        let refused = read_verified(&intake, &req, payload, 1024, AnyBody).await;
        assert!(
            matches!(refused, Err(BodyError::Busy { retry_after: 1 })),
            "{refused:?}"
        );
        assert_eq!(shed(&intake, SHED_UPLOADS), 1);
        assert_eq!(shed(&intake, SHED_BYTES) + shed(&intake, SHED_TIMEOUT), 0);
        drop(held);
        assert_eq!(intake.uploads_in_flight.now(), 0);
    }

    #[actix_rt::test]
    async fn no_room_in_the_budget_by_the_deadline_is_shed_and_counted() {
        let intake = intake(2, 10, 50);
        let mut taken = Reservation { permit: None };
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(taken.grow(&intake, 10, deadline).await.is_ok());
        let (req, payload) = request(5, Some(b"12345")).await;
        let refused = read_verified(&intake, &req, payload, 1024, AnyBody).await;
        assert!(
            matches!(refused, Err(BodyError::Busy { .. })),
            "{refused:?}"
        );
        assert_eq!(shed(&intake, SHED_BYTES), 1);
        // The refused request gave its slot back.
        assert_eq!(intake.uploads_in_flight.now(), 0);
    }

    #[actix_rt::test]
    async fn a_body_that_never_arrives_times_out_and_is_counted() {
        let intake = intake(1, 1024, 50);
        let (req, payload) = request(5, None).await;
        let late = read_verified(&intake, &req, payload, 1024, AnyBody).await;
        assert!(matches!(late, Err(BodyError::Timeout(_))), "{late:?}");
        assert_eq!(shed(&intake, SHED_TIMEOUT), 1);
        assert_eq!(intake.uploads_in_flight.now(), 0);
        assert_eq!(intake.available_bytes(), 1024);
    }
}
