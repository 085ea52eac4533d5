//! The configuration tree. Every struct rejects unknown keys and fills missing keys with
//! defaults, so a file only needs the keys it changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use infragpt_actors::Secret;
use serde::{Deserialize, Deserializer, Serialize};

/// Treats a missing, `null` or empty value as "not set" (so `${VAR:-}` means unset).
fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<Secret>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// Treats a missing, `null` or empty string as "not set".
fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

/// Treats a missing, `null` or empty path as "not set".
fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(opt_string(d)?.map(PathBuf::from))
}

/// The whole service configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP and gRPC listeners bind to.
    pub bind_address: String,
    /// HTTP port (REST API, webhooks, health).
    pub port: u16,
    /// gRPC port (SendReply, gRPC health).
    pub grpc_port: u16,
    /// TLS (and mutual TLS) on the gRPC listener.
    pub grpc_tls: GrpcTlsConfig,
    /// Connection limits of the gRPC listener (timeouts, keepalive, connection cap).
    pub grpc: GrpcConfig,
    /// Log filter (`info`, `infragpt=debug,actix_web=info`); `RUST_LOG` wins when set.
    pub log_level: String,
    pub log_format: LogFormat,
    /// One log line per HTTP request.
    pub http_log: bool,
    /// How long in-flight requests get to finish after SIGINT/SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Cross-origin policy for the REST API.
    pub cors: CorsConfig,
    /// Operator endpoints.
    pub admin: AdminConfig,
    /// The internal ops listener (`/actors`, `/metrics`, health without a token).
    pub ops: OpsConfig,
    /// The Slack app.
    pub slack: SlackConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// The AI agent (gRPC).
    pub agent: AgentConfig,
    /// Identity provider.
    pub identity: IdentityConfig,
    /// Connectors.
    pub integrations: IntegrationsConfig,
    /// Credential encryption keys.
    pub vault: VaultConfig,
    /// Actor runtime tuning (owned by the actor core).
    pub actors: ActorsConfig,
    /// Limits on reading webhook bodies (Slack Events API, Clerk, GitHub).
    pub webhooks: WebhooksConfig,
    /// How long stored data is kept (the inbox).
    pub retention: RetentionConfig,
    /// Event routing (GitHub, Alertmanager, PagerDuty into Slack): storms and claims.
    pub events: EventsConfig,
    /// Several replicas on one database: lease timing (owned by the actor core).
    pub cluster: ClusterReplicationConfig,
    /// Export of the tracing spans (OpenTelemetry, OTLP over gRPC); off unless an endpoint
    /// is set.
    pub telemetry: TelemetryExportConfig,
    /// Approvals in Slack (issue 14): how often expired requests are swept.
    pub approvals: ApprovalsConfig,
}

/// `approvals:`: the agent asks before it acts (RequestApproval).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Time between two sweeps for expired requests (every replica sweeps; each expiry
    /// happens once, a conditional update).
    pub expiry_interval_ms: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            expiry_interval_ms: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0".to_owned(),
            port: 8080,
            grpc_port: 50051,
            grpc_tls: GrpcTlsConfig::default(),
            grpc: GrpcConfig::default(),
            log_level: "info".to_owned(),
            log_format: LogFormat::Json,
            http_log: true,
            shutdown_grace_ms: 10_000,
            cors: CorsConfig::default(),
            admin: AdminConfig::default(),
            ops: OpsConfig::default(),
            slack: SlackConfig::default(),
            database: DatabaseConfig::default(),
            agent: AgentConfig::default(),
            identity: IdentityConfig::default(),
            integrations: IntegrationsConfig::default(),
            vault: VaultConfig::default(),
            actors: ActorsConfig::default(),
            webhooks: WebhooksConfig::default(),
            retention: RetentionConfig::default(),
            events: EventsConfig::default(),
            cluster: ClusterReplicationConfig::default(),
            telemetry: TelemetryExportConfig::default(),
            approvals: ApprovalsConfig::default(),
        }
    }
}

/// OpenTelemetry export of the tracing spans (OTLP over gRPC). Off by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryExportConfig {
    /// The collector's OTLP/gRPC endpoint (`http://otel-collector:4317`); unset or empty: no
    /// export.
    #[serde(deserialize_with = "opt_string")]
    pub otlp_endpoint: Option<String>,
    /// Which spans are exported (tracing filter directives), apart from `log_level`.
    pub otlp_filter: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// How long one export may take.
    pub export_timeout_ms: u64,
}

impl Default for TelemetryExportConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_filter: "info".to_owned(),
            service_name: "infragpt".to_owned(),
            export_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// `bind_address` as an IP address (validation guarantees it parses).
    pub fn bind_ip(&self) -> anyhow::Result<std::net::IpAddr> {
        self.bind_address.parse().map_err(|_| {
            anyhow::anyhow!("bind_address `{}` is not an IP address", self.bind_address)
        })
    }

    /// The graceful-shutdown budget.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// TLS on the gRPC listener. Off unless `cert_file` is set; with `client_ca_file` every
/// client must present a certificate signed by that CA (mutual TLS), and such a certificate
/// authenticates SendReply.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTlsConfig {
    /// The server's certificate chain (PEM).
    #[serde(deserialize_with = "opt_path")]
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM).
    #[serde(deserialize_with = "opt_path")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; set: client certificate
    /// required.
    #[serde(deserialize_with = "opt_path")]
    pub client_ca_file: Option<PathBuf>,
}

impl GrpcTlsConfig {
    /// True when the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// True when clients must present a certificate.
    pub fn client_certificates_required(&self) -> bool {
        self.enabled() && self.client_ca_file.is_some()
    }
}

/// Connection limits of the gRPC listener. A connection is closed when the first bytes
/// (the HTTP/2 preface, or the TLS ClientHello) have not arrived within `handshake_timeout_ms`,
/// and when no byte has moved either way for `idle_timeout_ms`; over `max_connections` a new
/// connection is accepted and closed at once. `0` turns a timeout off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Time from accept until the first bytes of the handshake (also bounds the TLS handshake).
    pub handshake_timeout_ms: u64,
    /// A connection with no bytes moving in either direction for this long is closed.
    pub idle_timeout_ms: u64,
    /// HTTP/2 PING interval (0: off). Pings are traffic: a peer that answers them is never
    /// idle, so with keepalive on, `idle_timeout_ms` only closes unresponsive peers.
    pub keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout_ms: u64,
    /// TCP keepalive probes after this much silence (0: off); invisible to the idle timeout.
    pub tcp_keepalive_ms: u64,
    /// Open connections at most (including those still in the handshake).
    pub max_connections: usize,
    /// Deadline of one call (0: none; a shorter `grpc-timeout` from the client wins).
    pub request_timeout_ms: u64,
    /// Largest gRPC message accepted or sent, in bytes (a larger request fails with
    /// `OUT_OF_RANGE` before it is decoded).
    pub max_message_bytes: usize,
    /// Calls in flight at once on one connection (HTTP/2 `MAX_CONCURRENT_STREAMS`; a client
    /// waits for a free stream, and a stream over it is refused).
    pub max_concurrent_streams: u32,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 300_000,
            keepalive_interval_ms: 0,
            keepalive_timeout_ms: 20_000,
            tcp_keepalive_ms: 60_000,
            max_connections: 1024,
            request_timeout_ms: 60_000,
            // tonic's own default, made explicit: an answer is text, far below it.
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 128,
        }
    }
}

impl GrpcConfig {
    fn millis(ms: u64) -> Option<Duration> {
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The handshake timeout, `None` when off.
    pub fn handshake_timeout(&self) -> Option<Duration> {
        Self::millis(self.handshake_timeout_ms)
    }

    /// The idle timeout, `None` when off.
    pub fn idle_timeout(&self) -> Option<Duration> {
        Self::millis(self.idle_timeout_ms)
    }

    /// The HTTP/2 keepalive interval, `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        Self::millis(self.keepalive_interval_ms)
    }

    /// The HTTP/2 keepalive timeout.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }

    /// The TCP keepalive time, `None` when off.
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        Self::millis(self.tcp_keepalive_ms)
    }

    /// The per-call deadline, `None` when off.
    pub fn request_timeout(&self) -> Option<Duration> {
        Self::millis(self.request_timeout_ms)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Cross-origin resource sharing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call the API (`https://app.example.com`), or `*` for any origin.
    pub allowed_origins: Vec<String>,
    /// Allow cookies/authorization with cross-origin requests (never together with `*`).
    pub allow_credentials: bool,
}

/// Operator endpoints.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; without it the admin endpoints are disabled.
    #[serde(deserialize_with = "opt_secret")]
    pub token: Option<Secret>,
}

/// The internal ops listener. `/actors` and `/metrics` show Slack team, channel and thread
/// keys, installation ids and error texts: on the public port they need the admin token, and
/// this listener serves them (with `/healthz` and `/readyz`) without one, for Prometheus and
/// operators on a network that is already trusted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Port of the ops listener; unset: no ops listener. 0 picks a free port (logged).
    pub port: Option<u16>,
    /// Address the ops listener binds to; loopback unless the network is trusted.
    pub bind_address: String,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            port: None,
            bind_address: "127.0.0.1".to_owned(),
        }
    }
}

/// The Slack app.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// OAuth client id (multi-workspace installs).
    #[serde(deserialize_with = "opt_string")]
    pub client_id: Option<String>,
    /// OAuth client secret.
    #[serde(deserialize_with = "opt_secret")]
    pub client_secret: Option<Secret>,
    /// App-level token (`xapp-...`) for Socket Mode.
    #[serde(deserialize_with = "opt_secret")]
    pub app_token: Option<Secret>,
    /// Bot token (`xoxb-...`): set it for single-workspace mode.
    #[serde(deserialize_with = "opt_secret")]
    pub bot_token: Option<Secret>,
    /// Signing secret for the HTTP Events API.
    #[serde(deserialize_with = "opt_secret")]
    pub signing_secret: Option<Secret>,
    /// Slack Web API base URL (ends with `/`).
    pub api_url: String,
    /// Socket Mode connections to hold (1..=10).
    pub connections: u32,
    /// Receive events over Socket Mode (needs `app_token`) instead of the HTTP Events API.
    pub socket_mode: bool,
    /// Throttle Web API calls to Slack's per-workspace limits (keep it on against Slack;
    /// benchmarks against the simulator turn it off).
    pub throttle: bool,
    /// Answers longer than this many characters are posted as their first lines plus the
    /// whole answer as a file snippet in the thread; 0: always as messages.
    pub answer_file_threshold: usize,
    /// Bots (by bot id or app id, optionally by name) whose posts in monitored channels are
    /// turns without a mention: alerts from Datadog, Grafana, PagerDuty, Alertmanager...
    pub alert_sources: Vec<infragpt_actors::slack_alerts::AlertSource>,
    /// How a turn shows it is being worked on: `status` (Slack's assistant status under the
    /// thread, "is thinking…", and the agent's SendProgress text; a placeholder message
    /// where Slack refuses the status), `placeholder` (a message the answer replaces) or
    /// `off`.
    pub progress: infragpt_actors::conversation::ProgressMode,
    /// How long the agent works on a turn before the indicator is shown and the message
    /// gets its `eyes` reaction (ms): an answer within it is all the thread sees, with no
    /// status flashing past, placeholder to replace or reaction beside it. 0: as soon as the
    /// agent is asked. A report the agent sends meanwhile is shown at once.
    pub progress_delay_ms: u64,
    /// The assistant pane's suggested prompts (`assistant.threads.setSuggestedPrompts`, at
    /// most 4); empty: the defaults.
    pub suggested_prompts: Vec<infragpt_actors::slash::SuggestedPrompt>,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            app_token: None,
            bot_token: None,
            signing_secret: None,
            api_url: "https://slack.com/api/".to_owned(),
            connections: 2,
            socket_mode: false,
            throttle: true,
            answer_file_threshold: infragpt_actors::conversation::DEFAULT_FILE_THRESHOLD,
            alert_sources: Vec::new(),
            progress: infragpt_actors::conversation::ProgressMode::default(),
            progress_delay_ms: infragpt_actors::conversation::DEFAULT_PROGRESS_DELAY.as_millis()
                as u64,
            suggested_prompts: Vec::new(),
        }
    }
}

/// PostgreSQL. Either `url`, or `host` (+ `port`, `user`, `password`, `db_name`); with
/// neither, a private cluster is started under `data_dir` (unless one answers locally).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Full connection URL (`postgres://user:pass@host:5432/db`).
    #[serde(deserialize_with = "opt_secret")]
    pub url: Option<Secret>,
    /// Server host.
    #[serde(deserialize_with = "opt_string")]
    pub host: Option<String>,
    /// Server port.
    pub port: Option<u16>,
    pub db_name: String,
    #[serde(deserialize_with = "opt_string")]
    pub user: Option<String>,
    #[serde(deserialize_with = "opt_secret")]
    pub password: Option<Secret>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Folder for the private cluster.
    pub data_dir: PathBuf,
    pub connect_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            port: None,
            db_name: "infragpt".to_owned(),
            user: None,
            password: None,
            pool_size: 10,
            data_dir: PathBuf::from(".infragpt/pg"),
            connect_timeout_ms: 5_000,
        }
    }
}

impl DatabaseConfig {
    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// How the agent's answer comes back (`send_reply` or `response`).
pub use infragpt_actors::conversation::{AnswerFormat, HistorySender, ReplyMode};

/// The AI agent (gRPC `agent.AgentService`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `host:port` (`127.0.0.1:50052`, `[::]:50052`) or a URI (`http://agent:50052`);
    /// normalised to a URI when loaded (unspecified addresses become loopback).
    pub endpoint: String,
    pub connect_timeout_ms: u64,
    /// Per-call deadline for `ProcessMessage`.
    pub call_timeout_ms: u64,
    /// Attempts per turn (1 = no retry).
    pub retry_attempts: u32,
    /// How the answer comes back.
    pub reply_mode: ReplyMode,
    /// Token the agent may present on `SendReply` (`authorization: Bearer ...`).
    #[serde(deserialize_with = "opt_secret")]
    pub reply_token: Option<Secret>,
    /// Source networks (CIDRs, or single addresses) SendReply is accepted from without a
    /// token: the upstream agent's client cannot send metadata.
    pub reply_allowed_networks: Vec<String>,
    /// Must be `true` to start with networks beyond loopback in `reply_allowed_networks` and
    /// neither `reply_token` nor client certificates: whoever reaches the port from those
    /// networks can then post into any thread. Logged at warn on every start.
    pub allow_unauthenticated_replies: bool,
    /// Posted in the thread when the agent answers `success: false` (its error text stays in
    /// the logs and the dead letter).
    pub failure_notice: String,
    /// How past senders are spelled in the history sent to the agent.
    pub history_sender: HistorySender,
    /// The history a turn sends to the agent: the thread's first message and at most this
    /// many of its latest ones (the turn's own among them, so this many minus one before it).
    pub history_limit: u32,
    /// MiB of memory for the histories of the threads a replica served, so that a turn of a
    /// known thread reads none of its messages again (0: every turn reads its history).
    pub history_cache_mib: u32,
    /// What the agent writes its answers in: Markdown is converted to Slack mrkdwn.
    pub answer_format: AnswerFormat,
}

/// The default of `agent.reply_allowed_networks`: loopback only.
pub const DEFAULT_REPLY_ALLOWED_NETWORKS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:50052".to_owned(),
            connect_timeout_ms: 5_000,
            call_timeout_ms: 300_000,
            retry_attempts: 3,
            reply_mode: ReplyMode::SendReply,
            reply_token: None,
            reply_allowed_networks: DEFAULT_REPLY_ALLOWED_NETWORKS
                .iter()
                .map(|n| (*n).to_owned())
                .collect(),
            allow_unauthenticated_replies: false,
            failure_notice: infragpt_actors::conversation::DEFAULT_FAILURE_NOTICE.to_owned(),
            history_sender: HistorySender::Proto,
            history_limit: infragpt_actors::conversation::DEFAULT_HISTORY_LIMIT,
            history_cache_mib: 16,
            answer_format: AnswerFormat::Markdown,
        }
    }
}

impl AgentConfig {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Per-call deadline.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
}

/// Identity providers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Clerk (users, organizations, session tokens).
    pub clerk: ClerkConfig,
}

/// Clerk.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClerkConfig {
    /// Svix signing secret (`whsec_...`); without it Clerk webhooks are rejected.
    #[serde(deserialize_with = "opt_secret")]
    pub webhook_secret: Option<Secret>,
    /// JWKS URL for session tokens.
    #[serde(deserialize_with = "opt_string")]
    pub jwks_url: Option<String>,
    /// Expected `iss`.
    #[serde(deserialize_with = "opt_string")]
    pub issuer: Option<String>,
    /// Accepted `azp` values (empty: any).
    pub authorized_parties: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`.
    pub leeway_secs: u64,
    /// Also serve the Clerk webhook on this port (it is always served on `port` too).
    pub port: Option<u16>,
}

impl Default for ClerkConfig {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            jwks_url: None,
            issuer: None,
            authorized_parties: Vec::new(),
            leeway_secs: 5,
            port: None,
        }
    }
}

/// Connectors.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrationsConfig {
    /// Slack connector (OAuth install into an organization).
    pub slack: SlackIntegrationConfig,
    /// GitHub App connector.
    pub github: GitHubIntegrationConfig,
}

/// Slack connector.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackIntegrationConfig {
    /// OAuth client id.
    #[serde(deserialize_with = "opt_string")]
    pub client_id: Option<String>,
    /// OAuth client secret.
    #[serde(deserialize_with = "opt_secret")]
    pub client_secret: Option<Secret>,
    /// OAuth redirect URL.
    #[serde(deserialize_with = "opt_string")]
    pub redirect_url: Option<String>,
    /// Bot scopes requested on install.
    pub scopes: Vec<String>,
}

/// GitHub App connector.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitHubIntegrationConfig {
    pub app_id: Option<u64>,
    /// App slug (install URL).
    #[serde(deserialize_with = "opt_string")]
    pub app_slug: Option<String>,
    /// App private key (PEM).
    #[serde(deserialize_with = "opt_secret")]
    pub private_key: Option<Secret>,
    /// Webhook secret; without it GitHub webhooks are rejected.
    #[serde(deserialize_with = "opt_secret")]
    pub webhook_secret: Option<Secret>,
    /// REST API base URL.
    pub api_url: String,
    /// Serve GitHub webhooks on their own port (else on `port`).
    pub webhook_port: Option<u16>,
}

impl Default for GitHubIntegrationConfig {
    fn default() -> Self {
        Self {
            app_id: None,
            app_slug: None,
            private_key: None,
            webhook_secret: None,
            api_url: "https://api.github.com".to_owned(),
            webhook_port: None,
        }
    }
}

/// Credential encryption keys (AES-256-GCM).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Key id → base64 of 32 random bytes. Old keys stay listed so old rows can be read.
    pub keys: BTreeMap<String, Secret>,
    /// The key id new credentials are encrypted with.
    #[serde(deserialize_with = "opt_string")]
    pub active_key: Option<String>,
    /// Development only: a key file created on first start when `keys` is empty.
    pub dev_key_file: Option<PathBuf>,
}

/// Limits on reading webhook bodies, shared by every webhook route (Slack Events API, Clerk,
/// GitHub). A body is read only after its signature headers are well formed, and it is
/// verified while it streams; these bound what a sender without the secret can make us hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Deadline for a whole webhook body (waiting for the byte budget included); past it the
    /// request is answered 408.
    pub body_timeout_ms: u64,
    /// Bytes of webhook bodies held in memory at once, all routes together: reserved before a
    /// body is read (from its Content-Length, or chunk by chunk) and released once the request
    /// is answered. Over the budget (after waiting until the body deadline) → 503 with
    /// Retry-After.
    pub max_unverified_bytes: u64,
    /// Webhook bodies being read and not yet verified at once; more → 503 with Retry-After
    /// at once.
    pub max_unverified_uploads: u32,
    /// Per-source rate limits of the webhook routes, applied to verified deliveries before
    /// they are recorded (429 with Retry-After; the sender retries).
    pub rate_limits: WebhookRateLimits,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            body_timeout_ms: 10_000,
            max_unverified_bytes: 64 * 1024 * 1024,
            max_unverified_uploads: 32,
            rate_limits: WebhookRateLimits::default(),
        }
    }
}

/// The rate limit of each webhook route, per sending source: a Slack workspace (`team_id`),
/// a GitHub App installation (`installation.id`; deliveries without one share one source),
/// the Clerk application (one source: one signing secret is one Clerk app).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookRateLimits {
    /// `POST /slack/events`, per workspace.
    pub slack: RateLimit,
    /// `POST /webhooks/github`, per installation.
    pub github: RateLimit,
    /// `POST /webhooks/clerk`.
    pub clerk: RateLimit,
    /// `POST /webhooks/alertmanager/{id}` and `/webhooks/pagerduty/{id}`, per organization
    /// source.
    pub sources: RateLimit,
    /// Sources tracked at once per route; sources beyond it share one limit (so memory stays
    /// bounded whatever the senders do).
    pub max_sources: usize,
}

impl Default for WebhookRateLimits {
    fn default() -> Self {
        Self {
            // Slack itself sends at most 30 000 events per workspace and hour (~8/s); the
            // burst absorbs a backlog Slack redelivers at once.
            slack: RateLimit {
                per_second: 50.0,
                burst: 500,
            },
            github: RateLimit {
                per_second: 20.0,
                burst: 200,
            },
            clerk: RateLimit {
                per_second: 20.0,
                burst: 200,
            },
            // An alert storm is many notifications at once; the storm fold (not a 429) is what
            // keeps it out of the channel, so the burst is generous.
            sources: RateLimit {
                per_second: 50.0,
                burst: 500,
            },
            max_sources: 10_000,
        }
    }
}

/// A token bucket: `per_second` deliveries on average, up to `burst` at once. `per_second: 0`
/// turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Sustained deliveries per second per source (0: no limit).
    pub per_second: f64,
    /// Deliveries a source may send at once after being idle (at least 1).
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 0.0,
            burst: 1,
        }
    }
}

impl WebhooksConfig {
    /// The body deadline.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

/// How long stored data is kept. Finished inbound events (`done`, `ignored`) are deleted by
/// age in small batches by the housekeeping actor; dead letters (`failed`) and unfinished
/// events are never deleted. Conversations (with their messages and reply intents) are
/// deleted when their last message is older than `conversations_days`, if set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a finished inbound event is kept after it was processed; 0 keeps them forever.
    pub inbound_events_days: u32,
    /// Days a conversation is kept after its last message; 0 (the default) keeps them forever.
    pub conversations_days: u32,
    /// Rows deleted per statement (one short transaction each).
    pub batch_size: u32,
    /// Pause between two batches, so a long backlog of deletions leaves the inbox responsive.
    pub batch_pause_ms: u64,
    /// Time between two retention runs.
    pub interval_secs: u64,
    /// Delay of the first run after start.
    pub first_run_delay_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            inbound_events_days: 14,
            conversations_days: 0,
            batch_size: 1000,
            batch_pause_ms: 100,
            interval_secs: 3600,
            first_run_delay_secs: 60,
        }
    }
}

impl RetentionConfig {
    /// Time between two runs.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// Delay of the first run.
    pub fn first_run_delay(&self) -> Duration {
        Duration::from_secs(self.first_run_delay_secs)
    }
}

/// Event routing: how storms are folded and how event messages are claimed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// More new things (workflow runs, alert groups, incidents) than this for one rule within
    /// a minute are folded into one digest message.
    pub storm_threshold: u32,
    /// Least time between two updates of a digest (`chat.update` is a Tier 3 method).
    pub digest_update_interval_ms: u64,
    /// How often deferred digest updates and interrupted updates are brought up to date.
    pub flush_interval_ms: u64,
    /// How long a claim on an event message lasts (renewed by nothing: a post takes far less).
    pub claim_lease_ms: u64,
    /// How long an event waits for another process's claim on the same message before it is
    /// retried later.
    pub busy_wait_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            storm_threshold: 10,
            digest_update_interval_ms: 2000,
            flush_interval_ms: 1000,
            claim_lease_ms: 30_000,
            busy_wait_ms: 10_000,
        }
    }
}

/// Actor runtime tuning: the `actors:` section is the actor core's own configuration (it owns
/// the keys, their defaults and the rules), embedded as is.
pub type ActorsConfig = infragpt_actors::ClusterConfig;

/// The `cluster:` section: lease timing of the replicas sharing the database.
pub type ClusterReplicationConfig = infragpt_actors::partitions::ReplicationConfig;
