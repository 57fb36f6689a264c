//! Conversions between wire messages and engine types, with validation: every malformed field is
//! an `INVALID_ARGUMENT` naming the field.

use specd_engine::pipeline::{ChatMessage, Prompt};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::{Pacing, Policy, ProtectCache};
use specd_engine::spec_decode::gamma::{Estimates, GammaPolicy, DEFAULT_GAMMA_MAX};
use specd_engine::spec_decode::generate::RunStats;
use specd_engine::spec_decode::{DraftBlock, DraftDist, DraftSampling, TokenInfo, TokenLogprob};
use tonic::Status;

use specd_proto::v1;

/// The most alternatives a request may ask for per token (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `top_logprobs` of a request, checked.
pub fn top_logprobs_from_wire(n: Option<u32>) -> Result<Option<usize>, Status> {
    match n {
        Some(n) if n > MAX_TOP_LOGPROBS => Err(Status::invalid_argument(format!(
            "top_logprobs {n}: at most {MAX_TOP_LOGPROBS}"
        ))),
        n => Ok(n.map(|n| n as usize)),
    }
}

/// Log-probabilities with each token's text (`text`: the target's decoding of one token).
pub fn logprobs_to_wire(
    lps: &[TokenLogprob],
    text: impl Fn(u32) -> String,
) -> Vec<v1::TokenLogprob> {
    let one = |token: u32, logprob: f32| v1::TokenLogprob {
        token,
        logprob,
        text: text(token),
        top: Vec::new(),
    };
    lps.iter()
        .map(|l| v1::TokenLogprob {
            top: l.top.iter().map(|&(t, lp)| one(t, lp)).collect(),
            ..one(l.token, l.logprob)
        })
        .collect()
}

pub fn logprobs_from_wire(lps: &[v1::TokenLogprob]) -> Vec<TokenLogprob> {
    lps.iter()
        .map(|l| TokenLogprob {
            token: l.token,
            logprob: l.logprob,
            top: l.top.iter().map(|t| (t.token, t.logprob)).collect(),
        })
        .collect()
}

/// A node's `Info` answer for its model (`role`: "target" or "draft").
pub fn model_info(
    model: &specd_engine::pipeline::LoadedModel,
    role: &str,
    max_block: usize,
) -> v1::ModelInfo {
    let c = &model.model.config;
    v1::ModelInfo {
        protocol_version: specd_proto::PROTOCOL_VERSION.into(),
        role: role.into(),
        model_id: model.name.clone(),
        vocab_fingerprint: model.tokenizer.fingerprint().into(),
        vocab_size: c.vocab_size as u32,
        context_length: c.context_length as u32,
        max_block: max_block as u32,
        device: model.model.device().to_string(),
        open_sessions: 0,
    }
}

/// A prompt as the wire carries it: `(prompt, chat, messages, prompt_ids)`.
pub fn prompt_to_wire(p: &Prompt) -> (String, bool, Vec<v1::ChatMessage>, Vec<u32>) {
    match p {
        Prompt::Text(t) => (t.clone(), false, Vec::new(), Vec::new()),
        Prompt::Ids(ids) => (String::new(), false, Vec::new(), ids.clone()),
        Prompt::Chat(m) => (
            String::new(),
            true,
            m.iter()
                .map(|m| v1::ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect(),
            Vec::new(),
        ),
    }
}

/// The prompt of a request: its `messages` when there are any, else `prompt` (as a user message
/// with `chat`).
pub fn prompt_from_wire(prompt: &str, chat: bool, messages: &[v1::ChatMessage]) -> Prompt {
    if messages.is_empty() {
        Prompt::new(prompt, chat)
    } else {
        Prompt::Chat(
            messages
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect(),
        )
    }
}

pub fn sampling_from_wire(s: Option<&v1::Sampling>) -> Result<SamplingParams, Status> {
    let p = match s {
        None => SamplingParams::default(),
        Some(s) => SamplingParams {
            temperature: s.temperature,
            top_p: if s.top_p == 0.0 { 1.0 } else { s.top_p },
            top_k: s.top_k as usize,
            seed: s.seed,
        },
    };
    p.validate()
        .map_err(|e| Status::invalid_argument(format!("sampling: {e}")))?;
    Ok(p)
}

pub fn sampling_to_wire(p: &SamplingParams) -> v1::Sampling {
    v1::Sampling {
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k as u32,
        seed: p.seed,
    }
}

/// Builds an engine policy; `protect_set` turns a pattern into a token set (cached by callers).
pub fn policy_from_wire(p: Option<&v1::Policy>, protect: &ProtectCache) -> Result<Policy, Status> {
    let Some(p) = p else {
        return Ok(Policy::default());
    };
    let rule = if p.rule.is_empty() {
        "exact"
    } else {
        p.rule.as_str()
    };
    let rule = rule
        .parse()
        .map_err(|e| Status::invalid_argument(format!("policy.rule: {e:#}")))?;
    let pacing: Pacing = if p.pacing.is_empty() {
        Pacing::Linear { burst: 1.0 }
    } else {
        p.pacing
            .parse()
            .map_err(|e| Status::invalid_argument(format!("policy.pacing: {e:#}")))?
    };
    let mut policy = Policy {
        rule,
        budget: p.budget,
        protect: None,
        pacing,
    };
    policy
        .validate()
        .map_err(|e| Status::invalid_argument(format!("policy.budget: {e:#}")))?;
    if !policy.rule.is_exact() {
        policy.protect = protect
            .get(&p.protect)
            .map_err(|e| Status::invalid_argument(format!("policy.protect: {e:#}")))?;
    }
    Ok(policy)
}

pub fn policy_to_wire(p: &Policy) -> v1::Policy {
    v1::Policy {
        rule: p.rule.to_string(),
        budget: p.budget,
        protect: p
            .protect
            .as_ref()
            .map_or("none".into(), |s| s.pattern.clone()),
        pacing: p.pacing.to_string(),
    }
}

pub fn draft_sampling_from_wire(s: &str) -> Result<DraftSampling, Status> {
    match s {
        "" | "greedy" => Ok(DraftSampling::Greedy),
        "sample" => Ok(DraftSampling::Sample),
        other => Err(Status::invalid_argument(format!(
            "draft_sampling {other:?}: expected greedy or sample"
        ))),
    }
}

pub fn block_to_wire(b: &DraftBlock, seq: u64) -> v1::DraftBlock {
    let mut out = v1::DraftBlock {
        block_seq: seq,
        base_len: b.base_len as u64,
        tokens: b.tokens.clone(),
        successor: b.successor,
        ..Default::default()
    };
    if b.dists.iter().any(|d| matches!(d, DraftDist::Probs(_))) {
        for (d, &x) in b.dists.iter().zip(&b.tokens) {
            let probs = match d {
                DraftDist::Probs(p) => p.clone(),
                DraftDist::Greedy => Vec::new(),
            };
            out.draft_prob
                .push(probs.get(x as usize).copied().unwrap_or(1.0));
            out.q.push(v1::Dense { probs });
        }
    }
    out
}

/// Converts and validates a wire block (token ids, sizes, distributions).
pub fn block_from_wire(
    b: &v1::DraftBlock,
    vocab: usize,
    max_block: usize,
) -> Result<DraftBlock, Status> {
    if b.tokens.len() > max_block {
        return Err(Status::invalid_argument(format!(
            "block of {} tokens exceeds the maximum of {max_block}",
            b.tokens.len()
        )));
    }
    if let Some(&bad) = b.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Status::invalid_argument(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        )));
    }
    let dists = if b.q.is_empty() {
        vec![DraftDist::Greedy; b.tokens.len()]
    } else {
        if b.q.len() != b.tokens.len() {
            return Err(Status::invalid_argument(format!(
                "block has {} tokens but {} distributions",
                b.tokens.len(),
                b.q.len()
            )));
        }
        b.q.iter()
            .map(|d| {
                if d.probs.is_empty() {
                    return Ok(DraftDist::Greedy);
                }
                if d.probs.len() != vocab {
                    return Err(Status::invalid_argument(format!(
                        "draft distribution has {} entries, vocabulary {vocab}",
                        d.probs.len()
                    )));
                }
                let sum: f64 = d.probs.iter().map(|&p| p as f64).sum();
                if d.probs.iter().any(|p| !p.is_finite() || *p < 0.0) || (sum - 1.0).abs() > 1e-3 {
                    return Err(Status::invalid_argument(
                        "draft distribution is not a probability distribution",
                    ));
                }
                Ok(DraftDist::Probs(d.probs.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(DraftBlock {
        base_len: b.base_len as usize,
        tokens: b.tokens.clone(),
        dists,
        successor: b.successor,
    })
}

pub fn stats_to_wire(s: &RunStats) -> v1::Stats {
    v1::Stats {
        completion_tokens: s.completion_tokens as u64,
        drafted_tokens: s.drafted_tokens as u64,
        accepted_tokens: s.accepted_tokens as u64,
        rejections: s.rejections as u64,
        target_calls: s.target_calls as u64,
        lossy_accepted_tokens: s.lossy_accepted_tokens as u64,
        protected_positions: s.protected_positions as u64,
        draft_steps: s.draft_steps as u64,
        draft_ms: s.draft_s * 1e3,
        verify_ms: s.verify_s * 1e3,
        decode_ms: s.decode_s * 1e3,
        stale_blocks: s.stale_blocks as u64,
        gamma_policy: s.gamma_policy.clone(),
        gamma_max: s.gamma_max as u32,
        mean_gamma: s.mean_gamma,
        est_alpha: s.estimates.alpha,
        est_t_draft_ms: s.estimates.t_draft * 1e3,
        est_t_verify_ms: s.estimates.t_verify1 * 1e3,
        est_t_verify_slope_ms: s.estimates.t_verify_slope * 1e3,
        est_rtt_ms: s.estimates.rtt * 1e3,
        est_t_draft_fixed_ms: s.estimates.t_draft_fixed * 1e3,
        draft_prefill_ms: s.draft_prefill_s * 1e3,
        drafts: s.drafts as u64,
        accepted_per_pos: s.accepted_per_pos.iter().map(|&n| n as u64).collect(),
        ..Default::default()
    }
}

/// The latency-model estimates carried by wire stats.
pub fn estimates_from_wire(s: &v1::Stats) -> Estimates {
    Estimates {
        alpha: s.est_alpha,
        t_draft: s.est_t_draft_ms / 1e3,
        t_draft_fixed: s.est_t_draft_fixed_ms / 1e3,
        t_verify1: s.est_t_verify_ms / 1e3,
        t_verify_slope: s.est_t_verify_slope_ms / 1e3,
        rtt: s.est_rtt_ms / 1e3,
    }
}

/// A request's block-size policy: `gamma_policy` "" / "fixed" uses `gamma`; "auto",
/// "auto@COSTS" and "heuristic" are bounded by `gamma_max` (0: the default) and by `limit`.
pub fn gamma_from_wire(
    gamma: u32,
    policy: &str,
    gamma_max: u32,
    limit: usize,
) -> Result<GammaPolicy, Status> {
    let max = if gamma_max == 0 {
        DEFAULT_GAMMA_MAX
    } else {
        gamma_max as usize
    };
    match policy {
        "" | "fixed" if gamma as usize > limit => Err(Status::invalid_argument(format!(
            "gamma {gamma} is over the maximum block size of {limit}"
        ))),
        "" | "fixed" => Ok(GammaPolicy::Fixed(gamma as usize)),
        p if p == "auto" || p == "heuristic" || p.starts_with("auto@") => {
            if max > limit {
                return Err(Status::invalid_argument(format!(
                    "gamma_max {max} is over the maximum block size of {limit}"
                )));
            }
            GammaPolicy::parse(policy, max).map_err(|e| Status::invalid_argument(format!("{e:#}")))
        }
        other => Err(Status::invalid_argument(format!(
            "gamma_policy {other:?}: expected fixed, auto, auto@COSTS or heuristic"
        ))),
    }
}

/// `(gamma, gamma_policy, gamma_max)` for the wire.
pub fn gamma_to_wire(g: GammaPolicy) -> (u32, String, u32) {
    match g {
        GammaPolicy::Fixed(n) => (n as u32, String::new(), 0),
        // `auto@COSTS` carries its costs in the policy string.
        other => (0, other.to_string(), other.max() as u32),
    }
}

pub fn token_info(lossy: &[bool], charge: &[f64]) -> Vec<TokenInfo> {
    lossy
        .iter()
        .zip(charge)
        .map(|(&lossy, &charge)| TokenInfo { lossy, charge })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_with_their_successor_flag() {
        for successor in [false, true] {
            let block = DraftBlock {
                base_len: 7,
                tokens: vec![1, 2],
                dists: vec![
                    DraftDist::Probs(vec![0.25, 0.5, 0.25]),
                    DraftDist::Probs(vec![0.0, 0.0, 1.0]),
                ],
                successor,
            };
            let wire = block_to_wire(&block, 3);
            assert_eq!(wire.block_seq, 3);
            assert_eq!(block_from_wire(&wire, 3, 8).unwrap(), block);
        }
    }

    #[test]
    fn gamma_policies_cross_the_wire() {
        for g in [
            GammaPolicy::Fixed(0),
            GammaPolicy::Fixed(5),
            GammaPolicy::Auto { max: 12 },
            GammaPolicy::Heuristic { max: 3 },
        ] {
            let (gamma, policy, max) = gamma_to_wire(g);
            assert_eq!(gamma_from_wire(gamma, &policy, max, 32).unwrap(), g);
        }
        let auto = gamma_from_wire(0, "auto", 0, 32).unwrap();
        assert_eq!(
            auto,
            GammaPolicy::Auto {
                max: DEFAULT_GAMMA_MAX
            }
        );
        for (gamma, policy, max, needle) in [
            (40, "", 0, "gamma 40"),
            (0, "auto", 64, "gamma_max 64"),
            (0, "fastest", 0, "fastest"),
        ] {
            let e = gamma_from_wire(gamma, policy, max, 32).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{}", e.message());
        }
    }
}
