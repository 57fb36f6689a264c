//! The candle backend (feature `candle`; CUDA with feature `cuda`): the same decoder on
//! candle-core tensors, on its CPU device or a GPU.
//!
//! Quantized GGUF weights stay quantized in candle's `QTensor`s (`QMatMul`); F16 / BF16 weights
//! keep their dtype (activations are cast for the product, the result is f32); activations, norms
//! and the KV cache are f32 on the device. The cache is preallocated and grown by doubling (no
//! `cat` per step); only the logits the caller asks for are copied to the host.
//!
//! candle picks its kernels by row count (e.g. CUDA's mmvq for 1–8 rows, mmq above), so a
//! position's logits may differ in the last bits between a 1-row and an 8-row forward: unlike
//! [`super::cpu`], this backend is not batch-invariant bit for bit (DESIGN §2; tested as
//! teacher-forced argmax agreement).

use std::borrow::Cow;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device as CDevice, Module, Tensor};

use super::backend::{AttnSpec, Backend, RawMatrix};
use super::config::{Activation, ModelConfig, RopeStyle};
use crate::device::Device;
use crate::quant::{dequantize_vec, GgmlType};

pub struct Candle {
    device: CDevice,
    force_f32: bool,
}

impl Candle {
    pub fn new(device: Device, force_f32: bool) -> Result<Self> {
        let device = match device {
            Device::Cuda(n) => CDevice::new_cuda(n).map_err(|e| {
                // The reason without candle's backtrace (captured under RUST_BACKTRACE).
                let e = match e {
                    candle_core::Error::WithBacktrace { inner, .. } => *inner,
                    e => e,
                };
                anyhow::anyhow!(
                    "cannot open CUDA device {n}: {e} (is the NVIDIA driver (≥ 580, CUDA 13) installed, does the machine have a GPU with ordinal {n} (`nvidia-smi -L`), and are libcublas.so.13 / libcurand / libnvrtc on LD_LIBRARY_PATH? see docs/gpu.md)"
                )
            })?,
            _ => CDevice::Cpu,
        };
        Ok(Candle { device, force_f32 })
    }
}

/// A weight on the device.
pub enum CMatrix {
    /// Quantized ggml blocks (`n × k`).
    Quantized(QMatMul, usize),
    /// F32 / F16 / BF16 rows (`n × k`), in their dtype.
    Dense(Tensor),
    /// Parts of different types stacked along the output dimension.
    Parts(Vec<CMatrix>),
}

/// The K/V of every layer: `cap` preallocated rows of `kv_dim` f32 each, `len` of them committed.
pub struct CandleCache {
    /// Per layer, allocated on the first append (so making a cache allocates nothing on the
    /// device and cannot fail) and grown by doubling.
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    len: usize,
    kv_dim: usize,
    context: usize,
    device: CDevice,
}

/// A deep copy (candle tensors share storage when cloned, and the cache is written in place).
impl Clone for CandleCache {
    fn clone(&self) -> Self {
        let copy = |t: &Option<Tensor>| {
            t.as_ref()
                .map(|t| t.copy().expect("copying a KV cache on its device"))
        };
        CandleCache {
            k: self.k.iter().map(copy).collect(),
            v: self.v.iter().map(copy).collect(),
            len: self.len,
            kv_dim: self.kv_dim,
            context: self.context,
            device: self.device.clone(),
        }
    }
}

impl CandleCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn n_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .flatten()
            .map(|t| t.elem_count() * 4)
            .sum()
    }
}

/// cos/sin of the positions of one forward, `[m, half]` each.
pub struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

fn ggml_dtype(ty: GgmlType) -> GgmlDType {
    match ty {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::Bf16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        GgmlType::Q8_K => GgmlDType::Q8K,
    }
}

impl Candle {
    fn one_matrix(&self, p: RawMatrix<'_>) -> Result<CMatrix> {
        let dense = |dtype: DType, data: &[u8]| -> Result<CMatrix> {
            Ok(CMatrix::Dense(Tensor::from_raw_buffer(
                data,
                dtype,
                &[p.n, p.k],
                &self.device,
            )?))
        };
        match p.ty {
            GgmlType::F32 => dense(DType::F32, &p.data),
            GgmlType::F16 if !self.force_f32 => dense(DType::F16, &p.data),
            GgmlType::Bf16 if !self.force_f32 => dense(DType::BF16, &p.data),
            _ if self.force_f32 => {
                let w = dequantize_vec(p.ty, &p.data, p.n * p.k);
                Ok(CMatrix::Dense(Tensor::from_vec(
                    w,
                    (p.n, p.k),
                    &self.device,
                )?))
            }
            ty => {
                let storage = QStorage::from_data(p.data, &self.device, ggml_dtype(ty))?;
                let q = QTensor::new(storage, (p.n, p.k))?;
                Ok(CMatrix::Quantized(QMatMul::from_qtensor(q)?, p.n))
            }
        }
    }
}

impl Backend for Candle {
    type Matrix = CMatrix;
    type Vector = Tensor;
    type Act = Tensor;
    type Cache = CandleCache;
    type Rotation = Rotation;

    fn matrix(&self, parts: Vec<RawMatrix<'_>>) -> Result<CMatrix> {
        if parts.is_empty() {
            bail!("a matrix needs at least one part");
        }
        // Rows of one ggml type are contiguous blocks: parts of one type fuse by concatenation.
        if parts
            .iter()
            .all(|p| p.ty == parts[0].ty && p.k == parts[0].k)
        {
            if parts.len() == 1 {
                return self.one_matrix(parts.into_iter().next().unwrap());
            }
            let (ty, k) = (parts[0].ty, parts[0].k);
            let n = parts.iter().map(|p| p.n).sum();
            let data: Vec<u8> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
            return self.one_matrix(RawMatrix {
                ty,
                data: Cow::Owned(data),
                n,
                k,
            });
        }
        Ok(CMatrix::Parts(
            parts
                .into_iter()
                .map(|p| self.one_matrix(p))
                .collect::<Result<_>>()?,
        ))
    }

    fn vector(&self, v: Vec<f32>) -> Result<Tensor> {
        let n = v.len();
        Ok(Tensor::from_vec(v, n, &self.device)?)
    }

    fn matrix_bytes(&self, w: &CMatrix) -> usize {
        match w {
            CMatrix::Quantized(QMatMul::QTensor(q), _) => q.storage_size_in_bytes(),
            CMatrix::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t), _)
            | CMatrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            CMatrix::Parts(p) => p.iter().map(|m| self.matrix_bytes(m)).sum(),
        }
    }

    fn new_cache(&self, c: &ModelConfig) -> Result<CandleCache> {
        Ok(CandleCache {
            k: vec![None; c.n_layers],
            v: vec![None; c.n_layers],
            len: 0,
            kv_dim: c.kv_dim(),
            context: c.context_length,
            device: self.device.clone(),
        })
    }

    fn cache_len(&self, cache: &CandleCache) -> usize {
        cache.len
    }

    fn cache_append(
        &self,
        cache: &mut CandleCache,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let m = k.dim(0)?;
        let need = cache.len + m;
        for (t, new) in [(&mut cache.k[layer], k), (&mut cache.v[layer], v)] {
            let cap = t.as_ref().map_or(Ok(0), |t| t.dim(0))?;
            if need > cap {
                let new_cap = need.max(2 * cap).max(256).min(cache.context.max(need));
                let grown = Tensor::zeros((new_cap, cache.kv_dim), DType::F32, &cache.device)
                    .with_context(|| {
                        format!(
                            "cannot grow the KV cache to {new_cap} positions on {:?}",
                            cache.device.location()
                        )
                    })?;
                if let (Some(old), true) = (t.as_ref(), cache.len > 0) {
                    grown.slice_set(&old.narrow(0, 0, cache.len)?.contiguous()?, 0, 0)?;
                }
                *t = Some(grown);
            }
            let t = t.as_ref().expect("allocated above");
            t.slice_set(&new.contiguous()?, 0, cache.len)?;
        }
        Ok(())
    }

    fn cache_commit(&self, cache: &mut CandleCache, len: usize) {
        cache.len = len;
    }

    fn embed(&self, w: &CMatrix, tokens: &[u32], scale: Option<f32>) -> Result<Tensor> {
        let ids = Tensor::new(tokens, &self.device)?;
        let x = match w {
            CMatrix::Quantized(q, _) => q.embedding(&ids)?,
            CMatrix::Dense(t) => t.index_select(&ids, 0)?,
            CMatrix::Parts(_) => bail!("an embedding is one tensor"),
        }
        .to_dtype(DType::F32)?;
        Ok(match scale {
            Some(s) => x.affine(s as f64, 0.0)?,
            None => x,
        })
    }

    fn matmul(&self, x: &Tensor, w: &CMatrix) -> Result<Tensor> {
        Ok(match w {
            CMatrix::Quantized(q, _) => q.forward(&x.contiguous()?)?,
            CMatrix::Dense(t) => x
                .to_dtype(t.dtype())?
                .matmul(&t.t()?)?
                .to_dtype(DType::F32)?,
            CMatrix::Parts(parts) => {
                let outs = parts
                    .iter()
                    .map(|p| self.matmul(x, p))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&outs, 1)?
            }
        })
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        let (m, cols) = x.dims2()?;
        let d = w.dim(0)?;
        let chunks = x.contiguous()?.reshape((m * cols / d, d))?;
        Ok(candle_nn::ops::rms_norm(&chunks, w, eps)?.reshape((m, cols))?)
    }

    fn add_bias(&self, x: &mut Tensor, b: &Tensor) -> Result<()> {
        *x = x.broadcast_add(b)?;
        Ok(())
    }

    fn columns(&self, x: &Tensor, from: usize, len: usize) -> Result<Tensor> {
        Ok(x.narrow(1, from, len)?.contiguous()?)
    }

    fn rows(&self, x: &Tensor, from: usize, len: usize) -> Result<Tensor> {
        Ok(x.narrow(0, from, len)?)
    }

    fn concat_rows(&self, parts: &[Tensor]) -> Result<Tensor> {
        Ok(Tensor::cat(parts, 0)?)
    }

    fn rotation(&self, cos: Vec<f32>, sin: Vec<f32>, m: usize) -> Result<Rotation> {
        let half = cos.len() / m.max(1);
        Ok(Rotation {
            cos: Tensor::from_vec(cos, (m, half), &self.device)?,
            sin: Tensor::from_vec(sin, (m, half), &self.device)?,
        })
    }

    fn rope(&self, x: &mut Tensor, hd: usize, style: RopeStyle, rot: &Rotation) -> Result<()> {
        let (m, cols) = x.dims2()?;
        let heads = cols / hd;
        let rotated = 2 * rot.cos.dim(1)?;
        // [1, heads, m, hd], as candle-nn's rope kernels take it.
        let h = x.reshape((m, heads, hd))?.transpose(0, 1)?.unsqueeze(0)?;
        let (r, pass) = if rotated < hd {
            (
                h.narrow(3, 0, rotated)?.contiguous()?,
                Some(h.narrow(3, rotated, hd - rotated)?),
            )
        } else {
            (h.contiguous()?, None)
        };
        let r = match style {
            RopeStyle::Pairs => candle_nn::rotary_emb::rope_i(&r, &rot.cos, &rot.sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&r, &rot.cos, &rot.sin)?,
        };
        let h = match pass {
            Some(p) => Tensor::cat(&[r, p.contiguous()?], 3)?,
            None => r,
        };
        *x = h
            .squeeze(0)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((m, cols))?;
        Ok(())
    }

    fn attention(&self, q: &Tensor, cache: &CandleCache, a: &AttnSpec) -> Result<Tensor> {
        let (m, qd) = q.dims2()?;
        let hd = a.head_dim;
        let (n_kv, group) = (a.n_kv_heads, a.n_heads / a.n_kv_heads);
        let pos0 = cache.len;
        let end = pos0 + m;
        let start = a.window.map_or(0, |w| (pos0 + 1).saturating_sub(w));
        let keys = end - start;
        let heads_of = |t: &Tensor| -> Result<Tensor> {
            Ok(t.narrow(0, start, keys)?
                .reshape((keys, n_kv, hd))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        fn layer(t: &Option<Tensor>) -> Result<&Tensor> {
            t.as_ref()
                .context("attention before the layer's keys were appended")
        }
        let k = heads_of(layer(&cache.k[a.layer])?)?;
        let v = heads_of(layer(&cache.v[a.layer])?)?;
        let q = q
            .reshape((m, a.n_heads, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((n_kv, group * m, hd))?;
        let mut scores = q
            .matmul(&k.t()?.contiguous()?)?
            .affine(a.scale as f64, 0.0)?;
        if let Some(cap) = a.softcap {
            scores = (scores.affine(1.0 / cap as f64, 0.0)?.tanh()? * cap as f64)?;
        }
        if m > 1 {
            let mut mask = vec![0f32; m * keys];
            for t in 0..m {
                let last = pos0 + t;
                let first = a.window.map_or(0, |w| (last + 1).saturating_sub(w));
                for (j, s) in (start..end).enumerate() {
                    if s > last || s < first {
                        mask[t * keys + j] = f32::NEG_INFINITY;
                    }
                }
            }
            let mask = Tensor::from_vec(mask, (m, keys), &self.device)?;
            scores = scores
                .reshape((n_kv, group, m, keys))?
                .broadcast_add(&mask)?
                .reshape((n_kv, group * m, keys))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(&v)?
            .reshape((a.n_heads, m, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((m, qd))?)
    }

    fn residual(
        &self,
        x: &mut Tensor,
        y: Tensor,
        post_norm: Option<&Tensor>,
        eps: f32,
    ) -> Result<()> {
        let y = match post_norm {
            Some(w) => self.rms_norm(&y, w, eps)?,
            None => y,
        };
        *x = (&*x + y)?;
        Ok(())
    }

    fn glu(&self, gu: &Tensor, act: Activation) -> Result<Tensor> {
        let f = gu.dim(1)? / 2;
        let g = gu.narrow(1, 0, f)?;
        let u = gu.narrow(1, f, f)?;
        let g = match act {
            Activation::Silu => g.silu()?,
            // candle's `gelu` is the tanh approximation.
            Activation::GeluTanh => g.gelu()?,
        };
        Ok((g * u)?)
    }

    fn softcap(&self, x: &mut Tensor, cap: f32) -> Result<()> {
        *x = (x.affine(1.0 / cap as f64, 0.0)?.tanh()? * cap as f64)?;
        Ok(())
    }

    fn to_host(&self, x: Tensor) -> Result<Vec<f32>> {
        x.to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
            .context("copying logits to the host")
    }

    fn sync(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }
}
