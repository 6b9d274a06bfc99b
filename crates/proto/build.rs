//! Generates the protocol's Rust code from `proto/` with `protoc` (Debian's
//! `protobuf-compiler`; see the crate docs for why).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/kubectl_build/v1/builder.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
