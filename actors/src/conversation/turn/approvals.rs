//! Clicks on an approval's buttons and the deny modal's submissions, handled by the
//! thread's worker: ordered with the thread's messages, resumed after a crash (the inbox
//! row), and the decision goes to the agent as a new turn of the conversation.
//!
//! Steps, each idempotent on the event:
//!
//! 1. the approval (ignored when unknown or of another thread); if this very event decided
//!    it already (a retry after a crash), go to 4;
//! 2. refusals, in this order: the workspace is not active, the approval is decided
//!    already, it has expired, the user may not decide it ([`may_decide`]; admins through
//!    `users.info`'s email and the organization's membership mirror). A refusal is audited
//!    (`approval.refused`), the user gets an ephemeral message, nothing else changes;
//! 3. a click on Deny opens the reason modal (`views.open` with the click's trigger id) and
//!    changes nothing; Approve, or the modal's submission, decides (one conditional update
//!    with its audit entry);
//! 4. the message is updated in place (`chat.update`, buttons removed), then the agent gets
//!    the decision turn: its `current_message` says what was decided, its context carries
//!    `approval: {id, action_key, decision, decided_by, reason}`, its turn ts is the approval
//!    message's ts (so the agent's SendReply naming it, and the worker's fallback post, are
//!    the reply intents of that turn: posted once).

use chrono::Utc;
use tracing::{info, warn};

use super::{ConversationHandler, slack_err, store_err};
use crate::approvals::interaction::{self, Interaction, InteractionError};
use crate::approvals::model::{Approval, ApprovalStatus, Decision, Refusal, may_decide};
use crate::approvals::ports::ApprovalStoreError;
use crate::approvals::{ApprovalPorts, blocks, service};
use crate::conversation::ports::UserProfile;
use crate::handler::{HandleOutcome, HandlerError};
use crate::ids::SlackUserId;
use crate::inbox::InboundEvent;
use crate::slack_events::{self, Author, EventId, TurnId};

fn approval_err(e: ApprovalStoreError) -> HandlerError {
    match e {
        ApprovalStoreError::Unavailable(_) => HandlerError::retryable(e),
        ApprovalStoreError::Corrupt(_) => HandlerError::permanent(e),
    }
}

/// The decision turn's text, as the agent reads it.
fn decision_text(approval: &Approval) -> String {
    let by = approval
        .decided_by
        .as_ref()
        .map_or_else(|| "someone".to_owned(), |u| format!("<@{u}>"));
    let mut text = format!(
        "Approval {} for \"{}\" (action {}): {} by {by}.",
        approval.id,
        approval.summary,
        approval.action_key,
        approval.status.as_str()
    );
    if let Some(reason) = approval.reason.as_deref() {
        text.push_str(&format!(" Reason: {reason}"));
    }
    text
}

impl ConversationHandler {
    /// A recorded interaction (see the module documentation).
    pub(super) async fn interaction(
        &self,
        event: &InboundEvent,
    ) -> Result<HandleOutcome, HandlerError> {
        let Some(ports) = &self.approvals else {
            return Ok(HandleOutcome::Ignored("approvals are not enabled".into()));
        };
        let interaction = match interaction::parse(&event.payload) {
            Ok(i) => i,
            Err(InteractionError::NotOurs(why)) => return Ok(HandleOutcome::Ignored(why)),
            Err(e) => return Err(HandlerError::permanent(e)),
        };
        let Some(approval) = ports
            .store
            .get(interaction.approval_id())
            .await
            .map_err(approval_err)?
        else {
            return Ok(HandleOutcome::Ignored(format!(
                "approval {} is not known",
                interaction.approval_id()
            )));
        };
        if &approval.key != interaction.thread() {
            return Ok(HandleOutcome::Ignored(format!(
                "approval {} belongs to another thread",
                approval.id
            )));
        }
        if approval.decided_event == Some(event.id) {
            // This event decided it; an earlier attempt stopped after that.
            return self.after_decision(event, ports, approval).await;
        }
        let user = interaction.user().clone();
        if let Some(refusal) = self.refusal(ports, &approval, &user).await? {
            return self.refuse(event, ports, &approval, &user, refusal).await;
        }
        match interaction {
            Interaction::Click {
                action: Decision::Deny,
                trigger_id,
                ..
            } => {
                let Some(trigger_id) = trigger_id else {
                    return Err(HandlerError::permanent("a Deny click without trigger_id"));
                };
                let view = blocks::deny_modal(&approval);
                match ports
                    .slack
                    .open_view(&approval.key.team, &trigger_id, &view)
                    .await
                {
                    Ok(()) => Ok(HandleOutcome::Done),
                    // The trigger is valid for 3 s: a retry later cannot open it either.
                    Err(e) => {
                        warn!(approval_id = %approval.id, error = %e, "views.open failed");
                        Ok(HandleOutcome::Ignored(format!("views.open failed: {e}")))
                    }
                }
            }
            Interaction::Click {
                action: Decision::Approve,
                ..
            } => {
                self.decide(event, ports, &approval, Decision::Approve, &user, None)
                    .await
            }
            Interaction::DenySubmitted { reason, .. } => {
                self.decide(
                    event,
                    ports,
                    &approval,
                    Decision::Deny,
                    &user,
                    reason.as_deref(),
                )
                .await
            }
        }
    }

    /// Why `user` may not decide `approval` now, if they may not.
    async fn refusal(
        &self,
        ports: &ApprovalPorts,
        approval: &Approval,
        user: &SlackUserId,
    ) -> Result<Option<Refusal>, HandlerError> {
        let team = &approval.key.team;
        if !ports
            .store
            .workspace_active(team)
            .await
            .map_err(approval_err)?
        {
            return Ok(Some(Refusal::WorkspaceInactive));
        }
        if approval.status != ApprovalStatus::Pending {
            return Ok(Some(Refusal::AlreadyDecided(approval.status)));
        }
        if approval.is_due(Utc::now()) {
            return Ok(Some(Refusal::Expired));
        }
        if may_decide(approval, user, false) {
            return Ok(None);
        }
        let email = match self.slack.user_profile(team, user).await {
            Ok(profile) => profile.email,
            Err(e) if e.is_transient() => return Err(HandlerError::retryable(e)),
            Err(e) => {
                warn!(team_id = %team, user_id = %user, error = %e, "users.info failed; not an admin");
                None
            }
        };
        let admin = match email {
            Some(email) => ports
                .store
                .is_org_admin(team, &email)
                .await
                .map_err(approval_err)?,
            None => false,
        };
        Ok((!may_decide(approval, user, admin)).then_some(Refusal::NotAllowed))
    }

    /// Audits the refusal and tells the user; an expired approval is expired now (and its
    /// message says so).
    async fn refuse(
        &self,
        event: &InboundEvent,
        ports: &ApprovalPorts,
        approval: &Approval,
        user: &SlackUserId,
        refusal: Refusal,
    ) -> Result<HandleOutcome, HandlerError> {
        if refusal == Refusal::Expired {
            let expired = ports.store.expire_due(100).await.map_err(approval_err)?;
            for a in &expired {
                service::update_message(ports.slack.as_ref(), a).await;
            }
        }
        ports
            .store
            .refuse(approval, user, refusal, event.id)
            .await
            .map_err(approval_err)?;
        let key = &approval.key;
        if let Err(e) = ports
            .slack
            .post_ephemeral(
                &key.team,
                &key.channel,
                user,
                Some(&key.thread_ts),
                &refusal.message(approval),
            )
            .await
        {
            warn!(approval_id = %approval.id, user_id = %user, error = %e, "could not tell the user the click was refused");
        }
        info!(approval_id = %approval.id, user_id = %user, refusal = refusal.as_str(), "approval click refused");
        Ok(HandleOutcome::Done)
    }

    async fn decide(
        &self,
        event: &InboundEvent,
        ports: &ApprovalPorts,
        approval: &Approval,
        decision: Decision,
        user: &SlackUserId,
        reason: Option<&str>,
    ) -> Result<HandleOutcome, HandlerError> {
        match ports
            .store
            .decide(approval.id, decision, user, reason, event.id)
            .await
            .map_err(approval_err)?
        {
            Some(decided) => {
                info!(approval_id = %decided.id, decision = decision.as_str(), user_id = %user, "approval decided");
                self.after_decision(event, ports, decided).await
            }
            None => {
                // It changed since it was read (expired, or decided through another path).
                let now = ports
                    .store
                    .get(approval.id)
                    .await
                    .map_err(approval_err)?
                    .unwrap_or_else(|| approval.clone());
                let refusal = match now.status {
                    ApprovalStatus::Pending => Refusal::Expired,
                    status => Refusal::AlreadyDecided(status),
                };
                self.refuse(event, ports, &now, user, refusal).await
            }
        }
    }

    /// The message shows the decision; the agent gets its turn.
    async fn after_decision(
        &self,
        event: &InboundEvent,
        ports: &ApprovalPorts,
        approval: Approval,
    ) -> Result<HandleOutcome, HandlerError> {
        if let Some(e) = service::update_message(ports.slack.as_ref(), &approval).await
            && e.is_transient()
        {
            return Err(slack_err(e));
        }
        self.decision_turn(event, &approval).await
    }

    /// The decision as a turn of the conversation, answered once.
    async fn decision_turn(
        &self,
        event: &InboundEvent,
        approval: &Approval,
    ) -> Result<HandleOutcome, HandlerError> {
        let Some(ts) = approval.message_ts.clone() else {
            return Ok(HandleOutcome::Ignored(
                "the approval has no message to answer under".into(),
            ));
        };
        let Some(conversation) = self
            .store
            .find(approval.conversation_id)
            .await
            .map_err(store_err)?
        else {
            return Ok(HandleOutcome::Ignored("the conversation is gone".into()));
        };
        let key = &approval.key;
        let state = self
            .store
            .turn_state(conversation.id, &ts)
            .await
            .map_err(store_err)?;
        let fresh = !state.answered && state.unfinished.is_empty();
        if self
            .answered(event, key, conversation.id, &ts, state)
            .await?
        {
            return Ok(HandleOutcome::Done);
        }
        let decider = approval
            .decided_by
            .clone()
            .ok_or_else(|| HandlerError::permanent("a decided approval without decider"))?;
        let text = decision_text(approval);
        let turn = slack_events::Turn {
            turn_id: TurnId {
                team_id: key.team.clone(),
                channel: key.channel.clone(),
                ts: ts.clone(),
            },
            thread: key.clone(),
            event_id: EventId(event.source_id.clone()),
            author: Author::User(decider.clone()),
            text: text.clone(),
            raw_text: text,
            event_time: Utc::now().timestamp(),
            marks_channel_monitored: false,
        };
        let profile = match self.slack.user_profile(&key.team, &decider).await {
            Ok(p) => p,
            Err(e) => {
                warn!(user_id = %decider, error = %e, "users.info failed");
                UserProfile::default()
            }
        };
        let history = self
            .store
            .history(conversation.id)
            .await
            .map_err(store_err)?;
        let mut agent_turn = self.agent_turn(&conversation, &turn, &profile, history);
        agent_turn.context["approval"] = approval.decision_context();
        self.start_agent_turn(event, conversation.id, &ts).await?;
        match self.agent.process(agent_turn).await {
            Ok(answer) => {
                self.deliver(event, &conversation, &turn, fresh, answer)
                    .await
            }
            Err(e) => self.agent_failed(event, &conversation, &turn, e).await,
        }
    }
}
