//! Relaxed rules on the real model at temperature 0: `specd score`'s witness agrees with the
//! budget — at most ⌊B⌋ tokens are not the target's argmax, each of them a lossy accept — and
//! budget 0 reproduces target-only decoding.

mod common;

use std::sync::Arc;

use specd_engine::pipeline::{encode_prompt, generate, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::score::score;
use specd_engine::spec_decode::budget::{Pacing, Policy, ProtectSet, DEFAULT_PROTECT};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

#[test]
fn budget_bounds_non_argmax_tokens_at_temperature_zero() {
    let t = common::target();
    let d = common::load("smollm2-135m-q4_0");
    let protect = Arc::new(ProtectSet::build(&t.tokenizer, DEFAULT_PROTECT).unwrap());
    let prompt = common::PROMPTS[11];
    let req = |policy: Policy, mode| Request {
        prompt: Prompt::user(prompt),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens: 64,
        sampling: SamplingParams::default(),
        gamma: GammaPolicy::Fixed(if mode == Mode::TargetOnly { 0 } else { 4 }),
        mode,
        drafter: DrafterSpec::Model,
        draft_sampling: DraftSampling::Greedy,
        policy,
    };
    let base = generate(&t, None, &req(Policy::default(), Mode::TargetOnly), |_| {}).unwrap();
    let prompt_ids = encode_prompt(&t.tokenizer, prompt, true).unwrap();
    let mut any_lossy = false;
    for rule in [
        "lenient:0.3",
        "topk:3",
        "threshold:0.2",
        "typical:0.3,0.5",
        "divergence:0.6",
    ] {
        for budget in [0.0, 2.0, 8.0] {
            for protect in [None, Some(protect.clone())] {
                let policy = Policy {
                    rule: rule.parse().unwrap(),
                    budget,
                    protect: protect.clone(),
                    pacing: Pacing::None,
                };
                let out = generate(&t, Some(&d), &req(policy, Mode::Speculative), |_| {}).unwrap();
                let s = score(&t.model, &prompt_ids, &out.token_ids).unwrap();
                let lossy = out.stats.token_info.iter().filter(|i| i.lossy).count();
                let tag = format!("{rule} B={budget} protect={}", protect.is_some());
                assert!(
                    s.non_argmax_tokens as f64 <= budget,
                    "{tag}: {} non-argmax tokens",
                    s.non_argmax_tokens
                );
                assert_eq!(
                    s.non_argmax_tokens, lossy,
                    "{tag}: every non-argmax token must be a lossy accept"
                );
                assert_eq!(lossy, out.stats.lossy_accepted_tokens);
                assert!(out.stats.budget_spent <= budget);
                for (i, info) in out.stats.token_info.iter().enumerate() {
                    assert_eq!(info.lossy, !s.per_token[i].is_argmax, "{tag}: token {i}");
                    if info.lossy {
                        assert_eq!(info.charge, 1.0, "T = 0 charges are 0 or 1");
                        if let Some(p) = &protect {
                            assert!(
                                !p.is_critical(out.token_ids[i]),
                                "{tag}: protected token {i} accepted lossily"
                            );
                            assert!(
                                !p.is_critical(s.per_token[i].argmax),
                                "{tag}: position {i} with a critical argmax relaxed"
                            );
                        }
                    }
                }
                if budget == 0.0 {
                    assert_eq!(
                        out.token_ids, base.token_ids,
                        "{tag}: budget 0 must equal target-only decoding"
                    );
                }
                any_lossy |= lossy > 0;
            }
        }
    }
    assert!(
        any_lossy,
        "no rule ever accepted lossily: the test proves nothing"
    );
}

#[test]
fn relaxation_raises_tokens_per_call() {
    let t = common::target();
    let d = common::load("smollm2-135m-q4_0");
    let run = |rule: &str, budget: f64| {
        let policy = Policy {
            rule: rule.parse().unwrap(),
            budget,
            protect: None,
            pacing: Pacing::None,
        };
        let req = Request {
            prompt: Prompt::user(common::PROMPTS[11]),
            stop: Vec::new(),
            logprobs: None,
            tenant: String::new(),
            max_tokens: 96,
            sampling: SamplingParams::default(),
            gamma: GammaPolicy::Fixed(4),
            mode: Mode::Speculative,
            drafter: DrafterSpec::Model,
            draft_sampling: DraftSampling::Greedy,
            policy,
        };
        generate(&t, Some(&d), &req, |_| {}).unwrap().stats
    };
    let exact = run("exact", 0.0);
    let relaxed = run("topk:5", 32.0);
    assert!(
        relaxed.alpha() > exact.alpha(),
        "α {} vs exact {}",
        relaxed.alpha(),
        exact.alpha()
    );
    assert!(relaxed.lossy_accepted_tokens > 0);
}

/// Judging stops where the session ends: drafted tokens after an accepted end-of-sequence token,
/// or past `max_tokens`, are neither committed, counted nor charged. `topk:VOCAB` at T = 0 accepts
/// any drafted token and charges 1 for each that is not the target's argmax, so the budget spent
/// counts exactly the positions judged. Negative control: the same block without the EOS spends
/// on every position.
#[test]
fn judging_stops_at_end_of_sequence_and_max_tokens() {
    use specd_engine::spec_decode::target::SessionParams;
    use specd_engine::spec_decode::{DraftBlock, DraftDist, FinishReason};

    let t = common::target();
    let prompt = encode_prompt(&t.tokenizer, common::PROMPTS[0], true).unwrap();
    let vocab = t.model.config.vocab_size;
    let eos = t.tokenizer.eos_ids[0];
    let open = |max_tokens: usize| {
        let params = SessionParams {
            sampling: SamplingParams::default(),
            max_tokens,
            policy: Policy {
                rule: format!("topk:{vocab}").parse().unwrap(),
                budget: 10.0,
                protect: None,
                pacing: Pacing::None,
            },
            stop: None,
            logprobs: None,
        };
        common::open_session_with(&t, &prompt, params)
    };
    // Tokens the target would not choose here (checked below: each is charged 1).
    let (x, w, y, z) = (1000u32, 2000u32, 3000u32, 4000u32);
    let block = |tokens: Vec<u32>| DraftBlock {
        base_len: prompt.len(),
        dists: vec![DraftDist::Greedy; tokens.len()],
        tokens,
        successor: false,
    };

    let mut s = open(64);
    let v = s.verify_block(&block(vec![x, eos, y, z])).unwrap();
    assert_eq!(v.committed, [x, eos]);
    assert_eq!(v.finished, Some(FinishReason::Stop));
    assert_eq!(v.token_info.len(), 2);
    assert_eq!((v.accepted, v.lossy_accepted), (2, 2));
    assert!(v.token_info.iter().all(|i| i.lossy && i.charge == 1.0));
    assert_eq!(v.budget_spent, 2.0);
    assert_eq!(s.budget_spent(), 2.0);

    // Negative control: without the EOS every drafted position is judged and charged.
    let mut s = open(64);
    let v = s.verify_block(&block(vec![x, w, y, z])).unwrap();
    assert_eq!(v.accepted, 4, "the control must accept the whole block");
    assert_eq!(v.budget_spent, 4.0);
    assert_eq!(v.committed.len(), 5, "with the bonus token");

    // max_tokens = 3: the fourth drafted token is not judged.
    let mut s = open(3);
    let v = s.verify_block(&block(vec![x, w, y, z])).unwrap();
    assert_eq!(v.committed, [x, w, y]);
    assert_eq!(v.finished, Some(FinishReason::Length));
    assert_eq!(
        (v.accepted, v.lossy_accepted, v.token_info.len()),
        (3, 3, 3)
    );
    assert_eq!(v.budget_spent, 3.0);
}

/// `--gamma auto` follows wall-clock timings, so a seeded run at T > 0 under a lossy rule may
/// choose other blocks, and so other tokens, when run again. With frozen costs (`auto@…`) the
/// block sizes depend only on what was accepted: the same seed gives the same tokens, budget bits
/// and block sizes every time, and other costs give other block sizes (the costs decide).
#[test]
fn auto_with_frozen_costs_repeats_seeded_lossy_runs() {
    let t = common::target();
    let d = common::load("smollm2-135m-q4_0");
    let run = |gamma: &str| {
        let req = Request {
            prompt: Prompt::user(common::PROMPTS[2]),
            stop: Vec::new(),
            logprobs: None,
            tenant: String::new(),
            max_tokens: 48,
            sampling: SamplingParams {
                temperature: 1.0,
                seed: 11,
                ..Default::default()
            },
            gamma: GammaPolicy::parse(gamma, 16).unwrap(),
            mode: Mode::Speculative,
            drafter: DrafterSpec::Model,
            draft_sampling: DraftSampling::Sample,
            policy: Policy {
                rule: "topk:5".parse().unwrap(),
                budget: 4.0,
                protect: None,
                pacing: Pacing::None,
            },
        };
        generate(&t, Some(&d), &req, |_| {}).unwrap()
    };
    let cheap_draft = "auto@t_d=0.001,c_d=0,t_v1=0.008,slope=0.0001,rtt=0";
    let a = run(cheap_draft);
    for _ in 0..2 {
        let b = run(cheap_draft);
        assert_eq!(a.token_ids, b.token_ids);
        assert_eq!(
            a.stats.budget_spent.to_bits(),
            b.stats.budget_spent.to_bits()
        );
        assert_eq!(a.stats.mean_gamma, b.stats.mean_gamma);
        assert_eq!(a.stats.target_calls, b.stats.target_calls);
    }
    let dear_draft = run("auto@t_d=0.02,c_d=0.01,t_v1=0.008,slope=0.004,rtt=0");
    assert!(
        dear_draft.stats.mean_gamma < a.stats.mean_gamma,
        "costs must decide: mean γ {} with a dear draft, {} with a cheap one",
        dear_draft.stats.mean_gamma,
        a.stats.mean_gamma
    );
}
