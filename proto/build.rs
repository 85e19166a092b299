//! Generates the gRPC code from `proto/flotilla/**.proto` with tonic-prost-build (needs `protoc`,
//! Debian package `protobuf-compiler`, which `deploy/setup.sh` installs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/flotilla/agent/v1/agent.proto",
        "proto/flotilla/control/v1/control.proto",
        "proto/flotilla/raft/v1/raft.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // Messages persist as JSON (agent records) and print as JSON (`--format json`).
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
