//! The simulator's slash commands and assistant pane: `/command` invocations over Socket Mode
//! (`slash_commands` envelopes) and over HTTP (the signed form Slack POSTs to a Request URL),
//! their `response_url`s, `assistant_thread_started`, and the Web API methods
//! `assistant.threads.setSuggestedPrompts`, `assistant.threads.setTitle` and
//! `chat.postEphemeral`, with Slack's argument checks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::api::ApiReply;
use super::config::SimTeam;
use super::server::{Body, Shared};
use super::state::{ApiCall, SimState};
use super::{SignedRequest, SimError, SlackSim};

/// Uses Slack allows per `response_url`.
pub const RESPONSE_URL_USES: u32 = 5;

/// The simulator's slash command state.
#[derive(Debug, Default)]
pub struct CommandsState {
    urls: HashMap<String, ResponseUrl>,
    pub(crate) responses: Vec<SimResponse>,
    /// Teams whose app lacks the assistant feature: `assistant.threads.*` answer
    /// `missing_scope`.
    pub(crate) no_assistant: HashSet<String>,
    next: u64,
}

#[derive(Debug, Clone)]
struct ResponseUrl {
    team_id: String,
    channel_id: String,
    user_id: String,
    uses: u32,
}

/// A message POSTed to a `response_url`.
#[derive(Debug, Clone, Serialize)]
pub struct SimResponse {
    pub team_id: String,
    pub channel_id: String,
    /// The user who ran the command.
    pub user_id: String,
    /// `ephemeral` (Slack's default) or `in_channel`.
    pub response_type: String,
    pub text: String,
}

/// One invocation of a slash command.
#[derive(Debug, Clone)]
pub struct SimCommand {
    /// Unique per invocation.
    pub trigger_id: String,
    pub response_url: String,
    /// The Socket Mode envelope's id (`None` over HTTP).
    pub envelope_id: Option<String>,
    /// The fields Slack sends (the Socket Mode `payload`; the HTTP form's fields).
    pub payload: Value,
}

fn command_payload(
    st: &mut SimState,
    team: &SimTeam,
    channel: &str,
    user: &str,
    command: &str,
    text: &str,
) -> Result<(String, String, Value), SimError> {
    let channel_name = team
        .channels
        .iter()
        .find(|c| c.id == channel)
        .map(|c| c.name.clone())
        .ok_or_else(|| SimError::UnknownChannel {
            team: team.id.clone(),
            channel: channel.into(),
        })?;
    let user_name = team
        .users
        .iter()
        .find(|u| u.id == user)
        .map(|u| u.name.clone())
        .ok_or_else(|| SimError::UnknownUser {
            team: team.id.clone(),
            user: user.into(),
        })?;
    st.commands.next += 1;
    let n = st.commands.next;
    let trigger_id = format!(
        "{}.{}.{}",
        13_345_224_609_u64 + n,
        738_474_920,
        uuid::Uuid::new_v4().simple()
    );
    let url_id = format!("{}/{}/{}", team.id, n, uuid::Uuid::new_v4().simple());
    let response_url = format!("http://127.0.0.1:{}/commands/{url_id}", st.port);
    st.commands.urls.insert(
        url_id,
        ResponseUrl {
            team_id: team.id.clone(),
            channel_id: channel.to_owned(),
            user_id: user.to_owned(),
            uses: 0,
        },
    );
    let verification = st
        .config
        .apps
        .iter()
        .find(|a| a.app_id == team.app_id)
        .map(|a| a.verification_token.clone())
        .unwrap_or_default();
    let payload = json!({
        "token": verification,
        "team_id": team.id,
        "team_domain": team.domain,
        "channel_id": channel,
        "channel_name": channel_name,
        "user_id": user,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": team.app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    });
    Ok((trigger_id, response_url, payload))
}

/// The form body of a payload, in Slack's field order.
fn form_body(payload: &Value) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    if let Some(obj) = payload.as_object() {
        for (k, v) in obj {
            form.append_pair(k, v.as_str().unwrap_or_default());
        }
    }
    form.finish()
}

impl SlackSim {
    /// `user` runs `command text` in `channel`: a `slash_commands` envelope on one of the
    /// app's open Socket Mode connections (`accepts_response_payload: true`). Its ack is in
    /// [`SlackSim::acks`] with the response payload, if any. Fails with
    /// [`SimError::UnknownConnection`] when the app has no open connection (Slack then tells
    /// the user the app did not respond; it never queues a command).
    pub fn slash_command(
        &self,
        team_id: &str,
        channel: &str,
        user: &str,
        command: &str,
        text: &str,
    ) -> Result<SimCommand, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let (trigger_id, response_url, payload) =
                command_payload(st, &team, channel, user, command, text)?;
            let conn = st
                .open_connections()
                .iter()
                .find(|c| c.app_id == team.app_id)
                .map(|c| c.id)
                .ok_or(SimError::UnknownConnection(0))?;
            let envelope_id = uuid::Uuid::new_v4().to_string();
            let frame = json!({
                "envelope_id": envelope_id,
                "payload": payload,
                "type": "slash_commands",
                "accepts_response_payload": true,
            });
            st.send_frame(conn, frame, false);
            Ok(SimCommand {
                trigger_id,
                response_url,
                envelope_id: Some(envelope_id),
                payload,
            })
        })
    }

    /// `user` runs `command text` in `channel`, as Slack POSTs it to the command's Request
    /// URL: the form body and the signing headers made with the app's signing secret now.
    pub fn signed_slash_command(
        &self,
        team_id: &str,
        channel: &str,
        user: &str,
        command: &str,
        text: &str,
    ) -> Result<(SimCommand, SignedRequest), SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            let (trigger_id, response_url, payload) =
                command_payload(st, &team, channel, user, command, text)?;
            let secret = st
                .config
                .apps
                .iter()
                .find(|a| a.app_id == team.app_id)
                .map(|a| a.signing_secret.clone())
                .ok_or_else(|| SimError::UnknownTeam(team_id.into()))?;
            let body = form_body(&payload);
            let now = chrono::Utc::now().timestamp();
            Ok((
                SimCommand {
                    trigger_id,
                    response_url,
                    envelope_id: None,
                    payload,
                },
                SignedRequest {
                    signature: crate::slack::signature::sign(&secret, now, body.as_bytes()),
                    timestamp: now.to_string(),
                    body,
                },
            ))
        })
    }

    /// `user` opens the assistant pane in their DM with the app (`dm`): an
    /// `assistant_thread_started` event for a new thread, whose `thread_ts` is returned.
    pub fn start_assistant_thread(
        &self,
        team_id: &str,
        dm: &str,
        user: &str,
        context_channel: Option<&str>,
    ) -> Result<String, SimError> {
        self.shared.mutate(|st| {
            let team = st.team(team_id)?;
            if !team.channels.iter().any(|c| c.id == dm) {
                return Err(SimError::UnknownChannel {
                    team: team_id.into(),
                    channel: dm.into(),
                });
            }
            let thread_ts = st.next_ts();
            let event = json!({
                "type": "assistant_thread_started",
                "assistant_thread": {
                    "user_id": user,
                    "context": {"channel_id": context_channel, "team_id": team.id, "enterprise_id": null},
                    "channel_id": dm,
                    "thread_ts": thread_ts,
                },
                "event_ts": thread_ts,
            });
            let payload = st.event_callback(&team, event);
            st.enqueue(payload);
            Ok(thread_ts)
        })
    }

    /// Makes the team's app lack (or have) the assistant feature: `assistant.threads.*`
    /// answer `missing_scope`, as Slack does for an app without `assistant:write`.
    pub fn set_assistant_enabled(&self, team_id: &str, enabled: bool) {
        self.shared.mutate(|st| {
            if enabled {
                st.commands.no_assistant.remove(team_id);
            } else {
                st.commands.no_assistant.insert(team_id.to_owned());
            }
        });
    }

    /// Messages POSTed to `response_url`s, oldest first.
    pub fn command_responses(&self) -> Vec<SimResponse> {
        self.shared.read(|st| st.commands.responses.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Web API methods
// ---------------------------------------------------------------------------------------------

/// The methods of this module.
pub(crate) fn handles(method: &str) -> bool {
    matches!(
        method,
        "assistant.threads.setSuggestedPrompts" | "assistant.threads.setTitle"
    )
}

fn param(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A bot token's call of one of [`handles`]'s methods.
pub(crate) fn bot_method(
    st: &mut SimState,
    method: &str,
    team: &SimTeam,
    params: &Map<String, Value>,
) -> ApiReply {
    let known_channel = |id: &str| team.channels.iter().any(|c| c.id == id);
    match method {
        "assistant.threads.setSuggestedPrompts" | "assistant.threads.setTitle" => {
            if st.commands.no_assistant.contains(&team.id) {
                let mut reply = ApiReply::err("missing_scope");
                reply.body["needed"] = json!("assistant:write");
                reply.body["provided"] = json!("chat:write,commands");
                return reply;
            }
            let (Some(channel), Some(_thread_ts)) =
                (param(params, "channel_id"), param(params, "thread_ts"))
            else {
                return ApiReply::err("invalid_arguments");
            };
            if !known_channel(&channel) {
                return ApiReply::err("channel_not_found");
            }
            if method == "assistant.threads.setTitle" {
                return match param(params, "title") {
                    Some(_) => ApiReply::ok(json!({})),
                    None => ApiReply::err("invalid_arguments"),
                };
            }
            let prompts = match params.get("prompts") {
                Some(Value::Array(a)) => a.clone(),
                Some(Value::String(text)) => match serde_json::from_str(text) {
                    Ok(Value::Array(a)) => a,
                    _ => return ApiReply::err("invalid_arguments"),
                },
                _ => return ApiReply::err("invalid_arguments"),
            };
            let well_formed = |p: &Value| {
                ["title", "message"].iter().all(|k| {
                    p.get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                })
            };
            if prompts.is_empty() || prompts.len() > 4 || !prompts.iter().all(well_formed) {
                return ApiReply::err("invalid_arguments");
            }
            ApiReply::ok(json!({}))
        }
        _ => ApiReply::err("unknown_method"),
    }
}

// ---------------------------------------------------------------------------------------------
// response_url
// ---------------------------------------------------------------------------------------------

fn reply(status: u16, body: Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /commands/{id}`: a command's `response_url`. JSON with `text` (or `blocks`), an
/// optional `response_type` (`ephemeral`, the default, or `in_channel`); at most
/// [`RESPONSE_URL_USES`] uses; an unknown URL is 404.
pub(crate) async fn response_url(
    shared: Arc<Shared>,
    id: String,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != hyper::Method::POST {
        return reply(405, json!({"ok": false, "error": "method_not_allowed"}));
    }
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return reply(400, json!({"ok": false, "error": "invalid_payload"})),
    };
    shared.mutate(|st| {
        let parsed: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
        let (status, error) = match (st.commands.urls.get_mut(&id), &parsed) {
            (None, _) => (404, Some("invalid_url")),
            (Some(url), _) if url.uses >= RESPONSE_URL_USES => (404, Some("used_url")),
            (Some(_), None) => (400, Some("invalid_payload")),
            (Some(url), Some(msg)) => {
                let text = param(msg, "text").unwrap_or_default();
                let response_type =
                    param(msg, "response_type").unwrap_or_else(|| "ephemeral".into());
                if text.is_empty() && msg.get("blocks").is_none_or(Value::is_null) {
                    (400, Some("no_text"))
                } else if !matches!(response_type.as_str(), "ephemeral" | "in_channel") {
                    (400, Some("invalid_arguments"))
                } else {
                    url.uses += 1;
                    let url = url.clone();
                    st.commands.responses.push(SimResponse {
                        team_id: url.team_id,
                        channel_id: url.channel_id,
                        user_id: url.user_id,
                        response_type,
                        text,
                    });
                    (200, None)
                }
            }
        };
        let team_id = st.commands.urls.get(&id).map(|u| u.team_id.clone());
        if st.config.record_traffic {
            let mut params = parsed.unwrap_or_default();
            params.insert("response_url_id".into(), json!(id));
            st.calls.push(ApiCall {
                method: "response_url".to_owned(),
                team_id,
                params: Value::Object(params),
                status,
                error: error.map(str::to_owned),
            });
        }
        match error {
            None => reply(200, json!({"ok": true})),
            Some(e) => reply(status, json!({"ok": false, "error": e})),
        }
    })
}
