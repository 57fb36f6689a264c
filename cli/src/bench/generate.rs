//! `specd bench generate`: target-only vs speculative speed, forward costs and the latency model.

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use specd_engine::pipeline::{self, encode_prompt, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::Policy;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

use super::forward::time_forwards;

/// Prompts of the generation benchmark (chat format when the target has a template).
pub const BENCH_PROMPTS: &[&str] = &[
    "Explain why the sky is blue in a short paragraph.",
    "Write a Python function that checks whether a number is prime.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "List five tips for staying productive while working from home.",
    "What is the capital of France? Tell me a little about its history.",
    "Summarize the plot of Romeo and Juliet.",
];

#[derive(Args)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    pub models: crate::model_args::ModelPairArgs,
    /// Block sizes to measure, comma-separated.
    #[arg(long, default_value = "2,4,8", value_delimiter = ',')]
    pub gamma: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// How many of the built-in prompts to run.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Repetitions of each forward timing (the median is reported).
    #[arg(long, default_value_t = 21)]
    pub reps: usize,
    /// Print one JSON line with every figure on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Expected committed tokens per round with acceptance `a` and block `g` (DESIGN §7).
pub fn expected_tokens(a: f64, g: usize) -> f64 {
    if (1.0 - a).abs() < 1e-12 {
        (g + 1) as f64
    } else {
        (1.0 - a.powi(g as i32 + 1)) / (1.0 - a)
    }
}

pub fn bench_generate(a: GenerateBenchArgs) -> Result<()> {
    if a.prompts == 0 || a.prompts > BENCH_PROMPTS.len() {
        bail!("--prompts must be in 1..={}", BENCH_PROMPTS.len());
    }
    if a.gamma.contains(&0) {
        bail!("--gamma values must be >= 1 (target-only is always measured)");
    }
    let log = &crate::log;
    let target = a.models.load_target()?;
    let draft = a.models.load_draft()?;
    pipeline::check_pair(&target, &draft)?;
    let prompts = &BENCH_PROMPTS[..a.prompts];
    // Base models (no chat template) get the prompts as plain text.
    let chat = target.tokenizer.chat_template.is_some();
    let ctx_prompt = encode_prompt(&target.tokenizer, prompts[0], chat)?;
    let max_k = a.gamma.iter().max().copied().unwrap_or(8).max(8) + 1;
    log(&format!(
        "timing forwards (k = 1..{max_k}, {} reps each)",
        a.reps
    ));
    let ks: Vec<usize> = (1..=max_k).collect();
    let t_v = time_forwards(&target.model, &ctx_prompt, &ks, a.reps)?;
    let t_d = time_forwards(&draft.model, &ctx_prompt, &[1], a.reps)?[0];
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: 1.0,
        top_k: 0,
        seed: 1,
    };
    let request = |p: &str, gamma: usize, mode: Mode| Request {
        prompt: Prompt::new(p.to_owned(), chat),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens: a.max_tokens,
        sampling,
        gamma: GammaPolicy::Fixed(gamma),
        mode,
        drafter: DrafterSpec::Model,
        draft_sampling: DraftSampling::Greedy,
        policy: Policy::default(),
    };
    // Interleave configurations prompt by prompt so drift on a shared machine hits all alike.
    let mut configs: Vec<(String, usize)> = vec![("target-only".into(), 0)];
    configs.extend(a.gamma.iter().map(|&g| (format!("speculative γ={g}"), g)));
    let mut totals = vec![Totals::default(); configs.len()];
    for (pi, p) in prompts.iter().enumerate() {
        log(&format!("prompt {}/{}", pi + 1, prompts.len()));
        for (ci, (_, g)) in configs.iter().enumerate() {
            let mode = if *g == 0 {
                Mode::TargetOnly
            } else {
                Mode::Speculative
            };
            let out = pipeline::generate(&target, Some(&draft), &request(p, *g, mode), |_| {})?;
            let s = &out.stats;
            let t = &mut totals[ci];
            t.tokens += s.completion_tokens;
            t.decode_s += s.decode_s;
            t.calls += s.target_calls;
            t.accepted += s.accepted_tokens;
            t.rejections += s.rejections;
            t.draft_steps += s.draft_steps;
            t.draft_s += s.draft_s;
            for (k, (n, secs)) in &s.verify_by_k {
                let e = t.verify.entry(*k).or_insert((0, 0.0));
                e.0 += n;
                e.1 += secs;
            }
        }
    }
    let base_tps = totals[0].tokens as f64 / totals[0].decode_s;
    // In-run component costs: the target-only run's mean step, each run's mean draft step and
    // mean verify of a full block.
    let run_t_v1 = totals[0]
        .verify
        .get(&1)
        .map_or(t_v[0], |(n, s)| s / *n as f64);
    let mut rows = Vec::new();
    for ((name, g), t) in configs.iter().zip(&totals) {
        let tps = t.tokens as f64 / t.decode_s;
        let judged = t.accepted + t.rejections;
        let alpha = if judged > 0 {
            t.accepted as f64 / judged as f64
        } else {
            0.0
        };
        let e = t.tokens as f64 / t.calls as f64;
        let (mut run_t_d_ms, mut run_t_v_ms) = (0.0, run_t_v1 * 1e3);
        let (predicted, predicted_in_run) = if *g == 0 {
            (1.0, 1.0)
        } else {
            let run_t_d = if t.draft_steps > 0 {
                t.draft_s / t.draft_steps as f64
            } else {
                t_d
            };
            let run_t_v = t
                .verify
                .get(&(g + 1))
                .map_or(t_v[*g], |(n, s)| s / *n as f64);
            (run_t_d_ms, run_t_v_ms) = (run_t_d * 1e3, run_t_v * 1e3);
            (
                expected_tokens(alpha, *g) * t_v[0] / (*g as f64 * t_d + t_v[*g]),
                expected_tokens(alpha, *g) * run_t_v1 / (*g as f64 * run_t_d + run_t_v),
            )
        };
        let speedup = tps / base_tps;
        rows.push(json!({
            "config": name, "gamma": g, "tokens": t.tokens, "tokens_per_s": tps, "speedup": speedup,
            "predicted_speedup": predicted, "measured_over_predicted": speedup / predicted,
            "predicted_speedup_in_run": predicted_in_run,
            "measured_over_predicted_in_run": speedup / predicted_in_run,
            "alpha": alpha, "E": e, "target_calls": t.calls,
            "t_draft_ms_in_run": run_t_d_ms, "t_verify_block_ms_in_run": run_t_v_ms,
        }));
    }
    eprintln!(
        "target {} ({:.0} MB), draft {} ({:.0} MB), T = {}, {} prompts × {} tokens",
        target.name,
        target.model.n_bytes() as f64 / 1e6,
        draft.name,
        draft.model.n_bytes() as f64 / 1e6,
        a.temperature,
        prompts.len(),
        a.max_tokens
    );
    eprintln!("t_d (draft step) = {:.2} ms", t_d * 1e3);
    for (k, t) in t_v.iter().enumerate() {
        eprintln!(
            "t_v({}) = {:.2} ms  ({:.2}× t_v(1))",
            k + 1,
            t * 1e3,
            t / t_v[0]
        );
    }
    eprintln!(
        "{:<20} {:>7} {:>7} {:>6} {:>6} {:>8} {:>10} {:>9} {:>10} {:>9}",
        "config",
        "tokens",
        "tok/s",
        "alpha",
        "E",
        "speedup",
        "predicted",
        "meas/pred",
        "pred(run)",
        "meas/pred"
    );
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    for r in &rows {
        eprintln!(
            "{:<20} {:>7} {:>7.1} {:>6.3} {:>6.2} {:>7.2}× {:>9.2}× {:>9.2} {:>9.2}× {:>9.2}",
            r["config"].as_str().unwrap_or(""),
            r["tokens"],
            f(r, "tokens_per_s"),
            f(r, "alpha"),
            f(r, "E"),
            f(r, "speedup"),
            f(r, "predicted_speedup"),
            f(r, "measured_over_predicted"),
            f(r, "predicted_speedup_in_run"),
            f(r, "measured_over_predicted_in_run")
        );
    }
    if a.json {
        println!(
            "{}",
            json!({
                "bench": "generate",
                "target": target.name, "draft": draft.name,
                "kernel": format!("{:?}", specd_engine::kernels::kernel_path()),
                "threads": compute_threads(),
                "temperature": a.temperature, "max_tokens": a.max_tokens, "prompts": prompts.len(),
                "t_draft_ms": t_d * 1e3,
                "t_verify_ms": t_v.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
                "t_verify_ratio_8_over_1": t_v[7] / t_v[0],
                "target_only_tokens_per_s": base_tps,
                "runs": rows,
            })
        );
    }
    Ok(())
}

fn compute_threads() -> usize {
    specd_engine::kernels::pool::pool().threads()
}

/// Sums over the prompts of one configuration.
#[derive(Clone, Default)]
struct Totals {
    tokens: usize,
    decode_s: f64,
    calls: usize,
    accepted: usize,
    rejections: usize,
    draft_steps: usize,
    draft_s: f64,
    verify: std::collections::BTreeMap<usize, (usize, f64)>,
}
