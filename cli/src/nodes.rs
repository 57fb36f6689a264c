//! `specd target-node`, `specd draft-node`, `specd coordinator`: the engine split across machines.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use specd_engine::device::Device;
use specd_engine::pipeline::LoadedModel;
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};

use crate::generate::DrafterArgs;

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a server to its end, then gives blocking work still running (a model load, a prefill past
/// the drain timeout) a second before the process goes on to exit.
pub fn run_server(server: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let rt = runtime()?;
    let r = rt.block_on(server);
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

/// Resolves on Ctrl-C or SIGTERM (what container runtimes and Kubernetes send).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

/// Where a node serves its Prometheus metrics.
#[derive(Args, Clone)]
pub struct MetricsArgs {
    /// Also serve Prometheus metrics at http://ADDR/metrics, e.g. 0.0.0.0:9100 (docs/serving.md
    /// lists them).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

impl MetricsArgs {
    fn addr(&self) -> Result<Option<SocketAddr>> {
        self.metrics_listen
            .as_deref()
            .map(|s| {
                s.parse().with_context(|| {
                    format!("--metrics-listen {s:?}: expected HOST:PORT, e.g. 0.0.0.0:9100")
                })
            })
            .transpose()
    }
}

/// Runs a node until Ctrl-C or SIGTERM, with its `/metrics` listener beside it when asked for;
/// `node` is given the future that resolves on the signal.
fn run_node<F, Fut>(metrics: &MetricsArgs, node: F) -> Result<()>
where
    F: FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let addr = metrics.addr()?;
    run_server(async move {
        let Some(addr) = addr else {
            return node(Box::pin(shutdown_signal())).await;
        };
        let listener = specd_telemetry::metrics::bind(addr).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let metrics = tokio::spawn(specd_telemetry::metrics::serve(
            listener,
            stopped(rx.clone()),
        ));
        let r = node(Box::pin(stopped(rx))).await;
        metrics.abort();
        r
    })
}

/// Graceful shutdown (Ctrl-C or SIGTERM).
#[derive(Args, Clone, Copy)]
pub struct DrainArgs {
    /// On Ctrl-C or SIGTERM: health turns NOT_SERVING (HTTP 503), new work is refused, and what
    /// runs may finish for at most this many seconds before the process exits.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
}

impl DrainArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout.clamp(0.0, 86_400.0))
    }
}

/// The secret the processes of one deployment share on their node RPCs (docs/distributed.md).
#[derive(Args, Clone)]
pub struct NodeSecretArgs {
    /// A file holding the deployment's node secret (first line, ≥ 16 characters, e.g. `openssl
    /// rand -hex 32`; a mounted Kubernetes Secret). A node given one refuses calls without it
    /// (UNAUTHENTICATED; health stays open); the coordinator and draft-nodes send it. Give the
    /// same file to every target-node, draft-node and coordinator. Without it node ports are
    /// open to whoever reaches them.
    #[arg(long, env = "SPECD_NODE_SECRET_FILE", value_name = "FILE")]
    pub node_secret_file: Option<std::path::PathBuf>,
}

impl NodeSecretArgs {
    pub fn load(&self) -> Result<Option<std::sync::Arc<specd_rpc::auth::NodeSecret>>> {
        self.node_secret_file
            .as_deref()
            .map(|p| specd_rpc::auth::NodeSecret::load(p).map(std::sync::Arc::new))
            .transpose()
    }
}

/// The certificate a process serves TLS with: its gRPC server's, or HTTPS on an HTTP API.
#[derive(Args, Clone)]
pub struct TlsIdentityArgs {
    /// Serve TLS with this certificate (PEM, chain first): gRPC on a node, HTTPS on an HTTP API;
    /// a node also presents it to peers that require one. With --tls-key.
    #[arg(
        long,
        env = "SPECD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "SPECD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsIdentityArgs {
    /// The certificate alone (`serve`: no peers to check).
    pub fn load(&self) -> Result<Option<std::sync::Arc<specd_rpc::tls::Tls>>> {
        TlsArgs {
            identity: self.clone(),
            tls_ca: None,
            tls_client_ca: None,
        }
        .load()
    }
}

/// TLS on the node's gRPC server and on its calls to https:// peers (docs/distributed.md).
#[derive(Args, Clone)]
pub struct TlsArgs {
    #[command(flatten)]
    pub identity: TlsIdentityArgs,
    /// The CA that peers' certificates must chain to, for https:// peer URLs (default: the public
    /// web roots). http:// URLs stay plaintext.
    #[arg(long, env = "SPECD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Mutual TLS: require every caller of this node's gRPC server to present a certificate that
    /// chains to this CA (health probes included: use `specd health` with SPECD_TLS_* then).
    #[arg(
        long,
        env = "SPECD_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    pub fn load(&self) -> Result<Option<std::sync::Arc<specd_rpc::tls::Tls>>> {
        Ok(specd_rpc::tls::Tls::load(
            self.identity.tls_cert.as_deref(),
            self.identity.tls_key.as_deref(),
            self.tls_ca.as_deref(),
            self.tls_client_ca.as_deref(),
        )?
        .map(std::sync::Arc::new))
    }
}

pub fn parse_listen(s: &str) -> Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("--listen {s:?}: expected HOST:PORT, e.g. 127.0.0.1:50051"))
}

#[derive(Args)]
pub struct TargetNodeArgs {
    /// Address to serve on, e.g. 0.0.0.0:50051.
    #[arg(long)]
    pub listen: String,
    /// The target model (preset, file, directory or Hugging Face repo id).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub model: String,
    /// Device: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Sessions held at most; more wait in line (--max-waiting), then are refused with
    /// RESOURCE_EXHAUSTED and a retry-after hint.
    #[arg(long, default_value_t = 64)]
    pub max_sessions: usize,
    /// MiB of KV cache all sessions may hold. Each session reserves what its prompt,
    /// max_tokens and one block can fill; past the bound requests wait, as past
    /// --max-sessions. Default: no bound.
    #[arg(long, value_name = "MIB")]
    pub kv_memory: Option<u64>,
    /// Requests that may wait for room (served in arrival order); more are refused at once.
    #[arg(long, default_value_t = 256)]
    pub max_waiting: usize,
    /// Seconds a request may wait for room before it is refused.
    #[arg(long, default_value_t = 30)]
    pub max_wait: u64,
    /// Seconds a session may stay idle before its KV cache is dropped.
    #[arg(long, default_value_t = 300)]
    pub session_idle_timeout: u64,
    /// Largest block (drafted tokens) a Verify frame may carry.
    #[arg(long, default_value_t = 32)]
    pub max_block: usize,
    #[command(flatten)]
    pub node_secret: NodeSecretArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub drain: DrainArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl TargetNodeArgs {
    /// The node's settings, checked as the node checks them (it then loads its model).
    pub fn config(&self) -> Result<specd_target_node::TargetConfig> {
        if self.max_sessions == 0 || self.session_idle_timeout == 0 {
            anyhow::bail!("--max-sessions and --session-idle-timeout must be at least 1");
        }
        if self.kv_memory == Some(0) {
            anyhow::bail!("--kv-memory must be at least 1 (MiB)");
        }
        self.metrics.addr()?;
        Ok(specd_target_node::TargetConfig {
            listen: parse_listen(&self.listen)?,
            limits: specd_target_node::admission::Limits {
                max_sessions: self.max_sessions,
                kv_memory: self.kv_memory.map(|mib| mib << 20),
                max_waiting: self.max_waiting,
                max_wait: Duration::from_secs(self.max_wait),
            },
            idle_timeout: Duration::from_secs(self.session_idle_timeout),
            max_block: self.max_block,
            drain_timeout: self.drain.timeout(),
            node_secret: self.node_secret.load()?,
            tls: self.tls.load()?,
        })
    }
}

pub fn target_node(a: TargetNodeArgs) -> Result<()> {
    let cfg = a.config()?;
    let (name, device) = (a.model.clone(), a.device);
    let load = move || LoadedModel::load_on(&name, device, &crate::log);
    run_node(&a.metrics, |stop| specd_target_node::serve(cfg, load, stop))
}

#[derive(Args)]
pub struct DraftNodeArgs {
    /// Address to serve on, e.g. 0.0.0.0:50052.
    #[arg(long)]
    pub listen: String,
    #[command(flatten)]
    pub drafter: DrafterArgs,
    /// The draft model (preset, file, directory or Hugging Face repo id); not loaded with
    /// --drafter ngram.
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub model: String,
    /// Device: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Largest block this node drafts.
    #[arg(long, default_value_t = 32)]
    pub max_gamma: usize,
    /// Target-node URLs a request may name (comma-separated, as the coordinator's --target
    /// lists them; a `dns:///NAME:PORT` allows every address NAME resolves to); others are
    /// refused with PERMISSION_DENIED. Default: any, which lets whoever reaches this node make
    /// it connect anywhere.
    #[arg(long, value_delimiter = ',')]
    pub allow_target: Vec<String>,
    #[command(flatten)]
    pub node_secret: NodeSecretArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub drain: DrainArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl DraftNodeArgs {
    /// The node's settings, checked as the node checks them.
    pub fn config(&self) -> Result<specd_draft_node::DraftConfig> {
        self.metrics.addr()?;
        Ok(specd_draft_node::DraftConfig {
            listen: parse_listen(&self.listen)?,
            max_gamma: self.max_gamma,
            drafter: self.drafter.spec()?,
            drain_timeout: self.drain.timeout(),
            allowed_targets: self.allow_target.clone(),
            node_secret: self.node_secret.load()?,
            tls: self.tls.load()?,
        })
    }
}

pub fn draft_node(a: DraftNodeArgs) -> Result<()> {
    let cfg = a.config()?;
    let (drafter, name, device) = (cfg.drafter, a.model.clone(), a.device);
    let load = move || {
        drafter
            .needs_model()
            .then(|| LoadedModel::load_on(&name, device, &crate::log))
            .transpose()
    };
    run_node(&a.metrics, |stop| specd_draft_node::serve(cfg, load, stop))
}

#[derive(Args)]
pub struct CoordinatorArgs {
    /// Address to serve on, e.g. 0.0.0.0:50050.
    #[arg(long)]
    pub listen: String,
    /// Target-node URLs, comma-separated (e.g. http://10.0.0.5:50051), or `dns:///NAME:PORT`:
    /// every address NAME resolves to is a target (a Kubernetes headless Service: one per ready
    /// pod), resolved again every --dns-refresh seconds.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<String>,
    /// Seconds between resolutions of `dns:///` targets.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub dns_refresh: f64,
    /// Draft-node URLs, comma-separated. None: target-only decoding.
    #[arg(long, value_delimiter = ',')]
    pub draft: Vec<String>,
    /// Also serve the OpenAI-compatible HTTP API on this address, e.g. 0.0.0.0:8000
    /// (docs/serving.md); its requests run like gRPC ones.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// At start, seconds to wait for the first target-node that can be reached (0: exit at once
    /// if none can). Targets not reached are used once their health checks answer, so a list may
    /// name pods that do not exist yet (a StatefulSet's ordinals up to its HPA's maximum).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub target_wait: f64,
    /// A tenant's budget pool, TENANT=P (repeatable; `*=P`: each tenant not named gets a pool of
    /// P): the expected number of the tenant's outputs that differ from the exact run stays ≤ P
    /// over the coordinator's lifetime. Each lossy session's budget is reserved from the pool
    /// (what is left when it asks for more; the exact rule once it is dry) and what it did not
    /// spend returns when it ends. ListSessions and the metrics show each pool.
    #[arg(long = "tenant-pool", value_name = "TENANT=P")]
    pub tenant_pools: Vec<String>,
    /// A draft-node stream that sends no event for this many seconds is given up: another
    /// draft-node, or the target alone, finishes the request (a network partition sends no reset;
    /// HTTP/2 keepalives alone notice it within about 15 s).
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
    pub stall_timeout: f64,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub node_secret: NodeSecretArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub api: crate::serve::ApiArgs,
}

impl CoordinatorArgs {
    /// The coordinator's settings, checked as it checks them.
    pub fn config(&self) -> Result<specd_coordinator::CoordinatorConfig> {
        // Each file is read once: the HTTP API and the gRPC service share the TLS and the keys.
        let tls = self.tls.load()?;
        let http = match &self.http_listen {
            Some(h) => Some((
                h.parse()
                    .with_context(|| format!("--http-listen {h:?}: expected HOST:PORT"))?,
                specd_openai::HttpConfig {
                    tls: tls.clone(),
                    ..self.api.config()?
                },
            )),
            None => None,
        };
        let api_keys = match &http {
            Some((_, c)) => c.api_keys.clone(),
            None => self.api.api_keys()?,
        };
        Ok(specd_coordinator::CoordinatorConfig {
            listen: parse_listen(&self.listen)?,
            targets: self.target.clone(),
            dns_refresh: Duration::try_from_secs_f64(self.dns_refresh)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    anyhow::anyhow!("--dns-refresh {}: give seconds > 0", self.dns_refresh)
                })?,
            drafts: self.draft.clone(),
            http,
            model_name: self.api.served_model_name.clone(),
            drain_timeout: self.api.drain.timeout(),
            api_keys,
            node_secret: self.node_secret.load()?,
            tls,
            target_wait: Duration::try_from_secs_f64(self.target_wait).map_err(|_| {
                anyhow::anyhow!("--target-wait {}: give seconds ≥ 0", self.target_wait)
            })?,
            pools: specd_coordinator::pools::Pools::parse(&self.tenant_pools)?.map(Arc::new),
            stall_timeout: Duration::try_from_secs_f64(self.stall_timeout)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    anyhow::anyhow!("--stall-timeout {}: give seconds > 0", self.stall_timeout)
                })?,
        })
    }
}

pub fn coordinator(a: CoordinatorArgs) -> Result<()> {
    let cfg = a.config()?;
    run_node(&a.metrics, |stop| specd_coordinator::serve(cfg, stop))
}

#[derive(Args)]
pub struct LinkArgs {
    /// Address to accept connections on, e.g. 127.0.0.1:50061.
    #[arg(long)]
    pub listen: String,
    /// Where to forward them, e.g. 127.0.0.1:50051 (a target-node).
    #[arg(long)]
    pub upstream: String,
    /// One-way delay of each direction (RTT = 2 × delay), e.g. 20ms.
    #[arg(long, default_value = "0ms", conflicts_with = "rtt")]
    pub delay: String,
    /// The round trip to emulate instead of --delay: each direction is delayed by half of it.
    #[arg(long)]
    pub rtt: Option<String>,
    /// Uniform jitter added to each chunk's delay (byte order is kept), e.g. 2ms.
    #[arg(long, default_value = "0ms")]
    pub jitter: String,
    /// Bandwidth of each direction, e.g. 100mbit or 10MB/s, or unlimited (the default).
    #[arg(long)]
    pub rate: Option<String>,
    /// Seed of the jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl LinkArgs {
    /// The link's settings, checked as it checks them.
    pub fn config(&self) -> Result<specd_link::LinkConfig> {
        if self.upstream.parse::<SocketAddr>().is_err() && !self.upstream.contains(':') {
            anyhow::bail!("--upstream {:?}: expected HOST:PORT", self.upstream);
        }
        Ok(specd_link::LinkConfig {
            listen: parse_listen(&self.listen)?,
            upstream: self.upstream.clone(),
            delay: match &self.rtt {
                Some(rtt) => specd_link::parse_duration(rtt).context("--rtt")? / 2,
                None => specd_link::parse_duration(&self.delay).context("--delay")?,
            },
            jitter: specd_link::parse_duration(&self.jitter).context("--jitter")?,
            rate: self
                .rate
                .as_deref()
                .filter(|r| *r != "unlimited")
                .map(specd_link::parse_rate)
                .transpose()
                .context("--rate")?,
            seed: self.seed,
        })
    }
}

pub fn link(a: LinkArgs) -> Result<()> {
    run_server(specd_link::serve(a.config()?, shutdown_signal()))
}
