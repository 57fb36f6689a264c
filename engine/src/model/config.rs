//! The configuration of the one decoder every supported family runs on, and how it is read from
//! GGUF metadata and from a Hugging Face `config.json`.
//!
//! The families differ only in switches of [`ModelConfig`] (and in which optional tensors a layer
//! has: qkv bias, q/k norms, post-norms):
//!
//! | family | RoPE | extra |
//! |---|---|---|
//! | llama, mistral | pairs (GGUF order) | llama 3 frequency factors, linear scaling, sliding window (mistral, HF) |
//! | qwen2 | halves (NeoX) | q/k/v bias |
//! | qwen3 | halves | q/k RMS norm per head, head_dim independent of hidden / heads |
//! | gemma3 | halves | GELU, √dim embedding scale, post-norms, q/k norm, local layers (window, own RoPE base) |

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::gguf::GgufFile;

/// Architectures the decoder runs (GGUF `general.architecture` / HF `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

pub const SUPPORTED_GGUF: &str =
    "llama (SmolLM2, Llama 1–3.x, Mistral), qwen2 (Qwen2, Qwen2.5), qwen3, gemma3";
pub const SUPPORTED_HF: &str =
    "llama, mistral, qwen2, qwen3, gemma3_text (and gemma3's text_config)";

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// RoPE rotates adjacent pairs (ggml "normal", llama GGUF row order) or halves (NeoX).
    pub fn rope_style(self) -> RopeStyle {
        match self {
            Arch::Llama | Arch::Mistral => RopeStyle::Pairs,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeStyle::Halves,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RopeStyle {
    /// Rotates `(x[2i], x[2i+1])` (ggml `LLAMA_ROPE_TYPE_NORM`).
    Pairs,
    /// Rotates `(x[i], x[i + d/2])` (ggml `LLAMA_ROPE_TYPE_NEOX`, HF `rotate_half`).
    Halves,
}

/// Rotary embedding of one kind of layer: frequency `i` is `base^(−2i/dim) / factor[i]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rope {
    pub base: f64,
    /// Rotated dimensions of each head (≤ head_dim; the rest pass through).
    pub dim: usize,
    /// Per-frequency divisors (llama 3 scaling, GGUF `rope_freqs`), `dim / 2` of them; empty: none.
    pub freq_factors: Vec<f32>,
    /// Linear position scaling (`rope.scaling.factor` with type linear): positions are divided.
    pub linear_factor: f64,
    /// YaRN scaling (Qwen 2.5 / 3 long-context configurations).
    pub yarn: Option<Yarn>,
}

/// YaRN (arXiv 2309.00071) as llama.cpp's `rope_yarn` and transformers compute it: frequency `i`
/// blends its interpolated (`/ factor`) and original value by a ramp over the pair index between
/// the correction dimensions of `beta_fast` and `beta_slow`, and cos/sin are scaled by `mscale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Yarn {
    pub factor: f64,
    pub original_context: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub ext_factor: f64,
    /// Multiplier of cos and sin (`attn_factor · (1 + 0.1 ln factor)`).
    pub mscale: f64,
}

impl Yarn {
    /// The pair index at which a frequency turns `n_rot` rotations over the original context.
    fn corr_dim(&self, dim: usize, n_rot: f64, base: f64) -> f64 {
        dim as f64 * (self.original_context / (n_rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base.ln())
    }
}

impl Rope {
    /// The rotation frequencies, `dim / 2` of them.
    pub fn inv_freqs(&self) -> Vec<f64> {
        let ramp_dims = self.yarn.as_ref().map(|y| {
            let low = y
                .corr_dim(self.dim, y.beta_fast, self.base)
                .floor()
                .max(0.0);
            let high = y
                .corr_dim(self.dim, y.beta_slow, self.base)
                .ceil()
                .min(self.dim as f64 - 1.0);
            (low, high)
        });
        (0..self.dim / 2)
            .map(|i| {
                let mut f =
                    self.base.powf(-(2.0 * i as f64) / self.dim as f64) / self.linear_factor;
                if let (Some(y), Some((low, high))) = (&self.yarn, ramp_dims) {
                    let t = ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                    let mix = (1.0 - t) * y.ext_factor;
                    f = f / y.factor * (1.0 - mix) + f * mix;
                }
                match self.freq_factors.get(i) {
                    Some(&ff) => f / ff as f64,
                    None => f,
                }
            })
            .collect()
    }

    /// The multiplier of cos and sin (YaRN's magnitude scaling; 1 otherwise).
    pub fn mscale(&self) -> f64 {
        self.yarn.as_ref().map_or(1.0, |y| y.mscale)
    }
}

/// llama 3's frequency factors (HF `rope_scaling.rope_type = "llama3"`; convert_hf_to_gguf writes
/// the same numbers as the `rope_freqs` tensor).
pub fn llama3_freq_factors(
    base: f64,
    dim: usize,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
) -> Vec<f32> {
    let low_wavelen = original_context / low_freq_factor;
    let high_wavelen = original_context / high_freq_factor;
    (0..dim / 2)
        .map(|i| {
            let freq = base.powf(-(2.0 * i as f64) / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `silu(gate) · up` (llama, qwen, mistral).
    Silu,
    /// `gelu_tanh(gate) · up` (gemma).
    GeluTanh,
}

/// Hyper-parameters of a decoder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub rms_eps: f32,
    pub context_length: usize,
    pub activation: Activation,
    /// Rotary embedding of global layers.
    pub rope: Rope,
    /// Rotary embedding of sliding-window (local) layers, when it differs (gemma3: base 10000).
    pub rope_local: Option<Rope>,
    /// Sliding-window length of local layers (a query sees itself and the `window − 1` keys
    /// before it).
    pub sliding_window: Option<usize>,
    /// Which layers are local (`sliding_window` applies); empty when none is.
    pub local_layers: Vec<bool>,
    /// Multiplier of the token embedding (gemma: √dim).
    pub embed_scale: Option<f32>,
    /// Query scaling (default `1/√head_dim`).
    pub attn_scale: f32,
    /// `cap · tanh(x / cap)` of attention scores and of the final logits (gemma 2).
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// Ids from here on are embedding rows padded past the tokenizer (no token): their logits
    /// are −∞, so they are never drafted, sampled or committed. `None`: every row is a token.
    pub padding_from: Option<usize>,
}

impl ModelConfig {
    /// The switches of a plain llama-style decoder (SiLU, every layer global, no scaling or
    /// capping) with zero dimensions, for the readers to fill in.
    fn plain(arch: Arch, head_dim: usize, rope: Rope) -> Self {
        ModelConfig {
            arch,
            vocab_size: 0,
            dim: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: 0,
            head_dim,
            ffn_dim: 0,
            rms_eps: 1e-5,
            context_length: 2048,
            activation: Activation::Silu,
            rope,
            rope_local: None,
            sliding_window: None,
            local_layers: Vec::new(),
            embed_scale: None,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            padding_from: None,
        }
    }

    /// Masks the rows past the `defined` tokens of the tokenizer (if there are any).
    pub fn mask_padding(&mut self, defined: usize) {
        self.padding_from = (defined < self.vocab_size).then_some(defined);
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn is_local(&self, layer: usize) -> bool {
        self.local_layers.get(layer).copied().unwrap_or(false)
    }

    /// The rotary embedding of a layer.
    pub fn rope_of(&self, layer: usize) -> &Rope {
        match (&self.rope_local, self.is_local(layer)) {
            (Some(r), true) => r,
            _ => &self.rope,
        }
    }

    /// The attention window of a layer (`None`: all earlier keys).
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        if self.is_local(layer) {
            self.sliding_window
        } else {
            None
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0
            || self.n_heads == 0
            || self.n_kv_heads == 0
            || self.n_layers == 0
            || self.vocab_size == 0
            || self.head_dim == 0
            || self.ffn_dim == 0
        {
            bail!("model config has a zero dimension: {self:?}");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "model config: {} heads is not a multiple of {} KV heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if self.rope.dim > self.head_dim || !self.rope.dim.is_multiple_of(2) {
            bail!(
                "model config: RoPE over {} dimensions of a {}-dimensional head",
                self.rope.dim,
                self.head_dim
            );
        }
        if !self.dim.is_multiple_of(32)
            || !self.ffn_dim.is_multiple_of(32)
            || !self.q_dim().is_multiple_of(32)
        {
            bail!(
                "model config: dimensions must be multiples of 32 (dim {}, ffn {}, heads × head dim {})",
                self.dim,
                self.ffn_dim,
                self.q_dim()
            );
        }
        if self.sliding_window == Some(0) {
            bail!("model config: sliding window of 0 tokens");
        }
        Ok(())
    }
}

/// gemma3's local/global pattern: every `period`-th layer is global, the others local.
fn periodic_local(n_layers: usize, period: usize) -> Vec<bool> {
    (0..n_layers)
        .map(|i| period == 0 || (i + 1) % period != 0)
        .collect()
}

/// Reads the configuration from GGUF metadata (llama.cpp's keys). `rope_freqs` is the content of
/// the `rope_freqs.weight` tensor when the file has one (llama 3.x).
pub fn from_gguf(f: &GgufFile, rope_freqs: Option<Vec<f32>>) -> Result<ModelConfig> {
    let file = f.path.display();
    let arch_s = f.get_str("general.architecture").unwrap_or("<missing>");
    let arch = match arch_s {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3" => Arch::Gemma3,
        other => {
            bail!("{file}: architecture {other:?} is not supported (supported: {SUPPORTED_GGUF})")
        }
    };
    let key = |k: &str| format!("{arch_s}.{k}");
    let u = |k: &str| f.get_u64(&key(k)).map(|v| v as usize);
    let dim = u("embedding_length")?;
    let n_heads = u("attention.head_count")?;
    let n_kv_heads = u("attention.head_count_kv").unwrap_or(n_heads);
    let head_dim = u("attention.key_length").unwrap_or(dim / n_heads.max(1));
    if let Ok(v) = u("attention.value_length") {
        if v != head_dim {
            bail!("{file}: value length {v} differs from key length {head_dim} (not supported)");
        }
    }
    let vocab_size = f
        .tensor("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .with_context(|| format!("{file}: tensor token_embd.weight is missing"))?
        as usize;
    let n_layers = u("block_count")?;
    let base = f.get_f64(&key("rope.freq_base")).unwrap_or(10000.0);
    let rope_dim = u("rope.dimension_count").unwrap_or(head_dim);
    let factor = f.get_f64(&key("rope.scaling.factor")).unwrap_or(1.0);
    let (linear_factor, yarn) = match f.get_str(&key("rope.scaling.type")) {
        None | Some("none") => (1.0, None),
        Some("linear") => (factor, None),
        Some("yarn") => {
            let g = |k: &str, default: f64| f.get_f64(&key(k)).unwrap_or(default);
            let ext_factor = g("rope.scaling.yarn_ext_factor", 1.0);
            let attn = g("rope.scaling.yarn_attn_factor", 1.0);
            let mscale = if ext_factor != 0.0 {
                attn * (1.0 + 0.1 * factor.ln())
            } else {
                attn
            };
            let original_context = u("rope.scaling.original_context_length")
                .with_context(|| format!("{file}: YaRN scaling without rope.scaling.original_context_length"))?
                as f64;
            (
                1.0,
                Some(Yarn {
                    factor,
                    original_context,
                    beta_fast: g("rope.scaling.yarn_beta_fast", 32.0),
                    beta_slow: g("rope.scaling.yarn_beta_slow", 1.0),
                    ext_factor,
                    mscale,
                }),
            )
        }
        Some(other) => bail!(
            "{file}: RoPE scaling {other:?} is not supported (supported: none, linear, yarn, llama 3 frequency factors)"
        ),
    };
    if let Some(ff) = &rope_freqs {
        if ff.len() != rope_dim / 2 {
            bail!(
                "{file}: rope_freqs has {} factors, expected {} (half the RoPE dimensions)",
                ff.len(),
                rope_dim / 2
            );
        }
    }
    let rope = Rope {
        base,
        dim: rope_dim,
        freq_factors: rope_freqs.unwrap_or_default(),
        linear_factor,
        yarn,
    };
    let mut c = ModelConfig {
        arch,
        vocab_size,
        dim,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: u("feed_forward_length")?,
        rms_eps: f
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32,
        context_length: u("context_length").unwrap_or(2048),
        attn_softcap: f.get_f64(&key("attn_logit_softcapping")).map(|v| v as f32),
        final_softcap: f.get_f64(&key("final_logit_softcapping")).map(|v| v as f32),
        ..ModelConfig::plain(arch, head_dim, rope)
    };
    if arch == Arch::Gemma3 {
        // As llama.cpp's gemma3 loader: every 6th layer global, local layers with base 10000 and
        // no scaling, embeddings scaled by √dim, GELU.
        c.activation = Activation::GeluTanh;
        c.sliding_window = Some(u("attention.sliding_window").unwrap_or(512));
        let period = u("attention.sliding_window_pattern").unwrap_or(6);
        c.local_layers = periodic_local(n_layers, period);
        c.rope_local = Some(Rope {
            base: 10000.0,
            dim: rope_dim,
            freq_factors: Vec::new(),
            linear_factor: 1.0,
            yarn: None,
        });
        c.embed_scale = Some((dim as f32).sqrt());
    } else if let Ok(w) = u("attention.sliding_window") {
        c.sliding_window = Some(w);
        c.local_layers = vec![true; n_layers];
    }
    c.validate().with_context(|| format!("{file}"))?;
    Ok(c)
}

#[derive(serde::Deserialize)]
pub(super) struct HfConfig {
    pub model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_local_base_freq: Option<f64>,
    sliding_window: Option<usize>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    use_sliding_window: Option<bool>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
}

impl HfConfig {
    /// Parses a `config.json`; a multimodal gemma3 config yields its `text_config`.
    pub fn parse(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        if let Some(tc) = v.get("text_config") {
            if v.get("model_type").and_then(|m| m.as_str()) == Some("gemma3") {
                let mut tc = tc.clone();
                if tc.get("model_type").is_none() {
                    tc["model_type"] = "gemma3_text".into();
                }
                return Ok(serde_json::from_value(tc)?);
            }
        }
        Ok(serde_json::from_value(v)?)
    }
}

/// Reads the configuration of an HF `config.json`.
pub(super) fn from_hf(hf: &HfConfig, file: &str) -> Result<ModelConfig> {
    let mt = hf.model_type.as_deref().unwrap_or("llama");
    let arch = match mt {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3_text" => Arch::Gemma3,
        other => bail!("{file}: model_type {other:?} is not supported (supported: {SUPPORTED_HF})"),
    };
    let head_dim = hf
        .head_dim
        .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
    let base = hf.rope_theta.unwrap_or(10000.0);
    let mut rope = Rope {
        base,
        dim: head_dim,
        freq_factors: Vec::new(),
        linear_factor: 1.0,
        yarn: None,
    };
    if let Some(rs) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        let ty = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |k: &str| -> Result<f64> {
            rs.get(k)
                .and_then(|v| v.as_f64())
                .with_context(|| format!("{file}: rope_scaling lacks {k}"))
        };
        match ty {
            "default" => {}
            "linear" => rope.linear_factor = num("factor")?,
            "yarn" => {
                let factor = num("factor")?;
                let opt = |k: &str, d: f64| rs.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
                rope.yarn = Some(Yarn {
                    factor,
                    original_context: num("original_max_position_embeddings")?,
                    beta_fast: opt("beta_fast", 32.0),
                    beta_slow: opt("beta_slow", 1.0),
                    ext_factor: 1.0,
                    mscale: opt("attention_factor", 0.1 * factor.ln() + 1.0),
                });
            }
            "llama3" => {
                rope.freq_factors = llama3_freq_factors(
                    base,
                    head_dim,
                    num("factor")?,
                    num("low_freq_factor")?,
                    num("high_freq_factor")?,
                    num("original_max_position_embeddings")?,
                )
            }
            other => bail!(
                "{file}: rope_scaling type {other:?} is not supported (supported: default, linear, llama3, yarn)"
            ),
        }
    }
    let mut c = ModelConfig {
        arch,
        vocab_size: hf.vocab_size,
        dim: hf.hidden_size,
        n_layers: hf.num_hidden_layers,
        n_heads: hf.num_attention_heads,
        n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim,
        ffn_dim: hf.intermediate_size,
        rms_eps: hf.rms_norm_eps.unwrap_or(1e-5) as f32,
        context_length: hf.max_position_embeddings.unwrap_or(2048),
        attn_softcap: hf.attn_logit_softcapping.map(|v| v as f32),
        final_softcap: hf.final_logit_softcapping.map(|v| v as f32),
        ..ModelConfig::plain(arch, head_dim, rope)
    };
    match arch {
        Arch::Gemma3 => {
            c.activation = Activation::GeluTanh;
            c.sliding_window = Some(hf.sliding_window.unwrap_or(512));
            c.local_layers = match &hf.layer_types {
                Some(t) => t.iter().map(|s| s == "sliding_attention").collect(),
                None => periodic_local(c.n_layers, hf.sliding_window_pattern.unwrap_or(6)),
            };
            c.rope_local = Some(Rope {
                base: hf.rope_local_base_freq.unwrap_or(10000.0),
                dim: head_dim,
                freq_factors: Vec::new(),
                linear_factor: 1.0,
                yarn: None,
            });
            c.embed_scale = Some((c.dim as f32).sqrt());
            c.attn_scale =
                1.0 / (hf.query_pre_attn_scalar.unwrap_or(head_dim as f64) as f32).sqrt();
        }
        Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => {
            // Qwen configs carry a window but switch it off with use_sliding_window = false.
            if let (Some(w), true) = (
                hf.sliding_window,
                hf.use_sliding_window.unwrap_or(arch == Arch::Mistral),
            ) {
                c.sliding_window = Some(w);
                c.local_layers = vec![true; c.n_layers];
            }
        }
        Arch::Llama => {}
    }
    if c.local_layers.len() != c.n_layers && !c.local_layers.is_empty() {
        bail!(
            "{file}: layer_types names {} layers, the model has {}",
            c.local_layers.len(),
            c.n_layers
        );
    }
    c.validate().with_context(|| file.to_owned())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_match_the_reference_shape() {
        // Llama 3.1 8B: base 5e5, head 128, factor 8, low 1, high 4, original 8192.
        let f = llama3_freq_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0, "high frequencies are kept");
        assert_eq!(f[63], 8.0, "low frequencies are divided by the factor");
        assert!(
            f.windows(2).all(|w| w[0] <= w[1]),
            "factors rise with wavelength"
        );
        assert!(
            f.iter().any(|&x| x > 1.0 && x < 8.0),
            "a smooth band exists"
        );
    }

    #[test]
    fn gemma3_pattern_has_every_sixth_layer_global() {
        let l = periodic_local(18, 6);
        let global: Vec<usize> = (0..18).filter(|&i| !l[i]).collect();
        assert_eq!(global, vec![5, 11, 17]);
    }

    #[test]
    fn rope_frequencies_apply_factors_and_linear_scaling() {
        let r = Rope {
            base: 10000.0,
            dim: 4,
            freq_factors: vec![1.0, 2.0],
            linear_factor: 4.0,
            yarn: None,
        };
        let f = r.inv_freqs();
        assert!((f[0] - 0.25).abs() < 1e-12);
        assert!((f[1] - 0.01 / 4.0 / 2.0).abs() < 1e-12);
    }
}
