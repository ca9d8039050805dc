//! Compiles proto/threatmesh/v1 with the pure-Rust `protox` compiler, so a
//! fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/threatmesh/v1/envelope.proto",
        "proto/threatmesh/v1/exchange.proto",
        "proto/threatmesh/v1/admin.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // The descriptors, for gRPC server reflection (src/proto.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("threatmesh_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        // Undecodable requests are INVALID_ARGUMENT (see src/proto.rs).
        .codec_path("crate::proto::ProtoCodec")
        // A stored envelope is sent to every subscriber it is released to:
        // one copy, shared, not one per delivery.
        .bytes(".threatmesh.v1.Delivery.envelope")
        .compile_fds(fds)?;
    Ok(())
}
