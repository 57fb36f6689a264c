//! `specd draft-node`: serves `specd.v1.Drafter`. `Run` connects to the target named in the
//! request, refuses a target with another vocabulary (when it drafts with a model), and runs the
//! engine's speculative loop (`spec_decode::generate::run`, the same code as the embedded mode)
//! through [`GrpcVerifier`], a `Verifier` that sends each block on a `Verify` stream and waits for
//! its verdict. A node started with `--drafter ngram` or `suffix` holds no model at all: it drafts
//! by prompt lookup or suffix counts in any vocabulary (it adopts the target's), and the text of
//! its events, like every node's, comes from the target's verdicts.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use specd_engine::pipeline::LoadedModel;
use specd_engine::spec_decode::draft::{Drafter, DrafterSpec};
use specd_engine::spec_decode::generate::run as run_loop;
use specd_engine::spec_decode::{DraftBlock, FinishReason, Verdict, Verifier};
use specd_proto::v1::drafter_server::SERVICE_NAME;
use specd_proto::v1::drafter_server::{Drafter as DrafterRpc, DrafterServer};
use specd_proto::v1::{self, DraftFrame, TokenEvent};
use specd_rpc::convert;
use specd_rpc::loading::{Loaded, Loading};
use specd_rpc::peers::Peers;
use specd_rpc::set_health;
use specd_rpc::trace;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tracing::Instrument;

pub struct DraftConfig {
    pub listen: SocketAddr,
    pub max_gamma: usize,
    /// The drafter of requests that name none.
    pub drafter: DrafterSpec,
    /// On shutdown, how long running loops may take to end (specd_rpc::drain).
    pub drain_timeout: Duration,
    /// The target URLs a request may name; empty: any (the node then connects wherever a
    /// caller asks).
    pub allowed_targets: Vec<String>,
    /// The deployment's node secret: required on every call but health's, and sent to the
    /// target-nodes; None: open.
    pub node_secret: Option<Arc<specd_rpc::auth::NodeSecret>>,
    /// TLS: its server's certificate (and mutual TLS), the CA of its peers; None: plaintext.
    pub tls: Option<Arc<specd_rpc::tls::Tls>>,
}

#[derive(Clone)]
pub struct DraftNode {
    /// None on a model-free node; empty while the model loads.
    model: Loaded<Option<Arc<LoadedModel>>>,
    drafter: DrafterSpec,
    max_gamma: usize,
    drain: specd_rpc::drain::Drain,
    /// Speculative loops running now.
    running: Arc<AtomicUsize>,
    /// Channels to the targets, reused across requests.
    peers: Peers,
    /// `DraftConfig::allowed_targets`.
    allowed_targets: Arc<Vec<String>>,
}

/// Counts a running loop while alive.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        let now = n.fetch_add(1, Ordering::AcqRel) + 1;
        specd_telemetry::metrics::draft_loops(now);
        Running(n.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        specd_telemetry::metrics::draft_loops(now);
    }
}

/// A `Verifier` over a gRPC `Verify` stream (called from a blocking thread).
pub struct GrpcVerifier {
    session_id: String,
    /// The session's token, presented on the stream's first frame.
    session_token: String,
    frames: mpsc::Sender<DraftFrame>,
    verdicts: Streaming<v1::Verdict>,
    handle: tokio::runtime::Handle,
    seq: u64,
    /// Committed-token events for the caller.
    events: mpsc::Sender<Result<TokenEvent, Status>>,
    pub last_spent: f64,
    /// Round-trip minus target verify time of each round, microseconds.
    pub overhead_us: Vec<f64>,
    /// Send times of the blocks in flight, and whether each was alone in flight when sent.
    sent: std::collections::VecDeque<(std::time::Instant, bool)>,
    /// When the loop last left this verifier: the time until its next block is drafting time.
    returned: std::time::Instant,
}

/// The q-quantile of `v` (sorted in place).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

impl Verifier for GrpcVerifier {
    fn submit(&mut self, block: DraftBlock) -> anyhow::Result<()> {
        self.seq += 1;
        let frame = DraftFrame {
            session_id: if self.seq == 1 {
                self.session_id.clone()
            } else {
                String::new()
            },
            session_token: if self.seq == 1 {
                self.session_token.clone()
            } else {
                String::new()
            },
            block: Some(convert::block_to_wire(&block, self.seq)),
        };
        let alone = self.sent.is_empty();
        let now = std::time::Instant::now();
        if !block.tokens.is_empty() {
            specd_telemetry::metrics::drafted((now - self.returned).as_secs_f64());
        }
        self.sent.push_back((now, alone));
        let sent = self
            .frames
            .blocking_send(frame)
            .map_err(|_| anyhow::anyhow!("the target closed the Verify stream"));
        self.returned = std::time::Instant::now();
        sent
    }

    fn receive(&mut self) -> anyhow::Result<Verdict> {
        let v = self
            .handle
            .block_on(self.verdicts.message())
            .map_err(|s| anyhow::anyhow!("target: {}: {}", s.code(), s.message()))?
            .ok_or_else(|| anyhow::anyhow!("the target ended the Verify stream"))?;
        if let Some((sent, alone)) = self.sent.pop_front() {
            // Blocks sent alone only: a pipelined block's wait includes the previous verify.
            if alone && !v.stale {
                let round_trip = sent.elapsed().as_secs_f64();
                specd_telemetry::metrics::round_trip(round_trip);
                self.overhead_us
                    .push((round_trip * 1e3 - v.verify_ms).max(0.0) * 1e3);
            }
        }
        self.returned = std::time::Instant::now();
        if v.stale {
            return Ok(Verdict {
                stale: true,
                committed_len: v.committed_len as usize,
                budget_spent: v.budget_spent,
                ..Verdict::default()
            });
        }
        self.last_spent = v.budget_spent;
        let finished = match v.finish_reason.as_str() {
            "stop" => Some(FinishReason::Stop),
            "length" => Some(FinishReason::Length),
            _ => None,
        };
        let event = TokenEvent {
            text: v.text,
            token_ids: v.committed.clone(),
            lossy: v.lossy.clone(),
            charge: v.charge.clone(),
            budget_spent: v.budget_spent,
            committed_len: v.committed_len,
            finished: false,
            session_id: self.session_id.clone(),
            logprobs: v.logprobs.clone(),
            ..Default::default()
        };
        self.events
            .blocking_send(Ok(event))
            .map_err(|_| anyhow::anyhow!("the caller went away"))?;
        Ok(Verdict {
            stale: false,
            accepted: v.accepted as usize,
            rejected: v.rejected,
            token_info: convert::token_info(&v.lossy, &v.charge),
            committed: v.committed,
            logprobs: convert::logprobs_from_wire(&v.logprobs),
            lossy_accepted: v.lossy_accepted as usize,
            protected_positions: v.protected_positions as usize,
            budget_spent: v.budget_spent,
            committed_len: v.committed_len as usize,
            finished,
            verify_s: v.verify_ms / 1e3,
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TokenEvent, Status>> + Send>>;

#[tonic::async_trait]
impl DrafterRpc for DraftNode {
    async fn info(&self, _: Request<v1::InfoRequest>) -> Result<Response<v1::ModelInfo>, Status> {
        Ok(Response::new(match self.model.get()? {
            Some(m) => convert::model_info(m, "draft", self.max_gamma),
            // No vocabulary of its own: an empty fingerprint drafts for any target.
            None => v1::ModelInfo {
                protocol_version: specd_rpc::PROTOCOL_VERSION.into(),
                role: "draft".into(),
                model_id: self.drafter.to_string(),
                max_block: self.max_gamma as u32,
                device: "none".into(),
                ..Default::default()
            },
        }))
    }

    type RunStream = EventStream;

    async fn run(&self, req: Request<v1::RunRequest>) -> Result<Response<Self::RunStream>, Status> {
        self.drain.admit("the draft-node")?;
        let loaded = self.model.get()?.clone();
        let running = Running::new(&self.running);
        let ctx = trace::incoming(&req);
        let span = tracing::info_span!(
            "run",
            trace_id = %ctx.trace_id_hex(),
            session_id = %req.get_ref().session_id
        );
        self.start(req.into_inner(), loaded, running, ctx)
            .instrument(span)
            .await
    }
}

impl DraftNode {
    /// Whether `--allow-target` lets it connect to `url`: listed as such, or one of the
    /// addresses a listed `dns:///NAME:PORT` resolves to now (as the coordinator expands it).
    async fn target_allowed(&self, url: &str) -> bool {
        if self.allowed_targets.is_empty() || self.allowed_targets.iter().any(|a| a == url) {
            return true;
        }
        for a in self.allowed_targets.iter() {
            if specd_rpc::dns::names(a, url).await {
                return true;
            }
        }
        false
    }

    async fn start(
        &self,
        r: v1::RunRequest,
        loaded: Option<Arc<LoadedModel>>,
        running: Running,
        ctx: specd_telemetry::trace::TraceContext,
    ) -> Result<Response<EventStream>, Status> {
        if r.session_id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        if r.prompt_ids.is_empty() {
            return Err(Status::invalid_argument(
                "prompt_ids is required (SessionOpened.prompt_ids)",
            ));
        }
        let sampling = convert::sampling_from_wire(r.sampling.as_ref())?;
        let mode = convert::draft_sampling_from_wire(&r.draft_sampling)?;
        let gamma = convert::gamma_from_wire(r.gamma, &r.gamma_policy, r.gamma_max, usize::MAX)?;
        let spec = if r.drafter.is_empty() {
            self.drafter
        } else {
            r.drafter
                .parse::<DrafterSpec>()
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?
        };
        let model = match (spec.needs_model(), &loaded) {
            (true, None) => {
                return Err(Status::failed_precondition(format!(
                    "this draft-node has no draft model (it serves --drafter {}); ask for drafter {0} or start it with --drafter model",
                    self.drafter
                )))
            }
            (true, Some(m)) => Some(m.clone()),
            (false, _) => None,
        };
        if !self.target_allowed(&r.target_url).await {
            return Err(Status::permission_denied(
                "target_url is not one this draft-node may connect to (its --allow-target list)",
            ));
        }
        if !r.target_server_name.is_empty() {
            self.peers
                .set_server_name(&r.target_url, &r.target_server_name);
        }
        let mut client = self.peers.target(&r.target_url).await?;
        let info =
            match (client.info(trace::unary(v1::InfoRequest {}, &ctx, trace::SHORT_CALL))).await {
                Ok(i) => i.into_inner(),
                Err(e) => {
                    // A peer that failed may need a new connection next time.
                    self.peers.forget(&r.target_url);
                    return Err(e);
                }
            };
        if let Some(m) = &model {
            let mine = m.tokenizer.fingerprint();
            if info.vocab_fingerprint != mine {
                return Err(Status::failed_precondition(format!(
                    "vocabulary mismatch: draft {} has fingerprint {mine}, target {} at {} has {}",
                    m.name, info.model_id, r.target_url, info.vocab_fingerprint
                )));
            }
        }
        let mut drafter = Drafter::from_spec(
            spec,
            model.map(|m| m.model.clone()),
            sampling,
            mode,
            &r.tenant,
        )
        .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let gamma = gamma.capped(self.max_gamma.min(info.max_block as usize));
        let (frame_tx, frame_rx) = mpsc::channel(2);
        let verdicts = client
            .verify(trace::outgoing(ReceiverStream::new(frame_rx), &ctx))
            .await?
            .into_inner();
        tracing::info!(target_url = %r.target_url, drafter = %spec, gamma = ?gamma, "speculative loop started");
        let (tx, rx) = mpsc::channel(16);
        let handle = tokio::runtime::Handle::current();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let _running = running;
            let mut verifier = GrpcVerifier {
                session_id: r.session_id.clone(),
                session_token: r.session_token.clone(),
                frames: frame_tx,
                verdicts,
                handle,
                seq: 0,
                events: tx.clone(),
                last_spent: 0.0,
                overhead_us: Vec::new(),
                sent: Default::default(),
                returned: std::time::Instant::now(),
            };
            match run_loop(
                &mut verifier,
                Some(&mut drafter),
                &r.prompt_ids,
                r.max_tokens as usize,
                gamma,
                r.pipeline,
                // The caller went away (the stream was dropped): end the session here.
                |_| {
                    if tx.is_closed() {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                },
            ) {
                Ok(stats) => {
                    tracing::info!(
                        completion_tokens = stats.completion_tokens,
                        drafted = stats.drafted_tokens,
                        accepted = stats.accepted_tokens,
                        finish_reason = %stats.finish_reason.map_or("none".into(), |f| format!("{f:?}").to_lowercase()),
                        "speculative loop finished"
                    );
                    let mut wire = convert::stats_to_wire(&stats);
                    wire.rounds = verifier.overhead_us.len() as u64;
                    wire.round_overhead_us_p50 = quantile(&mut verifier.overhead_us, 0.5);
                    wire.round_overhead_us_p99 = quantile(&mut verifier.overhead_us, 0.99);
                    let _ = tx.blocking_send(Ok(TokenEvent {
                        finished: true,
                        finish_reason: stats
                            .finish_reason
                            .map(|f| format!("{f:?}").to_lowercase())
                            .unwrap_or_default(),
                        budget_spent: stats.budget_spent,
                        committed_len: (r.prompt_ids.len() + stats.completion_tokens) as u64,
                        stats: Some(wire),
                        session_id: r.session_id.clone(),
                        ..Default::default()
                    }));
                }
                Err(e) => {
                    tracing::warn!("speculative loop failed: {e:#}");
                    let _ = tx.blocking_send(Err(Status::aborted(format!(
                        "speculative loop failed: {e:#}"
                    ))));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Binds the listener (a clear error when the address is taken), then loads the draft model
/// with `load` while health answers NOT_SERVING (a model-free drafter loads nothing), turns
/// SERVING, and serves until `shutdown`; a failed load stops the node with its error. `load`
/// returns None for a drafter that needs no model.
pub async fn serve(
    cfg: DraftConfig,
    load: impl FnOnce() -> Result<Option<LoadedModel>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = specd_rpc::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let node = DraftNode {
        model: Loaded::default(),
        drafter: cfg.drafter,
        max_gamma: cfg.max_gamma,
        drain: Default::default(),
        running: Default::default(),
        peers: Peers::new(cfg.node_secret.clone(), cfg.tls.clone()),
        allowed_targets: Arc::new(cfg.allowed_targets.clone()),
    };
    for a in &cfg.allowed_targets {
        if let Some(Err(e)) = specd_rpc::dns::parse(a) {
            return Err(e.context("--allow-target"));
        }
    }
    if cfg.allowed_targets.is_empty() {
        tracing::warn!(
            "no --allow-target: this draft-node connects to any target URL a caller names; list the targets to refuse others"
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, SERVICE_NAME, ServingStatus::NotServing).await;
    let ready = {
        let reporter = reporter.clone();
        let node = node.clone();
        async move {
            specd_telemetry::metrics::draft_loops(0);
            // Shut down while loading: stay NOT_SERVING.
            if node.drain.is_draining() {
                return;
            }
            set_health(&reporter, SERVICE_NAME, ServingStatus::Serving).await;
            let what = match node.model.get() {
                Ok(Some(m)) => m.name.clone(),
                _ => format!("drafter {} (no model)", node.drafter),
            };
            tracing::info!(%addr, model = %what, "draft-node: serving");
        }
    };
    let drafter = cfg.drafter;
    let loading = Loading::start(
        &node.model,
        move || {
            let model = load()?;
            if drafter.needs_model() && model.is_none() {
                anyhow::bail!("the model drafter needs a draft model");
            }
            Ok(model.map(Arc::new))
        },
        ready,
    );
    let signal = loading.or_failed(shutdown);
    let drain = node.drain.clone();
    let running = node.running.clone();
    let on_drain =
        async move { set_health(&reporter, SERVICE_NAME, ServingStatus::NotServing).await };
    let mut builder = specd_rpc::tls::server_builder(cfg.tls.as_deref())?;
    drain
        .serve(
            "specd draft-node",
            signal,
            on_drain,
            move || running.load(Ordering::Acquire),
            cfg.drain_timeout,
            |stop| {
                builder
                    .add_service(health)
                    .add_service(DrafterServer::with_interceptor(
                        node,
                        specd_rpc::auth::NodeSecret::interceptor(cfg.node_secret),
                    ))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop,
                    )
            },
        )
        .await?;
    loading.outcome()
}
