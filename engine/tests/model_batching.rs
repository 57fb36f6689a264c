//! Batching across sessions on the real model: a pass over several sequences gives each the
//! logits it gets alone, bit for bit (specd's CPU kernels), and 16 sessions with mixed γ, rules,
//! temperatures and seeds run concurrently on one target and one draft produce exactly what each
//! produces alone, while the model's batcher runs them in shared passes.

mod common;

use specd_engine::model::{KvCache, Model, Seq};
use specd_engine::pipeline::{encode_prompt, generate, LoadedModel, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::{Pacing, Policy};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

/// A cache holding `prompt`, fed alone.
fn prefilled(m: &Model, prompt: &[u32]) -> KvCache {
    let mut c = m.new_cache();
    m.forward(&mut c, prompt, prompt.len()).unwrap();
    c
}

#[test]
fn a_batched_pass_gives_each_sequence_its_logits_alone() {
    let t = common::target();
    let m = &t.model;
    let prompts: Vec<Vec<u32>> = common::PROMPTS[..6]
        .iter()
        .map(|p| encode_prompt(&t.tokenizer, p, true).unwrap())
        .collect();
    // Blocks of 1 to 9 tokens after caches of different lengths; logits of every position, of
    // the last, or of none.
    let blocks: Vec<(Vec<u32>, usize)> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let k = [1, 5, 9, 2, 4, 3][i];
            let block: Vec<u32> = p.iter().rev().take(k).copied().collect();
            let from = [0, 0, k - 1, 0, k, 1][i];
            (block, from)
        })
        .collect();
    let alone: Vec<(Vec<f32>, KvCache)> = prompts
        .iter()
        .zip(&blocks)
        .map(|(p, (b, from))| {
            let mut c = prefilled(m, p);
            (m.forward(&mut c, b, *from).unwrap(), c)
        })
        .collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|p| prefilled(m, p)).collect();
    // A seventh sequence that cannot run: its error is its own.
    let mut bad = prefilled(m, &prompts[0]);
    let bad_len = bad.len();
    let bad_block = [m.config.vocab_size as u32];
    let mut seqs: Vec<Seq<'_, KvCache>> = caches
        .iter_mut()
        .zip(&blocks)
        .map(|(c, (b, from))| Seq {
            cache: c,
            tokens: b,
            logits_from: *from,
        })
        .collect();
    seqs.insert(
        3,
        Seq {
            cache: &mut bad,
            tokens: &bad_block,
            logits_from: 0,
        },
    );
    let mut out = m.forward_many(&mut seqs);
    drop(seqs);
    let err = out.remove(3).unwrap_err();
    assert!(
        format!("{err:#}").contains("outside the vocabulary"),
        "{err:#}"
    );
    assert_eq!(
        bad.len(),
        bad_len,
        "the failed sequence's cache is unchanged"
    );
    for (i, (got, (want, want_cache))) in out.into_iter().zip(&alone).enumerate() {
        let got = got.unwrap();
        assert_eq!(got.len(), want.len(), "sequence {i}: rows of logits");
        assert!(
            got.iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "sequence {i}: batched logits differ from its logits alone"
        );
        assert_eq!(
            caches[i].len(),
            want_cache.len(),
            "sequence {i}: cache length"
        );
    }
    // The caches the pass wrote hold what a forward alone writes: the next step agrees too.
    for (i, (c, (_, alone_cache))) in caches.iter_mut().zip(alone).enumerate() {
        let next = [prompts[i][0], prompts[i][1]];
        let mut ac = alone_cache;
        let a = m.forward(&mut ac, &next, 0).unwrap();
        let b = m.forward(c, &next, 0).unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "sequence {i}: the step after the batched pass differs"
        );
    }
}

#[test]
fn chunked_prefill_gives_the_logits_of_one_pass() {
    let t = common::target();
    let m = &t.model;
    let p = encode_prompt(&t.tokenizer, common::PROMPTS[11], true).unwrap();
    let whole = {
        let mut c = m.new_cache();
        m.forward(&mut c, &p, 3).unwrap()
    };
    m.set_prefill_chunk(5);
    let mut c = m.new_cache();
    let chunked = m.forward(&mut c, &p, 3).unwrap();
    assert_eq!(c.len(), p.len());
    assert_eq!(chunked.len(), whole.len());
    assert!(chunked
        .iter()
        .zip(&whole)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // A chunked forward that fails leaves the cache as it was.
    let mut bad = p.clone();
    bad.push(m.config.vocab_size as u32);
    let before = c.len();
    assert!(m.forward(&mut c, &bad, 0).is_err());
    assert_eq!(c.len(), before);
}

/// Sixteen requests: target-only and speculative at γ 1, 2, 4, 8 and heuristic, exact and
/// relaxed rules under budgets, temperatures 0, 0.7 and 1 with different seeds.
fn requests() -> Vec<Request> {
    let rules = ["exact", "topk:3", "lenient:0.3", "lookahead:2"];
    (0..16)
        .map(|i| {
            let temperature = [0.0, 0.7, 1.0, 0.0][i % 4];
            let mode = if i % 5 == 4 {
                Mode::TargetOnly
            } else {
                Mode::Speculative
            };
            let gamma = match i % 6 {
                5 => GammaPolicy::Heuristic { max: 8 },
                g => GammaPolicy::Fixed([1, 2, 4, 8, 3][g]),
            };
            Request {
                prompt: Prompt::user(common::PROMPTS[i % common::PROMPTS.len()]),
                stop: Vec::new(),
                logprobs: None,
                tenant: String::new(),
                max_tokens: 40,
                sampling: SamplingParams {
                    temperature,
                    seed: 1000 + i as u64,
                    ..SamplingParams::default()
                },
                gamma,
                mode,
                drafter: DrafterSpec::Model,
                draft_sampling: if temperature > 0.0 {
                    DraftSampling::Sample
                } else {
                    DraftSampling::Greedy
                },
                policy: Policy {
                    rule: rules[i % rules.len()].parse().unwrap(),
                    budget: [0.0, 4.0, 1.5, 8.0][(i / 4) % 4],
                    protect: None,
                    pacing: Pacing::None,
                },
            }
        })
        .collect()
}

fn run(t: &LoadedModel, d: &LoadedModel, r: &Request) -> Vec<u32> {
    generate(t, Some(d), r, |_| {}).unwrap().token_ids
}

#[test]
fn sixteen_sessions_batched_produce_what_each_produces_alone() {
    let t = common::target();
    let d = common::draft();
    let reqs = requests();
    let alone: Vec<Vec<u32>> = reqs.iter().map(|r| run(&t, &d, r)).collect();
    let before = t.model.batch_stats();
    let together: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| {
                let (t, d) = (&t, &d);
                s.spawn(move || run(t, d, r))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = t.model.batch_stats().since(&before);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(!a.is_empty(), "request {i} generated nothing");
        assert_eq!(
            a, b,
            "request {i}: batched output differs from its output alone"
        );
    }
    // The sessions did share passes: far fewer passes than forwards.
    assert!(
        stats.sequences_per_pass() > 1.5,
        "the target ran {} forwards in {} passes: no batching",
        stats.sequences,
        stats.passes
    );
    eprintln!(
        "target: {} forwards in {} passes ({:.1} per pass), {} rows",
        stats.sequences,
        stats.passes,
        stats.sequences_per_pass(),
        stats.rows
    );
}
