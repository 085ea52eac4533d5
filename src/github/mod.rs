//! GitHub App webhooks: signature verification and payload normalization.

pub mod normalize;
pub mod signature;
pub mod stream;
pub mod webhook;
