//! The error budget (DESIGN §6): charges, pacing and protected tokens.
//!
//! A judged position's charge is `c = a_rel(x) − a_ex(x) ∈ [0, 1]`: the probability, given the
//! prefix and x, that this position's output differs from the exact run's. It is computed from the
//! prefix, x, p, q and earlier positions only, **before** the acceptance draw. If `spent + c` fits
//! the allowance the position is judged with `a_rel` and `c` is added **whether or not it then
//! accepts**; otherwise it is judged with `a_ex` and costs nothing. Positions after a block's first
//! rejection are neither judged nor charged (the verifier stops there). Hence
//! `E[# lossy accepts] = E[Σc] ≤ B` and `P(output ≠ exact run) ≤ min(1, B)`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::rules::Rule;
use crate::tokenizer::Tokenizer;

/// Default critical-token pattern: digits, arithmetic operators, `=`, `$`, and the GSM8K answer
/// marker `####`.
pub const DEFAULT_PROTECT: &str = r"[0-9]|[-+*/=^%$×÷<>]|####";

/// A protection setting (`default` or empty, `none`, or a regular expression) as the pattern it
/// stands for (`None`: no protection).
pub fn protect_pattern(protect: &str) -> Option<&str> {
    match protect {
        "" | "default" => Some(DEFAULT_PROTECT),
        "none" => None,
        re => Some(re),
    }
}

/// Tokens whose text matches a pattern; positions where the drafted token or the target's argmax
/// is one of them are always judged exactly.
#[derive(Debug)]
pub struct ProtectSet {
    pub pattern: String,
    critical: Vec<bool>,
}

/// Protected-token sets by pattern, built once each with a tokenizer (building one reads the
/// whole vocabulary). Patterns come from requests, so the cache is bounded: past `capacity` it
/// starts over.
pub struct ProtectCache {
    tokenizer: Arc<Tokenizer>,
    sets: std::sync::Mutex<std::collections::HashMap<String, Arc<ProtectSet>>>,
    capacity: usize,
}

impl ProtectCache {
    pub fn new(tokenizer: Arc<Tokenizer>, capacity: usize) -> Self {
        ProtectCache {
            tokenizer,
            sets: Default::default(),
            capacity: capacity.max(1),
        }
    }

    /// The set of a protection setting (`default`, `none`, a regular expression): `None` for
    /// `none`.
    pub fn get(&self, protect: &str) -> Result<Option<Arc<ProtectSet>>> {
        let Some(pattern) = protect_pattern(protect) else {
            return Ok(None);
        };
        if let Some(s) = self.sets.lock().unwrap().get(pattern) {
            return Ok(Some(s.clone()));
        }
        let set = Arc::new(ProtectSet::build(&self.tokenizer, pattern)?);
        let mut sets = self.sets.lock().unwrap();
        if sets.len() >= self.capacity {
            sets.clear();
        }
        sets.insert(pattern.to_owned(), set.clone());
        Ok(Some(set))
    }

    /// Sets `policy.protect` for `protect` (validated even for the exact rule, which needs none,
    /// so that a bad pattern is caught early).
    pub fn attach(&self, policy: &mut Policy, protect: &str) -> Result<()> {
        let set = self.get(protect)?;
        if !policy.rule.is_exact() {
            policy.protect = set;
        }
        Ok(())
    }
}

impl ProtectSet {
    pub fn build(tok: &Tokenizer, pattern: &str) -> Result<Self> {
        let re = regex::Regex::new(pattern)
            .with_context(|| format!("--protect: invalid regular expression {pattern:?}"))?;
        let critical = (0..tok.vocab_size() as u32)
            .map(|id| tok.decode(&[id]).map(|s| re.is_match(&s)).unwrap_or(false))
            .collect();
        Ok(ProtectSet {
            pattern: pattern.to_owned(),
            critical,
        })
    }

    pub fn is_critical(&self, id: u32) -> bool {
        self.critical.get(id as usize).copied().unwrap_or(false)
    }

    pub fn count(&self) -> usize {
        self.critical.iter().filter(|&&c| c).count()
    }
}

/// How the budget is released over the sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// All of B is available from the first token.
    None,
    /// At completion position t (0-based) of an expected length L (= max_tokens), at most
    /// `min(B, B·(t+1)/L + burst)` may have been spent.
    Linear { burst: f64 },
}

impl std::str::FromStr for Pacing {
    type Err = anyhow::Error;

    /// `none`, `linear` (burst 1) or `linear:BURST`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().split_once(':') {
            None if s.trim() == "none" => Ok(Pacing::None),
            None if s.trim() == "linear" => Ok(Pacing::Linear { burst: 1.0 }),
            Some(("linear", b)) => {
                let burst: f64 = b
                    .trim()
                    .parse()
                    .with_context(|| format!("--pacing {s:?}: burst is not a number"))?;
                if !burst.is_finite() || burst < 0.0 {
                    bail!("--pacing {s:?}: burst must be >= 0");
                }
                Ok(Pacing::Linear { burst })
            }
            _ => bail!("--pacing {s:?}: expected none, linear or linear:BURST"),
        }
    }
}

impl std::fmt::Display for Pacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pacing::None => write!(f, "none"),
            Pacing::Linear { burst } => write!(f, "linear:{burst}"),
        }
    }
}

/// How a session judges drafted tokens.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rule: Rule,
    /// B, absolute per sequence.
    pub budget: f64,
    pub protect: Option<Arc<ProtectSet>>,
    pub pacing: Pacing,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rule: Rule::Exact,
            budget: 0.0,
            protect: None,
            pacing: Pacing::None,
        }
    }
}

impl Policy {
    /// Whether changing a live session from `self` to `new` keeps its bound: the budget does not
    /// grow, and the rule stays (its knobs included) or becomes exact. Anything else loosens.
    pub fn tightened_by(&self, new: &Policy) -> bool {
        new.budget <= self.budget && (new.rule == self.rule || new.rule.is_exact())
    }

    pub fn validate(&self) -> Result<()> {
        if !self.budget.is_finite() || self.budget < 0.0 {
            bail!(
                "--budget must be a finite number >= 0 (got {})",
                self.budget
            );
        }
        Ok(())
    }

    /// The most that may have been spent after judging completion position `t`.
    pub fn allowance(&self, t: usize, horizon: usize) -> f64 {
        match self.pacing {
            Pacing::None => self.budget,
            Pacing::Linear { burst } => {
                let h = horizon.max(1) as f64;
                self.budget.min(self.budget * (t + 1) as f64 / h + burst)
            }
        }
    }

    pub fn is_protected(&self, x: u32, argmax: u32) -> bool {
        self.protect
            .as_ref()
            .is_some_and(|p| p.is_critical(x) || p.is_critical(argmax))
    }
}

/// How one position is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionJudgement {
    pub a_ex: f64,
    /// The acceptance probability actually used: `a_rel` when relaxed, else `a_ex`.
    pub a_used: f64,
    /// Added to the spent budget (whether or not the position accepts).
    pub charge: f64,
    pub relaxed: bool,
    pub protected: bool,
}

/// Decides how to judge completion position `t` given what was spent before it. `g` is only
/// evaluated when the position may be relaxed.
pub fn judge_position(
    policy: &Policy,
    spent: f64,
    t: usize,
    horizon: usize,
    a_ex: f64,
    protected: bool,
    g: impl FnOnce() -> f64,
) -> PositionJudgement {
    let exact = PositionJudgement {
        a_ex,
        a_used: a_ex,
        charge: 0.0,
        relaxed: false,
        protected,
    };
    if policy.rule.is_exact() || protected || a_ex >= 1.0 || policy.budget <= 0.0 {
        return exact;
    }
    let a_rel = a_ex.max(g());
    let c = a_rel - a_ex;
    if c > 0.0 && spent + c <= policy.allowance(t, horizon) {
        PositionJudgement {
            a_ex,
            a_used: a_rel,
            charge: c,
            relaxed: true,
            protected,
        }
    } else {
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec_decode::rules::JudgeInput;
    use crate::spec_decode::DraftDist;
    use proptest::prelude::*;

    fn rules() -> Vec<Rule> {
        vec![
            Rule::Exact,
            Rule::Lenient { lambda: 0.3 },
            Rule::TopK { k: 2 },
            Rule::Threshold { tau: 0.2 },
            Rule::Typical {
                epsilon: 0.3,
                delta: 0.5,
            },
            Rule::Divergence { threshold: 0.3 },
            Rule::Lookahead { window: 1 },
            "threshold:0.2+entropy:1".parse().unwrap(),
        ]
    }

    fn normalize(v: Vec<f32>) -> Vec<f32> {
        let s: f32 = v.iter().sum();
        v.into_iter().map(|x| x / s).collect()
    }

    fn dist(n: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(0.001f32..1.0, n).prop_map(normalize)
    }

    proptest! {
        #[test]
        fn relaxed_rules_accept_at_least_as_often_and_charges_are_bounded(
            p in dist(6), q in dist(6), x in 0u32..6, greedy in any::<bool>(), sampled_draft in any::<bool>()
        ) {
            let qd = if sampled_draft { DraftDist::Probs(q) } else { DraftDist::Greedy };
            let pmax = p.iter().cloned().fold(0f32, f32::max);
            let pt = if greedy {
                crate::sampling::Dist::OneHot(crate::sampling::argmax(&p))
            } else {
                crate::sampling::Dist::Probs(p.clone())
            };
            let a_ex = crate::spec_decode::exact::accept_prob(&pt, &qd, x);
            for rule in rules() {
                let inp = JudgeInput { p_hat: &p, p_hat_max: pmax, q: &qd, x, greedy, agree_after: 0 };
                let g = rule.g(&inp);
                prop_assert!((0.0..=1.0).contains(&g));
                let policy = Policy { rule: rule.clone(), budget: 1.0, protect: None, pacing: Pacing::None };
                let j = judge_position(&policy, 0.0, 0, 10, a_ex, false, || g);
                prop_assert!(j.a_used >= j.a_ex, "{rule}: a_rel < a_ex");
                prop_assert!((0.0..=1.0).contains(&j.charge), "{rule}: charge {}", j.charge);
                prop_assert!((j.charge - (j.a_used - j.a_ex)).abs() < 1e-12);
                if greedy {
                    prop_assert!(j.charge == 0.0 || j.charge == 1.0, "T = 0 charges are 0/1");
                }
                // Budget 0 gives exact's decisions.
                let zero = Policy { budget: 0.0, ..policy };
                let j0 = judge_position(&zero, 0.0, 0, 10, a_ex, false, || g);
                prop_assert_eq!(j0.a_used, a_ex);
                prop_assert_eq!(j0.charge, 0.0);
            }
        }

        #[test]
        fn total_charge_never_exceeds_the_budget(
            seqs in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 1..60), budget in 0.0f64..5.0, paced in any::<bool>()
        ) {
            let policy = Policy {
                rule: Rule::TopK { k: 1 },
                budget,
                protect: None,
                pacing: if paced { Pacing::Linear { burst: 0.5 } } else { Pacing::None },
            };
            let mut spent = 0.0;
            for (t, (a_ex, g)) in seqs.iter().enumerate() {
                let j = judge_position(&policy, spent, t, seqs.len(), *a_ex, false, || *g);
                spent += j.charge;
                prop_assert!(spent <= budget + 1e-12, "spent {spent} > B {budget}");
                prop_assert!(spent <= policy.allowance(t, seqs.len()) + 1e-12);
            }
        }
    }

    #[test]
    fn protected_positions_are_judged_exactly() {
        let policy = Policy {
            rule: Rule::TopK { k: 5 },
            budget: 10.0,
            protect: None,
            pacing: Pacing::None,
        };
        let j = judge_position(&policy, 0.0, 0, 10, 0.0, true, || 1.0);
        assert!(!j.relaxed && j.charge == 0.0 && j.a_used == 0.0);
    }

    #[test]
    fn pacing_releases_the_budget_linearly() {
        let policy = Policy {
            rule: Rule::TopK { k: 5 },
            budget: 8.0,
            protect: None,
            pacing: Pacing::Linear { burst: 1.0 },
        };
        assert_eq!(policy.allowance(0, 128), 8.0 / 128.0 + 1.0);
        assert_eq!(policy.allowance(63, 128), 5.0);
        assert_eq!(policy.allowance(127, 128), 8.0);
        assert!("linear:2".parse::<Pacing>().is_ok() && "fast".parse::<Pacing>().is_err());
    }

    #[test]
    fn tightening_keeps_the_bound_and_loosening_is_told_apart() {
        let p = |rule: &str, budget: f64| Policy {
            rule: rule.parse().unwrap(),
            budget,
            ..Default::default()
        };
        let live = p("topk:3", 4.0);
        assert!(live.tightened_by(&p("topk:3", 4.0)));
        assert!(live.tightened_by(&p("topk:3", 1.0)));
        assert!(live.tightened_by(&p("exact", 0.0)));
        assert!(!live.tightened_by(&p("topk:3", 4.5)), "a larger budget");
        assert!(!live.tightened_by(&p("topk:5", 4.0)), "another rule");
        assert!(!live.tightened_by(&p("lenient:0.5", 2.0)), "another rule");
    }
}
