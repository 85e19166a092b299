//! Generates the gRPC code from `proto/flotilla/**.proto` with tonic-prost-build (needs `protoc`,
//! Debian package `protobuf-compiler`, which `deploy/setup.sh` installs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/flotilla/agent/v1/agent.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
