//! Greedy exactness on the real offline pair: speculative output equals target-only output token
//! for token, for every block size, and generation stops exactly at max_tokens or end-of-sequence.

mod common;

use std::ops::ControlFlow;

use specd_engine::pipeline::{generate, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::{DraftSampling, FinishReason};

fn request(prompt: &str, gamma: usize, mode: Mode, max_tokens: usize) -> Request {
    with_policy(prompt, GammaPolicy::Fixed(gamma), mode, max_tokens)
}

fn with_policy(prompt: &str, gamma: GammaPolicy, mode: Mode, max_tokens: usize) -> Request {
    Request {
        prompt: Prompt::user(prompt),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens,
        sampling: SamplingParams::default(),
        gamma,
        mode,
        drafter: DrafterSpec::Model,
        draft_sampling: DraftSampling::Greedy,
        policy: Default::default(),
    }
}

#[test]
fn speculative_greedy_equals_target_only() {
    let (t, d) = (common::target(), common::draft());
    let weak = common::load("smollm2-135m-q4_0");
    let mut total_rejections = 0;
    for (i, prompt) in common::PROMPTS[..10].iter().enumerate() {
        let base = generate(&t, None, &request(prompt, 0, Mode::TargetOnly, 64), |_| {}).unwrap();
        assert!(!base.token_ids.is_empty());
        assert_eq!(
            base.stats.target_calls,
            base.token_ids.len(),
            "target-only: one call per token"
        );
        let mut policies = vec![
            GammaPolicy::Fixed(1),
            GammaPolicy::Fixed(4),
            GammaPolicy::Fixed(8),
        ];
        // The adaptive policies change γ from block to block: still exact.
        if i < 4 {
            policies.extend([
                GammaPolicy::Auto { max: 16 },
                GammaPolicy::Heuristic { max: 16 },
            ]);
        }
        for gamma in policies {
            for draft in [&d, &weak] {
                let out = generate(
                    &t,
                    Some(draft),
                    &with_policy(prompt, gamma, Mode::Speculative, 64),
                    |_| {},
                )
                .unwrap();
                assert_eq!(
                    out.token_ids, base.token_ids,
                    "prompt {prompt:?}, gamma {gamma}, draft {}: speculative differs from target-only",
                    draft.name
                );
                assert_eq!(out.text, base.text);
                total_rejections += out.stats.rejections;
            }
        }
    }
    // The weak draft must have been rejected somewhere, or the test proves nothing about rejection.
    assert!(total_rejections > 0);
}

/// The model-free drafter: prompt lookup, greedy, proposals of any length or none. Its output
/// equals target-only bit for bit, in the embedded loop and pipelined (where an unmatched
/// successor carries a stand-in token), and on text that repeats it does propose and get accepted.
#[test]
fn ngram_drafter_greedy_equals_target_only() {
    use specd_engine::pipeline::encode_prompt;
    use specd_engine::spec_decode::draft::ngram::NgramConfig;
    use specd_engine::spec_decode::draft::Drafter;
    use specd_engine::spec_decode::generate::run;
    let t = common::target();
    // A prompt whose answer quotes it: lookup has something to find.
    let quoting =
        "Repeat this sentence exactly three times: the quick brown fox jumps over the lazy dog.";
    let mut accepted = 0;
    let mut stale = 0;
    for prompt in common::PROMPTS[..6].iter().copied().chain([quoting]) {
        let base = generate(&t, None, &request(prompt, 0, Mode::TargetOnly, 64), |_| {}).unwrap();
        for (gamma, config) in [
            (GammaPolicy::Fixed(4), NgramConfig::default()),
            (GammaPolicy::Fixed(8), NgramConfig { min: 1, max: 3 }),
            (GammaPolicy::Auto { max: 16 }, NgramConfig::default()),
        ] {
            let mut req = with_policy(prompt, gamma, Mode::Speculative, 64);
            req.drafter = DrafterSpec::Ngram(config);
            let out = generate(&t, None, &req, |_| {}).unwrap();
            assert_eq!(
                out.token_ids, base.token_ids,
                "prompt {prompt:?}, gamma {gamma}, {config}: ngram speculative differs from target-only"
            );
            assert_eq!(out.stats.draft_steps, 0, "no draft forwards");
            accepted += out.stats.accepted_tokens;
        }
        // Pipelined, in process.
        let ids = encode_prompt(&t.tokenizer, prompt, true).unwrap();
        let mut s = common::open_session(&t, &ids, SamplingParams::default(), 64);
        let mut drafter = Drafter::from_spec(
            DrafterSpec::Ngram(NgramConfig { min: 1, max: 4 }),
            None,
            SamplingParams::default(),
            DraftSampling::Greedy,
            "",
        )
        .unwrap();
        let p = run(
            &mut s,
            Some(&mut drafter),
            &ids,
            64,
            GammaPolicy::Fixed(4),
            true,
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(s.completion(), &base.token_ids[..], "{prompt:?} pipelined");
        stale += p.stale_blocks;
    }
    assert!(
        accepted > 20,
        "lookup drafted only {accepted} accepted tokens"
    );
    assert!(
        stale > 0,
        "pipelined lookup must have met rejected predecessors"
    );
}

/// The suffix drafter (model-free) and the hybrid drafter (suffix when confident, else the draft
/// model): output equal to target-only bit for bit. The node's index of earlier completions is
/// shared by the requests of this process: asked the same prompts again, the suffix drafter
/// proposes the earlier completions and gets most of them accepted.
#[test]
fn suffix_and_hybrid_drafters_greedy_equal_target_only() {
    use specd_engine::spec_decode::draft::suffix::SuffixConfig;
    let (t, d) = (common::target(), common::draft());
    let quoting =
        "Repeat this sentence exactly three times: the quick brown fox jumps over the lazy dog.";
    let prompts: Vec<&str> = common::PROMPTS[..6]
        .iter()
        .copied()
        .chain([quoting])
        .collect();
    let (mut first, mut again, mut tokens) = (0, 0, 0);
    for round in 0..2 {
        for prompt in &prompts {
            let base =
                generate(&t, None, &request(prompt, 0, Mode::TargetOnly, 64), |_| {}).unwrap();
            for (gamma, spec, draft) in [
                (
                    GammaPolicy::Fixed(4),
                    DrafterSpec::Suffix(SuffixConfig::default()),
                    None,
                ),
                (
                    GammaPolicy::Auto { max: 16 },
                    DrafterSpec::Suffix(SuffixConfig::default()),
                    None,
                ),
                (
                    GammaPolicy::Fixed(4),
                    DrafterSpec::Hybrid(SuffixConfig::default()),
                    Some(&d),
                ),
            ] {
                let mut req = with_policy(prompt, gamma, Mode::Speculative, 64);
                req.drafter = spec;
                let out = generate(&t, draft, &req, |_| {}).unwrap();
                assert_eq!(
                    out.token_ids, base.token_ids,
                    "prompt {prompt:?}, gamma {gamma}, {spec}: speculative differs from target-only"
                );
                if draft.is_none() {
                    assert_eq!(out.stats.draft_steps, 0, "no draft forwards");
                }
                if matches!(
                    (spec, gamma),
                    (DrafterSpec::Suffix(_), GammaPolicy::Fixed(_))
                ) {
                    if round == 0 {
                        first += out.stats.accepted_tokens;
                        tokens += out.token_ids.len();
                    } else {
                        again += out.stats.accepted_tokens;
                    }
                }
            }
        }
    }
    assert!(first > 0, "the suffix drafter had nothing accepted");
    assert!(
        again * 5 >= tokens * 3 && again > first,
        "asked again, the suffix drafter got {again} of {tokens} tokens accepted (first time {first})"
    );
}

#[test]
fn stops_exactly_at_max_tokens_inside_a_block() {
    let (t, d) = (common::target(), common::draft());
    for max in [1, 2, 5, 13] {
        let out = generate(
            &t,
            Some(&d),
            &request(common::PROMPTS[11], 8, Mode::Speculative, max),
            |_| {},
        )
        .unwrap();
        assert_eq!(out.token_ids.len(), max);
        assert_eq!(out.stats.finish_reason, Some(FinishReason::Length));
    }
}

#[test]
fn stops_at_end_of_sequence_inside_a_block() {
    let (t, d) = (common::target(), common::draft());
    let out = generate(
        &t,
        Some(&d),
        &request(common::PROMPTS[1], 8, Mode::Speculative, 200),
        |_| {},
    )
    .unwrap();
    assert_eq!(out.stats.finish_reason, Some(FinishReason::Stop));
    let last = *out.token_ids.last().unwrap();
    assert!(t.tokenizer.is_eos(last));
    assert_eq!(
        out.token_ids
            .iter()
            .filter(|&&x| t.tokenizer.is_eos(x))
            .count(),
        1,
        "nothing after the end-of-sequence token"
    );
    let base = generate(
        &t,
        None,
        &request(common::PROMPTS[1], 0, Mode::TargetOnly, 200),
        |_| {},
    )
    .unwrap();
    assert_eq!(out.token_ids, base.token_ids);
}

/// A stop string ends the session at the token that completes it, for every block size: the text
/// ends where the stop string begins, the stream never shows any of it, and nothing past it is
/// committed or charged.
#[test]
fn stop_strings_end_the_session_where_they_complete() {
    let (t, d) = (common::target(), common::draft());
    let base = generate(
        &t,
        None,
        &request(common::PROMPTS[2], 0, Mode::TargetOnly, 64),
        |_| {},
    )
    .unwrap();
    // A stop string from the middle of the output, at its first occurrence.
    let text = &base.text;
    let a = (text.len() / 3..text.len())
        .find(|&a| {
            text.is_char_boundary(a)
                && text.is_char_boundary(a + 5)
                && text.find(&text[a..a + 5]) == Some(a)
        })
        .expect("a stop string in the output");
    let stop = text[a..a + 5].to_owned();
    let n = (1..=base.token_ids.len())
        .find(|&n| {
            t.tokenizer
                .decode(&base.token_ids[..n])
                .unwrap()
                .contains(&stop)
        })
        .unwrap();
    for (gamma, mode) in [
        (0, Mode::TargetOnly),
        (1, Mode::Speculative),
        (4, Mode::Speculative),
        (8, Mode::Speculative),
    ] {
        let mut req = request(common::PROMPTS[2], gamma, mode, 64);
        req.stop = vec!["never appears \u{1F999}".into(), stop.clone()];
        let mut streamed = String::new();
        let out = generate(&t, Some(&d), &req, |s| streamed.push_str(s)).unwrap();
        assert_eq!(
            out.text,
            text[..a],
            "γ {gamma}: text cut where {stop:?} begins"
        );
        assert_eq!(
            streamed, out.text,
            "γ {gamma}: the stream shows none of the stop string"
        );
        assert_eq!(out.token_ids, base.token_ids[..n], "γ {gamma}");
        assert_eq!(out.stats.finish_reason, Some(FinishReason::Stop));
        assert_eq!(out.stats.completion_tokens, n);
    }
    // A relaxed rule charges nothing past the end.
    let mut req = request(common::PROMPTS[2], 8, Mode::Speculative, 64);
    req.policy.rule = "topk:5".parse().unwrap();
    req.policy.budget = 16.0;
    req.policy.pacing = "none".parse().unwrap();
    req.stop = vec![stop.clone()];
    let out = generate(&t, Some(&d), &req, |_| {}).unwrap();
    assert!(!out.text.contains(&stop));
    assert_eq!(out.stats.token_info.len(), out.token_ids.len());
    let charged: f64 = out.stats.token_info.iter().map(|i| i.charge).sum();
    assert!(
        (out.stats.budget_spent - charged).abs() < 1e-9,
        "spent {} but the committed tokens were charged {charged}",
        out.stats.budget_spent
    );
}

#[test]
fn pipelined_loop_equals_target_only_in_process() {
    use specd_engine::pipeline::encode_prompt;
    use specd_engine::spec_decode::draft::Drafter;
    use specd_engine::spec_decode::generate::run;
    let t = common::target();
    let mut stale = 0;
    for d in [common::draft(), common::load("smollm2-135m-q4_0")] {
        for prompt in &common::PROMPTS[..4] {
            let ids = encode_prompt(&t.tokenizer, prompt, true).unwrap();
            let open = || common::open_session(&t, &ids, SamplingParams::default(), 48);
            let mut base = open();
            let b = run(
                &mut base,
                None,
                &ids,
                48,
                GammaPolicy::Fixed(0),
                false,
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
            let mut s = open();
            let mut drafter = Drafter::new(
                d.model.clone(),
                SamplingParams::default(),
                DraftSampling::Greedy,
            );
            let p = run(
                &mut s,
                Some(&mut drafter),
                &ids,
                48,
                GammaPolicy::Fixed(4),
                true,
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
            assert_eq!(
                s.completion(),
                base.completion(),
                "{prompt:?} with {}: pipelined differs from target-only",
                d.name
            );
            assert_eq!(p.completion_tokens, b.completion_tokens);
            stale += p.stale_blocks;
        }
    }
    assert!(
        stale > 0,
        "the weak draft must have produced stale successors"
    );
}

/// A block announcing a successor and rejected at its last drafted token commits as many tokens
/// as a full acceptance would; its successor was still drafted after a token that was not
/// committed, so the target must answer it stale, and the next block is judged normally.
#[test]
fn successor_after_a_last_position_rejection_is_stale() {
    use specd_engine::pipeline::encode_prompt;
    use specd_engine::spec_decode::{DraftBlock, DraftDist, Verifier};
    let t = common::target();
    let ids = encode_prompt(&t.tokenizer, common::PROMPTS[0], true).unwrap();
    let open = || common::open_session(&t, &ids, SamplingParams::default(), 32);
    // The target's own greedy continuation.
    let mut reference = open();
    let mut greedy = Vec::new();
    while greedy.len() < 6 {
        let v = reference
            .verify(&DraftBlock::empty(ids.len() + greedy.len()))
            .unwrap();
        greedy.extend(v.committed);
    }
    let block = |base: usize, tokens: Vec<u32>, successor: bool| DraftBlock {
        base_len: base,
        dists: vec![DraftDist::Greedy; tokens.len()],
        tokens,
        successor,
    };
    let wrong = (greedy[2] + 1) % t.model.config.vocab_size as u32;
    let mut s = open();
    let n = ids.len();
    s.submit(block(n, vec![greedy[0], greedy[1], wrong], true))
        .unwrap();
    s.submit(block(n + 3, vec![7, 8], false)).unwrap();
    let first = s.receive().unwrap();
    assert_eq!((first.accepted, first.rejected), (2, true));
    assert_eq!(
        first.committed,
        greedy[..3],
        "the residual is the target's argmax"
    );
    let successor = s.receive().unwrap();
    assert!(successor.stale, "same length, wrong content: stale");
    let next = s
        .verify(&block(n + 3, vec![greedy[3], greedy[4]], false))
        .unwrap();
    assert!(!next.stale);
    assert_eq!(next.committed, greedy[3..6]);
}

/// The K-quant pair (target Q6_K, draft Q4_K_M; both llama.cpp mixes, so Q8_0/Q5_0/Q5_1 fallbacks
/// too): greedy speculative decoding equals target-only decoding bit for bit, and the draft is
/// rejected somewhere.
#[test]
fn k_quant_pair_greedy_equals_target_only() {
    let (t, d) = (
        common::load("smollm2-135m-q6_k"),
        common::load("smollm2-135m-q4_k_m"),
    );
    let mut rejections = 0;
    for prompt in &common::PROMPTS[..6] {
        let base = generate(&t, None, &request(prompt, 0, Mode::TargetOnly, 64), |_| {}).unwrap();
        for gamma in [1, 4, 8] {
            let out = generate(
                &t,
                Some(&d),
                &request(prompt, gamma, Mode::Speculative, 64),
                |_| {},
            )
            .unwrap();
            assert_eq!(
                out.token_ids, base.token_ids,
                "prompt {prompt:?}, gamma {gamma}: speculative differs from target-only"
            );
            rejections += out.stats.rejections;
        }
    }
    assert!(rejections > 0, "the Q4_K_M draft was never rejected");
}
