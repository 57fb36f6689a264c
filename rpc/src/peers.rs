//! Channels to peer nodes, opened once per URL and reused by every request: a tonic channel
//! multiplexes calls over one HTTP/2 connection and reconnects by itself after its peer restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use specd_proto::v1::drafter_client::DrafterClient;
use specd_proto::v1::target_verifier_client::TargetVerifierClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::auth::{NodeAuth, NodeSecret};
use crate::tls::Tls;

/// A client of a target-node (carrying the node secret, if any).
pub type TargetClient = TargetVerifierClient<InterceptedService<Channel, NodeAuth>>;
/// A client of a draft-node (carrying the node secret, if any).
pub type DraftClient = DrafterClient<InterceptedService<Channel, NodeAuth>>;

/// The largest message a node client accepts (a long prompt's token ids, a block's draft rows).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Peers remembered at most; a node that is handed many URLs (a draft-node is told its target per
/// request) forgets the oldest rather than grow.
const MAX_PEERS: usize = 64;

/// Connects to a node URL with a bounded timeout (TLS for an `https://` URL, with `tls`'s CA
/// and certificate); an unreachable peer is `UNAVAILABLE`, a malformed URL `INVALID_ARGUMENT`.
pub async fn connect(url: &str, tls: Option<&Tls>) -> Result<Channel, Status> {
    connect_named(url, tls, None).await
}

/// [`connect`], the peer's certificate checked against `server_name` rather than the URL's host
/// (a URL made of an address a DNS name resolved to).
pub async fn connect_named(
    url: &str,
    tls: Option<&Tls>,
    server_name: Option<&str>,
) -> Result<Channel, Status> {
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| {
            Status::invalid_argument(format!(
                "invalid URL {url:?}: {e} (expected e.g. http://127.0.0.1:50051)"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        // A peer whose host vanished without closing the connection is noticed within seconds.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut config = Tls::client(tls);
        if let Some(name) = server_name {
            config = config.domain_name(name);
        }
        ep = ep
            .tls_config(config)
            .map_err(|e| Status::invalid_argument(format!("TLS for {url}: {e}")))?;
    }
    ep.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot reach {url}: {}{}",
            source_chain(&e),
            crate::tls::scheme_hint(url)
        ))
    })
}

/// A failed call's message and its sources, as one line (transport failures keep their cause in
/// the sources).
pub fn status_text(s: &Status) -> String {
    with_sources(s.message().to_owned(), std::error::Error::source(s))
}

/// An error and its sources, as one line (a transport error's own text is often just "transport
/// error").
pub fn source_chain(e: &dyn std::error::Error) -> String {
    with_sources(e.to_string(), e.source())
}

/// `text`, then each source's text that it does not hold already.
fn with_sources(mut text: String, mut next: Option<&dyn std::error::Error>) -> String {
    while let Some(c) = next {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        next = c.source();
    }
    text
}

/// Whether a failed call's code says the connection itself failed (as a scheme that does not
/// match the peer's — http:// to a TLS node, https:// to a plaintext one — makes it fail).
pub fn transport_failure(s: &Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

/// The channels of one process, by URL (cheap to clone), with the node secret and the TLS
/// settings of its clients.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<Channels>>,
    /// The name a URL's certificate must carry when it is not the URL's host (by URL).
    server_names: Arc<Mutex<HashMap<String, String>>>,
    auth: NodeAuth,
    tls: Option<Arc<Tls>>,
}

#[derive(Default)]
struct Channels {
    by_url: HashMap<String, Channel>,
    /// URLs in order of first use: past `MAX_PEERS`, the oldest is forgotten.
    order: VecDeque<String>,
}

impl Peers {
    /// Peers whose node clients send `secret` (None: nothing) and connect to https:// URLs with
    /// `tls` (None: the public web roots).
    pub fn new(secret: Option<Arc<NodeSecret>>, tls: Option<Arc<Tls>>) -> Peers {
        Peers {
            auth: NodeAuth(secret),
            tls,
            ..Peers::default()
        }
    }

    /// The channel to `url`, connected on first use.
    pub async fn channel(&self, url: &str) -> Result<Channel, Status> {
        if let Some(c) = self.channels.lock().unwrap().by_url.get(url) {
            return Ok(c.clone());
        }
        let name = self.server_name(url);
        let c = connect_named(url, self.tls.as_deref(), name.as_deref()).await?;
        let mut m = self.channels.lock().unwrap();
        if let Some(c) = m.by_url.get(url) {
            return Ok(c.clone());
        }
        while m.by_url.len() >= MAX_PEERS {
            let Some(old) = m.order.pop_front() else {
                break;
            };
            m.by_url.remove(&old);
        }
        m.order.push_back(url.to_owned());
        m.by_url.insert(url.to_owned(), c.clone());
        Ok(c)
    }

    /// Checks `url`'s certificate against `name` (a URL made of an address `name` resolved to).
    pub fn set_server_name(&self, url: &str, name: &str) {
        let mut m = self.server_names.lock().unwrap();
        if m.len() >= MAX_PEERS * 4 && !m.contains_key(url) {
            m.clear();
        }
        m.insert(url.to_owned(), name.to_owned());
    }

    /// The name `url`'s certificate is checked against, when it is not the URL's host.
    pub fn server_name(&self, url: &str) -> Option<String> {
        self.server_names.lock().unwrap().get(url).cloned()
    }

    /// Forgets `url`'s channel (its peer failed in a way a new connection may fix).
    pub fn forget(&self, url: &str) {
        let mut m = self.channels.lock().unwrap();
        if m.by_url.remove(url).is_some() {
            m.order.retain(|u| u != url);
        }
    }

    pub async fn target(&self, url: &str) -> Result<TargetClient, Status> {
        Ok(
            TargetVerifierClient::with_interceptor(self.channel(url).await?, self.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE),
        )
    }

    pub async fn drafter(&self, url: &str) -> Result<DraftClient, Status> {
        Ok(
            DrafterClient::with_interceptor(self.channel(url).await?, self.auth.clone())
                .max_decoding_message_size(MAX_MESSAGE),
        )
    }
}
