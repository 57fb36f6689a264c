//! The CPU backend on specd's own kernels: every matmul goes through [`crate::kernels::matmul`],
//! attention for a query row reduces over exactly its visible keys in position order, RMS norm
//! reduces each row in a fixed order, and RoPE angles are computed per position. So the logits at
//! a position are bit-identical whether it is computed alone or inside a block, at any cache
//! length (DESIGN §2).

use anyhow::Result;

use super::backend::{AttnSpec, Backend, RawMatrix};
use super::config::{Activation, ModelConfig, RopeStyle};
use crate::kernels::{dot_f32 as dot_path, kernel_path, matmul, Matrix, SendPtr};

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_path(kernel_path(), a, b)
}

/// specd's kernels.
pub struct Cpu {
    pub force_f32: bool,
}

/// `rows × cols` values, row-major.
pub struct Rows {
    pub data: Vec<f32>,
    pub cols: usize,
}

impl Rows {
    fn rows(&self) -> usize {
        self.data.len() / self.cols.max(1)
    }
}

/// Per-sequence key/value cache: `len` positions of `kv_dim` values per layer.
#[derive(Clone, Default)]
pub struct CpuCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
}

impl CpuCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions (and drops rows appended by a forward that failed before
    /// it committed them).
    pub fn truncate(&mut self, len: usize) {
        if len <= self.len {
            for l in self.k.iter_mut().chain(self.v.iter_mut()) {
                l.truncate(len * self.kv_dim);
            }
            self.len = len;
        }
    }

    pub fn n_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(self.v.iter())
            .map(|l| l.capacity() * 4)
            .sum()
    }
}

/// cos/sin of `m` positions, `half` angles each.
pub struct Angles {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
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

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

/// Fuses projections whose layouts allow it (mixed-type files keep them fused after converting
/// the odd one to f32, which is exact).
fn fuse(parts: Vec<Matrix>) -> Matrix {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap();
    }
    if parts.iter().all(|p| parts[0].can_concat(p)) {
        Matrix::concat(parts)
    } else {
        Matrix::concat(
            parts
                .into_iter()
                .map(|p| {
                    let (n, k) = (p.n, p.k);
                    let mut w = vec![0f32; n * k];
                    for j in 0..n {
                        p.row(j, &mut w[j * k..(j + 1) * k]);
                    }
                    Matrix::from_f32(w, n, k)
                })
                .collect(),
        )
    }
}

impl Backend for Cpu {
    type Matrix = Matrix;
    type Vector = Vec<f32>;
    type Act = Rows;
    type Cache = CpuCache;
    type Rotation = Angles;

    fn matrix(&self, parts: Vec<RawMatrix<'_>>) -> Result<Matrix> {
        Ok(fuse(
            parts
                .iter()
                .map(|p| Matrix::from_ggml(p.ty, &p.data, p.n, p.k, self.force_f32))
                .collect(),
        ))
    }

    fn vector(&self, v: Vec<f32>) -> Result<Vec<f32>> {
        Ok(v)
    }

    fn matrix_bytes(&self, w: &Matrix) -> usize {
        w.n_bytes()
    }

    fn new_cache(&self, c: &ModelConfig) -> Result<CpuCache> {
        Ok(CpuCache {
            k: vec![Vec::new(); c.n_layers],
            v: vec![Vec::new(); c.n_layers],
            kv_dim: c.kv_dim(),
            len: 0,
        })
    }

    fn cache_len(&self, cache: &CpuCache) -> usize {
        cache.len
    }

    fn cache_append(&self, cache: &mut CpuCache, layer: usize, k: &Rows, v: &Rows) -> Result<()> {
        cache.k[layer].extend_from_slice(&k.data);
        cache.v[layer].extend_from_slice(&v.data);
        Ok(())
    }

    fn cache_commit(&self, cache: &mut CpuCache, len: usize) {
        cache.len = len;
    }

    fn embed(&self, w: &Matrix, tokens: &[u32], scale: Option<f32>) -> Result<Rows> {
        let d = w.k;
        let mut x = vec![0f32; tokens.len() * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            w.row(tok as usize, row);
            if let Some(s) = scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        Ok(Rows { data: x, cols: d })
    }

    fn matmul(&self, x: &Rows, w: &Matrix) -> Result<Rows> {
        let mut out = vec![0f32; x.rows() * w.n];
        matmul(&x.data, w, &mut out);
        Ok(Rows {
            data: out,
            cols: w.n,
        })
    }

    fn rms_norm(&self, x: &Rows, w: &Vec<f32>, eps: f32) -> Result<Rows> {
        let mut out = vec![0f32; x.data.len()];
        rms_norm(&x.data, w, eps, &mut out);
        Ok(Rows {
            data: out,
            cols: x.cols,
        })
    }

    fn add_bias(&self, x: &mut Rows, b: &Vec<f32>) -> Result<()> {
        for row in x.data.chunks_exact_mut(x.cols) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
        Ok(())
    }

    fn columns(&self, x: &Rows, from: usize, len: usize) -> Result<Rows> {
        let mut out = Vec::with_capacity(x.rows() * len);
        for row in x.data.chunks_exact(x.cols) {
            out.extend_from_slice(&row[from..from + len]);
        }
        Ok(Rows {
            data: out,
            cols: len,
        })
    }

    fn rows(&self, x: &Rows, from: usize, len: usize) -> Result<Rows> {
        Ok(Rows {
            data: x.data[from * x.cols..(from + len) * x.cols].to_vec(),
            cols: x.cols,
        })
    }

    fn concat_rows(&self, parts: &[Rows]) -> Result<Rows> {
        Ok(Rows {
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
            cols: parts.first().map_or(0, |p| p.cols),
        })
    }

    fn rotation(&self, cos: Vec<f32>, sin: Vec<f32>, m: usize) -> Result<Angles> {
        let half = cos.len() / m.max(1);
        Ok(Angles { cos, sin, half })
    }

    fn rope(&self, x: &mut Rows, hd: usize, style: RopeStyle, rot: &Angles) -> Result<()> {
        let half = rot.half;
        let cols = x.cols;
        for (t, row) in x.data.chunks_exact_mut(cols).enumerate() {
            let cos = &rot.cos[t * half..(t + 1) * half];
            let sin = &rot.sin[t * half..(t + 1) * half];
            for head in row.chunks_exact_mut(hd) {
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
        Ok(())
    }

    fn attention(&self, q: &Rows, cache: &CpuCache, a: &AttnSpec) -> Result<Rows> {
        let (kvd, hd) = (cache.kv_dim, a.head_dim);
        let qd = q.cols;
        let m = q.rows();
        let (kc, vc) = (&cache.k[a.layer], &cache.v[a.layer]);
        // The new rows are appended already: the cache holds pos0 + m positions.
        let pos0 = kc.len() / kvd - m;
        let group = a.n_heads / a.n_kv_heads;
        let one = |(idx, o): (usize, &mut [f32])| {
            let (t, h) = (idx / a.n_heads, idx % a.n_heads);
            let q = &q.data[t * qd + h * hd..t * qd + (h + 1) * hd];
            let g = h / group;
            let end = pos0 + t + 1;
            let start = a.window.map_or(0, |w| end.saturating_sub(w));
            let mut scores = Vec::with_capacity(end - start);
            let mut max = f32::NEG_INFINITY;
            for s in start..end {
                let mut sc = dot_f32(q, &kc[s * kvd + g * hd..s * kvd + (g + 1) * hd]) * a.scale;
                if let Some(cap) = a.softcap {
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
        let n = m * a.n_heads;
        let mut out = vec![0f32; m * qd];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let task = |idx: usize| {
            // SAFETY: task `idx` writes only its own `hd` outputs, inside `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(idx * hd), hd) };
            one((idx, o));
        };
        if m * a.n_heads * (pos0 + m) > 512 {
            crate::kernels::pool::pool().run(n, &task);
        } else {
            (0..n).for_each(task);
        }
        Ok(Rows {
            data: out,
            cols: qd,
        })
    }

    fn residual(
        &self,
        x: &mut Rows,
        mut y: Rows,
        post_norm: Option<&Vec<f32>>,
        eps: f32,
    ) -> Result<()> {
        if let Some(w) = post_norm {
            y = self.rms_norm(&y, w, eps)?;
        }
        for (a, b) in x.data.iter_mut().zip(y.data.iter()) {
            *a += b;
        }
        Ok(())
    }

    fn glu(&self, gu: &Rows, act: Activation) -> Result<Rows> {
        let f = gu.cols / 2;
        let mut out = vec![0f32; gu.rows() * f];
        for (row, a) in gu.data.chunks_exact(gu.cols).zip(out.chunks_exact_mut(f)) {
            let (g, u) = row.split_at(f);
            match act {
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
        Ok(Rows { data: out, cols: f })
    }

    fn softcap(&self, x: &mut Rows, cap: f32) -> Result<()> {
        for v in x.data.iter_mut() {
            *v = cap * (*v / cap).tanh();
        }
        Ok(())
    }

    fn to_host(&self, x: Rows) -> Result<Vec<f32>> {
        Ok(x.data)
    }
}
