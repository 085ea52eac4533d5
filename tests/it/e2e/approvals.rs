//! Approvals end to end (issue 14): the dev agent asks for approval of "restart api in
//! staging" (RequestApproval on the backend's gRPC port), the thread gets the Block Kit
//! request, people click in the Slack simulator (Socket Mode `interactive` envelopes or the
//! signed `POST /slack/interactions`), the worker decides, updates the message and gives the
//! agent its decision turn. Every case checks the audit rows.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use infragpt::grpc::pb::backend::GetApprovalQuery;
use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt::testkit::slack_sim::{SimConfig, SimMessage};
use infragpt_actors::approvals::{APPROVE_ACTION, DENY_ACTION};
use serde_json::Value;

use super::conversations::{ACME, ALICE, Chat, OPS, service};
use crate::support::app::TestApp;
use crate::support::wait::{GUARD, eventually};

const BOB: &str = "U0BOB00001";

fn approvals_service() -> crate::support::app::TestAppBuilder {
    service(SimConfig::default()).configure(|c| {
        c.approvals.expiry_interval_ms = 100;
    })
}

fn has_buttons(m: &SimMessage) -> bool {
    m.blocks
        .as_ref()
        .is_some_and(|b| b.to_string().contains(APPROVE_ACTION))
}

fn approval_id_of(m: &SimMessage) -> String {
    let blocks = m.blocks.as_ref().expect("blocks");
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["action_id"] == APPROVE_ACTION)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
        .expect("approve button value")
}

/// The request message in `thread` (waits for it).
async fn request_message(app: &TestApp, thread: &str) -> SimMessage {
    let thread = thread.to_owned();
    app.sim()
        .wait_for(
            |s| {
                s.messages_in(ACME, OPS).iter().any(|m| {
                    m.bot_id.is_some()
                        && m.thread_ts.as_deref() == Some(thread.as_str())
                        && m.metadata.as_ref().is_some_and(|md| {
                            md["event_type"] == infragpt_actors::approvals::APPROVAL_EVENT_TYPE
                        })
                })
            },
            GUARD,
        )
        .await
        .expect("the approval request is posted");
    app.bot_replies(&thread)
        .into_iter()
        .find(|m| m.metadata.is_some() && m.blocks.is_some() && has_buttons(m))
        .expect("the request message with its buttons")
}

/// The message as the simulator has it now.
fn message(app: &TestApp, ts: &str) -> SimMessage {
    app.sim()
        .messages_in(ACME, OPS)
        .into_iter()
        .find(|m| m.ts == ts)
        .expect("message")
}

#[derive(diesel::QueryableByName, Debug)]
struct AuditRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    action: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    actor: String,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    details: Value,
}

/// The audit entries of an approval, oldest first.
async fn audit(app: &TestApp, id: &str) -> Vec<AuditRow> {
    let mut conn = app.pool().get().await.expect("conn");
    diesel::sql_query("SELECT action, actor, details FROM audit_log WHERE target = $1 ORDER BY id")
        .bind::<diesel::sql_types::Text, _>(id)
        .load(&mut conn)
        .await
        .expect("audit rows")
}

fn actions(rows: &[AuditRow]) -> Vec<String> {
    rows.iter().map(|r| r.action.clone()).collect()
}

#[derive(diesel::QueryableByName, Debug)]
struct StatusRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
}

async fn status(app: &TestApp, id: &str) -> String {
    let mut conn = app.pool().get().await.expect("conn");
    diesel::sql_query("SELECT status FROM approvals WHERE id = $1::uuid")
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result::<StatusRow>(&mut conn)
        .await
        .expect("approval")
        .status
}

/// Quiet: every envelope acknowledged and no inbox row unfinished.
async fn quiet(app: &TestApp) {
    app.sim()
        .wait_for(|s| s.deliveries().iter().all(|d| d.acked), GUARD)
        .await
        .expect("every envelope acknowledged");
    app.wait_idle().await;
}

/// Decision turns the agent received: `(decision, decided_by, reason)`.
fn decision_turns(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    app.agent()
        .requests()
        .into_iter()
        .filter_map(|r| {
            let context: Value = serde_json::from_str(&r.context).ok()?;
            let a = context.get("approval")?.clone();
            Some((
                a["decision"].as_str()?.to_owned(),
                a["decided_by"].as_str()?.to_owned(),
                a["reason"].as_str().map(str::to_owned),
            ))
        })
        .collect()
}

/// Alice asks for the restart; returns (thread, request message).
async fn ask(app: &TestApp) -> (String, SimMessage) {
    let thread = app.mention(ALICE, "please restart api in staging");
    let request = request_message(app, &thread).await;
    // The agent's own answer ("needs approval") follows the request.
    app.wait_replies(&thread, 2).await;
    (thread, request)
}

#[actix_rt::test]
async fn approve_over_socket_mode_and_the_same_click_twice() {
    let app = approvals_service().with_dev_agent().start().await;
    let (thread, request) = ask(&app).await;
    let id = approval_id_of(&request);
    assert_eq!(status(&app, &id).await, "pending");
    let text = request.blocks.as_ref().unwrap().to_string();
    assert!(text.contains("Restart api in staging"), "{text}");
    assert!(
        text.contains(&format!("<@{ALICE}>")),
        "who asked / decides: {text}"
    );

    eventually("the gauge counts the pending approval", async || {
        let text = app.metrics_text().await;
        if text.contains("infragpt_approvals_pending 1") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let click = app
        .sim()
        .click_button(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION)
        .expect("click");
    // The agent answers the decision turn in the thread.
    app.wait_replies(&thread, 3).await;
    // The same envelope delivered twice more: recorded once, decided once.
    app.sim()
        .redeliver(&click.envelope_id, 2)
        .expect("redeliver");
    quiet(&app).await;

    assert_eq!(status(&app, &id).await, "approved");
    eventually("the gauge drops", async || {
        let text = app.metrics_text().await;
        if text.contains("infragpt_approvals_pending 0") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let updated = message(&app, &request.ts);
    assert!(
        !has_buttons(&updated),
        "buttons removed: {:?}",
        updated.blocks
    );
    let shown = updated.blocks.as_ref().unwrap().to_string();
    assert!(
        shown.contains("Approved") && shown.contains(&format!("<@{ALICE}>")),
        "{shown}"
    );
    let replies = app.bot_replies(&thread);
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(
        replies[2].text.contains("Approved by") && replies[2].text.contains("Done"),
        "{}",
        replies[2].text
    );
    assert_eq!(
        decision_turns(&app),
        vec![("approved".to_owned(), ALICE.to_owned(), None)]
    );
    let rows = audit(&app, &id).await;
    assert_eq!(actions(&rows), ["approval.requested", "approval.approved"]);
    assert_eq!(rows[1].actor, format!("slack/{ALICE}"));
    assert_eq!(
        rows[0].details["action_key"]
            .as_str()
            .map(|k| k.starts_with("restart:api:staging:")),
        Some(true)
    );

    // Agents that poll: GetApproval.
    let mut client = BackendServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("connect");
    let got = client
        .get_approval(GetApprovalQuery {
            approval_id: id.clone(),
        })
        .await
        .expect("GetApproval")
        .into_inner()
        .approval
        .expect("approval");
    assert_eq!(got.status, "approved");
    assert_eq!(got.decided_by, ALICE);
    assert_eq!(got.message_ts, request.ts);
    let missing = client
        .get_approval(GetApprovalQuery {
            approval_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

#[actix_rt::test]
async fn deny_with_a_reason_refusals_and_a_double_click() {
    let app = approvals_service().with_dev_agent().start().await;
    let (thread, request) = ask(&app).await;
    let id = approval_id_of(&request);
    // A click prepared now, delivered after the decision: a double click.
    let late = app
        .sim()
        .click_payload(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION)
        .expect("late click");

    // Bob may not decide: ephemeral, nothing changes.
    app.sim()
        .click_button(ACME, OPS, &request.ts, BOB, APPROVE_ACTION)
        .expect("bob clicks");
    eventually("bob is told", async || {
        let told = app
            .sim()
            .ephemerals()
            .iter()
            .any(|e| e.user == BOB && e.text.contains("cannot decide"));
        if told {
            Ok(())
        } else {
            Err("no ephemeral yet")
        }
    })
    .await;
    assert_eq!(status(&app, &id).await, "pending");
    assert!(has_buttons(&message(&app, &request.ts)));

    // Alice denies with a reason: the modal, then its submission.
    app.sim()
        .click_button(ACME, OPS, &request.ts, ALICE, DENY_ACTION)
        .expect("deny click");
    app.sim()
        .wait_for(|s| !s.views().is_empty(), GUARD)
        .await
        .expect("the modal opens");
    let view = &app.sim().views()[0];
    assert_eq!(view.user, ALICE);
    assert_eq!(view.view["callback_id"], "approval_deny");
    app.sim()
        .submit_view(ACME, &[("reason", "change freeze until Monday")])
        .expect("submit");
    app.wait_replies(&thread, 3).await;

    // The double click, after the decision.
    app.sim().deliver_interaction(ACME, late.payload.clone());
    eventually("alice is told it is decided", async || {
        let told = app
            .sim()
            .ephemerals()
            .iter()
            .any(|e| e.user == ALICE && e.text.contains("denied already"));
        if told {
            Ok(())
        } else {
            Err("no ephemeral yet")
        }
    })
    .await;
    quiet(&app).await;

    assert_eq!(status(&app, &id).await, "denied");
    let shown = message(&app, &request.ts).blocks.unwrap().to_string();
    assert!(
        shown.contains("Denied") && shown.contains("change freeze"),
        "{shown}"
    );
    assert!(!shown.contains(APPROVE_ACTION));
    assert_eq!(
        decision_turns(&app),
        vec![(
            "denied".to_owned(),
            ALICE.to_owned(),
            Some("change freeze until Monday".to_owned())
        )]
    );
    let last = app.bot_replies(&thread).pop().unwrap();
    assert!(last.text.contains("did not do it"), "{}", last.text);
    let rows = audit(&app, &id).await;
    assert_eq!(
        actions(&rows),
        [
            "approval.requested",
            "approval.refused",
            "approval.denied",
            "approval.refused"
        ]
    );
    assert_eq!(rows[1].details["refusal"], "not_allowed");
    assert_eq!(rows[1].actor, format!("slack/{BOB}"));
    assert_eq!(rows[2].details["reason"], "change freeze until Monday");
    assert_eq!(rows[3].details["refusal"], "already_decided");

    // A revoked workspace: refused the same way, audited.
    let mut conn = app.pool().get().await.expect("conn");
    diesel::sql_query(
        "INSERT INTO slack_workspaces (team_id, status) VALUES ($1, 'inactive') \
         ON CONFLICT (team_id) DO UPDATE SET status = 'inactive'",
    )
    .bind::<diesel::sql_types::Text, _>(ACME)
    .execute(&mut conn)
    .await
    .expect("revoke");
    let again = app
        .sim()
        .click_payload(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION);
    // The buttons are gone from the message: Slack would not let anyone click them.
    assert!(again.is_err());
    app.sim().deliver_interaction(ACME, {
        let mut p = late.payload.clone();
        p["actions"][0]["action_ts"] = Value::String("1999999999.000001".into());
        p
    });
    eventually("refused for the workspace", async || {
        let rows = audit(&app, &id).await;
        match rows.last() {
            Some(r) if r.details["refusal"] == "workspace_inactive" => Ok(()),
            _ => Err(format!("{:?}", actions(&rows))),
        }
    })
    .await;
    app.stop().await;
}

#[actix_rt::test]
async fn clicks_over_http_are_signed_recorded_once_and_decided() {
    let app = approvals_service().with_dev_agent().start().await;
    let (thread, request) = ask(&app).await;
    let id = approval_id_of(&request);
    let click = app
        .sim()
        .click_payload(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION)
        .expect("click");
    let signed = app
        .sim()
        .signed_interaction_request(ACME, &click.payload)
        .expect("sign");
    let url = format!("{}/slack/interactions", app.base_url());
    let send = |signature: String| {
        app.http()
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", signed.timestamp.clone())
            .header("x-slack-signature", signature)
            .body(signed.body.clone())
            .send()
    };
    // A wrong signature is refused before anything is read.
    let forged = send("v0=".to_owned() + &"0".repeat(64))
        .await
        .expect("post");
    assert_eq!(forged.status(), 401);
    // The same click twice (Slack's retry): recorded once.
    for _ in 0..2 {
        let ok = send(signed.signature.clone()).await.expect("post");
        assert_eq!(ok.status(), 200);
    }
    app.wait_replies(&thread, 3).await;
    quiet(&app).await;
    assert_eq!(status(&app, &id).await, "approved");
    assert_eq!(decision_turns(&app).len(), 1);
    assert_eq!(
        actions(&audit(&app, &id).await),
        ["approval.requested", "approval.approved"]
    );
    app.stop().await;
}

#[actix_rt::test]
async fn an_expired_request_is_updated_and_a_late_click_refused() {
    let app = approvals_service().with_dev_agent().start().await;
    // A conversation, then a request of one second through POST /approvals.
    let thread = app.mention(ALICE, "hello");
    app.wait_replies(&thread, 1).await;
    quiet(&app).await;
    #[derive(diesel::QueryableByName)]
    struct IdRow {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let mut conn = app.pool().get().await.expect("conn");
    let conversation = diesel::sql_query("SELECT id FROM conversations WHERE thread_ts = $1")
        .bind::<diesel::sql_types::Text, _>(&thread)
        .get_result::<IdRow>(&mut conn)
        .await
        .expect("conversation")
        .id;
    let body = serde_json::json!({
        "conversation_id": conversation.to_string(),
        "action_key": "drop-cache",
        "summary": "Drop the cache",
        "details": "*All* keys",
        "risk": "low",
        "expires_in_secs": 1,
    });
    let url = format!("{}/approvals", app.base_url());
    let answer: Value = app
        .http()
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = answer["approval"]["id"].as_str().expect("id").to_owned();
    // The same key again: the same approval, one message.
    let again: Value = app
        .http()
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(again["approval"]["id"], answer["approval"]["id"]);
    let request = request_message(&app, &thread).await;
    let late = app
        .sim()
        .click_payload(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION)
        .expect("click");
    eventually("expired", async || {
        let s = status(&app, &id).await;
        if s == "expired" { Ok(()) } else { Err(s) }
    })
    .await;
    app.sim()
        .wait_for(
            |s| {
                s.messages_in(ACME, OPS).iter().any(|m| {
                    m.ts == request.ts
                        && m.blocks
                            .as_ref()
                            .is_some_and(|b| b.to_string().contains("Expired"))
                })
            },
            GUARD,
        )
        .await
        .expect("the message says it expired");
    app.sim().deliver_interaction(ACME, late.payload);
    eventually("the late click is refused", async || {
        let told = app
            .sim()
            .ephemerals()
            .iter()
            .any(|e| e.user == ALICE && e.text.contains("expired"));
        if told {
            Ok(())
        } else {
            Err("no ephemeral yet")
        }
    })
    .await;
    quiet(&app).await;
    let rows = audit(&app, &id).await;
    assert_eq!(
        actions(&rows),
        ["approval.requested", "approval.expired", "approval.refused"]
    );
    assert_eq!(rows[1].actor, "system");
    assert_eq!(rows[2].details["refusal"], "already_decided");
    assert!(decision_turns(&app).is_empty());
    assert_eq!(
        app.bot_replies(&thread)
            .iter()
            .filter(|m| m.metadata.is_some() && m.blocks.is_some())
            .count(),
        1,
        "one request message"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_restart_between_the_click_and_the_agents_turn() {
    let mut app = approvals_service()
        .configure(|c| {
            c.actors.retry_budget = 1000;
            c.actors.backoff_base_ms = 50;
            c.actors.backoff_max_ms = 200;
        })
        .with_dev_agent()
        .start()
        .await;
    let (thread, request) = ask(&app).await;
    let id = approval_id_of(&request);
    // The agent goes away; the click is decided but its turn cannot be answered.
    app.stop_agent();
    app.sim()
        .click_button(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION)
        .expect("click");
    eventually("decided", async || {
        let s = status(&app, &id).await;
        if s == "approved" { Ok(()) } else { Err(s) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The service restarts (the event is still unfinished), then the agent comes back.
    app.stop_service().await;
    app.start_service().await;
    app.wait_connected(1).await;
    let config = app.dev_agent_config();
    app.start_agent(config);
    app.wait_replies(&thread, 3).await;
    quiet(&app).await;
    assert_eq!(
        decision_turns(&app),
        vec![("approved".to_owned(), ALICE.to_owned(), None)]
    );
    assert_eq!(app.bot_replies(&thread).len(), 3);
    assert_eq!(
        actions(&audit(&app, &id).await),
        ["approval.requested", "approval.approved"]
    );
    app.stop().await;
}

#[actix_rt::test]
async fn an_organization_admin_may_decide_for_the_author() {
    let app = approvals_service().with_dev_agent().start().await;
    // Bob is an org:admin of the organization Acme's workspace is installed for, matched by
    // the email Slack's users.info gives for him.
    let mut conn = app.pool().get().await.expect("conn");
    for sql in [
        "INSERT INTO organizations (clerk_id, name) VALUES ('org_acme', 'Acme')",
        "INSERT INTO users (clerk_id, email) VALUES ('user_bob', 'Bob@Acme.example')",
        "INSERT INTO organization_members (organization_clerk_id, user_clerk_id, role) \
         VALUES ('org_acme', 'user_bob', 'org:admin')",
    ] {
        diesel::sql_query(sql)
            .execute(&mut conn)
            .await
            .expect("seed identity");
    }
    diesel::sql_query(
        "INSERT INTO slack_workspaces (team_id, organization_id) \
         SELECT $1, id FROM organizations WHERE clerk_id = 'org_acme' \
         ON CONFLICT (team_id) DO UPDATE SET organization_id = EXCLUDED.organization_id",
    )
    .bind::<diesel::sql_types::Text, _>(ACME)
    .execute(&mut conn)
    .await
    .expect("link the workspace");

    let (thread, request) = ask(&app).await;
    let id = approval_id_of(&request);
    app.sim()
        .click_button(ACME, OPS, &request.ts, BOB, APPROVE_ACTION)
        .expect("bob clicks");
    app.wait_replies(&thread, 3).await;
    quiet(&app).await;
    assert_eq!(status(&app, &id).await, "approved");
    assert_eq!(
        decision_turns(&app),
        vec![("approved".to_owned(), BOB.to_owned(), None)]
    );
    assert!(app.sim().ephemerals().is_empty());
    let rows = audit(&app, &id).await;
    assert_eq!(actions(&rows), ["approval.requested", "approval.approved"]);
    assert_eq!(rows[1].actor, format!("slack/{BOB}"));
    app.stop().await;
}

#[actix_rt::test]
async fn the_agent_calls_are_authenticated_like_send_reply() {
    let app = approvals_service()
        .configure(|c| {
            c.agent.reply_token = Some(infragpt_actors::Secret::new("approve-token"));
            c.agent.reply_allowed_networks = Vec::new();
        })
        .start()
        .await;
    let unknown = serde_json::json!({
        "conversation_id": uuid::Uuid::new_v4().to_string(),
        "action_key": "k",
        "summary": "Do it",
    });
    let url = format!("{}/approvals", app.base_url());
    // No token, a wrong one: 401 before the body is looked at.
    for auth in [None, Some("Bearer nope")] {
        let mut req = app.http().post(&url).json(&unknown);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await.expect("post");
        assert_eq!(resp.status(), 401, "{auth:?}");
    }
    // The token: past authentication, the conversation is unknown (404), a bad field 400.
    let resp = app
        .http()
        .post(&url)
        .header("authorization", "Bearer approve-token")
        .json(&unknown)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 404);
    let mut bad = unknown.clone();
    bad["risk"] = "extreme".into();
    let resp = app
        .http()
        .post(&url)
        .header("authorization", "Bearer approve-token")
        .json(&bad)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["success"], false);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("risk"),
        "{body}"
    );

    // gRPC, both paths: UNAUTHENTICATED without the token.
    let endpoint = format!("http://{}", app.grpc_addr());
    let mut backend = BackendServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    let command = infragpt::grpc::pb::backend::RequestApprovalCommand {
        conversation_id: uuid::Uuid::new_v4().to_string(),
        action_key: "k".into(),
        summary: "Do it".into(),
        ..Default::default()
    };
    let refused = backend.request_approval(command.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut legacy =
        infragpt::grpc::pb::infragpt::infra_gpt_service_client::InfraGptServiceClient::connect(
            endpoint,
        )
        .await
        .expect("connect");
    let refused = legacy
        .get_approval(GetApprovalQuery {
            approval_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut call = tonic::Request::new(command);
    call.metadata_mut()
        .insert("authorization", "Bearer approve-token".parse().unwrap());
    let missing = legacy.request_approval(call).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    app.stop().await;
}

#[actix_rt::test]
async fn a_decision_whose_audit_entry_fails_is_not_made() {
    let app = approvals_service().with_dev_agent().start().await;
    let (_thread, request) = ask(&app).await;
    let id = approval_id_of(&request);
    crate::support::audit::refuse_audit(app.pool(), &["approval.approved"]).await;
    app.sim()
        .click_button(ACME, OPS, &request.ts, ALICE, APPROVE_ACTION)
        .expect("click");
    // The event is retried, then a dead letter: the decision never committed.
    eventually("the click is a dead letter", async || {
        let failed = app.count(infragpt_actors::inbox::EventStatus::Failed).await;
        if failed == 1 { Ok(()) } else { Err(failed) }
    })
    .await;
    assert_eq!(status(&app, &id).await, "pending");
    assert!(has_buttons(&message(&app, &request.ts)));
    assert!(decision_turns(&app).is_empty());
    assert_eq!(actions(&audit(&app, &id).await), ["approval.requested"]);
    app.stop().await;
}
