//! The agent client: [`GrpcAgent`] implements the conversation logic's [`Agent`] port with a
//! tonic client of `agent.AgentService/ProcessMessage`.
//!
//! * One lazily connected channel to `agent.endpoint` (a URI; the config normalises the seed's
//!   `host:port` form), with the connect timeout from config.
//! * Each attempt has the per-call deadline (default 5 minutes), also sent to the agent as
//!   `grpc-timeout`.
//! * Retries happen only when an attempt failed with `UNAVAILABLE` (connection refused, reset
//!   before a response, or the agent saying so), with exponential backoff and jitter, up to
//!   `retry_attempts` attempts in all. Any other status, and a timeout, end the call. A
//!   connection that broke mid-call also ends it, as [`AgentError::Unavailable`]: the turn
//!   is retried through the inbox, which first looks for an answer already posted.
//! * A circuit breaker tracks whether the agent is reachable: a call that ends `UNAVAILABLE`
//!   or times out is a failure; any answer (even an error status) is a success. While the
//!   circuit is open a call waits for the next probe when that is at most 5 s away, and
//!   otherwise fails at once with [`AgentError::Unavailable`]. With the default cool-down
//!   (1 s, doubling per failed probe up to 5 s) calls always wait: a restarted agent is used
//!   again as soon as it answers, and the breaker's job is to send one probe at a time to
//!   an agent that is down rather than every turn's calls.
//! * Health: `agent_client/agent` in the [`HealthRegistry`] is `running` (circuit closed),
//!   `restarting` (half-open: the next call probes) or `failed` (open), with the endpoint,
//!   counters and circuit state in its detail. Metrics: `infragpt_agent_calls_total{outcome}`,
//!   `infragpt_agent_call_seconds`, `infragpt_agent_retries_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use async_trait::async_trait;
use infragpt_actors::circuit::{
    CircuitBreaker, CircuitConfig, CircuitState, Clock, Permit, Rejected, SystemClock,
};
use infragpt_actors::conversation::{Agent, AgentAnswer, AgentError, AgentTurn};
use infragpt_actors::health::{ActorHealth, ActorId};
use infragpt_actors::kinds;
use infragpt_actors::{ActorState, Backoff, HealthRegistry, Metrics};
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::config::AgentConfig;
use crate::grpc::pb::agent::agent_service_client::AgentServiceClient;
use crate::grpc::pb::agent::{AgentRequest, AgentResponse, Message};

/// The key of the agent client in the health registry.
pub const HEALTH_KEY: &str = "agent";

/// How the client reaches the agent.
#[derive(Debug, Clone)]
pub struct GrpcAgentOptions {
    /// `http://host:port` (see `config::normalize_endpoint` for `host:port`).
    pub endpoint: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Deadline of one `ProcessMessage` attempt.
    pub call_timeout: Duration,
    /// Attempts per call (1 = no retry); only `UNAVAILABLE` is retried.
    pub retry_attempts: u32,
    /// Backoff before the first retry; doubles per retry.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub circuit: CircuitConfig,
    /// Supervisor shown as the parent in the actor tree.
    pub health_parent: Option<ActorId>,
}

impl GrpcAgentOptions {
    /// Options from the `agent` config section (backoff 200 ms doubling up to 5 s; circuit
    /// opens after 5 consecutive failed calls and probes again after 1 s, doubling per
    /// failed probe up to 5 s).
    pub fn from_config(config: &AgentConfig) -> Self {
        Self {
            endpoint: config.endpoint.clone(),
            connect_timeout: config.connect_timeout(),
            call_timeout: config.call_timeout(),
            retry_attempts: config.retry_attempts,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            circuit: CircuitConfig::default(),
            health_parent: None,
        }
    }

    /// Backoff before retry number `retry` (1-based), without jitter.
    fn backoff(&self, retry: u32) -> Duration {
        Backoff::new(self.backoff_initial, self.backoff_max).delay(retry)
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The endpoint is not one we can dial (normalisation refused it, or https).
    #[error("agent endpoint {endpoint:?} is invalid: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The endpoint is not a URI tonic accepts.
    #[error("agent endpoint {endpoint:?} is invalid: {source}")]
    InvalidUri {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Built outside a tokio runtime (the channel's background task needs one).
    #[error("the agent client must be created inside a tokio runtime")]
    NoRuntime,
    /// The metrics could not be registered (a second client on the same registry).
    #[error("registering agent client metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The client's Prometheus collectors.
#[derive(Clone)]
struct AgentMetrics {
    calls: IntCounterVec,
    seconds: HistogramVec,
    retries: IntCounter,
}

impl AgentMetrics {
    fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let calls = IntCounterVec::new(
            Opts::new(
                "infragpt_agent_calls_total",
                "ProcessMessage calls by outcome (success, unsuccessful, unavailable, timeout, failed, circuit_open)",
            ),
            &["outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "infragpt_agent_call_seconds",
                "Duration of ProcessMessage calls that reached the network, retries included",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            &["outcome"],
        )?;
        let retries = IntCounter::new(
            "infragpt_agent_retries_total",
            "ProcessMessage attempts retried after UNAVAILABLE",
        )?;
        let registry = metrics.registry();
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        Ok(Self {
            calls,
            seconds,
            retries,
        })
    }
}

/// How one call ended, for metrics and the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Unsuccessful,
    Unavailable,
    Timeout,
    Failed,
    CircuitOpen,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Unsuccessful => "unsuccessful",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// The health entry, re-registered if the registry pruned it (a long-open circuit is
/// `failed`, which the registry may prune).
struct HealthSlot {
    registry: HealthRegistry,
    parent: Option<ActorId>,
    handle: Mutex<ActorHealth>,
}

impl HealthSlot {
    fn new(registry: &HealthRegistry, parent: Option<ActorId>) -> Self {
        let handle = registry.register(
            ActorId::new(kinds::AGENT_CLIENT, HEALTH_KEY),
            parent.clone(),
        );
        handle.set_state(ActorState::Running);
        Self {
            registry: registry.clone(),
            parent,
            handle: Mutex::new(handle),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&ActorHealth) -> R) -> R {
        let mut handle = self.handle.lock();
        if self.registry.get(kinds::AGENT_CLIENT, HEALTH_KEY).is_none() {
            *handle = self.registry.register(
                ActorId::new(kinds::AGENT_CLIENT, HEALTH_KEY),
                self.parent.clone(),
            );
        }
        f(&handle)
    }
}

/// The agent over gRPC.
pub struct GrpcAgent {
    client: AgentServiceClient<Channel>,
    options: GrpcAgentOptions,
    circuit: CircuitBreaker,
    health: HealthSlot,
    metrics: AgentMetrics,
    calls: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for GrpcAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcAgent")
            .field("endpoint", &self.options.endpoint)
            .field("circuit", &self.circuit.state())
            .finish_non_exhaustive()
    }
}

impl GrpcAgent {
    /// A client of the agent at `options.endpoint`. Connects on first use. Must be called
    /// inside a tokio runtime that outlives the client (the channel's background task runs on
    /// it); registers its health entry and metrics.
    pub fn new(
        options: GrpcAgentOptions,
        health: &HealthRegistry,
        metrics: &Metrics,
    ) -> Result<Self, AgentClientError> {
        Self::with_clock(options, health, metrics, Arc::new(SystemClock))
    }

    /// [`GrpcAgent::new`] with the circuit breaker on `clock` (tests).
    pub fn with_clock(
        options: GrpcAgentOptions,
        health: &HealthRegistry,
        metrics: &Metrics,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AgentClientError> {
        // The config normalises already; options built by hand get the same treatment.
        let mut options = options;
        options.endpoint =
            crate::config::normalize_endpoint(&options.endpoint).map_err(|reason| {
                AgentClientError::InvalidEndpoint {
                    endpoint: options.endpoint.clone(),
                    reason,
                }
            })?;
        let invalid = |reason: String| AgentClientError::InvalidEndpoint {
            endpoint: options.endpoint.clone(),
            reason,
        };
        if options.endpoint.starts_with("https://") {
            return Err(invalid(
                "https is not supported by this build; use http:// (for example behind a TLS-terminating sidecar)".to_owned(),
            ));
        }
        let endpoint = Endpoint::from_shared(options.endpoint.clone())
            .map_err(|source| AgentClientError::InvalidUri {
                endpoint: options.endpoint.clone(),
                source,
            })?
            .connect_timeout(options.connect_timeout);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AgentClientError::NoRuntime);
        }
        let channel = endpoint.connect_lazy();
        let metrics = AgentMetrics::register(metrics)?;
        let agent = Self {
            client: AgentServiceClient::new(channel),
            circuit: CircuitBreaker::with_clock(options.circuit, clock),
            health: HealthSlot::new(health, options.health_parent.clone()),
            options,
            metrics,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        };
        agent.report_health(None);
        tracing::info!(endpoint = %agent.options.endpoint, "agent client ready (connects on first call)");
        Ok(agent)
    }

    /// The circuit breaker's state.
    pub fn circuit_state(&self) -> CircuitState {
        self.circuit.state()
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.options.endpoint
    }

    fn report_health(&self, error: Option<&str>) {
        let circuit = self.circuit.state();
        let detail = serde_json::json!({
            "endpoint": self.options.endpoint,
            "calls": self.calls.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "circuit": circuit.as_str(),
            "consecutive_failures": self.circuit.consecutive_failures(),
        });
        self.health.with(|h| {
            h.set_detail(detail);
            match (circuit, error) {
                (CircuitState::Closed, _) => h.set_state(ActorState::Running),
                (CircuitState::HalfOpen, _) => h.set_state(ActorState::Restarting),
                (CircuitState::Open, Some(e)) => h.failed(e),
                (CircuitState::Open, None) => h.set_state(ActorState::Failed),
            }
            if let Some(e) = error {
                h.record_error(e);
            }
        });
    }

    fn finish(&self, outcome: Outcome, started: Option<Instant>) {
        self.metrics
            .calls
            .with_label_values(&[outcome.as_str()])
            .inc();
        if let Some(started) = started {
            self.metrics
                .seconds
                .with_label_values(&[outcome.as_str()])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// One `ProcessMessage` attempt within the call deadline.
    async fn attempt(&self, request: AgentRequest) -> Result<AgentResponse, Attempt> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(request);
        // Sent as `grpc-timeout` so the agent can stop too; tonic also enforces it locally
        // (answering CANCELLED "Timeout expired"), as does the outer timeout.
        request.set_timeout(self.options.call_timeout);
        let started = Instant::now();
        match tokio::time::timeout(self.options.call_timeout, client.process_message(request)).await
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status))
                if status.code() == Code::Cancelled
                    && started.elapsed() >= self.options.call_timeout =>
            {
                Err(Attempt::Timeout)
            }
            Ok(Err(status)) => Err(Attempt::Status(status)),
            Err(_) => Err(Attempt::Timeout),
        }
    }

    /// Attempts with retries on `UNAVAILABLE`.
    async fn call(&self, request: AgentRequest) -> Result<AgentResponse, AgentError> {
        let attempts = self.options.retry_attempts.max(1);
        let mut attempt = 1;
        loop {
            match self.attempt(request.clone()).await {
                Ok(response) => return Ok(response),
                Err(Attempt::Timeout) => {
                    return Err(AgentError::Timeout(self.options.call_timeout));
                }
                Err(Attempt::Status(status)) => {
                    let code = status.code();
                    if code == Code::Unavailable && attempt < attempts {
                        let backoff = jitter(self.options.backoff(attempt));
                        tracing::debug!(
                            endpoint = %self.options.endpoint,
                            attempt,
                            backoff_ms = backoff.as_millis() as u64,
                            error = %status.message(),
                            "agent unavailable; retrying"
                        );
                        self.metrics.retries.inc();
                        tokio::time::sleep(backoff).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(match code {
                        Code::Unavailable => AgentError::Unavailable(format!(
                            "{} after {attempt} attempt(s): {}",
                            self.options.endpoint,
                            status.message()
                        )),
                        // Not retried here: the agent may have answered through SendReply
                        // before it went away, which the turn's retry looks for first.
                        _ if broke_mid_call(&status) => AgentError::Unavailable(format!(
                            "{}: the connection broke during the call: {}",
                            self.options.endpoint,
                            status.message()
                        )),
                        Code::DeadlineExceeded => AgentError::Timeout(self.options.call_timeout),
                        other => AgentError::Failed(format!("{other:?}: {}", status.message())),
                    });
                }
            }
        }
    }
}

enum Attempt {
    Status(tonic::Status),
    Timeout,
}

/// Whether tonic made `status` itself from a transport failure (the connection was reset or
/// went away mid-call: the agent restarted or crashed) rather than receiving it from the
/// agent: only a local status carries its cause as `source`. tonic maps such failures to
/// `INTERNAL`, `UNKNOWN` or `CANCELLED`, codes an agent also answers with on purpose.
fn broke_mid_call(status: &tonic::Status) -> bool {
    status.code() != Code::DeadlineExceeded && std::error::Error::source(status).is_some()
}

/// Longest a call waits for the circuit to let it through (the next probe, or the probe
/// under way to end) before it fails at once. A dependency that restarts in a second or two
/// is then used again as soon as it answers, instead of every turn in that window failing
/// and spending its retries; a longer outage still fails fast.
const CIRCUIT_WAIT: Duration = Duration::from_secs(5);

impl GrpcAgent {
    /// A permit from the circuit, waiting up to [`CIRCUIT_WAIT`] for it.
    async fn acquire(&self) -> Result<Permit<'_>, Rejected> {
        let started = Instant::now();
        loop {
            match self.circuit.try_acquire() {
                Ok(permit) => return Ok(permit),
                Err(rejected) => {
                    // Zero while a probe is under way: look again shortly.
                    let pause = rejected.retry_in.max(Duration::from_millis(50));
                    if started.elapsed() + pause > CIRCUIT_WAIT {
                        return Err(rejected);
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Up to +20 % random jitter so clients do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// The turn as the agent contract's request (taking the turn: a long history is moved, not
/// copied).
pub fn to_request(turn: AgentTurn) -> AgentRequest {
    AgentRequest {
        conversation_id: turn.conversation_id.to_string(),
        current_message: turn.current_message,
        past_messages: turn
            .past_messages
            .into_iter()
            .map(|m| Message {
                message_id: m.message_id,
                content: m.content,
                sender: m.sender,
                timestamp: m.timestamp,
            })
            .collect(),
        context: turn.context.to_string(),
        user_id: turn.user_id,
        channel_id: turn.channel_id,
    }
}

/// The contract's response as the port's answer.
pub(crate) fn from_response(response: AgentResponse) -> AgentAnswer {
    AgentAnswer {
        success: response.success,
        response_text: response.response_text,
        error_message: response.error_message,
        agent_type: response.agent_type,
        confidence: response.confidence,
        tools_used: response.tools_used,
    }
}

#[async_trait]
impl Agent for GrpcAgent {
    async fn process(&self, turn: AgentTurn) -> Result<AgentAnswer, AgentError> {
        let permit = match self.acquire().await {
            Ok(permit) => permit,
            Err(rejected) => {
                self.finish(Outcome::CircuitOpen, None);
                self.report_health(None);
                return Err(AgentError::Unavailable(format!(
                    "circuit open after repeated failures of {}; next attempt in {:.1}s",
                    self.options.endpoint,
                    rejected.retry_in.as_secs_f64()
                )));
            }
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let conversation_id = turn.conversation_id;
        let request = to_request(turn);
        let span = tracing::info_span!(
            "agent_call",
            conversation_id = %request.conversation_id,
            endpoint = %self.options.endpoint
        );
        let result = self.call(request).instrument(span).await;
        let (outcome, error) = match &result {
            Ok(r) if r.success => (Outcome::Success, None),
            Ok(_) => (Outcome::Unsuccessful, None),
            Err(e @ AgentError::Unavailable(_)) => (Outcome::Unavailable, Some(e.to_string())),
            Err(e @ AgentError::Timeout(_)) => (Outcome::Timeout, Some(e.to_string())),
            Err(e @ AgentError::Failed(_)) => (Outcome::Failed, Some(e.to_string())),
        };
        // The circuit tracks reachability: any answer, even an error status, is a success.
        if matches!(outcome, Outcome::Unavailable | Outcome::Timeout) {
            let state = permit.failure();
            if state == CircuitState::Open {
                tracing::warn!(
                    endpoint = %self.options.endpoint,
                    failures = self.circuit.consecutive_failures(),
                    cool_down_ms = self.options.circuit.cool_down.as_millis() as u64,
                    "agent circuit open"
                );
            }
        } else {
            if permit.is_probe() {
                tracing::info!(endpoint = %self.options.endpoint, "agent reachable again; circuit closed");
            }
            permit.success();
        }
        if error.is_some() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(outcome, Some(started));
        self.report_health(error.as_deref());
        match &error {
            Some(e) => tracing::warn!(
                conversation_id = %conversation_id,
                outcome = outcome.as_str(),
                error = %e,
                "agent call failed"
            ),
            None => tracing::debug!(
                conversation_id = %conversation_id,
                outcome = outcome.as_str(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "agent answered"
            ),
        }
        result.map(from_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut o = GrpcAgentOptions::from_config(&AgentConfig::default());
        o.backoff_initial = Duration::from_millis(100);
        o.backoff_max = Duration::from_millis(350);
        assert_eq!(o.backoff(1), Duration::from_millis(100));
        assert_eq!(o.backoff(2), Duration::from_millis(200));
        assert_eq!(o.backoff(3), Duration::from_millis(350));
        assert_eq!(o.backoff(40), Duration::from_millis(350));
        let j = jitter(Duration::from_millis(100));
        assert!(j >= Duration::from_millis(100) && j <= Duration::from_millis(120));
    }

    #[test]
    fn options_follow_the_config() {
        let config = AgentConfig {
            endpoint: "http://127.0.0.1:1".into(),
            retry_attempts: 4,
            call_timeout_ms: 1234,
            ..AgentConfig::default()
        };
        let o = GrpcAgentOptions::from_config(&config);
        assert_eq!(o.endpoint, "http://127.0.0.1:1");
        assert_eq!(o.retry_attempts, 4);
        assert_eq!(o.call_timeout, Duration::from_millis(1234));
    }
}
