//! specd engine: models, kernels, tokenizer, sampling and the speculative decoding loop.
//!
//! - [`gguf`], [`quant`]: model files and ggml block formats;
//! - [`kernels`]: batch-invariant matrix kernels;
//! - [`model`]: the llama-family forward and KV cache; loading GGUF and safetensors;
//! - [`tokenizer`]: tokenizer.json or GGUF metadata, chat template, vocabulary fingerprint;
//! - [`presets`], [`source`]: offline presets and model sources (path, preset, Hugging Face);
//! - [`sampling`]: distributions and keyed randomness;
//! - [`synth`]: random-weight models of real shapes (timing only);
//! - [`spec_decode`]: the speculative loop, its `Verifier` trait and the exact rule;
//! - [`pipeline`]: embedded generation end to end.

pub mod device;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod pipeline;
pub mod presets;
pub mod quant;
pub mod sampling;
pub mod score;
pub mod source;
pub mod spec_decode;
pub mod synth;
pub mod tokenizer;
