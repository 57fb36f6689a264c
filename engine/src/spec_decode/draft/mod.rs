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
