//! Portable kernels: plain Rust with the same roundings as the SIMD kernels for quantized weights.

use super::{w4_at, w8_at, ActQ8, Matrix, Packed, GROUP, MAX_TILE};
use crate::quant::QK;

pub(super) fn group_tile(
    w: &Matrix,
    act: &ActQ8,
    g: usize,
    r0: usize,
    rows: usize,
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let k = w.k;
    let nb = k / QK;
    for (t, out_row) in out.iter_mut().enumerate().take(rows) {
        let r = r0 + t;
        for (c, o) in out_row.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..nb {
                let wo = (g * nb + b) * GROUP + c;
                let xq = &act.qs[r * k + b * QK..r * k + (b + 1) * QK];
                let dx = act.d[r * nb + b];
                let isum8 = |qs: &[i8], from: usize, to: usize| -> i32 {
                    (from..to)
                        .map(|e| w8_at(qs, nb, g, b, c, e) as i32 * xq[e] as i32)
                        .sum()
                };
                let isum4 = |qs: &[u8]| -> i32 {
                    (0..QK)
                        .map(|e| w4_at(qs, nb, g, b, c, e) as i32 * xq[e] as i32)
                        .sum()
                };
                match &w.packed {
                    Packed::W8 { qs, d, .. } => {
                        acc = (isum8(qs, 0, QK) as f32 * dx).mul_add(d[wo].to_f32(), acc);
                    }
                    Packed::W8F { qs, d, m, .. } => {
                        let o = |h: usize| ((g * nb + b) * 2 + h) * GROUP + c;
                        acc = (isum8(qs, 0, 16) as f32 * dx).mul_add(d[o(0)], acc);
                        acc = (isum8(qs, 16, QK) as f32 * dx).mul_add(d[o(1)], acc);
                        if !m.is_empty() {
                            let s = &act.s16[2 * (r * nb + b)..];
                            acc = s[0].mul_add(m[o(0)], acc);
                            acc = s[1].mul_add(m[o(1)], acc);
                        }
                    }
                    Packed::W4 { qs, d, m } => {
                        acc = (isum4(qs) as f32 * dx).mul_add(d[wo].to_f32(), acc);
                        acc = act.s[r * nb + b].mul_add(m[wo].to_f32(), acc);
                    }
                    Packed::W4F { qs, d, m } => {
                        acc = (isum4(qs) as f32 * dx).mul_add(d[wo], acc);
                        acc = act.s[r * nb + b].mul_add(m[wo], acc);
                    }
                    Packed::F32 { .. } => unreachable!("float weights use dot_f32"),
                }
            }
            *o = acc;
        }
    }
}

/// Dot product: 16 lanes of fused multiply-adds, lanes summed in order, then the tail — the same
/// roundings as the SIMD version, so both paths give the same bits.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut lanes = [0f32; 16];
    let full = n / 16 * 16;
    for (ca, cb) in a[..full].chunks_exact(16).zip(b[..full].chunks_exact(16)) {
        for l in 0..16 {
            lanes[l] = ca[l].mul_add(cb[l], lanes[l]);
        }
    }
    let mut s = 0f32;
    for l in lanes {
        s += l;
    }
    for i in full..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}
