//! Continuous batching of forwards across sessions.
//!
//! Every forward of a [`super::Model`] goes through its [`Batcher`]. A forward that finds the
//! model idle runs at once, on its caller's thread. Forwards that arrive while one runs wait in a
//! queue; when the running one ends, one waiting caller becomes the leader and runs every queued
//! forward (oldest first, up to a cap of rows) as one pass over the weights, in which each
//! sequence's rows attend only to its own cache. So N sessions of a target-node, or of
//! `specd serve`, read the weights once per step rather than N times, with no timer and no
//! scheduler thread: a step gathers whatever work is pending when the previous step ends.
//!
//! A session comes back for its next step only after it judged its last one, so right after a
//! pass the first caller to return would find the model idle and run alone, and the others would
//! queue behind it: passes would alternate between one forward and the rest. So while the last
//! pass ran several forwards, the leader of the next one first waits for as many to arrive, at
//! most an eighth of the last pass's time and never more than [`MAX_GATHER`].
//!
//! On specd's CPU kernels a row's result does not depend on the other rows of its pass, so a
//! session's output is bit-identical whether it ran alone or batched with others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::KvCache;

/// Rows of one batched pass, unless a single forward is longer.
pub const DEFAULT_MAX_ROWS: usize = 512;
/// The longest a pass waits for the forwards of the sessions of the pass before it.
pub const MAX_GATHER: Duration = Duration::from_millis(2);

/// Runs one pass: one result (logits) per job, in order.
pub(super) type RunPass<'a> = &'a dyn Fn(&mut [Job]) -> Vec<Result<Vec<f32>>>;

/// One waiting forward.
pub(super) struct Job {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
    pub logits_from: usize,
}

struct State {
    queue: VecDeque<(u64, Job)>,
    /// A pass (direct or batched) is running.
    running: bool,
    done: HashMap<u64, (KvCache, Result<Vec<f32>>)>,
    next_id: u64,
    /// Forwards in the last pass, and how long it took.
    last_pass: (usize, Duration),
}

/// Counters of the passes run (see [`BatchStats`]).
#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    sequences: AtomicU64,
    rows: AtomicU64,
    queued: AtomicU64,
}

/// What a model's batcher has run so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Passes over the weights.
    pub passes: u64,
    /// Forwards run (a pass runs one or several).
    pub sequences: u64,
    /// Token rows run.
    pub rows: u64,
    /// Forwards that waited for another pass to end.
    pub queued: u64,
}

impl BatchStats {
    /// Forwards per pass.
    pub fn sequences_per_pass(&self) -> f64 {
        self.sequences as f64 / self.passes.max(1) as f64
    }

    /// What ran between `earlier` and `self`.
    pub fn since(&self, earlier: &BatchStats) -> BatchStats {
        BatchStats {
            passes: self.passes - earlier.passes,
            sequences: self.sequences - earlier.sequences,
            rows: self.rows - earlier.rows,
            queued: self.queued - earlier.queued,
        }
    }
}

pub(super) struct Batcher {
    state: Mutex<State>,
    turn: Condvar,
    /// Signalled when a forward joins the queue (a gathering leader waits on it).
    arrived: Condvar,
    max_rows: AtomicUsize,
    counters: Counters,
}

impl Batcher {
    pub fn new() -> Self {
        Batcher {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: false,
                done: HashMap::new(),
                next_id: 0,
                last_pass: (0, Duration::ZERO),
            }),
            turn: Condvar::new(),
            arrived: Condvar::new(),
            max_rows: AtomicUsize::new(DEFAULT_MAX_ROWS),
            counters: Counters::default(),
        }
    }

    pub fn set_max_rows(&self, rows: usize) {
        self.max_rows.store(rows.max(1), Ordering::Relaxed);
    }

    pub fn stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            passes: c.passes.load(Ordering::Relaxed),
            sequences: c.sequences.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
        }
    }

    fn count(&self, jobs: usize, rows: usize) {
        let c = &self.counters;
        c.passes.fetch_add(1, Ordering::Relaxed);
        c.sequences.fetch_add(jobs as u64, Ordering::Relaxed);
        c.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Runs one forward of `tokens` on `cache`, alone or in a pass with the forwards of other
    /// threads. `run` runs a pass: one result per job, in order; it must not panic (a panic is
    /// caught and answered as an error, with the caches rolled back).
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits_from: usize,
        run: RunPass<'_>,
    ) -> Result<Vec<f32>> {
        let mut st = self.state.lock().unwrap();
        if !st.running && st.queue.is_empty() && st.last_pass.0 <= 1 {
            // Idle: run at once on this thread, without moving the cache.
            st.running = true;
            drop(st);
            let mut one = [Job {
                cache: std::mem::replace(cache, KvCache::detached()),
                tokens: tokens.to_vec(),
                logits_from,
            }];
            let t0 = Instant::now();
            let result = self.pass(&mut one, run).pop().expect("one result");
            *cache = std::mem::replace(&mut one[0].cache, KvCache::detached());
            self.end_pass(1, t0.elapsed());
            return result;
        }
        let id = st.next_id;
        st.next_id += 1;
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        st.queue.push_back((
            id,
            Job {
                cache: std::mem::replace(cache, KvCache::detached()),
                tokens: tokens.to_vec(),
                logits_from,
            },
        ));
        self.arrived.notify_one();
        loop {
            if let Some((c, result)) = st.done.remove(&id) {
                *cache = c;
                return result;
            }
            if st.running {
                st = self.turn.wait(st).unwrap();
                continue;
            }
            // Lead the next pass: the oldest waiting forwards, up to the cap of rows, once the
            // last pass's sessions are back or the gathering time is up.
            st.running = true;
            let (expect, took) = st.last_pass;
            let until = Instant::now() + (took / 8).min(MAX_GATHER);
            while st.queue.len() < expect {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                st = self.arrived.wait_timeout(st, until - now).unwrap().0;
            }
            let cap = self.max_rows.load(Ordering::Relaxed);
            let (mut ids, mut jobs, mut rows) = (Vec::new(), Vec::new(), 0);
            while let Some((_, job)) = st.queue.front() {
                if !jobs.is_empty() && rows + job.tokens.len() > cap {
                    break;
                }
                rows += job.tokens.len();
                let (jid, job) = st.queue.pop_front().expect("front exists");
                ids.push(jid);
                jobs.push(job);
            }
            drop(st);
            let t0 = Instant::now();
            let results = self.pass(&mut jobs, run);
            st = self.state.lock().unwrap();
            st.last_pass = (jobs.len(), t0.elapsed());
            for ((jid, job), result) in ids.into_iter().zip(jobs).zip(results) {
                st.done.insert(jid, (job.cache, result));
            }
            st.running = false;
            self.turn.notify_all();
        }
    }

    fn end_pass(&self, forwards: usize, took: Duration) {
        let mut st = self.state.lock().unwrap();
        st.running = false;
        st.last_pass = (forwards, took);
        if !st.queue.is_empty() {
            self.turn.notify_all();
        }
    }

    /// Runs one pass, turning a panic into errors and rolling the caches back.
    fn pass(&self, jobs: &mut [Job], run: RunPass<'_>) -> Vec<Result<Vec<f32>>> {
        self.count(jobs.len(), jobs.iter().map(|j| j.tokens.len()).sum());
        let lens: Vec<usize> = jobs.iter().map(|j| j.cache.len()).collect();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(jobs))) {
            Ok(results) => results,
            Err(_) => {
                for (job, len) in jobs.iter_mut().zip(lens) {
                    job.cache.truncate(len);
                }
                (0..jobs.len())
                    .map(|_| {
                        Err(anyhow::anyhow!(
                            "the forward pass panicked; nothing was cached"
                        ))
                    })
                    .collect()
            }
        }
    }
}
