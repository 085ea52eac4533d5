//! The simulator's state: workspaces, tokens, messages, Socket Mode connections and deliveries,
//! plus everything recorded for tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::SimError;
use super::config::{SimConfig, SimTeam};
use super::server::Shared;

/// One recorded Web API call.
#[derive(Debug, Clone, Serialize)]
pub struct ApiCall {
    /// Method name (`chat.postMessage`).
    pub method: String,
    /// Team of the token used, when it resolved to one.
    pub team_id: Option<String>,
    /// Request parameters (query, form or JSON merged; `token` removed).
    pub params: Value,
    /// HTTP status returned.
    pub status: u16,
    /// The `error` returned, if any.
    pub error: Option<String>,
}

/// An upload between `files.getUploadURLExternal` and `files.completeUploadExternal`.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub(crate) team_id: String,
    pub(crate) filename: String,
    /// The `length` announced by `files.getUploadURLExternal`.
    pub(crate) length: usize,
    /// The bytes POSTed to the upload URL.
    pub(crate) content: Option<Vec<u8>>,
}

/// A file shared into a channel (`files.completeUploadExternal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFile {
    pub id: String,
    pub team_id: String,
    pub channel: String,
    pub thread_ts: Option<String>,
    pub filename: String,
    pub title: Option<String>,
    pub content: Vec<u8>,
}

/// A message in a channel.
#[derive(Debug, Clone, Serialize)]
pub struct SimMessage {
    pub ts: String,
    /// Author user id (the bot's user id for bot posts).
    pub user: String,
    /// Set for bot posts.
    pub bot_id: Option<String>,
    /// Current text.
    pub text: String,
    /// Thread parent, for replies.
    pub thread_ts: Option<String>,
    /// Reactions: name → users.
    pub reactions: BTreeMap<String, Vec<String>>,
    /// Set once deleted.
    pub deleted: bool,
    /// The `metadata` it was posted with (`event_type`, `event_payload`), as Slack keeps it.
    pub metadata: Option<Value>,
    /// Ids of the files it shares (`files.completeUploadExternal`).
    pub files: Vec<String>,
    /// Its Block Kit blocks, as last posted or updated.
    pub blocks: Option<Value>,
    /// How many times `chat.update` changed it.
    pub updates: u32,
}

/// A thread's assistant status set through `assistant.threads.setStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub team_id: String,
    pub channel: String,
    pub thread_ts: String,
    /// `""` clears it.
    pub status: String,
    /// The thread's messages when it was set (a status set after the answer shows as a
    /// larger count than the answer's position).
    pub messages_before: usize,
}

/// A message the bot posted (`chat.postMessage`), as told to
/// [`super::SlackSim::subscribe_bot_posts`] subscribers.
#[derive(Debug, Clone)]
pub struct BotPost {
    /// Workspace.
    pub team_id: String,
    pub channel: String,
    /// The new message's ts.
    pub ts: String,
    /// Thread it was posted in, if any.
    pub thread_ts: Option<String>,
    /// Its text as posted (load drivers tell which mention it answers).
    pub text: String,
    /// When the simulator stored it.
    pub at: Instant,
}

/// State of a Socket Mode connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnState {
    /// Receiving envelopes.
    Open,
    /// A `disconnect` was sent; no new envelopes are routed to it.
    Disconnecting,
    /// Gone.
    Closed,
}

/// One Socket Mode connection (open or past).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// Sequential id (1, 2, ...).
    pub id: u64,
    /// App it belongs to.
    pub app_id: String,
    /// `debug_info.host` sent in its frames.
    pub host: String,
    pub state: ConnState,
    /// Why it ended (`disconnect:refresh_requested`, `client_closed`, `dropped`, ...).
    pub end_reason: Option<String>,
}

/// A frame the simulator sent.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    /// Connection it went to.
    pub connection_id: u64,
    /// The frame's `type`.
    pub kind: String,
    pub frame: Value,
}

/// An acknowledgement received from a client.
#[derive(Debug, Clone, Serialize)]
pub struct AckRecord {
    /// Connection it came on.
    pub connection_id: u64,
    /// Echoed envelope id.
    pub envelope_id: String,
    /// Event id of the acknowledged envelope, when the envelope was known.
    pub event_id: Option<String>,
    /// Response payload, when the ack carried one.
    pub payload: Option<Value>,
    /// When the simulator received it (benchmarks measure ack latency from this).
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// One event to deliver over Socket Mode, with its retry state.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    /// Envelope id (kept across redeliveries).
    pub envelope_id: String,
    /// `event_id` of the payload.
    pub event_id: String,
    /// Workspace.
    pub team_id: String,
    pub app_id: String,
    /// `event.type` (`app_mention`, `message`).
    pub event_type: String,
    /// `event.ts` when the event has one.
    pub ts: Option<String>,
    /// Times sent (0 while waiting for a connection).
    pub sends: u32,
    /// `retry_attempt` of the latest send.
    pub retry_attempt: u32,
    pub acked: bool,
    /// Gave up after the last redelivery.
    pub exhausted: bool,
    /// When the envelope was first written to a connection.
    #[serde(skip)]
    pub first_sent_at: Option<Instant>,
    /// When the first acknowledgement arrived.
    #[serde(skip)]
    pub acked_at: Option<Instant>,
    /// The `events_api` payload (an `event_callback`), or an interaction payload.
    pub payload: Value,
    /// `events_api`, or `interactive` for clicks and modal submissions.
    pub envelope_type: String,
}

#[derive(Debug, Clone)]
pub(crate) enum TokenKind {
    Bot { team_id: String },
    App { app_id: String },
}

#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    pub kind: TokenKind,
    pub revoked: bool,
    pub expires_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct OauthCode {
    pub team_id: String,
    pub user_id: String,
}

/// Commands to a connection task.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    Frame(String),
    /// Send this frame, then close.
    FrameThenClose(String),
    /// Drop the socket without a close frame.
    Drop,
}

#[derive(Debug)]
pub(crate) struct LiveConn {
    pub tx: UnboundedSender<ConnCmd>,
}

/// A workspace of the simulator's configuration, shared rather than copied: every Web API
/// call and every generated event looks its team up while the state is borrowed mutably,
/// and copying a team with its users and channels each time took a twentieth of the
/// benchmark process's CPU.
#[derive(Clone, Debug)]
pub(crate) struct TeamRef {
    config: Arc<SimConfig>,
    index: usize,
}

impl std::ops::Deref for TeamRef {
    type Target = SimTeam;
    fn deref(&self) -> &SimTeam {
        &self.config.teams[self.index]
    }
}

/// Everything the simulator knows and recorded. Tests read it through [`super::SlackSim`] or in
/// [`super::SlackSim::wait_for`] predicates.
#[derive(Debug)]
pub struct SimState {
    pub(crate) config: Arc<SimConfig>,
    pub(crate) port: u16,
    pub(crate) me: Weak<Shared>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) tokens: HashMap<String, TokenInfo>,
    pub(crate) refresh_tokens: HashMap<String, String>,
    pub(crate) codes: HashMap<String, OauthCode>,
    pub(crate) tickets: HashMap<String, String>,
    pub(crate) messages: HashMap<(String, String), Vec<SimMessage>>,
    pub(crate) calls: Vec<ApiCall>,
    pub(crate) frames: Vec<FrameRecord>,
    pub(crate) acks: Vec<AckRecord>,
    pub(crate) connections: Vec<ConnectionInfo>,
    pub(crate) live: HashMap<u64, LiveConn>,
    pub(crate) deliveries: Vec<DeliveryInfo>,
    /// `envelope_id` → index in `deliveries` (acks are matched per frame; a scan is O(n)).
    pub(crate) delivery_index: HashMap<String, usize>,
    /// Receivers of every bot post (see [`super::SlackSim::subscribe_bot_posts`]).
    pub(crate) bot_post_subscribers: Vec<UnboundedSender<BotPost>>,
    pub(crate) rr: HashMap<String, usize>,
    pub(crate) rate_limits: HashMap<String, (u32, u64)>,
    /// Injected server errors per method (see [`super::SlackSim::inject_server_error`]).
    pub(crate) server_errors: HashMap<String, ServerErrorFault>,
    pub(crate) invalid_auth_teams: HashSet<String>,
    pub(crate) link_disabled: bool,
    /// Uploads started with `files.getUploadURLExternal`, by file id.
    pub(crate) uploads: HashMap<String, PendingUpload>,
    /// Files shared with `files.completeUploadExternal`.
    pub(crate) files: Vec<SimFile>,
    /// Every `assistant.threads.setStatus` that succeeded, in order.
    pub(crate) statuses: Vec<StatusChange>,
    /// The status each thread shows now: (team, channel, thread ts) → status. Cleared when
    /// the bot posts in the thread, as Slack does.
    pub(crate) thread_status: HashMap<(String, String, String), String>,
    /// Slash commands and the assistant pane (`super::commands`).
    pub(crate) commands: super::commands::CommandsState,
    /// Triggers, ephemeral messages and modals (issue 14).
    pub(crate) interactive: super::interactive::InteractiveState,
    seq: u64,
    last_ts_micros: u128,
    event_id_prefix: String,
}

impl SimState {
    pub(crate) fn new(
        config: SimConfig,
        port: u16,
        me: Weak<Shared>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let mut tokens = HashMap::new();
        for app in &config.apps {
            tokens.insert(
                app.app_token.expose().to_owned(),
                TokenInfo {
                    kind: TokenKind::App {
                        app_id: app.app_id.clone(),
                    },
                    revoked: false,
                    expires_at: None,
                },
            );
        }
        for team in &config.teams {
            tokens.insert(
                team.bot_token.expose().to_owned(),
                TokenInfo {
                    kind: TokenKind::Bot {
                        team_id: team.id.clone(),
                    },
                    revoked: false,
                    expires_at: None,
                },
            );
        }
        Self {
            config: Arc::new(config),
            port,
            me,
            rt,
            tokens,
            refresh_tokens: HashMap::new(),
            codes: HashMap::new(),
            tickets: HashMap::new(),
            messages: HashMap::new(),
            calls: Vec::new(),
            frames: Vec::new(),
            acks: Vec::new(),
            connections: Vec::new(),
            live: HashMap::new(),
            deliveries: Vec::new(),
            delivery_index: HashMap::new(),
            statuses: Vec::new(),
            thread_status: HashMap::new(),
            bot_post_subscribers: Vec::new(),
            rr: HashMap::new(),
            rate_limits: HashMap::new(),
            server_errors: HashMap::new(),
            invalid_auth_teams: HashSet::new(),
            uploads: HashMap::new(),
            files: Vec::new(),
            commands: Default::default(),
            interactive: Default::default(),
            link_disabled: false,
            seq: 0,
            last_ts_micros: 0,
            event_id_prefix: String::new(),
        }
    }

    // ----- read API -------------------------------------------------------------------------

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Recorded calls of one Web API method, oldest first.
    pub fn calls(&self, method: &str) -> Vec<&ApiCall> {
        self.calls.iter().filter(|c| c.method == method).collect()
    }

    /// All recorded Web API calls.
    pub fn all_calls(&self) -> &[ApiCall] {
        &self.calls
    }

    /// Messages in a channel (top level and replies), in posting order; deleted ones included
    /// with `deleted: true`.
    pub fn messages_in(&self, team_id: &str, channel: &str) -> &[SimMessage] {
        self.messages
            .get(&(team_id.to_owned(), channel.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Messages posted by the team's bot in a channel.
    pub fn bot_messages_in(&self, team_id: &str, channel: &str) -> Vec<&SimMessage> {
        self.messages_in(team_id, channel)
            .iter()
            .filter(|m| m.bot_id.is_some())
            .collect()
    }

    /// Every acknowledgement received.
    pub fn acks(&self) -> &[AckRecord] {
        &self.acks
    }

    /// Every connection seen, open or closed.
    pub fn connections(&self) -> &[ConnectionInfo] {
        &self.connections
    }

    /// Connections currently open (receiving envelopes).
    pub fn open_connections(&self) -> Vec<&ConnectionInfo> {
        self.connections
            .iter()
            .filter(|c| c.state == ConnState::Open)
            .collect()
    }

    /// Every frame sent.
    pub fn frames(&self) -> &[FrameRecord] {
        &self.frames
    }

    /// Every event delivery with its retry state.
    pub fn deliveries(&self) -> &[DeliveryInfo] {
        &self.deliveries
    }

    /// Index of the delivery with this envelope id.
    pub(crate) fn delivery_position(&self, envelope_id: &str) -> Option<usize> {
        self.delivery_index.get(envelope_id).copied()
    }

    /// Tells the bot-post subscribers about a message the bot just posted; drops the ones
    /// that went away.
    pub(crate) fn notify_bot_post(&mut self, post: BotPost) {
        if self.bot_post_subscribers.is_empty() {
            return;
        }
        self.bot_post_subscribers
            .retain(|tx| tx.send(post.clone()).is_ok());
    }

    // ----- ids and time ---------------------------------------------------------------------

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A fresh message ts, strictly increasing (Slack's ts is unique per channel).
    pub(crate) fn next_ts(&mut self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let micros = now.max(self.last_ts_micros + 1);
        self.last_ts_micros = micros;
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }

    /// Event ids are unique across simulator runs, as Slack's are globally: a service that
    /// keeps its database between runs (the demo) must not see a new event as a redelivery.
    pub(crate) fn next_event_id(&mut self) -> String {
        let seq = self.next_seq();
        if self.event_id_prefix.is_empty() {
            let started = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0);
            self.event_id_prefix = format!("Ev0{started:X}");
        }
        format!("{}S{seq:06}", self.event_id_prefix)
    }

    pub(crate) fn host(&self, conn_id: u64) -> String {
        format!("applink-sim-{conn_id}")
    }

    pub(crate) fn team(&self, team_id: &str) -> Result<TeamRef, SimError> {
        let index = self
            .config
            .teams
            .iter()
            .position(|t| t.id == team_id)
            .ok_or_else(|| SimError::UnknownTeam(team_id.to_owned()))?;
        Ok(TeamRef {
            config: self.config.clone(),
            index,
        })
    }

    // ----- messages -------------------------------------------------------------------------

    /// Every thread status set, in order.
    pub fn statuses(&self) -> &[StatusChange] {
        &self.statuses
    }

    pub(crate) fn store_message(&mut self, team_id: &str, channel: &str, msg: SimMessage) {
        self.messages
            .entry((team_id.to_owned(), channel.to_owned()))
            .or_default()
            .push(msg);
    }

    pub(crate) fn find_message_mut(
        &mut self,
        team_id: &str,
        channel: &str,
        ts: &str,
    ) -> Option<&mut SimMessage> {
        self.messages
            .get_mut(&(team_id.to_owned(), channel.to_owned()))
            // From the end: edits and replies usually concern recent messages.
            .and_then(|msgs| msgs.iter_mut().rev().find(|m| m.ts == ts))
    }

    pub(crate) fn parent_user(
        &self,
        team_id: &str,
        channel: &str,
        thread_ts: &str,
    ) -> Option<String> {
        self.messages_in(team_id, channel)
            .iter()
            .rev()
            .find(|m| m.ts == thread_ts)
            .map(|m| m.user.clone())
    }

    // ----- events ---------------------------------------------------------------------------

    /// Wraps an event in an `event_callback` exactly as Slack does.
    pub(crate) fn event_callback(&mut self, team: &SimTeam, event: Value) -> Value {
        let event_id = self.next_event_id();
        let app = self.config.apps.iter().find(|a| a.app_id == team.app_id);
        let verification = app
            .map(|a| a.verification_token.clone())
            .unwrap_or_default();
        let event_type = event["type"].as_str().unwrap_or("message").to_owned();
        let channel = event["channel"].as_str().unwrap_or_default().to_owned();
        let event_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let context = json!({"et": event_type, "tid": team.id, "aid": team.app_id, "cid": channel});
        let event_context = format!(
            "4-{}",
            base64::engine::general_purpose::STANDARD.encode(context.to_string())
        );
        json!({
            "token": verification,
            "team_id": team.id,
            "context_team_id": team.id,
            "context_enterprise_id": null,
            "api_app_id": team.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": event_time,
            "authorizations": [{
                "enterprise_id": null,
                "team_id": team.id,
                "user_id": team.bot_user_id,
                "is_bot": true,
                "is_enterprise_install": false
            }],
            "is_ext_shared_channel": false,
            "event_context": event_context
        })
    }

    /// Queues an `event_callback` payload for Socket Mode delivery and sends it if a
    /// connection is open. Returns the envelope id.
    pub(crate) fn enqueue(&mut self, payload: Value) -> String {
        let envelope_id = uuid::Uuid::new_v4().to_string();
        let info = DeliveryInfo {
            envelope_id: envelope_id.clone(),
            event_id: payload["event_id"].as_str().unwrap_or_default().to_owned(),
            team_id: payload["team_id"].as_str().unwrap_or_default().to_owned(),
            app_id: payload["api_app_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            event_type: payload["event"]["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ts: payload["event"]["ts"].as_str().map(str::to_owned),
            sends: 0,
            retry_attempt: 0,
            acked: false,
            exhausted: false,
            first_sent_at: None,
            acked_at: None,
            payload,
            envelope_type: "events_api".to_owned(),
        };
        self.delivery_index
            .insert(envelope_id.clone(), self.deliveries.len());
        self.deliveries.push(info);
        self.send_delivery(self.deliveries.len() - 1, 0, "");
        envelope_id
    }

    /// Builds the `events_api` envelope for a delivery.
    pub(crate) fn envelope_frame(
        d: &DeliveryInfo,
        retry_attempt: u32,
        retry_reason: &str,
    ) -> Value {
        json!({
            "envelope_id": d.envelope_id,
            "payload": d.payload,
            "type": d.envelope_type,
            "accepts_response_payload": false,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason
        })
    }

    /// Picks the next open connection of an app (round robin).
    fn pick_connection(&mut self, app_id: &str) -> Option<u64> {
        let open: Vec<u64> = self
            .connections
            .iter()
            .filter(|c| c.app_id == app_id && c.state == ConnState::Open)
            .map(|c| c.id)
            .collect();
        if open.is_empty() {
            return None;
        }
        let counter = self.rr.entry(app_id.to_owned()).or_insert(0);
        let id = open[*counter % open.len()];
        *counter += 1;
        Some(id)
    }

    /// Sends (or re-sends) delivery `idx`. Without an open connection it stays queued and goes
    /// out when one opens. Starts the ack timer.
    pub(crate) fn send_delivery(&mut self, idx: usize, retry_attempt: u32, retry_reason: &str) {
        let app_id = self.deliveries[idx].app_id.clone();
        let Some(conn_id) = self.pick_connection(&app_id) else {
            // A redelivery with no connection open: try again after another ack timeout
            // (a first send waits in `flush_pending` instead). Without this, an envelope
            // sent on a socket that died before reconnecting was never delivered again.
            let d = &self.deliveries[idx];
            if d.sends > 0 {
                self.start_ack_timer(d.envelope_id.clone(), d.retry_attempt);
            }
            return;
        };
        let frame = Self::envelope_frame(&self.deliveries[idx], retry_attempt, retry_reason);
        {
            let d = &mut self.deliveries[idx];
            d.sends += 1;
            d.retry_attempt = retry_attempt;
            d.first_sent_at.get_or_insert_with(Instant::now);
        }
        self.send_frame(conn_id, frame, false);
        self.start_ack_timer(self.deliveries[idx].envelope_id.clone(), retry_attempt);
    }

    fn start_ack_timer(&self, envelope_id: String, attempt: u32) {
        let me = self.me.clone();
        let timeout = self.config.ack_timeout;
        self.rt.spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(shared) = me.upgrade() {
                shared.mutate(|st| st.on_ack_timeout(&envelope_id, attempt));
            }
        });
    }

    fn on_ack_timeout(&mut self, envelope_id: &str, attempt: u32) {
        let max = self.config.max_redeliveries;
        let Some(idx) = self.delivery_position(envelope_id) else {
            return;
        };
        let d = &self.deliveries[idx];
        // A later attempt has its own timer; only the latest one acts.
        if d.acked || d.retry_attempt != attempt {
            return;
        }
        if attempt >= max {
            tracing::debug!(
                envelope_id,
                attempt,
                "sim: envelope never acknowledged, giving up"
            );
            self.deliveries[idx].exhausted = true;
            return;
        }
        self.send_delivery(idx, attempt + 1, "timeout");
    }

    /// Sends every queued (never sent) delivery of an app; called when a connection opens.
    pub(crate) fn flush_pending(&mut self, app_id: &str) {
        let pending: Vec<usize> = self
            .deliveries
            .iter()
            .enumerate()
            .filter(|(_, d)| d.app_id == app_id && !d.acked && !d.exhausted && d.sends == 0)
            .map(|(i, _)| i)
            .collect();
        for idx in pending {
            self.send_delivery(idx, 0, "");
        }
    }

    /// Records and sends one frame to a connection.
    pub(crate) fn send_frame(&mut self, conn_id: u64, frame: Value, then_close: bool) {
        let text = frame.to_string();
        if self.config.record_traffic || frame["type"] != "events_api" {
            self.frames.push(FrameRecord {
                connection_id: conn_id,
                kind: frame["type"].as_str().unwrap_or_default().to_owned(),
                frame,
            });
        }
        if let Some(live) = self.live.get(&conn_id) {
            let cmd = if then_close {
                ConnCmd::FrameThenClose(text)
            } else {
                ConnCmd::Frame(text)
            };
            // A closed receiver means the task is ending; the close is recorded there.
            let _ = live.tx.send(cmd);
        }
    }

    /// Records a frame received from a client (acks).
    pub(crate) fn on_client_frame(&mut self, conn_id: u64, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            tracing::warn!(conn_id, "sim: client sent a non-JSON frame");
            return;
        };
        let Some(envelope_id) = v["envelope_id"].as_str().map(str::to_owned) else {
            tracing::warn!(conn_id, "sim: client frame without envelope_id");
            return;
        };
        let now = Instant::now();
        let event_id = self.delivery_position(&envelope_id).map(|idx| {
            let d = &mut self.deliveries[idx];
            d.acked = true;
            d.acked_at.get_or_insert(now);
            d.event_id.clone()
        });
        if !self.config.record_traffic {
            return;
        }
        self.acks.push(AckRecord {
            connection_id: conn_id,
            envelope_id,
            event_id,
            payload: v.get("payload").cloned(),
            at: Some(now),
        });
    }

    pub(crate) fn disconnect_frame(&self, conn_id: u64, reason: &str) -> Value {
        json!({"type": "disconnect", "reason": reason, "debug_info": {"host": self.host(conn_id)}})
    }

    /// Sends `disconnect` with a reason and closes.
    pub(crate) fn disconnect(&mut self, conn_id: u64, reason: &str) {
        let frame = self.disconnect_frame(conn_id, reason);
        if let Some(c) = self.connections.iter_mut().find(|c| c.id == conn_id)
            && c.state == ConnState::Open
        {
            c.state = ConnState::Disconnecting;
            c.end_reason = Some(format!("disconnect:{reason}"));
        }
        self.send_frame(conn_id, frame, true);
    }

    pub(crate) fn conn_closed(&mut self, conn_id: u64, reason: &str) {
        self.live.remove(&conn_id);
        if let Some(c) = self.connections.iter_mut().find(|c| c.id == conn_id) {
            c.state = ConnState::Closed;
            if c.end_reason.is_none() {
                c.end_reason = Some(reason.to_owned());
            }
        }
    }

    pub(crate) fn open_count(&self, app_id: &str) -> usize {
        self.connections
            .iter()
            .filter(|c| c.app_id == app_id && c.state != ConnState::Closed)
            .count()
    }

    /// Token expiry check helper used by the Web API.
    pub(crate) fn issue_token(&mut self, kind: TokenKind, lifetime: Option<Duration>) -> String {
        let n = self.next_seq();
        let prefix = match (&kind, lifetime.is_some()) {
            (TokenKind::Bot { .. }, true) => "xoxe.xoxb-1",
            (TokenKind::Bot { .. }, false) => "xoxb-1",
            (TokenKind::App { .. }, _) => "xapp-1",
        };
        let token = format!("{prefix}-sim{n:06}-{}", uuid::Uuid::new_v4().simple());
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                kind,
                revoked: false,
                expires_at: lifetime.map(|l| Instant::now() + l),
            },
        );
        token
    }
}

/// The next `remaining` calls of a method answer HTTP `status`; with `after_effect` the call
/// takes effect first (a message is posted) and only the answer is lost, as when Slack's edge
/// fails after the backend did the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerErrorFault {
    pub remaining: u32,
    pub status: u16,
    pub after_effect: bool,
}
