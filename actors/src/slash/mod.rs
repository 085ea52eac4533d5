//! The slash command (`/infragpt …`) and Slack's assistant pane: pure parsing and decisions
//! here, the ports in [`ports`], the handler that runs them in [`handler`].
//!
//! A slash command arrives as a Socket Mode `slash_commands` envelope (its `payload` is a JSON
//! object of strings) or as a signed `POST /slack/commands` form; both become the same
//! [`SlashCommand`]. Slash commands have no `event_id`: the inbox deduplicates them on the
//! `trigger_id`, which Slack makes unique per invocation and repeats on nothing else
//! ([`SlashCommand::source_id`]).

pub mod handler;
pub mod ports;

#[cfg(test)]
mod handler_tests;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::ThreadKey;
use crate::inbox::RoutingKey;
use crate::slack_events::{AppId, ChannelId, ParseError, TeamId, Ts, UserId};

pub use handler::{Ingest, SlackStreamHandler, SlashHandler, SlashPorts};
pub use ports::{ChannelWatch, QuestionPost, SlashSlack, SlashStore, SlashStoreError, WatchChange};

/// Inbox kind of a recorded slash command.
pub const COMMAND_KIND: &str = "slash_command";
/// Inbox kind of the turn a `/infragpt <question>` starts in its question's thread.
pub const QUESTION_TURN_KIND: &str = "slash_question";
/// Inbox kind of `assistant_thread_started` (the event's own type).
pub const ASSISTANT_STARTED_KIND: &str = "assistant_thread_started";
/// Inbox kind of `assistant_thread_context_changed` (recorded and ignored).
pub const ASSISTANT_CONTEXT_KIND: &str = "assistant_thread_context_changed";
/// `metadata.event_type` of the question a `/infragpt <question>` posts: how a retry finds a
/// post a crash left unrecorded.
pub const QUESTION_EVENT_TYPE: &str = "infragpt_slash_question";

crate::id_newtype! {
    /// A slash command's `trigger_id`: unique per invocation, the inbox's dedupe key.
    pub struct TriggerId(pub String);
}

/// One invocation of the slash command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashCommand {
    pub team_id: TeamId,
    pub channel_id: ChannelId,
    pub user_id: UserId,
    /// The command as typed (`/infragpt`): the usage text names it.
    pub command: String,
    /// What follows the command, as Slack sent it.
    pub text: String,
    pub trigger_id: TriggerId,
    /// Where ephemeral answers go (valid 30 minutes, 5 uses).
    pub response_url: Option<String>,
    pub api_app_id: Option<AppId>,
    pub channel_name: Option<String>,
    pub user_name: Option<String>,
}

fn field(v: &Value, key: &'static str) -> Result<String, ParseError> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or(ParseError::Field {
            kind: "slash_command",
            field: key,
        })
}

fn opt_field(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn valid<T: TryFrom<String>>(value: String, field: &'static str) -> Result<T, ParseError> {
    T::try_from(value).map_err(|_| ParseError::Field {
        kind: "slash_command",
        field,
    })
}

impl SlashCommand {
    /// Parses a slash command's fields: the `payload` of a Socket Mode `slash_commands`
    /// envelope, or the HTTP form decoded into a JSON object of strings.
    pub fn parse(v: &Value) -> Result<Self, ParseError> {
        Ok(Self {
            team_id: valid(field(v, "team_id")?, "team_id")?,
            channel_id: valid(field(v, "channel_id")?, "channel_id")?,
            user_id: valid(field(v, "user_id")?, "user_id")?,
            command: field(v, "command")?,
            text: v
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            trigger_id: TriggerId(field(v, "trigger_id")?),
            response_url: opt_field(v, "response_url"),
            api_app_id: opt_field(v, "api_app_id").map(AppId),
            channel_name: opt_field(v, "channel_name"),
            user_name: opt_field(v, "user_name"),
        })
    }

    /// The inbox's dedupe key: `slash:{trigger_id}`.
    pub fn source_id(&self) -> String {
        format!("slash:{}", self.trigger_id)
    }

    /// One worker per channel (`TEAM/CHANNEL/-`): a channel's `stop` and `watch` apply in the
    /// order they were recorded. The `-` cannot be a Slack ts, so no thread shares the key.
    pub fn routing_key(&self) -> RoutingKey {
        RoutingKey(format!("{}/{}/-", self.team_id, self.channel_id))
    }

    /// What the command asks for.
    pub fn request(&self) -> Command {
        Command::parse(&self.text)
    }

    /// As stored in the inbox.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What `/infragpt …` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`, or nothing at all: the usage, to the caller only.
    Help,
    /// `status`: agent reachable, conversations today, this channel watched or not.
    Status,
    /// `stop`: plain messages in this channel are no longer turns.
    Stop,
    /// `watch`: every message in this channel is a turn.
    Watch,
    /// Anything else: a question, asked in the channel and answered in its thread.
    Ask(String),
}

impl Command {
    /// The first word decides, case-insensitively, when it is the whole text: `status` is
    /// the status, `status of the db?` is a question.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "" | "help" | "-h" | "--help" | "?" => Self::Help,
            "status" => Self::Status,
            "stop" | "unwatch" => Self::Stop,
            "watch" | "start" => Self::Watch,
            _ => Self::Ask(text.to_owned()),
        }
    }

    /// Whether the transport answers it from the acknowledgement without recording it
    /// (nothing to do, nothing to lose).
    pub fn answered_in_ack(&self) -> bool {
        matches!(self, Self::Help)
    }
}

/// The usage text (mrkdwn: `<` and `>` escaped, Slack reads them as link brackets).
pub fn usage(command: &str) -> String {
    format!(
        "*{command} &lt;question&gt;*: asks the assistant in this channel; the answer comes in the question's thread.\n\
         *{command} status*: whether the assistant is reachable, today's conversations, and whether this channel is watched.\n\
         *{command} watch*: answer every message in this channel, not only mentions.\n\
         *{command} stop*: answer only mentions and threads the assistant is in (a later mention does not turn watching back on).\n\
         *{command} help*: this text."
    )
}

/// An ephemeral answer: the JSON of an HTTP acknowledgement, of a Socket Mode ack's
/// `payload` and of a `response_url` POST.
pub fn ephemeral(text: &str) -> Value {
    json!({ "response_type": "ephemeral", "text": text })
}

/// The question `/infragpt <question>` posts in the channel, in the user's name.
pub fn question_text(user: &UserId, question: &str) -> String {
    format!("<@{user}> asked: {question}")
}

/// The recorded turn of a posted question, handled by its thread's worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionTurn {
    pub team_id: TeamId,
    pub channel_id: ChannelId,
    /// The posted question's ts: the thread's root and the turn's message.
    pub ts: Ts,
    /// Who asked: the turn's sender.
    pub user_id: UserId,
    pub question: String,
    pub trigger_id: TriggerId,
    /// Unix seconds of the command.
    pub event_time: i64,
}

impl QuestionTurn {
    /// `slash:{trigger_id}:turn`.
    pub fn source_id(&self) -> String {
        format!("slash:{}:turn", self.trigger_id)
    }

    /// The question's thread.
    pub fn thread(&self) -> ThreadKey {
        ThreadKey::new(
            self.team_id.clone(),
            self.channel_id.clone(),
            self.ts.clone(),
        )
    }
}

/// A suggested prompt of the assistant pane (`slack.suggested_prompts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuggestedPrompt {
    /// The button's label.
    pub title: String,
    /// What is sent as the user's message when clicked.
    pub message: String,
}

/// The prompts when none are configured.
pub fn default_prompts() -> Vec<SuggestedPrompt> {
    [
        ("What's failing?", "What's failing in production right now?"),
        ("Recent deploys", "What was deployed in the last 24 hours?"),
        (
            "Open alerts",
            "Summarize the open alerts and their likely causes.",
        ),
    ]
    .into_iter()
    .map(|(title, message)| SuggestedPrompt {
        title: title.to_owned(),
        message: message.to_owned(),
    })
    .collect()
}

/// `assistant_thread_started`: the user opened the assistant pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantThread {
    pub team_id: TeamId,
    pub user_id: UserId,
    /// The DM the pane lives in.
    pub channel_id: ChannelId,
    pub thread_ts: Ts,
}

impl AssistantThread {
    /// From an `event_callback` body whose event is `assistant_thread_started` (or
    /// `_context_changed`).
    pub fn parse(body: &Value) -> Result<Self, ParseError> {
        let missing = |field| ParseError::Field {
            kind: "assistant_thread",
            field,
        };
        let thread = body
            .get("event")
            .and_then(|e| e.get("assistant_thread"))
            .ok_or(missing("event.assistant_thread"))?;
        let get = |v: &Value, f: &'static str| {
            v.get(f)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(missing(f))
        };
        let bad = |f| move |_| missing(f);
        Ok(Self {
            team_id: TeamId::try_from(get(body, "team_id")?).map_err(bad("team_id"))?,
            user_id: UserId::try_from(get(thread, "user_id")?).map_err(bad("user_id"))?,
            channel_id: ChannelId::try_from(get(thread, "channel_id")?)
                .map_err(bad("channel_id"))?,
            thread_ts: Ts::try_from(get(thread, "thread_ts")?).map_err(bad("thread_ts"))?,
        })
    }
}

/// The title of an assistant thread, from the user's first message: its first line, at
/// most 60 characters (cut on a word when it can be).
pub fn thread_title(text: &str) -> String {
    const MAX: usize = 60;
    let line = text.trim().lines().next().unwrap_or("").trim();
    if line.chars().count() <= MAX {
        return line.to_owned();
    }
    let cut: String = line.chars().take(MAX - 1).collect();
    let cut = match cut.rfind(' ') {
        Some(i) if i > MAX / 2 => cut[..i].trim_end().to_owned(),
        _ => cut,
    };
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(text: &str) -> Value {
        json!({
            "token": "gIkuvaNzQIHg97ATvDxqgjtO",
            "team_id": "T0001",
            "team_domain": "example",
            "channel_id": "C2147483705",
            "channel_name": "test",
            "user_id": "U2147483697",
            "user_name": "Steve",
            "command": "/infragpt",
            "text": text,
            "response_url": "https://hooks.slack.com/commands/1234/5678",
            "trigger_id": "13345224609.738474920.8088930838d88f008e0",
            "api_app_id": "A123456"
        })
    }

    #[test]
    fn commands_are_told_apart_by_their_whole_text() {
        assert_eq!(Command::parse(""), Command::Help);
        assert_eq!(Command::parse("  HELP "), Command::Help);
        assert_eq!(Command::parse("status"), Command::Status);
        assert_eq!(Command::parse("Stop"), Command::Stop);
        assert_eq!(Command::parse("watch"), Command::Watch);
        assert_eq!(
            Command::parse("status of the db?"),
            Command::Ask("status of the db?".into())
        );
        assert_eq!(
            Command::parse("  why is checkout slow?\nsince 9am "),
            Command::Ask("why is checkout slow?\nsince 9am".into())
        );
        assert!(Command::Help.answered_in_ack());
        assert!(!Command::Status.answered_in_ack());
    }

    #[test]
    fn a_command_parses_with_its_trigger_as_the_dedupe_key() {
        let cmd = SlashCommand::parse(&payload("why is the build red?")).expect("parses");
        assert_eq!(cmd.team_id.as_str(), "T0001");
        assert_eq!(cmd.channel_id.as_str(), "C2147483705");
        assert_eq!(cmd.user_id.as_str(), "U2147483697");
        assert_eq!(cmd.command, "/infragpt");
        assert_eq!(
            cmd.source_id(),
            "slash:13345224609.738474920.8088930838d88f008e0"
        );
        assert_eq!(cmd.routing_key().0, "T0001/C2147483705/-");
        assert_eq!(cmd.request(), Command::Ask("why is the build red?".into()));
        assert_eq!(
            cmd.response_url.as_deref(),
            Some("https://hooks.slack.com/commands/1234/5678")
        );
        // Stored and read back unchanged.
        let back: SlashCommand = serde_json::from_value(cmd.to_value()).expect("round trip");
        assert_eq!(back, cmd);
    }

    #[test]
    fn a_command_without_its_required_fields_is_refused() {
        for missing in ["team_id", "channel_id", "user_id", "command", "trigger_id"] {
            let mut p = payload("status");
            p.as_object_mut().expect("object").remove(missing);
            assert_eq!(
                SlashCommand::parse(&p),
                Err(ParseError::Field {
                    kind: "slash_command",
                    field: missing
                }),
                "{missing}"
            );
        }
        let mut p = payload("status");
        p["channel_id"] = json!("not a channel");
        assert!(SlashCommand::parse(&p).is_err());
        // An absent text is the help.
        let mut p = payload("x");
        p.as_object_mut().expect("object").remove("text");
        assert_eq!(
            SlashCommand::parse(&p).expect("parses").request(),
            Command::Help
        );
    }

    #[test]
    fn assistant_thread_started_parses() {
        let body = json!({
            "type": "event_callback", "team_id": "T0001", "event_id": "Ev1", "event_time": 1,
            "event": {"type": "assistant_thread_started", "assistant_thread": {
                "user_id": "U123ABC456", "context": {"channel_id": "C123ABC456", "team_id": "T0001", "enterprise_id": null},
                "channel_id": "D123ABC456", "thread_ts": "1729999327.187299"}, "event_ts": "1715873754.429808"}
        });
        let t = AssistantThread::parse(&body).expect("parses");
        assert_eq!(t.channel_id.as_str(), "D123ABC456");
        assert_eq!(t.thread_ts.as_str(), "1729999327.187299");
        assert_eq!(t.user_id.as_str(), "U123ABC456");
        let mut broken = body.clone();
        broken["event"]["assistant_thread"]
            .as_object_mut()
            .expect("object")
            .remove("thread_ts");
        assert!(AssistantThread::parse(&broken).is_err());
    }

    #[test]
    fn titles_are_the_first_line_cut_on_a_word() {
        assert_eq!(thread_title("  what failed?\nmore "), "what failed?");
        let long =
            "why does the checkout service time out every night around two o'clock in eu-west";
        let title = thread_title(long);
        assert!(title.chars().count() <= 60, "{title}");
        assert!(title.ends_with('…'));
        assert!(long.starts_with(title.trim_end_matches('…')));
        assert_eq!(thread_title(""), "");
    }

    #[test]
    fn usage_names_the_command_and_every_subcommand() {
        let u = usage("/ops");
        for word in [
            "/ops &lt;question&gt;",
            "/ops status",
            "/ops watch",
            "/ops stop",
            "/ops help",
        ] {
            assert!(u.contains(word), "{word}");
        }
    }
}
