//! specd's OpenAI-compatible HTTP API: `POST /v1/chat/completions` and `POST /v1/completions`
//! (whole or streamed as server-sent events), `GET /v1/models`, `GET /health`, `GET /metrics`
//! (Prometheus). Requests are
//! turned into the engine's one request type ([`request`]) and run on a [`Backend`]; each runs on
//! a blocking thread, at most `max_running` at once, with at most `max_waiting` more waiting in
//! order (beyond that: 429 with `Retry-After`). A client that goes away ends its request. With
//! API keys (`--api-key`, `--api-key-file`), `/v1/*` needs `Authorization: Bearer KEY` (401
//! otherwise) and the key's tenant goes with the request; `/health` and `/metrics` stay open to
//! probes and scrapers.

pub mod backend;
pub mod error;
pub mod metrics;
pub mod request;
pub mod response;
pub mod tls;

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use specd_engine::pipeline::{Delta, Output};
use specd_engine::spec_decode::FinishReason;
use specd_rpc::auth::Tenant;
use specd_telemetry::trace::TraceContext;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::Instrument;

pub use axum::http::StatusCode;
pub use backend::{Backend, Embedded};
pub use error::ApiError;
use request::{Endpoint, Parsed, Speculative};
use response::Meta;

/// How the HTTP server runs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Requests generating at once.
    pub max_running: usize,
    /// Requests waiting for a turn, served in order of arrival; beyond them, 429.
    pub max_waiting: usize,
    /// The server's speculative settings; a request's `speculative` object overrides them.
    pub defaults: Speculative,
    /// On shutdown, how long running requests may take to finish.
    pub drain_timeout: std::time::Duration,
    /// The API keys and their tenants; None: an open API.
    pub api_keys: Option<Arc<specd_rpc::auth::ApiKeys>>,
    /// HTTPS with this certificate (`--tls-cert`); None or no certificate: plain HTTP.
    pub tls: Option<Arc<specd_rpc::tls::Tls>>,
}

struct AppState {
    backend: OnceLock<Arc<dyn Backend>>,
    cfg: HttpConfig,
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Shutting down: new requests get 503, running ones finish.
    draining: AtomicBool,
}

type Shared = Arc<AppState>;

/// A fresh request id (hex).
pub(crate) fn request_id() -> String {
    format!("{:016x}", fresh_u64())
}

/// A number no other call in this process returns, hard to guess (request ids, default seeds).
pub(crate) fn fresh_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    specd_engine::sampling::splitmix64(nanos ^ n.rotate_left(40))
}

/// The router; `backend` is set once the models are loaded (until then every request but
/// `/health` is answered 503).
fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .fallback(|| async {
            ApiError::status(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {ENDPOINTS}"),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::status(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed: {ENDPOINTS}"),
            )
        })
        .with_state(state)
}

const ENDPOINTS: &str = "this server has POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics";

/// The largest request body read.
const MAX_BODY: usize = 16 << 20;

/// Binds the HTTP API's address (a clear error when it is taken or invalid).
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (HTTP API)"))
}

/// Loads the backend with `load` (on a blocking thread: `/health` answers 503 "loading"
/// meanwhile) and serves on `listener` until `shutdown`, letting running requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: HttpConfig,
    load: impl FnOnce() -> Result<Arc<dyn Backend>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    anyhow::ensure!(cfg.max_running >= 1, "--max-running must be at least 1");
    let https = match &cfg.tls {
        Some(t) => t.https()?,
        None => None,
    };
    metrics::handle();
    let drain_timeout = cfg.drain_timeout;
    let state = Arc::new(AppState {
        backend: OnceLock::new(),
        running: Arc::new(Semaphore::new(cfg.max_running)),
        waiting: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        cfg,
    });
    let app = router(state.clone());
    // On the signal: new requests get 503 (`/health`: draining) while the running ones finish,
    // for at most the drain timeout; then the server stops taking connections and ends.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        match https {
            Some(c) => {
                axum::serve(tls::TlsListener::new(listener, c)?, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
    });
    let draining = state.clone();
    let mut deadline = Box::pin(async move {
        shutdown.await;
        draining.draining.store(true, Ordering::Release);
        let start = Instant::now();
        while draining.busy() > 0 && start.elapsed() < drain_timeout {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = stop_tx.send(true);
        // Connections still busy after the drain are given up a moment later.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    });
    let loading = tokio::task::spawn_blocking(load);
    tokio::select! {
        r = &mut server => return r.context("HTTP server panicked")?.context("HTTP server failed"),
        loaded = loading => {
            let backend = loaded.context("model loading panicked")??;
            let _ = state.backend.set(backend);
        }
        _ = &mut deadline => return Ok(()),
    }
    tokio::select! {
        r = &mut server => r.context("HTTP server panicked")?.context("HTTP server failed"),
        _ = &mut deadline => {
            tracing::warn!("HTTP drain timeout: stopping with requests still running");
            Ok(())
        }
    }
}

async fn health(State(s): State<Shared>) -> Response {
    if s.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    match s.backend.get() {
        Some(b) => match b.ready() {
            Ok(()) => Json(json!({"status": "ok", "model": b.model_id()})).into_response(),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": why})),
            )
                .into_response(),
        },
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

fn backend(s: &AppState) -> Result<Arc<dyn Backend>, ApiError> {
    if s.draining.load(Ordering::Acquire) {
        return Err(ApiError::unavailable(
            "the server is shutting down (draining); retry on another replica",
        ));
    }
    s.backend
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))
}

/// The tenant the request's API key names (the default one on an open API).
fn authenticate(s: &AppState, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    specd_rpc::auth::authenticate(s.cfg.api_keys.as_deref(), value)
        .map_err(|e| ApiError::unauthorized(e.message()))
}

async fn models(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authenticate(&s, &headers)?;
    let b = backend(&s)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": b.model_id(), "object": "model", "created": 0, "owned_by": "specd"}],
    })))
}

async fn chat(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    complete(s, Endpoint::Chat, &headers, body).await
}

async fn completions(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    complete(s, Endpoint::Completion, &headers, body).await
}

/// Sets its flag when dropped: the handler's future is dropped when its client goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A request's turn to generate; the load gauges follow turns taken and given back.
struct Turn {
    permit: Option<OwnedSemaphorePermit>,
    state: Shared,
    /// When the turn was given.
    start: Instant,
}

impl Turn {
    fn new(permit: OwnedSemaphorePermit, state: &Shared) -> Self {
        let t = Turn {
            permit: Some(permit),
            state: state.clone(),
            start: Instant::now(),
        };
        t.state.report_load();
        t
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.state.report_load();
    }
}

impl AppState {
    /// Requests running or waiting.
    fn busy(&self) -> usize {
        self.cfg.max_running - self.running.available_permits()
            + self.waiting.load(Ordering::Acquire)
    }

    fn report_load(&self) {
        metrics::set_load(
            self.cfg.max_running - self.running.available_permits(),
            self.waiting.load(Ordering::Acquire),
        );
    }
}

/// Times a request's rounds for the latency histograms.
struct Clock {
    start: Instant,
    last: Option<Instant>,
}

impl Clock {
    fn round(&mut self, tokens: usize) {
        if tokens == 0 {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => metrics::first_token((now - self.start).as_secs_f64()),
            Some(l) => metrics::inter_token((now - l).as_secs_f64() / tokens as f64),
        }
        self.last = Some(now);
    }
}

/// Waits for a turn to generate: at once if fewer than `max_running` run, in order behind at most
/// `max_waiting` others, or 429.
async fn admit(s: &Shared) -> Result<Turn, ApiError> {
    if let Ok(p) = s.running.clone().try_acquire_owned() {
        return Ok(Turn::new(p, s));
    }
    let max = s.cfg.max_waiting;
    if s.waiting
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w < max).then_some(w + 1)
        })
        .is_err()
    {
        return Err(ApiError::overloaded(
            format!(
                "the server is at capacity ({} requests running, {max} waiting); retry later",
                s.cfg.max_running
            ),
            1,
        ));
    }
    struct Waiting<'a>(&'a AppState);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.waiting.fetch_sub(1, Ordering::AcqRel);
            self.0.report_load();
        }
    }
    let _w = Waiting(s);
    s.report_load();
    let permit = s
        .running
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    drop(_w);
    Ok(Turn::new(permit, s))
}

/// Runs a completion request in its span, which carries the W3C trace id of its `traceparent`
/// header (or of a new trace) on to the backend and into every log line of the request.
async fn complete(s: Shared, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Response {
    let trace = TraceContext::from_header_or_root(
        headers
            .get(specd_telemetry::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let span = tracing::info_span!(
        "request",
        endpoint = endpoint.path(),
        trace_id = %trace.trace_id_hex()
    );
    let mut response = match authenticate(&s, headers) {
        Ok(tenant) => {
            respond(s, endpoint, trace, tenant, body)
                .instrument(span)
                .await
        }
        Err(e) => e.into_response(),
    };
    // The trace goes on with this server's span (the caller's trace id, a new parent id).
    if let Ok(v) = axum::http::HeaderValue::from_str(&trace.child().to_string()) {
        response
            .headers_mut()
            .insert(specd_telemetry::trace::TRACEPARENT, v);
    }
    response
}

async fn respond(
    s: Shared,
    endpoint: Endpoint,
    trace: TraceContext,
    tenant: Tenant,
    body: Body,
) -> Response {
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body could not be read, or is over {MAX_BODY} bytes: {e}"),
            )
            .into_response()
        }
    };
    match prepare(&s, endpoint, &body, trace, tenant).await {
        Err(e) => {
            tracing::info!(status = e.status.as_u16(), "refused: {}", e.message);
            e.into_response()
        }
        Ok((backend, parsed, turn)) if parsed.stream => stream(backend, parsed, turn).await,
        Ok((backend, parsed, turn)) => whole(backend, parsed, turn).await,
    }
}

async fn prepare(
    s: &Shared,
    endpoint: Endpoint,
    body: &[u8],
    trace: TraceContext,
    tenant: Tenant,
) -> Result<(Arc<dyn Backend>, Parsed, Turn), ApiError> {
    let backend = backend(s)?;
    let mut parsed = request::parse(endpoint, body, &s.cfg.defaults)?;
    parsed.trace = Some(trace);
    parsed.request.tenant = tenant.0;
    if parsed.model != backend.model_id() {
        return Err(ApiError::unknown_model(&parsed.model, backend.model_id()));
    }
    let turn = admit(s).await?;
    Ok((backend, parsed, turn))
}

/// Runs a request on the calling (blocking) thread during its turn, timing its rounds;
/// `on_delta` sees each round. The turn ends when the generation does.
fn run_turn(
    backend: &dyn Backend,
    parsed: &Parsed,
    turn: Turn,
    on_delta: &mut dyn FnMut(&Delta) -> ControlFlow<()>,
) -> Result<Output, ApiError> {
    let mut clock = Clock {
        start: turn.start,
        last: None,
    };
    let mut streamed = 0;
    let out = backend.generate(parsed, &mut |d| {
        clock.round(d.token_ids.len());
        streamed += d.token_ids.len();
        on_delta(d)
    });
    let seconds = turn.start.elapsed().as_secs_f64();
    match &out {
        Ok(o) => {
            let rule = parsed.request.policy.rule.to_string();
            metrics::finished(o, &rule, seconds);
            tracing::info!(
                prompt_tokens = o.prompt_tokens,
                completion_tokens = o.token_ids.len(),
                finish_reason = %o.stats.finish_reason.map_or("none".into(), |f| format!("{f:?}").to_lowercase()),
                seconds,
                "finished"
            );
        }
        // A backend that reports the client's leaving as an error (a remote one): still a
        // finished request, cancelled.
        Err(e) if e.status == StatusCode::REQUEST_TIMEOUT => {
            specd_telemetry::metrics::finished("cancelled", 0, streamed as u64, seconds);
            tracing::info!(completion_tokens = streamed, seconds, "cancelled");
        }
        Err(e) => tracing::warn!(status = e.status.as_u16(), "failed: {}", e.message),
    }
    out
}

async fn whole(backend: Arc<dyn Backend>, parsed: Parsed, turn: Turn) -> Response {
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let span = tracing::Span::current();
    let run = tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let out = run_turn(&*backend, &parsed, turn, &mut |_| {
            if cancelled.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        out.map(|o| Meta::new(parsed.endpoint, &parsed.model).complete(&parsed, &o, &*backend))
    });
    match run.await {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("generation panicked: {e}")).into_response(),
    }
}

/// What the generation thread of a stream sends: an event, or an error before any event (answered
/// with its status instead of a stream).
enum Item {
    Event(Event),
    Fail(ApiError),
}

/// A streamed response: server-sent events, one chunk per verify round that adds text (a chat
/// stream starts with the role), a last chunk with the finish reason, the usage chunk when asked
/// for, then `[DONE]`. The status is sent with the first event, so a request that fails before
/// it (a prompt too long, a draft the server lacks...) gets its error status as a whole response
/// would; an error after it arrives as an event holding the error object.
async fn stream(backend: Arc<dyn Backend>, parsed: Parsed, turn: Turn) -> Response {
    let (tx, mut rx) = mpsc::channel::<Item>(64);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let meta = Meta::new(parsed.endpoint, &parsed.model);
        let send = |v: serde_json::Value| {
            tx.blocking_send(Item::Event(Event::default().data(v.to_string())))
                .is_ok()
        };
        // The role chunk goes first, with the first text or the end.
        let started = std::cell::Cell::new(false);
        let start = || {
            !started.replace(true)
                && parsed.endpoint == Endpoint::Chat
                && !send(meta.chunk(&parsed, None, None, None))
        };
        let mut offset = 0;
        let out = run_turn(&*backend, &parsed, turn, &mut |d| {
            if d.text.is_empty() && (parsed.request.logprobs.is_none() || d.logprobs.is_empty()) {
                // Nothing to show (text held back); still notice a client that left.
                return if tx.is_closed() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                };
            }
            let lp = parsed.request.logprobs.map(|_| {
                let (v, end) = response::logprobs(parsed.endpoint, d.logprobs, &*backend, offset);
                offset = end;
                v
            });
            // `start()`: true when the role chunk could not be sent (the client left).
            if !start() && send(meta.chunk(&parsed, Some(d.text), lp, None)) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        match out {
            Ok(o) => {
                let f = o.stats.finish_reason;
                if f == Some(FinishReason::Cancelled) || start() {
                    return;
                }
                send(meta.chunk(&parsed, None, None, f.or(Some(FinishReason::Stop))));
                if parsed.include_usage {
                    send(meta.usage_chunk(&parsed, &o));
                }
            }
            Err(e) if !started.get() => {
                let _ = tx.blocking_send(Item::Fail(e));
                return;
            }
            Err(e) => {
                send(e.body());
            }
        }
        let _ = tx.blocking_send(Item::Event(Event::default().data("[DONE]")));
    });
    let first = match rx.recv().await {
        Some(Item::Event(e)) => e,
        Some(Item::Fail(e)) => return e.into_response(),
        None => {
            return ApiError::internal("the generation ended without a response").into_response()
        }
    };
    let rest = ReceiverStream::new(rx).map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Item::Event(e) => e,
            Item::Fail(e) => Event::default().data(e.body().to_string()),
        })
    });
    let events = tokio_stream::once(Ok(first)).chain(rest);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
