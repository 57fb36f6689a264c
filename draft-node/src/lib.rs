//! `specd draft-node`: serves `specd.v1.Drafter`. `Run` connects to the target named in the
//! request, refuses a target with another vocabulary (when it drafts with a model), and runs the
//! engine's speculative loop (`spec_decode::generate::run`, the same code as the embedded mode)
//! through [`GrpcVerifier`], a `Verifier` that sends each block on a `Verify` stream and waits for
//! its verdict. A node started with `--drafter ngram` holds no model at all: it drafts by prompt
//! lookup in any vocabulary (it adopts the target's), and the text of its events, like every
//! node's, comes from the target's verdicts.

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
use specd_proto::convert;
use specd_proto::v1::drafter_server::{Drafter as DrafterRpc, DrafterServer};
use specd_proto::v1::target_verifier_client::TargetVerifierClient;
use specd_proto::v1::{self, DraftFrame, TokenEvent};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

pub struct DraftConfig {
    pub listen: SocketAddr,
    pub max_gamma: usize,
    /// The drafter of requests that name none.
    pub drafter: DrafterSpec,
    /// On shutdown, how long running loops may take to end (specd_proto::drain).
    pub drain_timeout: Duration,
}

#[derive(Clone)]
pub struct DraftNode {
    /// None on a model-free node.
    model: Option<Arc<LoadedModel>>,
    drafter: DrafterSpec,
    max_gamma: usize,
    drain: specd_proto::drain::Drain,
    /// Speculative loops running now.
    running: Arc<AtomicUsize>,
}

/// Counts a running loop while alive.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Running(n.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connects to a node URL with a bounded timeout; an unreachable peer is `UNAVAILABLE`.
pub async fn connect(url: &str) -> Result<Channel, Status> {
    let ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| {
            Status::invalid_argument(format!(
                "invalid URL {url:?}: {e} (expected e.g. http://127.0.0.1:50051)"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    ep.connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach {url}: {e}")))
}

/// A `Verifier` over a gRPC `Verify` stream (called from a blocking thread).
pub struct GrpcVerifier {
    session_id: String,
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
            block: Some(convert::block_to_wire(&block, self.seq)),
        };
        let alone = self.sent.is_empty();
        self.sent.push_back((std::time::Instant::now(), alone));
        self.frames
            .blocking_send(frame)
            .map_err(|_| anyhow::anyhow!("the target closed the Verify stream"))
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
                self.overhead_us
                    .push((sent.elapsed().as_secs_f64() * 1e3 - v.verify_ms).max(0.0) * 1e3);
            }
        }
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
            logprobs: Vec::new(),
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
        Ok(Response::new(match &self.model {
            Some(m) => convert::model_info(m, "draft", self.max_gamma),
            // No vocabulary of its own: an empty fingerprint drafts for any target.
            None => v1::ModelInfo {
                protocol_version: specd_proto::PROTOCOL_VERSION.into(),
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
        let running = Running::new(&self.running);
        let r = req.into_inner();
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
        let model = match (spec, &self.model) {
            (DrafterSpec::Model, None) => {
                return Err(Status::failed_precondition(format!(
                    "this draft-node has no draft model (it serves --drafter {}); ask for drafter {0} or start it with --drafter model",
                    self.drafter
                )))
            }
            (DrafterSpec::Model, Some(m)) => Some(m.clone()),
            _ => None,
        };
        let channel = connect(&r.target_url).await?;
        let mut client = TargetVerifierClient::new(channel).max_decoding_message_size(64 << 20);
        let info = client.info(v1::InfoRequest {}).await?.into_inner();
        if let Some(m) = &model {
            let mine = m.tokenizer.fingerprint();
            if info.vocab_fingerprint != mine {
                return Err(Status::failed_precondition(format!(
                    "vocabulary mismatch: draft {} has fingerprint {mine}, target {} at {} has {}",
                    m.name, info.model_id, r.target_url, info.vocab_fingerprint
                )));
            }
        }
        let mut drafter = Drafter::from_spec(spec, model.map(|m| m.model.clone()), sampling, mode)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let gamma = gamma.capped(self.max_gamma.min(info.max_block as usize));
        let (frame_tx, frame_rx) = mpsc::channel(2);
        let verdicts = client
            .verify(ReceiverStream::new(frame_rx))
            .await?
            .into_inner();
        let (tx, rx) = mpsc::channel(16);
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _running = running;
            let mut verifier = GrpcVerifier {
                session_id: r.session_id.clone(),
                frames: frame_tx,
                verdicts,
                handle,
                seq: 0,
                events: tx.clone(),
                last_spent: 0.0,
                overhead_us: Vec::new(),
                sent: Default::default(),
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
                    let _ = tx.blocking_send(Err(Status::aborted(format!(
                        "speculative loop failed: {e:#}"
                    ))));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Binds the listener (a clear error when the address is taken) and serves until `shutdown`.
/// `model` is required for the model drafter and unused by the others.
pub async fn serve(
    cfg: DraftConfig,
    model: Option<LoadedModel>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if cfg.drafter.needs_model() && model.is_none() {
        anyhow::bail!("the model drafter needs a draft model");
    }
    let listener = specd_proto::bind(cfg.listen).await?;
    let node = DraftNode {
        model: model.map(Arc::new),
        drafter: cfg.drafter,
        max_gamma: cfg.max_gamma,
        drain: Default::default(),
        running: Default::default(),
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<DrafterServer<DraftNode>>().await;
    eprintln!(
        "specd draft-node: serving {} on {}",
        node.model.as_ref().map_or_else(
            || format!("drafter {} (no model)", node.drafter),
            |m| m.name.clone()
        ),
        listener.local_addr()?
    );
    let drain = node.drain.clone();
    let running = node.running.clone();
    let on_drain = async move {
        reporter.set_not_serving::<DrafterServer<DraftNode>>().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    drain
        .serve(
            "specd draft-node",
            shutdown,
            on_drain,
            move || running.load(Ordering::Acquire),
            cfg.drain_timeout,
            |stop| {
                tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(DrafterServer::new(node))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop,
                    )
            },
        )
        .await
}
