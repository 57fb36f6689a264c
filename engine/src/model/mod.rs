//! The decoder every supported family runs on (llama, mistral, qwen2, qwen3, gemma3; see
//! [`config`]), with a block forward that returns logits for every position and a KV cache that
//! truncates back to a committed length.
//!
//! The forward is written once ([`backend::Decoder`]) over a device layer with two backends:
//! [`cpu`] (specd's batch-invariant kernels, the default: a position's logits are bit-identical
//! alone or inside a block, at any cache length) and `candle` (candle-core on its CPU device or
//! CUDA; feature `candle`). [`Model`] holds one of them, chosen by [`crate::device::Device`].

pub mod backend;
#[cfg(feature = "candle")]
pub mod candle;
pub mod config;
pub mod cpu;
mod load;
pub mod profile;

use anyhow::Result;

use crate::device::Device;

pub use backend::{Layer, RawMatrix, Weights};
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
}

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

/// Runs `$body` with `$d` the decoder and `$c` the cache of the model's backend.
macro_rules! with_cache {
    ($model:expr, $cache:expr, |$d:ident, $c:ident| $body:expr) => {
        match (&$model.engine, $cache) {
            (Engine::Cpu($d), CacheOf::Cpu($c)) => $body,
            #[cfg(feature = "candle")]
            (Engine::Candle($d), CacheOf::Candle($c)) => $body,
            #[allow(unreachable_patterns)]
            _ => anyhow::bail!("this KV cache belongs to a model on another device"),
        }
    };
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
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        let mut logits = with_cache!(self, &mut cache.0, |d, c| d.forward(
            &self.config,
            c,
            tokens,
            logits_from
        ))?;
        if let Some(from) = self.config.padding_from {
            for row in logits.chunks_mut(self.config.vocab_size) {
                row[from..].fill(f32::NEG_INFINITY);
            }
        }
        Ok(logits)
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
