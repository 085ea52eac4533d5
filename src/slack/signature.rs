//! Slack request signature verification (`X-Slack-Signature`, `X-Slack-Request-Timestamp`).
//!
//! Slack signs `v0:{timestamp}:{raw body}` with HMAC-SHA256 under the app's signing secret and
//! sends `v0=` + lowercase hex. We check the headers and the timestamp window first (cheap,
//! stops replays, and before the body is read: [`SlackSignatureVerifier::begin`]), then the MAC
//! of the raw bytes as they stream, compared in constant time, before any parsing.

use std::sync::Arc;

use infragpt_actors::Secret;
use ring::hmac;
use subtle::ConstantTimeEq;

/// Header carrying the signature (`v0=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Header carrying the Unix timestamp (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// Slack's documented replay window: five minutes either side of now.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// Why a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The `X-Slack-Request-Timestamp` header is absent.
    #[error("missing X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    /// The `X-Slack-Signature` header is absent.
    #[error("missing X-Slack-Signature header")]
    MissingSignature,
    /// The timestamp is not a decimal Unix time.
    #[error("X-Slack-Request-Timestamp is not a Unix time: {0:?}")]
    BadTimestamp(String),
    /// The signature is not `v0=` followed by 64 hex digits.
    #[error("X-Slack-Signature is not of the form v0=<64 hex digits>")]
    BadSignatureFormat,
    /// The timestamp is outside the allowed window (possible replay).
    #[error(
        "request timestamp {timestamp} is {skew_secs}s away from now (allowed {tolerance_secs}s)"
    )]
    Stale {
        /// Timestamp presented by the request.
        timestamp: i64,
        /// `now - timestamp`.
        skew_secs: i64,
        /// The window that was allowed.
        tolerance_secs: i64,
    },
    /// The MAC does not match the body.
    #[error("signature does not match the request body")]
    Mismatch,
    /// No signing secret is configured: fail closed.
    #[error("no Slack signing secret configured")]
    NotConfigured,
}

/// Source of "now" as Unix seconds; injectable so tests can pin the clock.
pub type UnixClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock as a [`UnixClock`].
pub fn system_clock() -> UnixClock {
    Arc::new(|| chrono::Utc::now().timestamp())
}

/// Verifies Slack request signatures for one signing secret.
#[derive(Clone)]
pub struct SlackSignatureVerifier {
    key: Option<hmac::Key>,
    clock: UnixClock,
    tolerance_secs: i64,
}

impl std::fmt::Debug for SlackSignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackSignatureVerifier")
            .field("configured", &self.key.is_some())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish_non_exhaustive()
    }
}

impl SlackSignatureVerifier {
    /// A verifier using the system clock and the ±5 minute window. An empty secret gives a
    /// verifier that rejects everything with [`SignatureError::NotConfigured`].
    pub fn new(signing_secret: &Secret) -> Self {
        Self::with_clock(signing_secret, system_clock())
    }

    /// A verifier with an injected clock (Unix seconds).
    pub fn with_clock(signing_secret: &Secret, clock: UnixClock) -> Self {
        let key = (!signing_secret.is_empty())
            .then(|| hmac::Key::new(hmac::HMAC_SHA256, signing_secret.expose().as_bytes()));
        Self {
            key,
            clock,
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        }
    }

    /// Changes the replay window (seconds either side of now).
    pub fn with_tolerance_secs(mut self, tolerance_secs: i64) -> Self {
        self.tolerance_secs = tolerance_secs;
        self
    }

    /// Verifies the raw header values and raw body. Call this before parsing the body.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let mut check = self.begin(timestamp, signature)?;
        check.update(body);
        check.finish()
    }

    /// Checks everything but the MAC (configured, headers present and well formed, timestamp
    /// fresh) before a byte of the body is read, and starts the MAC over `v0:{timestamp}:`;
    /// feed the body to the returned check as it arrives.
    pub fn begin(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
    ) -> Result<SlackBodyCheck, SignatureError> {
        let key = self.key.as_ref().ok_or(SignatureError::NotConfigured)?;
        let timestamp_raw = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
        let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
        let ts: i64 = timestamp_raw
            .parse()
            .map_err(|_| SignatureError::BadTimestamp(timestamp_raw.to_owned()))?;
        let mut expected = [0u8; 32];
        signature
            .strip_prefix("v0=")
            .filter(|hex_part| hex_part.len() == 64)
            .and_then(|hex_part| hex::decode_to_slice(hex_part, &mut expected).ok())
            .ok_or(SignatureError::BadSignatureFormat)?;
        let skew_secs = (self.clock)().saturating_sub(ts);
        if skew_secs.abs() > self.tolerance_secs {
            return Err(SignatureError::Stale {
                timestamp: ts,
                skew_secs,
                tolerance_secs: self.tolerance_secs,
            });
        }
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(b"v0:");
        ctx.update(timestamp_raw.as_bytes());
        ctx.update(b":");
        Ok(SlackBodyCheck { ctx, expected })
    }

    /// [`begin`](Self::begin) with the request's headers (a header that is present but not
    /// visible ASCII counts as a bad value, not a missing one).
    pub fn begin_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<SlackBodyCheck, SignatureError> {
        let signature = match headers.get(SIGNATURE_HEADER) {
            Some(v) => Some(v.to_str().map_err(|_| SignatureError::BadSignatureFormat)?),
            None => None,
        };
        let timestamp = match headers.get(TIMESTAMP_HEADER) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| SignatureError::BadTimestamp("<non-ascii>".into()))?,
            ),
            None => None,
        };
        self.begin(timestamp, signature)
    }

    /// Verifies using the request's headers (`X-Slack-Request-Timestamp`, `X-Slack-Signature`).
    pub fn verify_headers(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let mut check = self.begin_headers(headers)?;
        check.update(body);
        check.finish()
    }
}

/// A Slack signature check in progress: the MAC from the header, and the HMAC of
/// `v0:{timestamp}:` and the body so far.
pub struct SlackBodyCheck {
    ctx: hmac::Context,
    expected: [u8; 32],
}

impl std::fmt::Debug for SlackBodyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackBodyCheck").finish_non_exhaustive()
    }
}

impl SlackBodyCheck {
    /// The next bytes of the raw body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.ctx.update(chunk);
    }

    /// Compares the MAC of the whole body with the header's, in constant time.
    pub fn finish(self) -> Result<(), SignatureError> {
        let tag = self.ctx.sign();
        if bool::from(tag.as_ref().ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

impl crate::http::webhook_body::BodyVerifier for SlackBodyCheck {
    type Error = SignatureError;
    fn update(&mut self, chunk: &[u8]) {
        SlackBodyCheck::update(self, chunk);
    }
    fn finish(self) -> Result<(), SignatureError> {
        SlackBodyCheck::finish(self)
    }
}

/// Computes the `X-Slack-Signature` value for a body (used by the simulator and tests to sign
/// requests the way Slack does).
pub fn sign(signing_secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, signing_secret.expose().as_bytes());
    let tag = hmac::sign(&key, &base_string(&timestamp.to_string(), body));
    format!("v0={}", hex::encode(tag.as_ref()))
}

fn base_string(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut base = Vec::with_capacity(timestamp.len() + body.len() + 4);
    base.extend_from_slice(b"v0:");
    base.extend_from_slice(timestamp.as_bytes());
    base.push(b':');
    base.extend_from_slice(body);
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(now: i64) -> UnixClock {
        Arc::new(move || now)
    }

    #[test]
    fn round_trip_and_rejections() {
        let secret = Secret::new("s3cret");
        let v = SlackSignatureVerifier::with_clock(&secret, fixed(1_000_000));
        let sig = sign(&secret, 1_000_000, b"a=b");
        assert_eq!(v.verify(Some("1000000"), Some(&sig), b"a=b"), Ok(()));
        assert_eq!(
            v.verify(Some("1000000"), Some(&sig), b"a=c"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(None, Some(&sig), b"a=b"),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            v.verify(Some("1000000"), None, b"a=b"),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            v.verify(Some("1000000"), Some("v1=abc"), b"a=b"),
            Err(SignatureError::BadSignatureFormat)
        );
        assert_eq!(
            v.verify(Some("abc"), Some(&sig), b"a=b"),
            Err(SignatureError::BadTimestamp("abc".into()))
        );
        let old = sign(&secret, 1_000_000 - 301, b"a=b");
        assert!(matches!(
            v.verify(Some("999699"), Some(&old), b"a=b"),
            Err(SignatureError::Stale { skew_secs: 301, .. })
        ));
        let edge = sign(&secret, 1_000_000 - 300, b"a=b");
        assert_eq!(v.verify(Some("999700"), Some(&edge), b"a=b"), Ok(()));
        let unconfigured = SlackSignatureVerifier::with_clock(&Secret::default(), fixed(0));
        assert_eq!(
            unconfigured.verify(Some("0"), Some(&sig), b"a=b"),
            Err(SignatureError::NotConfigured)
        );
    }
}
