//! GitHub: the GitHub App integration ([`integration`] over the octocrab client in
//! [`app_client`]) and its webhooks (signature verification, payload normalization, and the
//! stream handler, keyed per repository by [`routing`]).

pub mod app_client;
pub mod integration;
pub mod normalize;
pub mod routing;
pub mod signature;
pub mod stream;
pub mod webhook;
