//! Sampling distributions and keyed randomness.
//!
//! Every random number is a pure function of (seed, position, purpose) (DESIGN §2), so a seeded
//! run repeats exactly whatever the block boundaries or the process that draws it.

use anyhow::{bail, Result};

/// What a random draw is for; part of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    DraftSample = 1,
    Accept = 2,
    Residual = 3,
    Bonus = 4,
}

/// SplitMix64 finalizer: a well-mixed 64-bit hash of `z`.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) keyed by (seed, position, purpose).
pub fn uniform(seed: u64, pos: u64, purpose: Purpose) -> f64 {
    let h = splitmix64(
        splitmix64(seed) ^ splitmix64(pos.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ purpose as u64),
    );
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Sampling settings of a request.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1 = no nucleus truncation.
    pub top_p: f32,
    /// 0 = no top-k truncation.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            bail!(
                "--temperature must be a finite number >= 0 (got {})",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1] (got {})", self.top_p);
        }
        Ok(())
    }

    pub fn greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// The lowest id among the maximal logits.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A distribution over the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    /// All mass on one token (greedy).
    OneHot(u32),
    /// Dense probabilities summing to ~1.
    Probs(Vec<f32>),
}

impl Dist {
    pub fn prob(&self, x: u32) -> f32 {
        match self {
            Dist::OneHot(t) => (*t == x) as u32 as f32,
            Dist::Probs(p) => p.get(x as usize).copied().unwrap_or(0.0),
        }
    }

    /// Draws a token with uniform `u`.
    pub fn sample(&self, u: f64) -> u32 {
        match self {
            Dist::OneHot(t) => *t,
            Dist::Probs(p) => sample_probs(p, u),
        }
    }
}

/// `softmax(logits / T)` in f64 accumulation, as f32.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut out: Vec<f32> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
    let sum: f64 = out.iter().map(|&v| v as f64).sum();
    let inv = (1.0 / sum) as f32;
    out.iter_mut().for_each(|v| *v *= inv);
    out
}

/// The target's sampling distribution `p_T` (DESIGN §5): one-hot at the argmax when T = 0, else
/// `softmax(logits / T)` truncated by top-k and top-p and renormalized.
pub fn sampling_dist(logits: &[f32], params: &SamplingParams) -> Dist {
    if params.greedy() {
        return Dist::OneHot(argmax(logits));
    }
    let mut p = softmax(logits, params.temperature);
    truncate(&mut p, params.top_k, params.top_p);
    Dist::Probs(p)
}

/// Applies top-k then top-p to `p` in place (ties broken by lower id first), renormalizing.
pub fn truncate(p: &mut [f32], top_k: usize, top_p: f32) {
    let v = p.len();
    let k_active = top_k > 0 && top_k < v;
    let p_active = top_p < 1.0;
    if !k_active && !p_active {
        return;
    }
    // Every token of the nucleus has probability >= (1 - top_p) / V (the tokens below that hold
    // less than 1 - top_p in total), so only those need sorting.
    let floor = if k_active {
        0.0
    } else {
        (1.0 - top_p) / v as f32
    };
    let mut idx: Vec<u32> = (0..v as u32).filter(|&i| p[i as usize] >= floor).collect();
    idx.sort_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
    let mut keep = if k_active {
        top_k.min(idx.len())
    } else {
        idx.len()
    };
    if p_active {
        // The nucleus is a share of the whole mass after top-k: of the k kept with top-k, of every
        // token without (the tokens under the floor count though they are never in it).
        let total: f64 = if k_active {
            idx[..keep].iter().map(|&i| p[i as usize] as f64).sum()
        } else {
            p.iter().map(|&x| x as f64).sum()
        };
        let mut cum = 0f64;
        for (n, &i) in idx[..keep].iter().enumerate() {
            cum += p[i as usize] as f64;
            if cum >= top_p as f64 * total {
                keep = n + 1;
                break;
            }
        }
    }
    let mut mask = vec![false; v];
    for &i in &idx[..keep] {
        mask[i as usize] = true;
    }
    let mut sum = 0f64;
    for (x, &m) in p.iter_mut().zip(&mask) {
        if !m {
            *x = 0.0;
        }
        sum += *x as f64;
    }
    let inv = (1.0 / sum) as f32;
    p.iter_mut().for_each(|x| *x *= inv);
}

/// Inverse-CDF sampling in id order.
pub fn sample_probs(p: &[f32], u: f64) -> u32 {
    let total: f64 = p.iter().map(|&x| x as f64).sum();
    let target = u * total;
    let mut cum = 0f64;
    let mut last = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            cum += x as f64;
            last = i;
            if cum > target {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_uniforms_are_stable_and_distinct() {
        let a = uniform(7, 3, Purpose::Accept);
        assert_eq!(a, uniform(7, 3, Purpose::Accept));
        assert_ne!(a, uniform(7, 3, Purpose::Residual));
        assert_ne!(a, uniform(7, 4, Purpose::Accept));
        assert_ne!(a, uniform(8, 3, Purpose::Accept));
        let mean: f64 = (0..10000)
            .map(|i| uniform(1, i, Purpose::Bonus))
            .sum::<f64>()
            / 10000.0;
        assert!((mean - 0.5).abs() < 0.02);
    }

    #[test]
    fn argmax_takes_the_lowest_id_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_truncate() {
        let mut p = vec![0.1, 0.4, 0.3, 0.2];
        truncate(&mut p, 2, 1.0);
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
        assert!((p[1] - 0.4 / 0.7).abs() < 1e-6);
        let mut p = vec![0.1, 0.4, 0.3, 0.2];
        truncate(&mut p, 0, 0.65);
        assert_eq!(
            p.iter().map(|&x| (x > 0.0) as u8).collect::<Vec<_>>(),
            vec![0, 1, 1, 0]
        );
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let p = vec![0.5f32, 0.25, 0.0, 0.25];
        let mut counts = [0usize; 4];
        for i in 0..40000 {
            counts[sample_probs(&p, uniform(3, i, Purpose::Bonus)) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!(
            (counts[0] as f64 / 40000.0 - 0.5).abs() < 0.01,
            "{counts:?}"
        );
    }

    /// The nucleus of top-p is a share of the whole distribution: for p = [0.6, 0.29, 0.09, 0.02]
    /// and top_p = 0.9 it is the first three tokens (0.6 + 0.29 < 0.9). The floor that spares
    /// sorting drops 0.02 first; the cut must still be taken at 0.9 of the whole mass, not of what
    /// the floor kept (which kept two).
    #[test]
    fn top_p_nucleus_is_a_share_of_the_whole_mass() {
        let mut p = vec![0.6f32, 0.29, 0.09, 0.02];
        truncate(&mut p, 0, 0.9);
        assert!(p[2] > 0.0 && p[3] == 0.0, "{p:?}");
        assert!((p[0] - 0.6 / 0.98).abs() < 1e-6, "{p:?}");
        // With top-k, top-p is a share of the k kept: [0.6, 0.29] of mass 0.89, 0.6 < 0.9·0.89.
        let mut p = vec![0.6f32, 0.29, 0.09, 0.02];
        truncate(&mut p, 2, 0.9);
        assert!(p[1] > 0.0 && p[2] == 0.0, "{p:?}");
    }
}
