//! The draft side: what proposes blocks. A [`Drafter`] is
//! - [`model::ModelDrafter`]: the draft model, greedy or sampled (`--drafter model`);
//! - [`ngram::NgramDrafter`]: prompt lookup, no model (`--drafter ngram`): greedy, its proposals
//!   are one-hot, may be empty (the round is then a target-only step) and vary in length.

pub mod model;
pub mod ngram;

use std::sync::Arc;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{DraftBlock, DraftSampling};
use crate::model::Model;
use crate::sampling::SamplingParams;
use model::ModelDrafter;
use ngram::{NgramConfig, NgramDrafter};

/// Which drafter a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrafterSpec {
    /// The draft model (`--draft`).
    #[default]
    Model,
    /// Prompt lookup over the committed sequence.
    Ngram(NgramConfig),
}

impl std::str::FromStr for DrafterSpec {
    type Err = anyhow::Error;

    /// `model`, `ngram` (default lengths) or `ngram:MIN-MAX`.
    fn from_str(v: &str) -> Result<Self> {
        Ok(match v.trim().split_once(':') {
            None if v.trim() == "model" => DrafterSpec::Model,
            None if v.trim() == "ngram" => DrafterSpec::Ngram(NgramConfig::default()),
            Some(("ngram", lengths)) => {
                let Some((min, max)) = lengths
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                else {
                    bail!("drafter {v:?}: give the n-gram lengths as MIN-MAX, e.g. ngram:2-4");
                };
                let c = NgramConfig { min, max };
                c.validate()?;
                DrafterSpec::Ngram(c)
            }
            _ => bail!("drafter {v:?}: use model, ngram or ngram:MIN-MAX"),
        })
    }
}

impl std::fmt::Display for DrafterSpec {
    /// The form [`DrafterSpec::from_str`] reads (the wire's `drafter` field).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrafterSpec::Model => write!(f, "model"),
            DrafterSpec::Ngram(c) => write!(f, "ngram:{}-{}", c.min, c.max),
        }
    }
}

impl DrafterSpec {
    pub fn needs_model(&self) -> bool {
        matches!(self, DrafterSpec::Model)
    }

    /// `model` or `ngram` (the CLI's `--drafter` value).
    pub fn name(&self) -> &'static str {
        match self {
            DrafterSpec::Model => "model",
            DrafterSpec::Ngram(_) => "ngram",
        }
    }
}

/// Timing of one proposal.
#[derive(Debug, Clone, Copy, Default)]
pub struct DraftTiming {
    /// Draft forwards run.
    pub steps: usize,
    /// What the drafting time grows with, for the latency model's t_draft line: forwards for a
    /// model, the γ asked for by a model-free drafter.
    pub cost_units: usize,
    pub seconds: f64,
    /// Seconds of the first forward when it had to feed more than two tokens (the prompt, or a
    /// sequence the draft had not seen): a prefill, not a per-token cost.
    pub prefill_s: f64,
}

#[derive(Clone)]
pub enum Drafter {
    Model(ModelDrafter),
    Ngram(NgramDrafter),
}

impl Drafter {
    /// The model drafter.
    pub fn new(model: Arc<Model>, sampling: SamplingParams, mode: DraftSampling) -> Self {
        Drafter::Model(ModelDrafter::new(model, sampling, mode))
    }

    /// The drafter `spec` names; `model` is needed for [`DrafterSpec::Model`].
    pub fn from_spec(
        spec: DrafterSpec,
        model: Option<Arc<Model>>,
        sampling: SamplingParams,
        mode: DraftSampling,
    ) -> Result<Self> {
        Ok(match (spec, model) {
            (DrafterSpec::Model, Some(m)) => Drafter::new(m, sampling, mode),
            (DrafterSpec::Model, None) => bail!("the model drafter needs a draft model"),
            (DrafterSpec::Ngram(c), _) => Drafter::Ngram(NgramDrafter::new(c)?),
        })
    }

    /// Proposes up to `gamma` tokens following `committed` (fewer, or none, where the drafter has
    /// nothing to propose).
    pub fn propose(
        &mut self,
        committed: &[u32],
        gamma: usize,
    ) -> Result<(DraftBlock, DraftTiming)> {
        match self {
            Drafter::Model(d) => d.propose(committed, gamma),
            Drafter::Ngram(d) => Ok(d.propose(committed, gamma)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, spec) in [
            ("model", DrafterSpec::Model),
            ("ngram", DrafterSpec::Ngram(NgramConfig::default())),
            (
                "ngram:1-3",
                DrafterSpec::Ngram(NgramConfig { min: 1, max: 3 }),
            ),
        ] {
            let parsed: DrafterSpec = text.parse().unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(parsed.to_string().parse::<DrafterSpec>().unwrap(), spec);
        }
        assert_eq!(
            DrafterSpec::Ngram(NgramConfig::default()).to_string(),
            "ngram:2-4"
        );
        for bad in [
            "",
            "lookup",
            "ngram:3",
            "ngram:a-b",
            "ngram:0-2",
            "ngram:4-2",
            "model:1",
        ] {
            assert!(bad.parse::<DrafterSpec>().is_err(), "{bad}");
        }
    }
}
