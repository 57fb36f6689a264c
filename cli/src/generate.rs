//! `specd generate`.

use std::io::Write;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use specd_engine::device::Device;
use specd_engine::pipeline::{self, LoadedModel, Mode, Prompt, Request};
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::{Pacing, Policy, ProtectCache};
use specd_engine::spec_decode::draft::ngram::NgramConfig;
use specd_engine::spec_decode::draft::suffix::SuffixConfig;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::{Estimates, GammaPolicy, DEFAULT_GAMMA_MAX};
use specd_engine::spec_decode::rules::Rule;
use specd_engine::spec_decode::DraftSampling;

/// The largest block a verify accepts.
pub const MAX_GAMMA: usize = 32;

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Speculative,
    TargetOnly,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DrafterArg {
    /// The draft model (`generate --draft`, `draft-node --model`).
    Model,
    /// Prompt lookup: what followed the latest earlier occurrence of the text's last n tokens;
    /// no draft model.
    Ngram,
    /// Suffix counts: the most frequent continuation of the longest context seen in this
    /// session or in the node's earlier completions, as long as it is likely; no draft model.
    Suffix,
    /// The suffix drafter's proposal when it expects at least 2 accepted tokens, the draft
    /// model's otherwise.
    Hybrid,
}

/// `--drafter` and its n-gram lengths (`generate`, `draft-node`).
#[derive(Args)]
pub struct DrafterArgs {
    /// What drafts the blocks: the draft model; `ngram` (prompt lookup over the prompt and the
    /// text so far) or `suffix` (what most often followed the text's last tokens, in this session
    /// and in the node's earlier completions): no draft model or accelerator, nearly free,
    /// greedy, for a target of any vocabulary; or `hybrid` (suffix when confident, else the
    /// model). On a draft-node: the drafter of requests that name none (a node with a model
    /// serves every drafter; one without serves ngram and suffix).
    #[arg(long, value_enum, default_value = "model")]
    pub drafter: DrafterArg,
    /// --drafter ngram: the shortest n-gram matched.
    #[arg(long, default_value_t = NgramConfig::default().min)]
    pub ngram_min: usize,
    /// --drafter ngram: the longest n-gram matched (longer matches are tried first).
    #[arg(long, default_value_t = NgramConfig::default().max)]
    pub ngram_max: usize,
    /// --drafter suffix|hybrid: the shortest context matched.
    #[arg(long, default_value_t = SuffixConfig::default().min_match)]
    pub suffix_min: usize,
    /// --drafter suffix|hybrid: the longest context indexed and matched (at most 64).
    #[arg(long, default_value_t = SuffixConfig::default().max_depth)]
    pub suffix_max: usize,
    /// --drafter suffix|hybrid: a proposal stops where the index's estimate that all of it is
    /// right drops below this.
    #[arg(long, default_value_t = SuffixConfig::default().min_prob)]
    pub suffix_min_prob: f64,
}

impl DrafterArgs {
    pub fn spec(&self) -> Result<DrafterSpec> {
        Ok(match self.drafter {
            DrafterArg::Model => DrafterSpec::Model,
            DrafterArg::Ngram => {
                let c = NgramConfig {
                    min: self.ngram_min,
                    max: self.ngram_max,
                };
                c.validate()
                    .map_err(|e| anyhow::anyhow!("--ngram-min/--ngram-max: {e}"))?;
                DrafterSpec::Ngram(c)
            }
            DrafterArg::Suffix | DrafterArg::Hybrid => {
                let c = SuffixConfig {
                    min_match: self.suffix_min,
                    max_depth: self.suffix_max,
                    min_prob: self.suffix_min_prob,
                };
                c.validate().map_err(|e| {
                    anyhow::anyhow!("--suffix-min/--suffix-max/--suffix-min-prob: {e}")
                })?;
                match self.drafter {
                    DrafterArg::Suffix => DrafterSpec::Suffix(c),
                    _ => DrafterSpec::Hybrid(c),
                }
            }
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DraftSamplingArg {
    Greedy,
    Sample,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the target model's chat template (for instruct models).
    #[arg(long)]
    pub chat: bool,
    /// Completion tokens to generate at most (generation also stops at an end-of-sequence token).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens holding this much probability (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed; a seeded run repeats exactly.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub drafter: DrafterArgs,
    /// Draft model (--drafter model): a preset name, a .gguf file, an HF model directory, or a
    /// Hugging Face repo id (org/name or org/name:file.gguf).
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: String,
    /// Device of the draft: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub draft_device: Device,
    /// Target model (same forms as --draft).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Device of the target: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub target_device: Device,
    /// Drafted tokens per block: a number (0 = target-only decoding), `auto` (each round, the γ in
    /// [0, --gamma-max] the latency model predicts fastest from running estimates of the
    /// acceptance rate, draft and verify times and the round trip; 0 = a target-only round;
    /// timed, so a seeded run at T > 0 or under a lossy rule may not repeat),
    /// `auto@t_d=S,c_d=S,t_v1=S,slope=S,rtt=S` (auto with those costs in seconds, frozen: repeats
    /// bit for bit; `--json` prints measured `estimates`) or `heuristic` (+2 after a fully
    /// accepted block, −1 otherwise, within [1, --gamma-max]).
    #[arg(long, default_value = "8")]
    pub gamma: String,
    /// Largest block `auto` and `heuristic` may choose.
    #[arg(long, default_value_t = DEFAULT_GAMMA_MAX)]
    pub gamma_max: usize,
    /// Acceptance rule: exact, lenient:λ, topk:k, threshold:τ, typical:ε,δ, divergence:T or
    /// lookahead:W; any but exact may be gated by the target's entropy: RULE+entropy:H (nats)
    /// (docs/rules.md). `exact` keeps the target's output distribution exactly; the others accept
    /// more, within --budget.
    #[arg(long, default_value = "exact")]
    pub rule: String,
    /// Error budget B per sequence (absolute: "--max-tokens 128 --budget 32" is 32 per 128
    /// tokens). The expected number of tokens where the output departs from the exact rule's is at
    /// most B, and at temperature 0 at most ⌊B⌋ tokens are not the target's argmax. 0 = exact.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub budget: f64,
    /// Critical tokens always judged exactly: `default` (digits, operators, =, $, ####), `none`,
    /// or a regular expression matched against each token's text.
    #[arg(long, default_value = "default")]
    pub protect: String,
    /// Budget pacing: `linear[:BURST]` releases B evenly over --max-tokens (plus BURST, default 1),
    /// `none` allows spending it all at once.
    #[arg(long, default_value = "linear")]
    pub pacing: String,
    /// `speculative` (draft + target) or `target-only` (the baseline).
    #[arg(long, value_enum, default_value = "speculative")]
    pub mode: ModeArg,
    /// How the draft picks tokens at temperature > 0: its argmax (only ids travel) or a sample of
    /// its own distribution.
    #[arg(long, value_enum, default_value = "greedy")]
    pub draft_sampling: DraftSamplingArg,
    /// Print one JSON line with the text, token ids and statistics at the end of stdout.
    #[arg(long)]
    pub json: bool,
    /// Send the request to a coordinator (distributed mode) instead of running the models here,
    /// e.g. http://127.0.0.1:50050. Rule, budget, γ, seed and sampling travel with the request.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Distributed mode: draft each block only after the previous verdict (pipelined drafting,
    /// the default, drafts block n+1 while block n is verified).
    #[arg(long)]
    pub no_pipeline: bool,
}

impl GenerateArgs {
    pub fn request(&self) -> Result<Request> {
        let rule: Rule = self
            .rule
            .parse()
            .map_err(|e| anyhow::anyhow!("--rule: {e}"))?;
        let pacing: Pacing = self.pacing.parse()?;
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        let gamma = GammaPolicy::parse(&self.gamma, self.gamma_max)
            .map_err(|e| anyhow::anyhow!("--gamma: {e}"))?;
        if let GammaPolicy::Fixed(n) = gamma {
            if n > MAX_GAMMA {
                bail!("--gamma {n} is over the maximum block size of {MAX_GAMMA}");
            }
        } else if self.gamma_max > MAX_GAMMA {
            bail!(
                "--gamma-max {} is over the maximum block size of {MAX_GAMMA}",
                self.gamma_max
            );
        }
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        };
        sampling.validate()?;
        let drafter = self.drafter.spec()?;
        Ok(Request {
            prompt: Prompt::new(self.prompt.clone(), self.chat),
            stop: Vec::new(),
            logprobs: None,
            tenant: String::new(),
            max_tokens: self.max_tokens,
            sampling,
            gamma: if matches!(self.mode, ModeArg::TargetOnly) {
                GammaPolicy::Fixed(0)
            } else {
                gamma
            },
            mode: match self.mode {
                ModeArg::Speculative => Mode::Speculative,
                ModeArg::TargetOnly => Mode::TargetOnly,
            },
            drafter,
            draft_sampling: match self.draft_sampling {
                DraftSamplingArg::Greedy => DraftSampling::Greedy,
                DraftSamplingArg::Sample => DraftSampling::Sample,
            },
            policy: {
                let p = Policy {
                    rule,
                    budget: self.budget,
                    protect: None,
                    pacing,
                };
                p.validate()?;
                p
            },
        })
    }
}

/// The `--json` line.
pub fn output_json(
    out: &pipeline::Output,
    req: &Request,
    args: &GenerateArgs,
) -> serde_json::Value {
    let s = &out.stats;
    let by_k: serde_json::Map<String, serde_json::Value> = s
        .verify_by_k
        .iter()
        .map(|(k, (n, t))| (k.to_string(), json!(1e3 * t / *n as f64)))
        .collect();
    let mut j = json!({
        "text": out.text,
        "token_ids": out.token_ids,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "drafted_tokens": s.drafted_tokens,
        "accepted_tokens": s.accepted_tokens,
        "rejections": s.rejections,
        "target_calls": s.target_calls,
        "alpha": s.alpha(),
        "tokens_per_call": s.tokens_per_call(),
        "wall_ms": out.wall_s * 1e3,
        "prefill_ms": out.prefill_s * 1e3,
        "decode_ms": s.decode_s * 1e3,
        "tokens_per_s": s.tokens_per_s(),
        "t_draft_ms": s.t_draft() * 1e3,
        "t_verify_ms_by_k": by_k,
        "finish_reason": s.finish_reason,
        "lossy_accepted_tokens": s.lossy_accepted_tokens,
        "budget": req.policy.budget,
        "budget_spent": s.budget_spent,
        "protected_positions": s.protected_positions,
        "protect": req.policy.protect.as_ref().map(|p| p.pattern.clone()),
        "pacing": req.policy.pacing.to_string(),
        "tokens": out.token_ids.iter().zip(&s.token_info).map(|(id, i)| json!({"id": id, "lossy": i.lossy, "charge": i.charge})).collect::<Vec<_>>(),
        "mode": req.mode,
        "rule": req.policy.rule.to_string(),
        "gamma": req.gamma,
        "temperature": req.sampling.temperature,
        "top_p": req.sampling.top_p,
        "top_k": req.sampling.top_k,
        "seed": req.sampling.seed,
        "draft_sampling": req.draft_sampling,
        "target": args.target,
        "target_device": args.target_device.to_string(),
        "draft_device": args.draft_device.to_string(),
        "drafter": req.drafter.name(),
        "draft": if req.gamma.speculative() && req.drafter.needs_model() { Some(&args.draft) } else { None },
    });
    // The γ policy's outcome and the latency model's final estimates.
    if let Some(o) = j.as_object_mut() {
        o.insert("gamma_max".into(), json!(s.gamma_max));
        o.insert("mean_gamma".into(), json!(s.mean_gamma));
        o.insert("stale_blocks".into(), json!(s.stale_blocks));
        o.extend(estimates_json(&s.estimates));
    }
    j
}

/// The latency model's estimates as `est_*` JSON fields, in milliseconds.
pub fn estimates_json(e: &Estimates) -> serde_json::Map<String, serde_json::Value> {
    [
        ("est_alpha", e.alpha),
        ("est_t_draft_ms", e.t_draft * 1e3),
        ("est_t_draft_fixed_ms", e.t_draft_fixed * 1e3),
        ("est_t_verify_ms", e.t_verify1 * 1e3),
        ("est_t_verify_slope_ms", e.t_verify_slope * 1e3),
        ("est_rtt_ms", e.rtt * 1e3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), json!(v)))
    .collect()
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let mut req = args.request()?;
    if let Some(url) = &args.coordinator {
        let stdout = std::io::stdout();
        let remote = specd_coordinator::client::generate(
            url,
            &req,
            &args.protect,
            !args.no_pipeline,
            |t| {
                if !args.json {
                    let mut o = stdout.lock();
                    let _ = o.write_all(t.as_bytes());
                    let _ = o.flush();
                }
            },
        )?;
        return finish(&remote.output, &req, &args, Some(remote.fallback));
    }
    let target = LoadedModel::load_on(&args.target, args.target_device, &crate::log)?;
    ProtectCache::new(target.tokenizer.clone(), 1).attach(&mut req.policy, &args.protect)?;
    let draft = if req.gamma.speculative() && req.drafter.needs_model() {
        Some(LoadedModel::load_on(
            &args.draft,
            args.draft_device,
            &crate::log,
        )?)
    } else {
        None
    };
    let stdout = std::io::stdout();
    let out = pipeline::generate(&target, draft.as_ref(), &req, |t| {
        if !args.json {
            let mut o = stdout.lock();
            let _ = o.write_all(t.as_bytes());
            let _ = o.flush();
        }
    })?;
    finish(&out, &req, &args, None)
}

/// Prints the JSON line, or the stats line to stderr.
fn finish(
    out: &pipeline::Output,
    req: &Request,
    args: &GenerateArgs,
    fallback: Option<bool>,
) -> Result<()> {
    if args.json {
        let mut j = output_json(out, req, args);
        if let Some(f) = fallback {
            j["coordinator"] = json!(args.coordinator);
            j["fallback"] = json!(f);
        }
        println!("{j}");
    } else {
        println!();
        let s = &out.stats;
        eprintln!(
            "[{} tokens in {:.0} ms: {:.1} tok/s | prefill {} tokens {:.0} ms | target calls {} | drafted {} accepted {} alpha {:.3} | {:.2} tokens/call | γ {} (mean {:.1}) | lossy {} budget {:.2}/{} | finish {:?}]",
            s.completion_tokens,
            s.decode_s * 1e3,
            s.tokens_per_s(),
            out.prompt_tokens,
            out.prefill_s * 1e3,
            s.target_calls,
            s.drafted_tokens,
            s.accepted_tokens,
            s.alpha(),
            s.tokens_per_call(),
            req.gamma,
            s.mean_gamma,
            s.lossy_accepted_tokens,
            s.budget_spent,
            req.policy.budget,
            s.finish_reason
        );
    }
    Ok(())
}
