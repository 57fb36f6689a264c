//! The exact acceptance rule (Leviathan et al. 2211.17192; Chen et al. 2302.01318), DESIGN §5:
//! accept `x` iff `u < a_ex(x) = min(1, p_T(x) / q(x))`; on reject emit a sample of
//! `r = norm(max(0, p_T − q))` (or of `p_T` when that mass is ~0). Greedy target: accept iff `x`
//! is the argmax, else emit the argmax. Greedy draft (q one-hot at x): `a_ex = p_T(x)` and
//! `r = p_T` with `x` removed. The output distribution is exactly `p_T`.

use super::DraftDist;
use crate::sampling::{sample_probs, Dist};

/// Residual mass below which the residual is replaced by `p_T` itself.
const RESIDUAL_EPS: f64 = 1e-9;

/// `a_ex(x)`: the probability that the exact rule accepts `x`.
pub fn accept_prob(p: &Dist, q: &DraftDist, x: u32) -> f64 {
    match (p, q) {
        (Dist::OneHot(t), _) => (*t == x) as u8 as f64,
        (Dist::Probs(_), DraftDist::Greedy) => p.prob(x) as f64,
        (Dist::Probs(_), DraftDist::Probs(qv)) => {
            let (px, qx) = (
                p.prob(x) as f64,
                qv.get(x as usize).copied().unwrap_or(0.0) as f64,
            );
            if qx > 0.0 {
                (px / qx).min(1.0)
            } else {
                (px > 0.0) as u8 as f64
            }
        }
    }
}

/// The residual distribution sampled on rejection.
pub fn residual(p: &Dist, q: &DraftDist, x: u32) -> Dist {
    match (p, q) {
        (Dist::OneHot(t), _) => Dist::OneHot(*t),
        (Dist::Probs(pv), DraftDist::Greedy) => {
            let mut r = pv.clone();
            if let Some(v) = r.get_mut(x as usize) {
                *v = 0.0;
            }
            normalized_or(r, pv)
        }
        (Dist::Probs(pv), DraftDist::Probs(qv)) => {
            let r: Vec<f32> = pv.iter().zip(qv).map(|(&a, &b)| (a - b).max(0.0)).collect();
            normalized_or(r, pv)
        }
    }
}

fn normalized_or(mut r: Vec<f32>, p: &[f32]) -> Dist {
    let mass: f64 = r.iter().map(|&v| v as f64).sum();
    if mass <= RESIDUAL_EPS {
        return Dist::Probs(p.to_vec());
    }
    let inv = (1.0 / mass) as f32;
    r.iter_mut().for_each(|v| *v *= inv);
    Dist::Probs(r)
}

/// The outcome of judging one drafted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Accept,
    /// Rejected; emit this token instead.
    Reject(u32),
}

/// Judges `x` with acceptance probability `a` and the draws `u_accept`, `u_residual`.
pub fn judge_with(
    a: f64,
    p: &Dist,
    q: &DraftDist,
    x: u32,
    u_accept: f64,
    u_residual: f64,
) -> Judgement {
    if u_accept < a {
        Judgement::Accept
    } else {
        Judgement::Reject(match residual(p, q, x) {
            Dist::OneHot(t) => t,
            Dist::Probs(r) => sample_probs(&r, u_residual),
        })
    }
}

/// Judges `x` with the exact rule.
pub fn judge(p: &Dist, q: &DraftDist, x: u32, u_accept: f64, u_residual: f64) -> Judgement {
    judge_with(accept_prob(p, q, x), p, q, x, u_accept, u_residual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{uniform, Purpose};

    /// Pearson chi-square statistic of counts against probabilities.
    fn chi_square(counts: &[usize], p: &[f32]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(p)
            .filter(|(_, &pi)| pi > 0.0)
            .map(|(&c, &pi)| {
                let e = n as f64 * pi as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// One speculative position: the draft samples x from q, the target judges it; returns the
    /// emitted token.
    fn emit(p: &Dist, q: &[f32], greedy_draft: bool, i: u64) -> u32 {
        let (x, qd) = if greedy_draft {
            (crate::sampling::argmax(q), DraftDist::Greedy)
        } else {
            (
                sample_probs(q, uniform(11, i, Purpose::DraftSample)),
                DraftDist::Probs(q.to_vec()),
            )
        };
        match judge(
            p,
            &qd,
            x,
            uniform(11, i, Purpose::Accept),
            uniform(11, i, Purpose::Residual),
        ) {
            Judgement::Accept => x,
            Judgement::Reject(t) => t,
        }
    }

    // 99.9% quantile of chi-square with 5 degrees of freedom is 20.5.
    const CHI2_5DF_999: f64 = 20.5;

    #[test]
    fn emitted_tokens_follow_the_target_distribution() {
        let p = vec![0.30f32, 0.05, 0.25, 0.15, 0.20, 0.05];
        let q = vec![0.10f32, 0.40, 0.05, 0.25, 0.10, 0.10];
        let n = 200_000;
        for greedy_draft in [false, true] {
            let mut counts = vec![0usize; 6];
            for i in 0..n {
                counts[emit(&Dist::Probs(p.clone()), &q, greedy_draft, i) as usize] += 1;
            }
            let chi = chi_square(&counts, &p);
            assert!(
                chi < CHI2_5DF_999,
                "greedy_draft={greedy_draft}: chi2 {chi} counts {counts:?}"
            );
        }
    }

    #[test]
    fn a_wrong_residual_is_detected() {
        // Negative control: sampling p (instead of the residual) on reject biases the output;
        // the same test statistic must catch it.
        let p = vec![0.30f32, 0.05, 0.25, 0.15, 0.20, 0.05];
        let q = vec![0.10f32, 0.40, 0.05, 0.25, 0.10, 0.10];
        let mut counts = vec![0usize; 6];
        for i in 0..200_000u64 {
            let x = sample_probs(&q, uniform(11, i, Purpose::DraftSample));
            let qd = DraftDist::Probs(q.clone());
            let pd = Dist::Probs(p.clone());
            let a = accept_prob(&pd, &qd, x);
            let t = if uniform(11, i, Purpose::Accept) < a {
                x
            } else {
                sample_probs(&p, uniform(11, i, Purpose::Residual))
            };
            counts[t as usize] += 1;
        }
        assert!(chi_square(&counts, &p) > CHI2_5DF_999 * 5.0);
    }

    #[test]
    fn greedy_target_accepts_only_the_argmax() {
        let p = Dist::OneHot(2);
        assert_eq!(
            judge(&p, &DraftDist::Greedy, 2, 0.99, 0.5),
            Judgement::Accept
        );
        assert_eq!(
            judge(&p, &DraftDist::Greedy, 1, 0.0, 0.5),
            Judgement::Reject(2)
        );
    }

    #[test]
    fn draft_equal_to_target_always_accepts() {
        let p = vec![0.5f32, 0.5];
        for i in 0..100 {
            let x = sample_probs(&p, uniform(1, i, Purpose::DraftSample));
            let got = judge(
                &Dist::Probs(p.clone()),
                &DraftDist::Probs(p.clone()),
                x,
                uniform(1, i, Purpose::Accept),
                0.3,
            );
            assert_eq!(got, Judgement::Accept);
        }
    }
}
