//! Signed, expiring, single-use `state` values for OAuth and GitHub App installation flows.
//!
//! Format: `base64url(JSON claims) "." base64url(HMAC-SHA256(key, first part))`, both without
//! padding, so the value can go into a URL as is. The MAC is checked (constant time) before the
//! payload is decoded. A verified state must also be consumed once through a [`NonceLedger`];
//! [`StateSigner::verify_and_consume`] does both.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use infragpt_actors::Secret;
use parking_lot::Mutex;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Minimum length of the HMAC key, in bytes.
pub(crate) const MIN_KEY_LEN: usize = 32;
/// Length of a state nonce, in bytes (128 bits).
pub(crate) const NONCE_LEN: usize = 16;

/// A random 128-bit single-use value carried in a state. Serialized as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateNonce([u8; NONCE_LEN]);

impl StateNonce {
    /// Draws a fresh nonce from the system RNG.
    pub fn random() -> Result<Self, StateError> {
        let mut bytes = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| StateError::Random)?;
        Ok(Self(bytes))
    }

    /// Wraps known bytes (tests, storage round-trips).
    pub fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    /// Lowercase hex form (as stored and serialized).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for StateNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for StateNonce {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for StateNonce {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; NONCE_LEN];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|_| serde::de::Error::custom("nonce must be 32 hex digits"))?;
        Ok(Self(bytes))
    }
}

/// What a state value vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateClaims {
    /// Organization that started the flow.
    pub organization_id: Uuid,
    /// User (Clerk user id) that started the flow.
    pub user_id: String,
    /// Connector being installed/authorized (`slack`, `github`, ...).
    pub connector: String,
    /// Single-use random value.
    pub nonce: StateNonce,
    /// The state is refused from this instant on.
    pub expires_at: DateTime<Utc>,
}

impl StateClaims {
    /// Claims with a fresh random nonce, valid for `ttl` from `now`.
    pub fn new(
        organization_id: Uuid,
        user_id: impl Into<String>,
        connector: impl Into<String>,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Self, StateError> {
        Ok(Self {
            organization_id,
            user_id: user_id.into(),
            connector: connector.into(),
            nonce: StateNonce::random()?,
            expires_at: now + ttl,
        })
    }
}

/// Why a state value was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The signing key is missing or shorter than [`MIN_KEY_LEN`] bytes.
    #[error("state signing key must be at least {MIN_KEY_LEN} bytes")]
    KeyTooShort,
    /// The value is not `payload.signature` in base64url.
    #[error("state has a bad format")]
    BadFormat,
    /// The signature does not match (forged or altered).
    #[error("state signature does not match")]
    Forged,
    /// The signature matched but the payload is not valid claims (signed by a different
    /// version of this code).
    #[error("state payload is not valid: {0}")]
    BadPayload(#[source] serde_json::Error),
    /// The state expired.
    #[error("state expired at {expires_at}")]
    Expired { expires_at: DateTime<Utc> },
    /// The state was already used.
    #[error("state was already used")]
    Replayed,
    /// The nonce ledger could not be consulted.
    #[error(transparent)]
    Ledger(#[from] NonceLedgerError),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// The claims could not be serialized.
    #[error("state claims could not be serialized: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Issues and verifies state values with one HMAC key.
pub struct StateSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for StateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSigner")
            .field("key", &infragpt_actors::secret::REDACTED)
            .finish()
    }
}

impl StateSigner {
    /// A signer keyed with `key` (at least 32 bytes).
    pub fn new(key: &Secret) -> Result<Self, StateError> {
        if key.expose().len() < MIN_KEY_LEN {
            return Err(StateError::KeyTooShort);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.expose().as_bytes()),
        })
    }

    /// Encodes and signs `claims`.
    pub fn issue(&self, claims: &StateClaims) -> Result<String, StateError> {
        let json = serde_json::to_vec(claims).map_err(StateError::Serialize)?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = hmac::sign(&self.key, payload.as_bytes());
        Ok(format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// Checks the signature (before decoding anything else) and the expiry. Does not consume
    /// the nonce; see [`StateSigner::verify_and_consume`].
    pub fn verify(&self, state: &str, now: DateTime<Utc>) -> Result<StateClaims, StateError> {
        let (payload, signature) = state.split_once('.').ok_or(StateError::BadFormat)?;
        if payload.is_empty() || signature.contains('.') {
            return Err(StateError::BadFormat);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| StateError::BadFormat)?;
        hmac::verify(&self.key, payload.as_bytes(), &signature).map_err(|_| StateError::Forged)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| StateError::BadFormat)?;
        let claims: StateClaims = serde_json::from_slice(&json).map_err(StateError::BadPayload)?;
        if now >= claims.expires_at {
            return Err(StateError::Expired {
                expires_at: claims.expires_at,
            });
        }
        Ok(claims)
    }

    /// [`StateSigner::verify`], then consumes the nonce: a second use gives
    /// [`StateError::Replayed`].
    pub async fn verify_and_consume(
        &self,
        state: &str,
        now: DateTime<Utc>,
        ledger: &dyn NonceLedger,
    ) -> Result<StateClaims, StateError> {
        let claims = self.verify(state, now)?;
        if ledger.consume(&claims.nonce, claims.expires_at).await? {
            Ok(claims)
        } else {
            Err(StateError::Replayed)
        }
    }
}

/// The nonce ledger could not answer.
#[derive(Debug, thiserror::Error)]
#[error("nonce ledger unavailable: {0}")]
pub struct NonceLedgerError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Remembers used state nonces so each state works once.
#[async_trait]
pub trait NonceLedger: Send + Sync {
    /// Marks `nonce` used. `true` the first time, `false` if it was already used.
    /// `expires_at` tells the ledger when the entry may be forgotten (the state is refused
    /// after that anyway).
    async fn consume(
        &self,
        nonce: &StateNonce,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, NonceLedgerError>;
}

/// An in-process [`NonceLedger`] (tests, single-instance development). Entries stay until
/// [`InMemoryNonceLedger::prune_expired`] removes them.
#[derive(Debug, Default)]
pub struct InMemoryNonceLedger {
    used: Mutex<HashMap<StateNonce, DateTime<Utc>>>,
}

impl InMemoryNonceLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets nonces whose state expired before `now`; returns how many were removed.
    pub fn prune_expired(&self, now: DateTime<Utc>) -> usize {
        let mut used = self.used.lock();
        let before = used.len();
        used.retain(|_, expires_at| *expires_at > now);
        before - used.len()
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.used.lock().len()
    }

    /// True when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.used.lock().is_empty()
    }
}

#[async_trait]
impl NonceLedger for InMemoryNonceLedger {
    async fn consume(
        &self,
        nonce: &StateNonce,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, NonceLedgerError> {
        let mut used = self.used.lock();
        if used.contains_key(nonce) {
            return Ok(false);
        }
        used.insert(*nonce, expires_at);
        Ok(true)
    }
}
