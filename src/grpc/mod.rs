//! gRPC technology shared by the features: the generated contracts ([`pb`]) and the tonic
//! server shell ([`server`]) that feature modules add their services to, with the connection
//! limits tonic lacks ([`limits`]).

pub mod limits;
pub mod server;

/// Generated protobuf and tonic code for the three packages.
pub mod pb {
    /// `package agent`: the upstream agent's contract.
    pub mod agent {
        tonic::include_proto!("agent");
    }
    /// `package backend`: SendReply.
    pub mod backend {
        tonic::include_proto!("backend");
    }
    /// `package infragpt`: the legacy SendReply path.
    pub mod infragpt {
        tonic::include_proto!("infragpt");
    }
}
