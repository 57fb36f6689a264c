//! Experiment configurations: `RULE[@key=value,...]`, e.g. `exact`, `topk:3@budget=8`,
//! `typical:0.09,0.3@budget=8,protect=none`. Keys: `budget` (default 0), `protect`
//! (`default` | `none`; default `default`), `pacing` (`none` | `linear[:BURST]`; default `linear`:
//! the budget is spent evenly over `--max-tokens`, as `specd serve` does),
//! `gamma` (a number, `auto` or `heuristic`; overrides `--gamma`), `drafter` (`model`, the default;
//! `ngram` / `ngram:MIN-MAX`: prompt lookup; `suffix` / `suffix:MIN-MAX@P`: suffix counts; `hybrid`
//! / `hybrid:MIN-MAX@P`), e.g. `exact@drafter=ngram,gamma=auto`.

use anyhow::{bail, Context, Result};
use specd_engine::spec_decode::budget::Pacing;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::{GammaPolicy, DEFAULT_GAMMA_MAX};
use specd_engine::spec_decode::rules::Rule;

#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// The spec as given: the config's name in results and reports.
    pub name: String,
    pub rule: Rule,
    pub budget: f64,
    pub protect: bool,
    pub pacing: Pacing,
    pub gamma: Option<GammaPolicy>,
    pub drafter: DrafterSpec,
}

impl std::str::FromStr for EvalConfig {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let (rule_s, opts) = match spec.split_once('@') {
            Some((r, o)) => (r, Some(o)),
            None => (spec, None),
        };
        let rule: Rule = rule_s.parse().with_context(|| format!("config {spec:?}"))?;
        let mut c = EvalConfig {
            name: spec.to_owned(),
            rule,
            budget: 0.0,
            protect: true,
            pacing: Pacing::Linear { burst: 1.0 },
            gamma: None,
            drafter: DrafterSpec::Model,
        };
        for kv in opts.into_iter().flat_map(|o| o.split(',')) {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("config {spec:?}: {kv:?} is not key=value"))?;
            match k.trim() {
                "budget" => {
                    c.budget = v.trim().parse().with_context(|| {
                        format!("config {spec:?}: budget {v:?} is not a number")
                    })?;
                    if !c.budget.is_finite() || c.budget < 0.0 {
                        bail!("config {spec:?}: budget must be >= 0");
                    }
                }
                "protect" => {
                    c.protect = match v.trim() {
                        "default" | "on" => true,
                        "none" | "off" => false,
                        other => bail!("config {spec:?}: protect={other:?} (use default or none)"),
                    }
                }
                "pacing" => c.pacing = v.parse().with_context(|| format!("config {spec:?}"))?,
                "gamma" => {
                    c.gamma = Some(
                        GammaPolicy::parse(v.trim(), DEFAULT_GAMMA_MAX)
                            .map_err(|e| anyhow::anyhow!("config {spec:?}: gamma: {e}"))?,
                    )
                }
                "drafter" => {
                    c.drafter = v.parse().with_context(|| format!("config {spec:?}"))?
                }
                other => bail!(
                    "config {spec:?}: unknown key {other:?} (keys: budget, protect, pacing, gamma, drafter)"
                ),
            }
        }
        if c.rule.is_exact() && c.budget > 0.0 {
            bail!("config {spec:?}: the exact rule takes no budget");
        }
        Ok(c)
    }
}

/// Parses `SPEC;SPEC;...`, refusing duplicates and the reserved name `target-only`.
pub fn parse_configs(s: &str) -> Result<Vec<EvalConfig>> {
    let mut out: Vec<EvalConfig> = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "target-only" {
            bail!("--configs: target-only is the baseline and always runs; do not list it");
        }
        let c: EvalConfig = part.parse()?;
        if out.iter().any(|o| o.name == c.name) {
            bail!("--configs: {:?} is listed twice", c.name);
        }
        out.push(c);
    }
    if out.is_empty() {
        bail!("--configs: give at least one configuration, e.g. exact;topk:3@budget=8");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use specd_engine::spec_decode::draft::ngram::NgramConfig;

    #[test]
    fn parses_configs() {
        let c = parse_configs("exact; topk:3@budget=8 ;typical:0.09,0.3@budget=8,protect=none")
            .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].budget, 8.0);
        assert!(c[1].protect);
        assert_eq!(
            c[2].rule,
            Rule::Typical {
                epsilon: 0.09,
                delta: 0.3
            }
        );
        assert!(!c[2].protect);
        assert_eq!(
            c[1].pacing,
            Pacing::Linear { burst: 1.0 },
            "paced by default"
        );
        let c =
            parse_configs("topk:5+entropy:1.5@budget=2,pacing=none;lookahead:2@budget=4").unwrap();
        assert_eq!(c[0].pacing, Pacing::None);
        assert_eq!(c[0].rule.to_string(), "topk:5+entropy:1.5");
        assert_eq!(c[1].rule, Rule::Lookahead { window: 2 });
        for bad in [
            "",
            "topk:0@budget=1",
            "topk:3@budget=-1",
            "topk:3@color=red",
            "exact@budget=2",
            "exact;exact",
            "target-only",
            "exact@drafter=lookup",
            "exact@drafter=ngram:3",
            "exact@drafter=ngram:4-2",
            "exact@gamma=fast",
        ] {
            assert!(parse_configs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_drafter_and_gamma_policy() {
        let c = parse_configs(
            "exact@drafter=ngram,gamma=auto;topk:5@budget=32,drafter=ngram:1-3;exact",
        )
        .unwrap();
        assert_eq!(c[0].drafter, DrafterSpec::Ngram(NgramConfig::default()));
        assert_eq!(
            c[0].gamma,
            Some(GammaPolicy::Auto {
                max: DEFAULT_GAMMA_MAX
            })
        );
        assert_eq!(
            c[1].drafter,
            DrafterSpec::Ngram(NgramConfig { min: 1, max: 3 })
        );
        assert_eq!((c[2].drafter, c[2].gamma), (DrafterSpec::Model, None));
        let e = parse_configs("exact@drafter=ngram:0-3").unwrap_err();
        assert!(format!("{e:#}").contains("1 ≤ min ≤ max"), "{e:#}");
    }
}
