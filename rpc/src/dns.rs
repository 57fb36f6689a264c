//! `dns:///NAME:PORT` peers: a name that stands for every address it resolves to (a Kubernetes
//! headless Service lists one per ready pod), each address a URL of its own.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};

/// `dns:///NAME:PORT` → (NAME, PORT); None when `spec` is not a `dns:///` name.
pub fn parse(spec: &str) -> Option<Result<(String, u16)>> {
    let rest = spec.strip_prefix("dns:///")?;
    Some((|| {
        let (name, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("{spec:?}: expected dns:///NAME:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("{spec:?}: the port must be a number in 1..=65535"))?;
        if name.is_empty() || name.contains('/') {
            bail!("{spec:?}: expected dns:///NAME:PORT");
        }
        Ok((name.to_owned(), port))
    })())
}

/// The addresses `name` resolves to now.
pub async fn resolve(name: &str, port: u16) -> std::io::Result<BTreeSet<IpAddr>> {
    Ok(tokio::net::lookup_host((name, port))
        .await?
        .map(|a| a.ip())
        .collect())
}

/// The URL of one address: `SCHEME://IP:PORT` (`[IP]` for IPv6).
pub fn address_url(scheme: &str, ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
    }
}

/// The address and port of a URL [`address_url`] made.
pub fn url_address(url: &str) -> Option<(IpAddr, u16)> {
    let (host, port) = url.split_once("://")?.1.rsplit_once(':')?;
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some((ip, port.parse().ok()?))
}

/// Whether `url` is one of the addresses `dns:///NAME:PORT` (`spec`) resolves to now.
pub async fn names(spec: &str, url: &str) -> bool {
    let (Some(Ok((name, port))), Some((ip, url_port))) = (parse(spec), url_address(url)) else {
        return false;
    };
    port == url_port
        && resolve(&name, port)
            .await
            .is_ok_and(|ips| ips.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_urls_round_trip() {
        assert_eq!(
            parse("dns:///svc.ns:50051").unwrap().unwrap(),
            ("svc.ns".into(), 50051)
        );
        assert!(parse("http://svc:1").is_none());
        for bad in [
            "dns:///svc",
            "dns:///svc:0",
            "dns:///svc:x",
            "dns:///:5",
            "dns:///a/b:5",
        ] {
            let e = parse(bad).unwrap().unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        for (ip, url) in [
            ("10.0.0.7", "http://10.0.0.7:9"),
            ("fd00::1", "http://[fd00::1]:9"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_url("http", ip, 9), url);
            assert_eq!(url_address(url), Some((ip, 9)));
        }
    }

    #[tokio::test]
    async fn localhost_names_its_loopback_address_only() {
        assert!(names("dns:///localhost:7", "http://127.0.0.1:7").await);
        assert!(
            !names("dns:///localhost:7", "http://127.0.0.1:8").await,
            "port"
        );
        assert!(
            !names("dns:///localhost:7", "http://10.9.9.9:7").await,
            "address"
        );
        assert!(
            !names("http://127.0.0.1:7", "http://127.0.0.1:7").await,
            "not a name"
        );
    }
}
