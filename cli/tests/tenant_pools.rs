//! Per-tenant budget pools (`specd coordinator --tenant-pool`), with the real binaries on
//! 127.0.0.1: each lossy session's budget is reserved from its tenant's pool, what it did not
//! spend returns when it ends, a session admitted to a dry pool runs the exact rule, and the
//! pool never pays out more than its size. ListSessions and the coordinator's metrics (read
//! with a real Prometheus parser) show each pool.

use std::process::Command;

use specd_proto::v1;
use specd_proto::v1::coordinator_client::CoordinatorClient;
use tonic::Code;

mod common;

use common::cluster::{coordinator_with, draft_node, json, target_node, PROMPTS};
use common::{bin, free_port, prometheus};

const ACME: &str = "sk-acme-0123456789abcdef";
const BETA: &str = "sk-beta-0123456789abcdef";
const ADMIN: &str = "sk-admin-0123456789abcdef";
const POOL: f64 = 1.5;

/// `m` as a request presenting `key`.
fn authed<T>(key: &str, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

#[test]
fn a_tenant_pool_bounds_the_budget_its_sessions_spend() {
    let t = target_node(&[]);
    // The weak draft disagrees with the target often: a loose rule has lossy accepts to make.
    let d = draft_node("smollm2-135m-q4_0");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (acme, beta, admin) = (
        format!("acme:{ACME}"),
        format!("beta:{BETA}"),
        format!("admin:{ADMIN}"),
    );
    let pool = format!("acme={POOL}");
    let c = coordinator_with(
        &t.url,
        &d.url,
        &[
            "--api-key",
            &acme,
            "--api-key",
            &beta,
            "--api-key",
            &admin,
            "--tenant-pool",
            &pool,
            "--metrics-listen",
            &metrics,
        ],
    );
    let generate = |key: &str, prompt: &str| {
        let o = Command::new(bin())
            .args([
                "generate",
                "--prompt",
                prompt,
                "--chat",
                "--json",
                "--max-tokens",
                "48",
                "--rule",
                "topk:20",
                "--budget",
                "1",
                "--coordinator",
                &c.url,
            ])
            .env("SPECD_API_KEY", key)
            .output()
            .unwrap();
        json(&o)
    };
    let mut spent = Vec::new();
    for i in 0..4 {
        spent.push(
            generate(ACME, PROMPTS[i % PROMPTS.len()])["budget_spent"]
                .as_f64()
                .unwrap(),
        );
    }
    generate(BETA, PROMPTS[0]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Each key sees its own tenant's sessions and pool; the admin tenant's sees them all.
    let list_as = |key: &str| {
        rt.block_on(async {
            let mut client = CoordinatorClient::connect(c.url.clone()).await.unwrap();
            let req = authed(key, v1::ListSessionsRequest {});
            client.list_sessions(req).await.unwrap().into_inner()
        })
    };
    let (of_acme, of_beta, list) = (list_as(ACME), list_as(BETA), list_as(ADMIN));
    assert!(of_acme.sessions.iter().all(|r| r.tenant == "acme") && of_acme.sessions.len() == 4);
    assert!(of_beta.sessions.iter().all(|r| r.tenant == "beta") && of_beta.sessions.len() == 1);
    assert!(of_beta.pools.is_empty(), "beta sees no other tenant's pool");
    assert_eq!(of_acme.pools, list.pools);
    let mut rows: Vec<v1::SessionRecord> = list.sessions.clone();
    rows.sort_by_key(|r| r.seq);
    let (acme_rows, beta_rows): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.tenant == "acme");
    assert_eq!((acme_rows.len(), beta_rows.len()), (4, 1));
    // Each session got what it asked for (1) or what the pool had left, given what the ones
    // before it spent (they ran one after the other).
    let mut paid = 0.0;
    for (row, &s) in acme_rows.iter().zip(&spent) {
        let want = f64::min(1.0, POOL - paid);
        assert!(
            (row.budget - want).abs() < 1e-9,
            "granted {} after {paid} was spent: want {want}",
            row.budget
        );
        assert_eq!(row.rule, if want == 0.0 { "exact" } else { "topk:20" });
        assert!(s <= row.budget + 1e-9, "spent {s} of {}", row.budget);
        assert!((row.budget_spent - s).abs() < 1e-9);
        paid += s;
    }
    assert!(paid <= POOL + 1e-9, "the pool paid out {paid}");
    assert_eq!(beta_rows[0].budget, 1.0, "beta has no pool");
    let tightened = acme_rows.iter().filter(|r| r.budget < 1.0).count() as u64;
    assert!(
        tightened >= 1,
        "no session was tightened: the requests spent {spent:?}, too little to test the pool"
    );
    let [p] = list.pools.try_into().unwrap();
    assert_eq!(p.tenant, "acme");
    assert_eq!(
        (p.capacity, p.reserved),
        (POOL, 0.0),
        "nothing held once all ended"
    );
    assert!((p.spent - paid).abs() < 1e-9 && (p.available - (POOL - paid)).abs() < 1e-9);
    assert_eq!((p.sessions, p.tightened), (4, tightened));
    let m = prometheus(metrics_port);
    let gauge = |name: &str| m[&format!("{name}{{\"tenant\": \"acme\"}}")];
    assert_eq!(gauge("specd_tenant_pool_capacity"), POOL);
    assert!((gauge("specd_tenant_pool_spent") - paid).abs() < 1e-9);
    assert!((gauge("specd_tenant_pool_available") - (POOL - paid)).abs() < 1e-9);
    assert_eq!(gauge("specd_tenant_pool_reserved"), 0.0);
    // `specd sessions` shows the same pool to an operator, as JSON and as a table.
    let sessions = |json: bool| {
        let mut cmd = Command::new(bin());
        cmd.args(["sessions", &c.url]).env("SPECD_API_KEY", ACME);
        if json {
            cmd.arg("--json");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let shown: serde_json::Value = serde_json::from_str(&sessions(true)).unwrap();
    assert_eq!(shown["sessions"].as_array().unwrap().len(), 4, "acme's");
    let pool = &shown["pools"][0];
    assert_eq!(
        (pool["tenant"].as_str(), pool["capacity"].as_f64()),
        (Some("acme"), Some(POOL))
    );
    assert!((pool["spent"].as_f64().unwrap() - paid).abs() < 1e-9);
    assert_eq!(pool["tightened"].as_u64(), Some(tightened));
    let table = sessions(false);
    assert!(
        table.contains("tightened") && table.lines().any(|l| l.starts_with("acme ")),
        "{table}"
    );

    // A pooled session's budget may be tightened live, never raised past its grant; another
    // tenant cannot touch it at all.
    rt.block_on(async {
        let mut client = CoordinatorClient::connect(c.url.clone()).await.unwrap();
        let raise = v1::SetSessionPolicyRequest {
            session_id: acme_rows[0].session_id.clone(),
            policy: Some(v1::Policy {
                rule: "topk:20".into(),
                budget: 5.0,
                ..Default::default()
            }),
            allow_loosen: true,
        };
        let e = (client.set_session_policy(authed(BETA, raise.clone())))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "another tenant's session: {e:?}");
        let e = (client.set_session_policy(authed(ACME, raise)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("budget pool"), "{e:?}");
    });
}
