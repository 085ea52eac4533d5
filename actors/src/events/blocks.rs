//! The Block Kit messages: one per event thing (title, status, key fields, links) and the
//! storm digest. Texts from the sources are escaped for mrkdwn (`&`, `<`, `>`), so a
//! payload cannot mention `@channel` or forge a link.

use serde_json::{Value, json};

use super::model::{OpsEvent, Tone};

/// Slack's limit for a section's text.
const SECTION_TEXT: usize = 3000;
/// Slack's limit for a field's text.
const FIELD_TEXT: usize = 2000;
/// Slack allows 10 fields per section.
const MAX_FIELDS: usize = 10;

/// A message to post or show: the notification text and the blocks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub text: String,
    pub blocks: Value,
}

/// Escapes the three characters mrkdwn gives meaning to.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn emoji(tone: Tone) -> &'static str {
    match tone {
        Tone::Bad => ":red_circle:",
        Tone::Pending => ":large_yellow_circle:",
        Tone::Good => ":large_green_circle:",
        Tone::Info => ":large_blue_circle:",
    }
}

/// The message of one event.
pub fn event_message(event: &OpsEvent) -> Rendered {
    let title = clip(&escape(&event.title), 150);
    let header = format!(
        "{} *{}*  ·  `{}`",
        emoji(event.tone),
        title,
        escape(&event.status)
    );
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": clip(&header, SECTION_TEXT)}
    })];
    let mut fields: Vec<Value> = Vec::new();
    if let Some(sev) = &event.severity {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Severity*\n{}", escape(sev))}));
    }
    for (name, value) in &event.fields {
        if fields.len() >= MAX_FIELDS {
            break;
        }
        fields.push(json!({
            "type": "mrkdwn",
            "text": clip(&format!("*{}*\n{}", escape(name), escape(value)), FIELD_TEXT)
        }));
    }
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if !event.links.is_empty() {
        let links = event
            .links
            .iter()
            .map(|l| {
                format!(
                    "<{}|{}>",
                    l.url.replace('|', "%7C").replace('>', "%3E"),
                    escape(&l.label)
                )
            })
            .collect::<Vec<_>>()
            .join("  ·  ");
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(&links, SECTION_TEXT)}]}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": format!("{} · {}", event.source.as_str(), escape(&event.event))}]}));
    Rendered {
        text: clip(
            &format!("{} {} ({})", emoji(event.tone), event.title, event.status),
            SECTION_TEXT,
        ),
        blocks: Value::Array(blocks),
    }
}

/// The digest of a storm: `count` events of the rule `rule_name` in the window starting at
/// `window` (RFC 3339), the newest titles first.
pub fn digest_message(rule_name: &str, window: &str, count: i64, recent: &[String]) -> Rendered {
    let header = format!(
        ":rotating_light: *Event storm*: {count} more events for rule *{}* since {}",
        escape(rule_name),
        escape(window)
    );
    let list = recent
        .iter()
        .map(|t| format!("• {}", clip(&escape(t), 150)))
        .collect::<Vec<_>>()
        .join("\n");
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&header, SECTION_TEXT)}}),
    ];
    if !list.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&format!("Latest:\n{list}"), SECTION_TEXT)}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": "Grouped into one message to keep the channel readable; it is updated as events arrive."}]}));
    Rendered {
        text: format!("Event storm: {count} more events for rule {rule_name}"),
        blocks: Value::Array(blocks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::{Link, SourceKind};

    #[test]
    fn texts_are_escaped_and_links_kept() {
        let e = OpsEvent {
            source: SourceKind::Alertmanager,
            source_id: None,
            event: "alert.firing".into(),
            conclusion: None,
            thing_key: "k".into(),
            title: "<!channel> disk & cpu".into(),
            status: "firing".into(),
            tone: Tone::Bad,
            severity: Some("critical".into()),
            repository: None,
            service: None,
            links: vec![Link {
                label: "Alertmanager".into(),
                url: "http://am:9093".into(),
            }],
            fields: vec![("Alerts".into(), "1 firing".into())],
            labels: Default::default(),
            occurred_at: None,
            description: String::new(),
        };
        let r = event_message(&e);
        let text = r.blocks.to_string();
        assert!(text.contains("&lt;!channel&gt; disk &amp; cpu"), "{text}");
        assert!(!text.contains("<!channel>"));
        assert!(text.contains("<http://am:9093|Alertmanager>"));
        assert!(r.blocks.as_array().unwrap().len() >= 3);
    }
}
