//! A development agent: a real `agent.AgentService` gRPC server on loopback that behaves like
//! the upstream Python agent, for `infragpt demo`, local runs and tests.
//!
//! On `ProcessMessage` it builds an answer without any model, posts it through
//! `backend.BackendService/SendReply` on the configured backend address *before* it returns
//! (as the upstream agent does), then returns `AgentResponse { success, response_text (the
//! same text), agent_type: "infragpt-dev", confidence, tools_used }`.
//!
//! It recognises a few intents: service status/health, deploy plans, who is on call, a real
//! summary of the thread from `past_messages`, and help; anything else gets a short echo with
//! guidance. Every answer starts with `[demo agent]` so nobody mistakes it for a real one.
//!
//! The server runs on a thread of its own with its own tokio runtime, so it can be started
//! from `#[actix_rt::test]`, `#[tokio::test]`, plain threads or `infragpt demo` alike.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use infragpt_actors::Secret;
use parking_lot::Mutex;
use tonic::Code;

use crate::grpc::pb::agent::agent_service_server::{AgentService, AgentServiceServer};
use crate::grpc::pb::agent::{AgentRequest, AgentResponse};
use crate::grpc::pb::backend::backend_service_client::BackendServiceClient;
use crate::grpc::pb::backend::{SendProgressCommand, SendReplyCommand};

/// `agent_type` of every answer.
pub const AGENT_TYPE: &str = "infragpt-dev";
/// Prefix of every answer.
pub const DEMO_LABEL: &str = "[demo agent]";

/// `response_text` of the upstream agent (v0.1.52) when its handler raised
/// (`src/grpc/handlers.py`); the exception text goes in `error_message`.
pub const UPSTREAM_ERROR_RESPONSE: &str = "I encountered an error while processing your request.";

/// The exception the upstream agent (v0.1.52) raises on every turn that has history: its
/// `Message` (`src/models/context.py`) is a stdlib dataclass over a pydantic model and cannot
/// be constructed.
pub const UPSTREAM_MESSAGE_BUG: &str =
    "'Message' object has no attribute '__pydantic_fields_set__'";

/// How the dev agent misbehaves on purpose (tests).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Answers normally.
    #[default]
    None,
    /// Fails calls with this gRPC status code: the next `times` calls, or all when `None`.
    Status {
        /// The code (`Unavailable`, `Internal`, ...).
        code: Code,
        /// How many calls fail before it answers normally again.
        times: Option<u32>,
    },
    /// Answers `success: false` with this error message (without calling SendReply).
    Unsuccessful(String),
    /// Answers like the upstream agent when its handler raised: `success: false`,
    /// `response_text` [`UPSTREAM_ERROR_RESPONSE`], this exception text as `error_message`,
    /// `agent_type: "error"`, and no SendReply.
    Exception(String),
    /// Answers normally (`success: true` with the text) but never calls SendReply, like the
    /// upstream agent whose SendReply was refused.
    NoSendReply,
}

/// Dev agent settings.
#[derive(Debug, Clone)]
pub struct DevAgentConfig {
    /// Where to listen (default `127.0.0.1:0`, an ephemeral port).
    pub bind: SocketAddr,
    /// The backend's gRPC address for SendReply (`http://127.0.0.1:PORT` or `host:port`).
    pub reply_endpoint: Option<String>,
    /// Further backends (replicas) for SendReply. With any, each SendReply goes to the next
    /// backend in turn (round robin over `reply_endpoint` and these) and, when one refuses
    /// or is down (`UNAVAILABLE`, `UNKNOWN`, `CANCELLED`, a deadline or a transport error),
    /// to the one after it, for up to [`REPLY_FAILOVER_BUDGET`]. The same text is sent again,
    /// which SendReply posts once however many backends receive it.
    pub more_reply_endpoints: Vec<String>,
    /// Sent as `authorization: Bearer <token>` on SendReply.
    pub reply_token: Option<Secret>,
    /// Call SendReply before returning (the upstream agent's behaviour; default true).
    pub call_send_reply: bool,
    /// Time spent "thinking" before answering (default 0).
    pub think_time: Duration,
    /// Report progress (SendProgress, to the first reply endpoint) before answering: one
    /// step per tool the answer uses, then "writing the answer", each followed by this pause.
    /// `None` (default): no progress reports, like the upstream agent.
    pub progress_step: Option<Duration>,
    /// Deliberate failures.
    pub fail_mode: FailMode,
    /// Keep every request for [`DevAgentHandle::requests`] (default true; benchmarks turn it
    /// off so memory does not grow with the load).
    pub record_requests: bool,
}

impl Default for DevAgentConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            reply_endpoint: None,
            more_reply_endpoints: Vec::new(),
            reply_token: None,
            call_send_reply: true,
            think_time: Duration::ZERO,
            progress_step: None,
            fail_mode: FailMode::None,
            record_requests: true,
        }
    }
}

/// The dev agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevAgentError {
    /// The settings are inconsistent.
    #[error("dev agent config: {0}")]
    Config(String),
    /// `reply_endpoint` is not a URI tonic accepts.
    #[error("dev agent config: reply_endpoint {uri:?}: {source}")]
    ReplyEndpoint {
        /// The endpoint.
        uri: String,
        /// Why tonic refused it.
        #[source]
        source: tonic::transport::Error,
    },
    /// Binding, the runtime or the thread failed.
    #[error("dev agent I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The answer the dev agent gives.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoAnswer {
    /// Slack-markdown text, starting with [`DEMO_LABEL`].
    pub text: String,
    /// How sure the "agent" is.
    pub confidence: f32,
    /// Which pretend tools it used.
    pub tools_used: Vec<String>,
}

struct Shared {
    config: DevAgentConfig,
    fail_mode: Mutex<FailMode>,
    requests: Mutex<Vec<AgentRequest>>,
    /// One client per reply endpoint (`reply_endpoint` first).
    reply_clients: Vec<BackendServiceClient<tonic::transport::Channel>>,
    /// The next reply endpoint to use (round robin).
    next_reply: AtomicUsize,
    /// SendReply calls that failed over to another endpoint.
    reply_failovers: AtomicU64,
}

/// How long a SendReply keeps failing over between several reply endpoints before the turn
/// is answered `success: false`.
pub const REPLY_FAILOVER_BUDGET: Duration = Duration::from_secs(60);
/// Attempts of a SendReply to a single backend whose transport failed (100 ms, 200 ms, ...
/// apart).
const SINGLE_REPLY_ATTEMPTS: u32 = 5;
/// Per-call deadline of a SendReply when failing over is possible (SendReply waits up to
/// 10 s for another replica holding the same reply).
const REPLY_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Failures after which another backend may succeed: the backend is down, stopping, or
/// holds nothing it could answer. A connection a stopping backend tore down mid-call comes
/// back as `INTERNAL` with an HTTP/2 error (tonic's mapping of a reset or GOAWAY); SendReply
/// is idempotent, so that is retried elsewhere too.
fn worth_failing_over(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    ) || (status.code() == Code::Internal && status.message().contains("h2 protocol error"))
}

#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
}

impl Service {
    /// The failure to inject for this call, if any.
    fn take_failure(&self) -> Option<FailMode> {
        let mut mode = self.shared.fail_mode.lock();
        match &mut *mode {
            FailMode::None => None,
            FailMode::Unsuccessful(_) | FailMode::Exception(_) | FailMode::NoSendReply => {
                Some(mode.clone())
            }
            FailMode::Status { times: None, .. } => Some(mode.clone()),
            FailMode::Status {
                code,
                times: Some(n),
            } => {
                let code = *code;
                if *n <= 1 {
                    *mode = FailMode::None;
                } else {
                    *n -= 1;
                }
                Some(FailMode::Status {
                    code,
                    times: Some(1),
                })
            }
        }
    }

    /// Reports what it is doing, step by step (best effort: a refused report is logged).
    async fn report_progress(&self, conversation_id: &str, answer: &DemoAnswer, pause: Duration) {
        let Some(client) = self.shared.reply_clients.first() else {
            return;
        };
        let steps = answer
            .tools_used
            .iter()
            .map(|tool| format!("running {tool}…"))
            .chain(std::iter::once("writing the answer…".to_owned()));
        for text in steps {
            let mut request = tonic::Request::new(SendProgressCommand {
                conversation_id: conversation_id.to_owned(),
                text,
            });
            if let Some(token) = &self.shared.config.reply_token
                && let Ok(value) = format!("Bearer {}", token.expose()).parse()
            {
                request.metadata_mut().insert("authorization", value);
            }
            if let Err(status) = client.clone().send_progress(request).await {
                tracing::warn!(conversation_id, code = ?status.code(), error = %status.message(), "dev agent: SendProgress failed");
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// SendReply with the turn it answers (`turn_ts`, echoed from the context's `message_ts`).
    async fn send_reply(
        &self,
        conversation_id: &str,
        text: &str,
        turn_ts: &str,
    ) -> Result<(), String> {
        let clients = &self.shared.reply_clients;
        if clients.is_empty() {
            return Err("no reply endpoint configured".to_owned());
        }
        let request = || -> Result<tonic::Request<SendReplyCommand>, String> {
            let mut request = tonic::Request::new(SendReplyCommand {
                conversation_id: conversation_id.to_owned(),
                message: text.to_owned(),
                turn_ts: turn_ts.to_owned(),
            });
            if let Some(token) = &self.shared.config.reply_token {
                let value = format!("Bearer {}", token.expose())
                    .parse()
                    .map_err(|_| "the reply token is not valid header text".to_owned())?;
                request.metadata_mut().insert("authorization", value);
            }
            Ok(request)
        };
        if clients.len() == 1 {
            // One backend: a failure of the transport itself (tonic's own status, carrying
            // its cause: the connection refused or torn down) is tried again a few times.
            // tonic's channel answers the first call after a failed reconnect with that old
            // error, even when the backend has since come back (a restarted process).
            let mut attempt = 1u32;
            let status = loop {
                match clients[0].clone().send_reply(request()?).await {
                    Ok(answer) => break answer.into_inner(),
                    Err(s)
                        if attempt < SINGLE_REPLY_ATTEMPTS
                            && std::error::Error::source(&s).is_some() =>
                    {
                        tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                        attempt += 1;
                    }
                    Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
                }
            };
            return if status.success {
                Ok(())
            } else {
                Err(status.error)
            };
        }
        // Several replicas: the next one in turn, then the others while they refuse.
        let deadline = tokio::time::Instant::now() + REPLY_FAILOVER_BUDGET;
        let mut index = self.shared.next_reply.fetch_add(1, Ordering::Relaxed);
        let mut tried = 0usize;
        loop {
            let client = &clients[index % clients.len()];
            let mut call = request()?;
            call.set_timeout(REPLY_CALL_TIMEOUT);
            let error = match client.clone().send_reply(call).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    return if answer.success {
                        Ok(())
                    } else {
                        Err(answer.error)
                    };
                }
                Err(status) if worth_failing_over(&status) => status,
                Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "every reply endpoint refused for {REPLY_FAILOVER_BUDGET:?}; last: {:?}: {}",
                    error.code(),
                    error.message()
                ));
            }
            tracing::debug!(
                conversation_id,
                endpoint = index % clients.len(),
                code = ?error.code(),
                error = %error.message(),
                "dev agent: SendReply failing over to the next endpoint"
            );
            self.shared.reply_failovers.fetch_add(1, Ordering::Relaxed);
            index += 1;
            tried += 1;
            if tried.is_multiple_of(clients.len()) {
                // Every endpoint refused once: give restarting replicas a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tonic::async_trait]
impl AgentService for Service {
    async fn process_message(
        &self,
        request: tonic::Request<AgentRequest>,
    ) -> Result<tonic::Response<AgentResponse>, tonic::Status> {
        let request = request.into_inner();
        if self.shared.config.record_requests {
            self.shared.requests.lock().push(request.clone());
        }
        if !self.shared.config.think_time.is_zero() {
            tokio::time::sleep(self.shared.config.think_time).await;
        }
        match self.take_failure() {
            Some(FailMode::Status { code, .. }) => {
                return Err(tonic::Status::new(code, "dev agent: injected failure"));
            }
            Some(FailMode::Unsuccessful(error)) => {
                return Ok(tonic::Response::new(AgentResponse {
                    success: false,
                    response_text: String::new(),
                    error_message: error,
                    agent_type: AGENT_TYPE.to_owned(),
                    confidence: 0.0,
                    tools_used: Vec::new(),
                }));
            }
            Some(FailMode::Exception(error)) => {
                return Ok(tonic::Response::new(AgentResponse {
                    success: false,
                    response_text: UPSTREAM_ERROR_RESPONSE.to_owned(),
                    error_message: error,
                    agent_type: "error".to_owned(),
                    confidence: 0.0,
                    tools_used: Vec::new(),
                }));
            }
            Some(FailMode::NoSendReply) => {
                let answer = compose_answer(&request);
                return Ok(tonic::Response::new(AgentResponse {
                    success: true,
                    response_text: answer.text,
                    error_message: String::new(),
                    agent_type: AGENT_TYPE.to_owned(),
                    confidence: answer.confidence,
                    tools_used: answer.tools_used,
                }));
            }
            Some(FailMode::None) | None => {}
        }
        let answer = self.answer(&request).await;
        if let Some(pause) = self.shared.config.progress_step {
            self.report_progress(&request.conversation_id, &answer, pause)
                .await;
        }
        let turn_ts = serde_json::from_str::<serde_json::Value>(&request.context)
            .ok()
            .and_then(|c| c["message_ts"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if self.shared.config.call_send_reply
            && let Err(error) = self
                .send_reply(&request.conversation_id, &answer.text, &turn_ts)
                .await
        {
            tracing::warn!(conversation_id = %request.conversation_id, %error, "dev agent: SendReply failed");
            return Ok(tonic::Response::new(AgentResponse {
                success: false,
                response_text: answer.text,
                error_message: format!("SendReply failed: {error}"),
                agent_type: AGENT_TYPE.to_owned(),
                confidence: answer.confidence,
                tools_used: answer.tools_used,
            }));
        }
        Ok(tonic::Response::new(AgentResponse {
            success: true,
            response_text: answer.text,
            error_message: String::new(),
            agent_type: AGENT_TYPE.to_owned(),
            confidence: answer.confidence,
            tools_used: answer.tools_used,
        }))
    }
}

/// Approvals (issue 14): "restart <service> in <env>" asks before acting; the decision turn
/// is answered accordingly.
impl Service {
    async fn answer(&self, request: &AgentRequest) -> DemoAnswer {
        let context: serde_json::Value = serde_json::from_str(&request.context).unwrap_or_default();
        if let Some(answer) = decision_answer(&context) {
            return answer;
        }
        let Some((service, env)) = restart_target(&request.current_message) else {
            return compose_answer(request);
        };
        let turn = context["message_ts"].as_str().unwrap_or_default();
        let summary = format!("Restart {service} in {env}");
        let action_key = format!("restart:{service}:{env}:{turn}");
        let text = match self
            .request_approval(
                &request.conversation_id,
                &action_key,
                &summary,
                &service,
                &env,
            )
            .await
        {
            Ok(id) => format!(
                "{DEMO_LABEL} Restarting *{service}* in *{env}* needs approval: I asked in this thread (approval `{id}`) and will go ahead only once someone allowed approves."
            ),
            Err(e) => format!(
                "{DEMO_LABEL} I could not ask for approval to restart {service} in {env}: {e}"
            ),
        };
        DemoAnswer {
            text,
            confidence: 0.9,
            tools_used: vec!["backend.RequestApproval".to_owned()],
        }
    }

    async fn request_approval(
        &self,
        conversation_id: &str,
        action_key: &str,
        summary: &str,
        service: &str,
        env: &str,
    ) -> Result<String, String> {
        let client = self
            .shared
            .reply_clients
            .first()
            .ok_or_else(|| "no backend endpoint configured".to_owned())?;
        let mut call = tonic::Request::new(crate::grpc::pb::backend::RequestApprovalCommand {
            conversation_id: conversation_id.to_owned(),
            action_key: action_key.to_owned(),
            summary: summary.to_owned(),
            details: format!(
                "Runs `kubectl -n {env} rollout restart deployment/{service}`.\n\n\
                 * pods are replaced one at a time\n* in-flight requests may be retried"
            ),
            risk: "high".to_owned(),
            approvers: Vec::new(),
            expires_in_secs: 0,
        });
        if let Some(token) = &self.shared.config.reply_token {
            let value = format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| "the reply token is not valid header text".to_owned())?;
            call.metadata_mut().insert("authorization", value);
        }
        let reply = client
            .clone()
            .request_approval(call)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        reply.approval.map(|a| a.approval_id).ok_or(reply.error)
    }
}

/// "restart api in staging" → `("api", "staging")`: the verb, a service and `in <env>` (a
/// bare "restart x" stays an echo, as the tests that use such phrases expect).
pub fn restart_target(text: &str) -> Option<(String, String)> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_')
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let start = words.iter().position(|w| w == "restart")?;
    let rest = &words[start + 1..];
    let skip = ["the", "a", "an", "service", "please"];
    let service = rest
        .iter()
        .find(|w| !skip.contains(&w.as_str()) && *w != "in")?
        .clone();
    let env = rest
        .iter()
        .position(|w| w == "in")
        .and_then(|i| rest.get(i + 1))
        .cloned()?;
    Some((service, env))
}

/// The answer to a decision turn (`context.approval`), if this is one.
pub fn decision_answer(context: &serde_json::Value) -> Option<DemoAnswer> {
    let approval = context.get("approval")?;
    let summary = approval["summary"].as_str().unwrap_or("the action");
    let by = approval["decided_by"]
        .as_str()
        .map_or_else(|| "someone".to_owned(), |u| format!("<@{u}>"));
    let body = match approval["decision"].as_str() {
        Some("approved") => {
            format!("Approved by {by}. Done: {summary} (simulated; nothing was really restarted).")
        }
        Some("denied") => {
            let reason = approval["reason"]
                .as_str()
                .map_or_else(String::new, |r| format!(" Reason: {r}."));
            format!("Denied by {by}, so I did not do it: {summary}.{reason}")
        }
        _ => format!("Nobody decided in time, so I did not do it: {summary}."),
    };
    Some(DemoAnswer {
        text: format!("{DEMO_LABEL} {body}"),
        confidence: 1.0,
        tools_used: Vec::new(),
    })
}

/// A running dev agent. Dropping it stops the server.
pub struct DevAgentHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for DevAgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevAgentHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The development agent.
#[derive(Debug)]
pub struct DevAgent;

/// How long a stopping server waits for open calls before it is cut off.
const STOP_GRACE: Duration = Duration::from_millis(500);

impl DevAgent {
    /// Binds `config.bind` and serves on a thread of its own.
    pub fn start(config: DevAgentConfig) -> Result<DevAgentHandle, DevAgentError> {
        let listener = std::net::TcpListener::bind(config.bind)?;
        Self::start_on(config, listener)
    }

    /// Serves on `listener`, bound beforehand (`config.bind` is not used): a caller that
    /// must name the agent's port before the agent starts (a test's service configuration)
    /// keeps the port bound meanwhile, so nothing else can take it.
    pub fn start_on(
        config: DevAgentConfig,
        listener: std::net::TcpListener,
    ) -> Result<DevAgentHandle, DevAgentError> {
        if config.reply_endpoint.is_none() {
            if config.call_send_reply {
                return Err(DevAgentError::Config(
                    "call_send_reply needs reply_endpoint (the backend's gRPC address)".to_owned(),
                ));
            }
            if !config.more_reply_endpoints.is_empty() {
                return Err(DevAgentError::Config(
                    "more_reply_endpoints needs reply_endpoint".to_owned(),
                ));
            }
        }
        let reply_endpoints = config
            .reply_endpoint
            .iter()
            .chain(&config.more_reply_endpoints)
            .map(|raw| {
                let uri = crate::config::normalize_endpoint(raw)
                    .map_err(|e| DevAgentError::Config(format!("reply endpoint: {e}")))?;
                tonic::transport::Endpoint::from_shared(uri.clone())
                    .map(|e| e.connect_timeout(Duration::from_secs(5)))
                    .map_err(|source| DevAgentError::ReplyEndpoint { uri, source })
            })
            .collect::<Result<Vec<_>, _>>()?;

        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("dev-agent-{}", addr.port()))
            .enable_all()
            .build()?;
        // The SendReply channel's background task lives on the agent's runtime.
        let reply_clients = {
            let _guard = runtime.enter();
            reply_endpoints
                .into_iter()
                .map(|e| BackendServiceClient::new(e.connect_lazy()))
                .collect()
        };
        let shared = Arc::new(Shared {
            fail_mode: Mutex::new(config.fail_mode.clone()),
            config,
            requests: Mutex::new(Vec::new()),
            reply_clients,
            next_reply: AtomicUsize::new(0),
            reply_failovers: AtomicU64::new(0),
        });
        let service = Service {
            shared: shared.clone(),
        };
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("dev-agent-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                    let server = tokio::spawn(
                        tonic::transport::Server::builder()
                            .add_service(AgentServiceServer::new(service))
                            .serve_with_incoming_shutdown(
                                tonic::transport::server::TcpIncoming::from(listener),
                                async {
                                    let _ = stop_rx.await;
                                },
                            ),
                    );
                    let _ = shutdown_rx.await;
                    let _ = stop_tx.send(());
                    match tokio::time::timeout(STOP_GRACE, server).await {
                        Ok(Ok(Ok(()))) => {}
                        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "dev agent server failed"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "dev agent server task failed"),
                        Err(_) => tracing::warn!("dev agent calls cut off at stop"),
                    }
                });
                // Dropping the runtime here aborts whatever is left (open connections).
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(DevAgentError::Io(std::io::Error::other(
                    "the dev agent thread stopped during start-up",
                )));
            }
        }
        tracing::info!(%addr, "dev agent listening");
        Ok(DevAgentHandle {
            addr,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }
}

impl DevAgentHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `agent.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<AgentRequest> {
        self.shared.requests.lock().clone()
    }

    /// SendReply calls that went on to another reply endpoint after one refused or was down
    /// (several endpoints only).
    pub fn reply_failovers(&self) -> u64 {
        self.shared.reply_failovers.load(Ordering::Relaxed)
    }

    /// Changes the failure mode from now on.
    pub fn set_fail_mode(&self, mode: FailMode) {
        *self.shared.fail_mode.lock() = mode;
    }

    /// Stops the server and waits for its thread (open calls get a short grace period).
    /// Returns every request it received, including those that arrived while it stopped.
    pub fn stop(mut self) -> Vec<AgentRequest> {
        self.stop_inner();
        self.requests()
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!(addr = %self.addr, "dev agent thread panicked");
        }
    }
}

impl Drop for DevAgentHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

// ----- answers --------------------------------------------------------------------------------

/// Builds the dev agent's answer to a request (no model: keyword intents).
pub fn compose_answer(request: &AgentRequest) -> DemoAnswer {
    let text = request.current_message.trim();
    let lower = text.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let (body, confidence, tools): (String, f32, &[&str]) = if has(&["summar", "tl;dr", "recap"]) {
        (summary(request), 0.85, &["thread.history"])
    } else if has(&["on-call", "on call", "oncall", "pager"]) {
        (on_call(), 0.95, &["demo.oncall_schedule"])
    } else if has(&["deploy", "rollout", "release"]) {
        (deploy_plan(text), 0.8, &["demo.deploy_planner"])
    } else if has(&["status", "health", "uptime", "is it down", "outage"]) {
        (status_table(), 0.9, &["demo.service_status"])
    } else if text.is_empty() || has(&["help", "what can you do"]) {
        (help(), 1.0, &[])
    } else {
        (echo(text), 0.3, &[])
    };
    DemoAnswer {
        text: format!("{DEMO_LABEL} {body}"),
        confidence,
        tools_used: tools.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn status_table() -> String {
    let rows = [
        ("api-gateway", "operational", "99.99%", "118 ms"),
        ("payments", "operational", "99.95%", "240 ms"),
        ("search", "degraded", "99.20%", "870 ms"),
        ("auth", "operational", "100.00%", "64 ms"),
        ("postgres-primary", "operational", "99.99%", "3 ms"),
    ];
    let mut table = String::from("SERVICE           STATUS        UPTIME(30d)  P95\n");
    for (name, status, uptime, p95) in rows {
        table.push_str(&format!("{name:<17} {status:<13} {uptime:<12} {p95}\n"));
    }
    format!(
        "**Service status** (sample data, not live):\n\n```\n{table}```\n:warning: `search` is degraded: p95 latency is above its 500 ms objective. Next step: check the indexer's queue depth and recent deploys."
    )
}

/// The thing to deploy and the environment, from "deploy X to Y".
fn deploy_target(text: &str) -> (Option<String>, Option<String>) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let clean = |w: &str| {
        w.trim_matches(|c: char| {
            !c.is_alphanumeric() && c != '-' && c != '_' && c != '.' && c != '/' && c != '@'
        })
        .to_owned()
    };
    let start = words.iter().position(|w| {
        let w = w.to_lowercase();
        w.starts_with("deploy") || w.starts_with("rollout") || w.starts_with("release")
    });
    let Some(start) = start else {
        return (None, None);
    };
    let rest = &words[start + 1..];
    let skip = ["the", "a", "an", "service", "please", "of"];
    let target = rest
        .iter()
        .map(|w| clean(w))
        .find(|w| !w.is_empty() && !skip.contains(&w.to_lowercase().as_str()) && w != "to");
    let env = rest
        .iter()
        .position(|w| w.eq_ignore_ascii_case("to") || w.eq_ignore_ascii_case("in"))
        .and_then(|i| rest.get(i + 1))
        .map(|w| clean(w))
        .filter(|w| !w.is_empty());
    let target = target.filter(|t| Some(t) != env.as_ref());
    (target, env)
}

fn deploy_plan(text: &str) -> String {
    let (target, env) = deploy_target(text);
    let target = target.unwrap_or_else(|| "the service".to_owned());
    let env = env.unwrap_or_else(|| "production".to_owned());
    format!(
        "**Deploy plan for `{target}` → `{env}`** (checklist only; nothing was deployed):\n\n\
         1. Confirm CI is green on the commit you are shipping and the changelog is reviewed.\n\
         2. Check `{env}` health and error budget first (`status` shows the sample dashboard).\n\
         3. Apply pending database migrations, backwards compatible with the running version.\n\
         4. Roll out `{target}` gradually: canary 10% → watch errors and p95 for 10 minutes → 50% → 100%.\n\
         5. Keep the previous release ready: `rollback {target}` if errors rise above baseline.\n\
         6. Announce start and finish in this thread and tag the on-call engineer."
    )
}

fn on_call() -> String {
    "**On-call rotation** (demo schedule):\n\n\
     - Primary: Alice Liddell (until Monday 09:00 UTC)\n\
     - Secondary: Bob Builder\n\
     - Escalation: #ops, then the engineering manager after 15 minutes\n\n\
     Page the primary for anything customer-facing."
        .to_owned()
}

fn display_sender(sender: &str) -> String {
    match sender.strip_prefix("user/") {
        Some(id) => format!("<@{id}>"),
        None if sender == "agent" => "InfraGPT".to_owned(),
        None if sender == "user" => "a user".to_owned(),
        None => sender.to_owned(),
    }
}

/// `user/{id}`, or plain `user` (`agent.history_sender: plain`).
fn is_user(sender: &str) -> bool {
    sender == "user" || sender.starts_with("user/")
}

fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    const MAX: usize = 120;
    if line.chars().count() > MAX {
        let cut: String = line.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

fn summary(request: &AgentRequest) -> String {
    let past = &request.past_messages;
    if past.is_empty() {
        return "**Thread summary**: there are no earlier messages in this thread yet.".to_owned();
    }
    let mut seen = BTreeSet::new();
    let participants: Vec<String> = past
        .iter()
        .filter(|m| seen.insert(m.sender.clone()))
        .map(|m| display_sender(&m.sender))
        .collect();
    let points: Vec<String> = past
        .iter()
        .filter(|m| is_user(&m.sender))
        .map(|m| first_line(&m.content))
        .filter(|l| !l.is_empty())
        .map(|l| format!("- {l}"))
        .collect();
    let agent_replies = past.iter().filter(|m| m.sender == "agent").count();
    let mut out = format!(
        "**Thread summary**: {} earlier message{} ({} from the assistant) by {}.\n\n",
        past.len(),
        if past.len() == 1 { "" } else { "s" },
        agent_replies,
        participants.join(", ")
    );
    if points.is_empty() {
        out.push_str("No user messages to summarise yet.");
    } else {
        out.push_str("**Main points:**\n\n");
        out.push_str(&points.join("\n"));
    }
    out
}

fn help() -> String {
    "I am the development agent (no AI model behind me). Try:\n\n\
     - `status` – a sample service status table\n\
     - `deploy <service> to <env>` – a deploy checklist\n\
     - `who is on call?` – the demo rotation\n\
     - `summarize` – a summary of this thread so far\n\n\
     Point `agent.endpoint` at the real agent for real answers."
        .to_owned()
}

fn echo(text: &str) -> String {
    format!(
        "You said: “{}”. I only understand a few requests: `status`, `deploy <service>`, `who is on call`, `summarize`, `help`.",
        first_line(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb::agent::Message;

    fn req(text: &str) -> AgentRequest {
        AgentRequest {
            conversation_id: "c".into(),
            current_message: text.into(),
            ..AgentRequest::default()
        }
    }

    fn msg(sender: &str, content: &str) -> Message {
        Message {
            message_id: "m".into(),
            content: content.into(),
            sender: sender.into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn every_answer_is_labelled() {
        for text in [
            "status",
            "deploy api",
            "who is on call",
            "summarize",
            "help",
            "",
            "hello",
        ] {
            let a = compose_answer(&req(text));
            assert!(a.text.starts_with(DEMO_LABEL), "{text}: {}", a.text);
        }
    }

    #[test]
    fn intents() {
        let a = compose_answer(&req("what's the status of prod?"));
        assert!(
            a.text.contains("api-gateway") && a.text.contains("```"),
            "{}",
            a.text
        );
        assert_eq!(a.tools_used, vec!["demo.service_status"]);
        let a = compose_answer(&req("who is on-call tonight?"));
        assert!(a.text.contains("Primary"), "{}", a.text);
        let a = compose_answer(&req("help"));
        assert!(a.text.contains("summarize"));
        let a = compose_answer(&req("tell me a joke"));
        assert!(a.text.contains("tell me a joke") && a.confidence < 0.5);
    }

    #[test]
    fn restarts_ask_and_decisions_are_answered() {
        assert_eq!(
            restart_target("<@U0BOT> please restart api in staging"),
            Some(("api".to_owned(), "staging".to_owned()))
        );
        assert_eq!(
            restart_target("restart payments in prod"),
            Some(("payments".to_owned(), "prod".to_owned()))
        );
        assert_eq!(restart_target("restart tok-x"), None);
        assert_eq!(restart_target("what is the status?"), None);
        let approved = serde_json::json!({"approval": {"decision": "approved",
            "decided_by": "UALICE", "summary": "Restart api in staging"}});
        let a = decision_answer(&approved).unwrap();
        assert!(a.text.contains("Approved by <@UALICE>"), "{}", a.text);
        let denied = serde_json::json!({"approval": {"decision": "denied",
            "decided_by": "UALICE", "reason": "freeze", "summary": "Restart api in staging"}});
        let a = decision_answer(&denied).unwrap();
        assert!(a.text.contains("did not do it") && a.text.contains("freeze"));
        assert!(decision_answer(&serde_json::json!({"message_ts": "1.2"})).is_none());
    }

    #[test]
    fn deploy_names_the_target() {
        let a = compose_answer(&req("please deploy api-gateway to staging"));
        assert!(a.text.contains("`api-gateway` → `staging`"), "{}", a.text);
        let a = compose_answer(&req("can we deploy the payments service?"));
        assert!(a.text.contains("`payments` → `production`"), "{}", a.text);
        let a = compose_answer(&req("deploy"));
        assert!(a.text.contains("`the service`"), "{}", a.text);
    }

    #[test]
    fn summary_uses_the_history() {
        let mut r = req("summarize please");
        assert!(compose_answer(&r).text.contains("no earlier messages"));
        r.past_messages = vec![
            msg("user/U1", "The API is slow since 10:00\nmore detail"),
            msg("agent", "Looking into it"),
            msg("user/U2", "Payments errors too"),
            msg("user/U1", "Rolled back the cache change"),
        ];
        let a = compose_answer(&r);
        assert!(
            a.text.contains("4 earlier messages (1 from the assistant)"),
            "{}",
            a.text
        );
        assert!(a.text.contains("<@U1>, InfraGPT, <@U2>"), "{}", a.text);
        assert!(
            a.text.contains("- The API is slow since 10:00\n"),
            "{}",
            a.text
        );
        assert!(!a.text.contains("more detail"));
        assert!(!a.text.contains("Looking into it"));
        assert!(a.text.contains("- Rolled back the cache change"));
    }
}
