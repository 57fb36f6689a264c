//! What the HTTP API runs requests on: the target and draft models in this process
//! ([`Embedded`], `specd serve`), behind one trait so that other runners plug in the same way.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use specd_engine::pipeline::{self, Delta, LoadedModel, Mode, Output, Prompt};
use specd_engine::spec_decode::budget::ProtectSet;
use specd_engine::spec_decode::draft::DrafterSpec;

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
}

/// Protected-token sets kept per pattern (building one reads the whole vocabulary).
const PROTECT_CACHE: usize = 16;

/// The target (and the draft) in this process.
pub struct Embedded {
    id: String,
    target: LoadedModel,
    draft: Option<LoadedModel>,
    protect: Mutex<HashMap<String, Arc<ProtectSet>>>,
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
            target,
            draft,
            protect: Mutex::new(HashMap::new()),
        })
    }

    fn protect_set(&self, pattern: &str) -> Result<Arc<ProtectSet>, ApiError> {
        if let Some(s) = self.protect.lock().unwrap().get(pattern) {
            return Ok(s.clone());
        }
        let set = Arc::new(
            ProtectSet::build(&self.target.tokenizer, pattern).map_err(|e| {
                ApiError::invalid("speculative.protect", format!("speculative.protect: {e:#}"))
            })?,
        );
        let mut cache = self.protect.lock().unwrap();
        if cache.len() >= PROTECT_CACHE {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), set.clone());
        Ok(set)
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
        if ids.len() >= context {
            return Err(ApiError::context_length(format!(
                "This model's maximum context length is {context} tokens; the prompt has {} tokens",
                ids.len()
            )));
        }
        if req.max_tokens == 0 {
            req.max_tokens = context - ids.len();
        } else if ids.len() + req.max_tokens > context {
            return Err(ApiError::context_length(format!(
                "This model's maximum context length is {context} tokens; the prompt has {} tokens and max_tokens asks for {} more",
                ids.len(),
                req.max_tokens
            )));
        }
        req.prompt = Prompt::Ids(ids);
        if let Some(pattern) = specd_engine::spec_decode::budget::protect_pattern(&parsed.protect) {
            let set = self.protect_set(pattern)?;
            if !req.policy.rule.is_exact() {
                req.policy.protect = Some(set);
            }
        }
        if req.mode == Mode::Speculative
            && req.gamma.speculative()
            && req.drafter == DrafterSpec::Model
            && self.draft.is_none()
        {
            return Err(ApiError::invalid(
                "speculative.drafter",
                "this server has no draft model: ask for speculative.drafter \"ngram\" or mode \"target-only\"",
            ));
        }
        pipeline::generate_until(&self.target, self.draft.as_ref(), &req, on_delta)
            .map_err(|e| ApiError::internal(format!("generation failed: {e:#}")))
    }
}
