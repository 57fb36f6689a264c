fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from the protoc-bin-vendored crate: no system package needed.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=specd/v1/specd.proto");
    tonic_prost_build::configure().compile_protos(&["specd/v1/specd.proto"], &["."])?;
    Ok(())
}
