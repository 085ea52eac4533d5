//! The Block Kit of an approval: the request with its Approve / Deny buttons, the same
//! message once decided or expired (buttons removed), and the modal that asks for a deny
//! reason. Every text of the agent's is escaped (the summary) or converted from Markdown
//! (the details, through [`from_markdown`], which escapes outside code too), so a request
//! cannot `<!channel>` or forge a link.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::model::{Approval, ApprovalStatus};
use super::{APPROVE_ACTION, DENY_ACTION, DENY_CALLBACK, REASON_INPUT};
use crate::conversation::mrkdwn::from_markdown;
use crate::events::Rendered;
use crate::events::blocks::escape;

/// Longest mrkdwn of a section block (Slack's limit is 3 000).
const SECTION_MAX: usize = 2_900;

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A date Slack shows in each reader's time zone, with a UTC fallback.
fn slack_date(at: DateTime<Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
        at.timestamp(),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// Who may decide, as mrkdwn.
pub fn deciders_text(approval: &Approval) -> String {
    let people: Vec<String> = if approval.approvers.is_empty() {
        approval
            .requested_by
            .iter()
            .map(|u| format!("<@{u}>"))
            .collect()
    } else {
        approval
            .approvers
            .iter()
            .map(|u| format!("<@{u}>"))
            .collect()
    };
    if people.is_empty() {
        "organization admins".to_owned()
    } else {
        format!("{} or an organization admin", people.join(", "))
    }
}

fn request_blocks(approval: &Approval) -> Vec<Value> {
    let mut body = format!("*{}*", escape(&approval.summary));
    let details = from_markdown(&approval.details);
    if !details.trim().is_empty() {
        body.push('\n');
        body.push_str(details.trim_end());
    }
    let asked = match &approval.requested_by {
        Some(user) => format!("Asked by the agent for <@{user}>"),
        None => "Asked by the agent".to_owned(),
    };
    vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&body, SECTION_MAX)}}),
        json!({"type": "context", "elements": [
            {"type": "mrkdwn", "text": format!("Risk: *{}*", approval.risk.as_str())},
            {"type": "mrkdwn", "text": asked},
            {"type": "mrkdwn", "text": format!("Who may decide: {}", deciders_text(approval))},
        ]}),
    ]
}

/// The pending request: summary, details, who asked, who may decide, when it expires, and
/// the Approve / Deny buttons (their `value` is the approval id).
pub fn pending(approval: &Approval) -> Rendered {
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text",
        "text": ":raised_hand: Approval needed", "emoji": true}})];
    blocks.extend(request_blocks(approval));
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!("Expires {}", slack_date(approval.expires_at))},
    ]}));
    blocks.push(
        json!({"type": "actions", "block_id": "approval", "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary",
             "text": {"type": "plain_text", "text": "Approve"}, "value": approval.id.to_string()},
            {"type": "button", "action_id": DENY_ACTION, "style": "danger",
             "text": {"type": "plain_text", "text": "Deny"}, "value": approval.id.to_string()},
        ]}),
    );
    Rendered {
        text: format!("Approval needed: {}", escape(&approval.summary)),
        blocks: Value::Array(blocks),
    }
}

/// The request once decided or expired: the same facts, the outcome instead of the buttons.
pub fn settled(approval: &Approval) -> Rendered {
    let (header, outcome) = match approval.status {
        ApprovalStatus::Approved | ApprovalStatus::Denied => {
            let (emoji, word) = if approval.status == ApprovalStatus::Approved {
                (":white_check_mark:", "Approved")
            } else {
                (":x:", "Denied")
            };
            let by = approval
                .decided_by
                .as_ref()
                .map_or_else(|| "someone".to_owned(), |u| format!("<@{u}>"));
            let at = approval
                .decided_at
                .map_or_else(String::new, |at| format!(" on {}", slack_date(at)));
            let mut outcome = format!("{emoji} *{word}* by {by}{at}");
            if let Some(reason) = approval.reason.as_deref().filter(|r| !r.trim().is_empty()) {
                outcome.push_str(&format!("\n>{}", escape(reason).replace('\n', "\n>")));
            }
            (format!("{word}: {}", approval.summary), outcome)
        }
        ApprovalStatus::Expired => (
            format!("Expired: {}", approval.summary),
            format!(
                ":hourglass: *Expired* on {} without a decision",
                slack_date(approval.expires_at)
            ),
        ),
        ApprovalStatus::Pending => return pending(approval),
    };
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text",
        "text": clip(&header, 150), "emoji": true}})];
    blocks.extend(request_blocks(approval));
    blocks.push(
        json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&outcome, SECTION_MAX)}}),
    );
    Rendered {
        text: escape(&header),
        blocks: Value::Array(blocks),
    }
}

/// What the deny modal carries back in `private_metadata`: the approval and the thread its
/// submission is routed to.
pub fn deny_metadata(approval: &Approval) -> String {
    json!({
        "approval_id": approval.id.to_string(),
        "thread": approval.key.to_string(),
    })
    .to_string()
}

/// The modal `views.open` shows after a click on Deny: an optional reason.
pub fn deny_modal(approval: &Approval) -> Value {
    json!({
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": deny_metadata(approval),
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn",
                "text": clip(&format!("*{}*", escape(&approval.summary)), SECTION_MAX)}},
            {"type": "input", "block_id": REASON_INPUT, "optional": true,
             "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT,
                         "multiline": true, "max_length": 2000}},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::model::RiskLevel;
    use crate::ids::ThreadKey;
    use crate::ids::{ApprovalId, ChannelId, ConversationId, MessageTs, SlackUserId, TeamId};

    fn approval() -> Approval {
        Approval {
            id: ApprovalId::new_random(),
            conversation_id: ConversationId::new_random(),
            key: ThreadKey::new(
                TeamId::parse("T1").unwrap(),
                ChannelId::parse("C1").unwrap(),
                MessageTs::parse("1.1").unwrap(),
            ),
            action_key: "k".into(),
            summary: "Restart <!channel> api".into(),
            details: "Runs `kubectl rollout restart`\n\n**staging** only".into(),
            risk: RiskLevel::High,
            approvers: vec![],
            requested_by: Some(SlackUserId::parse("UALICE").unwrap()),
            turn_ts: None,
            status: ApprovalStatus::Pending,
            expires_at: Utc::now(),
            created_at: Utc::now(),
            message_ts: None,
            decided_by: None,
            decided_at: None,
            reason: None,
            decided_event: None,
        }
    }

    #[test]
    fn pending_has_buttons_and_escapes() {
        let a = approval();
        let r = pending(&a);
        let text = r.blocks.to_string();
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"));
        assert!(text.contains("*staging*"), "markdown converted: {text}");
        assert!(text.contains(APPROVE_ACTION) && text.contains(DENY_ACTION));
        assert!(text.contains("<@UALICE> or an organization admin"));
        assert!(text.contains(&a.id.to_string()));
    }

    #[test]
    fn settled_has_no_buttons() {
        let mut a = approval();
        a.status = ApprovalStatus::Denied;
        a.decided_by = Some(SlackUserId::parse("UBOB").unwrap());
        a.decided_at = Some(Utc::now());
        a.reason = Some("not <now>".into());
        let text = settled(&a).blocks.to_string();
        assert!(!text.contains(APPROVE_ACTION));
        assert!(text.contains("Denied") && text.contains("<@UBOB>"));
        assert!(text.contains("not &lt;now&gt;"));
        a.status = ApprovalStatus::Expired;
        assert!(settled(&a).blocks.to_string().contains("Expired"));
    }

    #[test]
    fn modal_carries_the_approval_and_thread() {
        let a = approval();
        let view = deny_modal(&a);
        let meta: Value = serde_json::from_str(view["private_metadata"].as_str().unwrap()).unwrap();
        assert_eq!(meta["approval_id"], a.id.to_string());
        assert_eq!(meta["thread"], "T1/C1/1.1");
        assert_eq!(view["callback_id"], DENY_CALLBACK);
    }
}
