//! Where a forward's time goes, stage by stage (`specd bench forward --profile`).
//!
//! Off by default, and then a mark costs one relaxed atomic load. When on, each mark waits for
//! the device to finish the work queued so far ([`super::backend::Backend::sync`]) and adds the
//! time since the previous mark to its stage, so the sum of the stages is the forward's wall
//! time (slower than unprofiled: the device cannot run ahead of the host).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Turns profiling on or off (for the whole process) and clears what was gathered.
pub fn enable(on: bool) {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(on, Ordering::Relaxed);
}

/// Seconds per stage since the last [`enable`] or [`take`]: (stage, marks, seconds); cleared.
pub fn take() -> Vec<(&'static str, u64, f64)> {
    let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let out = t.iter().map(|(k, (n, s))| (*k, *n, *s)).collect();
    t.clear();
    out
}

/// The clock of one forward.
pub struct Clock {
    last: Option<Instant>,
}

impl Clock {
    pub fn start(sync: impl Fn() -> Result<()>) -> Result<Clock> {
        if !ON.load(Ordering::Relaxed) {
            return Ok(Clock { last: None });
        }
        sync()?;
        Ok(Clock {
            last: Some(Instant::now()),
        })
    }

    /// Ends `stage`: the time since the previous mark is its.
    pub fn mark(&mut self, stage: &'static str, sync: impl Fn() -> Result<()>) -> Result<()> {
        if let Some(last) = self.last {
            sync()?;
            let now = Instant::now();
            let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(stage).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += (now - last).as_secs_f64();
            self.last = Some(now);
        }
        Ok(())
    }
}
