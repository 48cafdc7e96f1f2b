//! Compiles the kubelet API protos with the pure-Rust `protox` compiler: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/deviceplugin_v1beta1.proto",
        "proto/podresources_v1.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Small per-call buffers: a node holds one kubelet connection per resource (thousands).
        .codec_path("crate::proto::SmallCodec")
        .compile_fds(fds)?;
    Ok(())
}
