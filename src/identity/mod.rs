//! Identity: Clerk webhooks (Svix signatures, typed event parsing), the identity store and
//! sync handler, Clerk session JWTs and the REST API's session authentication ([`auth`]), the
//! `/identity` API, and [`wiring::IdentityModule`] that plugs them into the server.

pub mod api;
pub mod auth;
pub mod clerk_events;
pub mod jwt;
pub mod store;
pub mod svix;
pub mod sync;
pub mod webhook;
pub mod wiring;

use serde::{Deserialize, Serialize};

macro_rules! clerk_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps an id as Clerk sent it.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

clerk_id!(
    /// A Clerk user id (`user_...`).
    ClerkUserId
);
clerk_id!(
    /// A Clerk organization id (`org_...`).
    ClerkOrgId
);
clerk_id!(
    /// A Clerk organization membership id (`orgmem_...`).
    ClerkMembershipId
);
clerk_id!(
    /// A Clerk session id (`sess_...`), the `sid` claim of a session token.
    ClerkSessionId
);
