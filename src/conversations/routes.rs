//! REST routes of the conversations API, scoped to the session token's organization
//! ([`OrgPrincipal`]).
//!
//! | Route | who | |
//! |---|---|---|
//! | `GET /conversations?limit=&before=` | member | newest first, cursor-paginated |
//! | `GET /conversations/{id}` | member | one, with its messages |
//! | `DELETE /conversations/{id}` | admin | forget it (409 while a turn is in flight) |
//!
//! The role is checked before the id is even parsed, so a member gets the same 403 for any
//! id; another organization's conversation, an unknown id and one that is not a UUID are all
//! 404.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use uuid::Uuid;

use super::store::{ConversationCursor, Forget, InFlight, OrgConversations};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::identity::auth::OrgPrincipal;

/// Default page size of `GET /conversations`.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page (each row counts its messages).
pub const MAX_PAGE: i64 = 200;

/// The query string of `GET /conversations`, as sent: every value is read by
/// [`PageParams::read`] so that a bad one is answered naming it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// Page size, 1 to 200 (default 50).
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    before: Option<String>,
}

impl PageParams {
    fn read(self) -> Result<(Option<ConversationCursor>, i64), ApiError> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid limit: must be a number from 1 to {MAX_PAGE}"
                    )));
                }
            },
        };
        let before = self
            .before
            .as_deref()
            .map(ConversationCursor::decode)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("invalid before: {e}")))?;
        Ok((before, limit))
    }
}

/// 503 for an outage, 500 for a row that does not read; logged with the organization.
fn store_error(e: StoreError, who: &OrgPrincipal) -> ApiError {
    match e {
        StoreError::Corrupt { .. } => ApiError::internal(e),
        _ => {
            tracing::error!(error = %e, organization_id = %who.organization_id.0, "conversation store failed");
            ApiError::unavailable("conversation store unavailable, retry later")
        }
    }
}

/// Any id that is not one of the organization's conversations.
fn not_found() -> ApiError {
    ApiError::not_found("conversation not found")
}

/// The organization's conversations, newest first.
#[utoipa::path(get, path = "/conversations", tag = "conversations", params(PageParams), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{conversations: [...], next_cursor}`", body = serde_json::Value),
        (status = 400, description = "A parameter does not read", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn list(
    who: OrgPrincipal,
    store: web::Data<OrgConversations>,
    params: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let (before, limit) = params.into_inner().read()?;
    let page = store
        .page(who.organization_id.0, before, limit)
        .await
        .map_err(|e| store_error(e, &who))?;
    Ok(HttpResponse::Ok().json(page))
}

/// One conversation with its messages.
#[utoipa::path(get, path = "/conversations/{id}", tag = "conversations", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The conversation's UUID")),
    responses(
        (status = 200, description = "`{conversation, messages}`", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's conversations", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn get_one(
    who: OrgPrincipal,
    store: web::Data<OrgConversations>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let detail = store
        .get(who.organization_id.0, id)
        .await
        .map_err(|e| store_error(e, &who))?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(detail))
}

/// Forgets a conversation (`org:admin`).
#[utoipa::path(delete, path = "/conversations/{id}", tag = "conversations", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The conversation's UUID")),
    responses(
        (status = 200, description = "The counts: `{messages, reply_intents, inbound_events_forgotten, dead_letters_closed}`", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's conversations", body = crate::error::ErrorBody),
        (status = 409, description = "A turn is in flight or a reply is being posted: retry once answered", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn delete(
    req: HttpRequest,
    who: OrgPrincipal,
    store: web::Data<OrgConversations>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let outcome = store
        .forget(who.organization_id.0, id, who.audit_actor())
        .await
        .map_err(|e| store_error(e, &who))?;
    match outcome {
        Forget::NotFound => Err(not_found()),
        Forget::InFlight(in_flight) => {
            tracing::info!(
                organization_id = %who.organization_id.0,
                user = %who.user_id(),
                conversation_id = %id,
                in_flight = ?in_flight,
                "conversation not deleted: a turn is in flight"
            );
            Err(ApiError::conflict(match in_flight {
                InFlight::Events(n) => format!(
                    "a turn of this conversation is in flight ({n} Slack events not handled yet); delete it once it is answered"
                ),
                InFlight::Reply => {
                    "a reply is being posted in this conversation; retry in a minute".to_owned()
                }
            }))
        }
        Forget::Forgotten(forgotten) => {
            tracing::info!(
                organization_id = %who.organization_id.0,
                user = %who.user_id(),
                conversation_id = %id,
                messages = forgotten.messages,
                reply_intents = forgotten.reply_intents,
                inbound_events_forgotten = forgotten.inbound_events_forgotten,
                dead_letters_closed = forgotten.dead_letters_closed,
                "conversation deleted"
            );
            Ok(HttpResponse::Ok().json(forgotten))
        }
    }
}

/// The conversation routes' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(list, get_one, delete))]
pub struct ConversationsApi;

/// Adds the conversation routes and the store as app data. Needs the app's
/// [`crate::identity::auth::Authenticator`] (the identity module adds it).
pub fn configure(cfg: &mut web::ServiceConfig, store: OrgConversations) {
    cfg.app_data(web::Data::new(store))
        .route("/conversations", web::get().to(list))
        .route("/conversations/{id}", web::get().to(get_one))
        .route("/conversations/{id}", web::delete().to(delete));
}
