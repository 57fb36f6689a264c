//! Generated code of specd's gRPC protocol, package `specd.v1` (see `specd/v1/specd.proto`).

pub mod convert;
pub mod drain;

pub mod v1 {
    tonic::include_proto!("specd.v1");
}

/// The protocol version nodes exchange in `Info`; nodes refuse a peer with another major version.
pub const PROTOCOL_VERSION: &str = "specd.v1";

/// Binds a node's listener; a taken or invalid address is an error naming it.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
