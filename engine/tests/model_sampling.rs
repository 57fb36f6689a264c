//! Sampling exactness on the real model: the first token of speculative sampling follows the
//! target's own distribution (sampled and greedy model draft, prompt lookup), with top-k and top-p
//! on too, while a judge with a broken residual is caught by the same test; seeded runs repeat
//! exactly.

mod common;

use specd_engine::pipeline::{encode_prompt, generate, Mode, Prompt, Request};
use specd_engine::sampling::{argmax, sampling_dist, uniform, Dist, Purpose, SamplingParams};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::judge::Mutation;
use specd_engine::spec_decode::target::TargetSession;
use specd_engine::spec_decode::{DraftBlock, DraftDist, DraftSampling, Verifier};

/// Upper 99.9% quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty).
fn chi2_999(df: usize) -> f64 {
    let df = df as f64;
    let z = 3.09;
    df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3)
}

/// Chi-square of counts against `p`, pooling tokens with an expected count below 5.
fn chi_square(counts: &std::collections::HashMap<u32, usize>, p: &[f32], n: usize) -> (f64, usize) {
    let mut chi = 0.0;
    let mut bins = 0;
    let (mut pooled_e, mut pooled_c) = (0.0, 0usize);
    for (t, &pt) in p.iter().enumerate() {
        let e = pt as f64 * n as f64;
        let c = counts.get(&(t as u32)).copied().unwrap_or(0);
        if e >= 5.0 {
            chi += (c as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            pooled_e += e;
            pooled_c += c;
        }
    }
    if pooled_e > 0.0 {
        chi += (pooled_c as f64 - pooled_e).powi(2) / pooled_e.max(1e-9);
        bins += 1;
    }
    (chi, bins - 1)
}

#[test]
fn first_token_of_speculative_sampling_follows_the_target() {
    let t = common::target();
    let d = common::load("smollm2-135m-q4_0");
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
    };
    let prompt = encode_prompt(&t.tokenizer, "Tell me a joke about computers.", true).unwrap();
    let base = common::open_session(&t, &prompt, sampling, 8);
    // The target's p_T at the first completion position, and the draft's q there.
    let mut cache = t.model.new_cache();
    let p = match sampling_dist(
        &t.model
            .forward(&mut cache, &prompt, prompt.len() - 1)
            .unwrap(),
        &sampling,
    ) {
        Dist::Probs(p) => p,
        Dist::OneHot(_) => unreachable!(),
    };
    let mut dcache = d.model.new_cache();
    let q = match sampling_dist(
        &d.model
            .forward(&mut dcache, &prompt, prompt.len() - 1)
            .unwrap(),
        &sampling,
    ) {
        Dist::Probs(q) => q,
        Dist::OneHot(_) => unreachable!(),
    };
    let tv: f64 = p
        .iter()
        .zip(&q)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / 2.0;
    assert!(
        tv > 0.05,
        "draft and target too close ({tv}) for the test to detect a wrong residual"
    );
    // Prompt lookup's proposal there: two one-hot tokens found earlier in the prompt.
    let lookup = {
        use specd_engine::spec_decode::draft::ngram::{NgramConfig, NgramDrafter};
        let d = NgramDrafter::new(NgramConfig { min: 1, max: 4 }).unwrap();
        d.propose(&prompt, 2).block
    };
    assert_eq!(
        lookup.tokens.len(),
        2,
        "the prompt repeats its template tokens"
    );
    // The suffix drafter's there (the session's index alone): one-hot tokens too.
    let suffix = {
        use specd_engine::spec_decode::draft::suffix::{SuffixConfig, SuffixDrafter};
        let config = SuffixConfig {
            min_match: 1,
            min_prob: 0.01,
            ..SuffixConfig::default()
        };
        SuffixDrafter::new(config, None)
            .unwrap()
            .propose(&prompt, 2)
            .block
    };
    assert!(!suffix.tokens.is_empty(), "the suffix drafter proposes");
    let n = 1500;
    for variant in [
        "sampled draft",
        "greedy draft",
        "ngram draft",
        "suffix draft",
        "target-only",
    ] {
        let mut counts = std::collections::HashMap::new();
        let mut rejected = 0;
        for seed in 0..n as u64 {
            let mut s = base.clone();
            s.reseed(seed);
            let block = match variant {
                "sampled draft" => {
                    let x = Dist::Probs(q.clone()).sample(uniform(
                        seed,
                        prompt.len() as u64,
                        Purpose::DraftSample,
                    ));
                    DraftBlock {
                        base_len: prompt.len(),
                        tokens: vec![x],
                        dists: vec![DraftDist::Probs(q.clone())],
                        successor: false,
                    }
                }
                "greedy draft" => DraftBlock {
                    base_len: prompt.len(),
                    tokens: vec![argmax(&q)],
                    dists: vec![DraftDist::Greedy],
                    successor: false,
                },
                "ngram draft" => lookup.clone(),
                "suffix draft" => suffix.clone(),
                _ => DraftBlock::empty(prompt.len()),
            };
            let v = s.verify(&block).unwrap();
            rejected += v.rejected as usize;
            *counts.entry(v.committed[0]).or_insert(0usize) += 1;
        }
        let (chi, df) = chi_square(&counts, &p, n);
        assert!(
            chi < chi2_999(df),
            "{variant}: chi-square {chi:.1} with {df} df exceeds {:.1}",
            chi2_999(df)
        );
        if variant != "target-only" {
            assert!(
                rejected > 50,
                "{variant}: only {rejected} rejections; the residual path was not exercised"
            );
        }
    }
}

/// `p_T` of `sampling` at the first completion position of `prompt` under `model`.
fn first_dist(
    model: &specd_engine::pipeline::LoadedModel,
    prompt: &[u32],
    sampling: &SamplingParams,
) -> Vec<f32> {
    let mut cache = model.model.new_cache();
    let logits = model
        .model
        .forward(&mut cache, prompt, prompt.len() - 1)
        .unwrap();
    match sampling_dist(&logits, sampling) {
        Dist::Probs(p) => p,
        Dist::OneHot(_) => unreachable!("T > 0"),
    }
}

/// The first committed token of `n` forks of `base` (seeds 0..n), each judging a one-token block
/// sampled from `q` with `mutation`: the counts, and how many were rejected.
fn first_tokens(
    base: &TargetSession,
    q: &[f32],
    n: usize,
    mutation: Mutation,
) -> (std::collections::HashMap<u32, usize>, usize) {
    let mut counts = std::collections::HashMap::new();
    let mut rejected = 0;
    for seed in 0..n as u64 {
        let mut s = base.clone();
        s.reseed(seed);
        s.mutate(mutation);
        let at = s.tokens().len();
        let x = Dist::Probs(q.to_vec()).sample(uniform(seed, at as u64, Purpose::DraftSample));
        let block = DraftBlock {
            base_len: at,
            tokens: vec![x],
            dists: vec![DraftDist::Probs(q.to_vec())],
            successor: false,
        };
        let v = s.verify(&block).unwrap();
        rejected += v.rejected as usize;
        *counts.entry(v.committed[0]).or_insert(0usize) += 1;
    }
    (counts, rejected)
}

#[test]
fn truncated_sampling_stays_exact_and_a_broken_residual_is_caught() {
    let t = common::target();
    let d = common::load("smollm2-135m-q4_0");
    let prompt = encode_prompt(&t.tokenizer, "Tell me a joke about computers.", true).unwrap();
    let n = 1000;
    for (top_k, top_p) in [(40, 1.0), (0, 0.9)] {
        let sampling = SamplingParams {
            temperature: 1.0,
            top_p,
            top_k,
            seed: 0,
        };
        let p = first_dist(&t, &prompt, &sampling);
        let kept = p.iter().filter(|&&v| v > 0.0).count();
        assert!(kept > 1 && kept < p.len(), "truncation keeps {kept} tokens");
        // The draft model sampled with the same truncation, and a far draft: the target itself at
        // T = 2 under the same truncation (flatter, so that many proposals are rejected and a
        // wrong residual moves the output a lot).
        let q_model = first_dist(&d, &prompt, &sampling);
        let far = SamplingParams {
            temperature: 2.0,
            ..sampling
        };
        let q_far = first_dist(&t, &prompt, &far);
        let base = common::open_session(&t, &prompt, sampling, 8);
        let what = format!("top_k {top_k}, top_p {top_p}");
        for (variant, q) in [("model draft", &q_model), ("far draft", &q_far)] {
            let (counts, rejected) = first_tokens(&base, q, n, Mutation::None);
            let (chi, df) = chi_square(&counts, &p, n);
            eprintln!("{what}, {variant}: chi-square {chi:.1}, {df} df (limit {:.1}), {rejected} rejected", chi2_999(df));
            assert!(
                chi < chi2_999(df),
                "{what}, {variant}: chi-square {chi:.1} with {df} df exceeds {:.1}",
                chi2_999(df)
            );
            assert!(
                counts.keys().all(|&tok| p[tok as usize] > 0.0),
                "{what}, {variant}: a token outside the truncated distribution was committed"
            );
            assert!(
                rejected > 50,
                "{what}, {variant}: only {rejected} rejections"
            );
        }
        // Negative control through the same harness: residual = p_T instead of
        // norm(max(0, p_T − q)). It must fail, or the test above has no power.
        let (counts, _) = first_tokens(&base, &q_far, n, Mutation::ResidualFromTarget);
        let (chi, df) = chi_square(&counts, &p, n);
        eprintln!(
            "{what}, broken residual: chi-square {chi:.1}, {df} df (limit {:.1})",
            chi2_999(df)
        );
        assert!(
            chi > chi2_999(df),
            "{what}: a broken residual passed (chi-square {chi:.1} with {df} df, limit {:.1})",
            chi2_999(df)
        );
    }
}

#[test]
fn seeded_sampled_runs_repeat_exactly() {
    let (t, d) = (common::target(), common::load("smollm2-135m-q4_0"));
    let req = |seed: u64, gamma: usize, draft_sampling| Request {
        prompt: Prompt::user(common::PROMPTS[11]),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens: 40,
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 50,
            seed,
        },
        gamma: GammaPolicy::Fixed(gamma),
        mode: Mode::Speculative,
        drafter: DrafterSpec::Model,
        draft_sampling,
        policy: Default::default(),
    };
    for ds in [DraftSampling::Greedy, DraftSampling::Sample] {
        let a = generate(&t, Some(&d), &req(7, 4, ds), |_| {}).unwrap();
        let b = generate(&t, Some(&d), &req(7, 4, ds), |_| {}).unwrap();
        assert_eq!(
            a.token_ids, b.token_ids,
            "{ds:?}: same seed, different text"
        );
        let c = generate(&t, Some(&d), &req(8, 4, ds), |_| {}).unwrap();
        assert_ne!(
            a.token_ids, c.token_ids,
            "{ds:?}: different seeds gave the same 40 tokens"
        );
    }
}
