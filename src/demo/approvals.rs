//! `/approve` and `/deny [reason]` in the demo chat (issue 14): the current user clicks the
//! buttons of the latest pending approval in #ops through the simulator, exactly as Slack
//! would deliver the click (and, for Deny, the modal's submission). `/as bob` first shows
//! a refusal for someone who may not decide.

use std::time::Duration;

use infragpt_actors::approvals::{APPROVE_ACTION, DENY_ACTION};
use infragpt_actors::ids::MessageTs;

use super::{OPS_CHANNEL, TEAM_ID, replay};
use crate::testkit::slack_sim::{SimMessage, SimState, SimUser, SlackSim};

fn has_buttons(m: &SimMessage) -> bool {
    m.bot_id.is_some()
        && m.blocks
            .as_ref()
            .is_some_and(|b| b.to_string().contains(APPROVE_ACTION))
}

/// The latest message with approval buttons in #ops.
fn pending(s: &SimState) -> Option<SimMessage> {
    s.messages_in(TEAM_ID, OPS_CHANNEL)
        .iter()
        .filter(|m| has_buttons(m))
        .max_by(|a, b| a.ts.cmp(&b.ts))
        .cloned()
}

/// What a click did.
pub(crate) struct Decided {
    /// What to print: the refusal, or the updated request.
    pub lines: Vec<String>,
    /// When a decision was made, the thread and the ts after which the agent's answer to it
    /// (its decision turn) is the next bot message.
    pub awaits: Option<(String, MessageTs)>,
}

/// Clicks as `user`.
pub(crate) async fn decide(
    sim: &SlackSim,
    user: &SimUser,
    deny: Option<Option<String>>,
    timeout: Duration,
) -> Result<Decided, String> {
    let request = sim
        .with_state(pending)
        .ok_or("no pending approval in #ops: ask the agent to restart something first")?;
    let thread = request
        .thread_ts
        .clone()
        .unwrap_or_else(|| request.ts.clone());
    // The thread's latest message now: the decision turn's answer comes after it.
    let latest = sim.with_state(|s| {
        s.messages_in(TEAM_ID, OPS_CHANNEL)
            .iter()
            .filter(|m| m.thread_ts.as_deref() == Some(thread.as_str()) || m.ts == thread)
            .filter_map(|m| MessageTs::parse(m.ts.as_str()).ok())
            .max_by(|a, b| a.chrono_cmp(b))
    });
    let (ephemerals, views) = sim.with_state(|s| (s.ephemerals().len(), s.views().len()));
    let action = if deny.is_some() {
        DENY_ACTION
    } else {
        APPROVE_ACTION
    };
    sim.click_button(TEAM_ID, OPS_CHANNEL, &request.ts, &user.id, action)
        .map_err(|e| e.to_string())?;
    let told = |s: &SimState| s.ephemerals().len() > ephemerals;
    if let Some(reason) = deny {
        sim.wait_for(|s| told(s) || s.views().len() > views, timeout)
            .await
            .map_err(|_| "the deny modal did not open".to_owned())?;
        if sim.with_state(|s| s.views().len() > views) {
            let reason = reason.unwrap_or_default();
            sim.submit_view(TEAM_ID, &[("reason", reason.as_str())])
                .map_err(|e| e.to_string())?;
        }
    }
    let updated = |s: &SimState| {
        s.messages_in(TEAM_ID, OPS_CHANNEL)
            .iter()
            .any(|m| m.ts == request.ts && m.updates > request.updates)
    };
    sim.wait_for(|s| told(s) || updated(s), timeout)
        .await
        .map_err(|_| format!("nothing happened within {}s", timeout.as_secs()))?;
    let mut out = Vec::new();
    for e in sim.with_state(|s| s.ephemerals()[ephemerals..].to_vec()) {
        out.push(format!("(only {} sees this) {}", user.name, e.text));
    }
    let mut awaits = None;
    if let Some(now) = sim.with_state(|s| {
        s.messages_in(TEAM_ID, OPS_CHANNEL)
            .iter()
            .find(|m| m.ts == request.ts && m.updates > request.updates)
            .cloned()
    }) {
        awaits = latest.map(|after| (thread.clone(), after));
        out.push("the request now reads:".to_owned());
        out.extend(
            now.blocks
                .as_ref()
                .map(replay::block_lines)
                .unwrap_or_default()
                .into_iter()
                .map(|l| format!("  {l}")),
        );
    }
    Ok(Decided { lines: out, awaits })
}
