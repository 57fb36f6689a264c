//! TLS on gRPC links (rustls through tonic). A node given `--tls-cert` and `--tls-key` serves
//! TLS only; with `--tls-client-ca` it also requires each caller to present a certificate that
//! chains to that CA (mutual TLS). Its outgoing calls to `https://` URLs check the peer's
//! certificate against `--tls-ca` (or the public web roots when none is given) and present the
//! node's own certificate when it has one, so one key pair per node serves both directions.
//! `http://` URLs stay plaintext. The files are read and checked at start: a missing file, a file
//! with no PEM certificate or key, or a key without its certificate is an error naming the flag.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A node's TLS material, read once at start.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Its certificate chain and key (PEM): what it serves with, and presents as a client.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The CA its peers' certificates must chain to (outgoing https:// calls).
    ca: Option<Vec<u8>>,
    /// The CA its callers' certificates must chain to (mutual TLS on its server).
    client_ca: Option<Vec<u8>>,
}

fn read_certs(flag: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))?;
    let n = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not a PEM certificate file", path.display()))?
        .len();
    if n == 0 {
        bail!(
            "{flag} {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(pem)
}

impl Tls {
    /// The material of the flags; None when no flag is given (plaintext only).
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Tls>> {
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let certs = read_certs("--tls-cert", c)?;
                let key = std::fs::read(k).with_context(|| format!("--tls-key {}", k.display()))?;
                PrivateKeyDer::from_pem_slice(&key).with_context(|| {
                    format!(
                        "--tls-key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)",
                        k.display()
                    )
                })?;
                Some((certs, key))
            }
            _ => bail!("--tls-cert and --tls-key go together (the node's certificate and its key)"),
        };
        let ca = ca.map(|p| read_certs("--tls-ca", p)).transpose()?;
        let client_ca = client_ca
            .map(|p| read_certs("--tls-client-ca", p))
            .transpose()?;
        if client_ca.is_some() && identity.is_none() {
            bail!("--tls-client-ca requires --tls-cert and --tls-key: mutual TLS is TLS first");
        }
        Ok((identity.is_some() || ca.is_some()).then_some(Tls {
            identity,
            ca,
            client_ca,
        }))
    }

    /// What a server serves with, if it has a certificate.
    pub fn server(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref()?;
        let mut c = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            c = c.client_ca_root(Certificate::from_pem(ca));
        }
        Some(c)
    }

    /// The rustls settings of an HTTPS server with this certificate (None without one). The HTTP
    /// API asks no client certificate: its clients authenticate with API keys.
    pub fn https(&self) -> Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
        use tokio_rustls::rustls;
        let Some((cert, key)) = &self.identity else {
            return Ok(None);
        };
        let certs = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("--tls-cert and --tls-key do not make a TLS identity (does the key match?)")?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(c)))
    }

    /// The rustls settings of a plain (non-gRPC) HTTPS client: `tls`'s CA, else the public web
    /// roots; its certificate when it has one.
    pub fn https_client(tls: Option<&Tls>) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        match tls.and_then(|t| t.ca.as_ref()) {
            Some(ca) => {
                for c in CertificateDer::pem_slice_iter(ca) {
                    roots.add(c?)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let c = match tls.and_then(|t| t.identity.as_ref()) {
            Some((cert, key)) => b.with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(key)?,
            )?,
            None => b.with_no_client_auth(),
        };
        Ok(Arc::new(c))
    }

    /// Whether it dials its peers with TLS (a CA for their certificates was given).
    pub fn dials(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether it has a certificate to serve with (else its servers stay plaintext).
    pub fn serves(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether callers must present a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// What an outgoing https:// call uses (`tls` None: the public web roots, no client
    /// certificate).
    pub fn client(tls: Option<&Tls>) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        match tls.and_then(|t| t.ca.as_ref()) {
            Some(ca) => c = c.ca_certificate(Certificate::from_pem(ca)),
            None => c = c.with_webpki_roots(),
        }
        if let Some((cert, key)) = tls.and_then(|t| t.identity.as_ref()) {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }

    /// Client TLS from `SPECD_TLS_CA`, `SPECD_TLS_CERT` and `SPECD_TLS_KEY` (what the one-shot
    /// clients — `generate --coordinator`, `health` — read; None when none is set).
    pub fn from_env() -> Result<Option<Tls>> {
        let var = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
        Tls::load(
            var("SPECD_TLS_CERT").as_deref(),
            var("SPECD_TLS_KEY").as_deref(),
            var("SPECD_TLS_CA").as_deref(),
            None,
        )
        .context("the TLS files of SPECD_TLS_CERT, SPECD_TLS_KEY, SPECD_TLS_CA")
    }
}

/// A gRPC server builder: TLS with `tls`'s certificate when it has one, else plaintext.
pub fn server_builder(tls: Option<&Tls>) -> Result<tonic::transport::Server> {
    let b = tonic::transport::Server::builder();
    Ok(match tls.and_then(Tls::server) {
        Some(c) => b.tls_config(c).context("TLS settings")?,
        None => b,
    })
}

/// A hint for a failed connection: the URL's scheme may not match what the peer speaks, or the
/// certificates may not match.
pub fn scheme_hint(url: &str) -> &'static str {
    if url.starts_with("https://") {
        " (check: the node serves TLS — a plaintext node needs an http:// URL; its certificate chains to --tls-ca / SPECD_TLS_CA and names this host; a mutual-TLS node needs this side's --tls-cert / SPECD_TLS_CERT)"
    } else {
        " (if the node serves TLS, use an https:// URL)"
    }
}

/// `text` with the hint for `url` unless it has one already.
pub fn with_hint(text: String, url: &str) -> String {
    let hint = scheme_hint(url);
    if text.contains(hint) {
        text
    } else {
        text + hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tls_files_are_named() {
        let dir = std::env::temp_dir().join(format!("specd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let p = junk.as_path();
        let e = |r: Result<Option<Tls>>| format!("{:#}", r.unwrap_err());
        assert!(Tls::load(None, None, None, None).unwrap().is_none());
        assert!(e(Tls::load(Some(p), None, None, None)).contains("go together"));
        assert!(e(Tls::load(Some(p), Some(p), None, None)).contains("--tls-cert"));
        assert!(e(Tls::load(None, None, Some(p), None)).contains("no PEM certificate"));
        let missing = Path::new("/no/such/ca.pem");
        assert!(e(Tls::load(None, None, Some(missing), None)).contains("/no/such/ca.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
