//! `specd eval gsm8k`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use specd_engine::pipeline::check_pair;
use specd_eval::config::parse_configs;
use specd_eval::runner::EvalOptions;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// GSM8K: accuracy, answer fidelity to target-only, target NLL, α, E and speedup per config.
    Gsm8k(Gsm8kArgs),
}

#[derive(Args)]
pub struct Gsm8kArgs {
    /// GSM8K-format JSONL (`question`, `answer` ending `#### N`).
    #[arg(long)]
    pub data: PathBuf,
    /// Skip this many problems.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Run at most this many problems.
    #[arg(long)]
    pub limit: Option<usize>,
    /// `;`-separated configs `RULE[@budget=B,protect=default|none,pacing=none|linear[:BURST],gamma=G|auto|heuristic,drafter=model|ngram[:MIN-MAX]|suffix[:MIN-MAX@P]|hybrid[:MIN-MAX@P]]`,
    /// e.g. `exact;topk:3@budget=8;exact@drafter=ngram,gamma=auto`. `drafter=ngram` drafts by prompt
    /// lookup, `suffix` by suffix counts (no draft model; each config is its own tenant, so its
    /// index of earlier completions holds that config's answers to the problems before). Budgets
    /// are paced linearly over --max-tokens unless `pacing=none`. The target-only baseline always
    /// runs.
    #[arg(long)]
    pub configs: String,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long, default_value_t = 4)]
    pub gamma: usize,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Comma-separated seeds; every problem runs once per seed.
    #[arg(long, default_value = "0", value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// 0 (zero-shot) or 8 (chain-of-thought exemplars from the train file).
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// A system message before each problem (default: none, so the chat template's own default
    /// applies). A reworded one that means the same measures the noise floor: how often the
    /// target's answer changes under a change that should not matter.
    #[arg(long)]
    pub system: Option<String>,
    /// The train file for --shots 8 (default: train.jsonl beside --data).
    #[arg(long)]
    pub train: Option<PathBuf>,
    #[command(flatten)]
    pub models: crate::model_args::ModelPairArgs,
    /// Run generations through a coordinator (distributed mode) instead of the embedded engine;
    /// the target model is still loaded here for scoring (NLL).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Output directory: results.jsonl (resumable), summary.csv, summary.md, pareto.svg, pareto.png, run.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Only rewrite the reports from an existing results.jsonl.
    #[arg(long)]
    pub report_only: bool,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    let EvalCommand::Gsm8k(a) = cmd;
    if a.report_only {
        return specd_eval::write_reports(&a.out);
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let opts = EvalOptions {
        data: a.data.clone(),
        train: a.train.clone(),
        offset: a.offset,
        limit: a.limit,
        configs: parse_configs(&a.configs)?,
        temperature: a.temperature,
        gamma: a.gamma,
        max_tokens: a.max_tokens,
        seeds: a.seeds.clone(),
        shots: a.shots,
        system: a.system.clone(),
        out: a.out.clone(),
        coordinator: a.coordinator.clone(),
    };
    if !opts.data.is_file() {
        bail!("--data {}: no such file", opts.data.display());
    }
    let target = a.models.load_target()?;
    let draft = a.models.load_draft()?;
    check_pair(&target, &draft)?;
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    specd_eval::run_eval(&opts, &target, &draft, &command_line)?;
    println!("{}", opts.out.join("summary.md").display());
    Ok(())
}
