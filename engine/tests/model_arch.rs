//! specd's forward against llama.cpp's on tiny random-weight models of each supported decoder family
//! (tests/fixtures/arch, written by scripts/llamacpp/make_arch_fixtures.py with llama.cpp from the
//! llama-cpp-python 0.3.36 sdist, F32 weights and KV cache): over a fixed token sequence, teacher-forced,
//! the argmax must agree at every position and log-softmax must agree within 1e-3.
//!
//! The fixtures' script also checks each against an independent numpy forward: it is 3e-6–2e-4 from
//! llama.cpp (gemma3 4.7e-4: llama.cpp's GELU goes through an fp16 table), so 1e-3 leaves a correct
//! implementation room, while the mistakes it lists (no rope_freqs, no q/k/v bias, no q/k norm, a
//! sliding window off by one, one rope base for all layers, ...) land 0.3–23 away.

use std::path::{Path, PathBuf};

use specd_engine::device::Device;
use specd_engine::model::{load_model, LoadOptions};

const MAX_ABS_DLOGSOFTMAX: f64 = 1e-3;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arch")
}

struct Fixture {
    name: String,
    facts: serde_json::Value,
    ids: Vec<u32>,
    vocab: usize,
    /// llama.cpp's logits, `ids.len()` rows of `vocab`.
    reference: Vec<f32>,
}

fn read_logits(file: &str, rows: usize, vocab: usize) -> Vec<f32> {
    let path = dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes.len(),
        rows * vocab * 4,
        "{}: not {rows} x {vocab} float32",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn fixture(name: &str) -> Fixture {
    let path = dir().join(format!("{name}.json"));
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    let ids: Vec<u32> = facts["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let vocab = facts["vocab_size"].as_u64().unwrap() as usize;
    assert!(
        ids.len() >= 24,
        "{name}: the fixture holds only {} ids",
        ids.len()
    );
    let reference = read_logits(facts["logits"].as_str().unwrap(), ids.len(), vocab);
    Fixture {
        name: name.to_string(),
        facts,
        ids,
        vocab,
        reference,
    }
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&l| l as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[derive(Debug)]
struct Agreement {
    rows: usize,
    top1_agree: usize,
    max_abs_dls: f64,
    mean_abs_dls: f64,
    /// The row of the largest difference.
    worst_row: usize,
}

fn compare(a: &[f32], b: &[f32], vocab: usize) -> Agreement {
    assert_eq!(a.len(), b.len());
    let rows = a.len() / vocab;
    let (mut top1_agree, mut max_abs_dls, mut sum, mut worst_row) = (0, 0f64, 0f64, 0);
    for r in 0..rows {
        let (ra, rb) = (
            &a[r * vocab..(r + 1) * vocab],
            &b[r * vocab..(r + 1) * vocab],
        );
        top1_agree += (argmax(ra) == argmax(rb)) as usize;
        for (x, y) in log_softmax(ra).iter().zip(log_softmax(rb)) {
            let d = if x.is_finite() && y.is_finite() {
                (x - y).abs()
            } else {
                f64::INFINITY
            };
            sum += d;
            if d > max_abs_dls || d.is_nan() {
                max_abs_dls = d;
                worst_row = r;
            }
        }
    }
    Agreement {
        rows,
        top1_agree,
        max_abs_dls,
        mean_abs_dls: sum / (rows * vocab) as f64,
        worst_row,
    }
}

/// specd's teacher-forced logits over the fixture's ids: one block of every id, and the same ids fed
/// in chunks of 5 through the cache (the incremental path generation uses; for gemma3 it crosses the
/// sliding window).
fn specd_logits(f: &Fixture) -> (Vec<f32>, Vec<f32>) {
    let path = dir().join(f.facts["gguf"].as_str().unwrap());
    let (model, tokenizer) = load_model(&path, LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: specd cannot load the fixture: {e:#}", f.name));
    assert_eq!(
        tokenizer.vocab_size(),
        f.vocab,
        "{}: tokenizer vocabulary",
        f.name
    );
    let mut cache = model.new_cache();
    let block = model
        .forward(&mut cache, &f.ids, 0)
        .unwrap_or_else(|e| panic!("{}: specd's forward failed: {e:#}", f.name));
    assert_eq!(
        block.len(),
        f.ids.len() * f.vocab,
        "{}: logits shape",
        f.name
    );
    let mut cache = model.new_cache();
    let mut chunked = Vec::with_capacity(block.len());
    for chunk in f.ids.chunks(5) {
        chunked.extend(model.forward(&mut cache, chunk, 0).unwrap());
    }
    (block, chunked)
}

fn report(f: &Fixture, what: &str, a: &Agreement) -> String {
    format!(
        "{} ({}), {what}: top-1 agreement {}/{} ({:.1} %), max |Δ log-softmax| {:.3e} (row {}), mean {:.3e}",
        f.name,
        f.facts["architecture"].as_str().unwrap_or("?"),
        a.top1_agree,
        a.rows,
        100.0 * a.top1_agree as f64 / a.rows as f64,
        a.max_abs_dls,
        a.worst_row,
        a.mean_abs_dls
    )
}

fn agrees(a: &Agreement) -> bool {
    a.top1_agree == a.rows && a.max_abs_dls <= MAX_ABS_DLOGSOFTMAX
}

/// Asserts specd agrees with llama.cpp on fixture `name`, in one block and in chunks.
fn check(name: &str) {
    let f = fixture(name);
    let (block, chunked) = specd_logits(&f);
    let a = compare(&block, &f.reference, f.vocab);
    let c = compare(&chunked, &f.reference, f.vocab);
    let (ra, rc) = (report(&f, "one block", &a), report(&f, "chunks of 5", &c));
    eprintln!("{ra}\n{rc}");
    assert!(
        agrees(&a),
        "specd disagrees with llama.cpp (limit: all top-1, max |Δ| ≤ {MAX_ABS_DLOGSOFTMAX:e}): {ra}"
    );
    assert!(
        agrees(&c),
        "specd's incremental forward disagrees with llama.cpp (limit: all top-1, max |Δ| ≤ {MAX_ABS_DLOGSOFTMAX:e}): {rc}"
    );
}

#[test]
fn llama_matches_llamacpp() {
    check("llama");
}

#[test]
fn mistral_matches_llamacpp() {
    check("mistral");
}

#[test]
fn qwen2_matches_llamacpp() {
    check("qwen2");
}

/// YaRN scaling from the GGUF `rope.scaling.*` keys (type yarn, factor 4, original context 64):
/// the fixture's numpy forward without YaRN lands 12 away in log-softmax.
#[test]
fn qwen2_yarn_matches_llamacpp() {
    check("qwen2-yarn");
}

#[test]
fn qwen3_matches_llamacpp() {
    check("qwen3");
}

#[test]
fn gemma3_matches_llamacpp() {
    check("gemma3");
}

/// Llama 3.1/3.2 RoPE scaling lives only in the `rope_freqs.weight` tensor (the converter writes no
/// rope.scaling key for it). The fixture is sensitive to it — llama.cpp with and without the tensor
/// differ by far more than the tolerance — and specd must follow the tensor, not ignore it.
#[test]
fn llama3_rope_freqs_match_llamacpp() {
    let f = fixture("llama3-rope");
    let sensitivity = f.facts["with_vs_without_rope_freqs_max_abs_dlogsoftmax"]
        .as_f64()
        .unwrap();
    let norope = read_logits(
        f.facts["norope_logits"].as_str().unwrap(),
        f.ids.len(),
        f.vocab,
    );
    let fixture_gap = compare(&f.reference, &norope, f.vocab);
    eprintln!(
        "llama3-rope: llama.cpp with vs without rope_freqs: max |Δ log-softmax| {:.3} (recorded {sensitivity:.3})",
        fixture_gap.max_abs_dls
    );
    assert!(
        fixture_gap.max_abs_dls >= 100.0 * MAX_ABS_DLOGSOFTMAX,
        "the fixture is not sensitive to rope_freqs: {fixture_gap:?}"
    );
    assert!((fixture_gap.max_abs_dls - sensitivity).abs() < 1e-6);

    let (block, _) = specd_logits(&f);
    let vs_norope = compare(&block, &norope, f.vocab);
    let vs_ref = compare(&block, &f.reference, f.vocab);
    let (rn, rr) = (
        report(&f, "vs llama.cpp WITHOUT rope_freqs", &vs_norope),
        report(&f, "vs llama.cpp", &vs_ref),
    );
    eprintln!("{rn}\n{rr}");
    assert!(
        vs_norope.max_abs_dls >= 100.0 * MAX_ABS_DLOGSOFTMAX,
        "specd ignores rope_freqs.weight: its logits are (close to) llama.cpp's run without the tensor. {rn}; {rr}"
    );
    check("llama3-rope");
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The Hugging Face layout of each architecture: a fixture exported to `config.json` +
/// `model.safetensors` (Q/K rows permuted back for pair-order RoPE, gemma norms as `w − 1`) loads
/// to the same logits as the GGUF — bit for bit, except gemma, whose `(w − 1) + 1` may round.
#[test]
fn hf_layout_of_every_architecture_loads_to_the_gguf_logits() {
    use specd_engine::model::export_hf_safetensors;
    for name in ["llama", "mistral", "qwen2", "qwen2-yarn", "qwen3", "gemma3"] {
        let f = fixture(name);
        let path = dir().join(f.facts["gguf"].as_str().unwrap());
        let (gguf, tok) = load_model(&path, LoadOptions::exact_on(Device::Cpu)).unwrap();
        let hf_dir = tempfile::tempdir().unwrap();
        export_hf_safetensors(&gguf, &tok, hf_dir.path()).unwrap();
        let (hf, _) = load_model(hf_dir.path(), LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: the HF export does not load: {e:#}"));
        assert_eq!(hf.config, gguf.config, "{name}: config.json round trip");
        let a = gguf.forward(&mut gguf.new_cache(), &f.ids, 0).unwrap();
        let b = hf.forward(&mut hf.new_cache(), &f.ids, 0).unwrap();
        let max = max_abs_diff(&a, &b);
        eprintln!("{name}: GGUF vs HF export, max |Δ logit| {max:e}");
        if name == "gemma3" {
            assert!(max <= 1e-4, "{name}: GGUF vs HF differ by {max}");
        } else {
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: GGUF vs HF logits differ (max {max})"
            );
        }
    }
}

/// A model file that cannot run is refused at load, naming the file and what is supported.
#[test]
fn unsupported_architectures_and_cut_files_are_named() {
    let src = dir().join("llama.gguf");
    let bytes = std::fs::read(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // An unknown architecture: rename the key's value in place ("llama" → "llamb").
    let needle = b"general.architecture";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("architecture key");
    let mut renamed = bytes.clone();
    let val = at + needle.len() + 4 + 8; // type (u32) + string length (u64)
    assert_eq!(&renamed[val..val + 5], b"llama");
    renamed[val + 4] = b'b';
    let p = tmp.path().join("unknown-arch.gguf");
    std::fs::write(&p, &renamed).unwrap();
    let err = format!(
        "{:#}",
        load_model(&p, LoadOptions::default()).err().unwrap()
    );
    assert!(
        err.contains("unknown-arch.gguf") && err.contains("\"llamb\"") && err.contains("qwen3"),
        "{err}"
    );
    // A file cut inside its tensor data.
    let p = tmp.path().join("cut.gguf");
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let err = format!(
        "{:#}",
        load_model(&p, LoadOptions::default()).err().unwrap()
    );
    assert!(err.contains("cut.gguf"), "{err}");
    eprintln!("cut file: {err}");
}

/// HF `rope_scaling = {"rope_type": "llama3", ...}` gives the frequency factors that the converter
/// stored as `rope_freqs.weight`, and the same logits as the GGUF.
#[test]
fn hf_llama3_rope_scaling_matches_the_gguf_rope_freqs() {
    use specd_engine::model::export_hf_safetensors;
    let f = fixture("llama3-rope");
    let path = dir().join(f.facts["gguf"].as_str().unwrap());
    let (mut gguf, tok) = load_model(&path, LoadOptions::exact_on(Device::Cpu)).unwrap();
    let factors = std::mem::take(&mut gguf.config.rope.freq_factors);
    let hf_dir = tempfile::tempdir().unwrap();
    export_hf_safetensors(&gguf, &tok, hf_dir.path()).unwrap();
    let cfg_path = hf_dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let mut scaling = f.facts["llama3_rope_scaling"].clone();
    scaling["rope_type"] = "llama3".into();
    cfg["rope_scaling"] = scaling;
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (hf, _) = load_model(hf_dir.path(), LoadOptions::default()).unwrap();
    let max_rel = hf
        .config
        .rope
        .freq_factors
        .iter()
        .zip(&factors)
        .map(|(a, b)| ((a - b) / b).abs())
        .fold(0f32, f32::max);
    assert_eq!(hf.config.rope.freq_factors.len(), factors.len());
    assert!(
        max_rel <= 1e-6,
        "llama3 factors differ from rope_freqs by {max_rel}"
    );
    let a = gguf.forward(&mut gguf.new_cache(), &f.ids, 0).unwrap();
    let b = hf.forward(&mut hf.new_cache(), &f.ids, 0).unwrap();
    let max = max_abs_diff(&a, &b);
    eprintln!("llama3 rope_scaling: factors max rel diff {max_rel:e}, logits max |Δ| {max:e}");
    assert!(max <= 1e-4, "GGUF vs HF llama3 logits differ by {max}");
}
