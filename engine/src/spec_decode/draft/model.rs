//! The model draft: proposes blocks with the draft model, keeping its KV cache in step with the
//! committed sequence (rolled back to the longest prefix it shares with it).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::DraftTiming;
use crate::model::{KvCache, Model};
use crate::sampling::{argmax, sampling_dist, uniform, Dist, Purpose, SamplingParams};
use crate::spec_decode::{DraftBlock, DraftDist, DraftSampling};

#[derive(Clone)]
pub struct ModelDrafter {
    model: Arc<Model>,
    cache: KvCache,
    /// The tokens whose keys/values are in `cache`.
    cache_tokens: Vec<u32>,
    sampling: SamplingParams,
    mode: DraftSampling,
}

impl ModelDrafter {
    pub fn new(model: Arc<Model>, sampling: SamplingParams, mode: DraftSampling) -> Self {
        let cache = model.new_cache();
        ModelDrafter {
            model,
            cache,
            cache_tokens: Vec::new(),
            sampling,
            mode,
        }
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
                cost_units: steps,
                seconds: t0.elapsed().as_secs_f64(),
                prefill_s,
            },
        ))
    }
}
