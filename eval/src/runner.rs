//! Runs every (problem, seed, config) once, appending one JSON line per run to `results.jsonl`;
//! a rerun skips what is done. The target-only baseline runs once per problem and seed and is
//! cached in the same file (config `target-only`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use specd_engine::pipeline::{encode_prompt, generate, LoadedModel, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::score::score;
use specd_engine::spec_decode::budget::{Policy, ProtectSet, DEFAULT_PROTECT};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

use crate::config::EvalConfig;
use crate::gsm8k::{self, extract_answer, strip_annotations, Problem};

pub const BASELINE: &str = "target-only";

/// One line of `results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Record {
    pub problem: usize,
    pub seed: u64,
    pub config: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub gold: Option<String>,
    pub answer: Option<String>,
    pub correct: bool,
    /// Same final answer as the target-only run (`None` for the baseline itself).
    pub fidelity: Option<bool>,
    pub completion_tokens: usize,
    pub target_calls: usize,
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
    pub rejections: usize,
    pub alpha: f64,
    #[serde(rename = "E")]
    pub e: f64,
    pub decode_s: f64,
    pub tokens_per_s: f64,
    pub wall_s: f64,
    pub lossy_accepted: usize,
    pub budget_spent: f64,
    /// Target NLL of the output (sum, and per token).
    pub nll_sum: f64,
    pub mean_nll: f64,
    pub text: String,
}

impl Record {
    fn key(&self) -> (usize, u64, String) {
        (self.problem, self.seed, self.config.clone())
    }
}

pub struct EvalOptions {
    pub data: PathBuf,
    /// Exemplars for few-shot prompting (default: `train.jsonl` beside the data).
    pub train: Option<PathBuf>,
    pub offset: usize,
    pub limit: Option<usize>,
    pub configs: Vec<EvalConfig>,
    pub temperature: f32,
    pub gamma: usize,
    pub max_tokens: usize,
    pub seeds: Vec<u64>,
    /// 0 (zero-shot) or 8 (chain-of-thought exemplars from the train file).
    pub shots: usize,
    /// A system message before the prompt (None: the chat template's default).
    pub system: Option<String>,
    pub out: PathBuf,
    /// Run generations through this coordinator (distributed mode) instead of the embedded
    /// engine; scoring still uses the local target model.
    pub coordinator: Option<String>,
}

const INSTRUCTION: &str = "Solve the problem step by step. End your answer with a final line of the form '#### N', where N is the final number.";

/// Reads `results.jsonl`, skipping a torn last line; the last record of a key wins.
pub fn load_results(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut by_key: HashMap<(usize, u64, String), Record> = HashMap::new();
    let mut order = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line that does not parse is a write cut short by an interruption: it is redone.
        if let Ok(r) = serde_json::from_str::<Record>(line) {
            let k = r.key();
            if !by_key.contains_key(&k) {
                order.push(k.clone());
            }
            by_key.insert(k, r);
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| by_key.remove(&k))
        .collect())
}

/// The chat messages of a problem's prompt, after `system` if one is given.
pub fn prompt_messages(
    p: &Problem,
    shots: &[Problem],
    system: Option<&str>,
) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = system
        .map(|s| ("system".to_owned(), s.to_owned()))
        .into_iter()
        .collect();
    for s in shots {
        m.push(("user".to_owned(), format!("{}\n{INSTRUCTION}", s.question)));
        m.push(("assistant".to_owned(), strip_annotations(&s.answer)));
    }
    m.push(("user".to_owned(), format!("{}\n{INSTRUCTION}", p.question)));
    m
}

pub struct Runner<'a> {
    pub target: &'a LoadedModel,
    pub draft: &'a LoadedModel,
    pub opts: &'a EvalOptions,
    protect: Option<Arc<ProtectSet>>,
    shots: Vec<Problem>,
}

impl<'a> Runner<'a> {
    pub fn new(
        target: &'a LoadedModel,
        draft: &'a LoadedModel,
        opts: &'a EvalOptions,
    ) -> Result<Self> {
        if opts.seeds.is_empty() {
            bail!("--seeds: give at least one seed");
        }
        if opts.shots != 0 && opts.shots != 8 {
            bail!("--shots must be 0 or 8");
        }
        let shots = if opts.shots > 0 {
            let train = opts
                .train
                .clone()
                .unwrap_or_else(|| opts.data.with_file_name("train.jsonl"));
            let lines = gsm8k::load(&train)
                .with_context(|| "8-shot prompting needs the train file (--train PATH)")?;
            let shots: Vec<Problem> = lines
                .into_iter()
                .filter_map(|l| l.ok())
                .take(opts.shots)
                .collect();
            if shots.len() < opts.shots {
                bail!(
                    "{}: fewer than {} usable exemplars",
                    train.display(),
                    opts.shots
                );
            }
            shots
        } else {
            Vec::new()
        };
        let protect = Some(Arc::new(ProtectSet::build(
            &target.tokenizer,
            DEFAULT_PROTECT,
        )?));
        Ok(Runner {
            target,
            draft,
            opts,
            protect,
            shots,
        })
    }

    fn policy(&self, c: &EvalConfig) -> Policy {
        Policy {
            rule: c.rule.clone(),
            budget: c.budget,
            protect: if c.protect {
                self.protect.clone()
            } else {
                None
            },
            pacing: c.pacing,
        }
    }

    /// Runs one (problem, seed, config); `config = None` is the target-only baseline.
    pub fn run_one(
        &self,
        p: &Problem,
        seed: u64,
        config: Option<&EvalConfig>,
        baseline: Option<&Option<String>>,
    ) -> Record {
        let name = config.map_or(BASELINE.to_owned(), |c| c.name.clone());
        let mut rec = Record {
            problem: p.index,
            seed,
            config: name,
            gold: p.gold.clone(),
            ..Default::default()
        };
        match self.generate(p, seed, config) {
            Ok((out, nll_sum)) => {
                let s = &out.stats;
                rec.ok = true;
                rec.answer = extract_answer(&out.text);
                rec.correct = rec.answer.is_some() && rec.answer == p.gold;
                rec.fidelity = baseline.map(|b| *b == rec.answer);
                rec.completion_tokens = s.completion_tokens;
                rec.target_calls = s.target_calls;
                rec.drafted_tokens = s.drafted_tokens;
                rec.accepted_tokens = s.accepted_tokens;
                rec.rejections = s.rejections;
                rec.alpha = s.alpha();
                rec.e = s.tokens_per_call();
                rec.decode_s = s.decode_s;
                rec.tokens_per_s = s.tokens_per_s();
                rec.wall_s = out.wall_s;
                rec.lossy_accepted = s.lossy_accepted_tokens;
                rec.budget_spent = s.budget_spent;
                rec.nll_sum = nll_sum;
                rec.mean_nll = if s.completion_tokens > 0 {
                    nll_sum / s.completion_tokens as f64
                } else {
                    0.0
                };
                rec.text = out.text;
            }
            Err(e) => rec.error = Some(format!("{e:#}")),
        }
        rec
    }

    fn generate(
        &self,
        p: &Problem,
        seed: u64,
        config: Option<&EvalConfig>,
    ) -> Result<(specd_engine::pipeline::Output, f64)> {
        let msgs = prompt_messages(p, &self.shots, self.opts.system.as_deref());
        let refs: Vec<(&str, &str)> = msgs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
        let prompt_text = self.target.tokenizer.apply_chat_template_messages(&refs)?;
        let (mode, gamma, policy, drafter) = match config {
            None => (
                Mode::TargetOnly,
                GammaPolicy::Fixed(0),
                Policy::default(),
                DrafterSpec::Model,
            ),
            Some(c) => (
                Mode::Speculative,
                c.gamma.unwrap_or(GammaPolicy::Fixed(self.opts.gamma)),
                self.policy(c),
                c.drafter,
            ),
        };
        let req = Request {
            prompt: Prompt::Text(prompt_text.clone()),
            stop: Vec::new(),
            logprobs: None,
            // Each config is its own tenant: a suffix drafter's index of earlier completions holds
            // only its own config's (never the same problem's output under another config).
            tenant: config.map_or_else(String::new, |c| c.name.clone()),
            max_tokens: self.opts.max_tokens,
            sampling: SamplingParams {
                temperature: self.opts.temperature,
                top_p: 1.0,
                top_k: 0,
                seed,
            },
            gamma,
            mode,
            drafter,
            draft_sampling: DraftSampling::Greedy,
            policy,
        };
        let out = match &self.opts.coordinator {
            None => generate(self.target, Some(self.draft), &req, |_| {})?,
            Some(url) => {
                let protect = if config.is_some_and(|c| !c.protect) {
                    "none"
                } else {
                    "default"
                };
                specd_coordinator::client::generate(url, &req, protect, false, |_| {})?.output
            }
        };
        let prompt_ids = encode_prompt(&self.target.tokenizer, &prompt_text, false)?;
        let s = score(&self.target.model, &prompt_ids, &out.token_ids)?;
        Ok((out, s.nll_sum))
    }
}

/// The work list: every (line, seed) of the selected problems.
pub fn select(lines: &[gsm8k::Line], offset: usize, limit: Option<usize>) -> &[gsm8k::Line] {
    let start = offset.min(lines.len());
    let end = limit.map_or(lines.len(), |l| (start + l).min(lines.len()));
    &lines[start..end]
}

/// Appends records to `results.jsonl`, one flushed line each.
pub struct ResultsWriter {
    file: std::fs::File,
}

impl ResultsWriter {
    /// Opens for appending; a torn last line (an interrupted write) is closed off with a newline
    /// so that the next record starts on a line of its own.
    pub fn open(path: &Path) -> Result<Self> {
        let torn = std::fs::read(path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if torn {
            file.write_all(b"\n")?;
        }
        Ok(ResultsWriter { file })
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_message_comes_first_and_only_when_given() {
        let p = Problem {
            index: 0,
            question: "1 + 1?".into(),
            answer: "2\n#### 2".into(),
            gold: Some("2".into()),
        };
        let plain = prompt_messages(&p, &[], None);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].0, "user");
        let with = prompt_messages(&p, &[], Some("You are a careful tutor."));
        assert_eq!(
            with[0],
            ("system".to_owned(), "You are a careful tutor.".to_owned())
        );
        assert_eq!(with[1..], plain[..]);
    }
}
