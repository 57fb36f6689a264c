//! The coordinator's OpenAI-compatible HTTP API (`--http-listen`): the HTTP edge of
//! [`specd_openai`] over this coordinator's own `Generate` (called in-process, no network hop), so
//! an HTTP request takes the same path as a gRPC one: a target session, a draft-node, the ledger.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::Instant;

use specd_engine::pipeline::{Delta, Output};
use specd_openai::request::Parsed;
use specd_openai::{ApiError, Backend};
use specd_proto::v1::coordinator_server::Coordinator;
use specd_proto::v1::TokenEvent;
use specd_telemetry::trace::TraceContext;
use tonic::{Code, Status};

use crate::client;
use crate::CoordinatorNode;

/// Requests run through a coordinator's `Generate`.
pub struct Coordinated {
    pub(crate) node: CoordinatorNode,
    pub(crate) model_id: String,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Token texts as the target sent them with log-probabilities (at most the vocabulary).
    pub(crate) token_texts: Mutex<HashMap<u32, String>>,
}

impl Coordinated {
    fn learn_texts(&self, lps: &[specd_proto::v1::TokenLogprob]) {
        if lps.is_empty() {
            return;
        }
        let mut texts = self.token_texts.lock().unwrap();
        for l in lps.iter().chain(lps.iter().flat_map(|l| &l.top)) {
            texts.entry(l.token).or_insert_with(|| l.text.clone());
        }
    }
}

/// A gRPC status as the HTTP error a client of the OpenAI API expects.
pub fn status_to_api(s: &Status) -> ApiError {
    let msg = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            if msg.contains("context length") {
                ApiError::context_length("messages", msg)
            } else {
                ApiError::invalid("body", msg)
            }
        }
        Code::ResourceExhausted => {
            // The node's retry hint (admission control), else a second.
            let retry = s
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1);
            ApiError::overloaded(msg, retry)
        }
        Code::Unavailable => ApiError::unavailable(msg),
        _ => ApiError::internal(format!("{}: {msg}", s.code())),
    }
}

impl Backend for Coordinated {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The target's text of a token, as the log-probabilities of earlier events named it.
    fn token_text(&self, id: u32) -> String {
        self.token_texts
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    fn generate(
        &self,
        parsed: &Parsed,
        on_delta: &mut dyn FnMut(&Delta) -> ControlFlow<()>,
    ) -> Result<Output, ApiError> {
        let wire = client::request_to_wire(&parsed.request, &parsed.protect, true);
        let trace = parsed.trace.unwrap_or_else(TraceContext::root);
        // The events are read on the runtime and handed to this (blocking) thread, which calls
        // `on_delta`; when it breaks, the channel closes and the reader drops the stream, which
        // cancels the request at the coordinator.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TokenEvent>();
        let node = self.node.clone();
        let reader = self.runtime.spawn(async move {
            let t0 = Instant::now();
            let mut stream = Coordinator::generate(&node, specd_rpc::trace::outgoing(wire, &trace))
                .await?
                .into_inner();
            client::collect(&mut stream, t0, |ev| match tx.send(ev.clone()) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            })
            .await
        });
        while let Some(ev) = rx.blocking_recv() {
            self.learn_texts(&ev.logprobs);
            let logprobs = specd_rpc::convert::logprobs_from_wire(&ev.logprobs);
            let delta = Delta {
                text: &ev.text,
                token_ids: &ev.token_ids,
                logprobs: &logprobs,
            };
            if on_delta(&delta).is_break() {
                // Dropping the reader drops the event stream: the coordinator ends the session.
                reader.abort();
                return Err(ApiError::status(
                    specd_openai::StatusCode::REQUEST_TIMEOUT,
                    "the client went away",
                ));
            }
        }
        let remote = self
            .runtime
            .block_on(reader)
            .map_err(|e| ApiError::internal(format!("the request's reader failed: {e}")))?
            .map_err(|s| status_to_api(&s))?;
        Ok(remote.output)
    }

    fn ready(&self) -> Result<(), String> {
        if self.node.health.any_up(&self.node.targets.list()) {
            Ok(())
        } else {
            Err(format!(
                "no target-node answers ({})",
                self.node.targets.describe()
            ))
        }
    }
}
