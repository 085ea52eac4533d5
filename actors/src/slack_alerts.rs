//! Alerts and other bot posts as input (`slack.alert_sources`): which bots may start a turn
//! without a mention, and how their messages become the turn's text.
//!
//! Monitoring tools post in Slack as bots: incoming webhooks (Alertmanager, Grafana: a
//! `bot_message` with `username`), or apps of their own (Datadog, PagerDuty: `bot_id` and
//! `bot_profile`). Their content is rarely in `text`: it is in legacy attachments and Block
//! Kit. [`flatten_message`] turns all of it into one readable text, the way a person would
//! copy it into a question.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::SlackUserId;
use crate::slack_events::{AppId, BotId};

/// One entry of `slack.alert_sources`: a bot whose posts in monitored channels are turns.
/// `bot_id` and `app_id` (at least one) must both match when given; `name`, when given, must
/// equal the post's `username` or `bot_profile.name` (case-insensitive), for apps that post
/// under several names (one incoming-webhook app used by several tools).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSource {
    /// `B…`: the bot id of the posts.
    pub bot_id: Option<BotId>,
    /// `A…`: the app that posts them.
    pub app_id: Option<AppId>,
    /// The display name to match (`username` or `bot_profile.name`).
    pub name: Option<String>,
}

impl AlertSource {
    /// True when the entry names a bot or an app (an entry with neither would match nothing).
    pub fn is_valid(&self) -> bool {
        self.bot_id.is_some() || self.app_id.is_some()
    }

    /// True when a post by `poster` comes from this source.
    pub fn matches(&self, poster: &BotPoster) -> bool {
        if !self.is_valid() {
            return false;
        }
        let bot_ok = self
            .bot_id
            .as_ref()
            .is_none_or(|b| poster.bot_id.as_ref() == Some(b));
        let app_ok = self
            .app_id
            .as_ref()
            .is_none_or(|a| poster.app_id.as_ref() == Some(a));
        let name_ok = self.name.as_deref().is_none_or(|want| {
            let want = want.trim();
            [poster.username.as_deref(), poster.profile_name.as_deref()]
                .into_iter()
                .flatten()
                .any(|n| n.trim().eq_ignore_ascii_case(want))
        });
        bot_ok && app_ok && name_ok
    }
}

/// The configured alert sources, cheap to clone (one list shared by every decision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertSources(Arc<[AlertSource]>);

impl AlertSources {
    /// The list (entries with neither id never match).
    pub fn new(sources: Vec<AlertSource>) -> Self {
        Self(sources.into())
    }

    /// The first entry a post by `poster` matches.
    pub fn find(&self, poster: &BotPoster) -> Option<&AlertSource> {
        self.0.iter().find(|s| s.matches(poster))
    }

    /// True when no source is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Who posted a bot message, as the event says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BotPoster {
    pub bot_id: Option<BotId>,
    /// `app_id`, else `bot_profile.app_id`.
    pub app_id: Option<AppId>,
    /// `username` (incoming webhooks set it per post).
    pub username: Option<String>,
    /// `bot_profile.name`.
    pub profile_name: Option<String>,
    /// The bot's user, when the app has one (`user`).
    pub user: Option<SlackUserId>,
}

/// The bot a turn came from: the turn's sender, and `"alert"` in the agent's context.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AlertOrigin {
    pub bot_id: BotId,
    pub app_id: Option<AppId>,
    /// The post's `username`, else `bot_profile.name`, else the matching entry's `name`.
    pub name: Option<String>,
    /// The bot's user id, when it has one.
    #[serde(skip)]
    pub user: Option<SlackUserId>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        // A Block Kit text object (`{"type": "mrkdwn", "text": "…"}`).
        Value::Object(o) => o.get("text").and_then(|t| match t {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// A field of `v` as text, `None` when absent or blank.
fn field(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(text_of)
        .filter(|s| !s.trim().is_empty())
}

/// Lines of the flattened text, each kept once (tools repeat the same text as `text`, the
/// attachment's title and a block).
#[derive(Default)]
struct Lines {
    groups: Vec<Vec<String>>,
    seen: HashSet<String>,
}

impl Lines {
    fn group(&mut self) {
        if self.groups.last().is_none_or(|g| !g.is_empty()) {
            self.groups.push(Vec::new());
        }
    }

    fn push(&mut self, line: String) {
        let line = line.trim().to_owned();
        if line.is_empty() || !self.seen.insert(line.clone()) {
            return;
        }
        if self.groups.is_empty() {
            self.groups.push(Vec::new());
        }
        if let Some(g) = self.groups.last_mut() {
            g.push(line);
        }
    }

    fn finish(self) -> String {
        self.groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|g| g.join("\n"))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// Block Kit `header`, `section` (text and fields) and `context` (its text elements, joined
/// with ` | `); other block types (images, buttons, dividers, rich text, whose words are in
/// the message's `text`) add nothing.
fn blocks(lines: &mut Lines, blocks: &Value) {
    let Some(blocks) = blocks.as_array() else {
        return;
    };
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("header") => {
                if let Some(t) = field(block, "text") {
                    lines.push(t);
                }
            }
            Some("section") => {
                if let Some(t) = field(block, "text") {
                    lines.push(t);
                }
                for f in block
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = text_of(f) {
                        lines.push(t);
                    }
                }
            }
            Some("context") => {
                let parts: Vec<String> = block
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(text_of)
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect();
                lines.push(parts.join(" | "));
            }
            _ => {}
        }
    }
}

/// One legacy attachment: pretext, title (with its link), text, fields (`title: value`),
/// the blocks it holds, footer; its `fallback` only when it has none of those.
fn attachment(lines: &mut Lines, a: &Value) {
    let before = lines.seen.len();
    let mut any = false;
    let mut push = |lines: &mut Lines, s: String| {
        any = true;
        lines.push(s);
    };
    if let Some(p) = field(a, "pretext") {
        push(lines, p);
    }
    match (field(a, "title"), field(a, "title_link")) {
        (Some(t), Some(l)) => push(lines, format!("{} ({})", t.trim(), l.trim())),
        (Some(t), None) => push(lines, t),
        (None, Some(l)) => push(lines, l),
        (None, None) => {}
    }
    if let Some(t) = field(a, "text") {
        push(lines, t);
    }
    for f in a
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match (field(f, "title"), field(f, "value")) {
            (Some(t), Some(v)) => push(lines, format!("{}: {}", t.trim(), v.trim())),
            (Some(only), None) | (None, Some(only)) => push(lines, only),
            (None, None) => {}
        }
    }
    if let Some(b) = a.get("blocks") {
        blocks(lines, b);
    }
    if let Some(f) = field(a, "footer") {
        push(lines, f);
    }
    // Its nested blocks count when they added a line.
    if !any
        && lines.seen.len() == before
        && let Some(f) = field(a, "fallback")
    {
        lines.push(f);
    }
}

/// The readable text of a bot post: its `text`, then its Block Kit blocks, then each
/// attachment, groups separated by a blank line, every line once. Deterministic, total (any
/// JSON shape; what is not a known field is skipped) and lossless for the text fields it
/// reads: `text`; attachments' `pretext`, `title`, `title_link`, `text`, `fields[].title`
/// and `.value`, `footer` and nested `blocks`; blocks' header text, section text and
/// fields, context elements' text.
pub fn flatten_message(text: &str, attachments: &Value, message_blocks: &Value) -> String {
    let mut lines = Lines::default();
    lines.push(text.to_owned());
    lines.group();
    blocks(&mut lines, message_blocks);
    for a in attachments.as_array().into_iter().flatten() {
        lines.group();
        attachment(&mut lines, a);
    }
    lines.finish()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn alertmanager_style_attachment() {
        let out = flatten_message(
            "",
            &json!([{
                "title": "[FIRING:1] HighLatency",
                "title_link": "https://am.example/#/alerts",
                "text": "*Alert:* p99 over 2s\n*Severity:* `critical`",
                "fallback": "[FIRING:1] HighLatency | https://am.example/#/alerts",
                "footer": ""
            }]),
            &Value::Null,
        );
        assert_eq!(
            out,
            "[FIRING:1] HighLatency (https://am.example/#/alerts)\n*Alert:* p99 over 2s\n*Severity:* `critical`"
        );
    }

    #[test]
    fn blocks_fields_context_and_nested_blocks() {
        let out = flatten_message(
            "Incident #42 triggered",
            &json!([{
                "color": "#ff0000",
                "pretext": "New incident",
                "fields": [{"title": "Service", "value": "api"}, {"title": "Urgency", "value": ""}],
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "nested"}}],
                "footer": "PagerDuty"
            }]),
            &json!([
                {"type": "header", "text": {"type": "plain_text", "text": "Incident #42 triggered"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "*api* is down"},
                 "fields": [{"type": "mrkdwn", "text": "*Priority*\nP1"}]},
                {"type": "divider"},
                {"type": "context", "elements": [
                    {"type": "mrkdwn", "text": "Assigned to Alice"},
                    {"type": "image", "image_url": "https://x", "alt_text": "icon"},
                    {"type": "plain_text", "text": "via Datadog"}]},
                {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Ack"}}]}
            ]),
        );
        assert_eq!(
            out,
            "Incident #42 triggered\n\n*api* is down\n*Priority*\nP1\nAssigned to Alice | via Datadog\n\n\
             New incident\nService: api\nUrgency\nnested\nPagerDuty"
        );
    }

    #[test]
    fn fallback_only_when_nothing_else() {
        assert_eq!(
            flatten_message(
                "",
                &json!([{"fallback": "just this", "color": "good"}]),
                &json!(null)
            ),
            "just this"
        );
        assert_eq!(flatten_message("  ", &json!("x"), &json!({"a": 1})), "");
        // Blocks in the attachment are its content: no fallback then.
        assert_eq!(
            flatten_message(
                "",
                &json!([{"fallback": "[no preview available]",
                         "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "body"}}]}]),
                &json!(null)
            ),
            "body"
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("text"),
                Just("title"),
                Just("fields"),
                Just("blocks"),
                Just("section"),
                Just("header"),
                Just("context"),
                Just("elements"),
                Just("type"),
            ]
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("text".to_owned()),
                        Just("title".to_owned()),
                        Just("value".to_owned()),
                        Just("fields".to_owned()),
                        Just("blocks".to_owned()),
                        Just("elements".to_owned()),
                        Just("pretext".to_owned()),
                        Just("footer".to_owned()),
                        ".{0,4}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Text fields an attachment list and blocks hold, as the flattener reads them.
    fn text_fields(attachments: &Value, message_blocks: &Value) -> Vec<String> {
        fn block_texts(b: &Value, out: &mut Vec<String>) {
            for block in b.as_array().into_iter().flatten() {
                match block.get("type").and_then(Value::as_str) {
                    Some("header") => out.extend(field(block, "text")),
                    Some("section") => {
                        out.extend(field(block, "text"));
                        for f in block
                            .get("fields")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            out.extend(text_of(f));
                        }
                    }
                    Some("context") => {
                        for e in block
                            .get("elements")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            out.extend(text_of(e));
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        block_texts(message_blocks, &mut out);
        for a in attachments.as_array().into_iter().flatten() {
            for key in ["pretext", "title", "title_link", "text", "footer"] {
                out.extend(field(a, key));
            }
            for f in a
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.extend(field(f, "title"));
                out.extend(field(f, "value"));
            }
            if let Some(b) = a.get("blocks") {
                block_texts(b, &mut out);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn never_panics_deterministic_and_keeps_every_text(
            text in ".{0,20}",
            attachments in arb_json(),
            message_blocks in arb_json(),
        ) {
            let a = flatten_message(&text, &attachments, &message_blocks);
            let b = flatten_message(&text, &attachments, &message_blocks);
            prop_assert_eq!(&a, &b);
            prop_assert!(a.contains(text.trim()));
            for t in text_fields(&attachments, &message_blocks) {
                prop_assert!(a.contains(t.trim()), "{:?} missing from {:?}", t, a);
            }
        }

        #[test]
        fn well_formed_alerts_keep_every_text(
            text in "[a-zA-Z0-9 *_:<>|]{0,30}",
            titles in prop::collection::vec("[a-zA-Z0-9 ]{0,10}", 0..4),
            values in prop::collection::vec("[a-zA-Z0-9 .%]{0,10}", 0..4),
            header in "[a-zA-Z0-9 ]{0,20}",
            footer in "[a-zA-Z0-9 ]{0,20}",
        ) {
            let fields: Vec<Value> = titles.iter().zip(&values)
                .map(|(t, v)| json!({"title": t, "value": v, "short": true})).collect();
            let attachments = json!([{"title": header, "fields": fields, "footer": footer}]);
            let message_blocks = json!([{"type": "header", "text": {"type": "plain_text", "text": header}},
                              {"type": "section", "fields": values.iter().map(|v| json!({"type": "mrkdwn", "text": v})).collect::<Vec<_>>()}]);
            let out = flatten_message(&text, &attachments, &message_blocks);
            for t in text_fields(&attachments, &message_blocks) {
                prop_assert!(out.contains(t.trim()));
            }
            prop_assert!(out.contains(text.trim()));
            prop_assert!(!out.starts_with('\n') && !out.ends_with('\n'));
        }
    }

    #[test]
    fn source_matching() {
        let poster = BotPoster {
            bot_id: Some(BotId::new("B1")),
            app_id: Some(AppId::new("A1")),
            username: Some("Alertmanager".into()),
            profile_name: None,
            user: None,
        };
        let by_bot = AlertSource {
            bot_id: Some(BotId::new("B1")),
            ..AlertSource::default()
        };
        assert!(by_bot.matches(&poster));
        let by_app_and_name = AlertSource {
            app_id: Some(AppId::new("A1")),
            name: Some("alertmanager".into()),
            ..AlertSource::default()
        };
        assert!(by_app_and_name.matches(&poster));
        let other_name = AlertSource {
            name: Some("Grafana".into()),
            ..by_app_and_name.clone()
        };
        assert!(!other_name.matches(&poster));
        let other_app = AlertSource {
            bot_id: Some(BotId::new("B1")),
            app_id: Some(AppId::new("A2")),
            name: None,
        };
        assert!(!other_app.matches(&poster));
        assert!(!AlertSource::default().matches(&poster));
        let sources = AlertSources::new(vec![other_name, by_bot.clone()]);
        assert_eq!(sources.find(&poster), Some(&by_bot));
    }
}
