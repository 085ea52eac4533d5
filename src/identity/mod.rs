//! Identity: Clerk webhooks (Svix signatures, typed event parsing), the identity store and
//! sync handler, Clerk session JWTs, the `/identity` API and the [`module::IdentityModule`].

pub mod api;
pub mod clerk_events;
pub mod jwt;
pub mod module;
pub mod store;
pub mod svix;
pub mod sync;
pub mod webhook;

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
