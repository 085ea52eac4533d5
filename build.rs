//! Compiles the gRPC contracts with `protox` (a pure-Rust protobuf compiler), so building
//! needs no `protoc` on the machine, and rebuilds the crate when a migration is added.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "src/grpc/proto/agent.proto",
        "src/grpc/proto/backend.proto",
        "src/grpc/proto/infragpt_legacy.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // `embed_migrations!` reads this directory at compile time but cannot tell cargo so: a new
    // migration alone would otherwise leave a binary that never applies it.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(protos, ["src/grpc/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
