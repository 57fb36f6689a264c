//! What specd's nodes (target-node, draft-node, coordinator) and their clients share beyond the
//! generated protocol of [`specd_proto`], which stays free of engine code so that a gRPC client
//! need not compile a model: conversions between wire messages and engine types ([`convert`]),
//! channels to peers reused across requests ([`peers`]), the W3C trace context carried in gRPC
//! metadata ([`trace`]), API keys and tenants of the public APIs ([`auth`]), and a node's listener
//! and graceful shutdown ([`drain`]).

pub mod auth;
pub mod convert;
pub mod dns;
pub mod drain;
pub mod loading;
pub mod peers;
pub mod tls;
pub mod trace;

pub use specd_proto::{v1, PROTOCOL_VERSION};

/// Sets a node's gRPC health for its service `name` and for the server as a whole (`""`), which
/// is what probes that name no service ask.
pub async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    name: &str,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status(name, status).await;
    reporter.set_service_status("", status).await;
}

/// Binds a node's listener; a taken or invalid address is an error naming it.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
