//! A node's model loads after its server starts, so that health can tell the truth meanwhile:
//! NOT_SERVING (and UNAVAILABLE "still loading" for its RPCs) until the model is ready, then
//! SERVING. A load that fails stops the server with the load's error.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tonic::Status;

/// What a node serves once loaded (cheap to clone; empty until then).
pub struct Loaded<T>(Arc<OnceLock<T>>);

impl<T> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded(self.0.clone())
    }
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded(Arc::new(OnceLock::new()))
    }
}

impl<T> Loaded<T> {
    /// The loaded value, or UNAVAILABLE while the model loads.
    pub fn get(&self) -> Result<&T, Status> {
        self.0
            .get()
            .ok_or_else(|| Status::unavailable("the model is still loading; retry shortly"))
    }
}

/// A load in progress.
#[derive(Clone, Default)]
pub struct Loading {
    error: Arc<Mutex<Option<anyhow::Error>>>,
    failed: Arc<Notify>,
}

impl Loading {
    /// Runs `load` on a blocking thread; its value goes into `into`, then `ready` runs (e.g.
    /// health SERVING). A failure is kept for [`Loading::error`] and wakes [`Loading::failed`].
    pub fn start<T, F, R>(into: &Loaded<T>, load: F, ready: R) -> Loading
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
        R: std::future::Future<Output = ()> + Send + 'static,
    {
        let loading = Loading::default();
        let (l, into) = (loading.clone(), into.clone());
        tokio::spawn(async move {
            let outcome = match tokio::task::spawn_blocking(load).await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("loading the model panicked: {e}")),
            };
            match outcome {
                Ok(v) => {
                    let _ = into.0.set(v);
                    ready.await;
                }
                Err(e) => {
                    *l.error.lock().unwrap() = Some(e);
                    l.failed.notify_one();
                }
            }
        });
        loading
    }

    /// Resolves if the load fails.
    async fn failed(&self) {
        self.failed.notified().await
    }

    /// What ends the node's server: `shutdown`, or the load failing.
    pub fn or_failed(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let loading = self.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = loading.failed() => {}
            }
        }
    }

    /// Once the server stopped: the load's error if it failed, else Ok.
    pub fn outcome(&self) -> anyhow::Result<()> {
        match self.error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
