//! The logic of one Slack Socket Mode connection, without I/O: its states, the reconnect
//! backoff, what each frame asks for, the watchdog verdict and the health detail.
//!
//! The connection actor (in the root crate) owns one machine, feeds it every frame and does
//! what it answers:
//!
//! * `hello` → connected; the backoff resets.
//! * `events_api` envelope → record it in the inbox, then (only then) acknowledge it.
//! * `slash_commands` envelope → record it (unless the ack answers it), then acknowledge it,
//!   the answer in the ack's `payload` when there is one.
//! * `interactive` envelope (a button click, a modal submission) → record it in the inbox
//!   (approvals, issue 14), then acknowledge it.
//! * Any other envelope type → acknowledge and log it as ignored.
//! * `disconnect` `warning` / `refresh_requested` → open a new connection at once and close
//!   the old one once it has drained; `too_many_websockets` (or an unknown reason) → back off
//!   (exponential, capped) and retry; `link_disabled` → fatal: no reconnect, reported failed.
//! * A closed or dropped socket, or a failed `apps.connections.open` → back off and retry.
//! * Nothing received (no frame, no pong) for `idle_timeout` → replace the connection.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use infragpt_runtime::Backoff;

use crate::slack_events::{DisconnectReason, SocketFrame};

/// Timing of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// How often the client pings Slack.
    pub ping_interval: Duration,
    /// An open socket with no frame and no pong for this long is replaced.
    pub idle_timeout: Duration,
    /// First reconnect delay after a failure; doubles with each consecutive failure.
    pub backoff_base: Duration,
    /// Upper bound of the reconnect delay.
    pub backoff_max: Duration,
    /// First delay after `too_many_websockets`; doubles while Slack keeps refusing.
    pub too_many_base: Duration,
    /// How long an old socket may keep delivering after its replacement was opened.
    pub drain_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(45),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            too_many_base: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Asking for a URL / opening the socket, waiting for `hello`.
    Connecting,
    /// `hello` received: envelopes flow.
    Connected,
    /// Waiting before the next attempt.
    BackingOff,
    /// `link_disabled`: no reconnect.
    Failed,
    /// Stopped on purpose.
    Stopped,
}

impl ConnState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::BackingOff => "backing_off",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// How to replace a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconnect {
    /// Open the new connection now; let the old one drain (`warning`, `refresh_requested`).
    Overlap,
    /// Close the socket and try again after the delay.
    After(Duration),
}

/// What the connection actor does with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameAction {
    /// Nothing (a `hello`, an unknown frame type).
    None,
    /// Record the `events_api` payload, then acknowledge `envelope_id`.
    Ingest {
        /// Echo it in the ack.
        envelope_id: String,
        /// The Events API body.
        payload: Value,
        /// 0 on first delivery.
        retry_attempt: u32,
    },
    /// A slash command: record it (unless the ack answers it), then acknowledge
    /// `envelope_id`, with the answer as the ack's `payload` when there is one.
    Command {
        /// Echo it in the ack.
        envelope_id: String,
        /// The command's fields.
        payload: Value,
    },
    /// Record the `interactive` payload (when it is an interaction of ours), then
    /// acknowledge `envelope_id`.
    Interactive {
        /// Echo it in the ack.
        envelope_id: String,
        /// The interaction payload (`block_actions`, `view_submission`...).
        payload: Value,
    },
    /// Acknowledge without recording (an envelope type we do not handle).
    AckIgnored {
        /// Echo it in the ack.
        envelope_id: String,
        /// The envelope type.
        kind: String,
    },
    /// Replace the socket.
    Reconnect {
        /// Why (Slack's reason).
        reason: String,
        how: Reconnect,
    },
    /// Stop for good (`link_disabled`).
    Fatal { reason: String },
}

/// One connection's state machine and counters.
#[derive(Debug, Clone)]
pub struct ConnectionMachine {
    settings: ConnectionSettings,
    state: ConnState,
    backoff: Backoff,
    too_many: Backoff,
    connected_since: Option<DateTime<Utc>>,
    last_frame_at: Option<DateTime<Utc>>,
    last_activity: Option<Instant>,
    envelopes: u64,
    acked: u64,
    ingest_failures: u64,
    reconnects: u64,
    last_disconnect: Option<String>,
    last_error: Option<String>,
    fatal: Option<String>,
}

impl ConnectionMachine {
    /// A machine about to connect.
    pub fn new(settings: ConnectionSettings) -> Self {
        let backoff = Backoff::new(settings.backoff_base, settings.backoff_max);
        let too_many = Backoff::new(settings.too_many_base, settings.backoff_max);
        Self {
            settings,
            state: ConnState::Connecting,
            backoff,
            too_many,
            connected_since: None,
            last_frame_at: None,
            last_activity: None,
            envelopes: 0,
            acked: 0,
            ingest_failures: 0,
            reconnects: 0,
            last_disconnect: None,
            last_error: None,
            fatal: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The fatal reason, once failed.
    pub fn fatal_reason(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Envelopes received (all types, redeliveries included).
    pub fn envelopes(&self) -> u64 {
        self.envelopes
    }

    /// Times a socket was replaced.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// A new attempt starts (`apps.connections.open`, then the socket).
    pub fn connecting(&mut self) {
        if !matches!(self.state, ConnState::Failed | ConnState::Stopped) {
            self.state = ConnState::Connecting;
        }
    }

    /// The socket is open (before `hello`): the watchdog starts counting.
    pub fn socket_opened(&mut self, now: Instant) {
        self.last_activity = Some(now);
    }

    /// Something arrived on the socket (any frame or a pong).
    pub fn activity(&mut self, now: Instant) {
        self.last_activity = Some(now);
    }

    /// Classifies a parsed frame and updates the counters.
    pub fn on_frame(&mut self, frame: SocketFrame, now: Instant) -> FrameAction {
        self.last_activity = Some(now);
        self.last_frame_at = Some(Utc::now());
        match frame {
            SocketFrame::Hello { .. } => {
                self.state = ConnState::Connected;
                self.connected_since = Some(Utc::now());
                self.backoff.reset();
                self.too_many.reset();
                FrameAction::None
            }
            SocketFrame::Envelope {
                kind,
                envelope_id,
                payload,
                retry_attempt,
                ..
            } => {
                self.envelopes += 1;
                if kind == "events_api" {
                    FrameAction::Ingest {
                        envelope_id,
                        payload,
                        retry_attempt,
                    }
                } else if kind == "slash_commands" {
                    FrameAction::Command {
                        envelope_id,
                        payload,
                    }
                } else if kind == "interactive" {
                    FrameAction::Interactive {
                        envelope_id,
                        payload,
                    }
                } else {
                    FrameAction::AckIgnored { envelope_id, kind }
                }
            }
            SocketFrame::Disconnect { reason, .. } => self.on_disconnect(reason),
            SocketFrame::Other { .. } => FrameAction::None,
        }
    }

    fn on_disconnect(&mut self, reason: DisconnectReason) -> FrameAction {
        let name = match &reason {
            DisconnectReason::Warning => "warning".to_owned(),
            DisconnectReason::RefreshRequested => "refresh_requested".to_owned(),
            DisconnectReason::TooManyWebsockets => "too_many_websockets".to_owned(),
            DisconnectReason::LinkDisabled => "link_disabled".to_owned(),
            DisconnectReason::Other(other) => other.clone(),
        };
        self.last_disconnect = Some(name.clone());
        match reason {
            DisconnectReason::LinkDisabled => {
                self.state = ConnState::Failed;
                self.fatal = Some("link_disabled: Socket Mode is disabled for the app".into());
                FrameAction::Fatal { reason: name }
            }
            DisconnectReason::Warning | DisconnectReason::RefreshRequested => {
                self.reconnects += 1;
                self.state = ConnState::Connecting;
                FrameAction::Reconnect {
                    reason: name,
                    how: Reconnect::Overlap,
                }
            }
            DisconnectReason::TooManyWebsockets => {
                self.reconnects += 1;
                self.state = ConnState::BackingOff;
                FrameAction::Reconnect {
                    reason: name,
                    how: Reconnect::After(self.too_many.next_delay()),
                }
            }
            DisconnectReason::Other(_) => {
                self.reconnects += 1;
                self.state = ConnState::BackingOff;
                FrameAction::Reconnect {
                    reason: name,
                    how: Reconnect::After(self.backoff.next_delay()),
                }
            }
        }
    }

    /// The socket closed or broke without a `disconnect`: the delay before reconnecting.
    pub fn on_closed(&mut self, why: &str) -> Duration {
        self.reconnects += 1;
        self.last_disconnect = Some(why.to_owned());
        self.state = ConnState::BackingOff;
        self.backoff.next_delay()
    }

    /// `apps.connections.open` or the socket handshake failed: the delay before retrying.
    pub fn on_connect_failed(&mut self, error: &str) -> Duration {
        self.last_error = Some(error.to_owned());
        self.state = ConnState::BackingOff;
        self.backoff.next_delay()
    }

    /// An envelope was recorded and acknowledged.
    pub fn on_acked(&mut self) {
        self.acked += 1;
    }

    /// Recording an envelope failed; it is left unacknowledged so Slack redelivers it.
    pub fn on_ingest_failed(&mut self, error: &str) {
        self.ingest_failures += 1;
        self.last_error = Some(error.to_owned());
    }

    /// True when the socket has been silent (no frame, no pong) for longer than
    /// `idle_timeout`: replace it.
    pub fn watchdog_expired(&self, now: Instant) -> bool {
        self.last_activity
            .is_some_and(|t| now.saturating_duration_since(t) > self.settings.idle_timeout)
    }

    /// The watchdog fired: counts the replacement; the new connection opens at once.
    pub fn on_watchdog(&mut self) {
        self.reconnects += 1;
        self.last_disconnect = Some("watchdog: no frame and no pong".into());
        self.state = ConnState::Connecting;
    }

    /// Stopped on purpose.
    pub fn stopped(&mut self) {
        if self.state != ConnState::Failed {
            self.state = ConnState::Stopped;
        }
    }

    /// The health detail (`state`, `connected_since`, `envelopes_received`, `last_frame_at`,
    /// `reconnects`, `last_disconnect_reason`, ...).
    pub fn detail(&self) -> Value {
        json!({
            "state": self.state.as_str(),
            "connected_since": self.connected_since,
            "envelopes_received": self.envelopes,
            "envelopes_acked": self.acked,
            "ingest_failures": self.ingest_failures,
            "last_frame_at": self.last_frame_at,
            "reconnects": self.reconnects,
            "last_disconnect_reason": self.last_disconnect,
            "last_error": self.last_error,
            "fatal": self.fatal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slack_events::parse_socket_frame;

    fn machine() -> ConnectionMachine {
        ConnectionMachine::new(ConnectionSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            too_many_base: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30),
            ..ConnectionSettings::default()
        })
    }

    fn frame(text: &str) -> SocketFrame {
        parse_socket_frame(text).unwrap()
    }

    const HELLO: &str = r#"{"type":"hello","num_connections":1,"debug_info":{"host":"h"},"connection_info":{"app_id":"A1"}}"#;

    fn disconnect(reason: &str) -> SocketFrame {
        frame(&format!(
            r#"{{"type":"disconnect","reason":"{reason}","debug_info":{{"host":"h"}}}}"#
        ))
    }

    #[test]
    fn hello_connects_and_resets_backoff() {
        let mut m = machine();
        let now = Instant::now();
        assert_eq!(m.on_closed("dropped"), Duration::from_millis(100));
        assert_eq!(m.on_closed("dropped"), Duration::from_millis(200));
        m.connecting();
        assert_eq!(m.state(), ConnState::Connecting);
        assert_eq!(m.on_frame(frame(HELLO), now), FrameAction::None);
        assert_eq!(m.state(), ConnState::Connected);
        assert_eq!(m.on_closed("dropped"), Duration::from_millis(100));
        assert_eq!(m.reconnects(), 3);
        assert_eq!(m.detail()["last_disconnect_reason"], "dropped");
    }

    #[test]
    fn envelopes_are_ingested_or_acked() {
        let mut m = machine();
        let now = Instant::now();
        let ev = frame(
            r#"{"type":"events_api","envelope_id":"e1","payload":{"type":"event_callback"},"accepts_response_payload":false,"retry_attempt":2,"retry_reason":"timeout"}"#,
        );
        match m.on_frame(ev, now) {
            FrameAction::Ingest {
                envelope_id,
                retry_attempt,
                payload,
            } => {
                assert_eq!(envelope_id, "e1");
                assert_eq!(retry_attempt, 2);
                assert_eq!(payload["type"], "event_callback");
            }
            other => panic!("unexpected {other:?}"),
        }
        let slash = frame(
            r#"{"type":"slash_commands","envelope_id":"e2","payload":{"text":"status"},"accepts_response_payload":true}"#,
        );
        assert_eq!(
            m.on_frame(slash, now),
            FrameAction::Command {
                envelope_id: "e2".into(),
                payload: serde_json::json!({"text": "status"}),
            }
        );
        assert_eq!(m.envelopes(), 2);
        assert_eq!(
            m.on_frame(frame(r#"{"type":"mystery"}"#), now),
            FrameAction::None
        );
        m.on_acked();
        m.on_ingest_failed("db down");
        let d = m.detail();
        assert_eq!(d["envelopes_received"], 2);
        assert_eq!(d["envelopes_acked"], 1);
        assert_eq!(d["ingest_failures"], 1);
        assert_eq!(d["last_error"], "db down");
    }

    #[test]
    fn interactive_envelopes_are_recorded() {
        let mut m = machine();
        let click = frame(
            r#"{"type":"interactive","envelope_id":"e3","payload":{"type":"block_actions"},"accepts_response_payload":false}"#,
        );
        match m.on_frame(click, Instant::now()) {
            FrameAction::Interactive {
                envelope_id,
                payload,
            } => {
                assert_eq!(envelope_id, "e3");
                assert_eq!(payload["type"], "block_actions");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn disconnect_reasons() {
        let now = Instant::now();
        for reason in ["warning", "refresh_requested"] {
            let mut m = machine();
            assert_eq!(
                m.on_frame(disconnect(reason), now),
                FrameAction::Reconnect {
                    reason: reason.into(),
                    how: Reconnect::Overlap
                }
            );
            assert_eq!(m.state(), ConnState::Connecting);
        }
        let mut m = machine();
        let delays: Vec<FrameAction> = (0..3)
            .map(|_| m.on_frame(disconnect("too_many_websockets"), now))
            .collect();
        let expected: Vec<FrameAction> = [300, 600, 1000]
            .into_iter()
            .map(|ms| FrameAction::Reconnect {
                reason: "too_many_websockets".into(),
                how: Reconnect::After(Duration::from_millis(ms)),
            })
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(m.state(), ConnState::BackingOff);
        assert!(matches!(
            m.on_frame(disconnect("brand_new"), now),
            FrameAction::Reconnect {
                how: Reconnect::After(_),
                ..
            }
        ));

        let mut m = machine();
        assert_eq!(
            m.on_frame(disconnect("link_disabled"), now),
            FrameAction::Fatal {
                reason: "link_disabled".into()
            }
        );
        assert_eq!(m.state(), ConnState::Failed);
        assert!(m.fatal_reason().unwrap().contains("link_disabled"));
        m.connecting();
        m.stopped();
        assert_eq!(m.state(), ConnState::Failed, "failed is terminal");
        assert_eq!(m.detail()["state"], "failed");
    }

    #[test]
    fn watchdog() {
        let mut m = machine();
        let t0 = Instant::now();
        assert!(
            !m.watchdog_expired(t0 + Duration::from_secs(100)),
            "not open"
        );
        m.socket_opened(t0);
        assert!(!m.watchdog_expired(t0 + Duration::from_secs(30)));
        assert!(m.watchdog_expired(t0 + Duration::from_secs(31)));
        m.activity(t0 + Duration::from_secs(20));
        assert!(!m.watchdog_expired(t0 + Duration::from_secs(31)));
        m.on_watchdog();
        assert_eq!(m.reconnects(), 1);
        assert_eq!(m.state(), ConnState::Connecting);
    }
}
