//! Builders for the event JSON Slack sends (user messages, mentions, bot posts, edits).

use serde_json::{Value, json};

use super::config::SimTeam;

/// `channel_type` as Slack derives it from the channel id.
pub(crate) fn channel_type(channel: &str) -> &'static str {
    match channel.as_bytes().first() {
        Some(b'D') => "im",
        Some(b'G') => "group",
        _ => "channel",
    }
}

/// A `rich_text` block for the text, with `<@U…>` mentions as `user` elements, the way Slack
/// renders what a person typed.
pub(crate) fn rich_text_blocks(text: &str, block_id: &str) -> Value {
    let mut elements = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        if start > 0 {
            elements.push(json!({"type": "text", "text": &rest[..start]}));
        }
        let inner = &rest[start + 2..start + len];
        let id = inner.split('|').next().unwrap_or(inner);
        elements.push(json!({"type": "user", "user_id": id}));
        rest = &rest[start + len + 1..];
    }
    if !rest.is_empty() {
        elements.push(json!({"type": "text", "text": rest}));
    }
    json!([{
        "type": "rich_text",
        "block_id": block_id,
        "elements": [{"type": "rich_text_section", "elements": elements}]
    }])
}

/// Fields shared by the `message` and `app_mention` events of one human message.
pub(crate) struct UserMessage<'a> {
    pub team: &'a SimTeam,
    pub channel: &'a str,
    pub user: &'a str,
    pub text: &'a str,
    pub ts: &'a str,
    pub thread_ts: Option<&'a str>,
    pub parent_user_id: Option<&'a str>,
    pub client_msg_id: &'a str,
}

fn with_thread(mut event: Value, m: &UserMessage<'_>) -> Value {
    if let (Some(thread_ts), Some(obj)) = (m.thread_ts, event.as_object_mut()) {
        obj.insert("thread_ts".into(), json!(thread_ts));
        if let Some(parent) = m.parent_user_id {
            obj.insert("parent_user_id".into(), json!(parent));
        }
    }
    event
}

/// The `message` event for a human message.
pub(crate) fn user_message_event(m: &UserMessage<'_>) -> Value {
    with_thread(
        json!({
            "client_msg_id": m.client_msg_id,
            "type": "message",
            "text": m.text,
            "user": m.user,
            "ts": m.ts,
            "blocks": rich_text_blocks(m.text, &m.client_msg_id[..4.min(m.client_msg_id.len())]),
            "team": m.team.id,
            "channel": m.channel,
            "event_ts": m.ts,
            "channel_type": channel_type(m.channel)
        }),
        m,
    )
}

/// The `app_mention` event for a human message that mentions the bot.
pub(crate) fn app_mention_event(m: &UserMessage<'_>) -> Value {
    with_thread(
        json!({
            "client_msg_id": m.client_msg_id,
            "type": "app_mention",
            "text": m.text,
            "user": m.user,
            "ts": m.ts,
            "blocks": rich_text_blocks(m.text, &m.client_msg_id[..4.min(m.client_msg_id.len())]),
            "team": m.team.id,
            "channel": m.channel,
            "event_ts": m.ts
        }),
        m,
    )
}

/// The message object of a bot post (as returned by `chat.postMessage` and, with `channel`,
/// `event_ts` and `channel_type` added, as the `message` event Slack echoes).
pub(crate) fn bot_message(
    team: &SimTeam,
    _channel: &str,
    ts: &str,
    text: &str,
    thread_ts: Option<&str>,
    parent_user_id: Option<&str>,
) -> Value {
    let mut message = json!({
        "bot_id": team.bot_id,
        "type": "message",
        "text": text,
        "user": team.bot_user_id,
        "ts": ts,
        "app_id": team.app_id,
        "team": team.id,
        "bot_profile": {
            "id": team.bot_id,
            "deleted": false,
            "name": team.bot_name,
            "updated": 1_700_000_000,
            "app_id": team.app_id,
            "icons": {
                "image_36": "https://a.slack-edge.com/80588/img/plugins/app/bot_36.png",
                "image_48": "https://a.slack-edge.com/80588/img/plugins/app/bot_48.png",
                "image_72": "https://a.slack-edge.com/80588/img/plugins/app/service_72.png"
            },
            "team_id": team.id
        },
        "blocks": rich_text_blocks(text, "sim0")
    });
    if let (Some(thread_ts), Some(obj)) = (thread_ts, message.as_object_mut()) {
        obj.insert("thread_ts".into(), json!(thread_ts));
        if let Some(parent) = parent_user_id {
            obj.insert("parent_user_id".into(), json!(parent));
        }
    }
    message
}
