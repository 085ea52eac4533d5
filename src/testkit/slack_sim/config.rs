//! Simulator configuration: apps, workspaces, users, channels, timing and feature switches.

use std::time::Duration;

use infragpt_actors::Secret;

/// A Slack app (one app token for Socket Mode, one OAuth client).
#[derive(Debug, Clone)]
pub struct SimApp {
    /// `A…`.
    pub app_id: String,
    /// App-level token (`xapp-…`) accepted by `apps.connections.open`.
    pub app_token: Secret,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// Signing secret (for HTTP Events API bodies the sim signs).
    pub signing_secret: Secret,
    /// Verification token put in `event_callback.token` (deprecated by Slack, still sent).
    pub verification_token: String,
}

/// A workspace member.
#[derive(Debug, Clone)]
pub struct SimUser {
    /// `U…`.
    pub id: String,
    /// Handle.
    pub name: String,
    /// Full name.
    pub real_name: String,
    /// Profile email.
    pub email: String,
}

/// A channel.
#[derive(Debug, Clone)]
pub struct SimChannel {
    /// `C…` (public), `G…` (private) or `D…` (DM).
    pub id: String,
    /// Name without `#`.
    pub name: String,
    pub is_private: bool,
}

/// A workspace with the app installed.
#[derive(Debug, Clone)]
pub struct SimTeam {
    /// `T…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `domain` in `https://{domain}.slack.com/`.
    pub domain: String,
    /// The installed app.
    pub app_id: String,
    /// The bot's user id (`U…`), the one mentions use.
    pub bot_user_id: String,
    /// The bot id (`B…`).
    pub bot_id: String,
    /// The bot's name.
    pub bot_name: String,
    /// The bot token (`xoxb-…`) installed at start.
    pub bot_token: Secret,
    /// Members.
    pub users: Vec<SimUser>,
    pub channels: Vec<SimChannel>,
}

/// Which events the app subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriptions {
    /// `app_mention`.
    pub app_mention: bool,
    /// `message.channels`, `message.groups`, `message.im`.
    pub message: bool,
}

/// The whole simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Apps (most tests need one).
    pub apps: Vec<SimApp>,
    /// Workspaces.
    pub teams: Vec<SimTeam>,
    /// Subscribed events.
    pub subscriptions: Subscriptions,
    /// Redeliver an envelope not acknowledged within this time (Slack: about 3 s).
    pub ack_timeout: Duration,
    /// Redeliveries after the first attempt (Slack: 3).
    pub max_redeliveries: u32,
    /// Socket Mode connections allowed per app (Slack: 10).
    pub max_connections: usize,
    /// `oauth.v2.access` returns `refresh_token` + `expires_in` and expiring `xoxe.xoxb-` tokens.
    pub token_rotation: bool,
    /// Lifetime of rotated tokens.
    pub token_expires_in: Duration,
    /// Messages posted by the bot through `chat.postMessage` come back as `message` events
    /// (with `bot_id`), as Slack does for subscribed channels.
    pub echo_bot_messages: bool,
    /// Record every Web API call and every `events_api` frame for inspection (default true).
    /// Benchmarks turn it off so the simulator's own memory does not grow with the load;
    /// deliveries, acks and messages are always kept.
    pub record_traffic: bool,
}

impl SimConfig {
    /// The team with this id.
    pub fn team(&self, team_id: &str) -> Option<&SimTeam> {
        self.teams.iter().find(|t| t.id == team_id)
    }

    /// Sets the ack timeout (builder style).
    pub fn with_ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// Enables token rotation (builder style).
    pub fn with_token_rotation(mut self, expires_in: Duration) -> Self {
        self.token_rotation = true;
        self.token_expires_in = expires_in;
        self
    }

    /// Sets whether calls and envelope frames are recorded (builder style).
    pub fn with_record_traffic(mut self, record: bool) -> Self {
        self.record_traffic = record;
        self
    }

    /// Sets whether bot posts are echoed as `message` events (builder style).
    pub fn with_echo_bot_messages(mut self, echo: bool) -> Self {
        self.echo_bot_messages = echo;
        self
    }
}

fn user(id: &str, name: &str, real_name: &str, domain: &str) -> SimUser {
    SimUser {
        id: id.into(),
        name: name.into(),
        real_name: real_name.into(),
        email: format!("{name}@{domain}.example"),
    }
}

fn channel(id: &str, name: &str) -> SimChannel {
    SimChannel {
        id: id.into(),
        name: name.into(),
        is_private: id.starts_with('G'),
    }
}

impl Default for SimConfig {
    /// One app (`A0SIMAPP01`, app token `xapp-1-A0SIMAPP01-sim`) installed in two workspaces:
    /// `T0SIMACME1` "Acme" (bot `U0ACMEBOT1`, users alice/bob, channels #general, #ops,
    /// private #secret, a DM) and `T0SIMGLOB1` "Globex" (bot `U0GLOBBOT1`, user carol, #general).
    fn default() -> Self {
        let app_id = "A0SIMAPP01".to_owned();
        Self {
            apps: vec![SimApp {
                app_id: app_id.clone(),
                app_token: Secret::new("xapp-1-A0SIMAPP01-1000000000001-sim"),
                client_id: "1000000000001.2000000000001".into(),
                client_secret: Secret::new("sim-client-secret"),
                signing_secret: Secret::new("sim-signing-secret"),
                verification_token: "simverificationtoken0001".into(),
            }],
            teams: vec![
                SimTeam {
                    id: "T0SIMACME1".into(),
                    name: "Acme".into(),
                    domain: "acme".into(),
                    app_id: app_id.clone(),
                    bot_user_id: "U0ACMEBOT1".into(),
                    bot_id: "B0ACMEBOT1".into(),
                    bot_name: "infragpt".into(),
                    bot_token: Secret::new("xoxb-1000000000001-T0SIMACME1-sim"),
                    users: vec![
                        user("U0ALICE001", "alice", "Alice Liddell", "acme"),
                        user("U0BOB00001", "bob", "Bob Builder", "acme"),
                    ],
                    channels: vec![
                        channel("C0GENERAL1", "general"),
                        channel("C0OPS00001", "ops"),
                        channel("G0SECRET01", "secret"),
                        channel("D0ALICEDM1", "alice-dm"),
                    ],
                },
                SimTeam {
                    id: "T0SIMGLOB1".into(),
                    name: "Globex".into(),
                    domain: "globex".into(),
                    app_id,
                    bot_user_id: "U0GLOBBOT1".into(),
                    bot_id: "B0GLOBBOT1".into(),
                    bot_name: "infragpt".into(),
                    bot_token: Secret::new("xoxb-1000000000002-T0SIMGLOB1-sim"),
                    users: vec![user("U0CAROL001", "carol", "Carol Danvers", "globex")],
                    channels: vec![channel("C0GLOBGEN1", "general")],
                },
            ],
            subscriptions: Subscriptions {
                app_mention: true,
                message: true,
            },
            ack_timeout: Duration::from_secs(3),
            max_redeliveries: 3,
            max_connections: 10,
            token_rotation: false,
            token_expires_in: Duration::from_secs(12 * 3600),
            echo_bot_messages: true,
            record_traffic: true,
        }
    }
}
