//! SendReply end to end: gRPC (both paths) and `POST /reply` over a real PostgreSQL
//! database, the Slack simulator and, for the full loop, the dev agent calling back.

use std::sync::Arc;
use std::time::Duration;

use actix_web::test as atest;
use async_trait::async_trait;
use infragpt::agent_client::{GrpcAgent, GrpcAgentOptions};
use infragpt::config::{CorsConfig, Networks};
use infragpt::db::PgConversationStore;
use infragpt::grpc::pb::backend::SendReplyCommand;
use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt::grpc::pb::infragpt::infra_gpt_service_client::InfraGptServiceClient;
use infragpt::grpc::server::GrpcShell;
use infragpt::http::{HttpShell, Readiness};
use infragpt::reply::ReplyAuth;
use infragpt::reply::grpc::ReplyGrpc;
use infragpt::reply::http::configure;
use infragpt::testkit::devagent::{DEMO_LABEL, DevAgent, DevAgentConfig};
use infragpt::testkit::slack_sim::SlackSim;
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Secret;
use infragpt_actors::conversation::{
    Agent, AgentTurn, AnswerFormat, BotIdentity, Conversation, ConversationStore, MessageKind,
    MessageMetadata, NewMessage, ReplyService, Sender, SlackApi, SlackApiError, ThreadMessage,
    UserProfile,
};
use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId, ThreadKey};
use infragpt_actors::{HealthRegistry, Metrics};
use tonic::Code;

const TEAM: &str = "T0SIMACME1";
const CHANNEL: &str = "C0OPS00001";
const USER: &str = "U0ALICE001";

/// A minimal `SlackApi` over the simulator's Web API (only `chat.postMessage` is needed).
struct SimSlack {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

#[async_trait]
impl SlackApi for SimSlack {
    async fn bot_identity(&self, team: &TeamId) -> Result<BotIdentity, SlackApiError> {
        Err(SlackApiError::Api(format!(
            "auth.test is not used by these tests ({team})"
        )))
    }

    async fn post_message(
        &self,
        _team: &TeamId,
        channel: &ChannelId,
        thread_ts: Option<&MessageTs>,
        text: &str,
        metadata: Option<&MessageMetadata>,
    ) -> Result<MessageTs, SlackApiError> {
        let body = serde_json::json!({
            "channel": channel.as_str(),
            "thread_ts": thread_ts.map(MessageTs::as_str),
            "text": text,
            "metadata": metadata,
        });
        let reply: serde_json::Value = self
            .http
            .post(format!("{}chat.postMessage", self.base))
            .bearer_auth(self.token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| SlackApiError::Transport(e.to_string()))?
            .json()
            .await
            .map_err(|e| SlackApiError::Transport(e.to_string()))?;
        if reply["ok"] != true {
            return Err(SlackApiError::Api(reply["error"].to_string()));
        }
        MessageTs::parse(reply["ts"].as_str().unwrap_or_default())
            .map_err(|e| SlackApiError::Api(e.to_string()))
    }

    async fn delete_message(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _ts: &MessageTs,
    ) -> Result<(), SlackApiError> {
        Err(SlackApiError::Api(
            "chat.delete is not used by these tests".into(),
        ))
    }

    async fn upload_file(
        &self,
        _team: &TeamId,
        _filename: &str,
        _content: &str,
    ) -> Result<String, SlackApiError> {
        Err(SlackApiError::Api(
            "files are not used by these tests".into(),
        ))
    }

    async fn share_file(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _thread_ts: &MessageTs,
        _file_id: &str,
        _title: &str,
    ) -> Result<(), SlackApiError> {
        Err(SlackApiError::Api(
            "files are not used by these tests".into(),
        ))
    }

    async fn bot_messages_in_thread(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _thread_ts: &MessageTs,
        _after: Option<&MessageTs>,
    ) -> Result<Vec<ThreadMessage>, SlackApiError> {
        Err(SlackApiError::Api(
            "conversations.replies is not used by these tests".into(),
        ))
    }

    async fn update_message(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _ts: &MessageTs,
        _text: &str,
        _metadata: Option<&MessageMetadata>,
    ) -> Result<(), SlackApiError> {
        Err(SlackApiError::Api(
            "chat.update is not used by these tests".into(),
        ))
    }

    async fn set_thread_status(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _thread_ts: &MessageTs,
        _status: &str,
    ) -> Result<(), SlackApiError> {
        Err(SlackApiError::Api(
            "assistant.threads.setStatus is not used by these tests".into(),
        ))
    }

    async fn add_reaction(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _ts: &MessageTs,
        _name: &str,
    ) -> Result<(), SlackApiError> {
        Err(SlackApiError::Api(
            "reactions.add is not used by these tests".into(),
        ))
    }

    async fn user_profile(
        &self,
        _team: &TeamId,
        _user: &SlackUserId,
    ) -> Result<UserProfile, SlackApiError> {
        Err(SlackApiError::Api(
            "users.info is not used by these tests".into(),
        ))
    }

    async fn channel_name(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
    ) -> Result<Option<String>, SlackApiError> {
        Err(SlackApiError::Api(
            "conversations.info is not used by these tests".into(),
        ))
    }
}

/// Database, simulator, a conversation whose current turn is a user message, and the
/// ReplyService over them.
struct World {
    _db: TestDb,
    sim: SlackSim,
    store: Arc<PgConversationStore>,
    service: Arc<ReplyService>,
    conversation: Conversation,
    turn: MessageTs,
}

impl World {
    async fn new() -> World {
        let db = TestDb::new().await;
        let sim = SlackSim::start_default().unwrap();
        let store = Arc::new(PgConversationStore::new(db.pool().clone()));
        let thread = sim
            .post_user_message(TEAM, CHANNEL, USER, "<@U0ACMEBOT1> is prod ok?", None)
            .unwrap();
        let turn = MessageTs::parse(thread.as_str()).unwrap();
        let key = ThreadKey::new(
            TeamId::parse(TEAM).unwrap(),
            ChannelId::parse(CHANNEL).unwrap(),
            turn.clone(),
        );
        let conversation = store.upsert_conversation(&key).await.unwrap();
        store
            .insert_message(NewMessage {
                conversation_id: conversation.id,
                slack_ts: turn.clone(),
                sender: Sender::User(SlackUserId::parse(USER).unwrap()),
                sender_name: None,
                sender_email: None,
                text: "is prod ok?".into(),
                source_event_id: None,
                in_reply_to: None,
                kind: MessageKind::Message,
            })
            .await
            .unwrap();
        store
            .set_current_turn(conversation.id, &turn)
            .await
            .unwrap();
        let slack = Arc::new(SimSlack {
            http: reqwest::Client::new(),
            base: sim.base_url(),
            token: sim.team(TEAM).unwrap().bot_token,
        });
        let service = Arc::new(ReplyService::new(store.clone(), slack));
        World {
            _db: db,
            sim,
            store,
            service,
            conversation,
            turn,
        }
    }

    fn bot_posts(&self) -> Vec<(String, Option<String>)> {
        self.sim.with_state(|st| {
            st.bot_messages_in(TEAM, CHANNEL)
                .into_iter()
                .map(|m| (m.text.clone(), m.thread_ts.clone()))
                .collect()
        })
    }

    async fn agent_messages(&self) -> Vec<String> {
        self.store
            .history(self.conversation.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.sender == Sender::Agent)
            .map(|m| m.text)
            .collect()
    }
}

/// A gRPC server with both SendReply services on loopback; stops when dropped.
struct GrpcServer {
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The token alone when one is given (no network trusted), else the loopback default.
fn reply_auth(token: Option<&str>) -> ReplyAuth {
    match token {
        Some(t) => ReplyAuth::new(Some(Secret::new(t))).with_networks(Networks::none()),
        None => ReplyAuth::new(None),
    }
}

async fn grpc_server(service: Arc<ReplyService>, token: Option<&str>) -> GrpcServer {
    let mut shell = GrpcShell::new().await;
    ReplyGrpc::new(service, reply_auth(token)).add_to(&mut shell);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(shell.serve(listener, async {
        let _ = stopped.await;
    }));
    GrpcServer {
        endpoint: format!("http://{addr}"),
        stop: Some(stop),
    }
}

fn command(conversation_id: &str, message: &str) -> SendReplyCommand {
    SendReplyCommand {
        turn_ts: String::new(),
        conversation_id: conversation_id.to_owned(),
        message: message.to_owned(),
    }
}

fn with_token(cmd: SendReplyCommand, token: Option<&str>) -> tonic::Request<SendReplyCommand> {
    let mut request = tonic::Request::new(cmd);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[actix_rt::test]
async fn both_grpc_paths_post_into_the_thread_once_per_text() {
    let w = World::new().await;
    let server = grpc_server(w.service.clone(), None).await;
    let mut backend = BackendServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();
    let mut legacy = InfraGptServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();
    let id = w.conversation.id.to_string();

    let status = backend
        .send_reply(command(&id, "All green."))
        .await
        .unwrap()
        .into_inner();
    assert!(status.success, "{status:?}");
    assert!(status.error.is_empty());
    // The agent retries (on either path): still one post.
    assert!(
        backend
            .send_reply(command(&id, "All green."))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(
        legacy
            .send_reply(command(&id, "All green."))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    // The legacy path posts new text too.
    let status = legacy
        .send_reply(command(&format!("  {id} "), "Also: search is degraded."))
        .await
        .unwrap()
        .into_inner();
    assert!(status.success, "{status:?}");

    let thread = Some(w.turn.as_str().to_owned());
    assert_eq!(
        w.bot_posts(),
        vec![
            ("All green.".to_owned(), thread.clone()),
            ("Also: search is degraded.".to_owned(), thread),
        ]
    );
    assert_eq!(w.sim.calls("chat.postMessage").len(), 2);
    assert_eq!(
        w.agent_messages().await,
        vec!["All green.", "Also: search is degraded."]
    );
    assert!(
        w.store
            .agent_reply_exists(w.conversation.id, &w.turn, Some("All green."))
            .await
            .unwrap(),
        "stored as an answer to the current turn"
    );
}

#[actix_rt::test]
async fn invalid_input_and_unknown_conversations() {
    let w = World::new().await;
    let server = grpc_server(w.service.clone(), None).await;
    let mut backend = BackendServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();
    let mut legacy = InfraGptServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();

    // Malformed input is INVALID_ARGUMENT on both paths (the caller must fix the call).
    let err = backend
        .send_reply(command("not-a-uuid", "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not a valid UUID"),
        "{}",
        err.message()
    );
    let err = legacy.send_reply(command("", "hi")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = backend
        .send_reply(command(&w.conversation.id.to_string(), "  "))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("empty"), "{}", err.message());

    let unknown = uuid::Uuid::new_v4().to_string();
    let err = backend
        .send_reply(command(&unknown, "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&unknown));
    let err = legacy
        .send_reply(command(&unknown, "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    assert!(w.sim.calls("chat.postMessage").is_empty(), "nothing posted");
}

#[actix_rt::test]
async fn reply_token_is_enforced_on_grpc() {
    let w = World::new().await;
    let server = grpc_server(w.service.clone(), Some("t0ken")).await;
    let mut backend = BackendServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();
    let mut legacy = InfraGptServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();
    let id = w.conversation.id.to_string();

    for token in [None, Some("wrong")] {
        let err = backend
            .send_reply(with_token(command(&id, "hi"), token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let err = legacy
            .send_reply(with_token(command(&id, "hi"), token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
    }
    // Authentication comes first: an unauthenticated caller learns nothing about ids.
    let err = backend
        .send_reply(with_token(command("not-a-uuid", "hi"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(w.sim.calls("chat.postMessage").is_empty());

    assert!(
        backend
            .send_reply(with_token(command(&id, "hi"), Some("t0ken")))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(
        legacy
            .send_reply(with_token(command(&id, "hi 2"), Some("t0ken")))
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert_eq!(w.bot_posts().len(), 2);
}

/// The full HTTP app (error handlers, 404s) with `POST /reply`.
macro_rules! http_app {
    ($service:expr, $token:expr) => {{
        let token: Option<&str> = $token;
        let shell = HttpShell::new(Readiness::default(), false, CorsConfig::default())
            .with_routes(configure($service, reply_auth(token)));
        atest::init_service(infragpt::http::app(shell)).await
    }};
}

fn post(body: serde_json::Value, token: Option<&str>) -> atest::TestRequest {
    // From loopback, as a local agent would call.
    let mut req = atest::TestRequest::post()
        .uri("/reply")
        .peer_addr(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)))
        .set_json(body);
    if let Some(token) = token {
        req = req.insert_header(("authorization", format!("Bearer {token}")));
    }
    req
}

#[actix_rt::test]
async fn post_reply_over_http() {
    let w = World::new().await;
    let app = http_app!(w.service.clone(), None);
    let id = w.conversation.id.to_string();

    let resp = atest::call_service(
        &app,
        post(
            serde_json::json!({"conversation_id": id, "message": "Deployed."}),
            None,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = atest::read_body_json(resp).await;
    assert_eq!(body, serde_json::json!({"success": true, "error": ""}));
    // Idempotent per turn.
    let resp = atest::call_service(
        &app,
        post(
            serde_json::json!({"conversation_id": id, "message": "Deployed."}),
            None,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        w.bot_posts(),
        vec![("Deployed.".to_owned(), Some(w.turn.as_str().to_owned()))]
    );
    assert_eq!(w.agent_messages().await, vec!["Deployed."]);

    let resp = atest::call_service(
        &app,
        post(
            serde_json::json!({"conversation_id": "nope", "message": "x"}),
            None,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = atest::read_body_json(resp).await;
    assert_eq!(body["error"]["code"], "bad_request");
    assert_eq!(body["success"], false);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid UUID")
    );

    let resp = atest::call_service(
        &app,
        post(
            serde_json::json!({"conversation_id": uuid::Uuid::new_v4(), "message": "x"}),
            None,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = atest::read_body_json(resp).await;
    assert_eq!(body["error"]["code"], "not_found");

    let resp = atest::call_service(
        &app,
        post(serde_json::json!({"conversation": id}), None).to_request(),
    )
    .await;
    assert_eq!(resp.status(), 400, "malformed body");
}

#[actix_rt::test]
async fn reply_token_is_enforced_on_http() {
    let w = World::new().await;
    let app = http_app!(w.service.clone(), Some("t0ken"));
    let id = w.conversation.id.to_string();
    let body = serde_json::json!({"conversation_id": id, "message": "hi"});
    for token in [None, Some("wrong")] {
        let resp = atest::call_service(&app, post(body.clone(), token).to_request()).await;
        assert_eq!(resp.status(), 401, "{token:?}");
        let json: serde_json::Value = atest::read_body_json(resp).await;
        assert_eq!(json["error"]["code"], "unauthorized");
    }
    // Checked before the body is parsed.
    let resp = atest::call_service(
        &app,
        atest::TestRequest::post()
            .uri("/reply")
            .set_payload("{not json")
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert!(w.sim.calls("chat.postMessage").is_empty());
    let resp = atest::call_service(&app, post(body, Some("t0ken")).to_request()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(w.bot_posts().len(), 1);
}

/// The whole loop: our agent client calls the dev agent, which calls SendReply on our gRPC
/// server before it returns, like the upstream agent.
#[actix_rt::test]
async fn dev_agent_replies_through_send_reply() {
    let w = World::new().await;
    let server = grpc_server(w.service.clone(), Some("t0ken")).await;
    let dev = DevAgent::start(DevAgentConfig {
        reply_endpoint: Some(server.endpoint.clone()),
        reply_token: Some(Secret::new("t0ken")),
        ..DevAgentConfig::default()
    })
    .unwrap();
    let health = HealthRegistry::new();
    let metrics = Metrics::new().unwrap();
    let mut options = GrpcAgentOptions::from_config(&infragpt::config::AgentConfig::default());
    options.endpoint = dev.endpoint();
    options.call_timeout = Duration::from_secs(30);
    let agent = GrpcAgent::new(options, &health, &metrics).unwrap();

    let turn = AgentTurn {
        conversation_id: w.conversation.id,
        current_message: "deploy api-gateway to staging".into(),
        past_messages: Vec::new(),
        context: serde_json::json!({"team_id": TEAM, "channel_id": CHANNEL}),
        user_id: USER.into(),
        channel_id: CHANNEL.into(),
    };
    let answer = agent.process(turn.clone()).await.unwrap();
    assert!(answer.success, "{answer:?}");
    assert!(answer.response_text.starts_with(DEMO_LABEL));
    let posts = w.bot_posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].0,
        AnswerFormat::Markdown.to_slack(&answer.response_text),
        "SendReply posted the same text, as mrkdwn"
    );
    assert!(
        posts[0]
            .0
            .contains("*Deploy plan for `api-gateway` → `staging`*"),
        "the Markdown heading line is bold in mrkdwn: {}",
        posts[0].0
    );
    assert_eq!(posts[0].1.as_deref(), Some(w.turn.as_str()));
    assert!(
        w.store
            .agent_reply_exists(w.conversation.id, &w.turn, None)
            .await
            .unwrap(),
        "posted before ProcessMessage returned"
    );
    // The same turn again (a retry): the same text is not posted twice.
    agent.process(turn).await.unwrap();
    assert_eq!(w.bot_posts().len(), 1);
}

#[actix_rt::test]
async fn dev_agent_reports_a_failed_send_reply() {
    let w = World::new().await;
    let server = grpc_server(w.service.clone(), Some("t0ken")).await;
    let dev = DevAgent::start(DevAgentConfig {
        reply_endpoint: Some(server.endpoint.clone()),
        reply_token: Some(Secret::new("wrong")),
        ..DevAgentConfig::default()
    })
    .unwrap();
    let health = HealthRegistry::new();
    let metrics = Metrics::new().unwrap();
    let mut options = GrpcAgentOptions::from_config(&infragpt::config::AgentConfig::default());
    options.endpoint = dev.endpoint();
    let agent = GrpcAgent::new(options, &health, &metrics).unwrap();
    let answer = agent
        .process(AgentTurn {
            conversation_id: w.conversation.id,
            current_message: "status".into(),
            past_messages: Vec::new(),
            context: serde_json::json!({}),
            user_id: USER.into(),
            channel_id: CHANNEL.into(),
        })
        .await
        .unwrap();
    assert!(!answer.success);
    assert!(
        answer.error_message.contains("Unauthenticated"),
        "{}",
        answer.error_message
    );
    assert!(w.bot_posts().is_empty());
}
