//! The HTTP edge of a request: an OpenAI body (chat or text completion) turned into the engine's
//! one request type ([`specd_engine::pipeline::Request`]), every field checked with an error that
//! names it.

use serde::Deserialize;
use serde_json::Value;
use specd_engine::pipeline::{ChatMessage, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::{Pacing, Policy};
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::rules::Rule;
use specd_engine::spec_decode::stop::{MAX_STOP_BYTES, MAX_STOP_STRINGS};
use specd_engine::spec_decode::DraftSampling;

use crate::error::ApiError;

/// The largest block a request may ask for.
pub const MAX_GAMMA: usize = 32;
/// The most `top_logprobs` a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        }
    }
}

/// A request ready for a backend.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub endpoint: Endpoint,
    pub model: String,
    /// `max_tokens` is 0 when the client gave none: the backend fills in what the context leaves.
    pub request: Request,
    /// The protected-token pattern (`default`, `none` or a regular expression); the backend turns
    /// it into a token set with the target's tokenizer.
    pub protect: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The request's W3C trace context (set by the server from `traceparent`), which a remote
    /// backend sends on.
    pub trace: Option<specd_telemetry::trace::TraceContext>,
}

/// The server's speculative settings, which a request's `speculative` object overrides field
/// by field (the `specd serve` / `coordinator` flags).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Speculative {
    /// `speculative` or `target-only`.
    pub mode: Option<String>,
    /// `exact`, `topk:3`, ... (docs/rules.md).
    pub rule: Option<String>,
    pub budget: Option<f64>,
    /// A number, `"auto"` or `"heuristic"`.
    pub gamma: Option<Value>,
    pub gamma_max: Option<usize>,
    /// `default`, `none` or a regular expression.
    pub protect: Option<String>,
    /// `linear[:BURST]` or `none`.
    pub pacing: Option<String>,
    /// `model`, `ngram` or `ngram:MIN-MAX`.
    pub drafter: Option<String>,
    /// `greedy` or `sample`.
    pub draft_sampling: Option<String>,
}

impl Speculative {
    /// `self` with the fields it lacks taken from `defaults`.
    pub fn or(&self, defaults: &Speculative) -> Speculative {
        Speculative {
            mode: self.mode.clone().or_else(|| defaults.mode.clone()),
            rule: self.rule.clone().or_else(|| defaults.rule.clone()),
            budget: self.budget.or(defaults.budget),
            gamma: self.gamma.clone().or_else(|| defaults.gamma.clone()),
            gamma_max: self.gamma_max.or(defaults.gamma_max),
            protect: self.protect.clone().or_else(|| defaults.protect.clone()),
            pacing: self.pacing.clone().or_else(|| defaults.pacing.clone()),
            drafter: self.drafter.clone().or_else(|| defaults.drafter.clone()),
            draft_sampling: self
                .draft_sampling
                .clone()
                .or_else(|| defaults.draft_sampling.clone()),
        }
    }
}

/// A string or a list of strings (`stop`, `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of both endpoints (OpenAI's names); the unknown ones are ignored, as OpenAI's
/// servers do, except the sampling controls specd does not implement, which are refused.
#[derive(Debug, Deserialize)]
struct Body {
    model: Option<String>,
    messages: Option<Vec<Value>>,
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Not OpenAI's, but vLLM's and llama.cpp's.
    top_k: Option<usize>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Chat: a bool (with `top_logprobs`); completions: the number of alternatives.
    logprobs: Option<Value>,
    top_logprobs: Option<u64>,
    echo: Option<bool>,
    best_of: Option<u64>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    tools: Option<Vec<Value>>,
    response_format: Option<Value>,
    speculative: Option<Speculative>,
}

/// Parses and checks a body for `endpoint`; `defaults` are the server's speculative settings.
pub fn parse(endpoint: Endpoint, bytes: &[u8], defaults: &Speculative) -> Result<Parsed, ApiError> {
    let body: Body = serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        // serde names the field in its message ("unknown field `x`", "invalid type ... for `y`").
        ApiError::invalid("body", format!("the request body is not valid: {msg}"))
    })?;
    let model = body
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid("model", "`model` is required"))?;
    refuse_unsupported(&body)?;
    let prompt = match endpoint {
        Endpoint::Chat => {
            if body.prompt.is_some() {
                return Err(ApiError::invalid(
                    "prompt",
                    "`prompt` belongs to /v1/completions; chat completions take `messages`",
                ));
            }
            Prompt::Chat(messages(body.messages.as_deref())?)
        }
        Endpoint::Completion => {
            if body.messages.is_some() {
                return Err(ApiError::invalid(
                    "messages",
                    "`messages` belongs to /v1/chat/completions; completions take `prompt`",
                ));
            }
            text_prompt(body.prompt.as_ref())?
        }
    };
    let max_tokens = match (body.max_tokens, body.max_completion_tokens) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "give `max_tokens` or `max_completion_tokens`, not both",
            ))
        }
        (Some(n), None) | (None, Some(n)) => {
            if n == 0 {
                return Err(ApiError::invalid(
                    "max_tokens",
                    "`max_tokens` must be at least 1",
                ));
            }
            // No context is longer: larger values fail the context check as they are.
            n.min(u64::from(u32::MAX)) as usize
        }
        (None, None) => 0,
    };
    if let Some(n) = body.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("`n` = {n}: this server generates one choice per request (n = 1)"),
            ));
        }
    }
    let sampling = SamplingParams {
        // OpenAI's defaults: temperature 1, top_p 1.
        temperature: body.temperature.unwrap_or(1.0),
        top_p: body.top_p.unwrap_or(1.0),
        top_k: body.top_k.unwrap_or(0),
        seed: match body.seed {
            Some(s) => s as u64,
            None => random_seed(),
        },
    };
    if !(sampling.temperature.is_finite() && (0.0..=2.0).contains(&sampling.temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            format!(
                "`temperature` must be between 0 and 2 (got {})",
                sampling.temperature
            ),
        ));
    }
    if !(sampling.top_p.is_finite() && sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1] (got {})", sampling.top_p),
        ));
    }
    sampling
        .validate()
        .map_err(|e| ApiError::invalid("temperature", format!("{e:#}")))?;
    let stop = body.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop`: {} strings given, at most {MAX_STOP_STRINGS}",
                stop.len()
            ),
        ));
    }
    if stop
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            "stop",
            format!("`stop`: each stop string must have 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    let logprobs = logprobs(endpoint, body.logprobs.as_ref(), body.top_logprobs)?;
    let spec = body.speculative.unwrap_or_default().or(defaults);
    let (mode, gamma, drafter, draft_sampling, policy, protect) = speculative(&spec)?;
    let stream = body.stream.unwrap_or(false);
    let include_usage = match (&body.stream_options, stream) {
        (Some(_), false) => {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed with `stream: true`",
            ))
        }
        (Some(o), true) => o.include_usage,
        (None, _) => false,
    };
    Ok(Parsed {
        endpoint,
        model,
        request: Request {
            prompt,
            max_tokens,
            stop,
            sampling,
            gamma,
            mode,
            drafter,
            draft_sampling,
            policy,
            logprobs,
            tenant: String::new(),
        },
        protect,
        stream,
        include_usage,
        trace: None,
    })
}

fn refuse_unsupported(b: &Body) -> Result<(), ApiError> {
    let unsupported = |param: &str, what: &str| {
        Err(ApiError::invalid(
            param,
            format!("`{param}` is not supported by this server ({what})"),
        ))
    };
    if b.frequency_penalty.is_some_and(|v| v != 0.0) {
        return unsupported("frequency_penalty", "only 0");
    }
    if b.presence_penalty.is_some_and(|v| v != 0.0) {
        return unsupported("presence_penalty", "only 0");
    }
    if b.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return unsupported("logit_bias", "it would change the target's distribution");
    }
    if b.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("tools", "no tool calling");
    }
    if b.echo == Some(true) {
        return unsupported("echo", "only false");
    }
    if b.best_of.is_some_and(|n| n != 1) {
        return unsupported("best_of", "only 1");
    }
    if let Some(f) = &b.response_format {
        if f.get("type").and_then(Value::as_str) != Some("text") {
            return unsupported("response_format", "only {\"type\": \"text\"}");
        }
    }
    Ok(())
}

/// A chat's messages: `role` system/developer/user/assistant, `content` a string or a list of
/// text parts.
fn messages(raw: Option<&[Value]>) -> Result<Vec<ChatMessage>, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
    if raw.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(&param, format!("{param}: `role` is required")))?;
            let role = match role {
                "system" | "user" | "assistant" => role,
                // OpenAI's newer name for system instructions.
                "developer" => "system",
                other => {
                    return Err(ApiError::invalid(
                        &param,
                        format!("{param}: role {other:?} is not supported (system, developer, user, assistant)"),
                    ))
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &param,
                                    format!("{param}: only text content parts are supported"),
                                ))
                            }
                        }
                    }
                    text
                }
                _ => {
                    return Err(ApiError::invalid(
                        &param,
                        format!("{param}: `content` must be a string or a list of text parts"),
                    ))
                }
            };
            Ok(ChatMessage {
                role: role.to_owned(),
                content,
            })
        })
        .collect()
}

/// A completion's prompt: a string, a list of one string, or a list of token ids.
fn text_prompt(raw: Option<&Value>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a string, a list of one string, or a list of token ids",
        )
    };
    match raw {
        None => Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) => match items.as_slice() {
            [] => Err(ApiError::invalid("prompt", "`prompt` is empty")),
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [Value::String(_), ..] => Err(ApiError::invalid(
                "prompt",
                "one prompt per request: this server generates one choice (batch prompts are not supported)",
            )),
            ids => ids
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad))
                .collect::<Result<Vec<u32>, _>>()
                .map(Prompt::Ids),
        },
        Some(_) => Err(bad()),
    }
}

/// How many alternatives per token to return (`Some(0)`: only the chosen token's log-probability).
fn logprobs(
    endpoint: Endpoint,
    logprobs: Option<&Value>,
    top: Option<u64>,
) -> Result<Option<usize>, ApiError> {
    let top_ok = |n: u64, param: &str| {
        if n as usize > MAX_TOP_LOGPROBS {
            Err(ApiError::invalid(
                param,
                format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS} (got {n})"),
            ))
        } else {
            Ok(n as usize)
        }
    };
    match endpoint {
        Endpoint::Chat => match (logprobs, top) {
            (None | Some(Value::Bool(false)) | Some(Value::Null), None) => Ok(None),
            (None | Some(Value::Bool(false)) | Some(Value::Null), Some(_)) => Err(
                ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"),
            ),
            (Some(Value::Bool(true)), t) => Ok(Some(top_ok(t.unwrap_or(0), "top_logprobs")?)),
            (Some(_), _) => Err(ApiError::invalid(
                "logprobs",
                "`logprobs` must be a boolean",
            )),
        },
        Endpoint::Completion => match logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(top_ok(n, "logprobs")?)),
                None => Err(ApiError::invalid(
                    "logprobs",
                    "`logprobs` must be a whole number of alternatives (0 to 20)",
                )),
            },
        },
    }
}

/// Checks the server's defaults as a request's `speculative` object is checked.
pub fn check_defaults(defaults: &Speculative) -> Result<(), ApiError> {
    speculative(defaults).map(|_| ())
}

type SpecParts = (
    Mode,
    GammaPolicy,
    DrafterSpec,
    DraftSampling,
    Policy,
    String,
);

/// The `speculative` object (merged with the server's defaults) as engine types.
fn speculative(s: &Speculative) -> Result<SpecParts, ApiError> {
    let p = |f: &str| format!("speculative.{f}");
    let mode = match s.mode.as_deref().unwrap_or("speculative") {
        "speculative" => Mode::Speculative,
        "target-only" => Mode::TargetOnly,
        other => {
            return Err(ApiError::invalid(
                &p("mode"),
                format!("speculative.mode {other:?}: expected \"speculative\" or \"target-only\""),
            ))
        }
    };
    let gamma_max = s
        .gamma_max
        .unwrap_or(specd_engine::spec_decode::gamma::DEFAULT_GAMMA_MAX);
    if gamma_max > MAX_GAMMA {
        return Err(ApiError::invalid(
            &p("gamma_max"),
            format!(
                "speculative.gamma_max {gamma_max} is over the maximum block size of {MAX_GAMMA}"
            ),
        ));
    }
    let gamma_text = match &s.gamma {
        None => "8".to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(other) => other.to_string(),
    };
    let gamma = GammaPolicy::parse(&gamma_text, gamma_max)
        .map_err(|e| ApiError::invalid(&p("gamma"), format!("speculative.{e:#}")))?;
    if let GammaPolicy::Fixed(n) = gamma {
        if n > MAX_GAMMA {
            return Err(ApiError::invalid(
                &p("gamma"),
                format!("speculative.gamma {n} is over the maximum block size of {MAX_GAMMA}"),
            ));
        }
    }
    let gamma = if mode == Mode::TargetOnly {
        GammaPolicy::Fixed(0)
    } else {
        gamma
    };
    let drafter: DrafterSpec = s
        .drafter
        .as_deref()
        .unwrap_or("model")
        .parse()
        .map_err(|e| ApiError::invalid(&p("drafter"), format!("speculative.drafter: {e:#}")))?;
    let draft_sampling = match s.draft_sampling.as_deref().unwrap_or("greedy") {
        "greedy" => DraftSampling::Greedy,
        "sample" => DraftSampling::Sample,
        other => {
            return Err(ApiError::invalid(
                &p("draft_sampling"),
                format!("speculative.draft_sampling {other:?}: expected \"greedy\" or \"sample\""),
            ))
        }
    };
    let rule: Rule = s
        .rule
        .as_deref()
        .unwrap_or("exact")
        .parse()
        .map_err(|e| ApiError::invalid(&p("rule"), format!("speculative.rule: {e:#}")))?;
    let pacing: Pacing = s
        .pacing
        .as_deref()
        .unwrap_or("linear")
        .parse()
        .map_err(|e| ApiError::invalid(&p("pacing"), format!("speculative.pacing: {e:#}")))?;
    let policy = Policy {
        rule,
        budget: s.budget.unwrap_or(0.0),
        protect: None,
        pacing,
    };
    if !policy.budget.is_finite() || policy.budget < 0.0 {
        return Err(ApiError::invalid(
            &p("budget"),
            format!(
                "speculative.budget must be a finite number >= 0 (got {})",
                policy.budget
            ),
        ));
    }
    let protect = s.protect.clone().unwrap_or_else(|| "default".into());
    Ok((mode, gamma, drafter, draft_sampling, policy, protect))
}

/// A seed for a request that gave none.
fn random_seed() -> u64 {
    crate::fresh_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Parsed, ApiError> {
        parse(
            Endpoint::Chat,
            body.to_string().as_bytes(),
            &Speculative::default(),
        )
    }

    fn completion(body: Value) -> Result<Parsed, ApiError> {
        parse(
            Endpoint::Completion,
            body.to_string().as_bytes(),
            &Speculative::default(),
        )
    }

    fn user(text: &str) -> Value {
        serde_json::json!([{"role": "user", "content": text}])
    }

    #[test]
    fn a_chat_request_becomes_the_engine_request() {
        let p = chat(serde_json::json!({
            "model": "m", "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "max_completion_tokens": 7, "temperature": 0, "seed": 3, "stop": "\n",
            "stream": true, "stream_options": {"include_usage": true},
            "logprobs": true, "top_logprobs": 2,
            "speculative": {"rule": "topk:3", "budget": 4, "gamma": "auto", "gamma_max": 12,
                            "drafter": "ngram", "pacing": "none", "protect": "none"}
        }))
        .unwrap();
        let r = &p.request;
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: "be brief".into()
                },
                ChatMessage {
                    role: "user".into(),
                    content: "ab".into()
                },
            ])
        );
        assert_eq!(
            (r.max_tokens, r.sampling.temperature, r.sampling.seed),
            (7, 0.0, 3)
        );
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(r.logprobs, Some(2));
        assert!(p.stream && p.include_usage);
        assert_eq!(r.policy.rule.to_string(), "topk:3");
        assert_eq!(r.policy.budget, 4.0);
        assert_eq!(r.gamma, GammaPolicy::Auto { max: 12 });
        assert_eq!(r.drafter.to_string(), "ngram:2-4");
        assert_eq!(p.protect, "none");
    }

    #[test]
    fn server_defaults_fill_what_the_request_leaves_out() {
        let defaults = Speculative {
            rule: Some("topk:2".into()),
            budget: Some(2.0),
            gamma: Some(Value::from(4)),
            mode: Some("target-only".into()),
            ..Default::default()
        };
        let body = serde_json::json!({"model": "m", "prompt": "x",
            "speculative": {"mode": "speculative"}});
        let p = parse(Endpoint::Completion, body.to_string().as_bytes(), &defaults).unwrap();
        assert_eq!(p.request.mode, Mode::Speculative);
        assert_eq!(p.request.gamma, GammaPolicy::Fixed(4));
        assert_eq!(p.request.policy.rule.to_string(), "topk:2");
        assert_eq!(
            p.request.max_tokens, 0,
            "no max_tokens: the backend fills it in"
        );
        // OpenAI's sampling defaults.
        assert_eq!(
            (p.request.sampling.temperature, p.request.sampling.top_p),
            (1.0, 1.0)
        );
    }

    #[test]
    fn completion_prompts_text_or_ids() {
        let p = completion(serde_json::json!({"model": "m", "prompt": ["one"], "logprobs": 3}))
            .unwrap();
        assert_eq!(p.request.prompt, Prompt::Text("one".into()));
        assert_eq!(p.request.logprobs, Some(3));
        let p = completion(serde_json::json!({"model": "m", "prompt": [1, 2, 3]})).unwrap();
        assert_eq!(p.request.prompt, Prompt::Ids(vec![1, 2, 3]));
        // Some clients send nulls; a huge max_tokens is kept within u32 (the context check
        // refuses it later, without overflow).
        let p = completion(
            serde_json::json!({"model": "m", "prompt": "x", "stream": null,
            "max_tokens": u64::MAX}),
        )
        .unwrap();
        assert!(!p.stream);
        assert_eq!(p.request.max_tokens, u32::MAX as usize);
    }

    /// Each bad field is a 400 naming it.
    #[test]
    fn bad_fields_are_named() {
        let m = user("hi");
        let cases = [
            (serde_json::json!({"messages": m}), "model"),
            (serde_json::json!({"model": "m"}), "messages"),
            (
                serde_json::json!({"model": "m", "messages": []}),
                "messages",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0]",
            ),
            (
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                "messages[0]",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "n": 2}),
                "n",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "temperature": 3}),
                "temperature",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "top_p": 0}),
                "top_p",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "max_tokens": 0}),
                "max_tokens",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "stop": [""]}),
                "stop",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "top_logprobs": 2}),
                "top_logprobs",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "presence_penalty": 1}),
                "presence_penalty",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "speculative": {"rule": "bogus"}}),
                "speculative.rule",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "speculative": {"gamma": 100}}),
                "speculative.gamma",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "speculative": {"gamma": "fast"}}),
                "speculative.gamma",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "speculative": {"budget": -1}}),
                "speculative.budget",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "speculative": {"mode": "x"}}),
                "speculative.mode",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "speculative": {"drafter": "lookahead"}}),
                "speculative.drafter",
            ),
            (
                serde_json::json!({"model": "m", "messages": m, "prompt": "x"}),
                "prompt",
            ),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = completion(serde_json::json!({"model": "m", "prompt": ["a", "b"]})).unwrap_err();
        assert!(e.message.contains("one prompt"), "{}", e.message);
        let e = parse(Endpoint::Chat, b"{not json", &Speculative::default()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("body"));
        let e = chat(serde_json::json!({"model": "m", "messages": m, "speculative": {"rul": "x"}}))
            .unwrap_err();
        assert!(e.message.contains("rul"), "{}", e.message);
    }
}
