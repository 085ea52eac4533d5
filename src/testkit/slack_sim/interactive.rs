//! Interactivity in the simulator (issue 14): people click buttons and submit modals, and the
//! app answers with `chat.postEphemeral` and `views.open`.
//!
//! * [`SlackSim::click_button`] builds the `block_actions` payload Slack sends for a click
//!   on a button of a message (the button must be in the message's current blocks: a button
//!   `chat.update` removed cannot be clicked) and delivers it in an `interactive` Socket Mode
//!   envelope; [`SlackSim::click_payload`] only builds it, and
//!   [`SlackSim::signed_interaction_request`] signs one as the form-encoded
//!   `POST /slack/interactions` Slack makes when the app uses a Request URL.
//! * Each click issues a `trigger_id` that `views.open` accepts once, within 3 s, for that
//!   workspace (`invalid_trigger_id`, `exchanged_trigger_id`, `expired_trigger_id`
//!   otherwise); the view is checked like Slack's (`type` modal, a plain-text `title` of at
//!   most 24 characters, at most 100 `blocks`, `callback_id` ≤ 255 and `private_metadata`
//!   ≤ 3000 characters, `submit` required with an input block).
//! * [`SlackSim::submit_view`] submits an opened modal (`view_submission`, with the values of
//!   its input blocks in `view.state.values`).
//! * `chat.postEphemeral` needs a channel, a member of the workspace as `user`, and a text or
//!   blocks; what it showed is kept ([`SlackSim::ephemerals`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::state::{DeliveryInfo, SimState};
use super::{SignedRequest, SimError, SlackSim};

/// How long a `trigger_id` can be exchanged (Slack: 3 seconds).
pub const TRIGGER_TTL: Duration = Duration::from_secs(3);

/// An ephemeral message the app showed one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEphemeral {
    pub team_id: String,
    pub channel: String,
    pub user: String,
    pub thread_ts: Option<String>,
    pub text: String,
}

/// A modal the app opened.
#[derive(Debug, Clone)]
pub struct SimView {
    /// `V…`.
    pub id: String,
    pub hash: String,
    pub team_id: String,
    /// Who clicked (the trigger's user).
    pub user: String,
    /// The view as the app sent it.
    pub view: Value,
    /// Submitted already.
    pub submitted: bool,
}

#[derive(Debug, Clone)]
struct Trigger {
    team_id: String,
    user: String,
    issued: Instant,
    used: bool,
}

/// What the simulator keeps of interactivity.
#[derive(Debug, Default)]
pub(crate) struct InteractiveState {
    triggers: HashMap<String, Trigger>,
    pub(crate) ephemerals: Vec<SimEphemeral>,
    pub(crate) views: Vec<SimView>,
}

/// A click as delivered.
#[derive(Debug, Clone)]
pub struct Click {
    /// The envelope it went out in (for [`SlackSim::redeliver`]); empty when not delivered.
    pub envelope_id: String,
    pub trigger_id: String,
    pub action_ts: String,
    /// The `block_actions` payload.
    pub payload: Value,
}

fn param(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `chat.postEphemeral`.
pub(crate) fn post_ephemeral(
    st: &mut SimState,
    team_id: &str,
    channel: Option<String>,
    params: &Map<String, Value>,
) -> Result<Value, &'static str> {
    let channel = channel.ok_or("channel_not_found")?;
    let team = st.team(team_id).map_err(|_| "team_not_found")?;
    let user = param(params, "user").ok_or("user_not_in_channel")?;
    if !team.users.iter().any(|u| u.id == user) {
        return Err("user_not_in_channel");
    }
    let text = param(params, "text").unwrap_or_default();
    let has_blocks = params.get("blocks").is_some_and(|b| !b.is_null());
    if text.is_empty() && !has_blocks {
        return Err("no_text");
    }
    st.interactive.ephemerals.push(SimEphemeral {
        team_id: team_id.to_owned(),
        channel,
        user,
        thread_ts: param(params, "thread_ts"),
        text,
    });
    Ok(json!({ "message_ts": st.next_ts() }))
}

/// The checks Slack makes on a modal view (the ones a mistake of ours would meet).
fn check_view(view: &Value) -> Result<(), &'static str> {
    if view.get("type").and_then(Value::as_str) != Some("modal") {
        return Err("invalid_arguments");
    }
    let title = &view["title"];
    if title["type"] != "plain_text"
        || title["text"]
            .as_str()
            .is_none_or(|t| t.is_empty() || t.chars().count() > 24)
    {
        return Err("invalid_arguments");
    }
    let Some(blocks) = view["blocks"].as_array() else {
        return Err("invalid_arguments");
    };
    if blocks.len() > 100 {
        return Err("invalid_arguments");
    }
    if view["callback_id"]
        .as_str()
        .is_some_and(|c| c.chars().count() > 255)
        || view["private_metadata"]
            .as_str()
            .is_some_and(|m| m.chars().count() > 3000)
    {
        return Err("invalid_arguments");
    }
    let has_input = blocks.iter().any(|b| b["type"] == "input");
    if has_input && view["submit"]["type"] != "plain_text" {
        return Err("invalid_arguments");
    }
    Ok(())
}

/// `views.open`.
pub(crate) fn views_open(
    st: &mut SimState,
    team_id: &str,
    params: &Map<String, Value>,
) -> Result<Value, &'static str> {
    let trigger_id = param(params, "trigger_id").ok_or("invalid_arguments")?;
    let view: Value = match params.get("view") {
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|_| "invalid_arguments")?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => return Err("invalid_arguments"),
    };
    let trigger = st
        .interactive
        .triggers
        .get_mut(&trigger_id)
        .filter(|t| t.team_id == team_id)
        .ok_or("invalid_trigger_id")?;
    if trigger.used {
        return Err("exchanged_trigger_id");
    }
    if trigger.issued.elapsed() > TRIGGER_TTL {
        return Err("expired_trigger_id");
    }
    // A view Slack refuses leaves the trigger unused.
    check_view(&view)?;
    trigger.used = true;
    let user = trigger.user.clone();
    let id = format!("V{:010}", st.next_seq());
    let hash = format!("{}.{:08x}", st.next_ts(), st.next_seq());
    st.interactive.views.push(SimView {
        id: id.clone(),
        hash: hash.clone(),
        team_id: team_id.to_owned(),
        user,
        view: view.clone(),
        submitted: false,
    });
    let mut shown = view;
    if let Some(obj) = shown.as_object_mut() {
        obj.insert("id".into(), json!(id));
        obj.insert("hash".into(), json!(hash));
        obj.insert("team_id".into(), json!(team_id));
    }
    Ok(json!({ "view": shown }))
}

impl SimState {
    /// Modals the app opened (for [`SlackSim::wait_for`] predicates).
    pub fn views(&self) -> &[SimView] {
        &self.interactive.views
    }

    /// Ephemeral messages the app showed.
    pub fn ephemerals(&self) -> &[SimEphemeral] {
        &self.interactive.ephemerals
    }

    fn issue_trigger(&mut self, team_id: &str, user: &str) -> String {
        let seq = self.next_seq();
        let id = format!(
            "{}.{:012}.{:032x}",
            1_700_000_000_000u64 + seq,
            seq,
            uuid::Uuid::new_v4().as_u128()
        );
        self.interactive.triggers.insert(
            id.clone(),
            Trigger {
                team_id: team_id.to_owned(),
                user: user.to_owned(),
                issued: Instant::now(),
                used: false,
            },
        );
        id
    }

    /// Queues `payload` in an `interactive` envelope (delivered like events: round robin,
    /// redelivered until acknowledged).
    pub(crate) fn enqueue_interactive(&mut self, team_id: &str, payload: Value) -> String {
        let envelope_id = uuid::Uuid::new_v4().to_string();
        let app_id = payload["api_app_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let info = DeliveryInfo {
            envelope_id: envelope_id.clone(),
            event_id: String::new(),
            team_id: team_id.to_owned(),
            app_id,
            event_type: payload["type"].as_str().unwrap_or_default().to_owned(),
            ts: None,
            sends: 0,
            retry_attempt: 0,
            acked: false,
            exhausted: false,
            first_sent_at: None,
            acked_at: None,
            payload,
            envelope_type: "interactive".to_owned(),
        };
        self.delivery_index
            .insert(envelope_id.clone(), self.deliveries.len());
        self.deliveries.push(info);
        self.send_delivery(self.deliveries.len() - 1, 0, "");
        envelope_id
    }

    fn user_object(&self, team_id: &str, user: &str) -> Result<Value, SimError> {
        let team = self.team(team_id)?;
        let u = team
            .users
            .iter()
            .find(|u| u.id == user)
            .ok_or_else(|| SimError::UnknownUser {
                team: team_id.into(),
                user: user.into(),
            })?;
        Ok(json!({"id": u.id, "username": u.name, "name": u.name, "team_id": team_id}))
    }

    fn click_payload(
        &mut self,
        team_id: &str,
        channel: &str,
        message_ts: &str,
        user: &str,
        action_id: &str,
    ) -> Result<Click, SimError> {
        let team = self.team(team_id)?;
        let user_obj = self.user_object(team_id, user)?;
        let unknown = || SimError::UnknownMessage {
            channel: channel.into(),
            ts: message_ts.into(),
        };
        let message = self
            .messages_in(team_id, channel)
            .iter()
            .rev()
            .find(|m| m.ts == message_ts && !m.deleted)
            .cloned()
            .ok_or_else(unknown)?;
        // The button as the message shows it now.
        // A form body carries the blocks as JSON text.
        let blocks = match &message.blocks {
            Some(Value::String(text)) => serde_json::from_str(text).ok(),
            other => other.clone(),
        };
        let (block_id, button) = blocks
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| {
                let block_id = b["block_id"].as_str().unwrap_or_default().to_owned();
                b["elements"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |e| (block_id.clone(), e))
            })
            .find(|(_, e)| e["type"] == "button" && e["action_id"] == action_id)
            .ok_or_else(unknown)?;
        let channel_name = team
            .channels
            .iter()
            .find(|c| c.id == channel)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let trigger_id = self.issue_trigger(team_id, user);
        let action_ts = self.next_ts();
        let mut container = json!({"type": "message", "message_ts": message_ts,
            "channel_id": channel, "is_ephemeral": false});
        let mut msg = json!({"type": "message", "user": message.user, "ts": message.ts,
            "bot_id": message.bot_id, "text": message.text, "team": team_id,
            "blocks": blocks});
        if let Some(thread_ts) = &message.thread_ts {
            container["thread_ts"] = json!(thread_ts);
            msg["thread_ts"] = json!(thread_ts);
        }
        let verification = self
            .config
            .apps
            .iter()
            .find(|a| a.app_id == team.app_id)
            .map(|a| a.verification_token.clone())
            .unwrap_or_default();
        let mut action = json!({"action_id": action_id, "block_id": block_id,
            "text": button["text"], "type": "button", "action_ts": action_ts});
        if let Some(value) = button.get("value") {
            action["value"] = value.clone();
        }
        if let Some(style) = button.get("style") {
            action["style"] = style.clone();
        }
        let seq = self.next_seq();
        let response_url = format!("http://127.0.0.1:{}/actions/{team_id}/{seq}", self.port);
        let payload = json!({
            "type": "block_actions",
            "user": user_obj,
            "api_app_id": team.app_id,
            "token": verification,
            "container": container,
            "trigger_id": trigger_id,
            "team": {"id": team_id, "domain": team.domain},
            "enterprise": null,
            "is_enterprise_install": false,
            "channel": {"id": channel, "name": channel_name},
            "message": msg,
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [action],
        });
        Ok(Click {
            envelope_id: String::new(),
            trigger_id,
            action_ts,
            payload,
        })
    }
}

impl SlackSim {
    /// `user` clicks the button `action_id` of the message `message_ts`: the `block_actions`
    /// payload goes to the app in an `interactive` envelope. Fails with
    /// [`SimError::UnknownMessage`] when the message has no such button (any more).
    pub fn click_button(
        &self,
        team_id: &str,
        channel: &str,
        message_ts: &str,
        user: &str,
        action_id: &str,
    ) -> Result<Click, SimError> {
        self.shared.mutate(|st| {
            let mut click = st.click_payload(team_id, channel, message_ts, user, action_id)?;
            click.envelope_id = st.enqueue_interactive(team_id, click.payload.clone());
            Ok(click)
        })
    }

    /// The `block_actions` payload of a click, not delivered (for the HTTP Request URL, or to
    /// deliver it again).
    pub fn click_payload(
        &self,
        team_id: &str,
        channel: &str,
        message_ts: &str,
        user: &str,
        action_id: &str,
    ) -> Result<Click, SimError> {
        self.shared
            .mutate(|st| st.click_payload(team_id, channel, message_ts, user, action_id))
    }

    /// Delivers an interaction payload (again) in a new `interactive` envelope.
    pub fn deliver_interaction(&self, team_id: &str, payload: Value) -> String {
        self.shared
            .mutate(|st| st.enqueue_interactive(team_id, payload))
    }

    /// The form-encoded, signed `POST /slack/interactions` Slack sends for `payload` with the
    /// workspace's app's signing secret at the current time.
    pub fn signed_interaction_request(
        &self,
        team_id: &str,
        payload: &Value,
    ) -> Result<SignedRequest, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let secret = st
                .config
                .apps
                .iter()
                .find(|a| a.app_id == team.app_id)
                .map(|a| a.signing_secret.clone())
                .ok_or_else(|| SimError::UnknownTeam(team_id.into()))?;
            let body: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("payload", &payload.to_string())
                .finish();
            let now = chrono::Utc::now().timestamp();
            Ok(SignedRequest {
                signature: crate::slack::signature::sign(&secret, now, body.as_bytes()),
                timestamp: now.to_string(),
                body,
            })
        })
    }

    /// The user who opened the latest unsubmitted modal submits it, with `values` for its
    /// input blocks (`block_id` → text); delivered in an `interactive` envelope. Returns the
    /// envelope id and the payload.
    pub fn submit_view(
        &self,
        team_id: &str,
        values: &[(&str, &str)],
    ) -> Result<(String, Value), SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let idx = st
                .interactive
                .views
                .iter()
                .rposition(|v| v.team_id == team_id && !v.submitted)
                .ok_or_else(|| SimError::UnknownEnvelope("no open view".into()))?;
            st.interactive.views[idx].submitted = true;
            let view = st.interactive.views[idx].clone();
            let user_obj = st.user_object(team_id, &view.user)?;
            let mut state = Map::new();
            for block in view.view["blocks"].as_array().into_iter().flatten() {
                if block["type"] != "input" {
                    continue;
                }
                let block_id = block["block_id"].as_str().unwrap_or_default();
                let action_id = block["element"]["action_id"].as_str().unwrap_or_default();
                let value = values
                    .iter()
                    .find(|(b, _)| *b == block_id)
                    .map(|(_, v)| json!(v))
                    .unwrap_or(Value::Null);
                state.insert(
                    block_id.to_owned(),
                    json!({ action_id: {"type": block["element"]["type"], "value": value} }),
                );
            }
            let mut shown = view.view.clone();
            if let Some(obj) = shown.as_object_mut() {
                obj.insert("id".into(), json!(view.id));
                obj.insert("hash".into(), json!(view.hash));
                obj.insert("team_id".into(), json!(team_id));
                obj.insert("app_id".into(), json!(team.app_id));
                obj.insert("bot_id".into(), json!(team.bot_id));
                obj.insert("root_view_id".into(), json!(view.id));
                obj.insert("previous_view_id".into(), Value::Null);
                obj.insert("state".into(), json!({ "values": state }));
            }
            let payload = json!({
                "type": "view_submission",
                "team": {"id": team_id, "domain": team.domain},
                "user": user_obj,
                "api_app_id": team.app_id,
                "token": "",
                "trigger_id": st.issue_trigger(team_id, &view.user),
                "view": shown,
                "response_urls": [],
                "is_enterprise_install": false,
                "enterprise": null,
            });
            let envelope = st.enqueue_interactive(team_id, payload.clone());
            Ok((envelope, payload))
        })
    }

    /// Ephemeral messages the app showed.
    pub fn ephemerals(&self) -> Vec<SimEphemeral> {
        self.with_state(|st| st.interactive.ephemerals.clone())
    }

    /// Modals the app opened.
    pub fn views(&self) -> Vec<SimView> {
        self.with_state(|st| st.interactive.views.clone())
    }
}
