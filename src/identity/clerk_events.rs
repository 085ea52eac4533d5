//! Typed Clerk webhook events.
//!
//! Clerk (through Svix) posts `{"data": {...}, "object": "event", "type": "...", "timestamp":
//! N, "instance_id": "..."}`. Parse the body only after [`super::svix::SvixVerifier::verify`]
//! accepted it. Event types this service does not use become [`ClerkEvent::Ignored`] so the
//! HTTP layer can answer 2xx (otherwise Svix retries for a day); a known type whose `data` lacks
//! a field we need is an error.

use serde::Deserialize;
use serde_json::Value;

use super::{ClerkMembershipId, ClerkOrgId, ClerkUserId};

/// Why a Clerk webhook body was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ClerkEventError {
    /// The body is not JSON, or not an envelope (`type`, `object`, `data`).
    #[error("clerk webhook body is not a valid event envelope: {0}")]
    InvalidEnvelope(#[source] serde_json::Error),
    /// `object` is not `"event"`.
    #[error("clerk webhook object is {0:?}, expected \"event\"")]
    NotAnEvent(String),
    /// `data` of a known event type lacks a field or has the wrong shape.
    #[error("clerk {event_type} event: invalid data: {source}")]
    InvalidData {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A parsed webhook: envelope fields plus the typed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkEnvelope {
    /// The `type` field as sent (`user.created`, ...).
    pub event_type: String,
    /// The `timestamp` field as sent. Real Clerk events use milliseconds since the epoch;
    /// Clerk's OpenAPI examples use seconds, so it is kept raw rather than guessed.
    pub timestamp: Option<i64>,
    /// The Clerk instance that sent the event.
    pub instance_id: Option<String>,
    /// The typed event.
    pub event: ClerkEvent,
}

/// A Clerk user as carried by `user.created` / `user.updated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkUser {
    /// `data.id`
    pub clerk_id: ClerkUserId,
    /// The address whose id equals `primary_email_address_id`; `None` when there is none.
    pub email: Option<String>,
    /// `data.first_name`
    pub first_name: Option<String>,
    /// `data.last_name`
    pub last_name: Option<String>,
    /// `data.username`
    pub username: Option<String>,
    /// `data.image_url`
    pub image_url: Option<String>,
}

/// What a Clerk webhook means for this service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClerkEvent {
    /// `user.created` or `user.updated`.
    UserUpserted(ClerkUser),
    /// `user.deleted`.
    UserDeleted {
        /// The deleted user.
        clerk_id: ClerkUserId,
    },
    /// `organization.created` or `organization.updated`.
    OrganizationUpserted {
        /// `data.id`
        clerk_id: ClerkOrgId,
        /// `data.name`
        name: String,
        /// `data.slug`
        slug: Option<String>,
        /// `data.image_url`
        image_url: Option<String>,
        /// `data.created_by` (a Clerk user id)
        created_by: Option<ClerkUserId>,
    },
    /// `organization.deleted`.
    OrganizationDeleted {
        /// The deleted organization.
        clerk_id: ClerkOrgId,
    },
    /// `organizationMembership.created` or `organizationMembership.updated`.
    MembershipUpserted {
        /// `data.id`
        clerk_membership_id: ClerkMembershipId,
        /// `data.organization.id`
        org_clerk_id: ClerkOrgId,
        /// `data.public_user_data.user_id`
        user_clerk_id: ClerkUserId,
        /// `data.role` as sent (`org:admin`, `org:member`, ...).
        role: String,
    },
    /// `organizationMembership.deleted`.
    MembershipDeleted {
        /// `data.id`
        clerk_membership_id: ClerkMembershipId,
        /// `data.organization.id`
        org_clerk_id: ClerkOrgId,
        /// `data.public_user_data.user_id`
        user_clerk_id: ClerkUserId,
    },
    /// Any other event type; acknowledge and do nothing.
    Ignored {
        /// The `type` field.
        event_type: String,
    },
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    event_type: String,
    object: String,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    instance_id: Option<String>,
    data: Value,
}

#[derive(Deserialize)]
struct RawEmail {
    id: String,
    email_address: String,
}

#[derive(Deserialize)]
struct RawUser {
    id: String,
    #[serde(default)]
    primary_email_address_id: Option<String>,
    #[serde(default)]
    email_addresses: Vec<RawEmail>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
}

#[derive(Deserialize)]
struct RawDeleted {
    id: String,
}

#[derive(Deserialize)]
struct RawOrganization {
    id: String,
    name: String,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
}

#[derive(Deserialize)]
struct RawOrgRef {
    id: String,
}

#[derive(Deserialize)]
struct RawPublicUserData {
    user_id: String,
}

#[derive(Deserialize)]
struct RawMembership {
    id: String,
    #[serde(default)]
    role: Option<String>,
    organization: RawOrgRef,
    public_user_data: RawPublicUserData,
}

/// Parses a verified webhook body.
pub fn parse_event(raw_body: &[u8]) -> Result<ClerkEnvelope, ClerkEventError> {
    let envelope: RawEnvelope =
        serde_json::from_slice(raw_body).map_err(ClerkEventError::InvalidEnvelope)?;
    if envelope.object != "event" {
        return Err(ClerkEventError::NotAnEvent(envelope.object));
    }
    let event = typed_event(&envelope.event_type, envelope.data)?;
    Ok(ClerkEnvelope {
        event_type: envelope.event_type,
        timestamp: envelope.timestamp,
        instance_id: envelope.instance_id,
        event,
    })
}

fn data<T: serde::de::DeserializeOwned>(
    event_type: &str,
    data: Value,
) -> Result<T, ClerkEventError> {
    serde_json::from_value(data).map_err(|source| ClerkEventError::InvalidData {
        event_type: event_type.to_owned(),
        source,
    })
}

fn typed_event(event_type: &str, raw: Value) -> Result<ClerkEvent, ClerkEventError> {
    Ok(match event_type {
        "user.created" | "user.updated" => {
            let user: RawUser = data(event_type, raw)?;
            let email = user
                .primary_email_address_id
                .as_deref()
                .and_then(|primary| {
                    user.email_addresses
                        .iter()
                        .find(|e| e.id == primary)
                        .map(|e| e.email_address.clone())
                });
            ClerkEvent::UserUpserted(ClerkUser {
                clerk_id: ClerkUserId::new(user.id),
                email,
                first_name: user.first_name,
                last_name: user.last_name,
                username: user.username,
                image_url: user.image_url,
            })
        }
        "user.deleted" => {
            let deleted: RawDeleted = data(event_type, raw)?;
            ClerkEvent::UserDeleted {
                clerk_id: ClerkUserId::new(deleted.id),
            }
        }
        "organization.created" | "organization.updated" => {
            let org: RawOrganization = data(event_type, raw)?;
            ClerkEvent::OrganizationUpserted {
                clerk_id: ClerkOrgId::new(org.id),
                name: org.name,
                slug: org.slug,
                image_url: org.image_url,
                created_by: org.created_by.map(ClerkUserId::new),
            }
        }
        "organization.deleted" => {
            let deleted: RawDeleted = data(event_type, raw)?;
            ClerkEvent::OrganizationDeleted {
                clerk_id: ClerkOrgId::new(deleted.id),
            }
        }
        "organizationMembership.created" | "organizationMembership.updated" => {
            let m: RawMembership = data(event_type, raw)?;
            let role = m.role.ok_or_else(|| ClerkEventError::InvalidData {
                event_type: event_type.to_owned(),
                source: serde::de::Error::missing_field("role"),
            })?;
            ClerkEvent::MembershipUpserted {
                clerk_membership_id: ClerkMembershipId::new(m.id),
                org_clerk_id: ClerkOrgId::new(m.organization.id),
                user_clerk_id: ClerkUserId::new(m.public_user_data.user_id),
                role,
            }
        }
        "organizationMembership.deleted" => {
            let m: RawMembership = data(event_type, raw)?;
            ClerkEvent::MembershipDeleted {
                clerk_membership_id: ClerkMembershipId::new(m.id),
                org_clerk_id: ClerkOrgId::new(m.organization.id),
                user_clerk_id: ClerkUserId::new(m.public_user_data.user_id),
            }
        }
        other => ClerkEvent::Ignored {
            event_type: other.to_owned(),
        },
    })
}
