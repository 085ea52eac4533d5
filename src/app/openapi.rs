//! `GET /openapi.json`: the OpenAPI 3.1 document of every HTTP route, assembled from the
//! `#[utoipa::path]` attributes on the handlers and the schemas derived from the types they
//! read and answer. Each feature module describes its own routes (`…Api` structs); this
//! composition root merges them, adds the auth schemes and serves the result. The test
//! `openapi::every_route_is_documented` compares the document with the routes the actix app
//! actually registers, so neither can drift.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "InfraGPT",
        description = "An AI operations assistant that lives in Slack. Every error answers \
                       `{\"error\":{\"code\",\"message\",\"field\"?}}` (the `Error` schema)."
    ),
    paths(document),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&AuthSchemes),
    tags(
        (name = "health", description = "Liveness and readiness (no token)"),
        (name = "ops", description = "The actor tree, metrics, the cluster and the ops page: open on the ops listener (`ops.port`), the admin token on the public port"),
        (name = "admin", description = "Dead letters and the audit log of every organization (admin token)"),
        (name = "identity", description = "The caller and their organization (Clerk session token)"),
        (name = "integrations", description = "Slack and GitHub connectors (Clerk session token; callbacks use the signed `state`)"),
        (name = "conversations", description = "The organization's Slack threads (Clerk session token)"),
        (name = "reply", description = "SendReply over HTTP, for the agent"),
        (name = "webhooks", description = "Signed deliveries from Slack, Clerk (Svix), GitHub, and the organizations' Alertmanager and PagerDuty sources"),
        (name = "events", description = "Routing rules and event sources of the organization (Clerk session token)"),
        (name = "meta", description = "This document"),
    )
)]
struct Root;

/// The auth schemes the paths name.
struct AuthSchemes;

impl utoipa::Modify for AuthSchemes {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |format: Option<&str>, description: &str| {
            let mut http = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description.to_owned()));
            if let Some(format) = format {
                http = http.bearer_format(format);
            }
            SecurityScheme::Http(http.build())
        };
        let header = |name: &str, description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                name,
                description,
            )))
        };
        components.add_security_scheme(
            "clerk_session",
            bearer(
                Some("JWT"),
                "A Clerk session token (RS256, verified against identity.clerk.jwks_url); the organization is the token's (v1 `org_id` or v2 `o.id`)",
            ),
        );
        components.add_security_scheme(
            "admin_token",
            bearer(None, "The configured admin.token (compared in constant time); no token configured means 401"),
        );
        components.add_security_scheme(
            "reply_token",
            bearer(
                None,
                "agent.reply_token; callers from agent.reply_allowed_networks may omit it",
            ),
        );
        components.add_security_scheme(
            "slack_signature",
            header(
                "X-Slack-Signature",
                "`v0=` HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{body}` with slack.signing_secret; the timestamp header must be within 5 minutes",
            ),
        );
        components.add_security_scheme(
            "svix_signature",
            header(
                "svix-signature",
                "Svix `v1,<base64>` HMAC-SHA256 of `{svix-id}.{svix-timestamp}.{body}` with identity.clerk.webhook_secret; needs `svix-id` and `svix-timestamp` (±5 minutes)",
            ),
        );
        components.add_security_scheme(
            "github_signature",
            header(
                "X-Hub-Signature-256",
                "`sha256=` HMAC-SHA256 of the body with integrations.github.webhook_secret",
            ),
        );
        components.add_security_scheme(
            "alertmanager_token",
            bearer(
                None,
                "The secret of an Alertmanager source with `auth: bearer` (POST /event-sources; Alertmanager's `http_config.authorization.credentials`)",
            ),
        );
        components.add_security_scheme(
            "infragpt_signature",
            header(
                "X-InfraGPT-Signature",
                "`sha256=` HMAC-SHA256 of the body with the secret of an Alertmanager source with `auth: hmac`",
            ),
        );
        components.add_security_scheme(
            "pagerduty_signature",
            header(
                "X-PagerDuty-Signature",
                "`v1=` HMAC-SHA256 of the body with the PagerDuty source's secret (several comma-separated during rotation; any may match)",
            ),
        );
    }
}

/// The whole document.
pub fn build() -> OpenApi {
    let mut doc = Root::openapi();
    for part in [
        crate::http::health::HealthApi::openapi(),
        crate::ops::OpsApi::openapi(),
        crate::identity::api::IdentityRestApi::openapi(),
        crate::identity::audit::AuditApi::openapi(),
        crate::identity::webhook::ClerkWebhookApi::openapi(),
        crate::integrations::routes::IntegrationsApi::openapi(),
        crate::conversations::routes::ConversationsApi::openapi(),
        crate::reply::http::ReplyApi::openapi(),
        crate::slack::events_http::SlackEventsApi::openapi(),
        crate::slack::commands::SlackCommandsApi::openapi(),
        crate::slack::interactions_http::SlackInteractionsApi::openapi(),
        crate::reply::approvals::ApprovalsAgentApi::openapi(),
        crate::approvals::ApprovalsApi::openapi(),
        crate::github::webhook::GithubWebhookApi::openapi(),
        crate::events::api::EventsApi::openapi(),
        crate::events::webhook::SourceWebhooksApi::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serializing a document of plain maps and strings cannot fail; an empty object keeps
        // the route answering JSON if it somehow did.
        build().to_pretty_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            "{}".to_owned()
        })
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value)))]
async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

/// Adds `GET /openapi.json`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PATH, web::get().to(document));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_with_the_error_shape() {
        let doc: serde_json::Value = serde_json::from_str(super::json()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert!(doc["components"]["schemas"]["Error"].is_object());
        for scheme in [
            "clerk_session",
            "admin_token",
            "reply_token",
            "slack_signature",
            "svix_signature",
            "github_signature",
            "alertmanager_token",
            "infragpt_signature",
            "pagerduty_signature",
        ] {
            assert!(
                doc["components"]["securitySchemes"][scheme].is_object(),
                "{scheme}"
            );
        }
    }
}
