//! Web API methods of the simulator, answered in Slack's shapes.

use std::collections::BTreeMap;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::events;
use super::state::{ApiCall, SimMessage, SimState, TokenKind};

/// What the HTTP layer sends back.
#[derive(Debug)]
pub(crate) struct ApiReply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl ApiReply {
    pub(crate) fn ok(mut body: Value) -> Self {
        if let Some(obj) = body.as_object_mut() {
            obj.insert("ok".into(), Value::Bool(true));
        }
        Self {
            status: 200,
            retry_after: None,
            body,
        }
    }

    pub(crate) fn err(error: &str) -> Self {
        Self {
            status: 200,
            retry_after: None,
            body: json!({"ok": false, "error": error}),
        }
    }
}

/// Credentials presented with a request.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    pub bearer: Option<String>,
    pub basic: Option<(String, String)>,
}

fn param(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

enum Auth {
    Bot { team_id: String },
    App { app_id: String },
}

fn authenticate(
    st: &SimState,
    creds: &Credentials,
    params: &Map<String, Value>,
) -> Result<Auth, &'static str> {
    let token = creds
        .bearer
        .clone()
        .or_else(|| param(params, "token"))
        .ok_or("not_authed")?;
    let info = st.tokens.get(&token).ok_or("invalid_auth")?;
    if info.revoked {
        return Err("token_revoked");
    }
    if info.expires_at.is_some_and(|at| Instant::now() >= at) {
        return Err("token_expired");
    }
    match &info.kind {
        TokenKind::Bot { team_id } => {
            if st.invalid_auth_teams.contains(team_id) {
                return Err("invalid_auth");
            }
            Ok(Auth::Bot {
                team_id: team_id.clone(),
            })
        }
        TokenKind::App { app_id } => Ok(Auth::App {
            app_id: app_id.clone(),
        }),
    }
}

/// Handles one Web API call and records it.
pub(crate) fn handle(
    st: &mut SimState,
    method: &str,
    creds: &Credentials,
    params: Map<String, Value>,
) -> ApiReply {
    let (reply, team_id) = dispatch(st, method, creds, &params);
    if !st.config.record_traffic {
        return reply;
    }
    let mut recorded = params;
    recorded.remove("token");
    recorded.remove("client_secret");
    recorded.remove("refresh_token");
    st.calls.push(ApiCall {
        method: method.to_owned(),
        team_id,
        params: Value::Object(recorded),
        status: reply.status,
        error: reply.body["error"].as_str().map(str::to_owned),
    });
    reply
}

fn dispatch(
    st: &mut SimState,
    method: &str,
    creds: &Credentials,
    params: &Map<String, Value>,
) -> (ApiReply, Option<String>) {
    if let Some(fault) = st.server_errors.get_mut(method)
        && fault.remaining > 0
    {
        fault.remaining -= 1;
        let fault = *fault;
        let team_id = if fault.after_effect {
            dispatch_call(st, method, creds, params).1
        } else {
            None
        };
        return (
            ApiReply {
                status: fault.status,
                retry_after: None,
                body: json!({"ok": false, "error": "internal_error"}),
            },
            team_id,
        );
    }
    dispatch_call(st, method, creds, params)
}

fn dispatch_call(
    st: &mut SimState,
    method: &str,
    creds: &Credentials,
    params: &Map<String, Value>,
) -> (ApiReply, Option<String>) {
    if let Some((remaining, retry_after)) = st.rate_limits.get_mut(method)
        && *remaining > 0
    {
        *remaining -= 1;
        let retry_after = *retry_after;
        return (
            ApiReply {
                status: 429,
                retry_after: Some(retry_after),
                body: json!({"ok": false, "error": "ratelimited"}),
            },
            None,
        );
    }
    if method == "oauth.v2.access" {
        return (oauth_access(st, creds, params), None);
    }
    let auth = match authenticate(st, creds, params) {
        Ok(auth) => auth,
        Err(error) => return (ApiReply::err(error), None),
    };
    match (method, auth) {
        ("apps.connections.open", Auth::App { app_id }) => {
            let ticket = uuid::Uuid::new_v4().to_string();
            st.tickets.insert(ticket.clone(), app_id.clone());
            let url = format!(
                "ws://127.0.0.1:{}/link/?ticket={ticket}&app_id={app_id}",
                st.port
            );
            (ApiReply::ok(json!({ "url": url })), None)
        }
        ("apps.connections.open", Auth::Bot { team_id }) => {
            (ApiReply::err("not_allowed_token_type"), Some(team_id))
        }
        (_, Auth::App { .. }) => (ApiReply::err("not_allowed_token_type"), None),
        (method, Auth::Bot { team_id }) => {
            let reply = bot_method(st, method, &team_id, creds, params);
            (reply, Some(team_id))
        }
    }
}

fn bot_method(
    st: &mut SimState,
    method: &str,
    team_id: &str,
    creds: &Credentials,
    params: &Map<String, Value>,
) -> ApiReply {
    let Some(team) = st.team(team_id).ok() else {
        return ApiReply::err("team_not_found");
    };
    let resolve_channel = |raw: Option<String>| -> Option<String> {
        let raw = raw?;
        let name = raw.trim_start_matches('#');
        team.channels
            .iter()
            .find(|c| c.id == raw || c.name == name)
            .map(|c| c.id.clone())
    };
    match method {
        "auth.test" => ApiReply::ok(json!({
            "url": format!("https://{}.slack.com/", team.domain),
            "team": team.name,
            "user": team.bot_name,
            "team_id": team.id,
            "user_id": team.bot_user_id,
            "bot_id": team.bot_id,
            "is_enterprise_install": false
        })),
        "auth.revoke" => {
            let token = creds.bearer.clone().or_else(|| param(params, "token"));
            let test = param(params, "test").is_some_and(|t| t == "true" || t == "1");
            if !test && let Some(info) = token.and_then(|t| st.tokens.get_mut(&t)) {
                info.revoked = true;
            }
            ApiReply::ok(json!({ "revoked": !test }))
        }
        "chat.postMessage" => {
            let Some(channel) = resolve_channel(param(params, "channel")) else {
                return ApiReply::err("channel_not_found");
            };
            let text = param(params, "text").unwrap_or_default();
            let has_blocks = params.get("blocks").is_some_and(|b| !b.is_null());
            if text.is_empty() && !has_blocks {
                return ApiReply::err("no_text");
            }
            let metadata = match message_metadata(params) {
                Ok(m) => m,
                Err(error) => return ApiReply::err(error),
            };
            let thread_ts = param(params, "thread_ts");
            let ts = st.next_ts();
            let parent_user = thread_ts
                .as_deref()
                .and_then(|t| st.parent_user(team_id, &channel, t));
            st.store_message(
                team_id,
                &channel,
                SimMessage {
                    ts: ts.clone(),
                    user: team.bot_user_id.clone(),
                    bot_id: Some(team.bot_id.clone()),
                    text: text.clone(),
                    thread_ts: thread_ts.clone(),
                    reactions: BTreeMap::new(),
                    deleted: false,
                    metadata,
                    files: Vec::new(),
                    blocks: params.get("blocks").filter(|b| !b.is_null()).cloned(),
                    updates: 0,
                },
            );
            if let Some(thread) = &thread_ts {
                // Slack clears the assistant status when the app replies in the thread.
                st.thread_status
                    .remove(&(team_id.to_owned(), channel.clone(), thread.clone()));
            }
            st.notify_bot_post(super::state::BotPost {
                team_id: team_id.to_owned(),
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts: thread_ts.clone(),
                text: text.clone(),
                at: std::time::Instant::now(),
            });
            let message = events::bot_message(
                &team,
                &channel,
                &ts,
                &text,
                thread_ts.as_deref(),
                parent_user.as_deref(),
            );
            if st.config.echo_bot_messages && st.config.subscriptions.message {
                let mut event = message.clone();
                if let Some(obj) = event.as_object_mut() {
                    obj.insert("channel".into(), json!(channel));
                    obj.insert("event_ts".into(), json!(ts));
                    obj.insert("channel_type".into(), json!(events::channel_type(&channel)));
                }
                let payload = st.event_callback(&team, event);
                st.enqueue(payload);
            }
            ApiReply::ok(json!({ "channel": channel, "ts": ts, "message": message }))
        }
        "files.getUploadURLExternal" => {
            let Some(filename) = param(params, "filename").filter(|f| !f.is_empty()) else {
                return ApiReply::err("invalid_arguments");
            };
            let Some(length) = param(params, "length")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| *l > 0)
            else {
                return ApiReply::err("invalid_arguments");
            };
            let file_id = format!("F{:010}", st.next_seq());
            st.uploads.insert(
                file_id.clone(),
                super::state::PendingUpload {
                    team_id: team_id.to_owned(),
                    filename,
                    length,
                    content: None,
                },
            );
            let upload_url = format!("http://127.0.0.1:{}/upload/{file_id}", st.port);
            ApiReply::ok(json!({ "upload_url": upload_url, "file_id": file_id }))
        }
        "files.completeUploadExternal" => {
            // `files` is a JSON array, or its text in a form body.
            let files: Vec<Value> = match params.get("files") {
                Some(Value::Array(a)) => a.clone(),
                Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_default(),
                _ => Vec::new(),
            };
            if files.is_empty() {
                return ApiReply::err("invalid_arguments");
            }
            let Some(channel) = resolve_channel(param(params, "channel_id")) else {
                return ApiReply::err("channel_not_found");
            };
            let thread_ts = param(params, "thread_ts");
            let mut shared = Vec::new();
            for file in &files {
                let id = file["id"].as_str().unwrap_or_default();
                let ready = st.uploads.get(id).is_some_and(|u| {
                    u.team_id == team_id && u.content.as_ref().is_some_and(|c| c.len() == u.length)
                });
                if !ready {
                    return ApiReply::err("file_not_found");
                }
                shared.push((id.to_owned(), file["title"].as_str().map(str::to_owned)));
            }
            let comment = param(params, "initial_comment").unwrap_or_default();
            let ts = st.next_ts();
            st.store_message(
                team_id,
                &channel,
                SimMessage {
                    ts,
                    user: team.bot_user_id.clone(),
                    bot_id: Some(team.bot_id.clone()),
                    text: comment,
                    thread_ts: thread_ts.clone(),
                    reactions: BTreeMap::new(),
                    deleted: false,
                    metadata: None,
                    files: shared.iter().map(|(id, _)| id.clone()).collect(),
                    blocks: None,
                    updates: 0,
                },
            );
            let mut out = Vec::new();
            for (id, title) in shared {
                let Some(upload) = st.uploads.remove(&id) else {
                    continue;
                };
                out.push(json!({ "id": id, "title": title.clone().unwrap_or_else(|| upload.filename.clone()) }));
                st.files.push(super::state::SimFile {
                    id,
                    team_id: team_id.to_owned(),
                    channel: channel.clone(),
                    thread_ts: thread_ts.clone(),
                    filename: upload.filename,
                    title,
                    content: upload.content.unwrap_or_default(),
                });
            }
            ApiReply::ok(json!({ "files": out }))
        }
        "reactions.add" => {
            let Some(channel) = resolve_channel(param(params, "channel")) else {
                return ApiReply::err("channel_not_found");
            };
            let Some(name) = param(params, "name") else {
                return ApiReply::err("invalid_name");
            };
            let Some(ts) = param(params, "timestamp") else {
                return ApiReply::err("no_item_specified");
            };
            let bot_user = team.bot_user_id.clone();
            match st.find_message_mut(team_id, &channel, &ts) {
                None => ApiReply::err("message_not_found"),
                Some(msg) => {
                    let users = msg
                        .reactions
                        .entry(name.trim_matches(':').to_owned())
                        .or_default();
                    if users.contains(&bot_user) {
                        ApiReply::err("already_reacted")
                    } else {
                        users.push(bot_user);
                        ApiReply::ok(json!({}))
                    }
                }
            }
        }
        "users.info" => {
            let Some(user_id) = param(params, "user") else {
                return ApiReply::err("user_not_found");
            };
            if user_id == team.bot_user_id {
                return ApiReply::ok(json!({ "user": {
                    "id": team.bot_user_id, "team_id": team.id, "name": team.bot_name,
                    "deleted": false, "real_name": team.bot_name, "is_bot": true,
                    "is_app_user": false, "updated": 1_700_000_000,
                    "profile": { "real_name": team.bot_name, "display_name": "",
                                 "bot_id": team.bot_id, "team": team.id }
                }}));
            }
            match team.users.iter().find(|u| u.id == user_id) {
                None => ApiReply::err("user_not_found"),
                Some(u) => ApiReply::ok(json!({ "user": {
                    "id": u.id, "team_id": team.id, "name": u.name, "deleted": false,
                    "color": "9f69e7", "real_name": u.real_name, "tz": "Europe/London",
                    "tz_label": "Greenwich Mean Time", "tz_offset": 0,
                    "is_admin": false, "is_owner": false, "is_primary_owner": false,
                    "is_restricted": false, "is_ultra_restricted": false,
                    "is_bot": false, "is_app_user": false, "updated": 1_700_000_000,
                    "profile": { "real_name": u.real_name, "real_name_normalized": u.real_name,
                                 "display_name": u.name, "display_name_normalized": u.name,
                                 "email": u.email, "team": team.id }
                }})),
            }
        }
        "chat.update" => {
            let Some(channel) = resolve_channel(param(params, "channel")) else {
                return ApiReply::err("channel_not_found");
            };
            let Some(ts) = param(params, "ts") else {
                return ApiReply::err("message_not_found");
            };
            let text = param(params, "text");
            let blocks = params.get("blocks").filter(|b| !b.is_null()).cloned();
            if text.as_deref().is_none_or(str::is_empty) && blocks.is_none() {
                return ApiReply::err("no_text");
            }
            let metadata = match message_metadata(params) {
                Ok(m) => m,
                Err(error) => return ApiReply::err(error),
            };
            let bot_user = team.bot_user_id.clone();
            match st.find_message_mut(team_id, &channel, &ts) {
                None => ApiReply::err("message_not_found"),
                Some(m) if m.deleted => ApiReply::err("message_not_found"),
                Some(m) if m.user != bot_user => ApiReply::err("cant_update_message"),
                Some(m) => {
                    if let Some(text) = text {
                        m.text = text;
                    }
                    if blocks.is_some() {
                        m.blocks = blocks;
                    }
                    if metadata.is_some() {
                        m.metadata = metadata;
                    }
                    m.updates += 1;
                    let text = m.text.clone();
                    ApiReply::ok(json!({ "channel": channel, "ts": ts, "text": text }))
                }
            }
        }
        "chat.delete" => {
            // Slack's checks: the channel, the message, and that a bot deletes only its own.
            let Some(channel) = resolve_channel(param(params, "channel")) else {
                return ApiReply::err("channel_not_found");
            };
            let Some(ts) = param(params, "ts") else {
                return ApiReply::err("message_not_found");
            };
            let bot_user = team.bot_user_id.clone();
            match st.find_message_mut(team_id, &channel, &ts) {
                None => ApiReply::err("message_not_found"),
                Some(m) if m.deleted => ApiReply::err("message_not_found"),
                Some(m) if m.user != bot_user => ApiReply::err("cant_delete_message"),
                Some(m) => {
                    m.deleted = true;
                    ApiReply::ok(json!({ "channel": channel, "ts": ts }))
                }
            }
        }
        "assistant.threads.setStatus" => {
            // Slack's checks: the three arguments (an empty status clears it), the channel,
            // the thread's parent message; the feature (scope) of the app.
            let (Some(channel), Some(thread_ts), Some(status)) = (
                param(params, "channel_id"),
                param(params, "thread_ts"),
                params.get("status").and_then(Value::as_str),
            ) else {
                return ApiReply::err("invalid_arguments");
            };
            if st.commands.no_assistant.contains(team_id) {
                let mut reply = ApiReply::err("missing_scope");
                reply.body["needed"] = json!("assistant:write");
                return reply;
            }
            let Some(channel) = resolve_channel(Some(channel)) else {
                return ApiReply::err("channel_not_found");
            };
            let messages = st.messages_in(team_id, &channel);
            if !messages.iter().any(|m| m.ts == thread_ts) {
                return ApiReply::err("invalid_thread_ts");
            }
            let messages_before = messages
                .iter()
                .filter(|m| m.ts == thread_ts || m.thread_ts.as_deref() == Some(&thread_ts))
                .count();
            let key = (team_id.to_owned(), channel.clone(), thread_ts.clone());
            if status.is_empty() {
                st.thread_status.remove(&key);
            } else {
                st.thread_status.insert(key, status.to_owned());
            }
            st.statuses.push(super::state::StatusChange {
                team_id: team_id.to_owned(),
                channel,
                thread_ts,
                status: status.to_owned(),
                messages_before,
            });
            ApiReply::ok(json!({}))
        }
        "chat.postEphemeral" => {
            let channel = resolve_channel(param(params, "channel"));
            match super::interactive::post_ephemeral(st, team_id, channel, params) {
                Ok(body) => ApiReply::ok(body),
                Err(error) => ApiReply::err(error),
            }
        }
        "views.open" => match super::interactive::views_open(st, team_id, params) {
            Ok(body) => ApiReply::ok(body),
            Err(error) => ApiReply::err(error),
        },
        "conversations.history" => conversations_history(st, team_id, &resolve_channel, params),
        "conversations.replies" => conversations_replies(st, team_id, &resolve_channel, params),
        "conversations.info" => {
            let Some(channel_id) = param(params, "channel") else {
                return ApiReply::err("channel_not_found");
            };
            match team.channels.iter().find(|c| c.id == channel_id) {
                None => ApiReply::err("channel_not_found"),
                Some(c) => {
                    let is_im = c.id.starts_with('D');
                    ApiReply::ok(json!({ "channel": {
                        "id": c.id, "name": c.name, "name_normalized": c.name,
                        "is_channel": !c.is_private && !is_im, "is_group": c.is_private,
                        "is_im": is_im, "is_mpim": false, "is_private": c.is_private || is_im,
                        "created": 1_600_000_000, "is_archived": false,
                        "is_general": c.name == "general", "unlinked": 0,
                        "is_shared": false, "is_org_shared": false, "is_ext_shared": false,
                        "is_pending_ext_shared": false, "is_member": true,
                        "creator": team.users.first().map(|u| u.id.clone()).unwrap_or_default(),
                        "topic": { "value": "", "creator": "", "last_set": 0 },
                        "purpose": { "value": "", "creator": "", "last_set": 0 },
                        "previous_names": []
                    }}))
                }
            }
        }
        m if super::commands::handles(m) => super::commands::bot_method(st, m, &team, params),
        _ => ApiReply::err("unknown_method"),
    }
}

/// `metadata` of `chat.postMessage`: a JSON object in a JSON body, its JSON text in a form
/// field. Slack answers `invalid_metadata_format` for what is not such an object with an
/// `event_type` string and an `event_payload` object, and `invalid_metadata_schema` for an
/// `event_type` other than lowercase letters, digits and underscores.
fn message_metadata(params: &Map<String, Value>) -> Result<Option<Value>, &'static str> {
    let value = match params.get("metadata") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.is_empty() => return Ok(None),
        Some(Value::String(text)) => {
            serde_json::from_str::<Value>(text).map_err(|_| "invalid_metadata_format")?
        }
        Some(other) => other.clone(),
    };
    let event_type = value
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or("invalid_metadata_format")?;
    if !value.get("event_payload").is_some_and(Value::is_object) {
        return Err("invalid_metadata_format");
    }
    let well_formed = !event_type.is_empty()
        && event_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Err("invalid_metadata_schema");
    }
    Ok(Some(json!({
        "event_type": event_type,
        "event_payload": value["event_payload"],
    })))
}

/// `conversations.replies`: the parent message first, then its replies in order. Paginated
/// like Slack: `limit` (default and at most 1 000), and while more remain `has_more: true`
/// with `response_metadata.next_cursor` (an opaque `next_ts:` cursor); `oldest`/`latest`
/// bound the replies (exclusive unless `inclusive`). `metadata` is in the messages only with
/// `include_all_metadata=true`. Choice where Slack's documentation is silent: the parent is on
/// the first page only, whatever `oldest` says.
fn conversations_replies(
    st: &SimState,
    team_id: &str,
    resolve_channel: &dyn Fn(Option<String>) -> Option<String>,
    params: &Map<String, Value>,
) -> ApiReply {
    let Some(channel) = resolve_channel(param(params, "channel")) else {
        return ApiReply::err("channel_not_found");
    };
    let Some(ts) = param(params, "ts") else {
        return ApiReply::err("thread_not_found");
    };
    let messages = st.messages_in(team_id, &channel);
    let Some(parent) = messages.iter().find(|m| m.ts == ts && !m.deleted) else {
        return ApiReply::err("thread_not_found");
    };
    let flag = |key: &str| param(params, key).is_some_and(|v| v == "true" || v == "1");
    let with_metadata = flag("include_all_metadata");
    let inclusive = flag("inclusive");
    let limit = match param(params, "limit").map(|l| l.parse::<usize>()) {
        None => 1_000,
        Some(Ok(l)) => l.clamp(1, 1_000),
        Some(Err(_)) => return ApiReply::err("invalid_limit"),
    };
    let after = match param(params, "cursor") {
        None => None,
        Some(cursor) => match base64::engine::general_purpose::STANDARD
            .decode(cursor.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|c| c.strip_prefix("next_ts:").map(str::to_owned))
        {
            Some(ts) => Some(ts),
            None => return ApiReply::err("invalid_cursor"),
        },
    };
    let key = |ts: &str| {
        let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
        (
            secs.parse::<u64>().unwrap_or(0),
            frac.parse::<u64>().unwrap_or(0),
        )
    };
    let bound = |name: &str| param(params, name).map(|t| key(&t));
    let (oldest, latest) = (bound("oldest"), bound("latest"));
    let mut replies: Vec<&SimMessage> = messages
        .iter()
        .filter(|m| !m.deleted && m.ts != ts && m.thread_ts.as_deref() == Some(ts.as_str()))
        .filter(|m| {
            let k = key(&m.ts);
            oldest.is_none_or(|o| if inclusive { k >= o } else { k > o })
                && latest.is_none_or(|l| if inclusive { k <= l } else { k < l })
        })
        .filter(|m| after.as_deref().is_none_or(|a| key(&m.ts) >= key(a)))
        .collect();
    replies.sort_by_key(|m| key(&m.ts));
    let mut page: Vec<&SimMessage> = Vec::with_capacity(limit);
    if after.is_none() {
        page.push(parent);
    }
    let room = limit.saturating_sub(page.len());
    let more = replies.len() > room;
    page.extend(replies.iter().take(room));
    let reply_count = messages
        .iter()
        .filter(|m| !m.deleted && m.ts != ts && m.thread_ts.as_deref() == Some(ts.as_str()))
        .count();
    let shaped: Vec<Value> = page
        .into_iter()
        .map(|m| {
            let role = if std::ptr::eq(m, parent) {
                ThreadRole::Parent { reply_count }
            } else {
                ThreadRole::Reply {
                    parent_user: &parent.user,
                }
            };
            thread_message(m, &ts, role, with_metadata)
        })
        .collect();
    let mut body = json!({ "messages": shaped, "has_more": more });
    if more && let Some(next) = replies.get(room) {
        let cursor =
            base64::engine::general_purpose::STANDARD.encode(format!("next_ts:{}", next.ts));
        body["response_metadata"] = json!({ "next_cursor": cursor });
    }
    ApiReply::ok(body)
}

/// `conversations.history`: the channel's top-level messages (and thread parents), newest
/// first, after `oldest` (exclusive unless `inclusive`), `limit` a page (default 100, at most
/// 1 000) with an opaque `next_cursor` while more remain; `metadata` only with
/// `include_all_metadata=true`.
fn conversations_history(
    st: &SimState,
    team_id: &str,
    resolve_channel: &dyn Fn(Option<String>) -> Option<String>,
    params: &Map<String, Value>,
) -> ApiReply {
    let Some(channel) = resolve_channel(param(params, "channel")) else {
        return ApiReply::err("channel_not_found");
    };
    let flag = |key: &str| param(params, key).is_some_and(|v| v == "true" || v == "1");
    let with_metadata = flag("include_all_metadata");
    let inclusive = flag("inclusive");
    let limit = match param(params, "limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) => l.clamp(1, 1_000),
        Some(Err(_)) => return ApiReply::err("invalid_limit"),
    };
    let key = |ts: &str| {
        let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
        (
            secs.parse::<u64>().unwrap_or(0),
            frac.parse::<u64>().unwrap_or(0),
        )
    };
    let skip = match param(params, "cursor") {
        None => 0,
        Some(cursor) => match base64::engine::general_purpose::STANDARD
            .decode(cursor.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|c| {
                c.strip_prefix("skip:")
                    .and_then(|n| n.parse::<usize>().ok())
            }) {
            Some(n) => n,
            None => return ApiReply::err("invalid_cursor"),
        },
    };
    let oldest = param(params, "oldest").map(|t| key(&t));
    let mut top: Vec<&SimMessage> = st
        .messages_in(team_id, &channel)
        .iter()
        .filter(|m| !m.deleted && m.thread_ts.as_deref().is_none_or(|t| t == m.ts))
        .filter(|m| {
            let k = key(&m.ts);
            oldest.is_none_or(|o| if inclusive { k >= o } else { k > o })
        })
        .collect();
    top.sort_by_key(|m| std::cmp::Reverse(key(&m.ts)));
    let more = top.len() > skip + limit;
    let shaped: Vec<Value> = top
        .iter()
        .skip(skip)
        .take(limit)
        .map(|m| {
            let mut v = json!({ "type": "message", "user": m.user, "text": m.text, "ts": m.ts });
            if let Some(obj) = v.as_object_mut() {
                if let Some(bot_id) = &m.bot_id {
                    obj.insert("bot_id".into(), json!(bot_id));
                }
                if let Some(blocks) = &m.blocks {
                    obj.insert("blocks".into(), blocks.clone());
                }
                if with_metadata && let Some(metadata) = &m.metadata {
                    obj.insert("metadata".into(), metadata.clone());
                }
            }
            v
        })
        .collect();
    let mut body = json!({ "messages": shaped, "has_more": more });
    if more {
        let cursor =
            base64::engine::general_purpose::STANDARD.encode(format!("skip:{}", skip + limit));
        body["response_metadata"] = json!({ "next_cursor": cursor });
    }
    ApiReply::ok(body)
}

/// Where a message sits in its thread.
enum ThreadRole<'a> {
    Parent { reply_count: usize },
    Reply { parent_user: &'a str },
}

/// One message of a thread as `conversations.replies` shows it.
fn thread_message(
    m: &SimMessage,
    thread_ts: &str,
    role: ThreadRole<'_>,
    with_metadata: bool,
) -> Value {
    let mut v = json!({
        "type": "message",
        "user": m.user,
        "text": m.text,
        "ts": m.ts,
        "thread_ts": thread_ts,
    });
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    if let Some(bot_id) = &m.bot_id {
        obj.insert("bot_id".into(), json!(bot_id));
    }
    match role {
        ThreadRole::Parent { reply_count } => {
            obj.insert("reply_count".into(), json!(reply_count));
        }
        ThreadRole::Reply { parent_user } => {
            obj.insert("parent_user_id".into(), json!(parent_user));
        }
    }
    if with_metadata && let Some(metadata) = &m.metadata {
        obj.insert("metadata".into(), metadata.clone());
    }
    if !m.files.is_empty() {
        let files: Vec<Value> = m.files.iter().map(|id| json!({ "id": id })).collect();
        obj.insert("files".into(), json!(files));
        obj.insert("upload".into(), json!(false));
    }
    v
}

fn oauth_access(st: &mut SimState, creds: &Credentials, params: &Map<String, Value>) -> ApiReply {
    let (client_id, client_secret) = match &creds.basic {
        Some((id, secret)) => (Some(id.clone()), Some(secret.clone())),
        None => (param(params, "client_id"), param(params, "client_secret")),
    };
    let Some(client_id) = client_id else {
        return ApiReply::err("invalid_client_id");
    };
    let Some(app) = st
        .config
        .apps
        .iter()
        .find(|a| a.client_id == client_id)
        .cloned()
    else {
        return ApiReply::err("invalid_client_id");
    };
    if !client_secret.is_some_and(|s| app.client_secret.ct_eq(&s)) {
        return ApiReply::err("bad_client_secret");
    }
    let rotation = st
        .config
        .token_rotation
        .then_some(st.config.token_expires_in);
    let (team_id, user_id) = if param(params, "grant_type").as_deref() == Some("refresh_token") {
        let Some(refresh) = param(params, "refresh_token") else {
            return ApiReply::err("invalid_refresh_token");
        };
        // A refresh token is single use: the response carries its successor.
        let Some(team_id) = st.refresh_tokens.remove(&refresh) else {
            return ApiReply::err("invalid_refresh_token");
        };
        (team_id, None)
    } else {
        let Some(code) = param(params, "code") else {
            return ApiReply::err("invalid_code");
        };
        let Some(grant) = st.codes.remove(&code) else {
            return ApiReply::err("invalid_code");
        };
        (grant.team_id, Some(grant.user_id))
    };
    let Some(team) = st.team(&team_id).ok() else {
        return ApiReply::err("team_not_found");
    };
    if team.app_id != app.app_id {
        return ApiReply::err("invalid_client_id");
    }
    let access_token = st.issue_token(
        TokenKind::Bot {
            team_id: team.id.clone(),
        },
        rotation,
    );
    let mut body = json!({
        "access_token": access_token,
        "token_type": "bot",
        "scope": "app_mentions:read,channels:history,chat:write,groups:history,im:history,reactions:write,users:read",
        "bot_user_id": team.bot_user_id,
        "app_id": app.app_id,
        "team": { "id": team.id, "name": team.name },
        "enterprise": null,
        "is_enterprise_install": false,
        "authed_user": { "id": user_id.unwrap_or_else(|| team.users.first().map(|u| u.id.clone()).unwrap_or_default()) }
    });
    if let Some(lifetime) = rotation {
        let refresh = format!("xoxe-1-sim{}", uuid::Uuid::new_v4().simple());
        st.refresh_tokens.insert(refresh.clone(), team.id.clone());
        if let Some(obj) = body.as_object_mut() {
            obj.insert("refresh_token".into(), json!(refresh));
            obj.insert("expires_in".into(), json!(lifetime.as_secs()));
        }
    }
    ApiReply::ok(body)
}
