//! The target side of a session: prefill, verification of drafted blocks with the exact rule, and
//! the committed sequence (the source of truth).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};

use super::budget::Policy;
use super::judge::judge_block;
use super::{DraftBlock, FinishReason, Verdict, Verifier};
use crate::model::{KvCache, Llama};
use crate::sampling::SamplingParams;

/// Settings of one generation request.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Acceptance rule, error budget, protection and pacing.
    pub policy: Policy,
}

/// Checks that a prompt and its completion fit a model's context.
pub fn check_context(prompt_len: usize, max_tokens: usize, context_length: usize) -> Result<()> {
    if prompt_len == 0 {
        bail!("the prompt is empty: give at least one token of prompt");
    }
    if prompt_len + max_tokens > context_length {
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
    model: Arc<Llama>,
    cache: KvCache,
    tokens: Vec<u32>,
    prompt_len: usize,
    params: SessionParams,
    eos: Vec<u32>,
    finished: Option<FinishReason>,
    /// Budget spent so far.
    spent: f64,
    /// Seconds spent on prefill.
    pub prefill_s: f64,
}

impl TargetSession {
    /// Opens a session: validates the request and prefills all prompt tokens but the last (which
    /// is fed with the first block).
    pub fn open(
        model: Arc<Llama>,
        eos: Vec<u32>,
        prompt: Vec<u32>,
        params: SessionParams,
    ) -> Result<Self> {
        params.sampling.validate()?;
        params.policy.validate()?;
        check_context(prompt.len(), params.max_tokens, model.config.context_length)?;
        if let Some(&bad) = prompt
            .iter()
            .find(|&&t| t as usize >= model.config.vocab_size)
        {
            bail!(
                "prompt token id {bad} is outside the vocabulary (size {})",
                model.config.vocab_size
            );
        }
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        model.forward(&mut cache, &prompt[..prompt.len() - 1], prompt.len())?;
        let finished = (params.max_tokens == 0).then_some(FinishReason::Length);
        Ok(TargetSession {
            prefill_s: t0.elapsed().as_secs_f64(),
            model,
            cache,
            prompt_len: prompt.len(),
            tokens: prompt,
            params,
            eos,
            finished,
            spent: 0.0,
        })
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

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Appends `new` to the committed sequence, stopping at an end-of-sequence token or at
    /// `max_tokens`; returns what was committed.
    fn commit(&mut self, new: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(new.len());
        for &t in new {
            self.tokens.push(t);
            out.push(t);
            if self.eos.contains(&t) {
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

impl Verifier for TargetSession {
    fn verify(&mut self, block: &DraftBlock) -> Result<Verdict> {
        if let Some(f) = self.finished {
            bail!("the session has already finished ({f:?})");
        }
        if block.base_len != self.tokens.len() {
            bail!(
                "block builds on {} tokens but {} are committed",
                block.base_len,
                self.tokens.len()
            );
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
        let mut feed = Vec::with_capacity(g + 1);
        feed.push(*self.tokens.last().expect("non-empty prompt"));
        feed.extend_from_slice(&block.tokens);
        let t0 = Instant::now();
        let logits = self.model.forward(&mut self.cache, &feed, 0)?;
        let verify_s = t0.elapsed().as_secs_f64();
        let out = judge_block(
            &self.params.policy,
            &self.params.sampling,
            &mut self.spent,
            base - self.prompt_len,
            self.params.max_tokens,
            block,
            |i| &logits[i * vocab..(i + 1) * vocab],
        );
        let (mut info, accepted, rejected) = (out.info, out.accepted, out.rejected);
        let (lossy_accepted, protected_positions) = (out.lossy_accepted, out.protected_positions);
        let new = out.tokens;
        let committed = self.commit(&new);
        info.truncate(committed.len());
        self.cache.truncate(self.tokens.len() - 1);
        Ok(Verdict {
            accepted,
            rejected,
            committed,
            token_info: info,
            lossy_accepted,
            protected_positions,
            budget_spent: self.spent,
            committed_len: self.tokens.len(),
            finished: self.finished,
            verify_s,
        })
    }
}
