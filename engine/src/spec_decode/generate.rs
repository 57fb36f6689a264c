//! The speculative loop, written once against [`Verifier`]: draft a block, have it judged, commit.

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::draft::{Ask, Cut, Drafter, Evidence};
use super::gamma::{Estimates, GammaController, GammaPolicy};

use super::{DraftBlock, FinishReason, TokenLogprob, Verdict, Verifier};

/// Counters and timings of one generation (DESIGN §7 definitions).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    pub completion_tokens: usize,
    /// Drafted tokens sent to the target.
    pub drafted_tokens: usize,
    /// Drafted tokens the target accepted.
    pub accepted_tokens: usize,
    /// Judged blocks that carried drafted tokens.
    pub drafts: usize,
    /// How many judged blocks had their i-th drafted token accepted (index i).
    pub accepted_per_pos: Vec<usize>,
    /// Blocks in which a drafted token was rejected.
    pub rejections: usize,
    /// Verify forwards of the target (prefill excluded).
    pub target_calls: usize,
    /// Draft forwards.
    pub draft_steps: usize,
    /// Seconds drafting, the draft's prefill included (also given alone).
    pub draft_s: f64,
    pub draft_prefill_s: f64,
    pub verify_s: f64,
    /// Verify forwards and their total seconds, by forward size k = block length + 1.
    pub verify_by_k: BTreeMap<usize, (usize, f64)>,
    /// Relaxed accepts where the exact rule would have rejected.
    pub lossy_accepted_tokens: usize,
    /// Positions judged exactly because they were protected.
    pub protected_positions: usize,
    /// Budget spent (cumulative, from the target).
    pub budget_spent: f64,
    /// Pipelining: blocks answered stale (their predecessor was not fully accepted) and the
    /// tokens drafted for them.
    pub stale_blocks: usize,
    pub stale_drafted_tokens: usize,
    /// Per committed token: lossy accept and charge.
    pub token_info: Vec<super::TokenInfo>,
    /// Per committed token, when the request asked for log-probabilities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// Decode wall time (after prefill), seconds.
    pub decode_s: f64,
    pub finish_reason: Option<FinishReason>,
    /// The γ policy (`4`, `auto`, `heuristic`), its bound, and the mean γ it chose per block.
    pub gamma_policy: String,
    pub gamma_max: usize,
    pub mean_gamma: f64,
    /// The latency model's running estimates at the end (what `auto` last decided from).
    pub estimates: Estimates,
}

impl RunStats {
    /// `accepted / (accepted + rejections)`: the acceptance rate over judged positions.
    pub fn alpha(&self) -> f64 {
        let judged = self.accepted_tokens + self.rejections;
        if judged == 0 {
            0.0
        } else {
            self.accepted_tokens as f64 / judged as f64
        }
    }

    /// Mean committed tokens per target call.
    pub fn tokens_per_call(&self) -> f64 {
        if self.target_calls == 0 {
            0.0
        } else {
            self.completion_tokens as f64 / self.target_calls as f64
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        if self.decode_s > 0.0 {
            self.completion_tokens as f64 / self.decode_s
        } else {
            0.0
        }
    }

    /// Mean seconds per draft forward.
    pub fn t_draft(&self) -> f64 {
        if self.draft_steps == 0 {
            0.0
        } else {
            self.draft_s / self.draft_steps as f64
        }
    }
}

/// Runs generation to the end: `prompt` is what the verifier's session was opened with; `gamma`
/// chooses the drafted tokens of each block (a block of 0, or no drafter, is a step of
/// target-only decoding). With `pipeline`, block n+1 is drafted and submitted (as if block n were
/// fully accepted) before block n's verdict arrives; it is judged if block n was fully accepted
/// and answered stale otherwise. `on_commit` sees each verdict that committed tokens; its
/// `Break` ends the generation there (finish reason `Cancelled`: a client went away).
pub fn run(
    verifier: &mut dyn Verifier,
    mut drafter: Option<&mut Drafter>,
    prompt: &[u32],
    max_tokens: usize,
    gamma: GammaPolicy,
    pipeline: bool,
    mut on_commit: impl FnMut(&Verdict) -> ControlFlow<()>,
) -> Result<RunStats> {
    let mut stats = RunStats::default();
    let mut committed = prompt.to_vec();
    let t0 = Instant::now();
    let mut ctl = GammaController::new(
        if drafter.is_some() {
            gamma
        } else {
            GammaPolicy::Fixed(0)
        },
        pipeline,
    );
    if max_tokens == 0 {
        stats.finish_reason = Some(FinishReason::Length);
        return Ok(stats);
    }
    let completion = |len: usize| len - prompt.len();
    // Drafts a block on `base` (a verify commits at most g + 1 tokens: never past max_tokens),
    // with its tokens' evidence when a model-free drafter proposed them.
    // A successor (`min_gamma` 1) carries at least one token: its predecessor told the target to
    // keep the distribution after it for a drafted token.
    let mut draft = |base: &[u32],
                     min_gamma: usize,
                     ctl: &mut GammaController,
                     stats: &mut RunStats|
     -> Result<(DraftBlock, Vec<Evidence>)> {
        let cap = max_tokens
            .saturating_sub(completion(base.len()))
            .saturating_sub(1);
        let g = ctl.next_gamma().max(min_gamma).min(cap);
        // Under `auto`, a model-free proposal runs to γ's bound and is cut where it stops paying.
        let free_max = if ctl.cuts() {
            ctl.policy().max().max(min_gamma).min(cap)
        } else {
            g
        };
        let cut = |ev: &[Evidence]| ctl.cut(ev, min_gamma);
        let model_free = drafter.as_deref().is_some_and(|d| !d.has_model());
        let (mut block, evidence) = match drafter.as_deref_mut() {
            Some(d) if g > 0 || free_max > 0 => {
                let ask = Ask {
                    gamma: g,
                    free_max,
                    cut: ctl.cuts().then_some(&cut as &Cut),
                };
                let p = d.propose_with(base, &ask)?;
                let t = p.timing;
                stats.draft_steps += t.steps;
                stats.draft_s += t.seconds;
                stats.draft_prefill_s += t.prefill_s;
                // A prefill forward is no per-token cost: keep it out of the t_d estimate. A
                // hybrid's t_d is its model's: its model-free proposals are not timed.
                let timed = !d.has_model() || p.evidence.is_empty();
                if timed {
                    if t.prefill_s > 0.0 {
                        ctl.observe_draft(t.cost_units - 1, t.seconds - t.prefill_s);
                    } else {
                        ctl.observe_draft(t.cost_units, t.seconds);
                    }
                }
                (p.block, p.evidence)
            }
            _ => (DraftBlock::empty(base.len()), Vec::new()),
        };
        // The block's γ: what a cut kept (none when a model-free drafter found nothing), else what
        // was asked.
        let cut_applied = ctl.cuts() && (!evidence.is_empty() || model_free);
        ctl.record(if cut_applied { block.tokens.len() } else { g });
        // A successor must carry a token. Where a model-free drafter found nothing, the last
        // token stands in: judged like any drafted token (exact: q is one-hot), almost surely
        // rejected, and the rejection commits the target's own token.
        if min_gamma > 0 && block.tokens.is_empty() && cap > 0 {
            block
                .tokens
                .push(*base.last().expect("a successor follows committed tokens"));
            block.dists.push(super::DraftDist::Greedy);
        }
        // A successor needs room for at least one drafted token after this block.
        block.successor = pipeline && !block.tokens.is_empty() && cap > block.tokens.len();
        Ok((block, evidence))
    };
    // Blocks submitted and not yet answered: the block and its evidence, when it was sent, and
    // whether it was alone in flight (only then does its round time measure RTT + t_v).
    struct Sent {
        block: DraftBlock,
        evidence: Vec<Evidence>,
        at: Instant,
        alone: bool,
    }
    let mut in_flight: VecDeque<Sent> = VecDeque::new();
    let submit = |verifier: &mut dyn Verifier,
                  in_flight: &mut VecDeque<Sent>,
                  (block, evidence): (DraftBlock, Vec<Evidence>)|
     -> Result<()> {
        let alone = in_flight.is_empty();
        verifier.submit(block.clone())?;
        in_flight.push_back(Sent {
            block,
            evidence,
            at: Instant::now(),
            alone,
        });
        Ok(())
    };
    let first = draft(&committed, 0, &mut ctl, &mut stats)?;
    submit(verifier, &mut in_flight, first)?;
    loop {
        // Pipelining: draft the successor of the newest block while it is being judged.
        if in_flight.len() == 1 && in_flight[0].block.successor {
            let mut optimistic = committed.clone();
            optimistic.extend_from_slice(&in_flight[0].block.tokens);
            let next = draft(&optimistic, 1, &mut ctl, &mut stats)?;
            submit(verifier, &mut in_flight, next)?;
        }
        let Sent {
            block,
            evidence,
            at: sent,
            alone,
        } = in_flight.pop_front().expect("a block in flight");
        let verdict = verifier.receive()?;
        if verdict.stale {
            stats.stale_blocks += 1;
            stats.stale_drafted_tokens += block.tokens.len();
        } else {
            let round_s = sent.elapsed().as_secs_f64();
            ctl.observe_verdict(
                &evidence,
                block.tokens.len(),
                verdict.accepted,
                verdict.rejected,
                verdict.verify_s,
                alone.then_some(round_s - verdict.verify_s),
            );
            stats.target_calls += 1;
            stats.drafted_tokens += block.tokens.len();
            stats.accepted_tokens += verdict.accepted;
            if !block.tokens.is_empty() {
                stats.drafts += 1;
                let n = stats.accepted_per_pos.len().max(verdict.accepted);
                stats.accepted_per_pos.resize(n, 0);
                for a in &mut stats.accepted_per_pos[..verdict.accepted] {
                    *a += 1;
                }
            }
            stats.rejections += verdict.rejected as usize;
            stats.verify_s += verdict.verify_s;
            let e = stats.verify_by_k.entry(block.tokens.len() + 1).or_default();
            e.0 += 1;
            e.1 += verdict.verify_s;
            stats.lossy_accepted_tokens += verdict.lossy_accepted;
            stats.protected_positions += verdict.protected_positions;
            stats.budget_spent = verdict.budget_spent;
            stats.token_info.extend_from_slice(&verdict.token_info);
            stats.logprobs.extend_from_slice(&verdict.logprobs);
            committed.extend_from_slice(&verdict.committed);
            if on_commit(&verdict).is_break() {
                stats.finish_reason = Some(FinishReason::Cancelled);
                break;
            }
            if let Some(f) = verdict.finished {
                stats.finish_reason = Some(f);
                break;
            }
            // The queued successor is judged only if this block was fully accepted with no bonus
            // (a rejection at the last position commits as many tokens: compare content, not
            // length). Otherwise its stale verdict comes next, and the real next block goes
            // behind it.
            let successor_judged = block.successor
                && !verdict.rejected
                && verdict.accepted == block.tokens.len()
                && verdict.committed == block.tokens;
            if !successor_judged {
                let next = draft(&committed, 0, &mut ctl, &mut stats)?;
                submit(verifier, &mut in_flight, next)?;
            }
        }
        if in_flight.is_empty() {
            let next = draft(&committed, 0, &mut ctl, &mut stats)?;
            submit(verifier, &mut in_flight, next)?;
        }
    }
    stats.completion_tokens = committed.len() - prompt.len();
    stats.decode_s = t0.elapsed().as_secs_f64();
    stats.gamma_policy = ctl.policy().to_string();
    stats.gamma_max = ctl.policy().max();
    stats.mean_gamma = ctl.mean_gamma();
    stats.estimates = ctl.estimator.snapshot();
    Ok(stats)
}
