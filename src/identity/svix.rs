//! Svix webhook signature verification (Clerk sends its webhooks through Svix).
//!
//! Svix signs `"{svix-id}.{svix-timestamp}.{body}"` with HMAC-SHA256. The key is the base64
//! text after `whsec_` in the endpoint secret. `svix-signature` holds one or more
//! space-separated `<version>,<base64 signature>` entries; only `v1` entries count and any one
//! matching entry is enough. The timestamp must be within ±5 minutes of the receiver's clock,
//! so a captured request cannot be replayed later.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use infragpt_actors::Secret;
use ring::hmac;
use subtle::ConstantTimeEq;

/// Prefix of a Svix endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Name of the message id header.
pub const HEADER_ID: &str = "svix-id";
/// Name of the timestamp header (Unix seconds).
pub const HEADER_TIMESTAMP: &str = "svix-timestamp";
/// Name of the signature header.
pub const HEADER_SIGNATURE: &str = "svix-signature";
/// How far the signed timestamp may be from the receiver's clock, in either direction.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// Why a Svix secret or message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvixError {
    /// No secret is configured; webhooks are refused rather than accepted unverified.
    #[error("svix secret is not configured")]
    SecretNotConfigured,
    /// The secret does not start with `whsec_`.
    #[error("svix secret must start with \"whsec_\"")]
    SecretMissingPrefix,
    /// The part after `whsec_` is not valid base64 or is empty.
    #[error("svix secret is not valid base64 after \"whsec_\"")]
    SecretNotBase64,
    /// A required header is absent or empty.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `svix-timestamp` is not an integer number of seconds.
    #[error("svix-timestamp is not a Unix timestamp")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows.
    #[error("svix-timestamp is too old ({age_seconds} s)")]
    TimestampTooOld {
        /// How many seconds ago the message was signed.
        age_seconds: i64,
    },
    /// The timestamp lies further in the future than the tolerance allows.
    #[error("svix-timestamp is in the future ({ahead_seconds} s)")]
    TimestampInFuture {
        /// How many seconds ahead of our clock the timestamp is.
        ahead_seconds: i64,
    },
    /// `svix-signature` holds no `v1` entry.
    #[error("svix-signature holds no v1 signature")]
    NoSupportedSignature,
    /// No `v1` entry matches the message.
    #[error("svix signature does not match")]
    SignatureMismatch,
}

/// The three Svix headers as received (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct SvixHeaders<'a> {
    /// `svix-id`
    pub id: Option<&'a str>,
    /// `svix-timestamp`
    pub timestamp: Option<&'a str>,
    /// `svix-signature`
    pub signature: Option<&'a str>,
}

impl<'a> SvixHeaders<'a> {
    /// Headers that are all present.
    pub fn new(id: &'a str, timestamp: &'a str, signature: &'a str) -> Self {
        Self {
            id: Some(id),
            timestamp: Some(timestamp),
            signature: Some(signature),
        }
    }
}

/// Verifies Svix-signed webhooks for one endpoint secret.
pub struct SvixVerifier {
    key: hmac::Key,
}

impl std::fmt::Debug for SvixVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvixVerifier")
            .field("key", &infragpt_actors::secret::REDACTED)
            .finish()
    }
}

impl SvixVerifier {
    /// Builds a verifier from a `whsec_<base64>` endpoint secret. An empty secret is an error
    /// (fail closed), never "accept everything".
    pub fn new(secret: &Secret) -> Result<Self, SvixError> {
        let raw = secret.expose().trim();
        if raw.is_empty() {
            return Err(SvixError::SecretNotConfigured);
        }
        let encoded = raw
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SvixError::SecretMissingPrefix)?;
        let key_bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SvixError::SecretNotBase64)?;
        if key_bytes.is_empty() {
            return Err(SvixError::SecretNotBase64);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key_bytes),
        })
    }

    /// Verifies a message: headers present, timestamp within ±5 minutes of `now`, and at least
    /// one `v1` signature matching `raw_body` (compared in constant time).
    pub fn verify(
        &self,
        headers: &SvixHeaders<'_>,
        raw_body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), SvixError> {
        let mut check = self.begin(headers, now)?;
        check.update(raw_body);
        check.finish()
    }

    /// Checks everything but the MAC (headers present, timestamp within ±5 minutes of `now`,
    /// at least one `v1` entry) before a byte of the body is read, and starts the MAC over
    /// `{id}.{timestamp}.`; feed the body to the returned check as it arrives.
    pub fn begin(
        &self,
        headers: &SvixHeaders<'_>,
        now: DateTime<Utc>,
    ) -> Result<SvixBodyCheck, SvixError> {
        let id = non_empty(headers.id).ok_or(SvixError::MissingHeader(HEADER_ID))?;
        let timestamp_text =
            non_empty(headers.timestamp).ok_or(SvixError::MissingHeader(HEADER_TIMESTAMP))?;
        let signature_header =
            non_empty(headers.signature).ok_or(SvixError::MissingHeader(HEADER_SIGNATURE))?;

        let timestamp: i64 = timestamp_text
            .trim()
            .parse()
            .map_err(|_| SvixError::InvalidTimestamp)?;
        let age = now.timestamp().saturating_sub(timestamp);
        if age > TOLERANCE_SECONDS {
            return Err(SvixError::TimestampTooOld { age_seconds: age });
        }
        if age < -TOLERANCE_SECONDS {
            return Err(SvixError::TimestampInFuture {
                ahead_seconds: -age,
            });
        }

        let mut saw_v1 = false;
        let mut candidates = Vec::new();
        for entry in signature_header.split_whitespace() {
            let Some((version, encoded)) = entry.split_once(',') else {
                continue;
            };
            if version != "v1" {
                continue;
            }
            saw_v1 = true;
            // An entry that is not base64 matches nothing (it still counts as a v1 entry).
            if let Ok(candidate) = STANDARD.decode(encoded) {
                candidates.push(candidate);
            }
        }
        if !saw_v1 {
            return Err(SvixError::NoSupportedSignature);
        }
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp_text.as_bytes());
        ctx.update(b".");
        Ok(SvixBodyCheck { ctx, candidates })
    }

    /// Signs a message the way Svix does and returns the `v1,<base64>` header entry
    /// (for tests and local simulators).
    pub fn sign(&self, id: &str, timestamp: i64, raw_body: &[u8]) -> String {
        let tag = self.tag(id, &timestamp.to_string(), raw_body);
        format!("v1,{}", STANDARD.encode(tag.as_ref()))
    }

    fn tag(&self, id: &str, timestamp: &str, raw_body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.as_bytes());
        ctx.update(b".");
        ctx.update(raw_body);
        ctx.sign()
    }
}

/// A Svix signature check in progress: the header's `v1` signatures, and the HMAC of
/// `{id}.{timestamp}.` and the body so far.
pub struct SvixBodyCheck {
    ctx: hmac::Context,
    candidates: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SvixBodyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvixBodyCheck")
            .field("candidates", &self.candidates.len())
            .finish_non_exhaustive()
    }
}

impl SvixBodyCheck {
    /// The next bytes of the raw body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.ctx.update(chunk);
    }

    /// True when any `v1` signature matches the whole body (each compared in constant time).
    pub fn finish(self) -> Result<(), SvixError> {
        let expected = self.ctx.sign();
        let mut matched = false;
        for candidate in &self.candidates {
            // `ct_eq` on slices of different lengths is false without leaking where they
            // differ; keep looping so the time taken does not depend on which entry matched.
            if bool::from(expected.as_ref().ct_eq(candidate.as_slice())) {
                matched = true;
            }
        }
        if matched {
            Ok(())
        } else {
            Err(SvixError::SignatureMismatch)
        }
    }
}

impl crate::http::webhook_body::BodyVerifier for SvixBodyCheck {
    type Error = SvixError;
    fn update(&mut self, chunk: &[u8]) {
        SvixBodyCheck::update(self, chunk);
    }
    fn finish(self) -> Result<(), SvixError> {
        SvixBodyCheck::finish(self)
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_malformed_secrets() {
        assert_eq!(
            SvixVerifier::new(&Secret::new("")).unwrap_err(),
            SvixError::SecretNotConfigured
        );
        assert_eq!(
            SvixVerifier::new(&Secret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap_err(),
            SvixError::SecretMissingPrefix
        );
        assert_eq!(
            SvixVerifier::new(&Secret::new("whsec_!!!not base64")).unwrap_err(),
            SvixError::SecretNotBase64
        );
        assert_eq!(
            SvixVerifier::new(&Secret::new("whsec_")).unwrap_err(),
            SvixError::SecretNotBase64
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let v = SvixVerifier::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let printed = format!("{v:?}");
        assert!(printed.contains("[redacted]"));
        assert!(!printed.contains("MfKQ"));
    }
}
