//! The candle backend (the model code CUDA runs) on candle's CPU device, checked against specd's
//! kernels on the real offline models: teacher-forced top-1 agreement over GSM8K text, greedy
//! speculative decoding on candle agreeing with candle's own target-only argmax, and the KV cache
//! truncating and growing like the CPU one. Built with `--features candle`.
#![cfg(feature = "candle")]

mod common;

use std::sync::Arc;

use specd_engine::device::Device;
use specd_engine::model::{load_model, LoadOptions};
use specd_engine::pipeline::{encode_prompt, generate, LoadedModel, Mode, Prompt, Request};
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};
use specd_engine::sampling::SamplingParams;
use specd_engine::score::{self, Agreement, Feed};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

fn argmax(row: &[f32]) -> usize {
    specd_engine::sampling::argmax(row) as usize
}

fn load_on(name: &str, device: Device) -> LoadedModel {
    LoadedModel::load_on(name, device, &|m| eprintln!("{m}"))
        .unwrap_or_else(|e| panic!("cannot load {name} on {device}: {e:#}"))
}

/// GSM8K questions as chat prompts, tokenized.
fn gsm8k_sequences(t: &LoadedModel, n: usize) -> Vec<Vec<u32>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/gsm8k/test_dev.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let q = v["question"].as_str().unwrap();
            let a = v["answer"].as_str().unwrap();
            encode_prompt(&t.tokenizer, &format!("{q}\n{a}"), false).unwrap()
        })
        .collect()
}

/// Top-1 agreement and max |Δ logit| of two models over every position of `seqs`.
fn agreement(a: &LoadedModel, b: &LoadedModel, seqs: &[Vec<u32>], positions: usize) -> (f64, f32) {
    let mut r = Agreement::default();
    for s in seqs {
        r = r.merge(score::agreement(&a.model, &b.model, s).unwrap());
        if r.positions >= positions {
            break;
        }
    }
    assert!(r.positions >= positions, "only {} positions", r.positions);
    (r.top1_agreement(), r.max_abs_delta)
}

/// `name` loaded from its file with `force_f32` (exact dequantized weights, f32 arithmetic).
fn load_exact(name: &str, device: Device) -> LoadedModel {
    let m = load_on(name, Device::Cpu);
    let opts = LoadOptions::exact_on(device);
    let (model, tokenizer) = load_model(&m.path, opts).unwrap();
    LoadedModel {
        model: Arc::new(model),
        tokenizer: Arc::new(tokenizer),
        ..m
    }
}

#[test]
fn candle_logits_agree_with_specd_kernels_on_smollm2() {
    // The same weights in f32 arithmetic on both backends: the decoder itself agrees.
    let cpu = load_exact(DEFAULT_TARGET, Device::Cpu);
    let candle = load_exact(DEFAULT_TARGET, Device::CandleCpu);
    assert_eq!(candle.model.device(), Device::CandleCpu);
    let seqs = gsm8k_sequences(&cpu, 12);
    let (agree, max_diff) = agreement(&cpu, &candle, &seqs, 500);
    eprintln!("f32 weights: top-1 agreement {agree:.4}, max |Δ logit| {max_diff:.3e}");
    assert!(agree >= 0.99, "agreement {agree}");
    assert!(max_diff < 1e-3, "max |Δ logit| {max_diff}");
}

/// Quantized weights: both backends quantize activations for the product, differently (specd per
/// 32 values, candle per block of its activation type), so each is measured against the exact
/// arithmetic on the same weights, as compare.py --vs-f32 does. One test per model: on candle's
/// CPU device a K-quant model takes minutes on some machines.
fn quantized_agreement(name: &str) {
    let exact = load_exact(name, Device::Cpu);
    let specd = load_on(name, Device::Cpu);
    let candle = load_on(name, Device::CandleCpu);
    let seqs = gsm8k_sequences(&exact, 12);
    let (a_specd, _) = agreement(&exact, &specd, &seqs, 500);
    let (a_candle, d_candle) = agreement(&exact, &candle, &seqs, 500);
    let (a_pair, _) = agreement(&specd, &candle, &seqs, 500);
    eprintln!(
        "{name}: top-1 vs exact: specd {a_specd:.4}, candle {a_candle:.4} (max |Δ logit| {d_candle:.3}); specd vs candle {a_pair:.4}"
    );
    assert!(a_candle >= 0.93, "{name}: candle vs exact {a_candle}");
    assert!(a_pair >= 0.93, "{name}: specd vs candle {a_pair}");
}

#[test]
fn candle_q8_0_agrees_with_exact_arithmetic() {
    quantized_agreement(DEFAULT_TARGET);
}

#[test]
fn candle_q4_k_m_agrees_with_exact_arithmetic() {
    quantized_agreement("smollm2-135m-q4_k_m");
}

#[test]
fn candle_cache_truncates_and_blocks_agree_with_steps() {
    let t = load_on(DEFAULT_TARGET, Device::CandleCpu);
    let tokens = encode_prompt(&t.tokenizer, common::PROMPTS[11], true).unwrap();
    let vocab = t.model.config.vocab_size;
    let ctx = 20;
    let mut cache = t.model.new_cache();
    t.model.forward(&mut cache, &tokens[..ctx], ctx).unwrap();
    let mut steps = Vec::new();
    for &tok in &tokens[ctx..ctx + 8] {
        steps.push(argmax(&t.model.forward(&mut cache, &[tok], 0).unwrap()));
    }
    // Another continuation, then back: the cache is clean; an 8-row block agrees with 8 steps.
    cache.truncate(ctx);
    t.model.forward(&mut cache, &[1, 2, 3, 4, 5], 5).unwrap();
    cache.truncate(ctx);
    assert_eq!(cache.len(), ctx);
    let block = t
        .model
        .forward(&mut cache, &tokens[ctx..ctx + 8], 0)
        .unwrap();
    let blocks: Vec<usize> = block.chunks_exact(vocab).map(argmax).collect();
    assert_eq!(blocks, steps, "block vs step argmax");
    // A clone is independent of its source.
    let mut fork = cache.clone();
    t.model.forward(&mut fork, &[7, 8, 9], 3).unwrap();
    assert_eq!(fork.len(), ctx + 11);
    assert_eq!(cache.len(), ctx + 8);
    let again = t
        .model
        .forward(&mut cache, &tokens[ctx + 8..ctx + 9], 0)
        .unwrap();
    let mut fresh = t.model.new_cache();
    let reference = t
        .model
        .forward(&mut fresh, &tokens[..ctx + 9], ctx + 8)
        .unwrap();
    assert_eq!(argmax(&again), argmax(&reference));
    // Past the initial capacity (256 positions) the cache grows and keeps what it held.
    let long: Vec<u32> = tokens.iter().cycle().take(300).copied().collect();
    let mut c1 = t.model.new_cache();
    let a = t.model.forward(&mut c1, &long, 299).unwrap();
    let mut c2 = t.model.new_cache();
    t.model.forward(&mut c2, &long[..250], 250).unwrap();
    let b = t.model.forward(&mut c2, &long[250..], 49).unwrap();
    assert_eq!(argmax(&a), argmax(&b));
}

#[test]
fn greedy_speculative_on_candle_agrees_with_its_target_only_argmax() {
    let target = load_on(DEFAULT_TARGET, Device::CandleCpu);
    let draft = load_on(DEFAULT_DRAFT, Device::CandleCpu);
    let (mut same, mut total) = (0usize, 0usize);
    for prompt in &common::PROMPTS[..4] {
        let req = Request {
            prompt: Prompt::user(*prompt),
            stop: Vec::new(),
            logprobs: None,
            tenant: String::new(),
            max_tokens: 48,
            sampling: SamplingParams::default(),
            gamma: GammaPolicy::Fixed(4),
            mode: Mode::Speculative,
            drafter: DrafterSpec::Model,
            draft_sampling: DraftSampling::Greedy,
            policy: Default::default(),
        };
        let out = generate(&target, Some(&draft), &req, |_| {}).unwrap();
        assert!(out.stats.drafted_tokens > 0, "nothing drafted");
        let prompt_ids = encode_prompt(&target.tokenizer, prompt, true).unwrap();
        // Teacher-forced under target-only decoding: one row per step, as target-only runs.
        let r = score::score_fed(&target.model, &prompt_ids, &out.token_ids, Feed::Steps).unwrap();
        same += r.tokens - r.non_argmax_tokens;
        total += r.tokens;
    }
    let agree = same as f64 / total as f64;
    eprintln!("greedy speculative on candle: teacher-forced agreement {agree:.4} over {total}");
    assert!(agree >= 0.99, "agreement {agree}");
}
