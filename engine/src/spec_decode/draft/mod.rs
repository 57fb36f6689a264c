//! The draft side: what proposes blocks. A [`Drafter`] is
//! - [`model::ModelDrafter`]: the draft model, greedy or sampled (`--drafter model`);
//! - [`ngram::NgramDrafter`]: prompt lookup, no model (`--drafter ngram`);
//! - [`suffix::SuffixDrafter`]: counts of what followed each context in the session and in the
//!   node's earlier completions, no model (`--drafter suffix`);
//! - hybrid (`--drafter hybrid`): the suffix drafter's proposal when it is confident, the draft
//!   model's otherwise.
//!
//! The model-free drafters are greedy: their proposals are one-hot, may be empty (the round is
//! then a target-only step) and vary in length. They say what they know of each token
//! ([`Evidence`]: how often it followed, how long a context matched), and `--gamma auto` cuts
//! their proposals where, by the acceptance it has learnt for such evidence, more tokens no
//! longer pay ([`Ask::cut`]).

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

/// What a model-free drafter knows of one proposed token: the share of the matched context's
/// continuations that were this token (1 for prompt lookup, which keeps no counts), and how many
/// tokens of context matched. `--gamma auto` learns acceptance per class of evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    pub prob: f64,
    pub matched: usize,
}

/// The expected accepted length of a proposal, as its own evidence has it: `Σ_i Π_{j≤i} p_j`.
pub fn expected_by_evidence(evidence: &[Evidence]) -> f64 {
    let mut chance = 1.0;
    evidence
        .iter()
        .map(|e| {
            chance *= e.prob;
            chance
        })
        .sum()
}

/// A proposal: the block, its timing and, from a model-free drafter, one [`Evidence`] per token
/// (empty for a draft model's block).
#[derive(Debug, Clone)]
pub struct Proposal {
    pub block: DraftBlock,
    pub timing: DraftTiming,
    pub evidence: Vec<Evidence>,
}

impl Proposal {
    /// Keeps the first `n` tokens.
    fn truncate(&mut self, n: usize) {
        self.block.tokens.truncate(n);
        self.block.dists.truncate(n);
        self.evidence.truncate(n);
    }
}

/// How many of a model-free proposal's tokens to keep, given their evidence, and their expected
/// accepted length.
pub type Cut<'a> = dyn Fn(&[Evidence]) -> (usize, f64) + 'a;

/// How much to propose.
pub struct Ask<'a> {
    /// Tokens a draft model drafts.
    pub gamma: usize,
    /// Tokens a model-free drafter may propose before [`Ask::cut`] (its proposals cost next to
    /// nothing, so `auto` asks for its longest block and cuts).
    pub free_max: usize,
    /// How many of a model-free proposal's tokens to keep, and their expected accepted length
    /// (the hybrid drafter compares it with [`HYBRID_MIN_EXPECTED`]). `None`: keep them all,
    /// expected by their own evidence.
    pub cut: Option<&'a Cut<'a>>,
}

impl Ask<'_> {
    /// `gamma` tokens from any drafter, none cut.
    pub fn fixed(gamma: usize) -> Self {
        Ask {
            gamma,
            free_max: gamma,
            cut: None,
        }
    }

    fn cut(&self, p: &mut Proposal) -> f64 {
        match self.cut {
            Some(cut) => {
                let (keep, expected) = cut(&p.evidence);
                p.truncate(keep);
                expected
            }
            None => expected_by_evidence(&p.evidence),
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

    /// Whether a draft model proposes (some of) the blocks.
    pub fn has_model(&self) -> bool {
        matches!(self, Drafter::Model(_) | Drafter::Hybrid(..))
    }

    /// Proposes up to `gamma` tokens following `committed` (fewer, or none, where the drafter has
    /// nothing to propose).
    pub fn propose(&mut self, committed: &[u32], gamma: usize) -> Result<Proposal> {
        self.propose_with(committed, &Ask::fixed(gamma))
    }

    /// Proposes what `ask` asks for following `committed`.
    pub fn propose_with(&mut self, committed: &[u32], ask: &Ask) -> Result<Proposal> {
        let model = |d: &mut ModelDrafter, gamma| -> Result<Proposal> {
            let (block, timing) = d.propose(committed, gamma)?;
            Ok(Proposal {
                block,
                timing,
                evidence: Vec::new(),
            })
        };
        Ok(match self {
            Drafter::Model(d) => model(d, ask.gamma)?,
            Drafter::Ngram(d) => {
                let mut p = d.propose(committed, ask.free_max);
                ask.cut(&mut p);
                p
            }
            Drafter::Suffix(d) => {
                let mut p = d.propose(committed, ask.free_max);
                ask.cut(&mut p);
                p
            }
            Drafter::Hybrid(m, suffix) => {
                let mut p = suffix.propose(committed, ask.free_max);
                let expected = ask.cut(&mut p);
                if !p.block.tokens.is_empty()
                    && expected >= HYBRID_MIN_EXPECTED.min(ask.free_max as f64)
                {
                    return Ok(p);
                }
                let mut from_model = if ask.gamma > 0 {
                    model(m, ask.gamma)?
                } else {
                    Proposal {
                        block: DraftBlock::empty(committed.len()),
                        timing: DraftTiming::default(),
                        evidence: Vec::new(),
                    }
                };
                from_model.timing.seconds += p.timing.seconds;
                from_model
            }
        })
    }
}

/// A model-free drafter's proposal after `base_len` committed tokens, checked for what every
/// such proposal is (one-hot tokens, no forwards): its tokens.
#[cfg(test)]
fn model_free_tokens(p: Proposal, base_len: usize) -> Vec<u32> {
    let (b, t) = (p.block, p.timing);
    assert_eq!(b.base_len, base_len);
    assert_eq!(p.evidence.len(), b.tokens.len());
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
