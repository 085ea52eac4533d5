//! Credential encryption at rest: AES-256-GCM (ring) with a key ring for rotation.
//!
//! * Each [`KeyRing::seal`] draws a fresh random 96-bit nonce from the system RNG. With random
//!   nonces one key should seal fewer than 2^32 values; rotate long before that.
//! * The additional authenticated data binds a ciphertext to its row (integration id and
//!   credential type), so a ciphertext copied into another row does not open.
//! * Every [`Sealed`] value records the id of the key that sealed it; [`KeyRing::open`] picks
//!   that key, and [`KeyRing::reseal_if_needed`] moves values to the active key.
//! * Nothing in this module prints key material: [`KeyRing`]'s `Debug` shows key ids only, and
//!   errors name key ids, never bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use infragpt_actors::Secret;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::VaultConfig;

/// Length of an AES-256 key in bytes.
pub(crate) const KEY_LEN: usize = 32;
/// Key id used by [`KeyRing::dev_key_file`].
pub const DEV_KEY_ID: &str = "dev";
/// Domain separation for the AAD, versioned so the layout can change later.
const AAD_DOMAIN: &[u8] = b"infragpt-vault-v1";

/// Identifier of one key in the ring (stored next to each ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// Wraps a key id.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `vault` configuration: key id → base64 of 32 random bytes, plus the id used for new seals.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VaultKeysConfig {
    /// Every key that may have sealed a stored value.
    pub keys: BTreeMap<String, Secret>,
    /// Id of the key used to seal new values; must be one of `keys`.
    pub active: String,
}

impl VaultKeysConfig {
    /// The key ring settings of the `vault` section, or `None` when no keys are configured
    /// (then `vault.dev_key_file` applies).
    pub(crate) fn from_vault_config(vault: &VaultConfig) -> Option<Self> {
        if vault.keys.is_empty() {
            return None;
        }
        Some(Self {
            keys: vault.keys.clone(),
            active: vault.active_key.clone().unwrap_or_default(),
        })
    }
}

/// Why the vault refused a configuration or a value. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// `vault.keys` is empty.
    #[error("vault.keys is empty: configure at least one key")]
    NoKeys,
    /// A key id is empty or holds characters other than letters, digits, `-`, `_`, `.`.
    #[error("vault key id {0:?} is invalid (use letters, digits, '-', '_', '.')")]
    InvalidKeyId(String),
    /// A key is not valid base64.
    #[error("vault key {key_id} is not valid base64")]
    KeyNotBase64 {
        /// The offending key's id.
        key_id: String,
    },
    /// A key does not decode to 32 bytes.
    #[error("vault key {key_id} must decode to {KEY_LEN} bytes, got {actual}")]
    KeyLength {
        /// The offending key's id.
        key_id: String,
        /// The decoded length.
        actual: usize,
    },
    /// `vault.active` names no configured key.
    #[error("vault.active {0:?} is not one of the configured keys")]
    ActiveKeyMissing(String),
    /// A sealed value names a key the ring does not hold.
    #[error("no vault key with id {0}")]
    UnknownKeyId(KeyId),
    /// The value failed authentication: wrong key, wrong row (AAD), or tampered bytes.
    #[error("sealed value failed authentication (wrong key, wrong row or tampered)")]
    Decrypt,
    /// A stored nonce is not 12 bytes long.
    #[error("stored nonce must be {NONCE_LEN} bytes, got {0}")]
    BadNonceLength(usize),
    /// The decrypted value is not UTF-8 text.
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// Encryption failed (ring gives no further detail).
    #[error("encryption failed")]
    Encrypt,
    /// The development key file could not be read or written.
    #[error("vault key file {path}: {source}")]
    KeyFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The development key file is readable by group or others.
    #[error(
        "vault key file {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)"
    )]
    KeyFileTooOpen {
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The development key file does not hold a base64 32-byte key.
    #[error("vault key file {path} does not hold a base64 {KEY_LEN}-byte key")]
    KeyFileInvalid { path: PathBuf },
}

/// Binds a ciphertext to the row it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct CredentialAad<'a> {
    /// The integration the credential belongs to.
    pub integration_id: Uuid,
    /// The kind of credential (`bot_token`, `installation_token`, ...).
    pub credential_type: &'a str,
}

impl CredentialAad<'_> {
    fn to_bytes(self) -> Vec<u8> {
        // Fixed-length id, then a length-prefixed type: no two (id, type) pairs share bytes.
        let mut out = Vec::with_capacity(AAD_DOMAIN.len() + 16 + 4 + self.credential_type.len());
        out.extend_from_slice(AAD_DOMAIN);
        out.extend_from_slice(self.integration_id.as_bytes());
        let len = u32::try_from(self.credential_type.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.credential_type.as_bytes());
        out
    }
}

/// An encrypted value as stored: key id, nonce, and ciphertext with its 16-byte GCM tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Key that sealed the value.
    pub key_id: KeyId,
    /// The per-value random nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the authentication tag.
    pub ciphertext: Vec<u8>,
}

impl Sealed {
    /// Rebuilds a sealed value from stored columns (`key_id`, `nonce`, `ciphertext`),
    /// checking the nonce length.
    pub fn from_parts(
        key_id: impl Into<String>,
        nonce: &[u8],
        ciphertext: Vec<u8>,
    ) -> Result<Self, VaultError> {
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| VaultError::BadNonceLength(nonce.len()))?;
        Ok(Self {
            key_id: KeyId::new(key_id),
            nonce,
            ciphertext,
        })
    }
}

/// The vault's keys: every key that may have sealed a stored value, and the one used for new
/// seals.
pub struct KeyRing {
    keys: BTreeMap<KeyId, LessSafeKey>,
    active: KeyId,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl KeyRing {
    /// Builds the ring from configuration, validating every key (base64, 32 bytes) and that
    /// `active` names one of them.
    pub fn from_config(config: &VaultKeysConfig) -> Result<Self, VaultError> {
        if config.keys.is_empty() {
            return Err(VaultError::NoKeys);
        }
        let mut keys = BTreeMap::new();
        for (id, encoded) in &config.keys {
            validate_key_id(id)?;
            let bytes = STANDARD
                .decode(encoded.expose().trim())
                .map_err(|_| VaultError::KeyNotBase64 { key_id: id.clone() })?;
            keys.insert(KeyId::new(id.clone()), make_key(id, &bytes)?);
        }
        let active = KeyId::new(config.active.clone());
        if !keys.contains_key(&active) {
            return Err(VaultError::ActiveKeyMissing(config.active.clone()));
        }
        Ok(Self {
            keys,
            active,
            rng: SystemRandom::new(),
        })
    }

    /// A ring with one key read from `path`, for local development.
    ///
    /// On first use the file is created with mode 0600 and a random key (base64, one line).
    /// Afterwards it is read. A file that group or others can access is refused
    /// ([`VaultError::KeyFileTooOpen`]) rather than used, because a readable key file defeats
    /// encryption at rest. The key id is [`DEV_KEY_ID`].
    #[cfg(unix)]
    pub fn dev_key_file(path: &Path) -> Result<Self, VaultError> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

        let io_err = |source| VaultError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let rng = SystemRandom::new();

        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                let mut key = [0u8; KEY_LEN];
                rng.fill(&mut key).map_err(|_| VaultError::Random)?;
                let mut line = STANDARD.encode(key);
                line.push('\n');
                file.write_all(line.as_bytes()).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
                tracing::info!(path = %path.display(), "created development vault key file");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(e)),
        }

        let mode = std::fs::metadata(path)
            .map_err(io_err)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "vault key file is accessible to group or others; refusing it");
            return Err(VaultError::KeyFileTooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_err)?;
        let invalid = || VaultError::KeyFileInvalid {
            path: path.to_path_buf(),
        };
        let bytes = STANDARD.decode(text.trim()).map_err(|_| invalid())?;
        if bytes.len() != KEY_LEN {
            return Err(invalid());
        }
        let mut keys = BTreeMap::new();
        keys.insert(KeyId::new(DEV_KEY_ID), make_key(DEV_KEY_ID, &bytes)?);
        Ok(Self {
            keys,
            active: KeyId::new(DEV_KEY_ID),
            rng,
        })
    }

    /// Id of the key new values are sealed with.
    pub fn active_key_id(&self) -> &KeyId {
        &self.active
    }

    /// Ids of every key in the ring.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Encrypts `plaintext` with the active key and a fresh random nonce, bound to `aad`.
    pub fn seal(&self, aad: &CredentialAad<'_>, plaintext: &Secret) -> Result<Sealed, VaultError> {
        let key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| VaultError::UnknownKeyId(self.active.clone()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let mut buffer = plaintext.expose().as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.to_bytes()),
            &mut buffer,
        )
        .map_err(|_| VaultError::Encrypt)?;
        Ok(Sealed {
            key_id: self.active.clone(),
            nonce,
            ciphertext: buffer,
        })
    }

    /// Decrypts a sealed value with the key it names; fails if the key is unknown, the AAD
    /// differs from the one it was sealed with, or any byte was changed.
    pub fn open(&self, aad: &CredentialAad<'_>, sealed: &Sealed) -> Result<Secret, VaultError> {
        let key = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKeyId(sealed.key_id.clone()))?;
        let mut buffer = sealed.ciphertext.clone();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad.to_bytes()),
                &mut buffer,
            )
            .map_err(|_| VaultError::Decrypt)?;
        let text = std::str::from_utf8(plain).map_err(|_| VaultError::NotUtf8)?;
        Ok(Secret::new(text))
    }

    /// For key rotation: when `sealed` was made with a key other than the active one, opens it
    /// and seals it again with the active key (`Some(new value)` to store); otherwise `None`.
    pub fn reseal_if_needed(
        &self,
        aad: &CredentialAad<'_>,
        sealed: &Sealed,
    ) -> Result<Option<Sealed>, VaultError> {
        if sealed.key_id == self.active {
            return Ok(None);
        }
        let plaintext = self.open(aad, sealed)?;
        self.seal(aad, &plaintext).map(Some)
    }
}

fn validate_key_id(id: &str) -> Result<(), VaultError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidKeyId(id.to_owned()))
    }
}

fn make_key(id: &str, bytes: &[u8]) -> Result<LessSafeKey, VaultError> {
    if bytes.len() != KEY_LEN {
        return Err(VaultError::KeyLength {
            key_id: id.to_owned(),
            actual: bytes.len(),
        });
    }
    let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| VaultError::KeyLength {
        key_id: id.to_owned(),
        actual: bytes.len(),
    })?;
    Ok(LessSafeKey::new(unbound))
}
