//! Per-tenant budget pools (DESIGN §6, docs/rules.md): `--tenant-pool TENANT=P` bounds the
//! expected number of the tenant's outputs that differ from the exact run, over the coordinator's
//! lifetime, by P.
//!
//! Why it holds: a session with budget B spends Σc ≤ B, and P(its output ≠ the exact run's) ≤
//! E[its lossy accepts] = E[Σc]. Each session's budget is reserved from its tenant's pool when
//! it is admitted (all it asked for, or what the pool has left: a session admitted when the pool
//! is dry runs the exact rule), and what it did not spend goes back when it ends. The charges
//! of all the tenant's sessions therefore never sum past P, so E[# deviating outputs] ≤ P. (A
//! reservation depends only on other sessions, never on this session's draws, which the budget's
//! guarantee allows.) Running sessions keep their reservations, so none has to be tightened
//! mid-stream for the bound to hold; a live policy change may tighten a pooled session, never
//! raise its budget past what the pool granted it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use specd_proto::v1;

/// Below this a pool counts as dry (charges are sums of floats).
const DRY: f64 = 1e-9;

/// The pools of a coordinator's tenants.
#[derive(Debug, Default)]
pub struct Pools {
    /// Tenants named by `--tenant-pool`, and the pool each other tenant gets (`*=P`).
    sizes: HashMap<String, f64>,
    others: Option<f64>,
    state: Mutex<BTreeMap<String, Pool>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Pool {
    capacity: f64,
    /// Held by running sessions.
    reserved: f64,
    /// Spent by ended sessions.
    spent: f64,
    sessions: u64,
    /// Sessions granted less than they asked for.
    tightened: u64,
}

impl Pool {
    fn available(&self) -> f64 {
        (self.capacity - self.reserved - self.spent).max(0.0)
    }
}

impl Pools {
    /// The pools of `--tenant-pool` values (`TENANT=P`; `*=P`: every tenant not named gets its
    /// own pool of P); None when there are none.
    pub fn parse(specs: &[String]) -> Result<Option<Pools>> {
        let mut p = Pools::default();
        for spec in specs {
            let (tenant, size) = spec.split_once('=').with_context(|| {
                format!("--tenant-pool {spec:?}: expected TENANT=P (e.g. acme=2.5, or *=1 for every other tenant)")
            })?;
            let size: f64 = size.trim().parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).with_context(|| {
                format!("--tenant-pool {spec:?}: P must be a number ≥ 0 (the expected number of outputs that may differ from the exact run)")
            })?;
            let tenant = tenant.trim();
            if tenant.is_empty() {
                bail!("--tenant-pool {spec:?}: the tenant name is empty");
            }
            let dup = if tenant == "*" {
                p.others.replace(size).is_some()
            } else {
                p.sizes.insert(tenant.to_owned(), size).is_some()
            };
            if dup {
                bail!("--tenant-pool: {tenant:?} is given twice");
            }
        }
        Ok((!specs.is_empty()).then_some(p))
    }

    fn size(&self, tenant: &str) -> Option<f64> {
        self.sizes.get(tenant).copied().or(self.others)
    }

    /// Whether `tenant`'s sessions draw on a pool.
    pub fn pooled(&self, tenant: &str) -> bool {
        self.size(tenant).is_some()
    }

    /// Reserves a new session's budget: `asked`, or what the pool has left (0: the session runs
    /// the exact rule). None when the tenant has no pool.
    pub fn reserve(&self, tenant: &str, asked: f64) -> Option<f64> {
        let capacity = self.size(tenant)?;
        let mut state = self.state.lock().unwrap();
        let pool = state.entry(tenant.to_owned()).or_insert(Pool {
            capacity,
            ..Default::default()
        });
        let mut granted = asked.min(pool.available());
        if granted < DRY {
            granted = 0.0;
        }
        pool.reserved += granted;
        pool.sessions += 1;
        if granted < asked {
            pool.tightened += 1;
        }
        publish(tenant, pool);
        Some(granted)
    }

    /// An ended session gives back what it did not spend of `granted`.
    pub fn release(&self, tenant: &str, granted: f64, spent: f64) {
        let mut state = self.state.lock().unwrap();
        if let Some(pool) = state.get_mut(tenant) {
            pool.reserved = (pool.reserved - granted).max(0.0);
            pool.spent += spent.clamp(0.0, granted);
            publish(tenant, pool);
        }
    }

    /// Every pool drawn on so far, by tenant (ListSessions).
    pub fn list(&self) -> Vec<v1::TenantPool> {
        let state = self.state.lock().unwrap();
        state
            .iter()
            .map(|(tenant, p)| v1::TenantPool {
                tenant: tenant.clone(),
                capacity: p.capacity,
                reserved: p.reserved,
                spent: p.spent,
                available: p.available(),
                sessions: p.sessions,
                tightened: p.tightened,
            })
            .collect()
    }
}

fn publish(tenant: &str, p: &Pool) {
    specd_telemetry::metrics::tenant_pool(tenant, p.capacity, p.reserved, p.spent, p.available());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(specs: &[&str]) -> Pools {
        Pools::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn reservations_never_exceed_the_pool_and_unspent_budget_returns() {
        let p = pools(&["acme=1.5"]);
        assert_eq!(p.reserve("acme", 1.0), Some(1.0));
        assert_eq!(p.reserve("acme", 1.0), Some(0.5), "what is left");
        assert_eq!(p.reserve("acme", 1.0), Some(0.0), "dry: exact");
        assert_eq!(p.reserve("other", 1.0), None, "no pool");
        // The first spent 0.25 of its 1: 0.75 returns.
        p.release("acme", 1.0, 0.25);
        assert_eq!(p.reserve("acme", 2.0), Some(0.75));
        // Spent past the grant counts as the grant (the target enforces it; a report cannot
        // return more than was reserved).
        p.release("acme", 0.5, 9.0);
        let [row] = p.list().try_into().unwrap();
        assert_eq!(
            (row.capacity, row.reserved, row.spent, row.available),
            (1.5, 0.75, 0.75, 0.0)
        );
        assert_eq!((row.sessions, row.tightened), (4, 3));
    }

    #[test]
    fn every_other_tenant_gets_its_own_pool() {
        let p = pools(&["*=1", "big=10"]);
        assert_eq!(p.reserve("a", 4.0), Some(1.0));
        assert_eq!(p.reserve("b", 4.0), Some(1.0), "b's pool is not a's");
        assert_eq!(p.reserve("big", 4.0), Some(4.0));
        assert!(p.pooled("anyone"));
    }

    #[test]
    fn bad_specs_are_refused_by_name() {
        for (spec, needle) in [
            ("acme", "expected TENANT=P"),
            ("acme=-1", "≥ 0"),
            ("acme=x", "≥ 0"),
            ("acme=inf", "≥ 0"),
            ("=2", "empty"),
        ] {
            let e = Pools::parse(&[spec.to_owned()]).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(spec), "{spec}: {e}");
        }
        let e = Pools::parse(&["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(Pools::parse(&[]).unwrap().is_none());
    }
}
