//! `specd bench rules`: what each relaxed rule buys (α, E, speed) for what it costs (lossy accepts,
//! budget, fidelity), against the exact rule in the same run.

use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use specd_engine::device::Device;
use specd_engine::pipeline::{self, encode_prompt, LoadedModel, Mode, Prompt, Request};
use specd_engine::presets::DEFAULT_TARGET;
use specd_engine::sampling::SamplingParams;
use specd_engine::score::score;
use specd_engine::spec_decode::budget::{Pacing, Policy, ProtectSet};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::rules::Rule;
use specd_engine::spec_decode::DraftSampling;

use super::BENCH_PROMPTS;

/// Rules and knobs measured by default.
const DEFAULT_RULES: &str = "exact;lenient:0.5;lenient:0.2;topk:2;topk:5;threshold:0.5;threshold:0.2;typical:0.3,0.5;typical:0.1,0.3;divergence:0.3;divergence:0.6";

#[derive(Args)]
pub struct RulesBenchArgs {
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Device of the target: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub target_device: Device,
    /// The draft: a weaker one than the default pair's, so that relaxation has something to do.
    #[arg(long, default_value = "smollm2-135m-q4_0")]
    pub draft: String,
    /// Device of the draft: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub draft_device: Device,
    /// Rules, `;`-separated.
    #[arg(long, default_value = DEFAULT_RULES)]
    pub rules: String,
    /// Budgets, comma-separated.
    #[arg(long, default_value = "0,2,8,32", value_delimiter = ',')]
    pub budgets: Vec<f64>,
    /// Temperatures, comma-separated.
    #[arg(long, default_value = "0,0.7", value_delimiter = ',')]
    pub temperatures: Vec<f32>,
    #[arg(long, default_value_t = 4)]
    pub gamma: usize,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// How many of the built-in prompts to run.
    #[arg(long, default_value_t = 2)]
    pub prompts: usize,
    /// `default`, `none` or a regular expression (as `generate --protect`).
    #[arg(long, default_value = "default")]
    pub protect: String,
    /// Print one JSON line with every row on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn bench_rules(a: RulesBenchArgs) -> Result<()> {
    if a.prompts == 0 || a.prompts > BENCH_PROMPTS.len() {
        bail!("--prompts must be in 1..={}", BENCH_PROMPTS.len());
    }
    let rules: Vec<Rule> = a
        .rules
        .split(';')
        .map(|r| r.parse())
        .collect::<Result<_>>()?;
    let log = &crate::log;
    let target = LoadedModel::load_on(&a.target, a.target_device, log)?;
    let draft = LoadedModel::load_on(&a.draft, a.draft_device, log)?;
    pipeline::check_pair(&target, &draft)?;
    let protect = match specd_engine::spec_decode::budget::protect_pattern(&a.protect) {
        Some(p) => Some(Arc::new(ProtectSet::build(&target.tokenizer, p)?)),
        None => None,
    };
    let prompts = &BENCH_PROMPTS[..a.prompts];
    let mut rows = Vec::new();
    let mut violations = 0;
    for &temperature in &a.temperatures {
        let sampling = SamplingParams {
            temperature,
            top_p: 1.0,
            top_k: 0,
            seed: 1,
        };
        let request = |p: &str, policy: Policy, mode: Mode| Request {
            prompt: Prompt::user(p),
            stop: Vec::new(),
            logprobs: None,
            tenant: String::new(),
            max_tokens: a.max_tokens,
            sampling,
            gamma: GammaPolicy::Fixed(if mode == Mode::TargetOnly { 0 } else { a.gamma }),
            mode,
            drafter: DrafterSpec::Model,
            draft_sampling: DraftSampling::Greedy,
            policy,
        };
        // Target-only baseline of this temperature.
        let (mut base_tokens, mut base_s) = (0usize, 0f64);
        for p in prompts {
            let out = pipeline::generate(
                &target,
                None,
                &request(p, Policy::default(), Mode::TargetOnly),
                |_| {},
            )?;
            base_tokens += out.stats.completion_tokens;
            base_s += out.stats.decode_s;
        }
        let base_tps = base_tokens as f64 / base_s;
        for rule in &rules {
            let budgets: Vec<f64> = if rule.is_exact() {
                vec![0.0]
            } else {
                a.budgets.clone()
            };
            for &budget in &budgets {
                log(&format!("T={temperature} {rule} B={budget}"));
                let policy = Policy {
                    rule: rule.clone(),
                    budget,
                    protect: protect.clone(),
                    pacing: Pacing::None,
                };
                let (mut tokens, mut secs, mut calls, mut acc, mut rej, mut lossy, mut non_argmax) =
                    (0, 0.0, 0, 0, 0, 0, 0);
                let (mut spent_max, mut spent_sum) = (0f64, 0f64);
                for p in prompts {
                    let out = pipeline::generate(
                        &target,
                        Some(&draft),
                        &request(p, policy.clone(), Mode::Speculative),
                        |_| {},
                    )?;
                    let s = &out.stats;
                    tokens += s.completion_tokens;
                    secs += s.decode_s;
                    calls += s.target_calls;
                    acc += s.accepted_tokens;
                    rej += s.rejections;
                    lossy += s.lossy_accepted_tokens;
                    spent_max = spent_max.max(s.budget_spent);
                    spent_sum += s.budget_spent;
                    if s.budget_spent > budget + 1e-9 {
                        violations += 1;
                    }
                    if temperature == 0.0 {
                        let ids = encode_prompt(&target.tokenizer, p, true)?;
                        let sc = score(&target.model, &ids, &out.token_ids)?;
                        non_argmax += sc.non_argmax_tokens;
                        if sc.non_argmax_tokens as f64 > budget {
                            violations += 1;
                        }
                    }
                }
                let alpha = if acc + rej > 0 {
                    acc as f64 / (acc + rej) as f64
                } else {
                    0.0
                };
                rows.push(json!({
                    "temperature": (temperature as f64 * 1000.0).round() / 1000.0, "rule": rule.to_string(), "budget": budget,
                    "alpha": alpha, "E": tokens as f64 / calls as f64, "tokens_per_s": tokens as f64 / secs,
                    "speedup_vs_target_only": (tokens as f64 / secs) / base_tps,
                    "lossy_accepted": lossy, "budget_spent_mean": spent_sum / prompts.len() as f64, "budget_spent_max": spent_max,
                    "non_argmax_tokens": if temperature == 0.0 { Some(non_argmax) } else { None },
                    "tokens": tokens,
                }));
            }
        }
    }
    // E gain of each row over exact at the same temperature.
    let exact_e: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r["rule"] == "exact")
        .map(|r| {
            (
                r["temperature"].as_f64().unwrap_or(0.0),
                r["E"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    for r in rows.iter_mut() {
        let t = r["temperature"].as_f64().unwrap_or(0.0);
        let e0 = exact_e.iter().find(|(tt, _)| *tt == t).map_or(1.0, |x| x.1);
        r["E_gain_over_exact"] = json!(r["E"].as_f64().unwrap_or(0.0) / e0 - 1.0);
    }
    eprintln!(
        "target {}, draft {}, γ = {}, {} prompts × {} tokens, protect {}",
        target.name,
        draft.name,
        a.gamma,
        prompts.len(),
        a.max_tokens,
        protect
            .as_ref()
            .map_or("none".into(), |p| p.pattern.clone())
    );
    eprintln!(
        "{:>4} {:<18} {:>6} {:>6} {:>6} {:>7} {:>7} {:>8} {:>6} {:>6} {:>10}",
        "T",
        "rule",
        "B",
        "alpha",
        "E",
        "E gain",
        "tok/s",
        "speedup",
        "lossy",
        "spent",
        "non-argmax"
    );
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    for r in &rows {
        eprintln!(
            "{:>4} {:<18} {:>6} {:>6.3} {:>6.2} {:>+6.0}% {:>7.1} {:>7.2}× {:>6} {:>6.1} {:>10}",
            f(r, "temperature"),
            r["rule"].as_str().unwrap_or(""),
            f(r, "budget"),
            f(r, "alpha"),
            f(r, "E"),
            100.0 * f(r, "E_gain_over_exact"),
            f(r, "tokens_per_s"),
            f(r, "speedup_vs_target_only"),
            r["lossy_accepted"],
            f(r, "budget_spent_max"),
            r["non_argmax_tokens"]
                .as_u64()
                .map_or("-".into(), |v| v.to_string())
        );
    }
    eprintln!("budget violations: {violations}");
    if a.json {
        println!(
            "{}",
            json!({"bench": "rules", "target": target.name, "draft": draft.name, "gamma": a.gamma,
                   "max_tokens": a.max_tokens, "prompts": prompts.len(), "budget_violations": violations, "rows": rows})
        );
    }
    if violations > 0 {
        bail!("{violations} budget violations");
    }
    Ok(())
}
