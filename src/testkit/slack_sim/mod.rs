//! A local Slack for tests, `infragpt demo` and benchmarks.
//!
//! [`SlackSim::start`] runs a loopback server on its own thread and runtime that speaks the Web
//! API (`/api/<method>`, Bearer tokens, form or JSON bodies, Slack's response shapes) and Socket
//! Mode (`apps.connections.open` → `ws://127.0.0.1:PORT/link/?ticket=…`, `hello`, `events_api`
//! envelopes with ack tracking and redelivery, `disconnect`). Tests drive it with
//! [`SlackSim::post_user_message`] and fault injection, and observe it through the recorded
//! calls, frames, acks and connections, waiting with [`SlackSim::wait_for`].
//!
//! Choices where Slack's behaviour is not documented: a redelivery keeps the `envelope_id`
//! (the dedupe key is `event_id` either way); while Socket Mode is disabled
//! ([`SlackSim::set_link_disabled`]) `apps.connections.open` still answers and every new socket
//! receives `disconnect` / `link_disabled` at once; envelopes for an app with no open
//! connection wait and go out when one opens.

mod api;
pub mod commands;
pub mod config;
mod events;
pub mod interactive;
mod server;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use config::{SimApp, SimChannel, SimConfig, SimTeam, SimUser, Subscriptions};
pub use interactive::{Click, SimEphemeral, SimView};
pub use state::{
    AckRecord, ApiCall, BotPost, ConnState, ConnectionInfo, DeliveryInfo, FrameRecord, SimFile,
    SimMessage, SimState, StatusChange,
};

use server::Shared;
use state::ConnCmd;

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding, runtime or thread start-up failed.
    #[error("simulator I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No such workspace.
    #[error("unknown team {0}")]
    UnknownTeam(String),
    /// No such channel in the workspace.
    #[error("unknown channel {channel} in team {team}")]
    UnknownChannel { team: String, channel: String },
    /// No such user in the workspace.
    #[error("unknown user {user} in team {team}")]
    UnknownUser { team: String, user: String },
    /// No such message.
    #[error("no message {ts} in {channel}")]
    UnknownMessage { channel: String, ts: String },
    /// No such envelope.
    #[error("unknown envelope {0}")]
    UnknownEnvelope(String),
    /// No such open connection.
    #[error("no open connection {0}")]
    UnknownConnection(u64),
    /// [`SlackSim::wait_for`] gave up.
    #[error("condition not met within {0:?}")]
    Timeout(Duration),
}

/// A signed Events API request (see [`SlackSim::signed_event_request`]).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// Raw JSON body.
    pub body: String,
    /// `X-Slack-Request-Timestamp`.
    pub timestamp: String,
    /// `X-Slack-Signature`.
    pub signature: String,
}

/// A running simulator. Dropping it stops the server thread.
#[derive(Debug)]
pub struct SlackSim {
    shared: Arc<Shared>,
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlackSim {
    /// Starts the simulator on `127.0.0.1` with an ephemeral port.
    pub fn start(config: SimConfig) -> Result<SlackSim, SimError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("slack-sim-{port}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(error) => {
                        let _ = handle_tx.send(Err(error));
                        return;
                    }
                };
                if handle_tx.send(Ok(rt.handle().clone())).is_err() {
                    return;
                }
                // Runs every server task until the handle is dropped; dropping the runtime here
                // (not in the caller's async context) ends them.
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("simulator thread died during start-up"))??;
        let shared = Arc::new_cyclic(|me| {
            Shared::new(SimState::new(config, port, me.clone(), handle.clone()))
        });
        handle.spawn(server::serve(listener, shared.clone()));
        tracing::debug!(port, "slack simulator started");
        Ok(SlackSim {
            shared,
            port,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Starts with [`SimConfig::default`].
    pub fn start_default() -> Result<SlackSim, SimError> {
        Self::start(SimConfig::default())
    }

    /// The port the simulator listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Web API base URL, `http://127.0.0.1:PORT/api/` (slack-morphism wants it without the
    /// trailing slash; [`crate::slack::http_connector::http_connector`] trims it).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/", self.port)
    }

    /// A copy of the configuration.
    pub fn config(&self) -> SimConfig {
        self.shared.read(|st| SimConfig::clone(&st.config))
    }

    /// A workspace's configuration.
    pub fn team(&self, team_id: &str) -> Result<SimTeam, SimError> {
        self.shared
            .read(|st| st.team(team_id).map(|t| SimTeam::clone(&t)))
    }

    // ----- generating traffic ---------------------------------------------------------------

    /// A person posts `text` in `channel` (a reply when `thread_ts` is set). Sends what Slack
    /// sends to the app: an `app_mention` envelope when the text contains `<@BOT_USER_ID>`,
    /// and a `message` envelope, each with its own `event_id` and `envelope_id`, as far as the
    /// app subscribes to them. Returns the new message's `ts`.
    pub fn post_user_message(
        &self,
        team_id: &str,
        channel: &str,
        user: &str,
        text: &str,
        thread_ts: Option<&str>,
    ) -> Result<String, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            if !team.channels.iter().any(|c| c.id == channel) {
                return Err(SimError::UnknownChannel {
                    team: team_id.into(),
                    channel: channel.into(),
                });
            }
            if !team.users.iter().any(|u| u.id == user) {
                return Err(SimError::UnknownUser {
                    team: team_id.into(),
                    user: user.into(),
                });
            }
            let ts = st.next_ts();
            let parent = thread_ts.and_then(|t| st.parent_user(team_id, channel, t));
            st.store_message(
                team_id,
                channel,
                SimMessage {
                    ts: ts.clone(),
                    user: user.into(),
                    bot_id: None,
                    text: text.into(),
                    thread_ts: thread_ts.map(str::to_owned),
                    reactions: Default::default(),
                    deleted: false,
                    metadata: None,
                    files: Vec::new(),
                    blocks: None,
                    updates: 0,
                },
            );
            let client_msg_id = uuid::Uuid::new_v4().to_string();
            let msg = events::UserMessage {
                team: &team,
                channel,
                user,
                text,
                ts: &ts,
                thread_ts,
                parent_user_id: parent.as_deref(),
                client_msg_id: &client_msg_id,
            };
            let subs = st.config.subscriptions;
            let mention = format!("<@{}", team.bot_user_id);
            let mentions_bot = text
                .match_indices(&mention)
                .any(|(i, _)| matches!(text.as_bytes().get(i + mention.len()), Some(b'>' | b'|')));
            if subs.app_mention && mentions_bot {
                let payload = st.event_callback(&team, events::app_mention_event(&msg));
                st.enqueue(payload);
            }
            if subs.message {
                let payload = st.event_callback(&team, events::user_message_event(&msg));
                st.enqueue(payload);
            }
            Ok(ts)
        })
    }

    /// Another app posts in `channel` the way monitoring tools do through an incoming
    /// webhook: a `message` / `bot_message` with `bot_id`, `username`, `text`, `attachments`
    /// and `blocks` (as the webhook body gave them; `Null` when absent), and no `user`. Stored
    /// in the channel and sent to the app when it subscribes to messages. Returns its `ts`.
    #[allow(clippy::too_many_arguments)] // Slack's fields of a webhook post, one each
    pub fn post_bot_message(
        &self,
        team_id: &str,
        channel: &str,
        bot_id: &str,
        username: &str,
        text: &str,
        attachments: Value,
        blocks: Value,
    ) -> Result<String, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            if !team.channels.iter().any(|c| c.id == channel) {
                return Err(SimError::UnknownChannel {
                    team: team_id.into(),
                    channel: channel.into(),
                });
            }
            let ts = st.next_ts();
            st.store_message(
                team_id,
                channel,
                SimMessage {
                    ts: ts.clone(),
                    user: String::new(),
                    bot_id: Some(bot_id.into()),
                    text: text.into(),
                    thread_ts: None,
                    reactions: Default::default(),
                    deleted: false,
                    metadata: None,
                    files: Vec::new(),
                    blocks: (!blocks.is_null()).then(|| blocks.clone()),
                    updates: 0,
                },
            );
            if st.config.subscriptions.message {
                let mut event = serde_json::json!({
                    "type": "message", "subtype": "bot_message", "text": text, "ts": ts,
                    "username": username, "bot_id": bot_id, "channel": channel,
                    "event_ts": ts, "channel_type": events::channel_type(channel)
                });
                if let Some(obj) = event.as_object_mut() {
                    for (key, value) in [("attachments", attachments), ("blocks", blocks)] {
                        if !value.is_null() {
                            obj.insert(key.into(), value);
                        }
                    }
                }
                let payload = st.event_callback(&team, event);
                st.enqueue(payload);
            }
            Ok(ts)
        })
    }

    /// A person edits a message: sends `message` / `message_changed`.
    pub fn edit_message(
        &self,
        team_id: &str,
        channel: &str,
        ts: &str,
        new_text: &str,
    ) -> Result<(), SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let Some(msg) = st.find_message_mut(team_id, channel, ts) else {
                return Err(SimError::UnknownMessage {
                    channel: channel.into(),
                    ts: ts.into(),
                });
            };
            let previous = msg.clone();
            msg.text = new_text.into();
            if !st.config.subscriptions.message {
                return Ok(());
            }
            let event_ts = st.next_ts();
            let mut message = serde_json::json!({
                "type": "message", "text": new_text, "user": previous.user, "team": team.id,
                "edited": {"user": previous.user, "ts": event_ts}, "ts": previous.ts,
                "source_team": team.id, "user_team": team.id
            });
            if let (Some(t), Some(obj)) = (&previous.thread_ts, message.as_object_mut()) {
                obj.insert("thread_ts".into(), Value::String(t.clone()));
            }
            let event = serde_json::json!({
                "type": "message", "subtype": "message_changed", "message": message,
                "previous_message": {"type": "message", "text": previous.text,
                                     "user": previous.user, "ts": previous.ts, "team": team.id},
                "channel": channel, "hidden": true, "ts": event_ts, "event_ts": event_ts,
                "channel_type": events::channel_type(channel)
            });
            let payload = st.event_callback(&team, event);
            st.enqueue(payload);
            Ok(())
        })
    }

    /// A message is deleted: sends `message` / `message_deleted`.
    pub fn delete_message(&self, team_id: &str, channel: &str, ts: &str) -> Result<(), SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let Some(msg) = st.find_message_mut(team_id, channel, ts) else {
                return Err(SimError::UnknownMessage {
                    channel: channel.into(),
                    ts: ts.into(),
                });
            };
            msg.deleted = true;
            let previous = msg.clone();
            if !st.config.subscriptions.message {
                return Ok(());
            }
            let event_ts = st.next_ts();
            let event = serde_json::json!({
                "type": "message", "subtype": "message_deleted", "hidden": true,
                "channel": channel,
                "previous_message": {"type": "message", "text": previous.text,
                                     "user": previous.user, "ts": previous.ts, "team": team.id},
                "deleted_ts": previous.ts, "ts": event_ts, "event_ts": event_ts,
                "channel_type": events::channel_type(channel)
            });
            let payload = st.event_callback(&team, event);
            st.enqueue(payload);
            Ok(())
        })
    }

    /// Sends an arbitrary event (the `event` object) to the team's app, wrapped in an
    /// `event_callback` and an `events_api` envelope. Returns the envelope id.
    pub fn send_event(&self, team_id: &str, event: Value) -> Result<String, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let payload = st.event_callback(&team, event);
            Ok(st.enqueue(payload))
        })
    }

    /// An Events API HTTP request for `event` in `team_id`, as Slack would POST it to an app's
    /// request URL: the `event_callback` body and the signing headers made with the app's
    /// signing secret at the current time. The event is not delivered over Socket Mode.
    pub fn signed_event_request(
        &self,
        team_id: &str,
        event: Value,
    ) -> Result<SignedRequest, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let secret = st
                .config
                .apps
                .iter()
                .find(|a| a.app_id == team.app_id)
                .map(|a| a.signing_secret.clone())
                .ok_or_else(|| SimError::UnknownTeam(team_id.into()))?;
            let body = st.event_callback(&team, event).to_string();
            let now = chrono::Utc::now().timestamp();
            Ok(SignedRequest {
                signature: crate::slack::signature::sign(&secret, now, body.as_bytes()),
                timestamp: now.to_string(),
                body,
            })
        })
    }

    /// Sends an already delivered envelope `times` more times, identical (same `envelope_id`,
    /// `event_id` and `retry_attempt`), for deduplication tests. Fails with
    /// [`SimError::UnknownConnection`] when the app has no open connection.
    pub fn redeliver(&self, envelope_id: &str, times: u32) -> Result<(), SimError> {
        self.shared.mutate(|st| {
            let idx = st
                .delivery_position(envelope_id)
                .ok_or_else(|| SimError::UnknownEnvelope(envelope_id.into()))?;
            for _ in 0..times {
                let d = &st.deliveries[idx];
                let (attempt, app_id) = (d.retry_attempt, d.app_id.clone());
                let frame = SimState::envelope_frame(d, attempt, "");
                let conn = st
                    .open_connections()
                    .iter()
                    .find(|c| c.app_id == app_id)
                    .map(|c| c.id);
                let Some(conn) = conn else {
                    return Err(SimError::UnknownConnection(0));
                };
                st.deliveries[idx].sends += 1;
                st.send_frame(conn, frame, false);
            }
            Ok(())
        })
    }

    // ----- Socket Mode control ---------------------------------------------------------------

    /// Sends `disconnect` with `reason` (`warning`, `refresh_requested`, `too_many_websockets`,
    /// `link_disabled`) on one connection, then closes it.
    pub fn disconnect(&self, connection_id: u64, reason: &str) -> Result<(), SimError> {
        self.shared.mutate(|st| {
            if !st.live.contains_key(&connection_id) {
                return Err(SimError::UnknownConnection(connection_id));
            }
            st.disconnect(connection_id, reason);
            Ok(())
        })
    }

    /// [`Self::disconnect`] on every open connection. Returns how many were told.
    pub fn disconnect_all(&self, reason: &str) -> usize {
        self.shared.mutate(|st| {
            let ids: Vec<u64> = st.open_connections().iter().map(|c| c.id).collect();
            for id in &ids {
                st.disconnect(*id, reason);
            }
            ids.len()
        })
    }

    /// Drops a connection abruptly: no `disconnect`, no close frame.
    pub fn drop_connection(&self, connection_id: u64) -> Result<(), SimError> {
        self.shared.mutate(|st| {
            let live = st
                .live
                .get(&connection_id)
                .ok_or(SimError::UnknownConnection(connection_id))?;
            let _ = live.tx.send(ConnCmd::Drop);
            if let Some(c) = st.connections.iter_mut().find(|c| c.id == connection_id) {
                c.end_reason = Some("dropped".into());
            }
            Ok(())
        })
    }

    /// Turns Socket Mode off (`true`): open connections get `disconnect` / `link_disabled`, and
    /// so does every new one, until turned back on.
    pub fn set_link_disabled(&self, disabled: bool) {
        self.shared.mutate(|st| {
            st.link_disabled = disabled;
            if disabled {
                let ids: Vec<u64> = st.open_connections().iter().map(|c| c.id).collect();
                for id in ids {
                    st.disconnect(id, "link_disabled");
                }
            }
        });
    }

    // ----- faults and credentials -----------------------------------------------------------

    /// The next `times` calls of `method` get HTTP 429 with `Retry-After: retry_after_secs`.
    pub fn inject_rate_limit(&self, method: &str, times: u32, retry_after_secs: u64) {
        self.shared.mutate(|st| {
            st.rate_limits
                .insert(method.to_owned(), (times, retry_after_secs));
        });
    }

    /// The next `times` calls of `method` answer HTTP `status` (a 5xx) with
    /// `{"ok": false, "error": "internal_error"}`. With `after_effect` each of them takes
    /// effect first (the message is posted) and only the answer is an error.
    pub fn inject_server_error(&self, method: &str, times: u32, status: u16, after_effect: bool) {
        self.shared.mutate(|st| {
            st.server_errors.insert(
                method.to_owned(),
                state::ServerErrorFault {
                    remaining: times,
                    status,
                    after_effect,
                },
            );
        });
    }

    /// Injected rate limits and server errors of `method` not answered yet.
    pub fn pending_faults(&self, method: &str) -> u32 {
        self.with_state(|st| {
            st.rate_limits.get(method).map_or(0, |(n, _)| *n)
                + st.server_errors.get(method).map_or(0, |f| f.remaining)
        })
    }

    /// While set, every bot-token call for the team answers `invalid_auth`.
    pub fn set_invalid_auth(&self, team_id: &str, invalid: bool) {
        self.shared.mutate(|st| {
            if invalid {
                st.invalid_auth_teams.insert(team_id.to_owned());
            } else {
                st.invalid_auth_teams.remove(team_id);
            }
        });
    }

    /// Revokes a token: its calls answer `token_revoked`. Returns false for unknown tokens.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.shared.mutate(|st| match st.tokens.get_mut(token) {
            Some(info) => {
                info.revoked = true;
                true
            }
            None => false,
        })
    }

    /// Expires a token now: its calls answer `token_expired`. Returns false for unknown tokens.
    pub fn expire_token(&self, token: &str) -> bool {
        self.shared.mutate(|st| match st.tokens.get_mut(token) {
            Some(info) => {
                info.expires_at = Some(std::time::Instant::now());
                true
            }
            None => false,
        })
    }

    /// Issues an OAuth code as if `user` approved the app for `team_id` (what the redirect to
    /// the app's `redirect_uri` carries). Exchange it with `oauth.v2.access`.
    pub fn issue_oauth_code(&self, team_id: &str, user: &str) -> Result<String, SimError> {
        self.shared.mutate(|st| {
            st.team(team_id)?;
            let code = format!("sim-code-{}", uuid::Uuid::new_v4().simple());
            st.codes.insert(
                code.clone(),
                state::OauthCode {
                    team_id: team_id.into(),
                    user_id: user.into(),
                },
            );
            Ok(code)
        })
    }

    /// Every message the bot posts from now on is sent to the returned receiver as it is
    /// stored (benchmarks time replies with it instead of polling the state).
    pub fn subscribe_bot_posts(&self) -> tokio::sync::mpsc::UnboundedReceiver<BotPost> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.shared.mutate(|st| st.bot_post_subscribers.push(tx));
        rx
    }

    // ----- observing -------------------------------------------------------------------------

    /// Runs `f` on the current state.
    pub fn with_state<R>(&self, f: impl FnOnce(&SimState) -> R) -> R {
        self.shared.read(f)
    }

    /// Recorded calls of a Web API method.
    pub fn calls(&self, method: &str) -> Vec<ApiCall> {
        self.shared
            .read(|st| st.calls(method).into_iter().cloned().collect())
    }

    /// Files shared with `files.completeUploadExternal`, in order.
    pub fn files(&self) -> Vec<SimFile> {
        self.shared.read(|st| st.files.clone())
    }

    /// Every thread status set, in order.
    pub fn statuses(&self) -> Vec<StatusChange> {
        self.shared.read(|st| st.statuses.clone())
    }

    /// The status a thread shows now (`None`: none, or cleared by a post of the bot).
    pub fn thread_status(&self, team_id: &str, channel: &str, thread_ts: &str) -> Option<String> {
        self.shared.read(|st| {
            st.thread_status
                .get(&(team_id.to_owned(), channel.to_owned(), thread_ts.to_owned()))
                .cloned()
        })
    }

    /// Messages in a channel.
    pub fn messages_in(&self, team_id: &str, channel: &str) -> Vec<SimMessage> {
        self.shared
            .read(|st| st.messages_in(team_id, channel).to_vec())
    }

    /// Acks received.
    pub fn acks(&self) -> Vec<AckRecord> {
        self.shared.read(|st| st.acks().to_vec())
    }

    /// All connections, open and closed.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.read(|st| st.connections().to_vec())
    }

    /// Frames sent.
    pub fn frames(&self) -> Vec<FrameRecord> {
        self.shared.read(|st| st.frames().to_vec())
    }

    /// Event deliveries.
    pub fn deliveries(&self) -> Vec<DeliveryInfo> {
        self.shared.read(|st| st.deliveries().to_vec())
    }

    /// Waits until `condition` holds, re-checking on every state change (no polling).
    /// Needs a Tokio runtime with timers (`#[tokio::test]` and `#[actix_rt::test]` have one).
    pub async fn wait_for(
        &self,
        mut condition: impl FnMut(&SimState) -> bool,
        timeout: Duration,
    ) -> Result<(), SimError> {
        let mut changes = self.shared.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if self.shared.read(&mut condition) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    // One last look: the change may have raced the deadline.
                    return if self.shared.read(&mut condition) {
                        Ok(())
                    } else {
                        Err(SimError::Timeout(timeout))
                    };
                }
            }
        }
    }
}

impl Drop for SlackSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("slack simulator thread panicked");
        }
    }
}
