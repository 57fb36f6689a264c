//! A tokenizer built from fuzzed GGUF metadata (byte-level BPE or SentencePiece: tokens, scores,
//! types, merges, special ids, chat template), then used on fuzzed text: building may fail with
//! an error, encoding and decoding must not panic, and what a built tokenizer encodes it decodes.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use specd_engine::gguf::Value;
use specd_fuzz::{byte_tokens, tokenizer_of};

#[derive(Arbitrary, Debug)]
struct Input {
    spm: bool,
    /// Keep GPT-2's byte alphabet in front of the fuzzed tokens.
    with_bytes: bool,
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    merges: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: Option<bool>,
    pre: Option<String>,
    template: Option<String>,
    text: String,
    parse_special: bool,
}

fuzz_target!(|input: Input| {
    let mut tokens = if input.with_bytes {
        byte_tokens()
    } else {
        Vec::new()
    };
    tokens.extend(input.tokens);
    let mut m = BTreeMap::new();
    let model = if input.spm { "llama" } else { "gpt2" };
    m.insert(
        "tokenizer.ggml.model".to_owned(),
        Value::String(model.into()),
    );
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(input.scores.into_iter().map(Value::F32).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(input.types.into_iter().map(Value::I32).collect()),
    );
    m.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(input.merges.into_iter().map(Value::String).collect()),
    );
    for (key, id) in [("bos", input.bos), ("eos", input.eos)] {
        if let Some(id) = id {
            m.insert(format!("tokenizer.ggml.{key}_token_id"), Value::U32(id));
        }
    }
    if let Some(b) = input.add_bos {
        m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(b));
    }
    if let Some(p) = input.pre {
        m.insert("tokenizer.ggml.pre".into(), Value::String(p));
    }
    if let Some(t) = input.template {
        m.insert("tokenizer.chat_template".into(), Value::String(t));
    }
    let Some(t) = tokenizer_of(&m) else {
        return;
    };
    if let Ok(ids) = t.encode(&input.text, input.parse_special) {
        for &id in &ids {
            assert!(
                (id as usize) < t.vocab_size(),
                "id {id} outside the vocabulary"
            );
        }
        let _ = t.decode(&ids);
    }
    let _ = t.apply_chat_template(&input.text);
});
