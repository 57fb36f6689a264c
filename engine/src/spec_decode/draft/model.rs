//! The draft side: proposes blocks with the draft model, keeping its KV cache in step with the
//! committed sequence (rolled back to the longest prefix it shares with it).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::{DraftBlock, DraftDist, DraftSampling};
use crate::model::{KvCache, Model};
use crate::sampling::{argmax, sampling_dist, uniform, Dist, Purpose, SamplingParams};

#[derive(Clone)]
pub struct Drafter {
    model: Arc<Model>,
    cache: KvCache,
    /// The tokens whose keys/values are in `cache`.
    cache_tokens: Vec<u32>,
    sampling: SamplingParams,
    mode: DraftSampling,
}

/// Timing of one proposal.
#[derive(Debug, Clone, Copy, Default)]
pub struct DraftTiming {
    /// Draft forwards run.
    pub steps: usize,
    pub seconds: f64,
    /// Seconds of the first forward when it had to feed more than two tokens (the prompt, or a
    /// sequence the draft had not seen): a prefill, not a per-token cost.
    pub prefill_s: f64,
}

impl Drafter {
    pub fn new(model: Arc<Model>, sampling: SamplingParams, mode: DraftSampling) -> Self {
        let cache = model.new_cache();
        Drafter {
            model,
            cache,
            cache_tokens: Vec::new(),
            sampling,
            mode,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Proposes up to `gamma` tokens following `committed` (fewer near the draft's context end).
    pub fn propose(
        &mut self,
        committed: &[u32],
        gamma: usize,
    ) -> Result<(DraftBlock, DraftTiming)> {
        let t0 = Instant::now();
        let gamma = gamma.min(
            self.model
                .config
                .context_length
                .saturating_sub(committed.len()),
        );
        if gamma == 0 || committed.is_empty() {
            return Ok((DraftBlock::empty(committed.len()), DraftTiming::default()));
        }
        let common = self
            .cache_tokens
            .iter()
            .zip(committed)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(committed.len() - 1);
        self.cache.truncate(keep);
        self.cache_tokens.truncate(keep);
        let feed = &committed[keep..];
        let mut logits = self.model.forward(&mut self.cache, feed, feed.len() - 1)?;
        self.cache_tokens.extend_from_slice(feed);
        let prefill_s = if feed.len() > 2 {
            t0.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let mut steps = 1;
        let sample = self.mode == DraftSampling::Sample && !self.sampling.greedy();
        let mut block = DraftBlock::empty(committed.len());
        for i in 0..gamma {
            let (x, dist) = if sample {
                let q = sampling_dist(&logits, &self.sampling);
                let x = q.sample(uniform(
                    self.sampling.seed,
                    (committed.len() + i) as u64,
                    Purpose::DraftSample,
                ));
                match q {
                    Dist::Probs(p) => (x, DraftDist::Probs(p)),
                    Dist::OneHot(_) => (x, DraftDist::Greedy),
                }
            } else {
                (argmax(&logits), DraftDist::Greedy)
            };
            block.tokens.push(x);
            block.dists.push(dist);
            if i + 1 < gamma {
                logits = self.model.forward(&mut self.cache, &[x], 0)?;
                self.cache_tokens.push(x);
                steps += 1;
            }
        }
        Ok((
            block,
            DraftTiming {
                steps,
                seconds: t0.elapsed().as_secs_f64(),
                prefill_s,
            },
        ))
    }
}
