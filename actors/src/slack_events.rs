//! Slack inbound classification: pure parsing and decision logic, no I/O.
//!
//! Two steps. [`parse_body`] turns an Events API request body (or the `payload` of a Socket Mode
//! `events_api` envelope) into an [`Inbound`]; [`decide`] then says what the service does with an
//! event callback given what it knows about the channel and thread: start a [`Turn`], update or
//! delete a stored message, or ignore it for a stated [`IgnoreReason`]. [`parse_socket_frame`]
//! classifies the Socket Mode frames themselves (`hello`, `disconnect`, envelopes).

use serde::Deserialize;
use serde_json::Value;

use crate::slack_alerts::{AlertOrigin, AlertSources, BotPoster, flatten_message};

crate::id_newtype! {
    /// Slack bot id (`B…`), distinct from the bot's user id.
    pub struct BotId(pub String);
}
crate::id_newtype! {
    /// Slack app id (`A…`).
    pub struct AppId(pub String);
}
crate::id_newtype! {
    /// Events API event id (`Ev…`), stable across redeliveries: the dedupe key for inbound events.
    pub struct EventId(pub String);
}

/// Workspace, channel, user and message ids are the core's validated newtypes; the names here
/// follow Slack's field names.
pub use crate::ids::{ChannelId, MessageTs as Ts, SlackUserId as UserId, TeamId};

/// A required id field, validated.
fn id<T: TryFrom<String>>(
    value: String,
    kind: &'static str,
    field: &'static str,
) -> Result<T, ParseError> {
    T::try_from(value).map_err(|_| ParseError::Field { kind, field })
}

/// An optional id field, validated when present.
fn opt_id<T: TryFrom<String>>(
    value: Option<String>,
    kind: &'static str,
    field: &'static str,
) -> Result<Option<T>, ParseError> {
    value.map(|v| id(v, kind, field)).transpose()
}

/// Why a body or frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON, but a required field is missing or has the wrong type.
    #[error("{kind}: missing or invalid field `{field}`")]
    Field {
        /// What was being parsed (`event_callback`, `app_mention`, `hello`, ...).
        kind: &'static str,
        /// The offending field.
        field: &'static str,
    },
}

/// A parsed Events API body.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Endpoint verification: answer with the challenge.
    UrlVerification {
        /// Value to echo back.
        challenge: String,
    },
    /// An event.
    EventCallback(Box<EventCallback>),
    /// Any other body type (`app_rate_limited`, ...): acknowledge and ignore.
    Other {
        /// The body's `type`.
        kind: String,
    },
}

/// The envelope around one event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventCallback {
    /// Stable across redeliveries.
    pub event_id: EventId,
    /// Workspace the event belongs to.
    pub team_id: TeamId,
    /// Unix seconds.
    pub event_time: i64,
    /// App the event was sent to.
    pub api_app_id: Option<AppId>,
    /// The bot user id from `authorizations` (the first `is_bot` entry), when present.
    pub authorized_bot_user_id: Option<UserId>,
    pub event: SlackEvent,
}

/// The events we distinguish.
#[derive(Debug, Clone, PartialEq)]
pub enum SlackEvent {
    /// Someone mentioned the bot.
    AppMention(AppMention),
    /// A `message` event that is not an edit or delete (any other subtype is kept in `subtype`).
    Message(Box<MessageEvent>),
    /// `message` / `message_changed`.
    MessageChanged {
        /// Channel of the edited message.
        channel: ChannelId,
        /// `ts` of the edited message (not of the event).
        ts: Ts,
        /// New text.
        new_text: String,
        /// Who edited it (`message.edited.user`), when given.
        edited_by: Option<UserId>,
    },
    /// `message` / `message_deleted`.
    MessageDeleted {
        /// Channel of the deleted message.
        channel: ChannelId,
        /// `ts` of the deleted message.
        deleted_ts: Ts,
    },
    /// Anything else (`reaction_added`, `member_joined_channel`, ...).
    Other {
        /// The event's `type`.
        kind: String,
    },
}

/// An `app_mention` event.
#[derive(Debug, Clone, PartialEq)]
pub struct AppMention {
    pub channel: ChannelId,
    /// Who (absent only in odd bot-originated mentions).
    pub user: Option<UserId>,
    /// Raw text, mention included.
    pub text: String,
    pub ts: Ts,
    /// Thread parent ts when the mention is a thread reply.
    pub thread_ts: Option<Ts>,
    /// Set when a bot wrote the mention.
    pub bot_id: Option<BotId>,
}

/// A `message` event (plain, thread reply, bot message, join, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    pub channel: ChannelId,
    /// `channel`, `group`, `im`, `mpim` when given.
    pub channel_type: Option<String>,
    /// Author (absent for classic bot messages).
    pub user: Option<UserId>,
    /// Raw text (empty when absent).
    pub text: String,
    pub ts: Ts,
    /// Thread parent ts for replies.
    pub thread_ts: Option<Ts>,
    /// Author of the thread parent, for replies.
    pub parent_user_id: Option<UserId>,
    /// `bot_message`, `channel_join`, `thread_broadcast`, ...; `None` for a plain message.
    pub subtype: Option<String>,
    /// Present when a bot (any app) wrote it.
    pub bot_id: Option<BotId>,
    /// App that wrote it, when given (`app_id`, else `bot_profile.app_id`).
    pub app_id: Option<AppId>,
    /// `username` of a bot post (incoming webhooks set it per post).
    pub username: Option<String>,
    /// `bot_profile.name` of a bot post.
    pub bot_name: Option<String>,
    /// Legacy `attachments` (`Null` when absent).
    pub attachments: Value,
    /// Block Kit `blocks` (`Null` when absent).
    pub blocks: Value,
}

impl MessageEvent {
    /// Who posted it, as far as the event says.
    pub fn poster(&self) -> BotPoster {
        BotPoster {
            bot_id: self.bot_id.clone(),
            app_id: self.app_id.clone(),
            username: self.username.clone(),
            profile_name: self.bot_name.clone(),
            user: self.user.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RawBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    challenge: Option<String>,
    event_id: Option<String>,
    team_id: Option<String>,
    event_time: Option<i64>,
    api_app_id: Option<String>,
    #[serde(default)]
    authorizations: Vec<RawAuthorization>,
    event: Option<Value>,
}

#[derive(Deserialize)]
struct RawAuthorization {
    user_id: Option<String>,
    #[serde(default)]
    is_bot: bool,
}

/// Parses an Events API body (HTTP) or the `payload` of a Socket Mode `events_api` envelope.
pub fn parse_body(body: &[u8]) -> Result<Inbound, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    parse_value(value)
}

/// Like [`parse_body`], from an already decoded JSON value.
pub fn parse_value(value: Value) -> Result<Inbound, ParseError> {
    let raw: RawBody =
        serde_json::from_value(value).map_err(|e| ParseError::Json(e.to_string()))?;
    let kind = raw.kind.ok_or(ParseError::Field {
        kind: "body",
        field: "type",
    })?;
    match kind.as_str() {
        "url_verification" => Ok(Inbound::UrlVerification {
            challenge: raw.challenge.ok_or(ParseError::Field {
                kind: "url_verification",
                field: "challenge",
            })?,
        }),
        "event_callback" => {
            let missing = |field| ParseError::Field {
                kind: "event_callback",
                field,
            };
            let event = raw.event.ok_or(missing("event"))?;
            Ok(Inbound::EventCallback(Box::new(EventCallback {
                event_id: EventId(raw.event_id.ok_or(missing("event_id"))?),
                team_id: id(
                    raw.team_id.ok_or(missing("team_id"))?,
                    "event_callback",
                    "team_id",
                )?,
                event_time: raw.event_time.ok_or(missing("event_time"))?,
                api_app_id: raw.api_app_id.map(AppId),
                authorized_bot_user_id: opt_id(
                    raw.authorizations
                        .into_iter()
                        .find(|a| a.is_bot)
                        .and_then(|a| a.user_id),
                    "event_callback",
                    "authorizations.user_id",
                )?,
                event: parse_event(&event)?,
            })))
        }
        _ => Ok(Inbound::Other { kind }),
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn parse_event(event: &Value) -> Result<SlackEvent, ParseError> {
    let kind = str_field(event, "type").ok_or(ParseError::Field {
        kind: "event",
        field: "type",
    })?;
    match kind.as_str() {
        "app_mention" => {
            let req = |field| {
                str_field(event, field).ok_or(ParseError::Field {
                    kind: "app_mention",
                    field,
                })
            };
            Ok(SlackEvent::AppMention(AppMention {
                channel: id(req("channel")?, "app_mention", "channel")?,
                user: opt_id(str_field(event, "user"), "app_mention", "user")?,
                text: str_field(event, "text").unwrap_or_default(),
                ts: id(req("ts")?, "app_mention", "ts")?,
                thread_ts: opt_id(str_field(event, "thread_ts"), "app_mention", "thread_ts")?,
                bot_id: str_field(event, "bot_id").map(BotId),
            }))
        }
        "message" => parse_message(event),
        _ => Ok(SlackEvent::Other { kind }),
    }
}

fn parse_message(event: &Value) -> Result<SlackEvent, ParseError> {
    let subtype = str_field(event, "subtype");
    let channel: ChannelId = id(
        str_field(event, "channel").ok_or(ParseError::Field {
            kind: "message",
            field: "channel",
        })?,
        "message",
        "channel",
    )?;
    match subtype.as_deref() {
        Some("message_changed") => {
            let missing = |field| ParseError::Field {
                kind: "message_changed",
                field,
            };
            let message = event.get("message").ok_or(missing("message"))?;
            Ok(SlackEvent::MessageChanged {
                channel,
                ts: id(
                    str_field(message, "ts").ok_or(missing("message.ts"))?,
                    "message_changed",
                    "message.ts",
                )?,
                new_text: changed_text(message),
                edited_by: opt_id(
                    message.get("edited").and_then(|e| str_field(e, "user")),
                    "message_changed",
                    "message.edited.user",
                )?,
            })
        }
        Some("message_deleted") => Ok(SlackEvent::MessageDeleted {
            channel,
            deleted_ts: id(
                str_field(event, "deleted_ts").ok_or(ParseError::Field {
                    kind: "message_deleted",
                    field: "deleted_ts",
                })?,
                "message_deleted",
                "deleted_ts",
            )?,
        }),
        _ => Ok(SlackEvent::Message(Box::new(MessageEvent {
            channel,
            channel_type: str_field(event, "channel_type"),
            user: opt_id(str_field(event, "user"), "message", "user")?,
            text: str_field(event, "text").unwrap_or_default(),
            ts: id(
                str_field(event, "ts").ok_or(ParseError::Field {
                    kind: "message",
                    field: "ts",
                })?,
                "message",
                "ts",
            )?,
            thread_ts: opt_id(str_field(event, "thread_ts"), "message", "thread_ts")?,
            parent_user_id: opt_id(
                str_field(event, "parent_user_id"),
                "message",
                "parent_user_id",
            )?,
            subtype,
            bot_id: str_field(event, "bot_id").map(BotId),
            app_id: str_field(event, "app_id")
                .or_else(|| {
                    event
                        .get("bot_profile")
                        .and_then(|p| str_field(p, "app_id"))
                })
                .map(AppId),
            username: str_field(event, "username"),
            bot_name: event.get("bot_profile").and_then(|p| str_field(p, "name")),
            attachments: event.get("attachments").cloned().unwrap_or(Value::Null),
            blocks: event.get("blocks").cloned().unwrap_or(Value::Null),
        }))),
    }
}

/// The new text of an edited message: a bot's post (an alert updated in place, as PagerDuty
/// does on acknowledge and resolve) is flattened as its turn was; a person's edit is its
/// `text` (the link previews Slack attaches are not theirs).
fn changed_text(message: &Value) -> String {
    let text = str_field(message, "text").unwrap_or_default();
    if message.get("bot_id").and_then(Value::as_str).is_some() {
        flatten_message(
            &text,
            message.get("attachments").unwrap_or(&Value::Null),
            message.get("blocks").unwrap_or(&Value::Null),
        )
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// What the caller knows when deciding about an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecideContext {
    /// Our bot's user id in this workspace (from the installation). Falls back to the event's
    /// `authorizations` when `None`.
    pub bot_user_id: Option<UserId>,
    /// The channel is one the bot monitors (it was mentioned there before, or configured).
    pub channel_monitored: bool,
    /// The bot has taken part in the thread the message belongs to.
    pub bot_in_thread: bool,
    /// Our bot's bot id (`B…`, from `auth.test`), when known: its posts are ours whatever
    /// their user.
    pub bot_id: Option<BotId>,
    /// Bots whose posts are turns like a person's (`slack.alert_sources`).
    pub alert_sources: AlertSources,
}

/// One human message, identified the same way whether it came as `app_mention` or `message`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TurnId {
    pub team_id: TeamId,
    pub channel: ChannelId,
    /// The message's own ts.
    pub ts: Ts,
}

/// A conversation thread: `(team, channel, thread_ts or ts)` (the core's key).
pub use crate::ids::ThreadKey;

/// A message that becomes a turn in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Dedupe key of the human message.
    pub turn_id: TurnId,
    /// Conversation it belongs to.
    pub thread: ThreadKey,
    /// Source event (for the inbox row).
    pub event_id: EventId,
    /// Who wrote it: a person, or an alert source's bot.
    pub author: Author,
    /// Text with the bot mention stripped and trimmed (an alert's: flattened, see
    /// [`flatten_message`]).
    pub text: String,
    /// Text as Slack sent it.
    pub raw_text: String,
    /// Unix seconds of the event.
    pub event_time: i64,
    /// The turn mentions the bot (`app_mention` or its `message` twin): the channel becomes
    /// monitored.
    pub marks_channel_monitored: bool,
}

/// The author of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    /// A person.
    User(UserId),
    /// A bot of `slack.alert_sources`.
    Alert(Box<AlertOrigin>),
}

impl Author {
    /// The Slack id that stands for the author: the user id, or a bot's user id (else its
    /// bot id).
    pub fn slack_id(&self) -> &str {
        match self {
            Self::User(u) => u.as_str(),
            Self::Alert(a) => a.user.as_ref().map_or(a.bot_id.as_str(), |u| u.as_str()),
        }
    }
}

/// Key of a stored message, for edits and deletes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub team_id: TeamId,
    pub channel: ChannelId,
    pub ts: Ts,
}

/// Why an event does not become a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Written by our own bot user.
    OwnBotMessage,
    /// Written by a bot (`bot_id` present).
    FromBot { bot_id: BotId },
    /// A message subtype that is not a human message (`channel_join`, `bot_message`, ...).
    Subtype(String),
    /// Neither a monitored channel nor a thread the bot is part of.
    NotMonitored,
    /// No author.
    NoUser,
    /// An event type we do not act on.
    UnsupportedEvent(String),
    /// An alert source's post with no text to read (only images, say).
    Empty,
}

impl std::fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OwnBotMessage => f.write_str("message from our own bot"),
            Self::FromBot { bot_id } => write!(f, "message from bot {bot_id}"),
            Self::Subtype(s) => write!(f, "message subtype {s} is not a human message"),
            Self::NotMonitored => {
                f.write_str("channel not monitored and bot not part of the thread")
            }
            Self::NoUser => f.write_str("message has no user"),
            Self::UnsupportedEvent(k) => write!(f, "event type {k} is not handled"),
            Self::Empty => f.write_str("bot post without any text"),
        }
    }
}

/// What to do with an event callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a turn.
    Turn(Turn),
    /// Update the stored text of a message.
    Update {
        key: MessageKey,
        /// Its new text, bot mention stripped (as the original was stored).
        new_text: String,
        edited_by: Option<UserId>,
    },
    /// Mark a stored message deleted.
    Delete { key: MessageKey },
    /// Nothing to do, for this reason.
    Ignored(IgnoreReason),
}

/// Decides what an event callback becomes.
///
/// - `app_mention` is a turn anywhere (and marks the channel monitored), unless a bot wrote it
///   (bots mentioning bots would loop).
/// - A `message` without subtype (or `thread_broadcast`, which is a thread reply) from a human
///   is a turn when the channel is monitored, the channel is a DM with the bot (`im`), or it is a
///   reply in a thread the bot is part of. One that mentions the bot is a turn anywhere, like
///   its `app_mention` twin: the two share a turn id and the first one handled makes it.
/// - A bot's post (`bot_id`, with or without the `bot_message` subtype) is a turn under the
///   same rule when an entry of `ctx.alert_sources` matches it, its text flattened; every
///   other bot's post is ignored, and our own (our bot user, bot id or app) always is.
/// - `message_changed` / `message_deleted` update or delete the stored message.
/// - Everything else is ignored with a reason.
pub fn decide(cb: &EventCallback, ctx: &DecideContext) -> Decision {
    let bot_user = ctx
        .bot_user_id
        .as_ref()
        .or(cb.authorized_bot_user_id.as_ref());
    match &cb.event {
        SlackEvent::AppMention(m) => {
            if let Some(bot_id) = &m.bot_id {
                return Decision::Ignored(IgnoreReason::FromBot {
                    bot_id: bot_id.clone(),
                });
            }
            let Some(user) = &m.user else {
                return Decision::Ignored(IgnoreReason::NoUser);
            };
            if Some(user) == bot_user {
                return Decision::Ignored(IgnoreReason::OwnBotMessage);
            }
            Decision::Turn(make_turn(
                cb,
                &m.channel,
                Author::User(user.clone()),
                &m.text,
                &m.ts,
                m.thread_ts.as_ref(),
                strip_mention(&m.text, bot_user, true),
                true,
            ))
        }
        SlackEvent::Message(m) => {
            match m.subtype.as_deref() {
                None | Some("thread_broadcast") => {}
                // An incoming webhook's post (Alertmanager, Grafana...): a bot post like any.
                Some("bot_message") if m.bot_id.is_some() => {}
                Some(other) => return Decision::Ignored(IgnoreReason::Subtype(other.to_owned())),
            }
            // Ours, whichever way Slack says it: our bot user, our bot id, or our app.
            let own = (m.user.is_some() && m.user.as_ref() == bot_user)
                || (m.bot_id.is_some() && m.bot_id == ctx.bot_id)
                || (m.app_id.is_some() && m.app_id == cb.api_app_id);
            if own {
                return Decision::Ignored(IgnoreReason::OwnBotMessage);
            }
            let is_reply = m.thread_ts.as_ref().is_some_and(|t| *t != m.ts);
            let is_dm = m.channel_type.as_deref() == Some("im");
            let visible = ctx.channel_monitored || is_dm || (is_reply && ctx.bot_in_thread);
            if let Some(bot_id) = &m.bot_id {
                return alert_turn(cb, m, bot_id, ctx, visible);
            }
            let Some(user) = &m.user else {
                return Decision::Ignored(IgnoreReason::NoUser);
            };
            // A message that mentions the bot is the same turn as its `app_mention` twin
            // (same turn id, see [`turn_id`]), anywhere. Whichever of the two is handled
            // first makes it and the other finds it stored: over several Socket Mode
            // connections the twins come on different sockets, and waiting for the mention
            // could let a later reply in the thread, recorded in between, be answered first.
            let mentioned = bot_user.is_some_and(|b| mentions(&m.text, b));
            if !mentioned && !visible {
                return Decision::Ignored(IgnoreReason::NotMonitored);
            }
            Decision::Turn(make_turn(
                cb,
                &m.channel,
                Author::User(user.clone()),
                &m.text,
                &m.ts,
                m.thread_ts.as_ref(),
                strip_mention(&m.text, bot_user, false),
                mentioned,
            ))
        }
        SlackEvent::MessageChanged {
            channel,
            ts,
            new_text,
            edited_by,
        } => Decision::Update {
            key: MessageKey {
                team_id: cb.team_id.clone(),
                channel: channel.clone(),
                ts: ts.clone(),
            },
            // Stored like the original: without the bot mention.
            new_text: strip_mention(new_text, bot_user, false),
            edited_by: edited_by.clone(),
        },
        SlackEvent::MessageDeleted {
            channel,
            deleted_ts,
        } => Decision::Delete {
            key: MessageKey {
                team_id: cb.team_id.clone(),
                channel: channel.clone(),
                ts: deleted_ts.clone(),
            },
        },
        SlackEvent::Other { kind } => {
            Decision::Ignored(IgnoreReason::UnsupportedEvent(kind.clone()))
        }
    }
}

/// A bot's post: a turn when it comes from an alert source and the channel is one a person's
/// message would be a turn in; its text is the flattened post. Other bots are ignored (bots
/// answering bots would loop).
fn alert_turn(
    cb: &EventCallback,
    m: &MessageEvent,
    bot_id: &BotId,
    ctx: &DecideContext,
    visible: bool,
) -> Decision {
    let Some(source) = ctx.alert_sources.find(&m.poster()) else {
        return Decision::Ignored(IgnoreReason::FromBot {
            bot_id: bot_id.clone(),
        });
    };
    if !visible {
        return Decision::Ignored(IgnoreReason::NotMonitored);
    }
    let text = flatten_message(&m.text, &m.attachments, &m.blocks);
    if text.is_empty() {
        return Decision::Ignored(IgnoreReason::Empty);
    }
    let origin = Box::new(AlertOrigin {
        bot_id: bot_id.clone(),
        app_id: m.app_id.clone(),
        name: m
            .username
            .clone()
            .or_else(|| m.bot_name.clone())
            .or_else(|| source.name.clone()),
        user: m.user.clone(),
    });
    Decision::Turn(make_turn(
        cb,
        &m.channel,
        Author::Alert(origin),
        &m.text,
        &m.ts,
        m.thread_ts.as_ref(),
        text,
        false,
    ))
}

#[allow(clippy::too_many_arguments)]
fn make_turn(
    cb: &EventCallback,
    channel: &ChannelId,
    author: Author,
    raw_text: &str,
    ts: &Ts,
    thread_ts: Option<&Ts>,
    text: String,
    marks_channel_monitored: bool,
) -> Turn {
    Turn {
        turn_id: TurnId {
            team_id: cb.team_id.clone(),
            channel: channel.clone(),
            ts: ts.clone(),
        },
        thread: ThreadKey::of_message(&cb.team_id, channel, ts, thread_ts),
        event_id: cb.event_id.clone(),
        author,
        text,
        raw_text: raw_text.to_owned(),
        event_time: cb.event_time,
        marks_channel_monitored,
    }
}

/// The turn id a human message maps to, whichever of `app_mention` / `message` carried it:
/// `(team, channel, ts)`. `None` for events that are not messages.
pub fn turn_id(cb: &EventCallback) -> Option<TurnId> {
    let (channel, ts) = match &cb.event {
        SlackEvent::AppMention(m) => (&m.channel, &m.ts),
        SlackEvent::Message(m) => (&m.channel, &m.ts),
        _ => return None,
    };
    Some(TurnId {
        team_id: cb.team_id.clone(),
        channel: channel.clone(),
        ts: ts.clone(),
    })
}

/// True when `text` mentions `user` (`<@U123>` or `<@U123|name>`).
pub fn mentions(text: &str, user: &UserId) -> bool {
    mention_spans(text)
        .iter()
        .any(|(_, _, id)| *id == user.as_str())
}

/// Finds `<@ID>` / `<@ID|label>` spans: (start, end exclusive, id).
fn mention_spans(text: &str) -> Vec<(usize, usize, &str)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find("<@") {
        let start = from + rel;
        let Some(close_rel) = text[start..].find('>') else {
            break;
        };
        let end = start + close_rel + 1;
        let inner = &text[start + 2..end - 1];
        let id = inner.split('|').next().unwrap_or(inner);
        if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()) {
            spans.push((start, end, id));
        }
        from = end;
    }
    spans
}

/// Removes mentions of the bot (`<@U123>`, `<@U123|name>`) and trims. When the bot's id is not
/// known and `leading_if_unknown` is set (an `app_mention`, which by definition mentions the
/// bot), a leading mention is removed instead.
pub(crate) fn strip_mention(
    text: &str,
    bot_user: Option<&UserId>,
    leading_if_unknown: bool,
) -> String {
    let spans = mention_spans(text);
    let remove: Vec<(usize, usize)> = match bot_user {
        Some(bot) => spans
            .iter()
            .filter(|(_, _, id)| *id == bot.as_str())
            .map(|(s, e, _)| (*s, *e))
            .collect(),
        None if leading_if_unknown => spans
            .iter()
            .filter(|(s, _, _)| text[..*s].trim().is_empty())
            .map(|(s, e, _)| (*s, *e))
            .take(1)
            .collect(),
        None => Vec::new(),
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (s, e) in remove {
        out.push_str(&text[last..s]);
        last = e;
        // "a <@U1> b" becomes "a b", not "a  b"; other spacing in the text is left alone.
        if out.ends_with(' ') && text[last..].starts_with(' ') {
            last += 1;
        }
    }
    out.push_str(&text[last..]);
    out.trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Socket Mode frames
// ---------------------------------------------------------------------------------------------

/// Why Slack asks a Socket Mode client to disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The connection will be closed soon; open a new one.
    Warning,
    /// Routine refresh; reconnect.
    RefreshRequested,
    /// Over the per-app connection limit (10); back off before reconnecting.
    TooManyWebsockets,
    /// Socket Mode was turned off for the app: fatal, do not reconnect.
    LinkDisabled,
    /// A reason we do not know; reconnect with backoff.
    Other(String),
}

impl DisconnectReason {
    fn parse(s: &str) -> Self {
        match s {
            "warning" => Self::Warning,
            "refresh_requested" => Self::RefreshRequested,
            "too_many_websockets" => Self::TooManyWebsockets,
            "link_disabled" => Self::LinkDisabled,
            other => Self::Other(other.to_owned()),
        }
    }

    /// True when reconnecting is pointless.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::LinkDisabled)
    }
}

/// A Socket Mode frame from Slack.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketFrame {
    /// First frame on a new connection.
    Hello {
        /// Connections the app has open (including this one).
        num_connections: u32,
        /// App the connection belongs to.
        app_id: Option<AppId>,
        /// `debug_info.host`.
        host: Option<String>,
    },
    /// Slack will close this connection.
    Disconnect {
        reason: DisconnectReason,
        /// `debug_info.host`, when given (the minimal form omits it).
        host: Option<String>,
    },
    /// An envelope to acknowledge with `{"envelope_id": ...}`.
    Envelope {
        /// `events_api`, `interactive`, `slash_commands`.
        kind: String,
        /// Echo this in the ack.
        envelope_id: String,
        /// The body (for `events_api`, an Events API body: feed it to [`parse_value`]).
        payload: Value,
        /// Whether the ack may carry a response payload.
        accepts_response_payload: bool,
        /// 0 on first delivery.
        retry_attempt: u32,
        /// `""`, `timeout`, ...
        retry_reason: String,
    },
    /// A frame type we do not know.
    Other {
        /// Its `type`.
        kind: String,
    },
}

/// Parses a Socket Mode text frame.
pub fn parse_socket_frame(text: &str) -> Result<SocketFrame, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    let kind = str_field(&v, "type").ok_or(ParseError::Field {
        kind: "socket frame",
        field: "type",
    })?;
    let host = v.get("debug_info").and_then(|d| str_field(d, "host"));
    match kind.as_str() {
        "hello" => Ok(SocketFrame::Hello {
            num_connections: v
                .get("num_connections")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(ParseError::Field {
                    kind: "hello",
                    field: "num_connections",
                })?,
            app_id: v
                .get("connection_info")
                .and_then(|c| str_field(c, "app_id"))
                .map(AppId),
            host,
        }),
        "disconnect" => Ok(SocketFrame::Disconnect {
            reason: DisconnectReason::parse(&str_field(&v, "reason").ok_or(ParseError::Field {
                kind: "disconnect",
                field: "reason",
            })?),
            host,
        }),
        "events_api" | "interactive" | "slash_commands" => {
            let missing = |field| ParseError::Field {
                kind: "envelope",
                field,
            };
            Ok(SocketFrame::Envelope {
                envelope_id: str_field(&v, "envelope_id").ok_or(missing("envelope_id"))?,
                payload: v.get("payload").cloned().ok_or(missing("payload"))?,
                accepts_response_payload: v
                    .get("accepts_response_payload")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                retry_attempt: v
                    .get("retry_attempt")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                retry_reason: str_field(&v, "retry_reason").unwrap_or_default(),
                kind,
            })
        }
        _ => Ok(SocketFrame::Other { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_variants() {
        let bot = UserId::parse("U123").expect("valid id");
        assert_eq!(strip_mention("<@U123> hi", Some(&bot), true), "hi");
        assert_eq!(
            strip_mention("hey <@U123|infragpt> do x", Some(&bot), true),
            "hey do x"
        );
        assert_eq!(strip_mention("<@U999> hi", Some(&bot), true), "<@U999> hi");
        assert_eq!(strip_mention(" <@U999> hi ", None, true), "hi");
        assert_eq!(strip_mention("a\n<@U123>\nb", Some(&bot), true), "a\n\nb");
        assert_eq!(
            strip_mention("<@U123>  keep  spacing", Some(&bot), true),
            "keep  spacing"
        );
        assert!(mentions("x <@U123|n>", &bot));
        assert!(!mentions("x <@U1234>", &bot));
        assert!(!mentions("x <!channel>", &bot));
    }
}
