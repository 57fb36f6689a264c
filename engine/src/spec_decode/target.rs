//! The target side of a session: prefill, verification of drafted blocks with the exact rule, and
//! the committed sequence (the source of truth).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};

use super::budget::Policy;
use super::judge::{judge_block_mutated, Mutation};
use super::stop::StopStrings;
use super::{DraftBlock, FinishReason, TokenLogprob, Verdict, Verifier};
use crate::model::{KvCache, Model};
use crate::sampling::SamplingParams;

/// Settings of one generation request.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Acceptance rule, error budget, protection and pacing.
    pub policy: Policy,
    /// Stop strings: the session ends at the token completing one, as at end-of-sequence.
    pub stop: Option<StopStrings>,
    /// Report each committed token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
}

/// Checks that a prompt and its completion fit a model's context.
pub fn check_context(prompt_len: usize, max_tokens: usize, context_length: usize) -> Result<()> {
    if prompt_len == 0 {
        bail!("the prompt is empty: give at least one token of prompt");
    }
    if prompt_len.saturating_add(max_tokens) > context_length {
        bail!(
            "the prompt ({prompt_len} tokens) plus --max-tokens ({max_tokens}) exceeds the model's context length of {context_length} tokens; shorten the prompt or lower --max-tokens"
        );
    }
    Ok(())
}

/// A target-side session: the target model's KV cache and the committed tokens. Cloning forks
/// the session (the weights are shared).
#[derive(Clone)]
pub struct TargetSession {
    model: Arc<Model>,
    cache: KvCache,
    tokens: Vec<u32>,
    prompt_len: usize,
    params: SessionParams,
    eos: Vec<u32>,
    finished: Option<FinishReason>,
    /// Budget spent so far.
    spent: f64,
    /// Logits after the last committed token, kept when a fully accepted block had a queued
    /// successor (pipelining); the cache then holds every committed token.
    kept: Option<Vec<f32>>,
    /// Blocks submitted and not yet judged (in-process pipelining).
    queue: std::collections::VecDeque<DraftBlock>,
    /// The last block announced a successor and was not fully accepted: the next block is that
    /// successor, drafted after tokens that were not committed. It is answered stale even when its
    /// length matches (a rejection at the last drafted position commits as many tokens as a full
    /// acceptance, so `base_len` alone cannot tell).
    successor_stale: bool,
    /// Always `None` but in the tests' negative controls.
    mutation: Mutation,
    /// Seconds spent on prefill.
    pub prefill_s: f64,
}

impl TargetSession {
    /// Opens a session: validates the request and prefills all prompt tokens but the last (which
    /// is fed with the first block).
    pub fn open(
        model: Arc<Model>,
        eos: Vec<u32>,
        prompt: Vec<u32>,
        params: SessionParams,
    ) -> Result<Self> {
        Self::resume(model, eos, prompt, &[], 0.0, params)
    }

    /// Opens a session whose first `completion` tokens are already committed with `spent` of
    /// the budget already spent: a session continued elsewhere (on another target-node after a
    /// failure) from a consistent (prefix, spent) pair, so the budget's bound still counts what
    /// was spent before. Every random draw is keyed by (seed, position), so given the same
    /// blocks a resumed session commits what the original would have. The completion must not run
    /// past its own end (an end-of-sequence token, a stop string, `max_tokens`) before its last
    /// token; `spent` must lie in [0, budget].
    pub fn resume(
        model: Arc<Model>,
        eos: Vec<u32>,
        prompt: Vec<u32>,
        completion: &[u32],
        spent: f64,
        params: SessionParams,
    ) -> Result<Self> {
        params.sampling.validate()?;
        params.policy.validate()?;
        check_context(prompt.len(), params.max_tokens, model.config.context_length)?;
        let vocab = model.config.vocab_size;
        for (what, ids) in [("prompt", &prompt[..]), ("completion", completion)] {
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                bail!("{what} token id {bad} is outside the vocabulary (size {vocab})");
            }
        }
        if !(spent.is_finite() && spent >= 0.0) {
            bail!("the budget already spent must be a number >= 0, not {spent}");
        }
        // The same slack as the judge's own comparisons of a running sum against the budget.
        if spent > params.policy.budget + 1e-9 {
            bail!(
                "the budget already spent ({spent}) exceeds the session's budget ({}): its bound would not hold",
                params.policy.budget
            );
        }
        let mut session = TargetSession {
            prefill_s: 0.0,
            cache: model.new_cache(),
            model,
            prompt_len: prompt.len(),
            tokens: prompt,
            finished: (params.max_tokens == 0).then_some(FinishReason::Length),
            params,
            eos,
            spent,
            kept: None,
            queue: Default::default(),
            successor_stale: false,
            mutation: Mutation::None,
        };
        if !completion.is_empty() {
            if session.finished.is_some() {
                bail!("max_tokens is 0: there is no completion to resume");
            }
            let committed = session.commit(completion);
            if committed.len() < completion.len() {
                bail!(
                    "the completion ends at its token {} ({:?}) but goes on for {} more",
                    committed.len() - 1,
                    session.finished.expect("ended"),
                    completion.len() - committed.len()
                );
            }
        }
        let t0 = Instant::now();
        let n = session.tokens.len();
        session
            .model
            .forward(&mut session.cache, &session.tokens[..n - 1], n)?;
        session.prefill_s = t0.elapsed().as_secs_f64();
        Ok(session)
    }

    /// Budget spent so far.
    pub fn budget_spent(&self) -> f64 {
        self.spent
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Replaces the rule and budget of a live session (e.g. tightening to exact when a budget
    /// pool runs dry). What was spent stays spent.
    pub fn set_policy(&mut self, policy: Policy) {
        self.params.policy = policy;
    }

    /// Judges with a known mistake from now on: for the negative controls of tests only, which
    /// must fail with it.
    #[doc(hidden)]
    pub fn mutate(&mut self, mutation: Mutation) {
        self.mutation = mutation;
    }

    /// Changes the seed of the session's random draws (for forks of one prefilled prompt).
    pub fn reseed(&mut self, seed: u64) {
        self.params.sampling.seed = seed;
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn completion(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Appends `new` to the committed sequence, stopping at an end-of-sequence token, at the
    /// token that completes a stop string, or at `max_tokens`; returns what was committed.
    fn commit(&mut self, new: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(new.len());
        for &t in new {
            self.tokens.push(t);
            out.push(t);
            let stopped = self.eos.contains(&t)
                || self
                    .params
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.completed_by_last(&self.tokens[self.prompt_len..]));
            if stopped {
                self.finished = Some(FinishReason::Stop);
                break;
            }
            if self.tokens.len() - self.prompt_len >= self.params.max_tokens {
                self.finished = Some(FinishReason::Length);
                break;
            }
        }
        out
    }
}

impl TargetSession {
    /// Judges `block` and commits. If the block announces a successor (pipelining) and is fully
    /// accepted, no bonus token is sampled: the target keeps the distribution after the block and
    /// judges the successor's first token against it (still exact). A block that does not build
    /// on the committed sequence is answered `stale`, not judged.
    pub fn verify_block(&mut self, block: &DraftBlock) -> Result<Verdict> {
        if let Some(f) = self.finished {
            bail!("the session has already finished ({f:?})");
        }
        if std::mem::take(&mut self.successor_stale) || block.base_len != self.tokens.len() {
            return Ok(Verdict {
                stale: true,
                committed_len: self.tokens.len(),
                budget_spent: self.spent,
                ..Verdict::default()
            });
        }
        if block.dists.len() != block.tokens.len() {
            bail!(
                "block has {} tokens but {} draft distributions",
                block.tokens.len(),
                block.dists.len()
            );
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = block.tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("drafted token id {bad} is outside the vocabulary (size {vocab})");
        }
        let base = self.tokens.len();
        let g = block.tokens.len();
        let t0 = Instant::now();
        // With a kept distribution the cache already holds every committed token; otherwise it
        // holds all but the last, which is fed first.
        let kept = self.kept.take();
        let logits = match &kept {
            // An empty block after a kept distribution: the bonus comes from it, no forward.
            Some(_) if g == 0 => Vec::new(),
            Some(_) => self.model.forward(&mut self.cache, &block.tokens, 0)?,
            None => {
                let mut feed = Vec::with_capacity(g + 1);
                feed.push(*self.tokens.last().expect("non-empty prompt"));
                feed.extend_from_slice(&block.tokens);
                self.model.forward(&mut self.cache, &feed, 0)?
            }
        };
        let verify_s = t0.elapsed().as_secs_f64();
        let row = |i: usize| -> &[f32] {
            match &kept {
                Some(k) if i == 0 => k,
                Some(_) => &logits[(i - 1) * vocab..i * vocab],
                None => &logits[i * vocab..(i + 1) * vocab],
            }
        };
        let keep_p = g > 0 && block.successor;
        let spent_before = self.spent;
        let out = judge_block_mutated(
            self.mutation,
            &self.params.policy,
            &self.params.sampling,
            &mut self.spent,
            base - self.prompt_len,
            self.params.max_tokens,
            block,
            !keep_p,
            row,
        );
        let (mut info, mut accepted, mut rejected) = (out.info, out.accepted, out.rejected);
        let protected_positions = out.protected_positions;
        let committed = self.commit(&out.tokens);
        if committed.len() < info.len() {
            // Ended early (end-of-sequence, stop string, max_tokens): what was judged past the
            // end is neither committed, counted nor charged.
            info.truncate(committed.len());
            // A rejection is counted only where its residual token was committed.
            rejected &= committed.len() > accepted;
            accepted = accepted.min(committed.len());
            // In judging order, as judge_block added them: the same bits.
            self.spent = info.iter().fold(spent_before, |s, i| s + i.charge);
        }
        let lossy_accepted = info.iter().filter(|i| i.lossy).count();
        // Committed token i was chosen at the position of row(i) (drafted, residual or bonus).
        let logprobs = match self.params.logprobs {
            Some(n) => committed
                .iter()
                .enumerate()
                .map(|(i, &t)| TokenLogprob::of(row(i), t, n))
                .collect(),
            None => Vec::new(),
        };
        if keep_p && !rejected && self.finished.is_none() {
            // Fully accepted, no bonus: the cache holds every committed token and the
            // distribution after the block waits for the queued block.
            self.kept = Some(row(g).to_vec());
        } else {
            self.cache.truncate(self.tokens.len() - 1);
            self.successor_stale = keep_p && self.finished.is_none();
        }
        Ok(Verdict {
            stale: false,
            accepted,
            rejected,
            committed,
            token_info: info,
            logprobs,
            lossy_accepted,
            protected_positions,
            budget_spent: self.spent,
            committed_len: self.tokens.len(),
            finished: self.finished,
            verify_s,
        })
    }
}

impl Verifier for TargetSession {
    fn submit(&mut self, block: DraftBlock) -> Result<()> {
        self.queue.push_back(block);
        Ok(())
    }

    fn receive(&mut self) -> Result<Verdict> {
        let block = self
            .queue
            .pop_front()
            .ok_or_else(|| anyhow::anyhow!("no block was submitted"))?;
        self.verify_block(&block)
    }
}
