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
    /// https://HOST:PORT: TLS, checked against $SPECD_TLS_CA (default: the public roots), with
    /// $SPECD_TLS_CERT and $SPECD_TLS_KEY as the client certificate a mutual-TLS node asks for.
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
        let mut ep = tonic::transport::Endpoint::from_shared(a.addr.clone())
            .with_context(|| format!("{:?} is not a URL (e.g. http://127.0.0.1:50051)", a.addr))?
            .connect_timeout(timeout)
            .timeout(timeout);
        if a.addr.starts_with("https://") {
            let tls = specd_rpc::tls::Tls::from_env()?;
            ep = ep.tls_config(specd_rpc::tls::Tls::client(tls.as_ref()))?;
        }
        let channel = ep.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to {}: {}{}",
                a.addr,
                specd_rpc::peers::source_chain(&e),
                specd_rpc::tls::scheme_hint(&a.addr)
            )
        })?;
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: a.service.clone(),
            })
            .await
            .map_err(|s| {
                // A transport failure on the first call is often a scheme that does not match.
                let hint = if specd_rpc::peers::transport_failure(&s) {
                    specd_rpc::tls::scheme_hint(&a.addr)
                } else {
                    ""
                };
                anyhow::anyhow!(
                    "{}: health check failed: {}{hint}",
                    a.addr,
                    specd_rpc::peers::status_text(&s)
                )
            })?;
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

/// `GET /health` over HTTP/1.1, or HTTPS (the CA and client certificate of SPECD_TLS_*): 200 is
/// serving.
fn http_health(url: &str, timeout: Duration) -> Result<()> {
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => bail!("{url:?}: expected http://HOST:PORT/health or https://HOST:PORT/health"),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, "health"));
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{url}: {host} resolves to no address"))?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {url}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    let exchanged = if https {
        let tls = specd_rpc::tls::Tls::from_env()?;
        let config = specd_rpc::tls::Tls::https_client(tls.as_ref())?;
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned())
            .with_context(|| format!("{url}: {name:?} is not a host name"))?;
        let conn = tokio_rustls::rustls::ClientConnection::new(config, name)?;
        let mut s = tokio_rustls::rustls::StreamOwned::new(conn, tcp);
        s.write_all(request.as_bytes())
            .and_then(|()| s.read_to_string(&mut resp))
    } else {
        tcp.write_all(request.as_bytes())
            .and_then(|()| tcp.read_to_string(&mut resp))
    };
    // A TLS server closes without a TLS close_notify on some paths: what was read counts.
    if let Err(e) = exchanged {
        if resp.is_empty() {
            return Err(anyhow::anyhow!(
                "{url}: no answer: {e}{}",
                specd_rpc::tls::scheme_hint(url)
            ));
        }
    }
    let status = resp.get(9..12).unwrap_or("");
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).trim();
    if status == "200" {
        println!("{url}: {status} {body}");
        Ok(())
    } else if !resp.starts_with("HTTP/") {
        bail!("{url}: no HTTP answer{}", specd_rpc::tls::scheme_hint(url))
    } else {
        bail!("{url}: {status} {body}")
    }
}
