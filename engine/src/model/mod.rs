//! Llama-family decoder with a block forward that returns logits for every position and a KV cache
//! that truncates back to a committed length.
//!
//! Numerics are batch-invariant (DESIGN §2): every matmul goes through [`crate::kernels::matmul`],
//! attention for a query row reduces over exactly its visible keys in position order, RMS norm
//! reduces each row in a fixed order, and RoPE tables are computed per position. So the logits at a
//! position are bit-identical whether it is computed alone or inside a block, at any cache length.

mod load;

use anyhow::{bail, Result};

use crate::kernels::{dot_f32 as dot_path, kernel_path, matmul, Matrix, SendPtr};

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_path(kernel_path(), a, b)
}

pub use load::{export_hf_safetensors, load_model, LoadOptions};

/// Hyper-parameters of a llama-family model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub context_length: usize,
}

impl LlamaConfig {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0
            || self.n_heads == 0
            || self.n_kv_heads == 0
            || self.n_layers == 0
            || self.vocab_size == 0
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
        if !self.head_dim.is_multiple_of(2)
            || !self.dim.is_multiple_of(32)
            || !self.ffn_dim.is_multiple_of(32)
        {
            bail!(
                "model config: dimensions must be multiples of 32 (dim {}, ffn {}, head {})",
                self.dim,
                self.ffn_dim,
                self.head_dim
            );
        }
        Ok(())
    }
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Fused Q, K, V projections (rows: q, then k, then v), Q/K in ggml's RoPE pair order.
    pub wqkv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    /// Fused gate and up projections (rows: gate, then up).
    pub w13: Matrix,
    pub w2: Matrix,
}

pub struct Llama {
    pub config: LlamaConfig,
    pub embed: Matrix,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<Matrix>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// Per-sequence key/value cache. `len()` positions are cached; `truncate` rolls back.
#[derive(Clone)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every cached position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for l in self.k.iter_mut().chain(self.v.iter_mut()) {
                l.truncate(len * self.kv_dim);
            }
            self.len = len;
        }
    }

    /// Bytes held.
    pub fn n_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(self.v.iter())
            .map(|l| l.capacity() * 4)
            .sum()
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss = dot_f32(xr, xr) / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for i in 0..d {
            or[i] = xr[i] * scale * w[i];
        }
    }
}

impl Llama {
    pub fn new(
        config: LlamaConfig,
        embed: Matrix,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: Option<Matrix>,
    ) -> Self {
        let half = config.head_dim / 2;
        let n = config.context_length;
        let mut rope_cos = Vec::with_capacity(n * half);
        let mut rope_sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for i in 0..half {
                let theta =
                    (config.rope_base as f64).powf(-(2.0 * i as f64) / config.head_dim as f64);
                let angle = pos as f64 * theta;
                rope_cos.push(angle.cos() as f32);
                rope_sin.push(angle.sin() as f32);
            }
        }
        Llama {
            config,
            embed,
            layers,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        let kv = self.config.kv_dim();
        KvCache {
            k: vec![Vec::new(); self.config.n_layers],
            v: vec![Vec::new(); self.config.n_layers],
            kv_dim: kv,
            len: 0,
        }
    }

    /// Runs `tokens` at positions `cache.len()..cache.len()+tokens.len()`, appending them to the
    /// cache. Returns the logits of the positions `logits_from..tokens.len()` (row-major,
    /// `vocab` per row): `0` for every position (verification), `tokens.len() - 1` for the last,
    /// `tokens.len()` for none (prefill).
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let m = tokens.len();
        let pos0 = cache.len;
        if pos0 + m > c.context_length {
            bail!(
                "sequence of {} tokens exceeds the model's context length of {} tokens",
                pos0 + m,
                c.context_length
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary (size {})",
                c.vocab_size
            );
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        let d = c.dim;
        let kvd = c.kv_dim();
        let mut x = vec![0f32; m * d];
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed.row(tok as usize, &mut x[t * d..(t + 1) * d]);
        }
        let mut h = vec![0f32; m * d];
        let qkv_w = d + 2 * kvd;
        let mut qkv = vec![0f32; m * qkv_w];
        let mut attn = vec![0f32; m * d];
        let mut proj = vec![0f32; m * d];
        let mut gu = vec![0f32; m * 2 * c.ffn_dim];
        let mut act = vec![0f32; m * c.ffn_dim];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            matmul(&h, &layer.wqkv, &mut qkv);
            for t in 0..m {
                let row = &mut qkv[t * qkv_w..(t + 1) * qkv_w];
                self.rope(&mut row[..d + kvd], pos0 + t);
                cache.k[li].extend_from_slice(&row[d..d + kvd]);
                cache.v[li].extend_from_slice(&row[d + kvd..]);
            }
            self.attention(&qkv, &cache.k[li], &cache.v[li], pos0, m, &mut attn);
            matmul(&attn, &layer.wo, &mut proj);
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            matmul(&h, &layer.w13, &mut gu);
            let f = c.ffn_dim;
            for t in 0..m {
                let g = &gu[t * 2 * f..t * 2 * f + f];
                let u = &gu[t * 2 * f + f..(t + 1) * 2 * f];
                for i in 0..f {
                    let gi = g[i];
                    act[t * f + i] = gi / (1.0 + (-gi).exp()) * u[i];
                }
            }
            matmul(&act, &layer.w2, &mut proj);
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
        }
        cache.len = pos0 + m;
        let from = logits_from.min(m);
        if from == m {
            return Ok(Vec::new());
        }
        let rows = m - from;
        rms_norm(&x[from * d..], &self.norm, c.rms_eps, &mut h[..rows * d]);
        let mut logits = vec![0f32; rows * c.vocab_size];
        matmul(
            &h[..rows * d],
            self.lm_head.as_ref().unwrap_or(&self.embed),
            &mut logits,
        );
        Ok(logits)
    }

    /// Rotates Q and K heads of one token (ggml "normal" RoPE: adjacent pairs).
    fn rope(&self, qk: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in qk.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Causal attention of `m` new query rows (in `qkv`) over the cache (which already holds them).
    fn attention(
        &self,
        qkv: &[f32],
        kc: &[f32],
        vc: &[f32],
        pos0: usize,
        m: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (d, kvd, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let qkv_w = d + 2 * kvd;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let one = |(idx, o): (usize, &mut [f32])| {
            let (t, h) = (idx / c.n_heads, idx % c.n_heads);
            let q = &qkv[t * qkv_w + h * hd..t * qkv_w + (h + 1) * hd];
            let g = h / group;
            let n_keys = pos0 + t + 1;
            let mut scores = Vec::with_capacity(n_keys);
            let mut max = f32::NEG_INFINITY;
            for s in 0..n_keys {
                let sc = dot_f32(q, &kc[s * kvd + g * hd..s * kvd + (g + 1) * hd]) * scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            o.fill(0.0);
            for (s, &e) in scores.iter().enumerate() {
                let v = &vc[s * kvd + g * hd..s * kvd + (g + 1) * hd];
                for i in 0..hd {
                    o[i] += e * v[i];
                }
            }
            let inv = 1.0 / sum;
            for v in o.iter_mut() {
                *v *= inv;
            }
        };
        let n = m * c.n_heads;
        let out_ptr = SendPtr(out.as_mut_ptr());
        let task = |idx: usize| {
            // SAFETY: task `idx` writes only its own `hd` outputs, inside `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(idx * hd), hd) };
            one((idx, o));
        };
        if m * c.n_heads * (pos0 + m) > 512 {
            crate::kernels::pool::pool().run(n, &task);
        } else {
            (0..n).for_each(task);
        }
    }

    /// Bytes of weights held.
    pub fn n_bytes(&self) -> usize {
        self.embed.n_bytes()
            + self.lm_head.as_ref().map_or(0, Matrix::n_bytes)
            + self
                .layers
                .iter()
                .map(|l| l.wqkv.n_bytes() + l.wo.n_bytes() + l.w13.n_bytes() + l.w2.n_bytes())
                .sum::<usize>()
    }
}
