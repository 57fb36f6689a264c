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
//! Quantized weights are unpacked at load time (every ggml type, through
//! [`crate::quant::unpack_block`]: small integers with affine scales per 16 or 32 weights) and
//! repacked into groups of 16 output columns interleaved in steps of 4 inputs ([`Packed`]), so
//! that one AVX-512 VNNI `vpdpbusd` advances 16 columns by 4 inputs, with each lane holding one
//! column's exact integer partial sum:
//! - `W8` (Q8_0, Q5_0): signed bytes, per block of 32 an f16 scale `d` and `corr = −128·Σw`;
//! - `W4` (Q4_0, Q4_1): nibbles, per block an f16 scale `d` and offset `m` (`Q4_0` is
//!   `d·(n−8)`, i.e. `m = −8d`); `W4F` (Q4_K): the same with f32 scales (`d·sc`, `−dmin·min`);
//! - `W8F` (Q5_1 and the K-quants Q2_K, Q3_K, Q5_K, Q6_K, Q8_K): signed bytes with an f32 scale
//!   (and offset, where the type has one) per **16** weights;
//! - `F32`: plain rows (F32/F16/BF16 sources, safetensors), a 16-lane dot product per output.
//!
//! Activations are quantized per row to 8 bits in blocks of 32 (as llama.cpp does). For a block
//! the integer dot product `isum` is exact, and the float combination is, per output and in block
//! order: `acc = fma(isum·d_x, d_w, acc)` (for `W8F` once per half block), then
//! `acc = fma(s_x, m_w, acc)` for offsets, with `s_x = d_x·Σx` over the block (or half). The
//! portable kernels perform exactly the same roundings (float dot products too), so both kernel
//! paths give the same bits: a model computes the same logits on any x86-64 or ARM machine, with
//! or without AVX-512.

use std::sync::OnceLock;

use half::f16;

use crate::quant::{unpack_block, GgmlType, Unpacked, QK};

/// Calls `$f::<R>(args)` with the tile's row count `R = $rows` (1..=MAX_TILE) as a constant, so
/// that each row count gets its own unrolled kernel (the SIMD paths).
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_rows {
    ($rows:expr, $f:ident, $($args:expr),*) => {
        match $rows {
            1 => $f::<1>($($args),*),
            2 => $f::<2>($($args),*),
            3 => $f::<3>($($args),*),
            4 => $f::<4>($($args),*),
            5 => $f::<5>($($args),*),
            6 => $f::<6>($($args),*),
            7 => $f::<7>($($args),*),
            8 => $f::<8>($($args),*),
            r => unreachable!("tile of {r} rows"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
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

/// Kernel layouts. Byte layouts: `W8`/`W8F` `qs[((g*nb + b)*8 + i)*64 + c*4 + e]` =
/// w[16g + c][32b + 4i + e]; `W4`/`W4F` `qs[((g*nb + b)*4 + j)*64 + c*4 + e]`: low nibble
/// w[16g+c][32b + 4j + e], high nibble w[16g+c][32b + 16 + 4j + e]. Per-block values of column
/// `c` of group `g`, block `b` sit at `(g*nb + b)*16 + c`; per-half values (`W8F`) at
/// `((g*nb + b)*2 + h)*16 + c`.
pub enum Packed {
    W8 {
        qs: Vec<i8>,
        d: Vec<f16>,
        /// `Σw` of each block.
        wsum: Vec<i16>,
    },
    W4 {
        qs: Vec<u8>,
        d: Vec<f16>,
        m: Vec<f16>,
    },
    W4F {
        qs: Vec<u8>,
        d: Vec<f32>,
        m: Vec<f32>,
    },
    W8F {
        qs: Vec<i8>,
        /// Scale, offset (empty when the type has none) and `Σw` of each half block.
        d: Vec<f32>,
        m: Vec<f32>,
        wsum: Vec<i16>,
    },
    /// Row-major `w[j*k + i]`.
    F32 { w: Vec<f32> },
}

/// The kernel layout a ggml type is packed into.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    W8,
    W4,
    W4F,
    W8F { offsets: bool },
}

fn layout_of(ty: GgmlType) -> Option<Layout> {
    Some(match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => return None,
        GgmlType::Q8_0 | GgmlType::Q5_0 => Layout::W8,
        GgmlType::Q4_0 | GgmlType::Q4_1 => Layout::W4,
        GgmlType::Q4_K => Layout::W4F,
        GgmlType::Q5_1 | GgmlType::Q5_K | GgmlType::Q2_K => Layout::W8F { offsets: true },
        GgmlType::Q6_K | GgmlType::Q3_K | GgmlType::Q8_K => Layout::W8F { offsets: false },
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    Avx512Vnni,
    Avx2,
    Portable,
}

impl KernelPath {
    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            KernelPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU can run, fastest first (the portable one last).
    pub fn available() -> Vec<KernelPath> {
        [
            KernelPath::Avx512Vnni,
            KernelPath::Avx2,
            KernelPath::Portable,
        ]
        .into_iter()
        .filter(|p| p.supported())
        .collect()
    }
}

/// The kernel path this process uses: the fastest the CPU has, or the one `SPECD_KERNEL` names
/// (`portable`, or `avx2` where the CPU has it). Every path gives the same bits.
pub fn kernel_path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let available = KernelPath::available();
        match std::env::var("SPECD_KERNEL").as_deref() {
            Ok("portable") => KernelPath::Portable,
            Ok("avx2") if available.contains(&KernelPath::Avx2) => KernelPath::Avx2,
            _ => available[0],
        }
    })
}

/// One weight column unpacked: `w[i] = d[i/16]·q[i] + m[i/16]`.
struct Column {
    q: Vec<i8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

impl Column {
    fn unpack(ty: GgmlType, row: &[u8], k: usize) -> Column {
        let (bs, bb) = (ty.block_size(), ty.block_bytes());
        let mut col = Column {
            q: vec![0; k],
            d: vec![0.0; k / 16],
            m: vec![0.0; k / 16],
        };
        let mut u = Unpacked {
            q: [0; 256],
            d: [0.0; 16],
            m: [0.0; 16],
        };
        for (b, raw) in row.chunks_exact(bb).enumerate() {
            let n = unpack_block(ty, raw, &mut u);
            debug_assert_eq!(n, bs);
            col.q[b * bs..(b + 1) * bs].copy_from_slice(&u.q[..bs]);
            col.d[b * bs / 16..(b + 1) * bs / 16].copy_from_slice(&u.d[..bs / 16]);
            col.m[b * bs / 16..(b + 1) * bs / 16].copy_from_slice(&u.m[..bs / 16]);
        }
        col
    }

    fn zero(k: usize) -> Column {
        Column {
            q: vec![0; k],
            d: vec![0.0; k / 16],
            m: vec![0.0; k / 16],
        }
    }
}

impl Matrix {
    /// Number of 16-column groups (the last one zero-padded).
    pub fn groups(&self) -> usize {
        self.n.div_ceil(GROUP)
    }

    /// Packs a ggml tensor of `n` rows by `k` columns (ggml dims `[k, n]`; `k` a multiple of the
    /// type's block size and of 32). `force_f32` dequantizes quantized weights to floats.
    pub fn from_ggml(ty: GgmlType, data: &[u8], n: usize, k: usize, force_f32: bool) -> Self {
        let layout = match layout_of(ty) {
            Some(l) if !force_f32 => l,
            _ => return Matrix::from_f32(crate::quant::dequantize_vec(ty, data, n * k), n, k),
        };
        let nb = k / QK;
        let ng = n.div_ceil(GROUP);
        let row_bytes = k / ty.block_size() * ty.block_bytes();
        let column = |j: usize| {
            if j < n {
                Column::unpack(ty, &data[j * row_bytes..(j + 1) * row_bytes], k)
            } else {
                Column::zero(k)
            }
        };
        let blocks = ng * nb * GROUP;
        let packed = match layout {
            Layout::W8 | Layout::W8F { .. } => {
                let halves = matches!(layout, Layout::W8F { .. });
                let per = if halves { 2 } else { 1 };
                let mut qs = vec![0i8; ng * nb * 8 * 64];
                let mut d = vec![0f32; blocks * per];
                let mut m = vec![0f32; blocks * per];
                let mut wsum = vec![0i16; blocks * per];
                for g in 0..ng {
                    for c in 0..GROUP {
                        let col = column(g * GROUP + c);
                        for b in 0..nb {
                            for i in 0..8 {
                                for e in 0..4 {
                                    qs[((g * nb + b) * 8 + i) * 64 + c * 4 + e] =
                                        col.q[b * QK + 4 * i + e];
                                }
                            }
                            for h in 0..per {
                                let o = ((g * nb + b) * per + h) * GROUP + c;
                                let span = if halves { 16 } else { 32 };
                                let from = b * QK + h * span;
                                wsum[o] = col.q[from..from + span].iter().map(|&v| v as i16).sum();
                                d[o] = col.d[from / 16];
                                m[o] = col.m[from / 16];
                                if !halves {
                                    debug_assert_eq!(col.d[2 * b], col.d[2 * b + 1]);
                                    debug_assert_eq!(col.m[2 * b], 0.0);
                                }
                            }
                        }
                    }
                }
                if halves {
                    let offsets = layout == Layout::W8F { offsets: true };
                    Packed::W8F {
                        qs,
                        d,
                        m: if offsets { m } else { Vec::new() },
                        wsum,
                    }
                } else {
                    // Q8_0 / Q5_0 scales came from f16: converting back is exact.
                    Packed::W8 {
                        qs,
                        d: d.into_iter().map(f16::from_f32).collect(),
                        wsum,
                    }
                }
            }
            Layout::W4 | Layout::W4F => {
                // Nibbles 0..15: Q4_0 stores q − 8, so its offset becomes m − 8d.
                let shift = if ty == GgmlType::Q4_0 { 8 } else { 0 };
                let mut qs = vec![0u8; ng * nb * 4 * 64];
                let mut d = vec![0f32; blocks];
                let mut m = vec![0f32; blocks];
                for g in 0..ng {
                    for c in 0..GROUP {
                        let col = column(g * GROUP + c);
                        for b in 0..nb {
                            let o = (g * nb + b) * GROUP + c;
                            let nib = |e: usize| (col.q[b * QK + e] + shift) as u8;
                            for j in 0..4 {
                                for e in 0..4 {
                                    qs[((g * nb + b) * 4 + j) * 64 + c * 4 + e] =
                                        nib(4 * j + e) | (nib(16 + 4 * j + e) << 4);
                                }
                            }
                            debug_assert_eq!(col.d[2 * b], col.d[2 * b + 1]);
                            d[o] = col.d[2 * b];
                            m[o] = col.m[2 * b] - shift as f32 * col.d[2 * b];
                        }
                    }
                }
                if layout == Layout::W4F {
                    Packed::W4F { qs, d, m }
                } else {
                    // Q4_0 / Q4_1 scales are f16 values, and so is −8·d: exact.
                    Packed::W4 {
                        qs,
                        d: d.into_iter().map(f16::from_f32).collect(),
                        m: m.into_iter().map(f16::from_f32).collect(),
                    }
                }
            }
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
                (
                    Packed::W4F { qs, d, m },
                    Packed::W4F {
                        qs: q2,
                        d: d2,
                        m: m2,
                    },
                ) => {
                    qs.extend(q2);
                    d.extend(d2);
                    m.extend(m2);
                }
                (
                    Packed::W8F { qs, d, m, wsum },
                    Packed::W8F {
                        qs: q2,
                        d: d2,
                        m: m2,
                        wsum: s2,
                    },
                ) => {
                    assert_eq!(
                        m.is_empty(),
                        m2.is_empty(),
                        "concat of W8F with and without offsets"
                    );
                    qs.extend(q2);
                    d.extend(d2);
                    m.extend(m2);
                    wsum.extend(s2);
                }
                (Packed::F32 { w }, Packed::F32 { w: w2 }) => w.extend(w2),
                _ => panic!("concat of matrices with different layouts"),
            }
        }
        Matrix { n, k, packed }
    }

    /// Whether `self` and `other` can be concatenated.
    pub fn can_concat(&self, other: &Matrix) -> bool {
        let offsets = |p: &Packed| matches!(p, Packed::W8F { m, .. } if !m.is_empty());
        std::mem::discriminant(&self.packed) == std::mem::discriminant(&other.packed)
            && offsets(&self.packed) == offsets(&other.packed)
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
            Packed::W8F { qs, d, m, .. } => {
                for b in 0..nb {
                    for e in 0..QK {
                        let o = ((g * nb + b) * 2 + e / 16) * GROUP + c;
                        let v = w8_at(qs, nb, g, b, c, e) as f32 * d[o];
                        out[b * QK + e] = if m.is_empty() { v } else { v + m[o] };
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
            Packed::W4F { qs, d, m } => {
                for b in 0..nb {
                    let o = (g * nb + b) * GROUP + c;
                    for e in 0..QK {
                        out[b * QK + e] = w4_at(qs, nb, g, b, c, e) as f32 * d[o] + m[o];
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
            Packed::W4F { qs, d, m } => qs.len() + 4 * (d.len() + m.len()),
            Packed::W8F { qs, d, m, wsum } => qs.len() + 4 * (d.len() + m.len()) + 2 * wsum.len(),
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
/// bytes), scale `d` and `s = d·Σq` per block, `s16 = d·Σq` per half block.
pub struct ActQ8 {
    pub k: usize,
    pub qs: Vec<i8>,
    pub qu: Vec<u8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub s16: Vec<f32>,
}

impl ActQ8 {
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let m = x.len() / k;
        let nb = k / QK;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0f32; m * nb];
        let mut s16 = vec![0f32; 2 * m * nb];
        for (bi, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dd = amax / 127.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let mut sum = [0i32; 2];
            for (e, (q, v)) in qb.iter_mut().zip(xb).enumerate() {
                let r = v * id;
                // Round half away from zero (as `roundf`, without a libm call).
                let qi = ((r + 0.5f32.copysign(r)) as i32).clamp(-127, 127);
                *q = qi as i8;
                sum[e / 16] += qi;
            }
            d[bi] = dd;
            s[bi] = dd * (sum[0] + sum[1]) as f32;
            s16[2 * bi] = dd * sum[0] as f32;
            s16[2 * bi + 1] = dd * sum[1] as f32;
        }
        let qu = qs.iter().map(|&v| (v as u8) ^ 0x80).collect();
        ActQ8 {
            k,
            qs,
            qu,
            d,
            s,
            s16,
        }
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
    assert!(
        path.supported(),
        "kernel path {path:?} is not supported by this CPU"
    );
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
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => {
            // SAFETY: the path is only chosen when the CPU has these features.
            unsafe { avx2::group_tile(w, act, g, r0, rows, out) }
        }
        _ => portable::group_tile(w, act, g, r0, rows, out),
    }
}

/// Dot product of two float vectors with the process's kernel path (fixed order per path).
#[inline]
pub fn dot_f32(path: KernelPath, a: &[f32], b: &[f32]) -> f32 {
    assert!(
        path.supported(),
        "kernel path {path:?} is not supported by this CPU"
    );
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when the CPU has AVX-512.
        KernelPath::Avx512Vnni => unsafe { avx512::dot_f32(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when the CPU has AVX2 and FMA.
        KernelPath::Avx2 => unsafe { avx2::dot_f32(a, b) },
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

    /// One matrix: rows dequantize as the file's format does, the product matches f64 within
    /// the activation quantization error, every row split gives the same bits, and the portable
    /// kernel gives the same bits as the SIMD one.
    fn check(ty: GgmlType, bytes: &[u8], n: usize, k: usize) {
        let wdeq = crate::quant::dequantize_vec(ty, bytes, n * k);
        let mat = Matrix::from_ggml(ty, bytes, n, k, false);
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
        // Every kernel path this CPU has gives the same bits (the portable one included).
        for path in KernelPath::available() {
            let mut o = vec![0f32; 11 * n];
            matmul_with(path, &x, &mat, &mut o);
            assert!(
                o.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?}: {path:?} differs from {:?}",
                kernel_path()
            );
        }
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
                check(ty, &quantize(ty, &wf).unwrap(), n, k);
            }
            for ty in [GgmlType::Q5_0, GgmlType::Q5_1] {
                check(
                    ty,
                    &crate::quant::kquants_random_blocks(ty, n * k / 32, 5),
                    n,
                    k,
                );
            }
        }
        // K-quants: rows of whole 256-element super-blocks.
        for &(n, k) in &[(48usize, 256usize), (37, 512)] {
            for ty in [
                GgmlType::Q2_K,
                GgmlType::Q3_K,
                GgmlType::Q4_K,
                GgmlType::Q5_K,
                GgmlType::Q6_K,
                GgmlType::Q8_K,
            ] {
                check(
                    ty,
                    &crate::quant::kquants_random_blocks(ty, n * k / 256, 9),
                    n,
                    k,
                );
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
            for path in KernelPath::available() {
                let got = dot_f32(path, &a, &b);
                assert!(
                    (got as f64 - want).abs() < 1e-3,
                    "{path:?} len {len}: {got} vs {want}"
                );
            }
            let c: Vec<f32> = a.iter().map(|v| (v * 0.731).sin()).collect();
            let d: Vec<f32> = b.iter().map(|v| (v * 1.37).cos()).collect();
            for path in KernelPath::available() {
                assert_eq!(
                    dot_f32(KernelPath::Portable, &c, &d).to_bits(),
                    dot_f32(path, &c, &d).to_bits(),
                    "len {len}: {path:?} differs from the portable path"
                );
            }
        }
    }
}
