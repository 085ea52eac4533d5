//! Compiles the gRPC contracts with `protox` (a pure-Rust protobuf compiler), so building
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "src/grpc/proto/agent.proto",
        "src/grpc/proto/backend.proto",
        "src/grpc/proto/infragpt_legacy.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["src/grpc/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
