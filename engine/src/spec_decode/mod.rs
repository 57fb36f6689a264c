//! Speculative decoding, written once against the [`Verifier`] trait.
//!
//! - a [`draft::Drafter`] proposes blocks of tokens: with the draft model, or by prompt lookup
//!   (no model);
//! - a [`Verifier`] judges a block against the target and commits tokens. The target is the
//!   source of truth for what is committed. [`target::LocalVerifier`] runs the target in-process
//!   (embedded mode); a gRPC implementation plugs in the same way (distributed mode);
//! - [`generate::run`] is the loop; `γ = 0` (or no drafter) is target-only decoding, through the
//!   same verify call with an empty block; [`gamma`] chooses γ per block (fixed, `auto` from the
//!   latency model, or the +2/−1 heuristic).

pub mod budget;
pub mod draft;
pub mod exact;
pub mod gamma;
pub mod generate;
pub mod judge;
pub mod rules;
pub mod stop;
pub mod target;

use serde::{Deserialize, Serialize};

/// How the draft chooses its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DraftSampling {
    /// The draft's argmax (q is one-hot: only token ids need to reach the target).
    #[default]
    Greedy,
    /// Sample from the draft's own distribution q (same temperature/top-k/top-p as the target);
    /// q travels with the block.
    Sample,
}

/// The distribution a drafted token was sampled from.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftDist {
    /// One-hot at the drafted token (greedy draft).
    Greedy,
    /// The full q the token was sampled from.
    Probs(Vec<f32>),
}

/// A block of drafted tokens, building on `base_len` committed tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftBlock {
    pub base_len: usize,
    pub tokens: Vec<u32>,
    /// One per token.
    pub dists: Vec<DraftDist>,
    /// Pipelining: a block building on all of this one follows. If this block is fully
    /// accepted, the target samples no bonus token; it keeps the distribution after the block and
    /// judges the successor's first token against it (still exact).
    pub successor: bool,
}

impl DraftBlock {
    pub fn empty(base_len: usize) -> Self {
        DraftBlock {
            base_len,
            tokens: Vec::new(),
            dists: Vec::new(),
            successor: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, or the token completing a stop string, was committed.
    Stop,
    /// `max_tokens` completion tokens were committed.
    Length,
    /// The client went away (the session ended where it was).
    Cancelled,
}

/// What happened at one committed token.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Accepted by the relaxed rule where the exact rule would have rejected it (the coupled exact
    /// run differs here).
    pub lossy: bool,
    /// Budget charged at this position (0 for bonus tokens and exactly judged positions).
    pub charge: f64,
}

/// The target's log-probability of a committed token and its most likely alternatives, from the
/// target model's own distribution (log-softmax of the logits at temperature 1, before any
/// truncation: what OpenAI's and vLLM's `logprobs` report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// The `n` most likely tokens, most likely first (ties: lowest id first).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `token`'s log-probability under `logits`, with the `n` most likely alternatives.
    pub fn of(logits: &[f32], token: u32, n: usize) -> Self {
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let log_z = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
        if n > 0 {
            for (i, &l) in logits.iter().enumerate() {
                // Kept sorted by logit (descending), then id; only the n best stay.
                if top.len() == n && l <= top[n - 1].1 {
                    continue;
                }
                let at = top.partition_point(|&(_, t)| t >= l);
                top.insert(at, (i as u32, l));
                top.truncate(n);
            }
        }
        TokenLogprob {
            token,
            logprob: logits[token as usize] - log_z,
            top: top.into_iter().map(|(i, l)| (i, l - log_z)).collect(),
        }
    }
}

/// The target's answer to a block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// The block did not build on the committed sequence and was not judged (pipelining: the
    /// block before it was not fully accepted).
    pub stale: bool,
    /// Drafted tokens accepted (a prefix of the block).
    pub accepted: usize,
    /// Whether a drafted token was rejected (false when all were accepted or the block was empty).
    pub rejected: bool,
    /// Tokens newly committed: the accepted prefix, then the residual/bonus token (cut at an
    /// end-of-sequence token or at `max_tokens`).
    pub committed: Vec<u32>,
    /// One per committed token.
    pub token_info: Vec<TokenInfo>,
    /// One per committed token when the session asked for log-probabilities.
    pub logprobs: Vec<TokenLogprob>,
    /// Lossy accepts in this block.
    pub lossy_accepted: usize,
    /// Positions of this block judged exactly because they were protected.
    pub protected_positions: usize,
    /// Budget spent by the session so far (cumulative).
    pub budget_spent: f64,
    /// Total committed length (prompt + completion) after this verdict.
    pub committed_len: usize,
    pub finished: Option<FinishReason>,
    /// Time of the target forward, in seconds.
    pub verify_s: f64,
}

/// Judges drafted blocks against the target and commits tokens. Blocks are answered in the
/// order they are submitted; submitting a block before the previous verdict arrived is
/// pipelining (the target may then skip the bonus token, see `TargetSession::verify_queued`).
pub trait Verifier {
    /// Sends a block to be judged (may return before it is judged). An empty block is one step of
    /// target-only decoding.
    fn submit(&mut self, block: DraftBlock) -> anyhow::Result<()>;

    /// The verdict on the oldest block not yet answered.
    fn receive(&mut self) -> anyhow::Result<Verdict>;

    /// Judges `block` (which must build on the committed length) and commits tokens.
    fn verify(&mut self, block: &DraftBlock) -> anyhow::Result<Verdict> {
        self.submit(block.clone())?;
        self.receive()
    }
}

#[cfg(test)]
mod tests {
    use super::TokenLogprob;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_alternatives() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let l = TokenLogprob::of(&logits, 2, 3);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        assert!((l.logprob - (2f32.exp() / z).ln()).abs() < 1e-6);
        let ids: Vec<u32> = l.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "most likely first, ties by the lowest id");
        assert!((l.top[0].1 - (3f32.exp() / z).ln()).abs() < 1e-6);
        assert!(TokenLogprob::of(&logits, 0, 0).top.is_empty());
        let p: f32 = (0..5)
            .map(|t| TokenLogprob::of(&logits, t, 0).logprob.exp())
            .sum();
        assert!((p - 1.0).abs() < 1e-5);
    }
}
