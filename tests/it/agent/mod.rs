//! The agent side of a turn: the gRPC agent client and the SendReply command.

mod client;
mod grpc_limits;
mod reply_codes;
mod send_reply;
mod upstream;
