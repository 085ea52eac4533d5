//! The slash command's transport (`POST /slack/commands` and Socket Mode `slash_commands`
//! envelopes, one [`intake`] for both) and the Slack adapter of the slash command's and
//! assistant pane's calls ([`SlashWeb`]).
//!
//! `POST /slack/commands` follows `POST /slack/events`: `X-Slack-Signature` over
//! `v0:{ts}:{raw body}` checked on the raw bytes in constant time before anything is parsed,
//! the body bounded and timed ([`crate::http::webhook_body`]), no signing secret → every
//! request refused. The body is `application/x-www-form-urlencoded`.
//!
//! [`intake`] always answers within [`ACK_DEADLINE`] (Slack shows the user an error after
//! 3 s, and never retries a slash command): `help` at once from the acknowledgement; any
//! other command recorded in the inbox first (deduplicated on `slash:{trigger_id}`) and then
//! acknowledged with an empty body; its answer follows through `response_url`. A record that
//! fails, or takes longer than the deadline, is answered with an ephemeral notice instead
//! (the slow record goes on and its command still runs).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use async_trait::async_trait;
use infragpt_actors::cluster::Cluster;
use infragpt_actors::conversation::{SlackApiError, ThreadMessage};
use infragpt_actors::events::EventSlack as _;
use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId};
use infragpt_actors::inbox::{EventPayload, NewInboundEvent, RecordOutcome};
use infragpt_actors::slash::{self, COMMAND_KIND, SlashCommand, SlashSlack, SuggestedPrompt};
use infragpt_actors::sources;
use serde_json::{Map, Value, json};

use super::events_http::{EventsEndpoint, begin, rejected_as};
use super::web::SlackWeb;
use crate::error::ApiError;
use crate::http::WebhookRoute;
use crate::http::webhook_body::{WebhookIntake, read_verified};

/// The route path.
pub const COMMANDS_PATH: &str = "/slack/commands";
/// Largest accepted body: a command is a few hundred bytes; Slack caps its text at 4 000
/// characters.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long recording a command may take before the acknowledgement goes out anyway.
pub const ACK_DEADLINE: Duration = Duration::from_millis(2_500);

/// Decodes an `application/x-www-form-urlencoded` body into a JSON object of strings (the
/// shape of a Socket Mode `slash_commands` payload).
pub fn form_to_value(body: &[u8]) -> Value {
    let map: Map<String, Value> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    Value::Object(map)
}

/// What a slash command's acknowledgement carries: `None` for an empty one, else the JSON
/// (an HTTP response body; a Socket Mode ack's `payload`).
pub async fn intake(cluster: &Cluster, cmd: &SlashCommand) -> Option<Value> {
    let request = cmd.request();
    if request.answered_in_ack() {
        return Some(slash::ephemeral(&slash::usage(&cmd.command)));
    }
    let event = NewInboundEvent {
        source: sources::SLACK,
        source_id: cmd.source_id(),
        routing_key: cmd.routing_key(),
        kind: COMMAND_KIND.to_owned(),
        payload: EventPayload::Json(cmd.to_value()),
    };
    let cluster = cluster.clone();
    let trigger = cmd.trigger_id.clone();
    // In a task of its own: a record slower than the deadline still finishes.
    let recording = tokio::spawn(async move { cluster.ingest(event).await });
    match tokio::time::timeout(ACK_DEADLINE, recording).await {
        Ok(Ok(Ok(outcome))) => {
            let duplicate = matches!(outcome, RecordOutcome::Duplicate(_));
            tracing::debug!(trigger_id = %trigger, duplicate, "slash command recorded");
            None
        }
        Ok(Ok(Err(e))) => {
            tracing::error!(trigger_id = %trigger, error = %e, "recording a slash command failed");
            Some(slash::ephemeral(
                ":warning: I could not take your command right now. Please try again in a moment.",
            ))
        }
        Ok(Err(e)) => {
            tracing::error!(trigger_id = %trigger, error = %e, "recording a slash command panicked");
            Some(slash::ephemeral(
                ":warning: I could not take your command right now. Please try again in a moment.",
            ))
        }
        Err(_) => {
            tracing::warn!(trigger_id = %trigger, "recording a slash command is slow; acknowledging before it ends");
            Some(slash::ephemeral(
                ":hourglass: Working on it (this is taking longer than usual).",
            ))
        }
    }
}

/// The slash command endpoint's part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(slack_commands_handler))]
pub struct SlackCommandsApi;

/// Adds `POST /slack/commands`, verified by the Events API's endpoint (the same signing
/// secret and rules).
pub fn configure(cfg: &mut web::ServiceConfig, endpoint: Arc<EventsEndpoint>) {
    cfg.app_data(web::Data::from(endpoint))
        .route(COMMANDS_PATH, web::post().to(slack_commands_handler));
}

/// A slash command (`/infragpt …`) over HTTP: signed like the Events API; recorded before
/// the answer, which comes within 3 s (ephemeral JSON, or empty when the answer follows
/// through `response_url`).
#[utoipa::path(post, path = "/slack/commands", tag = "webhooks", security(("slack_signature" = [])),
    request_body(content = String, description = "A slash command invocation (`team_id`, `channel_id`, `user_id`, `command`, `text`, `trigger_id`, `response_url`, ...)", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Empty, or `{response_type: \"ephemeral\", text}` shown to the caller only", body = serde_json::Value),
        crate::http::webhook_body::WebhookRefusals,
    ))]
async fn slack_commands_handler(
    req: HttpRequest,
    payload: web::Payload,
    ep: web::Data<EventsEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let rejected = |e| rejected_as("commands", e);
    let check = begin(&ep, &req).map_err(rejected)?;
    let intake_limits = WebhookIntake::for_request(&req);
    let verified = read_verified(&intake_limits, &req, payload, MAX_BODY_BYTES, check)
        .await
        .map_err(|e| e.into_api(rejected))?;
    let (body, _reservation) = verified.into_parts();
    let cmd = SlashCommand::parse(&form_to_value(&body))
        .map_err(|e| ApiError::bad_request(format!("not a slash command: {e}")))?;
    intake_limits
        .rate_limits()
        .admit(WebhookRoute::Slack, cmd.team_id.as_str())?;
    Ok(match intake(ep.cluster(), &cmd).await {
        Some(answer) => HttpResponse::Ok().json(answer),
        None => HttpResponse::Ok().finish(),
    })
}

// ---------------------------------------------------------------------------------------------
// The Slack adapter
// ---------------------------------------------------------------------------------------------

/// [`SlashSlack`] over the Web API adapter and a plain HTTP client for `response_url`.
pub struct SlashWeb {
    web: Arc<SlackWeb>,
    http: reqwest::Client,
    /// `response_url`s must start with one of these (Slack's hooks host, and the configured
    /// API's origin, which is a simulator's in tests): a forged URL cannot make us POST
    /// elsewhere.
    response_origins: Vec<String>,
}

impl std::fmt::Debug for SlashWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlashWeb")
            .field("response_origins", &self.response_origins)
            .finish_non_exhaustive()
    }
}

/// Slack's host for `response_url`s.
pub const SLACK_HOOKS_ORIGIN: &str = "https://hooks.slack.com/";

/// The origin (`scheme://host[:port]/`) of a URL.
fn origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(match parsed.port() {
        Some(port) => format!("{}://{host}:{port}/", parsed.scheme()),
        None => format!("{}://{host}/", parsed.scheme()),
    })
}

impl SlashWeb {
    /// The adapter over `web`; `api_url` is `slack.api_url`.
    pub fn new(web: Arc<SlackWeb>, api_url: &str) -> Result<Self, reqwest::Error> {
        let mut response_origins = vec![SLACK_HOOKS_ORIGIN.to_owned()];
        if let Some(o) = origin(api_url).filter(|o| o != "https://slack.com/") {
            response_origins.push(o);
        }
        Ok(Self {
            web,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            response_origins,
        })
    }

    /// Whether `url` is a `response_url` we may POST to.
    pub fn allowed_response_url(&self, url: &str) -> bool {
        origin(url).is_some_and(|o| self.response_origins.contains(&o))
    }
}

#[async_trait]
impl SlashSlack for SlashWeb {
    async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackApiError> {
        if !self.allowed_response_url(response_url) {
            return Err(SlackApiError::Api(format!(
                "response_url: not a Slack URL ({})",
                origin(response_url).unwrap_or_else(|| "unreadable".to_owned())
            )));
        }
        let response = self
            .http
            .post(response_url)
            .json(&slash::ephemeral(text))
            .send()
            .await
            .map_err(|e| SlackApiError::Transport(format!("response_url: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        if status.is_server_error() || status.as_u16() == 429 {
            Err(SlackApiError::Transport(format!(
                "response_url: {status} {body}"
            )))
        } else {
            Err(SlackApiError::Api(format!("response_url: {body}")))
        }
    }

    async fn post_ephemeral(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        user: &SlackUserId,
        text: &str,
    ) -> Result<(), SlackApiError> {
        let body = json!({ "channel": channel.as_str(), "user": user.as_str(), "text": text });
        self.web
            .call_ok(team, "chat.postEphemeral", &body, false)
            .await
    }

    async fn set_suggested_prompts(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        prompts: &[SuggestedPrompt],
    ) -> Result<(), SlackApiError> {
        let body = json!({
            "channel_id": channel.as_str(),
            "thread_ts": thread_ts.as_str(),
            "prompts": prompts,
        });
        self.web
            .call_ok(team, "assistant.threads.setSuggestedPrompts", &body, true)
            .await
    }

    async fn set_title(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        title: &str,
    ) -> Result<(), SlackApiError> {
        let body = json!({
            "channel_id": channel.as_str(),
            "thread_ts": thread_ts.as_str(),
            "title": title,
        });
        self.web
            .call_ok(team, "assistant.threads.setTitle", &body, true)
            .await
    }

    async fn bot_messages_in_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        oldest: &MessageTs,
    ) -> Result<Vec<ThreadMessage>, SlackApiError> {
        self.web
            .bot_messages_in_channel(team, channel, oldest)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's documented example (tests/data/slack/commands/README.md).
    const EXAMPLE: &[u8] = include_bytes!("../../tests/data/slack/commands/example.form");

    #[test]
    fn slacks_example_payload_parses() {
        let cmd = SlashCommand::parse(&form_to_value(EXAMPLE.trim_ascii_end())).expect("parses");
        assert_eq!(cmd.command, "/weather");
        assert_eq!(cmd.text, "94070");
        assert_eq!(cmd.team_id.as_str(), "T0001");
        assert_eq!(cmd.channel_id.as_str(), "C2147483705");
        assert_eq!(cmd.user_id.as_str(), "U2147483697");
        assert_eq!(
            cmd.response_url.as_deref(),
            Some("https://hooks.slack.com/commands/1234/5678")
        );
        assert_eq!(
            cmd.trigger_id.as_str(),
            "13345224609.738474920.8088930838d88f008e0"
        );
        assert_eq!(cmd.api_app_id.map(|a| a.0).as_deref(), Some("A123456"));
    }

    #[test]
    fn form_values_are_percent_and_plus_decoded() {
        let v = form_to_value(b"text=why+is+%2Fapi+slow%3F&command=%2Finfragpt");
        assert_eq!(v["text"], "why is /api slow?");
        assert_eq!(v["command"], "/infragpt");
    }

    #[test]
    fn response_urls_must_be_slacks_or_the_configured_apis() {
        let origins = |api: &str| {
            let mut o = vec![SLACK_HOOKS_ORIGIN.to_owned()];
            o.extend(origin(api).filter(|o| o != "https://slack.com/"));
            o
        };
        let real = origins("https://slack.com/api/");
        assert_eq!(real, vec![SLACK_HOOKS_ORIGIN.to_owned()]);
        let ok = |o: &[String], url: &str| origin(url).is_some_and(|x| o.contains(&x));
        assert!(ok(&real, "https://hooks.slack.com/commands/T1/2/abc"));
        assert!(!ok(&real, "http://hooks.slack.com/commands/T1/2/abc"));
        assert!(!ok(&real, "https://hooks.slack.com.evil.example/commands"));
        assert!(!ok(&real, "https://169.254.169.254/latest/meta-data"));
        let sim = origins("http://127.0.0.1:4567/api/");
        assert!(ok(&sim, "http://127.0.0.1:4567/response_url/1"));
        assert!(!ok(&sim, "http://127.0.0.1:4568/response_url/1"));
    }
}
