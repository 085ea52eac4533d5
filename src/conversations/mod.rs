//! The organization's conversations over REST: list and read them (members), and forget one
//! (admins, `DELETE /conversations/{id}`: a user's right to be forgotten). [`store`] holds
//! the queries and the deletion, [`routes`] the HTTP side; [`ConversationsModule`] plugs
//! them into the server. Retention by age is the housekeeping actor's (`db::retention`).

pub mod routes;
pub mod store;

use std::sync::Arc;

use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::server::{AppState, Module};

/// Adds `GET /conversations`, `GET /conversations/{id}` and `DELETE /conversations/{id}`.
/// Start it after the identity module, which adds the session authenticator they need.
#[derive(Debug, Default)]
pub struct ConversationsModule;

impl ConversationsModule {
    /// The module.
    pub fn new() -> Self {
        Self
    }
}

#[async_trait::async_trait]
impl Module for ConversationsModule {
    fn name(&self) -> &str {
        "conversations"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        let store = store::OrgConversations::new(state.db.pool().clone());
        http.add_routes(Arc::new(move |cfg| routes::configure(cfg, store.clone())));
        Ok(())
    }
}
