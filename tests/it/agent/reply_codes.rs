//! What SendReply answers for each kind of failure, the same on the three paths the service
//! exposes it on (`backend.BackendService/SendReply`, the legacy
//! `infragpt.InfraGPTService/SendReply`, `POST /reply`): malformed input is INVALID_ARGUMENT /
//! 400, a permanent Slack refusal FAILED_PRECONDITION / 409, a transient failure UNAVAILABLE /
//! 503; `POST /reply` keeps `"success": false` in its error body. And caller values are echoed
//! clipped: a 200 KB id does not come back in the error.

use std::sync::Arc;
use std::time::Duration;

use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt::grpc::pb::backend::{SendReplyCommand, Status};
use infragpt::grpc::pb::infragpt::infra_gpt_service_client::InfraGptServiceClient;
use infragpt::reply::{ReplyAuth, ReplyModule};
use infragpt_actors::conversation::{ConversationStore, ReplyService, SlackApiError};
use infragpt_actors::ids::{ChannelId, MessageTs, TeamId, ThreadKey};
use infragpt_actors::testing::{FakeSlack, MemoryConversationStore};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::app::TestApp;

/// The served service with only SendReply, over in-memory fakes whose failures the test sets.
struct Reply {
    app: TestApp,
    store: Arc<MemoryConversationStore>,
    slack: Arc<FakeSlack>,
    conversation: String,
}

impl Reply {
    async fn start() -> Reply {
        let store = MemoryConversationStore::new();
        let slack = FakeSlack::new();
        let key = ThreadKey::new(
            TeamId::parse("T0REPLY001").unwrap(),
            ChannelId::parse("C0REPLY001").unwrap(),
            MessageTs::parse("1700000000.000100").unwrap(),
        );
        let conversation = store
            .upsert_conversation(&key)
            .await
            .unwrap()
            .id
            .to_string();
        let service = Arc::new(ReplyService::new(store.clone(), slack.clone()));
        let app = TestApp::builder()
            .with_modules(move |config, _, _| {
                // The configured auth: SendReply from loopback, by the TCP peer address.
                let auth = ReplyAuth::from_config(config)?;
                Ok(vec![Box::new(ReplyModule::new(service.clone(), auth))])
            })
            .start()
            .await;
        Reply {
            app,
            store,
            slack,
            conversation,
        }
    }

    fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.app.grpc_addr())
    }

    /// The gRPC code and message of a SendReply on both gRPC paths.
    async fn grpc(&self, id: &str, message: &str) -> [(Code, String); 2] {
        let command = || SendReplyCommand {
            turn_ts: String::new(),
            conversation_id: id.to_owned(),
            message: message.to_owned(),
        };
        let outcome = |r: Result<tonic::Response<Status>, tonic::Status>| match r {
            Ok(r) => {
                let status = r.into_inner();
                assert!(status.success, "OK carries success: true: {status:?}");
                (Code::Ok, status.error)
            }
            Err(s) => (s.code(), s.message().to_owned()),
        };
        let mut backend = BackendServiceClient::connect(self.grpc_endpoint())
            .await
            .unwrap();
        let mut legacy = InfraGptServiceClient::connect(self.grpc_endpoint())
            .await
            .unwrap();
        [
            outcome(backend.send_reply(command()).await),
            outcome(legacy.send_reply(command()).await),
        ]
    }

    /// Status and raw body of `POST /reply`.
    async fn http(&self, id: &str, message: &str) -> (u16, String) {
        let r = self
            .app
            .http()
            .post(format!("{}/reply", self.app.base_url()))
            .json(&json!({"conversation_id": id, "message": message}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// What a case sets up before calling.
#[derive(Debug, Clone)]
enum Fault {
    None,
    Slack(SlackApiError),
    StoreDown,
}

#[actix_rt::test]
async fn send_reply_codes_agree_on_all_three_paths() {
    let r = Reply::start().await;
    let team = TeamId::parse("T0REPLY001").unwrap();
    let known = r.conversation.as_str();
    let unknown = uuid::Uuid::new_v4().to_string();
    let unknown = unknown.as_str();
    let slack = |e: SlackApiError| Fault::Slack(e);
    let api = |code: &str| Fault::Slack(SlackApiError::Api(format!("chat.postMessage: {code}")));
    // (case, fault, conversation id, message, gRPC code, HTTP status, JSON error code)
    let table: Vec<(&str, Fault, &str, &str, Code, u16, &str)> = vec![
        ("posted", Fault::None, known, "hello", Code::Ok, 200, ""),
        (
            "not a UUID",
            Fault::None,
            "not-a-uuid",
            "hi",
            Code::InvalidArgument,
            400,
            "bad_request",
        ),
        (
            "empty id",
            Fault::None,
            "",
            "hi",
            Code::InvalidArgument,
            400,
            "bad_request",
        ),
        (
            "empty message",
            Fault::None,
            known,
            "  ",
            Code::InvalidArgument,
            400,
            "bad_request",
        ),
        (
            "unknown conversation",
            Fault::None,
            unknown,
            "hi",
            Code::NotFound,
            404,
            "not_found",
        ),
        (
            "no slack token for the workspace",
            slack(SlackApiError::UnknownWorkspace(team.clone())),
            known,
            "hi",
            Code::FailedPrecondition,
            409,
            "failed_precondition",
        ),
        (
            "inactive workspace",
            slack(SlackApiError::WorkspaceInactive {
                team: team.clone(),
                error: "invalid_auth".into(),
            }),
            known,
            "hi",
            Code::FailedPrecondition,
            409,
            "failed_precondition",
        ),
        (
            "channel_not_found",
            api("channel_not_found"),
            known,
            "hi",
            Code::FailedPrecondition,
            409,
            "failed_precondition",
        ),
        (
            "not_in_channel",
            api("not_in_channel"),
            known,
            "hi",
            Code::FailedPrecondition,
            409,
            "failed_precondition",
        ),
        (
            "is_archived",
            api("is_archived"),
            known,
            "hi",
            Code::FailedPrecondition,
            409,
            "failed_precondition",
        ),
        (
            "msg_too_long",
            api("msg_too_long"),
            known,
            "hi",
            Code::FailedPrecondition,
            409,
            "failed_precondition",
        ),
        (
            "rate limited",
            slack(SlackApiError::RateLimited {
                retry_after: Duration::from_secs(3),
            }),
            known,
            "hi",
            Code::Unavailable,
            503,
            "unavailable",
        ),
        (
            "ratelimited code",
            api("ratelimited"),
            known,
            "hi",
            Code::Unavailable,
            503,
            "unavailable",
        ),
        (
            "network",
            slack(SlackApiError::Transport("connection reset".into())),
            known,
            "hi",
            Code::Unavailable,
            503,
            "unavailable",
        ),
        (
            "store down",
            Fault::StoreDown,
            known,
            "hi",
            Code::Unavailable,
            503,
            "unavailable",
        ),
    ];

    for (case, fault, id, message, code, status, error_code) in table {
        r.slack.fail_posts(match &fault {
            Fault::Slack(e) => Some(e.clone()),
            _ => None,
        });
        r.store.set_unavailable(matches!(fault, Fault::StoreDown));

        for (path, (got, text)) in ["backend", "legacy"]
            .into_iter()
            .zip(r.grpc(id, message).await)
        {
            assert_eq!(got, code, "{case}: gRPC {path}: {text}");
        }
        let (got, body) = r.http(id, message).await;
        assert_eq!(got, status, "{case}: POST /reply: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        if status == 200 {
            assert_eq!(body, json!({"success": true, "error": ""}), "{case}");
        } else {
            assert_eq!(body["success"], false, "{case}: {body}");
            assert_eq!(body["error"]["code"], error_code, "{case}: {body}");
            assert!(body["error"]["message"].is_string(), "{case}: {body}");
        }
    }
    // Only the successful case posted, and once: the same text for the same turn is one
    // reply, whichever path carries it.
    assert_eq!(r.slack.posts().len(), 1);
    r.app.stop().await;
}

#[actix_rt::test]
async fn a_huge_invalid_id_is_not_echoed_back() {
    let r = Reply::start().await;
    let huge = "x".repeat(200_000);

    let (status, body) = r.http(&huge, "hi").await;
    assert_eq!(status, 400, "{}", &body[..body.len().min(200)]);
    assert!(body.len() < 1024, "a {} byte error body", body.len());
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "bad_request");
    assert_eq!(json["success"], false);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("not a valid UUID"), "{message}");
    assert!(message.contains("(200000 bytes)"), "{message}");

    for (code, message) in r.grpc(&huge, "hi").await {
        assert_eq!(code, Code::InvalidArgument);
        assert!(
            message.len() < 1024,
            "a {} byte status message",
            message.len()
        );
        assert!(message.contains("(200000 bytes)"), "{message}");
    }
    // The clipped echo is also all a JSON parser's complaint gets: an unknown 200 KB field.
    let resp = r
        .app
        .http()
        .post(format!("{}/reply", r.app.base_url()))
        .header("content-type", "application/json")
        .body(format!(r#"{{"{huge}": 1}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(body.len() < 1024, "a {} byte error body", body.len());
    r.app.stop().await;
}
