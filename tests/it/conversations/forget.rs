//! Forgetting a conversation in the assembled service (`app::start`): a real turn through the
//! Slack simulator and the development agent, then `DELETE /conversations/{id}` over HTTP
//! with a session token. Afterwards no table holds the thread's text, a redelivered event is
//! still recognised (nothing answered twice), and the next message in the thread starts a
//! new conversation.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use infragpt::db::Pool;
use infragpt::identity::clerk_events::ClerkUser;
use infragpt::identity::store::{IdentityStore, MembershipUpsert, OrganizationUpsert};
use infragpt::identity::{ClerkMembershipId, ClerkOrgId, ClerkUserId};
use infragpt::testkit::slack_sim::SimConfig;
use serde_json::Value;
use uuid::Uuid;

use crate::e2e::conversations::{ACME, ALICE, Chat, service};
use crate::support::conversations::link_workspace;
use crate::support::identity::{KEY_A, KID_A, claims_v2, sign_jwt};

const ORG: &str = "org_forget";
const ADMIN_USER: &str = "user_forget_admin";
/// What alice says: it must be nowhere once the conversation is forgotten.
const SECRET: &str = "tok-forget-7f3a";

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The tables with a row whose text (every column, as JSON) contains `needle`.
async fn tables_containing(pool: &Pool, needle: &str) -> Vec<String> {
    let mut conn = pool.get().await.expect("conn");
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .load(&mut conn)
    .await
    .expect("tables");
    assert!(tables.iter().any(|t| t.name == "inbound_events"));
    let mut found = Vec::new();
    for Name { name } in tables {
        let n = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM \"{name}\" t WHERE to_jsonb(t)::text LIKE $1"
        ))
        .bind::<Text, _>(format!("%{needle}%"))
        .get_result::<Count>(&mut conn)
        .await
        .expect("search")
        .n;
        if n > 0 {
            found.push(format!("{name} ({n})"));
        }
    }
    found
}

/// An organization with one admin, seeded as the Clerk webhooks would; its id.
async fn seed_organization(pool: &Pool) -> Uuid {
    let store = IdentityStore::new(pool.clone());
    store
        .upsert_user(
            &ClerkUser {
                clerk_id: ClerkUserId::new(ADMIN_USER),
                email: Some("admin@example.test".into()),
                first_name: None,
                last_name: None,
                username: None,
                image_url: None,
            },
            Some(1),
        )
        .await
        .expect("user");
    store
        .upsert_organization(
            &OrganizationUpsert {
                clerk_id: ClerkOrgId::new(ORG),
                name: "Forget".into(),
                slug: None,
                image_url: None,
                created_by: None,
            },
            Some(1),
            |_, _| None,
        )
        .await
        .expect("organization");
    store
        .upsert_membership(
            &MembershipUpsert {
                clerk_membership_id: ClerkMembershipId::new("orgmem_forget_admin"),
                org_clerk_id: ClerkOrgId::new(ORG),
                user_clerk_id: ClerkUserId::new(ADMIN_USER),
                role: "org:admin".into(),
            },
            Some(1),
            |_| None,
        )
        .await
        .expect("membership");
    let mut conn = pool.get().await.expect("conn");
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    diesel::sql_query("SELECT id FROM organizations WHERE clerk_id = $1")
        .bind::<Text, _>(ORG)
        .get_result::<Id>(&mut conn)
        .await
        .expect("organization id")
        .id
}

#[actix_rt::test]
async fn a_forgotten_thread_leaves_no_text_behind_and_the_next_message_starts_afresh() {
    let h = service(SimConfig::default())
        .with_identity()
        .with_dev_agent()
        .start()
        .await;
    let org = seed_organization(h.pool()).await;
    // Acme is the configured bot token's workspace; here an organization installed it.
    link_workspace(h.pool(), ACME, Some(org)).await;
    let token = sign_jwt(KEY_A, KID_A, &claims_v2(ADMIN_USER, ORG, "org:admin"));
    let base = h.base_url();
    let client = h.http().clone();
    let get = async |path: &str| -> (u16, Value) {
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("http");
        (r.status().as_u16(), r.json().await.expect("json"))
    };

    let thread = h.mention(ALICE, &format!("remember {SECRET} for me"));
    h.wait_replies(&thread, 1).await;
    h.settle().await;
    let (status, list) = get("/conversations").await;
    assert_eq!(status, 200, "{list}");
    let conversations = list["conversations"].as_array().expect("array");
    assert_eq!(conversations.len(), 1, "{list}");
    assert_eq!(conversations[0]["thread_ts"], thread.as_str());
    let id = conversations[0]["id"].as_str().expect("id").to_owned();
    let (status, detail) = get(&format!("/conversations/{id}")).await;
    assert_eq!(status, 200, "{detail}");
    assert!(detail.to_string().contains(SECRET), "{detail}");
    // The search below can find it: the turn stored it in several places.
    let before = tables_containing(h.pool(), SECRET).await;
    for table in ["inbound_events", "messages", "reply_intents"] {
        assert!(
            before.iter().any(|t| t.starts_with(table)),
            "{table}: {before:?}"
        );
    }

    let deleted = client
        .delete(format!("{base}/conversations/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.expect("json");
    assert_eq!(
        deleted["messages"], 2,
        "the question and the answer: {deleted}"
    );
    assert!(
        deleted["inbound_events_forgotten"].as_u64() >= Some(1),
        "{deleted}"
    );
    assert_eq!(
        tables_containing(h.pool(), SECRET).await,
        Vec::<String>::new(),
        "the thread's text is gone from every table"
    );

    // Slack sends the mention again: it is recognised, acknowledged, and not answered again.
    let envelope = h
        .sim()
        .deliveries()
        .into_iter()
        .find(|d| d.ts.as_deref() == Some(thread.as_str()) && d.event_type == "app_mention")
        .expect("the mention's envelope")
        .envelope_id;
    h.sim().redeliver(&envelope, 1).expect("redeliver");
    h.settle().await;
    assert_eq!(h.bot_replies(&thread).len(), 1, "not answered twice");
    let (_, list) = get("/conversations").await;
    assert_eq!(list["conversations"], Value::Array(vec![]), "{list}");

    // The next message in the thread (#ops is monitored since the mention) is a new
    // conversation whose history starts with it.
    h.reply_in(&thread, ALICE, "are you still there?");
    h.wait_replies(&thread, 2).await;
    h.settle().await;
    let (_, list) = get("/conversations").await;
    let conversations = list["conversations"].as_array().expect("array");
    assert_eq!(conversations.len(), 1, "{list}");
    let new_id = conversations[0]["id"].as_str().expect("id");
    assert_ne!(new_id, id, "a new conversation");
    assert_eq!(conversations[0]["thread_ts"], thread.as_str());
    let (_, detail) = get(&format!("/conversations/{new_id}")).await;
    let texts: Vec<&str> = detail["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts.len(), 2, "{detail}");
    assert_eq!(texts[0], "are you still there?");
    assert!(!detail.to_string().contains(SECRET), "{detail}");

    h.stop().await;
}

/// A thread `/infragpt <question>` started: the question's record and the command's event
/// (routed to the channel, not the thread) are forgotten with it.
#[actix_rt::test]
async fn a_forgotten_slash_question_thread_leaves_no_text_behind() {
    let h = service(SimConfig::default())
        .with_identity()
        .with_dev_agent()
        .start()
        .await;
    let org = seed_organization(h.pool()).await;
    link_workspace(h.pool(), ACME, Some(org)).await;
    let token = sign_jwt(KEY_A, KID_A, &claims_v2(ADMIN_USER, ORG, "org:admin"));
    let sim = h.sim();
    sim.slash_command(
        ACME,
        crate::e2e::conversations::OPS,
        ALICE,
        "/infragpt",
        &format!("remember {SECRET} for me"),
    )
    .expect("command");
    let question = crate::support::wait::eventually("the question", async || {
        sim.messages_in(ACME, crate::e2e::conversations::OPS)
            .into_iter()
            .find(|m| m.bot_id.is_some() && m.thread_ts.is_none())
    })
    .await;
    h.wait_replies(&question.ts, 1).await;
    let before = tables_containing(h.pool(), SECRET).await;
    for table in ["inbound_events", "messages", "slash_questions"] {
        assert!(
            before.iter().any(|t| t.starts_with(table)),
            "{table}: {before:?}"
        );
    }
    let list: Value = h
        .http()
        .get(format!("{}/conversations", h.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let id = list["conversations"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    crate::support::wait::eventually("forgotten", async || {
        let r = h
            .http()
            .delete(format!("{}/conversations/{id}", h.base_url()))
            .bearer_auth(&token)
            .send()
            .await
            .expect("delete");
        // 409 while the turn's event is still finishing.
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(
        tables_containing(h.pool(), SECRET).await,
        Vec::<String>::new(),
        "the question's text is gone from every table"
    );
    h.stop().await;
}
