//! Generates the kubelet device-plugin messages from `proto/api.proto` (and the podresources API's
//! from `proto/podresources.proto`, the DRA plugin's from `proto/dra.proto` and
//! `proto/pluginregistration.proto`) with protobuf-codegen's pure
//! Rust parser, so building needs no `protoc`. The gRPC service glue is hand-written in src/proto.rs:
//! grpcio-compiler only targets protobuf 2, which we keep out of Cargo.lock (RUSTSEC-2024-0437).

fn main() {
    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=proto/podresources.proto");
    println!("cargo:rerun-if-changed=proto/dra.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/api.proto")
        .input("proto/podresources.proto")
        .input("proto/dra.proto")
        .input("proto/pluginregistration.proto")
        .cargo_out_dir("proto")
        // No descriptors or reflection: grpcio only needs `Message`, and they cost binary size.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .run_from_script();
}
