//! `specd bench latency`: speed against network round-trip time, per block-size policy, measured
//! beside the latency model's prediction (DESIGN §7).
//!
//! Starts a target-node and a draft-node on loopback and, for each RTT, a `specd link` (each
//! direction delayed by RTT/2) in front of the target and a coordinator that reaches the target
//! through it: every verify round pays the round trip, the coordinator's session set-up too. The
//! baseline is target-only decoding on the target node streamed to the client through the same
//! link: it pays the delay once per response, not once per token. Rates are the client's
//! steady-state rates (tokens after the first event over the time after it), so set-up and
//! prefill are left out of both sides.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use specd_coordinator::client::{self, Remote};
use specd_engine::pipeline::{Mode, Prompt, Request};
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::Policy;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::{Estimates, GammaPolicy, DEFAULT_GAMMA_MAX};
use specd_engine::spec_decode::DraftSampling;
use specd_eval::plot;

use super::procs::{free_port, start, start_model_node};
use super::stats::median;
use super::BENCH_PROMPTS;

#[derive(Args)]
pub struct LatencyBenchArgs {
    /// Target model of the target-node (preset, file, directory or Hugging Face repo id).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Draft model of the draft-node (same forms).
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: String,
    /// Round-trip times to emulate, comma-separated; a bare number is in milliseconds
    /// (e.g. 0,2,10,50ms). The link delays each direction by half.
    #[arg(long, default_value = "0,2,10,50ms")]
    pub rtt: String,
    /// Block-size policies to compare, comma-separated: numbers, `auto`, `heuristic`.
    #[arg(long, default_value = "1,2,4,8,auto,heuristic")]
    pub gamma: String,
    /// Largest block `auto` and `heuristic` may choose.
    #[arg(long, default_value_t = DEFAULT_GAMMA_MAX)]
    pub gamma_max: usize,
    /// Pipelined drafting: `on`, `off` or `on,off` (both, compared).
    #[arg(long, default_value = "on,off")]
    pub pipeline: String,
    /// Jitter added to each direction's delay (seeded, order kept).
    #[arg(long, default_value = "0ms")]
    pub jitter: String,
    /// Completion tokens per generation.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// How many of the built-in prompts to run at each point.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    /// Runs of each prompt per configuration (every configuration interleaved prompt by prompt).
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
    /// Print one JSON line per point and a summary line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write results.jsonl, summary.md and the plots (latency-pipelined / latency-sequential,
    /// SVG and PNG) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run nothing: redraw the plots of an earlier `--out DIR` from its results.jsonl.
    #[arg(long, value_name = "DIR")]
    pub replot: Option<PathBuf>,
}

/// Parses `0,2,10,50ms`: items without a unit are milliseconds.
pub fn parse_rtts(s: &str) -> Result<Vec<Duration>> {
    let v = s
        .split(',')
        .map(|item| {
            let item = item.trim();
            match item.parse::<f64>() {
                Ok(ms) if ms.is_finite() && ms >= 0.0 => Ok(Duration::from_secs_f64(ms / 1e3)),
                Ok(_) => bail!("--rtt {item:?}: a round-trip time must be >= 0"),
                Err(_) => specd_link::parse_duration(item).with_context(|| format!("--rtt {s:?}")),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        bail!("--rtt: give at least one round-trip time");
    }
    Ok(v)
}

/// Parses `on`, `off`, `on,off`.
fn parse_pipelines(s: &str) -> Result<Vec<bool>> {
    s.split(',')
        .map(|p| match p.trim() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => bail!("--pipeline {other:?}: expected on, off or on,off"),
        })
        .collect()
}

/// Totals of one configuration at one RTT over the prompts.
#[derive(Default, Clone)]
struct Acc {
    steady_tokens: usize,
    steady_s: f64,
    tokens: usize,
    wall_s: f64,
    accepted: usize,
    judged: usize,
    target_calls: usize,
    draft_ms: f64,
    draft_prefill_ms: f64,
    verify_ms: f64,
    stale: u64,
    gamma_sum: f64,
    rounds_p50_us: Vec<f64>,
    last_estimates: Estimates,
    identical: bool,
}

impl Acc {
    /// Adds a run; `same_as_baseline`: its output equals target-only decoding (`identical` holds
    /// while every run added did).
    fn add(&mut self, r: &Remote, same_as_baseline: bool) {
        let s = &r.wire_stats;
        let o = &r.output;
        self.identical = (self.tokens == 0 || self.identical) && same_as_baseline;
        self.steady_tokens += o.token_ids.len().saturating_sub(r.first_event_tokens);
        self.steady_s += o.wall_s - r.first_event_s;
        self.tokens += o.token_ids.len();
        self.wall_s += o.wall_s;
        self.accepted += s.accepted_tokens as usize;
        self.judged += (s.accepted_tokens + s.rejections) as usize;
        self.target_calls += s.target_calls as usize;
        self.draft_ms += s.draft_ms;
        self.draft_prefill_ms += s.draft_prefill_ms;
        self.verify_ms += s.verify_ms;
        self.stale += s.stale_blocks;
        self.gamma_sum += s.mean_gamma * s.target_calls as f64;
        if s.rounds > 0 {
            self.rounds_p50_us.push(s.round_overhead_us_p50);
        }
        self.last_estimates = specd_rpc::convert::estimates_from_wire(s);
    }

    fn rate(&self) -> f64 {
        if self.steady_s > 0.0 {
            self.steady_tokens as f64 / self.steady_s
        } else {
            0.0
        }
    }

    fn alpha(&self) -> f64 {
        if self.judged == 0 {
            0.0
        } else {
            self.accepted as f64 / self.judged as f64
        }
    }

    fn mean_gamma(&self) -> f64 {
        if self.target_calls == 0 {
            0.0
        } else {
            self.gamma_sum / self.target_calls as f64
        }
    }
}

/// Least squares `y = a + b·x` (b ≥ 0; one point: `a = 0`, the line through the origin).
fn fit_line(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx > 0.0 {
        let b = (sxy / sxx).max(0.0);
        (my - b * mx, b)
    } else if mx > 0.0 {
        (0.0, my / mx)
    } else {
        (my, 0.0)
    }
}

/// The latency model's inputs at one RTT, measured in the fixed-γ runs `(γ, totals)` of one mode
/// (in-run costs: when draft and target share cores, pipelined runs are slower per forward):
/// pooled α; a line through each run's draft time per round against γ (`c_d + γ·t_d`, the
/// draft's prefill left out); a line through t_v(1) of the baseline and t_v(γ+1) of each run;
/// the median per-round time outside the models (rounds with one block in flight).
fn model_inputs(base: &Acc, runs: &[(usize, &Acc)]) -> Estimates {
    let (acc, judged) = runs
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.1.accepted, a.1 + r.1.judged));
    let per_call = |ms: f64, calls: usize| ms / calls.max(1) as f64 / 1e3;
    let draft: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| {
            (
                r.0 as f64,
                per_call(r.1.draft_ms - r.1.draft_prefill_ms, r.1.target_calls),
            )
        })
        .collect();
    let (t_draft_fixed, t_draft) = if draft.is_empty() {
        (0.0, 0.0)
    } else {
        fit_line(&draft)
    };
    let mut verify = vec![(0.0, per_call(base.verify_ms, base.target_calls))];
    verify.extend(
        runs.iter()
            .map(|r| (r.0 as f64, per_call(r.1.verify_ms, r.1.target_calls))),
    );
    let (t_verify1, t_verify_slope) = fit_line(&verify);
    let p50s: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.1.rounds_p50_us.iter().copied())
        .collect();
    Estimates {
        alpha: if judged > 0 {
            acc as f64 / judged as f64
        } else {
            0.0
        },
        t_draft,
        t_draft_fixed: t_draft_fixed.max(0.0),
        t_verify1: t_verify1.max(1e-6),
        t_verify_slope,
        rtt: median(&p50s) / 1e6,
    }
}

const COLORS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

pub fn bench_latency(a: LatencyBenchArgs) -> Result<()> {
    if let Some(dir) = &a.replot {
        return replot(dir);
    }
    let rtts = parse_rtts(&a.rtt)?;
    let policies = a
        .gamma
        .split(',')
        .map(|g| GammaPolicy::parse(g, a.gamma_max).map_err(|e| anyhow::anyhow!("--gamma: {e}")))
        .collect::<Result<Vec<_>>>()?;
    if policies.iter().any(|p| !p.speculative()) {
        bail!("--gamma: 0 is the baseline, always measured; give block sizes >= 1");
    }
    if policies
        .iter()
        .any(|p| p.max() > crate::generate::MAX_GAMMA)
    {
        bail!(
            "--gamma / --gamma-max: over the maximum block size of {}",
            crate::generate::MAX_GAMMA
        );
    }
    if !policies.iter().any(|p| matches!(p, GammaPolicy::Fixed(_))) {
        bail!("--gamma: give at least one fixed γ (the model's inputs are measured on them)");
    }
    let pipelines = parse_pipelines(&a.pipeline)?;
    let jitter = specd_link::parse_duration(&a.jitter).context("--jitter")?;
    if a.prompts == 0 || a.prompts > BENCH_PROMPTS.len() {
        bail!("--prompts must be in 1..={}", BENCH_PROMPTS.len());
    }
    if a.max_tokens < 2 {
        bail!("--max-tokens must be at least 2");
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --out {}", dir.display()))?;
    }
    let log = &crate::log;
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    log("starting target-node and draft-node on loopback");
    let (_t, pt) = start_model_node("target-node", &a.target)?;
    let (_d, pd) = start_model_node("draft-node", &a.draft)?;
    let req = |p: &str, gamma: GammaPolicy, max_tokens: usize| Request {
        prompt: Prompt::user(p),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens,
        sampling: SamplingParams::default(),
        gamma,
        mode: if gamma.speculative() {
            Mode::Speculative
        } else {
            Mode::TargetOnly
        },
        drafter: DrafterSpec::Model,
        draft_sampling: DraftSampling::Greedy,
        policy: Policy::default(),
    };
    let prompts = &BENCH_PROMPTS[..a.prompts];
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let total = a.reps * rtts.len() * prompts.len() * (1 + pipelines.len() * policies.len());
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} runs  {elapsed_precise} elapsed, ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // (rtt index, pipeline, policy index) → totals; policy index usize::MAX = baseline.
    let mut accs: BTreeMap<(usize, bool, usize), Acc> = BTreeMap::new();
    const BASE: usize = usize::MAX;
    for (ri, rtt) in rtts.iter().enumerate() {
        let (pl, pc) = (free_port()?, free_port()?);
        let delay_us = rtt.as_micros() / 2;
        let link = start(
            &[
                "link".into(),
                "--listen".into(),
                addr(pl),
                "--upstream".into(),
                addr(pt),
                "--delay".into(),
                format!("{delay_us}us"),
                "--jitter".into(),
                format!("{}us", jitter.as_micros()),
                "--seed".into(),
                "1".into(),
            ],
            pl,
        )?;
        let coord = start(
            &[
                "coordinator".into(),
                "--listen".into(),
                addr(pc),
                "--target".into(),
                url(pl),
                "--draft".into(),
                url(pd),
            ],
            pc,
        )?;
        let run = |r: &Request, pipeline: bool| {
            client::generate(&url(pc), r, "none", pipeline, |_| {})
                .with_context(|| format!("RTT {rtt:?}, γ {}", r.gamma))
        };
        bar.set_message(format!("RTT {:.0} ms", rtt.as_secs_f64() * 1e3));
        // Warm-up: connections, model pages.
        run(&req(prompts[0], GammaPolicy::Fixed(0), 8), false)?;
        run(&req(prompts[0], GammaPolicy::Fixed(4), 8), true)?;
        for p in (0..a.reps).flat_map(|_| prompts.iter()) {
            let base = run(&req(p, GammaPolicy::Fixed(0), a.max_tokens), false)?;
            accs.entry((ri, false, BASE)).or_default().add(&base, true);
            bar.inc(1);
            for &pipe in &pipelines {
                for (pi, &pol) in policies.iter().enumerate() {
                    let r = run(&req(p, pol, a.max_tokens), pipe)?;
                    let same = r.output.token_ids == base.output.token_ids;
                    accs.entry((ri, pipe, pi)).or_default().add(&r, same);
                    bar.inc(1);
                }
            }
        }
        drop(coord);
        drop(link);
    }
    bar.finish_and_clear();

    // Results, predictions, the table.
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    let mut table = String::from(
        "| RTT | pipelined | γ | tok/s | speedup | predicted (in-run costs; apart: sequential costs) | α | mean γ | stale blocks | greedy output = target-only |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (ri, rtt) in rtts.iter().enumerate() {
        let rtt_ms = rtt.as_secs_f64() * 1e3;
        let base = &accs[&(ri, false, BASE)];
        let base_rate = base.rate();
        let t_base = 1.0 / base_rate;
        table += &format!(
            "| {rtt_ms:.0} ms | – | target-only | {base_rate:.1} | 1.000 | – | – | 0 | – | – |\n"
        );
        rows.push(json!({
            "rtt_ms": rtt_ms, "pipeline": false, "gamma": "target-only", "tokens_per_s": base_rate,
            "speedup": 1.0, "tokens": base.tokens, "wall_tokens_per_s": base.tokens as f64 / base.wall_s,
            "t_verify_ms": base.verify_ms / base.target_calls.max(1) as f64,
        }));
        let fixed: Vec<(usize, bool, &Acc)> = pipelines
            .iter()
            .flat_map(|&pipe| {
                policies
                    .iter()
                    .enumerate()
                    .filter_map(move |(pi, p)| match p {
                        GammaPolicy::Fixed(g) => Some((*g, pipe, pi)),
                        _ => None,
                    })
            })
            .map(|(g, pipe, pi)| (g, pipe, &accs[&(ri, pipe, pi)]))
            .collect();
        let inputs = |pipe: bool| {
            let runs: Vec<(usize, &Acc)> = fixed
                .iter()
                .filter(|f| f.1 == pipe)
                .map(|f| (f.0, f.2))
                .collect();
            (!runs.is_empty()).then(|| model_inputs(base, &runs))
        };
        for &pipe in &pipelines {
            let Some(est) = inputs(pipe) else {
                bail!(
                    "--gamma: give at least one fixed γ (the model's inputs are measured on them)"
                );
            };
            // Pipelined: what the model predicts with the sequential runs' costs, i.e. if drafting
            // and verifying did not share cores.
            let apart = if pipe { inputs(false) } else { None };
            let mut speedups = Vec::new();
            for (pi, pol) in policies.iter().enumerate() {
                let acc = &accs[&(ri, pipe, pi)];
                let speedup = acc.rate() / base_rate;
                let gamma_for_model = match pol {
                    GammaPolicy::Fixed(g) => *g,
                    GammaPolicy::Auto { max } => est.best_gamma(0, *max, pipe),
                    GammaPolicy::AutoFrozen { max, costs } => {
                        costs.with_alpha(est.alpha).best_gamma(0, *max, pipe)
                    }
                    GammaPolicy::Heuristic { .. } => acc.mean_gamma().round() as usize,
                };
                let predicted = est.speedup(gamma_for_model, pipe, t_base);
                let predicted_apart = apart.map(|e| {
                    let g = match pol {
                        GammaPolicy::Auto { max } => e.best_gamma(0, *max, pipe),
                        _ => gamma_for_model,
                    };
                    e.speedup(g, pipe, t_base)
                });
                table += &format!(
                    "| {rtt_ms:.0} ms | {} | {pol} | {:.1} | {speedup:.3} | {predicted:.3}{} | {:.3} | {:.2} | {} | {} |\n",
                    if pipe { "yes" } else { "no" },
                    acc.rate(),
                    predicted_apart.map_or(String::new(), |p| format!(" ({p:.3} apart)")),
                    acc.alpha(),
                    acc.mean_gamma(),
                    acc.stale,
                    if acc.identical { "yes" } else { "NO" },
                );
                rows.push(json!({
                    "rtt_ms": rtt_ms, "pipeline": pipe, "gamma": pol, "gamma_max": pol.max(),
                    "tokens_per_s": acc.rate(), "speedup": speedup, "predicted_speedup": predicted,
                    "predicted_speedup_apart": predicted_apart,
                    "model_gamma": gamma_for_model, "alpha": acc.alpha(), "mean_gamma": acc.mean_gamma(),
                    "target_calls": acc.target_calls, "tokens": acc.tokens,
                    "wall_tokens_per_s": acc.tokens as f64 / acc.wall_s,
                    "wall_speedup": (acc.tokens as f64 / acc.wall_s) / (base.tokens as f64 / base.wall_s),
                    "stale_blocks": acc.stale, "outputs_identical": acc.identical,
                }));
                if let Some(row) = rows.last_mut().and_then(|r| r.as_object_mut()) {
                    row.extend(crate::generate::estimates_json(&acc.last_estimates));
                }
                speedups.push((pol, speedup, predicted));
            }
            let fixed_sp: Vec<(usize, f64)> = speedups
                .iter()
                .filter_map(|(p, s, _)| match p {
                    GammaPolicy::Fixed(g) => Some((*g, *s)),
                    _ => None,
                })
                .collect();
            let find = |kind: &str| {
                speedups
                    .iter()
                    .find(|(p, _, _)| p.kind() == kind)
                    .map(|x| x.1)
            };
            if let (Some(best), Some(worst)) = (
                fixed_sp.iter().copied().max_by(|x, y| x.1.total_cmp(&y.1)),
                fixed_sp.iter().copied().min_by(|x, y| x.1.total_cmp(&y.1)),
            ) {
                checks.push(json!({
                    "rtt_ms": rtt_ms, "pipeline": pipe,
                    "best_fixed_gamma": best.0, "best_fixed_speedup": best.1,
                    "worst_fixed_gamma": worst.0, "worst_fixed_speedup": worst.1,
                    "auto_speedup": find("auto"), "heuristic_speedup": find("heuristic"),
                    "auto_vs_best": find("auto").map(|s| s / best.1),
                    "auto_vs_worst": find("auto").map(|s| s / worst.1),
                    "heuristic_vs_best": find("heuristic").map(|s| s / best.1),
                    "model_inputs": {
                        "alpha": est.alpha, "t_draft_ms": est.t_draft * 1e3, "t_draft_fixed_ms": est.t_draft_fixed * 1e3,
                        "t_verify1_ms": est.t_verify1 * 1e3, "t_verify_slope_ms": est.t_verify_slope * 1e3,
                        "rtt_outside_models_ms": est.rtt * 1e3, "baseline_ms_per_token": t_base * 1e3,
                    },
                }));
            }
        }
    }
    eprintln!(
        "target {}, draft {}, {} prompts × {} runs × {} tokens, greedy, exact rule; rates are the client's steady state",
        a.target,
        a.draft,
        prompts.len(),
        a.reps,
        a.max_tokens
    );
    eprint!("{table}");
    let mut check_md = String::from(
        "| RTT | pipelined | best fixed γ | worst fixed γ | auto / best | auto / worst | heuristic / best |\n|---|---|---|---|---|---|---|\n",
    );
    for c in &checks {
        let f = |k: &str| c[k].as_f64().map_or("–".into(), |v| format!("{v:.3}"));
        check_md += &format!(
            "| {} ms | {} | {} ({}) | {} ({}) | {} | {} | {} |\n",
            c["rtt_ms"],
            if c["pipeline"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            c["best_fixed_gamma"],
            f("best_fixed_speedup"),
            c["worst_fixed_gamma"],
            f("worst_fixed_speedup"),
            f("auto_vs_best"),
            f("auto_vs_worst"),
            f("heuristic_vs_best"),
        );
    }
    eprint!("{check_md}");
    if a.json {
        let mut o = std::io::stdout().lock();
        for r in &rows {
            writeln!(o, "{r}")?;
        }
        writeln!(
            o,
            "{}",
            json!({"bench": "latency", "target": a.target, "draft": a.draft, "prompts": prompts.len(),
                   "max_tokens": a.max_tokens, "gamma_max": a.gamma_max, "jitter": a.jitter, "summary": checks})
        )?;
    }
    if let Some(dir) = &a.out {
        let mut f = std::fs::File::create(dir.join("results.jsonl"))?;
        for r in &rows {
            writeln!(f, "{r}")?;
        }
        std::fs::write(
            dir.join("summary.md"),
            format!(
                "Target {}, draft {}, {} prompts × {} runs × {} tokens, greedy, exact rule, jitter {}.\n\n{table}\n{check_md}",
                a.target,
                a.draft,
                prompts.len(),
                a.reps,
                a.max_tokens,
                a.jitter
            ),
        )?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&json!({"summary": checks, "args": {
                "rtt": a.rtt, "gamma": a.gamma, "gamma_max": a.gamma_max, "pipeline": a.pipeline,
                "jitter": a.jitter, "max_tokens": a.max_tokens, "prompts": a.prompts, "reps": a.reps,
                "target": a.target, "draft": a.draft}}))?,
        )?;
        let labels: Vec<serde_json::Value> = policies.iter().map(|p| json!(p)).collect();
        let rtts_ms: Vec<f64> = rtts.iter().map(|r| r.as_secs_f64() * 1e3).collect();
        write_plots(dir, &rows, &rtts_ms, &labels, &pipelines)?;
        log(&format!("wrote {}", dir.display()));
    }
    Ok(())
}

/// One chart per pipelining mode: speedup against RTT, one colour per policy, measured (solid)
/// and predicted (dashed); `policies` as they appear in the rows' `gamma` field.
fn write_plots(
    dir: &Path,
    rows: &[serde_json::Value],
    rtts_ms: &[f64],
    policies: &[serde_json::Value],
    pipelines: &[bool],
) -> Result<()> {
    for &pipe in pipelines {
        let series = policies
            .iter()
            .enumerate()
            .flat_map(|(pi, pol)| {
                let color = COLORS[pi % COLORS.len()];
                let label = pol.as_str().map_or(pol.to_string(), str::to_owned);
                let pts = |key: &str| {
                    rows.iter()
                        .filter(|r| r["pipeline"] == json!(pipe) && r["gamma"] == *pol)
                        .filter_map(|r| {
                            let i = rtts_ms
                                .iter()
                                .position(|&x| Some(x) == r["rtt_ms"].as_f64())?;
                            Some((i as f64, r[key].as_f64()?, String::new()))
                        })
                        .collect::<Vec<_>>()
                };
                [
                    plot::Series {
                        name: format!("γ={label} measured"),
                        color,
                        points: pts("speedup"),
                        square: false,
                        line: plot::Line::Solid,
                    },
                    plot::Series {
                        name: format!("γ={label} model"),
                        color,
                        points: pts("predicted_speedup"),
                        square: true,
                        line: plot::Line::Dashed,
                    },
                ]
            })
            .collect();
        let chart = plot::Chart {
            title: format!(
                "Speedup over streamed target-only vs RTT ({})",
                if pipe { "pipelined" } else { "sequential" }
            ),
            x_label: "round-trip time between draft and target".into(),
            y_label: "speedup".into(),
            series,
            y_range: None,
            x_ticks: rtts_ms
                .iter()
                .enumerate()
                .map(|(i, r)| (i as f64, format!("{r:.0} ms")))
                .collect(),
        };
        let name = if pipe {
            "latency-pipelined"
        } else {
            "latency-sequential"
        };
        std::fs::write(dir.join(format!("{name}.svg")), chart.to_svg())?;
        chart.write_png(&dir.join(format!("{name}.png")))?;
    }
    Ok(())
}

/// `--replot DIR`: redraws the plots from DIR/results.jsonl (no run).
fn replot(dir: &Path) -> Result<()> {
    let path = dir.join("results.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--replot: cannot read {}", path.display()))?;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<serde_json::Value>(l)
                .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rtts_ms: Vec<f64> = Vec::new();
    let mut policies: Vec<serde_json::Value> = Vec::new();
    let mut pipelines: Vec<bool> = Vec::new();
    for r in &rows {
        let (Some(rtt), Some(pipe)) = (r["rtt_ms"].as_f64(), r["pipeline"].as_bool()) else {
            bail!("{}: a row lacks rtt_ms or pipeline: {r}", path.display());
        };
        if !rtts_ms.contains(&rtt) {
            rtts_ms.push(rtt);
        }
        if r["gamma"] == json!("target-only") {
            continue;
        }
        if !policies.contains(&r["gamma"]) {
            policies.push(r["gamma"].clone());
        }
        if !pipelines.contains(&pipe) {
            pipelines.push(pipe);
        }
    }
    if policies.is_empty() {
        bail!("{}: no speculative rows to plot", path.display());
    }
    write_plots(dir, &rows, &rtts_ms, &policies, &pipelines)?;
    crate::log(&format!("redrew the plots in {}", dir.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_lists_default_to_milliseconds() {
        let v = parse_rtts("0,2,10,50ms").unwrap();
        assert_eq!(
            v,
            [0, 2, 10, 50].map(Duration::from_millis).to_vec(),
            "bare numbers are ms"
        );
        assert_eq!(
            parse_rtts("1.5s").unwrap(),
            vec![Duration::from_millis(1500)]
        );
        let e = format!("{:#}", parse_rtts("0,fast").unwrap_err());
        assert!(e.contains("fast"), "{e}");
        assert!(parse_rtts("-2").is_err());
        assert!(parse_pipelines("on,maybe").is_err());
        assert_eq!(parse_pipelines("on,off").unwrap(), vec![true, false]);
    }

    #[test]
    fn model_inputs_fit_the_cost_lines_and_pool_alpha() {
        let acc =
            |calls: usize, verify_ms: f64, draft_ms: f64, accepted: usize, judged: usize| Acc {
                target_calls: calls,
                verify_ms,
                draft_ms: draft_ms + 30.0,
                draft_prefill_ms: 30.0,
                accepted,
                judged,
                rounds_p50_us: vec![700.0],
                ..Acc::default()
            };
        let base = acc(10, 80.0, 0.0, 0, 0); // t_v(1) = 8 ms
                                             // γ = 2: t_v(3) = 10 ms, 13 ms of drafting per round; γ = 4: 14 ms and 25 ms.
        let (g2, g4) = (acc(10, 100.0, 130.0, 3, 4), acc(10, 140.0, 250.0, 6, 8));
        let est = model_inputs(&base, &[(2, &g2), (4, &g4)]);
        assert!((est.alpha - 0.75).abs() < 1e-12);
        assert!((est.t_draft - 0.006).abs() < 1e-12, "{est:?}");
        assert!((est.t_draft_fixed - 0.001).abs() < 1e-12, "{est:?}");
        assert!((est.rtt - 0.0007).abs() < 1e-12);
        // Least squares through (0, 8), (2, 10), (4, 14): slope 1.5, intercept 7.667 ms.
        assert!((est.t_verify_slope - 0.0015).abs() < 1e-9, "{est:?}");
        assert!((est.t_verify1 - 0.0076667).abs() < 1e-6, "{est:?}");
        // One fixed γ: drafting time is all per forward.
        let est = model_inputs(&base, &[(2, &g2)]);
        assert!((est.t_draft - 0.0065).abs() < 1e-12, "{est:?}");
    }

    #[test]
    fn replot_redraws_from_results_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            json!({"rtt_ms": 0.0, "pipeline": false, "gamma": "target-only", "speedup": 1.0}),
            json!({"rtt_ms": 0.0, "pipeline": false, "gamma": 4, "speedup": 1.1, "predicted_speedup": 1.05}),
            json!({"rtt_ms": 0.0, "pipeline": false, "gamma": "auto", "speedup": 1.2, "predicted_speedup": 1.1}),
            json!({"rtt_ms": 50.0, "pipeline": false, "gamma": 4, "speedup": 0.5, "predicted_speedup": 0.45}),
            json!({"rtt_ms": 50.0, "pipeline": false, "gamma": "auto", "speedup": 0.6, "predicted_speedup": 0.62}),
        ];
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(dir.path().join("results.jsonl"), text).unwrap();
        replot(dir.path()).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("latency-sequential.svg")).unwrap();
        assert!(
            svg.contains("γ=auto measured") && svg.contains("50 ms"),
            "{svg}"
        );
        assert!(dir.path().join("latency-sequential.png").exists());
        assert!(!dir.path().join("latency-pipelined.svg").exists());
        std::fs::write(
            dir.path().join("results.jsonl"),
            "{\"rtt_ms\": 0}\nnot json\n",
        )
        .unwrap();
        let e = format!("{:#}", replot(dir.path()).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
