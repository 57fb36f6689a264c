//! Generated code of specd's gRPC protocol, package `specd.v1` (see `specd/v1/specd.proto`). It
//! depends on no engine code: a client of specd's nodes needs only this crate. What the nodes
//! share beyond it (conversions to engine types, channels, trace context) is in `specd-rpc`.

pub mod v1 {
    tonic::include_proto!("specd.v1");
}

/// The protocol version nodes exchange in `Info`; nodes refuse a peer with another major version.
pub const PROTOCOL_VERSION: &str = "specd.v1";
