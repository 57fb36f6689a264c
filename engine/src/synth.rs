//! Random-weight GGUF models of real shapes, for timing where no model file can go (the GPU
//! machine takes 64 MiB in all and has no network): `specd models synth`.
//!
//! A synthesized model is **timing-only**: its weights are uniform noise, its text is
//! meaningless. It is deterministic: every value is a pure function of (seed, tensor name,
//! index), so the same command writes the same bytes on any machine and with any thread count,
//! and two files of one seed in different types hold the same weights at different precisions
//! (a draft "at a lower precision" of a target). Its vocabulary is byte-level BPE: the 256 byte
//! tokens, a few merges, then filler tokens `<synth_N>` up to the shape's vocabulary size.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::gguf::{write_gguf_streaming, TensorHead, Value};
use crate::presets::atomic_write;
use crate::quant::{quantize, GgmlType, ModelInfo, Recipe};
use crate::sampling::splitmix64;

/// A model shape: the dimensions of a llama-family model people run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub vocab: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_dim: usize,
    pub rope_base: f64,
    pub context_length: usize,
    /// The output projection is the embedding (no `output.weight`).
    pub tied: bool,
}

/// The shapes `--shape` accepts.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "tiny",
        vocab: 512,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 128,
        rope_base: 10000.0,
        context_length: 2048,
        tied: true,
    },
    // SmolLM2-135M.
    Shape {
        name: "smollm2-135m",
        vocab: 49152,
        dim: 576,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        ffn_dim: 1536,
        rope_base: 100000.0,
        context_length: 8192,
        tied: true,
    },
    // Llama-3.2-1B.
    Shape {
        name: "llama-1b",
        vocab: 128256,
        dim: 2048,
        n_layers: 16,
        n_heads: 32,
        n_kv_heads: 8,
        ffn_dim: 8192,
        rope_base: 500000.0,
        context_length: 131072,
        tied: true,
    },
    // Llama-3.1-8B.
    Shape {
        name: "llama-8b",
        vocab: 128256,
        dim: 4096,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 8,
        ffn_dim: 14336,
        rope_base: 500000.0,
        context_length: 131072,
        tied: false,
    },
];

impl Shape {
    pub fn parse(name: &str) -> Result<Shape> {
        SHAPES
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .copied()
            .with_context(|| {
                let all: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
                format!("unknown shape {name:?} (shapes: {})", all.join(", "))
            })
    }

    /// Every tensor: (name, rows, columns); vectors have one row.
    fn tensors(&self) -> Vec<(String, usize, usize)> {
        let (d, ff) = (self.dim, self.ffn_dim);
        let hd = d / self.n_heads;
        let kv = hd * self.n_kv_heads;
        let mut t = vec![("token_embd.weight".to_string(), self.vocab, d)];
        for l in 0..self.n_layers {
            let p = |x: &str| format!("blk.{l}.{x}.weight");
            t.extend([
                (p("attn_norm"), 1, d),
                (p("attn_q"), d, d),
                (p("attn_k"), kv, d),
                (p("attn_v"), kv, d),
                (p("attn_output"), d, d),
                (p("ffn_norm"), 1, d),
                (p("ffn_gate"), ff, d),
                (p("ffn_up"), ff, d),
                (p("ffn_down"), d, ff),
            ]);
        }
        t.push(("output_norm.weight".to_string(), 1, d));
        if !self.tied {
            t.push(("output.weight".to_string(), self.vocab, d));
        }
        t
    }

    /// Number of weights.
    pub fn n_params(&self) -> usize {
        self.tensors().iter().map(|(_, n, k)| n * k).sum()
    }
}

/// GPT-2's printable stand-in for each byte (the byte-level BPE alphabet).
fn byte_char(b: u8) -> char {
    let direct = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if direct(b) {
        return char::from(b);
    }
    let shifted = (0..b).filter(|&x| !direct(x)).count() as u32;
    char::from_u32(256 + shifted).expect("a valid char")
}

/// The metadata of a synthesized model (architecture, shape, tokenizer).
fn metadata(shape: &Shape, recipe: Recipe, seed: u64) -> BTreeMap<String, Value> {
    let s = |v: &str| Value::String(v.into());
    let u = |v: usize| Value::U32(v as u32);
    let mut m = BTreeMap::new();
    m.insert("general.architecture".into(), s("llama"));
    m.insert(
        "general.name".into(),
        s(&format!(
            "specd synth {} seed {seed} (random weights, timing only)",
            shape.name
        )),
    );
    m.insert("general.file_type".into(), Value::U32(recipe.file_type()));
    m.insert("llama.embedding_length".into(), u(shape.dim));
    m.insert("llama.block_count".into(), u(shape.n_layers));
    m.insert("llama.feed_forward_length".into(), u(shape.ffn_dim));
    m.insert("llama.attention.head_count".into(), u(shape.n_heads));
    m.insert("llama.attention.head_count_kv".into(), u(shape.n_kv_heads));
    m.insert("llama.context_length".into(), u(shape.context_length));
    m.insert(
        "llama.rope.freq_base".into(),
        Value::F32(shape.rope_base as f32),
    );
    m.insert(
        "llama.attention.layer_norm_rms_epsilon".into(),
        Value::F32(1e-5),
    );
    // Byte-level BPE: bytes, a few merges (so encoding is not only bytes), fillers, end of text.
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let space = byte_char(b' ');
    let merges = [
        ("t", "h"),
        ("th", "e"),
        (&*space.to_string(), "the"),
        ("i", "n"),
        (&*space.to_string(), "a"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    let eos = shape.vocab - 1;
    while tokens.len() < eos {
        tokens.push(format!("<synth_{}>", tokens.len()));
    }
    tokens.push("<|endoftext|>".into());
    let mut types = vec![Value::I32(1); tokens.len()];
    types[eos] = Value::I32(3);
    m.insert("tokenizer.ggml.model".into(), s("gpt2"));
    m.insert("tokenizer.ggml.pre".into(), s("gpt2"));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    m.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    m.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(merges.iter().map(|(a, b)| s(&format!("{a} {b}"))).collect()),
    );
    m.insert("tokenizer.ggml.eos_token_id".into(), u(eos));
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    m
}

/// FNV-1a of a tensor name: its part of the key of every value.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Rows per generated chunk: about a million values, whole rows.
fn chunk_rows(cols: usize) -> usize {
    ((1 << 20) / cols).max(1)
}

/// Values of rows `rows` of tensor `name` (`cols` per row): uniform in ±amp, keyed by (seed, name,
/// chunk), so any chunking of the work gives the same values.
fn values(seed: u64, name: &str, chunk: usize, rows: usize, cols: usize, amp: f32) -> Vec<f32> {
    let mut state = splitmix64(seed ^ name_key(name) ^ splitmix64(chunk as u64));
    (0..rows * cols)
        .map(|_| {
            state = splitmix64(state);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// The spread of a tensor's values: norms are 1; a matrix keeps its input's scale (std 1/√k);
/// the embedding and output give logits of standard deviation about 3.
fn amplitude(name: &str, rows: usize, cols: usize) -> Option<f32> {
    if rows == 1 {
        return None;
    }
    let std = if name == "token_embd.weight" || name == "output.weight" {
        3.0 / (cols as f32).sqrt()
    } else {
        1.0 / (cols as f32).sqrt()
    };
    Some(std * 3f32.sqrt())
}

/// Writes a synthesized model of `shape` with weights of `dtype` (a type name or llama.cpp mix, as
/// `specd models quantize --type`) to `out`, atomically. `progress(done, total)` is called with
/// weights written so far.
pub fn write_synth(
    shape: &Shape,
    dtype: &str,
    seed: u64,
    out: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<()> {
    let recipe = Recipe::parse(dtype)?;
    if shape.vocab < 300 {
        bail!("shape {}: vocabulary under 300 tokens", shape.name);
    }
    let metadata = metadata(shape, recipe, seed);
    let tensors = shape.tensors();
    let dims: Vec<[u64; 2]> = tensors
        .iter()
        .map(|(_, n, k)| [*k as u64, *n as u64])
        .collect();
    let shapes: Vec<(&str, &[u64])> = tensors
        .iter()
        .zip(&dims)
        .map(|((name, n, _), d)| (name.as_str(), if *n == 1 { &d[..1] } else { &d[..] }))
        .collect();
    let info = ModelInfo::from_metadata("llama", |k| metadata.get(k).and_then(Value::as_u64));
    let types: Vec<GgmlType> = recipe
        .tensor_types(&shapes, &info)
        .into_iter()
        .map(|t| t.unwrap_or(GgmlType::F32))
        .collect();
    let heads: Vec<TensorHead> = tensors
        .iter()
        .zip(&shapes)
        .zip(&types)
        .map(|(((name, n, k), (_, d)), &ty)| TensorHead {
            name: name.clone(),
            dims: d.to_vec(),
            ggml_type: ty,
            n_bytes: (n * k / ty.block_size() * ty.block_bytes()) as u64,
        })
        .collect();
    let total = shape.n_params() as u64;
    let mut done = 0u64;
    atomic_write(out, |w| {
        write_gguf_streaming(w, &metadata, &heads, |i, w| {
            let (name, rows, cols) = &tensors[i];
            let (rows, cols, ty) = (*rows, *cols, types[i]);
            let Some(amp) = amplitude(name, rows, cols) else {
                w.write_all(&quantize(ty, &vec![1.0; cols])?)?;
                return Ok(());
            };
            let per = chunk_rows(cols);
            let n_chunks = rows.div_ceil(per);
            // A window of chunks at a time in parallel, written in order: bounded memory.
            let window = 4 * rayon::current_num_threads();
            for start in (0..n_chunks).step_by(window) {
                let parts: Vec<Vec<u8>> = (start..(start + window).min(n_chunks))
                    .into_par_iter()
                    .map(|c| {
                        let r = per.min(rows - c * per);
                        quantize(ty, &values(seed, name, c, r, cols, amp))
                    })
                    .collect::<Result<_>>()
                    .with_context(|| format!("tensor {name}"))?;
                for p in parts {
                    w.write_all(&p)?;
                }
                let rows_done = ((start + window) * per).min(rows);
                progress(done + (rows_done * cols) as u64, total);
            }
            done += (rows * cols) as u64;
            Ok(())
        })
    })
    .with_context(|| format!("cannot write {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        let all: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn values_do_not_depend_on_chunking_of_the_calls() {
        let a = values(7, "blk.0.attn_q.weight", 3, 2, 64, 1.0);
        let b = values(7, "blk.0.attn_q.weight", 3, 2, 64, 1.0);
        let c = values(8, "blk.0.attn_q.weight", 3, 2, 64, 1.0);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| v.abs() <= 1.0));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.2, "mean {mean}");
    }

    fn synth(dtype: &str, seed: u64, dir: &Path, threads: usize) -> std::path::PathBuf {
        let path = dir.join(format!("tiny-{dtype}-{seed}-{threads}.gguf"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let shape = Shape::parse("tiny").unwrap();
        pool.install(|| write_synth(&shape, dtype, seed, &path, &|_, _| {}))
            .unwrap();
        path
    }

    #[test]
    fn same_seed_same_bytes_whatever_the_threads_and_a_model_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::read(synth("q8_0", 5, dir.path(), 1)).unwrap();
        let b = std::fs::read(synth("q8_0", 5, dir.path(), 3)).unwrap();
        let c = std::fs::read(synth("q8_0", 6, dir.path(), 2)).unwrap();
        assert!(a == b, "same seed, other thread count: other bytes");
        assert!(a != c, "another seed: same bytes");

        // The file loads as a model with its tokenizer; the q8_0 file holds the f32 file's
        // weights at a lower precision, so their logits are close and mostly share the argmax.
        let lf = crate::pipeline::LoadedModel::load(
            synth("f32", 5, dir.path(), 2).to_str().unwrap(),
            &|_| {},
        )
        .unwrap();
        let lq = crate::pipeline::LoadedModel::load(
            synth("q8_0", 5, dir.path(), 2).to_str().unwrap(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(lf.model.config.vocab_size, 512);
        let ids = lf.tokenizer.encode("the cat in the hat", false).unwrap();
        assert!(ids.contains(&258), "merges apply: {ids:?}");
        assert_eq!(lf.tokenizer.decode(&ids).unwrap(), "the cat in the hat");
        let forward = |m: &crate::model::Model| {
            let mut cache = m.new_cache();
            m.forward(&mut cache, &ids, 0).unwrap()
        };
        let (f, q) = (forward(&lf.model), forward(&lq.model));
        let argmax =
            |row: &[f32]| (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        let v = 512;
        let mut same = 0;
        for p in 0..ids.len() {
            let (rf, rq) = (&f[p * v..(p + 1) * v], &q[p * v..(p + 1) * v]);
            let spread = rf.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!(spread > 1.0, "logits too flat: {spread}");
            let d = rf
                .iter()
                .zip(rq)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(d < 0.1 * spread, "position {p}: max delta {d} of {spread}");
            same += (argmax(rf) == argmax(rq)) as usize;
        }
        assert!(same * 10 >= ids.len() * 8, "{same} of {}", ids.len());
    }

    #[test]
    fn unknown_shape_names_the_shapes() {
        let e = Shape::parse("llama-70b").unwrap_err().to_string();
        assert!(e.contains("llama-8b") && e.contains("smollm2-135m"), "{e}");
    }

    #[test]
    fn shapes_have_their_parameter_counts() {
        // Llama-3.1-8B has 8.03 B weights, Llama-3.2-1B 1.24 B, SmolLM2-135M 134.5 M.
        let p = |n| Shape::parse(n).unwrap().n_params() as f64;
        assert!((p("llama-8b") / 8.03e9 - 1.0).abs() < 0.01);
        assert!((p("llama-1b") / 1.236e9 - 1.0).abs() < 0.01);
        assert!((p("smollm2-135m") / 134.5e6 - 1.0).abs() < 0.01);
    }
}
