//! Block size (γ) policies and the latency model they use (DESIGN §7).
//!
//! - `Fixed(n)`: n drafted tokens per block (0 = target-only decoding);
//! - `Auto { max }`: each round, the γ in `[0, max]` that maximises the predicted goodput
//!   `E(α, γ) / T(γ)`, with `T(γ) = c_d + γ·t_d + RTT + t_v(γ+1)`, from running estimates of α,
//!   t_d, t_v(k) and RTT ([`Estimator`]). `c_d` is what a proposal costs beyond its forwards
//!   (waking the draft's threads after a wait; 0 in DESIGN §7's model, measurable on a CPU). γ = 0
//!   is a round of target-only decoding (no draft cost): on a CPU, where the draft costs a good
//!   part of a target step, speculation can lose;
//! - `AutoFrozen { max, costs }` (`auto@t_d=…,c_d=…,t_v1=…,slope=…,rtt=…`): `auto` with the
//!   costs given instead of timed, so that γ depends only on what was accepted. `auto` follows
//!   wall-clock timings, so two runs with one seed may choose other block sizes, and at T > 0 or
//!   under a lossy rule (where what is committed depends on the blocks) other tokens; with frozen
//!   costs a seeded run repeats bit for bit, like a fixed γ;
//! - `Heuristic { max }`: the rule of Hugging Face transformers' assisted generation, the baseline
//!   to beat: start at 5, +2 after a fully accepted block, −1 otherwise, within `[1, max]`.
//!
//! A model-free drafter's proposal costs next to nothing, so under `auto` it proposes up to `max`
//! tokens and says what it knows of each ([`Evidence`]); [`GammaController::cut`] keeps the
//! prefix with the best predicted goodput, where each token's chance of acceptance (given the
//! ones before it were accepted) is learnt per class of evidence ([`Calibration`]): a token that
//! followed its context every time after a long match is worth more than one that followed half
//! the time after two tokens.

use std::fmt;

use anyhow::{bail, Result};
use serde::Serialize;

use super::draft::Evidence;

/// `--gamma-max` when none is given.
pub const DEFAULT_GAMMA_MAX: usize = 16;
/// The heuristic's first block (transformers' default `num_assistant_tokens`).
pub const HEURISTIC_START: usize = 5;
/// `auto`'s first block, before anything is measured.
pub const AUTO_START: usize = 4;
/// `auto` explores a neighbouring γ once every this many rounds (keeps the estimates of α and of
/// t_v's slope alive even when one γ is chosen for a long time).
pub const EXPLORE_EVERY: usize = 32;
/// Prior for the verify cost of each token beyond the first, as a fraction of `t_v(1)`, used
/// until two block sizes have been measured (this CPU measured 0.13; a GPU is near 0).
pub const PRIOR_VERIFY_SLOPE: f64 = 0.1;
/// Goodputs within this relative difference are a tie (rounding must not pick a longer block).
pub const TIE: f64 = 1e-9;

/// How the block size is chosen, per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GammaPolicy {
    Fixed(usize),
    Auto { max: usize },
    AutoFrozen { max: usize, costs: Costs },
    Heuristic { max: usize },
}

/// The latency model's costs (seconds), given rather than timed: `auto`'s reproducible mode.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Costs {
    /// `t_d`: one draft forward.
    pub t_draft: f64,
    /// `c_d`: a proposal's cost beyond its forwards.
    pub t_draft_fixed: f64,
    /// `t_v(1)`: a target forward over one token.
    pub t_verify1: f64,
    /// What each verified token beyond the first adds.
    pub t_verify_slope: f64,
    /// Per round, outside both models.
    pub rtt: f64,
}

impl Costs {
    /// The keys of `auto@…`, in order.
    const KEYS: [&'static str; 5] = ["t_d", "c_d", "t_v1", "slope", "rtt"];

    /// Parses `t_d=…,c_d=…,t_v1=…,slope=…,rtt=…` (seconds; every key once, any order).
    pub fn parse(s: &str) -> Result<Self> {
        let mut v = [None; 5];
        for part in s.split(',') {
            let (k, x) = part.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("gamma costs {s:?}: expected KEY=SECONDS pairs, e.g. t_d=0.0056")
            })?;
            let i = Self::KEYS
                .iter()
                .position(|&n| n == k.trim())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "gamma costs: unknown key {k:?} (expected {})",
                        Self::KEYS.join(", ")
                    )
                })?;
            let x: f64 = x
                .trim()
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| {
                    anyhow::anyhow!("gamma costs: {k}={x:?} is not a number of seconds >= 0")
                })?;
            if v[i].replace(x).is_some() {
                bail!("gamma costs: {k} is given twice");
            }
        }
        let missing: Vec<&str> = (0..5)
            .filter(|&i| v[i].is_none())
            .map(|i| Self::KEYS[i])
            .collect();
        if !missing.is_empty() {
            bail!("gamma costs {s:?}: missing {}", missing.join(", "));
        }
        let c = Costs {
            t_draft: v[0].unwrap(),
            t_draft_fixed: v[1].unwrap(),
            t_verify1: v[2].unwrap(),
            t_verify_slope: v[3].unwrap(),
            rtt: v[4].unwrap(),
        };
        if c.t_verify1 <= 0.0 {
            bail!("gamma costs: t_v1 must be > 0");
        }
        Ok(c)
    }

    /// The estimates these costs give at acceptance rate `alpha`.
    pub fn with_alpha(&self, alpha: f64) -> Estimates {
        Estimates {
            alpha,
            t_draft: self.t_draft,
            t_draft_fixed: self.t_draft_fixed,
            t_verify1: self.t_verify1,
            t_verify_slope: self.t_verify_slope,
            rtt: self.rtt,
        }
    }
}

impl fmt::Display for Costs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t_d={},c_d={},t_v1={},slope={},rtt={}",
            self.t_draft, self.t_draft_fixed, self.t_verify1, self.t_verify_slope, self.rtt
        )
    }
}

impl Default for GammaPolicy {
    fn default() -> Self {
        GammaPolicy::Fixed(8)
    }
}

impl GammaPolicy {
    /// Parses `N`, `auto`, `auto@COSTS` (see [`Costs::parse`]) or `heuristic` (`max` bounds the
    /// adaptive ones).
    pub fn parse(s: &str, max: usize) -> Result<Self> {
        let p = match s.trim() {
            "auto" => GammaPolicy::Auto { max },
            frozen if frozen.starts_with("auto@") => GammaPolicy::AutoFrozen {
                max,
                costs: Costs::parse(&frozen["auto@".len()..])?,
            },
            "heuristic" => GammaPolicy::Heuristic { max },
            n => match n.parse::<usize>() {
                Ok(n) => GammaPolicy::Fixed(n),
                Err(_) => bail!(
                    "gamma {s:?}: expected a whole number of drafted tokens per block, `auto`, `auto@t_d=…,c_d=…,t_v1=…,slope=…,rtt=…` or `heuristic`"
                ),
            },
        };
        if matches!(p, GammaPolicy::Heuristic { max: 0 }) {
            bail!("gamma heuristic needs a gamma-max of at least 1");
        }
        Ok(p)
    }

    /// Whether any block may carry drafted tokens (`Fixed(0)` is target-only decoding).
    pub fn speculative(&self) -> bool {
        self.max() > 0
    }

    /// The largest block the policy may draft.
    pub fn max(&self) -> usize {
        match *self {
            GammaPolicy::Fixed(n) => n,
            GammaPolicy::Auto { max }
            | GammaPolicy::AutoFrozen { max, .. }
            | GammaPolicy::Heuristic { max } => max,
        }
    }

    /// The same policy with blocks of at most `limit` tokens (a node's or a target's limit).
    pub fn capped(self, limit: usize) -> Self {
        match self {
            GammaPolicy::Fixed(n) => GammaPolicy::Fixed(n.min(limit)),
            GammaPolicy::Auto { max } => GammaPolicy::Auto {
                max: max.min(limit),
            },
            GammaPolicy::AutoFrozen { max, costs } => GammaPolicy::AutoFrozen {
                max: max.min(limit),
                costs,
            },
            GammaPolicy::Heuristic { max } => GammaPolicy::Heuristic {
                max: max.min(limit).max(1),
            },
        }
    }

    /// `fixed`, `auto` or `heuristic`.
    pub fn kind(&self) -> &'static str {
        match self {
            GammaPolicy::Fixed(_) => "fixed",
            GammaPolicy::Auto { .. } | GammaPolicy::AutoFrozen { .. } => "auto",
            GammaPolicy::Heuristic { .. } => "heuristic",
        }
    }
}

impl fmt::Display for GammaPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GammaPolicy::Fixed(n) => write!(f, "{n}"),
            GammaPolicy::Auto { .. } => f.write_str("auto"),
            GammaPolicy::AutoFrozen { costs, .. } => write!(f, "auto@{costs}"),
            GammaPolicy::Heuristic { .. } => f.write_str("heuristic"),
        }
    }
}

impl Serialize for GammaPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GammaPolicy::Fixed(n) => s.serialize_u64(*n as u64),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

/// The latency model's inputs (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Estimates {
    /// Acceptance rate over judged positions.
    pub alpha: f64,
    /// One draft forward.
    pub t_draft: f64,
    /// A proposal's cost beyond its forwards: `c_d` (see the module doc).
    pub t_draft_fixed: f64,
    /// A target forward over one token: `t_v(1)`.
    pub t_verify1: f64,
    /// What each token beyond the first adds to a verify: `t_v(k) = t_verify1 + (k−1)·slope`.
    pub t_verify_slope: f64,
    /// Per round, outside both models: network round trip, serialization, scheduling.
    pub rtt: f64,
}

impl Estimates {
    pub fn t_verify(&self, k: usize) -> f64 {
        self.t_verify1 + self.t_verify_slope * k.saturating_sub(1) as f64
    }

    /// `[1, α, α², …, α^γ]`: the chance that the first i drafted tokens are all accepted.
    fn survival(&self, gamma: usize) -> Vec<f64> {
        let a = self.alpha.clamp(0.0, 1.0);
        (0..=gamma).map(|i| a.powi(i as i32)).collect()
    }

    /// Expected committed tokens of a round with γ drafted tokens: `Σ_{i=0..γ} α^i`
    /// `= (1 − α^(γ+1)) / (1 − α)`. Pipelined, a fully accepted block carries no bonus token (the
    /// successor's first token takes its place), so `α^γ` less.
    pub fn expected_tokens(&self, gamma: usize, pipeline: bool) -> f64 {
        expected_tokens_of(&self.survival(gamma), pipeline)
    }

    /// Seconds to draft γ tokens: `c_d + γ·t_d` (0 for γ = 0).
    pub fn draft_time(&self, gamma: usize) -> f64 {
        if gamma == 0 {
            0.0
        } else {
            self.t_draft_fixed + gamma as f64 * self.t_draft
        }
    }

    /// Expected seconds per round: `D + W` with `D = c_d + γ·t_d` (drafting) and
    /// `W = RTT + t_v(γ+1)` (waiting for the verdict). Pipelined, one block at most is drafted
    /// ahead: block n+1 is drafted and sent while block n is in flight, and block n+2 is drafted
    /// when block n's verdict arrives. A run of fully accepted blocks therefore completes two
    /// blocks per `D + W` (or one per `D` when drafting is the bottleneck): a block that follows a
    /// fully accepted one (probability α^γ) costs `max(D, (D + W)/2)`, any other `D + W`.
    pub fn round_time(&self, gamma: usize, pipeline: bool) -> f64 {
        self.round_time_of(&self.survival(gamma), pipeline)
    }

    /// [`Estimates::round_time`] with the chance of a fully accepted block given.
    fn round_time_of(&self, survival: &[f64], pipeline: bool) -> f64 {
        let gamma = survival.len() - 1;
        let draft = self.draft_time(gamma);
        let wait = self.rtt + self.t_verify(gamma + 1);
        if pipeline && gamma > 0 {
            let full = survival[gamma];
            full * draft.max((draft + wait) / 2.0) + (1.0 - full) * (draft + wait)
        } else {
            draft + wait
        }
    }

    /// Predicted committed tokens per second.
    pub fn goodput(&self, gamma: usize, pipeline: bool) -> f64 {
        self.goodput_of(&self.survival(gamma), pipeline)
    }

    /// Predicted committed tokens per second of a block whose first i tokens are all accepted
    /// with probability `survival[i]` (`survival[0]` = 1; γ = `survival.len() − 1`).
    pub fn goodput_of(&self, survival: &[f64], pipeline: bool) -> f64 {
        let t = self.round_time_of(survival, pipeline);
        if t > 0.0 {
            expected_tokens_of(survival, pipeline) / t
        } else {
            0.0
        }
    }

    /// Predicted speedup over a baseline that takes `per_token` seconds per token.
    pub fn speedup(&self, gamma: usize, pipeline: bool, per_token: f64) -> f64 {
        self.goodput(gamma, pipeline) * per_token
    }

    /// The γ in `[min, max]` with the highest predicted goodput (the smallest on ties: a longer
    /// block must be better by more than a relative [`TIE`]).
    pub fn best_gamma(&self, min: usize, max: usize, pipeline: bool) -> usize {
        let mut best = (min, self.goodput(min, pipeline));
        for g in min + 1..=max {
            let v = self.goodput(g, pipeline);
            if v > best.1 * (1.0 + TIE) {
                best = (g, v);
            }
        }
        best.0
    }
}

/// Expected committed tokens of a block with these survival chances (see
/// [`Estimates::goodput_of`]).
fn expected_tokens_of(survival: &[f64], pipeline: bool) -> f64 {
    let gamma = survival.len() - 1;
    let e: f64 = survival.iter().sum();
    if pipeline && gamma > 0 {
        e - survival[gamma]
    } else {
        e
    }
}

/// A running mean that forgets: the plain mean of the first samples, then an exponential average
/// with weight `MIN_WEIGHT` (follows drift within ~1/MIN_WEIGHT samples).
#[derive(Debug, Clone, Copy, Default)]
struct Running {
    n: u64,
    mean: f64,
}

impl Running {
    const MIN_WEIGHT: f64 = 0.1;

    fn add(&mut self, x: f64) {
        self.n += 1;
        let w = (1.0 / self.n as f64).max(Self::MIN_WEIGHT);
        self.mean += w * (x - self.mean);
    }
}

/// A line `y = a + b·x` through the running mean of y at each integer x seen, fitted by least
/// squares (each x weighted by its sample count, capped at 8 so that a long-used x does not drown
/// the others).
#[derive(Debug, Clone, Default)]
struct LineFit {
    at: Vec<Running>,
}

impl LineFit {
    fn add(&mut self, x: usize, y: f64) {
        if self.at.len() <= x {
            self.at.resize(x + 1, Running::default());
        }
        self.at[x].add(y);
    }

    /// `(a, b)`; with one x only, `single(x, mean)` decides. `None` before any sample.
    fn fit(&self, single: impl Fn(f64, f64) -> (f64, f64)) -> Option<(f64, f64)> {
        let pts: Vec<(f64, f64, f64)> = self
            .at
            .iter()
            .enumerate()
            .filter(|(_, r)| r.n > 0)
            .map(|(x, r)| (x as f64, r.mean, (r.n as f64).min(8.0)))
            .collect();
        match pts.len() {
            0 => None,
            1 => Some(single(pts[0].0, pts[0].1)),
            _ => {
                let sw: f64 = pts.iter().map(|p| p.2).sum();
                let mx = pts.iter().map(|p| p.2 * p.0).sum::<f64>() / sw;
                let my = pts.iter().map(|p| p.2 * p.1).sum::<f64>() / sw;
                let sxx: f64 = pts.iter().map(|p| p.2 * (p.0 - mx).powi(2)).sum();
                let sxy: f64 = pts.iter().map(|p| p.2 * (p.0 - mx) * (p.1 - my)).sum();
                let b = (sxy / sxx).max(0.0);
                let a = my - b * mx;
                if a >= 0.0 {
                    Some((a, b))
                } else {
                    // A negative cost at x = 0 is not credible: a line through the origin instead.
                    let sxx0: f64 = pts.iter().map(|p| p.2 * p.0 * p.0).sum();
                    let sxy0: f64 = pts.iter().map(|p| p.2 * p.0 * p.1).sum();
                    Some((0.0, (sxy0 / sxx0).max(0.0)))
                }
            }
        }
    }
}

/// Running estimates of α, t_d, t_v(k) and RTT from what a generation observes.
#[derive(Debug, Clone, Default)]
pub struct Estimator {
    /// Accepted and judged positions, both decayed by `ALPHA_DECAY` per judged position.
    accepted: f64,
    judged: f64,
    /// Seconds per proposal against its forwards: `c_d + steps·t_d`.
    draft: LineFit,
    /// Seconds per verify against k − 1 (k = block length + 1): `t_v(1) + (k−1)·slope`.
    verify: LineFit,
    rtt: Running,
    /// The first round's time outside the models, used only until a second one is measured: it
    /// also pays for opening the verify stream (~9 ms on loopback here).
    first_rtt: Option<f64>,
}

impl Estimator {
    /// Evidence fades per judged position, not per round, so short blocks do not shorten the
    /// memory: a position's weight is 1/e after 1 / (1 − ALPHA_DECAY) = 100 more positions.
    const ALPHA_DECAY: f64 = 0.99;
    /// Prior: α = 0.5 worth one judged position.
    const ALPHA_PRIOR: (f64, f64) = (0.5, 1.0);

    /// One draft proposal: `steps` forwards in `seconds` (prefill left out).
    pub fn observe_draft(&mut self, steps: usize, seconds: f64) {
        if steps > 0 {
            self.draft.add(steps, seconds);
        }
    }

    /// One judged block: `drafted` tokens, `accepted` of them, whether one was rejected, the
    /// target's forward time, and the round's time outside the target when it was measured
    /// cleanly (the block was alone in flight).
    pub fn observe_verdict(
        &mut self,
        drafted: usize,
        accepted: usize,
        rejected: bool,
        verify_s: f64,
        outside_s: Option<f64>,
    ) {
        if drafted > 0 {
            let judged = accepted + rejected as usize;
            let fade = Self::ALPHA_DECAY.powi(judged as i32);
            self.accepted = self.accepted * fade + accepted as f64;
            self.judged = self.judged * fade + judged as f64;
        }
        if verify_s > 0.0 {
            self.verify.add(drafted, verify_s);
        }
        if let Some(o) = outside_s {
            if self.first_rtt.is_none() {
                self.first_rtt = Some(o.max(0.0));
            } else {
                self.rtt.add(o.max(0.0));
            }
        }
    }

    /// Per-round time outside both models.
    pub fn rtt(&self) -> f64 {
        if self.rtt.n > 0 {
            self.rtt.mean
        } else {
            self.first_rtt.unwrap_or(0.0)
        }
    }

    pub fn alpha(&self) -> f64 {
        let (a0, w) = Self::ALPHA_PRIOR;
        (self.accepted + a0 * w) / (self.judged + w)
    }

    /// `(t_v(1), slope)`; with one block size only, the prior slope.
    fn verify_line(&self) -> Option<(f64, f64)> {
        self.verify.fit(|x, m| {
            let a = m / (1.0 + PRIOR_VERIFY_SLOPE * x);
            (a, PRIOR_VERIFY_SLOPE * a)
        })
    }

    /// `(c_d, t_d)`; with one proposal length only, no fixed part.
    fn draft_line(&self) -> Option<(f64, f64)> {
        self.draft.fit(|x, m| (0.0, m / x))
    }

    /// The current estimates; `None` until a draft and a verify have been timed.
    pub fn estimates(&self) -> Option<Estimates> {
        let (t_verify1, t_verify_slope) = self.verify_line()?;
        let (t_draft_fixed, t_draft) = self.draft_line()?;
        Some(Estimates {
            alpha: self.alpha(),
            t_draft,
            t_draft_fixed,
            t_verify1,
            t_verify_slope,
            rtt: self.rtt(),
        })
    }

    /// Whatever has been measured (zeros for what has not).
    pub fn snapshot(&self) -> Estimates {
        let (t_verify1, t_verify_slope) = self.verify_line().unwrap_or_default();
        let (t_draft_fixed, t_draft) = self.draft_line().unwrap_or_default();
        Estimates {
            alpha: if self.judged > 0.0 { self.alpha() } else { 0.0 },
            t_draft,
            t_draft_fixed,
            t_verify1,
            t_verify_slope,
            rtt: self.rtt(),
        }
    }
}

/// The acceptance of model-free drafted tokens per class of [`Evidence`]: for each (probability
/// class, matched-length class), decayed counts of the tokens judged (given the tokens before
/// them in their block were accepted) and of those accepted. A class with little evidence leans
/// on the drafter's overall α ([`Calibration::PRIOR_WEIGHT`] positions' worth).
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    /// (accepted, judged) per class.
    classes: [[(f64, f64); Calibration::MATCH_EDGES.len() + 1]; Calibration::PROB_EDGES.len() + 1],
}

impl Calibration {
    /// Probability classes: below 0.5, below 0.8, below 0.95, the rest.
    const PROB_EDGES: [f64; 3] = [0.5, 0.8, 0.95];
    /// Matched-length classes: 1–2 tokens, 3–4, 5–8, 9 or more.
    const MATCH_EDGES: [usize; 3] = [3, 5, 9];
    const PRIOR_WEIGHT: f64 = 2.0;

    fn class(e: &Evidence) -> (usize, usize) {
        (
            Self::PROB_EDGES.iter().filter(|&&x| e.prob >= x).count(),
            Self::MATCH_EDGES
                .iter()
                .filter(|&&x| e.matched >= x)
                .count(),
        )
    }

    /// The chance a token with this evidence is accepted, `prior` the overall α.
    pub fn alpha(&self, e: &Evidence, prior: f64) -> f64 {
        let (p, m) = Self::class(e);
        let (acc, judged) = self.classes[p][m];
        (acc + prior * Self::PRIOR_WEIGHT) / (judged + Self::PRIOR_WEIGHT)
    }

    /// A block with this evidence had `accepted` tokens accepted, then one `rejected` or not.
    pub fn observe(&mut self, evidence: &[Evidence], accepted: usize, rejected: bool) {
        let judged = (accepted + rejected as usize).min(evidence.len());
        for (i, e) in evidence[..judged].iter().enumerate() {
            let (p, m) = Self::class(e);
            let c = &mut self.classes[p][m];
            *c = (
                c.0 * Estimator::ALPHA_DECAY + (i < accepted) as u8 as f64,
                c.1 * Estimator::ALPHA_DECAY + 1.0,
            );
        }
    }
}

/// Chooses γ for each block of one generation.
#[derive(Debug, Clone)]
pub struct GammaController {
    policy: GammaPolicy,
    pipeline: bool,
    pub estimator: Estimator,
    /// `auto`: acceptance per class of model-free evidence.
    pub calibration: Calibration,
    /// The heuristic's current γ.
    heuristic: usize,
    /// Blocks chosen so far and the sum of their γ.
    chosen: usize,
    gamma_sum: usize,
}

impl GammaController {
    pub fn new(policy: GammaPolicy, pipeline: bool) -> Self {
        GammaController {
            policy,
            pipeline,
            estimator: Estimator::default(),
            calibration: Calibration::default(),
            heuristic: HEURISTIC_START.min(policy.max()).max(1),
            chosen: 0,
            gamma_sum: 0,
        }
    }

    pub fn policy(&self) -> GammaPolicy {
        self.policy
    }

    /// γ for the next block.
    pub fn next_gamma(&mut self) -> usize {
        let g = match self.policy {
            GammaPolicy::Fixed(n) => n,
            GammaPolicy::Heuristic { .. } => self.heuristic,
            GammaPolicy::Auto { max } | GammaPolicy::AutoFrozen { max, .. } => {
                match self.estimates() {
                    None => AUTO_START.min(max),
                    Some(e) => {
                        let best = e.best_gamma(0, max, self.pipeline);
                        if max > 0 && (self.chosen + 1).is_multiple_of(EXPLORE_EVERY) {
                            if best == 0 {
                                e.best_gamma(1, max, self.pipeline)
                            } else if best < max {
                                best + 1
                            } else {
                                best - 1
                            }
                        } else {
                            best
                        }
                    }
                }
            }
        };
        self.chosen += 1;
        g
    }

    /// The block of the round [`GammaController::next_gamma`] began has `gamma` drafted tokens
    /// (what was asked of a draft model, or what [`GammaController::cut`] kept).
    pub fn record(&mut self, gamma: usize) {
        self.gamma_sum += gamma;
    }

    /// Whether model-free proposals are cut by [`GammaController::cut`] (under `auto`).
    pub fn cuts(&self) -> bool {
        matches!(
            self.policy,
            GammaPolicy::Auto { .. } | GammaPolicy::AutoFrozen { .. }
        )
    }

    /// How many tokens of a model-free proposal with this evidence to keep (at least `min` where
    /// there are that many), and their expected accepted length: the prefix with the best
    /// predicted goodput, each token accepted with its class's learnt chance; once every
    /// [`EXPLORE_EVERY`] rounds one token more (so that a class judged unprofitable is
    /// measured again). Before anything is measured, the first [`AUTO_START`].
    pub fn cut(&self, evidence: &[Evidence], min: usize) -> (usize, f64) {
        let mut survival = vec![1.0];
        let prior = self.estimator.alpha();
        for e in evidence {
            let last = survival[survival.len() - 1];
            survival.push(last * self.calibration.alpha(e, prior));
        }
        let keep = match self.estimates() {
            None => evidence.len().min(AUTO_START),
            Some(est) => {
                let mut best = (0, est.goodput_of(&survival[..1], self.pipeline));
                for g in 1..=evidence.len() {
                    let v = est.goodput_of(&survival[..=g], self.pipeline);
                    if v > best.1 * (1.0 + TIE) {
                        best = (g, v);
                    }
                }
                if self.chosen.is_multiple_of(EXPLORE_EVERY) {
                    (best.0 + 1).min(evidence.len())
                } else {
                    best.0
                }
            }
        };
        let keep = keep.max(min.min(evidence.len()));
        (keep, survival[1..=keep].iter().sum())
    }

    /// What `auto` decides on: the running estimates, or with frozen costs those costs at the
    /// measured acceptance rate (once a drafted position was judged: like `auto`, the first
    /// block is `AUTO_START` long, so that α is measured before a choice of γ = 0 could stop it).
    fn estimates(&self) -> Option<Estimates> {
        match self.policy {
            GammaPolicy::AutoFrozen { costs, .. } => {
                (self.estimator.judged > 0.0).then(|| costs.with_alpha(self.estimator.alpha()))
            }
            _ => self.estimator.estimates(),
        }
    }

    /// A draft proposal was timed.
    pub fn observe_draft(&mut self, steps: usize, seconds: f64) {
        self.estimator.observe_draft(steps, seconds);
    }

    /// A block was judged (see [`Estimator::observe_verdict`]); `evidence`: its model-free
    /// tokens' (empty for a draft model's block).
    pub fn observe_verdict(
        &mut self,
        evidence: &[Evidence],
        drafted: usize,
        accepted: usize,
        rejected: bool,
        verify_s: f64,
        outside_s: Option<f64>,
    ) {
        self.estimator
            .observe_verdict(drafted, accepted, rejected, verify_s, outside_s);
        self.calibration.observe(evidence, accepted, rejected);
        if let GammaPolicy::Heuristic { max } = self.policy {
            if drafted > 0 {
                self.heuristic = if accepted == drafted && !rejected {
                    (self.heuristic + 2).min(max)
                } else {
                    self.heuristic.saturating_sub(1).max(1)
                };
            }
        }
    }

    /// Mean γ over the blocks chosen.
    pub fn mean_gamma(&self) -> f64 {
        if self.chosen == 0 {
            0.0
        } else {
            self.gamma_sum as f64 / self.chosen as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed forms of DESIGN §7, written independently of the code under test.
    fn goodput_closed_form(e: &Estimates, g: usize) -> f64 {
        let a = e.alpha;
        let exp = if (1.0 - a).abs() < 1e-12 {
            (g + 1) as f64
        } else {
            (1.0 - a.powi(g as i32 + 1)) / (1.0 - a)
        };
        let draft = if g == 0 {
            0.0
        } else {
            e.t_draft_fixed + g as f64 * e.t_draft
        };
        exp / (draft + e.rtt + e.t_verify1 + g as f64 * e.t_verify_slope)
    }

    fn grid() -> Vec<Estimates> {
        let mut v = Vec::new();
        for &alpha in &[0.0, 0.3, 0.6, 0.75, 0.9, 0.97, 1.0] {
            for &t_draft in &[0.0005, 0.002, 0.0056, 0.008] {
                for &slope in &[0.0, 0.0002, 0.001] {
                    v.push(Estimates {
                        alpha,
                        t_draft,
                        t_draft_fixed: if slope > 0.0005 { 0.002 } else { 0.0 },
                        t_verify1: 0.008,
                        t_verify_slope: slope,
                        rtt: 0.0,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn auto_chooses_the_models_argmax() {
        for mut e in grid() {
            for &rtt in &[0.0, 0.001, 0.01, 0.05] {
                e.rtt = rtt;
                let g = e.best_gamma(0, 16, false);
                let (mut arg, mut best) = (0, f64::MIN);
                for k in 0..=16 {
                    let v = goodput_closed_form(&e, k);
                    if v > best * (1.0 + TIE) {
                        (arg, best) = (k, v);
                    }
                }
                assert_eq!(g, arg, "{e:?}");
                assert!((e.goodput(g, false) - best).abs() <= 1e-9 * best, "{e:?}");
            }
        }
    }

    #[test]
    fn chosen_gamma_is_non_decreasing_in_rtt() {
        for mut e in grid() {
            let mut last = 0;
            for i in 0..=200 {
                e.rtt = i as f64 * 0.0005; // 0 to 100 ms
                let g = e.best_gamma(0, 32, false);
                assert!(
                    g >= last,
                    "γ fell from {last} to {g} at RTT {} s: {e:?}",
                    e.rtt
                );
                last = g;
            }
        }
    }

    #[test]
    fn rtt_pushes_gamma_up_and_a_costly_draft_to_zero() {
        let mut e = Estimates {
            alpha: 0.8,
            t_draft: 0.002,
            t_draft_fixed: 0.0,
            t_verify1: 0.008,
            t_verify_slope: 0.001,
            rtt: 0.0,
        };
        let near = e.best_gamma(0, 16, false);
        e.rtt = 0.05;
        let far = e.best_gamma(0, 16, false);
        assert!(far > near, "{near} → {far}");
        // A draft as slow as the target with α = 0.3: speculation loses, target-only wins.
        e = Estimates {
            alpha: 0.3,
            t_draft: 0.008,
            rtt: 0.0,
            ..e
        };
        assert_eq!(e.best_gamma(0, 16, false), 0);
    }

    #[test]
    fn pipelining_model_hides_draft_time_behind_the_wait() {
        let e = Estimates {
            alpha: 1.0,
            t_draft: 0.004,
            t_draft_fixed: 0.001,
            t_verify1: 0.008,
            t_verify_slope: 0.0,
            rtt: 0.02,
        };
        // α = 1: every block follows a fully accepted one; D = c_d + γ·t_d = 17 ms < W = 28 ms
        // of waiting: two blocks per D + W.
        assert!((e.round_time(4, true) - 0.0225).abs() < 1e-12);
        // Drafting the bottleneck (D = 33 ms > W = 28 ms): one block per D.
        assert!((e.round_time(8, true) - 0.033).abs() < 1e-12);
        assert!((e.round_time(4, false) - 0.045).abs() < 1e-12);
        assert!(
            (e.round_time(0, false) - 0.028).abs() < 1e-12,
            "γ = 0 drafts nothing"
        );
        assert_eq!(e.expected_tokens(4, true), 4.0);
        assert_eq!(e.expected_tokens(4, false), 5.0);
    }

    #[test]
    fn estimator_recovers_a_linear_verify_cost_and_alpha() {
        let mut est = Estimator::default();
        assert!(est.estimates().is_none());
        for round in 0..200 {
            let g = 1 + round % 8;
            est.observe_draft(g, 0.0015 + g as f64 * 0.003);
            // α = 0.75 in expectation: 3 of every 4 judged positions accepted.
            let (acc, rej) = if round % 2 == 0 {
                (g.min(3), g > 3)
            } else {
                (0, true)
            };
            est.observe_verdict(g, acc, rej, 0.008 + 0.001 * g as f64, Some(0.01));
        }
        let e = est.estimates().unwrap();
        assert!((e.t_draft - 0.003).abs() < 1e-9, "{e:?}");
        assert!((e.t_draft_fixed - 0.0015).abs() < 1e-9, "{e:?}");
        assert!((e.t_verify1 - 0.008).abs() < 1e-6, "{e:?}");
        assert!((e.t_verify_slope - 0.001).abs() < 1e-6, "{e:?}");
        assert!((e.rtt - 0.01).abs() < 1e-9, "{e:?}");
        assert!(e.alpha > 0.3 && e.alpha < 0.9, "{e:?}");
    }

    #[test]
    fn one_block_size_uses_the_prior_slope() {
        let mut est = Estimator::default();
        est.observe_draft(4, 0.008);
        est.observe_verdict(4, 4, false, 0.014, None);
        let e = est.estimates().unwrap();
        assert!((e.t_verify(5) - 0.014).abs() < 1e-12);
        assert!((e.t_verify_slope - PRIOR_VERIFY_SLOPE * e.t_verify1).abs() < 1e-12);
        // One proposal length: all of its time is per forward.
        assert_eq!((e.t_draft_fixed, e.t_draft), (0.0, 0.002));
    }

    #[test]
    fn auto_cuts_model_free_proposals_by_the_acceptance_learnt_per_evidence() {
        let costs = Costs {
            t_draft: 1e-5,
            t_draft_fixed: 0.0,
            t_verify1: 0.01,
            t_verify_slope: 0.001,
            rtt: 0.0,
        };
        let mut c = GammaController::new(GammaPolicy::AutoFrozen { max: 16, costs }, false);
        assert!(c.cuts() && !GammaController::new(GammaPolicy::Fixed(4), false).cuts());
        let sure = Evidence {
            prob: 1.0,
            matched: 10,
        };
        let weak = Evidence {
            prob: 0.3,
            matched: 2,
        };
        // Nothing judged yet: the first AUTO_START, whatever the evidence.
        assert_eq!(c.cut(&[weak; 8], 0).0, AUTO_START);
        // Blocks whose sure tokens are accepted and whose weak one is rejected.
        for _ in 0..40 {
            c.next_gamma();
            c.observe_verdict(&[sure, sure, weak], 3, 2, true, 0.01, None);
        }
        let overall = c.estimator.alpha();
        assert!((0.6..0.7).contains(&overall), "{overall}");
        assert!(c.calibration.alpha(&sure, overall) > 0.95);
        assert!(c.calibration.alpha(&weak, overall) < 0.1);
        // The sure prefix is kept, cut before the weak token (beyond it, a token is worth ~5 %
        // of one while it costs 10 % of a verify).
        let (keep, expected) = c.cut(&[sure, sure, sure, weak, sure], 0);
        assert_eq!(keep, 3);
        assert!((2.8..3.0).contains(&expected), "{expected}");
        // A proposal of weak tokens only is not worth a longer verify: none, or `min`.
        assert_eq!(c.cut(&[weak; 4], 0).0, 0);
        assert_eq!(c.cut(&[weak; 4], 1).0, 1);
        assert_eq!(c.cut(&[], 1).0, 0);
        // Every EXPLORE_EVERY rounds, one token more.
        while !c.chosen.is_multiple_of(EXPLORE_EVERY) {
            c.next_gamma();
        }
        assert_eq!(c.cut(&[weak; 4], 0).0, 1);
    }

    /// The next γ, recorded as the block's length.
    fn take(c: &mut GammaController) -> usize {
        let g = c.next_gamma();
        c.record(g);
        g
    }

    #[test]
    fn heuristic_is_plus_two_minus_one_within_bounds() {
        let mut c = GammaController::new(GammaPolicy::Heuristic { max: 8 }, false);
        assert_eq!(take(&mut c), 5);
        c.observe_verdict(&[], 5, 5, false, 0.01, None);
        assert_eq!(take(&mut c), 7);
        c.observe_verdict(&[], 7, 7, false, 0.01, None);
        assert_eq!(take(&mut c), 8);
        c.observe_verdict(&[], 8, 2, true, 0.01, None);
        assert_eq!(take(&mut c), 7);
        for _ in 0..10 {
            c.observe_verdict(&[], 3, 0, true, 0.01, None);
        }
        assert_eq!(take(&mut c), 1);
        assert!((c.mean_gamma() - (5 + 7 + 8 + 7 + 1) as f64 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn auto_follows_its_estimates_and_explores() {
        let mut c = GammaController::new(GammaPolicy::Auto { max: 16 }, false);
        assert_eq!(c.next_gamma(), AUTO_START);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let g = c.next_gamma();
            seen.insert(g);
            c.observe_draft(g.max(1), 0.002 * g.max(1) as f64);
            // A draft that is always right, a slow link: long blocks win.
            c.observe_verdict(&[], g, g, false, 0.008 + 0.0005 * g as f64, Some(0.05));
        }
        let e = c.estimator.estimates().unwrap();
        assert_eq!(e.best_gamma(0, 16, false), 16);
        assert!(seen.contains(&16) && seen.contains(&15), "{seen:?}");
    }

    #[test]
    fn parse_and_cap() {
        assert_eq!(GammaPolicy::parse("4", 16).unwrap(), GammaPolicy::Fixed(4));
        assert_eq!(
            GammaPolicy::parse("auto", 12).unwrap(),
            GammaPolicy::Auto { max: 12 }
        );
        assert!(GammaPolicy::parse("heuristic", 0).is_err());
        let err = GammaPolicy::parse("fast", 8).unwrap_err().to_string();
        assert!(err.contains("fast") && err.contains("auto"), "{err}");
        assert_eq!(
            GammaPolicy::Auto { max: 16 }.capped(8),
            GammaPolicy::Auto { max: 8 }
        );
        assert!(!GammaPolicy::Fixed(0).speculative());
        assert_eq!(GammaPolicy::Heuristic { max: 3 }.to_string(), "heuristic");
    }

    #[test]
    fn frozen_costs_parse_print_and_decide_alone() {
        let spec = "auto@t_d=0.0056,c_d=0,t_v1=0.008,slope=0.0002,rtt=0.001";
        let p = GammaPolicy::parse(spec, 16).unwrap();
        assert_eq!(p.to_string(), spec);
        assert_eq!(GammaPolicy::parse(&p.to_string(), 16).unwrap(), p);
        assert_eq!(p.capped(8).max(), 8);
        assert_eq!(p.kind(), "auto");
        for (bad, says) in [
            ("auto@t_d=1", "missing c_d, t_v1, slope, rtt"),
            ("auto@t_d=1,t_d=2,c_d=0,t_v1=1,slope=0,rtt=0", "twice"),
            ("auto@t_d=-1,c_d=0,t_v1=1,slope=0,rtt=0", ">= 0"),
            ("auto@t_d=1,c_d=0,t_v1=0,slope=0,rtt=0", "t_v1 must be > 0"),
            ("auto@speed=1", "unknown key"),
            ("auto@t_d", "KEY=SECONDS"),
        ] {
            let e = format!("{:#}", GammaPolicy::parse(bad, 16).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
        // The costs decide once α was measured, timings never; acceptances do.
        let GammaPolicy::AutoFrozen { costs, .. } = p else {
            unreachable!()
        };
        let mut c = GammaController::new(p, false);
        let first = c.next_gamma();
        assert_eq!(first, AUTO_START);
        c.observe_verdict(&[], 4, 0, true, 10.0, Some(10.0));
        assert_eq!(
            c.next_gamma(),
            0,
            "α ≈ 0.2 with these costs: target-only rounds"
        );
        for _ in 0..20 {
            c.observe_draft(4, 10.0);
            c.observe_verdict(&[], 4, 4, false, 10.0, Some(10.0));
        }
        let next = c.next_gamma();
        assert_eq!(
            next,
            costs
                .with_alpha(c.estimator.alpha())
                .best_gamma(0, 16, false)
        );
        assert!(next > AUTO_START, "mostly accepted: longer blocks ({next})");
    }
}
