//! GitHub webhook signatures: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`.

use infragpt_actors::Secret;
use ring::hmac;
use subtle::ConstantTimeEq;

/// Name of the header GitHub puts the signature in.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
const PREFIX: &str = "sha256=";

/// Why a GitHub webhook signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GithubSignatureError {
    /// No webhook secret is configured: deliveries are refused, never accepted unverified.
    #[error("github webhook secret is not configured")]
    SecretNotConfigured,
    /// The request carries no `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    MissingHeader,
    /// The header is not `sha256=` followed by 64 hex digits.
    #[error("X-Hub-Signature-256 is not of the form sha256=<64 hex digits>")]
    Malformed,
    /// The signature does not match the body.
    #[error("github signature does not match")]
    Mismatch,
}

/// Verifies `X-Hub-Signature-256` for one webhook secret.
pub struct GithubSignatureVerifier {
    key: hmac::Key,
}

impl std::fmt::Debug for GithubSignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubSignatureVerifier")
            .field("key", &infragpt_actors::secret::REDACTED)
            .finish()
    }
}

impl GithubSignatureVerifier {
    /// Builds a verifier. An empty secret is refused so an unconfigured deployment fails closed.
    pub fn new(secret: &Secret) -> Result<Self, GithubSignatureError> {
        if secret.is_empty() {
            return Err(GithubSignatureError::SecretNotConfigured);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
        })
    }

    /// Checks the header value against the raw body, in constant time.
    pub fn verify(
        &self,
        header: Option<&str>,
        raw_body: &[u8],
    ) -> Result<(), GithubSignatureError> {
        let mut check = self.begin(header)?;
        check.update(raw_body);
        check.finish()
    }

    /// Checks the header (present, `sha256=` and 64 hex digits) before a byte of the body is
    /// read; feed the body to the returned check as it arrives.
    pub fn begin(&self, header: Option<&str>) -> Result<GithubBodyCheck, GithubSignatureError> {
        let header = header
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(GithubSignatureError::MissingHeader)?;
        let hex_digest = header
            .strip_prefix(PREFIX)
            .ok_or(GithubSignatureError::Malformed)?;
        let mut expected = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut expected)
            .map_err(|_| GithubSignatureError::Malformed)?;
        Ok(GithubBodyCheck {
            ctx: hmac::Context::with_key(&self.key),
            expected,
        })
    }
}

/// A GitHub signature check in progress: the MAC from the header and the HMAC of the body so
/// far.
pub struct GithubBodyCheck {
    ctx: hmac::Context,
    expected: [u8; 32],
}

impl std::fmt::Debug for GithubBodyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubBodyCheck").finish_non_exhaustive()
    }
}

impl GithubBodyCheck {
    /// The next bytes of the raw body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.ctx.update(chunk);
    }

    /// Compares the MAC of the whole body with the header's, in constant time.
    pub fn finish(self) -> Result<(), GithubSignatureError> {
        let tag = self.ctx.sign();
        if bool::from(tag.as_ref().ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(GithubSignatureError::Mismatch)
        }
    }
}

impl crate::http::webhook_body::BodyVerifier for GithubBodyCheck {
    type Error = GithubSignatureError;
    fn update(&mut self, chunk: &[u8]) {
        GithubBodyCheck::update(self, chunk);
    }
    fn finish(self) -> Result<(), GithubSignatureError> {
        GithubBodyCheck::finish(self)
    }
}

/// Computes the `X-Hub-Signature-256` value (`sha256=<hex>`) for a body (tests, simulators,
/// benchmarks).
pub fn sign(secret: &Secret, raw_body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let tag = hmac::sign(&key, raw_body);
    format!("{PREFIX}{}", hex::encode(tag.as_ref()))
}
