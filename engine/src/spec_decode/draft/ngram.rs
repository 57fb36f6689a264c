//! Prompt-lookup drafting: no model. The longest recent n-gram that ends the committed sequence
//! (n from `max` down to `min`) is looked up earlier in the sequence (prompt and completion
//! alike); what followed its latest earlier occurrence is the proposal. Text that repeats what the
//! prompt or the answer already said (quoted numbers, names, code, restated sentences) is drafted
//! for the cost of a scan.

use std::fmt;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{DraftTiming, Evidence, Proposal};
use crate::spec_decode::{DraftBlock, DraftDist};

/// The n-gram lengths matched, longest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NgramConfig {
    pub min: usize,
    pub max: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        NgramConfig { min: 2, max: 4 }
    }
}

impl NgramConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min == 0 || self.min > self.max {
            bail!(
                "n-gram lengths must satisfy 1 ≤ min ≤ max (got min {}, max {})",
                self.min,
                self.max
            );
        }
        Ok(())
    }
}

impl fmt::Display for NgramConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ngram:{}-{}", self.min, self.max)
    }
}

#[derive(Debug, Clone)]
pub struct NgramDrafter {
    config: NgramConfig,
}

impl NgramDrafter {
    pub fn new(config: NgramConfig) -> Result<Self> {
        config.validate()?;
        Ok(NgramDrafter { config })
    }

    /// Proposes up to `gamma` tokens following `committed`; none when no n-gram matches. Each
    /// token's evidence is the n matched (and probability 1: lookup keeps no counts).
    pub fn propose(&self, committed: &[u32], gamma: usize) -> Proposal {
        let t0 = Instant::now();
        let mut block = DraftBlock::empty(committed.len());
        let mut evidence = Vec::new();
        if gamma > 0 {
            if let Some((start, n)) = lookup(committed, self.config, gamma) {
                let end = (start + gamma).min(committed.len());
                block.tokens = committed[start..end].to_vec();
                block.dists = vec![DraftDist::Greedy; block.tokens.len()];
                evidence = vec![
                    Evidence {
                        prob: 1.0,
                        matched: n
                    };
                    block.tokens.len()
                ];
            }
        }
        let timing = DraftTiming {
            steps: 0,
            cost_units: gamma,
            seconds: t0.elapsed().as_secs_f64(),
            prefill_s: 0.0,
        };
        Proposal {
            block,
            timing,
            evidence,
        }
    }
}

/// Where the continuation starts: just after an earlier occurrence of the longest suffix n-gram
/// of `seq` (min ≤ n ≤ max) that occurs earlier with a token after it: the latest occurrence with
/// `gamma` tokens after it, else the earliest (the longest continuation there is); and that n.
fn lookup(seq: &[u32], config: NgramConfig, gamma: usize) -> Option<(usize, usize)> {
    let len = seq.len();
    for n in (config.min..=config.max.min(len.saturating_sub(1))).rev() {
        let suffix = &seq[len - n..];
        // Occurrences start at i ≤ len − n − 1: a token follows, and the suffix itself is out.
        let mut earliest = None;
        for i in (0..len - n).rev() {
            if &seq[i..i + n] == suffix {
                if i + n + gamma <= len {
                    return Some((i + n, n));
                }
                earliest = Some(i + n);
            }
        }
        if let Some(start) = earliest {
            return Some((start, n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(seq: &[u32], gamma: usize, min: usize, max: usize) -> Vec<u32> {
        let d = NgramDrafter::new(NgramConfig { min, max }).unwrap();
        super::super::model_free_tokens(d.propose(seq, gamma), seq.len())
    }

    #[test]
    fn proposes_what_followed_the_latest_match_with_room() {
        // "1 2 3" occurs twice before the end; the latest (followed by 8 9) wins, unless it has
        // fewer than γ tokens after it and the earlier one has them.
        let seq = [1, 2, 3, 4, 5, 1, 2, 3, 8, 9, 7, 1, 2, 3];
        assert_eq!(propose(&seq, 2, 1, 3), vec![8, 9]);
        assert_eq!(propose(&seq, 6, 1, 3), vec![8, 9, 7, 1, 2, 3]);
        assert_eq!(propose(&seq, 8, 1, 3), vec![4, 5, 1, 2, 3, 8, 9, 7]);
        assert_eq!(propose(&seq, 12, 1, 3), seq[3..].to_vec());
    }

    #[test]
    fn each_token_carries_the_length_matched() {
        let seq = [1, 2, 3, 4, 5, 1, 2, 3, 8, 9, 7, 1, 2, 3];
        let d = NgramDrafter::new(NgramConfig { min: 1, max: 3 }).unwrap();
        let p = d.propose(&seq, 2);
        assert_eq!(
            p.evidence,
            vec![
                Evidence {
                    prob: 1.0,
                    matched: 3
                };
                2
            ]
        );
        let d = NgramDrafter::new(NgramConfig { min: 1, max: 1 }).unwrap();
        assert!(d.propose(&seq, 2).evidence.iter().all(|e| e.matched == 1));
    }

    #[test]
    fn prefers_the_longest_ngram() {
        // The 1-gram [3] last occurred before 6; the 3-gram [1 2 3] only before 4.
        let seq = [1, 2, 3, 4, 0, 3, 6, 1, 2, 3];
        assert_eq!(propose(&seq, 1, 1, 3), vec![4]);
        assert_eq!(propose(&seq, 1, 1, 1), vec![6]);
    }

    #[test]
    fn empty_without_a_match_or_room() {
        assert!(propose(&[1, 2, 3, 4], 4, 1, 3).is_empty());
        // [3 4] occurs earlier, but min 3 asks for more than a 2-token match.
        assert!(propose(&[3, 4, 5, 3, 4], 4, 3, 4).is_empty());
        assert_eq!(propose(&[3, 4, 5, 3, 4], 4, 2, 4), vec![5, 3, 4]);
        assert!(propose(&[1, 2, 1, 2], 0, 1, 2).is_empty());
        assert!(propose(&[7], 3, 1, 2).is_empty());
        assert!(propose(&[], 3, 1, 2).is_empty());
    }

    #[test]
    fn a_run_of_one_token_proposes_more_of_it() {
        assert_eq!(propose(&[5, 5, 5, 5], 3, 1, 4), vec![5]);
        assert_eq!(propose(&[9, 5, 5, 5, 5, 5], 3, 2, 2), vec![5, 5, 5]);
    }

    #[test]
    fn bad_lengths_are_refused() {
        for (min, max) in [(0, 3), (4, 3)] {
            let e = NgramDrafter::new(NgramConfig { min, max }).unwrap_err();
            assert!(e.to_string().contains("1 ≤ min ≤ max"), "{e}");
        }
    }
}
