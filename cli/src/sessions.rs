//! `specd sessions URL`: a coordinator's sessions and its tenants' budget pools (`ListSessions`),
//! as a table or JSON — what an operator reads without a gRPC client.

use anyhow::Result;
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct SessionsArgs {
    /// The coordinator's gRPC URL, e.g. http://127.0.0.1:50050 (https://: TLS, checked against
    /// $SPECD_TLS_CA). An API that requires a key takes it from $SPECD_API_KEY.
    pub coordinator: String,
    /// One JSON object: {"sessions": [...], "pools": [...]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SessionsArgs) -> Result<()> {
    let list = specd_coordinator::client::list_sessions(&a.coordinator)?;
    let mut sessions = list.sessions;
    sessions.sort_by_key(|s| s.seq);
    if a.json {
        let sessions: Vec<_> = (sessions.iter())
            .map(|s| {
                json!({
                    "session_id": s.session_id, "tenant": s.tenant, "state": s.state,
                    "target_url": s.target_url, "draft_url": s.draft_url,
                    "completion_tokens": s.completion_tokens, "rule": s.rule,
                    "budget": s.budget, "budget_spent": s.budget_spent,
                    "fallback": s.fallback, "failovers": s.failovers,
                    "draft_failovers": s.draft_failovers,
                })
            })
            .collect();
        let pools: Vec<_> = (list.pools.iter())
            .map(|p| {
                json!({
                    "tenant": p.tenant, "capacity": p.capacity, "reserved": p.reserved,
                    "spent": p.spent, "available": p.available, "sessions": p.sessions,
                    "tightened": p.tightened,
                })
            })
            .collect();
        println!("{}", json!({ "sessions": sessions, "pools": pools }));
        return Ok(());
    }
    println!(
        "{:<22} {:<10} {:<9} {:>6} {:<14} {:>13}  target / draft",
        "session", "tenant", "state", "tokens", "rule", "spent/budget"
    );
    for s in &sessions {
        let moved = match (s.failovers, s.draft_failovers, s.fallback) {
            (0, 0, false) => String::new(),
            (t, d, f) => format!(
                "  (targets lost {t}, drafts lost {d}{})",
                if f { ", target finished alone" } else { "" }
            ),
        };
        println!(
            "{:<22} {:<10} {:<9} {:>6} {:<14} {:>6.2}/{:<6.2}  {} / {}{moved}",
            s.session_id,
            s.tenant,
            s.state,
            s.completion_tokens,
            s.rule,
            s.budget_spent,
            s.budget,
            s.target_url,
            if s.draft_url.is_empty() {
                "-"
            } else {
                &s.draft_url
            },
        );
    }
    if !list.pools.is_empty() {
        println!(
            "\n{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "pool", "capacity", "reserved", "spent", "available", "sessions", "tightened"
        );
        for p in &list.pools {
            println!(
                "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>10}",
                p.tenant, p.capacity, p.reserved, p.spent, p.available, p.sessions, p.tightened
            );
        }
    }
    Ok(())
}
