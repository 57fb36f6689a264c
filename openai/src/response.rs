//! Response bodies in OpenAI's shapes: whole completions, streamed chunks, usage with the
//! speculative statistics, log-probabilities.

use serde_json::{json, Value};
use specd_engine::pipeline::Output;
use specd_engine::spec_decode::{FinishReason, TokenLogprob};

use crate::backend::Backend;
use crate::request::{Endpoint, Parsed};

/// What every body of one response shares.
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl Meta {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Meta {
            id: format!("{prefix}-{}", crate::request_id()),
            created,
            model: model.to_owned(),
            endpoint,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    /// A whole (non-streamed) response.
    pub fn complete(&self, req: &Parsed, out: &Output, backend: &dyn Backend) -> Value {
        let logprobs = req
            .request
            .logprobs
            .map(|_| logprobs(self.endpoint, &out.stats.logprobs, backend, 0).0);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": logprobs,
                "finish_reason": finish(out.stats.finish_reason),
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": out.text,
                "logprobs": logprobs,
                "finish_reason": finish(out.stats.finish_reason),
            }),
        };
        self.wrap(false, json!([choice]), Some(usage(req, out)))
    }

    /// A streamed chunk: the first carries the role (chat), the others text; `finish` ends the
    /// choice. With `include_usage`, every chunk has `"usage": null` but the last.
    pub fn chunk(
        &self,
        req: &Parsed,
        text: Option<&str>,
        logprobs: Option<Value>,
        finish_reason: Option<FinishReason>,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match text {
                    None if finish_reason.is_none() => json!({"role": "assistant", "content": ""}),
                    None => json!({}),
                    Some(t) => json!({"content": t}),
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs,
                       "finish_reason": finish_reason.map(|f| finish(Some(f)))})
            }
            Endpoint::Completion => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": logprobs,
                "finish_reason": finish_reason.map(|f| finish(Some(f))),
            }),
        };
        self.wrap(
            true,
            json!([choice]),
            req.include_usage.then_some(Value::Null),
        )
    }

    /// The last chunk with `include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, req: &Parsed, out: &Output) -> Value {
        self.wrap(true, json!([]), Some(usage(req, out)))
    }
}

fn finish(f: Option<FinishReason>) -> &'static str {
    match f {
        Some(FinishReason::Length) => "length",
        // A cancelled request has no client to read it.
        Some(FinishReason::Stop) | Some(FinishReason::Cancelled) | None => "stop",
    }
}

/// `usage`, with specd's statistics of the request under `speculative`.
pub fn usage(req: &Parsed, out: &Output) -> Value {
    let s = &out.stats;
    json!({
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.token_ids.len(),
        "total_tokens": out.prompt_tokens + out.token_ids.len(),
        "speculative": {
            "mode": match req.request.mode {
                specd_engine::pipeline::Mode::Speculative => "speculative",
                specd_engine::pipeline::Mode::TargetOnly => "target-only",
            },
            "drafter": req.request.drafter.to_string(),
            "rule": req.request.policy.rule.to_string(),
            "budget": req.request.policy.budget,
            "budget_spent": s.budget_spent,
            "drafted_tokens": s.drafted_tokens,
            "accepted_tokens": s.accepted_tokens,
            "acceptance_rate": s.alpha(),
            "lossy_accepted_tokens": s.lossy_accepted_tokens,
            "target_calls": s.target_calls,
            "tokens_per_target_call": s.tokens_per_call(),
            "gamma_policy": s.gamma_policy,
            "mean_gamma": s.mean_gamma,
        }
    })
}

/// Log-probabilities in the endpoint's shape, and the text offset after them; `offset` is the
/// text offset of the first token (completions' `text_offset`).
pub fn logprobs(
    endpoint: Endpoint,
    lps: &[TokenLogprob],
    backend: &dyn Backend,
    mut offset: usize,
) -> (Value, usize) {
    let v = match endpoint {
        Endpoint::Chat => {
            let entry = |id: u32, lp: f32| {
                let t = backend.token_text(id);
                json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
            };
            let content: Vec<Value> = lps
                .iter()
                .map(|l| {
                    let mut e = entry(l.token, l.logprob);
                    e["top_logprobs"] =
                        Value::Array(l.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Endpoint::Completion => {
            let mut tokens = Vec::new();
            let mut token_logprobs = Vec::new();
            let mut top = Vec::new();
            let mut text_offset = Vec::new();
            for l in lps {
                let t = backend.token_text(l.token);
                text_offset.push(offset);
                offset += t.len();
                tokens.push(t);
                token_logprobs.push(l.logprob);
                let alternatives: serde_json::Map<String, Value> = l
                    .top
                    .iter()
                    .map(|&(id, lp)| (backend.token_text(id), json!(lp)))
                    .collect();
                top.push(Value::Object(alternatives));
            }
            json!({"tokens": tokens, "token_logprobs": token_logprobs,
                   "top_logprobs": top, "text_offset": text_offset})
        }
    };
    (v, offset)
}
