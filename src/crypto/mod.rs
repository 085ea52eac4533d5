//! Cryptographic primitives built on `ring`: the credential vault (AES-256-GCM with a key
//! ring) and signed, single-use OAuth/installation `state` values.

pub mod state;
pub mod vault;
