//! ggml's 5-bit block types (Q5_0, Q5_1) and K-quants (Q2_K..Q6_K, Q8_K): one block unpacker for
//! every quantized type (the dequantizers and the matrix kernels both read blocks through it) and
//! ports of ggml's reference quantizers (`quantize_row_*_ref` in `ggml/src/ggml-quants.c`, the
//! code `llama-quantize` runs when no importance matrix is given), so that the bytes match ggml's.
//!
//! Floating-point order: every expression below evaluates in f32 in the order ggml's C does, with
//! no fused multiply-adds (rustc never contracts; ggml-base is built for baseline x86-64 without
//! FMA, and where a product feeds an addition in the dequantizers it is exact anyway, see
//! [`Unpacked`]).

use super::{GgmlType, QK};
use half::f16;

/// Elements per K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// One block's weights as small integers with affine scales per 16 elements:
/// w[i] = d[i / 16] * q[i] + m[i / 16], computed in f32 exactly as ggml's dequantization does.
///
/// Types without a min (Q8_0, Q4_0, Q5_0, Q3_K, Q6_K, Q8_K) get m = -0.0: it equals 0.0, and
/// `x + (-0.0)` is `x` bit for bit (a +0.0 would turn ggml's -0.0 results into +0.0). Where ggml
/// subtracts a min (`dl * q - ml`) m is `-ml`, and `a - b` is `a + (-b)` in IEEE arithmetic.
///
/// Every d (and m) is the product ggml computes: an f16 converted to f32 times a small integer
/// scale (at most 8 bits), which is exact in f32 (11 + 8 significant bits < 24); Q8_K's d is its
/// stored f32. For every type with a min, d * q is exact too (at most 22 significant bits), so a
/// fused multiply-add could not change the result either.
#[derive(Clone, Debug)]
pub struct Unpacked {
    pub q: [i8; 256],
    pub d: [f32; 16],
    pub m: [f32; 16],
}

impl Default for Unpacked {
    fn default() -> Self {
        Unpacked {
            q: [0; 256],
            d: [0.0; 16],
            m: [-0.0; 16],
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// ggml's `get_scale_min_k4`: the j-th 6-bit scale and min of a Q4_K/Q5_K block's 12 scale bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The j-th 6-bit scale (0..64, before the -32 offset) of a Q3_K block's 12 scale bytes.
fn scale_q3k(j: usize, s: &[u8]) -> u8 {
    let lo = if j < 8 { s[j] & 0xf } else { s[j - 8] >> 4 };
    lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)
}

/// Unpacks one block of `ty` (a quantized type other than the float ones) from its bytes;
/// returns the number of elements (32 or 256). Only the first n/16 entries of d and m are used.
pub fn unpack_block(ty: GgmlType, block: &[u8], out: &mut Unpacked) -> usize {
    let b = &block[..ty.block_bytes()];
    let (q, d, m) = (&mut out.q, &mut out.d, &mut out.m);
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
            panic!("unpack_block: {ty:?} is not a block-quantized type")
        }
        GgmlType::Q8_0 => {
            let s = f16_at(b, 0);
            for (qi, &v) in q.iter_mut().zip(&b[2..2 + QK]) {
                *qi = v as i8;
            }
            d[..2].fill(s);
            m[..2].fill(-0.0);
            QK
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
            let five = matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1);
            let s = f16_at(b, 0);
            let min = if has_min { f16_at(b, 2) } else { -0.0 };
            let mut at = if has_min { 4 } else { 2 };
            let qh = if five {
                at += 4;
                u32::from_le_bytes(b[at - 4..at].try_into().unwrap())
            } else {
                0
            };
            // Unsigned levels are offset by half their range when there is no min.
            let offset: i32 = match (has_min, five) {
                (true, _) => 0,
                (false, false) => 8,
                (false, true) => 16,
            };
            for j in 0..QK / 2 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                q[j] = (((b[at + j] & 0xf) as u32 | h0) as i32 - offset) as i8;
                q[j + QK / 2] = (((b[at + j] >> 4) as u32 | h1) as i32 - offset) as i8;
            }
            d[..2].fill(s);
            m[..2].fill(min);
            QK
        }
        GgmlType::Q2_K => {
            // scales[16] | qs[64] | d | dmin
            let (sc, qs) = (&b[..16], &b[16..80]);
            let (dd, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (i, &s) in sc.iter().enumerate() {
                d[i] = dd * (s & 0xf) as f32;
                m[i] = -(dmin * (s >> 4) as f32);
            }
            for (half, qh) in qs.chunks_exact(32).enumerate() {
                for j in 0..4 {
                    for l in 0..32 {
                        q[128 * half + 32 * j + l] = ((qh[l] >> (2 * j)) & 3) as i8;
                    }
                }
            }
            QK_K
        }
        GgmlType::Q3_K => {
            // hmask[32] | qs[64] | scales[12] | d
            let (hm, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
            let dd = f16_at(b, 108);
            for (i, di) in d.iter_mut().enumerate() {
                *di = dd * (scale_q3k(i, sc) as i32 - 32) as f32;
            }
            m.fill(-0.0);
            for (half, ql) in qs.chunks_exact(32).enumerate() {
                for j in 0..4 {
                    let bit = 1u8 << (4 * half + j);
                    for l in 0..32 {
                        let low = ((ql[l] >> (2 * j)) & 3) as i8;
                        q[128 * half + 32 * j + l] = low - if hm[l] & bit != 0 { 0 } else { 4 };
                    }
                }
            }
            QK_K
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // d | dmin | scales[12] | (Q5_K: qh[32]) | qs[128]
            let (dd, dmin, sc) = (f16_at(b, 0), f16_at(b, 2), &b[4..16]);
            let five = ty == GgmlType::Q5_K;
            let (qh, ql) = if five {
                (&b[16..48], &b[48..176])
            } else {
                (&b[..0], &b[16..144])
            };
            for j in 0..8 {
                let (s, mn) = scale_min_k4(j, sc);
                let (dj, mj) = (dd * s as f32, -(dmin * mn as f32));
                d[2 * j..2 * j + 2].fill(dj);
                m[2 * j..2 * j + 2].fill(mj);
            }
            for c in 0..4 {
                for l in 0..32 {
                    let v = ql[32 * c + l];
                    let (h0, h1) = if five {
                        ((qh[l] >> (2 * c)) & 1, (qh[l] >> (2 * c + 1)) & 1)
                    } else {
                        (0, 0)
                    };
                    q[64 * c + l] = ((v & 0xf) | (h0 << 4)) as i8;
                    q[64 * c + 32 + l] = ((v >> 4) | (h1 << 4)) as i8;
                }
            }
            QK_K
        }
        GgmlType::Q6_K => {
            // ql[128] | qh[64] | scales[16] (int8) | d
            let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
            let dd = f16_at(b, 208);
            for (i, di) in d.iter_mut().enumerate() {
                *di = dd * (sc[i] as i8) as f32;
            }
            m.fill(-0.0);
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let y = &mut q[128 * half..];
                for l in 0..32 {
                    let h = qh[l];
                    y[l] = ((ql[l] & 0xf) | ((h & 3) << 4)) as i8 - 32;
                    y[l + 32] = ((ql[l + 32] & 0xf) | (((h >> 2) & 3) << 4)) as i8 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
                }
            }
            QK_K
        }
        GgmlType::Q8_K => {
            // d (f32) | qs[256] | bsums[16] (int16, unused here)
            let dd = f32::from_le_bytes(b[..4].try_into().unwrap());
            for (qi, &v) in q.iter_mut().zip(&b[4..4 + QK_K]) {
                *qi = v as i8;
            }
            d.fill(dd);
            m.fill(-0.0);
            QK_K
        }
    }
}

/// Dequantizes whole blocks of a quantized `ty` (ggml's `dequantize_row_*`, bit for bit).
pub(super) fn dequantize_blocks(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    let mut u = Unpacked::default();
    for (o, b) in out
        .chunks_exact_mut(ty.block_size())
        .zip(data.chunks_exact(ty.block_bytes()))
    {
        let n = unpack_block(ty, b, &mut u);
        for (i, (oi, &q)) in o[..n].iter_mut().zip(&u.q[..n]).enumerate() {
            *oi = u.d[i / 16] * q as f32 + u.m[i / 16];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reference quantizers.

/// ggml's `GROUP_MAX_EPS`: below this absolute max a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the f32 mantissa (valid for |x| < 2^22).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// The value of largest magnitude (the first one on ties), and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `make_qx_quants` without quant weights: levels `L[i]` in 0..2*nmax, returns the scale.
fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], rmse_type: i32) -> f32 {
    let n = x.len();
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for (li, &v) in l_out.iter_mut().zip(x) {
            *li = (nmax + level(iscale, v)) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |v: f32| match rmse_type {
        1 => v * v,
        2 => 1.0,
        3 => v.abs(),
        _ => v.abs().sqrt(),
    };
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l_out.iter_mut().zip(x) {
        let l = level(iscale, v);
        *li = (l + nmax) as i8;
        let w = weight(v);
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = weight(v);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l_out.iter_mut().zip(x) {
                *li = (nmax + level(iscale, v)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` (with `do_rmse`): levels in 0..2*nmax, returns the scale.
fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l_out.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for li in l_out[..n].iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `make_qkx2_quants`: levels in 0..=nmax with a min, fitted by a weighted search over
/// `nstep + 1` candidate scales. Returns (scale, -min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn check_len(x: &[f32], y: &[u8], ty: GgmlType) -> usize {
    let nb = x.len() / ty.block_size();
    assert!(
        x.len().is_multiple_of(ty.block_size()) && y.len() == nb * ty.block_bytes(),
        "{ty:?}: {} values into {} bytes",
        x.len(),
        y.len()
    );
    nb
}

/// ggml's `quantize_row_q5_0_ref`.
pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q5_0);
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(22)) {
        let (max, _) = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(yb, 0, d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // (int8_t) truncation of a value in [0.5, 32.5], then capped at 31.
            let q0 = ((xb[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = ((xb[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            yb[6 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
            qh |= ((q0 as u32 & 0x10) >> 4) << j;
            qh |= ((q1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        yb[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// ggml's `quantize_row_q5_1_ref`.
pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q5_1);
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(24)) {
        let min = xb.iter().fold(f32::MAX, |a, &v| if v < a { v } else { a });
        let max = xb.iter().fold(-f32::MAX, |a, &v| if v > a { v } else { a });
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(yb, 0, d);
        put_f16(yb, 2, min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = ((xb[j] - min) * id + 0.5) as u8;
            let q1 = ((xb[j + QK / 2] - min) * id + 0.5) as u8;
            yb[8 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
            qh |= ((q0 as u32 & 0x10) >> 4) << j;
            qh |= ((q1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        yb[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// ggml's `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q2_K);
    const Q4SCALE: f32 = 15.0;
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(84)) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xs = &xb[16 * j..16 * j + 16];
            let mut weights = [0f32; 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (s, m) = make_qkx2_quants(
                xs,
                &weights,
                3,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let sc = &mut yb[..16];
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            put_f16(yb, 80, max_scale / Q4SCALE);
        } else {
            sc.fill(0);
            put_f16(yb, 80, 0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                yb[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            put_f16(yb, 82, max_min / Q4SCALE);
        } else {
            put_f16(yb, 82, 0.0);
        }
        let (dd, dmin) = (f16_at(yb, 80), f16_at(yb, 82));
        for j in 0..16 {
            let d = dd * (yb[j] & 0xf) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin * (yb[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((xb[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut yb[16..80]);
    }
}

/// Packs 256 2-bit levels as ggml does: byte 32*h + l holds elements 128*h + l + 32*k at bits 2k.
fn pack_2bit(l: &[u8], qs: &mut [u8]) {
    for h in 0..2 {
        for i in 0..32 {
            let e = 128 * h + i;
            qs[32 * h + i] = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
        }
    }
}

/// ggml's `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q3_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(110)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(&xb[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        yb[96..108].fill(0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                // int -> int8_t conversion, clamp, +32: a 6-bit value.
                let ls = (nearest_int(iscale * scales[j]) as i8 as i32).clamp(-32, 31) + 32;
                let sc = &mut yb[96..108];
                if j < 8 {
                    sc[j] = (ls & 0xf) as u8;
                } else {
                    sc[j - 8] |= ((ls & 0xf) << 4) as u8;
                }
                sc[j % 4 + 8] |= ((ls >> 4) << (2 * (j / 4))) as u8;
            }
            put_f16(yb, 108, 1.0 / iscale);
        } else {
            put_f16(yb, 108, 0.0);
        }
        let dd = f16_at(yb, 108);
        for j in 0..16 {
            let sc = scale_q3k(j, &yb[96..108]) as i8 - 32;
            let d = dd * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(xb[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        // The high bit of element j goes to hmask[j % 32], bit j / 32.
        let mut lu = [0u8; QK_K];
        yb[..32].fill(0);
        for (j, &v) in l.iter().enumerate() {
            let mut v = v as u8;
            if v > 3 {
                yb[j % 32] |= 1 << (j / 32);
                v -= 4;
            }
            lu[j] = v;
        }
        pack_2bit(&lu, &mut yb[32..96]);
    }
}

/// The per-32 scale/min search shared by Q4_K and Q5_K, then their packing of the 6-bit scales
/// and mins into 12 bytes, d and dmin, and the requantized levels. Returns the levels.
fn quantize_k4_scales(xb: &[f32], yb: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &xb[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut yb[4..16];
    for j in 0..8 {
        // int -> uint8_t conversion (wrapping), then capped at 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(yb, 0, max_scale / 63.0);
    put_f16(yb, 2, max_min / 63.0);
    let (dd, dmin) = (f16_at(yb, 0), f16_at(yb, 2));
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &yb[4..16]);
        let d = dd * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((xb[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

/// ggml's `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q4_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(144)) {
        let l = quantize_k4_scales(xb, yb, 15, -1.0, 20);
        for c in 0..4 {
            for i in 0..32 {
                yb[16 + 32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// ggml's `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q5_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(176)) {
        let l = quantize_k4_scales(xb, yb, 31, -0.5, 15);
        yb[16..48].fill(0);
        for c in 0..4 {
            for i in 0..32 {
                let (mut l1, mut l2) = (l[64 * c + i], l[64 * c + 32 + i]);
                if l1 > 15 {
                    l1 -= 16;
                    yb[16 + i] |= 1 << (2 * c);
                }
                if l2 > 15 {
                    l2 -= 16;
                    yb[16 + i] |= 2 << (2 * c);
                }
                yb[48 + 32 * c + i] = l1 | (l2 << 4);
            }
        }
    }
}

/// ggml's `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q6_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(210)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let s = make_qx_quants(&xb[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..], 1);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            yb.fill(0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(yb, 208, 1.0 / iscale);
        for ib in 0..16 {
            yb[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        let dd = f16_at(yb, 208);
        for j in 0..16 {
            let d = dd * (yb[192 + j] as i8) as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(xb[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let e = 128 * h + i;
                let q = [l[e], l[e + 32], l[e + 64], l[e + 96]].map(|v| v as u8);
                yb[64 * h + i] = (q[0] & 0xf) | ((q[2] & 0xf) << 4);
                yb[64 * h + 32 + i] = (q[1] & 0xf) | ((q[3] & 0xf) << 4);
                yb[128 + 32 * h + i] =
                    (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
    }
}

/// ggml's `quantize_row_q8_K_ref` (its all-zero block leaves `bsums` unwritten; here they are 0).
pub fn quantize_row_q8_k_ref(x: &[f32], y: &mut [u8]) {
    check_len(x, y, GgmlType::Q8_K);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(292)) {
        let (max, amax) = signed_absmax(xb);
        if amax == 0.0 {
            yb.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for j in 0..QK_K {
            yb[4 + j] = nearest_int(iscale * xb[j]).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let sum: i32 = yb[4 + 16 * j..4 + 16 * j + 16]
                .iter()
                .map(|&v| v as i8 as i32)
                .sum();
            yb[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        yb[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// Random but valid blocks of `ty` (sane scales), for tests of the kernels.
#[cfg(test)]
pub(crate) fn random_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (f16s, f32s): (&[usize], &[usize]) = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q5_K => {
            if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) {
                (&[0, 2], &[])
            } else {
                (&[0], &[])
            }
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => (&[0, 2], &[]),
        GgmlType::Q2_K => (&[80, 82], &[]),
        GgmlType::Q3_K => (&[108], &[]),
        GgmlType::Q6_K => (&[208], &[]),
        GgmlType::Q8_K => (&[], &[0]),
        _ => panic!("{ty:?} has no blocks"),
    };
    let bb = ty.block_bytes();
    let mut out = Vec::with_capacity(n_blocks * bb);
    for _ in 0..n_blocks {
        let mut b: Vec<u8> = (0..bb).map(|_| next() as u8).collect();
        let mut scale = || ((next() % 2001) as f32 / 1000.0 - 1.0) * 0.02;
        for &o in f16s {
            b[o..o + 2].copy_from_slice(&f16::from_f32(scale()).to_le_bytes());
        }
        for &o in f32s {
            b[o..o + 4].copy_from_slice(&scale().to_le_bytes());
        }
        out.extend(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize_vec, quantize};
    use super::*;

    const TYPES: [GgmlType; 11] = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    /// A deterministic xorshift stream of f32 in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    #[test]
    fn block_sizes_and_ids_match_ggml() {
        for (ty, id, bs, bytes) in [
            (GgmlType::Q5_0, 6, 32, 22),
            (GgmlType::Q5_1, 7, 32, 24),
            (GgmlType::Q2_K, 10, 256, 84),
            (GgmlType::Q3_K, 11, 256, 110),
            (GgmlType::Q4_K, 12, 256, 144),
            (GgmlType::Q5_K, 13, 256, 176),
            (GgmlType::Q6_K, 14, 256, 210),
            (GgmlType::Q8_K, 15, 256, 292),
        ] {
            assert_eq!(
                (ty.id(), ty.block_size(), ty.block_bytes()),
                (id, bs, bytes)
            );
            assert_eq!(GgmlType::from_id(id).unwrap(), ty);
        }
        let err = GgmlType::from_id(9).unwrap_err().to_string();
        assert!(err.contains("Q8_1") && err.contains("Q4_K"), "{err}");
        assert!(GgmlType::from_id(20).is_err());
    }

    #[test]
    fn quantize_dequantize_roundtrip_error_is_bounded() {
        // Bounds on the max and rms error for data uniform in [-1, 1) (a little above what the
        // quantizers reach: each type's step is about 2 / 2^bits, halved by rounding).
        let mut last_rms = f32::INFINITY;
        for (ty, max_tol, rms_tol) in [
            (GgmlType::Q8_0, 0.005, 0.003),
            (GgmlType::Q4_0, 0.13, 0.045),
            (GgmlType::Q4_1, 0.07, 0.04),
            (GgmlType::Q5_0, 0.065, 0.022),
            (GgmlType::Q5_1, 0.035, 0.02),
            (GgmlType::Q8_K, 0.005, 0.003),
            (GgmlType::Q2_K, 0.45, 0.15),
            (GgmlType::Q3_K, 0.25, 0.085),
            (GgmlType::Q4_K, 0.1, 0.036),
            (GgmlType::Q5_K, 0.055, 0.018),
            (GgmlType::Q6_K, 0.02, 0.009),
        ] {
            let x = noise(ty.id() as u64, 4 * QK_K);
            let q = quantize(ty, &x).unwrap();
            assert_eq!(q.len(), x.len() / ty.block_size() * ty.block_bytes());
            let y = dequantize_vec(ty, &q, x.len());
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let rms = (x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / x.len() as f32)
                .sqrt();
            assert!(
                err < max_tol && rms < rms_tol,
                "{ty:?}: max error {err}, rms {rms}"
            );
            // The K-quants (listed from 2 to 6 bits) get better with every bit.
            if ty.block_size() == QK_K && ty != GgmlType::Q8_K {
                assert!(rms < last_rms, "{ty:?}: rms {rms} not below {last_rms}");
                last_rms = rms;
            }
            // Zeros stay zeros.
            let z = dequantize_vec(ty, &quantize(ty, &vec![0.0; QK_K]).unwrap(), QK_K);
            assert!(z.iter().all(|&v| v == 0.0), "{ty:?}");
        }
    }

    #[test]
    fn unpack_agrees_with_dequantize_and_stays_in_range() {
        for ty in TYPES {
            let x: Vec<f32> = noise(100 + ty.id() as u64, 2 * QK_K)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1.0 + (i / 16) as f32) + if i % 64 < 32 { 0.3 } else { 0.0 })
                .collect();
            let q = quantize(ty, &x).unwrap();
            let y = dequantize_vec(ty, &q, x.len());
            let (lo, hi) = match ty {
                GgmlType::Q8_0 | GgmlType::Q8_K => (-128, 127),
                GgmlType::Q4_0 => (-8, 7),
                GgmlType::Q4_1 => (0, 15),
                GgmlType::Q5_0 => (-16, 15),
                GgmlType::Q5_1 | GgmlType::Q5_K => (0, 31),
                GgmlType::Q2_K => (0, 3),
                GgmlType::Q3_K => (-4, 3),
                GgmlType::Q4_K => (0, 15),
                GgmlType::Q6_K => (-32, 31),
                _ => unreachable!(),
            };
            let mut u = Unpacked::default();
            for (bi, b) in q.chunks_exact(ty.block_bytes()).enumerate() {
                let n = unpack_block(ty, b, &mut u);
                assert_eq!(n, ty.block_size());
                for i in 0..n {
                    assert!((lo..=hi).contains(&(u.q[i] as i32)), "{ty:?} q {}", u.q[i]);
                    let w = u.d[i / 16] * u.q[i] as f32 + u.m[i / 16];
                    assert_eq!(
                        w.to_bits(),
                        y[bi * n + i].to_bits(),
                        "{ty:?} block {bi} {i}"
                    );
                }
            }
        }
    }

    /// One record of testdata/reference.bin (see make_reference.py for the format).
    struct Record {
        kind: u8,
        source: u8,
        ty: u32,
        bytes: Vec<u8>,
        floats: Vec<f32>,
    }

    fn reference_records() -> Vec<Record> {
        let data: &[u8] = include_bytes!("testdata/reference.bin");
        assert_eq!(&data[..4], b"SPQR");
        assert_eq!(u32::from_le_bytes(data[4..8].try_into().unwrap()), 1);
        let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
        let mut at = 8;
        let mut out = Vec::new();
        while at < data.len() {
            let (kind, source, ty) = (data[at], data[at + 1], u32_at(at + 2) as u32);
            let nb = u32_at(at + 6);
            let bytes = data[at + 10..at + 10 + nb].to_vec();
            at += 10 + nb;
            let nf = u32_at(at);
            let floats = data[at + 4..at + 4 + 4 * nf]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            at += 4 + 4 * nf;
            out.push(Record {
                kind,
                source,
                ty,
                bytes,
                floats,
            });
        }
        out
    }

    /// Dequantization equals gguf-py's numpy dequantization (and ggml's own `dequantize_row_*`,
    /// which make_reference.py checked gives the same bits; Q8_K, which gguf-py lacks, comes
    /// from ggml) bit for bit, for random blocks including subnormal, zero and negative scales.
    #[test]
    fn dequantization_matches_gguf_py_and_ggml_bit_for_bit() {
        let mut seen = Vec::new();
        for r in reference_records().iter().filter(|r| r.kind == 0) {
            let ty = GgmlType::from_id(r.ty).unwrap();
            let y = super::super::dequantize_vec(ty, &r.bytes, r.floats.len());
            for (i, (a, b)) in y.iter().zip(&r.floats).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} element {i}: {a} vs {b}");
            }
            seen.push(ty);
        }
        assert_eq!(seen.len(), TYPES.len(), "{seen:?}");
    }

    /// The quantizers' bytes equal gguf-py's numpy quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and
    /// ggml's `quantize_row_*_ref` (the 5-bit types and every K-quant), on data built to reach
    /// their corner cases (zero, constant, one-signed, tiny and tie-heavy groups, outliers).
    #[test]
    fn quantizers_match_gguf_py_and_ggml_byte_for_byte() {
        let records = reference_records();
        let mut input: &[f32] = &[];
        let mut seen = Vec::new();
        for r in &records {
            match r.kind {
                2 => input = &r.floats,
                1 => {
                    let ty = GgmlType::from_id(r.ty).unwrap();
                    let q = quantize(ty, input).unwrap();
                    assert_eq!(q.len(), r.bytes.len());
                    if let Some(i) = (0..q.len()).find(|&i| q[i] != r.bytes[i]) {
                        panic!(
                            "{ty:?} (source {}): byte {i} of block {} is {} not {}",
                            ["gguf-py", "ggml"][r.source as usize],
                            i / ty.block_bytes(),
                            q[i],
                            r.bytes[i]
                        );
                    }
                    seen.push((ty, r.source));
                }
                _ => {}
            }
        }
        assert_eq!(seen.len(), 13, "{seen:?}");
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, r) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.4, -2),
            (3.7, 4),
        ] {
            assert_eq!(nearest_int(x), r, "{x}");
        }
    }
}
