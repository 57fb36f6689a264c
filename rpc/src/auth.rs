//! API keys of the public APIs — the OpenAI-compatible HTTP API (`serve`, `coordinator
//! --http-listen`) and the coordinator's gRPC service — each naming a tenant. A request presents
//! its key as `Authorization: Bearer KEY` (an HTTP header, or gRPC metadata); the tenant it names
//! scopes what the request shares with others (the suffix drafter's index of earlier completions).
//!
//! Keys come from `--api-key [TENANT:]KEY` (repeatable; tenant `default`) and `--api-key-file
//! FILE` (one `TENANT KEY` or bare `KEY` per line, `#` comments). Only their SHA-256 is kept; a
//! presented key is hashed and looked up, so no comparison runs over a key's bytes.
//!
//! The node RPCs (target-node, draft-node) take a [`NodeSecret`] instead: one secret shared by
//! the processes of a deployment (`--node-secret-file`), sent by every node client ([`NodeAuth`],
//! which [`crate::peers::Peers`] adds to its clients) and required by the nodes' services.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The tenant of requests when no keys are configured, and of keys given without one.
pub const DEFAULT_TENANT: &str = "default";

/// The tenant whose key sees and may change every tenant's sessions at the coordinator (its
/// admin RPCs); any other key sees its own tenant's only.
pub const ADMIN_TENANT: &str = "admin";

/// Shortest key accepted: a short key is a guessable one.
pub const MIN_KEY_LEN: usize = 16;

/// The tenant a request authenticated as (a request extension, HTTP and gRPC alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

impl Default for Tenant {
    fn default() -> Self {
        Tenant(DEFAULT_TENANT.to_owned())
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "this server requires an API key: send `Authorization: Bearer KEY`"
            }
            AuthError::Invalid => "the API key presented is not one of this server's",
        }
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// The keys of `--api-key` values and an `--api-key-file`; None when neither gives any (the
    /// API is then open, every request of the default tenant).
    pub fn load(keys: &[String], file: Option<&Path>) -> Result<Option<ApiKeys>> {
        let mut k = ApiKeys::default();
        for (i, v) in keys.iter().enumerate() {
            let (tenant, key) = match v.split_once(':') {
                Some((t, key)) => (t.trim(), key.trim()),
                None => (DEFAULT_TENANT, v.trim()),
            };
            k.add(tenant, key)
                .with_context(|| format!("--api-key (the {}th)", i + 1))?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-key-file {}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut words = line.split_whitespace();
                let (tenant, key) = match (words.next(), words.next(), words.next()) {
                    (Some(key), None, _) => (DEFAULT_TENANT, key),
                    (Some(t), Some(key), None) => (t, key),
                    _ => bail!(
                        "{}:{}: expected `TENANT KEY` or `KEY`",
                        path.display(),
                        n + 1
                    ),
                };
                k.add(tenant, key)
                    .with_context(|| format!("{}:{}", path.display(), n + 1))?;
            }
        }
        Ok((!k.by_hash.is_empty()).then_some(k))
    }

    fn add(&mut self, tenant: &str, key: &str) -> Result<()> {
        if tenant.is_empty()
            || !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("tenant {tenant:?}: use letters, digits, '-', '_' or '.'");
        }
        if key.chars().count() < MIN_KEY_LEN || key.chars().any(char::is_whitespace) {
            bail!("an API key needs at least {MIN_KEY_LEN} characters and no spaces");
        }
        if let Some(other) = self.by_hash.insert(hash(key), tenant.to_owned()) {
            if other != tenant {
                bail!("one key is given to two tenants ({other} and {tenant})");
            }
        }
        Ok(())
    }

    /// The tenant of a request from its `Authorization` value.
    pub fn tenant(&self, authorization: Option<&str>) -> Result<Tenant, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?.trim();
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        self.by_hash
            .get(&hash(key))
            .map(|t| Tenant(t.clone()))
            .ok_or(AuthError::Invalid)
    }

    /// A tonic interceptor for a public gRPC service: UNAUTHENTICATED without a valid key; the
    /// request carries its [`Tenant`] on.
    pub fn interceptor(
        keys: Option<std::sync::Arc<ApiKeys>>,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        move |mut req: tonic::Request<()>| {
            let value = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let tenant = authenticate(keys.as_deref(), value)
                .map_err(|e| tonic::Status::unauthenticated(e.message()))?;
            req.extensions_mut().insert(tenant);
            Ok(req)
        }
    }
}

/// The tenant of a request that presents `authorization` to an API with `keys` (HTTP and gRPC
/// alike); an open API (no keys) takes every request as the default tenant's.
pub fn authenticate(
    keys: Option<&ApiKeys>,
    authorization: Option<&str>,
) -> Result<Tenant, AuthError> {
    match keys {
        None => Ok(Tenant::default()),
        Some(k) => k.tenant(authorization),
    }
}

/// The metadata key a node RPC carries the node secret in.
pub const NODE_SECRET_HEADER: &str = "x-specd-node-secret";

/// The secret the nodes of one deployment share: their services refuse calls without it, their
/// clients send it.
#[derive(Clone)]
pub struct NodeSecret {
    value: tonic::metadata::AsciiMetadataValue,
    hash: [u8; 32],
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

impl NodeSecret {
    /// The secret in `path`: its first line, at least [`MIN_KEY_LEN`] printable ASCII characters
    /// without spaces (e.g. `openssl rand -hex 32`; a Kubernetes Secret mounted as a file).
    pub fn load(path: &Path) -> Result<NodeSecret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --node-secret-file {}", path.display()))?;
        NodeSecret::new(text.lines().next().unwrap_or("").trim())
            .with_context(|| format!("--node-secret-file {}", path.display()))
    }

    pub fn new(secret: &str) -> Result<NodeSecret> {
        if secret.len() < MIN_KEY_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "a node secret needs at least {MIN_KEY_LEN} printable ASCII characters and no spaces (e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(NodeSecret {
            value: secret.parse().context("not a valid gRPC metadata value")?,
            hash: hash(secret),
        })
    }

    /// A tonic interceptor for a node's service: UNAUTHENTICATED unless the call carries the
    /// secret (None: an open node).
    pub fn interceptor(
        secret: Option<std::sync::Arc<NodeSecret>>,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        move |req: tonic::Request<()>| {
            let Some(s) = &secret else { return Ok(req) };
            match req.metadata().get(NODE_SECRET_HEADER).map(|v| hash(v.to_str().unwrap_or(""))) {
                Some(h) if h == s.hash => Ok(req),
                Some(_) => Err(tonic::Status::unauthenticated(
                    "wrong node secret: this node's --node-secret-file differs from the caller's",
                )),
                None => Err(tonic::Status::unauthenticated(
                    "this node requires the deployment's node secret: give the caller the same --node-secret-file",
                )),
            }
        }
    }
}

/// The client side of [`NodeSecret`]: adds it to every call (nothing when None).
#[derive(Clone, Default, Debug)]
pub struct NodeAuth(pub Option<std::sync::Arc<NodeSecret>>);

impl tonic::service::Interceptor for NodeAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(s) = &self.0 {
            req.metadata_mut()
                .insert(NODE_SECRET_HEADER, s.value.clone());
        }
        Ok(req)
    }
}

/// A new session token: 128 bits from the operating system's random source, as hex.
pub fn new_session_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a node keeps of a session token (its SHA-256), and the check of a presented one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionToken([u8; 32]);

impl SessionToken {
    pub fn of(token: &str) -> SessionToken {
        SessionToken(hash(token))
    }

    /// Ok when `presented` is the token; UNAUTHENTICATED naming the session otherwise.
    pub fn check(&self, session: &str, presented: &str) -> Result<(), tonic::Status> {
        if presented.is_empty() {
            Err(tonic::Status::unauthenticated(format!(
                "session {session}: no session token (send the one OpenSession returned)"
            )))
        } else if hash(presented) != self.0 {
            Err(tonic::Status::unauthenticated(format!(
                "session {session}: wrong session token"
            )))
        } else {
            Ok(())
        }
    }
}

/// The tenant a gRPC request authenticated as (the default one on an open API).
pub fn tenant_of<T>(req: &tonic::Request<T>) -> Tenant {
    req.extensions()
        .get::<Tenant>()
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sk-aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sk-bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn keys_name_their_tenants_and_nothing_else_passes() {
        let dir = std::env::temp_dir().join(format!("specd-keys-{}", std::process::id()));
        std::fs::write(&dir, format!("# tenants\nacme {B}\n\n{A}x\n")).unwrap();
        let k = ApiKeys::load(&[format!("team-1:{A}")], Some(&dir))
            .unwrap()
            .unwrap();
        std::fs::remove_file(&dir).unwrap();
        let bearer = |key: &str| format!("Bearer {key}");
        assert_eq!(k.tenant(Some(&bearer(A))), Ok(Tenant("team-1".into())));
        assert_eq!(k.tenant(Some(&bearer(B))), Ok(Tenant("acme".into())));
        assert_eq!(
            k.tenant(Some(&bearer(&format!("{A}x")))),
            Ok(Tenant(DEFAULT_TENANT.into()))
        );
        assert_eq!(
            k.tenant(Some(&bearer("sk-cccccccccccccccccccc"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(k.tenant(Some(A)), Err(AuthError::Missing));
        assert_eq!(k.tenant(None), Err(AuthError::Missing));
        assert_eq!(k.tenant(Some("Bearer ")), Err(AuthError::Missing));
    }

    #[test]
    fn the_node_secret_is_required_and_compared() {
        use tonic::service::Interceptor;
        let s = std::sync::Arc::new(NodeSecret::new("0123456789abcdef0123").unwrap());
        let mut check = NodeSecret::interceptor(Some(s.clone()));
        let sent = NodeAuth(Some(s)).call(tonic::Request::new(())).unwrap();
        assert!(check(sent).is_ok());
        let e = check(tonic::Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("--node-secret-file"),
            "{}",
            e.message()
        );
        let other = NodeSecret::new("fedcba9876543210fedc").unwrap();
        let sent = NodeAuth(Some(other.into()))
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(check(sent)
            .unwrap_err()
            .message()
            .contains("wrong node secret"));
        // An open node takes anything; an open client sends nothing.
        assert!(NodeSecret::interceptor(None)(tonic::Request::new(())).is_ok());
        let sent = NodeAuth(None).call(tonic::Request::new(())).unwrap();
        assert!(sent.metadata().get(NODE_SECRET_HEADER).is_none());
        for bad in ["short", "has a space in it 0123", "0123456789abcdéf0123"] {
            assert!(NodeSecret::new(bad).is_err(), "{bad}");
        }
        let e = NodeSecret::load(Path::new("/no/such/secret")).unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/secret"), "{e:#}");
    }

    #[test]
    fn session_tokens_are_random_and_checked() {
        let (a, b) = (new_session_token(), new_session_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let t = SessionToken::of(&a);
        assert!(t.check("s1", &a).is_ok());
        for (bad, why) in [
            (b.as_str(), "wrong session token"),
            ("", "no session token"),
        ] {
            let e = t.check("s1", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains(why), "{}", e.message());
        }
    }

    #[test]
    fn no_keys_is_an_open_api_and_bad_keys_are_refused() {
        assert!(ApiKeys::load(&[], None).unwrap().is_none());
        for bad in [
            "short",
            "bad tenant:sk-aaaaaaaaaaaaaaaaaaaa",
            ":sk-aaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(ApiKeys::load(&[bad.into()], None).is_err(), "{bad}");
        }
        let e = ApiKeys::load(&[format!("a:{A}"), format!("b:{A}")], None).unwrap_err();
        assert!(format!("{e:#}").contains("two tenants"), "{e:#}");
        let e = ApiKeys::load(&[], Some(Path::new("/no/such/keys"))).unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/keys"), "{e:#}");
    }
}
