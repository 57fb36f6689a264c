//! A small fork-join pool for the model's parallel loops.
//!
//! A forward runs ~150 parallel regions (matmuls, attention) of tens of microseconds each; a
//! general-purpose pool that puts its threads to sleep between them spends a large share of a
//! decode step in the scheduler. Workers here spin for a short while after each job before they
//! park, as llama.cpp's do, so back-to-back regions start at once. Jobs are serialized: concurrent
//! callers take turns (each job already uses every core).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    epoch: AtomicU64,
    job: Mutex<Option<SendJob>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Workers between reading the job slot and finishing with it.
    active: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the job pointer is only dereferenced while `run` keeps the closure alive, and the
// closure is `Sync`.
unsafe impl Send for SendJob {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    submit: Mutex<()>,
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = threads.saturating_sub(1);
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("specd-worker-{i}"))
                .spawn(move || worker(s))
                .expect("cannot spawn a worker thread");
        }
        Pool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0..n_tasks)` across the pool and the calling thread; returns when all are done.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers == 0 || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _turn = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: erase the closure's lifetime; it outlives the job because we wait below until
        // every task has finished and the job slot is cleared.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // No worker is inside a job here (see the end of this function), so the counters can be
        // reset; the job slot's mutex publishes them with the job.
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap() = Some(SendJob(job));
        {
            let _g = s.sleep_lock.lock().unwrap();
            s.epoch.fetch_add(1, Ordering::Release);
            s.wake.notify_all();
        }
        take_tasks(s, f);
        while s.done.load(Ordering::Acquire) < n_tasks {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap() = None;
        // A worker that read the job slot before it was cleared may still be in `take_tasks`
        // (finding no task left); wait for it so that it never sees the next job's counters with
        // this job's closure.
        while s.active.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }
}

fn take_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(s: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let g = s.sleep_lock.lock().unwrap();
                let _g = s
                    .wake
                    .wait_while(g, |_| s.epoch.load(Ordering::Acquire) == seen)
                    .unwrap();
                break;
            }
            std::hint::spin_loop();
        }
        seen = s.epoch.load(Ordering::Acquire);
        s.active.fetch_add(1, Ordering::SeqCst);
        let job = *s.job.lock().unwrap();
        if let Some(SendJob(job)) = job {
            // SAFETY: `run` keeps the closure alive until `active` drops to zero.
            take_tasks(&s, unsafe { &*job });
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The process-wide pool: `SPECD_THREADS` threads, default all available cores.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::env::var("SPECD_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
        Pool::new(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once() {
        let p = Pool::new(3);
        for n in [1usize, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            p.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
}
