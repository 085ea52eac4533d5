//! Approvals (issue 14): the agent asks before it acts, the right person decides in Slack,
//! everything is audited.
//!
//! * [`model`]: the approval, its request (validated), risk, status, decisions and who may
//!   decide ([`model::may_decide`]);
//! * [`blocks`]: the Block Kit message (pending, decided, expired) and the deny modal;
//! * [`interaction`]: Slack's `block_actions` / `view_submission` payloads → an
//!   [`interaction::Interaction`], with the inbox's deduplication key and routing key;
//! * [`ports`]: what the logic needs from the outside world (the store, Slack's Block Kit
//!   calls);
//! * [`service`]: `RequestApproval` / `GetApproval` and the exactly-once post of the message,
//!   and the expiry sweep;
//! * the decision itself runs in the thread's conversation worker
//!   (`conversation::turn`, `approvals` submodule), so it is ordered with the thread's
//!   messages and the agent learns it as a new turn.

pub mod blocks;
pub mod interaction;
pub mod model;
pub mod ports;
pub mod service;

pub use interaction::{Interaction, InteractionError};
pub use model::{
    Approval, ApprovalError, ApprovalRequest, ApprovalStatus, Decision, NewApproval, Refusal,
    RiskLevel, may_decide,
};
pub use ports::{ApprovalSlack, ApprovalStore, ApprovalStoreError, PostClaim};
pub use service::{ApprovalPorts, ApprovalService};

/// `event_type` of the metadata on an approval message: how a later claim recognises a post
/// that reached the thread unrecorded.
pub const APPROVAL_EVENT_TYPE: &str = "infragpt_approval";
/// `action_id` of the Approve button.
pub const APPROVE_ACTION: &str = "approval_approve";
/// `action_id` of the Deny button.
pub const DENY_ACTION: &str = "approval_deny";
/// `callback_id` of the deny modal.
pub const DENY_CALLBACK: &str = "approval_deny";
/// `block_id` / `action_id` of the deny modal's reason input.
pub const REASON_INPUT: &str = "reason";
/// Default lifetime of a request.
pub const DEFAULT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// Longest lifetime a request may ask for (a week).
pub const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
