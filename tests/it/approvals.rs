//! Approvals in the store and the REST API (issue 14), against real PostgreSQL with real
//! session tokens: the organization's approvals (`GET /approvals?status=`,
//! `GET /approvals/{id}`, members read, other organizations' are 404), the same action key
//! answering the same approval, decisions and expiry as conditional updates with their audit
//! entries, and who counts as an organization admin (Clerk mirror, by the Slack user's
//! email).

use std::time::Duration;

use infragpt::approvals::store::PgApprovalStore;
use infragpt_actors::approvals::ApprovalStore;
use infragpt_actors::approvals::model::{Decision, NewApproval, Refusal, RiskLevel};
use infragpt_actors::ids::{ApprovalId, ConversationId, SlackUserId, TeamId, ThreadKey};
use infragpt_actors::inbox::EventRowId;
use serde_json::Value;

use crate::support::identity::audit_rows;
use crate::support::rest::{CHANNEL, ORG_A, Persona, RestEnv, TEAM_A, TEAM_B, THREAD, call};

fn new_approval(conversation: &str, team: &str, key: &str, expires: Duration) -> NewApproval {
    NewApproval {
        id: ApprovalId::new_random(),
        conversation_id: ConversationId(conversation.parse().expect("uuid")),
        key: ThreadKey::new(
            TeamId::parse(team).unwrap(),
            infragpt_actors::ids::ChannelId::parse(CHANNEL).unwrap(),
            infragpt_actors::ids::MessageTs::parse(THREAD).unwrap(),
        ),
        action_key: key.to_owned(),
        summary: format!("Do {key}"),
        details: String::new(),
        risk: RiskLevel::Medium,
        approvers: vec![],
        requested_by: Some(SlackUserId::parse("U0ALICE001").unwrap()),
        turn_ts: None,
        expires_in: expires,
    }
}

#[actix_rt::test]
async fn the_rest_api_lists_the_organizations_approvals_and_the_store_decides_once() {
    let env = RestEnv::new().await;
    let pool = env.app.pool().clone();
    let store = PgApprovalStore::new(pool.clone());
    let hour = Duration::from_secs(3600);
    let (a1, created) = store
        .create(&new_approval(&env.conversation_a, TEAM_A, "restart", hour))
        .await
        .expect("create");
    assert!(created);
    // The same key: the same approval, no second audit entry.
    let (again, created) = store
        .create(&new_approval(&env.conversation_a, TEAM_A, "restart", hour))
        .await
        .expect("create again");
    assert!(!created);
    assert_eq!(again.id, a1.id);
    let (a2, _) = store
        .create(&new_approval(&env.conversation_a, TEAM_A, "scale", hour))
        .await
        .unwrap();
    let (b1, _) = store
        .create(&new_approval(&env.conversation_b, TEAM_B, "restart", hour))
        .await
        .unwrap();

    // Decided once: the second decision changes nothing.
    let alice = SlackUserId::parse("U0ALICE001").unwrap();
    let decided = store
        .decide(a2.id, Decision::Deny, &alice, Some("no"), EventRowId(7))
        .await
        .unwrap()
        .expect("decided");
    assert_eq!(decided.reason.as_deref(), Some("no"));
    assert!(
        store
            .decide(a2.id, Decision::Approve, &alice, None, EventRowId(8))
            .await
            .unwrap()
            .is_none()
    );
    // A refusal is audited once per event.
    for _ in 0..2 {
        store
            .refuse(
                &decided,
                &alice,
                Refusal::AlreadyDecided(decided.status),
                EventRowId(8),
            )
            .await
            .unwrap();
    }

    let svc = {
        let shell = env
            .app
            .identity_shell(Some(env.app.jwt_verifier()))
            .with_routes(move |cfg| infragpt::approvals::configure(cfg, store.clone()));
        actix_web::test::init_service(infragpt::http::app(shell)).await
    };
    let member = Persona::Member.token(ORG_A);
    let (status, all) = call(&svc, "GET", "/approvals", Some(&member), None).await;
    assert_eq!(status, 200, "{all}");
    let ids: Vec<&str> = all["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "A's only: {all}");
    assert!(!ids.contains(&b1.id.to_string().as_str()));
    let (status, pending) = call(
        &svc,
        "GET",
        "/approvals?status=pending",
        Some(&member),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(pending["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(pending["approvals"][0]["id"], a1.id.to_string());
    assert_eq!(pending["approvals"][0]["status"], "pending");
    let (status, one) = call(
        &svc,
        "GET",
        &format!("/approvals/{}", a2.id),
        Some(&member),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["status"], "denied");
    assert_eq!(one["decided_by"], "U0ALICE001");
    // Another organization's, an unknown id, not a UUID: 404.
    for id in [
        b1.id.to_string(),
        uuid::Uuid::new_v4().to_string(),
        "nope".into(),
    ] {
        let (status, _) = call(
            &svc,
            "GET",
            &format!("/approvals/{id}"),
            Some(&member),
            None,
        )
        .await;
        assert_eq!(status, 404, "{id}");
    }
    let (status, _) = call(&svc, "GET", "/approvals?status=maybe", Some(&member), None).await;
    assert_eq!(status, 400);
    let (status, _) = call(&svc, "GET", "/approvals", None, None).await;
    assert_eq!(status, 401);
    let outsider = Persona::Outsider.token(ORG_A);
    let (status, _) = call(&svc, "GET", "/approvals", Some(&outsider), None).await;
    assert_eq!(status, 403);

    let mut audit: Vec<Value> = audit_rows(&pool)
        .await
        .into_iter()
        .filter(|r| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("approval."))
        })
        .collect();
    audit.sort_by_key(|r| r["id"].as_i64());
    let actions: Vec<&str> = audit
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "approval.requested",
            "approval.requested",
            "approval.requested",
            "approval.denied",
            "approval.refused"
        ],
        "{audit:?}"
    );
}

#[actix_rt::test]
async fn expiry_happens_once_and_admins_come_from_the_clerk_mirror() {
    let env = RestEnv::new().await;
    let store = PgApprovalStore::new(env.app.pool().clone());
    let (due, _) = store
        .create(&new_approval(
            &env.conversation_a,
            TEAM_A,
            "soon",
            Duration::from_millis(10),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.count_pending().await.unwrap(), 1);
    // Two sweeps at once (two replicas): the approval expires once.
    let (one, two) = tokio::join!(store.expire_due(10), store.expire_due(10));
    let total = one.unwrap().len() + two.unwrap().len();
    assert_eq!(total, 1);
    assert!(store.expire_due(10).await.unwrap().is_empty());
    assert_eq!(store.count_pending().await.unwrap(), 0);
    // A decision after expiry changes nothing.
    let alice = SlackUserId::parse("U0ALICE001").unwrap();
    assert!(
        store
            .decide(due.id, Decision::Approve, &alice, None, EventRowId(1))
            .await
            .unwrap()
            .is_none()
    );

    // Admins of the organization the workspace is installed for, by email (any case).
    let team_a = TeamId::parse(TEAM_A).unwrap();
    let team_b = TeamId::parse(TEAM_B).unwrap();
    assert!(
        store
            .is_org_admin(&team_a, "USER_ALICE@example.test")
            .await
            .unwrap()
    );
    assert!(
        store
            .is_org_admin(&team_a, "user_erin@example.test")
            .await
            .unwrap(),
        "legacy admin"
    );
    assert!(
        !store
            .is_org_admin(&team_a, "user_carol@example.test")
            .await
            .unwrap(),
        "member"
    );
    assert!(
        !store
            .is_org_admin(&team_a, "user_bob@example.test")
            .await
            .unwrap(),
        "B's admin"
    );
    assert!(
        store
            .is_org_admin(&team_b, "user_bob@example.test")
            .await
            .unwrap()
    );
    assert!(store.workspace_active(&team_a).await.unwrap());
    assert!(
        store
            .workspace_active(&TeamId::parse("T0UNKNOWN1").unwrap())
            .await
            .unwrap(),
        "the single-workspace token's team has no row"
    );
}
