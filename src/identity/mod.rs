//! Identity: Clerk webhooks (Svix signatures, typed event parsing), the identity store and
//! sync handler, Clerk session JWTs and the REST API's session authentication ([`auth`]), the
//! `/identity` API, the organization's audit log ([`audit`], `GET /audit`), [`roles`] (who may
//! change what), and [`wiring::IdentityModule`] that plugs them into the server.

pub mod api;
pub mod audit;
pub mod auth;
pub mod clerk_events;
pub mod jwt;
pub mod roles;
pub mod store;
pub mod svix;
pub mod sync;
pub mod webhook;
pub mod wiring;

infragpt_actors::id_newtype! {
    /// A Clerk user id (`user_...`).
    pub struct ClerkUserId(String);
}
infragpt_actors::id_newtype! {
    /// A Clerk organization id (`org_...`).
    pub struct ClerkOrgId(String);
}
infragpt_actors::id_newtype! {
    /// A Clerk organization membership id (`orgmem_...`).
    pub struct ClerkMembershipId(String);
}
infragpt_actors::id_newtype! {
    /// A Clerk session id (`sess_...`), the `sid` claim of a session token.
    pub struct ClerkSessionId(String);
}
