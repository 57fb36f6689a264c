//! Batch-invariant matrix kernels.
//!
//! Every model forward in specd (target-only decoding, verification, scoring) multiplies activations
//! by weights through [`matmul`]. The kernels are written so that **the value of an output element
//! depends only on its own input row and weight column**, computed by the same sequence of
//! operations whatever the number of rows in the call: up to [`MAX_TILE`] rows share one pass over
//! the weights (which is what makes verifying 8 tokens cost little more than one step), but every
//! row has its own accumulators and the reduction order over `k` is fixed. Threads split the
//! output *columns*, never the reduction. Hence the logits at a position are bit-identical whether
//! it is computed alone or inside a block (DESIGN §2 "batch-invariant numerics").
//!
//! Quantized weights are repacked at load time into groups of 16 output columns interleaved in
//! steps of 4 inputs ([`Packed`]), so that one AVX-512 VNNI `vpdpbusd` advances 16 columns by 4
//! inputs, with each lane holding one column's exact integer partial sum:
//! - `W8` (ggml Q8_0): signed bytes, per block a scale `d` and `corr = −128·Σw`;
//! - `W4` (ggml Q4_0/Q4_1): nibbles, per block a scale `d` and offset `m` (`Q4_0` is `d·(n−8)`,
//!   i.e. `m = −8d`);
//! - `F32`: plain rows (F32/F16/BF16 sources, safetensors), a 16-lane dot product per output.
//!
//! Activations are quantized per row to 8 bits in blocks of 32 (as llama.cpp does). For a block
//! the integer dot product `isum` is exact, and the float combination is, per output and in block
//! order: `acc = fma(isum·d_x, d_w, acc)` (then `acc = fma(s_x, m_w, acc)` for `W4`, with
//! `s_x = d_x·Σx`). The portable kernels perform exactly the same roundings (float dot products
//! too), so both kernel paths give the same bits: a model computes the same logits on any x86-64
//! or ARM machine, with or without AVX-512.

use std::sync::OnceLock;

use half::f16;

use crate::quant::{GgmlType, QK};

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod pool;
pub mod portable;

/// At most this many activation rows share one pass over the weights.
pub const MAX_TILE: usize = 8;
/// Output columns per interleaved group.
pub const GROUP: usize = 16;

/// A weight matrix of `n` output rows by `k` inputs, in a kernel layout.
pub struct Matrix {
    pub n: usize,
    pub k: usize,
    pub packed: Packed,
}

pub enum Packed {
    /// `qs[((g*nb + b)*8 + i)*64 + c*4 + e]` = w[16g + c][32b + 4i + e];
    /// scale `d` (f16) and `wsum = Σw` of the block at `(g*nb + b)*16 + c`.
    W8 {
        qs: Vec<i8>,
        d: Vec<f16>,
        wsum: Vec<i16>,
    },
    /// `qs[((g*nb + b)*4 + j)*64 + c*4 + e]`: low nibble w[16g+c][32b + 4j + e], high nibble
    /// w[16g+c][32b + 16 + 4j + e]; `d`, `m` (f16) at `(g*nb + b)*16 + c`.
    W4 {
        qs: Vec<u8>,
        d: Vec<f16>,
        m: Vec<f16>,
    },
    /// Row-major `w[j*k + i]`.
    F32 { w: Vec<f32> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    Avx512Vnni,
    Portable,
}

/// The kernel path this process uses (`SPECD_KERNEL=portable` forces the portable one).
pub fn kernel_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        if std::env::var("SPECD_KERNEL").is_ok_and(|v| v == "portable") {
            return KernelPath::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("fma")
            {
                return KernelPath::Avx512Vnni;
            }
        }
        KernelPath::Portable
    })
}

impl Matrix {
    /// Number of 16-column groups (the last one zero-padded).
    pub fn groups(&self) -> usize {
        self.n.div_ceil(GROUP)
    }

    /// Packs a ggml tensor of `n` rows by `k` columns (ggml dims `[k, n]`).
    /// `force_f32` dequantizes quantized weights to floats.
    pub fn from_ggml(ty: GgmlType, data: &[u8], n: usize, k: usize, force_f32: bool) -> Self {
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 if !force_f32 => {}
            _ => return Matrix::from_f32(crate::quant::dequantize_vec(ty, data, n * k), n, k),
        }
        let nb = k / QK;
        let ng = n.div_ceil(GROUP);
        let bb = ty.block_bytes();
        // Per (column, block): the 32 integer weights, scale and offset (all exact in f16:
        // Q4_0's offset is −8·d).
        let block = |j: usize, b: usize| -> ([i8; QK], f16, f16) {
            let mut q = [0i8; QK];
            if j >= n {
                return (q, f16::ZERO, f16::ZERO);
            }
            let raw = &data[(j * nb + b) * bb..(j * nb + b + 1) * bb];
            let h = |o: usize| f16::from_le_bytes([raw[o], raw[o + 1]]);
            match ty {
                GgmlType::Q8_0 => {
                    for (e, v) in q.iter_mut().enumerate() {
                        *v = raw[2 + e] as i8;
                    }
                    (q, h(0), f16::ZERO)
                }
                _ => {
                    let (d, m, qs) = if ty == GgmlType::Q4_1 {
                        (h(0), h(2), &raw[4..])
                    } else {
                        (h(0), f16::from_f32(-8.0 * h(0).to_f32()), &raw[2..])
                    };
                    for e in 0..QK / 2 {
                        q[e] = (qs[e] & 0x0f) as i8;
                        q[e + QK / 2] = (qs[e] >> 4) as i8;
                    }
                    (q, d, m)
                }
            }
        };
        let packed = if ty == GgmlType::Q8_0 {
            let mut qs = vec![0i8; ng * nb * 8 * 64];
            let mut d = vec![f16::ZERO; ng * nb * GROUP];
            let mut wsum = vec![0i16; ng * nb * GROUP];
            for g in 0..ng {
                for b in 0..nb {
                    for c in 0..GROUP {
                        let (q, dd, _) = block(g * GROUP + c, b);
                        let o = (g * nb + b) * GROUP + c;
                        d[o] = dd;
                        wsum[o] = q.iter().map(|&v| v as i16).sum::<i16>();
                        for i in 0..8 {
                            for e in 0..4 {
                                qs[((g * nb + b) * 8 + i) * 64 + c * 4 + e] = q[4 * i + e];
                            }
                        }
                    }
                }
            }
            Packed::W8 { qs, d, wsum }
        } else {
            let mut qs = vec![0u8; ng * nb * 4 * 64];
            let mut d = vec![f16::ZERO; ng * nb * GROUP];
            let mut m = vec![f16::ZERO; ng * nb * GROUP];
            for g in 0..ng {
                for b in 0..nb {
                    for c in 0..GROUP {
                        let (q, dd, mm) = block(g * GROUP + c, b);
                        let o = (g * nb + b) * GROUP + c;
                        d[o] = dd;
                        m[o] = mm;
                        for j in 0..4 {
                            for e in 0..4 {
                                qs[((g * nb + b) * 4 + j) * 64 + c * 4 + e] =
                                    q[4 * j + e] as u8 | ((q[16 + 4 * j + e] as u8) << 4);
                            }
                        }
                    }
                }
            }
            Packed::W4 { qs, d, m }
        };
        Matrix { n, k, packed }
    }

    /// Builds a matrix from f32 rows (`w[j*k + i]`).
    pub fn from_f32(w: Vec<f32>, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        Matrix {
            n,
            k,
            packed: Packed::F32 { w },
        }
    }

    /// Concatenates matrices of equal `k` and layout along the output dimension (fused QKV and
    /// gate/up projections). Quantized parts must have `n` a multiple of 16.
    pub fn concat(parts: Vec<Matrix>) -> Matrix {
        let k = parts[0].k;
        let n = parts.iter().map(|p| p.n).sum();
        let mut it = parts.into_iter();
        let first = it.next().unwrap();
        let mut packed = first.packed;
        let quantized = !matches!(packed, Packed::F32 { .. });
        assert!(
            !quantized || first.n.is_multiple_of(GROUP),
            "concat of a padded group"
        );
        for p in it {
            assert_eq!(p.k, k);
            assert!(
                !quantized || p.n.is_multiple_of(GROUP),
                "concat of a padded group"
            );
            match (&mut packed, p.packed) {
                (
                    Packed::W8 { qs, d, wsum },
                    Packed::W8 {
                        qs: q2,
                        d: d2,
                        wsum: s2,
                    },
                ) => {
                    qs.extend(q2);
                    d.extend(d2);
                    wsum.extend(s2);
                }
                (
                    Packed::W4 { qs, d, m },
                    Packed::W4 {
                        qs: q2,
                        d: d2,
                        m: m2,
                    },
                ) => {
                    qs.extend(q2);
                    d.extend(d2);
                    m.extend(m2);
                }
                (Packed::F32 { w }, Packed::F32 { w: w2 }) => w.extend(w2),
                _ => panic!("concat of matrices with different layouts"),
            }
        }
        Matrix { n, k, packed }
    }

    /// Whether `self` and `other` can be concatenated.
    pub fn can_concat(&self, other: &Matrix) -> bool {
        std::mem::discriminant(&self.packed) == std::mem::discriminant(&other.packed)
            && self.k == other.k
            && (matches!(self.packed, Packed::F32 { .. })
                || (self.n.is_multiple_of(GROUP) && other.n.is_multiple_of(GROUP)))
    }

    /// Dequantizes output row `j` (embedding lookups, export).
    pub fn row(&self, j: usize, out: &mut [f32]) {
        let k = self.k;
        let nb = k / QK;
        let (g, c) = (j / GROUP, j % GROUP);
        match &self.packed {
            Packed::F32 { w } => out.copy_from_slice(&w[j * k..(j + 1) * k]),
            Packed::W8 { qs, d, .. } => {
                for b in 0..nb {
                    let dd = d[(g * nb + b) * GROUP + c].to_f32();
                    for e in 0..QK {
                        out[b * QK + e] = w8_at(qs, nb, g, b, c, e) as f32 * dd;
                    }
                }
            }
            Packed::W4 { qs, d, m } => {
                for b in 0..nb {
                    let o = (g * nb + b) * GROUP + c;
                    for e in 0..QK {
                        out[b * QK + e] =
                            w4_at(qs, nb, g, b, c, e) as f32 * d[o].to_f32() + m[o].to_f32();
                    }
                }
            }
        }
    }

    /// Bytes of weight data (for reports).
    pub fn n_bytes(&self) -> usize {
        match &self.packed {
            Packed::W8 { qs, d, wsum } => qs.len() + 2 * (d.len() + wsum.len()),
            Packed::W4 { qs, d, m } => qs.len() + 2 * (d.len() + m.len()),
            Packed::F32 { w } => 4 * w.len(),
        }
    }
}

/// Element `e` of block `b` of column `c` in group `g` of a `W8` matrix.
#[inline]
pub(crate) fn w8_at(qs: &[i8], nb: usize, g: usize, b: usize, c: usize, e: usize) -> i8 {
    qs[((g * nb + b) * 8 + e / 4) * 64 + c * 4 + e % 4]
}

/// Element `e` (a nibble 0..15) of block `b` of column `c` in group `g` of a `W4` matrix.
#[inline]
pub(crate) fn w4_at(qs: &[u8], nb: usize, g: usize, b: usize, c: usize, e: usize) -> u8 {
    let (j, hi) = ((e % 16) / 4, e >= 16);
    let byte = qs[((g * nb + b) * 4 + j) * 64 + c * 4 + e % 4];
    if hi {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// Activation rows quantized to 8 bits in blocks of 32: `qs`, `qu = qs + 128` (as unsigned
/// bytes), scale `d` and `s = d·Σq` per block.
pub struct ActQ8 {
    pub k: usize,
    pub qs: Vec<i8>,
    pub qu: Vec<u8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl ActQ8 {
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let m = x.len() / k;
        let nb = k / QK;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0f32; m * nb];
        for (bi, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dd = amax / 127.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qb.iter_mut().zip(xb) {
                let r = v * id;
                // Round half away from zero (as `roundf`, without a libm call).
                let qi = ((r + 0.5f32.copysign(r)) as i32).clamp(-127, 127);
                *q = qi as i8;
                sum += qi;
            }
            d[bi] = dd;
            s[bi] = dd * sum as f32;
        }
        let qu = qs.iter().map(|&v| (v as u8) ^ 0x80).collect();
        ActQ8 { k, qs, qu, d, s }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the `Send + Sync` wrapper, not the field).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: used only to hand disjoint output ranges to pool tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `out[r*n + j] = Σ_i x[r*k + i] · W[j, i]` for every row `r` of `x` (`m = x.len()/k` rows).
pub fn matmul(x: &[f32], w: &Matrix, out: &mut [f32]) {
    matmul_with(kernel_path(), x, w, out)
}

/// [`matmul`] on a given kernel path (tests compare paths).
pub fn matmul_with(path: KernelPath, x: &[f32], w: &Matrix, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len() % k, 0, "activation length is not a multiple of k");
    let m = x.len() / k;
    assert_eq!(out.len(), m * n, "output buffer has the wrong size");
    if m == 0 {
        return;
    }
    let pool = pool::pool();
    let out_ptr = SendPtr(out.as_mut_ptr());
    match &w.packed {
        Packed::F32 { w: wf } => {
            let chunk = (n / (pool.threads() * 8)).clamp(16, 512);
            let n_chunks = n.div_ceil(chunk);
            let work = |c: usize| {
                for j in c * chunk..((c + 1) * chunk).min(n) {
                    let wr = &wf[j * k..(j + 1) * k];
                    for r in 0..m {
                        let v = dot_f32(path, wr, &x[r * k..(r + 1) * k]);
                        // SAFETY: tasks own disjoint columns; the index is inside `out`.
                        unsafe { *out_ptr.get().add(r * n + j) = v };
                    }
                }
            };
            run_tasks(pool, n_chunks, m * n * k, &work);
        }
        _ => {
            let act = ActQ8::quantize(x, k);
            let ng = w.groups();
            let per = (ng / (pool.threads() * 8)).clamp(1, 32);
            let n_chunks = ng.div_ceil(per);
            let work = |c: usize| {
                let mut tile = [[0f32; GROUP]; MAX_TILE];
                for g in c * per..((c + 1) * per).min(ng) {
                    let mut r0 = 0;
                    while r0 < m {
                        let rows = (m - r0).min(MAX_TILE);
                        group_tile(path, w, &act, g, r0, rows, &mut tile);
                        let cols = GROUP.min(n - g * GROUP);
                        for (t, vals) in tile.iter().take(rows).enumerate() {
                            // SAFETY: tasks own disjoint column groups; indices are inside `out`.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    vals.as_ptr(),
                                    out_ptr.get().add((r0 + t) * n + g * GROUP),
                                    cols,
                                )
                            };
                        }
                        r0 += rows;
                    }
                }
            };
            run_tasks(pool, n_chunks, m * n * k, &work);
        }
    }
}

fn run_tasks(pool: &pool::Pool, n_chunks: usize, work_size: usize, f: &(dyn Fn(usize) + Sync)) {
    if n_chunks == 1 || work_size < 1 << 15 {
        (0..n_chunks).for_each(f);
    } else {
        pool.run(n_chunks, f);
    }
}

#[inline]
fn group_tile(
    path: KernelPath,
    w: &Matrix,
    act: &ActQ8,
    g: usize,
    r0: usize,
    rows: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni => {
            // SAFETY: the path is only chosen when the CPU has these features.
            unsafe { avx512::group_tile(w, act, g, r0, rows, out) }
        }
        _ => portable::group_tile(w, act, g, r0, rows, out),
    }
}

/// Dot product of two float vectors with the process's kernel path (fixed order per path).
#[inline]
pub fn dot_f32(path: KernelPath, a: &[f32], b: &[f32]) -> f32 {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when the CPU has AVX-512.
        KernelPath::Avx512Vnni => unsafe { avx512::dot_f32(a, b) },
        _ => portable::dot_f32(a, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;

    fn reference(x: &[f32], w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn kernels_match_reference_and_are_batch_invariant() {
        // n = 37 pads the last column group; k = 96 has an odd number of blocks.
        for &(n, k) in &[(48usize, 64usize), (37, 96), (70, 576)] {
            let wf = data(n * k, 1);
            for ty in [
                GgmlType::Q8_0,
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::F32,
            ] {
                let bytes = quantize(ty, &wf).unwrap();
                let wdeq = crate::quant::dequantize_vec(ty, &bytes, n * k);
                let mat = Matrix::from_ggml(ty, &bytes, n, k, false);
                let mut row = vec![0f32; k];
                for j in [0, 3, n - 1] {
                    mat.row(j, &mut row);
                    assert_eq!(
                        row,
                        wdeq[j * k..(j + 1) * k],
                        "{ty:?} row {j} dequantization"
                    );
                }
                let x = data(11 * k, 7);
                let mut out = vec![0f32; 11 * n];
                matmul(&x, &mat, &mut out);
                let want = reference(&x, &wdeq, n, k);
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 0.02 * scale,
                        "{ty:?} n={n} k={k}: {a} vs {b}"
                    );
                }
                // Each row alone, and rows in blocks of every size, give identical bits.
                for block in 1..=11 {
                    for start in (0..11).step_by(block) {
                        let end = (start + block).min(11);
                        let mut o = vec![0f32; (end - start) * n];
                        matmul(&x[start * k..end * k], &mat, &mut o);
                        assert!(
                            o.iter()
                                .zip(&out[start * n..end * n])
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{ty:?}: rows {start}..{end} differ from the full batch"
                        );
                    }
                }
                // The portable kernel gives the same bits as the SIMD one for quantized weights.
                if ty != GgmlType::F32 {
                    let act = ActQ8::quantize(&x, k);
                    let mut tile = [[0f32; GROUP]; MAX_TILE];
                    for g in 0..mat.groups() {
                        portable::group_tile(&mat, &act, g, 0, 8, &mut tile);
                        for (r, vals) in tile.iter().enumerate() {
                            for c in 0..GROUP.min(n - g * GROUP) {
                                assert_eq!(
                                    vals[c].to_bits(),
                                    out[r * n + g * GROUP + c].to_bits(),
                                    "{ty:?} portable vs {:?}",
                                    kernel_path()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod dot_tests {
    use super::*;

    #[test]
    fn float_dot_paths_agree_with_f64() {
        for len in [1usize, 15, 16, 64, 100, 576] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 104729) % 11) as f32 * 0.5 - 2.0)
                .collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for path in [KernelPath::Portable, kernel_path()] {
                let got = dot_f32(path, &a, &b);
                assert!(
                    (got as f64 - want).abs() < 1e-3,
                    "{path:?} len {len}: {got} vs {want}"
                );
            }
            let c: Vec<f32> = a.iter().map(|v| (v * 0.731).sin()).collect();
            let d: Vec<f32> = b.iter().map(|v| (v * 1.37).cos()).collect();
            assert_eq!(
                dot_f32(KernelPath::Portable, &c, &d).to_bits(),
                dot_f32(kernel_path(), &c, &d).to_bits(),
                "len {len}: paths differ"
            );
        }
    }
}
