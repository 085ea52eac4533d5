//! Credential vault (AES-256-GCM key ring) and signed single-use state values.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use infragpt::crypto::state::{
    InMemoryNonceLedger, NonceLedger, StateClaims, StateError, StateNonce, StateSigner,
};
use infragpt::crypto::vault::{
    CredentialAad, DEV_KEY_ID, KeyId, KeyRing, Sealed, VaultError, VaultKeysConfig,
};
use infragpt_actors::Secret;
use uuid::Uuid;

const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];

fn config(keys: &[(&str, &[u8])], active: &str) -> VaultKeysConfig {
    VaultKeysConfig {
        keys: keys
            .iter()
            .map(|(id, k)| ((*id).to_owned(), Secret::new(STANDARD.encode(k))))
            .collect(),
        active: active.to_owned(),
    }
}

fn ring(keys: &[(&str, &[u8])], active: &str) -> KeyRing {
    KeyRing::from_config(&config(keys, active)).expect("valid ring")
}

fn aad(id: Uuid) -> CredentialAad<'static> {
    CredentialAad {
        integration_id: id,
        credential_type: "bot_token",
    }
}

const TOKEN: &str = "xoxb-1234-5678-abcdefghijklmnop";

#[test]
fn round_trip() {
    let ring = ring(&[("k1", &KEY_A)], "k1");
    let id = Uuid::new_v4();
    let sealed = ring.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");
    assert_eq!(sealed.key_id, KeyId::new("k1"));
    assert_eq!(
        sealed.ciphertext.len(),
        TOKEN.len() + 16,
        "ciphertext + GCM tag"
    );
    assert!(!sealed.ciphertext.windows(4).any(|w| w == b"xoxb"));
    assert_eq!(ring.open(&aad(id), &sealed).expect("open").expose(), TOKEN);

    // Empty secrets round-trip too.
    let empty = ring.seal(&aad(id), &Secret::new("")).expect("seal");
    assert_eq!(ring.open(&aad(id), &empty).expect("open").expose(), "");
}

#[test]
fn sealed_from_stored_columns() {
    let ring = ring(&[("k1", &KEY_A)], "k1");
    let id = Uuid::new_v4();
    let sealed = ring.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");
    let restored = Sealed::from_parts(
        sealed.key_id.as_str(),
        sealed.nonce.as_ref(),
        sealed.ciphertext.clone(),
    )
    .expect("12-byte nonce");
    assert_eq!(restored, sealed);
    assert_eq!(
        ring.open(&aad(id), &restored).expect("open").expose(),
        TOKEN
    );
    assert!(matches!(
        Sealed::from_parts("k1", &[0u8; 11], sealed.ciphertext.clone()),
        Err(VaultError::BadNonceLength(11))
    ));
}

#[test]
fn each_seal_uses_a_fresh_nonce() {
    let ring = ring(&[("k1", &KEY_A)], "k1");
    let id = Uuid::new_v4();
    let a = ring.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");
    let b = ring.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn tampering_is_detected() {
    let ring = ring(&[("k1", &KEY_A)], "k1");
    let id = Uuid::new_v4();
    let sealed = ring.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");

    for i in 0..sealed.ciphertext.len() {
        let mut bad = sealed.clone();
        bad.ciphertext[i] ^= 0x01;
        assert!(
            matches!(ring.open(&aad(id), &bad), Err(VaultError::Decrypt)),
            "byte {i}"
        );
    }
    let mut bad_nonce = sealed.clone();
    bad_nonce.nonce[0] ^= 0x80;
    assert!(matches!(
        ring.open(&aad(id), &bad_nonce),
        Err(VaultError::Decrypt)
    ));

    let mut truncated = sealed.clone();
    truncated.ciphertext.truncate(10);
    assert!(matches!(
        ring.open(&aad(id), &truncated),
        Err(VaultError::Decrypt)
    ));
}

#[test]
fn ciphertext_moved_to_another_row_fails() {
    let ring = ring(&[("k1", &KEY_A)], "k1");
    let id = Uuid::new_v4();
    let sealed = ring.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");
    assert!(matches!(
        ring.open(&aad(Uuid::new_v4()), &sealed),
        Err(VaultError::Decrypt)
    ));
    let other_type = CredentialAad {
        integration_id: id,
        credential_type: "refresh_token",
    };
    assert!(matches!(
        ring.open(&other_type, &sealed),
        Err(VaultError::Decrypt)
    ));
}

#[test]
fn wrong_or_unknown_key_fails() {
    let id = Uuid::new_v4();
    let ring_a = ring(&[("k1", &KEY_A)], "k1");
    let sealed = ring_a.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");

    // Same key id, different key bytes.
    let ring_b = ring(&[("k1", &KEY_B)], "k1");
    assert!(matches!(
        ring_b.open(&aad(id), &sealed),
        Err(VaultError::Decrypt)
    ));

    // A key id the ring does not have.
    let ring_c = ring(&[("k2", &KEY_A)], "k2");
    match ring_c.open(&aad(id), &sealed) {
        Err(VaultError::UnknownKeyId(k)) => assert_eq!(k.as_str(), "k1"),
        other => panic!("{other:?}"),
    }
    // Relabelling the ciphertext with another key id does not help either.
    let relabelled = Sealed {
        key_id: KeyId::new("k2"),
        ..sealed
    };
    assert_eq!(
        ring_c
            .open(&aad(id), &relabelled)
            .expect("same key bytes")
            .expose(),
        TOKEN,
        "the key id only selects the key; the key bytes are what authenticate"
    );
}

#[test]
fn rotation_between_two_keys() {
    let id = Uuid::new_v4();
    let old = ring(&[("2024", &KEY_A)], "2024");
    let sealed_old = old.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");

    let rotated = ring(&[("2024", &KEY_A), ("2025", &KEY_B)], "2025");
    assert_eq!(rotated.active_key_id(), &KeyId::new("2025"));
    // Old values still open.
    assert_eq!(
        rotated.open(&aad(id), &sealed_old).expect("open").expose(),
        TOKEN
    );
    // And are moved to the active key.
    let resealed = rotated
        .reseal_if_needed(&aad(id), &sealed_old)
        .expect("reseal")
        .expect("needed");
    assert_eq!(resealed.key_id, KeyId::new("2025"));
    assert_eq!(
        rotated.open(&aad(id), &resealed).expect("open").expose(),
        TOKEN
    );
    // Already on the active key: nothing to do.
    assert!(
        rotated
            .reseal_if_needed(&aad(id), &resealed)
            .expect("noop")
            .is_none()
    );
    // Once the old key is retired only resealed values open.
    let retired = ring(&[("2025", &KEY_B)], "2025");
    assert_eq!(
        retired.open(&aad(id), &resealed).expect("open").expose(),
        TOKEN
    );
    assert!(matches!(
        retired.open(&aad(id), &sealed_old),
        Err(VaultError::UnknownKeyId(_))
    ));
    // Resealing under the wrong AAD fails rather than laundering the value.
    assert!(matches!(
        rotated.reseal_if_needed(&aad(Uuid::new_v4()), &sealed_old),
        Err(VaultError::Decrypt)
    ));
}

#[test]
fn config_validation() {
    let short = [0u8; 31];
    let long = [0u8; 33];
    match KeyRing::from_config(&config(&[("k1", &short)], "k1")) {
        Err(VaultError::KeyLength { key_id, actual }) => {
            assert_eq!((key_id.as_str(), actual), ("k1", 31));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        KeyRing::from_config(&config(&[("k1", &long)], "k1")),
        Err(VaultError::KeyLength { actual: 33, .. })
    ));
    assert!(matches!(
        KeyRing::from_config(&config(&[], "k1")),
        Err(VaultError::NoKeys)
    ));
    assert!(matches!(
        KeyRing::from_config(&config(&[("k1", &KEY_A)], "k2")),
        Err(VaultError::ActiveKeyMissing(a)) if a == "k2"
    ));
    assert!(matches!(
        KeyRing::from_config(&config(&[("bad id", &KEY_A)], "bad id")),
        Err(VaultError::InvalidKeyId(_))
    ));
    let not_base64 = VaultKeysConfig {
        keys: BTreeMap::from([("k1".to_owned(), Secret::new("this is not base64!"))]),
        active: "k1".into(),
    };
    let err = KeyRing::from_config(&not_base64).expect_err("not base64");
    assert!(matches!(err, VaultError::KeyNotBase64 { .. }));
    // Errors name the key id, never the key.
    assert!(!err.to_string().contains("this is not base64"), "{err}");
    let err = KeyRing::from_config(&config(&[("k1", &short)], "k1")).expect_err("short");
    assert!(!err.to_string().contains(&STANDARD.encode(short)), "{err}");
}

#[test]
fn config_deserializes_from_yaml_like_json() {
    let json = serde_json::json!({
        "keys": {"k1": STANDARD.encode(KEY_A), "k2": STANDARD.encode(KEY_B)},
        "active": "k2"
    });
    let cfg: VaultKeysConfig = serde_json::from_value(json).expect("config");
    let ring = KeyRing::from_config(&cfg).expect("ring");
    assert_eq!(ring.key_ids().count(), 2);
    // The config's Debug does not print the keys either.
    let printed = format!("{cfg:?}");
    assert!(!printed.contains(&STANDARD.encode(KEY_A)), "{printed}");
}

#[test]
fn debug_shows_no_key_material() {
    let ring = ring(&[("k1", &KEY_A), ("k2", &KEY_B)], "k2");
    let printed = format!("{ring:?}");
    assert!(
        printed.contains("k1") && printed.contains("k2"),
        "{printed}"
    );
    for key in [KEY_A, KEY_B] {
        assert!(!printed.contains(&STANDARD.encode(key)), "{printed}");
        assert!(!printed.contains(&hex::encode(key)), "{printed}");
        assert!(!printed.contains("17, 17, 17"), "{printed}");
        assert!(!printed.contains("34, 34, 34"), "{printed}");
    }
}

#[cfg(unix)]
#[test]
fn dev_key_file_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested").join("vault.key");
    let first = KeyRing::dev_key_file(&path).expect("create");
    assert_eq!(first.active_key_id().as_str(), DEV_KEY_ID);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let id = Uuid::new_v4();
    let sealed = first.seal(&aad(id), &Secret::new(TOKEN)).expect("seal");

    // Second use reads the same key.
    let second = KeyRing::dev_key_file(&path).expect("reuse");
    assert_eq!(
        second.open(&aad(id), &sealed).expect("open").expose(),
        TOKEN
    );

    // Group/other-readable files are refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    match KeyRing::dev_key_file(&path) {
        Err(VaultError::KeyFileTooOpen { mode, .. }) => assert_eq!(mode, 0o644),
        other => panic!("{other:?}"),
    }

    // Garbage in the file is a clear error.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "short").expect("write");
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(matches!(
        KeyRing::dev_key_file(&bad),
        Err(VaultError::KeyFileInvalid { .. })
    ));
}

// ---------------------------------------------------------------- state

const STATE_KEY: &str = "0123456789abcdef0123456789abcdef-state-key";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).expect("ts")
}

fn claims() -> StateClaims {
    StateClaims::new(
        Uuid::from_u128(0x1234),
        "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "github",
        t0(),
        Duration::minutes(10),
    )
    .expect("claims")
}

fn signer() -> StateSigner {
    StateSigner::new(&Secret::new(STATE_KEY)).expect("signer")
}

#[test]
fn state_round_trip_is_url_safe() {
    let c = claims();
    let token = signer().issue(&c).expect("issue");
    assert!(
        token
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')),
        "{token}"
    );
    assert_eq!(signer().verify(&token, t0()).expect("verify"), c);
    assert_eq!(
        signer()
            .verify(&token, t0() + Duration::minutes(10) - Duration::seconds(1))
            .expect("verify"),
        c
    );
}

#[test]
fn nonces_are_random_128_bit() {
    let a = claims();
    let b = claims();
    assert_ne!(a.nonce, b.nonce);
    assert_eq!(a.nonce.as_bytes().len(), 16);
    assert_eq!(a.nonce.to_hex().len(), 32);
}

#[test]
fn state_expired() {
    let token = signer().issue(&claims()).expect("issue");
    assert!(matches!(
        signer().verify(&token, t0() + Duration::minutes(10)),
        Err(StateError::Expired { .. })
    ));
}

#[test]
fn state_forged_with_another_key() {
    let other =
        StateSigner::new(&Secret::new("another-key-that-is-at-least-32-bytes!!")).expect("signer");
    let token = other.issue(&claims()).expect("issue");
    assert!(matches!(
        signer().verify(&token, t0()),
        Err(StateError::Forged)
    ));
}

#[test]
fn state_tampered_payload_or_signature() {
    let token = signer().issue(&claims()).expect("issue");
    let (payload, sig) = token.split_once('.').expect("dot");

    // Change the organization in the payload and re-encode it: the MAC no longer matches.
    let mut json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    json["organization_id"] = serde_json::json!(Uuid::from_u128(0x9999));
    let forged_payload = URL_SAFE_NO_PAD.encode(json.to_string());
    assert!(matches!(
        signer().verify(&format!("{forged_payload}.{sig}"), t0()),
        Err(StateError::Forged)
    ));

    // Flip a signature character.
    let mut bad_sig = sig.to_owned().into_bytes();
    bad_sig[0] = if bad_sig[0] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).expect("ascii");
    assert!(matches!(
        signer().verify(&format!("{payload}.{bad_sig}"), t0()),
        Err(StateError::Forged)
    ));
}

#[test]
fn state_bad_format() {
    for bad in ["", "no-dot", ".sig", "a.b.c", "payload.%%%", "payload."] {
        let result = signer().verify(bad, t0());
        assert!(
            matches!(result, Err(StateError::BadFormat | StateError::Forged)),
            "{bad:?}: {result:?}"
        );
    }
    assert!(matches!(
        signer().verify("no-dot", t0()),
        Err(StateError::BadFormat)
    ));
    assert!(matches!(
        signer().verify("a.b.c", t0()),
        Err(StateError::BadFormat)
    ));
}

#[test]
fn state_key_must_be_long_enough() {
    assert!(matches!(
        StateSigner::new(&Secret::new("short")),
        Err(StateError::KeyTooShort)
    ));
    assert!(matches!(
        StateSigner::new(&Secret::new("")),
        Err(StateError::KeyTooShort)
    ));
    assert!(!format!("{:?}", signer()).contains(STATE_KEY));
}

#[tokio::test]
async fn state_replay_is_refused() {
    let ledger = InMemoryNonceLedger::new();
    let token = signer().issue(&claims()).expect("issue");
    let first = signer()
        .verify_and_consume(&token, t0(), &ledger)
        .await
        .expect("first use");
    assert_eq!(first.connector, "github");
    assert!(matches!(
        signer().verify_and_consume(&token, t0(), &ledger).await,
        Err(StateError::Replayed)
    ));
    // A forged or expired state never reaches the ledger.
    assert!(matches!(
        signer()
            .verify_and_consume(&token, t0() + Duration::hours(1), &ledger)
            .await,
        Err(StateError::Expired { .. })
    ));
    assert_eq!(ledger.len(), 1);
}

#[tokio::test]
async fn ledger_consume_and_prune() {
    let ledger = InMemoryNonceLedger::new();
    let n1 = StateNonce::from_bytes([1; 16]);
    let n2 = StateNonce::from_bytes([2; 16]);
    assert!(ledger.consume(&n1, t0()).await.expect("ok"));
    assert!(!ledger.consume(&n1, t0()).await.expect("ok"));
    assert!(
        ledger
            .consume(&n2, t0() + Duration::hours(1))
            .await
            .expect("ok")
    );
    assert_eq!(ledger.prune_expired(t0() + Duration::minutes(1)), 1);
    assert_eq!(ledger.len(), 1);
    assert!(!ledger.consume(&n2, t0()).await.expect("ok"));
}
