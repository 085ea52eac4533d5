//! Identity: Clerk payloads, Svix signatures, session tokens (JWT/JWKS), the Clerk webhook,
//! the identity REST API and who may call it (roles), the organization's audit log.

mod api;
mod audit;
mod audited;
mod clerk_payloads;
mod jwt;
mod roles;
mod svix;
mod webhook;

use crate::support::app::TestApp;

/// The app the identity tests run against: in process, with the identity store and the
/// Clerk stream, retrying failed events at once.
async fn identity_app() -> TestApp {
    TestApp::builder()
        .with_identity()
        .configure(|c| {
            c.actors.backoff_base_ms = 1;
            c.actors.backoff_max_ms = 5;
            c.actors.drain_interval_ms = 10;
        })
        .build()
        .await
}
