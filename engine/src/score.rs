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

/// Scores `continuation` after `prompt` (both token ids; the prompt must be non-empty).
pub fn score(model: &Model, prompt: &[u32], continuation: &[u32]) -> Result<ScoreReport> {
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
    let mut feed = prompt.to_vec();
    feed.extend_from_slice(&continuation[..continuation.len() - 1]);
    let mut cache = model.new_cache();
    let logits = model.forward(&mut cache, &feed, prompt.len() - 1)?;
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
