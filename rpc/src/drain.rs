//! Graceful shutdown for the nodes. On the shutdown signal (Ctrl-C or SIGTERM, which every
//! Kubernetes rollout sends) a node **drains**: its health turns NOT_SERVING (load balancers and
//! readiness probes stop sending it work), new work is refused with UNAVAILABLE, what runs is let
//! finish for at most the drain timeout, then the server stops (a connection still busy after that
//! is given up a moment later).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Status;

/// How long a stopping server may still take to close its connections after the drain.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Whether a node is draining; cloned into its services.
#[derive(Clone, Default, Debug)]
pub struct Drain {
    draining: Arc<AtomicBool>,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// UNAVAILABLE while draining: `who` names the node in the message.
    pub fn admit(&self, who: &str) -> Result<(), Status> {
        if self.is_draining() {
            Err(Status::unavailable(format!(
                "{who} is shutting down (draining): it takes no new work; retry on another node"
            )))
        } else {
            Ok(())
        }
    }

    /// Serves with `server` (given the future that stops it) until `signal`, then drains: runs
    /// `on_drain` (e.g. health NOT_SERVING), waits until `busy()` is 0 or `timeout` passed, and
    /// stops the server. `who` names the node in its log lines.
    pub async fn serve<S, F, D>(
        &self,
        who: &str,
        signal: impl Future<Output = ()> + Send + 'static,
        on_drain: D,
        busy: impl Fn() -> usize + Send + 'static,
        timeout: Duration,
        server: S,
    ) -> anyhow::Result<()>
    where
        S: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
        F: Future<Output = Result<(), tonic::transport::Error>>,
        D: Future<Output = ()> + Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let draining = self.draining.clone();
        let who_owned = who.to_owned();
        let stop = async move {
            signal.await;
            draining.store(true, Ordering::Release);
            on_drain.await;
            let start = Instant::now();
            let mut left = busy();
            if left > 0 {
                tracing::info!(
                    "{who_owned}: draining: {left} still running (at most {}s)",
                    timeout.as_secs_f64()
                );
            }
            while left > 0 && start.elapsed() < timeout {
                tokio::time::sleep(Duration::from_millis(50)).await;
                left = busy();
            }
            if left > 0 {
                tracing::warn!("{who_owned}: drain timeout: stopping with {left} still running");
            } else {
                tracing::info!("{who_owned}: drained, stopping");
            }
            let _ = done_tx.send(());
        };
        let served = server(Box::pin(stop));
        tokio::select! {
            r = served => r.map_err(|e| anyhow::anyhow!("{who} server failed: {e}")),
            _ = async {
                if done_rx.await.is_ok() {
                    tokio::time::sleep(CLOSE_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => Ok(()),
        }
    }
}
