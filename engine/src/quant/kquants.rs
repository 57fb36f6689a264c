//! Unpacking every quantized ggml block format into small integers with affine scales:
//! `w[i] = d[i/16]·q[i] + m[i/16]`, computed in f32 the way ggml's `dequantize_row_*` does.
//!
//! Scales are products of an f16 super-block scale and a small integer (6-bit, 4-bit or int8
//! sub-block scales): at most 11 + 8 significant bits, so every such product is exact in f32 and
//! `d·q + m` rounds exactly as ggml's `dl·q − ml`. The matrix kernels pack from this form; the
//! dequantization of the model loader goes through it too (one decoder of each format).

use half::f16;

use super::GgmlType;

/// One block's weights as small integers with affine scales per 16 elements:
/// `w[i] = d[i / 16] * q[i] + m[i / 16]`. Only the first `n / 16` entries of `d` and `m` are used.
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
            m: [0.0; 16],
        }
    }
}

fn h(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Unpacks one block of the quantized type `ty` from its bytes (`ty.block_bytes()` of them);
/// returns the number of elements (32 or 256).
///
/// # Panics
/// On a float type (F32, F16, BF16), which has no blocks.
pub fn unpack_block(ty: GgmlType, b: &[u8], u: &mut Unpacked) -> usize {
    let same_scale = |u: &mut Unpacked, n: usize, d: f32, m: f32| {
        u.d[..n / 16].fill(d);
        u.m[..n / 16].fill(m);
    };
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
            panic!("unpack_block of the float type {ty:?}")
        }
        GgmlType::Q8_0 => {
            for j in 0..32 {
                u.q[j] = b[2 + j] as i8;
            }
            same_scale(u, 32, h(b, 0), 0.0);
            32
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (qs, m, off) = if ty == GgmlType::Q4_1 {
                (&b[4..20], h(b, 2), 0)
            } else {
                (&b[2..18], 0.0, 8)
            };
            for j in 0..16 {
                u.q[j] = (qs[j] & 0x0f) as i8 - off;
                u.q[j + 16] = (qs[j] >> 4) as i8 - off;
            }
            same_scale(u, 32, h(b, 0), m);
            32
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (at, m, off) = if ty == GgmlType::Q5_1 {
                (4, h(b, 2), 0)
            } else {
                (2, 0.0, 16)
            };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let qs = &b[at + 4..at + 20];
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                u.q[j] = ((qs[j] & 0x0f) | h0) as i8 - off;
                u.q[j + 16] = ((qs[j] >> 4) | h1) as i8 - off;
            }
            same_scale(u, 32, h(b, 0), m);
            32
        }
        GgmlType::Q2_K => {
            // scales[16], qs[64], d, dmin
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (h(b, 80), h(b, 82));
            for n in 0..2 {
                for j in 0..4 {
                    for half in 0..2 {
                        let s = n * 8 + j * 2 + half;
                        let sc = scales[s];
                        u.d[s] = d * (sc & 0x0f) as f32;
                        u.m[s] = -(dmin * (sc >> 4) as f32);
                        for l in 0..16 {
                            let q = qs[n * 32 + half * 16 + l];
                            u.q[s * 16 + l] = ((q >> (2 * j)) & 3) as i8;
                        }
                    }
                }
            }
            256
        }
        GgmlType::Q3_K => {
            // hmask[32], qs[64], scales[12], d
            let (hm, qs, sc12) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = h(b, 108);
            let w = |i: usize| {
                u32::from_le_bytes([
                    sc12[4 * i],
                    sc12[4 * i + 1],
                    sc12[4 * i + 2],
                    sc12[4 * i + 3],
                ])
            };
            let (a0, a1, tmp) = (w(0), w(1), w(2));
            let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let aux = [
                (a0 & k2) | ((tmp & k1) << 4),
                (a1 & k2) | (((tmp >> 2) & k1) << 4),
                ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
                ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
            ];
            let scale = |s: usize| (aux[s / 4] >> (8 * (s % 4))) as u8 as i8;
            for n in 0..2 {
                for j in 0..4 {
                    let bit = 1u8 << (n * 4 + j);
                    for half in 0..2 {
                        let s = n * 8 + j * 2 + half;
                        u.d[s] = d * (scale(s) as i32 - 32) as f32;
                        u.m[s] = 0.0;
                        for l in 0..16 {
                            let i = half * 16 + l;
                            let q = ((qs[n * 32 + i] >> (2 * j)) & 3) as i8;
                            u.q[s * 16 + l] = q - if hm[i] & bit != 0 { 0 } else { 4 };
                        }
                    }
                }
            }
            256
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
            let (d, dmin, sc) = (h(b, 0), h(b, 2), &b[4..16]);
            let (qh, ql): (Option<&[u8]>, &[u8]) = if ty == GgmlType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                for hi in 0..2 {
                    let s = 2 * c + hi;
                    let (scv, mv) = scale_min_k4(s, sc);
                    for half in 0..2 {
                        u.d[2 * s + half] = d * scv as f32;
                        u.m[2 * s + half] = -(dmin * mv as f32);
                    }
                    for l in 0..32 {
                        let byte = ql[c * 32 + l];
                        let mut q = if hi == 0 { byte & 0x0f } else { byte >> 4 };
                        if let Some(qh) = qh {
                            if qh[l] & (1 << s) != 0 {
                                q += 16;
                            }
                        }
                        u.q[s * 32 + l] = q as i8;
                    }
                }
            }
            256
        }
        GgmlType::Q6_K => {
            // ql[128], qh[64], scales[16] (int8), d
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = h(b, 208);
            for n in 0..2 {
                for l in 0..32 {
                    let (lo, hi) = (ql[n * 64 + l], ql[n * 64 + l + 32]);
                    let hb = qh[n * 32 + l];
                    let q = [
                        (lo & 0x0f) | ((hb & 3) << 4),
                        (hi & 0x0f) | (((hb >> 2) & 3) << 4),
                        (lo >> 4) | (((hb >> 4) & 3) << 4),
                        (hi >> 4) | (((hb >> 6) & 3) << 4),
                    ];
                    for (k, &v) in q.iter().enumerate() {
                        u.q[n * 128 + 32 * k + l] = v as i8 - 32;
                    }
                }
            }
            for s in 0..16 {
                u.d[s] = d * (sc[s] as i8) as f32;
                u.m[s] = 0.0;
            }
            256
        }
        GgmlType::Q8_K => {
            // d (f32), qs[256], bsums[16]
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for j in 0..256 {
                u.q[j] = b[4 + j] as i8;
            }
            same_scale(u, 256, d, 0.0);
            256
        }
    }
}

/// Dequantizes whole blocks of a quantized type into `out`.
pub(super) fn dequantize_blocks(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    let mut u = Unpacked::default();
    let bs = ty.block_size();
    for (o, b) in out
        .chunks_exact_mut(bs)
        .zip(data.chunks_exact(ty.block_bytes()))
    {
        unpack_block(ty, b, &mut u);
        for (i, v) in o.iter_mut().enumerate() {
            let q = u.q[i] as f32 * u.d[i / 16];
            *v = if u.m[i / 16] == 0.0 {
                q
            } else {
                q + u.m[i / 16]
            };
        }
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
    use super::*;

    fn ty_named(name: &str) -> GgmlType {
        GgmlType::from_name(name).unwrap_or_else(|| panic!("type {name}"))
    }

    /// gguf-py's numpy dequantization (testdata/make_reference.py) on random blocks of every
    /// quantized type but Q8_K: equal bits.
    #[test]
    fn dequantization_equals_gguf_py() {
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("testdata/dequant_reference.json")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for e in &entries {
            let ty = ty_named(e["type"].as_str().unwrap());
            seen.insert(ty.name());
            let bytes = hex::decode(e["bytes"].as_str().unwrap()).unwrap();
            let want: Vec<u32> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut got = vec![0f32; ty.block_size()];
            super::super::dequantize(ty, &bytes, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == *w || (*g == 0.0 && f32::from_bits(*w) == 0.0),
                    "{ty:?} element {i}: {g} vs gguf-py {}",
                    f32::from_bits(*w)
                );
            }
        }
        assert_eq!(seen.len(), 10, "types covered: {seen:?}");
    }

    #[test]
    fn q8_k_is_d_times_q() {
        let b = random_blocks(GgmlType::Q8_K, 1, 3);
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut got = vec![0f32; 256];
        super::super::dequantize(GgmlType::Q8_K, &b, &mut got);
        for i in 0..256 {
            assert_eq!(got[i], d * (b[4 + i] as i8) as f32);
        }
    }

    #[test]
    fn unpacked_integers_fit_their_types() {
        for (ty, lo, hi) in [
            (GgmlType::Q2_K, 0, 3),
            (GgmlType::Q3_K, -4, 3),
            (GgmlType::Q4_K, 0, 15),
            (GgmlType::Q5_K, 0, 31),
            (GgmlType::Q6_K, -32, 31),
            (GgmlType::Q5_0, -16, 15),
            (GgmlType::Q5_1, 0, 31),
            (GgmlType::Q4_0, -8, 7),
        ] {
            let b = random_blocks(ty, 64, 11);
            let mut u = Unpacked::default();
            let (mut min, mut max) = (i8::MAX, i8::MIN);
            for blk in b.chunks_exact(ty.block_bytes()) {
                let n = unpack_block(ty, blk, &mut u);
                min = min.min(*u.q[..n].iter().min().unwrap());
                max = max.max(*u.q[..n].iter().max().unwrap());
            }
            assert_eq!((min, max), (lo, hi), "{ty:?} range");
        }
    }
}
