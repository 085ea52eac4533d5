//! Slack interaction payloads (`block_actions`, `view_submission`), as they arrive in a
//! Socket Mode `interactive` envelope or as the `payload=` field of a signed
//! `POST /slack/interactions`.
//!
//! **Recording.** An interaction is recorded in the inbox like any Slack event (source
//! `slack`), so it survives a crash and is handled in order with its thread's messages:
//!
//! * routing key: the thread of the approval message (`team/channel/thread_ts` of the
//!   message the button is on; a modal submission carries the thread in the
//!   `private_metadata` we gave the modal);
//! * deduplication key (interactions have no `event_id`): `block_actions:{team}:{user}:
//!   {action_id}:{action_ts}` for a click (`action_ts` is Slack's own time of that click, the
//!   same in every redelivery of it, different for a second click) and
//!   `view_submission:{team}:{view.id}:{view.hash}` for a submitted modal (a view is
//!   submitted once; its hash changes when it is updated).
//!
//! Interactions that are not ours (other apps' buttons, other callback ids, other payload
//! types) are acknowledged and not recorded.

use serde_json::Value;

use super::model::Decision;
use super::model::MAX_REASON;
use super::{APPROVE_ACTION, DENY_ACTION, DENY_CALLBACK, REASON_INPUT};
use crate::ids::{ApprovalId, ChannelId, MessageTs, SlackUserId, TeamId, ThreadKey};
use crate::inbox::NewInboundEvent;
use crate::sources;

/// An interaction with an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// A click on Approve or Deny.
    Click {
        team: TeamId,
        user: SlackUserId,
        approval_id: ApprovalId,
        action: Decision,
        /// For `views.open` (valid 3 s).
        trigger_id: Option<String>,
        channel: ChannelId,
        /// The approval message.
        message_ts: MessageTs,
        /// Its thread.
        thread: ThreadKey,
        /// Slack's time of the click.
        action_ts: String,
    },
    /// The deny modal, submitted.
    DenySubmitted {
        team: TeamId,
        user: SlackUserId,
        approval_id: ApprovalId,
        thread: ThreadKey,
        reason: Option<String>,
        view_id: String,
        view_hash: String,
    },
}

impl Interaction {
    /// The approval it is about.
    pub fn approval_id(&self) -> ApprovalId {
        match self {
            Self::Click { approval_id, .. } | Self::DenySubmitted { approval_id, .. } => {
                *approval_id
            }
        }
    }

    /// Who clicked or submitted.
    pub fn user(&self) -> &SlackUserId {
        match self {
            Self::Click { user, .. } | Self::DenySubmitted { user, .. } => user,
        }
    }

    /// The thread it is routed to.
    pub fn thread(&self) -> &ThreadKey {
        match self {
            Self::Click { thread, .. } | Self::DenySubmitted { thread, .. } => thread,
        }
    }

    /// The inbox's deduplication key (see the module documentation).
    pub fn source_id(&self) -> String {
        match self {
            Self::Click {
                team,
                user,
                action,
                action_ts,
                ..
            } => {
                let action_id = match action {
                    Decision::Approve => APPROVE_ACTION,
                    Decision::Deny => DENY_ACTION,
                };
                format!("block_actions:{team}:{user}:{action_id}:{action_ts}")
            }
            Self::DenySubmitted {
                team,
                view_id,
                view_hash,
                ..
            } => format!("view_submission:{team}:{view_id}:{view_hash}"),
        }
    }

    /// The payload type (the inbox row's `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Click { .. } => "block_actions",
            Self::DenySubmitted { .. } => "view_submission",
        }
    }
}

/// Why a payload is not an interaction with an approval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InteractionError {
    /// Not ours or not handled (another app's button, a `view_closed`, a shortcut...):
    /// acknowledge and forget.
    #[error("interaction not handled: {0}")]
    NotOurs(String),
    /// Ours, but a field is missing or malformed.
    #[error("malformed interaction: {0}")]
    Malformed(String),
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn malformed(what: &str) -> InteractionError {
    InteractionError::Malformed(what.to_owned())
}

/// True when the payload is an interaction body (rather than an Events API body).
pub fn is_interaction(payload: &Value) -> bool {
    matches!(
        payload.get("type").and_then(Value::as_str),
        Some("block_actions" | "view_submission")
    )
}

/// Reads an interaction payload.
pub fn parse(payload: &Value) -> Result<Interaction, InteractionError> {
    match payload.get("type").and_then(Value::as_str) {
        Some("block_actions") => parse_click(payload),
        Some("view_submission") => parse_submission(payload),
        Some(other) => Err(InteractionError::NotOurs(format!("payload type {other}"))),
        None => Err(malformed("no payload type")),
    }
}

fn team_of(payload: &Value) -> Result<TeamId, InteractionError> {
    let raw = str_at(payload, &["team", "id"])
        .or_else(|| str_at(payload, &["user", "team_id"]))
        .ok_or_else(|| malformed("team.id"))?;
    TeamId::parse(raw).map_err(|_| malformed("team.id"))
}

fn user_of(payload: &Value) -> Result<SlackUserId, InteractionError> {
    let raw = str_at(payload, &["user", "id"]).ok_or_else(|| malformed("user.id"))?;
    SlackUserId::parse(raw).map_err(|_| malformed("user.id"))
}

fn parse_click(payload: &Value) -> Result<Interaction, InteractionError> {
    let actions = payload
        .get("actions")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("actions"))?;
    // Slack sends one action per block_actions payload.
    let Some((action_value, decision)) =
        actions
            .iter()
            .find_map(|a| match a.get("action_id").and_then(Value::as_str) {
                Some(APPROVE_ACTION) => Some((a, Decision::Approve)),
                Some(DENY_ACTION) => Some((a, Decision::Deny)),
                _ => None,
            })
    else {
        return Err(InteractionError::NotOurs("no approval action".into()));
    };
    let approval_id = str_at(action_value, &["value"])
        .and_then(|v| v.parse::<ApprovalId>().ok())
        .ok_or_else(|| malformed("actions[].value (approval id)"))?;
    let action_ts = str_at(action_value, &["action_ts"])
        .ok_or_else(|| malformed("actions[].action_ts"))?
        .to_owned();
    let team = team_of(payload)?;
    let user = user_of(payload)?;
    let channel = str_at(payload, &["channel", "id"])
        .or_else(|| str_at(payload, &["container", "channel_id"]))
        .ok_or_else(|| malformed("channel.id"))
        .and_then(|c| ChannelId::parse(c).map_err(|_| malformed("channel.id")))?;
    let message_ts = str_at(payload, &["message", "ts"])
        .or_else(|| str_at(payload, &["container", "message_ts"]))
        .ok_or_else(|| malformed("message.ts"))
        .and_then(|t| MessageTs::parse(t).map_err(|_| malformed("message.ts")))?;
    let thread_ts = str_at(payload, &["message", "thread_ts"])
        .or_else(|| str_at(payload, &["container", "thread_ts"]))
        .map(|t| MessageTs::parse(t).map_err(|_| malformed("message.thread_ts")))
        .transpose()?;
    let thread = ThreadKey::new(
        team.clone(),
        channel.clone(),
        thread_ts.unwrap_or_else(|| message_ts.clone()),
    );
    Ok(Interaction::Click {
        team,
        user,
        approval_id,
        action: decision,
        trigger_id: str_at(payload, &["trigger_id"]).map(str::to_owned),
        channel,
        message_ts,
        thread,
        action_ts,
    })
}

fn parse_submission(payload: &Value) -> Result<Interaction, InteractionError> {
    let view = payload.get("view").ok_or_else(|| malformed("view"))?;
    if str_at(view, &["callback_id"]) != Some(DENY_CALLBACK) {
        return Err(InteractionError::NotOurs("another view".into()));
    }
    let meta: Value = str_at(view, &["private_metadata"])
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| malformed("view.private_metadata"))?;
    let approval_id = str_at(&meta, &["approval_id"])
        .and_then(|v| v.parse::<ApprovalId>().ok())
        .ok_or_else(|| malformed("private_metadata.approval_id"))?;
    let thread: ThreadKey = str_at(&meta, &["thread"])
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| malformed("private_metadata.thread"))?;
    let team = team_of(payload)?;
    if team != thread.team {
        return Err(malformed("private_metadata.thread names another workspace"));
    }
    let reason = str_at(
        view,
        &["state", "values", REASON_INPUT, REASON_INPUT, "value"],
    )
    .map(|r| r.trim().chars().take(MAX_REASON).collect::<String>())
    .filter(|r| !r.is_empty());
    let view_id = str_at(view, &["id"])
        .ok_or_else(|| malformed("view.id"))?
        .to_owned();
    let view_hash = str_at(view, &["hash"]).unwrap_or("-").to_owned();
    Ok(Interaction::DenySubmitted {
        team,
        user: user_of(payload)?,
        approval_id,
        thread,
        reason,
        view_id,
        view_hash,
    })
}

/// The inbox event of an interaction payload: `Ok(None)` for interactions that are not ours
/// (acknowledge, record nothing).
pub fn inbox_event(payload: &Value) -> Result<Option<NewInboundEvent>, InteractionError> {
    match parse(payload) {
        Ok(interaction) => Ok(Some(NewInboundEvent {
            source: sources::SLACK,
            source_id: interaction.source_id(),
            routing_key: interaction.thread().to_routing_key(),
            kind: interaction.kind().to_owned(),
            payload: payload.clone().into(),
        })),
        Err(InteractionError::NotOurs(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn click(action_id: &str, action_ts: &str) -> Value {
        json!({
            "type": "block_actions",
            "team": {"id": "T1", "domain": "acme"},
            "user": {"id": "UALICE", "username": "alice", "team_id": "T1"},
            "api_app_id": "A1",
            "trigger_id": "123.456.abc",
            "container": {"type": "message", "message_ts": "1700000002.000200",
                          "channel_id": "C1", "is_ephemeral": false,
                          "thread_ts": "1700000001.000100"},
            "channel": {"id": "C1", "name": "ops"},
            "message": {"type": "message", "ts": "1700000002.000200",
                        "thread_ts": "1700000001.000100", "text": "x"},
            "response_url": "https://hooks.slack.com/actions/T1/1/abc",
            "actions": [{"action_id": action_id, "block_id": "approval", "type": "button",
                         "value": "6f1c1a52-35d1-4d0b-8a35-0b1f1b1f1b1f",
                         "action_ts": action_ts}]
        })
    }

    #[test]
    fn clicks_route_to_the_thread_and_dedupe_per_click() {
        let a = parse(&click(APPROVE_ACTION, "1700000003.1")).unwrap();
        assert_eq!(a.thread().to_string(), "T1/C1/1700000001.000100");
        assert_eq!(
            a.source_id(),
            "block_actions:T1:UALICE:approval_approve:1700000003.1"
        );
        let again = parse(&click(APPROVE_ACTION, "1700000004.1")).unwrap();
        assert_ne!(a.source_id(), again.source_id(), "a second click is new");
        let event = inbox_event(&click(DENY_ACTION, "1.2")).unwrap().unwrap();
        assert_eq!(event.kind, "block_actions");
        assert_eq!(event.routing_key.0, "T1/C1/1700000001.000100");
        assert!(
            inbox_event(&click("someone_elses_button", "1.2"))
                .unwrap()
                .is_none()
        );
        let mut broken = click(APPROVE_ACTION, "1.2");
        broken["actions"][0]["value"] = json!("not-a-uuid");
        assert!(matches!(
            inbox_event(&broken),
            Err(InteractionError::Malformed(_))
        ));
    }

    #[test]
    fn submissions_carry_the_reason() {
        let payload = json!({
            "type": "view_submission",
            "team": {"id": "T1", "domain": "acme"},
            "user": {"id": "UALICE", "team_id": "T1"},
            "view": {"id": "V1", "hash": "h1", "callback_id": DENY_CALLBACK, "type": "modal",
                     "private_metadata": json!({"approval_id": "6f1c1a52-35d1-4d0b-8a35-0b1f1b1f1b1f",
                                                "thread": "T1/C1/1700000001.000100"}).to_string(),
                     "state": {"values": {"reason": {"reason": {"type": "plain_text_input",
                                                                "value": "  not now  "}}}}}
        });
        let s = parse(&payload).unwrap();
        match &s {
            Interaction::DenySubmitted { reason, .. } => {
                assert_eq!(reason.as_deref(), Some("not now"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.source_id(), "view_submission:T1:V1:h1");
        let mut other_team = payload.clone();
        other_team["team"]["id"] = json!("T2");
        other_team["user"]["team_id"] = json!("T2");
        assert!(parse(&other_team).is_err());
    }
}
