//! Compiles `proto/` with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/trustplane/v1/trustplane.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost with small buffers (src/proto_codec.rs).
        .codec_path("crate::proto_codec::ProtoCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
