//! SendReply, the agent's way to post into a conversation, over both transports: gRPC
//! ([`grpc`]: `backend.BackendService/SendReply` and the legacy
//! `infragpt.InfraGPTService/SendReply`) and HTTP ([`http`]: `POST /reply`). Both delegate to one
//! [`ReplyService`] and share who may call it ([`ReplyAuth`]: token, allowed networks or a
//! mutual-TLS client certificate) and the error mapping ([`api_error`]); [`ReplyModule`] plugs
//! them into the server.

pub mod approvals;
pub mod grpc;
pub mod http;

use std::net::IpAddr;
use std::sync::Arc;

use infragpt_actors::Secret;
use infragpt_actors::conversation::{ProgressError, ProgressOutcome, ReplyError, ReplyService};

use self::grpc::ReplyGrpc;
use crate::config::{Config, NetworkParseError, Networks};
use crate::error::{ApiError, echo};
use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::server::{AppState, Module};

/// Who may call SendReply. Any one of these suffices:
///
/// * the bearer token (`agent.reply_token`), when one is configured and presented;
/// * a client certificate verified by the gRPC listener's mutual TLS
///   (`grpc_tls.client_ca_file`; gRPC only);
/// * a source address in `agent.reply_allowed_networks` (loopback by default): the upstream
///   agent's client sends no metadata, so this is how it is authenticated.
///
/// A token that is presented but wrong is refused even from an allowed network: a caller that
/// sends one means to use it, and a stale token should be noticed, not silently bypassed.
/// Without a token, a certificate or an allowed address the call is refused (fail closed).
/// The source address is the TCP peer, never a forwarding header a client could write.
#[derive(Debug, Clone)]
pub struct ReplyAuth {
    token: Option<Secret>,
    networks: Networks,
    client_certificates: bool,
}

impl Default for ReplyAuth {
    fn default() -> Self {
        Self::new(None)
    }
}

/// What the transport knows about a SendReply caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyCaller<'a> {
    /// The `authorization` header or metadata value.
    pub authorization: Option<&'a str>,
    /// The TCP peer address.
    pub peer: Option<IpAddr>,
    /// The connection carried a client certificate the TLS layer verified.
    pub client_certificate: bool,
}

/// How a SendReply caller was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyAuthenticated {
    /// The bearer token.
    Token,
    /// A verified client certificate (mutual TLS).
    ClientCertificate,
    /// The source address is in an allowed network.
    Network,
}

impl ReplyAuthenticated {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::ClientCertificate => "client_certificate",
            Self::Network => "network",
        }
    }
}

impl ReplyAuth {
    /// The token (when given) or a loopback source address, as with the default
    /// `agent.reply_allowed_networks`.
    pub fn new(token: Option<Secret>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()),
            networks: Networks::loopback(),
            client_certificates: false,
        }
    }

    /// `agent.reply_token`, `agent.reply_allowed_networks`, and client certificates when the
    /// gRPC listener requires them (`grpc_tls.client_ca_file`).
    pub fn from_config(config: &Config) -> Result<Self, NetworkParseError> {
        Ok(Self::new(config.agent.reply_token.clone())
            .with_networks(Networks::parse(&config.agent.reply_allowed_networks)?)
            .with_client_certificates(config.grpc_tls.client_certificates_required()))
    }

    /// Accepts callers from these networks (replaces the loopback default).
    pub fn with_networks(mut self, networks: Networks) -> Self {
        self.networks = networks;
        self
    }

    /// Accepts callers with a client certificate verified by the TLS layer (only set this when
    /// the listener verifies them against a CA).
    pub fn with_client_certificates(mut self, accept: bool) -> Self {
        self.client_certificates = accept;
        self
    }

    /// True when a token is configured.
    pub fn is_required(&self) -> bool {
        self.token.is_some()
    }

    /// The networks callers are accepted from without a token.
    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    /// True when no caller can ever be accepted (no token, no client certificates, no
    /// network).
    pub fn accepts_nobody(&self) -> bool {
        self.token.is_none() && !self.client_certificates && self.networks.is_empty()
    }

    /// Decides whether `caller` may call SendReply (constant-time comparison of the token).
    pub fn check(&self, caller: &ReplyCaller<'_>) -> Result<ReplyAuthenticated, ApiError> {
        if let (Some(token), Some(value)) = (&self.token, caller.authorization) {
            return match crate::http::bearer_token(value) {
                Some(presented) if token.ct_eq(presented) => Ok(ReplyAuthenticated::Token),
                Some(_) => Err(ApiError::unauthorized("invalid reply token")),
                None => Err(ApiError::unauthorized(
                    "authorization must be Bearer <reply token>",
                )),
            };
        }
        if self.client_certificates && caller.client_certificate {
            return Ok(ReplyAuthenticated::ClientCertificate);
        }
        if caller.peer.is_some_and(|ip| self.networks.contains(ip)) {
            return Ok(ReplyAuthenticated::Network);
        }
        let from = caller.peer.map_or_else(
            || "an unknown address".to_owned(),
            |ip| ip.to_canonical().to_string(),
        );
        Err(ApiError::unauthorized(if self.token.is_some() {
            format!(
                "missing authorization: Bearer <reply token> (SendReply from {from} is not in agent.reply_allowed_networks)"
            )
        } else {
            format!(
                "SendReply from {from} is not allowed: call from agent.reply_allowed_networks, present a client certificate, or configure agent.reply_token"
            )
        }))
    }
}

impl ReplyAuth {
    /// [`Self::check`] for a gRPC call (`call` and `path` name it in the log of a refusal):
    /// the `authorization` metadata, the TCP peer (also under TLS) and whether mutual TLS
    /// verified a client certificate.
    pub fn check_grpc<T>(
        &self,
        request: &tonic::Request<T>,
        call: &'static str,
        path: &'static str,
    ) -> Result<ReplyAuthenticated, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| {
                v.to_str()
                    .map_err(|_| tonic::Status::unauthenticated("authorization is not ASCII"))
            })
            .transpose()?;
        let caller = ReplyCaller {
            authorization,
            peer: request.remote_addr().map(|a| a.ip()),
            client_certificate: request.peer_certs().is_some_and(|certs| !certs.is_empty()),
        };
        self.check(&caller).map_err(|e| {
            tracing::info!(call, transport = path, peer = ?caller.peer, error = %e.message(), "agent call refused");
            tonic::Status::from(e)
        })
    }
}

/// The SendReply error as the API answers it, the same on both gRPC paths and `POST /reply`.
/// The code tells the agent what to do:
///
/// * malformed input (not a UUID, empty message) → 400 / `INVALID_ARGUMENT`: fix the call;
/// * unknown conversation → 404 / `NOT_FOUND`;
/// * Slack refused for good ([`is_transient`] is false: no token for the
///   workspace, an inactive workspace, `channel_not_found`, `is_archived`, `msg_too_long`...)
///   → 409 / `FAILED_PRECONDITION`: retrying the same call will not help;
/// * the store or Slack is unavailable (network, 5xx, rate limited), or another replica
///   holds the claim on the same reply past the wait → 503 / `UNAVAILABLE`: retry later
///   (SendReply is idempotent per turn and text, across replicas).
///
/// Caller values are echoed clipped ([`echo`]).
///
/// [`is_transient`]: infragpt_actors::conversation::SlackApiError::is_transient
pub fn api_error(e: ReplyError) -> ApiError {
    match e {
        ReplyError::InvalidConversationId(raw) => ApiError::bad_request(format!(
            "conversation_id {:?} is not a valid UUID",
            echo(&raw)
        )),
        ReplyError::EmptyMessage => ApiError::bad_request(e.to_string()),
        ReplyError::InvalidTurn(raw) => ApiError::bad_request(format!(
            "turn_ts {:?} is not a Slack message ts (digits.digits)",
            echo(&raw)
        )),
        ReplyError::NotFound(_) => ApiError::not_found(e.to_string()),
        ReplyError::Store(store) => {
            tracing::warn!(error = %store, "SendReply: conversation store unavailable");
            ApiError::unavailable("the conversation store is unavailable; retry later")
        }
        ReplyError::Slack(slack) if slack.is_transient() => {
            tracing::warn!(error = %slack, transient = true, "SendReply: posting to Slack failed");
            ApiError::unavailable(format!("slack is unavailable; retry later ({slack})"))
        }
        ReplyError::Slack(slack) => {
            tracing::warn!(error = %slack, transient = false, "SendReply: Slack refused the reply");
            ApiError::failed_precondition(format!("slack refused the reply: {slack}"))
        }
        ReplyError::Aborted(reason) => ApiError::internal(format!("SendReply: {reason}")),
        ReplyError::Contended(contended) => {
            tracing::warn!(error = %contended, "SendReply: another process is posting the same reply");
            ApiError::unavailable(format!(
                "the same reply is being posted by another process; retry later ({contended})"
            ))
        }
    }
}

/// The SendProgress error as the API answers it (both gRPC paths and `POST /progress`):
/// malformed input → 400 / `INVALID_ARGUMENT`, unknown conversation → 404 / `NOT_FOUND`, the
/// store unavailable → 503 / `UNAVAILABLE`. Slack failures are not errors: progress is best
/// effort and a failed update is logged.
pub fn progress_error(e: ProgressError) -> ApiError {
    match e {
        ProgressError::InvalidConversationId(raw) => ApiError::bad_request(format!(
            "conversation_id {:?} is not a valid UUID",
            echo(&raw)
        )),
        ProgressError::EmptyText => ApiError::bad_request(e.to_string()),
        ProgressError::NotFound(_) => ApiError::not_found(e.to_string()),
        ProgressError::Store(store) => {
            tracing::warn!(error = %store, "SendProgress: conversation store unavailable");
            ApiError::unavailable("the conversation store is unavailable; retry later")
        }
    }
}

/// For logs: what a SendProgress call did.
pub fn progress_outcome(outcome: ProgressOutcome) -> &'static str {
    match outcome {
        ProgressOutcome::Shown => "shown",
        ProgressOutcome::Coalesced => "coalesced",
        ProgressOutcome::Ignored(why) => why,
    }
}

/// SendReply as a [`Module`]: `POST /reply` on the HTTP listener and both gRPC
/// services on the gRPC listener, sharing one [`ReplyService`] and one [`ReplyAuth`].
pub struct ReplyModule {
    service: Arc<ReplyService>,
    auth: ReplyAuth,
    approvals: Option<Arc<infragpt_actors::approvals::ApprovalService>>,
}

impl std::fmt::Debug for ReplyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyModule")
            .field("token_required", &self.auth.is_required())
            .field("allowed_networks", &self.auth.networks().to_string())
            .finish_non_exhaustive()
    }
}

impl ReplyModule {
    /// The module; `auth` usually comes from [`ReplyAuth::from_config`].
    pub fn new(service: Arc<ReplyService>, auth: ReplyAuth) -> Self {
        Self {
            service,
            auth,
            approvals: None,
        }
    }

    /// Also serves RequestApproval / GetApproval (gRPC) and `POST /approvals` (issue 14).
    pub fn with_approvals(
        mut self,
        approvals: Arc<infragpt_actors::approvals::ApprovalService>,
    ) -> Self {
        self.approvals = Some(approvals);
        self
    }
}

#[async_trait::async_trait]
impl Module for ReplyModule {
    fn name(&self) -> &str {
        "send_reply"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        let open = crate::config::unauthenticated_reply_networks(&state.config);
        if !open.is_empty() {
            // Validation refused this unless the flag says yes; say it on every start.
            let networks: Vec<String> = open.iter().map(ToString::to_string).collect();
            tracing::warn!(
                ?networks,
                "agent.allow_unauthenticated_replies is set: any caller from these networks can post into every Slack thread without a token"
            );
        }
        http.add_routes(Arc::new(self::http::configure(
            self.service.clone(),
            self.auth.clone(),
        )));
        if let Some(approvals) = &self.approvals {
            http.add_routes(Arc::new(self::approvals::configure(
                approvals.clone(),
                self.auth.clone(),
            )));
        }
        ReplyGrpc::new(self.service.clone(), self.auth.clone())
            .with_approvals(self.approvals.clone())
            .add_to(grpc);
        if self.auth.accepts_nobody() {
            tracing::warn!(
                "SendReply accepts nobody: agent.reply_token is not set, agent.reply_allowed_networks is empty and grpc_tls.client_ca_file is not set; agent answers arrive only through response_text"
            );
        } else {
            tracing::info!(
                token = self.auth.is_required(),
                allowed_networks = %self.auth.networks(),
                "SendReply authentication"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use infragpt_actors::conversation::SlackApiError;

    use super::*;

    fn caller<'a>(
        authorization: Option<&'a str>,
        peer: Option<&str>,
        client_certificate: bool,
    ) -> ReplyCaller<'a> {
        ReplyCaller {
            authorization,
            peer: peer.map(|p| p.parse().unwrap()),
            client_certificate,
        }
    }

    #[test]
    fn bearer_check() {
        assert!(!ReplyAuth::new(Some(Secret::new(""))).is_required());
        let auth = ReplyAuth::new(Some(Secret::new("s3cret"))).with_networks(Networks::none());
        assert!(auth.is_required());
        for good in ["Bearer s3cret", "bearer s3cret"] {
            assert_eq!(
                auth.check(&caller(Some(good), Some("10.0.0.1"), false))
                    .unwrap(),
                ReplyAuthenticated::Token
            );
        }
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer "),
        ] {
            let e = auth
                .check(&caller(bad, Some("127.0.0.1"), false))
                .unwrap_err();
            assert_eq!(
                e.status(),
                actix_web::http::StatusCode::UNAUTHORIZED,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn networks_and_client_certificates() {
        use ReplyAuthenticated::*;
        // No token: loopback by default, nothing else (fail closed).
        let open = ReplyAuth::new(None);
        assert!(!open.accepts_nobody());
        assert_eq!(
            open.check(&caller(None, Some("127.0.0.1"), false)).unwrap(),
            Network
        );
        assert_eq!(
            open.check(&caller(None, Some("::1"), false)).unwrap(),
            Network
        );
        assert_eq!(
            open.check(&caller(None, Some("::ffff:127.0.0.5"), false))
                .unwrap(),
            Network
        );
        for refused in [
            caller(None, Some("10.0.0.1"), false),
            caller(None, None, false),
        ] {
            let e = open.check(&refused).unwrap_err();
            assert_eq!(e.status(), actix_web::http::StatusCode::UNAUTHORIZED);
        }
        // A certificate counts only when the listener verifies them.
        assert!(open.check(&caller(None, Some("10.0.0.1"), true)).is_err());
        let mtls = ReplyAuth::new(None)
            .with_networks(Networks::none())
            .with_client_certificates(true);
        assert_eq!(
            mtls.check(&caller(None, Some("10.0.0.1"), true)).unwrap(),
            ClientCertificate
        );
        assert!(mtls.check(&caller(None, Some("127.0.0.1"), false)).is_err());

        // Token and networks: either suffices, but a wrong token is refused everywhere.
        let both = ReplyAuth::new(Some(Secret::new("s3cret")))
            .with_networks(Networks::parse(["10.0.0.0/8"]).unwrap());
        assert_eq!(
            both.check(&caller(None, Some("10.9.9.9"), false)).unwrap(),
            Network
        );
        assert_eq!(
            both.check(&caller(Some("Bearer s3cret"), Some("192.0.2.1"), false))
                .unwrap(),
            Token
        );
        assert!(both.check(&caller(None, Some("192.0.2.1"), false)).is_err());
        assert!(
            both.check(&caller(Some("Bearer nope"), Some("10.9.9.9"), false))
                .is_err()
        );

        assert!(
            ReplyAuth::new(None)
                .with_networks(Networks::none())
                .accepts_nobody()
        );
    }

    #[test]
    fn error_mapping() {
        use actix_web::http::StatusCode;
        let e = api_error(ReplyError::InvalidConversationId("nope".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("not a valid UUID"));
        let id = infragpt_actors::ids::ConversationId::new_random();
        assert_eq!(
            api_error(ReplyError::NotFound(id)).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api_error(ReplyError::Slack(SlackApiError::Transport("x".into()))).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let team = infragpt_actors::ids::TeamId::parse("T0TEST0001").unwrap();
        let refused = api_error(ReplyError::Slack(SlackApiError::UnknownWorkspace(team)));
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        assert_eq!(refused.code(), "failed_precondition");
        let long = api_error(ReplyError::InvalidConversationId("z".repeat(200_000)));
        assert!(long.message().len() < 200, "{}", long.message());
        assert!(long.message().contains("(200000 bytes)"));
    }
}
