//! Slack Socket Mode: our own client loop over tokio-tungstenite (slack-morphism's listener
//! acknowledges only after the callback returns and gives no control over reconnect reasons
//! or a watchdog).
//!
//! Each of `slack.connections` connections is a [`SlackConnection`] actor (kind
//! `slack_connection`, key `conn-N`) whose loop does: `apps.connections.open` with the app
//! token → websocket → frames. What to do with each frame is decided by the pure
//! [`ConnectionMachine`]; this module only does the I/O:
//!
//! * `events_api` envelope → [`Cluster::ingest`] (recorded in the inbox, dispatched to the
//!   thread actors when new) and only after it returns `Ok` (recorded or duplicate) the ack
//!   `{"envelope_id": …}`. An ingest failure (database down) leaves the envelope
//!   unacknowledged: Slack redelivers it.
//! * Other envelopes are acknowledged and logged as ignored.
//! * `disconnect` `warning`/`refresh_requested` → a new connection opens at once while the
//!   old socket drains (its late envelopes are still recorded and acknowledged) and closes;
//!   `too_many_websockets` → backoff; `link_disabled` → the actor reports `failed` with the
//!   reason and does not reconnect; the `slack` readiness check fails.
//! * Pings every `ping_interval`; a socket silent (no frame, no pong) for `idle_timeout` is
//!   replaced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use infragpt_actors::{kinds, sources};
use infragpt_actors::Secret;
use infragpt_actors::cluster::Cluster;
use infragpt_actors::conversation::routing_key;
use infragpt_actors::health::{ActorHealth, ActorId, ActorKind, ActorState, HealthRegistry};
use infragpt_actors::inbox::{EventSource, NewInboundEvent, RecordOutcome, RoutingKey};
use infragpt_actors::slack_connection::{
    ConnState, ConnectionMachine, ConnectionSettings, FrameAction, Reconnect,
};
use infragpt_actors::slack_events::{self, Inbound, parse_socket_frame};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::connector::SlackHyperClient;
use super::web::{WebSettings, open_socket_url};
use super::workspaces::WorkspaceBoard;

/// Most Socket Mode connections Slack allows per app.
pub const MAX_CONNECTIONS: u32 = 10;

/// How long opening a websocket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Envelope payload → inbox event (shared with the HTTP Events API)
// ---------------------------------------------------------------------------------------------

/// What an Events API body becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundClass {
    /// Record it in the inbox.
    Event(NewInboundEvent),
    /// Endpoint verification: the HTTP endpoint echoes the challenge; a socket ignores it.
    UrlVerification(String),
    /// Acknowledge and do nothing (`app_rate_limited`, ...).
    Ignore(String),
}

/// Turns an Events API body (HTTP body or Socket Mode `payload`) into an inbox event.
///
/// An `event_callback` whose event cannot be parsed is still recorded (kind `unparseable`,
/// keyed by its `event_id`, else `fallback_source_id`): the conversation handler then turns it
/// into a dead letter with the parse error, visible in the admin API, instead of it being
/// dropped. Without any id to deduplicate on it is an error.
pub fn inbound_event(
    payload: &Value,
    fallback_source_id: Option<&str>,
) -> Result<InboundClass, String> {
    match slack_events::parse_value(payload.clone()) {
        Ok(Inbound::EventCallback(cb)) => Ok(InboundClass::Event(NewInboundEvent {
            source: sources::SLACK,
            source_id: cb.event_id.0.clone(),
            routing_key: routing_key(&cb),
            kind: payload["event"]["type"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            payload: payload.clone(),
        })),
        Ok(Inbound::UrlVerification { challenge }) => Ok(InboundClass::UrlVerification(challenge)),
        Ok(Inbound::Other { kind }) => Ok(InboundClass::Ignore(kind)),
        Err(e) => {
            let source_id = payload["event_id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .or_else(|| fallback_source_id.map(str::to_owned))
                .ok_or_else(|| format!("unreadable event without an id: {e}"))?;
            let team = payload["team_id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown");
            tracing::warn!(source_id = %source_id, error = %e, "recording an unreadable slack event");
            Ok(InboundClass::Event(NewInboundEvent {
                source: sources::SLACK,
                source_id,
                routing_key: RoutingKey(format!("{team}/-/-")),
                kind: "unparseable".into(),
                payload: payload.clone(),
            }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and shared context
// ---------------------------------------------------------------------------------------------

/// Socket Mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSettings {
    /// Parallel connections (1..=10).
    pub connections: u32,
    /// Timing of each connection.
    pub connection: ConnectionSettings,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            connections: 2,
            connection: ConnectionSettings::default(),
        }
    }
}

/// What every connection of an app shares.
#[derive(Clone)]
pub struct SocketContext {
    /// Where envelopes are recorded.
    pub cluster: Cluster,
    /// Web API client (for `apps.connections.open`).
    pub client: Arc<SlackHyperClient>,
    /// Retry policy of `apps.connections.open`.
    pub web_settings: WebSettings,
    /// The app-level token (`xapp-…`).
    pub app_token: Secret,
    /// Workspace statuses, copied into each connection's health detail.
    pub board: WorkspaceBoard,
}

impl std::fmt::Debug for SocketContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketContext").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------------------------

/// One Socket Mode connection. Its loop runs on the actor's arbiter; stopping the actor (or
/// sending [`StopConnection`]) closes the socket.
pub struct SlackConnection {
    key: String,
    ctx: SocketContext,
    settings: ConnectionSettings,
    parent: Option<ActorId>,
    shutdown: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SlackConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConnection")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SlackConnection {
    /// A connection actor (not started) with key `key` (`conn-1`, …).
    pub fn new(
        key: impl Into<String>,
        ctx: SocketContext,
        settings: ConnectionSettings,
        parent: Option<ActorId>,
    ) -> Self {
        Self {
            key: key.into(),
            ctx,
            settings,
            parent,
            shutdown: None,
            task: None,
        }
    }
}

impl Actor for SlackConnection {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let registry = self.ctx.cluster.health().clone();
        let health = registry.register(
            ActorId::new(kinds::SLACK_CONNECTION, self.key.clone()),
            self.parent.clone(),
        );
        let (tx, rx) = watch::channel(false);
        let conn = Conn {
            key: self.key.clone(),
            ctx: self.ctx.clone(),
            machine: Arc::new(Mutex::new(ConnectionMachine::new(self.settings.clone()))),
            health: Arc::new(health),
        };
        conn.publish();
        self.shutdown = Some(tx);
        self.task = Some(actix::spawn(conn.run(rx)));
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if let Some(tx) = &self.shutdown {
            let _ = tx.send(true);
        }
        Running::Stop
    }
}

/// Stops a connection: closes its socket and waits (bounded) for its loop to end.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopConnection;

impl Handler<StopConnection> for SlackConnection {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: StopConnection, ctx: &mut Self::Context) -> Self::Result {
        if let Some(tx) = &self.shutdown {
            let _ = tx.send(true);
        }
        let task = self.task.take();
        ctx.stop();
        Box::pin(
            async move {
                if let Some(task) = task
                    && tokio::time::timeout(Duration::from_secs(5), task)
                        .await
                        .is_err()
                {
                    tracing::warn!("slack connection did not stop within 5 s");
                }
            }
            .into_actor(self),
        )
    }
}

/// Starts `settings.connections` connection actors (`conn-1` …) on the current arbiter.
pub fn start_connections(
    ctx: SocketContext,
    settings: &SocketSettings,
    parent: Option<ActorId>,
) -> Vec<Addr<SlackConnection>> {
    let n = settings.connections.clamp(1, MAX_CONNECTIONS);
    (1..=n)
        .map(|i| {
            SlackConnection::new(
                format!("conn-{i}"),
                ctx.clone(),
                settings.connection.clone(),
                parent.clone(),
            )
            .start()
        })
        .collect()
}

/// Why the Socket Mode readiness check fails: a connection is in a fatal state.
pub fn fatal_connections(registry: &HealthRegistry) -> Vec<String> {
    registry
        .group(kinds::SLACK_CONNECTION)
        .into_iter()
        .filter(|a| a.state == ActorState::Failed)
        .map(|a| {
            format!(
                "{}: {}",
                a.key,
                a.last_error.unwrap_or_else(|| "failed".into())
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

enum SocketEnd {
    Shutdown,
    Reconnect(Option<Duration>),
    Fatal(String),
}

#[derive(Clone)]
struct Conn {
    key: String,
    ctx: SocketContext,
    machine: Arc<Mutex<ConnectionMachine>>,
    health: Arc<ActorHealth>,
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

/// Sleeps `d`; true when shut down meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

impl Conn {
    fn publish(&self) {
        let (detail, state) = {
            let m = self.machine.lock();
            (m.detail(), m.state())
        };
        let mut detail = detail;
        if let Some(obj) = detail.as_object_mut() {
            let ws = serde_json::to_value(self.ctx.board.snapshot()).unwrap_or(Value::Null);
            obj.insert("workspaces".into(), ws);
        }
        self.health.set_detail(detail);
        match state {
            ConnState::Connected => self.health.set_state(ActorState::Running),
            ConnState::Stopped => self.health.set_state(ActorState::Stopped),
            // Failed, connecting and backing off are set where they happen (with reasons).
            ConnState::Failed | ConnState::Connecting | ConnState::BackingOff => {}
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut delay: Option<Duration> = None;
        loop {
            if let Some(d) = delay.take() {
                self.publish();
                if sleep_or_shutdown(d, &mut shutdown).await {
                    break;
                }
            }
            if *shutdown.borrow() {
                break;
            }
            self.machine.lock().connecting();
            self.publish();
            // A shutdown must not wait for `apps.connections.open` retries or a slow handshake.
            let connected = tokio::select! {
                r = self.connect() => r,
                _ = shutdown.changed() => break,
            };
            let end = match connected {
                Ok(Ws::Plain(ws)) => Ok(self.serve(*ws, &mut shutdown).await),
                Ok(Ws::Tls(ws)) => Ok(self.serve(*ws, &mut shutdown).await),
                Err(e) => Err(e),
            };
            match end {
                Ok(SocketEnd::Shutdown) => break,
                Ok(SocketEnd::Reconnect(d)) => delay = d,
                Ok(SocketEnd::Fatal(reason)) => {
                    tracing::error!(connection = %self.key, reason = %reason, "slack socket mode disabled; not reconnecting");
                    let why = self
                        .machine
                        .lock()
                        .fatal_reason()
                        .unwrap_or(&reason)
                        .to_owned();
                    self.publish();
                    self.health.failed(&why);
                    return;
                }
                Err(e) => {
                    let d = self.machine.lock().on_connect_failed(&e);
                    tracing::warn!(connection = %self.key, error = %e, delay_ms = d.as_millis() as u64, "slack socket mode connect failed");
                    self.health.restarting(&e);
                    delay = Some(d);
                }
            }
        }
        self.machine.lock().stopped();
        self.publish();
        tracing::info!(connection = %self.key, "slack connection stopped");
    }

    async fn connect(&self) -> Result<Ws, String> {
        let url = open_socket_url(
            &self.ctx.client,
            &self.ctx.web_settings,
            &self.ctx.app_token,
        )
        .await
        .map_err(|e| e.to_string())?;
        let ws = tokio::time::timeout(CONNECT_TIMEOUT, connect_ws(&url))
            .await
            .map_err(|_| format!("websocket connect timed out after {CONNECT_TIMEOUT:?}"))??;
        self.machine.lock().socket_opened(Instant::now());
        tracing::debug!(connection = %self.key, "slack websocket open");
        Ok(ws)
    }

    async fn serve<S>(
        &self,
        ws: WebSocketStream<S>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SocketEnd
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let period = self.machine.lock().settings().ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return SocketEnd::Shutdown;
                }
                _ = ping.tick() => {
                    if self.machine.lock().watchdog_expired(Instant::now()) {
                        self.machine.lock().on_watchdog();
                        tracing::warn!(connection = %self.key, "slack socket silent; replacing it");
                        self.health.restarting("watchdog: no frame and no pong");
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
                        return SocketEnd::Reconnect(None);
                    }
                    if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                        return self.closed(&format!("ping failed: {e}"));
                    }
                }
                msg = stream.next() => match msg {
                    None => return self.closed("socket closed"),
                    Some(Err(e)) => return self.closed(&format!("socket error: {e}")),
                    Some(Ok(Message::Close(_))) => return self.closed("closed by slack"),
                    Some(Ok(Message::Text(text))) => {
                        if let Some(end) = self.on_text(text.as_str(), &mut sink).await {
                            match end {
                                Ended::Overlap => {
                                    let drain = self.clone();
                                    let timeout = self.machine.lock().settings().drain_timeout;
                                    actix::spawn(async move { drain.drain(sink, stream, timeout).await });
                                    return SocketEnd::Reconnect(None);
                                }
                                Ended::End(end) => {
                                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
                                    return end;
                                }
                            }
                        }
                    }
                    Some(Ok(_)) => self.machine.lock().activity(Instant::now()),
                },
            }
        }
    }

    fn closed(&self, why: &str) -> SocketEnd {
        let d = self.machine.lock().on_closed(why);
        tracing::info!(connection = %self.key, reason = why, delay_ms = d.as_millis() as u64, "slack socket closed; reconnecting");
        self.health.restarting(why);
        SocketEnd::Reconnect(Some(d))
    }

    /// Handles one text frame; `Some` when the socket must be given up.
    async fn on_text<S>(&self, text: &str, sink: &mut Sink<S>) -> Option<Ended>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let frame = match parse_socket_frame(text) {
            Ok(f) => f,
            Err(e) => {
                self.machine.lock().activity(Instant::now());
                tracing::warn!(connection = %self.key, error = %e, "unreadable socket mode frame");
                return None;
            }
        };
        let action = self.machine.lock().on_frame(frame, Instant::now());
        let end = match action {
            FrameAction::None => None,
            FrameAction::Ingest {
                envelope_id,
                payload,
                retry_attempt,
            } => {
                self.ingest_and_ack(sink, &envelope_id, &payload, retry_attempt)
                    .await;
                None
            }
            FrameAction::AckIgnored { envelope_id, kind } => {
                tracing::info!(connection = %self.key, envelope_id = %envelope_id, kind = %kind, "socket mode envelope ignored");
                if self.ack(sink, &envelope_id).await {
                    self.machine.lock().on_acked();
                }
                None
            }
            FrameAction::Reconnect { reason, how } => {
                tracing::info!(connection = %self.key, reason = %reason, "slack asked to disconnect");
                self.health.restarting(&format!("disconnect: {reason}"));
                match how {
                    Reconnect::Overlap => Some(Ended::Overlap),
                    Reconnect::After(d) => Some(Ended::End(SocketEnd::Reconnect(Some(d)))),
                }
            }
            FrameAction::Fatal { reason } => Some(Ended::End(SocketEnd::Fatal(reason))),
        };
        self.publish();
        end
    }

    async fn ack<S>(&self, sink: &mut Sink<S>, envelope_id: &str) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ack = serde_json::json!({ "envelope_id": envelope_id }).to_string();
        match sink.send(Message::text(ack)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(connection = %self.key, envelope_id, error = %e, "ack not sent; slack will redeliver");
                false
            }
        }
    }

    async fn ingest_and_ack<S>(
        &self,
        sink: &mut Sink<S>,
        envelope_id: &str,
        payload: &Value,
        retry_attempt: u32,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let fallback = format!("envelope:{envelope_id}");
        match inbound_event(payload, Some(&fallback)) {
            Ok(InboundClass::UrlVerification(_)) => {
                tracing::info!(connection = %self.key, envelope_id, kind = "url_verification", "events_api body ignored");
            }
            Ok(InboundClass::Ignore(kind)) => {
                tracing::info!(connection = %self.key, envelope_id, kind = %kind, "events_api body ignored");
            }
            Ok(InboundClass::Event(event)) => {
                let source_id = event.source_id.clone();
                match self.ctx.cluster.ingest(event).await {
                    Ok(outcome) => {
                        let duplicate = matches!(outcome, RecordOutcome::Duplicate(_));
                        tracing::debug!(connection = %self.key, envelope_id, event_id = %source_id, retry_attempt, duplicate, "slack event recorded");
                    }
                    Err(e) => {
                        // Not recorded: no ack, so Slack redelivers it.
                        tracing::error!(connection = %self.key, envelope_id, event_id = %source_id, error = %e, "recording a slack event failed; not acknowledging");
                        self.machine.lock().on_ingest_failed(&e.to_string());
                        self.health.record_error(&e.to_string());
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(connection = %self.key, envelope_id, error = %e, "events_api envelope cannot be recorded; acknowledging to stop redelivery");
            }
        }
        if self.ack(sink, envelope_id).await {
            self.machine.lock().on_acked();
            self.health.record_message();
        }
    }

    /// Keeps reading a replaced socket until Slack closes it (or `timeout`), so envelopes
    /// already routed to it are still recorded and acknowledged.
    async fn drain<S>(self, mut sink: Sink<S>, mut stream: Stream<S>, timeout: Duration)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            let text = match next {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
                Ok(Some(Ok(_))) => continue,
            };
            if let Ok(slack_events::SocketFrame::Envelope {
                kind,
                envelope_id,
                payload,
                retry_attempt,
                ..
            }) = parse_socket_frame(text.as_str())
            {
                if kind == "events_api" {
                    self.ingest_and_ack(&mut sink, &envelope_id, &payload, retry_attempt)
                        .await;
                } else if self.ack(&mut sink, &envelope_id).await {
                    self.machine.lock().on_acked();
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
        tracing::debug!(connection = %self.key, "old slack socket drained");
    }
}

enum Ended {
    Overlap,
    End(SocketEnd),
}

// ---------------------------------------------------------------------------------------------
// Websocket connect (ws:// and wss:// with rustls + ring)
// ---------------------------------------------------------------------------------------------

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

enum Ws {
    Plain(Box<WebSocketStream<tokio::net::TcpStream>>),
    Tls(Box<WebSocketStream<TlsStream>>),
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        // A certificate the store cannot use is skipped; the others still verify.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no native root certificates for wss://".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connect_ws(url: &str) -> Result<Ws, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("bad socket url: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or("socket url without a host")?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or("socket url without a port")?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("tcp connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match parsed.scheme() {
        "ws" => {
            let (ws, _) = tokio_tungstenite::client_async(url, tcp)
                .await
                .map_err(|e| format!("websocket handshake: {e}"))?;
            Ok(Ws::Plain(Box::new(ws)))
        }
        "wss" => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("bad tls server name {host}: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls handshake with {host}: {e}"))?;
            let (ws, _) = tokio_tungstenite::client_async(url, tls)
                .await
                .map_err(|e| format!("websocket handshake: {e}"))?;
            Ok(Ws::Tls(Box::new(ws)))
        }
        other => Err(format!("unsupported socket url scheme {other}")),
    }
}
