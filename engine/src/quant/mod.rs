//! ggml tensor types as stored in GGUF files: their block layouts, dequantization to f32
//! (through [`unpack_block`] for every quantized type, [`kquants`]) and the reference quantizers
//! specd uses to derive presets (Q8_0, Q4_0, Q4_1, F16).

use anyhow::{bail, Result};
use half::f16;

mod kquants;

#[cfg(test)]
pub(crate) use kquants::random_blocks as kquants_random_blocks;
pub use kquants::{unpack_block, Unpacked};

/// ggml's names (Q4_K, …) are kept as they are.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
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
}

pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// Every type with its ggml id, name, block size and block bytes.
const TYPES: &[(GgmlType, u32, &str, usize, usize)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", QK, 18),
    (GgmlType::Q4_1, 3, "Q4_1", QK, 20),
    (GgmlType::Q5_0, 6, "Q5_0", QK, 22),
    (GgmlType::Q5_1, 7, "Q5_1", QK, 24),
    (GgmlType::Q8_0, 8, "Q8_0", QK, 34),
    (GgmlType::Q2_K, 10, "Q2_K", QK_K, 84),
    (GgmlType::Q3_K, 11, "Q3_K", QK_K, 110),
    (GgmlType::Q4_K, 12, "Q4_K", QK_K, 144),
    (GgmlType::Q5_K, 13, "Q5_K", QK_K, 176),
    (GgmlType::Q6_K, 14, "Q6_K", QK_K, 210),
    (GgmlType::Q8_K, 15, "Q8_K", QK_K, 292),
    (GgmlType::Bf16, 30, "BF16", 1, 2),
];

fn entry(ty: GgmlType) -> &'static (GgmlType, u32, &'static str, usize, usize) {
    TYPES
        .iter()
        .find(|e| e.0 == ty)
        .expect("every type is listed")
}

/// The names of the supported types, for error messages.
pub fn supported_names() -> String {
    TYPES.iter().map(|e| e.2).collect::<Vec<_>>().join(", ")
}

impl GgmlType {
    pub fn from_id(id: u32) -> Result<Self> {
        if let Some(e) = TYPES.iter().find(|e| e.1 == id) {
            return Ok(e.0);
        }
        let name = match id {
            9 => "Q8_1",
            16..=23 | 29 => "an IQ type",
            24..=28 => "an integer type",
            34 | 35 => "a ternary type (TQ1_0/TQ2_0)",
            39 => "MXFP4",
            _ => bail!("unknown ggml tensor type {id}"),
        };
        bail!(
            "ggml tensor type {id} ({name}) is not supported (supported: {}); re-quantize the model to one of these",
            supported_names()
        )
    }

    pub fn id(self) -> u32 {
        entry(self).1
    }

    pub fn name(self) -> &'static str {
        entry(self).2
    }

    /// Parses a type name (`q4_k`, `Q8_0`, `bf16`…).
    pub fn from_name(name: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        entry(self).3
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        entry(self).4
    }

    pub fn is_float(self) -> bool {
        self.block_size() == 1
    }

    /// The llama.cpp `general.file_type` code of a file whose weights are mostly this type
    /// (`LLAMA_FTYPE_MOSTLY_*`; a K type names its `_M` mix).
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
            GgmlType::Q6_K | GgmlType::Q8_K => 18,
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
/// `quantize_row_*_ref`).
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
        other => bail!(
            "quantizing to {} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
            other.name()
        ),
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
