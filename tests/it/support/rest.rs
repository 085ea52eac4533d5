//! The REST API as a browser front end sees it: the identity and integrations routes in one
//! in-process app, authenticated by real RS256 session tokens against the app's JWKS server,
//! with roles coming from the membership mirror. Used by the role matrices
//! (`identity::roles`, `integrations::roles`).
//!
//! Two organizations, seeded through the identity store as the Clerk webhooks would:
//!
//! | user | organization A | organization B |
//! |---|---|---|
//! | alice | `org:admin` | - |
//! | erin | `admin` (Clerk's legacy key) | - |
//! | carol | `org:member` (her tokens claim `org:admin`: the mirror wins) | - |
//! | dave | - (a live user, member of nothing) | - |
//! | bob | - | `org:admin` |
//!
//! Each organization has an active `fake` integration, installed through the real flow
//! (POST /integrations by its admin, then the callback with the state), metadata, a Slack
//! workspace (`TEAM_A`, `TEAM_B`) and one conversation in it with three messages.

use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::test;
use infragpt::app::integrations::IntegrationParts;
use infragpt::config::Config;
use infragpt::conversations::routes as conversation_routes;
use infragpt::conversations::store::OrgConversations;
use infragpt::identity::clerk_events::ClerkUser;
use infragpt::identity::store::{IdentityStore, MembershipUpsert, OrganizationUpsert};
use infragpt::identity::{ClerkMembershipId, ClerkOrgId, ClerkUserId};
use infragpt::integrations::connector::ConnectorRegistry;
use infragpt_actors::Secret;
use serde_json::{Value, json};

use super::app::TestApp;
use super::body_json;
use super::conversations::{AGENT, link_workspace, seed_conversation};
use super::identity::{KEY_A, KID_A, claims_v2, dump_table, sign_jwt};
use super::integrations::{FakeConnector, keyring, random_key};

pub const ORG_A: &str = "org_roles_a";
pub const ORG_B: &str = "org_roles_b";
pub const ALICE: &str = "user_alice";
pub const ERIN: &str = "user_erin";
pub const CAROL: &str = "user_carol";
pub const DAVE: &str = "user_dave";
pub const BOB: &str = "user_bob";

/// Organization A's and B's Slack workspaces, and the channel of their conversations.
pub const TEAM_A: &str = "T0ROLESA1";
pub const TEAM_B: &str = "T0ROLESB1";
pub const CHANNEL: &str = "C0ROLES01";
/// The thread of each organization's seeded conversation.
pub const THREAD: &str = "1700000000.000100";

/// The connector every organization has installed.
pub const FAKE: &str = "fake";
/// A connector nobody has installed yet (what `POST /integrations` asks for).
pub const FAKE2: &str = "fake2";

/// The message of a refusal for the role.
pub const NEEDS_ADMIN: &str = "this action needs the org:admin role";

/// The callers of the matrices, all with tokens naming organization A unless a row says
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    /// alice, `org:admin` of A.
    Admin,
    /// erin, legacy `admin` of A.
    LegacyAdmin,
    /// carol, `org:member` of A (token claims admin).
    Member,
    /// dave, no membership in A.
    Outsider,
}

impl Persona {
    /// Column of this persona in a matrix row (admin, legacy admin, member, outsider).
    pub fn column(self) -> usize {
        self as usize
    }

    pub fn user(self) -> &'static str {
        match self {
            Persona::Admin => ALICE,
            Persona::LegacyAdmin => ERIN,
            Persona::Member => CAROL,
            Persona::Outsider => DAVE,
        }
    }

    /// What the token claims: everybody claims to be an admin, so only the mirror decides.
    pub fn token(self, org: &str) -> String {
        sign_jwt(KEY_A, KID_A, &claims_v2(self.user(), org, "org:admin"))
    }
}

/// The seeded app, its integration parts and the fake connectors.
pub struct RestEnv {
    pub app: TestApp,
    pub parts: IntegrationParts,
    pub fake: Arc<FakeConnector>,
    pub fake2: Arc<FakeConnector>,
    pub slack: Arc<FakeConnector>,
    /// Our id of organization A.
    pub org_a: String,
    /// A's and B's `fake` integrations.
    pub integration_a: String,
    pub integration_b: String,
    /// A's and B's conversations.
    pub conversation_a: String,
    pub conversation_b: String,
}

/// Everything a request can change, plus what the connectors were asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    tables: Vec<(&'static str, Vec<String>)>,
    refreshes: [usize; 3],
    revokes: [usize; 3],
}

impl RestEnv {
    /// Seeds the identities, builds the app and installs `fake` for A and B.
    pub async fn new() -> RestEnv {
        let app = TestApp::builder().with_identity().build().await;
        seed_identities(app.identity_store()).await;
        let fake = Arc::new(FakeConnector {
            name: FAKE,
            ..FakeConnector::default()
        });
        let fake2 = Arc::new(FakeConnector {
            name: FAKE2,
            ..FakeConnector::default()
        });
        // Registered under "slack" so the historic Slack callback path reaches a connector.
        let slack = Arc::new(FakeConnector {
            name: "slack",
            ..FakeConnector::default()
        });
        let mut connectors = ConnectorRegistry::new();
        connectors.register(fake.clone());
        connectors.register(fake2.clone());
        connectors.register(slack.clone());
        let parts = IntegrationParts::build(
            app.pool().clone(),
            &Config::default(),
            app.cluster(),
            Arc::new(keyring(&[("a", &random_key())], "a")),
            &Secret::new("s".repeat(32)),
            Some(connectors),
        )
        .expect("integration parts");
        let env = RestEnv {
            app,
            parts,
            fake,
            fake2,
            slack,
            org_a: String::new(),
            integration_a: String::new(),
            integration_b: String::new(),
            conversation_a: String::new(),
            conversation_b: String::new(),
        };
        let svc = env.service().await;
        let mut installed = Vec::new();
        for (org, admin) in [(ORG_A, ALICE), (ORG_B, BOB)] {
            let token = sign_jwt(KEY_A, KID_A, &claims_v2(admin, org, "org:admin"));
            let (status, answer) = call(
                &svc,
                "POST",
                "/integrations",
                Some(&token),
                Some(json!({"connector_type": FAKE})),
            )
            .await;
            assert_eq!(status, 201, "{org}: initiate: {answer}");
            let id = answer["integration_id"].as_str().expect("id").to_owned();
            let state = state_of(answer["url"].as_str().expect("url"));
            let (status, answer) = call(
                &svc,
                "GET",
                &format!("/integrations/callback/{FAKE}?code={org}&state={state}"),
                None,
                None,
            )
            .await;
            assert_eq!(status, 200, "{org}: callback: {answer}");
            assert_eq!(answer["integration"]["status"], "active");
            let organization_id = answer["integration"]["organization_id"]
                .as_str()
                .expect("organization id")
                .to_owned();
            let (status, answer) = call(
                &svc,
                "PUT",
                "/identity/organization/metadata",
                Some(&token),
                Some(json!({"company_size": "1-10", "use_cases": ["monitoring"]})),
            )
            .await;
            assert_eq!(status, 200, "{org}: metadata: {answer}");
            installed.push((organization_id, id));
        }
        drop(svc);
        let [(org_a, integration_a), (org_b, integration_b)]: [(String, String); 2] =
            installed.try_into().expect("two organizations");
        let mut conversations = Vec::new();
        for (team, org) in [(TEAM_A, &org_a), (TEAM_B, &org_b)] {
            let pool = env.app.pool();
            link_workspace(pool, team, Some(org.parse().expect("organization id"))).await;
            let id = seed_conversation(
                pool,
                team,
                CHANNEL,
                THREAD,
                &[
                    (THREAD, "U0ROLESUS1", "why is the api slow?"),
                    ("1700000001.000100", AGENT, "the database is busy"),
                    ("1700000002.000100", "U0ROLESUS1", "thanks"),
                ],
            )
            .await;
            conversations.push(id.to_string());
        }
        let [conversation_a, conversation_b]: [String; 2] =
            conversations.try_into().expect("two conversations");
        RestEnv {
            org_a,
            integration_a,
            integration_b,
            conversation_a,
            conversation_b,
            ..env
        }
    }

    /// The identity, integrations and conversations routes in one in-process app.
    pub async fn service(
        &self,
    ) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>
    {
        let parts = self.parts.clone();
        let conversations = OrgConversations::new(self.app.pool().clone());
        let shell = self
            .app
            .identity_shell(Some(self.app.jwt_verifier()))
            .with_routes(move |cfg| {
                parts.configure(cfg);
                conversation_routes::configure(cfg, conversations.clone());
            });
        test::init_service(infragpt::http::app(shell)).await
    }

    /// Every table a REST call could write, every column, and the connector call counts.
    pub async fn snapshot(&self) -> Snapshot {
        let mut tables = Vec::new();
        for table in [
            "organizations",
            "organization_members",
            "organization_metadata",
            "users",
            "integrations",
            "integration_credentials",
            "oauth_nonces",
            "audit_log",
            "slack_workspaces",
            "conversations",
            "messages",
            "reply_intents",
            "inbound_events",
        ] {
            tables.push((table, dump_table(self.app.pool(), table).await));
        }
        let connectors = [&self.fake, &self.fake2, &self.slack];
        Snapshot {
            tables,
            refreshes: connectors.map(|c| c.refresh_count()),
            revokes: connectors.map(|c| c.revoke_count()),
        }
    }

    /// Changes a user's role in organization A the way a newer Clerk webhook would.
    pub async fn set_role_in_a(&self, user: &str, role: &str, version: i64) {
        self.app
            .identity_store()
            .upsert_membership(
                &MembershipUpsert {
                    clerk_membership_id: ClerkMembershipId::new(format!("orgmem_a_{user}")),
                    org_clerk_id: ClerkOrgId::new(ORG_A),
                    user_clerk_id: ClerkUserId::new(user),
                    role: role.into(),
                },
                Some(version),
                |_| None,
            )
            .await
            .expect("membership");
    }
}

/// Users alice, erin, carol, dave and bob; organizations A and B; alice `org:admin`, erin
/// legacy `admin` and carol `org:member` of A, bob `org:admin` of B.
pub async fn seed_identities(store: &IdentityStore) {
    for user in [ALICE, ERIN, CAROL, DAVE, BOB] {
        store
            .upsert_user(
                &ClerkUser {
                    clerk_id: ClerkUserId::new(user),
                    email: Some(format!("{user}@example.test")),
                    first_name: Some(user.trim_start_matches("user_").into()),
                    last_name: None,
                    username: None,
                    image_url: None,
                },
                Some(1),
            )
            .await
            .expect("user");
    }
    for (org, name) in [(ORG_A, "Org A"), (ORG_B, "Org B")] {
        store
            .upsert_organization(
                &OrganizationUpsert {
                    clerk_id: ClerkOrgId::new(org),
                    name: name.into(),
                    slug: None,
                    image_url: None,
                    created_by: None,
                },
                Some(1),
                |_, _| None,
            )
            .await
            .expect("organization");
    }
    for (org, user, role, membership) in [
        (ORG_A, ALICE, "org:admin", format!("orgmem_a_{ALICE}")),
        (ORG_A, ERIN, "admin", format!("orgmem_a_{ERIN}")),
        (ORG_A, CAROL, "org:member", format!("orgmem_a_{CAROL}")),
        (ORG_B, BOB, "org:admin", format!("orgmem_b_{BOB}")),
    ] {
        store
            .upsert_membership(
                &MembershipUpsert {
                    clerk_membership_id: ClerkMembershipId::new(membership),
                    org_clerk_id: ClerkOrgId::new(org),
                    user_clerk_id: ClerkUserId::new(user),
                    role: role.into(),
                },
                Some(1),
                |_| None,
            )
            .await
            .expect("membership");
    }
}

/// The `state` query parameter of a provider URL.
pub fn state_of(url: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state in url")
}

/// Calls `method uri` with an optional bearer token and JSON body: status and JSON answer.
pub async fn call<S>(
    app: &S,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut req = match method {
        "GET" => test::TestRequest::get(),
        "PUT" => test::TestRequest::put(),
        "POST" => test::TestRequest::post(),
        "DELETE" => test::TestRequest::delete(),
        other => panic!("method {other}"),
    }
    .uri(uri);
    if let Some(token) = token {
        req = req.insert_header(("authorization", format!("Bearer {token}")));
    }
    if let Some(body) = body {
        req = req.set_json(body);
    }
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status().as_u16();
    (status, body_json(resp).await)
}

/// Asserts `answer` is the one error shape, `{"error":{"code","message"}}` and nothing else,
/// with `code`.
pub fn assert_error_shape(answer: &Value, code: &str, context: &str) {
    let outer = answer
        .as_object()
        .unwrap_or_else(|| panic!("{context}: {answer}"));
    assert_eq!(outer.len(), 1, "{context}: {answer}");
    let error = answer["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{context}: {answer}"));
    assert_eq!(error.len(), 2, "{context}: only code and message: {answer}");
    assert_eq!(error["code"], code, "{context}: {answer}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{context}: {answer}"
    );
}

// ----- the matrix ---------------------------------------------------------------------------

/// Which organization a matrix row aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Token names A; `{id}` is A's integration, `{conv}` A's conversation.
    Own,
    /// Token names A; `{id}` is B's integration, `{conv}` B's conversation.
    OtherId,
    /// Token names A; the body names organization B.
    OtherInBody,
    /// Token names B (nobody but bob is a member); `{id}` is B's integration, `{conv}` B's
    /// conversation.
    OtherOrg,
}

/// One route aimed at one organization, and what each [`Persona`] gets (in the order of
/// [`Persona::column`]).
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub target: Target,
    pub method: &'static str,
    /// `{id}` is replaced by the target's integration id, `{conv}` by its conversation id.
    pub path: &'static str,
    /// JSON body, or empty for none.
    pub body: &'static str,
    pub expect: [u16; 4],
}

/// What bob (B's admin) sees of B: its integrations, its organization with metadata and its
/// conversation with its messages.
async fn b_view<S>(svc: &S, conversation_b: &str) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let bob = sign_jwt(KEY_A, KID_A, &claims_v2(BOB, ORG_B, "org:admin"));
    let (status, integrations) = call(svc, "GET", "/integrations", Some(&bob), None).await;
    assert_eq!(status, 200, "{integrations}");
    let (status, organization) = call(svc, "GET", "/identity/organization", Some(&bob), None).await;
    assert_eq!(status, 200, "{organization}");
    let uri = format!("/conversations/{conversation_b}");
    let (status, conversation) = call(svc, "GET", &uri, Some(&bob), None).await;
    assert_eq!(status, 200, "{conversation}");
    json!({
        "integrations": integrations,
        "organization": organization,
        "conversation": conversation,
    })
}

fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        422 => "unprocessable",
        other => panic!("no error code expected for {other}"),
    }
}

/// Runs `rows` in order as `persona` on a fresh [`RestEnv`]: every status as the table says;
/// every refusal in the one error shape (a role refusal naming the role) and with nothing
/// changed anywhere; every allowed change visible; B never leaks into an answer and is the
/// same at the end.
pub async fn run_matrix(persona: Persona, rows: &[Row]) {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let b_before = b_view(&svc, &env.conversation_b).await;
    for row in rows {
        let expect = row.expect[persona.column()];
        let (id, conversation, org) = match row.target {
            Target::Own => (&env.integration_a, &env.conversation_a, ORG_A),
            Target::OtherId | Target::OtherInBody => {
                (&env.integration_b, &env.conversation_b, ORG_A)
            }
            Target::OtherOrg => (&env.integration_b, &env.conversation_b, ORG_B),
        };
        let uri = row.path.replace("{id}", id).replace("{conv}", conversation);
        let body = (!row.body.is_empty())
            .then(|| serde_json::from_str::<Value>(row.body).expect("row body"));
        let context = format!(
            "{persona:?} ({}) {:?}: {} {uri}",
            persona.user(),
            row.target,
            row.method
        );
        let before = env.snapshot().await;
        let (status, answer) = call(&svc, row.method, &uri, Some(&persona.token(org)), body).await;
        assert_eq!(status, expect, "{context}: {answer}");
        if status >= 400 {
            let code = error_code(status);
            if status == 422 {
                assert_eq!(answer["error"]["code"], code, "{context}: {answer}");
            } else {
                assert_error_shape(&answer, code, &context);
            }
            // A member of the token's organization is refused for the role; anyone else by
            // the membership check, which says nothing about roles.
            let member_of_token_org =
                persona != Persona::Outsider && row.target != Target::OtherOrg;
            if status == 403 && member_of_token_org {
                assert_eq!(answer["error"]["message"], NEEDS_ADMIN, "{context}");
            } else {
                assert_ne!(answer["error"]["message"], NEEDS_ADMIN, "{context}");
            }
            assert_eq!(
                env.snapshot().await,
                before,
                "{context}: a refused call changed something"
            );
        } else if row.method != "GET" {
            // Proves the snapshot sees changes, so "unchanged" above means something.
            assert_ne!(
                env.snapshot().await,
                before,
                "{context}: an allowed change changed nothing"
            );
        }
        let text = answer.to_string();
        assert!(
            !text.contains(&env.integration_b)
                && !text.contains("Org B")
                && !text.contains(&env.conversation_b)
                && !text.contains(TEAM_B),
            "{context}: B leaked: {answer}"
        );
    }
    assert_eq!(
        b_view(&svc, &env.conversation_b).await,
        b_before,
        "{persona:?}: B changed"
    );
}
