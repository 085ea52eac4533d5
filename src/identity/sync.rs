//! `IdentitySync`: the [`EventHandler`] of the Clerk stream. It applies each recorded Clerk
//! webhook to the identity tables through [`IdentityStore`]; membership and organization
//! changes are audited (actor `clerk`) in the transaction of the write, so an entry that
//! cannot be written fails the event (retryable) with nothing applied.
//!
//! Order does not matter (see [`super::store`] for how rows converge), so the webhook routes
//! every Clerk event to the single key [`ROUTING_KEY`]: application stays serial and simple.
//! Every write is idempotent, so at-least-once delivery and replays change nothing.

use async_trait::async_trait;
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::ids::OrganizationId;
use infragpt_actors::inbox::{InboundEvent, RoutingKey};
use infragpt_actors::{EventHandler, HandleOutcome, HandlerError};
use serde_json::{Value, json};

use super::clerk_events::{ClerkEvent, parse_event};
use super::store::{
    Applied, CREATOR_ROLE, IdentityStore, MembershipApplied, MembershipUpsert, OrganizationUpsert,
};
use super::{ClerkMembershipId, ClerkOrgId, ClerkUserId};
use crate::db::StoreError;

/// The routing key of every Clerk event.
pub(crate) const ROUTING_KEY: &str = "clerk";
/// The audit actor of webhook-driven changes.
pub(crate) const AUDIT_ACTOR: &str = "clerk";

/// The routing key of every Clerk event, as a [`RoutingKey`].
pub fn routing_key() -> RoutingKey {
    RoutingKey(ROUTING_KEY.to_owned())
}

/// Applies Clerk events to the identity tables.
#[derive(Debug, Clone)]
pub struct IdentitySync {
    store: IdentityStore,
}

fn retryable(e: StoreError) -> HandlerError {
    HandlerError::retryable(e)
}

impl IdentitySync {
    /// A handler writing (and auditing) through `store`.
    pub fn new(store: IdentityStore) -> Self {
        Self { store }
    }

    async fn apply(
        &self,
        event: &InboundEvent,
        event_type: &str,
        typed: ClerkEvent,
        version: Option<i64>,
    ) -> Result<HandleOutcome, HandlerError> {
        let cx = Applying {
            event,
            event_type,
            svix_id: event.source_id.as_str(),
            version,
        };
        match typed {
            ClerkEvent::UserUpserted(user) => {
                let applied = self
                    .store
                    .upsert_user(&user, version)
                    .await
                    .map_err(retryable)?;
                tracing::info!(user = %user.clerk_id, ?applied, "clerk user applied");
            }
            ClerkEvent::UserDeleted { clerk_id } => {
                let applied = self.store.delete_user(&clerk_id).await.map_err(retryable)?;
                tracing::info!(user = %clerk_id, ?applied, "clerk user deleted");
            }
            ClerkEvent::OrganizationUpserted {
                clerk_id,
                name,
                slug,
                image_url,
                created_by,
            } => {
                let upsert = OrganizationUpsert {
                    clerk_id,
                    name,
                    slug,
                    image_url,
                    created_by,
                };
                self.upsert_organization(&cx, upsert).await?;
            }
            ClerkEvent::OrganizationDeleted { clerk_id } => {
                self.delete_organization(&cx, &clerk_id).await?;
            }
            ClerkEvent::MembershipUpserted {
                clerk_membership_id,
                org_clerk_id,
                user_clerk_id,
                role,
            } => {
                let upsert = MembershipUpsert {
                    clerk_membership_id,
                    org_clerk_id,
                    user_clerk_id,
                    role,
                };
                self.upsert_membership(&cx, &upsert).await?;
            }
            ClerkEvent::MembershipDeleted {
                clerk_membership_id,
                org_clerk_id,
                user_clerk_id,
            } => {
                self.delete_membership(&cx, &clerk_membership_id, &org_clerk_id, &user_clerk_id)
                    .await?;
            }
            ClerkEvent::Ignored { event_type } => {
                return Ok(HandleOutcome::Ignored(format!(
                    "clerk event type {event_type:?} is not handled"
                )));
            }
        }
        Ok(HandleOutcome::Done)
    }

    /// `organization.created` / `organization.updated`; a created organization also gets its
    /// creator as an (implicit) admin member.
    async fn upsert_organization(
        &self,
        cx: &Applying<'_>,
        upsert: OrganizationUpsert,
    ) -> Result<(), HandlerError> {
        let clerk_id = &upsert.clerk_id;
        let details = json!({
            "clerk_org_id": clerk_id,
            "name": upsert.name,
            "slug": upsert.slug,
            "event_type": cx.event_type,
            "svix_id": cx.svix_id,
        });
        let (org_id, applied) = self
            .store
            .upsert_organization(&upsert, cx.version, |org_id, applied| {
                let action = if applied == Applied::Inserted {
                    "organization.created"
                } else {
                    "organization.updated"
                };
                Some(change_entry(
                    Some(org_id),
                    action,
                    clerk_id.as_str(),
                    details,
                ))
            })
            .await
            .map_err(retryable)?;
        tracing::info!(org = %clerk_id, ?applied, "clerk organization applied");
        if cx.event_type == "organization.created"
            && let Some(creator) = &upsert.created_by
        {
            let added = self
                .store
                .ensure_creator_membership(clerk_id, creator, || {
                    change_entry(
                        Some(org_id),
                        "membership.created",
                        &format!("{clerk_id}/{creator}"),
                        json!({
                            "clerk_org_id": clerk_id,
                            "clerk_user_id": creator,
                            "role": CREATOR_ROLE,
                            "implicit": true,
                            "event_type": cx.event_type,
                            "svix_id": cx.svix_id,
                        }),
                    )
                })
                .await
                .map_err(retryable)?;
            if added {
                tracing::info!(org = %clerk_id, user = %creator, "creator made admin");
            }
        }
        Ok(())
    }

    async fn delete_organization(
        &self,
        cx: &Applying<'_>,
        clerk_id: &ClerkOrgId,
    ) -> Result<(), HandlerError> {
        let (_, applied) = self
            .store
            .delete_organization(clerk_id, |org_id| {
                Some(change_entry(
                    Some(org_id),
                    "organization.deleted",
                    clerk_id.as_str(),
                    json!({"clerk_org_id": clerk_id, "event_type": cx.event_type, "svix_id": cx.svix_id}),
                ))
            })
            .await
            .map_err(retryable)?;
        tracing::info!(org = %clerk_id, ?applied, "clerk organization deleted");
        Ok(())
    }

    /// A membership created or updated; audited when created or when its role changed.
    async fn upsert_membership(
        &self,
        cx: &Applying<'_>,
        upsert: &MembershipUpsert,
    ) -> Result<(), HandlerError> {
        let MembershipApplied { applied, .. } = self
            .store
            .upsert_membership(upsert, cx.version, |result| {
                let action = match result.applied {
                    Applied::Inserted => "membership.created",
                    Applied::Updated
                        if result.previous_role.as_deref() != Some(upsert.role.as_str()) =>
                    {
                        "membership.role_changed"
                    }
                    // A newer write that keeps the role changes nothing worth an entry.
                    _ => return None,
                };
                Some(change_entry(
                    result.organization_id,
                    action,
                    upsert.clerk_membership_id.as_str(),
                    json!({
                        "clerk_org_id": upsert.org_clerk_id,
                        "clerk_user_id": upsert.user_clerk_id,
                        "role": upsert.role,
                        "previous_role": result.previous_role,
                        "event_type": cx.event_type,
                        "svix_id": cx.svix_id,
                    }),
                ))
            })
            .await
            .map_err(retryable)?;
        tracing::info!(membership = %upsert.clerk_membership_id, org = %upsert.org_clerk_id, user = %upsert.user_clerk_id, ?applied, "clerk membership applied");
        Ok(())
    }

    /// A membership deleted. The role for the audit entry is the stored one, else the one the
    /// event carries.
    async fn delete_membership(
        &self,
        cx: &Applying<'_>,
        clerk_membership_id: &ClerkMembershipId,
        org_clerk_id: &ClerkOrgId,
        user_clerk_id: &ClerkUserId,
    ) -> Result<(), HandlerError> {
        let role = cx
            .event
            .payload
            .pointer("/data/role")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let MembershipApplied { applied, .. } = self
            .store
            .delete_membership(
                clerk_membership_id,
                org_clerk_id,
                user_clerk_id,
                role.as_deref(),
                |result| {
                    Some(change_entry(
                        result.organization_id,
                        "membership.deleted",
                        clerk_membership_id.as_str(),
                        json!({
                            "clerk_org_id": org_clerk_id,
                            "clerk_user_id": user_clerk_id,
                            "role": result.previous_role.as_deref().or(role.as_deref()),
                            "event_type": cx.event_type,
                            "svix_id": cx.svix_id,
                        }),
                    ))
                },
            )
            .await
            .map_err(retryable)?;
        tracing::info!(membership = %clerk_membership_id, org = %org_clerk_id, user = %user_clerk_id, ?applied, "clerk membership deleted");
        Ok(())
    }
}

/// An entry of a webhook-driven change (actor [`AUDIT_ACTOR`]).
fn change_entry(
    organization_id: Option<OrganizationId>,
    action: &str,
    target: &str,
    details: Value,
) -> AuditEntry {
    AuditEntry {
        organization_id: organization_id.map(|o| o.0),
        actor: AUDIT_ACTOR.to_owned(),
        action: action.to_owned(),
        target: Some(target.to_owned()),
        details,
    }
}

/// The event being applied: what every audit entry and versioned write needs from it.
struct Applying<'a> {
    event: &'a InboundEvent,
    event_type: &'a str,
    svix_id: &'a str,
    version: Option<i64>,
}

/// The Clerk `updated_at` (ms) of the object in an event, the version that orders writes.
pub(crate) fn object_version(payload: &Value) -> Option<i64> {
    payload.pointer("/data/updated_at").and_then(Value::as_i64)
}

#[async_trait]
impl EventHandler for IdentitySync {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        // The payload was verified and stored as JSON by the webhook; parse it as Clerk sent it.
        let raw = serde_json::to_vec(&event.payload).map_err(HandlerError::permanent)?;
        let envelope = parse_event(&raw).map_err(HandlerError::permanent)?;
        let version = object_version(&event.payload);
        self.apply(event, &envelope.event_type, envelope.event, version)
            .await
    }
}
