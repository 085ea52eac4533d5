//! The agent side of a turn: the gRPC agent client, the SendReply command, and posting each
//! reply exactly once across replicas and crashes.

mod client;
mod exactly_once;
mod grpc_limits;
mod reply_codes;
mod send_reply;
mod upstream;
