//! Generated code of specd's gRPC protocol, package `specd.v1` (see `specd/v1/specd.proto`).

pub mod convert;

pub mod v1 {
    tonic::include_proto!("specd.v1");
}

/// The protocol version nodes exchange in `Info`; nodes refuse a peer with another major version.
pub const PROTOCOL_VERSION: &str = "specd.v1";
