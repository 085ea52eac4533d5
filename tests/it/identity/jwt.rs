//! Clerk session token verification against a local JWKS server.
//!
//! The RSA keys in `tests/data/` are test-only keys generated for this suite (committed so
//! debug builds need not generate 2048-bit keys at run time).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use infragpt::identity::jwt::{
    ClerkJwtConfig, ClerkJwtVerifier, JwksCache, JwksCacheConfig, JwtError, OrgClaim,
};
use infragpt::identity::{ClerkOrgId, ClerkSessionId, ClerkUserId};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::identity::{ISSUER, JwksServer, KEY_A, KEY_B, PUB_A, jwks, sign_jwt as sign};

const NOW: i64 = 1_750_000_000;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("ts")
}

fn verifier_with(url: url::Url, config: ClerkJwtConfig, refetch: Duration) -> ClerkJwtVerifier {
    let cache = JwksCache::new(
        url,
        reqwest::Client::new(),
        JwksCacheConfig {
            min_refetch_interval: refetch,
            fetch_timeout: Duration::from_secs(5),
        },
    );
    ClerkJwtVerifier::new(config, Arc::new(cache))
}

fn base_claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "sid": "sess_2abc",
        "azp": "https://app.example.test",
        "exp": NOW + 60,
        "iat": NOW - 1,
        "nbf": NOW - 6,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().expect("object").remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

async fn setup() -> (JwksServer, ClerkJwtVerifier) {
    let server = JwksServer::start(jwks(&[(KEY_A, "a")])).await;
    let verifier = verifier_with(
        server.url.clone(),
        ClerkJwtConfig::new(ISSUER),
        Duration::from_secs(30),
    );
    (server, verifier)
}

#[tokio::test]
async fn valid_token_without_organization() {
    let (server, verifier) = setup().await;
    let token = sign(KEY_A, "a", &base_claims());
    let session = verifier.verify(&token, now()).await.expect("valid");
    assert_eq!(
        session.user_id,
        ClerkUserId::new("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S")
    );
    assert_eq!(session.session_id, ClerkSessionId::new("sess_2abc"));
    assert_eq!(session.organization, None);
    assert_eq!(session.expires_at.timestamp(), NOW + 60);
    // Second verification uses the cache.
    verifier.verify(&token, now()).await.expect("valid");
    assert_eq!(server.hits(), 1);
    assert_eq!(verifier.jwks().fetch_count(), 1);
    // Bearer header form.
    let header = format!("Bearer {token}");
    verifier
        .verify_bearer(Some(&header), now())
        .await
        .expect("bearer");
}

#[tokio::test]
async fn v2_organization_claims() {
    let (_server, verifier) = setup().await;
    let claims = with(
        with(base_claims(), "v", json!(2)),
        "o",
        json!({"id": "org_2g7np7", "rol": "admin", "slg": "acme", "per": "manage,read,"}),
    );
    let session = verifier
        .verify(&sign(KEY_A, "a", &claims), now())
        .await
        .expect("valid");
    let org = session.organization.expect("org");
    assert_eq!(
        org,
        OrgClaim {
            id: ClerkOrgId::new("org_2g7np7"),
            role: "admin".into(),
            slug: Some("acme".into()),
            permissions: vec!["manage".into(), "read".into()],
        }
    );
    assert_eq!(org.normalized_role(), "admin");
}

#[tokio::test]
async fn v1_organization_claims() {
    let (_server, verifier) = setup().await;
    let mut claims = base_claims();
    claims["org_id"] = json!("org_v1");
    claims["org_role"] = json!("org:admin");
    claims["org_slug"] = json!("acme-v1");
    claims["org_permissions"] = json!(["org:sys_memberships:manage"]);
    let session = verifier
        .verify(&sign(KEY_A, "a", &claims), now())
        .await
        .expect("valid");
    let org = session.organization.expect("org");
    assert_eq!(org.id, ClerkOrgId::new("org_v1"));
    assert_eq!(org.role, "org:admin");
    assert_eq!(org.normalized_role(), "admin");
    assert_eq!(org.slug.as_deref(), Some("acme-v1"));
    assert_eq!(
        org.permissions,
        vec!["org:sys_memberships:manage".to_owned()]
    );
}

#[tokio::test]
async fn organization_without_role_is_rejected() {
    let (_server, verifier) = setup().await;
    let claims = with(base_claims(), "o", json!({"id": "org_1"}));
    assert_eq!(
        verifier.verify(&sign(KEY_A, "a", &claims), now()).await,
        Err(JwtError::MissingClaim("o.rol"))
    );
}

#[tokio::test]
async fn expired_and_leeway() {
    let (_server, verifier) = setup().await;
    // 3 s past exp is inside the default 5 s leeway.
    let slightly = with(base_claims(), "exp", json!(NOW - 3));
    verifier
        .verify(&sign(KEY_A, "a", &slightly), now())
        .await
        .expect("within leeway");
    let expired = with(base_claims(), "exp", json!(NOW - 6));
    let result = verifier.verify(&sign(KEY_A, "a", &expired), now()).await;
    assert!(
        matches!(result, Err(JwtError::Expired(at)) if at.timestamp() == NOW - 6),
        "{result:?}"
    );
    assert_eq!(result.expect_err("expired").reason(), "expired");
    let no_exp = with(base_claims(), "exp", Value::Null);
    assert_eq!(
        verifier.verify(&sign(KEY_A, "a", &no_exp), now()).await,
        Err(JwtError::MissingClaim("exp"))
    );
}

#[tokio::test]
async fn not_yet_valid() {
    let (_server, verifier) = setup().await;
    let nbf = with(base_claims(), "nbf", json!(NOW + 60));
    assert!(matches!(
        verifier.verify(&sign(KEY_A, "a", &nbf), now()).await,
        Err(JwtError::NotYetValid { claim: "nbf", .. })
    ));
    let iat = with(base_claims(), "iat", json!(NOW + 60));
    assert!(matches!(
        verifier.verify(&sign(KEY_A, "a", &iat), now()).await,
        Err(JwtError::NotYetValid { claim: "iat", .. })
    ));
    // Inside the leeway.
    let nbf_soon = with(base_claims(), "nbf", json!(NOW + 4));
    verifier
        .verify(&sign(KEY_A, "a", &nbf_soon), now())
        .await
        .expect("within leeway");
}

#[tokio::test]
async fn wrong_issuer() {
    let (_server, verifier) = setup().await;
    let claims = with(base_claims(), "iss", json!("https://evil.example.test"));
    assert_eq!(
        verifier.verify(&sign(KEY_A, "a", &claims), now()).await,
        Err(JwtError::BadIssuer("https://evil.example.test".into()))
    );
    let no_iss = with(base_claims(), "iss", Value::Null);
    assert_eq!(
        verifier.verify(&sign(KEY_A, "a", &no_iss), now()).await,
        Err(JwtError::MissingClaim("iss"))
    );
}

#[tokio::test]
async fn authorized_parties() {
    let server = JwksServer::start(jwks(&[(KEY_A, "a")])).await;
    let mut config = ClerkJwtConfig::new(ISSUER);
    config.authorized_parties = vec!["https://app.example.test".into()];
    let verifier = verifier_with(server.url.clone(), config, Duration::from_secs(30));

    verifier
        .verify(&sign(KEY_A, "a", &base_claims()), now())
        .await
        .expect("listed azp");
    let wrong = with(base_claims(), "azp", json!("https://evil.example.test"));
    assert_eq!(
        verifier.verify(&sign(KEY_A, "a", &wrong), now()).await,
        Err(JwtError::BadAzp("https://evil.example.test".into()))
    );
    // No azp claim: nothing to check.
    let none = with(base_claims(), "azp", Value::Null);
    verifier
        .verify(&sign(KEY_A, "a", &none), now())
        .await
        .expect("no azp");

    // Empty list = no azp check (documented).
    let (_s, open) = setup().await;
    open.verify(&sign(KEY_A, "a", &wrong), now())
        .await
        .expect("no azp check configured");
}

#[tokio::test]
async fn unknown_kid_then_rotation_fetches_new_key() {
    let server = JwksServer::start(jwks(&[(KEY_A, "a")])).await;
    let verifier = verifier_with(
        server.url.clone(),
        ClerkJwtConfig::new(ISSUER),
        Duration::ZERO,
    );
    verifier
        .verify(&sign(KEY_A, "a", &base_claims()), now())
        .await
        .expect("key a");
    assert_eq!(server.hits(), 1);

    // Clerk rotates: the JWKS now holds b (and a). A token signed with b triggers a refetch.
    server.serve(jwks(&[(KEY_A, "a"), (KEY_B, "b")]));
    verifier
        .verify(&sign(KEY_B, "b", &base_claims()), now())
        .await
        .expect("key b after refetch");
    assert_eq!(server.hits(), 2);

    // A kid Clerk never published: refetched once, then refused.
    assert_eq!(
        verifier
            .verify(&sign(KEY_B, "zzz", &base_claims()), now())
            .await,
        Err(JwtError::UnknownKid("zzz".into()))
    );
    assert_eq!(server.hits(), 3);

    // Key a retired: after the next refetch its tokens are refused.
    server.serve(jwks(&[(KEY_B, "b")]));
    let _ = verifier
        .verify(&sign(KEY_B, "other", &base_claims()), now())
        .await;
    assert_eq!(server.hits(), 4);
    assert_eq!(
        verifier
            .verify(&sign(KEY_A, "a", &base_claims()), now())
            .await,
        Err(JwtError::UnknownKid("a".into()))
    );
}

#[tokio::test]
async fn refetch_is_rate_limited() {
    let server = JwksServer::start(jwks(&[(KEY_A, "a")])).await;
    let verifier = verifier_with(
        server.url.clone(),
        ClerkJwtConfig::new(ISSUER),
        Duration::from_secs(3600),
    );
    verifier
        .verify(&sign(KEY_A, "a", &base_claims()), now())
        .await
        .expect("key a");
    server.serve(jwks(&[(KEY_A, "a"), (KEY_B, "b")]));
    for _ in 0..5 {
        assert_eq!(
            verifier
                .verify(&sign(KEY_B, "b", &base_claims()), now())
                .await,
            Err(JwtError::UnknownKid("b".into()))
        );
    }
    assert_eq!(server.hits(), 1, "no refetch inside the interval");
    // Known keys keep working meanwhile.
    verifier
        .verify(&sign(KEY_A, "a", &base_claims()), now())
        .await
        .expect("key a");
}

#[tokio::test]
async fn failed_fetch_gives_a_clear_error() {
    let server = JwksServer::start("oops".into()).await;
    server.set_status(500);
    let verifier = verifier_with(
        server.url.clone(),
        ClerkJwtConfig::new(ISSUER),
        Duration::from_secs(3600),
    );
    let token = sign(KEY_A, "a", &base_claims());
    match verifier.verify(&token, now()).await {
        Err(JwtError::JwksFetch(msg)) => assert!(msg.contains("500"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Within the interval the failure is reported without hammering the endpoint.
    assert!(matches!(
        verifier.verify(&token, now()).await,
        Err(JwtError::JwksUnavailable(msg)) if msg.contains("500")
    ));
    assert_eq!(server.hits(), 1);

    // Not JSON / no usable keys.
    let server = JwksServer::start("not json".into()).await;
    let v = verifier_with(
        server.url.clone(),
        ClerkJwtConfig::new(ISSUER),
        Duration::ZERO,
    );
    assert!(
        matches!(v.verify(&token, now()).await, Err(JwtError::JwksFetch(m)) if m.contains("JSON"))
    );
    server.serve(json!({"keys": [{"kty": "EC", "kid": "a", "crv": "P-256"}]}).to_string());
    assert!(
        matches!(v.verify(&token, now()).await, Err(JwtError::JwksFetch(m)) if m.contains("no usable"))
    );

    // Nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let v = verifier_with(
        format!("http://{addr}/jwks").parse().expect("url"),
        ClerkJwtConfig::new(ISSUER),
        Duration::ZERO,
    );
    assert!(matches!(
        v.verify(&token, now()).await,
        Err(JwtError::JwksFetch(_))
    ));
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let (server, verifier) = setup().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"a"}"#);
    let payload = URL_SAFE_NO_PAD.encode(base_claims().to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let result = verifier.verify(&token, now()).await;
        assert!(
            matches!(result, Err(JwtError::UnsupportedAlg(ref a)) if a == "none")
                || matches!(result, Err(JwtError::Malformed(_))),
            "{result:?}"
        );
    }
    assert_eq!(
        verifier
            .verify(&format!("{header}.{payload}."), now())
            .await,
        Err(JwtError::UnsupportedAlg("none".into()))
    );
    assert_eq!(server.hits(), 0, "rejected before any key lookup");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let (server, verifier) = setup().await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("a".into());
    let token = jsonwebtoken::encode(
        &header,
        &base_claims(),
        &EncodingKey::from_secret(PUB_A.as_bytes()),
    )
    .expect("encode");
    assert_eq!(
        verifier.verify(&token, now()).await,
        Err(JwtError::UnsupportedAlg("HS256".into()))
    );
    assert_eq!(server.hits(), 0);

    // Other asymmetric algorithms are refused too, even with the right key.
    let mut rs512 = Header::new(Algorithm::RS512);
    rs512.kid = Some("a".into());
    let token = jsonwebtoken::encode(
        &rs512,
        &base_claims(),
        &EncodingKey::from_rsa_pem(KEY_A.as_bytes()).expect("key"),
    )
    .expect("encode");
    assert_eq!(
        verifier.verify(&token, now()).await,
        Err(JwtError::UnsupportedAlg("RS512".into()))
    );
}

#[tokio::test]
async fn tampered_payload_and_wrong_key_fail_signature() {
    let (_server, verifier) = setup().await;
    let token = sign(KEY_A, "a", &base_claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let tampered = with(base_claims(), "sub", json!("user_attacker"));
    parts[1] = URL_SAFE_NO_PAD.encode(tampered.to_string());
    assert_eq!(
        verifier.verify(&parts.join("."), now()).await,
        Err(JwtError::BadSignature)
    );
    // Signed by key b but claiming kid a.
    assert_eq!(
        verifier
            .verify(&sign(KEY_B, "a", &base_claims()), now())
            .await,
        Err(JwtError::BadSignature)
    );
}

#[tokio::test]
async fn missing_and_malformed_tokens() {
    let (server, verifier) = setup().await;
    assert_eq!(verifier.verify("", now()).await, Err(JwtError::Missing));
    assert_eq!(
        verifier.verify_bearer(None, now()).await,
        Err(JwtError::Missing)
    );
    assert_eq!(
        verifier.verify_bearer(Some("Bearer "), now()).await,
        Err(JwtError::Missing)
    );
    assert_eq!(
        verifier.verify_bearer(Some("Basic abc"), now()).await,
        Err(JwtError::Missing)
    );
    for bad in ["abc", "a.b", "a.b.c.d", "!!!.b.c", "e30.e30.sig"] {
        assert!(
            matches!(
                verifier.verify(bad, now()).await,
                Err(JwtError::Malformed(_))
            ),
            "{bad}"
        );
    }
    // No kid in the header.
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &base_claims(),
        &EncodingKey::from_rsa_pem(KEY_A.as_bytes()).expect("key"),
    )
    .expect("encode");
    assert!(matches!(
        verifier.verify(&token, now()).await,
        Err(JwtError::Malformed(_))
    ));
    // No sub / sid.
    for claim in ["sub", "sid"] {
        let claims = with(base_claims(), claim, Value::Null);
        let result = verifier.verify(&sign(KEY_A, "a", &claims), now()).await;
        assert!(
            matches!(result, Err(JwtError::MissingClaim(c)) if c == claim),
            "{result:?}"
        );
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_a_new_kid_share_one_fetch() {
    let server = JwksServer::start(jwks(&[(KEY_A, "a"), (KEY_B, "b")])).await;
    let verifier = Arc::new(verifier_with(
        server.url.clone(),
        ClerkJwtConfig::new(ISSUER),
        Duration::ZERO,
    ));
    let token = sign(KEY_B, "b", &base_claims());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token, now()).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("valid");
    }
    assert_eq!(server.hits(), 1);
}
