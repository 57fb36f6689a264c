//! Which type each tensor of a model gets when it is re-quantized: a single type for every
//! weight (`llama-quantize --pure`) or one of llama.cpp's K-quant mixes, following
//! `llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp` (no importance matrix, no
//! per-tensor overrides), including its fallback for rows whose length is not a multiple of the
//! block size. Modelled for the dense llama-style models specd runs: the Falcon and
//! mixture-of-experts branches of llama.cpp's rules are left out.

use super::GgmlType;
use anyhow::{bail, Result};

/// What `specd models quantize --type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// Every quantizable weight to one type (llama.cpp's `--pure`), with its row-length fallback.
    Pure(GgmlType),
    /// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q3_K_M`.
    Q3KM,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_M`.
    Q4KM,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_M`.
    Q5KM,
    /// `LLAMA_FTYPE_MOSTLY_Q6_K` (for dense models the same types as pure Q6_K).
    Q6K,
}

impl From<GgmlType> for Recipe {
    fn from(ty: GgmlType) -> Self {
        Recipe::Pure(ty)
    }
}

/// The accepted `--type` names.
pub const RECIPE_NAMES: &str = "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k (one type for every weight, as llama-quantize --pure), or the llama.cpp mixes q3_k_m, q4_k_m, q5_k_m";

impl Recipe {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        Ok(match s.as_str() {
            "q3_k_m" => Recipe::Q3KM,
            "q4_k_m" => Recipe::Q4KM,
            "q5_k_m" => Recipe::Q5KM,
            "q6_k" => Recipe::Q6K,
            _ => match GgmlType::ALL
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(&s))
            {
                Some(t) => Recipe::Pure(t),
                None => bail!("--type {s:?} is not supported ({RECIPE_NAMES})"),
            },
        })
    }

    /// The type of most weights (llama.cpp's `llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            Recipe::Pure(t) => t,
            Recipe::Q3KM => GgmlType::Q3_K,
            Recipe::Q4KM => GgmlType::Q4_K,
            Recipe::Q5KM => GgmlType::Q5_K,
            Recipe::Q6K => GgmlType::Q6_K,
        }
    }

    /// The `general.file_type` code written to the output (`LLAMA_FTYPE_MOSTLY_*`).
    pub fn file_type(self) -> u32 {
        self.default_type().file_type()
    }

    /// The type of every tensor, in the order given (None: copied unchanged, as for norms and
    /// other tensors llama.cpp does not quantize). `tensors` holds (name, dims in ggml order).
    pub fn tensor_types(
        self,
        tensors: &[(&str, &[u64])],
        model: &ModelInfo,
    ) -> Vec<Option<GgmlType>> {
        let default = self.default_type();
        let cats: Vec<Category> = tensors.iter().map(|(n, _)| Category::of(n)).collect();
        let n_attention_wv = cats.iter().filter(|c| c.is_attn_v()).count();
        let tied = !cats.contains(&Category::Output);
        // llama.cpp walks the tensors sorted by layer, then name, and counts attn_v and
        // ffn_down tensors as it goes; the counts pick the layers that get more bits.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| (layer_of(tensors[i].0), tensors[i].0);
            key(a).cmp(&key(b))
        });
        let (mut i_attention_wv, mut i_ffn_down) = (0usize, 0usize);
        let mut out = vec![None; tensors.len()];
        for i in order {
            let (name, dims) = tensors[i];
            if !allows_quantization(name, dims) {
                continue;
            }
            let ncols = dims[0] as usize;
            let mut ty = default;
            if !matches!(self, Recipe::Pure(_)) {
                ty = self.mix_type(
                    cats[i],
                    ncols,
                    tied,
                    model,
                    (&mut i_attention_wv, n_attention_wv),
                    (&mut i_ffn_down, model.n_layer),
                );
            }
            if default.is_quantized() {
                ty = fallback(ty, ncols);
            }
            out[i] = Some(ty);
        }
        out
    }

    /// llama.cpp's `llama_tensor_get_type_impl` for this mix.
    fn mix_type(
        self,
        cat: Category,
        ncols: usize,
        tied: bool,
        model: &ModelInfo,
        attn_v: (&mut usize, usize),
        ffn_down: (&mut usize, usize),
    ) -> GgmlType {
        use GgmlType::*;
        let default = self.default_type();
        let mut ty = default;
        if cat == Category::Output || (tied && cat == Category::TokenEmbd) {
            if !ncols.is_multiple_of(default.block_size()) {
                ty = Q8_0;
            } else if ty != Q8_0 {
                ty = Q6_K;
            }
        } else if cat.is_attn_v() {
            let (i, n) = (*attn_v.0, attn_v.1);
            match self {
                Recipe::Q3KM => ty = if i < 2 { Q5_K } else { Q4_K },
                Recipe::Q4KM | Recipe::Q5KM if use_more_bits(i, n) => ty = Q6_K,
                _ => {}
            }
            if model.is_70b && matches!(ty, Q3_K | Q4_K) {
                // 8 heads share each attn_v row there, so it is 8x smaller than attn_q.
                ty = Q5_K;
            }
            *attn_v.0 += 1;
        } else if cat == Category::FfnDown {
            let (i, n) = (*ffn_down.0, ffn_down.1);
            match self {
                Recipe::Q3KM => ty = if i < n / 16 { Q5_K } else { Q4_K },
                Recipe::Q4KM | Recipe::Q5KM if use_more_bits(i, n) => ty = Q6_K,
                _ => {}
            }
            *ffn_down.0 += 1;
        } else if cat == Category::AttnOutput && self == Recipe::Q3KM {
            ty = Q4_K;
        }
        ty
    }
}

/// What the mixes need to know about the model.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// llama.cpp's `LLM_TYPE_70B` for the llama architecture: 80 layers, grouped-query attention.
    pub is_70b: bool,
}

impl ModelInfo {
    /// From GGUF metadata lookups (`get(key)` returns an integer value).
    pub fn from_metadata(arch: &str, get: impl Fn(&str) -> Option<u64>) -> Self {
        let n_layer = get(&format!("{arch}.block_count")).unwrap_or(0) as usize;
        let heads = get(&format!("{arch}.attention.head_count"));
        let kv_heads = get(&format!("{arch}.attention.head_count_kv")).or(heads);
        ModelInfo {
            n_layer,
            is_70b: arch == "llama" && n_layer == 80 && heads != kv_heads,
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama.cpp's `tensor_type_fallback`: the type to use when a row of `ncols` does not split into
/// whole blocks of `ty`. Q8_K has no fallback in llama.cpp (which never writes it); specd uses
/// Q8_0, the other 8-bit type.
pub fn fallback(ty: GgmlType, ncols: usize) -> GgmlType {
    use GgmlType::*;
    if ncols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let r = match ty {
        Q2_K | Q3_K => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K | Q8_K => Q8_0,
        other => other, // a 32-element type: only F16 below can help
    };
    if ncols.is_multiple_of(r.block_size()) {
        r
    } else {
        F16
    }
}

/// `blk.N.` → N (as llama.cpp's loader sorts: tensors outside the blocks first).
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// llama.cpp's `tensor_allows_quantization`, for the tensors of llama-style models.
fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    // ggml_n_dims: dimensions up to the last one longer than 1.
    let n_dims = dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnV,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnDown,
    Output,
    Other,
}

impl Category {
    /// llama.cpp's `tensor_get_category`, for the categories its K-quant mixes look at.
    fn of(name: &str) -> Self {
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Category::AttnQkv
        } else if name.contains("attn_kv_b.weight") {
            Category::AttnKvB
        } else if name.contains("attn_v.weight") {
            Category::AttnV
        } else if name.contains("attn_k.weight") || name.contains("attn_q.weight") {
            Category::Other
        } else if name.contains("attn_output.weight") {
            Category::AttnOutput
        } else if name.contains("ffn_up") || name.contains("ffn_gate") {
            Category::Other
        } else if name.contains("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    /// A llama-style model's tensors: hidden size `h`, FFN size `f`, `n` layers.
    fn llama(h: u64, f: u64, n: usize, tied: bool) -> Vec<(String, Vec<u64>)> {
        let mut t = vec![("token_embd.weight".to_string(), vec![h, 1000])];
        if !tied {
            t.push(("output.weight".into(), vec![h, 1000]));
        }
        t.push(("output_norm.weight".into(), vec![h]));
        for i in 0..n {
            for (name, dims) in [
                ("attn_norm.weight", vec![h]),
                ("attn_q.weight", vec![h, h]),
                ("attn_k.weight", vec![h, h / 4]),
                ("attn_v.weight", vec![h, h / 4]),
                ("attn_output.weight", vec![h, h]),
                ("ffn_norm.weight", vec![h]),
                ("ffn_gate.weight", vec![h, f]),
                ("ffn_up.weight", vec![h, f]),
                ("ffn_down.weight", vec![f, h]),
            ] {
                t.push((format!("blk.{i}.{name}"), dims));
            }
        }
        t
    }

    fn types(r: Recipe, t: &[(String, Vec<u64>)], n: usize) -> Vec<(String, Option<GgmlType>)> {
        let shapes: Vec<(&str, &[u64])> = t.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        let info = ModelInfo {
            n_layer: n,
            is_70b: false,
        };
        let ty = r.tensor_types(&shapes, &info);
        t.iter().map(|(n, _)| n.clone()).zip(ty).collect()
    }

    fn get(v: &[(String, Option<GgmlType>)], name: &str) -> Option<GgmlType> {
        v.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        // 16 layers: use_more_bits is true for 0, 1, 4, 7, 10, 13, 14, 15.
        let t = llama(512, 1024, 16, false);
        let v = types(Recipe::Q4KM, &t, 16);
        assert_eq!(get(&v, "output.weight"), Some(Q6_K));
        assert_eq!(get(&v, "token_embd.weight"), Some(Q4_K));
        assert_eq!(get(&v, "output_norm.weight"), None);
        let more = [0, 1, 4, 7, 10, 13, 14, 15];
        for i in 0..16 {
            let want = if more.contains(&i) { Q6_K } else { Q4_K };
            assert_eq!(
                get(&v, &format!("blk.{i}.attn_v.weight")),
                Some(want),
                "{i}"
            );
            assert_eq!(
                get(&v, &format!("blk.{i}.ffn_down.weight")),
                Some(want),
                "{i}"
            );
            assert_eq!(get(&v, &format!("blk.{i}.attn_q.weight")), Some(Q4_K));
            assert_eq!(get(&v, &format!("blk.{i}.attn_norm.weight")), None);
        }
        // Tied embeddings are quantized like the output.
        let v = types(Recipe::Q4KM, &llama(512, 1024, 16, true), 16);
        assert_eq!(get(&v, "token_embd.weight"), Some(Q6_K));
    }

    #[test]
    fn q3_k_m_and_q5_k_m_follow_llama_cpp() {
        let t = llama(512, 1024, 32, false);
        let v = types(Recipe::Q3KM, &t, 32);
        assert_eq!(get(&v, "blk.1.attn_v.weight"), Some(Q5_K));
        assert_eq!(get(&v, "blk.2.attn_v.weight"), Some(Q4_K));
        assert_eq!(get(&v, "blk.1.ffn_down.weight"), Some(Q5_K));
        assert_eq!(get(&v, "blk.2.ffn_down.weight"), Some(Q4_K));
        assert_eq!(get(&v, "blk.5.attn_output.weight"), Some(Q4_K));
        assert_eq!(get(&v, "blk.5.ffn_up.weight"), Some(Q3_K));
        assert_eq!(get(&v, "output.weight"), Some(Q6_K));
        let v = types(Recipe::Q5KM, &t, 32);
        assert_eq!(get(&v, "blk.3.attn_v.weight"), Some(Q6_K));
        assert_eq!(get(&v, "blk.5.attn_v.weight"), Some(Q5_K));
        assert_eq!(get(&v, "blk.31.ffn_down.weight"), Some(Q6_K));
        // Layers are counted in llama.cpp's order (by layer number, not by name): blk.12 is the
        // 13th attn_v and gets more bits (12 = 4 + 3k + 2); sorted by name it would be the 5th.
        assert_eq!(get(&v, "blk.12.attn_v.weight"), Some(Q6_K));
        assert_eq!(get(&v, "blk.10.attn_v.weight"), Some(Q5_K));
    }

    #[test]
    fn rows_not_a_multiple_of_256_fall_back_as_in_llama_cpp() {
        // SmolLM2-135M: hidden 576 (not a multiple of 256), FFN 1536 (a multiple).
        let t = llama(576, 1536, 30, true);
        let v = types(Recipe::Pure(Q4_K), &t, 30);
        assert_eq!(get(&v, "blk.0.attn_q.weight"), Some(Q5_0));
        assert_eq!(get(&v, "blk.0.ffn_down.weight"), Some(Q4_K));
        assert_eq!(get(&v, "token_embd.weight"), Some(Q5_0));
        let v = types(Recipe::Q4KM, &t, 30);
        assert_eq!(get(&v, "token_embd.weight"), Some(Q8_0)); // output rule, tied
        assert_eq!(get(&v, "blk.0.attn_v.weight"), Some(Q8_0)); // Q6_K falls back
        assert_eq!(get(&v, "blk.4.attn_v.weight"), Some(Q5_0));
        assert_eq!(get(&v, "blk.0.ffn_down.weight"), Some(Q6_K));
        assert_eq!(get(&v, "blk.4.ffn_down.weight"), Some(Q4_K));
        for (ty, ncols, want) in [
            (Q2_K, 576, Q4_0),
            (Q3_K, 576, Q4_0),
            (Q4_K, 576, Q5_0),
            (Q5_K, 576, Q5_1),
            (Q6_K, 576, Q8_0),
            (Q6_K, 512, Q6_K),
            (Q4_K, 100, F16),
            (Q8_0, 100, F16),
            (F16, 100, F16),
        ] {
            assert_eq!(fallback(ty, ncols), want, "{ty:?} {ncols}");
        }
    }

    #[test]
    fn recipes_parse_with_file_types() {
        for (s, r, ft) in [
            ("q4_k_m", Recipe::Q4KM, 15),
            ("Q5_K_M", Recipe::Q5KM, 17),
            ("q3_k_m", Recipe::Q3KM, 12),
            ("q6_k", Recipe::Q6K, 18),
            ("q4_k", Recipe::Pure(Q4_K), 15),
            ("q2_k", Recipe::Pure(Q2_K), 10),
            ("q5_0", Recipe::Pure(Q5_0), 8),
            ("q5_1", Recipe::Pure(Q5_1), 9),
            ("q8_0", Recipe::Pure(Q8_0), 7),
            ("f16", Recipe::Pure(F16), 1),
        ] {
            assert_eq!(Recipe::parse(s).unwrap(), r, "{s}");
            assert_eq!(r.file_type(), ft, "{s}");
        }
        assert!(Recipe::parse("iq2_xs").is_err());
    }
}
