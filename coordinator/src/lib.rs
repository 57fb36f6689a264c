//! `specd coordinator`: serves `specd.v1.Coordinator`. Opens a session on a target-node, starts
//! a draft-node's loop on it, relays committed tokens (with text) to the client and keeps a
//! per-session ledger; it stays off the verification loop. If the draft-node fails mid-generation
//! the request is finished by the target's `Decode` from the committed tokens (the final event
//! says `fallback`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
pub mod client;
pub mod health;
pub mod http;
pub mod pools;
mod relay;
pub mod targets;
use specd_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use specd_proto::v1::{self, TokenEvent};
use specd_rpc::convert;
use specd_rpc::peers::Peers;
use specd_rpc::trace;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

/// The largest block a request may ask for.
pub const MAX_GAMMA: u32 = 32;

/// Finished sessions kept in the admin table.
const MAX_FINISHED: usize = 1024;

pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    /// Target-node URLs, or `dns:///NAME:PORT` names standing for every address they resolve to.
    pub targets: Vec<String>,
    /// How often `dns:///` targets are resolved again.
    pub dns_refresh: std::time::Duration,
    pub drafts: Vec<String>,
    /// The OpenAI-compatible HTTP API: its address and settings.
    pub http: Option<(SocketAddr, specd_openai::HttpConfig)>,
    /// The model id HTTP clients name (default: the first target's model id).
    pub model_name: Option<String>,
    /// On shutdown, how long running requests may take to end (specd_rpc::drain).
    pub drain_timeout: std::time::Duration,
    /// API keys of its gRPC service (its HTTP API takes them from `http`); None: open.
    pub api_keys: Option<std::sync::Arc<specd_rpc::auth::ApiKeys>>,
    /// The node secret it presents to target- and draft-nodes.
    pub node_secret: Option<std::sync::Arc<specd_rpc::auth::NodeSecret>>,
    /// TLS: its gRPC server's certificate (and mutual TLS), the CA of its nodes; None: plaintext.
    pub tls: Option<std::sync::Arc<specd_rpc::tls::Tls>>,
    /// At start, how long to wait for the first target-node that can be reached (zero: fail at
    /// once when none can). Targets not reached then are marked down and used once their health
    /// checks answer (a scaled-up StatefulSet's later pods).
    pub target_wait: std::time::Duration,
    /// Per-tenant budget pools (`--tenant-pool`); None: each session's budget is its own bound.
    pub pools: Option<Arc<pools::Pools>>,
    /// A draft stream that sends nothing for this long is given up (another draft-node, or the
    /// target alone, goes on): a partition sends no reset.
    pub stall_timeout: std::time::Duration,
}

#[derive(Clone)]
pub struct CoordinatorNode {
    targets: Arc<targets::Targets>,
    drafts: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    /// Sessions created so far (orders the admin table).
    created: Arc<AtomicU64>,
    sessions: Arc<Mutex<HashMap<String, v1::SessionRecord>>>,
    /// The target's session token of each running request (kept out of the records, which
    /// ListSessions shows).
    tokens: Arc<Mutex<HashMap<String, String>>>,
    drain: specd_rpc::drain::Drain,
    /// Channels to the nodes, reused across requests.
    peers: Peers,
    /// Which nodes answer their health checks.
    health: health::PeerHealth,
    pools: Option<Arc<pools::Pools>>,
    stall_timeout: std::time::Duration,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TokenEvent, Status>> + Send>>;

impl CoordinatorNode {
    /// The node of `pool` with the fewest running requests of this coordinator (`load`: a
    /// running record's node of that role), in turn among equals, skipping those whose health
    /// check fails (all of them are tried when none passes: the check may lag a node that came
    /// back).
    fn pick(&self, pool: &[String], load: impl Fn(&v1::SessionRecord) -> &str) -> Option<String> {
        if pool.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let running: HashMap<&str, usize> = {
            let t = self.sessions.lock().unwrap();
            let mut m = HashMap::new();
            for r in t.values().filter(|r| r.state == "running") {
                if let Some(url) = pool.iter().find(|u| u.as_str() == load(r)) {
                    *m.entry(url.as_str()).or_default() += 1;
                }
            }
            m
        };
        (0..pool.len())
            .map(|i| &pool[(start + i) % pool.len()])
            .filter(|url| self.health.is_up(url))
            // min_by_key keeps the first of equals: the turn decides among them.
            .min_by_key(|url| running.get(url.as_str()).copied().unwrap_or(0))
            .or_else(|| pool.get(start % pool.len()))
            .cloned()
    }

    /// The target-node for a new session (or a moved one): the least loaded that answers.
    fn pick_target(&self, pool: &[String]) -> Option<String> {
        self.pick(pool, |r| r.target_url.as_str())
    }

    /// A draft-node of `pool` that answers, the least loaded; None when none does (a draft that
    /// is down or still loading would only add a failed call before the target decodes alone).
    fn pick_draft(&self, pool: &[String]) -> Option<String> {
        self.pick(pool, |r| r.draft_url.as_str())
            .filter(|url| self.health.is_up(url))
    }

    /// Keeps the session table bounded: beyond `MAX_FINISHED` ended (finished or cancelled)
    /// sessions, the oldest go.
    fn prune(&self) {
        let mut t = self.sessions.lock().unwrap();
        let mut finished: Vec<(u64, String)> = t
            .iter()
            .filter(|(_, r)| r.state != "running")
            .map(|(id, r)| (r.seq, id.clone()))
            .collect();
        if finished.len() > MAX_FINISHED {
            finished.sort();
            for (_, id) in &finished[..finished.len() - MAX_FINISHED] {
                t.remove(id);
            }
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut v1::SessionRecord)) {
        if let Some(r) = self.sessions.lock().unwrap().get_mut(id) {
            f(r);
        }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorNode {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        req: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.drain.admit("the coordinator")?;
        let ctx = trace::incoming(&req);
        // A gRPC request's tenant is the one its API key names (the interceptor's); the HTTP API,
        // which calls in process, has set the one its own key named.
        let tenant = req.extensions().get::<specd_rpc::auth::Tenant>().cloned();
        let span = tracing::info_span!(
            "generate",
            trace_id = %ctx.trace_id_hex(),
            session_id = tracing::field::Empty
        );
        let mut r = req.into_inner();
        if let Some(t) = tenant {
            r.tenant = t.0;
        }
        if r.tenant.is_empty() {
            r.tenant = specd_rpc::auth::DEFAULT_TENANT.to_owned();
        }
        self.start(r, ctx).instrument(span).await
    }

    async fn list_sessions(
        &self,
        req: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        let only = tenant_scope(&req);
        let mine = |tenant: &str| only.as_deref().is_none_or(|t| t == tenant);
        let mut sessions: Vec<v1::SessionRecord> = (self.sessions.lock().unwrap().values())
            .filter(|r| mine(&r.tenant))
            .cloned()
            .collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        let mut pools = self.pools.as_ref().map(|p| p.list()).unwrap_or_default();
        pools.retain(|p| mine(&p.tenant));
        Ok(Response::new(v1::ListSessionsResponse { sessions, pools }))
    }

    async fn set_session_policy(
        &self,
        req: Request<v1::SetSessionPolicyRequest>,
    ) -> Result<Response<v1::SessionSummary>, Status> {
        let ctx = trace::incoming(&req);
        let only = tenant_scope(&req);
        let r = req.into_inner();
        let (url, target_sid, tenant, granted) = self
            .sessions
            .lock()
            .unwrap()
            .get(&r.session_id)
            // Another tenant's session is not shown to the caller: as if unknown.
            .filter(|s| only.as_deref().is_none_or(|t| t == s.tenant))
            .map(|s| {
                let (url, sid) = (s.target_url.clone(), s.target_session_id.clone());
                (url, sid, s.tenant.clone(), s.budget)
            })
            .ok_or_else(|| Status::not_found(format!("unknown session {:?}", r.session_id)))?;
        let asked = r.policy.as_ref().map_or(0.0, |p| p.budget);
        if asked > granted && self.pools.as_ref().is_some_and(|p| p.pooled(&tenant)) {
            return Err(Status::failed_precondition(format!(
                "session {} draws on tenant {tenant:?}'s budget pool, which granted it {granted}: a budget of {asked} is refused (tightening is allowed)",
                r.session_id
            )));
        }
        let token = self.tokens.lock().unwrap().get(&r.session_id).cloned();
        let token = token.ok_or_else(|| {
            Status::failed_precondition(format!("session {} has ended", r.session_id))
        })?;
        let mut t = self.peers.target(&url).await?;
        let mut summary = t
            .update_policy(trace::unary(
                v1::UpdatePolicyRequest {
                    session_id: target_sid,
                    policy: r.policy,
                    allow_loosen: r.allow_loosen,
                    session_token: token,
                },
                &ctx,
                trace::SHORT_CALL,
            ))
            .await?
            .into_inner();
        summary.session_id = r.session_id.clone();
        tracing::info!(trace_id = %ctx.trace_id_hex(), session_id = %r.session_id, rule = %summary.rule, budget = summary.budget, "session policy changed");
        self.update(&r.session_id, |rec| {
            rec.rule = summary.rule.clone();
            rec.budget = summary.budget;
        });
        Ok(Response::new(summary))
    }
}

/// Whose sessions an admin RPC's caller may see and change: its own tenant's (Some), or every
/// tenant's (None) for the `admin` tenant's key.
fn tenant_scope<T>(req: &Request<T>) -> Option<String> {
    match req.extensions().get::<specd_rpc::auth::Tenant>() {
        Some(t) if t.0 == specd_rpc::auth::ADMIN_TENANT => None,
        Some(t) => Some(t.0.clone()),
        None => Some(specd_rpc::auth::DEFAULT_TENANT.to_owned()),
    }
}

impl CoordinatorNode {
    /// Opens a session on a target, starts a draft on it, and relays its events (in the
    /// request's span).
    async fn start(
        &self,
        mut r: v1::GenerateRequest,
        ctx: specd_telemetry::trace::TraceContext,
    ) -> Result<Response<EventStream>, Status> {
        let speculative = match r.mode.as_str() {
            "" | "speculative" => true,
            "target-only" => false,
            other => {
                return Err(Status::invalid_argument(format!(
                    "mode {other:?}: expected speculative or target-only"
                )))
            }
        };
        let gamma =
            convert::gamma_from_wire(r.gamma, &r.gamma_policy, r.gamma_max, MAX_GAMMA as usize)?;
        let grant = self.reserve(&mut r);
        let tenant = r.tenant.clone();
        let started = self
            .open(r, ctx, speculative && gamma.speculative(), grant)
            .await;
        if let (Err(_), Some(granted), Some(p)) = (&started, grant, &self.pools) {
            p.release(&tenant, granted, 0.0);
        }
        started
    }

    /// Reserves a lossy request's budget from its tenant's pool, tightening its policy to what
    /// the pool granted (the exact rule when it is dry); None when no pool applies.
    fn reserve(&self, r: &mut v1::GenerateRequest) -> Option<f64> {
        let policy = r.policy.as_mut()?;
        if policy.rule.is_empty() || policy.rule == "exact" || policy.budget <= 0.0 {
            return None;
        }
        let granted = self.pools.as_ref()?.reserve(&r.tenant, policy.budget)?;
        if granted < policy.budget {
            tracing::info!(tenant = %r.tenant, asked = policy.budget, granted, "budget pool: the session gets what is left");
            policy.budget = granted;
            if granted == 0.0 {
                policy.rule = "exact".into();
            }
        }
        Some(granted)
    }

    /// Opens the request's session on a target and starts its relay (`grant`: the budget its
    /// tenant's pool reserved for it, returned if it does not start).
    async fn open(
        &self,
        r: v1::GenerateRequest,
        ctx: specd_telemetry::trace::TraceContext,
        speculative: bool,
        grant: Option<f64>,
    ) -> Result<Response<EventStream>, Status> {
        let target_url = self.pick_target(&self.targets.list()).ok_or_else(|| {
            Status::unavailable(format!(
                "no target-node to open a session on: {} resolves to no address",
                self.targets.describe()
            ))
        })?;
        let mut target = self.peers.target(&target_url).await?;
        let opened = target
            .open_session(trace::unary(
                v1::OpenSessionRequest {
                    prompt: r.prompt.clone(),
                    chat: r.chat,
                    messages: r.messages.clone(),
                    stop: r.stop.clone(),
                    prompt_ids: r.prompt_ids.clone(),
                    top_logprobs: r.top_logprobs,
                    max_tokens: r.max_tokens,
                    sampling: r.sampling,
                    policy: r.policy.clone(),
                    ..Default::default()
                },
                &ctx,
                trace::OPEN_CALL,
            ))
            .await
            .inspect_err(|e| {
                if e.code() == Code::Unavailable {
                    self.peers.forget(&target_url);
                }
            })?
            .into_inner();
        let sid = opened.session_id.clone();
        tracing::Span::current().record("session_id", sid.as_str());
        self.tokens
            .lock()
            .unwrap()
            .insert(sid.clone(), opened.session_token.clone());
        let draft_url = if speculative {
            self.pick_draft(&self.drafts)
        } else {
            None
        };
        self.sessions.lock().unwrap().insert(
            sid.clone(),
            v1::SessionRecord {
                session_id: sid.clone(),
                target_session_id: sid.clone(),
                target_url: target_url.clone(),
                draft_url: draft_url.clone().unwrap_or_default(),
                state: "running".into(),
                seq: self.created.fetch_add(1, Ordering::Relaxed),
                tenant: r.tenant.clone(),
                budget: r.policy.as_ref().map_or(0.0, |p| p.budget),
                rule: r.policy.as_ref().map_or("exact".into(), |p| {
                    if p.rule.is_empty() {
                        "exact".into()
                    } else {
                        p.rule.clone()
                    }
                }),
                ..Default::default()
            },
        );
        let (tx, rx) = mpsc::channel(32);
        let relay = relay::Relay {
            node: self.clone(),
            text: relay::TextRelay::new(target.clone(), ctx),
            ctx,
            sid: sid.clone(),
            target_url: target_url.clone(),
            target: target.clone(),
            target_sid: sid.clone(),
            target_token: opened.session_token.clone(),
            prompt_ids: opened.prompt_ids,
            max_tokens: opened.max_tokens,
            draft_url: draft_url.clone(),
            tx,
            spent: 0.0,
            carried: Default::default(),
            stats: Default::default(),
            lost: Vec::new(),
            lost_drafts: Vec::new(),
            grant,
            req: r,
        };
        // A draft that cannot start (e.g. another vocabulary) fails the request with its reason.
        let mut draft_stream = None;
        if let Some(url) = &draft_url {
            match relay.start_draft(url).await {
                Ok(s) => draft_stream = Some(s),
                Err(s)
                    if matches!(
                        s.code(),
                        Code::FailedPrecondition | Code::InvalidArgument | Code::PermissionDenied
                    ) =>
                {
                    let _ = target
                        .close_session(trace::unary(
                            v1::CloseSessionRequest {
                                session_id: sid.clone(),
                                session_token: opened.session_token.clone(),
                            },
                            &ctx,
                            trace::SHORT_CALL,
                        ))
                        .await;
                    self.sessions.lock().unwrap().remove(&sid);
                    self.tokens.lock().unwrap().remove(&sid);
                    tracing::info!(code = ?s.code(), "refused by the draft-node: {}", s.message());
                    return Err(s);
                }
                // Unreachable draft: the target decodes alone.
                Err(e) => {
                    self.peers.forget(url);
                    tracing::warn!(draft_url = %url, "draft-node unavailable, the target decodes alone: {}", e.message());
                }
            }
        }
        tracing::info!(
            target_url = %target_url,
            draft_url = draft_url.as_deref().unwrap_or("none"),
            prompt_tokens = relay.prompt_ids.len(),
            "session started"
        );
        tokio::spawn(relay.run(draft_stream).instrument(tracing::Span::current()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Checks every peer at start-up (a clear error naming an unreachable or wrong URL), binds the
/// listener and serves until `shutdown`.
pub async fn serve(
    cfg: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dials_tls = cfg.tls.as_ref().is_some_and(|t| t.dials());
    let targets = Arc::new(targets::Targets::parse(&cfg.targets, dials_tls)?);
    let peers = Peers::new(cfg.node_secret.clone(), cfg.tls.clone());
    let (fingerprints, unreachable) = reach_targets(&peers, &targets, cfg.target_wait).await?;
    let model_id = fingerprints[0].2.clone();
    let fingerprints: Vec<(String, String)> =
        fingerprints.into_iter().map(|(u, fp, _)| (u, fp)).collect();
    let mut loading = Vec::new();
    for url in &cfg.drafts {
        // A draft that is still loading is not waited for: it is used once the health checks
        // find it SERVING.
        let info = match startup_info(&peers, "draft", url, false).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                loading.push(url.clone());
                continue;
            }
            // Drafts are optional: one not up yet is used once its health check answers.
            Err(e) if e.is::<Unreachable>() => {
                tracing::warn!("{e:#}; it is used once its health check answers");
                loading.push(url.clone());
                continue;
            }
            Err(e) => return Err(e),
        };
        // A model-free draft-node (empty fingerprint) drafts in any vocabulary.
        for (t, fp) in &fingerprints {
            if !info.vocab_fingerprint.is_empty() && *fp != info.vocab_fingerprint {
                tracing::warn!(
                    "draft {url} (vocabulary {}) and target {t} (vocabulary {fp}) differ; its requests will be refused",
                    info.vocab_fingerprint
                );
            }
        }
    }
    let listener = specd_rpc::bind(cfg.listen).await?;
    let http_listener = match &cfg.http {
        Some((addr, _)) => Some(specd_openai::bind(*addr).await?),
        None => None,
    };
    let node = CoordinatorNode {
        targets,
        drafts: Arc::new(cfg.drafts),
        next: Arc::new(AtomicUsize::new(0)),
        created: Arc::new(AtomicU64::new(0)),
        sessions: Arc::new(Mutex::new(HashMap::new())),
        tokens: Default::default(),
        drain: Default::default(),
        peers,
        health: Default::default(),
        pools: cfg.pools,
        stall_timeout: cfg.stall_timeout,
    };
    for url in loading.iter().chain(&unreachable) {
        node.health.set(url, false);
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CoordinatorServer<CoordinatorNode>>()
        .await;
    tokio::spawn(health::watch(
        node.health.clone(),
        node.peers.clone(),
        node.targets.clone(),
        cfg.dns_refresh,
        node.drafts.clone(),
        reporter.clone(),
        node.drain.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, "coordinator: serving");
    // One shutdown signal for both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let running = |n: &CoordinatorNode| {
        n.sessions
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.state == "running")
            .count()
    };
    let http = match (cfg.http, http_listener) {
        (Some((_, http_cfg)), Some(listener)) => {
            let https = cfg.tls.as_ref().is_some_and(|t| t.serves());
            let scheme = if https { "https" } else { "http" };
            tracing::info!(
                "coordinator: HTTP API on {scheme}://{}",
                listener.local_addr()?
            );
            let backend = http::Coordinated {
                node: node.clone(),
                model_id: cfg.model_name.unwrap_or(model_id),
                runtime: tokio::runtime::Handle::current(),
                token_texts: Default::default(),
            };
            Some(tokio::spawn(specd_openai::serve(
                listener,
                http_cfg,
                move || Ok(Arc::new(backend) as Arc<dyn specd_openai::Backend>),
                stopped(stop_rx.clone()),
            )))
        }
        _ => None,
    };
    let api_keys = cfg.api_keys.clone();
    let drain = node.drain.clone();
    let busy = node.clone();
    let on_drain = async move {
        specd_rpc::set_health(
            &reporter,
            specd_proto::v1::coordinator_server::SERVICE_NAME,
            tonic_health::ServingStatus::NotServing,
        )
        .await
    };
    let mut builder = specd_rpc::tls::server_builder(cfg.tls.as_deref())?;
    drain
        .serve(
            "specd coordinator",
            stopped(stop_rx),
            on_drain,
            move || running(&busy),
            cfg.drain_timeout,
            |stop| {
                builder
                    .add_service(health)
                    .add_service(CoordinatorServer::with_interceptor(
                        node,
                        specd_rpc::auth::ApiKeys::interceptor(api_keys),
                    ))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop,
                    )
            },
        )
        .await?;
    if let Some(h) = http {
        h.await.context("HTTP server panicked")??;
    }
    Ok(())
}

/// A node's `Info` at start-up: an unreachable node or one that is not a specd node of this role
/// is an error naming it; one still loading its model is waited for (`wait`) or skipped (None).
/// The targets that answer at start: (url, vocabulary fingerprint, model id) of each, at least one,
/// waiting up to `wait` for the first; and the urls that could not be reached.
async fn reach_targets(
    peers: &Peers,
    targets: &targets::Targets,
    wait: std::time::Duration,
) -> Result<(Vec<(String, String, String)>, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        if targets.has_names() {
            targets.refresh(peers).await;
        }
        let mut reached = Vec::new();
        let mut unreachable = Vec::new();
        let mut last_error = None;
        for url in targets.list().iter() {
            match startup_info(peers, "target", url, true).await {
                Ok(Some(info)) => {
                    reached.push((url.clone(), info.vocab_fingerprint, info.model_id))
                }
                Ok(None) => unreachable!("waited for"),
                Err(e) if e.is::<Unreachable>() => {
                    unreachable.push(url.clone());
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if !reached.is_empty() {
            for url in &unreachable {
                tracing::warn!(
                    "target {url} cannot be reached; it is used once its health check answers"
                );
            }
            return Ok((reached, unreachable));
        }
        let e = last_error.unwrap_or_else(|| {
            anyhow::anyhow!(
                "no target-node: {} resolves to no address",
                targets.describe()
            )
        });
        if tokio::time::Instant::now() >= deadline {
            return Err(e);
        }
        if !said {
            tracing::info!("no target-node can be reached yet ({e:#}); waiting up to {wait:?}");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A node that cannot be reached at all (as opposed to one that answers wrongly).
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

async fn startup_info(
    peers: &Peers,
    role: &str,
    url: &str,
    wait: bool,
) -> Result<Option<v1::ModelInfo>> {
    let mut said = false;
    loop {
        let answer = match role {
            "target" => {
                let mut c = peers.target(url).await;
                match &mut c {
                    Ok(c) => c.info(v1::InfoRequest {}).await.map(|r| r.into_inner()),
                    Err(s) => Err(s.clone()),
                }
            }
            _ => {
                let mut c = peers.drafter(url).await;
                match &mut c {
                    Ok(c) => c.info(v1::InfoRequest {}).await.map(|r| r.into_inner()),
                    Err(s) => Err(s.clone()),
                }
            }
        };
        match answer {
            Ok(info) => return Ok(Some(info)),
            Err(s) if s.code() == Code::Unavailable && s.message().contains("still loading") => {
                if !wait {
                    tracing::info!("{role} {url} is loading its model; it is used once it serves");
                    return Ok(None);
                }
                if !said {
                    tracing::info!("{role} {url} is loading its model; waiting for it");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(s) if s.code() == Code::Unavailable => {
                return Err(Unreachable(specd_rpc::tls::with_hint(
                    format!("{role} {url}: {}", specd_rpc::peers::status_text(&s)),
                    url,
                ))
                .into())
            }
            Err(s) if s.code() == Code::InvalidArgument => bail!("{role} {url}: {}", s.message()),
            Err(s) if s.code() == Code::Unauthenticated => {
                bail!("{role} {url} refused the coordinator: {}", s.message())
            }
            Err(s) => bail!(
                "{role} {url} does not answer as a specd {role}-node: {}{}",
                specd_rpc::peers::status_text(&s),
                if specd_rpc::peers::transport_failure(&s) {
                    specd_rpc::tls::scheme_hint(url)
                } else {
                    ""
                }
            ),
        }
    }
}
