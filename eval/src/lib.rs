//! specd's experiment pipeline (`specd eval gsm8k`): accuracy, answer fidelity, target NLL,
//! acceptance and speed for every rule and budget, resumable, with a summary table and a Pareto
//! plot.
//!
//! - [`gsm8k`]: data and answer extraction;
//! - [`config`]: `RULE[@budget=B,protect=…,pacing=…,gamma=…]` specs;
//! - [`runner`]: one JSON line per (problem, seed, config) in `results.jsonl`, resumable;
//! - [`report`]: `summary.csv`, `summary.md`; [`plot`]: `pareto.svg`, `pareto.png`.

pub mod config;
pub mod gsm8k;
pub mod plot;
pub mod report;
pub mod runner;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use specd_engine::pipeline::LoadedModel;

use runner::{load_results, select, EvalOptions, Record, ResultsWriter, Runner, BASELINE};

/// Runs (or resumes) an evaluation and writes every report into `opts.out`.
pub fn run_eval(
    opts: &EvalOptions,
    target: &LoadedModel,
    draft: &LoadedModel,
    command_line: &str,
) -> Result<()> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let lines = gsm8k::load(&opts.data)?;
    let chosen = select(&lines, opts.offset, opts.limit);
    if chosen.is_empty() {
        anyhow::bail!(
            "{}: no problems selected (offset {}, {} lines)",
            opts.data.display(),
            opts.offset,
            lines.len()
        );
    }
    let results_path = opts.out.join("results.jsonl");
    let done: HashSet<(usize, u64, String)> = load_results(&results_path)?
        .into_iter()
        .filter(|r| r.ok)
        .map(|r| (r.problem, r.seed, r.config))
        .collect();
    write_run_json(opts, target, draft, command_line)?;
    let runner = Runner::new(target, draft, opts)?;
    let mut writer = ResultsWriter::open(&results_path)?;
    let per_problem = opts.seeds.len() * (opts.configs.len() + 1);
    let total = chosen.len() * per_problem;
    let skipped = chosen
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .map(|p| {
            opts.seeds
                .iter()
                .map(|&s| {
                    std::iter::once(BASELINE.to_owned())
                        .chain(opts.configs.iter().map(|c| c.name.clone()))
                        .filter(|n| done.contains(&(p.index, s, n.clone())))
                        .count()
                })
                .sum::<usize>()
        })
        .sum::<usize>();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} runs  {elapsed_precise} elapsed, ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(skipped as u64);
    bar.reset_eta();
    for line in chosen {
        let p = match line {
            Ok(p) => p,
            Err(e) => {
                bar.println(format!("skipping a bad data line: {e}"));
                let index = e
                    .rsplit(':')
                    .nth(1)
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .map_or(0, |n| n - 1);
                writer.write(&Record {
                    problem: index,
                    config: "-".into(),
                    error: Some(e.clone()),
                    ..Default::default()
                })?;
                bar.inc(per_problem as u64);
                continue;
            }
        };
        for &seed in &opts.seeds {
            let key = |n: &str| (p.index, seed, n.to_owned());
            let baseline = if done.contains(&key(BASELINE)) {
                None
            } else {
                bar.set_message(format!("problem {} seed {seed} {BASELINE}", p.index));
                let r = runner.run_one(p, seed, None, None);
                writer.write(&r)?;
                bar.inc(1);
                Some(r)
            };
            // The baseline's answer, from this run or the results file.
            let base_answer = match baseline {
                Some(r) => r.ok.then_some(r.answer),
                None => load_results(&results_path)?
                    .into_iter()
                    .find(|r| {
                        r.ok && r.problem == p.index && r.seed == seed && r.config == BASELINE
                    })
                    .map(|r| r.answer),
            };
            for c in &opts.configs {
                if done.contains(&key(&c.name)) {
                    continue;
                }
                bar.set_message(format!("problem {} seed {seed} {}", p.index, c.name));
                let r = runner.run_one(p, seed, Some(c), base_answer.as_ref());
                if let Some(e) = &r.error {
                    bar.println(format!("problem {} seed {seed} {}: {e}", p.index, c.name));
                }
                writer.write(&r)?;
                bar.inc(1);
            }
        }
    }
    bar.finish_with_message("done");
    write_reports(&opts.out)
}

/// Writes `summary.csv`, `summary.md`, `pareto.svg` and `pareto.png` from `results.jsonl`.
pub fn write_reports(out: &Path) -> Result<()> {
    let records = load_results(&out.join("results.jsonl"))?;
    let rows = report::summarize(&records);
    std::fs::write(out.join("summary.csv"), report::to_csv(&rows))?;
    std::fs::write(out.join("summary.md"), report::to_markdown(&rows))?;
    let short = |s: &str| {
        s.split('@').next().unwrap_or(s).to_owned()
            + &s.split_once('@')
                .map_or(String::new(), |(_, o)| format!(" {o}"))
    };
    let chart = plot::Chart {
        title: "GSM8K: fidelity and accuracy vs speedup".into(),
        x_label: "speedup vs target-only (same run)".into(),
        y_label: "fraction".into(),
        series: vec![
            plot::Series {
                name: "answer fidelity".into(),
                color: [31, 119, 180],
                points: rows
                    .iter()
                    .map(|r| (r.speedup, r.fidelity, short(&r.config)))
                    .collect(),
                square: false,
                line: plot::Line::None,
            },
            plot::Series {
                name: "gold accuracy".into(),
                color: [214, 39, 40],
                points: rows
                    .iter()
                    .map(|r| (r.speedup, r.accuracy, String::new()))
                    .collect(),
                square: true,
                line: plot::Line::None,
            },
        ],
        y_range: Some((0.0, 1.05)),
        x_ticks: Vec::new(),
    };
    std::fs::write(out.join("pareto.svg"), chart.to_svg())?;
    chart.write_png(&out.join("pareto.png"))?;
    Ok(())
}

fn write_run_json(
    opts: &EvalOptions,
    target: &LoadedModel,
    draft: &LoadedModel,
    command_line: &str,
) -> Result<()> {
    let model = |m: &LoadedModel| -> Result<serde_json::Value> {
        let sha = if m.path.is_file() {
            Some(specd_engine::presets::sha256_file(&m.path)?)
        } else {
            None
        };
        Ok(
            json!({"name": m.name, "path": m.path, "sha256": sha, "vocab_fingerprint": m.tokenizer.fingerprint()}),
        )
    };
    let run = json!({
        "command_line": command_line,
        "specd_version": env!("CARGO_PKG_VERSION"),
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "target": model(target)?,
        "draft": model(draft)?,
        "data": opts.data,
        "offset": opts.offset,
        "limit": opts.limit,
        "configs": opts.configs.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "temperature": opts.temperature,
        "gamma": opts.gamma,
        "max_tokens": opts.max_tokens,
        "seeds": opts.seeds,
        "shots": opts.shots,
        "system": opts.system,
        "machine": machine(),
    });
    std::fs::write(
        opts.out.join("run.json"),
        serde_json::to_string_pretty(&run)?,
    )?;
    Ok(())
}

/// The machine a measurement ran on (CPU model, kernel threads and path, OS), for reports.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    json!({
        "cpu": cpu,
        "threads": specd_engine::kernels::pool::pool().threads(),
        "kernel_path": format!("{:?}", specd_engine::kernels::kernel_path()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}
