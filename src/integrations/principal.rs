//! Who is calling the integrations API: the organization (our UUID), the Clerk user id and
//! the user's role in the organization.
//!
//! Taken from the verified Clerk session ([`crate::identity::auth::OrgPrincipal`]: RS256 JWT,
//! organization resolved, membership and role from the membership mirror). A trusted
//! middleware may instead put a [`Principal`] into the request extensions (clients cannot set
//! extensions); the integration tests use that to exercise the routes without minting tokens.

use actix_web::{FromRequest, HttpMessage as _, HttpRequest, dev::Payload};
use futures::future::LocalBoxFuture;
use uuid::Uuid;

use crate::error::ApiError;
use crate::identity::auth::OrgPrincipal;
use crate::identity::roles::{self, OrgRole};

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Our organization UUID (from the verified token).
    pub organization_id: Uuid,
    /// Clerk user id.
    pub user_id: String,
    /// The user's role in the organization (from the membership mirror).
    pub role: OrgRole,
}

impl Principal {
    /// The audit `actor` string: `user/{clerk id}`.
    pub(crate) fn audit_actor(&self) -> String {
        format!("user/{}", self.user_id)
    }

    /// 403 unless the caller is an admin of the organization ([`roles::require_admin`]).
    pub(crate) fn require_admin(&self, req: &HttpRequest) -> Result<(), ApiError> {
        roles::require_admin(
            roles::Caller {
                organization_id: self.organization_id,
                user_id: &self.user_id,
                role: &self.role,
            },
            req,
        )
    }
}

impl From<OrgPrincipal> for Principal {
    fn from(who: OrgPrincipal) -> Self {
        Self {
            organization_id: who.organization_id.0,
            user_id: who.user_id().to_string(),
            role: who.role,
        }
    }
}

impl FromRequest for Principal {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if let Some(p) = req.extensions().get::<Principal>().cloned() {
            return Box::pin(async move { Ok(p) });
        }
        let org = OrgPrincipal::from_request(req, payload);
        Box::pin(async move { org.await.map(Principal::from) })
    }
}
