//! `IdentitySync`: the [`EventHandler`] of the Clerk stream. It applies each recorded Clerk
//! webhook to the identity tables through [`IdentityStore`] and writes membership and
//! organization changes to the audit log (actor `clerk`).
//!
//! Order does not matter (see [`super::store`] for how rows converge), so the webhook routes
//! every Clerk event to the single key [`ROUTING_KEY`]: application stays serial and simple.
//! Every write is idempotent, so at-least-once delivery and replays change nothing.

use std::sync::Arc;

use async_trait::async_trait;
use infragpt_actors::audit::{AuditEntry, AuditLog};
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
#[derive(Clone)]
pub struct IdentitySync {
    store: IdentityStore,
    audit: Arc<dyn AuditLog>,
}

impl std::fmt::Debug for IdentitySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySync")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn retryable(e: StoreError) -> HandlerError {
    HandlerError::retryable(e)
}

impl IdentitySync {
    /// A handler writing to `store` and auditing to `audit`.
    pub fn new(store: IdentityStore, audit: Arc<dyn AuditLog>) -> Self {
        Self { store, audit }
    }

    /// Appends an audit entry. A failure is logged with the whole entry and not retried: the
    /// change is applied already, and a retry would find nothing left to change (and so
    /// nothing to audit).
    async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.append(entry.clone()).await {
            tracing::error!(
                error = %e,
                action = %entry.action,
                target = ?entry.target,
                details = %entry.details,
                "audit entry lost"
            );
        }
    }

    async fn audit_change(
        &self,
        organization_id: Option<OrganizationId>,
        action: &str,
        target: &str,
        details: Value,
    ) {
        self.audit(AuditEntry {
            organization_id: organization_id.map(|o| o.0),
            actor: AUDIT_ACTOR.to_owned(),
            action: action.to_owned(),
            target: Some(target.to_owned()),
            details,
        })
        .await;
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
        let (org_id, applied) = self
            .store
            .upsert_organization(&upsert, cx.version)
            .await
            .map_err(retryable)?;
        tracing::info!(org = %clerk_id, ?applied, "clerk organization applied");
        if applied.changed() {
            let action = if applied == Applied::Inserted {
                "organization.created"
            } else {
                "organization.updated"
            };
            self.audit_change(
                Some(org_id),
                action,
                clerk_id.as_str(),
                json!({
                    "clerk_org_id": clerk_id,
                    "name": upsert.name,
                    "slug": upsert.slug,
                    "event_type": cx.event_type,
                    "svix_id": cx.svix_id,
                }),
            )
            .await;
        }
        if cx.event_type == "organization.created"
            && let Some(creator) = &upsert.created_by
        {
            let added = self
                .store
                .ensure_creator_membership(clerk_id, creator)
                .await
                .map_err(retryable)?;
            if added {
                tracing::info!(org = %clerk_id, user = %creator, "creator made admin");
                self.audit_change(
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
                .await;
            }
        }
        Ok(())
    }

    async fn delete_organization(
        &self,
        cx: &Applying<'_>,
        clerk_id: &ClerkOrgId,
    ) -> Result<(), HandlerError> {
        let (org_id, applied) = self
            .store
            .delete_organization(clerk_id)
            .await
            .map_err(retryable)?;
        tracing::info!(org = %clerk_id, ?applied, "clerk organization deleted");
        if applied.changed() {
            self.audit_change(
                Some(org_id),
                "organization.deleted",
                clerk_id.as_str(),
                json!({"clerk_org_id": clerk_id, "event_type": cx.event_type, "svix_id": cx.svix_id}),
            )
            .await;
        }
        Ok(())
    }

    /// A membership created or updated; audited when created or when its role changed.
    async fn upsert_membership(
        &self,
        cx: &Applying<'_>,
        upsert: &MembershipUpsert,
    ) -> Result<(), HandlerError> {
        let MembershipApplied {
            applied,
            previous_role,
            organization_id,
        } = self
            .store
            .upsert_membership(upsert, cx.version)
            .await
            .map_err(retryable)?;
        tracing::info!(membership = %upsert.clerk_membership_id, org = %upsert.org_clerk_id, user = %upsert.user_clerk_id, ?applied, "clerk membership applied");
        let action = match applied {
            Applied::Inserted => Some("membership.created"),
            Applied::Updated if previous_role.as_deref() != Some(upsert.role.as_str()) => {
                Some("membership.role_changed")
            }
            _ => None,
        };
        if let Some(action) = action {
            self.audit_change(
                organization_id,
                action,
                upsert.clerk_membership_id.as_str(),
                json!({
                    "clerk_org_id": upsert.org_clerk_id,
                    "clerk_user_id": upsert.user_clerk_id,
                    "role": upsert.role,
                    "previous_role": previous_role,
                    "event_type": cx.event_type,
                    "svix_id": cx.svix_id,
                }),
            )
            .await;
        }
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
        let MembershipApplied {
            applied,
            previous_role,
            organization_id,
        } = self
            .store
            .delete_membership(
                clerk_membership_id,
                org_clerk_id,
                user_clerk_id,
                role.as_deref(),
            )
            .await
            .map_err(retryable)?;
        tracing::info!(membership = %clerk_membership_id, org = %org_clerk_id, user = %user_clerk_id, ?applied, "clerk membership deleted");
        if applied.changed() {
            self.audit_change(
                organization_id,
                "membership.deleted",
                clerk_membership_id.as_str(),
                json!({
                    "clerk_org_id": org_clerk_id,
                    "clerk_user_id": user_clerk_id,
                    "role": previous_role.or(role),
                    "event_type": cx.event_type,
                    "svix_id": cx.svix_id,
                }),
            )
            .await;
        }
        Ok(())
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
