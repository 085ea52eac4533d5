//! What the integration tests share: [`app::TestApp`] (the service under test),
//! [`wait::eventually`] (the one polling helper), [`fixtures`] (the payloads in
//! `tests/data`), helpers per area, [`rest`] (the REST API on real session tokens) and
//! [`browser`] (a headless Chromium over the DevTools protocol).

pub mod app;
pub mod audit;
pub mod browser;
pub mod conversations;
pub mod fixtures;
pub mod identity;
pub mod integrations;
pub mod plans;
pub mod rest;
pub mod wait;

/// The JSON body of an in-process response (panics with the body when it is not JSON).
pub async fn body_json(resp: actix_web::dev::ServiceResponse) -> serde_json::Value {
    let bytes = actix_web::test::read_body(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}
