//! The approval and the plain rules about it: what a valid request is, who may decide, why
//! a click is refused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ports::ApprovalStoreError;
use super::{DEFAULT_EXPIRY, MAX_EXPIRY};
use crate::conversation::{ConversationStoreError, SlackApiError};
use crate::ids::{ApprovalId, ConversationId, MessageTs, SlackUserId, ThreadKey};
use crate::inbox::EventRowId;

/// Longest summary (one line; Slack's header and notification text stay readable).
pub const MAX_SUMMARY: usize = 300;
/// Longest details text (Markdown; a section block holds 3 000 characters of mrkdwn).
pub const MAX_DETAILS: usize = 2_800;
/// Longest action key.
pub const MAX_ACTION_KEY: usize = 200;
/// Most approvers an agent may name.
pub const MAX_APPROVERS: usize = 20;
/// Longest deny reason kept.
pub const MAX_REASON: usize = 2_000;

/// How risky the action is, as the agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
    Critical,
}

impl RiskLevel {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses the stored spelling (any case; empty means `medium`).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "low" => Some(Self::Low),
            "" | "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// Where an approval is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl ApprovalStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// A person's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    /// The status it leads to.
    pub fn status(self) -> ApprovalStatus {
        match self {
            Self::Approve => ApprovalStatus::Approved,
            Self::Deny => ApprovalStatus::Denied,
        }
    }

    /// `approved` / `denied`: the word the agent and the audit log see.
    pub fn as_str(self) -> &'static str {
        self.status().as_str()
    }
}

/// One approval, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: ApprovalId,
    pub conversation_id: ConversationId,
    /// The thread it is asked in.
    #[serde(skip)]
    pub key: ThreadKey,
    /// The agent's idempotency key of the action.
    pub action_key: String,
    pub summary: String,
    /// Markdown, as the agent wrote it.
    pub details: String,
    pub risk: RiskLevel,
    /// The Slack users the agent named (empty: the turn's author).
    pub approvers: Vec<SlackUserId>,
    /// Whose message started the turn that asked.
    pub requested_by: Option<SlackUserId>,
    /// That turn's message ts.
    pub turn_ts: Option<MessageTs>,
    pub status: ApprovalStatus,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The Block Kit message, once posted.
    pub message_ts: Option<MessageTs>,
    pub decided_by: Option<SlackUserId>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// The inbound event that decided it.
    #[serde(skip)]
    pub decided_event: Option<EventRowId>,
}

impl Approval {
    /// Due to expire at `now` and still pending.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.status == ApprovalStatus::Pending && self.expires_at <= now
    }

    /// The `approval` object of the decision turn's context JSON.
    pub fn decision_context(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "action_key": self.action_key,
            "decision": self.status.as_str(),
            "decided_by": self.decided_by.as_ref().map(SlackUserId::as_str),
            "reason": self.reason,
            "summary": self.summary,
        })
    }
}

/// `RequestApproval` as the agent sent it (gRPC or `POST /approvals`), before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub conversation_id: String,
    pub action_key: String,
    pub summary: String,
    #[serde(default)]
    pub details: String,
    #[serde(default)]
    pub risk: String,
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Seconds until it expires; 0 or absent: 30 minutes.
    #[serde(default)]
    pub expires_in_secs: u64,
}

/// A valid request, ready to store (the conversation's thread and turn filled in by the
/// service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApproval {
    pub id: ApprovalId,
    pub conversation_id: ConversationId,
    pub key: ThreadKey,
    pub action_key: String,
    pub summary: String,
    pub details: String,
    pub risk: RiskLevel,
    pub approvers: Vec<SlackUserId>,
    pub requested_by: Option<SlackUserId>,
    pub turn_ts: Option<MessageTs>,
    pub expires_in: Duration,
}

/// The checked fields of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRequest {
    pub conversation_id: ConversationId,
    pub action_key: String,
    pub summary: String,
    pub details: String,
    pub risk: RiskLevel,
    pub approvers: Vec<SlackUserId>,
    pub expires_in: Duration,
}

impl ApprovalRequest {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<ValidRequest, ApprovalError> {
        let conversation_id = self
            .conversation_id
            .trim()
            .parse::<ConversationId>()
            .map_err(|_| ApprovalError::InvalidConversationId(self.conversation_id.clone()))?;
        let action_key = self.action_key.trim();
        if action_key.is_empty() || action_key.chars().count() > MAX_ACTION_KEY {
            return Err(ApprovalError::Invalid(format!(
                "action_key must be 1 to {MAX_ACTION_KEY} characters"
            )));
        }
        let summary = self.summary.trim();
        if summary.is_empty() || summary.chars().count() > MAX_SUMMARY || summary.contains('\n') {
            return Err(ApprovalError::Invalid(format!(
                "summary must be one line of 1 to {MAX_SUMMARY} characters"
            )));
        }
        if self.details.chars().count() > MAX_DETAILS {
            return Err(ApprovalError::Invalid(format!(
                "details must be at most {MAX_DETAILS} characters"
            )));
        }
        let risk = RiskLevel::parse(&self.risk).ok_or_else(|| {
            ApprovalError::Invalid("risk must be low, medium, high or critical".into())
        })?;
        if self.approvers.len() > MAX_APPROVERS {
            return Err(ApprovalError::Invalid(format!(
                "at most {MAX_APPROVERS} approvers"
            )));
        }
        let mut approvers = Vec::with_capacity(self.approvers.len());
        for raw in &self.approvers {
            let user = SlackUserId::parse(raw.trim()).map_err(|_| {
                ApprovalError::Invalid("approvers must be Slack user ids (U…, W…)".into())
            })?;
            if !approvers.contains(&user) {
                approvers.push(user);
            }
        }
        let expires_in = match self.expires_in_secs {
            0 => DEFAULT_EXPIRY,
            secs if Duration::from_secs(secs) > MAX_EXPIRY => {
                return Err(ApprovalError::Invalid(format!(
                    "expires_in_secs must be at most {}",
                    MAX_EXPIRY.as_secs()
                )));
            }
            secs => Duration::from_secs(secs),
        };
        Ok(ValidRequest {
            conversation_id,
            action_key: action_key.to_owned(),
            summary: summary.to_owned(),
            details: self.details.clone(),
            risk,
            approvers,
            expires_in,
        })
    }
}

/// Who may decide: the approvers the agent named, or (when it named none) the person whose
/// message started the turn; and any admin of the workspace's organization. Nobody else.
pub fn may_decide(approval: &Approval, user: &SlackUserId, is_org_admin: bool) -> bool {
    if is_org_admin {
        return true;
    }
    if approval.approvers.is_empty() {
        approval.requested_by.as_ref() == Some(user)
    } else {
        approval.approvers.contains(user)
    }
}

/// Why a click changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user may not decide this request.
    NotAllowed,
    /// Decided already (a second click, someone else's first).
    AlreadyDecided(ApprovalStatus),
    /// Past its expiry.
    Expired,
    /// The workspace's installation is revoked or inactive.
    WorkspaceInactive,
}

impl Refusal {
    /// The audit log's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAllowed => "not_allowed",
            Self::AlreadyDecided(_) => "already_decided",
            Self::Expired => "expired",
            Self::WorkspaceInactive => "workspace_inactive",
        }
    }

    /// The ephemeral message the clicker sees.
    pub fn message(self, approval: &Approval) -> String {
        let what = crate::events::blocks::escape(&approval.summary);
        match self {
            Self::NotAllowed => format!(
                ":no_entry: You cannot decide this request (“{what}”): only {} may.",
                super::blocks::deciders_text(approval)
            ),
            Self::AlreadyDecided(status) => format!(
                ":no_entry: You cannot decide this request (“{what}”): it is {} already.",
                status.as_str()
            ),
            Self::Expired => {
                format!(":no_entry: You cannot decide this request (“{what}”): it has expired.")
            }
            Self::WorkspaceInactive => format!(
                ":no_entry: You cannot decide this request (“{what}”): this workspace's installation is not active."
            ),
        }
    }
}

/// Failures of `RequestApproval` / `GetApproval`.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The conversation id is not a UUID.
    #[error("conversation_id {0:?} is not a valid UUID")]
    InvalidConversationId(String),
    /// The approval id is not a UUID.
    #[error("approval_id {0:?} is not a valid UUID")]
    InvalidApprovalId(String),
    /// A field is invalid (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// No such conversation.
    #[error("conversation {0} not found")]
    ConversationNotFound(ConversationId),
    /// No such approval.
    #[error("approval {0} not found")]
    NotFound(ApprovalId),
    /// The approval store failed.
    #[error(transparent)]
    Store(#[from] ApprovalStoreError),
    /// The conversation store failed.
    #[error(transparent)]
    Conversations(#[from] ConversationStoreError),
    /// Slack refused or failed the post.
    #[error("posting the approval request: {0}")]
    Slack(#[source] SlackApiError),
    /// Another process holds the post's claim.
    #[error("another process is posting this approval request; retry")]
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(approvers: &[&str], requested_by: Option<&str>) -> Approval {
        Approval {
            id: ApprovalId::new_random(),
            conversation_id: ConversationId::new_random(),
            key: ThreadKey::new(
                crate::ids::TeamId::parse("T1").unwrap(),
                crate::ids::ChannelId::parse("C1").unwrap(),
                MessageTs::parse("1.1").unwrap(),
            ),
            action_key: "k".into(),
            summary: "s".into(),
            details: String::new(),
            risk: RiskLevel::High,
            approvers: approvers
                .iter()
                .map(|a| SlackUserId::parse(*a).unwrap())
                .collect(),
            requested_by: requested_by.map(|r| SlackUserId::parse(r).unwrap()),
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
    fn who_may_decide() {
        let alice = SlackUserId::parse("UALICE").unwrap();
        let bob = SlackUserId::parse("UBOB").unwrap();
        let by_author = approval(&[], Some("UALICE"));
        assert!(may_decide(&by_author, &alice, false));
        assert!(!may_decide(&by_author, &bob, false));
        assert!(may_decide(&by_author, &bob, true), "admins may");
        let named = approval(&["UBOB"], Some("UALICE"));
        assert!(may_decide(&named, &bob, false));
        assert!(
            !may_decide(&named, &alice, false),
            "named approvers replace the author"
        );
        let nobody = approval(&[], None);
        assert!(!may_decide(&nobody, &alice, false));
    }

    #[test]
    fn requests_are_validated() {
        let good = ApprovalRequest {
            conversation_id: uuid::Uuid::new_v4().to_string(),
            action_key: "restart-api-staging".into(),
            summary: "Restart api in staging".into(),
            details: "`kubectl rollout restart`".into(),
            risk: "HIGH".into(),
            approvers: vec!["UBOB".into(), "UBOB".into()],
            expires_in_secs: 0,
        };
        let v = good.validate().unwrap();
        assert_eq!(v.risk, RiskLevel::High);
        assert_eq!(v.approvers.len(), 1);
        assert_eq!(v.expires_in, DEFAULT_EXPIRY);
        for bad in [
            ApprovalRequest {
                conversation_id: "nope".into(),
                ..good.clone()
            },
            ApprovalRequest {
                action_key: " ".into(),
                ..good.clone()
            },
            ApprovalRequest {
                summary: "two\nlines".into(),
                ..good.clone()
            },
            ApprovalRequest {
                risk: "extreme".into(),
                ..good.clone()
            },
            ApprovalRequest {
                approvers: vec!["not a user".into()],
                ..good.clone()
            },
            ApprovalRequest {
                expires_in_secs: MAX_EXPIRY.as_secs() + 1,
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
