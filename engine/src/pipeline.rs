//! Embedded generation: load a model pair, tokenize, run the speculative loop in-process, decode.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::model::{load_model, LoadOptions, Model};
use crate::presets::Log;
use crate::sampling::SamplingParams;
use crate::source::ModelSource;
use crate::spec_decode::budget::Policy;
use crate::spec_decode::draft::{Drafter, DrafterSpec};
use crate::spec_decode::gamma::GammaPolicy;
use crate::spec_decode::generate::{run, RunStats};
use crate::spec_decode::stop::StopStrings;
use crate::spec_decode::target::{SessionParams, TargetSession};
use crate::spec_decode::DraftSampling;
use crate::tokenizer::Tokenizer;

/// A model ready to run.
pub struct LoadedModel {
    pub name: String,
    pub path: PathBuf,
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
}

impl LoadedModel {
    /// Resolves (fetching if needed) and loads a model by name, path or repo id, on the CPU.
    pub fn load(spec: &str, log: Log) -> Result<Self> {
        Self::load_on(spec, Device::Cpu, log)
    }

    /// [`LoadedModel::load`] onto `device`.
    pub fn load_on(spec: &str, device: Device, log: Log) -> Result<Self> {
        device.check_build()?;
        let source = ModelSource::parse(spec)?;
        let path = source.resolve(log)?;
        let opts = LoadOptions {
            device,
            ..Default::default()
        };
        let (model, tokenizer) = load_model(&path, opts)
            .with_context(|| format!("cannot load model {}", source.name()))?;
        log(&format!(
            "{}: tokenizer from {}; on {device}",
            source.name(),
            tokenizer.source()
        ));
        Ok(LoadedModel {
            name: source.name(),
            path,
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
        })
    }
}

/// Checks that a draft can propose tokens for a target.
pub fn check_pair(target: &LoadedModel, draft: &LoadedModel) -> Result<()> {
    let (t, d) = (
        target.tokenizer.fingerprint(),
        draft.tokenizer.fingerprint(),
    );
    if t != d {
        bail!(
            "the draft model {} (vocabulary fingerprint {d}) and the target model {} (vocabulary fingerprint {t}) have different vocabularies; speculative decoding needs the same tokenizer",
            draft.name,
            target.name
        );
    }
    // The same tokens; the embedding tables may be padded to different sizes (Qwen2.5: 152064
    // rows for 7B, 151936 for 0.5B). Padding rows have no token and are masked in both models.
    let (tv, dv) = (
        target.tokenizer.defined_vocab(),
        draft.tokenizer.defined_vocab(),
    );
    if tv != dv {
        bail!(
            "the draft model {} defines {dv} tokens but the target {} defines {tv}",
            draft.name,
            target.name
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Speculative,
    TargetOnly,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (what the model's chat template knows).
    pub role: String,
    pub content: String,
}

/// What a request continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Raw text, tokenized as it is.
    Text(String),
    /// A conversation, rendered with the model's chat template (generation prompt added).
    Chat(Vec<ChatMessage>),
    /// Token ids, as they are (no BOS added).
    Ids(Vec<u32>),
}

impl Prompt {
    /// A conversation of one user message.
    pub fn user(text: impl Into<String>) -> Self {
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: text.into(),
        }])
    }

    /// `text` as a user message (`chat`) or as raw text.
    pub fn new(text: impl Into<String>, chat: bool) -> Self {
        if chat {
            Prompt::user(text)
        } else {
            Prompt::Text(text.into())
        }
    }

    /// Token ids, with BOS first when the model wants it (see [`encode_prompt`]).
    pub fn encode(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        match self {
            Prompt::Text(t) => encode_prompt(tok, t, false),
            Prompt::Ids(ids) => Ok(ids.clone()),
            Prompt::Chat(messages) => {
                let m: Vec<(&str, &str)> = messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str()))
                    .collect();
                encode_text(tok, &tok.apply_chat_template_messages(&m)?)
            }
        }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub max_tokens: usize,
    /// Stop strings (see [`crate::spec_decode::stop`]); empty: none.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Drafted tokens per block: fixed, `auto` or `heuristic` (see [`crate::spec_decode::gamma`]).
    pub gamma: GammaPolicy,
    pub mode: Mode,
    /// What drafts: the draft model, or a model-free drafter.
    pub drafter: DrafterSpec,
    pub draft_sampling: DraftSampling,
    /// Acceptance rule, budget, protection, pacing.
    pub policy: Policy,
    /// Report each committed token's log-probability under the target, with this many of the
    /// most likely alternatives (`RunStats::logprobs`, and each [`Delta`]).
    pub logprobs: Option<usize>,
    /// Whose request it is: the suffix drafter shares its index of earlier completions among one
    /// tenant's requests only ("" is the default tenant).
    pub tenant: String,
}

/// What one verify round added, as a client is streamed it.
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    /// New text (empty when the round's text is held back: an incomplete UTF-8 sequence, or what
    /// could begin a stop string).
    pub text: &'a str,
    pub token_ids: &'a [u32],
    /// One per token when the request asked for them.
    pub logprobs: &'a [crate::spec_decode::TokenLogprob],
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub text: String,
    pub prompt_tokens: usize,
    pub token_ids: Vec<u32>,
    pub stats: RunStats,
    pub prefill_s: f64,
    pub wall_s: f64,
}

/// Tokenizes the prompt (chat template applied when asked), with BOS first when the model wants
/// it ([`Tokenizer::add_bos`]) and the text (e.g. a chat template's output) does not start with it.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        encode_text(tok, &tok.apply_chat_template(prompt)?)
    } else {
        encode_text(tok, prompt)
    }
}

/// Tokenizes `text` (special tokens parsed), BOS first as in [`encode_prompt`].
fn encode_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text, true)?;
    if let (true, Some(bos)) = (tok.add_bos, tok.bos_id) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

/// Streams text as tokens are committed: emits the new suffix of the decoded completion, holding
/// back an incomplete UTF-8 sequence until the last push, and with stop strings, what could begin
/// one (the text ends where a stop string begins; the stop string is never emitted).
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
    stop: Option<StopStrings>,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream that ends its text where a stop string begins.
    pub fn with_stop(stop: Option<StopStrings>) -> Self {
        TextStream {
            stop,
            ..Self::default()
        }
    }

    /// Adds committed tokens; returns the new text, if any (`last`: flush whatever is held back).
    pub fn push(&mut self, tok: &Tokenizer, ids: &[u32], last: bool) -> Option<String> {
        self.ids.extend_from_slice(ids);
        if ids.is_empty() && !last {
            return None;
        }
        let decoded = tok.decode(&self.ids).ok()?;
        let mut text = decoded.as_str();
        if let Some(stop) = &self.stop {
            text = stop.cut(text);
            if !last && text.len() == decoded.len() {
                text = &text[..text.len() - stop.holdback(text)];
            }
        }
        if (!last && text.ends_with('\u{fffd}'))
            || text.len() <= self.printed
            || !text.is_char_boundary(self.printed)
        {
            return None;
        }
        let new = text[self.printed..].to_owned();
        self.printed = text.len();
        Some(new)
    }
}

/// Runs one request in-process; `on_text` sees the text as it is committed.
pub fn generate(
    target: &LoadedModel,
    draft: Option<&LoadedModel>,
    req: &Request,
    mut on_text: impl FnMut(&str),
) -> Result<Output> {
    generate_until(target, draft, req, |d| {
        if !d.text.is_empty() {
            on_text(d.text);
        }
        ControlFlow::Continue(())
    })
}

/// [`generate`], ended early (finish reason `Cancelled`) when `on_delta` breaks, e.g. because the
/// client that streams the text went away. It is called after every verify round that committed
/// tokens, and once more at the end with the text held back until then.
pub fn generate_until(
    target: &LoadedModel,
    draft: Option<&LoadedModel>,
    req: &Request,
    mut on_delta: impl FnMut(&Delta) -> ControlFlow<()>,
) -> Result<Output> {
    let t0 = Instant::now();
    let prompt = req.prompt.encode(&target.tokenizer)?;
    let stop = StopStrings::new(&req.stop, target.tokenizer.clone())?;
    let params = SessionParams {
        sampling: req.sampling,
        max_tokens: req.max_tokens,
        policy: req.policy.clone(),
        stop: stop.clone(),
        logprobs: req.logprobs,
    };
    let mut session = TargetSession::open(
        target.model.clone(),
        target.tokenizer.eos_ids.clone(),
        prompt.clone(),
        params,
    )?;
    let speculative = req.mode == Mode::Speculative && req.gamma.speculative();
    let mut drafter = if speculative {
        let model = match (req.drafter.needs_model(), draft) {
            (true, Some(d)) => {
                check_pair(target, d)?;
                Some(d.model.clone())
            }
            (true, None) => bail!("the {} drafter needs a draft model", req.drafter.name()),
            (false, _) => None,
        };
        Some(Drafter::from_spec(
            req.drafter,
            model,
            req.sampling,
            req.draft_sampling,
            &req.tenant,
        )?)
    } else {
        None
    };
    let mut stream = TextStream::with_stop(stop.clone());
    let stats = run(
        &mut session,
        drafter.as_mut(),
        &prompt,
        req.max_tokens,
        req.gamma,
        false,
        |v| {
            let text = stream.push(&target.tokenizer, &v.committed, false);
            on_delta(&Delta {
                text: text.as_deref().unwrap_or(""),
                token_ids: &v.committed,
                logprobs: &v.logprobs,
            })
        },
    )?;
    if let Some(t) = stream.push(&target.tokenizer, &[], true) {
        let _ = on_delta(&Delta {
            text: &t,
            token_ids: &[],
            logprobs: &[],
        });
    }
    let token_ids = session.completion().to_vec();
    let text = target.tokenizer.decode(&token_ids)?;
    Ok(Output {
        text: match &stop {
            Some(s) => s.cut(&text).to_owned(),
            None => text,
        },
        prompt_tokens: prompt.len(),
        token_ids,
        stats,
        prefill_s: session.prefill_s,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
