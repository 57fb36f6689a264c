//! `specd score`: teacher-forced NLL and argmax agreement of a continuation.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use specd_engine::device::Device;
use specd_engine::pipeline::{encode_prompt, LoadedModel};
use specd_engine::presets::DEFAULT_TARGET;
use specd_engine::score::{self, Feed};

#[derive(Args)]
pub struct ScoreArgs {
    /// The model to score with (defaults to the default pair's target).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub model: String,
    /// Device: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// The prompt text the continuation follows.
    #[arg(
        long,
        required_unless_present = "prompt_ids",
        conflicts_with = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// The prompt as comma-separated token ids, used as given (no chat template, no BOS added):
    /// scores a tokenization made elsewhere, e.g. llama.cpp's.
    #[arg(long, conflicts_with = "chat")]
    pub prompt_ids: Option<String>,
    /// Wrap the prompt in the model's chat template (as `generate --chat` does).
    #[arg(long)]
    pub chat: bool,
    /// The continuation as text (tokenized without special tokens).
    #[arg(long, conflicts_with = "continuation_ids")]
    pub continuation: Option<String>,
    /// The continuation as comma-separated token ids (the `token_ids` of `generate --json`).
    #[arg(long)]
    pub continuation_ids: Option<String>,
    /// Feed one token per forward, as target-only decoding runs (default: one forward of the
    /// whole text). On a backend whose kernels depend on the row count (candle), this is the
    /// reference that greedy speculative output is checked against.
    #[arg(long)]
    pub steps: bool,
    /// Also load the model on this device and report the teacher-forced agreement of the two
    /// (top-1 at every position of prompt + continuation, max |Δ logit|): e.g. --device cpu
    /// --compare-device cuda checks a GPU against specd's kernels.
    #[arg(long)]
    pub compare_device: Option<Device>,
    /// Print one JSON line instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    parse_ids_of("--continuation-ids", s)
}

fn parse_ids_of(option: &str, s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("{option}: {t:?} is not a token id"))
        })
        .collect()
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let model = LoadedModel::load_on(&a.model, a.device, &crate::log)?;
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (Some(text), None) => encode_prompt(&model.tokenizer, text, a.chat)?,
        (None, Some(ids)) => parse_ids_of("--prompt-ids", ids)?,
        _ => bail!("give the prompt as --prompt TEXT or --prompt-ids 1,2,3"),
    };
    let cont = match (&a.continuation, &a.continuation_ids) {
        (Some(t), None) => model.tokenizer.encode(t, false)?,
        (None, Some(ids)) => parse_ids(ids)?,
        _ => bail!("give the continuation as --continuation TEXT or --continuation-ids 1,2,3"),
    };
    let feed = if a.steps { Feed::Steps } else { Feed::Block };
    let r = score::score_fed(&model.model, &prompt, &cont, feed)?;
    let compared = match a.compare_device {
        Some(dev) => {
            let other = LoadedModel::load_on(&a.model, dev, &crate::log)?;
            let all: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
            Some((dev, score::agreement(&model.model, &other.model, &all)?))
        }
        None => None,
    };
    if let Some((dev, g)) = &compared {
        eprintln!(
            "{} vs {dev}: top-1 agreement {:.4} over {} positions, max |Δ logit| {:.3e}",
            a.device,
            g.top1_agreement(),
            g.positions,
            g.max_abs_delta
        );
    }
    if a.json {
        println!(
            "{}",
            json!({
                "model": model.name,
                "device": a.device.to_string(),
                "feed": if a.steps { "steps" } else { "block" },
                "compare": compared.map(|(dev, g)| json!({
                    "device": dev.to_string(), "positions": g.positions,
                    "top1_agreement": g.top1_agreement(), "max_abs_delta": g.max_abs_delta,
                })),
                "prompt_tokens": prompt.len(),
                "tokens": r.tokens,
                "nll_sum": r.nll_sum,
                "mean_nll": if r.tokens > 0 { r.nll_sum / r.tokens as f64 } else { 0.0 },
                "non_argmax_tokens": r.non_argmax_tokens,
                "per_token": r.per_token,
            })
        );
    } else {
        println!(
            "{} tokens: NLL {:.3} (mean {:.3}), {} not the model's argmax",
            r.tokens,
            r.nll_sum,
            if r.tokens > 0 {
                r.nll_sum / r.tokens as f64
            } else {
                0.0
            },
            r.non_argmax_tokens
        );
    }
    Ok(())
}
