//! Slack interactions (issue 14): the payloads from Slack's own SDK tests
//! (`tests/data/slack/interactions/`), and `POST /slack/interactions`: the signature on the
//! raw form body (valid, forged, stale, missing, no secret), recording once, and what is not
//! ours.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use infragpt::slack::events_http::EventsEndpoint;
use infragpt::slack::interactions_http::{self, payload_of};
use infragpt::slack::signature::sign;
use infragpt_actors::approvals::interaction::{Interaction, inbox_event, parse};
use infragpt_actors::approvals::{APPROVE_ACTION, DENY_CALLBACK, Decision};
use infragpt_actors::inbox::InboundEvents;
use infragpt_actors::testing::{MemoryInbox, RecordingHandler};
use infragpt_actors::{Cluster, ClusterConfig, HealthRegistry, Metrics, Secret, StreamSpec};
use infragpt_actors::{kinds, sources};
use serde_json::{Value, json};

use crate::support::fixtures;
use crate::support::wait::eventually;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const APPROVAL: &str = "6f1c1a52-35d1-4d0b-8a35-0b1f1b1f1b1f";

fn block_actions() -> Value {
    fixtures::json("slack/interactions/block_actions.button.json")
}

fn view_submission() -> Value {
    fixtures::json("slack/interactions/view_submission.modal.json")
}

/// The documented click, on one of our buttons.
fn our_click() -> Value {
    let mut p = block_actions();
    p["actions"][0]["action_id"] = json!(APPROVE_ACTION);
    p["actions"][0]["value"] = json!(APPROVAL);
    p
}

#[actix_rt::test]
async fn the_documented_payloads_read() {
    // As documented: other apps' buttons and views are not ours (acknowledged, not recorded).
    assert!(inbox_event(&block_actions()).unwrap().is_none());
    assert!(inbox_event(&view_submission()).unwrap().is_none());

    // The same click on our Approve button.
    let click = parse(&our_click()).unwrap();
    match &click {
        Interaction::Click {
            team,
            user,
            action,
            trigger_id,
            channel,
            message_ts,
            action_ts,
            ..
        } => {
            assert_eq!(team.as_str(), "T111");
            assert_eq!(user.as_str(), "W111");
            assert_eq!(*action, Decision::Approve);
            assert_eq!(trigger_id.as_deref(), Some("111.222.valid"));
            assert_eq!(channel.as_str(), "C111");
            assert_eq!(message_ts.as_str(), "111.222");
            assert_eq!(action_ts, "1596530385.194939");
        }
        other => panic!("{other:?}"),
    }
    // No thread_ts in the container: the message is its own thread.
    assert_eq!(click.thread().to_string(), "T111/C111/111.222");
    assert_eq!(
        click.source_id(),
        "block_actions:T111:W111:approval_approve:1596530385.194939"
    );
    let event = inbox_event(&our_click()).unwrap().unwrap();
    assert_eq!(event.source, sources::SLACK);
    assert_eq!(event.kind, "block_actions");
    assert_eq!(event.routing_key.0, "T111/C111/111.222");

    // The documented submission, as our deny modal's.
    let mut submitted = view_submission();
    submitted["view"]["callback_id"] = json!(DENY_CALLBACK);
    submitted["view"]["private_metadata"] =
        json!(json!({"approval_id": APPROVAL, "thread": "T111/C111/111.222"}).to_string());
    submitted["view"]["state"]["values"] =
        json!({"reason": {"reason": {"type": "plain_text_input", "value": "not today"}}});
    let s = parse(&submitted).unwrap();
    match &s {
        Interaction::DenySubmitted { reason, user, .. } => {
            assert_eq!(reason.as_deref(), Some("not today"));
            assert_eq!(user.as_str(), "W111");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.source_id(),
        "view_submission:T111:V111:1596530361.3wRYuk3R"
    );
    // A private_metadata naming another workspace's thread is refused.
    submitted["view"]["private_metadata"] =
        json!(json!({"approval_id": APPROVAL, "thread": "T999/C111/111.222"}).to_string());
    assert!(parse(&submitted).is_err());
}

fn form(payload: &Value) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn signed(body: &str, ts: i64, secret: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/slack/interactions")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .insert_header(("x-slack-request-timestamp", ts.to_string()))
        .insert_header((
            "x-slack-signature",
            sign(&Secret::new(secret), ts, body.as_bytes()),
        ))
        .set_payload(body.to_owned())
}

fn cluster() -> (Cluster, Arc<RecordingHandler>, Arc<MemoryInbox>) {
    let inbox = MemoryInbox::new();
    let cluster = Cluster::start(
        ClusterConfig::default(),
        inbox.clone(),
        HealthRegistry::new(),
        Metrics::new().unwrap(),
    )
    .unwrap();
    let handler = RecordingHandler::new();
    cluster
        .register_stream(StreamSpec {
            name: "conversations".into(),
            kind: kinds::CONVERSATION_THREAD,
            source: sources::SLACK,
            handler: handler.clone(),
        })
        .unwrap();
    (cluster, handler, inbox)
}

macro_rules! app {
    ($endpoint:expr) => {{
        let ep: Arc<EventsEndpoint> = $endpoint;
        test::init_service(
            App::new()
                .app_data(infragpt::error::json_config())
                .configure(move |cfg: &mut web::ServiceConfig| {
                    interactions_http::configure(cfg, ep.clone())
                }),
        )
        .await
    }};
}

#[actix_rt::test]
async fn signed_form_bodies_are_verified_then_recorded_once() {
    let (cluster, handler, inbox) = cluster();
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(SECRET)),
        cluster.clone()
    )));
    let body = form(&our_click());
    assert_eq!(payload_of(body.as_bytes()).unwrap(), our_click());

    // Forged, stale, missing: 401 and nothing recorded.
    let forged =
        test::call_service(&app, signed(&body, now(), "not-the-secret").to_request()).await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let stale = test::call_service(&app, signed(&body, now() - 600, SECRET).to_request()).await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    let bare = test::TestRequest::post()
        .uri("/slack/interactions")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(body.clone())
        .to_request();
    assert_eq!(
        test::call_service(&app, bare).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A body changed after signing.
    let tampered = signed(&body, now(), SECRET)
        .set_payload(body.replace("W111", "W666"))
        .to_request();
    assert_eq!(
        test::call_service(&app, tampered).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Valid: recorded; the same click again (a retry): nothing new.
    for _ in 0..2 {
        let ok = test::call_service(&app, signed(&body, now(), SECRET).to_request()).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
    eventually("the click is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    let event = &handler.handled()[0];
    assert_eq!(
        event.source_id,
        "block_actions:T111:W111:approval_approve:1596530385.194939"
    );
    assert_eq!(event.routing_key.0, "T111/C111/111.222");
    let total: i64 = inbox
        .count_by_status()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 1);

    // Other apps' interactions: 200, not recorded. Not a form with a payload: 400.
    let theirs = form(&block_actions());
    let resp = test::call_service(&app, signed(&theirs, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = test::call_service(&app, signed("nothing=here", now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(handler.total_calls(), 1);
}

#[actix_rt::test]
async fn without_a_signing_secret_every_interaction_is_refused() {
    let (cluster, handler, _) = cluster();
    let app = app!(Arc::new(EventsEndpoint::new(None, cluster)));
    let body = form(&our_click());
    let resp = test::call_service(&app, signed(&body, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(handler.total_calls(), 0);
}
