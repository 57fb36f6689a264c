//! Batch invariance of the block forward on the real offline models: the logits of a position are
//! bit-identical whether it is computed alone or inside a block of 2–9 tokens, at any cache length
//! and after a truncate.

mod common;

use specd_engine::model::Model;
use specd_engine::pipeline::encode_prompt;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check_model(model: &Model, tokens: &[u32]) {
    let vocab = model.config.vocab_size;
    for &ctx in &[1usize, 9, 33] {
        // Reference: one token at a time from a cache of `ctx` tokens.
        let mut cache = model.new_cache();
        model.forward(&mut cache, &tokens[..ctx], ctx).unwrap();
        let mut steps = Vec::new();
        for &t in &tokens[ctx..ctx + 9] {
            steps.push(model.forward(&mut cache, &[t], 0).unwrap());
        }
        for block in 2..=9 {
            cache.truncate(ctx);
            let logits = model
                .forward(&mut cache, &tokens[ctx..ctx + block], 0)
                .unwrap();
            for i in 0..block {
                assert_eq!(
                    bits(&logits[i * vocab..(i + 1) * vocab]),
                    bits(&steps[i]),
                    "cache {ctx}, block {block}, position {i}: block forward differs from step-by-step"
                );
            }
            // Only the last row requested: same bits.
            cache.truncate(ctx);
            let last = model
                .forward(&mut cache, &tokens[ctx..ctx + block], block - 1)
                .unwrap();
            assert_eq!(
                bits(&last),
                bits(&steps[block - 1]),
                "last-row logits differ (cache {ctx}, block {block})"
            );
        }
        // A different continuation, then truncate back: the cache is clean.
        cache.truncate(ctx);
        model.forward(&mut cache, &[1, 2, 3, 4], 4).unwrap();
        cache.truncate(ctx);
        let again = model.forward(&mut cache, &tokens[ctx..ctx + 3], 0).unwrap();
        for i in 0..3 {
            assert_eq!(
                bits(&again[i * vocab..(i + 1) * vocab]),
                bits(&steps[i]),
                "after truncate, position {i} differs"
            );
        }
    }
}

#[test]
fn block_forward_is_batch_invariant_on_the_target() {
    let t = common::target();
    let tokens = encode_prompt(&t.tokenizer, common::PROMPTS[11], true).unwrap();
    assert!(tokens.len() >= 42);
    check_model(&t.model, &tokens);
}

#[test]
fn block_forward_is_batch_invariant_on_the_draft() {
    let d = common::draft();
    let tokens = encode_prompt(&d.tokenizer, common::PROMPTS[11], true).unwrap();
    check_model(&d.model, &tokens);
}

#[test]
fn context_overflow_and_bad_ids_are_errors() {
    let t = common::target();
    let mut cache = t.model.new_cache();
    let err = t
        .model
        .forward(&mut cache, &[49152], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("49152") && err.contains("vocabulary"), "{err}");
    assert_eq!(cache.len(), 0, "a failed forward must not touch the cache");
    let long = vec![1u32; t.model.config.context_length + 1];
    let err = t
        .model
        .forward(&mut cache, &long, long.len())
        .unwrap_err()
        .to_string();
    assert!(err.contains("context length"), "{err}");
}

#[test]
fn block_forward_is_batch_invariant_on_k_quants() {
    for name in ["smollm2-135m-q6_k", "smollm2-135m-q4_k_m"] {
        let m = common::load(name);
        let tokens = encode_prompt(
            &m.tokenizer,
            "Explain photosynthesis to a child, in three steps, and then summarize it.",
            true,
        )
        .unwrap();
        check_model(&m.model, &tokens);
    }
}

#[test]
fn block_forward_is_batch_invariant_on_gemma3() {
    let m = common::load("gemma3-270m-q4_k_m");
    let tokens = encode_prompt(
        &m.tokenizer,
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many \
         clips in May. How many clips did Natalia sell altogether in April and May? Answer: In May \
         she sold 48 / 2 = 24 clips.",
        false,
    )
    .unwrap();
    assert!(tokens.len() >= 42, "{} tokens", tokens.len());
    check_model(&m.model, &tokens);
}
