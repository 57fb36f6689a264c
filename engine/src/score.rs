//! Teacher-forced scoring of a continuation with the same batch-invariant forward that generation
//! uses: per-position NLL and whether each token is the model's argmax. At temperature 0 it is the
//! independent witness of the error budget: a run with budget B scores at most ⌊B⌋ non-argmax
//! tokens against its target.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::model::Model;
use crate::sampling::argmax;

#[derive(Debug, Clone, Serialize)]
pub struct TokenScore {
    pub id: u32,
    /// −log softmax(logits)[id] (temperature 1).
    pub nll: f64,
    pub is_argmax: bool,
    pub argmax: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    pub tokens: usize,
    pub nll_sum: f64,
    pub non_argmax_tokens: usize,
    pub per_token: Vec<TokenScore>,
}

/// How the tokens reach the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Feed {
    /// One forward of the whole text (how a verify sees a block).
    #[default]
    Block,
    /// One forward per token, as target-only decoding runs: the reference of "greedy speculative
    /// equals target-only" on a backend whose kernels depend on the row count (candle).
    Steps,
}

/// Scores `continuation` after `prompt` (both token ids; the prompt must be non-empty).
pub fn score(model: &Model, prompt: &[u32], continuation: &[u32]) -> Result<ScoreReport> {
    score_fed(model, prompt, continuation, Feed::Block)
}

/// [`score`] with the tokens fed as `feed` says.
pub fn score_fed(
    model: &Model,
    prompt: &[u32],
    continuation: &[u32],
    feed: Feed,
) -> Result<ScoreReport> {
    if prompt.is_empty() {
        bail!("the prompt is empty: scoring needs at least one prompt token");
    }
    let ctx = model.config.context_length;
    if prompt.len() + continuation.len() > ctx {
        bail!(
            "prompt ({}) plus continuation ({}) tokens exceed the model's context length of {ctx}",
            prompt.len(),
            continuation.len()
        );
    }
    let vocab = model.config.vocab_size;
    if let Some(&bad) = continuation.iter().find(|&&t| t as usize >= vocab) {
        bail!("continuation token id {bad} is outside the vocabulary (size {vocab})");
    }
    let mut report = ScoreReport {
        tokens: continuation.len(),
        nll_sum: 0.0,
        non_argmax_tokens: 0,
        per_token: Vec::new(),
    };
    if continuation.is_empty() {
        return Ok(report);
    }
    // Feed the prompt and all but the last continuation token; row i of the logits (from the last
    // prompt position) predicts continuation[i].
    let mut cache = model.new_cache();
    let logits = match feed {
        Feed::Block => {
            let mut all = prompt.to_vec();
            all.extend_from_slice(&continuation[..continuation.len() - 1]);
            model.forward(&mut cache, &all, prompt.len() - 1)?
        }
        Feed::Steps => {
            let mut rows = model.forward(&mut cache, prompt, prompt.len() - 1)?;
            for &t in &continuation[..continuation.len() - 1] {
                rows.extend(model.forward(&mut cache, &[t], 0)?);
            }
            rows
        }
    };
    for (i, &id) in continuation.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let nll = lse - row[id as usize] as f64;
        let am = argmax(row);
        report.nll_sum += nll;
        report.non_argmax_tokens += (am != id) as usize;
        report.per_token.push(TokenScore {
            id,
            nll,
            is_argmax: am == id,
            argmax: am,
        });
    }
    Ok(report)
}

/// How closely two models (one model on two devices, or two precisions of one model) agree,
/// teacher-forced over the same tokens.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Agreement {
    pub positions: usize,
    /// Positions whose argmax (lowest id among maximal logits) is the same.
    pub top1_same: usize,
    /// Largest |logit a − logit b| over every position and token.
    pub max_abs_delta: f32,
}

impl Agreement {
    pub fn top1_agreement(&self) -> f64 {
        self.top1_same as f64 / self.positions.max(1) as f64
    }

    /// Both measurements together.
    pub fn merge(self, o: Agreement) -> Agreement {
        Agreement {
            positions: self.positions + o.positions,
            top1_same: self.top1_same + o.top1_same,
            max_abs_delta: self.max_abs_delta.max(o.max_abs_delta),
        }
    }
}

/// Teacher-forced agreement of `a` and `b` at every position of `tokens` (one forward each).
pub fn agreement(a: &Model, b: &Model, tokens: &[u32]) -> Result<Agreement> {
    let vocab = a.config.vocab_size;
    if b.config.vocab_size != vocab {
        bail!(
            "the models have different vocabularies ({vocab} and {} tokens)",
            b.config.vocab_size
        );
    }
    let la = a.forward(&mut a.new_cache(), tokens, 0)?;
    let lb = b.forward(&mut b.new_cache(), tokens, 0)?;
    let mut r = Agreement::default();
    for (ra, rb) in la.chunks_exact(vocab).zip(lb.chunks_exact(vocab)) {
        r.positions += 1;
        r.top1_same += usize::from(argmax(ra) == argmax(rb));
        for (x, y) in ra.iter().zip(rb) {
            r.max_abs_delta = r.max_abs_delta.max((x - y).abs());
        }
    }
    Ok(r)
}
