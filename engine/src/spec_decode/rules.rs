//! Acceptance rules (DESIGN §5; formulas, knobs and sources in docs/rules.md).
//!
//! Every rule accepts with `a_rel(x) = max(a_ex(x), g(x))`, where `a_ex` is the exact rule's
//! acceptance probability and `g ∈ [0, 1]` is the rule's relaxation, read from the target's
//! *judging* distribution `p̂` (`softmax(logits / T)` before truncation when T > 0,
//! `softmax(logits)` when T = 0) and the draft's `q`. On reject every rule uses the exact rule's
//! residual. At T = 0 every `g` is 0 or 1, so greedy decoding stays deterministic.
//!
//! Two rules aim at keeping the answer rather than the tokens: `lookahead:W` accepts a mismatch
//! only where the draft re-agrees with the target right after it (FLy, arXiv 2511.22972), and
//! `RULE+entropy:H` relaxes only where the target is unsure (entropy of `p̂` at least H nats).

use std::fmt;

use anyhow::{bail, Context, Result};

use super::DraftDist;

/// What a rule may look at for one drafted token.
pub struct JudgeInput<'a> {
    /// The judging distribution `p̂` (dense, sums to 1).
    pub p_hat: &'a [f32],
    /// `max p̂`.
    pub p_hat_max: f32,
    /// The distribution the draft sampled from (one-hot at `x` for a greedy draft).
    pub q: &'a DraftDist,
    pub x: u32,
    /// Temperature 0: rules use their 0/1 forms.
    pub greedy: bool,
    /// How many drafted tokens right after x equal the target's argmax at their position (read
    /// from the same verify forward), counted up to the lookahead window; 0 unless the rule
    /// looks ahead ([`Rule::lookahead`]).
    pub agree_after: usize,
}

impl JudgeInput<'_> {
    fn p(&self, t: u32) -> f64 {
        self.p_hat.get(t as usize).copied().unwrap_or(0.0) as f64
    }

    fn q(&self, t: u32) -> f64 {
        match self.q {
            DraftDist::Greedy => (t == self.x) as u8 as f64,
            DraftDist::Probs(q) => q.get(t as usize).copied().unwrap_or(0.0) as f64,
        }
    }
}

/// A (possibly lossy) acceptance rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// `g = 0`.
    Exact,
    /// Leviathan's lenience λ ∈ (0, 1]: `g = min(1, p̂(x) / (λ q(x)))`; at T = 0
    /// `g = 1` iff `p̂(x) ≥ λ · max p̂`.
    Lenient { lambda: f64 },
    /// `g = 1` iff x is among the k most likely tokens of `p̂` (ties: lower id first).
    TopK { k: usize },
    /// `g = 1` iff `p̂(x) ≥ τ · max p̂`, τ ∈ (0, 1].
    Threshold { tau: f64 },
    /// Medusa's typical acceptance: `g = 1` iff `p̂(x) > min(ε, δ · exp(−H(p̂)))`.
    Typical { epsilon: f64, delta: f64 },
    /// Fuzzy SD: `g = 1` iff `JS(p̂, q) ≤ T` (natural log; needs the draft's full q).
    Divergence { threshold: f64 },
    /// Lookahead acceptance (FLy): `g = 1` iff the W drafted tokens after x are each the
    /// target's argmax at their position: the draft took another wording and came back to the
    /// target's. Nearer the block's end than W tokens, `g = 0`.
    Lookahead { window: usize },
    /// Entropy gating: `rule`'s g where `H(p̂) ≥ min_entropy` nats, 0 where the target is surer.
    Gated { rule: Box<Rule>, min_entropy: f64 },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Exact => write!(f, "exact"),
            Rule::Lenient { lambda } => write!(f, "lenient:{lambda}"),
            Rule::TopK { k } => write!(f, "topk:{k}"),
            Rule::Threshold { tau } => write!(f, "threshold:{tau}"),
            Rule::Typical { epsilon, delta } => write!(f, "typical:{epsilon},{delta}"),
            Rule::Divergence { threshold } => write!(f, "divergence:{threshold}"),
            Rule::Lookahead { window } => write!(f, "lookahead:{window}"),
            Rule::Gated { rule, min_entropy } => write!(f, "{rule}+entropy:{min_entropy}"),
        }
    }
}

fn number(s: &str, what: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .with_context(|| format!("{what}: {s:?} is not a number"))?;
    if !v.is_finite() {
        bail!("{what}: {s:?} is not a finite number");
    }
    Ok(v)
}

impl std::str::FromStr for Rule {
    type Err = anyhow::Error;

    /// Parses `exact`, `lenient:λ`, `topk:k`, `threshold:τ`, `typical:ε,δ`, `divergence:T`,
    /// `lookahead:W`, each optionally gated: `RULE+entropy:H`.
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if let Some((base, gate)) = spec.rsplit_once('+') {
            let h = gate.trim().strip_prefix("entropy:").with_context(|| {
                format!("rule {spec:?}: after `+` give the gate as entropy:H (nats), e.g. topk:5+entropy:1.5")
            })?;
            let min_entropy = number(h, "entropy gate H")?;
            if min_entropy < 0.0 {
                bail!("rule {spec:?}: the entropy gate H must be >= 0 nats");
            }
            let rule: Rule = base.parse()?;
            if rule.is_exact() || matches!(rule, Rule::Gated { .. }) {
                bail!("rule {spec:?}: the entropy gate applies to one relaxed rule");
            }
            return Ok(Rule::Gated {
                rule: Box::new(rule),
                min_entropy,
            });
        }
        let (name, arg) = match spec.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        let need = |what: &str| {
            arg.with_context(|| format!("rule {spec:?}: {name} needs {what} (e.g. {name}:{what})"))
        };
        let rule = match name {
            "exact" => {
                if arg.is_some() {
                    bail!("rule {spec:?}: exact takes no parameter");
                }
                Rule::Exact
            }
            "lenient" => {
                let lambda = number(need("λ")?, "lenient λ")?;
                if !(lambda > 0.0 && lambda <= 1.0) {
                    bail!("rule {spec:?}: lenient λ must be in (0, 1]");
                }
                Rule::Lenient { lambda }
            }
            "topk" => {
                let a = need("k")?;
                let k: usize = a.trim().parse().with_context(|| format!("rule {spec:?}: topk k must be a whole number"))?;
                if k == 0 {
                    bail!("rule {spec:?}: topk k must be at least 1");
                }
                Rule::TopK { k }
            }
            "threshold" => {
                let tau = number(need("τ")?, "threshold τ")?;
                if !(tau > 0.0 && tau <= 1.0) {
                    bail!("rule {spec:?}: threshold τ must be in (0, 1]");
                }
                Rule::Threshold { tau }
            }
            "typical" => {
                let a = need("ε,δ")?;
                let (e, d) = a.split_once(',').with_context(|| format!("rule {spec:?}: typical needs two numbers, ε,δ"))?;
                let (epsilon, delta) = (number(e, "typical ε")?, number(d, "typical δ")?);
                if !(epsilon > 0.0 && epsilon <= 1.0) || delta <= 0.0 {
                    bail!("rule {spec:?}: typical needs ε in (0, 1] and δ > 0");
                }
                Rule::Typical { epsilon, delta }
            }
            "divergence" => {
                let threshold = number(need("T")?, "divergence T")?;
                if threshold < 0.0 {
                    bail!("rule {spec:?}: divergence T must be >= 0");
                }
                Rule::Divergence { threshold }
            }
            "lookahead" => {
                let a = need("W")?;
                let window: usize = a.trim().parse().with_context(|| {
                    format!("rule {spec:?}: lookahead W must be a whole number")
                })?;
                if window == 0 {
                    bail!("rule {spec:?}: lookahead W must be at least 1");
                }
                Rule::Lookahead { window }
            }
            other => bail!(
                "unknown rule {other:?} in {spec:?} (rules: exact, lenient:λ, topk:k, threshold:τ, typical:ε,δ, divergence:T, lookahead:W; any but exact may be gated: RULE+entropy:H)"
            ),
        };
        Ok(rule)
    }
}

/// Entropy of `p` in nats.
pub fn entropy(p: &[f32]) -> f64 {
    p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| -(v as f64) * (v as f64).ln())
        .sum()
}

/// Jensen–Shannon divergence (nats) between `p` and the draft distribution.
pub fn js_divergence(p: &[f32], q: &DraftDist, x: u32) -> f64 {
    let kl_term = |a: f64, m: f64| if a > 0.0 { a * (a / m).ln() } else { 0.0 };
    let mut js = 0.0;
    for (t, &pv) in p.iter().enumerate() {
        let pv = pv as f64;
        let qv = match q {
            DraftDist::Greedy => (t as u32 == x) as u8 as f64,
            DraftDist::Probs(qq) => qq.get(t).copied().unwrap_or(0.0) as f64,
        };
        let m = 0.5 * (pv + qv);
        if m > 0.0 {
            js += 0.5 * kl_term(pv, m) + 0.5 * kl_term(qv, m);
        }
    }
    js.max(0.0)
}

impl Rule {
    pub fn is_exact(&self) -> bool {
        matches!(self, Rule::Exact)
    }

    /// The lookahead window W of `lookahead:W` (gated or not): the judge counts
    /// [`JudgeInput::agree_after`] up to it.
    pub fn lookahead(&self) -> Option<usize> {
        match self {
            Rule::Lookahead { window } => Some(*window),
            Rule::Gated { rule, .. } => rule.lookahead(),
            _ => None,
        }
    }

    /// The relaxation `g(x) ∈ [0, 1]`.
    pub fn g(&self, inp: &JudgeInput) -> f64 {
        let px = inp.p(inp.x);
        let pmax = inp.p_hat_max as f64;
        let g: f64 = match self {
            Rule::Exact => 0.0,
            Rule::Lenient { lambda } => {
                if inp.greedy {
                    (px >= lambda * pmax) as u8 as f64
                } else {
                    let qx = inp.q(inp.x);
                    if qx > 0.0 {
                        (px / (lambda * qx)).min(1.0)
                    } else {
                        (px > 0.0) as u8 as f64
                    }
                }
            }
            Rule::TopK { k } => {
                let x = inp.x as usize;
                let mut better = 0usize;
                for (t, &v) in inp.p_hat.iter().enumerate() {
                    let v = v as f64;
                    if v > px || (v == px && t < x) {
                        better += 1;
                        if better >= *k {
                            break;
                        }
                    }
                }
                (better < *k) as u8 as f64
            }
            Rule::Threshold { tau } => (px >= tau * pmax) as u8 as f64,
            Rule::Typical { epsilon, delta } => {
                let h = entropy(inp.p_hat);
                (px > epsilon.min(delta * (-h).exp())) as u8 as f64
            }
            Rule::Divergence { threshold } => {
                (js_divergence(inp.p_hat, inp.q, inp.x) <= *threshold) as u8 as f64
            }
            Rule::Lookahead { window } => (inp.agree_after >= *window) as u8 as f64,
            Rule::Gated { rule, min_entropy } => {
                if entropy(inp.p_hat) >= *min_entropy {
                    rule.g(inp)
                } else {
                    0.0
                }
            }
        };
        g.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_specs() {
        for s in [
            "exact",
            "lenient:0.5",
            "topk:3",
            "threshold:0.3",
            "typical:0.09,0.3",
            "divergence:0.2",
            "lookahead:2",
            "topk:5+entropy:1.5",
            "lookahead:3+entropy:0.5",
        ] {
            let r: Rule = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        for (s, needle) in [
            ("topk:0", "at least 1"),
            ("topk:x", "whole number"),
            ("lenient:2", "(0, 1]"),
            ("lenient", "needs"),
            ("typical:x", "two numbers"),
            ("typical:x,0.3", "not a number"),
            ("threshold:0", "(0, 1]"),
            ("divergence:-1", ">= 0"),
            ("fuzzy:1", "unknown rule"),
            ("exact:1", "no parameter"),
            ("lookahead:0", "at least 1"),
            ("lookahead", "needs"),
            ("topk:5+h:1", "entropy:H"),
            ("topk:5+entropy:-1", ">= 0"),
            ("topk:5+entropy:x", "not a number"),
            ("exact+entropy:1", "one relaxed rule"),
            ("topk:5+entropy:1+entropy:2", "one relaxed rule"),
        ] {
            let e = s.parse::<Rule>().unwrap_err().to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn greedy_forms_are_zero_one() {
        let p = [0.5f32, 0.3, 0.2];
        let inp = |x| JudgeInput {
            p_hat: &p,
            p_hat_max: 0.5,
            q: &DraftDist::Greedy,
            x,
            greedy: true,
            agree_after: 0,
        };
        assert_eq!(Rule::TopK { k: 2 }.g(&inp(1)), 1.0);
        assert_eq!(Rule::TopK { k: 2 }.g(&inp(2)), 0.0);
        assert_eq!(Rule::Threshold { tau: 0.5 }.g(&inp(1)), 1.0);
        assert_eq!(Rule::Threshold { tau: 0.5 }.g(&inp(2)), 0.0);
        assert_eq!(Rule::Lenient { lambda: 0.4 }.g(&inp(2)), 1.0);
        assert_eq!(Rule::Lenient { lambda: 0.5 }.g(&inp(2)), 0.0);
        assert_eq!(Rule::Exact.g(&inp(0)), 0.0);
    }

    #[test]
    fn lookahead_needs_the_whole_window_to_reagree() {
        let p = [0.5f32, 0.3, 0.2];
        let inp = |agree_after| JudgeInput {
            p_hat: &p,
            p_hat_max: 0.5,
            q: &DraftDist::Greedy,
            x: 2,
            greedy: true,
            agree_after,
        };
        let r: Rule = "lookahead:2".parse().unwrap();
        assert_eq!(r.lookahead(), Some(2));
        assert_eq!(r.g(&inp(0)), 0.0);
        assert_eq!(r.g(&inp(1)), 0.0);
        assert_eq!(r.g(&inp(2)), 1.0);
        assert_eq!(Rule::TopK { k: 2 }.lookahead(), None);
    }

    #[test]
    fn the_entropy_gate_relaxes_only_where_the_target_is_unsure() {
        const FLAT: &[f32] = &[0.4, 0.35, 0.25]; // H ≈ 1.08 nats
        const SURE: &[f32] = &[0.9, 0.06, 0.04]; // H ≈ 0.39
        let inp = |p: &'static [f32]| JudgeInput {
            p_hat: p,
            p_hat_max: p[0],
            q: &DraftDist::Greedy,
            x: 1,
            greedy: true,
            agree_after: 0,
        };
        let gated: Rule = "topk:2+entropy:0.7".parse().unwrap();
        assert_eq!(Rule::TopK { k: 2 }.g(&inp(SURE)), 1.0);
        assert_eq!(gated.g(&inp(SURE)), 0.0, "confident: not relaxed");
        assert_eq!(gated.g(&inp(FLAT)), 1.0, "flat: relaxed as topk:2");
        let gated_lookahead: Rule = "lookahead:1+entropy:0.7".parse().unwrap();
        assert_eq!(gated_lookahead.lookahead(), Some(1));
    }

    #[test]
    fn js_of_identical_distributions_is_zero() {
        let p = vec![0.25f32, 0.75];
        assert!(js_divergence(&p, &DraftDist::Probs(p.clone()), 0) < 1e-12);
        let far = js_divergence(&[1.0, 0.0], &DraftDist::Probs(vec![0.0, 1.0]), 1);
        assert!((far - std::f64::consts::LN_2).abs() < 1e-9);
    }
}
