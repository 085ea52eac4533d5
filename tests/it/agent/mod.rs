//! The agent side of a turn: the gRPC agent client and the SendReply command.

mod client;
mod send_reply;
mod upstream;
