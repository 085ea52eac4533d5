//! Svix signature verification against the published Svix test vectors
//! (`tests/data/svix/`), with a clock fixed at each vector's timestamp.

use chrono::{DateTime, Duration, Utc};
use infragpt::identity::svix::{SvixError, SvixHeaders, SvixVerifier};
use infragpt_actors::Secret;
use serde_json::Value;

use crate::support::fixtures;

fn load(name: &str) -> Vec<Value> {
    serde_json::from_value(fixtures::json(&format!("svix/{name}")))
        .unwrap_or_else(|e| panic!("{name}: not an array: {e}"))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing: {v}"))
}

fn at(ts: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(ts, 0).expect("timestamp in range")
}

fn verifier(secret: &str) -> SvixVerifier {
    SvixVerifier::new(&Secret::new(secret)).expect("valid secret")
}

#[test]
fn every_valid_vector_verifies() {
    let vectors = load("vectors.json");
    assert_eq!(vectors.len(), 2, "expected both svix vectors");
    for v in &vectors {
        let ts = v["timestamp"].as_i64().expect("timestamp");
        let verifier = verifier(s(v, "secret"));
        let headers = &v["headers"];
        let h = SvixHeaders::new(
            s(headers, "svix-id"),
            s(headers, "svix-timestamp"),
            s(headers, "svix-signature"),
        );
        verifier
            .verify(&h, s(v, "payload").as_bytes(), at(ts))
            .unwrap_or_else(|e| panic!("{}: {e}", s(v, "name")));
        // Our signer produces the same header value.
        assert_eq!(
            verifier.sign(s(v, "msg_id"), ts, s(v, "payload").as_bytes()),
            s(v, "signature"),
            "{}",
            s(v, "name")
        );
    }
}

#[test]
fn every_invalid_vector_gives_the_expected_verdict() {
    let base = load("vectors.json");
    let cases = load("vectors-invalid.json");
    assert_eq!(cases.len(), 6);
    let mut valid_seen = 0;
    for case in &cases {
        let base_name = s(case, "base_vector");
        let v = base
            .iter()
            .find(|b| s(b, "name") == base_name)
            .unwrap_or_else(|| panic!("no base vector {base_name}"));
        let ts = v["timestamp"].as_i64().expect("timestamp");
        let h = SvixHeaders::new(
            s(v, "msg_id"),
            s(&v["headers"], "svix-timestamp"),
            s(case, "signature_header"),
        );
        let result = verifier(s(v, "secret")).verify(&h, s(v, "payload").as_bytes(), at(ts));
        let expect_valid = case["expect_valid"].as_bool().expect("expect_valid");
        if expect_valid {
            valid_seen += 1;
            assert_eq!(result, Ok(()), "{}", s(case, "name"));
        } else {
            assert_eq!(
                result,
                Err(SvixError::SignatureMismatch),
                "{}",
                s(case, "name")
            );
        }
    }
    assert_eq!(valid_seen, 1, "the multi-signature case must pass");
}

#[test]
fn large_payload_vectors_verify() {
    let vectors = load("vectors-large-payload.json");
    assert_eq!(vectors.len(), 3);
    for v in &vectors {
        let rep = &v["payload_repeat"];
        let count = usize::try_from(rep["count"].as_u64().expect("count")).expect("fits");
        let payload = s(rep, "char").repeat(count);
        let ts = v["timestamp"].as_i64().expect("timestamp");
        let ts_text = ts.to_string();
        let h = SvixHeaders::new(s(v, "msg_id"), &ts_text, s(v, "signature"));
        let verifier = verifier(s(v, "secret"));
        assert_eq!(
            verifier.verify(&h, payload.as_bytes(), at(ts)),
            Ok(()),
            "{}",
            s(v, "name")
        );
        // One byte less must not verify.
        assert_eq!(
            verifier.verify(&h, &payload.as_bytes()[1..], at(ts)),
            Err(SvixError::SignatureMismatch),
            "{}",
            s(v, "name")
        );
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS: i64 = 1_614_265_330;
const BODY: &str = "{\"test\": 2432232314}";
const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn good_headers() -> (String, String, String) {
    (ID.to_owned(), TS.to_string(), SIG.to_owned())
}

#[test]
fn tampered_body_fails() {
    let (id, ts, sig) = good_headers();
    let h = SvixHeaders::new(&id, &ts, &sig);
    assert_eq!(
        verifier(SECRET).verify(&h, b"{\"test\": 2432232315}", at(TS)),
        Err(SvixError::SignatureMismatch)
    );
}

#[test]
fn tampered_id_or_timestamp_fails() {
    let (_, ts, sig) = good_headers();
    let h = SvixHeaders::new("msg_other", &ts, &sig);
    assert_eq!(
        verifier(SECRET).verify(&h, BODY.as_bytes(), at(TS)),
        Err(SvixError::SignatureMismatch)
    );
    let ts2 = (TS + 1).to_string();
    let h = SvixHeaders::new(ID, &ts2, &sig);
    assert_eq!(
        verifier(SECRET).verify(&h, BODY.as_bytes(), at(TS)),
        Err(SvixError::SignatureMismatch)
    );
}

#[test]
fn wrong_secret_fails() {
    let (id, ts, sig) = good_headers();
    let h = SvixHeaders::new(&id, &ts, &sig);
    assert_eq!(
        verifier("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").verify(&h, BODY.as_bytes(), at(TS)),
        Err(SvixError::SignatureMismatch)
    );
}

#[test]
fn stale_and_future_timestamps_fail_at_the_boundary() {
    let (id, ts, sig) = good_headers();
    let h = SvixHeaders::new(&id, &ts, &sig);
    let v = verifier(SECRET);
    let t = at(TS);
    // Exactly 5 minutes either way still passes.
    assert_eq!(
        v.verify(&h, BODY.as_bytes(), t + Duration::seconds(300)),
        Ok(())
    );
    assert_eq!(
        v.verify(&h, BODY.as_bytes(), t - Duration::seconds(300)),
        Ok(())
    );
    assert_eq!(
        v.verify(&h, BODY.as_bytes(), t + Duration::seconds(301)),
        Err(SvixError::TimestampTooOld { age_seconds: 301 })
    );
    assert_eq!(
        v.verify(&h, BODY.as_bytes(), t - Duration::seconds(301)),
        Err(SvixError::TimestampInFuture { ahead_seconds: 301 })
    );
    // With the real clock these years-old vectors are stale.
    assert!(matches!(
        v.verify(&h, BODY.as_bytes(), Utc::now()),
        Err(SvixError::TimestampTooOld { .. })
    ));
}

#[test]
fn missing_or_bad_headers_fail() {
    let v = verifier(SECRET);
    let ts = TS.to_string();
    let t = at(TS);
    let cases = [
        (
            SvixHeaders {
                id: None,
                timestamp: Some(&ts),
                signature: Some(SIG),
            },
            SvixError::MissingHeader("svix-id"),
        ),
        (
            SvixHeaders {
                id: Some(ID),
                timestamp: None,
                signature: Some(SIG),
            },
            SvixError::MissingHeader("svix-timestamp"),
        ),
        (
            SvixHeaders {
                id: Some(ID),
                timestamp: Some(&ts),
                signature: None,
            },
            SvixError::MissingHeader("svix-signature"),
        ),
        (
            SvixHeaders {
                id: Some(""),
                timestamp: Some(&ts),
                signature: Some(SIG),
            },
            SvixError::MissingHeader("svix-id"),
        ),
        (
            SvixHeaders {
                id: Some(ID),
                timestamp: Some("yesterday"),
                signature: Some(SIG),
            },
            SvixError::InvalidTimestamp,
        ),
        (
            SvixHeaders {
                id: Some(ID),
                timestamp: Some(&ts),
                signature: Some("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
            },
            SvixError::NoSupportedSignature,
        ),
        (
            SvixHeaders {
                id: Some(ID),
                timestamp: Some(&ts),
                signature: Some("v1,%%%notbase64"),
            },
            SvixError::SignatureMismatch,
        ),
    ];
    for (headers, expected) in cases {
        assert_eq!(
            v.verify(&headers, BODY.as_bytes(), t),
            Err(expected.clone()),
            "{expected}"
        );
    }
}

#[test]
fn signature_of_other_version_is_ignored_but_v1_match_passes() {
    let header = format!("v2,AAAA {SIG} v1a,BBBB");
    let ts = TS.to_string();
    let h = SvixHeaders::new(ID, &ts, &header);
    assert_eq!(verifier(SECRET).verify(&h, BODY.as_bytes(), at(TS)), Ok(()));
}
