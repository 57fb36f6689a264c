//! `specd bench load`: a closed-loop load generator on the embedded engine. N clients each send
//! requests back to back for a fixed time, on one target (and one draft) shared by every
//! session, so the model's batcher runs their forwards in shared passes. Per mode (target-only,
//! speculative) and client count: aggregate tokens/s, its ratio to one client, time to first
//! token and inter-token latency (p50, p99), errors, forwards per pass and resident memory; beside
//! them the step cost t(k) of k sessions' rows in one pass, measured in the same run, and the
//! batching bound k·t(1)/t(k).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use specd_engine::model::{BatchStats, Model, Seq};
use specd_engine::pipeline::{encode_prompt, generate_until, LoadedModel, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::Policy;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;
use specd_eval::plot::{Chart, Line, Series};

use super::stats::median;
use super::BENCH_PROMPTS;

#[derive(Args)]
pub struct LoadBenchArgs {
    #[command(flatten)]
    pub models: crate::model_args::ModelPairArgs,
    /// Concurrent clients, comma-separated: one measurement per count and mode.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Modes to measure, comma-separated: target-only, speculative.
    #[arg(long, default_value = "target-only,speculative", value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Block size of the speculative mode: a number, auto or heuristic.
    #[arg(long, default_value = "4")]
    pub gamma: String,
    /// Drafter of the speculative mode: model, ngram, suffix or hybrid.
    #[arg(long, default_value = "model")]
    pub drafter: DrafterSpec,
    /// Tokens per request (each client sends requests back to back).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Seconds of load per measurement; tokens committed after it are not counted.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Timed repetitions of each step cost t(k) (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub reps: usize,
    /// Write load.json, load.md, load.svg and load.png here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON line with every figure on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What one request saw.
#[derive(Default)]
struct Trace {
    /// Seconds from sending to the first token.
    ttft: Option<f64>,
    /// Seconds per token between deltas (one entry per token after the first delta).
    itl: Vec<f64>,
    /// Tokens committed before the deadline.
    tokens: usize,
    error: Option<String>,
}

/// One measurement: a mode at a client count.
#[derive(Serialize, Clone)]
struct Cell {
    mode: String,
    clients: usize,
    tokens_per_s: f64,
    /// Aggregate tokens/s over the same mode's at one client.
    ratio_to_one_client: Option<f64>,
    requests: usize,
    errors: usize,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
    /// Target forwards per pass over its weights.
    target_forwards_per_pass: f64,
    /// Target token rows per pass (prefill chunks count all their rows).
    target_rows_per_pass: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// The `q` quantile (nearest rank) of `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Resident and peak resident memory of this process in MiB (0 where /proc is missing).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Median seconds of one pass in which `k` sessions, each after `context`, run one token each
/// (the step cost of target-only decoding at k sessions), for every k in `ks`, measured
/// round-robin over k so that drift on a shared machine hits every k alike.
fn step_costs(model: &Model, context: &[u32], ks: &[usize], reps: usize) -> Result<Vec<f64>> {
    let most = ks.iter().copied().max().unwrap_or(1);
    let mut caches = Vec::with_capacity(most);
    for _ in 0..most {
        let mut c = model.new_cache();
        model.forward(&mut c, context, context.len())?;
        caches.push(c);
    }
    let base = context.len();
    let next = [context[0]];
    let mut times = vec![Vec::with_capacity(reps); ks.len()];
    for rep in 0..reps + 2 {
        for (i, &k) in ks.iter().enumerate() {
            let mut seqs: Vec<Seq<'_, _>> = caches[..k]
                .iter_mut()
                .map(|c| Seq {
                    cache: c,
                    tokens: &next,
                    logits_from: 0,
                })
                .collect();
            let t0 = Instant::now();
            for r in model.forward_many(&mut seqs) {
                std::hint::black_box(r?);
            }
            if rep >= 2 {
                times[i].push(t0.elapsed().as_secs_f64());
            }
            drop(seqs);
            caches.iter_mut().for_each(|c| c.truncate(base));
        }
    }
    Ok(times.iter().map(|t| median(t)).collect())
}

fn request(a: &LoadBenchArgs, mode: Mode, gamma: GammaPolicy, prompt: &str) -> Request {
    Request {
        prompt: Prompt::user(prompt),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens: a.max_tokens,
        sampling: SamplingParams::default(),
        gamma: if mode == Mode::TargetOnly {
            GammaPolicy::Fixed(0)
        } else {
            gamma
        },
        mode,
        drafter: a.drafter,
        draft_sampling: DraftSampling::Greedy,
        policy: Policy::default(),
    }
}

/// Runs `clients` closed-loop clients for `duration`; returns every request's trace and the
/// seconds measured.
fn run_cell(
    a: &LoadBenchArgs,
    target: &LoadedModel,
    draft: Option<&LoadedModel>,
    mode: Mode,
    gamma: GammaPolicy,
    clients: usize,
) -> Vec<Trace> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let traces = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for c in 0..clients {
            let traces = &traces;
            s.spawn(move || {
                let mut n = c;
                while Instant::now() < deadline {
                    let req = request(a, mode, gamma, BENCH_PROMPTS[n % BENCH_PROMPTS.len()]);
                    n += clients;
                    let sent = Instant::now();
                    let mut last = sent;
                    let mut trace = Trace::default();
                    let out = generate_until(target, draft, &req, |d| {
                        let now = Instant::now();
                        if now >= deadline {
                            return ControlFlow::Break(());
                        }
                        let k = d.token_ids.len();
                        if k > 0 {
                            if trace.ttft.is_none() {
                                trace.ttft = Some((now - sent).as_secs_f64());
                            } else {
                                let per = (now - last).as_secs_f64() / k as f64;
                                trace.itl.extend(std::iter::repeat_n(per, k));
                            }
                            trace.tokens += k;
                            last = now;
                        }
                        ControlFlow::Continue(())
                    });
                    if let Err(e) = out {
                        trace.error = Some(format!("{e:#}"));
                    }
                    traces.lock().unwrap().push(trace);
                }
            });
        }
    });
    traces.into_inner().unwrap()
}

fn summarize(mode: &str, clients: usize, traces: &[Trace], secs: f64, batch: &BatchStats) -> Cell {
    let ttft: Vec<f64> = traces.iter().filter_map(|t| t.ttft).collect();
    let itl: Vec<f64> = traces.iter().flat_map(|t| t.itl.iter().copied()).collect();
    let (rss, peak) = rss_mib();
    Cell {
        mode: mode.to_owned(),
        clients,
        tokens_per_s: traces.iter().map(|t| t.tokens).sum::<usize>() as f64 / secs,
        ratio_to_one_client: None,
        requests: traces.len(),
        errors: traces.iter().filter(|t| t.error.is_some()).count(),
        ttft_p50_ms: quantile(&ttft, 0.5) * 1e3,
        ttft_p99_ms: quantile(&ttft, 0.99) * 1e3,
        itl_p50_ms: quantile(&itl, 0.5) * 1e3,
        itl_p99_ms: quantile(&itl, 0.99) * 1e3,
        target_forwards_per_pass: batch.sequences_per_pass(),
        target_rows_per_pass: batch.rows as f64 / batch.passes.max(1) as f64,
        rss_mib: rss,
        peak_rss_mib: peak,
    }
}

fn markdown(cells: &[Cell], steps: &[(usize, f64)], bound: &dyn Fn(usize) -> f64) -> String {
    let mut md = String::from("Step cost of k sessions' rows in one pass (target, one token each):\n\n| k | t(k) ms | k·t(1)/t(k) |\n|---:|---:|---:|\n");
    for &(k, t) in steps {
        md += &format!("| {k} | {:.2} | {:.2} |\n", t * 1e3, bound(k));
    }
    md += "\n| mode | clients | tokens/s | × 1 client | 0.8·k·t(1)/t(k) | TTFT p50 / p99 ms | ITL p50 / p99 ms | forwards / rows per pass | requests | errors | RSS / peak MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for c in cells {
        md += &format!(
            "| {} | {} | {:.1} | {} | {:.2} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} | {:.0} / {:.0} |\n",
            c.mode,
            c.clients,
            c.tokens_per_s,
            c.ratio_to_one_client
                .map_or("–".into(), |r| format!("{r:.2}")),
            0.8 * bound(c.clients),
            c.ttft_p50_ms,
            c.ttft_p99_ms,
            c.itl_p50_ms,
            c.itl_p99_ms,
            c.target_forwards_per_pass,
            c.target_rows_per_pass,
            c.requests,
            c.errors,
            c.rss_mib,
            c.peak_rss_mib
        );
    }
    md
}

fn chart(
    cells: &[Cell],
    modes: &[Mode],
    one: &dyn Fn(&str) -> Option<f64>,
    bound: &dyn Fn(usize) -> f64,
) -> Chart {
    let colors = [[31, 119, 180], [214, 39, 40], [44, 160, 44]];
    let mut series: Vec<Series> = modes
        .iter()
        .zip(colors)
        .map(|(m, color)| {
            let name = mode_name(*m);
            Series {
                name: name.to_owned(),
                color,
                points: cells
                    .iter()
                    .filter(|c| c.mode == name)
                    .map(|c| (x_of(c.clients), c.tokens_per_s, String::new()))
                    .collect(),
                square: false,
                line: Line::Solid,
            }
        })
        .collect();
    if let Some(t1) = one("target-only") {
        series.push(Series {
            name: "ideal k*t(1)/t(k)".into(),
            color: [127, 127, 127],
            points: cells
                .iter()
                .filter(|c| c.mode == "target-only")
                .map(|c| (x_of(c.clients), t1 * bound(c.clients), String::new()))
                .collect(),
            square: true,
            line: Line::Dashed,
        });
    }
    let mut counts: Vec<usize> = cells.iter().map(|c| c.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    Chart {
        title: "Aggregate throughput under closed-loop load".into(),
        x_label: "concurrent clients (log scale)".into(),
        x_ticks: counts.iter().map(|&k| (x_of(k), k.to_string())).collect(),
        y_label: "tokens/s (all clients)".into(),
        series,
        y_range: None,
    }
}

/// Where `clients` sits on the chart's x axis (log 2).
fn x_of(clients: usize) -> f64 {
    (clients as f64).log2()
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::TargetOnly => "target-only",
        Mode::Speculative => "speculative",
    }
}

pub fn bench_load(a: LoadBenchArgs) -> Result<()> {
    if a.clients.is_empty() || a.clients.contains(&0) {
        bail!("--clients values must be at least 1");
    }
    if !a.duration.is_finite() || a.duration <= 0.0 || a.max_tokens == 0 || a.reps == 0 {
        bail!("--duration, --max-tokens and --reps must be above 0");
    }
    let modes: Vec<Mode> = a
        .modes
        .iter()
        .map(|m| match m.as_str() {
            "target-only" => Ok(Mode::TargetOnly),
            "speculative" => Ok(Mode::Speculative),
            other => bail!("--modes: unknown mode {other:?} (target-only, speculative)"),
        })
        .collect::<Result<_>>()?;
    let gamma = GammaPolicy::parse(
        &a.gamma,
        specd_engine::spec_decode::gamma::DEFAULT_GAMMA_MAX,
    )
    .map_err(|e| anyhow::anyhow!("--gamma: {e}"))?;
    let target = a.models.load_target()?;
    let needs_draft = modes.contains(&Mode::Speculative) && a.drafter.needs_model();
    let draft = if needs_draft {
        let d = a.models.load_draft()?;
        specd_engine::pipeline::check_pair(&target, &d)?;
        Some(d)
    } else {
        None
    };
    // Step costs at a context like the requests' (a chat prompt plus half the completion).
    let mut context = encode_prompt(&target.tokenizer, BENCH_PROMPTS[0], true)?;
    let fill = context.clone();
    context.extend(fill.iter().cycle().take(a.max_tokens / 2));
    let mut ks: Vec<usize> = std::iter::once(1)
        .chain(a.clients.iter().copied())
        .collect();
    ks.sort_unstable();
    ks.dedup();
    let costs =
        step_costs(&target.model, &context, &ks, a.reps).context("timing batched passes")?;
    let steps: Vec<(usize, f64)> = ks.iter().copied().zip(costs).collect();
    for &(k, t) in &steps {
        eprintln!("t({k}) = {:.2} ms", t * 1e3);
    }
    let t_of = |k: usize| steps.iter().find(|s| s.0 == k).map_or(f64::NAN, |s| s.1);
    let bound = |k: usize| k as f64 * t_of(1) / t_of(k);
    let mut cells: Vec<Cell> = Vec::new();
    for &mode in &modes {
        for &clients in &a.clients {
            let before = target.model.batch_stats();
            let t0 = Instant::now();
            let traces = run_cell(&a, &target, draft.as_ref(), mode, gamma, clients);
            let secs = a.duration.min(t0.elapsed().as_secs_f64());
            let batch = target.model.batch_stats().since(&before);
            let mut cell = summarize(mode_name(mode), clients, &traces, secs, &batch);
            if let Some(e) = traces.iter().find_map(|t| t.error.as_ref()) {
                eprintln!("{} at {clients} clients: first error: {e}", cell.mode);
            }
            cell.ratio_to_one_client = cells
                .iter()
                .find(|c| c.mode == cell.mode && c.clients == 1)
                .map(|c| cell.tokens_per_s / c.tokens_per_s);
            eprintln!(
                "{:<12} {:>3} clients: {:>7.1} tok/s  TTFT p50 {:.0} ms  ITL p50 {:.1} ms  {:.1} forwards and {:.1} rows per pass  {} errors",
                cell.mode,
                clients,
                cell.tokens_per_s,
                cell.ttft_p50_ms,
                cell.itl_p50_ms,
                cell.target_forwards_per_pass,
                cell.target_rows_per_pass,
                cell.errors
            );
            cells.push(cell);
        }
    }
    let one = |mode: &str| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.clients == 1)
            .map(|c| c.tokens_per_s)
    };
    let md = markdown(&cells, &steps, &bound);
    let report = json!({
        "command_line": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": specd_eval::machine(),
        "target": a.models.target, "target_device": a.models.target_device.to_string(),
        "draft": draft.as_ref().map(|_| &a.models.draft), "drafter": a.drafter.name(), "gamma": a.gamma,
        "max_tokens": a.max_tokens, "duration_s": a.duration,
        "step_cost_ms": steps.iter().map(|&(k, t)| json!({"k": k, "t_ms": t * 1e3, "bound": bound(k)})).collect::<Vec<_>>(),
        "cells": cells,
    });
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(
            dir.join("load.json"),
            serde_json::to_string_pretty(&report)? + "\n",
        )?;
        let cmd = format!(
            "Measured by `{}`.\n\n",
            report["command_line"].as_str().unwrap_or("")
        );
        std::fs::write(dir.join("load.md"), cmd + &md)?;
        let chart = chart(&cells, &modes, &one, &bound);
        std::fs::write(dir.join("load.svg"), chart.to_svg())?;
        chart.write_png(&dir.join("load.png"))?;
        eprintln!(
            "wrote load.json, load.md, load.svg and load.png in {}",
            dir.display()
        );
    }
    if a.json {
        println!("{report}");
    } else {
        println!("{md}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
