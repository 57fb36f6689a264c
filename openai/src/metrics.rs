//! The HTTP API's metrics: a finished request's output as specd-telemetry's counters (the names
//! and the recorder live there, shared with the nodes' `/metrics`).

use specd_engine::pipeline::Output;
use specd_engine::spec_decode::FinishReason;
pub use specd_telemetry::metrics::{first_token, handle, inter_token, render, set_load};
use specd_telemetry::metrics::{judged, Judged};

/// A finished request.
pub fn finished(out: &Output, rule: &str, seconds: f64) {
    let s = &out.stats;
    let reason = match s.finish_reason {
        Some(FinishReason::Length) => "length",
        Some(FinishReason::Cancelled) => "cancelled",
        _ => "stop",
    };
    let per_pos: Vec<u64> = s.accepted_per_pos.iter().map(|&n| n as u64).collect();
    judged(&Judged {
        drafts: s.drafts as u64,
        drafted: s.drafted_tokens as u64,
        accepted: s.accepted_tokens as u64,
        accepted_per_pos: &per_pos,
        lossy: s.lossy_accepted_tokens as u64,
        rule,
        budget: s.budget_spent,
    });
    specd_telemetry::metrics::finished(
        reason,
        out.prompt_tokens as u64,
        out.token_ids.len() as u64,
        seconds,
    );
}
