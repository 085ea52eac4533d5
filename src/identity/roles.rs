//! Organization roles and the one rule of the REST API: members read, admins change.
//!
//! The role is the one in our membership mirror (`organization_members.role`, written from
//! Clerk webhooks), never the `rol`/`org_role` claim of the token: a token minted before a
//! demotion must not keep admin rights for its lifetime, and the mirror is what
//! [`crate::identity::auth::OrgPrincipal`] already checked membership against.
//!
//! | role | may |
//! |---|---|
//! | `org:admin` (or Clerk's legacy `admin`) | everything a member may, and create, authorize, refresh or delete integrations, change organization metadata, read the organization's audit log (`GET /audit`) |
//! | any other role (`org:member`, custom roles) | read the organization, its metadata and its integrations |
//!
//! Handlers of admin-only routes call `require_admin` on their principal
//! ([`crate::identity::auth::OrgPrincipal::require_admin`], and the integrations API's
//! `Principal`, which identity does not depend on); both end in [`require_admin`] here.
//! The check runs before the organization's data is looked up, so a refusal says nothing
//! about whether the target exists.

use actix_web::HttpRequest;
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

/// The role that may change an organization's settings and integrations.
pub const ADMIN: &str = "org:admin";

/// Clerk's role key before custom roles (`admin`, without the `org:` prefix); older
/// organizations still carry it.
const LEGACY_ADMIN: &str = "admin";

/// A member's role in an organization, as the membership mirror stores it (`org:admin`,
/// `org:member`, custom `org:...` roles). Serialized as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct OrgRole(String);

impl OrgRole {
    /// The role named `role` (kept as stored; unknown roles are plain members).
    pub fn new(role: impl Into<String>) -> Self {
        Self(role.into())
    }

    /// The admin role.
    pub fn admin() -> Self {
        Self::new(ADMIN)
    }

    /// The role as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `org:admin` and the legacy `admin`; every other role only reads.
    pub fn is_admin(&self) -> bool {
        matches!(self.0.as_str(), ADMIN | LEGACY_ADMIN)
    }
}

impl std::fmt::Display for OrgRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking, for the check and its log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// Our organization id.
    pub organization_id: Uuid,
    /// The Clerk user id.
    pub user_id: &'a str,
    /// Their role in the organization.
    pub role: &'a OrgRole,
}

/// `Ok` for an admin; otherwise logs the refusal (organization, user, role, route) and
/// answers 403 `forbidden` naming the role needed.
pub(crate) fn require_admin(caller: Caller<'_>, req: &HttpRequest) -> Result<(), ApiError> {
    if caller.role.is_admin() {
        return Ok(());
    }
    // The route pattern, not the path: ids stay out of the field and it groups in queries.
    let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    tracing::info!(
        org = %caller.organization_id,
        user = %caller.user_id,
        role = %caller.role,
        method = %req.method(),
        route = %route,
        needed = ADMIN,
        "request refused: role may not change this organization"
    );
    Err(ApiError::forbidden(format!(
        "this action needs the {ADMIN} role"
    )))
}

#[cfg(test)]
mod tests {
    use actix_web::http::StatusCode;
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn only_admin_roles_are_admins() {
        for role in ["org:admin", "admin"] {
            assert!(OrgRole::new(role).is_admin(), "{role}");
        }
        for role in [
            "org:member",
            "basic_member",
            "member",
            "org:billing",
            "org:admin ",
            "ORG:ADMIN",
            "org:administrator",
            "",
        ] {
            assert!(!OrgRole::new(role).is_admin(), "{role:?}");
        }
    }

    #[test]
    fn refusal_is_a_403_naming_the_role() {
        let req = TestRequest::delete()
            .uri("/integrations/x")
            .to_http_request();
        let member = OrgRole::new("org:member");
        let caller = Caller {
            organization_id: Uuid::nil(),
            user_id: "user_carol",
            role: &member,
        };
        let e = require_admin(caller, &req).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.code(), "forbidden");
        assert_eq!(e.message(), "this action needs the org:admin role");

        let admin = OrgRole::admin();
        assert!(
            require_admin(
                Caller {
                    role: &admin,
                    ..caller
                },
                &req
            )
            .is_ok()
        );
    }

    #[test]
    fn serializes_as_the_stored_string() {
        assert_eq!(
            serde_json::to_string(&OrgRole::new("org:member")).unwrap(),
            r#""org:member""#
        );
    }
}
