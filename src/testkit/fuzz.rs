//! The bodies of the fuzz targets (`tests/fuzz`, cargo fuzz) and of the test that replays
//! their saved corpora (`tests/it/fuzz_corpora.rs`): one function per target, calling the
//! service's own parsers and verifiers on arbitrary bytes. Each must return without panicking
//! (and without hanging) for every input; the properties they assert beyond that (a body
//! signed with the right key always verifies, a body fed in two chunks verifies like one,
//! a split answer fits Slack's size) panic when broken, which is what the fuzzer reports.
//!
//! Inputs that carry several fields (headers and a body) are split at newlines: the first
//! lines are the fields, the rest is the body, so the seeds stay readable payloads.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone as _, Utc};
use infragpt_actors::Secret;
use infragpt_actors::conversation::mrkdwn::from_markdown;
use infragpt_actors::conversation::reply::{MAX_MESSAGE_CHARS, split_message};
use infragpt_actors::slack_events::{self, DecideContext, Inbound, UserId};
use jsonwebtoken::DecodingKey;

use crate::github::normalize::normalize_bytes;
use crate::github::signature::{GithubSignatureVerifier, sign as github_sign};
use crate::github::webhook::Delivery;
use crate::identity::clerk_events::parse_event;
use crate::identity::jwt::{ClerkJwtConfig, ClerkJwtVerifier, JwksCache, parse_jwks, token_kid};
use crate::identity::svix::{SvixHeaders, SvixVerifier};
use crate::identity::webhook::event_kind;
use crate::slack::signature::{SlackSignatureVerifier, sign as slack_sign};
use crate::slack::socket::inbound_event;

/// A target's body: returns for every input, panics when a property breaks.
pub type Target = fn(&[u8]);

/// The targets, by name: the fuzz crate has one binary per entry, and the corpus of each is
/// `tests/fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("slack_envelope", slack_envelope),
    ("slack_signature", slack_signature),
    ("clerk_webhook", clerk_webhook),
    ("github_webhook", github_webhook),
    ("jwt", jwt),
    ("config", config),
    ("mrkdwn", mrkdwn),
];

/// "Now" of every clock in the targets (Unix seconds), so a run is reproducible.
pub const NOW: i64 = 1_700_000_000;

/// The first `n` newline-separated fields of `data` and the rest (missing fields are empty).
fn fields<const N: usize>(data: &[u8]) -> ([&[u8]; N], &[u8]) {
    let mut out = [&[][..]; N];
    let mut rest = data;
    for field in &mut out {
        match rest.iter().position(|&b| b == b'\n') {
            Some(at) => {
                *field = &rest[..at];
                rest = &rest[at + 1..];
            }
            None => {
                *field = rest;
                rest = &[];
            }
        }
    }
    (out, rest)
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(NOW, 0)
        .single()
        .expect("NOW is a valid time")
}

/// Slack envelopes: Socket Mode frames, Events API bodies (parsed and classified as the
/// transport does) and the turn decision over every event callback.
pub fn slack_envelope(data: &[u8]) {
    if let Some(frame) = text(data) {
        let _ = slack_events::parse_socket_frame(frame);
    }
    if let Ok(Inbound::EventCallback(cb)) = slack_events::parse_body(data) {
        let _ = slack_events::turn_id(&cb);
        for (monitored, in_thread) in [(false, false), (true, false), (false, true)] {
            let ctx = DecideContext {
                bot_user_id: Some(UserId::parse("U0BOT").expect("a valid user id")),
                channel_monitored: monitored,
                bot_in_thread: in_thread,
                ..DecideContext::default()
            };
            let _ = slack_events::decide(&cb, &ctx);
        }
        let _ = slack_events::decide(&cb, &DecideContext::default());
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = inbound_event(&value, None);
        let _ = inbound_event(&value, Some("fallback-id"));
    }
}

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// Slack request signatures. Input: flags byte, timestamp line, signature line, body. With
/// flag bit 0 the signature is replaced by the right one for the body (and must verify);
/// the body is also fed in two chunks, cut where the flags byte says, and must give the same
/// outcome as in one.
pub fn slack_signature(data: &[u8]) {
    static VERIFIER: OnceLock<SlackSignatureVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        SlackSignatureVerifier::with_clock(&Secret::new(SLACK_SECRET), Arc::new(|| NOW))
    });
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let ([ts, sig], body) = fields::<2>(data);
    let (Some(ts), Some(sig)) = (text(ts), text(sig)) else {
        return;
    };
    let signed;
    let sig = if flags & 1 == 1 {
        let Ok(at) = ts.trim().parse::<i64>() else {
            return;
        };
        signed = slack_sign(&Secret::new(SLACK_SECRET), at, body);
        signed.as_str()
    } else {
        sig
    };
    let whole = verifier.verify(Some(ts), Some(sig), body);
    let cut = usize::from(flags >> 1).min(body.len());
    let chunked = verifier.begin(Some(ts), Some(sig)).and_then(|mut check| {
        check.update(&body[..cut]);
        check.update(&body[cut..]);
        check.finish()
    });
    assert_eq!(
        whole.is_ok(),
        chunked.is_ok(),
        "chunking changed the outcome"
    );
    // The right signature always verifies when the timestamp is fresh and written as Slack
    // writes it (the MAC covers the header's text: "017…" signs differently from "17…").
    if flags & 1 == 1
        && ts
            .parse::<i64>()
            .is_ok_and(|t| ts == t.to_string() && (t - NOW).abs() <= 300)
    {
        assert!(
            whole.is_ok(),
            "a correctly signed body was refused: {whole:?}"
        );
    }
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        (crate::slack::signature::TIMESTAMP_HEADER, ts),
        (crate::slack::signature::SIGNATURE_HEADER, sig),
    ] {
        if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
            headers.insert(name, value);
        }
    }
    let _ = verifier.verify_headers(&headers, body);
}

const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Svix headers and Clerk events. Input: flags byte, `svix-id`, `svix-timestamp` and
/// `svix-signature` lines, body. With flag bit 0 a right `v1` signature is added to the
/// header (and must verify); then the body goes through the envelope check and the Clerk
/// event parser.
pub fn clerk_webhook(data: &[u8]) {
    static VERIFIER: OnceLock<SvixVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        SvixVerifier::new(&Secret::new(SVIX_SECRET)).expect("the fuzz secret is valid")
    });
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let ([id, ts, sig], body) = fields::<3>(data);
    let (Some(id), Some(ts), Some(sig)) = (text(id), text(ts), text(sig)) else {
        return;
    };
    let mut signature = sig.to_owned();
    let mut signed = false;
    if flags & 1 == 1
        && let Ok(at) = ts.trim().parse::<i64>()
    {
        signature = format!("{} {sig}", verifier.sign(id, at, body));
        // Svix signs the header texts; `sign` writes the timestamp canonically.
        signed = !id.trim().is_empty() && ts == at.to_string() && (at - NOW).abs() <= 300;
    }
    let headers = SvixHeaders::new(id, ts, &signature);
    let outcome = verifier.verify(&headers, body, now());
    if signed {
        assert!(
            outcome.is_ok(),
            "a correctly signed body was refused: {outcome:?}"
        );
    }
    let _ = verifier.verify(&SvixHeaders::default(), body, now());
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let _ = event_kind(&value);
    }
    let _ = parse_event(body);
}

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

/// GitHub signatures and normalization. Input: flags byte, `X-GitHub-Event` line,
/// `X-Hub-Signature-256` line, body. With flag bit 0 the right signature is used (and must
/// verify). The body then goes through the route's field extraction and the normalizer.
pub fn github_webhook(data: &[u8]) {
    static VERIFIER: OnceLock<GithubSignatureVerifier> = OnceLock::new();
    let secret = Secret::new(GITHUB_SECRET);
    let verifier = VERIFIER
        .get_or_init(|| GithubSignatureVerifier::new(&secret).expect("the fuzz secret is valid"));
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let ([event, sig], body) = fields::<2>(data);
    let (Some(event), Some(sig)) = (text(event), text(sig)) else {
        return;
    };
    let signed;
    let sig = if flags & 1 == 1 {
        signed = github_sign(&secret, body);
        signed.as_str()
    } else {
        sig
    };
    let outcome = verifier.verify(Some(sig), body);
    if flags & 1 == 1 {
        assert!(
            outcome.is_ok(),
            "a correctly signed body was refused: {outcome:?}"
        );
    }
    let _ = Delivery::parse(body);
    let _ = normalize_bytes(event, body);
}

/// Clerk session tokens: the header checks, the signature with a known RS256 key, the claim
/// checks on the input as a claims document, and the JWKS parser.
pub fn jwt(data: &[u8]) {
    static KEY: OnceLock<DecodingKey> = OnceLock::new();
    static VERIFIER: OnceLock<ClerkJwtVerifier> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        DecodingKey::from_rsa_pem(include_bytes!("../../tests/data/jwt-test-key-a.pub.pem"))
            .expect("the test key is a valid RSA public key")
    });
    let verifier = VERIFIER.get_or_init(|| {
        let url = url::Url::parse("http://127.0.0.1:9/.well-known/jwks.json").expect("a valid URL");
        // Never fetched: the targets only use verify_with_key.
        let jwks = JwksCache::new(url, reqwest::Client::new(), Default::default());
        let mut config = ClerkJwtConfig::new("https://clerk.example.com");
        config.authorized_parties = vec!["https://app.example.com".to_owned()];
        ClerkJwtVerifier::new(config, Arc::new(jwks))
    });
    if let Some(token) = text(data) {
        let _ = token_kid(token);
        let _ = verifier.verify_with_key(token, key, now());
    }
    let _ = verifier.check_claims_json(data, now());
    let _ = parse_jwks(data);
}

/// Configuration loading: `${VAR}` substitution, the YAML parse with its key paths, and the
/// validation, on arbitrary text (`FUZZ_*` variables are set, everything else is not).
pub fn config(data: &[u8]) {
    let Some(yaml) = text(data) else {
        return;
    };
    let _ = crate::config::load_str_with_env(yaml, "fuzz.yaml", |name| {
        name.starts_with("FUZZ_")
            .then(|| format!("value-of-{name}"))
    });
}

/// The Markdown → mrkdwn converter and the split into Slack-sized messages: every part
/// fits a message, and nothing but whitespace is lost.
pub fn mrkdwn(data: &[u8]) {
    let Some(markdown) = text(data) else {
        return;
    };
    let converted = from_markdown(markdown);
    for answer in [markdown, converted.as_str()] {
        let parts = split_message(answer);
        for part in &parts {
            assert!(
                part.chars().count() <= MAX_MESSAGE_CHARS,
                "a part of {} characters is over {MAX_MESSAGE_CHARS}",
                part.chars().count()
            );
        }
        let kept: usize = parts
            .iter()
            .map(|p| {
                p.chars()
                    .filter(|c| !c.is_whitespace() && *c != '`')
                    .count()
            })
            .sum();
        let given = answer
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '`')
            .count();
        assert!(kept >= given, "the split lost characters");
    }
}
