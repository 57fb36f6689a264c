//! The decoder every supported family runs on (llama, mistral, qwen2, qwen3, gemma3; see
//! [`config`]), with a block forward that returns logits for every position and a KV cache that
//! truncates back to a committed length.
//!
//! The forward is written once ([`backend::Decoder`]) over a device layer with two backends:
//! [`cpu`] (specd's batch-invariant kernels, the default: a position's logits are bit-identical
//! alone or inside a block, at any cache length) and `candle` (candle-core on its CPU device or
//! CUDA; feature `candle`). [`Model`] holds one of them, chosen by [`crate::device::Device`].

pub mod backend;
mod batch;
#[cfg(feature = "candle")]
pub mod candle;
pub mod config;
pub mod cpu;
mod load;
pub mod profile;

use anyhow::Result;

use crate::device::Device;

pub use backend::{Layer, RawMatrix, Seq, Weights};
pub use batch::{BatchStats, DEFAULT_MAX_ROWS};
pub use config::{Activation, Arch, ModelConfig, Rope, RopeStyle};
pub use load::{export_hf_safetensors, load_model, LoadOptions};

/// The decoder on the backend of its device.
enum Engine {
    Cpu(backend::Decoder<cpu::Cpu>),
    #[cfg(feature = "candle")]
    Candle(backend::Decoder<candle::Candle>),
}

pub struct Model {
    pub config: ModelConfig,
    device: Device,
    engine: Engine,
    batcher: batch::Batcher,
    /// Longest forward run in one pass; longer ones (prefill) run in chunks of this many tokens,
    /// so that a long prompt does not stall the other sessions' steps.
    prefill_chunk: std::sync::atomic::AtomicUsize,
}

/// Tokens of a prefill chunk unless set otherwise ([`Model::set_prefill_chunk`]).
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// Per-sequence key/value cache. `len()` positions are cached; `truncate` rolls back. A clone
/// is a deep copy.
#[derive(Clone)]
pub struct KvCache(CacheOf);

#[derive(Clone)]
enum CacheOf {
    Cpu(cpu::CpuCache),
    #[cfg(feature = "candle")]
    Candle(candle::CandleCache),
}

impl Model {
    /// Builds the model's weights from file parts on `device`.
    pub fn build(
        config: ModelConfig,
        parts: Weights<Vec<RawMatrix<'_>>, Vec<f32>>,
        device: Device,
        force_f32: bool,
    ) -> Result<Self> {
        device.check_build()?;
        let engine = match device {
            Device::Cpu => {
                let b = cpu::Cpu { force_f32 };
                let w = parts.try_map(|m| backend::Backend::matrix(&b, m), Ok)?;
                Engine::Cpu(backend::Decoder::new(b, &config, w))
            }
            #[cfg(feature = "candle")]
            Device::CandleCpu | Device::Cuda(_) => {
                use anyhow::Context;
                let b = candle::Candle::new(device, force_f32)?;
                let w = parts
                    .try_map(
                        |m| backend::Backend::matrix(&b, m),
                        |v| backend::Backend::vector(&b, v),
                    )
                    .with_context(|| {
                        format!(
                            "cannot put the weights on {device} (if the device is out of memory: a smaller quantization, another GPU, or free what else runs there)"
                        )
                    })?;
                Engine::Candle(backend::Decoder::new(b, &config, w))
            }
            #[cfg(not(feature = "candle"))]
            _ => unreachable!("check_build refuses devices this build lacks"),
        };
        Ok(Model {
            config,
            device,
            engine,
            batcher: batch::Batcher::new(),
            prefill_chunk: DEFAULT_PREFILL_CHUNK.into(),
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The weights, when the model runs on specd's CPU kernels.
    pub fn cpu_weights(&self) -> Option<&Weights<crate::kernels::Matrix, Vec<f32>>> {
        match &self.engine {
            Engine::Cpu(d) => Some(&d.weights),
            #[cfg(feature = "candle")]
            _ => None,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        use backend::Backend;
        let c = &self.config;
        KvCache(match &self.engine {
            Engine::Cpu(d) => CacheOf::Cpu(d.backend.new_cache(c).expect("CPU cache")),
            #[cfg(feature = "candle")]
            Engine::Candle(d) => CacheOf::Candle(d.backend.new_cache(c).expect("candle cache")),
        })
    }

    /// Runs `tokens` at positions `cache.len()..cache.len()+tokens.len()`, appending them to the
    /// cache. Returns the logits of the positions `logits_from..tokens.len()` (row-major,
    /// `vocab` per row, f32 on the host): `0` for every position (verification),
    /// `tokens.len() - 1` for the last, `tokens.len()` for none (prefill).
    ///
    /// Forwards of several threads on one model are batched (see [`batch`]): each runs alone
    /// when the model is idle, and in one pass with the others' when it is busy. Forwards longer
    /// than the prefill chunk run in chunks. On error the cache is as it was.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        let chunk = self
            .prefill_chunk
            .load(std::sync::atomic::Ordering::Relaxed);
        let run = |jobs: &mut [batch::Job]| {
            let mut seqs: Vec<Seq<'_, KvCache>> = jobs
                .iter_mut()
                .map(|j| Seq {
                    cache: &mut j.cache,
                    tokens: &j.tokens,
                    logits_from: j.logits_from,
                })
                .collect();
            self.forward_many(&mut seqs)
        };
        if tokens.len() <= chunk {
            return self.batcher.forward(cache, tokens, logits_from, &run);
        }
        backend::check_feed(&self.config, cache.len(), tokens)?;
        let start = cache.len();
        let mut logits = Vec::new();
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let from = logits_from.saturating_sub(i * chunk).min(part.len());
            match self.batcher.forward(cache, part, from, &run) {
                Ok(l) => logits.extend(l),
                Err(e) => {
                    cache.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(logits)
    }

    /// One pass over the weights for several sequences, each attending to its own cache; one
    /// result per sequence. A sequence that cannot run (past the context, a token outside the
    /// vocabulary, a cache of another device) gets its error and the others run. On the CPU
    /// kernels each sequence's logits are bit-identical to a forward of it alone.
    pub fn forward_many(&self, seqs: &mut [Seq<'_, KvCache>]) -> Vec<Result<Vec<f32>>> {
        let mut results: Vec<Option<Result<Vec<f32>>>> = seqs
            .iter()
            .map(|s| {
                let ok = backend::check_feed(&self.config, s.cache.len(), s.tokens)
                    .and_then(|()| self.owns(s.cache));
                ok.err().map(Err)
            })
            .collect();
        let runnable: Vec<usize> = (0..seqs.len()).filter(|&i| results[i].is_none()).collect();
        let lens: Vec<usize> = runnable.iter().map(|&i| seqs[i].cache.len()).collect();
        macro_rules! run_on {
            ($d:expr, $variant:path) => {{
                let mut mine: Vec<Seq<'_, _>> = Vec::with_capacity(runnable.len());
                for (i, s) in seqs.iter_mut().enumerate() {
                    if let ($variant(c), None) = (&mut s.cache.0, &results[i]) {
                        mine.push(Seq {
                            cache: c,
                            tokens: s.tokens,
                            logits_from: s.logits_from,
                        });
                    }
                }
                $d.forward_batch(&self.config, &mut mine)
            }};
        }
        let out = match &self.engine {
            Engine::Cpu(d) => run_on!(d, CacheOf::Cpu),
            #[cfg(feature = "candle")]
            Engine::Candle(d) => run_on!(d, CacheOf::Candle),
        };
        match out {
            Ok(all) => {
                for (&i, mut logits) in runnable.iter().zip(all) {
                    if let Some(from) = self.config.padding_from {
                        for row in logits.chunks_mut(self.config.vocab_size) {
                            row[from..].fill(f32::NEG_INFINITY);
                        }
                    }
                    results[i] = Some(Ok(logits));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for (&i, &len) in runnable.iter().zip(&lens) {
                    seqs[i].cache.truncate(len);
                    results[i] = Some(Err(anyhow::anyhow!("{msg}")));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every sequence answered"))
            .collect()
    }

    /// Errors unless `cache` belongs to this model's backend.
    fn owns(&self, cache: &KvCache) -> Result<()> {
        match (&self.engine, &cache.0) {
            (Engine::Cpu(_), CacheOf::Cpu(_)) => Ok(()),
            #[cfg(feature = "candle")]
            (Engine::Candle(_), CacheOf::Candle(_)) => Ok(()),
            #[allow(unreachable_patterns)]
            _ => anyhow::bail!("this KV cache belongs to a model on another device"),
        }
    }

    /// Sets the longest forward run in one pass (prefill runs in chunks of this many tokens).
    pub fn set_prefill_chunk(&self, tokens: usize) {
        self.prefill_chunk
            .store(tokens.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the most rows one batched pass gathers from waiting forwards.
    pub fn set_max_batch_rows(&self, rows: usize) {
        self.batcher.set_max_rows(rows);
    }

    /// What the batcher has run: passes, forwards, rows.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// Bytes of weights held.
    pub fn n_bytes(&self) -> usize {
        match &self.engine {
            Engine::Cpu(d) => d.n_bytes(),
            #[cfg(feature = "candle")]
            Engine::Candle(d) => d.n_bytes(),
        }
    }
}

impl KvCache {
    /// An empty stand-in, left where a cache was moved out while a batched pass holds it.
    fn detached() -> Self {
        KvCache(CacheOf::Cpu(cpu::CpuCache::default()))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            CacheOf::Cpu(c) => c.len(),
            #[cfg(feature = "candle")]
            CacheOf::Candle(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        match &mut self.0 {
            CacheOf::Cpu(c) => c.truncate(len),
            #[cfg(feature = "candle")]
            CacheOf::Candle(c) => c.truncate(len),
        }
    }

    /// Bytes held.
    pub fn n_bytes(&self) -> usize {
        match &self.0 {
            CacheOf::Cpu(c) => c.n_bytes(),
            #[cfg(feature = "candle")]
            CacheOf::Candle(c) => c.n_bytes(),
        }
    }
}
