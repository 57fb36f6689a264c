//! `specd bench`: benchmarks that print figures and ratios against a baseline measured in the same
//! run.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use specd_engine::model::Llama;
use specd_engine::pipeline::{self, encode_prompt, LoadedModel, Mode, Request};
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec::DraftSampling;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Target-only vs speculative tokens/s, α, E, t_d, t_v(k) and measured vs predicted speedup.
    Generate(GenerateBenchArgs),
}

/// Prompts of the generation benchmark (chat format).
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
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: String,
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// Median seconds of a forward of `k` tokens after a cache of `ctx` tokens.
fn time_forward(model: &Llama, prompt: &[u32], k: usize, reps: usize) -> Result<f64> {
    let mut cache = model.new_cache();
    model.forward(&mut cache, prompt, prompt.len())?;
    let base = cache.len();
    let block: Vec<u32> = prompt.iter().cycle().take(k).copied().collect();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps + 2 {
        let t0 = Instant::now();
        std::hint::black_box(model.forward(&mut cache, &block, 0)?);
        times.push(t0.elapsed().as_secs_f64());
        cache.truncate(base);
    }
    Ok(median(times[2..].to_vec()))
}

/// Expected committed tokens per round with acceptance `a` and block `g` (DESIGN §7).
pub fn expected_tokens(a: f64, g: usize) -> f64 {
    if (1.0 - a).abs() < 1e-12 {
        (g + 1) as f64
    } else {
        (1.0 - a.powi(g as i32 + 1)) / (1.0 - a)
    }
}

fn bench_generate(a: GenerateBenchArgs) -> Result<()> {
    if a.prompts == 0 || a.prompts > BENCH_PROMPTS.len() {
        bail!("--prompts must be in 1..={}", BENCH_PROMPTS.len());
    }
    if a.gamma.contains(&0) {
        bail!("--gamma values must be >= 1 (target-only is always measured)");
    }
    let log = &crate::log;
    let target = LoadedModel::load(&a.target, log)?;
    let draft = LoadedModel::load(&a.draft, log)?;
    pipeline::check_pair(&target, &draft)?;
    let prompts = &BENCH_PROMPTS[..a.prompts];
    let ctx_prompt = encode_prompt(&target.tokenizer, prompts[0], true)?;
    let max_k = a.gamma.iter().max().copied().unwrap_or(8).max(8) + 1;
    log(&format!(
        "timing forwards (k = 1..{max_k}, {} reps each)",
        a.reps
    ));
    let mut t_v = Vec::new();
    for k in 1..=max_k {
        t_v.push(time_forward(&target.llama, &ctx_prompt, k, a.reps)?);
    }
    let t_d = time_forward(&draft.llama, &ctx_prompt, 1, a.reps)?;
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: 1.0,
        top_k: 0,
        seed: 1,
    };
    let request = |p: &str, gamma: usize, mode: Mode| Request {
        prompt: p.to_owned(),
        chat: true,
        max_tokens: a.max_tokens,
        sampling,
        gamma,
        mode,
        draft_sampling: DraftSampling::Greedy,
    };
    // Interleave configurations prompt by prompt so drift on a shared machine hits all alike.
    let mut configs: Vec<(String, usize)> = vec![("target-only".into(), 0)];
    configs.extend(a.gamma.iter().map(|&g| (format!("speculative γ={g}"), g)));
    let mut totals = vec![(0usize, 0f64, 0usize, 0usize, 0usize, 0usize, 0f64); configs.len()];
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
            t.0 += s.completion_tokens;
            t.1 += s.decode_s;
            t.2 += s.target_calls;
            t.3 += s.accepted_tokens;
            t.4 += s.rejections;
            t.5 += s.draft_steps;
            t.6 += s.draft_s;
        }
    }
    let base_tps = totals[0].0 as f64 / totals[0].1;
    let mut rows = Vec::new();
    for ((name, g), t) in configs.iter().zip(&totals) {
        let tps = t.0 as f64 / t.1;
        let alpha = if t.3 + t.4 > 0 {
            t.3 as f64 / (t.3 + t.4) as f64
        } else {
            0.0
        };
        let e = t.0 as f64 / t.2 as f64;
        let predicted = if *g == 0 {
            1.0
        } else {
            expected_tokens(alpha, *g) * t_v[0] / (*g as f64 * t_d + t_v[*g])
        };
        rows.push(json!({
            "config": name, "gamma": g, "tokens": t.0, "tokens_per_s": tps, "speedup": tps / base_tps,
            "predicted_speedup": predicted, "measured_over_predicted": (tps / base_tps) / predicted,
            "alpha": alpha, "E": e, "target_calls": t.2,
        }));
    }
    eprintln!(
        "target {} ({:.0} MB), draft {} ({:.0} MB), T = {}, {} prompts × {} tokens",
        target.name,
        target.llama.n_bytes() as f64 / 1e6,
        draft.name,
        draft.llama.n_bytes() as f64 / 1e6,
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
        "{:<20} {:>8} {:>8} {:>6} {:>6} {:>8} {:>10} {:>10}",
        "config", "tokens", "tok/s", "alpha", "E", "speedup", "predicted", "meas/pred"
    );
    for r in &rows {
        eprintln!(
            "{:<20} {:>8} {:>8.1} {:>6.3} {:>6.2} {:>7.2}× {:>9.2}× {:>10.2}",
            r["config"].as_str().unwrap_or(""),
            r["tokens"],
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["alpha"].as_f64().unwrap_or(0.0),
            r["E"].as_f64().unwrap_or(0.0),
            r["speedup"].as_f64().unwrap_or(0.0),
            r["predicted_speedup"].as_f64().unwrap_or(0.0),
            r["measured_over_predicted"].as_f64().unwrap_or(0.0)
        );
    }
    if a.json {
        println!(
            "{}",
            json!({
                "bench": "generate",
                "target": target.name, "draft": draft.name,
                "kernel": format!("{:?}", specd_engine::kernels::kernel_path()),
                "threads": rayon_threads(),
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

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Generate(a) => bench_generate(a),
    }
}
