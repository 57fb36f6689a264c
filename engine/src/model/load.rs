//! Loading decoder weights from GGUF files and from Hugging Face safetensors directories, and
//! exporting a model to the HF layout (used to test the safetensors path against GGUF).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use std::borrow::Cow;

use super::backend::{Layer, RawMatrix, Weights};
use super::config::{self, HfConfig};
use super::{Arch, Model, ModelConfig, RopeStyle};
use crate::device::Device;
use crate::gguf::GgufFile;
use crate::kernels::Matrix;
use crate::quant::{dequantize_vec, GgmlType};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Dequantize every weight to f32 (the float kernels) instead of keeping it quantized.
    pub force_f32: bool,
    /// Where the model runs.
    pub device: Device,
}

impl LoadOptions {
    /// Every weight dequantized to f32 on `device`: exact arithmetic on the file's weights.
    pub fn exact_on(device: Device) -> Self {
        LoadOptions {
            force_f32: true,
            device,
        }
    }
}

/// A layer's matrices as file parts (fused by the backend), its vectors as f32.
type LayerParts<'a> = Layer<Vec<RawMatrix<'a>>, Vec<f32>>;

/// Loads a model and its tokenizer from a GGUF file, or from a directory holding either one GGUF
/// file or an HF layout (`config.json`, `*.safetensors`, `tokenizer.json`).
pub fn load_model(path: &Path, opts: LoadOptions) -> Result<(Model, Tokenizer)> {
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

fn load_gguf(path: &Path, opts: LoadOptions) -> Result<(Model, Tokenizer)> {
    let f = GgufFile::open(path)?;
    let file = path.display();
    let vector_opt = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
        let Some(t) = f.tensor(name) else {
            return Ok(None);
        };
        if t.n_elements() != n {
            bail!(
                "{file}: tensor {name} has {} elements, expected {n}",
                t.n_elements()
            );
        }
        Ok(Some(dequantize_vec(t.ggml_type, f.data(t), n)))
    };
    let rope_freqs = f
        .tensor("rope_freqs.weight")
        .map(|t| dequantize_vec(t.ggml_type, f.data(t), t.n_elements()));
    let mut c = config::from_gguf(&f, rope_freqs)?;
    let tokenizer = Tokenizer::for_gguf(&f)?;
    if tokenizer.vocab_size() > c.vocab_size {
        bail!(
            "{file}: tokenizer has {} tokens but the embedding has {} rows",
            tokenizer.vocab_size(),
            c.vocab_size
        );
    }
    c.mask_padding(tokenizer.defined_vocab());
    let matrix = |name: &str, n: usize, k: usize| -> Result<RawMatrix<'_>> {
        let t = f
            .tensor(name)
            .ok_or_else(|| anyhow!("{file}: tensor {name} is missing"))?;
        if t.dims.len() != 2 || t.dims[0] as usize != k || t.dims[1] as usize != n {
            bail!(
                "{file}: tensor {name} has shape {:?}, expected [{k}, {n}]",
                t.dims
            );
        }
        let bs = t.ggml_type.block_size();
        if !k.is_multiple_of(bs.max(32)) {
            bail!(
                "{file}: tensor {name} row length {k} is not a multiple of {} ({:?} blocks)",
                bs.max(32),
                t.ggml_type
            );
        }
        Ok(RawMatrix {
            ty: t.ggml_type,
            data: Cow::Borrowed(f.data(t)),
            n,
            k,
        })
    };
    let vector = |name: &str, n: usize| -> Result<Vec<f32>> {
        vector_opt(name, n)?.ok_or_else(|| anyhow!("{file}: tensor {name} is missing"))
    };
    let (d, qd, kvd, ff, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        let bias = |s: &str, n: usize| vector_opt(&format!("blk.{i}.{s}.bias"), n);
        let qkv_bias = match (
            bias("attn_q", qd)?,
            bias("attn_k", kvd)?,
            bias("attn_v", kvd)?,
        ) {
            (None, None, None) => None,
            (q, k, v) => Some(
                [(q, qd), (k, kvd), (v, kvd)]
                    .into_iter()
                    .flat_map(|(b, n)| b.unwrap_or_else(|| vec![0.0; n]))
                    .collect(),
            ),
        };
        layers.push(check_layer(
            Layer {
                attn_norm: vector(&p("attn_norm"), d)?,
                wqkv: vec![
                    matrix(&p("attn_q"), qd, d)?,
                    matrix(&p("attn_k"), kvd, d)?,
                    matrix(&p("attn_v"), kvd, d)?,
                ],
                qkv_bias,
                q_norm: vector_opt(&p("attn_q_norm"), hd)?,
                k_norm: vector_opt(&p("attn_k_norm"), hd)?,
                wo: vec![matrix(&p("attn_output"), d, qd)?],
                post_attn_norm: vector_opt(&p("post_attention_norm"), d)?,
                ffn_norm: vector(&p("ffn_norm"), d)?,
                w13: vec![matrix(&p("ffn_gate"), ff, d)?, matrix(&p("ffn_up"), ff, d)?],
                w2: vec![matrix(&p("ffn_down"), d, ff)?],
                post_ffn_norm: vector_opt(&p("post_ffw_norm"), d)?,
            },
            &c,
        )?);
    }
    let embed = vec![matrix("token_embd.weight", c.vocab_size, d)?];
    let lm_head = match f.tensor("output.weight") {
        Some(_) => Some(vec![matrix("output.weight", c.vocab_size, d)?]),
        None => None,
    };
    let norm = vector("output_norm.weight", d)?;
    let parts = Weights {
        embed,
        layers,
        norm,
        lm_head,
    };
    let model = Model::build(c, parts, opts.device, opts.force_f32)
        .with_context(|| format!("cannot place {file} on {}", opts.device))?;
    Ok((model, tokenizer))
}

/// Checks that a layer's optional tensors come as the architecture needs them (a gemma3 file
/// without post-norms is refused, not run wrong).
fn check_layer<'a>(p: LayerParts<'a>, c: &ModelConfig) -> Result<LayerParts<'a>> {
    let needs_qk_norm = matches!(c.arch, Arch::Qwen3 | Arch::Gemma3);
    if needs_qk_norm && (p.q_norm.is_none() || p.k_norm.is_none()) {
        bail!(
            "{} layers need q/k norm tensors; this file lacks them",
            c.arch.name()
        );
    }
    if c.arch == Arch::Gemma3 && (p.post_attn_norm.is_none() || p.post_ffn_norm.is_none()) {
        bail!(
            "gemma3 layers need post-attention and post-feed-forward norms; this file lacks them"
        );
    }
    Ok(p)
}

/// HF → ggml row order of a Q or K projection: ggml rotates adjacent pairs, HF rotates halves.
/// `k` is a row's length in elements of `T` (values, or bytes of a raw tensor).
fn permute_rows<T: Copy + Default>(
    w: &[T],
    n_heads: usize,
    head_dim: usize,
    k: usize,
    to_ggml: bool,
) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
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

/// A matrix of an HF file, kept in its dtype (the backend decides what to keep).
fn raw((ty, data): (GgmlType, &[u8]), n: usize, k: usize) -> RawMatrix<'_> {
    RawMatrix {
        ty,
        data: Cow::Borrowed(data),
        n,
        k,
    }
}

/// HF names of a layer's norms: `(attention, pre-ffn, post-attention, post-ffn)`.
fn hf_norm_names(arch: Arch) -> [&'static str; 4] {
    if arch == Arch::Gemma3 {
        [
            "input_layernorm",
            "pre_feedforward_layernorm",
            "post_attention_layernorm",
            "post_feedforward_layernorm",
        ]
    } else {
        ["input_layernorm", "post_attention_layernorm", "", ""]
    }
}

fn load_safetensors_dir(dir: &Path, opts: LoadOptions) -> Result<(Model, Tokenizer)> {
    let cfg_path = dir.join("config.json");
    let cfg_file = cfg_path.display().to_string();
    let hf = HfConfig::parse(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {cfg_file}"))?,
    )
    .with_context(|| format!("{cfg_file} is not a valid model config.json"))?;
    let mut c = config::from_hf(&hf, &cfg_file)?;
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
    let mut tensors: BTreeMap<String, (Vec<usize>, GgmlType, &[u8])> = BTreeMap::new();
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
            // Multimodal gemma3 checkpoints keep the decoder under `language_model.`.
            let name = name
                .strip_prefix("language_model.")
                .map(str::to_owned)
                .unwrap_or(name);
            tensors.insert(name, (view.shape().to_vec(), ty, view.data()));
        }
    }
    let mut take_opt = |name: &str, shape: &[usize]| -> Result<Option<(GgmlType, &[u8])>> {
        let Some((s, ty, data)) = tensors.remove(name) else {
            return Ok(None);
        };
        if s != shape {
            bail!(
                "{}: tensor {name} has shape {s:?}, expected {shape:?}",
                dir.display()
            );
        }
        Ok(Some((ty, data)))
    };
    let missing = |name: &str| anyhow!("{}: tensor {name} is missing", dir.display());
    let (d, qd, kvd, ff, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
    let pairs = c.arch.rope_style() == RopeStyle::Pairs;
    // Gemma's RMS norms multiply by (1 + w); GGUF files store 1 + w already.
    let shift = |(ty, data): (GgmlType, &[u8]), n: usize| -> Vec<f32> {
        let v = dequantize_vec(ty, data, n);
        if c.arch == Arch::Gemma3 {
            v.into_iter().map(|w| w + 1.0).collect()
        } else {
            v
        }
    };
    // HF rotates halves; pair-order architectures get ggml's row order.
    let permuted = |(ty, data): (GgmlType, &[u8]), heads: usize, k: usize| -> RawMatrix<'static> {
        RawMatrix {
            ty,
            data: Cow::Owned(permute_rows(
                data,
                heads,
                hd,
                data.len() / (heads * hd),
                true,
            )),
            n: heads * hd,
            k,
        }
    };
    let norms = hf_norm_names(c.arch);
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let mut take = |name: String, shape: &[usize]| -> Result<(GgmlType, &[u8])> {
            take_opt(&name, shape)?.ok_or_else(|| missing(&name))
        };
        let q = take(p("self_attn.q_proj"), &[qd, d])?;
        let k = take(p("self_attn.k_proj"), &[kvd, d])?;
        let (q, k) = if pairs {
            (permuted(q, c.n_heads, d), permuted(k, c.n_kv_heads, d))
        } else {
            (raw(q, qd, d), raw(k, kvd, d))
        };
        let v = raw(take(p("self_attn.v_proj"), &[kvd, d])?, kvd, d);
        let o = raw(take(p("self_attn.o_proj"), &[d, qd])?, d, qd);
        let gate = raw(take(p("mlp.gate_proj"), &[ff, d])?, ff, d);
        let up = raw(take(p("mlp.up_proj"), &[ff, d])?, ff, d);
        let down = raw(take(p("mlp.down_proj"), &[d, ff])?, d, ff);
        let attn_norm = shift(take(p(norms[0]), &[d])?, d);
        let ffn_norm = shift(take(p(norms[1]), &[d])?, d);
        let mut opt = |name: String, n: usize| -> Result<Option<Vec<f32>>> {
            Ok(take_opt(&name, &[n])?.map(|t| shift(t, n)))
        };
        let (post_attn_norm, post_ffn_norm) = if norms[2].is_empty() {
            (None, None)
        } else {
            (opt(p(norms[2]), d)?, opt(p(norms[3]), d)?)
        };
        let q_norm = opt(p("self_attn.q_norm"), hd)?;
        let k_norm = opt(p("self_attn.k_norm"), hd)?;
        let b = |s: &str| format!("model.layers.{i}.self_attn.{s}.bias");
        let mut bias = |name: String, n: usize| -> Result<Option<Vec<f32>>> {
            Ok(take_opt(&name, &[n])?.map(|(ty, data)| dequantize_vec(ty, data, n)))
        };
        let qkv_bias = match (
            bias(b("q_proj"), qd)?,
            bias(b("k_proj"), kvd)?,
            bias(b("v_proj"), kvd)?,
        ) {
            (None, None, None) => None,
            (q, k, v) => Some(
                [(q, qd), (k, kvd), (v, kvd)]
                    .into_iter()
                    .flat_map(|(b, n)| b.unwrap_or_else(|| vec![0.0; n]))
                    .collect(),
            ),
        };
        layers.push(check_layer(
            Layer {
                attn_norm,
                wqkv: vec![q, k, v],
                qkv_bias,
                q_norm,
                k_norm,
                wo: vec![o],
                post_attn_norm,
                ffn_norm,
                w13: vec![gate, up],
                w2: vec![down],
                post_ffn_norm,
            },
            &c,
        )?);
    }
    let embed_name = "model.embed_tokens.weight";
    let embed = take_opt(embed_name, &[c.vocab_size, d])?.ok_or_else(|| missing(embed_name))?;
    // Tied unless the checkpoint has its own output projection.
    let lm_head = take_opt("lm_head.weight", &[c.vocab_size, d])?;
    if lm_head.is_none() && hf.tie_word_embeddings == Some(false) {
        return Err(missing("lm_head.weight"));
    }
    let norm = shift(
        take_opt("model.norm.weight", &[d])?.ok_or_else(|| missing("model.norm.weight"))?,
        d,
    );
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    c.mask_padding(tokenizer.defined_vocab());
    let parts = Weights {
        embed: vec![raw(embed, c.vocab_size, d)],
        layers,
        norm,
        lm_head: lm_head.map(|t| vec![raw(t, c.vocab_size, d)]),
    };
    let model = Model::build(c, parts, opts.device, opts.force_f32)
        .with_context(|| format!("cannot place {} on {}", dir.display(), opts.device))?;
    Ok((model, tokenizer))
}

/// Writes `model` (dequantized to f32) in the Hugging Face layout of its architecture:
/// `config.json`, `model.safetensors` (pair-order Q/K rows permuted back to HF order, gemma norms
/// stored as `w − 1`) and `tokenizer.json`.
pub fn export_hf_safetensors(model: &Model, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    let c = &model.config;
    let Some(w) = model.cpu_weights() else {
        bail!(
            "exporting to the HF layout needs the model on specd's CPU kernels (it is on {})",
            model.device()
        );
    };
    if !c.rope.freq_factors.is_empty() {
        bail!("exporting a model with RoPE frequency factors (llama 3) to the HF layout is not supported");
    }
    std::fs::create_dir_all(dir)?;
    let rows = |m: &Matrix, from: usize, to: usize| -> Vec<f32> {
        let k = m.k;
        let mut w = vec![0f32; (to - from) * k];
        for j in from..to {
            m.row(j, &mut w[(j - from) * k..(j - from + 1) * k]);
        }
        w
    };
    let unshift = |v: &[f32]| -> Vec<f32> {
        if c.arch == Arch::Gemma3 {
            v.iter().map(|w| w - 1.0).collect()
        } else {
            v.to_vec()
        }
    };
    let pairs = c.arch.rope_style() == RopeStyle::Pairs;
    let (d, qd, kvd, ff, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    out.push((
        "model.embed_tokens.weight".into(),
        vec![c.vocab_size, d],
        rows(&w.embed, 0, c.vocab_size),
    ));
    if let Some(h) = &w.lm_head {
        out.push((
            "lm_head.weight".into(),
            vec![c.vocab_size, d],
            rows(h, 0, c.vocab_size),
        ));
    }
    out.push(("model.norm.weight".into(), vec![d], unshift(&w.norm)));
    let norms = hf_norm_names(c.arch);
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        out.push((p(norms[0]), vec![d], unshift(&l.attn_norm)));
        out.push((p(norms[1]), vec![d], unshift(&l.ffn_norm)));
        for (name, w) in [(norms[2], &l.post_attn_norm), (norms[3], &l.post_ffn_norm)] {
            if let Some(w) = w {
                out.push((p(name), vec![d], unshift(w)));
            }
        }
        for (name, w) in [
            ("self_attn.q_norm", &l.q_norm),
            ("self_attn.k_norm", &l.k_norm),
        ] {
            if let Some(w) = w {
                out.push((p(name), vec![hd], unshift(w)));
            }
        }
        if let Some(b) = &l.qkv_bias {
            let bn = |s: &str| format!("model.layers.{i}.self_attn.{s}.bias");
            out.push((bn("q_proj"), vec![qd], b[..qd].to_vec()));
            out.push((bn("k_proj"), vec![kvd], b[qd..qd + kvd].to_vec()));
            out.push((bn("v_proj"), vec![kvd], b[qd + kvd..].to_vec()));
        }
        let (mut q, mut k) = (rows(&l.wqkv, 0, qd), rows(&l.wqkv, qd, qd + kvd));
        if pairs {
            q = permute_rows(&q, c.n_heads, hd, d, false);
            k = permute_rows(&k, c.n_kv_heads, hd, d, false);
        }
        out.push((p("self_attn.q_proj"), vec![qd, d], q));
        out.push((p("self_attn.k_proj"), vec![kvd, d], k));
        out.push((
            p("self_attn.v_proj"),
            vec![kvd, d],
            rows(&l.wqkv, qd + kvd, qd + 2 * kvd),
        ));
        out.push((p("self_attn.o_proj"), vec![d, qd], rows(&l.wo, 0, d)));
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
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&hf_config_json(model))?,
    )?;
    tokenizer.save_hf_dir(dir)?;
    Ok(())
}

/// The `config.json` of a model (the keys [`config::from_hf`] reads).
fn hf_config_json(model: &Model) -> serde_json::Value {
    let c = &model.config;
    let model_type = match c.arch {
        Arch::Gemma3 => "gemma3_text",
        a => a.name(),
    };
    let mut j = serde_json::json!({
        "model_type": model_type,
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "num_hidden_layers": c.n_layers,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope.base,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": model.cpu_weights().is_some_and(|w| w.lm_head.is_none()),
        "torch_dtype": "float32",
    });
    if let Some(y) = &c.rope.yarn {
        j["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": y.factor,
            "original_max_position_embeddings": y.original_context, "beta_fast": y.beta_fast,
            "beta_slow": y.beta_slow, "attention_factor": y.mscale});
    }
    if c.rope.linear_factor != 1.0 {
        j["rope_scaling"] =
            serde_json::json!({"rope_type": "linear", "factor": c.rope.linear_factor});
    }
    if let Some(w) = c.sliding_window {
        j["sliding_window"] = w.into();
        j["use_sliding_window"] = true.into();
        j["layer_types"] = (0..c.n_layers)
            .map(|i| {
                if c.is_local(i) {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect::<Vec<_>>()
            .into();
    }
    if let Some(r) = &c.rope_local {
        j["rope_local_base_freq"] = r.base.into();
    }
    if c.arch == Arch::Gemma3 {
        j["query_pre_attn_scalar"] = (1.0 / (c.attn_scale as f64).powi(2)).round().into();
    }
    for (k, v) in [
        ("attn_logit_softcapping", c.attn_softcap),
        ("final_logit_softcapping", c.final_softcap),
    ] {
        if let Some(v) = v {
            j[k] = v.into();
        }
    }
    j
}
