//! Shared helpers of the model tests: the offline preset pair (fetched on first use).
#![allow(dead_code)]

use specd_engine::pipeline::LoadedModel;
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::target::{SessionParams, TargetSession};

pub fn load(name: &str) -> LoadedModel {
    LoadedModel::load(name, &|m| eprintln!("{m}"))
        .unwrap_or_else(|e| panic!("cannot load {name}: {e:#}"))
}

pub fn target() -> LoadedModel {
    load(DEFAULT_TARGET)
}

pub fn draft() -> LoadedModel {
    load(DEFAULT_DRAFT)
}

/// A target session on `prompt` (token ids) with the default (exact) policy.
pub fn open_session(
    t: &LoadedModel,
    prompt: &[u32],
    sampling: SamplingParams,
    max_tokens: usize,
) -> TargetSession {
    let params = SessionParams {
        sampling,
        max_tokens,
        policy: Default::default(),
        stop: None,
        logprobs: None,
    };
    open_session_with(t, prompt, params)
}

/// A target session on `prompt` (token ids) with `params`.
pub fn open_session_with(t: &LoadedModel, prompt: &[u32], params: SessionParams) -> TargetSession {
    TargetSession::open(
        t.model.clone(),
        t.tokenizer.eos_ids.clone(),
        prompt.to_vec(),
        params,
    )
    .unwrap()
}

/// Chat prompts used across tests.
pub const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a child.",
    "Janet has 3 apples and buys 5 more. How many apples does she have?",
    "List three uses of a paperclip.",
    "Translate 'good morning' into Spanish and explain the words.",
    "Write a Python function that reverses a string.",
    "Why do cats purr?",
    "Give me a recipe for pancakes.",
    "What is 12 times 7? Show your work.",
    "Describe the water cycle.",
    "Tell me a short story about a robot who learns to paint.",
];
