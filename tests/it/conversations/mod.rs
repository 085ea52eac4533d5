//! Conversations over REST: who may list, read and forget them (roles), what forgetting
//! removes and what it refuses, pages and organization scope (api), and forgetting a real
//! thread in the assembled service (forget).

mod api;
mod forget;
mod roles;
