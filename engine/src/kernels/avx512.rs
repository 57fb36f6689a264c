//! AVX-512 VNNI kernels over 16-column groups. A tile of `R` activation rows shares each weight
//! load; every row has its own accumulators and sees the same operation sequence for every `R`,
//! so results do not depend on the tile size (batch invariance).

use std::arch::x86_64::*;

use super::{ActQ8, Matrix, Packed, GROUP, MAX_TILE};
use crate::quant::QK;

/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni and fma.
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
        Packed::W8 { qs, d, wsum } => {
            dispatch_rows!(
                rows,
                w8_group,
                qs[g * nb * 512..].as_ptr(),
                d[o..].as_ptr() as *const u16,
                wsum[o..].as_ptr(),
                nb,
                act,
                r0,
                out
            )
        }
        Packed::W4 { qs, d, m } => {
            dispatch_rows!(
                rows,
                w4_group,
                qs[g * nb * 256..].as_ptr(),
                Scales::F16(d[o..].as_ptr() as *const u16, m[o..].as_ptr() as *const u16),
                nb,
                act,
                r0,
                out
            )
        }
        Packed::W4F { qs, d, m } => {
            dispatch_rows!(
                rows,
                w4_group,
                qs[g * nb * 256..].as_ptr(),
                Scales::F32(d[o..].as_ptr(), m[o..].as_ptr()),
                nb,
                act,
                r0,
                out
            )
        }
        Packed::W8F { qs, d, m, wsum } => {
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
                wsum[2 * o..].as_ptr(),
                nb,
                act,
                r0,
                out
            )
        }
        Packed::F32 { .. } => unreachable!("float weights use dot_f32"),
    }
}

/// 16 f16 values widened to f32 (exact).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_f16(p: *const u16) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const _))
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bcast4(p: *const u8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn w8_group<const R: usize>(
    qs: *const i8,
    d: *const u16,
    wsum: *const i16,
    nb: usize,
    act: &ActQ8,
    r0: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = act.k;
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let wb = qs.add(b * 512);
        let mut wv = [_mm512_setzero_si512(); 8];
        for (i, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(wb.add(64 * i) as *const _);
        }
        let dw = load_f16(d.add(b * GROUP));
        // −128·Σw: the correction for feeding the activations as x + 128 (unsigned).
        let ws = _mm512_cvtepi16_epi32(_mm256_loadu_si256(wsum.add(b * GROUP) as *const _));
        let cv = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(ws, 7));
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = r0 + r;
            let xp = act.qu.as_ptr().add(row * k + b * QK);
            let mut dot = cv;
            for (i, v) in wv.iter().enumerate() {
                dot = _mm512_dpbusd_epi32(dot, bcast4(xp.add(4 * i)), *v);
            }
            let t = _mm512_mul_ps(
                _mm512_cvtepi32_ps(dot),
                _mm512_set1_ps(*act.d.get_unchecked(row * nb + b)),
            );
            *acc = _mm512_fmadd_ps(t, dw, *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn w4_group<const R: usize>(
    qs: *const u8,
    scales: Scales,
    nb: usize,
    act: &ActQ8,
    r0: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = act.k;
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let wb = qs.add(b * 256);
        let mut wv = [_mm512_setzero_si512(); 8];
        for j in 0..4 {
            let v = _mm512_loadu_si512(wb.add(64 * j) as *const _);
            wv[j] = _mm512_and_si512(v, low);
            wv[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        let (dw, mw) = scales.load(b * GROUP);
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = r0 + r;
            let xp = (act.qs.as_ptr() as *const u8).add(row * k + b * QK);
            let mut dot = _mm512_setzero_si512();
            for (i, v) in wv.iter().enumerate() {
                dot = _mm512_dpbusd_epi32(dot, *v, bcast4(xp.add(4 * i)));
            }
            let t = _mm512_mul_ps(
                _mm512_cvtepi32_ps(dot),
                _mm512_set1_ps(*act.d.get_unchecked(row * nb + b)),
            );
            *acc = _mm512_fmadd_ps(t, dw, *acc);
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(*act.s.get_unchecked(row * nb + b)), mw, *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}

/// Per-block scale and offset of a `W4` (f16) or `W4F` (f32) matrix.
#[derive(Clone, Copy)]
enum Scales {
    F16(*const u16, *const u16),
    F32(*const f32, *const f32),
}

impl Scales {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(self, at: usize) -> (__m512, __m512) {
        match self {
            Scales::F16(d, m) => (load_f16(d.add(at)), load_f16(m.add(at))),
            Scales::F32(d, m) => (_mm512_loadu_ps(d.add(at)), _mm512_loadu_ps(m.add(at))),
        }
    }
}

/// `W8F`: like `w8_group`, with a scale (and an offset unless `m` is null) per half block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn w8f_group<const R: usize>(
    qs: *const i8,
    d: *const f32,
    m: *const f32,
    wsum: *const i16,
    nb: usize,
    act: &ActQ8,
    r0: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = act.k;
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let wb = qs.add(b * 512);
        let mut wv = [_mm512_setzero_si512(); 8];
        for (i, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(wb.add(64 * i) as *const _);
        }
        let mut dw = [_mm512_setzero_ps(); 2];
        let mut cv = [_mm512_setzero_si512(); 2];
        let mut mw = [_mm512_setzero_ps(); 2];
        for h in 0..2 {
            let at = (2 * b + h) * GROUP;
            dw[h] = _mm512_loadu_ps(d.add(at));
            let ws = _mm512_cvtepi16_epi32(_mm256_loadu_si256(wsum.add(at) as *const _));
            cv[h] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(ws, 7));
            if !m.is_null() {
                mw[h] = _mm512_loadu_ps(m.add(at));
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = r0 + r;
            let xp = act.qu.as_ptr().add(row * k + b * QK);
            let dx = _mm512_set1_ps(*act.d.get_unchecked(row * nb + b));
            for h in 0..2 {
                let mut dot = cv[h];
                for (i, w) in wv.iter().enumerate().skip(4 * h).take(4) {
                    dot = _mm512_dpbusd_epi32(dot, bcast4(xp.add(4 * i)), *w);
                }
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), dx);
                *acc = _mm512_fmadd_ps(t, dw[h], *acc);
            }
            if !m.is_null() {
                for (h, mw) in mw.iter().enumerate() {
                    let s = *act.s16.get_unchecked(2 * (row * nb + b) + h);
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(s), *mw, *acc);
                }
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}

/// 16-lane dot product; lanes summed in order, then the tail (same roundings as the portable
/// version).
///
/// # Safety
/// The CPU must support avx512f and fma.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / 16;
    let mut acc = _mm512_setzero_ps();
    for c in 0..full {
        acc = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.as_ptr().add(16 * c)),
            _mm512_loadu_ps(b.as_ptr().add(16 * c)),
            acc,
        );
    }
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s = 0f32;
    for l in lanes {
        s += l;
    }
    for i in full * 16..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}
