//! Generates the kubelet device-plugin messages from `proto/api.proto` (and the podresources API's
//! from `proto/podresources.proto`, the DRA plugin's from `proto/dra.proto` and
//! `proto/pluginregistration.proto`, its health API's from `proto/drahealth.proto`) with
//! protobuf-codegen's pure
//! Rust parser, so building needs no `protoc`. The gRPC service glue is hand-written in src/proto.rs:
//! grpcio-compiler only targets protobuf 2, which we keep out of Cargo.lock (RUSTSEC-2024-0437).

fn main() {
    // The static binary (the image's): its ~13,000 relative relocations packed as DT_RELR
    // (binutils >= 2.38, glibc >= 2.36, both in the static binary's builder) instead of 24-byte
    // RELA entries: ~300 KB smaller, and those pages are no longer read at every start, so the
    // idle RSS drops by as much. Still a PIE: the image keeps its address randomization (on
    // aarch64 too, linked -static-pie by scripts/aarch64-static-pie-cc). Only for crt-static: a
    // dynamic binary would then need a glibc >= 2.36 where it runs.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if features.split(',').any(|f| f == "crt-static") {
        // An older static glibc would start without applying them: check the one linked in.
        match static_glibc_minor() {
            Some(minor) if minor >= 36 => {
                println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs")
            }
            found => println!(
                "cargo:warning=glibc {} (from /usr/include/features.h) cannot apply packed \
                 relocations in a static binary: linking without them (about 300 KB larger)",
                found.map_or("of unknown version".to_owned(), |m| format!("2.{m}"))
            ),
        }
    }
    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=proto/podresources.proto");
    println!("cargo:rerun-if-changed=proto/dra.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    println!("cargo:rerun-if-changed=proto/drahealth.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/api.proto")
        .input("proto/podresources.proto")
        .input("proto/dra.proto")
        .input("proto/pluginregistration.proto")
        .input("proto/drahealth.proto")
        .cargo_out_dir("proto")
        // No descriptors or reflection: grpcio only needs `Message`, and they cost binary size.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .run_from_script();
}

/// The minor version of the glibc whose headers (and so whose libc.a) the static binary links.
fn static_glibc_minor() -> Option<u32> {
    // Cross-compiling for aarch64 links Debian's aarch64 glibc (libc6-dev-arm64-cross): its
    // headers, not the host's.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let cross = "/usr/aarch64-linux-gnu/include/features.h";
    let headers = if arch == "aarch64" && std::path::Path::new(cross).exists() {
        cross
    } else {
        "/usr/include/features.h"
    };
    println!("cargo:rerun-if-changed={headers}");
    let text = std::fs::read_to_string(headers).ok()?;
    let major = text.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("#define") && w.next() == Some("__GLIBC__") && w.next() == Some("2")
    });
    let minor = text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("#define") && w.next() == Some("__GLIBC_MINOR__"))
            .then(|| w.next()?.parse().ok())
            .flatten()
    });
    minor.filter(|_| major)
}
