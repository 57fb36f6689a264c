//! The draft side: what proposes blocks. A [`Drafter`] is
//! - [`model::ModelDrafter`]: the draft model, greedy or sampled (`--drafter model`);
//! - [`ngram::NgramDrafter`]: prompt lookup, no model (`--drafter ngram`);
//! - [`suffix::SuffixDrafter`]: counts of what followed each context in the session and in the
//!   node's earlier completions, no model (`--drafter suffix`);
//! - hybrid (`--drafter hybrid`): the suffix drafter's proposal when it is confident, the draft
//!   model's otherwise.
//!
//! The model-free drafters are greedy: their proposals are one-hot, may be empty (the round is
//! then a target-only step) and vary in length.

pub mod model;
pub mod ngram;
pub mod suffix;

use std::sync::Arc;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{DraftBlock, DraftSampling};
use crate::model::Model;
use crate::sampling::SamplingParams;
use model::ModelDrafter;
use ngram::{NgramConfig, NgramDrafter};
use suffix::{SuffixConfig, SuffixDrafter, SuffixStores};

/// Which drafter a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrafterSpec {
    /// The draft model (`--draft`).
    #[default]
    Model,
    /// Prompt lookup over the committed sequence.
    Ngram(NgramConfig),
    /// Suffix counts over the session and the node's earlier completions.
    Suffix(SuffixConfig),
    /// The suffix drafter when confident, else the draft model.
    Hybrid(SuffixConfig),
}

impl std::str::FromStr for DrafterSpec {
    type Err = anyhow::Error;

    /// `model`, `ngram` (default lengths), `ngram:MIN-MAX`, `suffix[:MIN-MAX@P]`,
    /// `hybrid[:MIN-MAX@P]`.
    fn from_str(v: &str) -> Result<Self> {
        Ok(match v.trim().split_once(':') {
            None if v.trim() == "model" => DrafterSpec::Model,
            None if v.trim() == "ngram" => DrafterSpec::Ngram(NgramConfig::default()),
            None if v.trim() == "suffix" => DrafterSpec::Suffix(SuffixConfig::default()),
            None if v.trim() == "hybrid" => DrafterSpec::Hybrid(SuffixConfig::default()),
            Some(("suffix", knobs)) => DrafterSpec::Suffix(SuffixConfig::parse(knobs)?),
            Some(("hybrid", knobs)) => DrafterSpec::Hybrid(SuffixConfig::parse(knobs)?),
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
            _ => bail!(
                "drafter {v:?}: use model, ngram[:MIN-MAX], suffix[:MIN-MAX@P] or hybrid[:MIN-MAX@P]"
            ),
        })
    }
}

impl std::fmt::Display for DrafterSpec {
    /// The form [`DrafterSpec::from_str`] reads (the wire's `drafter` field).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrafterSpec::Model => write!(f, "model"),
            DrafterSpec::Ngram(c) => write!(f, "ngram:{}-{}", c.min, c.max),
            DrafterSpec::Suffix(c) => write!(f, "{c}"),
            DrafterSpec::Hybrid(c) => {
                write!(f, "hybrid{}", c.to_string().trim_start_matches("suffix"))
            }
        }
    }
}

impl DrafterSpec {
    pub fn needs_model(&self) -> bool {
        matches!(self, DrafterSpec::Model | DrafterSpec::Hybrid(_))
    }

    /// `model`, `ngram`, `suffix` or `hybrid` (the CLI's `--drafter` value).
    pub fn name(&self) -> &'static str {
        match self {
            DrafterSpec::Model => "model",
            DrafterSpec::Ngram(_) => "ngram",
            DrafterSpec::Suffix(_) => "suffix",
            DrafterSpec::Hybrid(_) => "hybrid",
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

/// The drafter of one request. Not `Clone`: a suffix drafter adds its completion to the node's
/// store when it is dropped, and must do so once.
pub enum Drafter {
    Model(ModelDrafter),
    Ngram(NgramDrafter),
    Suffix(SuffixDrafter),
    Hybrid(ModelDrafter, SuffixDrafter),
}

/// Hybrid drafting takes the suffix drafter's proposal when its expected accepted length is at
/// least this many tokens; below it, the draft model's.
pub const HYBRID_MIN_EXPECTED: f64 = 2.0;

impl Drafter {
    /// The model drafter.
    pub fn new(model: Arc<Model>, sampling: SamplingParams, mode: DraftSampling) -> Self {
        Drafter::Model(ModelDrafter::new(model, sampling, mode))
    }

    /// The drafter `spec` names for a request of `tenant`; `model` is needed for the model and
    /// hybrid drafters.
    pub fn from_spec(
        spec: DrafterSpec,
        model: Option<Arc<Model>>,
        sampling: SamplingParams,
        mode: DraftSampling,
        tenant: &str,
    ) -> Result<Self> {
        // The node's earlier completions of this tenant.
        let suffix = |c: SuffixConfig| {
            SuffixDrafter::new(c, SuffixStores::node().tenant(tenant, c.max_depth))
        };
        Ok(match (spec, model) {
            (DrafterSpec::Model, Some(m)) => Drafter::new(m, sampling, mode),
            (DrafterSpec::Model | DrafterSpec::Hybrid(_), None) => {
                bail!("the {} drafter needs a draft model", spec.name())
            }
            (DrafterSpec::Ngram(c), _) => Drafter::Ngram(NgramDrafter::new(c)?),
            (DrafterSpec::Suffix(c), _) => Drafter::Suffix(suffix(c)?),
            (DrafterSpec::Hybrid(c), Some(m)) => {
                Drafter::Hybrid(ModelDrafter::new(m, sampling, mode), suffix(c)?)
            }
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
            Drafter::Suffix(d) => Ok(d.propose(committed, gamma)),
            Drafter::Hybrid(model, suffix) => {
                let (block, timing) = suffix.propose(committed, gamma);
                if suffix.confidence >= HYBRID_MIN_EXPECTED.min(gamma as f64) {
                    return Ok((block, timing));
                }
                let (block, mut t) = model.propose(committed, gamma)?;
                t.seconds += timing.seconds;
                Ok((block, t))
            }
        }
    }
}

/// A model-free drafter's proposal after `base_len` committed tokens, checked for what every
/// such proposal is (one-hot tokens, no forwards): its tokens.
#[cfg(test)]
fn model_free_tokens((b, t): (DraftBlock, DraftTiming), base_len: usize) -> Vec<u32> {
    assert_eq!(b.base_len, base_len);
    assert_eq!(b.dists.len(), b.tokens.len());
    assert!(b
        .dists
        .iter()
        .all(|d| *d == crate::spec_decode::DraftDist::Greedy));
    assert_eq!(t.steps, 0, "no forwards");
    b.tokens
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
            ("suffix", DrafterSpec::Suffix(SuffixConfig::default())),
            (
                "suffix:1-8@0.2",
                DrafterSpec::Suffix(SuffixConfig {
                    min_match: 1,
                    max_depth: 8,
                    min_prob: 0.2,
                }),
            ),
            ("hybrid", DrafterSpec::Hybrid(SuffixConfig::default())),
            (
                "hybrid:3-6@0.5",
                DrafterSpec::Hybrid(SuffixConfig {
                    min_match: 3,
                    max_depth: 6,
                    min_prob: 0.5,
                }),
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
            "suffix:9",
            "hybrid:2-8@2",
        ] {
            assert!(bad.parse::<DrafterSpec>().is_err(), "{bad}");
        }
    }
}
