//! Whether the coordinator's nodes answer: every second it asks each target-node and draft-node
//! for its gRPC health, routes new sessions to those that answer SERVING, and reports what it
//! found in its own health: `specd.v1.Coordinator` (and the server as a whole, `""`) is SERVING
//! while at least one target answers; `specd.v1.TargetVerifier` and `specd.v1.Drafter` tell
//! whether any target, any draft, answers. Without a draft the target decodes alone, so a
//! coordinator whose drafts are all down still serves (slower).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use specd_proto::v1::coordinator_server::SERVICE_NAME as COORDINATOR;
use specd_proto::v1::drafter_server::SERVICE_NAME as DRAFTER;
use specd_proto::v1::target_verifier_server::SERVICE_NAME as TARGET;
use specd_rpc::peers::Peers;
use specd_rpc::set_health;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// How often the nodes are asked.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long a node may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The last answer of each node, by URL (cheap to clone).
#[derive(Clone, Default)]
pub struct PeerHealth {
    up: Arc<Mutex<HashMap<String, bool>>>,
}

impl PeerHealth {
    /// Whether `url` answered SERVING last time (true before its first check).
    pub fn is_up(&self, url: &str) -> bool {
        self.up.lock().unwrap().get(url).copied().unwrap_or(true)
    }

    pub fn any_up(&self, urls: &[String]) -> bool {
        urls.iter().any(|u| self.is_up(u))
    }

    /// Records an answer (or what start-up found); true if it changed.
    pub(crate) fn set(&self, url: &str, up: bool) -> bool {
        self.up.lock().unwrap().insert(url.to_owned(), up) != Some(up)
    }
}

/// One node's health: SERVING, or why not (connecting included, within `TIMEOUT`).
async fn check(peers: &Peers, url: &str) -> Result<(), String> {
    let asked = async {
        let channel = peers
            .channel(url)
            .await
            .map_err(|s| s.message().to_owned())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    };
    match tokio::time::timeout(TIMEOUT, asked).await {
        Ok(Ok(r)) if r.get_ref().status == Wire::Serving as i32 => Ok(()),
        Ok(Ok(r)) => Err(format!(
            "health {:?}",
            Wire::try_from(r.get_ref().status).unwrap_or(Wire::Unknown)
        )),
        Ok(Err(why)) => {
            peers.forget(url);
            Err(why)
        }
        Err(_) => {
            // A connection that hangs is dropped: the next check connects anew.
            peers.forget(url);
            Err(format!("no answer within {TIMEOUT:?}"))
        }
    }
}

fn status(up: bool) -> ServingStatus {
    if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Checks the nodes forever, keeping `health` and the coordinator's own health current (except
/// while `draining`, when it stays NOT_SERVING); resolves `dns:///` targets again every
/// `dns_refresh`.
pub async fn watch(
    health: PeerHealth,
    peers: Peers,
    all_targets: Arc<crate::targets::Targets>,
    dns_refresh: Duration,
    drafts: Arc<Vec<String>>,
    reporter: HealthReporter,
    drain: specd_rpc::drain::Drain,
) {
    let mut resolved = tokio::time::Instant::now();
    loop {
        if all_targets.has_names() && resolved.elapsed() >= dns_refresh {
            all_targets.refresh(&peers).await;
            resolved = tokio::time::Instant::now();
        }
        let targets = all_targets.list();
        // Every node at once: one that hangs does not delay the others.
        let mut checks = tokio::task::JoinSet::new();
        for (role, urls) in [("target", &targets), ("draft", &drafts)] {
            for url in urls.iter() {
                let (peers, url) = (peers.clone(), url.clone());
                checks.spawn(async move {
                    let answer = check(&peers, &url).await;
                    (role, url, answer)
                });
            }
        }
        while let Some(Ok((role, url, answer))) = checks.join_next().await {
            if health.set(&url, answer.is_ok()) {
                match &answer {
                    Ok(()) => tracing::info!(role, url = %url, "node answers SERVING"),
                    Err(why) => tracing::warn!(role, url = %url, "node does not serve: {why}"),
                }
            }
        }
        if drain.is_draining() {
            return;
        }
        let targets_up = health.any_up(&targets);
        reporter
            .set_service_status(TARGET, status(targets_up))
            .await;
        if !drafts.is_empty() {
            reporter
                .set_service_status(DRAFTER, status(health.any_up(&drafts)))
                .await;
        }
        set_health(&reporter, COORDINATOR, status(targets_up)).await;
        // Draining began while this round ran: undo what it set.
        if drain.is_draining() {
            set_health(&reporter, COORDINATOR, ServingStatus::NotServing).await;
            return;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
