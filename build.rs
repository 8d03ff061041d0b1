//! Compiles `proto/` without a system `protoc`: protox parses the protos into a
//! file descriptor set, which is written to `OUT_DIR` for server reflection and
//! handed to tonic-prost-build for code generation.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(["billing/v1/billing.proto"])?
        .file_descriptor_set();
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("billing_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Bytes that do not decode are the client's mistake (see the codec).
        .codec_path("crate::grpc::codec::ContractCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
