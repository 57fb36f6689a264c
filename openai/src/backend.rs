//! What the HTTP API runs requests on: the target and draft models in this process
//! ([`Embedded`], `specd serve`), behind one trait so that other runners plug in the same way.

use std::ops::ControlFlow;

use specd_engine::pipeline::{self, Delta, LoadedModel, Mode, Output, Prompt};
use specd_engine::spec_decode::budget::ProtectCache;
use specd_engine::spec_decode::target::check_context;

use crate::error::ApiError;
use crate::request::{Endpoint, Parsed};

/// Runs requests. `generate` is called on a blocking thread; `on_delta` sees each round's
/// committed tokens and text, and its `Break` (the client went away) ends the request there.
pub trait Backend: Send + Sync + 'static {
    /// The model id clients name (`GET /v1/models`).
    fn model_id(&self) -> &str;
    /// The text of one token (log-probabilities name their tokens).
    fn token_text(&self, id: u32) -> String;
    fn generate(
        &self,
        req: &Parsed,
        on_delta: &mut dyn FnMut(&Delta) -> ControlFlow<()>,
    ) -> Result<Output, ApiError>;
    /// Whether requests can run now (`GET /health`): a remote backend whose nodes do not answer
    /// says why not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Protected-token sets kept (building one reads the whole vocabulary).
const PROTECT_CACHE: usize = 16;

/// The target (and the draft) in this process.
pub struct Embedded {
    id: String,
    target: LoadedModel,
    draft: Option<LoadedModel>,
    protect: ProtectCache,
}

impl Embedded {
    /// Serves `target` under `id` (its preset or file name when `None`), drafting with `draft`
    /// (whose vocabulary must be the target's).
    pub fn new(
        target: LoadedModel,
        draft: Option<LoadedModel>,
        id: Option<String>,
    ) -> anyhow::Result<Self> {
        if let Some(d) = &draft {
            pipeline::check_pair(&target, d)?;
        }
        Ok(Embedded {
            id: id.unwrap_or_else(|| target.name.clone()),
            protect: ProtectCache::new(target.tokenizer.clone(), PROTECT_CACHE),
            target,
            draft,
        })
    }
}

impl Backend for Embedded {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn token_text(&self, id: u32) -> String {
        self.target.tokenizer.decode(&[id]).unwrap_or_default()
    }

    fn generate(
        &self,
        parsed: &Parsed,
        on_delta: &mut dyn FnMut(&Delta) -> ControlFlow<()>,
    ) -> Result<Output, ApiError> {
        let mut req = parsed.request.clone();
        let tok = &self.target.tokenizer;
        let prompt_param = match parsed.endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Completion => "prompt",
        };
        let ids = req
            .prompt
            .encode(tok)
            .map_err(|e| ApiError::invalid(prompt_param, format!("{e:#}")))?;
        if ids.is_empty() {
            return Err(ApiError::invalid(prompt_param, "the prompt is empty"));
        }
        let vocab = self.target.model.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                prompt_param,
                format!("token id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
        let context = self.target.model.config.context_length;
        if req.max_tokens == 0 {
            // What the context leaves (at least one token, so that a full prompt is refused).
            req.max_tokens = context.saturating_sub(ids.len()).max(1);
        }
        check_context(ids.len(), req.max_tokens, context)
            .map_err(|e| ApiError::context_length(prompt_param, format!("{e:#}")))?;
        req.prompt = Prompt::Ids(ids);
        self.protect
            .attach(&mut req.policy, &parsed.protect)
            .map_err(|e| {
                ApiError::invalid("speculative.protect", format!("speculative.protect: {e:#}"))
            })?;
        if req.mode == Mode::Speculative
            && req.gamma.speculative()
            && req.drafter.needs_model()
            && self.draft.is_none()
        {
            return Err(ApiError::invalid(
                "speculative.drafter",
                "this server has no draft model: ask for speculative.drafter \"ngram\" or \"suffix\", or mode \"target-only\"",
            ));
        }
        pipeline::generate_until(&self.target, self.draft.as_ref(), &req, on_delta)
            .map_err(|e| ApiError::internal(format!("generation failed: {e:#}")))
    }
}
