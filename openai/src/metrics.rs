//! Prometheus metrics of the HTTP API (`GET /metrics`), with vLLM-like names, through the
//! `metrics` facade and its Prometheus exporter.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use specd_engine::pipeline::Output;
use specd_engine::spec_decode::FinishReason;

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0,
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
        "Error budget spent by finished requests (only grows; a gauge because it is not a whole number)."
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
}

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

/// A finished request.
pub fn finished(out: &Output, rule: &str, seconds: f64) {
    let s = &out.stats;
    let reason = match s.finish_reason {
        Some(FinishReason::Length) => "length",
        Some(FinishReason::Cancelled) => "cancelled",
        _ => "stop",
    };
    counter!("specd_request_success_total", "finished_reason" => reason).increment(1);
    counter!("specd_prompt_tokens_total").increment(out.prompt_tokens as u64);
    counter!("specd_generation_tokens_total").increment(out.token_ids.len() as u64);
    counter!("specd_spec_decode_num_drafts_total").increment(s.drafts as u64);
    counter!("specd_spec_decode_num_draft_tokens_total").increment(s.drafted_tokens as u64);
    counter!("specd_spec_decode_num_accepted_tokens_total").increment(s.accepted_tokens as u64);
    for (pos, &n) in s.accepted_per_pos.iter().enumerate() {
        counter!("specd_spec_decode_num_accepted_tokens_per_pos_total", "position" => pos.to_string())
            .increment(n as u64);
    }
    // The rule's kind (`topk`, not `topk:3`): a label's values must stay few.
    let kind = rule.split(':').next().unwrap_or(rule).to_owned();
    counter!("specd_lossy_accepted_tokens_total", "rule" => kind)
        .increment(s.lossy_accepted_tokens as u64);
    // The facade's counters are whole numbers: the budget's running sum is a gauge.
    gauge!("specd_error_budget_spent_total").increment(s.budget_spent);
    histogram!("specd_e2e_request_latency_seconds").record(seconds);
}
