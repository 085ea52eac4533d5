//! PostgreSQL: migrations and the test databases, the inbox, the conversation store, and
//! the actor system over the real inbox.

mod actors;
mod committed;
mod conversation_store;
mod inbox;
mod migrations;
mod pool;
mod retention;
