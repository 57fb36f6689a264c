//! `specd target-node`: serves `specd.v1.TargetVerifier`. Holds the target model and many
//! sessions (bounded); a session's KV cache lives until `CloseSession` or idle expiry, not until a
//! stream closes, so a coordinator can fall back to `Decode` after losing a draft-node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use admission::{Admission, Limits, Reservation};
use anyhow::Result;
use specd_engine::pipeline::{LoadedModel, TextStream};
use specd_engine::spec_decode::budget::ProtectCache;
use specd_engine::spec_decode::stop::StopStrings;
use specd_engine::spec_decode::target::{SessionParams, TargetSession};
use specd_engine::spec_decode::DraftBlock;
use specd_proto::v1::target_verifier_server::SERVICE_NAME;
use specd_proto::v1::target_verifier_server::{TargetVerifier, TargetVerifierServer};
use specd_proto::v1::{self, DraftFrame, TokenEvent, Verdict};
use specd_rpc::auth::SessionToken;
use specd_rpc::convert::{self, block_from_wire};
use specd_rpc::loading::{Loaded, Loading};
use specd_rpc::set_health;
use specd_rpc::trace;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tracing::Instrument;

pub mod admission;

/// Distinct protected-token patterns kept built at once.
const MAX_CACHED_PATTERNS: usize = 32;

pub struct TargetConfig {
    pub listen: SocketAddr,
    /// Sessions held, their KV memory, requests waiting for room (see [`admission`]).
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub max_block: usize,
    /// On shutdown, how long open sessions may take to end (specd_rpc::drain).
    pub drain_timeout: Duration,
    /// The deployment's node secret, required on every call but health's; None: open.
    pub node_secret: Option<Arc<specd_rpc::auth::NodeSecret>>,
    /// TLS: its server's certificate (and mutual TLS), the CA of its peers; None: plaintext.
    pub tls: Option<Arc<specd_rpc::tls::Tls>>,
}

struct Slot {
    session: Mutex<TargetSession>,
    /// The completion's text as verdicts commit it (`Verdict.text`).
    text: Mutex<TextStream>,
    last_used: Mutex<Instant>,
    /// What every call on the session must present (`SessionOpened.session_token`).
    token: SessionToken,
    /// Which Verify stream may drive the session: the latest to claim it (numbered from 1; 0:
    /// none yet). A newer stream, or a Decode, supersedes the one before.
    driver: AtomicU64,
    /// The session's room on the node, given back when the slot is dropped.
    _room: Reservation,
}

impl Slot {
    fn touch(&self) {
        *self.last_used.lock().unwrap() = Instant::now();
    }

    /// Supersedes the session's Verify stream (its next frame is refused); returns the new
    /// driver's number.
    fn take_over(&self) -> u64 {
        self.driver.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// A Verify stream's claim on its session: it may drive the session until a newer stream or a
/// Decode takes it over (a draft re-attached after a loss presents the same session token; the
/// lost draft's stream, should it still be open, is then refused).
#[derive(Clone)]
struct VerifyClaim {
    slot: Arc<Slot>,
    driver: u64,
}

impl VerifyClaim {
    fn take(slot: Arc<Slot>) -> VerifyClaim {
        let driver = slot.take_over();
        VerifyClaim { slot, driver }
    }

    /// Checked with the session locked, so that no frame of a superseded stream is judged after
    /// the take-over.
    fn check(&self, id: &str) -> Result<(), Status> {
        if self.slot.driver.load(Ordering::Acquire) != self.driver {
            return Err(Status::aborted(format!(
                "session {id} is now driven by a newer Verify stream or a Decode (one at a time)"
            )));
        }
        Ok(())
    }
}

pub struct TargetService {
    model: Arc<LoadedModel>,
    sessions: Mutex<HashMap<String, Arc<Slot>>>,
    protect: ProtectCache,
    next_id: AtomicU64,
    admission: Arc<Admission>,
    max_block: usize,
    /// This node's part of its session ids.
    node_tag: String,
}

/// The gRPC service: a cheap handle on the shared state, which is there once the model loaded.
#[derive(Clone)]
pub struct TargetNode {
    svc: Loaded<Arc<TargetService>>,
    drain: specd_rpc::drain::Drain,
}

impl TargetNode {
    /// The service, or UNAVAILABLE while the model loads.
    fn svc(&self) -> Result<Arc<TargetService>, Status> {
        self.svc.get().cloned()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TokenEvent, Status>> + Send>>;
type VerdictStream = Pin<Box<dyn Stream<Item = Result<Verdict, Status>> + Send>>;

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

impl TargetService {
    pub fn new(model: Arc<LoadedModel>, limits: Limits, max_block: usize) -> Self {
        TargetService {
            protect: ProtectCache::new(model.tokenizer.clone(), MAX_CACHED_PATTERNS),
            model,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            admission: Admission::new(limits),
            max_block,
            node_tag: format!(
                "{:08x}",
                specd_telemetry::trace::TraceContext::root().span_id as u32
            ),
        }
    }

    /// Sessions held now.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    fn info(&self) -> v1::ModelInfo {
        v1::ModelInfo {
            open_sessions: self.session_count() as u32,
            ..convert::model_info(&self.model, "target", self.max_block)
        }
    }

    /// The session `id`, if `token` is its token.
    fn slot(&self, id: &str, token: &str) -> Result<Arc<Slot>, Status> {
        let slot = self
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "unknown session {id:?} (closed, expired, or never opened)"
                ))
            })?;
        slot.token.check(id, token)?;
        Ok(slot)
    }

    /// Removes sessions idle for longer than `timeout`.
    pub fn expire(&self, timeout: Duration) {
        let mut sessions = self.sessions.lock().unwrap();
        let before = sessions.len();
        sessions.retain(|id, s| {
            let keep = s.last_used.lock().unwrap().elapsed() < timeout;
            if !keep {
                tracing::info!(session_id = %id, "session expired (idle)");
            }
            keep
        });
        if sessions.len() != before {
            specd_telemetry::metrics::target_sessions(sessions.len());
        }
    }

    fn verdict_to_wire(
        v: &specd_engine::spec_decode::Verdict,
        seq: u64,
        budget: f64,
        verify_ms: f64,
        text: String,
    ) -> Verdict {
        Verdict {
            text,
            block_seq: seq,
            stale: false,
            accepted: v.accepted as u32,
            rejected: v.rejected,
            committed: v.committed.clone(),
            lossy: v.token_info.iter().map(|i| i.lossy).collect(),
            charge: v.token_info.iter().map(|i| i.charge).collect(),
            committed_len: v.committed_len as u64,
            lossy_accepted: v.lossy_accepted as u32,
            protected_positions: v.protected_positions as u32,
            budget_spent: v.budget_spent,
            budget_left: (budget - v.budget_spent).max(0.0),
            finished: v.finished.is_some(),
            finish_reason: v
                .finished
                .map(|f| format!("{f:?}").to_lowercase())
                .unwrap_or_default(),
            verify_ms,
            logprobs: Vec::new(),
        }
    }
}

#[tonic::async_trait]
impl TargetVerifier for TargetNode {
    async fn info(&self, _: Request<v1::InfoRequest>) -> Result<Response<v1::ModelInfo>, Status> {
        Ok(Response::new(self.svc()?.info()))
    }

    async fn open_session(
        &self,
        req: Request<v1::OpenSessionRequest>,
    ) -> Result<Response<v1::SessionOpened>, Status> {
        self.drain.admit("the target-node")?;
        let svc = self.svc()?;
        let ctx = trace::incoming(&req);
        let r = req.into_inner();
        let sampling = convert::sampling_from_wire(r.sampling.as_ref())?;
        let policy = convert::policy_from_wire(r.policy.as_ref(), &svc.protect)?;
        let prompt = if r.prompt_ids.is_empty() {
            convert::prompt_from_wire(&r.prompt, r.chat, &r.messages)
                .encode(&svc.model.tokenizer)
                .map_err(|e| Status::invalid_argument(format!("prompt: {e:#}")))?
        } else {
            r.prompt_ids.clone()
        };
        let stop = StopStrings::new(&r.stop, svc.model.tokenizer.clone())
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let context = svc.model.model.config.context_length;
        let max_tokens = match r.max_tokens as usize {
            0 => context.saturating_sub(prompt.len()).max(1),
            n => n,
        };
        // Room for the session: its cache can grow to the prompt, max_tokens and one block.
        let cfg = &svc.model.model.config;
        let positions = (prompt.len() + max_tokens + svc.max_block + 1).min(context);
        let kv = (positions * 2 * cfg.n_layers * cfg.kv_dim() * 4) as u64;
        let room = svc.admission.admit(kv).await?;
        let model = svc.model.clone();
        let params = SessionParams {
            sampling,
            max_tokens,
            policy,
            stop: stop.clone(),
            logprobs: convert::top_logprobs_from_wire(r.top_logprobs)?,
        };
        let ids = prompt.clone();
        let (resumed, spent) = (r.resume_completion.clone(), r.resume_budget_spent);
        let session = tokio::task::spawn_blocking(move || {
            TargetSession::resume(
                model.model.clone(),
                model.tokenizer.eos_ids.clone(),
                ids,
                &resumed,
                spent,
                params,
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        // A resumed session's text goes on from its completion's (which the caller has).
        let mut text = TextStream::with_stop(stop);
        if !r.resume_completion.is_empty() {
            text.push(&svc.model.tokenizer, &r.resume_completion, false);
        }
        // Unique across nodes too (two containers are both PID 1): a random part per node.
        let id = format!(
            "s{}-{}",
            svc.next_id.fetch_add(1, Ordering::Relaxed),
            svc.node_tag
        );
        let token = specd_rpc::auth::new_session_token();
        svc.sessions.lock().unwrap().insert(
            id.clone(),
            Arc::new(Slot {
                session: Mutex::new(session),
                text: Mutex::new(text),
                last_used: Mutex::new(Instant::now()),
                token: SessionToken::of(&token),
                driver: AtomicU64::new(0),
                _room: room,
            }),
        );
        specd_telemetry::metrics::target_sessions(svc.session_count());
        tracing::info!(
            trace_id = %ctx.trace_id_hex(),
            session_id = %id,
            prompt_tokens = prompt.len(),
            max_tokens,
            "session opened"
        );
        Ok(Response::new(v1::SessionOpened {
            session_id: id,
            prompt_ids: prompt,
            model: Some(svc.info()),
            max_tokens: max_tokens as u32,
            session_token: token,
        }))
    }

    type VerifyStream = VerdictStream;

    async fn verify(
        &self,
        req: Request<Streaming<DraftFrame>>,
    ) -> Result<Response<Self::VerifyStream>, Status> {
        let svc = self.svc()?;
        let ctx = trace::incoming(&req);
        let span = tracing::info_span!(
            "verify",
            trace_id = %ctx.trace_id_hex(),
            session_id = tracing::field::Empty
        );
        let stream_span = span.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(
            async move {
                let mut slot: Option<VerifyClaim> = None;
                let mut session_id = String::new();
                loop {
                    let frame = match inbound.message().await {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(_) => break,
                    };
                    // One span per verify round (RUST_LOG=specd_target_node=debug shows them).
                    let round = tracing::debug_span!(
                        "round",
                        seq = frame.block.as_ref().map_or(0, |b| b.block_seq)
                    );
                    let result = async {
                        if slot.is_none()
                            || (!frame.session_id.is_empty() && frame.session_id != session_id)
                        {
                            if frame.session_id.is_empty() {
                                return Err(Status::invalid_argument(
                                    "the first frame of a Verify stream must name its session",
                                ));
                            }
                            let next = svc.slot(&frame.session_id, &frame.session_token)?;
                            slot = Some(VerifyClaim::take(next));
                            session_id = frame.session_id.clone();
                            stream_span.record("session_id", session_id.as_str());
                        }
                        let claim = slot.clone().expect("session resolved");
                        let wire = frame
                            .block
                            .ok_or_else(|| Status::invalid_argument("frame without a block"))?;
                        let block: DraftBlock = block_from_wire(
                            &wire,
                            svc.model.model.config.vocab_size,
                            svc.max_block,
                        )?;
                        claim.slot.touch();
                        let seq = wire.block_seq;
                        let tokenizer = svc.model.tokenizer.clone();
                        let id = session_id.clone();
                        let verdict = tokio::task::spawn_blocking(move || {
                            let slot = &claim.slot;
                            let mut s = slot.session.lock().unwrap();
                            claim.check(&id)?;
                            if s.finished().is_some() {
                                return Err(Status::failed_precondition(
                                    "the session has finished",
                                ));
                            }
                            let budget = s.params().policy.budget;
                            let t0 = Instant::now();
                            let v = s
                                .verify_block(&block)
                                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
                            if v.stale {
                                // Does not build on the committed sequence: answered in-band.
                                return Ok(Verdict {
                                    block_seq: seq,
                                    stale: true,
                                    committed_len: v.committed_len as u64,
                                    budget_spent: v.budget_spent,
                                    ..Default::default()
                                });
                            }
                            let verify_ms = t0.elapsed().as_secs_f64() * 1e3;
                            record(&v, block.tokens.len(), &s.params().policy.rule.to_string());
                            let text = slot
                                .text
                                .lock()
                                .unwrap()
                                .push(&tokenizer, &v.committed, v.finished.is_some())
                                .unwrap_or_default();
                            let mut wire =
                                TargetService::verdict_to_wire(&v, seq, budget, verify_ms, text);
                            wire.logprobs = token_logprobs(&tokenizer, &v.logprobs);
                            Ok(wire)
                        })
                        .await
                        .map_err(|e| Status::internal(e.to_string()))??;
                        tracing::debug!(
                            stale = verdict.stale,
                            accepted = verdict.accepted,
                            committed = verdict.committed.len(),
                            verify_ms = verdict.verify_ms,
                            "verdict"
                        );
                        Ok(verdict)
                    }
                    .instrument(round)
                    .await;
                    if let Err(e) = &result {
                        tracing::warn!(code = ?e.code(), "verify: {}", e.message());
                    }
                    let fatal = result.is_err();
                    if tx.send(result).await.is_err() || fatal {
                        break;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DecodeStream = EventStream;

    async fn decode(
        &self,
        req: Request<v1::DecodeRequest>,
    ) -> Result<Response<Self::DecodeStream>, Status> {
        let svc = self.svc()?;
        let ctx = trace::incoming(&req);
        let r = req.into_inner();
        let slot = svc.slot(&r.session_id, &r.session_token)?;
        tracing::info!(trace_id = %ctx.trace_id_hex(), session_id = %r.session_id, from_len = r.from_len, replay_only = r.replay_only, "target-only decode");
        let (tx, rx) = mpsc::channel(16);
        let id = r.session_id.clone();
        let model = svc.model.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut s = slot.session.lock().unwrap();
            // The session is the caller's now: a Verify stream still open (a lost draft's) is
            // refused from here on.
            slot.take_over();
            let (mut calls, mut verify_ms) = (0u64, 0f64);
            let prompt_len = s.tokens().len() - s.completion().len();
            let from = (r.from_len as usize).clamp(prompt_len, s.tokens().len());
            let replay: Vec<u32> = s.tokens()[from..].to_vec();
            // Decoding from the prompt, the text travels with the tokens (no Detokenize round
            // trip per event); a resumed decode leaves the text to the caller, who knows what it
            // has already shown.
            let mut text = (from == prompt_len).then(TextStream::new);
            let mut event = |s: &TargetSession,
                             ids: Vec<u32>,
                             logprobs: Vec<v1::TokenLogprob>,
                             calls: u64,
                             verify_ms: f64| TokenEvent {
                logprobs,
                text: text
                    .as_mut()
                    .and_then(|t| t.push(&model.tokenizer, &ids, s.finished().is_some()))
                    .unwrap_or_default(),
                token_ids: ids.clone(),
                lossy: vec![false; ids.len()],
                charge: vec![0.0; ids.len()],
                budget_spent: s.budget_spent(),
                committed_len: s.tokens().len() as u64,
                finished: s.finished().is_some(),
                finish_reason: s
                    .finished()
                    .map(|f| format!("{f:?}").to_lowercase())
                    .unwrap_or_default(),
                session_id: id.clone(),
                stats: Some(v1::Stats {
                    completion_tokens: s.completion().len() as u64,
                    target_calls: calls,
                    verify_ms,
                    decode_ms: started.elapsed().as_secs_f64() * 1e3,
                    ..Default::default()
                }),
                ..Default::default()
            };
            if (!replay.is_empty() || s.finished().is_some())
                && tx
                    .blocking_send(Ok(event(&s, replay, Vec::new(), 0, 0.0)))
                    .is_err()
            {
                return;
            }
            if r.replay_only {
                return;
            }
            while s.finished().is_none() {
                slot.touch();
                let base = s.tokens().len();
                let t0 = Instant::now();
                match s.verify_block(&DraftBlock::empty(base)) {
                    // The lost draft's announced successor was due: nothing was judged.
                    Ok(v) if v.stale => {}
                    Ok(v) => {
                        calls += 1;
                        verify_ms += t0.elapsed().as_secs_f64() * 1e3;
                        specd_telemetry::metrics::verify(t0.elapsed().as_secs_f64());
                        let lps = token_logprobs(&model.tokenizer, &v.logprobs);
                        if tx
                            .blocking_send(Ok(event(&s, v.committed, lps, calls, verify_ms)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(internal(e)));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update_policy(
        &self,
        req: Request<v1::UpdatePolicyRequest>,
    ) -> Result<Response<v1::SessionSummary>, Status> {
        let svc = self.svc()?;
        let r = req.into_inner();
        let slot = svc.slot(&r.session_id, &r.session_token)?;
        let policy = convert::policy_from_wire(r.policy.as_ref(), &svc.protect)?;
        let mut s = slot.session.lock().unwrap();
        let live = s.params().policy.clone();
        if !live.tightened_by(&policy) && !r.allow_loosen {
            return Err(Status::failed_precondition(format!(
                "the change from {} with budget {} to {} with budget {} loosens the session's bound (spent so far {:.4}); set allow_loosen to make it, and the bound becomes the new budget",
                live.rule,
                live.budget,
                policy.rule,
                policy.budget,
                s.budget_spent()
            )));
        }
        s.set_policy(policy);
        Ok(Response::new(summary(&r.session_id, &s)))
    }

    async fn detokenize(
        &self,
        req: Request<v1::DetokenizeRequest>,
    ) -> Result<Response<v1::DetokenizeResponse>, Status> {
        let svc = self.svc()?;
        let r = req.into_inner();
        let vocab = svc.model.model.config.vocab_size;
        if let Some(&bad) = r.token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Status::invalid_argument(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let text = svc.model.tokenizer.decode(&r.token_ids).map_err(internal)?;
        Ok(Response::new(v1::DetokenizeResponse { text }))
    }

    async fn close_session(
        &self,
        req: Request<v1::CloseSessionRequest>,
    ) -> Result<Response<v1::SessionSummary>, Status> {
        let svc = self.svc()?;
        let ctx = trace::incoming(&req);
        let r = req.into_inner();
        let id = r.session_id;
        let slot = {
            let mut sessions = svc.sessions.lock().unwrap();
            let slot = sessions
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("unknown session {id:?}")))?;
            slot.token.check(&id, &r.session_token)?;
            let slot = sessions.remove(&id).expect("just found");
            specd_telemetry::metrics::target_sessions(sessions.len());
            slot
        };
        let s = slot.session.lock().unwrap();
        let summary = summary(&id, &s);
        tracing::info!(
            trace_id = %ctx.trace_id_hex(),
            session_id = %id,
            committed_len = summary.committed_len,
            budget_spent = summary.budget_spent,
            "session closed"
        );
        Ok(Response::new(summary))
    }
}

/// Log-probabilities on the wire, each token with its text.
fn token_logprobs(
    tokenizer: &specd_engine::tokenizer::Tokenizer,
    lps: &[specd_engine::spec_decode::TokenLogprob],
) -> Vec<v1::TokenLogprob> {
    convert::logprobs_to_wire(lps, |t| tokenizer.decode(&[t]).unwrap_or_default())
}

/// A judged block in the node's metrics.
fn record(v: &specd_engine::spec_decode::Verdict, drafted: usize, rule: &str) {
    use specd_telemetry::metrics;
    metrics::verify(v.verify_s);
    let per_pos = vec![1; v.accepted];
    metrics::judged(&metrics::Judged {
        drafts: u64::from(drafted > 0),
        drafted: drafted as u64,
        accepted: v.accepted as u64,
        accepted_per_pos: &per_pos,
        lossy: v.lossy_accepted as u64,
        rule,
        budget: v.token_info.iter().map(|i| i.charge).sum(),
    });
}

fn summary(id: &str, s: &TargetSession) -> v1::SessionSummary {
    v1::SessionSummary {
        session_id: id.to_owned(),
        committed_len: s.tokens().len() as u64,
        budget_spent: s.budget_spent(),
        rule: s.params().policy.rule.to_string(),
        budget: s.params().policy.budget,
    }
}

/// Binds the listener (a clear error when the address is taken), then loads the model with
/// `load` while health answers NOT_SERVING (and RPCs UNAVAILABLE), turns SERVING once it is
/// loaded, and serves until `shutdown`; a failed load stops the node with its error.
pub async fn serve(
    cfg: TargetConfig,
    load: impl FnOnce() -> Result<LoadedModel> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = specd_rpc::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let node = TargetNode {
        svc: Loaded::default(),
        drain: Default::default(),
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, SERVICE_NAME, ServingStatus::NotServing).await;
    tracing::info!(%addr, "target-node: loading the model (health NOT_SERVING until it is ready)");
    let ready = {
        let reporter = reporter.clone();
        let timeout = cfg.idle_timeout;
        let node = node.clone();
        async move {
            let svc = node.svc.get().expect("loaded").clone();
            specd_telemetry::metrics::target_sessions(0);
            // Shut down while loading: stay NOT_SERVING.
            if node.drain.is_draining() {
                return;
            }
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1).min(timeout)).await;
                    svc.expire(timeout);
                }
            });
            set_health(&reporter, SERVICE_NAME, ServingStatus::Serving).await;
            tracing::info!(%addr, model = %node.svc.get().expect("loaded").model.name, "target-node: serving");
        }
    };
    let (limits, max_block) = (cfg.limits, cfg.max_block);
    let loading = Loading::start(
        &node.svc,
        move || {
            let model = load()?;
            Ok(Arc::new(TargetService::new(
                Arc::new(model),
                limits,
                max_block,
            )))
        },
        ready,
    );
    let signal = loading.or_failed(shutdown);
    let drain = node.drain.clone();
    let busy = node.clone();
    let on_drain =
        async move { set_health(&reporter, SERVICE_NAME, ServingStatus::NotServing).await };
    let mut builder = specd_rpc::tls::server_builder(cfg.tls.as_deref())?;
    drain
        .serve(
            "specd target-node",
            signal,
            on_drain,
            move || busy.svc().map_or(0, |s| s.session_count()),
            cfg.drain_timeout,
            |stop| {
                builder
                    .add_service(health)
                    .add_service(InterceptedService::new(
                        TargetVerifierServer::new(node)
                            .max_decoding_message_size(specd_rpc::peers::MAX_MESSAGE),
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
