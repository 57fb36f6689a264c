//! Prometheus metrics with vLLM-like names, through the `metrics` facade and its Prometheus
//! exporter: one recorder per process, rendered at `GET /metrics` on the HTTP API's port and on a
//! node's `--metrics-listen` port. Every name is described here, in one place.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 30.0, 60.0,
];

/// The process's recorder (installed on first use; one per process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // One recorder per process: if another was installed first, the metrics go to it and
        // this handle renders nothing.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render() -> axum::response::Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle().render(),
    )
        .into_response()
}

/// Binds a metrics listener (a node's `--metrics-listen`); a taken address is an error naming it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    handle();
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    let app = axum::Router::new().route("/metrics", get(render));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics server failed")
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("specd_num_requests_running", "Requests generating now.");
    describe_gauge!("specd_num_requests_waiting", "Requests waiting for a turn.");
    describe_counter!(
        "specd_request_success_total",
        "Requests finished, by finish reason."
    );
    describe_counter!(
        "specd_prompt_tokens_total",
        "Prompt tokens of finished requests."
    );
    describe_counter!(
        "specd_generation_tokens_total",
        "Completion tokens of finished requests."
    );
    describe_counter!(
        "specd_spec_decode_num_drafts_total",
        "Judged blocks that carried drafted tokens."
    );
    describe_counter!(
        "specd_spec_decode_num_draft_tokens_total",
        "Drafted tokens judged."
    );
    describe_counter!(
        "specd_spec_decode_num_accepted_tokens_total",
        "Drafted tokens the target accepted."
    );
    describe_counter!(
        "specd_spec_decode_num_accepted_tokens_per_pos_total",
        "Blocks whose drafted token at this position was accepted."
    );
    describe_counter!(
        "specd_lossy_accepted_tokens_total",
        "Tokens a relaxed rule accepted where the exact rule would have rejected, by rule kind."
    );
    describe_gauge!(
        "specd_error_budget_spent_total",
        "Error budget spent (only grows; a gauge because it is not a whole number)."
    );
    describe_histogram!(
        "specd_time_to_first_token_seconds",
        Unit::Seconds,
        "From admission to the first text."
    );
    describe_histogram!(
        "specd_inter_token_latency_seconds",
        Unit::Seconds,
        "Between streamed rounds, per token."
    );
    describe_histogram!(
        "specd_e2e_request_latency_seconds",
        Unit::Seconds,
        "From admission to the last token."
    );
    describe_gauge!(
        "specd_target_sessions",
        "Sessions a target-node holds (each with its KV cache)."
    );
    describe_histogram!(
        "specd_verify_duration_seconds",
        Unit::Seconds,
        "A target-node's forward pass over one block (the target's time per round)."
    );
    describe_gauge!(
        "specd_draft_loops_running",
        "Speculative loops a draft-node runs now."
    );
    describe_histogram!(
        "specd_draft_duration_seconds",
        Unit::Seconds,
        "A draft-node's time to draft one block."
    );
    describe_gauge!(
        "specd_tenant_pool_capacity",
        "A tenant's budget pool: the bound on the expected number of its outputs that differ from the exact run (coordinator)."
    );
    describe_gauge!(
        "specd_tenant_pool_reserved",
        "Budget of a tenant's pool held by its running sessions (coordinator)."
    );
    describe_gauge!(
        "specd_tenant_pool_spent",
        "Budget of a tenant's pool spent by its ended sessions (coordinator)."
    );
    describe_gauge!(
        "specd_tenant_pool_available",
        "Budget a tenant's next session may get from its pool; 0: its sessions run the exact rule (coordinator)."
    );
    describe_histogram!(
        "specd_draft_target_round_trip_seconds",
        Unit::Seconds,
        "From a draft-node sending a block to its verdict arriving (blocks sent alone in flight)."
    );
}

/// The HTTP API's load.
pub fn set_load(running: usize, waiting: usize) {
    gauge!("specd_num_requests_running").set(running as f64);
    gauge!("specd_num_requests_waiting").set(waiting as f64);
}

pub fn first_token(seconds: f64) {
    histogram!("specd_time_to_first_token_seconds").record(seconds);
}

pub fn inter_token(seconds_per_token: f64) {
    histogram!("specd_inter_token_latency_seconds").record(seconds_per_token);
}

/// What verification judged: of `drafted` tokens in `drafts` blocks, `accepted` (and how many
/// blocks accepted each position), `lossy` of them let through by `rule` beyond the exact rule,
/// and `budget` spent.
pub struct Judged<'a> {
    pub drafts: u64,
    pub drafted: u64,
    pub accepted: u64,
    pub accepted_per_pos: &'a [u64],
    pub lossy: u64,
    pub rule: &'a str,
    pub budget: f64,
}

pub fn judged(j: &Judged) {
    counter!("specd_spec_decode_num_drafts_total").increment(j.drafts);
    counter!("specd_spec_decode_num_draft_tokens_total").increment(j.drafted);
    counter!("specd_spec_decode_num_accepted_tokens_total").increment(j.accepted);
    for (pos, &n) in j.accepted_per_pos.iter().enumerate() {
        if n > 0 {
            counter!("specd_spec_decode_num_accepted_tokens_per_pos_total", "position" => pos.to_string())
                .increment(n);
        }
    }
    // The rule's kind (`topk`, not `topk:3`): a label's values must stay few.
    let kind = j.rule.split(':').next().unwrap_or(j.rule).to_owned();
    counter!("specd_lossy_accepted_tokens_total", "rule" => kind).increment(j.lossy);
    // The facade's counters are whole numbers: the budget's running sum is a gauge.
    gauge!("specd_error_budget_spent_total").increment(j.budget);
}

/// A finished request: `reason` is stop, length or cancelled.
pub fn finished(reason: &'static str, prompt_tokens: u64, completion_tokens: u64, seconds: f64) {
    counter!("specd_request_success_total", "finished_reason" => reason).increment(1);
    counter!("specd_prompt_tokens_total").increment(prompt_tokens);
    counter!("specd_generation_tokens_total").increment(completion_tokens);
    histogram!("specd_e2e_request_latency_seconds").record(seconds);
}

pub fn target_sessions(n: usize) {
    gauge!("specd_target_sessions").set(n as f64);
}

pub fn verify(seconds: f64) {
    histogram!("specd_verify_duration_seconds").record(seconds);
}

pub fn draft_loops(n: usize) {
    gauge!("specd_draft_loops_running").set(n as f64);
}

pub fn drafted(seconds: f64) {
    histogram!("specd_draft_duration_seconds").record(seconds);
}

/// A tenant's budget pool at the coordinator (`--tenant-pool`).
pub fn tenant_pool(tenant: &str, capacity: f64, reserved: f64, spent: f64, available: f64) {
    let t = tenant.to_owned();
    gauge!("specd_tenant_pool_capacity", "tenant" => t.clone()).set(capacity);
    gauge!("specd_tenant_pool_reserved", "tenant" => t.clone()).set(reserved);
    gauge!("specd_tenant_pool_spent", "tenant" => t.clone()).set(spent);
    gauge!("specd_tenant_pool_available", "tenant" => t).set(available);
}

pub fn round_trip(seconds: f64) {
    histogram!("specd_draft_target_round_trip_seconds").record(seconds);
}
