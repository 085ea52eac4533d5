//! Slack Socket Mode: our own client over tokio-tungstenite (slack-morphism's listener
//! acknowledges only after the callback returns and gives no control over reconnect reasons
//! or a watchdog).
//!
//! Each of `slack.connections` connections is a [`SlackConnection`] actor (kind
//! `slack_connection`, key `conn-N`): `apps.connections.open` with the app token → websocket,
//! whose frames are a stream of the actor; pings and the watchdog run on the actor's interval.
//! What to do with each frame is decided by the pure [`ConnectionMachine`], which the actor
//! owns; this module only does the I/O:
//!
//! * `events_api` envelope → [`Cluster::ingest`] (recorded in the inbox, dispatched to the
//!   thread actors when new) and only after it returns `Ok` (recorded or duplicate) the ack
//!   `{"envelope_id": …}`. An ingest failure (database down) leaves the envelope
//!   unacknowledged: Slack redelivers it.
//! * `interactive` envelope (approvals, issue 14) → recorded then acknowledged like
//!   `events_api`, keyed and routed by `infragpt_actors::approvals::interaction`;
//!   interactions not ours are acknowledged only.
//! * `slash_commands` envelope → [`super::commands::intake`] (recorded unless the ack answers
//!   it), then the ack, carrying the ephemeral answer as its `payload` when there is one.
//! * Other envelopes are acknowledged and logged as ignored.
//! * `disconnect` `warning`/`refresh_requested` → a new connection opens at once while the
//!   old socket drains (its late envelopes are still recorded and acknowledged) and closes;
//!   `too_many_websockets` → backoff; `link_disabled` → the actor reports `failed` with the
//!   reason and does not reconnect; the `slack` readiness check fails.
//! * Pings every `ping_interval`; a socket silent (no frame, no pong) for `idle_timeout` is
//!   replaced.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use actix::prelude::*;
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use infragpt_actors::cluster::Cluster;
use infragpt_actors::conversation::routing_key;
use infragpt_actors::health::{ActorHealth, ActorId, ActorState, HealthRegistry};
use infragpt_actors::ids::ThreadKey;
use infragpt_actors::inbox::{NewInboundEvent, RecordOutcome};
use infragpt_actors::slack_connection::{
    ConnState, ConnectionMachine, ConnectionSettings, FrameAction, Reconnect,
};
use infragpt_actors::slack_events::{self, Inbound, SocketFrame, parse_socket_frame};
use infragpt_actors::slash::SlashCommand;
use infragpt_actors::{Secret, kinds, sources};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::http_connector::SlackHyperClient;
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
            payload: payload.clone().into(),
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
                routing_key: ThreadKey::unthreaded_routing_key(team),
                kind: "unparseable".into(),
                payload: payload.clone().into(),
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

type WsError = tokio_tungstenite::tungstenite::Error;
type WsSink = Pin<Box<dyn Sink<Message, Error = WsError>>>;
type WsStream = Pin<Box<dyn Stream<Item = Result<Message, WsError>>>>;

/// How long one frame (ack, ping) may take to send before the socket counts as broken.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a close frame may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A frame (or the end) of one of the connection's sockets. Sockets are numbered so the frames
/// of a replaced socket that is still draining are told apart from the current one's.
#[derive(Debug)]
enum SocketEvent {
    Frame(u64, Result<Message, WsError>),
    Ended(u64),
}

/// One open websocket: its reader is a stream of the actor, its writer is owned here (and
/// lent to the one send in flight).
struct Socket {
    sink: Option<WsSink>,
    reader: SpawnHandle,
    /// Replaced by a newer socket; read only until it closes or the drain timeout.
    draining: bool,
}

/// One Socket Mode connection. The actor owns its [`ConnectionMachine`]; frames arrive as a
/// stream of the actor, pings and the watchdog run on an interval, and each envelope is
/// recorded and then acknowledged before the next frame is read (so the inbox keeps the
/// order Slack delivered). Stopping the actor (or sending [`StopConnection`]) closes its
/// sockets.
pub struct SlackConnection {
    key: String,
    ctx: SocketContext,
    machine: ConnectionMachine,
    health: ActorHealth,
    sockets: HashMap<u64, Socket>,
    next_socket: u64,
    /// The socket pings and the watchdog apply to (the newest one, once open).
    current: Option<u64>,
    /// `apps.connections.open` plus the handshake in flight, or the wait before the next try.
    pending: Option<SpawnHandle>,
    stopping: bool,
    /// Envelopes read and being recorded (their acks wait for their records).
    recording: usize,
    /// Told when the last socket of a stopping connection has closed and the last envelope
    /// read has been recorded.
    all_closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for SlackConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConnection")
            .field("key", &self.key)
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl SlackConnection {
    /// A connection actor (not started) with key `key` (`conn-1`, …), registered in the
    /// cluster's health registry under `parent`.
    pub fn new(
        key: impl Into<String>,
        ctx: SocketContext,
        settings: ConnectionSettings,
        parent: Option<ActorId>,
    ) -> Self {
        let key = key.into();
        let health = ctx
            .cluster
            .health()
            .register(ActorId::new(kinds::SLACK_CONNECTION, key.clone()), parent);
        Self {
            key,
            ctx,
            machine: ConnectionMachine::new(settings),
            health,
            sockets: HashMap::new(),
            next_socket: 1,
            current: None,
            pending: None,
            stopping: false,
            recording: 0,
            all_closed: None,
        }
    }

    /// Copies the machine's detail (and the workspaces' statuses) into the health entry.
    fn publish(&self) {
        let mut detail = self.machine.detail();
        if let Some(obj) = detail.as_object_mut() {
            let ws = serde_json::to_value(self.ctx.board.snapshot()).unwrap_or(Value::Null);
            obj.insert("workspaces".into(), ws);
        }
        self.health.set_detail(detail);
        match self.machine.state() {
            ConnState::Connected => self.health.set_state(ActorState::Running),
            ConnState::Stopped => self.health.set_state(ActorState::Stopped),
            // Failed, connecting and backing off are set where they happen (with reasons).
            ConnState::Failed | ConnState::Connecting | ConnState::BackingOff => {}
        }
    }

    /// Opens a new socket: `apps.connections.open`, then the websocket handshake. Runs beside
    /// the actor's other work (a draining socket, a stop request).
    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.machine.state() == ConnState::Failed {
            return;
        }
        self.machine.connecting();
        self.publish();
        let client = self.ctx.client.clone();
        let settings = self.ctx.web_settings.clone();
        let token = self.ctx.app_token.clone();
        let open = async move {
            let url = open_socket_url(&client, &settings, &token).await?;
            tokio::time::timeout(CONNECT_TIMEOUT, connect_ws(&url))
                .await
                .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
        };
        let handle = ctx.spawn(open.into_actor(self).map(|opened, act, ctx| {
            act.pending = None;
            act.on_connect(opened, ctx);
        }));
        self.pending = Some(handle);
    }

    fn on_connect(
        &mut self,
        opened: Result<(WsSink, WsStream), ConnectError>,
        ctx: &mut Context<Self>,
    ) {
        match opened {
            Ok((sink, stream)) => {
                self.machine.socket_opened(Instant::now());
                let id = self.next_socket;
                self.next_socket += 1;
                let frames = stream
                    .map(move |frame| SocketEvent::Frame(id, frame))
                    .chain(futures::stream::once(async move { SocketEvent::Ended(id) }));
                let reader = ctx.add_stream(frames);
                self.sockets.insert(
                    id,
                    Socket {
                        sink: Some(sink),
                        reader,
                        draining: false,
                    },
                );
                self.current = Some(id);
                tracing::debug!(connection = %self.key, "slack websocket open");
            }
            Err(e) => {
                let e = e.to_string();
                let d = self.machine.on_connect_failed(&e);
                tracing::warn!(connection = %self.key, error = %e, delay_ms = d.as_millis() as u64, "slack socket mode connect failed");
                self.health.retrying(&e);
                self.reconnect(Some(d), ctx);
            }
        }
    }

    /// Opens the next socket after `delay` (at once without one).
    fn reconnect(&mut self, delay: Option<Duration>, ctx: &mut Context<Self>) {
        self.publish();
        match delay {
            Some(d) => {
                let handle = ctx.run_later(d, |act, ctx| {
                    act.pending = None;
                    act.connect(ctx);
                });
                self.pending = Some(handle);
            }
            None => self.connect(ctx),
        }
    }

    /// Stops reading socket `id` and closes it (bounded by [`CLOSE_TIMEOUT`]).
    fn close_socket(&mut self, id: u64, ctx: &mut Context<Self>) {
        if self.current == Some(id) {
            self.current = None;
        }
        let Some(socket) = self.sockets.remove(&id) else {
            return;
        };
        ctx.cancel_future(socket.reader);
        if let Some(mut sink) = socket.sink {
            ctx.spawn(
                async move {
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(None))).await;
                }
                .into_actor(self),
            );
        }
        if socket.draining {
            tracing::debug!(connection = %self.key, "old slack socket drained");
        }
        self.notify_if_all_closed();
    }

    /// A stopping connection whose sockets have all closed, and whose envelopes are all
    /// recorded, tells [`StopConnection`].
    fn notify_if_all_closed(&mut self) {
        if self.stopping
            && self.sockets.is_empty()
            && self.recording == 0
            && let Some(tx) = self.all_closed.take()
        {
            let _ = tx.send(());
        }
    }

    /// Socket `id` closed, broke or failed a send: the current one is replaced after the
    /// backoff delay, a draining one is just dropped.
    fn socket_ended(&mut self, id: u64, why: &str, ctx: &mut Context<Self>) {
        let was_current = self.current == Some(id);
        if !self.sockets.contains_key(&id) {
            return;
        }
        self.close_socket(id, ctx);
        if was_current {
            let d = self.machine.on_closed(why);
            tracing::info!(connection = %self.key, reason = why, delay_ms = d.as_millis() as u64, "slack socket closed; reconnecting");
            self.health.retrying(why);
            self.reconnect(Some(d), ctx);
        }
    }

    /// Sends `msg` on socket `id`, holding every other event of the actor until it is sent,
    /// then calls `then` with the result.
    fn send<F>(&mut self, id: u64, msg: Message, ctx: &mut Context<Self>, then: F)
    where
        F: FnOnce(&mut Self, Result<(), String>, &mut Context<Self>) + 'static,
    {
        let Some(mut sink) = self.sockets.get_mut(&id).and_then(|s| s.sink.take()) else {
            then(self, Err("socket closed".into()), ctx);
            return;
        };
        let sent = async move {
            let result = match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("send timed out after {SEND_TIMEOUT:?}")),
            };
            (sink, result)
        };
        ctx.wait(sent.into_actor(self).map(move |(sink, result), act, ctx| {
            if let Some(socket) = act.sockets.get_mut(&id) {
                socket.sink = Some(sink);
            }
            then(act, result, ctx);
        }));
    }

    /// Pings the current socket, or replaces it when it has been silent too long.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(id) = self.current else {
            return;
        };
        if self.machine.watchdog_expired(Instant::now()) {
            self.machine.on_watchdog();
            tracing::warn!(connection = %self.key, "slack socket silent; replacing it");
            self.health.retrying("watchdog: no frame and no pong");
            self.close_socket(id, ctx);
            self.reconnect(None, ctx);
            return;
        }
        self.send(
            id,
            Message::Ping(Vec::new().into()),
            ctx,
            move |act, sent, ctx| {
                if let Err(e) = sent {
                    act.socket_ended(id, &format!("ping failed: {e}"), ctx);
                }
            },
        );
    }

    /// A text frame of the current socket: what the machine says to do with it.
    fn on_text(&mut self, id: u64, text: &str, ctx: &mut Context<Self>) {
        let frame = match parse_socket_frame(text) {
            Ok(f) => f,
            Err(e) => {
                self.machine.activity(Instant::now());
                tracing::warn!(connection = %self.key, error = %e, "unreadable socket mode frame");
                return;
            }
        };
        match self.machine.on_frame(frame, Instant::now()) {
            FrameAction::None => {}
            FrameAction::Ingest {
                envelope_id,
                payload,
                retry_attempt,
            } => self.ingest_and_ack(id, envelope_id, &payload, retry_attempt, ctx),
            FrameAction::Command {
                envelope_id,
                payload,
            } => self.command_and_ack(id, envelope_id, &payload, ctx),
            FrameAction::Interactive {
                envelope_id,
                payload,
            } => self.interaction_and_ack(id, envelope_id, &payload, ctx),
            FrameAction::AckIgnored { envelope_id, kind } => {
                tracing::info!(connection = %self.key, envelope_id = %envelope_id, kind = %kind, "socket mode envelope ignored");
                self.ack(id, envelope_id, false, ctx);
            }
            FrameAction::Reconnect { reason, how } => {
                tracing::info!(connection = %self.key, reason = %reason, "slack asked to disconnect");
                self.health.retrying(&format!("disconnect: {reason}"));
                match how {
                    Reconnect::Overlap => {
                        // The old socket keeps delivering (and is acknowledged) until Slack
                        // closes it or the drain timeout passes.
                        self.current = None;
                        if let Some(socket) = self.sockets.get_mut(&id) {
                            socket.draining = true;
                        }
                        let timeout = self.machine.settings().drain_timeout;
                        ctx.run_later(timeout, move |act, ctx| act.close_socket(id, ctx));
                        self.reconnect(None, ctx);
                    }
                    Reconnect::After(d) => {
                        self.close_socket(id, ctx);
                        self.reconnect(Some(d), ctx);
                    }
                }
            }
            FrameAction::Fatal { reason } => {
                self.close_socket(id, ctx);
                tracing::error!(connection = %self.key, reason = %reason, "slack socket mode disabled; not reconnecting");
                let why = self.machine.fatal_reason().unwrap_or(&reason).to_owned();
                self.publish();
                self.health.failed(&why);
            }
        }
        self.publish();
    }

    /// A text frame of a draining socket: envelopes are still recorded and acknowledged.
    fn on_drained_text(&mut self, id: u64, text: &str, ctx: &mut Context<Self>) {
        if let Ok(SocketFrame::Envelope {
            kind,
            envelope_id,
            payload,
            retry_attempt,
            ..
        }) = parse_socket_frame(text)
        {
            if kind == "events_api" {
                self.ingest_and_ack(id, envelope_id, &payload, retry_attempt, ctx);
            } else if kind == "slash_commands" {
                self.command_and_ack(id, envelope_id, &payload, ctx);
            } else if kind == "interactive" {
                self.interaction_and_ack(id, envelope_id, &payload, ctx);
            } else {
                self.ack(id, envelope_id, false, ctx);
            }
        }
    }

    /// Records an `events_api` envelope, then (only then) acknowledges it. An envelope that
    /// could not be recorded is not acknowledged: Slack redelivers it.
    fn ingest_and_ack(
        &mut self,
        id: u64,
        envelope_id: String,
        payload: &Value,
        retry_attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        let fallback = format!("envelope:{envelope_id}");
        let event = match inbound_event(payload, Some(&fallback)) {
            Ok(InboundClass::Event(event)) => event,
            Ok(InboundClass::UrlVerification(_)) => {
                tracing::info!(connection = %self.key, envelope_id, kind = "url_verification", "events_api body ignored");
                return self.ack(id, envelope_id, true, ctx);
            }
            Ok(InboundClass::Ignore(kind)) => {
                tracing::info!(connection = %self.key, envelope_id, kind = %kind, "events_api body ignored");
                return self.ack(id, envelope_id, true, ctx);
            }
            Err(e) => {
                tracing::error!(connection = %self.key, envelope_id, error = %e, "events_api envelope cannot be recorded; acknowledging to stop redelivery");
                return self.ack(id, envelope_id, true, ctx);
            }
        };
        // Where a turn starts: its `event_id` is the `source_id` of the `inbound_event` span
        // that handles it (and of the inbox row).
        let span = tracing::info_span!(
            "slack_envelope",
            connection = %self.key,
            envelope_id = %envelope_id,
            event_id = %event.source_id,
            retry_attempt
        );
        self.record_and_ack(id, envelope_id, event, span, ctx);
    }

    /// Records `event`, then (only then) acknowledges `envelope_id`; an event that could not
    /// be recorded is not acknowledged, so Slack redelivers it. The event is queued for the
    /// inbox now, in frame order, but the connection does not wait for the write: the next
    /// frames are read meanwhile and their events share the write (group commit), and each
    /// envelope is acknowledged as soon as its own record has committed.
    fn record_and_ack(
        &mut self,
        id: u64,
        envelope_id: String,
        event: NewInboundEvent,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let source_id = event.source_id.clone();
        let received = Instant::now();
        let recorded = self.ctx.cluster.ingest(event).instrument(span);
        self.recording += 1;
        ctx.spawn(recorded.into_actor(self).map(move |outcome, act, ctx| {
            act.recording -= 1;
            match outcome {
                Ok(outcome) => {
                    let duplicate = matches!(outcome, RecordOutcome::Duplicate(_));
                    tracing::debug!(connection = %act.key, envelope_id, source_id = %source_id, duplicate, "slack envelope recorded");
                    act.send_ack(id, envelope_id, true, Some(received), ctx);
                }
                Err(e) => {
                    tracing::error!(connection = %act.key, envelope_id, source_id = %source_id, error = %e, "recording a slack envelope failed; not acknowledging");
                    act.machine.on_ingest_failed(&e.to_string());
                    act.health.record_error(&e.to_string());
                    act.publish();
                }
            }
            act.notify_if_all_closed();
        }));
    }

    /// A `slash_commands` envelope: recorded (unless the ack answers it, see
    /// [`super::commands::intake`]), then acknowledged within 3 s, the answer as the ack's
    /// `payload`. Slack never redelivers a slash command, so an unreadable one is
    /// acknowledged too.
    fn command_and_ack(
        &mut self,
        id: u64,
        envelope_id: String,
        payload: &Value,
        ctx: &mut Context<Self>,
    ) {
        let cmd = match SlashCommand::parse(payload) {
            Ok(cmd) => cmd,
            Err(e) => {
                tracing::warn!(connection = %self.key, envelope_id, error = %e, "unreadable slash command; acknowledged");
                return self.ack(id, envelope_id, false, ctx);
            }
        };
        let cluster = self.ctx.cluster.clone();
        let span = tracing::info_span!(
            "slack_command",
            connection = %self.key,
            envelope_id = %envelope_id,
            trigger_id = %cmd.trigger_id,
        );
        let answered =
            async move { super::commands::intake(&cluster, &cmd).await }.instrument(span);
        ctx.wait(answered.into_actor(self).map(move |answer, act, ctx| {
            act.ack_with_payload(id, envelope_id, answer, ctx);
        }));
    }

    /// Acknowledges a slash command's envelope, with `payload` (an ephemeral answer) when
    /// given.
    fn ack_with_payload(
        &mut self,
        id: u64,
        envelope_id: String,
        payload: Option<Value>,
        ctx: &mut Context<Self>,
    ) {
        let ack = match payload {
            Some(payload) => serde_json::json!({ "envelope_id": envelope_id, "payload": payload }),
            None => serde_json::json!({ "envelope_id": envelope_id }),
        };
        self.send(id, Message::text(ack.to_string()), ctx, move |act, sent, _ctx| {
            match sent {
                Ok(()) => {
                    act.machine.on_acked();
                    act.health.record_message();
                }
                Err(e) => {
                    tracing::warn!(connection = %act.key, envelope_id, error = %e, "slash command ack not sent");
                }
            }
            act.publish();
        });
    }

    /// Acknowledges an envelope; `counts_as_message` for envelopes that went to the inbox.
    fn ack(
        &mut self,
        id: u64,
        envelope_id: String,
        counts_as_message: bool,
        ctx: &mut Context<Self>,
    ) {
        self.send_ack(id, envelope_id, counts_as_message, None, ctx);
    }

    /// As [`Self::ack`]; for an envelope whose event was ingested at `received`, the time
    /// from then to the ack's send goes to the `ack` stage (Slack's side of it, less the
    /// network).
    fn send_ack(
        &mut self,
        id: u64,
        envelope_id: String,
        counts_as_message: bool,
        received: Option<Instant>,
        ctx: &mut Context<Self>,
    ) {
        let ack = serde_json::json!({ "envelope_id": envelope_id }).to_string();
        self.send(id, Message::text(ack), ctx, move |act, sent, _ctx| {
            match sent {
                Ok(()) => {
                    act.machine.on_acked();
                    if counts_as_message {
                        act.health.record_message();
                    }
                    if let Some(received) = received {
                        act.ctx
                            .cluster
                            .metrics()
                            .observe_stage("ack", received.elapsed());
                    }
                }
                // Stopping: the envelope is recorded, Slack's redelivery will be a duplicate.
                Err(e) if act.stopping => {
                    tracing::debug!(connection = %act.key, envelope_id, error = %e, "recorded while stopping; the ack can no longer be sent");
                }
                Err(e) => {
                    tracing::warn!(connection = %act.key, envelope_id, error = %e, "ack not sent; slack will redeliver");
                }
            }
            act.publish();
        });
    }
}

/// Interactions (issue 14): recorded like events, then acknowledged.
impl SlackConnection {
    /// Records an `interactive` envelope's payload in the inbox when it is an interaction of
    /// ours (see `infragpt_actors::approvals::interaction` for its key and routing), then
    /// (only then) acknowledges it; other interactions are acknowledged at once.
    fn interaction_and_ack(
        &mut self,
        id: u64,
        envelope_id: String,
        payload: &Value,
        ctx: &mut Context<Self>,
    ) {
        let event = match infragpt_actors::approvals::interaction::inbox_event(payload) {
            Ok(Some(event)) => event,
            Ok(None) => {
                tracing::info!(connection = %self.key, envelope_id, "interaction not ours; acknowledged");
                return self.ack(id, envelope_id, false, ctx);
            }
            Err(e) => {
                tracing::warn!(connection = %self.key, envelope_id, error = %e, "unreadable interaction; acknowledging");
                return self.ack(id, envelope_id, false, ctx);
            }
        };
        let span = tracing::info_span!(
            "slack_interaction",
            connection = %self.key,
            envelope_id = %envelope_id,
            source_id = %event.source_id,
        );
        self.record_and_ack(id, envelope_id, event, span, ctx);
    }
}

impl Actor for SlackConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish();
        let period = self.machine.settings().ping_interval;
        ctx.run_interval(period, |act, ctx| act.tick(ctx));
        self.connect(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.machine.stopped();
        self.publish();
        tracing::info!(connection = %self.key, "slack connection stopped");
    }
}

impl StreamHandler<SocketEvent> for SlackConnection {
    fn handle(&mut self, event: SocketEvent, ctx: &mut Self::Context) {
        match event {
            SocketEvent::Ended(id) => self.socket_ended(id, "socket closed", ctx),
            SocketEvent::Frame(id, Err(e)) => {
                self.socket_ended(id, &format!("socket error: {e}"), ctx)
            }
            SocketEvent::Frame(id, Ok(Message::Close(_))) => {
                self.socket_ended(id, "closed by slack", ctx)
            }
            SocketEvent::Frame(id, Ok(Message::Text(text))) if self.current == Some(id) => {
                self.on_text(id, text.as_str(), ctx)
            }
            SocketEvent::Frame(id, Ok(Message::Text(text))) => {
                self.on_drained_text(id, text.as_str(), ctx)
            }
            SocketEvent::Frame(id, Ok(_)) => {
                if self.current == Some(id) {
                    self.machine.activity(Instant::now());
                }
            }
        }
    }

    /// Each socket reports its own end ([`SocketEvent::Ended`]); the actor outlives them.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

/// Stops a connection: closes its sockets, reading each until Slack closes it too, and waits
/// for the envelopes read to be recorded (both bounded by [`STOP_DRAIN_TIMEOUT`]), then stops.
///
/// Envelopes Slack sent before it saw the close are still read and recorded, so their turns
/// start now rather than after Slack's redelivery (seconds later, on another replica's
/// socket); their acks can no longer be sent, and the redelivery is a duplicate the inbox
/// ignores. Cancelling the reader at once would drop whatever was buffered in the socket.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopConnection;

/// How long a stopping connection reads its closing sockets for envelopes already sent.
const STOP_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

impl Handler<StopConnection> for SlackConnection {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: StopConnection, ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        self.current = None;
        if let Some(pending) = self.pending.take() {
            ctx.cancel_future(pending);
        }
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        self.all_closed = Some(closed_tx);
        let mut sinks = Vec::new();
        for socket in self.sockets.values_mut() {
            // Frames of a socket that is not current are recorded as a draining socket's.
            socket.draining = true;
            sinks.extend(socket.sink.take());
        }
        for mut sink in sinks {
            ctx.spawn(
                async move {
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(None))).await;
                }
                .into_actor(self),
            );
        }
        self.notify_if_all_closed();
        Box::pin(
            async move {
                let _ = tokio::time::timeout(STOP_DRAIN_TIMEOUT, closed_rx).await;
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                if !act.sockets.is_empty() {
                    tracing::warn!(connection = %act.key, sockets = act.sockets.len(), "slack did not close the sockets in time; dropping them");
                }
                for (_, socket) in act.sockets.drain() {
                    ctx.cancel_future(socket.reader);
                }
                ctx.stop();
            }),
        )
    }
}

/// Starts `settings.connections` connection actors (`conn-1` …) on an arbiter (thread) of
/// their own, returned with them: reading a frame and sending its ack never wait behind the
/// conversation workers' turns on the main arbiter. Stop the arbiter once the connections
/// have stopped.
pub fn start_connections(
    ctx: SocketContext,
    settings: &SocketSettings,
    parent: Option<ActorId>,
) -> (Arbiter, Vec<Addr<SlackConnection>>) {
    let arbiter = Arbiter::new();
    let n = settings.connections.clamp(1, MAX_CONNECTIONS);
    let connections = (1..=n)
        .map(|i| {
            let (ctx, connection, parent) =
                (ctx.clone(), settings.connection.clone(), parent.clone());
            SlackConnection::start_in_arbiter(&arbiter.handle(), move |_| {
                SlackConnection::new(format!("conn-{i}"), ctx, connection, parent)
            })
        })
        .collect();
    (arbiter, connections)
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
// Websocket connect (ws:// and wss:// with rustls + ring)
// ---------------------------------------------------------------------------------------------

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Splits a websocket into its halves, with the transport (plain or TLS) erased.
fn split_ws<S>(ws: WebSocketStream<S>) -> (WsSink, WsStream)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (sink, stream) = ws.split();
    (Box::pin(sink), Box::pin(stream))
}

/// Why a Socket Mode connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// `apps.connections.open` failed.
    #[error(transparent)]
    OpenUrl(#[from] infragpt_actors::conversation::SlackApiError),
    #[error("bad socket url: {0}")]
    BadUrl(#[source] url::ParseError),
    /// Slack's URL lacks a part we need (`host`, `port`).
    #[error("socket url without a {0}")]
    Incomplete(&'static str),
    #[error("unsupported socket url scheme {0}")]
    Scheme(String),
    #[error("tcp connect to {target}: {source}")]
    Tcp {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad tls server name {host}: {source}")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("no native root certificates for wss://")]
    NoRoots,
    #[error(transparent)]
    TlsConfig(#[from] rustls::Error),
    #[error("tls handshake with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("websocket handshake: {0}")]
    Handshake(#[source] tokio_tungstenite::tungstenite::Error),
    /// Everything together took longer than allowed.
    #[error("websocket connect timed out after {0:?}")]
    Timeout(Duration),
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        // A certificate the store cannot use is skipped; the others still verify.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ConnectError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connect_ws(url: &str) -> Result<(WsSink, WsStream), ConnectError> {
    let parsed = url::Url::parse(url).map_err(ConnectError::BadUrl)?;
    let host = parsed
        .host_str()
        .ok_or(ConnectError::Incomplete("host"))?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or(ConnectError::Incomplete("port"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| ConnectError::Tcp {
            target: format!("{host}:{port}"),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match parsed.scheme() {
        "ws" => {
            let (ws, _) = tokio_tungstenite::client_async(url, tcp)
                .await
                .map_err(ConnectError::Handshake)?;
            Ok(split_ws(ws))
        }
        "wss" => {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|source| {
                ConnectError::ServerName {
                    host: host.clone(),
                    source,
                }
            })?;
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls { host, source })?;
            let (ws, _) = tokio_tungstenite::client_async(url, tls)
                .await
                .map_err(ConnectError::Handshake)?;
            Ok(split_ws::<TlsStream>(ws))
        }
        other => Err(ConnectError::Scheme(other.to_owned())),
    }
}
