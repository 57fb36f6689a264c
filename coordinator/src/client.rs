//! A client of the Coordinator service: one request in, the same `Output` as the embedded mode
//! out (used by `specd generate --coordinator` and `specd eval --coordinator`).

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use specd_engine::pipeline::{Mode, Output, Request};
use specd_engine::spec_decode::generate::RunStats;
use specd_engine::spec_decode::{DraftSampling, FinishReason, TokenInfo};
use specd_proto::v1::coordinator_client::CoordinatorClient;
use specd_proto::v1::{self, GenerateRequest, TokenEvent};
use specd_rpc::convert;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// What a coordinator returned.
pub struct Remote {
    pub output: Output,
    /// The target finished the request alone after losing the draft-node.
    pub fallback: bool,
    /// The final statistics as sent (incl. per-round network overhead).
    pub wire_stats: v1::Stats,
    /// Seconds from the request to the first event carrying tokens, and how many it carried:
    /// after it, the client sees the steady-state rate (`completion − first_tokens` tokens in
    /// `wall_s − first_event_s`), free of session set-up and prefill.
    pub first_event_s: f64,
    pub first_event_tokens: usize,
}

/// The wire form of a request (`protect`: the protected-token pattern; `pipeline`: pipelined
/// drafting on the draft-node).
pub fn request_to_wire(req: &Request, protect: &str, pipeline: bool) -> GenerateRequest {
    let (gamma, gamma_policy, gamma_max) = convert::gamma_to_wire(req.gamma);
    let (prompt, chat, messages, prompt_ids) = convert::prompt_to_wire(&req.prompt);
    GenerateRequest {
        prompt,
        chat,
        messages,
        prompt_ids,
        stop: req.stop.clone(),
        max_tokens: u32::try_from(req.max_tokens).unwrap_or(u32::MAX),
        sampling: Some(convert::sampling_to_wire(&req.sampling)),
        gamma,
        gamma_policy,
        gamma_max,
        policy: Some(v1::Policy {
            rule: req.policy.rule.to_string(),
            budget: req.policy.budget,
            protect: protect.to_owned(),
            pacing: req.policy.pacing.to_string(),
        }),
        mode: match req.mode {
            Mode::Speculative => "speculative".into(),
            Mode::TargetOnly => "target-only".into(),
        },
        draft_sampling: match req.draft_sampling {
            DraftSampling::Greedy => "greedy".into(),
            DraftSampling::Sample => "sample".into(),
        },
        tenant: req.tenant.clone(),
        no_pipeline: !pipeline,
        drafter: req.drafter.to_string(),
        top_logprobs: req.logprobs.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

/// A client of the coordinator at `url`: an `https://` URL is checked against `SPECD_TLS_CA` (or
/// the public roots), with `SPECD_TLS_CERT`/`SPECD_TLS_KEY` as the client's certificate where the
/// coordinator asks for one.
async fn connect(url: &str) -> Result<CoordinatorClient<tonic::transport::Channel>> {
    let tls = specd_rpc::tls::Tls::from_env()?;
    let channel = specd_rpc::peers::connect(url, tls.as_ref())
        .await
        .map_err(|s| anyhow!("coordinator {url}: {}", s.message()))?;
    Ok(CoordinatorClient::new(channel))
}

/// `msg` as a request presenting the API key in `SPECD_API_KEY`, if it is set (`--api-key` on
/// the coordinator).
fn with_key<T>(msg: T) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(msg);
    if let Ok(key) = std::env::var("SPECD_API_KEY") {
        let value = format!("Bearer {}", key.trim())
            .parse()
            .map_err(|_| anyhow!("SPECD_API_KEY is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// The coordinator's sessions and tenant budget pools (`ListSessions`), as `specd sessions`
/// prints them.
pub fn list_sessions(url: &str) -> Result<v1::ListSessionsResponse> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = connect(url).await?;
        Ok(client
            .list_sessions(with_key(v1::ListSessionsRequest {})?)
            .await
            .map_err(|s| anyhow!("coordinator {url}: {}: {}", s.code(), s.message()))?
            .into_inner())
    })
}

/// Runs a request through a coordinator (`pipeline`: pipelined drafting on the draft-node),
/// presenting the API key in `SPECD_API_KEY` if it is set; an `https://` URL is checked against
/// `SPECD_TLS_CA` (or the public roots), with `SPECD_TLS_CERT`/`SPECD_TLS_KEY` as the client's
/// certificate where the coordinator asks for one.
pub fn generate(
    url: &str,
    req: &Request,
    protect: &str,
    pipeline: bool,
    mut on_text: impl FnMut(&str),
) -> Result<Remote> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let mut client = connect(url).await?;
        let request = with_key(request_to_wire(req, protect, pipeline))?;
        let mut stream = client
            .generate(request)
            .await
            .map_err(|s| anyhow!("{}: {}", s.code(), s.message()))
            .context("the coordinator refused the request")?
            .into_inner();
        collect(&mut stream, t0, |ev| {
            if !ev.text.is_empty() {
                on_text(&ev.text);
            }
            ControlFlow::Continue(())
        })
        .await
        .map_err(|s| anyhow!("generation failed: {}: {}", s.code(), s.message()))
    })
}

/// Reads a Generate event stream to its last event into an [`Output`]; `on_event` sees each
/// event, and its `Break` stops reading (the request is cancelled: dropping the stream ends it
/// at the coordinator). `t0` is when the request was sent.
pub async fn collect<S>(
    stream: &mut S,
    t0: Instant,
    mut on_event: impl FnMut(&TokenEvent) -> ControlFlow<()>,
) -> Result<Remote, Status>
where
    S: Stream<Item = Result<TokenEvent, Status>> + Unpin,
{
    let (mut ids, mut info, mut text) = (Vec::new(), Vec::new(), String::new());
    let mut logprobs = Vec::new();
    let (mut stats, mut spent, mut finish, mut fallback) =
        (v1::Stats::default(), 0.0, String::new(), false);
    let mut first: Option<(f64, usize)> = None;
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if first.is_none() && !ev.token_ids.is_empty() {
            first = Some((t0.elapsed().as_secs_f64(), ev.token_ids.len()));
        }
        ids.extend_from_slice(&ev.token_ids);
        info.extend(convert::token_info(&ev.lossy, &ev.charge));
        logprobs.extend(convert::logprobs_from_wire(&ev.logprobs));
        text.push_str(&ev.text);
        spent = ev.budget_spent;
        fallback |= ev.fallback;
        if on_event(&ev).is_break() {
            finish = "cancelled".into();
            break;
        }
        if let Some(s) = ev.stats {
            stats = s;
        }
        if ev.finished {
            finish = ev.finish_reason;
            break;
        }
    }
    // Event streams carry no lossy flags for fallback tokens: pad.
    info.resize(ids.len(), TokenInfo::default());
    let run = RunStats {
        completion_tokens: ids.len(),
        drafted_tokens: stats.drafted_tokens as usize,
        accepted_tokens: stats.accepted_tokens as usize,
        drafts: stats.drafts as usize,
        accepted_per_pos: stats.accepted_per_pos.iter().map(|&n| n as usize).collect(),
        rejections: stats.rejections as usize,
        target_calls: stats.target_calls as usize,
        draft_steps: stats.draft_steps as usize,
        draft_s: stats.draft_ms / 1e3,
        draft_prefill_s: stats.draft_prefill_ms / 1e3,
        verify_s: stats.verify_ms / 1e3,
        lossy_accepted_tokens: stats.lossy_accepted_tokens as usize,
        protected_positions: stats.protected_positions as usize,
        budget_spent: spent,
        token_info: info,
        decode_s: stats.decode_ms / 1e3,
        stale_blocks: stats.stale_blocks as usize,
        gamma_policy: stats.gamma_policy.clone(),
        gamma_max: stats.gamma_max as usize,
        mean_gamma: stats.mean_gamma,
        estimates: convert::estimates_from_wire(&stats),
        logprobs,
        finish_reason: match finish.as_str() {
            "stop" => Some(FinishReason::Stop),
            "length" => Some(FinishReason::Length),
            "cancelled" => Some(FinishReason::Cancelled),
            _ => None,
        },
        ..Default::default()
    };
    let wall_s = t0.elapsed().as_secs_f64();
    let (first_event_s, first_event_tokens) = first.unwrap_or((wall_s, ids.len()));
    Ok(Remote {
        first_event_s,
        first_event_tokens,
        output: Output {
            text,
            prompt_tokens: stats.prompt_tokens as usize,
            token_ids: ids,
            stats: run,
            prefill_s: stats.prefill_ms / 1e3,
            wall_s,
        },
        fallback,
        wire_stats: stats,
    })
}
