//! Working with the real upstream agent (issue 20): what its behaviour needs from this side.
//!
//! * `success: false` answers post a short notice (never the agent's exception text), the
//!   error goes to the dead letter, and the notice stays out of the next turn's
//!   `past_messages`; so does the "assistant unavailable" notice.
//! * An agent that never calls SendReply is answered from `response_text`.
//! * `agent.history_sender: plain` sends `user` and keeps the ids in the context JSON.
//! * SendReply without a token: accepted from `agent.reply_allowed_networks` (127.0.0.2 is
//!   another network than 127.0.0.1/32 here), refused from elsewhere, on both gRPC paths and
//!   `POST /reply`; with mutual TLS on the gRPC listener, a client certificate authenticates
//!   and a connection without one (or with one from another CA) gets nowhere.
//!
//! Everything runs for real: PostgreSQL, the Slack simulator over Socket Mode, the service
//! assembled by [`TestApp`] (`app::start`), and the development agent as a tonic
//! `AgentService` on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::config::{self, Config};
use infragpt::db::schema::{conversations, messages};
use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt::grpc::pb::backend::{SendReplyCommand, Status};
use infragpt::grpc::pb::infragpt::infra_gpt_service_client::InfraGptServiceClient;
use infragpt::testkit::devagent::{
    DEMO_LABEL, DevAgentConfig, DevAgentHandle, FailMode, UPSTREAM_ERROR_RESPONSE,
    UPSTREAM_MESSAGE_BUG,
};
use infragpt::testkit::slack_sim::{SimConfig, SimMessage};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Secret;
use infragpt_actors::conversation::{HistorySender, UNAVAILABLE_REPLY};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::app::{ADMIN, TestApp, VAULT_KEY};

const ACME: &str = "T0SIMACME1";
const ACME_BOT: &str = "U0ACMEBOT1";
const OPS: &str = "C0OPS00001";
const ALICE: &str = "U0ALICE001";
const BOB: &str = "U0BOB00001";
const NOTICE: &str = "Sorry, that one failed on our side. tok-notice";
/// Hang guard only; no assertion depends on timing.
const GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The served app ([`TestApp`]) with what these tests ask of it.
struct Harness {
    app: TestApp,
}

impl Harness {
    /// The service serving the simulator's Acme workspace over Socket Mode, with quick retries,
    /// one agent attempt and `tweak` applied last; the dev agent answers with `fail_mode` (and
    /// calls SendReply unless told otherwise).
    async fn start(fail_mode: FailMode, tweak: impl FnOnce(&mut Config) + 'static) -> Self {
        let mut app = TestApp::builder()
            .with_slack_sim(SimConfig::default())
            .configure(|c| {
                c.actors.retry_budget = 1;
                c.actors.backoff_base_ms = 10;
                c.actors.backoff_max_ms = 100;
                c.actors.drain_interval_ms = 100;
                c.agent.retry_attempts = 1;
            })
            .configure(tweak)
            .start()
            .await;
        assert_eq!(
            app.sim().config().teams[0].id,
            ACME,
            "the served workspace is Acme"
        );
        let agent = DevAgentConfig {
            fail_mode,
            ..app.dev_agent_config()
        };
        app.start_agent(agent);
        Self { app }
    }

    fn grpc_addr(&self) -> SocketAddr {
        self.app.grpc_addr()
    }

    fn agent(&self) -> &DevAgentHandle {
        self.app.agent()
    }

    fn mention(&self, user: &str, text: &str) -> String {
        self.app
            .sim()
            .post_user_message(ACME, OPS, user, &format!("<@{ACME_BOT}> {text}"), None)
            .expect("post")
    }

    fn reply_in(&self, thread: &str, user: &str, text: &str) -> String {
        self.app
            .sim()
            .post_user_message(ACME, OPS, user, text, Some(thread))
            .expect("post")
    }

    /// Bot messages in a thread of #ops, oldest first.
    fn bot_replies(&self, thread: &str) -> Vec<SimMessage> {
        crate::e2e::conversations::bot_replies(self.app.sim(), ACME, OPS, thread)
    }

    async fn wait_replies(&self, thread: &str, n: usize) {
        let t = thread.to_owned();
        self.app
            .sim()
            .wait_for(
                |s| {
                    s.messages_in(ACME, OPS)
                        .iter()
                        .filter(|m| {
                            m.bot_id.is_some() && m.thread_ts.as_deref() == Some(t.as_str())
                        })
                        .count()
                        >= n
                },
                GUARD,
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "thread {thread}: {n} replies expected, got {:?}",
                    self.bot_replies(thread)
                )
            });
    }

    /// Quiet: every envelope acknowledged and recorded, no inbox row pending or processing.
    async fn settle(&self) {
        crate::e2e::conversations::settle(self.app.sim(), &self.app.db).await;
    }

    /// The conversation of a thread.
    async fn conversation(&self, thread: &str) -> uuid::Uuid {
        let mut conn = self.app.pool().get().await.expect("conn");
        conversations::table
            .filter(conversations::thread_ts.eq(thread))
            .select(conversations::id)
            .first(&mut conn)
            .await
            .expect("conversation")
    }

    /// (slack_ts, sender_kind, kind, text) of a conversation's messages in order.
    async fn rows(&self, conversation: uuid::Uuid) -> Vec<(String, String, String, String)> {
        let mut conn = self.app.pool().get().await.expect("conn");
        messages::table
            .filter(messages::conversation_id.eq(conversation))
            .order((messages::created_at, messages::id))
            .select((
                messages::slack_ts,
                messages::sender_kind,
                messages::kind,
                messages::text,
            ))
            .load(&mut conn)
            .await
            .expect("messages")
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .app
            .http()
            .request(method, format!("{}{path}", self.app.base_url()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("http");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Every text the bot posted anywhere.
    fn posted_texts(&self) -> Vec<String> {
        self.app
            .sim()
            .calls("chat.postMessage")
            .into_iter()
            .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The past messages (`sender: content`) of the agent request for `text`.
    fn history_of(&self, text: &str) -> Vec<String> {
        self.agent()
            .requests()
            .iter()
            .rev()
            .find(|r| r.current_message == text)
            .unwrap_or_else(|| panic!("no agent request for {text}"))
            .past_messages
            .iter()
            .map(|m| format!("{}: {}", m.sender, m.content))
            .collect()
    }

    async fn stop(self) {
        self.app.stop().await;
    }
}

fn failure_notice(c: &mut Config) {
    c.agent.failure_notice = NOTICE.to_owned();
}

// ---------------------------------------------------------------------------------------------
// 1. success=false: a notice, not the exception; the error in the dead letter; not in history
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn failed_answers_post_a_notice_that_the_next_turn_does_not_see() {
    let h = Harness::start(
        FailMode::Exception(UPSTREAM_MESSAGE_BUG.to_owned()),
        failure_notice,
    )
    .await;

    let ts1 = h.mention(ALICE, "why is checkout slow? tok-1");
    h.wait_replies(&ts1, 1).await;
    h.settle().await;

    // Slack shows the configured notice, and nothing of the exception anywhere.
    let replies = h.bot_replies(&ts1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text, NOTICE);
    for text in h.posted_texts() {
        assert!(
            !text.contains("__pydantic") && !text.contains(UPSTREAM_ERROR_RESPONSE),
            "internal error text reached Slack: {text}"
        );
    }

    // Stored: the user message, and the notice as a notice.
    let conv = h.conversation(&ts1).await;
    assert_eq!(
        h.rows(conv).await,
        [
            (
                ts1.clone(),
                "user".to_owned(),
                "message".to_owned(),
                "why is checkout slow? tok-1".to_owned()
            ),
            (
                replies[0].ts.clone(),
                "agent".to_owned(),
                "notice".to_owned(),
                NOTICE.to_owned()
            ),
        ]
    );

    // The error is in the dead letter (admin API), with the exception text.
    let (status, list) = h.admin(reqwest::Method::GET, "/admin/events").await;
    assert_eq!(status, 200, "{list}");
    let events = list["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 1, "{list}");
    let id = events[0]["id"].as_i64().expect("id");
    let (status, event) = h
        .admin(reqwest::Method::GET, &format!("/admin/events/{id}"))
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["status"], "failed", "{event}");
    let last_error = event["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(UPSTREAM_MESSAGE_BUG), "{event}");
    assert!(last_error.contains("success=false"), "{event}");

    // The agent recovers; the follow-up's history has the user's question, not the notice.
    h.agent().set_fail_mode(FailMode::None);
    h.reply_in(&ts1, BOB, "any news? tok-2");
    h.wait_replies(&ts1, 2).await;
    h.settle().await;
    assert_eq!(
        h.history_of("any news? tok-2"),
        [format!("user/{ALICE}: why is checkout slow? tok-1")]
    );
    let answer = h.bot_replies(&ts1)[1].clone();
    assert!(answer.text.starts_with(DEMO_LABEL), "{}", answer.text);

    // The operator retries the dead letter: the notice did not count as the turn's answer, so
    // the agent is asked again, with nothing before that turn as its past.
    let (status, body) = h
        .admin(reqwest::Method::POST, &format!("/admin/events/{id}/retry"))
        .await;
    assert_eq!(status, 202, "{body}");
    h.wait_replies(&ts1, 3).await;
    h.settle().await;
    assert_eq!(
        h.history_of("why is checkout slow? tok-1"),
        Vec::<String>::new()
    );
    let (_, list) = h.admin(reqwest::Method::GET, "/admin/events").await;
    assert_eq!(list["events"].as_array().map(Vec::len), Some(0), "{list}");

    // A third turn sees both questions and both answers, still no notice.
    h.reply_in(&ts1, ALICE, "thanks tok-3");
    h.wait_replies(&ts1, 4).await;
    h.settle().await;
    let history = h.history_of("thanks tok-3");
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(history.iter().all(|m| !m.contains(NOTICE)), "{history:?}");
    assert_eq!(
        history.iter().filter(|m| m.starts_with("agent: ")).count(),
        2,
        "{history:?}"
    );
    let kinds: Vec<String> = h.rows(conv).await.into_iter().map(|r| r.2).collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "notice").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    h.stop().await;
}

/// The "assistant unavailable" notice is a notice too: stored, never history.
#[actix_rt::test]
async fn unavailable_notice_stays_out_of_history() {
    let mut h = Harness::start(FailMode::None, |_| {}).await;
    h.app.stop_agent();
    let ts1 = h.mention(ALICE, "hello? tok-u1");
    h.wait_replies(&ts1, 1).await;
    h.settle().await;
    assert_eq!(h.bot_replies(&ts1)[0].text, UNAVAILABLE_REPLY);
    let conv = h.conversation(&ts1).await;
    let rows = h.rows(conv).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[1].1.as_str(), rows[1].2.as_str()),
        ("agent", "notice")
    );

    let agent = h.app.dev_agent_config();
    h.app.start_agent(agent);
    h.reply_in(&ts1, ALICE, "back? tok-u2");
    h.wait_replies(&ts1, 2).await;
    h.settle().await;
    assert_eq!(
        h.history_of("back? tok-u2"),
        [format!("user/{ALICE}: hello? tok-u1")]
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. An agent that never calls SendReply, and plain history senders
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn answers_without_send_reply_are_posted_and_plain_senders_keep_ids_in_the_context() {
    let h = Harness::start(FailMode::NoSendReply, |c| {
        c.agent.history_sender = HistorySender::Plain;
    })
    .await;
    let ts1 = h.mention(ALICE, "status please tok-p1");
    h.wait_replies(&ts1, 1).await;
    h.settle().await;
    let first = h.bot_replies(&ts1);
    assert_eq!(first.len(), 1, "posted once, from response_text: {first:?}");
    assert!(first[0].text.starts_with(DEMO_LABEL), "{}", first[0].text);
    let conv = h.conversation(&ts1).await;
    let rows = h.rows(conv).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.1.as_str(), r.2.as_str()))
            .collect::<Vec<_>>(),
        [("user", "message"), ("agent", "message")]
    );

    h.reply_in(&ts1, BOB, "and the database? tok-p2");
    h.wait_replies(&ts1, 2).await;
    h.settle().await;
    assert_eq!(
        h.history_of("and the database? tok-p2"),
        [
            "user: status please tok-p1".to_owned(),
            format!("agent: {}", first[0].text)
        ]
    );
    let request = h
        .agent()
        .requests()
        .into_iter()
        .find(|r| r.current_message == "and the database? tok-p2")
        .expect("request");
    let ctx: Value = serde_json::from_str(&request.context).expect("context JSON");
    let senders = ctx["history_senders"]
        .as_object()
        .expect("history_senders")
        .clone();
    assert_eq!(senders.len(), 2, "{ctx}");
    assert_eq!(
        senders[&request.past_messages[0].message_id],
        format!("user/{ALICE}"),
        "{ctx}"
    );
    assert_eq!(
        senders[&request.past_messages[1].message_id], "agent",
        "{ctx}"
    );
    assert_eq!(ctx["sender"]["user_id"], BOB, "{ctx}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. SendReply authentication: networks, token, client certificates
// ---------------------------------------------------------------------------------------------

fn command(conversation: uuid::Uuid, message: &str) -> SendReplyCommand {
    SendReplyCommand {
        turn_ts: String::new(),
        conversation_id: conversation.to_string(),
        message: message.to_owned(),
    }
}

fn request(cmd: SendReplyCommand, token: Option<&str>) -> tonic::Request<SendReplyCommand> {
    let mut r = tonic::Request::new(cmd);
    if let Some(token) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    r
}

/// SendReply on both gRPC paths from `local` (the client's source address).
async fn grpc_send_reply(
    endpoint: Endpoint,
    conversation: uuid::Uuid,
    text: &str,
    token: Option<&str>,
) -> [Result<Status, tonic::Status>; 2] {
    let channel = endpoint.connect().await.expect("connect");
    let backend = BackendServiceClient::new(channel.clone())
        .send_reply(request(
            command(conversation, &format!("{text} (backend)")),
            token,
        ))
        .await
        .map(tonic::Response::into_inner);
    let legacy = InfraGptServiceClient::new(channel)
        .send_reply(request(
            command(conversation, &format!("{text} (legacy)")),
            token,
        ))
        .await
        .map(tonic::Response::into_inner);
    [backend, legacy]
}

const LOOPBACK_1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const LOOPBACK_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[actix_rt::test]
async fn send_reply_is_accepted_from_allowed_networks_or_with_the_token() {
    let h = Harness::start(FailMode::None, |c| {
        c.agent.reply_token = Some(Secret::new("t0ken-upstream"));
        c.agent.reply_allowed_networks = vec!["127.0.0.1/32".to_owned()];
    })
    .await;
    // The dev agent calls SendReply from 127.0.0.1 without a token: allowed by network.
    let ts = h.mention(ALICE, "status tok-n1");
    h.wait_replies(&ts, 1).await;
    h.settle().await;
    assert!(h.bot_replies(&ts)[0].text.starts_with(DEMO_LABEL));
    let conv = h.conversation(&ts).await;
    let endpoint = |local: IpAddr| {
        Endpoint::from_shared(format!("http://{}", h.grpc_addr()))
            .expect("endpoint")
            .local_address(Some(local))
    };

    // From the allowed network, no token: posted (both paths).
    for r in grpc_send_reply(endpoint(LOOPBACK_1), conv, "from .1 tok-n2", None).await {
        assert!(r.expect("accepted").success);
    }
    // From another network, no token: refused before anything is looked at.
    for r in grpc_send_reply(endpoint(LOOPBACK_2), conv, "from .2 tok-n3", None).await {
        assert_eq!(r.expect_err("refused").code(), tonic::Code::Unauthenticated);
    }
    // From another network with the token: posted.
    for r in grpc_send_reply(
        endpoint(LOOPBACK_2),
        conv,
        "token tok-n4",
        Some("t0ken-upstream"),
    )
    .await
    {
        assert!(r.expect("accepted").success);
    }
    // A wrong token is refused even from the allowed network.
    for r in grpc_send_reply(endpoint(LOOPBACK_1), conv, "wrong tok-n5", Some("nope")).await {
        assert_eq!(r.expect_err("refused").code(), tonic::Code::Unauthenticated);
    }

    // POST /reply: the same rules.
    let http_from = |local: IpAddr| {
        reqwest::Client::builder()
            .local_address(local)
            .build()
            .expect("client")
    };
    let post = |client: reqwest::Client, text: &str, token: Option<&str>| {
        let mut r = client
            .post(format!("{}/reply", h.app.base_url()))
            .json(&serde_json::json!({"conversation_id": conv, "message": text}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = post(http_from(LOOPBACK_1), "http .1 tok-n6", None)
        .await
        .expect("http");
    assert_eq!(r.status(), 200);
    let r = post(http_from(LOOPBACK_2), "http .2 tok-n7", None)
        .await
        .expect("http");
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let r = post(
        http_from(LOOPBACK_2),
        "http token tok-n8",
        Some("t0ken-upstream"),
    )
    .await
    .expect("http");
    assert_eq!(r.status(), 200);

    let texts = h.posted_texts();
    for (token, posted) in [
        ("tok-n2", 2),
        ("tok-n3", 0),
        ("tok-n4", 2),
        ("tok-n5", 0),
        ("tok-n6", 1),
        ("tok-n7", 0),
        ("tok-n8", 1),
    ] {
        assert_eq!(
            texts.iter().filter(|t| t.contains(token)).count(),
            posted,
            "{token}: {texts:?}"
        );
    }
    h.stop().await;
}

/// Test PKI made with rcgen: a CA, a server certificate for localhost/127.0.0.1, a client
/// certificate from the CA and one from another CA. Also used by `grpc_limits`.
pub(super) struct Pki {
    dir: tempfile::TempDir,
    pub(super) ca_pem: String,
    pub(super) client: (String, String),
    rogue_client: (String, String),
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
        .expect("ca")
}

fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("agent"),
    );
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub(super) fn new() -> Self {
        let agents_ca = ca("InfraGPT test agents CA");
        let other = ca("Someone else's CA");
        let server = leaf(
            &agents_ca,
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            &agents_ca,
            &["agent"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let rogue_client = leaf(
            &other,
            &["agent"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("server.crt"), &server.0).expect("write");
        std::fs::write(dir.path().join("server.key"), &server.1).expect("write");
        std::fs::write(dir.path().join("ca.crt"), agents_ca.pem()).expect("write");
        Pki {
            dir,
            ca_pem: agents_ca.pem(),
            client,
            rogue_client,
        }
    }

    pub(super) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// SendReply on both gRPC paths over TLS, presenting `identity` when given.
async fn tls_send_reply(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
    conversation: uuid::Uuid,
    text: &str,
) -> Vec<Result<Status, String>> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .expect("tls config");
    let channel: Channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return vec![Err(format!("connect: {e:?}"))],
    };
    let backend = BackendServiceClient::new(channel.clone())
        .send_reply(command(conversation, &format!("{text} (backend)")))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
    let legacy = InfraGptServiceClient::new(channel)
        .send_reply(command(conversation, &format!("{text} (legacy)")))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
    vec![backend, legacy]
}

#[actix_rt::test]
async fn mutual_tls_client_certificates_authenticate_send_reply() {
    let pki = Pki::new();
    // No token and no allowed network: only a client certificate can authenticate. The dev
    // agent (plaintext client, like the upstream one) is answered from response_text.
    let (cert, key, client_ca) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("ca.crt"),
    );
    let h = Harness::start(FailMode::NoSendReply, move |c| {
        c.agent.reply_allowed_networks = Vec::new();
        c.grpc_tls.cert_file = Some(cert);
        c.grpc_tls.key_file = Some(key);
        c.grpc_tls.client_ca_file = Some(client_ca);
    })
    .await;
    let ts = h.mention(ALICE, "status tok-m1");
    h.wait_replies(&ts, 1).await;
    h.settle().await;
    let conv = h.conversation(&ts).await;

    // With a certificate from the CA: posted on both paths.
    let results = tls_send_reply(
        h.grpc_addr(),
        &pki.ca_pem,
        Some(&pki.client),
        conv,
        "cert tok-m2",
    )
    .await;
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r.expect("accepted").success);
    }
    // Without a certificate, with one from another CA, or in plaintext: nothing gets through.
    for r in tls_send_reply(h.grpc_addr(), &pki.ca_pem, None, conv, "no cert tok-m3").await {
        let e = r.expect_err("refused without a client certificate");
        assert!(!e.contains("Unimplemented"), "{e}");
    }
    for r in tls_send_reply(
        h.grpc_addr(),
        &pki.ca_pem,
        Some(&pki.rogue_client),
        conv,
        "rogue tok-m4",
    )
    .await
    {
        r.expect_err("refused with a certificate from another CA");
    }
    let plain = Endpoint::from_shared(format!("http://{}", h.grpc_addr()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Ok(channel) = plain.connect().await {
        let r = BackendServiceClient::new(channel)
            .send_reply(command(conv, "plaintext tok-m5"))
            .await;
        assert!(r.is_err(), "plaintext accepted: {r:?}");
    }
    // POST /reply is not behind the gRPC listener's TLS: loopback is not allowed here.
    let r = h
        .app
        .http()
        .post(format!("{}/reply", h.app.base_url()))
        .json(&serde_json::json!({"conversation_id": conv, "message": "http tok-m6"}))
        .send()
        .await
        .expect("http");
    assert_eq!(r.status(), 401);

    let texts = h.posted_texts();
    for (token, posted) in [
        ("tok-m2", 2),
        ("tok-m3", 0),
        ("tok-m4", 0),
        ("tok-m5", 0),
        ("tok-m6", 0),
    ] {
        assert_eq!(
            texts.iter().filter(|t| t.contains(token)).count(),
            posted,
            "{token}: {texts:?}"
        );
    }
    h.stop().await;
}

/// A bad TLS file fails the start with the key's name.
#[actix_rt::test]
async fn unreadable_tls_files_fail_the_start() {
    let db = TestDb::new().await;
    let yaml = format!(
        "bind_address: 127.0.0.1\nport: 0\ngrpc_port: 0\nlog_level: warn\n\
         grpc_tls:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/server.key\n\
         vault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\n\
         database:\n  url: \"{}\"\n",
        db.url.expose()
    );
    let config = config::load_str(&yaml, "tls.yaml").expect("config");
    let text = match infragpt::app::start(config).await {
        Ok(_) => panic!("the service started without its TLS files"),
        Err(e) => format!("{e:#}"),
    };
    assert!(text.contains("grpc_tls.cert_file"), "{text}");
}

#[test]
fn new_keys_are_validated_with_their_path() {
    let err = |yaml: &str| config::load_str(yaml, "x.yaml").unwrap_err().to_string();
    let e = err("agent:\n  reply_allowed_networks: [10.0.0.0/8, nope]\n");
    assert!(
        e.contains("agent.reply_allowed_networks[1]") && e.contains("`nope`"),
        "{e}"
    );
    let e = err("agent:\n  failure_notice: \"  \"\n");
    assert!(e.contains("agent.failure_notice"), "{e}");
    let e = err("agent:\n  history_sender: name\n");
    assert!(e.contains("agent.history_sender"), "{e}");
    let e = err("grpc_tls:\n  cert_file: /x.crt\n");
    assert!(e.contains("grpc_tls.key_file"), "{e}");
    let e = err("grpc_tls:\n  client_ca_file: /ca.crt\n");
    assert!(e.contains("grpc_tls.client_ca_file"), "{e}");

    let c = config::load_str("agent:\n  history_sender: plain\n  reply_allowed_networks: []\ngrpc_tls:\n  cert_file: \"\"\n", "x.yaml").unwrap();
    assert_eq!(c.agent.history_sender, config::HistorySender::Plain);
    assert!(c.agent.reply_allowed_networks.is_empty());
    assert!(!c.grpc_tls.enabled(), "an empty path is unset");
    let d = Config::default();
    assert_eq!(d.agent.reply_allowed_networks, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(d.agent.history_sender, config::HistorySender::Proto);
    assert!(!d.grpc_tls.enabled());
}

/// Fail closed (issue 16): networks beyond loopback without a credential need an explicit yes.
#[test]
fn reply_networks_beyond_loopback_need_a_credential_or_an_explicit_yes() {
    let load = |yaml: &str| config::load_str(yaml, "x.yaml");
    let e = load("agent:\n  reply_allowed_networks: [127.0.0.0/8, 10.42.0.0/16]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agent.reply_allowed_networks")
            && e.contains("10.42.0.0/16")
            && e.contains("allow_unauthenticated_replies"),
        "{e}"
    );
    // A network that also covers loopback is still beyond it.
    assert!(load("agent:\n  reply_allowed_networks: [0.0.0.0/0]\n").is_err());
    for ok in [
        "agent:\n  reply_allowed_networks: [127.0.0.2/32, \"::1/128\"]\n",
        "agent:\n  reply_allowed_networks: [10.42.0.0/16]\n  allow_unauthenticated_replies: true\n",
        "agent:\n  reply_allowed_networks: [10.42.0.0/16]\n  reply_token: s3cret-token-value\n",
    ] {
        load(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

/// The store: a notice is returned with its kind and never counts as the turn's answer.
#[tokio::test]
async fn notices_do_not_answer_a_turn() {
    use infragpt::db::PgConversationStore;
    use infragpt_actors::conversation::{ConversationStore, MessageKind, NewMessage, Sender};
    use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId, ThreadKey};

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let turn = MessageTs::parse("100.000001").unwrap();
    let conv = store
        .upsert_conversation(&ThreadKey::new(
            TeamId::parse("T1").unwrap(),
            ChannelId::parse("C1").unwrap(),
            turn.clone(),
        ))
        .await
        .unwrap();
    let msg = |ts: &str, sender: Sender, kind: MessageKind, text: &str| NewMessage {
        conversation_id: conv.id,
        slack_ts: MessageTs::parse(ts).unwrap(),
        sender,
        sender_name: None,
        sender_email: None,
        text: text.to_owned(),
        source_event_id: None,
        in_reply_to: matches!(kind, MessageKind::Notice).then(|| turn.clone()),
        kind,
    };
    let user = Sender::User(SlackUserId::parse("U1").unwrap());
    store
        .insert_message(msg("100.000001", user, MessageKind::Message, "q"))
        .await
        .unwrap();
    store
        .insert_message(msg(
            "100.000002",
            Sender::Agent,
            MessageKind::Notice,
            NOTICE,
        ))
        .await
        .unwrap();
    assert!(
        !store
            .agent_reply_exists(conv.id, &turn, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .agent_reply_exists(conv.id, &turn, Some(NOTICE))
            .await
            .unwrap()
    );
    let kinds: Vec<MessageKind> = store
        .history(conv.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(kinds, [MessageKind::Message, MessageKind::Notice]);
}
