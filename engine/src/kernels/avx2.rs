//! AVX2 kernels, for x86-64 CPUs without AVX-512 VNNI (AMD Zen 2/3, most Intel client CPUs, older
//! servers). The same 16-column groups as the AVX-512 kernels, as two 8-lane halves; a tile of `R`
//! rows shares each weight load and every row sees the same operation sequence for every `R`
//! (batch invariance).
//!
//! The integer dot products are exact, as with VNNI: `vpmaddubsw` multiplies unsigned by signed
//! bytes and adds pairs into saturating 16-bit lanes, so the weights go in as `|w|` (at most 128)
//! against `x·sign(w)` (|x| ≤ 127): a pair is at most 2·128·127 = 32512 < 2^15, never saturated.
//! Nibbles (≤ 15) go in as they are. The float combination is the AVX-512 and portable kernels'
//! lane for lane, so all three paths give the same bits.

use std::arch::x86_64::*;

use super::{ActQ8, Matrix, Packed, GROUP, MAX_TILE};
use crate::quant::QK;

/// # Safety
/// The CPU must support avx2, fma and f16c.
pub(super) unsafe fn group_tile(
    w: &Matrix,
    act: &ActQ8,
    g: usize,
    r0: usize,
    rows: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let nb = w.k / QK;
    let o = g * nb * GROUP;
    match &w.packed {
        Packed::W8 { qs, d, .. } => dispatch_rows!(
            rows,
            w8_group,
            qs[g * nb * 512..].as_ptr(),
            Scales::F16(d[o..].as_ptr() as *const u16, std::ptr::null()),
            nb,
            act,
            r0,
            out
        ),
        Packed::W4 { qs, d, m } => dispatch_rows!(
            rows,
            w4_group,
            qs[g * nb * 256..].as_ptr(),
            Scales::F16(d[o..].as_ptr() as *const u16, m[o..].as_ptr() as *const u16),
            nb,
            act,
            r0,
            out
        ),
        Packed::W4F { qs, d, m } => dispatch_rows!(
            rows,
            w4_group,
            qs[g * nb * 256..].as_ptr(),
            Scales::F32(d[o..].as_ptr(), m[o..].as_ptr()),
            nb,
            act,
            r0,
            out
        ),
        Packed::W8F { qs, d, m, .. } => {
            let m = if m.is_empty() {
                std::ptr::null()
            } else {
                m[2 * o..].as_ptr()
            };
            dispatch_rows!(
                rows,
                w8f_group,
                qs[g * nb * 512..].as_ptr(),
                d[2 * o..].as_ptr(),
                m,
                nb,
                act,
                r0,
                out
            )
        }
        Packed::F32 { .. } => unreachable!("float weights use dot_f32"),
    }
}

/// 16 per-column values of a group as two 8-lane halves.
type Pair = [__m256; 2];

/// Per-column scale and offset vectors: f16 (`W8`, `W4`) or f32 (`W4F`); a null offset pointer
/// means none.
#[derive(Clone, Copy)]
enum Scales {
    F16(*const u16, *const u16),
    F32(*const f32, *const f32),
}

impl Scales {
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load(self, at: usize) -> (Pair, Pair) {
        let zero = _mm256_setzero_ps();
        match self {
            Scales::F16(d, m) => {
                let d = load16_f16(d.add(at));
                let m = if m.is_null() {
                    [zero; 2]
                } else {
                    load16_f16(m.add(at))
                };
                (d, m)
            }
            Scales::F32(d, m) => (load16(d.add(at)), load16(m.add(at))),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load16_f16(p: *const u16) -> Pair {
    [
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const _)),
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(8) as *const _)),
    ]
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load16(p: *const f32) -> Pair {
    [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Σ over each lane's 4 bytes of `w · x` (signed × signed), exact (see the module doc).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot4_signed(w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Σ over each lane's 4 bytes of `w · x` (unsigned nibbles × signed), exact.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot4_nibbles(w: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store<const R: usize>(acc: &[Pair; R], out: &mut [[f32; GROUP]; MAX_TILE]) {
    for (o, a) in out.iter_mut().zip(acc) {
        _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
    }
}

/// `W8`: signed bytes, an f16 scale per block of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn w8_group<const R: usize>(
    qs: *const i8,
    scales: Scales,
    nb: usize,
    act: &ActQ8,
    r0: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = act.k;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        let wb = qs.add(b * 512);
        let (dw, _) = scales.load(b * GROUP);
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = r0 + r;
            let xp = act.qs.as_ptr().add(row * k + b * QK);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(row * nb + b));
            for (h, acc) in acc.iter_mut().enumerate() {
                let mut dot = _mm256_setzero_si256();
                for i in 0..8 {
                    let wv = _mm256_loadu_si256(wb.add(64 * i + 32 * h) as *const _);
                    dot = _mm256_add_epi32(dot, dot4_signed(wv, bcast4(xp.add(4 * i))));
                }
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx);
                *acc = _mm256_fmadd_ps(t, dw[h], *acc);
            }
        }
    }
    store(&acc, out);
}

/// `W4`/`W4F`: nibbles with a scale and an offset per block of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn w4_group<const R: usize>(
    qs: *const u8,
    scales: Scales,
    nb: usize,
    act: &ActQ8,
    r0: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = act.k;
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        let wb = qs.add(b * 256);
        let (dw, mw) = scales.load(b * GROUP);
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = r0 + r;
            let xp = act.qs.as_ptr().add(row * k + b * QK);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(row * nb + b));
            let sx = _mm256_set1_ps(*act.s.get_unchecked(row * nb + b));
            for (h, acc) in acc.iter_mut().enumerate() {
                let mut dot = _mm256_setzero_si256();
                for j in 0..4 {
                    let v = _mm256_loadu_si256(wb.add(64 * j + 32 * h) as *const _);
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    dot = _mm256_add_epi32(dot, dot4_nibbles(lo, bcast4(xp.add(4 * j))));
                    dot = _mm256_add_epi32(dot, dot4_nibbles(hi, bcast4(xp.add(16 + 4 * j))));
                }
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx);
                *acc = _mm256_fmadd_ps(t, dw[h], *acc);
                *acc = _mm256_fmadd_ps(sx, mw[h], *acc);
            }
        }
    }
    store(&acc, out);
}

/// `W8F`: signed bytes with an f32 scale (and an offset unless `m` is null) per half block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn w8f_group<const R: usize>(
    qs: *const i8,
    d: *const f32,
    m: *const f32,
    nb: usize,
    act: &ActQ8,
    r0: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = act.k;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        let wb = qs.add(b * 512);
        // Per half block (inputs 0..16, 16..32): scales and offsets of the 16 columns.
        let dw = [
            load16(d.add(2 * b * GROUP)),
            load16(d.add((2 * b + 1) * GROUP)),
        ];
        let mw = if m.is_null() {
            None
        } else {
            Some([
                load16(m.add(2 * b * GROUP)),
                load16(m.add((2 * b + 1) * GROUP)),
            ])
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = r0 + r;
            let xp = act.qs.as_ptr().add(row * k + b * QK);
            let dx = _mm256_set1_ps(*act.d.get_unchecked(row * nb + b));
            for (h, acc) in acc.iter_mut().enumerate() {
                for (half, dw) in dw.iter().enumerate() {
                    let mut dot = _mm256_setzero_si256();
                    for i in 4 * half..4 * half + 4 {
                        let wv = _mm256_loadu_si256(wb.add(64 * i + 32 * h) as *const _);
                        dot = _mm256_add_epi32(dot, dot4_signed(wv, bcast4(xp.add(4 * i))));
                    }
                    let t = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx);
                    *acc = _mm256_fmadd_ps(t, dw[h], *acc);
                }
                if let Some(mw) = &mw {
                    for (half, mw) in mw.iter().enumerate() {
                        let s = *act.s16.get_unchecked(2 * (row * nb + b) + half);
                        *acc = _mm256_fmadd_ps(_mm256_set1_ps(s), mw[h], *acc);
                    }
                }
            }
        }
    }
    store(&acc, out);
}

/// 16-lane dot product as two 8-lane halves; lanes summed in order, then the tail (the portable
/// version's roundings).
///
/// # Safety
/// The CPU must support avx2 and fma.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 16;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in 0..full {
        let (pa, pb) = (a.as_ptr().add(16 * c), b.as_ptr().add(16 * c));
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8)), hi);
    }
    let mut lanes = [0f32; 16];
    _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    let mut s = 0f32;
    for l in lanes {
        s += l;
    }
    for i in full * 16..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}
