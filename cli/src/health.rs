//! `specd health ADDR`: is a node serving? For container health checks and scripts (an image
//! can hold no downloaded probe): the standard gRPC health service of a node, or `GET /health` of
//! an HTTP API. Exit status 0 when serving, 1 otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Args)]
pub struct HealthArgs {
    /// The node: a gRPC URL (http://HOST:PORT, or just HOST:PORT) of a target-node, draft-node or coordinator, or an
    /// HTTP API's health URL (http://HOST:PORT/health) of `serve` or `coordinator --http-listen`.
    pub addr: String,
    /// gRPC: the service to ask about (e.g. specd.v1.TargetVerifier); default: the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

pub fn run(mut a: HealthArgs) -> Result<()> {
    // A bare HOST:PORT is a plain-text gRPC address.
    if !a.addr.contains("://") {
        a.addr = format!("http://{}", a.addr);
    }
    let timeout = Duration::from_secs_f64(a.timeout.clamp(0.1, 3600.0));
    if a.addr.trim_end_matches('/').ends_with("/health") {
        return http_health(&a.addr, timeout);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(a.addr.clone())
            .with_context(|| format!("{:?} is not a URL (e.g. http://127.0.0.1:50051)", a.addr))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", a.addr))?;
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: a.service.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: health check failed: {}", a.addr, s.message()))?;
        anyhow::Ok(r.into_inner().status())
    })?;
    let what = if a.service.is_empty() {
        a.addr.clone()
    } else {
        format!("{} ({})", a.addr, a.service)
    };
    match status {
        ServingStatus::Serving => {
            println!("{what}: SERVING");
            Ok(())
        }
        other => bail!("{what}: {}", other.as_str_name()),
    }
}

/// `GET /health` over plain HTTP/1.1: 200 is serving.
fn http_health(url: &str, timeout: Duration) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: expected http://HOST:PORT/health"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "health"));
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{url}: {host} resolves to no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {url}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("{url}: no answer"))?;
    let status = resp.get(9..12).unwrap_or("");
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).trim();
    if status == "200" {
        println!("{url}: {status} {body}");
        Ok(())
    } else {
        bail!("{url}: {status} {body}")
    }
}
