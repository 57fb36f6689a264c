//! ggml tensor types as stored in GGUF files: their block layouts, dequantization to f32 and the
//! reference quantizers specd uses to derive presets and re-quantize models. The 5-bit types and
//! the K-quants, and the block unpacker every quantized type goes through, are in `kquants`.

use anyhow::{bail, Result};
use half::f16;

mod kquants;
mod mix;

pub use mix::{fallback, ModelInfo, Recipe, RECIPE_NAMES};

#[cfg(test)]
pub(crate) use kquants::random_blocks as kquants_random_blocks;
pub use kquants::{
    quantize_row_q2_k_ref, quantize_row_q3_k_ref, quantize_row_q4_k_ref, quantize_row_q5_0_ref,
    quantize_row_q5_1_ref, quantize_row_q5_k_ref, quantize_row_q6_k_ref, quantize_row_q8_k_ref,
    unpack_block, Unpacked, QK_K,
};

/// A ggml tensor type (variants named as ggml names them).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    Bf16,
}

pub const QK: usize = 32;

impl GgmlType {
    /// Every type specd reads and writes.
    pub const ALL: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    pub fn from_id(id: u32) -> Result<Self> {
        if let Some(t) = Self::ALL.into_iter().find(|t| t.id() == id) {
            return Ok(t);
        }
        match id {
            9 | 16..=23 => {
                let supported: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                bail!(
                    "ggml tensor type {id} ({}) is not supported yet (supported: {}); re-quantize the model to one of these",
                    if id == 9 { "Q8_1" } else { "IQ*" },
                    supported.join(", ")
                )
            }
            other => bail!("unknown ggml tensor type {other}"),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::Bf16 => 30,
        }
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
        }
    }

    /// Whether the type stores blocks of small integers (everything but F32, F16 and BF16).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                QK
            }
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 2 + QK / 2,
            GgmlType::Q4_1 => 4 + QK / 2,
            GgmlType::Q5_0 => 2 + 4 + QK / 2,
            GgmlType::Q5_1 => 4 + 4 + QK / 2,
            GgmlType::Q8_0 => 2 + QK,
            // scales, 2-bit quants, d, dmin
            GgmlType::Q2_K => QK_K / 16 + QK_K / 4 + 4,
            // high-bit mask, 2-bit quants, 6-bit scales, d
            GgmlType::Q3_K => QK_K / 8 + QK_K / 4 + 12 + 2,
            // d, dmin, 6-bit scales and mins, 4-bit quants
            GgmlType::Q4_K => 4 + 12 + QK_K / 2,
            // d, dmin, scales and mins, high bits, 4-bit quants
            GgmlType::Q5_K => 4 + 12 + QK_K / 8 + QK_K / 2,
            // low 4 bits, high 2 bits, int8 scales, d
            GgmlType::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
            // f32 d, int8 quants, int16 sums of 16
            GgmlType::Q8_K => 4 + QK_K + 2 * QK_K / 16,
        }
    }

    /// The llama.cpp `general.file_type` code (`LLAMA_FTYPE_MOSTLY_*`) of a file whose weights
    /// are mostly this type; a K type gets its `_M` mix's code. Q8_K has none in llama.cpp (it
    /// is an activation type): 1024, `LLAMA_FTYPE_GUESSED`.
    pub fn file_type(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 7,
            GgmlType::Q5_0 => 8,
            GgmlType::Q5_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 12,
            GgmlType::Q4_K => 15,
            GgmlType::Q5_K => 17,
            GgmlType::Q6_K => 18,
            GgmlType::Q8_K => 1024,
            GgmlType::Bf16 => 32,
        }
    }
}

/// Dequantizes `data` (of type `ty`) into f32 values.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Bf16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => kquants::dequantize_blocks(ty, data, out),
    }
}

/// Dequantizes a whole tensor.
pub fn dequantize_vec(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize(ty, data, &mut out);
    out
}

/// Quantizes f32 values into `ty` with ggml's reference quantizers (bit-compatible with llama.cpp's
/// `quantize_row_*_ref`, which `llama-quantize` uses when it has no importance matrix).
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    if !x.len().is_multiple_of(ty.block_size()) {
        bail!(
            "cannot quantize {} values to {ty:?}: not a multiple of {}",
            x.len(),
            ty.block_size()
        );
    }
    let mut out = Vec::with_capacity(x.len() / ty.block_size() * ty.block_bytes());
    match ty {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::Bf16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in x.chunks_exact(QK) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for v in b {
                    out.push(((v * id).round() as i32).clamp(-128, 127) as i8 as u8);
                }
            }
        }
        GgmlType::Q4_0 => {
            for b in x.chunks_exact(QK) {
                let mut amax = 0f32;
                let mut max = 0f32;
                for &v in b {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..QK / 2 {
                    let q0 = ((b[j] * id + 8.5) as i32).clamp(0, 15) as u8;
                    let q1 = ((b[j + QK / 2] * id + 8.5) as i32).clamp(0, 15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        GgmlType::Q4_1 => {
            for b in x.chunks_exact(QK) {
                let min = b.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = b.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..QK / 2 {
                    let q0 = (((b[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    let q1 = (((b[j + QK / 2] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::Q8_K => {
            let row = match ty {
                GgmlType::Q5_0 => quantize_row_q5_0_ref,
                GgmlType::Q5_1 => quantize_row_q5_1_ref,
                GgmlType::Q2_K => quantize_row_q2_k_ref,
                GgmlType::Q3_K => quantize_row_q3_k_ref,
                GgmlType::Q4_K => quantize_row_q4_k_ref,
                GgmlType::Q5_K => quantize_row_q5_k_ref,
                GgmlType::Q6_K => quantize_row_q6_k_ref,
                _ => quantize_row_q8_k_ref,
            };
            out.resize(x.len() / ty.block_size() * ty.block_bytes(), 0);
            row(x, &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_dequantize_roundtrip_error_is_bounded() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for (ty, tol) in [
            (GgmlType::Q8_0, 0.03),
            (GgmlType::Q4_0, 0.5),
            (GgmlType::Q4_1, 0.3),
            (GgmlType::F16, 0.01),
        ] {
            let q = quantize(ty, &x).unwrap();
            assert_eq!(q.len(), x.len() / ty.block_size() * ty.block_bytes());
            let y = dequantize_vec(ty, &q, x.len());
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < tol, "{ty:?}: max error {err}");
        }
    }

    #[test]
    fn requantizing_q8_0_is_idempotent() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        let y = dequantize_vec(GgmlType::Q8_0, &q, 64);
        assert_eq!(quantize(GgmlType::Q8_0, &y).unwrap(), q);
    }
}
