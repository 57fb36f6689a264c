//! Judging one drafted block against the target's logits: the exact rule, a relaxed rule under the
//! error budget, protected tokens, the residual on the first rejection and the bonus token after a
//! full acceptance. Shared by every verifier, and by the tests that check the budget's bound on
//! synthetic models.

use super::budget::{judge_position, Policy};
use super::exact;
use super::rules::JudgeInput;
use super::{DraftBlock, TokenInfo};
use crate::sampling::{
    argmax, sample_probs, sampling_dist, softmax, uniform, Dist, Purpose, SamplingParams,
};

/// What a block produced, before stop conditions (end-of-sequence, max_tokens) are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockOutcome {
    /// The accepted prefix, then the residual sample (on rejection) or the bonus token.
    pub tokens: Vec<u32>,
    /// One per token.
    pub info: Vec<TokenInfo>,
    pub accepted: usize,
    pub rejected: bool,
    pub lossy_accepted: usize,
    pub protected_positions: usize,
}

/// The judge as it must be, or one of two known mistakes kept as the tests' negative controls
/// (a test that cannot tell them from the real judge could not catch them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    /// DESIGN §5–6: charges added whenever a relaxed rule judges a position, before its draw;
    /// the exact residual on rejection.
    #[default]
    None,
    /// Wrong: a charge added only when the draw makes a lossy accept (the bound on the expected
    /// number of lossy accepts then fails).
    #[doc(hidden)]
    ChargeOnlyOnLossyAccept,
    /// Wrong: on rejection, a sample of `p_T` instead of `norm(max(0, p_T − q))` (the output
    /// then leans towards what the draft proposes).
    #[doc(hidden)]
    ResidualFromTarget,
}

/// Judges `block`, whose first drafted token is completion position `t0` (random draws are keyed
/// by the absolute position `block.base_len + i`). `row(i)` gives the target's logits at the
/// position of drafted token `i` (`row(γ)` is the position after the block). Positions are
/// judged in order; charges are computed before each draw and added to `spent`; nothing after the
/// first rejection is judged. Without `bonus`, a fully accepted block gets no extra token.
#[allow(clippy::too_many_arguments)]
pub fn judge_block<'a>(
    policy: &Policy,
    sampling: &SamplingParams,
    spent: &mut f64,
    t0: usize,
    horizon: usize,
    block: &DraftBlock,
    bonus: bool,
    row: impl Fn(usize) -> &'a [f32],
) -> BlockOutcome {
    judge_block_mutated(
        Mutation::None,
        policy,
        sampling,
        spent,
        t0,
        horizon,
        block,
        bonus,
        row,
    )
}

/// [`judge_block`], or with a [`Mutation`] (tests: the negative controls).
#[allow(clippy::too_many_arguments)]
pub fn judge_block_mutated<'a>(
    mutation: Mutation,
    policy: &Policy,
    sampling: &SamplingParams,
    spent: &mut f64,
    t0: usize,
    horizon: usize,
    block: &DraftBlock,
    bonus: bool,
    row: impl Fn(usize) -> &'a [f32],
) -> BlockOutcome {
    let seed = sampling.seed;
    let g = block.tokens.len();
    let mut out = BlockOutcome {
        tokens: Vec::with_capacity(g + 1),
        info: Vec::with_capacity(g + 1),
        accepted: 0,
        rejected: false,
        lossy_accepted: 0,
        protected_positions: 0,
    };
    for (i, (&x, q)) in block.tokens.iter().zip(&block.dists).enumerate() {
        let logits = row(i);
        let p = sampling_dist(logits, sampling);
        let pos = (block.base_len + i) as u64;
        let a_ex = exact::accept_prob(&p, q, x);
        let protected = policy.protect.is_some() && {
            let am = match &p {
                Dist::OneHot(t) => *t,
                Dist::Probs(_) => argmax(logits),
            };
            policy.is_protected(x, am)
        };
        out.protected_positions += protected as usize;
        let j = judge_position(policy, *spent, t0 + i, horizon, a_ex, protected, || {
            // The judging distribution p̂: untruncated softmax(logits / T), softmax(logits) at T = 0.
            let p_hat = softmax(
                logits,
                if sampling.greedy() {
                    1.0
                } else {
                    sampling.temperature
                },
            );
            let p_hat_max = p_hat.iter().fold(0f32, |a, &b| a.max(b));
            // Lookahead: the drafted tokens after x that are the target's argmax, in a row.
            let agree_after = policy.rule.lookahead().map_or(0, |w| {
                (1..=w)
                    .take_while(|k| i + k < g && argmax(row(i + k)) == block.tokens[i + k])
                    .count()
            });
            policy.rule.g(&JudgeInput {
                p_hat: &p_hat,
                p_hat_max,
                q,
                x,
                greedy: sampling.greedy(),
                agree_after,
            })
        });
        if mutation != Mutation::ChargeOnlyOnLossyAccept {
            *spent += j.charge;
        }
        let u = uniform(seed, pos, Purpose::Accept);
        if u < j.a_used {
            let lossy = u >= j.a_ex;
            if lossy && mutation == Mutation::ChargeOnlyOnLossyAccept {
                *spent += j.charge;
            }
            out.lossy_accepted += lossy as usize;
            out.tokens.push(x);
            out.info.push(TokenInfo {
                lossy,
                charge: j.charge,
            });
            out.accepted += 1;
        } else {
            let residual = if mutation == Mutation::ResidualFromTarget {
                p.clone()
            } else {
                exact::residual(&p, q, x)
            };
            let y = match residual {
                Dist::OneHot(t) => t,
                Dist::Probs(r) => sample_probs(&r, uniform(seed, pos, Purpose::Residual)),
            };
            out.tokens.push(y);
            out.info.push(TokenInfo {
                lossy: false,
                charge: j.charge,
            });
            out.rejected = true;
            return out;
        }
    }
    if bonus {
        let p = sampling_dist(row(g), sampling);
        out.tokens
            .push(p.sample(uniform(seed, (block.base_len + g) as u64, Purpose::Bonus)));
        out.info.push(TokenInfo::default());
    }
    out
}
