//! Suffix drafting (after SuffixDecoding, arXiv 2411.04975): no model. Two indexes of which token
//! followed each context of 1..=`max_depth` tokens, with counts:
//! - the session's own: the prompt and the text committed so far, extended as the session grows;
//! - the node's: the completions of earlier requests of the same tenant ([`SuffixStore`]),
//!   bounded in memory (oldest completions forgotten first) and never shared across tenants,
//!   since what it proposes reveals what others generated.
//!
//! A proposal walks forward from the end of the committed text: at each step it takes the longest
//! context (≥ `min_match` tokens) the index has seen and its most frequent next token, with
//! probability p = count / count of the context. It stops when the product of those p — the
//! chance the whole proposal is right, as the index estimates it — falls below `min_prob`, so its
//! length adapts to how well the text is predicted. The index whose proposal has the larger
//! expected number of accepted tokens (Σ of those products) wins; that sum is the proposal's
//! confidence. Contexts are keyed by a 64-bit hash: a collision only makes a worse proposal,
//! never a wrong output (the target judges every token).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{expected_by_evidence, DraftTiming, Evidence, Proposal};
use crate::spec_decode::{DraftBlock, DraftDist};

/// The suffix drafter's knobs (`suffix:MIN-MAX@P`; `suffix` alone: the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SuffixConfig {
    /// Shortest context matched.
    pub min_match: usize,
    /// Longest context indexed (and matched).
    pub max_depth: usize,
    /// A proposal stops where its estimated probability of being right in full drops below this.
    pub min_prob: f64,
}

impl Default for SuffixConfig {
    fn default() -> Self {
        SuffixConfig {
            min_match: 2,
            max_depth: 12,
            min_prob: 0.1,
        }
    }
}

impl Eq for SuffixConfig {}

impl SuffixConfig {
    pub fn validate(&self) -> Result<()> {
        if self.min_match == 0 || self.min_match > self.max_depth || self.max_depth > 64 {
            bail!(
                "suffix context lengths must satisfy 1 ≤ min ≤ max ≤ 64 (got min {}, max {})",
                self.min_match,
                self.max_depth
            );
        }
        if !(self.min_prob > 0.0 && self.min_prob <= 1.0) {
            bail!(
                "suffix min probability must be in (0, 1] (got {})",
                self.min_prob
            );
        }
        Ok(())
    }

    /// Parses what follows `suffix:`: `MIN-MAX`, `MIN-MAX@P` or `@P`.
    pub fn parse(knobs: &str) -> Result<Self> {
        let mut c = SuffixConfig::default();
        let (lengths, prob) = match knobs.split_once('@') {
            Some((l, p)) => (l.trim(), Some(p.trim())),
            None => (knobs.trim(), None),
        };
        if !lengths.is_empty() {
            let Some((min, max)) = lengths
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            else {
                bail!("suffix:{knobs}: give the context lengths as MIN-MAX, e.g. suffix:2-12@0.1");
            };
            (c.min_match, c.max_depth) = (min, max);
        }
        if let Some(p) = prob {
            c.min_prob = p.parse().map_err(|_| {
                anyhow::anyhow!("suffix:{knobs}: {p:?} is not a probability, e.g. suffix:2-12@0.1")
            })?;
        }
        c.validate()?;
        Ok(c)
    }
}

impl fmt::Display for SuffixConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "suffix:{}-{}@{}",
            self.min_match, self.max_depth, self.min_prob
        )
    }
}

/// Which token followed one context, and how often.
#[derive(Debug, Default, Clone)]
struct Next {
    total: u32,
    counts: Vec<(u32, u32)>,
}

impl Next {
    fn add(&mut self, token: u32) {
        self.total += 1;
        match self.counts.iter_mut().find(|(t, _)| *t == token) {
            Some((_, c)) => *c += 1,
            None => self.counts.push((token, 1)),
        }
    }

    /// Removes one occurrence; true when nothing is left.
    fn remove(&mut self, token: u32) -> bool {
        if let Some(i) = self.counts.iter().position(|(t, _)| *t == token) {
            self.total -= 1;
            self.counts[i].1 -= 1;
            if self.counts[i].1 == 0 {
                self.counts.swap_remove(i);
            }
        }
        self.total == 0
    }

    /// The most frequent next token (the smallest id among equals) and its probability.
    fn best(&self) -> Option<(u32, f64)> {
        let (t, c) = self
            .counts
            .iter()
            .copied()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
        Some((t, c as f64 / self.total as f64))
    }
}

/// Bytes an index entry and a next-token count are charged (hash-map slot, key, vector).
const ENTRY_BYTES: usize = 64;
const COUNT_BYTES: usize = 8;

/// Counts of the token after every context of 1..=depth tokens of the sequences added.
#[derive(Debug, Clone)]
struct Index {
    depth: usize,
    map: HashMap<u64, Next>,
    counts: usize,
}

/// The keys of the contexts of 1..=depth tokens ending just before `seq[i]`, shortest first.
fn context_keys(seq: &[u32], i: usize, depth: usize, mut f: impl FnMut(usize, u64)) {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for k in 1..=depth.min(i) {
        h = (h ^ seq[i - k] as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
        f(k, h);
    }
}

impl Index {
    fn new(depth: usize) -> Self {
        Index {
            depth,
            map: HashMap::new(),
            counts: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.map.len() * ENTRY_BYTES + self.counts * COUNT_BYTES
    }

    /// Indexes the tokens of `seq` from position `from` on (their contexts reach back before it).
    fn add(&mut self, seq: &[u32], from: usize) {
        for i in from.max(1)..seq.len() {
            context_keys(seq, i, self.depth, |_, key| {
                let next = self.map.entry(key).or_default();
                let before = next.counts.len();
                next.add(seq[i]);
                self.counts += next.counts.len() - before;
            });
        }
    }

    /// Undoes [`Index::add`] of the same sequence.
    fn remove(&mut self, seq: &[u32], from: usize) {
        for i in from.max(1)..seq.len() {
            context_keys(seq, i, self.depth, |_, key| {
                if let Some(next) = self.map.get_mut(&key) {
                    let before = next.counts.len();
                    let empty = next.remove(seq[i]);
                    self.counts -= before - next.counts.len();
                    if empty {
                        self.map.remove(&key);
                    }
                }
            });
        }
    }

    /// The most frequent token after the longest indexed context (≥ `min_match`) ending `seq`,
    /// with its evidence.
    fn predict(&self, seq: &[u32], min_match: usize) -> Option<(u32, Evidence)> {
        let mut best = None;
        context_keys(seq, seq.len(), self.depth, |k, key| {
            if k >= min_match {
                if let Some((t, prob)) = self.map.get(&key).and_then(Next::best) {
                    best = Some((t, Evidence { prob, matched: k }));
                }
            }
        });
        best
    }

    /// A proposal of up to `gamma` tokens after `seq`, with their evidence.
    fn propose(&self, seq: &[u32], gamma: usize, c: &SuffixConfig) -> (Vec<u32>, Vec<Evidence>) {
        let mut ctx = seq.to_vec();
        let mut prob = 1.0;
        let (mut out, mut evidence) = (Vec::new(), Vec::new());
        while out.len() < gamma {
            let Some((t, e)) = self.predict(&ctx, c.min_match) else {
                break;
            };
            if prob * e.prob < c.min_prob {
                break;
            }
            prob *= e.prob;
            out.push(t);
            evidence.push(e);
            ctx.push(t);
        }
        (out, evidence)
    }
}

/// The node's index of earlier completions of one tenant, at most `capacity` bytes: past it the
/// oldest completions are forgotten first.
#[derive(Debug)]
pub struct SuffixStore {
    inner: Mutex<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    index: Index,
    docs: VecDeque<Vec<u32>>,
    capacity: usize,
}

impl SuffixStore {
    pub fn new(depth: usize, capacity: usize) -> Self {
        SuffixStore {
            inner: Mutex::new(StoreInner {
                index: Index::new(depth),
                docs: VecDeque::new(),
                capacity,
            }),
        }
    }

    /// Adds one completion, then forgets the oldest ones while over capacity (a completion alone
    /// over it is not kept).
    pub fn add(&self, completion: &[u32]) {
        if completion.len() < 2 {
            return;
        }
        let mut s = self.inner.lock().unwrap();
        s.index.add(completion, 0);
        s.docs.push_back(completion.to_vec());
        while s.index.bytes() > s.capacity {
            let Some(old) = s.docs.pop_front() else { break };
            s.index.remove(&old, 0);
        }
    }

    /// Bytes held (as charged against the capacity).
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap().index.bytes()
    }

    /// Completions held.
    pub fn completions(&self) -> usize {
        self.inner.lock().unwrap().docs.len()
    }

    fn propose(&self, seq: &[u32], gamma: usize, c: &SuffixConfig) -> (Vec<u32>, Vec<Evidence>) {
        self.inner.lock().unwrap().index.propose(seq, gamma, c)
    }
}

/// The stores of this process (one node), one per tenant and context depth: at most
/// [`MAX_STORES`], the least recently used forgotten first (a caller that names ever new tenants
/// cannot grow the node without bound).
pub struct SuffixStores {
    capacity: usize,
    /// By (tenant, depth): the store and when it was last asked for.
    stores: Mutex<HashMap<StoreKey, (Arc<SuffixStore>, u64)>>,
    uses: std::sync::atomic::AtomicU64,
}

type StoreKey = (String, usize);

/// Stores (tenant, depth) a node keeps at most.
pub const MAX_STORES: usize = 64;

/// Bytes each tenant's store may hold by default (`SPECD_SUFFIX_STORE_MB` overrides it; 0 turns
/// the node's index off).
pub const DEFAULT_STORE_BYTES: usize = 64 << 20;

impl SuffixStores {
    pub fn new(capacity: usize) -> Self {
        SuffixStores {
            capacity,
            stores: Mutex::new(HashMap::new()),
            uses: Default::default(),
        }
    }

    /// This process's stores.
    pub fn node() -> &'static SuffixStores {
        static NODE: OnceLock<SuffixStores> = OnceLock::new();
        NODE.get_or_init(|| {
            let mb = std::env::var("SPECD_SUFFIX_STORE_MB")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            SuffixStores::new(mb.map_or(DEFAULT_STORE_BYTES, |mb| mb << 20))
        })
    }

    /// The store of `tenant` (None when the capacity is zero).
    pub fn tenant(&self, tenant: &str, depth: usize) -> Option<Arc<SuffixStore>> {
        if self.capacity == 0 {
            return None;
        }
        let used = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.stores.lock().unwrap();
        let key = (tenant.to_owned(), depth);
        if !m.contains_key(&key) && m.len() >= MAX_STORES {
            let oldest = m
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                m.remove(&k);
            }
        }
        let entry = m
            .entry(key)
            .or_insert_with(|| (Arc::new(SuffixStore::new(depth, self.capacity)), used));
        entry.1 = used;
        Some(entry.0.clone())
    }
}

/// The drafter of one request.
#[derive(Debug)]
pub struct SuffixDrafter {
    config: SuffixConfig,
    local: Index,
    /// Tokens of the committed sequence indexed so far, and the prompt's length.
    indexed: Vec<u32>,
    prompt_len: Option<usize>,
    store: Option<Arc<SuffixStore>>,
}

impl SuffixDrafter {
    pub fn new(config: SuffixConfig, store: Option<Arc<SuffixStore>>) -> Result<Self> {
        config.validate()?;
        Ok(SuffixDrafter {
            config,
            local: Index::new(config.max_depth),
            indexed: Vec::new(),
            prompt_len: None,
            store,
        })
    }

    /// Brings the session's index up to `committed` (rebuilt if it is not an extension of what
    /// was indexed).
    fn sync(&mut self, committed: &[u32]) {
        if !committed.starts_with(&self.indexed) {
            self.local = Index::new(self.config.max_depth);
            self.indexed.clear();
            self.prompt_len = None;
        }
        self.prompt_len.get_or_insert(committed.len());
        self.local.add(committed, self.indexed.len());
        self.indexed
            .extend_from_slice(&committed[self.indexed.len()..]);
    }

    /// Proposes up to `gamma` tokens following `committed`; none when nothing is predicted well
    /// enough. Of the session's and the node's proposals, the one with the larger expected
    /// accepted length by its own evidence.
    pub fn propose(&mut self, committed: &[u32], gamma: usize) -> Proposal {
        let t0 = Instant::now();
        self.sync(committed);
        let mut block = DraftBlock::empty(committed.len());
        let mut evidence = Vec::new();
        if gamma > 0 {
            let (mut tokens, mut ev) = self.local.propose(committed, gamma, &self.config);
            if let Some(store) = &self.store {
                let (t, e) = store.propose(committed, gamma, &self.config);
                if expected_by_evidence(&e) > expected_by_evidence(&ev) {
                    (tokens, ev) = (t, e);
                }
            }
            block.dists = vec![DraftDist::Greedy; tokens.len()];
            block.tokens = tokens;
            evidence = ev;
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

impl Drop for SuffixDrafter {
    /// The request's completion joins the node's index for later requests of the tenant.
    fn drop(&mut self) {
        if let (Some(store), Some(p)) = (&self.store, self.prompt_len) {
            store.add(&self.indexed[p.min(self.indexed.len())..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min_match: usize, max_depth: usize, min_prob: f64) -> SuffixConfig {
        SuffixConfig {
            min_match,
            max_depth,
            min_prob,
        }
    }

    fn propose(d: &mut SuffixDrafter, seq: &[u32], gamma: usize) -> Vec<u32> {
        super::super::model_free_tokens(d.propose(seq, gamma), seq.len())
    }

    #[test]
    fn proposes_the_most_frequent_continuation_of_the_longest_context() {
        let mut d = SuffixDrafter::new(cfg(1, 4, 0.01), None).unwrap();
        // After [1 2]: 3 twice, 4 once; after [9 1 2] (longer): 4.
        let seq = [1, 2, 3, 5, 1, 2, 3, 5, 9, 1, 2, 4, 6, 1, 2];
        assert_eq!(propose(&mut d, &seq, 1), vec![3]);
        let seq2 = [1, 2, 3, 5, 1, 2, 3, 5, 9, 1, 2, 4, 6, 9, 1, 2];
        let mut d = SuffixDrafter::new(cfg(1, 4, 0.01), None).unwrap();
        assert_eq!(propose(&mut d, &seq2, 2), vec![4, 6]);
    }

    #[test]
    fn the_proposal_stops_where_its_probability_drops() {
        // After [7 8]: 1 always; after [7 8 1]: 2 or 3 alike (p = ½), then certain again.
        let seq = [5, 7, 8, 1, 2, 0, 6, 7, 8, 1, 3, 0, 7, 8];
        let mut d = SuffixDrafter::new(cfg(2, 4, 0.6), None).unwrap();
        assert_eq!(propose(&mut d, &seq, 8), vec![1]);
        let mut d = SuffixDrafter::new(cfg(2, 4, 0.4), None).unwrap();
        assert_eq!(propose(&mut d, &seq, 2), vec![1, 2]);
        // Each token's evidence: its share after the longest context matched, and that length
        // ([7 8], twice before the end, then 1 always; [7 8 1], twice, then 2 or 3).
        let p = d.propose(&seq, 2);
        let ev: Vec<(f64, usize)> = p.evidence.iter().map(|e| (e.prob, e.matched)).collect();
        assert_eq!(ev, vec![(1.0, 2), (0.5, 3)]);
        assert!((expected_by_evidence(&p.evidence) - 1.5).abs() < 1e-12);
        assert_eq!(propose(&mut d, &seq, 4), vec![1, 2, 0, 6]);
        // Nothing matches: empty.
        let mut d = SuffixDrafter::new(cfg(2, 4, 0.1), None).unwrap();
        assert!(propose(&mut d, &[1, 2, 3, 4], 4).is_empty());
        assert!(propose(&mut d, &[], 4).is_empty());
    }

    #[test]
    fn the_session_index_grows_with_the_session_and_restarts_on_another() {
        let mut d = SuffixDrafter::new(cfg(2, 4, 0.1), None).unwrap();
        assert!(propose(&mut d, &[5, 6, 7, 8], 3).is_empty());
        assert_eq!(propose(&mut d, &[5, 6, 7, 8, 5, 6], 3), vec![7, 8, 5]);
        // Another sequence: the old one's counts are gone.
        assert!(propose(&mut d, &[1, 5, 6], 3).is_empty());
    }

    #[test]
    fn earlier_completions_of_the_tenant_are_proposed_and_others_are_not() {
        let stores = SuffixStores::new(1 << 20);
        let prompt = [100, 101, 102];
        let answer = [40, 41, 42, 43, 44, 45];
        {
            let mut d = SuffixDrafter::new(cfg(2, 4, 0.1), stores.tenant("a", 4)).unwrap();
            let mut seq = prompt.to_vec();
            d.propose(&seq, 4);
            seq.extend(answer);
            d.propose(&seq, 4);
        } // dropped: its completion joins tenant a's store
        assert_eq!(stores.tenant("a", 4).unwrap().completions(), 1);
        let later = [7, 7, 40, 41];
        let mut d = SuffixDrafter::new(cfg(2, 4, 0.1), stores.tenant("a", 4)).unwrap();
        assert_eq!(propose(&mut d, &later, 3), vec![42, 43, 44]);
        let mut other = SuffixDrafter::new(cfg(2, 4, 0.1), stores.tenant("b", 4)).unwrap();
        assert!(propose(&mut other, &later, 3).is_empty());
        // The prompt is not stored: only what was generated.
        let mut d = SuffixDrafter::new(cfg(2, 4, 0.1), stores.tenant("a", 4)).unwrap();
        assert!(propose(&mut d, &[100, 101], 2).is_empty());
        assert!(SuffixStores::new(0).tenant("a", 4).is_none());
    }

    #[test]
    fn a_node_keeps_a_bounded_number_of_tenant_stores() {
        let stores = SuffixStores::new(1 << 20);
        stores.tenant("kept", 4).unwrap().add(&[1, 2, 3]);
        stores.tenant("first", 4).unwrap().add(&[5, 6, 7]);
        for i in 0..3 * MAX_STORES {
            stores.tenant(&format!("t{i}"), 4);
            // "kept" is used all along: never the least recently used.
            stores.tenant("kept", 4);
        }
        assert_eq!(stores.stores.lock().unwrap().len(), MAX_STORES);
        assert_eq!(stores.tenant("kept", 4).unwrap().completions(), 1);
        // "first" was forgotten: its store is new and empty.
        assert_eq!(stores.tenant("first", 4).unwrap().completions(), 0);
    }

    #[test]
    fn the_store_stays_under_its_capacity_forgetting_the_oldest() {
        let store = SuffixStore::new(4, 40_000);
        let mut peak = 0;
        for doc in 0..200u32 {
            let completion: Vec<u32> = (0..50).map(|i| doc * 1000 + i).collect();
            store.add(&completion);
            peak = peak.max(store.bytes());
            assert!(store.bytes() <= 40_000, "{} bytes", store.bytes());
        }
        assert!(peak > 20_000, "the cap was never approached: {peak}");
        let kept = store.completions();
        assert!(kept > 1 && kept < 200, "{kept}");
        let c = cfg(2, 4, 0.1);
        // The newest completion is still proposed, the oldest is forgotten.
        assert_eq!(
            store.propose(&[199_000, 199_001], 2, &c).0,
            vec![199_002, 199_003]
        );
        assert!(store.propose(&[0, 1], 2, &c).0.is_empty());
        // Forgetting everything leaves nothing behind.
        let small = SuffixStore::new(4, 1);
        small.add(&[1, 2, 3, 4, 5]);
        assert_eq!((small.bytes(), small.completions()), (0, 0));
    }

    #[test]
    fn knobs_parse_and_bad_ones_are_refused() {
        assert_eq!(SuffixConfig::parse("").unwrap(), SuffixConfig::default());
        assert_eq!(SuffixConfig::parse("1-8@0.2").unwrap(), cfg(1, 8, 0.2));
        assert_eq!(SuffixConfig::parse("@0.3").unwrap().min_prob, 0.3);
        for bad in ["3", "0-4", "5-4", "1-65", "2-8@0", "2-8@1.5", "2-8@x"] {
            assert!(SuffixConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
