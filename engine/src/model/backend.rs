//! The device layer: the operations the decoder is written in, and the decoder itself, written
//! once over them. Two implementations: [`super::cpu`] (specd's batch-invariant kernels, the
//! default) and `super::candle` (candle-core on its CPU device or on CUDA, feature `candle`).
//!
//! A backend owns its weights ([`Backend::Matrix`], [`Backend::Vector`]), activations
//! ([`Backend::Act`], `rows × cols`) and KV cache ([`Backend::Cache`], one sequence, truncatable).
//! RoPE angles are computed on the host in f64 for every backend, so positions rotate the same.

use anyhow::{bail, Result};

use super::config::{Activation, ModelConfig, Rope, RopeStyle};
use super::profile::Clock;
use crate::quant::GgmlType;

/// A weight matrix as read from a file: `n` rows of `k` values in ggml type `ty`.
pub struct RawMatrix<'a> {
    pub ty: GgmlType,
    pub data: std::borrow::Cow<'a, [u8]>,
    pub n: usize,
    pub k: usize,
}

/// One layer's weights (`M`: a matrix, `V`: a vector of a backend; or raw parts while loading).
pub struct Layer<M, V> {
    pub attn_norm: V,
    /// Fused Q, K, V projections (rows: q, then k, then v); for [`RopeStyle::Pairs`] Q/K rows are
    /// in ggml's pair order.
    pub wqkv: M,
    /// Bias of the fused projection (qwen2).
    pub qkv_bias: Option<V>,
    /// RMS norms of each query / key head, before RoPE (qwen3, gemma3).
    pub q_norm: Option<V>,
    pub k_norm: Option<V>,
    pub wo: M,
    /// Norm of the attention output before the residual add (gemma3).
    pub post_attn_norm: Option<V>,
    pub ffn_norm: V,
    /// Fused gate and up projections (rows: gate, then up).
    pub w13: M,
    pub w2: M,
    /// Norm of the feed-forward output before the residual add (gemma3).
    pub post_ffn_norm: Option<V>,
}

/// Every weight of a decoder.
pub struct Weights<M, V> {
    pub embed: M,
    pub layers: Vec<Layer<M, V>>,
    pub norm: V,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<M>,
}

impl<M, V> Weights<M, V> {
    /// Converts every matrix and vector (file parts → a backend's weights).
    pub fn try_map<M2, V2>(
        self,
        mut fm: impl FnMut(M) -> Result<M2>,
        mut fv: impl FnMut(V) -> Result<V2>,
    ) -> Result<Weights<M2, V2>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            let mut opt = |v: Option<V>| v.map(&mut fv).transpose();
            layers.push(Layer {
                qkv_bias: opt(l.qkv_bias)?,
                q_norm: opt(l.q_norm)?,
                k_norm: opt(l.k_norm)?,
                post_attn_norm: opt(l.post_attn_norm)?,
                post_ffn_norm: opt(l.post_ffn_norm)?,
                attn_norm: fv(l.attn_norm)?,
                ffn_norm: fv(l.ffn_norm)?,
                wqkv: fm(l.wqkv)?,
                wo: fm(l.wo)?,
                w13: fm(l.w13)?,
                w2: fm(l.w2)?,
            });
        }
        Ok(Weights {
            embed: fm(self.embed)?,
            layers,
            norm: fv(self.norm)?,
            lm_head: self.lm_head.map(fm).transpose()?,
        })
    }
}

/// What attention of one layer needs to know.
pub struct AttnSpec {
    pub layer: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Sliding window (a query sees its last `w` keys, itself included).
    pub window: Option<usize>,
    pub softcap: Option<f32>,
}

/// The operations the decoder is written in.
pub trait Backend {
    type Matrix;
    type Vector;
    /// Activations: `rows × cols` f32 values.
    type Act;
    /// The K/V of every layer of one sequence.
    type Cache;
    /// cos/sin of the rotation angles of the positions of one forward.
    type Rotation;

    /// A matrix made of `parts` stacked along the output dimension (fused projections).
    fn matrix(&self, parts: Vec<RawMatrix<'_>>) -> Result<Self::Matrix>;
    fn vector(&self, v: Vec<f32>) -> Result<Self::Vector>;
    fn matrix_bytes(&self, w: &Self::Matrix) -> usize;

    fn new_cache(&self, c: &ModelConfig) -> Result<Self::Cache>;
    fn cache_len(&self, cache: &Self::Cache) -> usize;
    /// Writes `k` and `v` (one row per new position) at the end of layer `layer`'s cache.
    fn cache_append(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Act,
        v: &Self::Act,
    ) -> Result<()>;
    /// Marks `len` positions as cached (after every layer appended its rows).
    fn cache_commit(&self, cache: &mut Self::Cache, len: usize);

    /// Rows of the embedding `w` for `tokens`, times `scale`.
    fn embed(&self, w: &Self::Matrix, tokens: &[u32], scale: Option<f32>) -> Result<Self::Act>;
    /// `x · wᵀ`.
    fn matmul(&self, x: &Self::Act, w: &Self::Matrix) -> Result<Self::Act>;
    /// RMS norm of each `w.len()`-long chunk of every row (a whole row, or each head).
    fn rms_norm(&self, x: &Self::Act, w: &Self::Vector, eps: f32) -> Result<Self::Act>;
    /// `x += b` on every row.
    fn add_bias(&self, x: &mut Self::Act, b: &Self::Vector) -> Result<()>;
    /// Columns `[from, from + len)` of every row.
    fn columns(&self, x: &Self::Act, from: usize, len: usize) -> Result<Self::Act>;
    /// Rows `[from, from + len)`.
    fn rows(&self, x: &Self::Act, from: usize, len: usize) -> Result<Self::Act>;
    /// `parts` stacked row after row.
    fn concat_rows(&self, parts: &[Self::Act]) -> Result<Self::Act>;
    fn rotation(&self, cos: Vec<f32>, sin: Vec<f32>, m: usize) -> Result<Self::Rotation>;
    /// Rotates the first `2 · half` values of every head (of `head_dim`) of row `t` by the
    /// angles of position `t` of `rot`.
    fn rope(
        &self,
        x: &mut Self::Act,
        head_dim: usize,
        style: RopeStyle,
        rot: &Self::Rotation,
    ) -> Result<()>;
    /// Causal attention of the `m` query rows `q` (positions `cache_len − m ..`) over the cache.
    fn attention(&self, q: &Self::Act, cache: &Self::Cache, a: &AttnSpec) -> Result<Self::Act>;
    /// `x += y`, or `x += norm(y)` when a post-norm is given.
    fn residual(
        &self,
        x: &mut Self::Act,
        y: Self::Act,
        post_norm: Option<&Self::Vector>,
        eps: f32,
    ) -> Result<()>;
    /// `act(gate) · up` of rows holding `[gate | up]`.
    fn glu(&self, gu: &Self::Act, act: Activation) -> Result<Self::Act>;
    /// `cap · tanh(x / cap)`.
    fn softcap(&self, x: &mut Self::Act, cap: f32) -> Result<()>;
    /// The values, row-major, as f32 on the host.
    fn to_host(&self, x: Self::Act) -> Result<Vec<f32>>;
    /// Waits for the work queued on the device (for profiling; CPU kernels are synchronous).
    fn sync(&self) -> Result<()> {
        Ok(())
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

/// One sequence of a batched forward: `tokens` run at positions `cache_len..cache_len + len`
/// and are appended to `cache`; logits come back for positions `logits_from..len`.
pub struct Seq<'a, C> {
    pub cache: &'a mut C,
    pub tokens: &'a [u32],
    pub logits_from: usize,
}

/// Checks that `tokens` can run after `cached` positions.
pub fn check_feed(c: &ModelConfig, cached: usize, tokens: &[u32]) -> Result<()> {
    if cached + tokens.len() > c.context_length {
        bail!(
            "sequence of {} tokens exceeds the model's context length of {} tokens",
            cached + tokens.len(),
            c.context_length
        );
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
        bail!(
            "token id {bad} is outside the vocabulary (size {})",
            c.vocab_size
        );
    }
    Ok(())
}

/// The decoder on backend `B`.
pub struct Decoder<B: Backend> {
    pub backend: B,
    pub weights: Weights<B::Matrix, B::Vector>,
    /// Rotation frequencies of global and of local layers.
    inv_freq: Vec<f64>,
    inv_freq_local: Vec<f64>,
}

impl<B: Backend> Decoder<B> {
    pub fn new(backend: B, c: &ModelConfig, weights: Weights<B::Matrix, B::Vector>) -> Self {
        Decoder {
            backend,
            weights,
            inv_freq: c.rope.inv_freqs(),
            inv_freq_local: c
                .rope_local
                .as_ref()
                .map(Rope::inv_freqs)
                .unwrap_or_default(),
        }
    }

    /// One forward pass over several sequences (see [`super::Model::forward_many`]): the rows
    /// of every sequence go through each weight matrix together, and each sequence's rows attend
    /// only to its own cache. Returns each sequence's logits.
    pub fn forward_batch(
        &self,
        c: &ModelConfig,
        seqs: &mut [Seq<'_, B::Cache>],
    ) -> Result<Vec<Vec<f32>>> {
        let b = &self.backend;
        let w = &self.weights;
        for s in seqs.iter() {
            check_feed(c, b.cache_len(s.cache), s.tokens)?;
        }
        // Row ranges of the sequences in the stacked activations.
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let offs: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &m| {
                let o = *acc;
                *acc += m;
                Some(o)
            })
            .collect();
        let m: usize = lens.iter().sum();
        if m == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let single = seqs.len() == 1;
        // The rows of sequence `i` (no copy for a lone sequence).
        let part = |x: &B::Act, i: usize| -> Result<Option<B::Act>> {
            if single {
                Ok(None)
            } else {
                b.rows(x, offs[i], lens[i]).map(Some)
            }
        };
        let pos0: Vec<usize> = seqs.iter().map(|s| b.cache_len(s.cache)).collect();
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let (qd, kvd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let sync = || b.sync();
        let mut clock = Clock::start(sync)?;
        let mut x = b.embed(&w.embed, &tokens, c.embed_scale)?;
        let rotation = |inv_freq: &[f64], mscale: f64| -> Result<B::Rotation> {
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            for (&p, &len) in pos0.iter().zip(&lens) {
                let (c, s) = rope_angles(inv_freq, mscale, p, len);
                cos.extend(c);
                sin.extend(s);
            }
            b.rotation(cos, sin, m)
        };
        let rot = rotation(&self.inv_freq, c.rope.mscale())?;
        let rot_local = match &c.rope_local {
            Some(r) => Some(rotation(&self.inv_freq_local, r.mscale())?),
            None => None,
        };
        let style = c.arch.rope_style();
        clock.mark("embed", sync)?;
        for (li, layer) in w.layers.iter().enumerate() {
            let rot = match &rot_local {
                Some(r) if c.is_local(li) => r,
                _ => &rot,
            };
            let h = b.rms_norm(&x, &layer.attn_norm, c.rms_eps)?;
            clock.mark("residual + norms", sync)?;
            let mut qkv = b.matmul(&h, &layer.wqkv)?;
            if let Some(bias) = &layer.qkv_bias {
                b.add_bias(&mut qkv, bias)?;
            }
            clock.mark("matmul qkv", sync)?;
            let mut q = b.columns(&qkv, 0, qd)?;
            let mut k = b.columns(&qkv, qd, kvd)?;
            let v = b.columns(&qkv, qd + kvd, kvd)?;
            if let Some(n) = &layer.q_norm {
                q = b.rms_norm(&q, n, c.rms_eps)?;
            }
            if let Some(n) = &layer.k_norm {
                k = b.rms_norm(&k, n, c.rms_eps)?;
            }
            b.rope(&mut q, hd, style, rot)?;
            b.rope(&mut k, hd, style, rot)?;
            let spec = AttnSpec {
                layer: li,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: hd,
                scale: c.attn_scale,
                window: c.window_of(li),
                softcap: c.attn_softcap,
            };
            for (i, s) in seqs.iter_mut().enumerate() {
                let (ki, vi) = (part(&k, i)?, part(&v, i)?);
                b.cache_append(
                    s.cache,
                    li,
                    ki.as_ref().unwrap_or(&k),
                    vi.as_ref().unwrap_or(&v),
                )?;
            }
            clock.mark("rope + cache", sync)?;
            let mut outs = Vec::with_capacity(seqs.len());
            for (i, s) in seqs.iter().enumerate() {
                let qi = part(&q, i)?;
                outs.push(b.attention(qi.as_ref().unwrap_or(&q), s.cache, &spec)?);
            }
            let attn = if single {
                outs.pop().expect("one sequence")
            } else {
                b.concat_rows(&outs)?
            };
            clock.mark("attention", sync)?;
            let proj = b.matmul(&attn, &layer.wo)?;
            clock.mark("matmul o", sync)?;
            b.residual(&mut x, proj, layer.post_attn_norm.as_ref(), c.rms_eps)?;
            let h = b.rms_norm(&x, &layer.ffn_norm, c.rms_eps)?;
            clock.mark("residual + norms", sync)?;
            let gu = b.matmul(&h, &layer.w13)?;
            clock.mark("matmul gate+up", sync)?;
            let act = b.glu(&gu, c.activation)?;
            clock.mark("glu", sync)?;
            let proj = b.matmul(&act, &layer.w2)?;
            clock.mark("matmul down", sync)?;
            b.residual(&mut x, proj, layer.post_ffn_norm.as_ref(), c.rms_eps)?;
            clock.mark("residual + norms", sync)?;
        }
        for (s, (&p, &len)) in seqs.iter_mut().zip(pos0.iter().zip(&lens)) {
            b.cache_commit(s.cache, p + len);
        }
        // The rows whose logits are asked for, sequence after sequence.
        let want: Vec<(usize, usize)> = seqs
            .iter()
            .zip(&lens)
            .map(|(s, &len)| {
                let from = s.logits_from.min(len);
                (from, len - from)
            })
            .collect();
        let n_out: usize = want.iter().map(|w| w.1).sum();
        if n_out == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let x = if n_out == m {
            x
        } else if single {
            b.rows(&x, want[0].0, want[0].1)?
        } else {
            let parts = want
                .iter()
                .zip(&offs)
                .filter(|(w, _)| w.1 > 0)
                .map(|(&(from, len), &off)| b.rows(&x, off + from, len))
                .collect::<Result<Vec<_>>>()?;
            b.concat_rows(&parts)?
        };
        let h = b.rms_norm(&x, &w.norm, c.rms_eps)?;
        let mut logits = b.matmul(&h, w.lm_head.as_ref().unwrap_or(&w.embed))?;
        if let Some(cap) = c.final_softcap {
            b.softcap(&mut logits, cap)?;
        }
        clock.mark("lm head", sync)?;
        let host = b.to_host(logits)?;
        clock.mark("logits to host", sync)?;
        let vocab = host.len() / n_out;
        let mut rest = &host[..];
        Ok(want
            .iter()
            .map(|&(_, len)| {
                let (mine, after) = rest.split_at(len * vocab);
                rest = after;
                mine.to_vec()
            })
            .collect())
    }

    /// Bytes of weights held.
    pub fn n_bytes(&self) -> usize {
        let w = &self.weights;
        let b = &self.backend;
        b.matrix_bytes(&w.embed)
            + w.lm_head.as_ref().map_or(0, |m| b.matrix_bytes(m))
            + w.layers
                .iter()
                .map(|l| {
                    b.matrix_bytes(&l.wqkv)
                        + b.matrix_bytes(&l.wo)
                        + b.matrix_bytes(&l.w13)
                        + b.matrix_bytes(&l.w2)
                })
                .sum::<usize>()
    }
}
