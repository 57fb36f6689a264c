//! The decoder every supported family runs on (llama, mistral, qwen2, qwen3, gemma3; see
//! [`config`]), with a block forward that returns logits for every position and a KV cache that
//! truncates back to a committed length.
//!
//! Numerics are batch-invariant (DESIGN §2): every matmul goes through [`crate::kernels::matmul`],
//! attention for a query row reduces over exactly its visible keys in position order, RMS norm
//! reduces each row in a fixed order, and RoPE angles are computed per position. So the logits at
//! a position are bit-identical whether it is computed alone or inside a block, at any cache length.

pub mod config;
mod load;

use anyhow::{bail, Result};

use crate::kernels::{dot_f32 as dot_path, kernel_path, matmul, Matrix, SendPtr};

pub use config::{Activation, Arch, ModelConfig, Rope, RopeStyle};
pub use load::{export_hf_safetensors, load_model, LoadOptions};

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_path(kernel_path(), a, b)
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Fused Q, K, V projections (rows: q, then k, then v); for [`RopeStyle::Pairs`] Q/K rows are
    /// in ggml's pair order.
    pub wqkv: Matrix,
    /// Bias of the fused projection (qwen2).
    pub qkv_bias: Option<Vec<f32>>,
    /// RMS norms of each query / key head, before RoPE (qwen3, gemma3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Matrix,
    /// Norm of the attention output before the residual add (gemma3).
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// Fused gate and up projections (rows: gate, then up).
    pub w13: Matrix,
    pub w2: Matrix,
    /// Norm of the feed-forward output before the residual add (gemma3).
    pub post_ffn_norm: Option<Vec<f32>>,
}

pub struct Model {
    pub config: ModelConfig,
    pub embed: Matrix,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<Matrix>,
    /// Rotation frequencies of global and of local layers.
    inv_freq: Vec<f64>,
    inv_freq_local: Vec<f64>,
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

/// RMS norm of each `w.len()`-long chunk of `x` into `out`.
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

/// [`rms_norm`] in place.
fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ss = dot_f32(xr, xr) / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for i in 0..d {
            xr[i] = xr[i] * scale * w[i];
        }
    }
}

/// `x += norm(y)` when a post-norm is given, else `x += y`.
fn residual_add(x: &mut [f32], y: &mut [f32], post_norm: Option<&Vec<f32>>, eps: f32) {
    if let Some(w) = post_norm {
        rms_norm_inplace(y, w, eps);
    }
    for (a, b) in x.iter_mut().zip(y.iter()) {
        *a += b;
    }
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

/// cos/sin of every rotation angle of `m` positions from `pos0` (`m × freqs` each), times
/// `mscale` (YaRN; 1 otherwise).
fn rope_angles(inv_freq: &[f64], mscale: f64, pos0: usize, m: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(m * inv_freq.len());
    let mut sin = Vec::with_capacity(m * inv_freq.len());
    for t in 0..m {
        let p = (pos0 + t) as f64;
        for &f in inv_freq {
            let (s, c) = (p * f).sin_cos();
            cos.push((c * mscale) as f32);
            sin.push((s * mscale) as f32);
        }
    }
    (cos, sin)
}

/// Rotates every head of `qk` (heads of `hd` values) by the angles of one position.
fn rope_rotate(qk: &mut [f32], hd: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in qk.chunks_exact_mut(hd) {
        for i in 0..half {
            let (ia, ib) = match style {
                RopeStyle::Pairs => (2 * i, 2 * i + 1),
                RopeStyle::Halves => (i, i + half),
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * cos[i] - b * sin[i];
            head[ib] = a * sin[i] + b * cos[i];
        }
    }
}

impl Model {
    pub fn new(
        config: ModelConfig,
        embed: Matrix,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: Option<Matrix>,
    ) -> Self {
        let inv_freq = config.rope.inv_freqs();
        let inv_freq_local = config
            .rope_local
            .as_ref()
            .map(Rope::inv_freqs)
            .unwrap_or_default();
        Model {
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            inv_freq_local,
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
        let (d, qd, kvd, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.head_dim);
        let mut x = vec![0f32; m * d];
        for (t, &tok) in tokens.iter().enumerate() {
            let row = &mut x[t * d..(t + 1) * d];
            self.embed.row(tok as usize, row);
            if let Some(s) = c.embed_scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        let angles = rope_angles(&self.inv_freq, c.rope.mscale(), pos0, m);
        let mscale_local = c.rope_local.as_ref().map_or(1.0, Rope::mscale);
        let angles_local = rope_angles(&self.inv_freq_local, mscale_local, pos0, m);
        let style = c.arch.rope_style();
        let mut h = vec![0f32; m * d];
        let qkv_w = qd + 2 * kvd;
        let mut qkv = vec![0f32; m * qkv_w];
        let mut attn = vec![0f32; m * qd];
        let mut proj = vec![0f32; m * d];
        let f = c.ffn_dim;
        let mut gu = vec![0f32; m * 2 * f];
        let mut act = vec![0f32; m * f];
        for (li, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = if c.is_local(li) && c.rope_local.is_some() {
                (&angles_local.0, &angles_local.1)
            } else {
                (&angles.0, &angles.1)
            };
            let half = c.rope_of(li).dim / 2;
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            matmul(&h, &layer.wqkv, &mut qkv);
            for t in 0..m {
                let row = &mut qkv[t * qkv_w..(t + 1) * qkv_w];
                if let Some(b) = &layer.qkv_bias {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
                if let Some(w) = &layer.q_norm {
                    rms_norm_inplace(&mut row[..qd], w, c.rms_eps);
                }
                if let Some(w) = &layer.k_norm {
                    rms_norm_inplace(&mut row[qd..qd + kvd], w, c.rms_eps);
                }
                let (cs, sn) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                rope_rotate(&mut row[..qd + kvd], hd, style, cs, sn);
                cache.k[li].extend_from_slice(&row[qd..qd + kvd]);
                cache.v[li].extend_from_slice(&row[qd + kvd..]);
            }
            self.attention(li, &qkv, &cache.k[li], &cache.v[li], pos0, m, &mut attn);
            matmul(&attn, &layer.wo, &mut proj);
            residual_add(&mut x, &mut proj, layer.post_attn_norm.as_ref(), c.rms_eps);
            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            matmul(&h, &layer.w13, &mut gu);
            for t in 0..m {
                let g = &gu[t * 2 * f..t * 2 * f + f];
                let u = &gu[t * 2 * f + f..(t + 1) * 2 * f];
                let a = &mut act[t * f..(t + 1) * f];
                match c.activation {
                    Activation::Silu => {
                        for i in 0..f {
                            a[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
                        }
                    }
                    Activation::GeluTanh => {
                        for i in 0..f {
                            a[i] = gelu_tanh(g[i]) * u[i];
                        }
                    }
                }
            }
            matmul(&act, &layer.w2, &mut proj);
            residual_add(&mut x, &mut proj, layer.post_ffn_norm.as_ref(), c.rms_eps);
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
        if let Some(cap) = c.final_softcap {
            softcap(&mut logits, cap);
        }
        Ok(logits)
    }

    /// Causal attention of `m` new query rows (in `qkv`) over the cache (which already holds
    /// them); a local layer's query sees only the keys of its window.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        qkv: &[f32],
        kc: &[f32],
        vc: &[f32],
        pos0: usize,
        m: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (qd, kvd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let qkv_w = qd + 2 * kvd;
        let group = c.n_heads / c.n_kv_heads;
        let scale = c.attn_scale;
        let window = c.window_of(layer);
        let one = |(idx, o): (usize, &mut [f32])| {
            let (t, h) = (idx / c.n_heads, idx % c.n_heads);
            let q = &qkv[t * qkv_w + h * hd..t * qkv_w + (h + 1) * hd];
            let g = h / group;
            let end = pos0 + t + 1;
            let start = window.map_or(0, |w| end.saturating_sub(w));
            let mut scores = Vec::with_capacity(end - start);
            let mut max = f32::NEG_INFINITY;
            for s in start..end {
                let mut sc = dot_f32(q, &kc[s * kvd + g * hd..s * kvd + (g + 1) * hd]) * scale;
                if let Some(cap) = c.attn_softcap {
                    sc = cap * (sc / cap).tanh();
                }
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            o.fill(0.0);
            for (s, &e) in (start..end).zip(&scores) {
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
