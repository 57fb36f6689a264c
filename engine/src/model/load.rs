//! Loading llama-family weights from GGUF files and from Hugging Face safetensors directories, and
//! exporting a model to the HF layout (used to test the safetensors path against GGUF).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{Layer, Llama, LlamaConfig};
use crate::gguf::GgufFile;
use crate::kernels::Matrix;
use crate::quant::{dequantize_vec, GgmlType};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Dequantize every weight to f32 (the float kernels) instead of keeping it quantized.
    pub force_f32: bool,
}

/// Loads a model and its tokenizer from a GGUF file, or from a directory holding either one GGUF
/// file or an HF layout (`config.json`, `*.safetensors`, `tokenizer.json`).
pub fn load_model(path: &Path, opts: LoadOptions) -> Result<(Llama, Tokenizer)> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return load_safetensors_dir(path, opts);
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => load_gguf(one, opts),
            [] => bail!(
                "{} holds neither config.json (safetensors model) nor a .gguf file",
                path.display()
            ),
            _ => bail!(
                "{} holds several .gguf files; name one of them",
                path.display()
            ),
        };
    }
    if !path.exists() {
        bail!("model file {} does not exist", path.display());
    }
    load_gguf(path, opts)
}

fn gguf_config(f: &GgufFile) -> Result<LlamaConfig> {
    let arch = f.get_str("general.architecture").unwrap_or("<missing>");
    if arch != "llama" {
        bail!(
            "{}: architecture {arch:?} is not supported yet (supported: llama, which covers SmolLM2, Llama, Mistral-style models)",
            f.path.display()
        );
    }
    let key = |k: &str| format!("{arch}.{k}");
    let dim = f.get_u64(&key("embedding_length"))? as usize;
    let n_heads = f.get_u64(&key("attention.head_count"))? as usize;
    let n_kv_heads = f
        .get_u64(&key("attention.head_count_kv"))
        .unwrap_or(n_heads as u64) as usize;
    let embd = f
        .tensor("token_embd.weight")
        .ok_or_else(|| anyhow!("{}: tensor token_embd.weight is missing", f.path.display()))?;
    let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
    let config = LlamaConfig {
        vocab_size,
        dim,
        n_layers: f.get_u64(&key("block_count"))? as usize,
        n_heads,
        n_kv_heads,
        head_dim: f
            .get_u64(&key("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(dim / n_heads.max(1)),
        ffn_dim: f.get_u64(&key("feed_forward_length"))? as usize,
        rms_eps: f
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32,
        rope_base: f.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32,
        context_length: f.get_u64(&key("context_length")).unwrap_or(2048) as usize,
    };
    config
        .validate()
        .with_context(|| format!("{}", f.path.display()))?;
    Ok(config)
}

fn load_gguf(path: &Path, opts: LoadOptions) -> Result<(Llama, Tokenizer)> {
    let f = GgufFile::open(path)?;
    let c = gguf_config(&f)?;
    let tokenizer = Tokenizer::for_gguf(&f)?;
    if tokenizer.vocab_size() > c.vocab_size {
        bail!(
            "{}: tokenizer has {} tokens but the embedding has {} rows",
            path.display(),
            tokenizer.vocab_size(),
            c.vocab_size
        );
    }
    let matrix = |name: &str, n: usize, k: usize| -> Result<Matrix> {
        let t = f
            .tensor(name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", path.display()))?;
        if t.dims.len() != 2 || t.dims[0] as usize != k || t.dims[1] as usize != n {
            bail!(
                "{}: tensor {name} has shape {:?}, expected [{k}, {n}]",
                path.display(),
                t.dims
            );
        }
        if t.ggml_type.block_size() > 1 && !k.is_multiple_of(32) {
            bail!(
                "{}: tensor {name} row length {k} is not a multiple of 32",
                path.display()
            );
        }
        Ok(Matrix::from_ggml(
            t.ggml_type,
            f.data(t),
            n,
            k,
            opts.force_f32,
        ))
    };
    let vector = |name: &str, n: usize| -> Result<Vec<f32>> {
        let t = f
            .tensor(name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", path.display()))?;
        if t.n_elements() != n {
            bail!(
                "{}: tensor {name} has {} elements, expected {n}",
                path.display(),
                t.n_elements()
            );
        }
        Ok(dequantize_vec(t.ggml_type, f.data(t), n))
    };
    let (d, kvd, ff) = (c.dim, c.kv_dim(), c.ffn_dim);
    let qd = c.n_heads * c.head_dim;
    if qd != d {
        bail!(
            "{}: {} heads × {} head dim != embedding {}",
            path.display(),
            c.n_heads,
            c.head_dim,
            d
        );
    }
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        layers.push(build_layer(
            vector(&p("attn_norm"), d)?,
            [
                matrix(&p("attn_q"), d, d)?,
                matrix(&p("attn_k"), kvd, d)?,
                matrix(&p("attn_v"), kvd, d)?,
            ],
            matrix(&p("attn_output"), d, d)?,
            vector(&p("ffn_norm"), d)?,
            [matrix(&p("ffn_gate"), ff, d)?, matrix(&p("ffn_up"), ff, d)?],
            matrix(&p("ffn_down"), d, ff)?,
        ));
    }
    let embed = matrix("token_embd.weight", c.vocab_size, d)?;
    let lm_head = match f.tensor("output.weight") {
        Some(_) => Some(matrix("output.weight", c.vocab_size, d)?),
        None => None,
    };
    let norm = vector("output_norm.weight", d)?;
    Ok((Llama::new(c, embed, layers, norm, lm_head), tokenizer))
}

/// Fuses projections whose layouts allow it (mixed-type files keep them fused after converting
/// the odd one to f32, which is exact).
fn fuse(parts: Vec<Matrix>) -> Matrix {
    if parts.iter().all(|p| parts[0].can_concat(p)) {
        Matrix::concat(parts)
    } else {
        Matrix::concat(
            parts
                .into_iter()
                .map(|p| {
                    let (n, k) = (p.n, p.k);
                    let mut w = vec![0f32; n * k];
                    for j in 0..n {
                        p.row(j, &mut w[j * k..(j + 1) * k]);
                    }
                    Matrix::from_f32(w, n, k)
                })
                .collect(),
        )
    }
}

fn build_layer(
    attn_norm: Vec<f32>,
    qkv: [Matrix; 3],
    wo: Matrix,
    ffn_norm: Vec<f32>,
    gate_up: [Matrix; 2],
    w2: Matrix,
) -> Layer {
    Layer {
        attn_norm,
        wqkv: fuse(qkv.into()),
        wo,
        ffn_norm,
        w13: fuse(gate_up.into()),
        w2,
    }
}

/// HF → ggml row order of a Q or K projection: ggml rotates adjacent pairs, HF rotates halves.
fn permute_rows(w: &[f32], n_heads: usize, head_dim: usize, k: usize, to_ggml: bool) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    let half = head_dim / 2;
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let ggml_row = h * head_dim + 2 * i + j;
                let hf_row = h * head_dim + j * half + i;
                let (src, dst) = if to_ggml {
                    (hf_row, ggml_row)
                } else {
                    (ggml_row, hf_row)
                };
                out[dst * k..(dst + 1) * k].copy_from_slice(&w[src * k..(src + 1) * k]);
            }
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    model_type: Option<String>,
}

fn load_safetensors_dir(dir: &Path, opts: LoadOptions) -> Result<(Llama, Tokenizer)> {
    let _ = opts;
    let cfg_path = dir.join("config.json");
    let hf: HfConfig = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{} is not a valid llama config.json", cfg_path.display()))?;
    if let Some(mt) = &hf.model_type {
        if !matches!(mt.as_str(), "llama" | "mistral") {
            bail!(
                "{}: model_type {mt:?} is not supported yet (supported: llama, mistral)",
                cfg_path.display()
            );
        }
    }
    let c = LlamaConfig {
        vocab_size: hf.vocab_size,
        dim: hf.hidden_size,
        n_layers: hf.num_hidden_layers,
        n_heads: hf.num_attention_heads,
        n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim: hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
        ffn_dim: hf.intermediate_size,
        rms_eps: hf.rms_norm_eps.unwrap_or(1e-5) as f32,
        rope_base: hf.rope_theta.unwrap_or(10000.0) as f32,
        context_length: hf.max_position_embeddings.unwrap_or(2048),
    };
    c.validate()
        .with_context(|| format!("{}", cfg_path.display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .safetensors files", dir.display());
    }
    let mut maps = Vec::new();
    for p in &files {
        let f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
        // SAFETY: read-only mapping of a file we do not modify.
        maps.push((p.clone(), unsafe { memmap2::Mmap::map(&f) }?));
    }
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (p, m) in &maps {
        let st = safetensors::SafeTensors::deserialize(m)
            .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", p.display()))?;
        for (name, view) in st.tensors() {
            let ty = match view.dtype() {
                safetensors::Dtype::F32 => GgmlType::F32,
                safetensors::Dtype::F16 => GgmlType::F16,
                safetensors::Dtype::BF16 => GgmlType::Bf16,
                other => bail!(
                    "{}: tensor {name} has dtype {other:?} (supported: F32, F16, BF16)",
                    p.display()
                ),
            };
            let n: usize = view.shape().iter().product();
            tensors.insert(
                name,
                (view.shape().to_vec(), dequantize_vec(ty, view.data(), n)),
            );
        }
    }
    let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let (s, w) = tensors
            .remove(name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", dir.display()))?;
        if s != shape {
            bail!(
                "{}: tensor {name} has shape {s:?}, expected {shape:?}",
                dir.display()
            );
        }
        Ok(w)
    };
    let (d, kvd, ff, hd) = (c.dim, c.kv_dim(), c.ffn_dim, c.head_dim);
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let q = permute_rows(
            &take(&p("self_attn.q_proj"), &[d, d])?,
            c.n_heads,
            hd,
            d,
            true,
        );
        let k = permute_rows(
            &take(&p("self_attn.k_proj"), &[kvd, d])?,
            c.n_kv_heads,
            hd,
            d,
            true,
        );
        let v = take(&p("self_attn.v_proj"), &[kvd, d])?;
        layers.push(build_layer(
            take(&p("input_layernorm"), &[d])?,
            [
                Matrix::from_f32(q, d, d),
                Matrix::from_f32(k, kvd, d),
                Matrix::from_f32(v, kvd, d),
            ],
            Matrix::from_f32(take(&p("self_attn.o_proj"), &[d, d])?, d, d),
            take(&p("post_attention_layernorm"), &[d])?,
            [
                Matrix::from_f32(take(&p("mlp.gate_proj"), &[ff, d])?, ff, d),
                Matrix::from_f32(take(&p("mlp.up_proj"), &[ff, d])?, ff, d),
            ],
            Matrix::from_f32(take(&p("mlp.down_proj"), &[d, ff])?, d, ff),
        ));
    }
    let embed = Matrix::from_f32(
        take("model.embed_tokens.weight", &[c.vocab_size, d])?,
        c.vocab_size,
        d,
    );
    let lm_head = if hf.tie_word_embeddings {
        None
    } else {
        Some(Matrix::from_f32(
            take("lm_head.weight", &[c.vocab_size, d])?,
            c.vocab_size,
            d,
        ))
    };
    let norm = take("model.norm.weight", &[d])?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    Ok((Llama::new(c, embed, layers, norm, lm_head), tokenizer))
}

/// Writes `model` (dequantized to f32) in the Hugging Face llama layout: `config.json`,
/// `model.safetensors` (Q/K rows permuted back to HF order) and `tokenizer.json`.
pub fn export_hf_safetensors(model: &Llama, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let c = &model.config;
    let rows = |m: &Matrix, from: usize, to: usize| -> Vec<f32> {
        let k = m.k;
        let mut w = vec![0f32; (to - from) * k];
        for j in from..to {
            m.row(j, &mut w[(j - from) * k..(j - from + 1) * k]);
        }
        w
    };
    let (d, kvd, ff, hd) = (c.dim, c.kv_dim(), c.ffn_dim, c.head_dim);
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    out.push((
        "model.embed_tokens.weight".into(),
        vec![c.vocab_size, d],
        rows(&model.embed, 0, c.vocab_size),
    ));
    if let Some(h) = &model.lm_head {
        out.push((
            "lm_head.weight".into(),
            vec![c.vocab_size, d],
            rows(h, 0, c.vocab_size),
        ));
    }
    out.push(("model.norm.weight".into(), vec![d], model.norm.clone()));
    for (i, l) in model.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        out.push((p("input_layernorm"), vec![d], l.attn_norm.clone()));
        out.push((p("post_attention_layernorm"), vec![d], l.ffn_norm.clone()));
        out.push((
            p("self_attn.q_proj"),
            vec![d, d],
            permute_rows(&rows(&l.wqkv, 0, d), c.n_heads, hd, d, false),
        ));
        out.push((
            p("self_attn.k_proj"),
            vec![kvd, d],
            permute_rows(&rows(&l.wqkv, d, d + kvd), c.n_kv_heads, hd, d, false),
        ));
        out.push((
            p("self_attn.v_proj"),
            vec![kvd, d],
            rows(&l.wqkv, d + kvd, d + 2 * kvd),
        ));
        out.push((p("self_attn.o_proj"), vec![d, d], rows(&l.wo, 0, d)));
        out.push((p("mlp.gate_proj"), vec![ff, d], rows(&l.w13, 0, ff)));
        out.push((p("mlp.up_proj"), vec![ff, d], rows(&l.w13, ff, 2 * ff)));
        out.push((p("mlp.down_proj"), vec![d, ff], rows(&l.w2, 0, d)));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = out
        .into_iter()
        .map(|(n, s, w)| (n, s, w.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": ff,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "num_hidden_layers": c.n_layers,
        "head_dim": hd,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_base,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": model.lm_head.is_none(),
        "torch_dtype": "float32",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    tokenizer.save_hf_dir(dir)?;
    Ok(())
}
