//! Who is calling the integrations API: the organization (our UUID) and the Clerk user id.
//!
//! Stand-in until `crate::http::auth::OrgPrincipal` (verified Clerk JWT) is merged: the
//! authentication middleware puts a [`Principal`] into the request extensions and this
//! extractor takes it from there; a request without one is answered 401. The lead swaps the
//! extractor for `OrgPrincipal` (same two fields) when wiring.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpMessage as _, HttpRequest, dev::Payload};
use uuid::Uuid;

use crate::error::ApiError;

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Our organization UUID (from the verified token).
    pub organization_id: Uuid,
    /// Clerk user id.
    pub user_id: String,
}

impl Principal {
    /// The audit `actor` string: `user/{clerk id}`.
    pub fn audit_actor(&self) -> String {
        format!("user/{}", self.user_id)
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or_else(|| ApiError::unauthorized("authentication required")),
        )
    }
}
