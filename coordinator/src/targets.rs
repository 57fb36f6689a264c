//! The coordinator's target-nodes: URLs as given (`http://HOST:PORT`, `https://…`), and
//! `dns:///NAME:PORT` names that stand for every address the name resolves to — a Kubernetes
//! headless Service lists one per ready pod — resolved again every `--dns-refresh` seconds as
//! nodes come and go. Each address becomes a target URL of its own (`http://10.0.0.5:50051`;
//! `https://` when the coordinator dials with TLS, the certificate then checked against NAME),
//! placed by load and failed over like any other.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use specd_rpc::dns;
use specd_rpc::peers::Peers;

#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Url(String),
    Dns { name: String, port: u16 },
}

/// The target list: what was given, and the URLs it stands for now.
#[derive(Debug)]
pub struct Targets {
    specs: Vec<Spec>,
    /// `https` when the coordinator dials its nodes with TLS.
    scheme: &'static str,
    current: RwLock<Arc<Vec<String>>>,
    /// Each name's addresses at its last resolution.
    addresses: RwLock<HashMap<String, BTreeSet<IpAddr>>>,
}

impl Targets {
    /// The `--target` list; `tls`: the coordinator dials its nodes with TLS (names then expand to
    /// `https://` URLs).
    pub fn parse(list: &[String], tls: bool) -> Result<Targets> {
        if list.is_empty() {
            bail!("--target: give at least one target-node URL");
        }
        let specs = (list.iter())
            .map(|s| match dns::parse(s) {
                Some(r) => r
                    .map(|(name, port)| Spec::Dns { name, port })
                    .context("--target"),
                None => Ok(Spec::Url(s.clone())),
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Targets {
            specs,
            scheme: if tls { "https" } else { "http" },
            current: Default::default(),
            addresses: Default::default(),
        };
        *t.current.write().unwrap() = Arc::new(t.urls());
        Ok(t)
    }

    /// Whether any target is a name to resolve.
    pub fn has_names(&self) -> bool {
        self.specs.iter().any(|s| matches!(s, Spec::Dns { .. }))
    }

    /// The target URLs now.
    pub fn list(&self) -> Arc<Vec<String>> {
        self.current.read().unwrap().clone()
    }

    /// The list as given, for messages.
    pub fn describe(&self) -> String {
        let given: Vec<String> = (self.specs.iter())
            .map(|s| match s {
                Spec::Url(u) => u.clone(),
                Spec::Dns { name, port } => format!("dns:///{name}:{port}"),
            })
            .collect();
        given.join(", ")
    }

    /// The URLs the specs stand for, in the order given (a name's addresses sorted; none before
    /// it first resolves).
    fn urls(&self) -> Vec<String> {
        let addresses = self.addresses.read().unwrap();
        let mut out = Vec::new();
        for s in &self.specs {
            match s {
                Spec::Url(u) => out.push(u.clone()),
                Spec::Dns { name, port } => {
                    for ip in addresses.get(name).into_iter().flatten() {
                        out.push(dns::address_url(self.scheme, *ip, *port));
                    }
                }
            }
        }
        out
    }

    /// Resolves every name again (one that fails keeps its last addresses) and tells `peers`
    /// which name each URL's certificate carries. Returns the URLs added and removed.
    pub async fn refresh(&self, peers: &Peers) -> (Vec<String>, Vec<String>) {
        let before = self.list();
        for s in &self.specs {
            let Spec::Dns { name, port } = s else {
                continue;
            };
            match dns::resolve(name, *port).await {
                Ok(ips) => {
                    for ip in &ips {
                        peers.set_server_name(&dns::address_url(self.scheme, *ip, *port), name);
                    }
                    self.addresses.write().unwrap().insert(name.clone(), ips);
                }
                Err(e) => tracing::warn!(
                    "target dns:///{name}:{port} does not resolve: {e}; keeping its last addresses"
                ),
            }
        }
        let now = self.urls();
        let added: Vec<String> = now
            .iter()
            .filter(|u| !before.contains(u))
            .cloned()
            .collect();
        let removed: Vec<String> = before
            .iter()
            .filter(|u| !now.contains(u))
            .cloned()
            .collect();
        for u in &added {
            tracing::info!(url = %u, "target found by DNS");
        }
        for u in &removed {
            tracing::info!(url = %u, "target no longer in DNS: new sessions go elsewhere");
        }
        *self.current.write().unwrap() = Arc::new(now);
        (added, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_expand_to_one_url_per_address_in_the_order_given() {
        let t = Targets::parse(
            &[
                "http://a:1".into(),
                "dns:///svc.ns:50051".into(),
                "http://b:2".into(),
            ],
            false,
        )
        .unwrap();
        assert!(t.has_names());
        assert_eq!(*t.list(), ["http://a:1", "http://b:2"], "before resolving");
        t.addresses.write().unwrap().insert(
            "svc.ns".into(),
            ["10.0.0.7".parse().unwrap(), "fd00::1".parse().unwrap()].into(),
        );
        assert_eq!(
            t.urls(),
            [
                "http://a:1",
                "http://10.0.0.7:50051",
                "http://[fd00::1]:50051",
                "http://b:2"
            ]
        );
        assert_eq!(t.describe(), "http://a:1, dns:///svc.ns:50051, http://b:2");
        let e = format!(
            "{:#}",
            Targets::parse(&["dns:///svc".into()], false).unwrap_err()
        );
        assert!(
            e.contains("--target") && e.contains("dns:///NAME:PORT"),
            "{e}"
        );
        assert!(Targets::parse(&[], false).is_err());
    }

    #[tokio::test]
    async fn a_name_resolves_to_https_urls_whose_certificates_carry_it() {
        let t = Targets::parse(&["dns:///localhost:50051".into()], true).unwrap();
        let peers = Peers::default();
        let (added, removed) = t.refresh(&peers).await;
        assert!(
            added.contains(&"https://127.0.0.1:50051".to_owned()),
            "{added:?}"
        );
        assert!(removed.is_empty());
        assert_eq!(
            peers.server_name("https://127.0.0.1:50051").as_deref(),
            Some("localhost")
        );
        assert_eq!(t.refresh(&peers).await, (vec![], vec![]), "unchanged");
    }
}
